//! flock and fcntl locks, held by one process and tested from another.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common;
use crate::common::can_mount;
use crate::common::fixture::Stack;
use crate::common::live::{as_user, same};
use crate::common::posix::{self};

use super::{pair, rw};

/// A POSIX write lock on the whole file from another process: `Ok` or the errno.
fn posix_lock_from_child(p: &Path) -> Result<String, i32> {
    as_user(
        0,
        0,
        r#"open(my $fh, "+<", $ARGV[0]) or exit($!+0);
           my $fl = pack("s s x4 q q i x4", F_WRLCK, SEEK_SET, 0, 0, 0);
           fcntl($fh, F_SETLK, $fl) or exit($!+0); exit 0;"#,
        &[p],
    )
}

/// `flock -n PATH true` from another process: exit status.
fn flock_from_child(p: &Path) -> Option<i32> {
    Command::new("flock")
        .arg("-n")
        .arg(p)
        .arg("true")
        .stdin(Stdio::null())
        .status()
        .ok()
        .and_then(|s| s.code())
}

#[test]
fn flock_and_fcntl_locks() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file("f", b"lock me")
        .file("r", b"read-only first");
    let (pair, _wd) = pair(name, &stack);
    same(&pair, "locks", |root, _| {
        let mut obs = Vec::new();
        let p = root.join("f");
        let a = rw(&p).expect("open a");
        let b = rw(&p).expect("open b");
        // BSD flock.
        obs.push(format!("flock a EX: {:?}", posix::flock(&a, libc::LOCK_EX)));
        obs.push(format!(
            "flock b EX|NB: {:?}",
            posix::flock(&b, libc::LOCK_EX | libc::LOCK_NB)
        ));
        obs.push(format!(
            "flock b SH|NB: {:?}",
            posix::flock(&b, libc::LOCK_SH | libc::LOCK_NB)
        ));
        obs.push(format!("flock -n from a child: {:?}", flock_from_child(&p)));
        obs.push(format!("flock a UN: {:?}", posix::flock(&a, libc::LOCK_UN)));
        obs.push(format!(
            "flock b EX|NB: {:?}",
            posix::flock(&b, libc::LOCK_EX | libc::LOCK_NB)
        ));
        obs.push(format!("flock b UN: {:?}", posix::flock(&b, libc::LOCK_UN)));
        // Open-file-description locks.
        let wr = libc::F_WRLCK as i16;
        let rd = libc::F_RDLCK as i16;
        let un = libc::F_UNLCK as i16;
        obs.push(format!(
            "OFD a WR 0+10: {:?}",
            posix::fcntl_lock(&a, libc::F_OFD_SETLK, wr, 0, 10)
        ));
        obs.push(format!(
            "OFD b RD 5+10: {:?}",
            posix::fcntl_lock(&b, libc::F_OFD_SETLK, rd, 5, 10)
        ));
        obs.push(format!(
            "OFD b GETLK WR 0+100: {:?}",
            posix::fcntl_lock(&b, libc::F_OFD_GETLK, wr, 0, 100)
        ));
        obs.push(format!(
            "OFD b WR 10+10: {:?}",
            posix::fcntl_lock(&b, libc::F_OFD_SETLK, wr, 10, 10)
        ));
        obs.push(format!(
            "OFD a UN: {:?}",
            posix::fcntl_lock(&a, libc::F_OFD_SETLK, un, 0, 0)
        ));
        obs.push(format!(
            "OFD b UN: {:?}",
            posix::fcntl_lock(&b, libc::F_OFD_SETLK, un, 0, 0)
        ));
        // Classic POSIX locks: ours, then another process.
        obs.push(format!(
            "F_SETLK a WR: {:?}",
            posix::fcntl_lock(&a, libc::F_SETLK, wr, 0, 0).map(|l| l.kind)
        ));
        obs.push(format!(
            "F_GETLK b (same process): {:?}",
            posix::fcntl_lock(&b, libc::F_GETLK, wr, 0, 0).map(|l| l.kind)
        ));
        obs.push(format!(
            "F_SETLK from a child: {:?}",
            posix_lock_from_child(&p)
        ));
        obs.push(format!(
            "F_SETLK a UN: {:?}",
            posix::fcntl_lock(&a, libc::F_SETLK, un, 0, 0).map(|l| l.kind)
        ));
        obs.push(format!(
            "F_SETLK from a child after unlock: {:?}",
            posix_lock_from_child(&p)
        ));
        drop((a, b));
        // A lock taken through a read-only fd of a lower file, then a copy-up by a writer:
        // still the same file for locking.
        let r = root.join("r");
        let ro = File::open(&r).expect("open r");
        obs.push(format!(
            "r: flock ro EX: {:?}",
            posix::flock(&ro, libc::LOCK_EX)
        ));
        obs.push(format!(
            "r: F_SETLK ro RD: {:?}",
            posix::fcntl_lock(&ro, libc::F_SETLK, rd, 0, 0).map(|l| l.kind)
        ));
        let w = rw(&r).expect("open r rw");
        obs.push(format!(
            "r: flock rw (after copy-up) EX|NB: {:?}",
            posix::flock(&w, libc::LOCK_EX | libc::LOCK_NB)
        ));
        obs.push(format!(
            "r: flock -n from a child: {:?}",
            flock_from_child(&r)
        ));
        obs.push(format!(
            "r: F_SETLK WR from a child: {:?}",
            posix_lock_from_child(&r)
        ));
        obs
    });
}
