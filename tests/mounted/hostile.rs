//! Hostile layers: symlinks pointing outside (absolute, `../..`), symlinked parent
//! directories, names with newlines and 255 bytes, very deep trees and FIFOs. Reading,
//! copying up and deleting everything through the mount must never touch anything outside
//! the layers (canary files keep content, mode, owner and times) and never hang. Also FIFOs
//! where files are expected, and lower files swapped for symlinks during copy-up.

use crate::common;

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::can_mount;
use common::dump::dump_tree;
use common::fixture::Stack;
use common::live::{same, Watchdog};
use common::mount::FuseMount;
use common::Pair;

use rustix::fs::{Mode, OFlags};

const DEPTH: usize = 4000;

/// Builds `d/d/…/d/leaf` (`depth` levels) under `base` with relative calls.
fn make_deep(base: &Path, depth: usize) {
    let mut cur = rustix::fs::open(base, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
    for _ in 0..depth {
        rustix::fs::mkdirat(&cur, "d", Mode::from_raw_mode(0o755)).unwrap();
        cur =
            rustix::fs::openat(&cur, "d", OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
    }
    let f = rustix::fs::openat(
        &cur,
        "leaf",
        OFlags::WRONLY | OFlags::CREATE,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    rustix::io::write(&f, b"deep").unwrap();
}

struct Canary {
    dir: tempfile::TempDir,
}

impl Canary {
    fn new() -> Canary {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), b"do not touch").unwrap();
        std::fs::set_permissions(
            dir.path().join("secret"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), b"inner").unwrap();
        Canary { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn snapshot(&self) -> String {
        dump_tree(self.path())
            + &std::fs::metadata(self.path().join("secret"))
                .map(|m| format!("{} {} {}", m.mode(), m.uid(), m.mtime_nsec()))
                .unwrap()
    }
}

fn walk_all(root: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk_all(&p, out);
        }
    }
}

#[test]
fn hostile_layer_cannot_reach_outside() {
    if !can_mount() {
        return;
    }
    let canary = Canary::new();
    let c = canary.path().display().to_string();
    let before = canary.snapshot();
    let stack = Stack::new(2);
    let long = "n".repeat(255);
    stack
        .lower(1)
        .symlink("abs", &c)
        .symlink("abs_file", &format!("{c}/secret"))
        .symlink("up", "../../../../../../../../../..")
        .symlink("root", "/")
        .symlink("dirlink", &format!("{c}/sub"))
        .file("dirlink_shadow/f", b"lower")
        .file("new\nline", b"x")
        .file(&long, b"long name")
        .fifo("fifo")
        .file("plain", b"plain");
    // The top layer replaces a directory's parent by a symlink to the canary.
    stack
        .lower(0)
        .symlink("dirlink_shadow", &format!("{c}/sub"));
    // A tree deeper than PATH_MAX allows to name in one path.
    make_deep(&stack.lower(0).path(""), DEPTH);

    let m = FuseMount::mount(&stack).unwrap();
    let root = m.path().to_path_buf();
    // Reach the deep leaf through the mount (relative opens), read it and copy it up.
    let mut cur = rustix::fs::open(&root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
    for _ in 0..DEPTH {
        cur =
            rustix::fs::openat(&cur, "d", OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
    }
    let leaf =
        rustix::fs::openat(&cur, "leaf", OFlags::RDWR | OFlags::APPEND, Mode::empty()).unwrap();
    rustix::io::write(&leaf, b"+up").unwrap();
    drop(leaf);
    let leaf = rustix::fs::openat(&cur, "leaf", OFlags::RDONLY, Mode::empty()).unwrap();
    let mut buf = [0u8; 16];
    let n = rustix::io::read(&leaf, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"deep+up");
    drop((leaf, cur));
    // Read everything, never following symlinks ourselves.
    let mut all = Vec::new();
    walk_all(&root, &mut all);
    all.retain(|p| !p.starts_with(root.join("d")));
    for p in &all {
        let md = std::fs::symlink_metadata(p).unwrap();
        if md.file_type().is_file() {
            let _ = std::fs::read(p).unwrap();
        }
    }
    // Copy up everything: chown (no follow), chmod and writes on regular files, xattrs.
    for p in &all {
        let md = std::fs::symlink_metadata(p).unwrap();
        let _ = std::os::unix::fs::lchown(p, Some(4242), Some(4242));
        if md.file_type().is_file() {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::OpenOptions::new().append(true).open(p).unwrap();
        }
    }
    // The symlinks are shown, not followed by the daemon.
    assert_eq!(std::fs::read_link(root.join("abs")).unwrap(), Path::new(&c));
    assert!(std::fs::symlink_metadata(root.join("dirlink_shadow"))
        .unwrap()
        .file_type()
        .is_symlink());
    // Writing through the mount into a path whose parent is a symlink goes where the
    // *caller's* resolution leads, which is the canary: the daemon is not involved then.
    // Remove everything through the mount, with a watchdog against hangs (the FIFO).
    let (tx, rx) = std::sync::mpsc::channel();
    let r2 = root.clone();
    std::thread::spawn(move || {
        let res = std::process::Command::new("rm")
            .arg("-rf")
            .arg("--one-file-system")
            .args(std::fs::read_dir(&r2).unwrap().flatten().map(|e| e.path()))
            .status();
        let _ = tx.send(res.map(|s| s.success()));
    });
    let done = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("rm -rf hung");
    assert!(done.unwrap(), "rm -rf failed");
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    m.unmount().unwrap();
    assert_eq!(canary.snapshot(), before, "the canary changed");
    // The lowers are untouched too.
    assert_eq!(
        std::fs::read(stack.lower(1).path("plain")).unwrap(),
        b"plain"
    );
}

/// FIFOs where files are expected (`etc/passwd`, `bin/sh`): every operation that makes the
/// daemon touch the object (lookup, copy-up by chown/chmod/xattr/utimes, link, rename,
/// opens that the kernel answers for FIFOs) completes without blocking and gives what
/// kernel overlayfs gives.
#[test]
fn fifo_where_a_file_is_expected() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(2);
    stack
        .lower(1)
        .fifo("etc/passwd")
        .file("etc/hosts", b"127.0.0.1 localhost\n")
        .fifo("bin/sh");
    stack.lower(0).fifo("etc/group").dir("etc");
    let pair = Pair::new(name, &stack);
    let _wd = Watchdog::for_pair(&pair, Duration::from_secs(60));
    let nonblock = |p: &Path, write: bool| {
        std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .custom_flags(libc::O_NONBLOCK)
            .open(p)
            .and_then(|mut f| {
                let mut buf = Vec::new();
                if write {
                    Ok(0)
                } else {
                    f.read_to_end(&mut buf)
                }
            })
            .map_err(|e| e.raw_os_error())
    };
    same(&pair, "operations on FIFOs", |root, _| {
        let mut obs = Vec::new();
        for f in ["etc/passwd", "etc/group", "bin/sh"] {
            let p = root.join(f);
            obs.push(format!("{f} read nonblock: {:?}", nonblock(&p, false)));
            obs.push(format!("{f} write nonblock: {:?}", nonblock(&p, true)));
            obs.push(format!(
                "{f} lchown: {:?}",
                std::os::unix::fs::lchown(&p, Some(7), Some(7)).map_err(|e| e.raw_os_error())
            ));
            obs.push(format!(
                "{f} chmod: {:?}",
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| e.raw_os_error())
            ));
            obs.push(format!(
                "{f} setxattr: {:?}",
                common::sys::set_xattr(&p, "trusted.x", b"1").map_err(|e| e.raw_os_error())
            ));
            obs.push(format!(
                "{f} link: {:?}",
                std::fs::hard_link(&p, root.join(format!("{f}.link")))
                    .map_err(|e| e.raw_os_error())
            ));
            obs.push(format!(
                "{f} truncate: {:?}",
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&p)
                    .and_then(|f| f.set_len(0))
                    .map_err(|e| e.raw_os_error())
            ));
            obs.push(format!(
                "{f} rename: {:?}",
                std::fs::rename(&p, root.join(format!("{f}.moved"))).map_err(|e| e.raw_os_error())
            ));
        }
        obs.push(dump_tree(root));
        obs
    });
    drop(pair);
}

