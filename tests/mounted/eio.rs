//! An upper that fails with EIO: the upper and workdir live on a loop-mounted ext4 image
//! that is shut down (`FS_IOC_SHUTDOWN`, as a dying disk or `xfs_io -c shutdown` would do)
//! while mounted. Every operation that needs the upper then fails with the upper's errno,
//! exactly as on kernel overlayfs over an identical image (the observations are compared);
//! nothing hangs (watchdog), the daemon stays alive, answers, unmounts and exits cleanly,
//! and the lower layer is untouched.

#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use crate::common;

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::live::{assert_same, is_zombie, Watchdog};
use common::sys::errno_of;
use common::{can_mount, dump_tree_with, DumpOptions, FuseMount, KernelOverlay, MountDirs, Stack};

/// `FS_IOC_SHUTDOWN` (`_IOR('X', 125, __u32)`) and its "no log flush" mode.
const FS_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
const FS_SHUTDOWN_FLAGS_NOLOGFLUSH: u32 = 2;

/// An ext4 image loop-mounted on a fresh temporary directory; unmounted on drop.
struct Ext4 {
    /// Holds the image and the mountpoint; removed after the unmount in `drop`.
    _dir: tempfile::TempDir,
    mnt: std::path::PathBuf,
}

impl Ext4 {
    fn new() -> Option<Ext4> {
        let dir = tempfile::Builder::new()
            .prefix("rlayerfs-eio-")
            .tempdir()
            .unwrap();
        let img = dir.path().join("img");
        let mnt = dir.path().join("fs");
        fs::create_dir(&mnt).unwrap();
        fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        if !ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img)) {
            eprintln!("SKIP: mkfs.ext4 (package e2fsprogs) failed or is missing");
            return None;
        }
        if !ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt))
        {
            eprintln!("SKIP: cannot loop-mount an ext4 image");
            return None;
        }
        Some(Ext4 { _dir: dir, mnt })
    }

    fn path(&self) -> &Path {
        &self.mnt
    }

    /// Shuts the filesystem down: from now on its operations fail with EIO.
    fn shut_down(&self) {
        let d = fs::File::open(&self.mnt).unwrap();
        let flags = FS_SHUTDOWN_FLAGS_NOLOGFLUSH;
        let r = unsafe { libc::ioctl(d.as_raw_fd(), FS_IOC_SHUTDOWN, &flags) };
        assert_eq!(r, 0, "FS_IOC_SHUTDOWN: {}", io::Error::last_os_error());
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        if let Err(e) = common::sys::umount2(&self.mnt, 0) {
            eprintln!("warning: umount {}: {e}", self.mnt.display());
            let _ = common::sys::umount2(&self.mnt, libc::MNT_DETACH);
        }
    }
}

fn errno<T>(r: io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| errno_of(&e))
}

fn read(p: &Path) -> Result<Vec<u8>, i32> {
    errno(fs::File::open(p).and_then(|mut f| {
        let mut v = Vec::new();
        f.read_to_end(&mut v).map(|_| v)
    }))
}

/// The scenario; returns what it observed (compared between kernel overlayfs and rlayerfs).
fn scenario(root: &Path, upper: &Ext4, daemon_alive: &dyn Fn() -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    let mut note = |what: &str, v: String| seen.push(format!("{what}: {v}"));
    // Before: the upper works.
    note(
        "create pre",
        format!(
            "{:?}",
            errno(fs::write(root.join("pre"), b"written before"))
        ),
    );
    let app = errno(
        OpenOptions::new()
            .append(true)
            .open(root.join("a"))
            .and_then(|mut f| f.write_all(b"+more")),
    );
    note("append a (copy-up)", format!("{app:?}"));
    upper.shut_down();
    // After: everything that needs the upper gets its EIO.
    note(
        "read pre",
        format!("{:?}", read(&root.join("pre")).map(|v| v.len())),
    );
    note(
        "create new",
        format!("{:?}", errno(fs::write(root.join("new"), b"x"))),
    );
    note(
        "mkdir d2",
        format!("{:?}", errno(fs::create_dir(root.join("d2")))),
    );
    note(
        "chmod b (copy-up)",
        format!(
            "{:?}",
            errno(fs::set_permissions(
                root.join("b"),
                fs::Permissions::from_mode(0o600)
            ))
        ),
    );
    let app = errno(
        OpenOptions::new()
            .append(true)
            .open(root.join("c"))
            .and_then(|mut f| f.write_all(b"+more")),
    );
    note("append c (copy-up)", format!("{app:?}"));
    note(
        "unlink e (whiteout)",
        format!("{:?}", errno(fs::remove_file(root.join("e")))),
    );
    note(
        "rename dir/x",
        format!(
            "{:?}",
            errno(fs::rename(root.join("dir/x"), root.join("dir/y")))
        ),
    );
    // A lower file never looked up before: its lookup needs the upper too.
    note(
        "read f",
        format!("{:?}", read(&root.join("f")).map(|v| v.len())),
    );
    note("alive", daemon_alive().to_string());
    seen
}

#[test]
fn failing_upper_gives_eio_and_nothing_hangs() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file("a", b"lower a")
        .file("b", b"lower b")
        .file("c", b"lower c")
        .file("e", b"lower e")
        .file("f", b"lower f")
        .file("dir/x", b"lower x");
    let raw = DumpOptions {
        mtime: true,
        private_xattrs: true,
        ..DumpOptions::default()
    };
    let lower_before = dump_tree_with(&stack.lowers[0], raw);

    let Some(kfs) = Ext4::new() else { return };
    let kdirs = MountDirs::with_upper_in(&stack, kfs.path());
    let k = KernelOverlay::mount_dirs(&kdirs).unwrap();
    let want = scenario(k.path(), &kfs, &|| true);
    k.unmount().unwrap();

    let Some(ffs) = Ext4::new() else { return };
    let fdirs = MountDirs::with_upper_in(&stack, ffs.path());
    let m = FuseMount::mount_dirs(&fdirs).unwrap();
    let _dog = Watchdog::arm(
        "eio",
        vec![m.path().to_path_buf()],
        Duration::from_secs(120),
    );
    let pids = m.daemons().to_vec();
    assert!(!pids.is_empty());
    let alive = || {
        pids.iter()
            .all(|&p| !is_zombie(p) && Path::new(&format!("/proc/{p}")).exists())
    };
    let got = scenario(m.path(), &ffs, &alive);
    m.unmount().unwrap();
    for line in &got {
        eprintln!("{line}");
    }
    assert_same(
        "eio",
        "observations",
        "kernel overlayfs".into(),
        &want,
        "rlayerfs",
        &got,
    );
    // The kernel's own results, so that a change on both sides is noticed too.
    assert!(want.iter().any(|l| l == "create new: Err(5)"), "{want:?}");
    assert_eq!(
        dump_tree_with(&stack.lowers[0], raw),
        lower_before,
        "the lower layer changed"
    );
}
