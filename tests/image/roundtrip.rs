//! commit → unpack round trips: an upper directory exported with `commit` and unpacked again
//! gives the same tree (types, modes, owners, mtimes, xattrs, hard links, devices, fifos,
//! sparse files, whiteouts, opaque dirs); output is byte-for-byte deterministic; every
//! whiteout/opaque encoding is exported as its OCI form.

use crate::common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::image::{decompress_all, dump, is_root};
use rlayerfs::image::archive::{sha256_digest, Compression};
use rlayerfs::image::{commit, commit_to_writer, unpack, CommitOptions, UnpackOptions};
use rustix::fs::{FileType, Mode};

fn setx(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

fn mtime(p: &Path, secs: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Builds an upper directory with every kind of object.
fn build_upper(u: &Path) {
    let root = is_root();
    fs::create_dir_all(u.join("etc/conf.d")).unwrap();
    fs::write(u.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    fs::write(u.join("etc/conf.d/empty"), b"").unwrap();
    fs::create_dir(u.join("bin")).unwrap();
    fs::write(u.join("bin/tool"), vec![0x7f; 70_000]).unwrap();
    chmod(&u.join("bin/tool"), 0o4755);
    fs::hard_link(u.join("bin/tool"), u.join("bin/tool-alias")).unwrap();
    std::os::unix::fs::symlink("tool", u.join("bin/rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", u.join("bin/abs-link")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        u.join("bin/fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    setx(&u.join("etc/passwd"), "user.test", b"value");
    setx(&u.join("etc"), "user.dir-attr", b"1");
    // Names that need PAX or the ustar prefix.
    let deep = u.join("d".repeat(120));
    fs::create_dir(&deep).unwrap();
    fs::write(deep.join("f".repeat(200)), b"long").unwrap();
    fs::write(u.join("ünïcødé ☃"), b"snow").unwrap();
    std::os::unix::fs::symlink("t".repeat(150), u.join("long-target")).unwrap();
    // A sparse file: 8 MiB hole, 4 KiB data, 8 MiB hole.
    let f = fs::File::create(u.join("sparse")).unwrap();
    f.set_len(16 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; 4096], 8 << 20).unwrap();
    drop(f);
    // A read-only directory with content.
    fs::create_dir(u.join("ro")).unwrap();
    fs::write(u.join("ro/inside"), b"x").unwrap();
    chmod(&u.join("ro"), 0o555);
    if root {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            u.join("null"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            u.join("loop9"),
            FileType::BlockDevice,
            Mode::from_raw_mode(0o660),
            rustix::fs::makedev(7, 9),
        )
        .unwrap();
        // Kernel-style whiteout and opaque dir.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            u.join("etc/gone"),
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .unwrap();
        fs::create_dir(u.join("opq")).unwrap();
        fs::write(u.join("opq/kept"), b"k").unwrap();
        setx(&u.join("opq"), "trusted.overlay.opaque", b"y");
        fs::write(u.join("owned"), b"o").unwrap();
        std::os::unix::fs::chown(u.join("owned"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(u.join("bin/abs-link"), Some(42), Some(43)).unwrap();
    }
    for (i, p) in ["etc/passwd", "bin/tool", "sparse", "bin/fifo", "ro/inside"]
        .iter()
        .enumerate()
    {
        mtime(&u.join(p), 1_500_000_000 + i as i64);
    }
    for p in ["bin/rel-link", "etc/conf.d", "etc", "bin", "ro"] {
        mtime(&u.join(p), 1_400_000_000);
    }
}

#[test]
fn commit_then_unpack_gives_the_same_tree() {
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let tmp = tempfile::tempdir().unwrap();
        let upper = tmp.path().join("upper");
        fs::create_dir(&upper).unwrap();
        build_upper(&upper);
        let blob = tmp.path().join("layer.tar");
        let report = commit(
            &upper,
            &blob,
            &CommitOptions {
                compression: c,
                progress: false,
            },
        )
        .unwrap();
        let bytes = fs::read(&blob).unwrap();
        assert_eq!(report.digest, sha256_digest(&bytes));
        assert_eq!(report.size, bytes.len() as u64);
        assert_eq!(report.diff_id, sha256_digest(&decompress_all(&bytes)));
        assert_eq!(Compression::detect(&bytes), c);

        let dest = tmp.path().join("dest");
        let r = unpack(&blob, &dest, &UnpackOptions::default()).unwrap();
        assert_eq!(r.description.layers[0].digest, report.digest);
        assert_eq!(r.description.layers[0].diff_id, report.diff_id);
        let layer = dest.join("layers/0");
        assert_eq!(dump(&upper), dump(&layer), "{c:?}");
        // The sparse file stays sparse.
        let md = fs::metadata(layer.join("sparse")).unwrap();
        assert_eq!(md.len(), 16 << 20);
        assert!(
            md.blocks() * 512 < 1 << 20,
            "sparse file lost its holes: {} blocks",
            md.blocks()
        );
        chmod(&upper.join("ro"), 0o755);
        chmod(&layer.join("ro"), 0o755);
    }
}

#[test]
fn commit_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path().join("upper");
    fs::create_dir(&upper).unwrap();
    build_upper(&upper);
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let opts = CommitOptions {
            compression: c,
            progress: false,
        };
        let (a, va) = commit_to_writer(&upper, Vec::new(), &opts).unwrap();
        let (b, vb) = commit_to_writer(&upper, Vec::new(), &opts).unwrap();
        assert_eq!(a, b);
        assert!(va == vb, "{c:?}: output differs between runs");
    }
    // Normalised headers: no uname/gname, ustar magic, entries sorted.
    let (_, v) = commit_to_writer(
        &upper,
        Vec::new(),
        &CommitOptions {
            compression: Compression::None,
            progress: false,
        },
    )
    .unwrap();
    let mut ar = tar::Archive::new(&v[..]);
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        assert_eq!(h.username_bytes().unwrap_or_default(), b"");
        assert_eq!(h.groupname_bytes().unwrap_or_default(), b"");
        assert!(h.as_ustar().is_some());
        names.push(e.path_bytes().into_owned());
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

fn tar_listing(blob: &[u8]) -> Vec<(String, Vec<String>)> {
    let data = decompress_all(blob);
    let mut ar = tar::Archive::new(&data[..]);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut keys = Vec::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                keys.push(x.unwrap().key().unwrap().to_string());
            }
        }
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let mut sink = Vec::new();
        e.read_to_end(&mut sink).unwrap();
        out.push((name, keys));
    }
    out
}

#[test]
fn every_whiteout_and_opaque_encoding_is_exported() {
    let tmp = tempfile::tempdir().unwrap();
    let u = tmp.path().join("upper");
    fs::create_dir(&u).unwrap();
    // fuse-overlayfs fallback formats (readable without root).
    fs::write(u.join(".wh.file-gone"), b"").unwrap();
    fs::create_dir(u.join("d-file-opq")).unwrap();
    fs::write(u.join("d-file-opq/.wh..wh..opq"), b"").unwrap();
    fs::create_dir(u.join("d-user-opq")).unwrap();
    setx(&u.join("d-user-opq"), "user.overlay.opaque", b"y");
    fs::create_dir(u.join("d-fuse-opq")).unwrap();
    setx(&u.join("d-fuse-opq"), "user.fuseoverlayfs.opaque", b"y");
    fs::create_dir(u.join("d-x")).unwrap();
    setx(&u.join("d-x"), "user.overlay.opaque", b"x");
    fs::write(u.join("d-x/xattr-gone"), b"").unwrap();
    setx(&u.join("d-x/xattr-gone"), "user.overlay.whiteout", b"");
    fs::write(u.join("plain"), b"p").unwrap();
    setx(&u.join("plain"), "user.fuseoverlayfs.private", b"1");
    setx(&u.join("plain"), "user.overlay.origin", b"1");
    setx(&u.join("plain"), "user.kept", b"1");
    let mut want = vec![
        ".wh.file-gone",
        "d-file-opq/",
        "d-file-opq/.wh..wh..opq",
        "d-fuse-opq/",
        "d-fuse-opq/.wh..wh..opq",
        "d-user-opq/",
        "d-user-opq/.wh..wh..opq",
        "d-x/",
        "d-x/.wh.xattr-gone",
        "plain",
    ];
    if is_root() {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            u.join("char-gone"),
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .unwrap();
        fs::create_dir(u.join("d-trusted-opq")).unwrap();
        setx(&u.join("d-trusted-opq"), "trusted.overlay.opaque", b"y");
        fs::write(u.join("trusted-gone"), b"").unwrap();
        setx(&u.join("trusted-gone"), "trusted.overlay.whiteout", b"");
        setx(&u.join("plain"), "trusted.overlay.origin", b"1");
        want.extend([
            ".wh.char-gone",
            ".wh.trusted-gone",
            "d-trusted-opq/",
            "d-trusted-opq/.wh..wh..opq",
        ]);
    }
    want.sort();
    // The layer root comes first, with the upper root's attributes.
    want.insert(0, "./");
    let (_, blob) = commit_to_writer(
        &u,
        Vec::new(),
        &CommitOptions {
            compression: Compression::None,
            progress: false,
        },
    )
    .unwrap();
    let listing = tar_listing(&blob);
    let names: Vec<&str> = listing.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, want);
    let plain = &listing.iter().find(|(n, _)| n == "plain").unwrap().1;
    assert_eq!(
        plain,
        &vec!["SCHILY.xattr.user.kept".to_string()],
        "private xattrs leaked"
    );
}

#[test]
fn redirected_directories_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let u = tmp.path().join("upper");
    fs::create_dir_all(u.join("moved")).unwrap();
    setx(&u.join("moved"), "user.overlay.redirect", b"/orig");
    let err = commit_to_writer(
        &u,
        Vec::new(),
        &CommitOptions {
            compression: Compression::None,
            progress: false,
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("moved") && err.to_string().contains("redirect"),
        "{err}"
    );
}

#[test]
fn override_stat_is_applied_to_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let u = tmp.path().join("upper");
    fs::create_dir(&u).unwrap();
    fs::write(u.join("f"), b"").unwrap();
    setx(
        &u.join("f"),
        "user.containers.override_stat",
        b"100:200:4711",
    );
    fs::write(u.join("dev"), b"").unwrap();
    setx(
        &u.join("dev"),
        "user.containers.override_stat",
        b"0:0:666:char-1-5",
    );
    let (_, blob) = commit_to_writer(
        &u,
        Vec::new(),
        &CommitOptions {
            compression: Compression::None,
            progress: false,
        },
    )
    .unwrap();
    let mut ar = tar::Archive::new(&blob[..]);
    let hs: Vec<_> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().header().clone())
        .collect();
    assert_eq!(hs[0].path_bytes().as_ref(), b"./");
    assert_eq!(hs[1].entry_type(), tar::EntryType::Char);
    assert_eq!(hs[1].device_minor().unwrap(), Some(5));
    assert_eq!(
        (
            hs[2].uid().unwrap(),
            hs[2].gid().unwrap(),
            hs[2].mode().unwrap()
        ),
        (100, 200, 0o4711)
    );
}
