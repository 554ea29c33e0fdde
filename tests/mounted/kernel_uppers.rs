//! Metacopy files (kernel `metacopy=on`) compared with kernel overlayfs: the same
//! attribute changes, renames and links of lower files leave the same upper on disk (empty
//! files marked `trusted.overlay.metacopy`, origins, redirects, index entries), each system
//! reads the other's upper (and the data written into it later), a write copies the data
//! in place, `metacopy=off` refuses such files as the kernel does, and data-only lower
//! layers (`datadir+`, `lowerdir=A::B`) are read as the kernel reads them.

use crate::common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::dump::{diff_dumps, dump_tree, fnv64};
use common::fixture::Stack;
use common::mount::{FuseMount, KernelOverlay, MountDirs};
use common::{can_mount, sys};

const METACOPY: &str = "trusted.overlay.metacopy";
const REDIRECT: &str = "trusted.overlay.redirect";

/// An access ACL (`u::rw-,u:1000:r--,g::r--,m::r--,o::r--`) as setfacl stores it.
const ACL: &[u8] = &[
    2, 0, 0, 0, 1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, 2, 0, 4, 0, 0xe8, 3, 0, 0, 4, 0, 4, 0, 0xff,
    0xff, 0xff, 0xff, 0x10, 0, 4, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 4, 0, 0xff, 0xff, 0xff, 0xff,
];

fn data(i: u8, len: usize) -> Vec<u8> {
    (0..len).map(|k| (k as u8).wrapping_mul(31) ^ i).collect()
}

/// The lower tree of the scenarios.
fn stack() -> Stack {
    let st = Stack::new(1);
    let l = st.lower(0);
    for (i, name) in ["a", "b", "c", "d", "e", "f", "g", "h", "t", "w", "x", "y"]
        .iter()
        .enumerate()
    {
        l.file(name, &data(i as u8, 70_000 + i));
    }
    l.file("small", b"hi\n")
        .file("empty", b"")
        .file("sub/deep/file", &data(40, 5000))
        .file("l1", &data(41, 9000))
        .hardlink("l2", "l1")
        .dir("sub");
    st
}

/// Attribute changes, renames, links, a truncate and an open for writing.
fn scenario(m: &Path) {
    let chmod = |p: &str, mode| fs::set_permissions(m.join(p), fs::Permissions::from_mode(mode));
    chmod("a", 0o600).unwrap();
    std::os::unix::fs::lchown(m.join("b"), Some(1000), Some(1000)).unwrap();
    sys::set_times(&m.join("c"), (1, 5), (2, 7)).unwrap();
    sys::set_xattr(&m.join("d"), "user.k", b"v").unwrap();
    sys::set_xattr(&m.join("e"), "system.posix_acl_access", ACL).unwrap();
    fs::rename(m.join("f"), m.join("f2")).unwrap();
    fs::rename(m.join("g"), m.join("sub/g2")).unwrap();
    fs::hard_link(m.join("h"), m.join("h2")).unwrap();
    chmod("l2", 0o600).unwrap();
    chmod("x", 0o640).unwrap();
    fs::rename(m.join("x"), m.join("sub/x2")).unwrap();
    fs::rename(m.join("y"), m.join("y2")).unwrap();
    fs::rename(m.join("y2"), m.join("sub/y3")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(m.join("t"))
        .unwrap()
        .set_len(10)
        .unwrap();
    chmod("w", 0o600).unwrap();
    drop(OpenOptions::new().write(true).open(m.join("w")).unwrap());
    chmod("small", 0o600).unwrap();
    chmod("empty", 0o600).unwrap();
    chmod("sub/deep/file", 0o600).unwrap();
}

/// Whether a regular file holds data blocks (SEEK_DATA finds some).
fn holds_data(p: &Path) -> bool {
    let f = fs::File::open(p).unwrap();
    rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(0)).is_ok()
}

