//! File handles (`name_to_handle_at` / `open_by_handle_at`), compared with kernel overlayfs.
//!
//! With `nfs_export=on` (kernel: `index=on,redirect_dir=on,nfs_export=on`) handles of
//! lower (of both layers of a two-layer stack), upper and copied-up files and directories
//! are taken, the objects are then
//! changed (unlinked, copied up, renamed, their directory renamed), and every handle is
//! opened again after `drop_caches` and after an unmount and a new mount (each from cold
//! caches, so that no listing for an earlier one skips a decoding): each must open
//! the same object (same content, same path for a directory) or fail with `ESTALE` exactly
//! as on the kernel, and the expected outcome of each case is also asserted on its own.
//! Without `nfs_export` both refuse handles (`EOPNOTSUPP`), identifiers-only handles
//! (`AT_HANDLE_FID`) still work. Skips when not root or /dev/fuse is missing.

use crate::common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::can_mount;
use common::fixture::Stack;
use common::mount::{FuseMount, KernelOverlay, MountDirs};
use common::sys::{self, drop_caches, name_to_handle, open_by_handle, Handle};

const KERNEL_EXPORT: &str = "index=on,redirect_dir=on,nfs_export=on";

/// The lower layer every case starts from.
fn lower_stack() -> Stack {
    let s = Stack::new(2);
    // The bottom layer: a file of its own, another inside the merged directory `ld`.
    s.lower(1)
        .file("lb", b"bottom layer\n")
        .dir("ld")
        .file("ld/bottom", b"bottom of a merged dir\n");
    s.lower(0)
        .file("lf", b"lower file\n")
        .file("lcopied", b"copied before\n")
        .file("lchmod", b"copied after\n")
        .file("ldel", b"deleted\n")
        .file("lmoved", b"moved\n")
        .file("lwrite", b"written through a handle\n")
        .file("h1", b"hard link\n")
        .hardlink("h2", "h1")
        .dir("ld")
        .file("ld/f", b"in a lower dir\n")
        .dir("ld/sub")
        .file("ld/sub/deep", b"deep\n")
        .dir("lgone");
    s
}

/// Either mount, unmounted on drop.
enum Mounted {
    Kernel(KernelOverlay),
    Fuse(FuseMount),
}

fn mount(kernel: bool, dirs: &MountDirs, export: bool) -> Mounted {
    if kernel {
        let opts = if export {
            KERNEL_EXPORT
        } else {
            "index=on,redirect_dir=on"
        };
        Mounted::Kernel(KernelOverlay::mount_with(dirs, opts).expect("kernel mount"))
    } else {
        let opts = if export {
            format!("{},nfs_export=on", dirs.options())
        } else {
            dirs.options()
        };
        Mounted::Fuse(FuseMount::mount_with(dirs, &opts).expect("rlayerfs mount"))
    }
}

fn unmount(m: Mounted) {
    match m {
        Mounted::Kernel(k) => k.unmount().expect("unmount kernel"),
        Mounted::Fuse(f) => f.unmount().expect("unmount rlayerfs"),
    }
}

/// What opening a handle gives: the content of a file, the path (below the mount) and
/// listing of a directory, or the errno.
fn open_outcome(mnt: &Path, h: &Handle, flags: i32) -> String {
    match open_by_handle(mnt, h, flags) {
        Err(e) => format!("errno {}", sys::errno_of(&e)),
        Ok(mut f) => {
            use std::os::fd::AsRawFd;
            let link = fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
            if f.metadata().unwrap().is_dir() {
                let rel = link
                    .strip_prefix(mnt)
                    .unwrap_or(&link)
                    .display()
                    .to_string();
                let mut names: Vec<String> = fs::read_dir(&link)
                    .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()))
                    .map(|i| i.collect())
                    .unwrap_or_default();
                names.sort();
                format!("dir /{rel} [{}]", names.join(" "))
            } else {
                let mut s = String::new();
                f.read_to_string(&mut s).unwrap();
                format!("file {s:?}")
            }
        }
    }
}

/// The handles the cases take, by name.
const NAMES: &[&str] = &[
    "lf",
    "lcopied",
    "lchmod",
    "ldel",
    "lmoved",
    "h1",
    "ld",
    "ld/f",
    "ld/sub",
    "ld/sub/deep",
    "lgone",
    "uf",
    "udir",
    "udir/g",
    "udel",
    "umoved",
    "lb",
    "ld/bottom",
];

