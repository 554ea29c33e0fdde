//! Behaviour through a live mount, one module per operation, with kernel overlayfs
//! (index=on, redirect_dir=on) over an identical copy of the layers as the reference: each
//! test runs the same observation on both mounts (`common::live::same`) and requires equal
//! results, plus checks of its own where the brief states an absolute requirement (sparse
//! copy-up, statfs of the upper). Failure modes of the upper (`eio`, `enospc`), hostile
//! layers, inode flags, file handles, unnamed files, mount flags, kernel-written uppers, id
//! mappings, nested overlays, user-namespace mounts, the transports and the image loop
//! (`image`) are modules of the same crate, so that one build links them all.
//!
//! Skips (with a message) when not root or /dev/fuse is missing. A watchdog detaches a hung
//! mount so a deadlock fails the test instead of hanging the run.

#[path = "../common/mod.rs"]
mod common;

mod acl;
mod copy_up;
mod data;
mod eio;
mod enospc;
mod file_handles;
mod fileattr;
mod hard_links;
mod hostile;
mod ids;
mod image;
mod inodes;
mod kernel_uppers;
mod locks;
mod mmap;
mod mount_flags;
mod nesting;
mod open_during_copy_up;
mod privileges;
mod readdir;
mod rename;
mod rootless;
mod statfs;
mod tmpfile;
mod transport;
mod unlink;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::dump::{is_private_xattr, kind_name as kind};
use crate::common::fixture::Stack;
use crate::common::live::{Watchdog, TEST_LIMIT};
use crate::common::ops::{Op, RenameFlags};
use crate::common::posix::{errno, Errno};
use crate::common::{sys, Pair};

const MIB: u64 = 1 << 20;

/// A kernel/FUSE pair over copies of `stack`, with a watchdog. Bind as `let (pair, _wd)`:
/// the watchdog then drops before the pair.
fn pair(label: &str, stack: &Stack) -> (Pair, Watchdog) {
    let p = Pair::new(label, stack);
    let wd = Watchdog::for_pair(&p, TEST_LIMIT);
    (p, wd)
}

fn remount(pair: &mut Pair) {
    if let Err(report) = pair.remount() {
        panic!("{report}");
    }
}

/// Which of the named candidates `got` equals, else its length and first differing byte.
fn content(got: io::Result<Vec<u8>>, candidates: &[(&str, &[u8])]) -> String {
    let data = match got {
        Ok(d) => d,
        Err(e) => return format!("ERROR {}", sys::errno_of(&e)),
    };
    for (name, want) in candidates {
        if data == *want {
            return name.to_string();
        }
    }
    let (_, first) = candidates[0];
    let diff = data.iter().zip(first).position(|(a, b)| a != b);
    format!(
        "other content: len={} (want {}), first difference with {:?} at {diff:?}",
        data.len(),
        first.len(),
        candidates[0].0
    )
}

/// Type, mode, owner, nanosecond mtime, rdev, and size/nlink for non-directories (lstat).
fn describe(p: &Path) -> String {
    match fs::symlink_metadata(p) {
        Err(e) => format!("ERROR lstat {}", sys::errno_of(&e)),
        Ok(m) => {
            let mut s = format!(
                "{} mode={:o} owner={}:{} mtime={}.{:09}",
                kind(m.file_type()),
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                m.mtime(),
                m.mtime_nsec()
            );
            let ft = m.file_type();
            if ft.is_char_device() || ft.is_block_device() {
                s += &format!(" rdev={}:{}", libc::major(m.rdev()), libc::minor(m.rdev()));
            }
            if !ft.is_dir() {
                s += &format!(" size={} nlink={}", m.len(), m.nlink());
            }
            if ft.is_symlink() {
                s += &format!(" -> {:?}", fs::read_link(p).ok());
            }
            s
        }
    }
}

