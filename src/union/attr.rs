//! Attributes: stat, setattr (chmod, chown, truncate, utimens), readlink and xattrs.
//! Reads go to wherever the object lives now (`UnionFs::real`, in `crate::union::inode`);
//! every change copies the object up first (`UnionFs::prepare_write`, in
//! `crate::union::copy_up`).

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use rustix::fs::{Mode, OFlags, Timestamps};

use crate::error::{Error, OsContext, Result, Where};
use crate::format::override_stat::{self, OverrideStat};
use crate::format::xattr;
use crate::sys;
use crate::union::dirfd::LayerKey;
use crate::union::inode::RealLoc;
use crate::union::setid::KillSetIds;
use crate::union::Ino;
use crate::union::{Attr, Caller, Timespec, UnionFs};

/// A time to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(Timespec),
}

/// The changes of one setattr call.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    /// Open handle the change came through, if any.
    pub fh: Option<u64>,
    /// The set-id bits the change clears and who makes it, when the kernel leaves that to
    /// the daemon (see [`crate::union::setid`]).
    pub kill: Option<(KillSetIds, Caller)>,
}

/// `/proc/self/fd/N` for path-based calls on an `O_PATH` fd.
pub(crate) fn proc_path(fd: &impl AsRawFd) -> CString {
    crate::sys::proc_fd_path(fd)
}

fn to_timestamp(t: Option<TimeSet>) -> rustix::fs::Timespec {
    match t {
        None => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeSet::Now) => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeSet::At(ts)) => rustix::fs::Timespec {
            tv_sec: ts.sec,
            tv_nsec: ts.nsec as _,
        },
    }
}

impl UnionFs {
    /// stat of a node.
    pub fn getattr(&self, Ino(ino): Ino) -> Result<Attr> {
        let loc = self.real(ino)?;
        // One fstatat by name unless the override xattr must be read too (then one handle
        // serves both).
        let (st, over) = if self.reads_override() {
            let fd = self.open_real_path(&loc)?;
            let st = rustix::fs::fstat(&*fd).at("stat", loc.at())?;
            (st, self.read_override_stat(fd.as_fd(), st.st_mode))
        } else {
            (self.stat_real(&loc)?, None)
        };
        let mut attr = Attr::from_stat(ino, &st);
        let nodes = self.nodes.read();
        let node = nodes.get(ino)?;
        let data = node.data().cloned();
        let merged = match (node.lower(), node.upper) {
            (Some(_), true) => true,
            (Some(l), false) => l.merged(),
            _ => false,
        };
        if node.is_dir && merged {
            attr.nlink = 1;
        }
        if !node.is_dir {
            attr.nlink = (attr.nlink as i64 + node.nlink_offset()).max(0) as u32;
        }
        drop(nodes);
        if let Some(d) = data {
            // A metacopy file's blocks are its data's, as kernel overlayfs shows them.
            attr.blocks = d.blocks;
        }
        let shifted = matches!(loc, RealLoc::Lower(l, _) if self.stack.lower(l).shifted);
        let mut attr = self.present(attr, over, shifted);
        if st.st_mode & libc::S_IFMT == libc::S_IFREG
            && st.st_size == 0
            && self.is_inner_whiteout_at(&loc)?
        {
            attr.show_inner_whiteout();
        }
        Ok(attr)
    }