/// A raw upper (or index) as text: per entry its type, mode, owner, size, whether it holds
/// data, link count and every xattr, private ones included; origin records (file handles,
/// which differ between two copies of a stack) and index entry names are masked, as are
/// the kernel's `impure` and `uuid` marks (its readdir and export caches, which rlayerfs
/// does not keep).
fn raw_dump(root: &Path) -> String {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for (k, e) in entries.iter().enumerate() {
            let p = e.path();
            let md = fs::symlink_metadata(&p).unwrap();
            let mut rel = p.strip_prefix(root).unwrap().display().to_string();
            if dir == root && root.ends_with("index") {
                rel = format!("<entry {k}>");
            }
            let kind = if md.is_dir() {
                todo.push(p.clone());
                "dir".to_string()
            } else if md.is_file() {
                let d = if holds_data(&p) { "data" } else { "nodata" };
                format!("file size={} {d} nlink={}", md.len(), md.nlink())
            } else {
                format!("other rdev={}", md.rdev())
            };
            let mut xattrs: Vec<String> = sys::list_xattrs(&p)
                .unwrap()
                .into_iter()
                .filter(|n| n != "trusted.overlay.impure" && n != "trusted.overlay.uuid")
                .map(|n| {
                    let v = sys::get_xattr(&p, &n).unwrap();
                    let v = if n == "trusted.overlay.origin" {
                        "<fh>".to_string()
                    } else {
                        v.escape_ascii().to_string()
                    };
                    format!("{n}={v}")
                })
                .collect();
            xattrs.sort();
            out.push(format!(
                "{rel} {kind} mode={:o} {}:{} {}",
                md.mode(),
                md.uid(),
                md.gid(),
                xattrs.join(",")
            ));
        }
    }
    out.sort();
    out.join("\n") + "\n"
}

fn assert_same_text(what: &str, kernel: &str, ours: &str) {
    assert!(
        kernel == ours,
        "{what} differ (- kernel, + rlayerfs)\n{}",
        diff_dumps(kernel, ours)
    );
}

/// stat through the mount of every regular file: size and blocks as a user sees them.
fn sizes(m: &Path) -> String {
    let mut v = Vec::new();
    let mut todo = vec![m.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let md = fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                todo.push(e.path());
            } else {
                let rel = e.path().strip_prefix(m).unwrap().display().to_string();
                v.push(format!("{rel} size={} blocks={}", md.len(), md.blocks()));
            }
        }
    }
    v.sort();
    v.join("\n") + "\n"
}

#[test]
fn metadata_changes_leave_the_kernels_upper() {
    if !can_mount() {
        return;
    }
    let base = stack();
    let (ks, fs_) = (base.copy(), base.copy());
    let k = KernelOverlay::mount(&ks).expect("kernel mount");
    scenario(k.path());
    let (k_tree, k_sizes) = (dump_tree(k.path()), sizes(k.path()));
    k.unmount().unwrap();
    let m = FuseMount::mount(&fs_).expect("rlayerfs mount");
    scenario(m.path());
    let (f_tree, f_sizes) = (dump_tree(m.path()), sizes(m.path()));
    m.unmount().unwrap();
    assert_same_text("merged trees", &k_tree, &f_tree);
    assert_same_text("sizes and blocks through the mount", &k_sizes, &f_sizes);
    assert_same_text("uppers", &raw_dump(&ks.upper), &raw_dump(&fs_.upper));
    assert_same_text(
        "index entries",
        &raw_dump(&ks.work.join("index")),
        &raw_dump(&fs_.work.join("index")),
    );
    // What the scenario is about, on rlayerfs's upper (the kernel's is the same).
    let up = &fs_.upper;
    for f in [
        "a", "b", "c", "d", "e", "f2", "sub/g2", "h", "small", "empty",
    ] {
        assert!(
            sys::get_xattr(&up.join(f), METACOPY).is_ok(),
            "{f}: no mark"
        );
        assert!(!holds_data(&up.join(f)), "{f}: data copied");
    }
    for f in ["t", "w"] {
        assert!(
            sys::get_xattr(&up.join(f), METACOPY).is_err(),
            "{f}: marked"
        );
    }
    assert_eq!(fs::metadata(up.join("a")).unwrap().len(), 70_000);
    assert_eq!(sys::get_xattr(&up.join("f2"), REDIRECT).unwrap(), b"f");
    assert_eq!(sys::get_xattr(&up.join("sub/g2"), REDIRECT).unwrap(), b"/g");
    assert_eq!(sys::get_xattr(&up.join("h2"), REDIRECT).unwrap(), b"/h");
    assert_eq!(sys::get_xattr(&up.join("sub/y3"), REDIRECT).unwrap(), b"/y");
    // The kernel and rlayerfs each read the other's upper as the live trees were.
    for (what, st, tree) in [
        ("rlayerfs over the kernel's upper", &ks, &k_tree),
        ("kernel over rlayerfs's upper", &fs_, &f_tree),
    ] {
        let got = if what.starts_with("rlayerfs") {
            let m = FuseMount::mount(st).unwrap();
            let d = dump_tree(m.path());
            m.unmount().unwrap();
            d
        } else {
            let k = KernelOverlay::mount(st).unwrap();
            let d = dump_tree(k.path());
            k.unmount().unwrap();
            d
        };
        assert!(got == *tree, "{what}\n{}", diff_dumps(tree, &got));
    }
}