/// Sorted `name=hexvalue` of the non-private xattrs (lgetxattr).
fn xattrs(p: &Path) -> Vec<String> {
    let names = match sys::list_xattrs(p) {
        Ok(n) => n,
        Err(e) => return vec![format!("ERROR listxattr {}", sys::errno_of(&e))],
    };
    let mut out: Vec<String> = names
        .iter()
        .filter(|n| !is_private_xattr(n))
        .map(|n| match sys::get_xattr(p, n) {
            Ok(v) => format!(
                "{n}={}",
                v.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
            Err(e) => format!("{n}=ERROR {}", sys::errno_of(&e)),
        })
        .collect();
    out.sort();
    out
}

fn rw(p: &Path) -> Errno<File> {
    errno(OpenOptions::new().read(true).write(true).open(p))
}

fn ino(p: &Path) -> Option<u64> {
    fs::symlink_metadata(p).ok().map(|m| m.ino())
}

/// Sets POSIX ACL entries (`u:ID:PERMS,g:ID:PERMS`, on an object without an ACL yet) with
/// setfacl (package acl); without setfacl, writes the same ACL in the kernel's xattr format.
fn set_acl(p: &Path, default: bool, spec: &str) {
    let mut cmd = Command::new("setfacl");
    if default {
        cmd.arg("-d");
    }
    match cmd.arg("-m").arg(spec).arg(p).status() {
        Ok(st) if st.success() => return,
        Ok(st) => panic!("setfacl -m {spec} {}: {st}", p.display()),
        Err(_) => {}
    }
    let name = if default {
        "system.posix_acl_default"
    } else {
        "system.posix_acl_access"
    };
    let mode = fs::symlink_metadata(p).unwrap().mode();
    sys::set_xattr(p, name, &acl_xattr(mode, spec))
        .unwrap_or_else(|e| panic!("set {name} on {}: {e}", p.display()));
}

/// The binary `system.posix_acl_*` value setfacl would write for `spec` on an object with
/// `mode` and no ACL: owner/group/other from the mode, the named entries, and a mask that
/// is the union of the group-class entries.
fn acl_xattr(mode: u32, spec: &str) -> Vec<u8> {
    const UNDEFINED: u32 = u32::MAX;
    let perms = |s: &str| -> u16 {
        s.chars()
            .map(|c| match c {
                'r' => 4,
                'w' => 2,
                'x' => 1,
                _ => 0,
            })
            .sum()
    };
    let (mut users, mut groups) = (Vec::new(), Vec::new());
    for item in spec.split(',') {
        let parts: Vec<&str> = item.split(':').collect();
        let id: u32 = parts[1].parse().expect("numeric id in ACL spec");
        match parts[0] {
            "u" => users.push((id, perms(parts[2]))),
            "g" => groups.push((id, perms(parts[2]))),
            other => panic!("ACL spec tag {other:?}"),
        }
    }
    users.sort();
    groups.sort();
    let group_obj = ((mode >> 3) & 7) as u16;
    let mask = users
        .iter()
        .chain(&groups)
        .fold(group_obj, |m, (_, p)| m | p);
    let mut entries = vec![(0x01u16, ((mode >> 6) & 7) as u16, UNDEFINED)];
    entries.extend(users.iter().map(|&(id, p)| (0x02, p, id)));
    entries.push((0x04, group_obj, UNDEFINED));
    entries.extend(groups.iter().map(|&(id, p)| (0x08, p, id)));
    entries.push((0x10, mask, UNDEFINED));
    entries.push((0x20, (mode & 7) as u16, UNDEFINED));
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// An object carrying every kind of metadata copy-up must keep.
fn rich_file(stack: &Stack, rel: &str) {
    let l = stack.lower(0);
    l.file_with(rel, b"rich content\n", 0o4755, 1000, 1001);
    let p = l.path(rel);
    set_acl(&p, false, "u:1000:rwx,g:100:r-x");
    l.xattr(rel, "trusted.t", b"trusted value")
        .xattr(rel, "user.u", b"user value")
        .xattr(rel, "security.capability", &capability_v2());
    sys::set_times(&p, (1_500_000_000, 111), (1_600_000_123, 456_789_012)).unwrap();
}

fn rich_dir(stack: &Stack, rel: &str) {
    let l = stack.lower(0);
    l.dir_with(rel, 0o2775, 1000, 1001);
    let p = l.path(rel);
    set_acl(&p, false, "u:1000:rwx,g:100:r-x");
    set_acl(&p, true, "u:1000:rwx,g:100:r-x");
    l.xattr(rel, "trusted.t", b"dir trusted")
        .xattr(rel, "user.u", b"dir user");
    l.file(&format!("{rel}/child"), b"child");
    sys::set_times(&p, (1_500_000_000, 222), (1_600_000_456, 987_654_321)).unwrap();
}

/// A v2 `security.capability` value: effective, permitted = CAP_NET_BIND_SERVICE.
fn capability_v2() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    v.extend_from_slice(&(1u32 << 10).to_le_bytes());
    v.extend_from_slice(&[0u8; 12]);
    v
}

const NOBODY: u32 = 65534;

fn perl_read() -> &'static str {
    r#"sysopen(my $f, $ARGV[0], O_RDONLY) or exit($!+0); my $b; defined(sysread($f, $b, 100)) or exit($!+0); print $b; exit 0;"#
}

fn perl_write() -> &'static str {
    r#"sysopen(my $f, $ARGV[0], O_WRONLY) or exit($!+0); exit 0;"#
}

fn perl_create() -> &'static str {
    r#"sysopen(my $f, $ARGV[0], O_WRONLY|O_CREAT|O_EXCL, 0644) or exit($!+0); exit 0;"#
}

fn rn(from: &str, to: &str, flags: RenameFlags) -> Op {
    Op::Rename {
        from: from.into(),
        to: to.into(),
        flags,
    }
}

fn rd(p: &str) -> Op {
    Op::ReadDir { path: p.into() }
}

/// Unmounts a kernel mount made directly with `sys::mount` on drop.
struct KernelUnmount(PathBuf);

impl Drop for KernelUnmount {
    fn drop(&mut self) {
        let _ = common::mount::unmount_path(&self.0, |m| sys::umount2(m, 0));
    }
}

/// `pwrite` at an offset, writing everything.
trait WriteAt {
    fn write_at_all(&self, data: &[u8], off: u64) -> io::Result<()>;
}

impl WriteAt for File {
    fn write_at_all(&self, data: &[u8], off: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, data, off)
    }
}