    /// Whether the object at `loc` carries the mark of an inner overlay's whiteout (see
    /// [`xattr::INNER_WHITEOUT_XATTRS`]).
    pub(crate) fn is_inner_whiteout_at(&self, loc: &RealLoc) -> Result<bool> {
        for n in xattr::INNER_WHITEOUT_XATTRS {
            if self.get_xattr_real(loc, OsStr::new(n))?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The birth time of the real object behind `ino`, where its filesystem records one
    /// (statx `STATX_BTIME`): what kernel overlayfs reports, since it passes statx on to
    /// the upper or lower object (a copy-up is born at copy-up).
    pub fn btime(&self, Ino(ino): Ino) -> Result<Option<Timespec>> {
        use rustix::fs::{statx, AtFlags, StatxFlags};
        let loc = self.real(ino)?;
        let sx = match &loc {
            RealLoc::Upper(p) | RealLoc::Lower(_, p) => {
                let layer = match &loc {
                    RealLoc::Lower(l, _) => LayerKey::Lower(*l),
                    _ => LayerKey::Upper,
                };
                match self.parent_in(layer, p)? {
                    (pfd, Some(name), _) => {
                        statx(&*pfd, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BTIME)
                    }
                    (pfd, None, _) => statx(&*pfd, "", AtFlags::EMPTY_PATH, StatxFlags::BTIME),
                }
            }
            _ => {
                let fd = self.open_real_path(&loc)?;
                statx(&*fd, "", AtFlags::EMPTY_PATH, StatxFlags::BTIME)
            }
        }
        .at("statx", loc.at())?;
        Ok(
            (sx.stx_mask & StatxFlags::BTIME.bits() != 0).then_some(Timespec {
                sec: sx.stx_btime.tv_sec,
                nsec: sx.stx_btime.tv_nsec,
            }),
        )
    }

    /// The ownership override of a real object (directories and regular files only, as
    /// fuse-overlayfs): the configured xattr first, then the other names. A malformed value
    /// is ignored, so the real attributes stand.
    pub(crate) fn read_override_stat(&self, fd: BorrowedFd<'_>, mode: u32) -> Option<OverrideStat> {
        let ty = mode & libc::S_IFMT;
        if ty != libc::S_IFDIR && ty != libc::S_IFREG {
            return None;
        }
        let first = self.opts.ids.override_write;
        first
            .into_iter()
            .chain(
                override_stat::OVERRIDE_NAMES
                    .into_iter()
                    .filter(|n| Some(*n) != first),
            )
            .find_map(|n| match sys::get_xattr(fd, OsStr::new(n)) {
                Ok(Some(v)) => OverrideStat::parse(&v),
                _ => None,
            })
    }

    /// Attributes as the mount shows them: the override applied, then ids mapped (unless the
    /// object sits in a `shifted` layer, whose ids are mapped already) or squashed.
    pub(crate) fn present(
        &self,
        mut attr: Attr,
        over: Option<OverrideStat>,
        shifted: bool,
    ) -> Attr {
        if let Some((mode, uid, gid, rdev)) = over.and_then(|o| o.apply(attr.mode, attr.rdev)) {
            if mode & libc::S_IFMT != attr.mode & libc::S_IFMT {
                // A regular file standing for a special file: no data to show.
                attr.size = 0;
                attr.blocks = 0;
            }
            attr.mode = mode;
            attr.uid = uid;
            attr.gid = gid;
            attr.rdev = rdev;
        }
        let ids = &self.opts.ids;
        if !ids.is_identity() {
            if shifted {
                attr.uid = ids.squash_uid.unwrap_or(attr.uid);
                attr.gid = ids.squash_gid.unwrap_or(attr.gid);
            } else {
                attr.uid = ids.uid_to_mount(attr.uid);
                attr.gid = ids.gid_to_mount(attr.gid);
            }
        }
        attr
    }

    /// Reads a symlink.
    pub fn readlink(&self, Ino(ino): Ino) -> Result<Vec<u8>> {
        let loc = self.real(ino)?;
        let fd = self.open_real_path(&loc)?;
        let target = rustix::fs::readlinkat(&*fd, "", Vec::new()).at("readlink", loc.at())?;
        Ok(target.into_bytes())
    }

    /// Changes attributes, copying the object up first.
    pub fn setattr(&self, Ino(ino): Ino, set: &SetAttr) -> Result<Attr> {
        if let Some(c) = crate::union::fileattr::setattr_change(set) {
            self.check_change(ino, c)?;
        }
        // Judged on the attributes before the change (a chgrp by the old group).
        let killed = match set.kill {
            Some((kill, caller)) => self.killed_mode(ino, kill, caller)?,
            None => None,
        };
        // A chmod alone is done on the copy a copy-up makes, before it has a name.
        let chmod_only = set.uid.is_none()
            && set.gid.is_none()
            && set.size.is_none()
            && self.opts.ids.override_write.is_none();
        let mut mode_done = false;
        if set.size.is_some() {
            self.prepare_data(ino)?;
        } else if let (Some(mode), true) = (set.mode, chmod_only) {
            mode_done = self.prepare_chmod(ino, mode)?;
        } else {
            self.prepare_write(ino)?;
        }
        let loc = self.real(ino)?;
        let at = loc.at();
        if let RealLoc::Lower(..) = loc {
            return Err(Error::Invariant("setattr on a lower object"));
        }
        // An upper object is changed by name in its parent's cached fd (the calls never
        // follow a symlink there): no handle to open, stat and close per change.
        let (dir, child): (Arc<OwnedFd>, OsString) = match &loc {
            RealLoc::Upper(p) => match self.parent_in(LayerKey::Upper, p)? {
                (pfd, Some(name), _) => (pfd, name.to_owned()),
                (pfd, None, _) => (pfd, OsString::new()),
            },
            _ => (self.open_real_path(&loc)?, OsString::new()),
        };
        let ids = &self.opts.ids;
        // Ids given through the mount are stored as host ids. With squashing a chown that
        // cannot be done is not an error (fuse-overlayfs): the owner shown does not change.
        let squash = ids.squashing();
        let host_uid = match set.uid.map(|u| ids.uid_to_disk(u)).transpose() {
            Ok(v) => v,
            Err(_) if squash => None,
            Err(e) => return Err(e),
        };
        let host_gid = match set.gid.map(|g| ids.gid_to_disk(g)).transpose() {
            Ok(v) => v,
            Err(_) if squash => None,
            Err(e) => return Err(e),
        };
        let override_name = match ids.override_write {
            Some(name) if set.uid.is_some() || set.gid.is_some() || set.mode.is_some() => {
                Some(name)
            }
            _ => None,
        };
        let overridden = match override_name {
            Some(name) => {
                let fd = self.open_real_path(&loc)?;
                let st = rustix::fs::fstat(&*fd).at("stat", at)?;
                let ty = st.st_mode & libc::S_IFMT;
                if ty == libc::S_IFLNK && set.mode.is_some() {
                    return Err(Error::NotSupported);
                }
                (ty == libc::S_IFDIR || ty == libc::S_IFREG).then_some((name, fd, st))
            }
            None => None,
        };
        match overridden {
            // xattr_permissions: owner and mode live in the override xattr, as fuse-overlayfs
            // writes them; the real object keeps the daemon's ownership.
            Some((name, fd, st)) => {
                let cur = self
                    .read_override_stat(fd.as_fd(), st.st_mode)
                    .unwrap_or(OverrideStat {
                        uid: st.st_uid,
                        gid: st.st_gid,
                        mode: st.st_mode & 0o7777,
                        kind: None,
                    });
                let new = OverrideStat {
                    uid: host_uid.unwrap_or(cur.uid),
                    gid: host_gid.unwrap_or(cur.gid),
                    mode: set.mode.map(|m| m & 0o7777).unwrap_or(cur.mode),
                    kind: cur.kind,
                };
                sys::set_xattr(fd.as_fd(), OsStr::new(name), new.format().as_bytes(), 0)
                    .at("set override xattr", at)?;
            }
            None => {
                if host_uid.is_some() || host_gid.is_some() {
                    match sys::chown_at(dir.as_fd(), &child, host_uid, host_gid) {
                        Err(_) if squash => {}
                        r => r.at("chown", at)?,
                    }
                }
                if let Some(mode) = set.mode.filter(|_| !mode_done) {
                    match sys::chmod_at(dir.as_fd(), &child, mode & 0o7777) {
                        // A symlink's mode cannot change.
                        Err(rustix::io::Errno::OPNOTSUPP) => return Err(Error::NotSupported),
                        r => r.at("chmod", at)?,
                    }
                }
            }
        }
        if let Some(size) = set.size {
            let via_handle = set.fh.and_then(|fh| self.handles.file(fh).ok());
            match via_handle {
                Some(h) if h.writable => rustix::fs::ftruncate(&h.file, size).at("truncate", at)?,
                _ => {
                    let w = if child.is_empty() {
                        rustix::fs::open(
                            &*proc_path(&*dir),
                            OFlags::WRONLY | OFlags::CLOEXEC,
                            Mode::empty(),
                        )
                    } else {
                        rustix::fs::openat(
                            &*dir,
                            &child,
                            OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )
                    }
                    .at("open for truncate", at)?;
                    rustix::fs::ftruncate(&w, size).at("truncate", at)?;
                }
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let ts = Timestamps {
                last_access: to_timestamp(set.atime),
                last_modification: to_timestamp(set.mtime),
            };
            sys::set_times_at(dir.as_fd(), &child, &ts).at("utimens", at)?;
        }
        let nothing = set.mode.is_none()
            && set.uid.is_none()
            && set.gid.is_none()
            && set.size.is_none()
            && set.atime.is_none()
            && set.mtime.is_none();
        if nothing {
            // The kernel sends a SETATTR carrying no attribute for a change that still
            // counts as one (`chown(path, -1, -1)`: ATTR_CTIME alone). Kernel overlayfs
            // passes it on to the upper object, whose ctime moves: a chown to no new
            // owner does the same here.
            sys::chown_at(dir.as_fd(), &child, None, None).at("chown", at)?;
        }
        let a = self.getattr(Ino(ino))?;
        match killed {
            // What the filesystem below kept of the set-id bits (it saw the daemon's
            // privilege, not the caller's) goes now.
            Some(mode) if a.mode & 0o7777 != mode => self.setattr(
                Ino(ino),
                &SetAttr {
                    mode: Some(mode),
                    ..SetAttr::default()
                },
            ),
            _ => Ok(a),
        }
    }

    /// The on-disk name of an xattr named by a user, or why it cannot be used.
    fn disk_xattr_name(name: &OsStr) -> Result<std::borrow::Cow<'_, OsStr>> {
        if let Some(escaped) = xattr::escape_xattr(name) {
            return Ok(std::borrow::Cow::Owned(escaped));
        }
        if xattr::is_private_xattr(name) {
            return Err(Error::NotSupported);
        }
        Ok(std::borrow::Cow::Borrowed(name))
    }

    fn no_data(at: Where) -> Error {
        Error::Os {
            op: "getxattr",
            errno: libc::ENODATA,
            at,
        }
    }

    /// Reads one xattr. Private overlay xattrs do not exist for users; their own
    /// `trusted.overlay.*` ones are stored escaped.
    pub fn getxattr(&self, Ino(ino): Ino, name: &OsStr) -> Result<Vec<u8>> {
        let disk = match self.user_xattr_name(name) {
            Ok(n) => n,
            Err(_) => return Err(Self::no_data(Where::Unknown)),
        };
        let loc = self.real(ino)?;
        // An inner whiteout shows as a device: its stored whiteout xattr is not there.
        if xattr::is_escaped_whiteout(&disk) && self.is_inner_whiteout_at(&loc)? {
            return Err(Self::no_data(loc.at()));
        }
        let value = self
            .get_xattr_real(&loc, &disk)?
            .ok_or_else(|| Self::no_data(loc.at()))?;
        // An idmapped mount translates ACL ids itself.
        if matches!(loc, RealLoc::Lower(l, _) if self.stack.lower(l).shifted) {
            return Ok(value);
        }
        Ok(self.opts.ids.xattr_to_mount(name, value))
    }

    /// [`Self::disk_xattr_name`], and the override xattrs are private while this mount
    /// interprets them.
    fn user_xattr_name<'a>(&self, name: &'a OsStr) -> Result<std::borrow::Cow<'a, OsStr>> {
        if self.reads_override() && override_stat::is_override_xattr(name) {
            return Err(Error::NotSupported);
        }
        Self::disk_xattr_name(name)
    }

