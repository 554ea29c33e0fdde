//! statfs: the upper filesystem's figures, or the top lower's without an upper.

use std::fs::{self};
use std::path::{Path, PathBuf};

use crate::common;
use crate::common::fixture::Stack;
use crate::common::live::{assert_same, fuse_name, Watchdog, TEST_LIMIT};
use crate::common::mount::{FuseMount, KernelOverlay, MountDirs};
use crate::common::posix::{self};
use crate::common::{can_mount, sys};

use super::KernelUnmount;

#[test]
fn statfs_reports_the_upper_filesystem() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let shm = Path::new("/dev/shm");
    if posix::statfs_type(shm) != Ok(libc::TMPFS_MAGIC) {
        eprintln!("SKIP {name}: /dev/shm is not a tmpfs");
        return;
    }
    // Lowers on the stack's filesystem (/tmp), uppers and workdirs on tmpfs.
    let stack = Stack::new(1);
    stack.lower(0).file("f", b"f").file("d/g", b"g");
    let tmp = tempfile::Builder::new()
        .prefix("rlayerfs-statfs-")
        .tempdir_in(shm)
        .unwrap();
    let dirs = |tag: &str, mnt: PathBuf| {
        let (u, w) = (
            tmp.path().join(format!("{tag}-upper")),
            tmp.path().join(format!("{tag}-work")),
        );
        fs::create_dir(&u).unwrap();
        fs::create_dir(&w).unwrap();
        MountDirs {
            lowers: stack.lowers.clone(),
            upper: u,
            work: w,
            mnt,
        }
    };
    let (kd, fd) = (
        dirs("k", stack.mnt.clone()),
        dirs("f", stack.fresh_dir("fmnt")),
    );
    let k = KernelOverlay::mount_dirs(&kd).expect("mount kernel overlay");
    let f = FuseMount::mount_dirs(&fd).expect("mount FUSE");
    let _wd = Watchdog::arm(name, vec![kd.mnt.clone(), fd.mnt.clone()], TEST_LIMIT);
    let upper = posix::statvfs(&kd.upper).unwrap();
    let lower = posix::statvfs(&stack.lowers[0]).unwrap();
    assert_ne!(
        upper.blocks, lower.blocks,
        "test needs distinct filesystems"
    );
    let obs = |root: &Path| {
        ["", "f", "d", "d/g"]
            .iter()
            .map(|p| {
                let s = posix::statvfs(&root.join(p));
                let shown = s.map(|s| {
                    format!(
                        "bsize={} blocks={} files={} namemax={}",
                        s.bsize, s.blocks, s.files, s.namemax
                    )
                });
                format!("{p:?}: {shown:?} upper's: {}", s == Ok(upper))
            })
            .collect::<Vec<_>>()
    };
    let (ko, fo) = (obs(k.path()), obs(f.path()));
    assert_same(
        name,
        "statfs through the mount",
        "kernel".into(),
        &ko,
        &fuse_name(),
        &fo,
    );
    assert!(
        fo.iter().all(|l| l.ends_with("upper's: true")),
        "[{name}] statfs is not the upper's ({upper:?}): {fo:#?}"
    );
    drop(_wd);
    drop(f);
    drop(k);
}

/// Without an upper layer, kernel overlayfs reports the top lower's filesystem.
#[test]
fn statfs_without_upper_reports_the_top_lower() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let shm = Path::new("/dev/shm");
    if posix::statfs_type(shm) != Ok(libc::TMPFS_MAGIC) {
        eprintln!("SKIP {name}: /dev/shm is not a tmpfs");
        return;
    }
    // Top lower on tmpfs, bottom lower on the stack's filesystem.
    let stack = Stack::new(1);
    stack.lower(0).file("bottom", b"b");
    let top = tempfile::Builder::new()
        .prefix("rlayerfs-statfs-")
        .tempdir_in(shm)
        .unwrap();
    fs::write(top.path().join("top"), b"t").unwrap();
    let dirs = |mnt: PathBuf| MountDirs {
        lowers: vec![top.path().to_path_buf(), stack.lowers[0].clone()],
        upper: PathBuf::new(),
        work: PathBuf::new(),
        mnt,
    };
    let (kd, fd) = (dirs(stack.mnt.clone()), dirs(stack.fresh_dir("fmnt")));
    let lowerdir = format!(
        "lowerdir={}:{}",
        top.path().display(),
        stack.lowers[0].display()
    );
    sys::mount("overlay", &kd.mnt, "overlay", &lowerdir).expect("mount kernel overlay (ro)");
    let _k = KernelUnmount(kd.mnt.clone());
    let f = FuseMount::mount_read_only(&fd).expect("mount FUSE read-only");
    let _wd = Watchdog::arm(name, vec![kd.mnt.clone(), fd.mnt.clone()], TEST_LIMIT);
    let want = posix::statvfs(top.path()).unwrap();
    let obs = |root: &Path| {
        ["", "top", "bottom"]
            .iter()
            .map(|p| {
                format!(
                    "{p:?}: top lower's: {}",
                    posix::statvfs(&root.join(p)) == Ok(want)
                )
            })
            .collect::<Vec<_>>()
    };
    let (ko, fo) = (obs(&kd.mnt), obs(f.path()));
    assert_same(
        name,
        "statfs without upper",
        "kernel".into(),
        &ko,
        &fuse_name(),
        &fo,
    );
}
