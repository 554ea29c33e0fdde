//! Changes to the namespace: create (file, dir, symlink, node, hard link), unlink, rmdir
//! and rename, with kernel overlayfs semantics.
//!
//! - A name that a lower layer still holds gets a whiteout when removed.
//! - Something created where a whiteout stood is built in the work directory and renamed
//!   over the whiteout in one step; a directory created there is opaque.
//! - A directory removed from the upper is first moved out (to the work directory, or
//!   swapped with a whiteout), so the name switches atomically; its leftover whiteouts
//!   are deleted afterwards.
//! - A renamed directory that has lower content gets a redirect xattr (relative name
//!   within the same lower parent, absolute path otherwise), as kernel overlayfs with
//!   `redirect_dir=on` writes it; a pure-upper directory moved over a lower name becomes
//!   opaque.
//!
//! All of this runs under `ns_lock`. This file holds what the operations share (what the
//! upper holds at a name, whiteouts, the owner of a new object, the checks before a
//! removal); `create.rs`, `remove.rs` and `rename.rs` hold one operation each.

mod create;
mod remove;
mod rename;

pub use create::NewKind;

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, OsContext, Result, Where};
use crate::format::override_stat::OverrideStat;
use crate::format::whiteout::{self, WhiteoutKind, WriteFormat};
use crate::sys;
use crate::union::acl;
use crate::union::fileattr::{refuses, Change, Prot};
use crate::union::inode::Lower;
use crate::union::lookup::{DirInfo, LowerChild, Resolved};
use crate::union::{ids, Caller, UnionFs};

/// What the upper holds at a name that is absent from the merged view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpperSlot {
    Empty,
    /// A whiteout object (char 0/0 or xattr whiteout) sits at the name.
    WhiteoutObject,
    /// A `.wh.NAME` file marks the name.
    WhiteoutFile,
}

fn upper_slot(pfd: BorrowedFd<'_>, name: &OsStr) -> Result<UpperSlot> {
    match rustix::fs::statat(pfd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => return Ok(UpperSlot::WhiteoutObject),
        Err(Errno::NOENT) => {}
        Err(e) => return Err(Error::os("stat", e, Where::Upper)),
    }
    if crate::union::lookup::whiteout_file_hides(pfd, name)? {
        return Ok(UpperSlot::WhiteoutFile);
    }
    Ok(UpperSlot::Empty)
}

/// The mode and owner a new object gets (see [`UnionFs::new_owner`]).
pub(crate) struct NewOwner {
    /// The parent's default ACL, if any: the new object inherits it.
    pub(crate) default_acl: Option<Vec<u8>>,
    /// Permission bits, the umask applied unless a default ACL governs.
    pub(crate) perm: u32,
    /// The parent's ownership override (xattr_permissions), if any.
    pub(crate) parent_override: Option<OverrideStat>,
    /// The parent is set-group-id (as shown): the new object takes its group.
    pub(crate) setgid_parent: bool,
    /// The owner to store, as on disk.
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl NewOwner {
    /// Whether an object the daemon made itself in upper dir `pst` already has this owner
    /// (its own ids, the parent's group under a set-group-id parent), so that a chown
    /// would change nothing.
    pub(crate) fn made_with(&self, pst: &rustix::fs::Stat) -> bool {
        let kernel_gid = if self.setgid_parent {
            pst.st_gid
        } else {
            rustix::process::getegid().as_raw()
        };
        self.parent_override.is_none()
            && self.uid == rustix::process::geteuid().as_raw()
            && self.gid == kernel_gid
    }
}

impl UnionFs {
    pub(crate) fn upper_dir_fd(&self, ino: u64) -> Result<Arc<OwnedFd>> {
        let path = self.nodes.read().path_of(ino)?;
        self.upper_dir(&path)
    }