    /// Lists xattrs, without the private ones, escaped ones under their user names.
    pub fn listxattr(&self, Ino(ino): Ino) -> Result<Vec<OsString>> {
        let loc = self.real(ino)?;
        let fd = self.open_real_path(&loc)?;
        let names = sys::list_xattrs(fd.as_fd()).at("listxattr", loc.at())?;
        let hide_override = self.reads_override();
        // An inner whiteout shows as the device it was made as: none of the xattrs a
        // device cannot carry (`user.*`), nor its stored whiteout xattr.
        let device = names
            .iter()
            .any(|n| xattr::INNER_WHITEOUT_XATTRS.iter().any(|m| n == m))
            && rustix::fs::fstat(&*fd).at("stat", loc.at())?.st_mode & libc::S_IFMT
                == libc::S_IFREG;
        Ok(names
            .into_iter()
            .filter(|n| {
                !(device && (n.as_bytes().starts_with(b"user.") || xattr::is_escaped_whiteout(n)))
            })
            .filter(|n| !xattr::is_private_xattr(n))
            .filter(|n| !(hide_override && override_stat::is_override_xattr(n)))
            .map(|n| xattr::unescape_xattr(&n).unwrap_or(n))
            .collect())
    }

    /// Sets an xattr (copy-up first) on behalf of `caller`.
    pub fn setxattr(
        &self,
        Ino(ino): Ino,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        caller: Caller,
    ) -> Result<()> {
        let disk = self.user_xattr_name(name)?;
        let value = self.opts.ids.xattr_to_disk(name, value)?;
        self.check_change(ino, crate::union::fileattr::Change::Xattr)?;
        let fd = self.upper_object(ino)?;
        sys::set_xattr(fd.as_fd(), &disk, &value, flags).at("setxattr", Where::Upper)?;
        if name == crate::union::acl::ACCESS_XATTR && !value.is_empty() {
            self.kill_sgid_of_outsider(ino, caller)?;
        }
        Ok(())
    }