/// Appends to every metacopy file of the scenario through `m`.
fn append_all(m: &Path) {
    for f in [
        "a", "b", "c", "d", "e", "f2", "sub/g2", "h2", "l1", "small", "empty",
    ] {
        let mut w = OpenOptions::new().append(true).open(m.join(f)).unwrap();
        w.write_all(b"+tail").unwrap();
    }
}

#[test]
fn each_writes_data_into_the_others_metacopy_files() {
    if !can_mount() {
        return;
    }
    let base = stack();
    let (ks, fs_) = (base.copy(), base.copy());
    let k = KernelOverlay::mount(&ks).unwrap();
    scenario(k.path());
    k.unmount().unwrap();
    let m = FuseMount::mount(&fs_).unwrap();
    scenario(m.path());
    m.unmount().unwrap();
    // rlayerfs writes into the kernel's metacopy files, the kernel into rlayerfs's.
    let m = FuseMount::mount(&ks).unwrap();
    let ino_before = fs::metadata(m.path().join("a")).unwrap().ino();
    let upper_ino = fs::metadata(ks.upper.join("a")).unwrap().ino();
    append_all(m.path());
    assert_eq!(fs::metadata(m.path().join("a")).unwrap().ino(), ino_before);
    let f_tree = dump_tree(m.path());
    m.unmount().unwrap();
    assert_eq!(
        fs::metadata(ks.upper.join("a")).unwrap().ino(),
        upper_ino,
        "the data is copied into the same upper inode"
    );
    let k = KernelOverlay::mount(&fs_).unwrap();
    append_all(k.path());
    let k_tree = dump_tree(k.path());
    k.unmount().unwrap();
    assert_same_text("trees after the writes", &k_tree, &f_tree);
    // Each reads what the other wrote; the marks are gone, the data is in the upper.
    for (st, kernel) in [(&ks, true), (&fs_, false)] {
        let got = if kernel {
            let k = KernelOverlay::mount(st).unwrap();
            let d = dump_tree(k.path());
            k.unmount().unwrap();
            d
        } else {
            let m = FuseMount::mount(st).unwrap();
            let d = dump_tree(m.path());
            m.unmount().unwrap();
            d
        };
        assert_same_text("reread", &k_tree, &got);
        for f in ["a", "f2", "sub/g2", "h2", "empty"] {
            let p = st.upper.join(f);
            assert!(sys::get_xattr(&p, METACOPY).is_err(), "{f}: still marked");
        }
        let mut want = data(0, 70_000);
        want.extend_from_slice(b"+tail");
        assert_eq!(fnv64(&fs::read(st.upper.join("a")).unwrap()), fnv64(&want));
    }
    // l1/l2 (a lower hard link, indexed): both names show the data written through one.
    let m = FuseMount::mount(&ks).unwrap();
    assert_eq!(
        fs::read(m.path().join("l1")).unwrap(),
        fs::read(m.path().join("l2")).unwrap()
    );
    m.unmount().unwrap();
}

