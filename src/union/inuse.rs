//! One upper, one daemon: a mount marks its upperdir and workdir in use for the daemon's
//! whole life, as kernel overlayfs does (it refuses them to a second mount with EBUSY,
//! "upperdir is in-use"). Two daemons writing one upper corrupt it unseen, and a second
//! mount empties the workdir's scratch under a live daemon's half-built copy-ups.
//!
//! The mark is an exclusive `flock` on our own open file description of each directory:
//! nothing is written to disk, the fd is `O_CLOEXEC` (no child keeps it), it pins nothing a
//! layer fd does not already pin, and the kernel drops it when the daemon dies, SIGKILL
//! included. It is taken before the workdir is prepared, so the scratch emptying never runs
//! under a live daemon.
//!
//! An unmount returns before the old daemon has noticed it (the kernel ends the connection;
//! the daemon's reads then fail and it exits), and containers/storage remounts at once: a
//! lock found held is waited for, briefly, before the mount is refused. The daemon releases
//! it as soon as its serving threads are done (see `mount::run`).
//!
//! Kernel overlay mounts take no such lock: their `upperdir=`/`workdir=` options in
//! /proc/self/mountinfo are compared (by device and inode) instead.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::layer::Layer;

/// How long a new mount waits for the lock of a daemon that may be exiting.
pub const LOCK_WAIT: Duration = Duration::from_secs(3);
const LOCK_POLL: Duration = Duration::from_millis(10);

/// The held in-use marks; dropped (or [`InUseLock::release`]d) to free the directories.
#[derive(Debug)]
pub struct InUseLock {
    fds: Vec<OwnedFd>,
}

impl InUseLock {
    /// Marks `upper` and `work` in use, or says (one line) which one another mount uses.
    pub fn acquire(upper: &Layer, work: &Layer) -> Result<InUseLock, String> {
        let dirs = [(upper, "upperdir"), (work, "workdir")];
        for (layer, what) in dirs {
            if let Some(mnt) = kernel_overlay_using(layer) {
                return Err(format!(
                    "{what} {} is in use by the kernel overlay mount at {}",
                    layer.path.display(),
                    mnt.display()
                ));
            }
        }
        // Fresh open file descriptions: a flock belongs to one, so the layer fds the core
        // uses (and dups of them) are independent of the mark.
        let deadline = Instant::now() + LOCK_WAIT;
        let mut fds = Vec::new();
        for (layer, what) in dirs {
            let fd = rustix::fs::openat(
                layer.root.as_fd(),
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| format!("{what} {}: {e}", layer.path.display()))?;
            match lock_waiting(&fd, deadline) {
                Ok(()) => fds.push(fd),
                Err(Errno::WOULDBLOCK) => {
                    return Err(format!(
                        "{what} {} is in use by another mount (a live rlayerfs daemon holds it)",
                        layer.path.display()
                    ))
                }
                // A filesystem without flock (or a flock that cannot be had on a directory,
                // NFS): mount unmarked rather than not at all, as before.
                Err(e) => tracing::warn!(
                    dir = %layer.path.display(),
                    error = %e,
                    "cannot mark the {what} in use; a second mount will not be refused"
                ),
            }
        }
        Ok(InUseLock { fds })
    }

    /// Frees the directories now (the daemon no longer serves), before the rest of the exit.
    pub fn release(&self) {
        for fd in &self.fds {
            let _ = rustix::fs::flock(fd, FlockOperation::Unlock);
        }
    }
}

/// Takes the exclusive lock, retrying until `deadline` while another holds it.
fn lock_waiting(fd: &OwnedFd, deadline: Instant) -> rustix::io::Result<()> {
    loop {
        match rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive) {
            Err(Errno::WOULDBLOCK) if Instant::now() < deadline => std::thread::sleep(LOCK_POLL),
            Err(Errno::INTR) => {}
            r => return r,
        }
    }
}

/// The mount point of a kernel overlay mount whose upperdir or workdir is `layer`'s
/// directory (same device and inode), from /proc/self/mountinfo.
fn kernel_overlay_using(layer: &Layer) -> Option<PathBuf> {
    let st = rustix::fs::fstat(&layer.root).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        if fields.get(sep + 1) != Some(&"overlay") {
            return None;
        }
        let uses = fields.get(sep + 3)?.split(',').any(|opt| {
            let Some(value) = opt
                .strip_prefix("upperdir=")
                .or_else(|| opt.strip_prefix("workdir="))
            else {
                return false;
            };
            let path = unescape_option(value);
            rustix::fs::stat(Path::new(&path))
                .is_ok_and(|o| o.st_dev == st.st_dev && o.st_ino == st.st_ino)
        });
        if uses {
            fields.get(4).map(|m| PathBuf::from(unescape_option(m)))
        } else {
            None
        }
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space) and then the option string's own
/// backslash escapes (`\,` for a comma), which the kernel shows as given.
fn unescape_option(s: &str) -> String {
    let b = s.as_bytes();
    let mut octal = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let esc = b[i] == b'\\'
            && b.len() > i + 3
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        if esc {
            octal.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            octal.push(b[i]);
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(octal.len());
    let mut it = octal.into_iter().peekable();
    while let Some(c) = it.next() {
        if c == b'\\' && it.peek().is_some_and(|n| matches!(n, b',' | b':' | b'\\')) {
            continue;
        }
        out.push(c);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_values_are_unescaped() {
        assert_eq!(unescape_option(r"/t/w\040x\134\054y"), "/t/w x,y");
        assert_eq!(unescape_option("/plain"), "/plain");
    }
}
