//! Hostile layers: symlinks pointing outside (absolute, `../..`), symlinked parent
//! directories, names with newlines and 255 bytes, very deep trees and FIFOs. Reading,
//! copying up and deleting everything through the mount must never touch anything outside
//! the layers (canary files keep content, mode, owner and times) and never hang.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::can_mount;
use common::dump::dump_tree;
use common::fixture::Stack;
use common::mount::FuseMount;

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
    if !can_mount("hostile_layer_cannot_reach_outside") {
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