/// Reads of a metacopy file (also through FUSE passthrough, on by default as root) show the
/// lower data; st_ino and times stay across the data copy-up; a reader opened before it
/// moves to the upper copy.
#[test]
fn reads_and_data_copy_up_of_rlayerfs_metacopy_files() {
    if !can_mount() {
        return;
    }
    let st = stack();
    let m = FuseMount::mount(&st).unwrap();
    let p = m.path().join("a");
    let lower = fs::metadata(st.lower(0).path("a")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    sys::set_times(&p, (1000, 1), (2000, 2)).unwrap();
    let before = fs::metadata(&p).unwrap();
    assert_eq!(before.blocks(), lower.blocks(), "st_blocks of the data");
    assert_eq!(fs::read(&p).unwrap(), data(0, 70_000));
    let mut reader = fs::File::open(&p).unwrap();
    let mut w = OpenOptions::new().write(true).open(&p).unwrap();
    let after_open = fs::metadata(&p).unwrap();
    assert_eq!(
        after_open.ino(),
        before.ino(),
        "st_ino across the data copy-up"
    );
    assert_eq!(
        (after_open.mtime(), after_open.mtime_nsec()),
        (2000, 2),
        "copying the data is no modification"
    );
    assert!(sys::get_xattr(&st.upper.join("a"), METACOPY).is_err());
    assert!(holds_data(&st.upper.join("a")));
    std::os::unix::fs::FileExt::write_all_at(&w, b"NEW", 0).unwrap();
    w.flush().unwrap();
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut buf).unwrap();
    assert_eq!(&buf[..3], b"NEW", "the reader moved to the upper copy");
    assert_eq!(&buf[3..], &data(0, 70_000)[3..]);
    drop((reader, w));
    m.unmount().unwrap();
}