    /// Clears set-group-id after a change by a caller outside the object's group without
    /// CAP_FSETID: an access ACL set (the kernel's `posix_acl_update_mode`; FUSE would ask
    /// with FUSE_SETXATTR_ACL_KILL_SGID only under FUSE_SETXATTR_EXT, which fuser does not
    /// speak) or a fallocate (`file_modified`). The daemon acts with its own privilege, so
    /// the filesystem below keeps the bit.
    pub(crate) fn kill_sgid_of_outsider(&self, ino: u64, caller: Caller) -> Result<()> {
        let a = self.getattr(Ino(ino))?;
        if a.mode & libc::S_ISGID == 0
            || sys::process::in_group_or_capable(caller.pid, caller.gid, a.gid).unwrap_or(true)
        {
            return Ok(());
        }
        let set = SetAttr {
            mode: Some(a.mode & 0o7777 & !libc::S_ISGID),
            ..SetAttr::default()
        };
        self.setattr(Ino(ino), &set).map(drop)
    }

    /// Removes an xattr (copy-up first, unless it does not exist).
    pub fn removexattr(&self, Ino(ino): Ino, name: &OsStr) -> Result<()> {
        let disk = self.user_xattr_name(name)?;
        let loc = self.real(ino)?;
        let fd = self.open_real_path(&loc)?;
        if sys::get_xattr(fd.as_fd(), &disk)
            .at("getxattr", loc.at())?
            .is_none()
        {
            return Err(Self::no_data(loc.at()));
        }
        self.check_change(ino, crate::union::fileattr::Change::Xattr)?;
        let fd = self.upper_object(ino)?;
        sys::remove_xattr(fd.as_fd(), &disk).at("removexattr", Where::Upper)
    }

    /// Copies up and returns an `O_PATH` handle on the upper object.
    fn upper_object(&self, ino: u64) -> Result<Arc<OwnedFd>> {
        self.prepare_write(ino)?;
        let loc = self.real(ino)?;
        self.open_real_path(&loc)
    }
}