/// Runs the scenario on one system; returns its observations, one line each.
fn scenario(kernel: bool) -> Vec<String> {
    let stack = lower_stack();
    let dirs = MountDirs::of(&stack);
    let mnt = dirs.mnt.clone();
    let mut obs = Vec::new();
    let m = mount(kernel, &dirs, true);
    let p = |n: &str| mnt.join(n);
    fs::write(p("uf"), b"upper file\n").unwrap();
    fs::create_dir(p("udir")).unwrap();
    fs::write(p("udir/g"), b"in an upper dir\n").unwrap();
    fs::write(p("udel"), b"upper deleted\n").unwrap();
    fs::write(p("umoved"), b"upper moved\n").unwrap();
    sys::chmod(&p("lcopied"), 0o600).unwrap();
    let handles: Vec<(&str, Handle)> = NAMES
        .iter()
        .map(|n| (*n, name_to_handle(&p(n), 0).expect(n)))
        .collect();
    let ino_of_udel = fs::metadata(p("udel")).unwrap().ino();
    // Changes after the handles were taken.
    fs::remove_file(p("udel")).unwrap();
    fs::remove_file(p("ldel")).unwrap();
    fs::remove_file(p("h1")).unwrap();
    fs::remove_dir(p("lgone")).unwrap();
    sys::chmod(&p("lchmod"), 0o600).unwrap();
    fs::rename(p("lmoved"), p("udir/lmoved2")).unwrap();
    fs::rename(p("umoved"), p("udir/umoved2")).unwrap();
    fs::rename(p("ld"), p("ldmoved")).unwrap();
    // Often takes the inode number of `udel`: its old handle must not open it.
    fs::write(p("newfile"), b"new file\n").unwrap();
    obs.push(format!(
        "new file reuses the deleted one's inode: {}",
        fs::metadata(p("newfile")).unwrap().ino() == ino_of_udel
    ));
    // Writing through a handle of a lower file copies it up.
    let wh = name_to_handle(&p("lwrite"), 0).unwrap();
    drop_caches();
    {
        let mut f = open_by_handle(&mnt, &wh, libc::O_WRONLY | libc::O_APPEND).expect("O_WRONLY");
        f.write_all(b"appended\n").unwrap();
    }
    obs.push(format!(
        "after a write by handle: {:?}",
        fs::read_to_string(p("lwrite")).unwrap()
    ));
    // Each handle from cold caches: a listing done for an earlier one (readdirplus) would
    // otherwise leave the objects below it known and skip their decoding.
    for (n, h) in &handles {
        drop_caches();
        obs.push(format!(
            "drop_caches {n}: {}",
            open_outcome(&mnt, h, libc::O_RDONLY)
        ));
    }
    unmount(m);
    let m = mount(kernel, &dirs, true);
    for (n, h) in &handles {
        drop_caches();
        obs.push(format!(
            "remount {n}: {}",
            open_outcome(&mnt, h, libc::O_RDONLY)
        ));
    }
    obs.push(format!(
        "remount lwrite: {}",
        open_outcome(&mnt, &wh, libc::O_RDONLY)
    ));
    unmount(m);
    obs.push(format!(
        "lower layer untouched: {:?}",
        fs::read_to_string(stack.lowers[0].join("lwrite")).unwrap()
    ));
    obs
}