/// A kernel metacopy upper under `metacopy=off`: EPERM on both (data or not); with
/// `metacopy=on`, a metacopy file whose data is gone: EIO on both.
#[test]
fn refusals_match_the_kernel() {
    if !can_mount() {
        return;
    }
    let st = stack();
    let k = KernelOverlay::mount(&st).unwrap();
    fs::set_permissions(k.path().join("a"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(k.path().join("b"), fs::Permissions::from_mode(0o600)).unwrap();
    k.unmount().unwrap();
    // `b`'s data goes: the lower file is removed behind the overlay's back.
    fs::remove_file(st.lower(0).path("b")).unwrap();
    let dirs = MountDirs::of(&st);
    let errno = |root: &Path, f: &str| {
        fs::metadata(root.join(f))
            .map(|_| 0)
            .unwrap_or_else(|e| e.raw_os_error().unwrap_or(-1))
    };
    let mut seen = Vec::new();
    for off in [false, true] {
        let opt = if off { "metacopy=off" } else { "metacopy=on" };
        let k =
            KernelOverlay::mount_with(&dirs, &format!("index=on,redirect_dir=on,{opt}")).unwrap();
        let kr = (errno(k.path(), "a"), errno(k.path(), "b"));
        k.unmount().unwrap();
        let m = FuseMount::mount_with(&dirs, &format!("{},{opt}", dirs.options())).unwrap();
        let fr = (errno(m.path(), "a"), errno(m.path(), "b"));
        m.unmount().unwrap();
        assert_eq!(kr, fr, "{opt}: kernel (a, b) errnos vs rlayerfs");
        seen.push(kr);
    }
    // The kernel's own answers: metacopy=off refuses every metacopy file before looking
    // for its data.
    assert_eq!(seen, [(0, libc::EIO), (libc::EPERM, libc::EPERM)]);
}

/// A metacopy file in a lower layer (the metadata layer) pointing with an absolute redirect
/// into a data-only layer, as composefs builds them: read, changed and written through
/// both systems, with both forms of the option.
#[test]
fn data_only_layers() {
    if !can_mount() {
        return;
    }
    let st = Stack::new(2);
    let content = data(7, 123_456);
    st.lower(1).file("objects/ab/cdef", &content);
    st.lower(0)
        .file("bin/tool", b"")
        .xattr("bin/tool", METACOPY, b"")
        .xattr("bin/tool", REDIRECT, b"/objects/ab/cdef");
    OpenOptions::new()
        .write(true)
        .open(st.lower(0).path("bin/tool"))
        .unwrap()
        .set_len(content.len() as u64)
        .unwrap();
    let (meta, dl) = (st.lower(0).path(""), st.lower(1).path(""));
    let base = format!(
        "upperdir={},workdir={}",
        st.upper.display(),
        st.work.display()
    );
    let forms = [
        format!("lowerdir={}::{}", meta.display(), dl.display()),
        format!("lowerdir={},datadir+={}", meta.display(), dl.display()),
    ];
    let run = |mnt: &Path| -> (Vec<u8>, u32) {
        let p = mnt.join("bin/tool");
        let got = fs::read(&p).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        (got, mode)
    };
    let dirs = MountDirs {
        lowers: vec![],
        upper: st.upper.clone(),
        work: st.work.clone(),
        mnt: st.mnt.clone(),
    };
    // The kernel: read, chmod (a metacopy copy-up of a metacopy file), read again.
    sys::mount(
        "overlay",
        &st.mnt,
        "overlay",
        &format!("{},{base},metacopy=on,redirect_dir=on", forms[0]),
    )
    .unwrap();
    let k = KernelOverlay::adopt(&st.mnt);
    assert_eq!(run(k.path()).0, content, "kernel reads the data layer");
    k.unmount().unwrap();
    for form in &forms {
        let m = FuseMount::mount_with(&dirs, &format!("{form},{base}")).unwrap();
        let (got, _) = run(m.path());
        assert_eq!(got, content, "{form}");
        fs::set_permissions(m.path().join("bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(run(m.path()), (content.clone(), 0o700), "{form}");
        m.unmount().unwrap();
    }
    // The upper holds a metacopy file whose data is in the data-only layer: the kernel
    // reads it, then writes it (its data copied up from the data layer); rlayerfs reads that.
    assert!(sys::get_xattr(&st.upper.join("bin/tool"), METACOPY).is_ok());
    sys::mount(
        "overlay",
        &st.mnt,
        "overlay",
        &format!("{},{base},metacopy=on,redirect_dir=on", forms[0]),
    )
    .unwrap();
    let k = KernelOverlay::adopt(&st.mnt);
    assert_eq!(run(k.path()), (content.clone(), 0o700));
    k.unmount().unwrap();
    let m = FuseMount::mount_with(&dirs, &format!("{},{base}", forms[1])).unwrap();
    let mut f = OpenOptions::new()
        .append(true)
        .open(m.path().join("bin/tool"))
        .unwrap();
    f.write_all(b"end").unwrap();
    drop(f);
    m.unmount().unwrap();
    sys::mount(
        "overlay",
        &st.mnt,
        "overlay",
        &format!("{},{base},metacopy=on,redirect_dir=on", forms[0]),
    )
    .unwrap();
    let k = KernelOverlay::adopt(&st.mnt);
    let mut want = content.clone();
    want.extend_from_slice(b"end");
    assert_eq!(run(k.path()), (want, 0o700));
    k.unmount().unwrap();
    // Data-only layers need metacopy: refused as the kernel refuses them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rlayerfs"))
        .args(["mount", "-o"])
        .arg(format!("{},{base},metacopy=off", forms[1]))
        .arg(&st.mnt)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metacopy") && err.trim().lines().count() == 1,
        "{err}"
    );
}