    /// The mode and owner an object that `caller` creates with `mode` and `umask` in
    /// upper directory `pfd` (stat `pst`) gets, as the kernel's `inode_init_owner`.
    pub(crate) fn new_owner(
        &self,
        pfd: BorrowedFd<'_>,
        pst: &rustix::fs::Stat,
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> NewOwner {
        // Under a default ACL the umask does not apply: the filesystem derives the new
        // object's permissions from the ACL (and the daemon runs with umask 0).
        let default_acl = sys::get_dir_xattr(pfd, OsStr::new(acl::DEFAULT_XATTR))
            .ok()
            .flatten();
        let perm = if default_acl.is_some() {
            mode & 0o7777
        } else {
            mode & 0o7777 & !umask
        };
        let ids = &self.opts.ids;
        // With an override xattr the parent's shown mode and group are in it.
        let parent_override = if self.reads_override() {
            self.read_override_stat(pfd, pst.st_mode)
        } else {
            None
        };
        let (pmode, pgid) = match parent_override {
            Some(o) => (o.mode, o.gid),
            None => (pst.st_mode, pst.st_gid),
        };
        let setgid_parent = pmode & libc::S_ISGID != 0;
        // The caller's ids as stored on disk. A caller outside the mapping (podman, as host
        // root, creating /etc/mtab in a container root mapped elsewhere) still creates: the
        // object is stored with the overflow id, as fuse-overlayfs does.
        let uid = ids.uid_to_disk(caller.uid).unwrap_or(ids::OVERFLOW_ID);
        let gid = if setgid_parent {
            pgid
        } else {
            ids.gid_to_disk(caller.gid).unwrap_or(ids::OVERFLOW_ID)
        };
        NewOwner {
            default_acl,
            perm,
            parent_override,
            setgid_parent,
            uid,
            gid,
        }
    }

    /// Whether the lower layers (ignoring the upper) show `name` in directory `info`.
    /// An xattr whiteout the lower index lists (see `lookup::build_lower_dir`) is no
    /// object: kernel overlayfs's `ovl_lower_positive` makes no whiteout over one.
    fn lower_has(&self, info: &DirInfo, name: &OsStr) -> Result<bool> {
        let Some(l) = &info.lower else {
            return Ok(false);
        };
        match self.lower_child(l, name)? {
            None => Ok(false),
            Some(found @ Lower::Entry { .. }) => {
                let top = found
                    .top()
                    .ok_or(Error::Invariant("lower entry without a layer"))?;
                let path = found.path_at(name);
                let st = self.stat_lower(top, &path)?;
                Ok(!self.lower_is_xattr_whiteout(top, &path, &st)?)
            }
            Some(_) => Ok(true),
        }
    }

    /// Puts a whiteout at `name` in upper dir `pfd`, replacing a non-directory there.
    fn put_whiteout(
        &self,
        fmt: WriteFormat,
        pfd: BorrowedFd<'_>,
        name: &OsStr,
        replace: bool,
    ) -> Result<()> {
        match fmt.whiteout {
            WhiteoutKind::CharDev => {
                if replace {
                    let work = self.work_dir()?;
                    let tmp = self.tmp_name();
                    rustix::fs::mknodat(work, &tmp, FileType::CharacterDevice, Mode::empty(), 0)
                        .at("mknod whiteout", Where::Work)?;
                    rustix::fs::renameat(work, &tmp, pfd, name).at("publish whiteout", Where::Upper)
                } else {
                    rustix::fs::mknodat(pfd, name, FileType::CharacterDevice, Mode::empty(), 0)
                        .at("mknod whiteout", Where::Upper)
                }
            }
            WhiteoutKind::WhFile => {
                let wh = whiteout::whiteout_file_name(name);
                if wh.len() > 255 {
                    return Err(Error::NameTooLong);
                }
                // A user's own `.wh.NAME` holds the slot this format needs.
                if rustix::fs::statat(pfd, &wh, AtFlags::SYMLINK_NOFOLLOW).is_ok()
                    && crate::union::lookup::is_literal(pfd, &wh)?
                {
                    return Err(Error::Exists);
                }
                rustix::fs::openat(
                    pfd,
                    &wh,
                    OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                    Mode::from_raw_mode(0o600),
                )
                .at("create whiteout file", Where::Upper)?;
                if replace {
                    rustix::fs::unlinkat(pfd, name, AtFlags::empty()).at("unlink", Where::Upper)?;
                }
                Ok(())
            }
        }
    }

    /// EPERM when the object `name` in `parent` (resolved as `r`) is immutable or
    /// append-only, as `may_delete` refuses it on the kernel.
    fn check_victim(&self, parent: u64, name: &OsStr, r: &Resolved) -> Result<()> {
        // Bound first: the table's read guard must be gone before `check_change`, which
        // may take the write lock to cache what it read.
        let known = self.nodes.read().child(parent, name);
        if let Some(ino) = known {
            return self.check_change(ino, Change::Remove);
        }
        if r.upper.is_none() {
            return Ok(());
        }
        let pfd = self.upper_dir_fd(parent)?;
        let p = sys::get_xattr_at(pfd.as_fd(), name, OsStr::new(self.protattr_name()))
            .at("getxattr", Where::Upper)?
            .and_then(|v| Prot::parse(&v))
            .unwrap_or(Prot::NONE);
        if refuses(p, Change::Remove) {
            return Err(Error::Permission);
        }
        Ok(())
    }

    /// Node for (parent, name), pinning a new one if the kernel has not looked it up.
    /// Returns whether a pin was added (to be dropped by the caller).
    fn node_for(&self, parent: u64, name: &OsStr, r: &Resolved) -> Result<(u64, bool)> {
        if let Some(ino) = self.nodes.read().child(parent, name) {
            return Ok((ino, false));
        }
        let attr = self.pin(parent, name, r, None)?;
        Ok((attr.ino.0, true))
    }

    /// True when the merged directory (resolved as `r` at `parent_info`/`name`) is empty.
    fn is_empty_dir(&self, parent_info: &DirInfo, name: &OsStr, r: &Resolved) -> Result<bool> {
        let info = DirInfo {
            upper: match (&parent_info.upper, &r.upper) {
                (Some(p), Some(_)) => Some(p.join(name)),
                _ => None,
            },
            lower: r.lower.as_ref().and_then(Lower::dir).cloned(),
            no_wh_files: false,
        };
        if !self.merged_entries(&info, None)?.is_empty() {
            return Ok(false);
        }
        // As kernel overlayfs: a name whose topmost lower entry is an xattr whiteout
        // counts as an entry, unless the upper covers the name.
        let Some(l) = r.lower.as_ref().and_then(Lower::dir) else {
            return Ok(true);
        };
        let lower = self.lower_dir(l)?;
        let mut xhidden = lower
            .iter()
            .filter(|(_, c)| matches!(c, LowerChild::Hidden { by_xattr: true }))
            .map(|(n, _)| n);
        let Some(up) = &info.upper else {
            return Ok(xhidden.next().is_none());
        };
        let pfd = sys::open_dir_path(self.upper_root()?, up).at("open upper dir", Where::Upper)?;
        for n in xhidden {
            if upper_slot(pfd.as_fd(), n)? == UpperSlot::Empty {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
