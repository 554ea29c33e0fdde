//! Removing a name (unlink, rmdir): a whiteout where a lower layer still holds the name,
//! an upper directory moved out of the way first so the name switches atomically, and
//! the link count of a lower hard link's other names kept exact.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, RenameFlags};

use crate::error::{Error, OsContext, Result, Where};
use crate::format::origin;
use crate::format::whiteout::WhiteoutKind;
use crate::sys;
use crate::union::fileattr::Change;
use crate::union::layer::remove_tree;
use crate::union::Ino;
use crate::union::{check_name, UnionFs};

impl UnionFs {
    /// Removes a non-directory.
    pub fn unlink(&self, Ino(parent): Ino, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    /// Removes an empty (merged) directory.
    pub fn rmdir(&self, Ino(parent): Ino, name: &OsStr) -> Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        check_name(name)?;
        let fmt = self.writable()?;
        let _ns = self.ns_change();
        let info = self.dir_info(parent)?;
        let r = self.resolve(&info, name)?;
        self.check_change(parent, Change::RemoveEntry)?;
        self.check_victim(parent, name, &r)?;
        match (dir, r.is_dir) {
            (false, true) => return Err(Error::IsDir),
            (true, false) => return Err(Error::NotDir),
            (true, true) if !self.is_empty_dir(&info, name, &r)? => return Err(Error::NotEmpty),
            _ => {}
        }
        let lower_has = self.lower_has(&info, name)?;
        let lower_linked = !dir
            && r.upper.is_none()
            && r.stat()
                .is_some_and(|s| s.st_nlink > 1 && self.can_carry_identity(s.st_mode));
        let r = if lower_linked {
            // As kernel overlayfs with index=on: a lower hard link is copied up (into the
            // index) before one of its names goes, so the others keep an exact st_nlink.
            let (ino, pinned) = self.node_for(parent, name, &r)?;
            let res = self.copy_up_at(ino, parent, name);
            if pinned {
                self.nodes.write().forget(ino, 1);
            }
            res?;
            self.resolve(&self.dir_info(parent)?, name)?
        } else {
            r
        };
        self.copy_up(parent)?;
        let pfd = self.upper_dir_fd(parent)?;
        let known = self.nodes.read().child(parent, name);
        let detached = match known {
            Some(_) => {
                let fd = match (&r.upper, &r.lower) {
                    (Some(_), _) => {
                        sys::open_path(pfd.as_fd(), Path::new(name)).at("open", Where::Upper)?
                    }
                    (None, Some(l)) => {
                        let top = l.top().ok_or(Error::Invariant("lower without layers"))?;
                        sys::open_path(self.lower_root(top), &l.path_at(name))
                            .at("open", Where::Lower(top))?
                    }
                    (None, None) => return Err(Error::NotFound),
                };
                Some(Arc::new(fd))
            }
            _ => None,
        };
        if r.upper.is_some() {
            if dir {
                let work = self.work_dir()?;
                let tmp = self.tmp_name();
                if lower_has && fmt.whiteout == WhiteoutKind::CharDev {
                    rustix::fs::mknodat(work, &tmp, FileType::CharacterDevice, Mode::empty(), 0)
                        .at("mknod whiteout", Where::Work)?;
                    rustix::fs::renameat_with(work, &tmp, &pfd, name, RenameFlags::EXCHANGE)
                        .at("swap dir for whiteout", Where::Upper)?;
                } else {
                    rustix::fs::renameat(&pfd, name, work, &tmp)
                        .at("move dir out", Where::Upper)?;
                    if lower_has {
                        self.put_whiteout(fmt, pfd.as_fd(), name, false)?;
                    }
                }
                // Cached upper directory fds may name the directory just removed.
                // (It was empty: no directory below it can be cached.)
                self.dirs
                    .forget_upper(&info.upper.clone().unwrap_or_default().join(name));
                remove_tree(work, &tmp).at("remove dir", Where::Work)?;
            } else if lower_has {
                self.put_whiteout(fmt, pfd.as_fd(), name, true)?;
            } else {
                rustix::fs::unlinkat(&pfd, name, AtFlags::empty()).at("unlink", Where::Upper)?;
            }
        } else {
            self.put_whiteout(fmt, pfd.as_fd(), name, false)?;
        }
        let aliases = !dir
            && r.stat()
                .map(|s| s.st_nlink as i64 + r.nlink_offset > 1)
                .unwrap_or(false);
        if !dir && r.upper.is_none() {
            // A lower name of a copied-up hard link goes away: one name fewer.
            let copied = known.and_then(|ino| {
                self.nodes
                    .read()
                    .get(ino)
                    .ok()
                    .map(|n| n.upper || n.index().is_some())
            });
            match (known, copied) {
                (Some(ino), Some(true)) => self.adjust_nlink(ino, -1)?,
                _ => {
                    if let Some((entry, _)) = &r.index {
                        let fd = sys::open_path(self.index_fd()?, Path::new(&**entry))
                            .at("open index", Where::Work)?;
                        let rec = origin::format_nlink(r.nlink_offset - 1);
                        sys::set_xattr(fd.as_fd(), self.identity_xattrs().1, rec.as_bytes(), 0)
                            .at("set nlink", Where::Work)?;
                    }
                }
            }
        }
        let mut nodes = self.nodes.write();
        nodes.unname(parent, name, aliases, detached);
        if let Some(n) = known.and_then(|ino| nodes.get_mut(ino).ok()) {
            if n.detached().is_some() {
                n.detached_lower = r.upper.is_none();
            }
        }
        Ok(())
    }
}
