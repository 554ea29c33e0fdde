//! Renaming (plain, `RENAME_NOREPLACE`, `RENAME_EXCHANGE`, `RENAME_WHITEOUT`): both ends
//! copied up, a whiteout left where a lower layer still holds the old name, a moved
//! directory given its redirect (or made opaque) before the rename so that no crash
//! loses its lower content, and a metacopy file the redirect that keeps its data found.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, RenameFlags};
use rustix::io::Errno;

use crate::error::{Error, OsContext, Result, Where};
use crate::format::whiteout::{self, WhiteoutKind, WriteFormat};
use crate::format::xattr;
use crate::sys;
use crate::union::fileattr::Change;
use crate::union::inode::Lower;
use crate::union::layer::remove_tree;
use crate::union::lookup::{DirInfo, Resolved};
use crate::union::{check_name, Caller, UnionFs};

use super::{upper_slot, NewKind, UpperSlot};
use crate::union::Ino;

impl UnionFs {
    /// Renames with `flags` (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`, `RENAME_WHITEOUT`) on
    /// behalf of `caller`. `RENAME_WHITEOUT` (an overlay nested on this one moving an
    /// object it has in a lower layer) leaves a character device 0/0 of `caller`'s at the
    /// old name, an inner whiteout as `mknod` makes it (kernel overlayfs refuses the flag,
    /// EINVAL). The two steps run under `ns_lock`, and the kernel holds both directories
    /// locked meanwhile, so nothing sees the name empty; a crash between them can leave
    /// it so (the inner overlay's lower object shows there again).
    pub fn rename(
        &self,
        Ino(parent): Ino,
        name: &OsStr,
        Ino(new_parent): Ino,
        new_name: &OsStr,
        flags: u32,
        caller: Caller,
    ) -> Result<()> {
        check_name(name)?;
        check_name(new_name)?;
        // A `.wh.*` object (marked literal) may move to an ordinary name; a move to a
        // `.wh.*` name would need the mark set on the way, not supported yet.
        if whiteout::is_reserved_name(new_name) {
            return Err(Error::Invalid);
        }
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let leave_whiteout = flags & libc::RENAME_WHITEOUT != 0;
        let known = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT;
        if flags & !known != 0 || (exchange && (noreplace || leave_whiteout)) {
            return Err(Error::Invalid);
        }
        let fmt = self.writable()?;
        let _ns = self.ns_change();
        if !leave_whiteout {
            return self.rename_locked(fmt, parent, name, new_parent, new_name, flags);
        }
        // The steps that can fail for want of xattr support come first.
        self.copy_up(parent)?;
        crate::union::lookup::mark_inner_whiteout_dir(fmt, self.upper_dir_fd(parent)?.as_fd())?;
        let flags = flags & !libc::RENAME_WHITEOUT;
        self.rename_locked(fmt, parent, name, new_parent, new_name, flags)?;
        let made = self.create_locked(
            parent,
            name,
            NewKind::Node { rdev: 0 },
            libc::S_IFCHR,
            0,
            caller,
        );
        match made {
            // The kernel takes no reference on the whiteout.
            Ok((a, _)) => {
                self.nodes.write().forget(a.ino.0, 1);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, ?name, "renamed, but the whiteout left behind could not be made");
                Err(e)
            }
        }
    }

    /// [`Self::rename`] without `RENAME_WHITEOUT`, under `ns_lock`.
    fn rename_locked(
        &self,
        fmt: WriteFormat,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let sinfo = self.dir_info(parent)?;
        let src = self.resolve(&sinfo, name)?;
        let dinfo = self.dir_info(new_parent)?;
        let dst = match self.resolve(&dinfo, new_name) {
            Ok(r) => Some(r),
            Err(Error::NotFound) => None,
            Err(e) => return Err(e),
        };
        if parent == new_parent && name == new_name {
            return Ok(());
        }
        let (src_ino, src_pin) = self.node_for(parent, name, &src)?;
        let mut pins = vec![];
        if src_pin {
            pins.push(src_ino);
        }
        let dst_ino = match &dst {
            Some(d) => {
                let (i, p) = self.node_for(new_parent, new_name, d)?;
                if p {
                    pins.push(i);
                }
                Some(i)
            }
            None => None,
        };
        let res = (|| -> Result<()> {
            self.check_change(parent, Change::RemoveEntry)?;
            self.check_change(src_ino, Change::Remove)?;
            match dst_ino {
                Some(d) => {
                    self.check_change(new_parent, Change::RemoveEntry)?;
                    self.check_change(d, Change::Remove)?;
                }
                None => self.check_change(new_parent, Change::AddEntry)?,
            }
            if exchange {
                if dst.is_none() {
                    return Err(Error::NotFound);
                }
            } else if let Some(d) = &dst {
                if noreplace {
                    return Err(Error::Exists);
                }
                if dst_ino == Some(src_ino) && !src.is_dir {
                    // Two hard links of one file: POSIX says do nothing.
                    return Ok(());
                }
                match (src.is_dir, d.is_dir) {
                    (true, false) => return Err(Error::NotDir),
                    (false, true) => return Err(Error::IsDir),
                    (true, true) if !self.is_empty_dir(&dinfo, new_name, d)? => {
                        return Err(Error::NotEmpty)
                    }
                    _ => {}
                }
            }
            // As unlink (and kernel overlayfs with index=on): a lower hard link about to
            // be replaced is copied up into the index first, so its other names keep an
            // exact st_nlink.
            let refreshed;
            let dst = match (&dst, dst_ino) {
                (Some(d), Some(di))
                    if !exchange
                        && !d.is_dir
                        && d.upper.is_none()
                        && d.stat().is_some_and(|s| {
                            s.st_nlink > 1 && self.can_carry_identity(s.st_mode)
                        }) =>
                {
                    self.copy_up_at(di, new_parent, new_name)?;
                    refreshed = Some(self.resolve(&self.dir_info(new_parent)?, new_name)?);
                    &refreshed
                }
                _ => &dst,
            };
            self.copy_up_at(src_ino, parent, name)?;
            self.copy_up(new_parent)?;
            if exchange {
                if let Some(d) = dst_ino {
                    // At this name: a hard link's object may have another name in the
                    // node table.
                    self.copy_up_at(d, new_parent, new_name)?;
                }
            }
            let sinfo = self.dir_info(parent)?;
            let dinfo = self.dir_info(new_parent)?;
            let spfd = self.upper_dir_fd(parent)?;
            let dpfd = self.upper_dir_fd(new_parent)?;
            // An inner overlay's whiteout moves into a directory marked as holding them.
            if src.inner_whiteout {
                crate::union::lookup::mark_inner_whiteout_dir(fmt, dpfd.as_fd())?;
            }
            if exchange && dst.as_ref().is_some_and(|d| d.inner_whiteout) {
                crate::union::lookup::mark_inner_whiteout_dir(fmt, spfd.as_fd())?;
            }
            let src_lower_has = self.lower_has(&sinfo, name)?;
            let dst_lower_has = self.lower_has(&dinfo, new_name)?;
            let samedir = parent == new_parent;
            let (sp, dp) = (spfd.as_fd(), dpfd.as_fd());
            self.redirect_if_metacopy(fmt, src_ino, (sp, name), parent, &sinfo, samedir)?;
            if let (true, Some(d)) = (exchange, dst_ino) {
                self.redirect_if_metacopy(fmt, d, (dp, new_name), new_parent, &dinfo, samedir)?;
            }
            if exchange {
                let dst_ino = dst_ino.ok_or(Error::Invariant("exchange without target"))?;
                let from = End {
                    parent,
                    name,
                    ino: src_ino,
                    pfd: spfd.as_fd(),
                    info: &sinfo,
                    lower_has: src_lower_has,
                };
                let to = End {
                    parent: new_parent,
                    name: new_name,
                    ino: dst_ino,
                    pfd: dpfd.as_fd(),
                    info: &dinfo,
                    lower_has: dst_lower_has,
                };
                return self.exchange(fmt, from, to);
            }
            let slot = if dst.as_ref().map(|d| d.upper.is_some()).unwrap_or(false) {
                UpperSlot::Empty
            } else {
                upper_slot(dpfd.as_fd(), new_name)?
            };
            let detached = match &dst {
                Some(d) => self.detach_target(dpfd.as_fd(), new_name, d)?,
                None => None,
            };
            let saved = self.fix_moved_dir(
                fmt,
                src_ino,
                (spfd.as_fd(), name),
                new_name,
                &dinfo,
                dst_lower_has,
                MovePhase::Before,
            )?;
            if slot == UpperSlot::WhiteoutObject && src.is_dir {
                // A directory cannot replace the whiteout object: swap them, and the
                // whiteout lands at the old name, where it is needed or removed.
                if let Err(e) =
                    rustix::fs::renameat_with(&spfd, name, &dpfd, new_name, RenameFlags::EXCHANGE)
                {
                    self.undo_moved_dir(fmt, saved);
                    return Err(Error::os("rename over whiteout", e, Where::Upper));
                }
                if !src_lower_has {
                    rustix::fs::unlinkat(&spfd, name, AtFlags::empty())
                        .at("drop whiteout", Where::Upper)?;
                }
            } else {
                let mut rflags = RenameFlags::empty();
                if src_lower_has && fmt.whiteout == WhiteoutKind::CharDev {
                    rflags |= RenameFlags::WHITEOUT;
                }
                if let Err(e) = rustix::fs::renameat_with(&spfd, name, &dpfd, new_name, rflags) {
                    self.undo_moved_dir(fmt, saved);
                    return Err(Error::os("rename", e, Where::Upper));
                }
                if src_lower_has && fmt.whiteout == WhiteoutKind::WhFile {
                    self.put_whiteout(fmt, spfd.as_fd(), name, false)?;
                }
            }
            if src.is_dir || dst.as_ref().map(|d| d.is_dir).unwrap_or(false) {
                self.invalidate_renamed(parent, name, new_parent, new_name)?;
            }
            if slot == UpperSlot::WhiteoutFile {
                rustix::fs::unlinkat(
                    &dpfd,
                    whiteout::whiteout_file_name(new_name),
                    AtFlags::empty(),
                )
                .at("remove whiteout file", Where::Upper)?;
            }
            {
                let mut nodes = self.nodes.write();
                if dst.is_some() {
                    let aliases = dst
                        .as_ref()
                        .and_then(|d| d.stat())
                        .map(|s| s.st_nlink > 1)
                        .unwrap_or(false);
                    nodes.unname(new_parent, new_name, aliases, detached);
                }
                nodes.rename(src_ino, parent, name, new_parent, new_name)?;
            }
            self.fix_moved_dir(
                fmt,
                src_ino,
                (dpfd.as_fd(), new_name),
                new_name,
                &dinfo,
                dst_lower_has,
                MovePhase::After,
            )?;
            Ok(())
        })();
        let mut nodes = self.nodes.write();
        for p in pins {
            nodes.forget(p, 1);
        }
        res
    }

    /// The `RENAME_EXCHANGE` of two upper objects: each directory given its redirect or
    /// opaque mark for its new place first, as [`Self::fix_moved_dir`] explains.
    fn exchange(&self, fmt: WriteFormat, from: End<'_>, to: End<'_>) -> Result<()> {
        let saved_src = self.fix_moved_dir(
            fmt,
            from.ino,
            (from.pfd, from.name),
            to.name,
            to.info,
            to.lower_has,
            MovePhase::Before,
        )?;
        let saved_dst = match self.fix_moved_dir(
            fmt,
            to.ino,
            (to.pfd, to.name),
            from.name,
            from.info,
            from.lower_has,
            MovePhase::Before,
        ) {
            Ok(s) => s,
            Err(e) => {
                self.undo_moved_dir(fmt, saved_src);
                return Err(e);
            }
        };
        if let Err(e) =
            rustix::fs::renameat_with(from.pfd, from.name, to.pfd, to.name, RenameFlags::EXCHANGE)
        {
            self.undo_moved_dir(fmt, saved_src);
            self.undo_moved_dir(fmt, saved_dst);
            return Err(Error::os("rename exchange", e, Where::Upper));
        }
        self.invalidate_renamed(from.parent, from.name, to.parent, to.name)?;
        {
            let mut nodes = self.nodes.write();
            nodes.rename(from.ino, from.parent, from.name, to.parent, to.name)?;
            nodes.rename(to.ino, to.parent, to.name, from.parent, from.name)?;
        }
        self.fix_moved_dir(
            fmt,
            from.ino,
            (to.pfd, to.name),
            to.name,
            to.info,
            to.lower_has,
            MovePhase::After,
        )?;
        self.fix_moved_dir(
            fmt,
            to.ino,
            (from.pfd, from.name),
            from.name,
            from.info,
            from.lower_has,
            MovePhase::After,
        )?;
        Ok(())
    }

    /// Readies a replaced upper object `d` at `new_name` in upper dir `dpfd`: returns
    /// a handle held until the kernel forgets it (its node id is its upper inode number,
    /// which the upper filesystem must not hand to a new object meanwhile), and clears a
    /// merged-empty directory of the whiteouts inside so the rename can replace it.
    fn detach_target(
        &self,
        dpfd: BorrowedFd<'_>,
        new_name: &OsStr,
        d: &Resolved,
    ) -> Result<Option<Arc<OwnedFd>>> {
        if d.upper.is_none() {
            return Ok(None);
        }
        let detached =
            Arc::new(sys::open_path(dpfd, Path::new(new_name)).at("open", Where::Upper)?);
        if d.is_dir {
            let dfd = sys::open_dir_path(dpfd, Path::new(new_name)).at("open", Where::Upper)?;
            let listing = sys::read_dir(
                sys::open_dir_for_read(dpfd, Path::new(new_name)).at("opendir", Where::Upper)?,
            )
            .at("readdir", Where::Upper)?;
            for e in listing {
                remove_tree(dfd.as_fd(), &e.name).at("clear whiteouts", Where::Upper)?;
            }
        }
        Ok(Some(detached))
    }

    /// Gives a metacopy file about to move (or be linked: `samedir` false) the redirect
    /// that keeps its data found (see `UnionFs::redirect_before_move`).
    pub(super) fn redirect_if_metacopy(
        &self,
        fmt: WriteFormat,
        ino: u64,
        at: (BorrowedFd<'_>, &OsStr),
        parent: u64,
        pinfo: &DirInfo,
        samedir: bool,
    ) -> Result<()> {
        let data = {
            let nodes = self.nodes.read();
            let n = nodes.get(ino)?;
            if n.is_dir {
                return Ok(());
            }
            n.data().cloned()
        };
        match data {
            Some(d) => self.redirect_before_move(fmt, at.0, at.1, parent, pinfo, &d, samedir),
            None => Ok(()),
        }
    }

    /// Paths at and under both names of a rename now name other things (or nothing).
    fn invalidate_renamed(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
    ) -> Result<()> {
        let (a, b) = {
            let nodes = self.nodes.read();
            (
                nodes.path_of(parent)?.join(name),
                nodes.path_of(new_parent)?.join(new_name),
            )
        };
        self.dirs.invalidate_upper(&a);
        self.dirs.invalidate_upper(&b);
        Ok(())
    }

    /// Points a directory that moves to `new_name` in the directory whose merged info is
    /// `dinfo` at its lower content (redirect), or hides what the lower layers hold at the
    /// new name (opaque). `at` is where the directory is in the upper now.
    ///
    /// `MovePhase::Before` runs before the rename and only adds xattrs, so that a daemon
    /// killed between the two steps never leaves a moved directory without its redirect
    /// (its lower content would vanish); a redirect or opaque mark at the old name is
    /// harmless (kernel overlayfs sets its redirect before renaming too). It returns the
    /// redirect value it replaced, for `undo_moved_dir` if the rename fails.
    /// `MovePhase::After` removes a redirect the directory no longer needs (moved back to
    /// its natural place); removing it before the rename would lose the content likewise.
    #[allow(clippy::too_many_arguments)]
    fn fix_moved_dir(
        &self,
        fmt: WriteFormat,
        ino: u64,
        at: (BorrowedFd<'_>, &OsStr),
        new_name: &OsStr,
        dinfo: &DirInfo,
        lower_occupied: bool,
        phase: MovePhase,
    ) -> Result<Option<SavedRedirect>> {
        let lower = {
            let nodes = self.nodes.read();
            let n = nodes.get(ino)?;
            if !n.is_dir {
                return Ok(None);
            }
            n.lower().and_then(Lower::dir).cloned()
        };
        let (pfd, name) = at;
        let dfd = sys::open_dir_path(pfd, Path::new(name)).at("open moved dir", Where::Upper)?;
        let redirect = OsStr::new(fmt.xattr_ns.redirect());
        match (lower, phase) {
            (Some(l), phase) => {
                let natural = dinfo.lower.as_ref().map(|pl| pl.path.join(new_name));
                if natural.as_deref() == Some(l.path.as_path()) {
                    if phase == MovePhase::After {
                        for n in xattr::REDIRECT_XATTRS {
                            match sys::remove_xattr(dfd.as_fd(), OsStr::new(n)) {
                                Ok(()) | Err(Errno::NODATA) | Err(Errno::NOTSUP)
                                | Err(Errno::PERM) => {}
                                Err(e) => {
                                    return Err(Error::os("remove redirect", e, Where::Upper))
                                }
                            }
                        }
                    }
                } else if phase == MovePhase::Before {
                    let same_parent = dinfo
                        .lower
                        .as_ref()
                        .map(|pl| Some(pl.path.as_path()) == l.path.parent())
                        .unwrap_or(false);
                    let value: Vec<u8> = if same_parent {
                        l.path
                            .file_name()
                            .map(crate::format::redirect::relative)
                            .unwrap_or_default()
                    } else {
                        crate::format::redirect::absolute(&l.path)
                    };
                    let old =
                        sys::get_xattr(dfd.as_fd(), redirect).at("get redirect", Where::Upper)?;
                    sys::set_xattr(dfd.as_fd(), redirect, &value, 0)
                        .at("set redirect", Where::Upper)?;
                    return Ok(Some(SavedRedirect { dir: dfd, old }));
                }
            }
            (None, MovePhase::Before) if lower_occupied => {
                sys::set_xattr(
                    dfd.as_fd(),
                    OsStr::new(fmt.xattr_ns.opaque()),
                    xattr::OPAQUE_VALUE,
                    0,
                )
                .at("set opaque", Where::Upper)?;
            }
            (None, _) => {}
        }
        Ok(None)
    }

    /// Puts back the redirect `fix_moved_dir` replaced before a rename that then failed.
    fn undo_moved_dir(&self, fmt: WriteFormat, saved: Option<SavedRedirect>) {
        let Some(saved) = saved else { return };
        let redirect = OsStr::new(fmt.xattr_ns.redirect());
        let r = match &saved.old {
            Some(v) => sys::set_xattr(saved.dir.as_fd(), redirect, v, 0),
            None => sys::remove_xattr(saved.dir.as_fd(), redirect),
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot restore a directory's redirect after a failed rename");
        }
    }
}

/// One end of an exchange: the name, its node, its upper parent and whether a lower
/// layer holds the name.
struct End<'a> {
    parent: u64,
    name: &'a OsStr,
    ino: u64,
    pfd: BorrowedFd<'a>,
    info: &'a DirInfo,
    lower_has: bool,
}

/// When `UnionFs::fix_moved_dir` runs: before or after the rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MovePhase {
    Before,
    After,
}

/// A redirect replaced before a rename: the directory and the previous value.
struct SavedRedirect {
    dir: OwnedFd,
    old: Option<Vec<u8>>,
}
