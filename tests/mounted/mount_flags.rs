//! VFS mount flags given as `-o` options (`noatime`, `strictatime`, `nodiratime`, `lazytime`,
//! `nosymfollow`, `sync`, …), compared with kernel overlayfs mounted with the same option by
//! mount(8): the flags the mount table shows, what they do (symlinks refused, atime updated
//! or not by reads), and fuse-overlayfs's `sync=0` accepted.
//!
//! Skips (with a message) when not root or /dev/fuse is missing.

use crate::common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::can_mount;
use common::fixture::Stack;
use common::mount::{kernel_opts, FuseMount, KernelOverlay, MountDirs};

/// Per-mount flags and the superblock flags that matter here (`sync`, `lazytime`), from the
/// mountinfo line of `mnt`.
fn flags_of(mnt: &Path) -> String {
    let want = fs::canonicalize(mnt).unwrap();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == want.to_str())
        .unwrap_or_else(|| panic!("{} not in mountinfo", want.display()));
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|f| *f == "-").unwrap();
    let sb: Vec<&str> = fields[sep + 3]
        .split(',')
        .filter(|o| matches!(*o, "sync" | "lazytime" | "ro" | "rw"))
        .collect();
    format!("mount {} sb {}", fields[5], sb.join(","))
}

/// (seconds, nanoseconds) of the atime `stat` shows.
fn atime(p: &Path) -> (i64, i64) {
    let m = fs::metadata(p).unwrap();
    (m.atime(), m.atime_nsec())
}

/// What the option does, seen through the mount at `mnt`.
fn observe(mnt: &Path) -> Vec<String> {
    let mut obs = vec![flags_of(mnt)];
    let f = mnt.join("f");
    fs::write(&f, b"x\n").unwrap();
    let a0 = atime(&f);
    std::thread::sleep(Duration::from_millis(1100));
    fs::read(&f).unwrap();
    let a1 = atime(&f);
    std::thread::sleep(Duration::from_millis(1100));
    fs::read(&f).unwrap();
    let a2 = atime(&f);
    obs.push(format!(
        "first read updates atime: {}, second read: {}",
        a1 > a0,
        a2 > a1
    ));
    std::os::unix::fs::symlink("f", mnt.join("s")).unwrap();
    obs.push(format!(
        "open through a symlink: {:?}",
        fs::read(mnt.join("s")).map_err(|e| e.raw_os_error())
    ));
    obs
}

/// Kernel overlayfs with `-o OPT` through mount(8) (which turns VFS flags into mount flags).
fn kernel_mount(dirs: &MountDirs, opt: &str) -> KernelOverlay {
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("{},{},{opt}", dirs.options(), kernel_opts()))
        .arg(&dirs.mnt)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount -t overlay -o …,{opt}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    KernelOverlay::adopt(&dirs.mnt)
}

#[test]
fn vfs_flags_match_kernel_overlayfs() {
    if !can_mount() {
        return;
    }
    let mut failures = Vec::new();
    for opt in [
        "relatime",
        "noatime",
        "strictatime",
        "nodiratime",
        "lazytime",
        "nosymfollow",
        "sync",
        "noatime,nodiratime,nosymfollow",
    ] {
        let (k, f) = (Stack::new(1), Stack::new(1));
        let kdirs = MountDirs::of(&k);
        let kernel = kernel_mount(&kdirs, opt);
        let want = observe(&kdirs.mnt);
        kernel.unmount().unwrap();
        let fdirs = MountDirs::of(&f);
        let fuse = FuseMount::mount_with(&fdirs, &format!("{},{opt}", fdirs.options()))
            .unwrap_or_else(|e| panic!("-o {opt}: {e}"));
        let got = observe(&fdirs.mnt);
        fuse.unmount().unwrap();
        if got != want {
            failures.push(format!("-o {opt}:\n  kernel {want:?}\n  fuse   {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// fuse-overlayfs's scripts pass `sync=0`/`sync=1`: off and on, as `async` and `sync`.
#[test]
fn sync_with_a_value_is_accepted() {
    if !can_mount() {
        return;
    }
    for (opt, want) in [("sync=0", ""), ("sync=1", ",sync")] {
        let st = Stack::new(1);
        let dirs = MountDirs::of(&st);
        let fuse = FuseMount::mount_with(&dirs, &format!("{},{opt}", dirs.options()))
            .unwrap_or_else(|e| panic!("-o {opt}: {e}"));
        let flags = flags_of(&dirs.mnt);
        fuse.unmount().unwrap();
        assert!(
            flags.ends_with(&format!("sb rw{want}")),
            "-o {opt}: {flags}"
        );
    }
}

/// A read-only mount with `strictatime` (xfstests generic/003) updates no access time:
/// listing an upper directory and reading an upper file leave both atimes of the real upper
/// files as they were, as on kernel overlayfs (seen in the upper after the unmount: a
/// read-only FUSE mount keeps the cached atime).
#[test]
fn read_only_mount_updates_no_atime() {
    if !can_mount() {
        return;
    }
    let observe_ro = |mnt: &Path| {
        std::thread::sleep(Duration::from_millis(1100));
        fs::read_dir(mnt.join("d")).unwrap().for_each(drop);
        fs::read(mnt.join("d/f")).unwrap();
    };
    let stack = || {
        let st = Stack::new(1);
        fs::create_dir(st.upper.join("d")).unwrap();
        fs::write(st.upper.join("d/f"), b"x\n").unwrap();
        let before = (atime(&st.upper.join("d")), atime(&st.upper.join("d/f")));
        (st, before)
    };
    let changed = |st: &Stack, before: ((i64, i64), (i64, i64))| {
        format!(
            "dir atime changed: {}, file atime changed: {}",
            atime(&st.upper.join("d")) != before.0,
            atime(&st.upper.join("d/f")) != before.1
        )
    };
    let opt = "ro,strictatime";
    let ((k, kb), (f, fb)) = (stack(), stack());
    let kdirs = MountDirs::of(&k);
    let kernel = kernel_mount(&kdirs, opt);
    observe_ro(&kdirs.mnt);
    kernel.unmount().unwrap();
    let want = changed(&k, kb);
    let fdirs = MountDirs::of(&f);
    let fuse = FuseMount::mount_with(&fdirs, &format!("{},{opt}", fdirs.options()))
        .unwrap_or_else(|e| panic!("-o {opt}: {e}"));
    observe_ro(&fdirs.mnt);
    fuse.unmount().unwrap();
    let got = changed(&f, fb);
    assert_eq!(got, want, "-o {opt}: fuse vs kernel");
}