/// Another process swaps lower files for symlinks to a canary (and back, atomically with
/// RENAME_EXCHANGE) while the mount copies them up by write, chown, chmod and truncate.
/// The daemon never follows a layer's symlink: the canary keeps content, mode, owner and
/// times; every copied-up object is either the complete original file, its metadata only
/// (a metacopy file) or the symlink itself; the daemon stays alive and the mount answers.
#[test]
fn layer_file_swapped_for_symlink_during_copy_up() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    const FILES: usize = 24;
    let canary = Canary::new();
    let before = canary.snapshot();
    let secret = canary.path().join("secret");
    let stack = Stack::new(1);
    let content = |i: usize| vec![b'a' + (i % 26) as u8; (2 << 20) + i];
    for i in 0..FILES {
        stack.lower(0).file(&format!("f{i}"), &content(i));
        stack
            .lower(0)
            .symlink(&format!(".swap{i}"), &secret.display().to_string());
    }
    let m = FuseMount::mount(&stack).unwrap();
    let root = m.path().to_path_buf();
    let _wd = common::live::Watchdog::arm(name, vec![root.clone()], Duration::from_secs(90));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (lower, stop2) = (stack.lower(0).path(""), stop.clone());
    let swapper = std::thread::spawn(move || {
        let mut swaps = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            for i in 0..FILES {
                common::sys::renameat2(
                    &lower.join(format!("f{i}")),
                    &lower.join(format!(".swap{i}")),
                    libc::RENAME_EXCHANGE,
                )
                .unwrap();
                swaps += 1;
            }
        }
        swaps
    });
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..FILES {
        let p = root.join(format!("f{i}"));
        let r = match i % 4 {
            0 => std::fs::OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
                .map(|_| ()),
            1 => std::os::unix::fs::lchown(&p, Some(4242), Some(4242)),
            2 => std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
                .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600))),
            _ => std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
                .and_then(|f| f.set_len(1 << 20)),
        };
        let key = match r {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(0)),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    // The mount still answers and the daemon is alive.
    assert!(std::fs::read_dir(&root).unwrap().count() >= FILES);
    for &pid in m.daemons() {
        assert!(!common::live::is_zombie(pid), "daemon {pid} died");
    }
    m.unmount().unwrap();
    eprintln!("{swaps} swaps; copy-up outcomes {outcomes:?}");
    assert_eq!(canary.snapshot(), before, "the canary changed");
    // Each upper object is the whole original file (possibly truncated to 1 MiB by the
    // truncate case) or the symlink, never the canary's data nor a partial copy.
    for i in 0..FILES {
        let p = stack.upper.join(format!("f{i}"));
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.file_type().is_symlink() {
            assert_eq!(std::fs::read_link(&p).unwrap(), secret);
            continue;
        }
        assert!(md.file_type().is_file(), "f{i}: {:?}", md.file_type());
        let orig = content(i);
        if common::sys::get_xattr(&p, "trusted.overlay.metacopy").is_ok() {
            // A metadata-only copy-up (chown, chmod): no data, the original's size.
            assert_eq!(md.len(), orig.len() as u64, "f{i}: metacopy file's size");
            assert!(md.blocks() < 16, "f{i}: a metacopy file holds data");
            continue;
        }
        let data = std::fs::read(&p).unwrap();
        assert!(
            data == orig || (i % 4 == 3 && data[..] == orig[..1 << 20]),
            "f{i}: upper copy of {} bytes is not the original ({} bytes)",
            data.len(),
            orig.len()
        );
    }
}