#[test]
fn handles_survive_cache_eviction_and_remount_as_on_the_kernel() {
    if !can_mount() {
        return;
    }
    let kernel = scenario(true);
    let ours = scenario(false);
    // Whether ext4 reused an inode number is up to it, not to the overlay. And the kernel
    // copies a lower file opened for writing by handle into its index only, with
    // `overlay.nlink` "U+0": the next mount takes that entry for an orphan and whites it
    // out ("orphan index entry"), after which the file reads EIO ("bad index found") and
    // its handle is stale. rlayerfs copies it up at its name, where it stays.
    let strip = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|l| !l.starts_with("new file reuses") && !l.starts_with("remount lwrite"))
            .cloned()
            .collect()
    };
    assert_eq!(
        strip(&ours),
        strip(&kernel),
        "rlayerfs (left) vs kernel overlayfs (right)"
    );
    // What the kernel does, stated: a check of the reference itself.
    let find = |key: &str| -> &str {
        ours.iter()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {ours:?}"))
    };
    for phase in ["drop_caches", "remount"] {
        let o = |n: &str| find(&format!("{phase} {n}: "));
        assert_eq!(o("lcopied"), "file \"copied before\\n\"");
        assert_eq!(o("uf"), "file \"upper file\\n\"");
        assert_eq!(o("ld"), "dir /ldmoved [bottom f sub]");
        assert_eq!(o("ld/bottom"), "file \"bottom of a merged dir\\n\"");
        assert_eq!(o("lb"), "file \"bottom layer\\n\"");
        assert_eq!(o("lf"), "file \"lower file\\n\"");
        assert_eq!(o("lchmod"), "file \"copied after\\n\"");
        assert_eq!(o("lmoved"), "file \"moved\\n\"");
        assert_eq!(o("umoved"), "file \"upper moved\\n\"");
        assert_eq!(o("h1"), "file \"hard link\\n\"");
        assert_eq!(o("ld/sub"), "dir /ldmoved/sub [deep]");
        assert_eq!(o("udir"), "dir /udir [g lmoved2 umoved2]");
        for gone in ["ldel", "udel", "lgone"] {
            assert_eq!(o(gone), format!("errno {}", libc::ESTALE), "{gone}");
        }
    }
    assert_eq!(
        find("after a write by handle: "),
        "\"written through a handle\\nappended\\n\""
    );
    assert_eq!(
        find("remount lwrite: "),
        "file \"written through a handle\\nappended\\n\""
    );
    assert_eq!(
        find("lower layer untouched: "),
        "\"written through a handle\\n\""
    );
}

#[test]
fn without_nfs_export_handles_are_refused_as_on_the_kernel() {
    if !can_mount() {
        return;
    }
    let mut seen = Vec::new();
    for kernel in [true, false] {
        let stack = lower_stack();
        let dirs = MountDirs::of(&stack);
        let m = mount(kernel, &dirs, false);
        let mut obs = Vec::new();
        for n in ["lf", "ld"] {
            let p = dirs.mnt.join(n);
            let full = name_to_handle(&p, 0).map_err(|e| sys::errno_of(&e));
            let fid = name_to_handle(&p, libc::AT_HANDLE_FID).map(|_| ());
            obs.push(format!(
                "{n}: {:?}, fid {:?}",
                full.map(|_| ()),
                fid.is_ok()
            ));
        }
        unmount(m);
        seen.push(obs);
    }
    assert_eq!(
        seen[1], seen[0],
        "rlayerfs (left) vs kernel overlayfs (right)"
    );
    assert_eq!(
        seen[1][0],
        format!("lf: Err({}), fid true", libc::EOPNOTSUPP)
    );
}

/// An `O_TMPFILE` file given a name, with `nfs_export=on`: the open file keeps working
/// (the node's generation is the same before and after the link: the kernel makes an inode
/// whose generation changes bad, and its I/O fails), and its handle opens it after
/// `drop_caches`.
#[test]
fn linked_tmpfile_keeps_its_generation_as_on_the_kernel() {
    use common::posix::{link_file, open_tmpfile, LinkVia};
    if !can_mount() {
        return;
    }
    let mut seen = Vec::new();
    for kernel in [true, false] {
        let stack = lower_stack();
        let dirs = MountDirs::of(&stack);
        let m = mount(kernel, &dirs, true);
        let t = dirs.mnt.join("t");
        let mut obs = Vec::new();
        let mut f = open_tmpfile(&dirs.mnt, libc::O_RDWR, 0o644).expect("O_TMPFILE");
        obs.push(format!(
            "write before: {:?}",
            f.write_all(b"before\n").is_ok()
        ));
        obs.push(format!("link: {:?}", link_file(&f, &t, LinkVia::ProcFd)));
        obs.push(format!(
            "write after: {:?}",
            f.write_all(b"after\n").is_ok()
        ));
        obs.push(format!("fsync: {:?}", f.sync_all().is_ok()));
        drop(f);
        obs.push(format!("by name: {:?}", fs::read_to_string(&t).ok()));
        let h = name_to_handle(&t, 0).expect("handle of the linked file");
        drop_caches();
        obs.push(format!(
            "by handle: {}",
            open_outcome(&dirs.mnt, &h, libc::O_RDONLY)
        ));
        unmount(m);
        seen.push(obs);
    }
    assert_eq!(
        seen[1], seen[0],
        "rlayerfs (left) vs kernel overlayfs (right)"
    );
    assert_eq!(seen[1][4], "by name: Some(\"before\\nafter\\n\")");
    assert_eq!(seen[1][5], "by handle: file \"before\\nafter\\n\"");
}
