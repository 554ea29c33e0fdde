//! Copy-up: making a lower object writable by copying it into the upper layer.
//!
//! The copy is built in the work directory (data with holes kept, then xattrs, owner,
//! mode, timestamps), its data made durable with fdatasync unless the mount is volatile or
//! the file is empty, and only then published: a regular file with data and one name is
//! an `O_TMPFILE` linked into place (as kernel overlayfs's `ovl_copy_up_tmpfile`: no
//! work-directory entry, no rename), everything else is built under a fresh name and
//! renamed into place with RENAME_NOREPLACE. Under `metacopy` a regular file whose data
//! is not wanted yet (an attribute change, a rename, a link) gets no data: an empty file
//! of its size, marked (see `crate::union::metacopy`), which needs no fdatasync. A daemon killed at
//! any point leaves either no upper object or a complete one; the work directory's
//! leftovers are removed at the next mount. Parents are copied up first, each the same
//! way. Callers hold `ns_lock`.
//!
//! The policy lives here too: a change of attributes asks for `UnionFs::prepare_write`
//! (metadata only, under `metacopy`), a change of data for `UnionFs::prepare_data`; both
//! take `ns_lock` themselves.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat, Timestamps};

use crate::error::{Error, OsContext, Result, Where};
use crate::format::{origin, whiteout, xattr};
use crate::sys::{self, XattrFd};
use crate::union::fileattr::{Prot, FS_NOATIME_FL, FS_SYNC_FL};
use crate::union::inode::ROOT_INO;
use crate::union::lookup::mark_literal;
use crate::union::UnionFs;
use crate::union::{Fh, Ino};
use std::sync::Arc;

/// Copies every xattr but the overlay's private ones from `src` to `dst`.
pub(crate) fn copy_xattrs(src: XattrFd<'_>, dst: XattrFd<'_>, at: Where) -> Result<CopiedXattrs> {
    let mut copied = CopiedXattrs { access_acl: false };
    for name in src.list().at("listxattr", at)? {
        if xattr::is_private_xattr(&name) {
            continue;
        }
        let Some(value) = src.get(&name).at("getxattr", at)? else {
            continue;
        };
        match dst.set(&name, &value, 0) {
            Ok(()) => {}
            // The upper filesystem cannot hold this namespace: the kernel skips it too.
            Err(rustix::io::Errno::NOTSUP) => {
                tracing::debug!(?name, "xattr not supported by the upper filesystem");
                continue;
            }
            Err(e) => return Err(Error::os("setxattr", e, Where::Upper)),
        }
        copied.access_acl |= name == ACCESS_ACL_XATTR;
    }
    Ok(copied)
}

/// The access ACL: setting it sets the group bits of the mode too (to its mask).
const ACCESS_ACL_XATTR: &str = "system.posix_acl_access";

/// What [`copy_xattrs`] copied that matters to the steps after it.
pub(crate) struct CopiedXattrs {
    /// An access ACL, which changed the copy's mode.
    pub access_acl: bool,
}

/// The inode flags of the lower file open at `lfd` that its copy gets, as kernel
/// overlayfs's `ovl_copy_fileattr` carries them: `i`/`a` as `overlay.protattr`, `S` and
/// `A` as real flags. `None` when there are none (or the lower has no flags at all).
fn fileattr_to_copy(lfd: BorrowedFd<'_>) -> Option<(Prot, u32)> {
    let flags = sys::get_flags(lfd).ok()?;
    let prot = Prot::from_flags(flags);
    let copy = flags & (FS_SYNC_FL | FS_NOATIME_FL);
    (prot.any() || copy != 0).then_some((prot, copy))
}

/// What [`UnionFs::copy_up_tmpfile`] copies: the lower regular file open at `src`
/// (for reading, or `O_PATH`) with its stat, in `layer`, whose data is at `data`.
struct TmpfileCopy<'a> {
    src: BorrowedFd<'a>,
    /// `src` is open for reading (else it is an `O_PATH` fd).
    readable: bool,
    st: &'a Stat,
    layer: u16,
    path: &'a Path,
    data: &'a crate::union::inode::DataLoc,
    meta_only: bool,
    origin: Option<&'a [u8]>,
    /// The permission bits the copy gets instead of the lower file's: a chmod that caused
    /// the copy-up, done on the copy before it has a name.
    mode: Option<u32>,
}

/// Puts a directory's access and modification times back when dropped.
struct RestoreTimes {
    dir: Arc<std::os::fd::OwnedFd>,
    st: Stat,
}

/// The access and modification times of `st`, for `utimensat`.
pub(crate) fn stat_times(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

impl Drop for RestoreTimes {
    fn drop(&mut self) {
        let ts = stat_times(&self.st);
        if let Err(e) = sys::set_times_at(self.dir.as_fd(), OsStr::new(""), &ts) {
            tracing::warn!(error = %e, "restoring directory times after copy-up");
        }
    }
}

/// Applies the owner and mode of `st` to the object `name` in `dir`, by name (the calls
/// never follow a symlink there).
pub(crate) fn copy_owner_mode(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat) -> Result<()> {
    // chown before chmod: chown clears set-id bits.
    sys::chown_at(dir, name, Some(st.st_uid), Some(st.st_gid))
        .or_else(|e| {
            if rustix::process::geteuid().is_root() {
                Err(e)
            } else {
                Ok(())
            }
        })
        .at("chown copy", Where::Work)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
        sys::chmod_at(dir, name, st.st_mode & 0o7777).at("chmod copy", Where::Work)?;
    }
    Ok(())
}

/// Applies the access and modification times of `st` to the object `name` in `dir`.
pub(crate) fn copy_times(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat) -> Result<()> {
    sys::set_times_at(dir, name, &stat_times(st)).at("utimens copy", Where::Work)
}

impl UnionFs {
    /// Makes sure node `ino` exists in the upper layer, its metadata at least (see
    /// [`Self::copy_up_with`]). Caller holds `ns_lock`.
    pub(crate) fn copy_up(&self, ino: u64) -> Result<()> {
        self.copy_up_with(ino, false)
    }

    /// Makes sure node `ino` exists in the upper layer; `data`: with its data, else a
    /// regular file is copied up as a metacopy file when the mount does that. A metacopy
    /// file already up stays one (see [`Self::copy_up_data`]). Caller holds `ns_lock`.
    pub(crate) fn copy_up_with(&self, ino: u64, data: bool) -> Result<()> {
        self.copy_up_chain(ino, data, None).map(|_| ())
    }

    /// [`Self::copy_up_with`], where `ino` (if it is copied up now, through an unnamed
    /// file) gets the permission bits `mode` instead of its lower file's: true when it
    /// did, so that the caller's chmod is done.
    fn copy_up_chain(&self, ino: u64, data: bool, mode: Option<u32>) -> Result<bool> {
        // Ancestors first, top down, without recursion (trees may be thousands deep).
        let mut chain = Vec::new();
        {
            let nodes = self.nodes.read();
            let mut cur = ino;
            loop {
                let node = nodes.get(cur)?;
                if node.upper {
                    break;
                }
                if cur == ROOT_INO {
                    return Err(Error::Invariant("upper root missing"));
                }
                chain.push(cur);
                cur = node.parent;
            }
        }
        let target = ino;
        let mut mode_done = false;
        for ino in chain.into_iter().rev() {
            let last = ino == target;
            mode_done = self.copy_up_one(ino, data && last, mode.filter(|_| last))?;
        }
        Ok(mode_done)
    }

    /// Copies up one object whose parent is already in the upper layer, with its data
    /// when `want_data` or when the mount does no metacopy; true when the copy was given
    /// the permission bits `mode`.
    fn copy_up_one(&self, ino: u64, want_data: bool, mode: Option<u32>) -> Result<bool> {
        let (parent, name, lower, index, data_src, lower_reg) = {
            let nodes = self.nodes.read();
            let node = nodes.get(ino)?;
            if node.upper {
                return Ok(false);
            }
            if node.detached().is_some() {
                return Err(Error::NotFound);
            }
            (
                node.parent,
                node.name().to_os_string(),
                node.lower_path(),
                node.index().cloned(),
                node.data().cloned(),
                node.lower_reg,
            )
        };
        let upper_parent = self.nodes.read().path_of(parent)?;
        let pfd = self.upper_dir(&upper_parent)?;
        // A copy-up is not a change of the parent directory: its times are put back after
        // the new entry is published, as kernel overlayfs does.
        let pst = rustix::fs::fstat(&*pfd).at("stat upper dir", Where::Upper)?;
        let _restore = RestoreTimes {
            dir: pfd.clone(),
            st: pst,
        };
        if let Some(entry) = index {
            // Already copied up through another name: link this name to it.
            let linked = match rustix::fs::linkat(
                self.index_fd()?,
                &*entry,
                &pfd,
                &name,
                AtFlags::empty(),
            ) {
                Ok(()) => true,
                // This name is an upper link already.
                Err(rustix::io::Errno::EXIST) => false,
                Err(e) => return Err(Error::os("link up", e, Where::Upper)),
            };
            if linked && whiteout::is_reserved_name(&name) {
                // The index copy came from another name: mark this `.wh.*` one literal.
                mark_literal(self.writable()?, pfd.as_fd(), &name, Where::Upper)?;
            }
            if let Ok(n) = self.nodes.write().get_mut(ino) {
                n.upper = true;
            }
            if linked {
                self.adjust_nlink(ino, -1)?;
            }
            return Ok(false);
        }
        let (top, lower_path) = lower.ok_or(Error::Invariant("node without upper or lower"))?;
        let at = Where::Lower(top);
        let key = crate::union::dirfd::LayerKey::Lower(top);
        // A lower file last seen as regular is opened for reading at once (one open, not
        // an `O_PATH` fd and a reopen through its magic link); anything else, or a file
        // that cannot be read, is held by `O_PATH`.
        let read = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        let (src, mut readable) = match lower_reg {
            true => match self
                .open_in(key, &lower_path, read | OFlags::NOATIME)
                .or_else(|_| self.open_in(key, &lower_path, read))
            {
                Ok(fd) => (fd, true),
                Err(_) => (self.path_fd(key, &lower_path)?, false),
            },
            false => (self.path_fd(key, &lower_path)?, false),
        };
        let st = rustix::fs::fstat(&src).at("stat lower", at)?;
        readable &= st.st_mode & libc::S_IFMT == libc::S_IFREG;
        let origin = if self.can_carry_identity(st.st_mode) {
            self.origin_of(top, src.as_fd())
        } else {
            None
        };
        // Every hard-linked non-directory goes through the index, whatever its type, as
        // kernel overlayfs's `ovl_need_index` does: its other lower names find the copy
        // there, so they keep one identity and an exact st_nlink.
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let linked = !is_dir && st.st_nlink > 1;
        // Where the data is: the lower file, or the data of a lower metacopy file.
        let data_loc = data_src.unwrap_or_else(|| crate::union::inode::DataLoc {
            layer: top,
            path: lower_path.clone(),
            blocks: st.st_blocks as u64,
        });
        let meta_only = self.metacopy && !want_data && st.st_mode & libc::S_IFMT == libc::S_IFREG;
        // The common case, a regular file with data and one name, is built as an unnamed
        // file and linked into place (a zero-size one may be an inner overlay's whiteout,
        // a `.wh.*` name needs its literal mark: both take the named way below).
        if st.st_mode & libc::S_IFMT == libc::S_IFREG
            && !linked
            && st.st_size > 0
            && !whiteout::is_reserved_name(&name)
        {
            let plan = TmpfileCopy {
                src: src.as_fd(),
                readable,
                st: &st,
                layer: top,
                path: &lower_path,
                data: &data_loc,
                meta_only,
                origin: origin.as_deref(),
                mode,
            };
            if self.copy_up_tmpfile(plan, pfd.as_fd(), &name)? {
                self.note_copied_up(ino, (None, 0), meta_only.then_some(data_loc));
                tracing::debug!(ino, path = ?lower_path, meta_only, "copied up (tmpfile)");
                return Ok(mode.is_some());
            }
        }
        let work = self.work_dir()?;
        let tmp = self.tmp_name();
        let built = self
            .build_copy(
                work,
                &tmp,
                &src,
                &st,
                &lower_path,
                top,
                (&data_loc, meta_only),
            )
            .and_then(|()| self.copy_fileattr(work, &tmp, &st, top, &lower_path))
            .and_then(|()| {
                if origin.is_none() && !meta_only {
                    return Ok(());
                }
                let fd = rustix::fs::openat(
                    work,
                    &tmp,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .at("open copy", Where::Work)?;
                if let Some(o) = &origin {
                    sys::set_xattr(fd.as_fd(), self.identity_xattrs().0, o, 0)
                        .at("set origin", Where::Work)?;
                    if linked {
                        let rec = origin::format_nlink(st.st_nlink as i64 - 2);
                        sys::set_xattr(fd.as_fd(), self.identity_xattrs().1, rec.as_bytes(), 0)
                            .at("set nlink", Where::Work)?;
                    }
                }
                // The metacopy mark after the origin, as the kernel orders them: where the
                // xattrs do not all fit in the inode, the mark is the one in the external
                // block, which its removal at the data copy-up frees.
                if meta_only {
                    crate::union::metacopy::mark(self.writable()?, XattrFd::Path(fd.as_fd()))?;
                }
                Ok(())
            });
        // A `.wh.*` object keeps its literal mark (private xattrs are not copied), or its
        // copy would read as a whiteout.
        let built = built.and_then(|()| {
            if !whiteout::is_reserved_name(&name) {
                return Ok(());
            }
            mark_literal(self.writable()?, work, &tmp, Where::Work)
        });
        // So does an inner overlay's whiteout (a zero-size file), and its new directory
        // is marked as holding one.
        let built = built.and_then(|()| {
            let fmt = self.writable()?;
            let marked = st.st_mode & libc::S_IFMT == libc::S_IFREG
                && st.st_size == 0
                && xattr::INNER_WHITEOUT_XATTRS
                    .iter()
                    .any(|n| matches!(sys::get_xattr(src.as_fd(), OsStr::new(n)), Ok(Some(_))));
            if !marked {
                return Ok(());
            }
            crate::union::lookup::mark_inner_whiteout_dir(fmt, pfd.as_fd())?;
            crate::union::lookup::mark_inner_whiteout(fmt, work, &tmp, Where::Work)
        });
        if let Err(e) = built {
            let _ = crate::union::layer::remove_tree(work, &tmp);
            return Err(e);
        }
        let (index_entry, offset) = match (&origin, linked) {
            (Some(o), true) => {
                let entry = origin::index_name(o);
                self.publish_indexed(work, &tmp, &entry, pfd.as_fd(), &name)?;
                (
                    Some(Arc::<str>::from(entry.as_str())),
                    st.st_nlink as i64 - 2,
                )
            }
            _ => {
                if let Err(e) =
                    rustix::fs::renameat_with(work, &tmp, &pfd, &name, RenameFlags::NOREPLACE)
                {
                    let _ = crate::union::layer::remove_tree(work, &tmp);
                    return Err(Error::os("publish copy-up", e, Where::Upper));
                }
                (None, if linked { st.st_nlink as i64 - 1 } else { 0 })
            }
        };
        self.note_copied_up(ino, (index_entry, offset), meta_only.then_some(data_loc));
        tracing::debug!(ino, path = ?lower_path, meta_only, "copied up");
        Ok(false)
    }

    /// Records in the node of `ino` that its object is in the upper layer now: with its
    /// index entry and link-count offset, and where its data is while it is a metacopy
    /// file. A directory copied up is one this daemon made (see `made_upper_dir`).
    fn note_copied_up(
        &self,
        ino: u64,
        (index_entry, offset): (Option<Arc<str>>, i64),
        data: Option<crate::union::inode::DataLoc>,
    ) {
        let is_dir = match self.nodes.write().get_mut(ino) {
            Ok(n) => {
                n.upper = true;
                n.set_index(index_entry);
                n.set_nlink_offset(offset);
                n.set_data(data);
                n.is_dir
            }
            Err(_) => return,
        };
        if is_dir {
            self.made_upper_dir(ino);
        }
    }

    /// The lower file open at `src` (`O_PATH`, shown by fstat to be a regular file) opened
    /// for reading through its magic link (no O_NOFOLLOW: the link must be followed, to
    /// that object). O_NOATIME: copying is not a read by the user (falls back without it
    /// where ownership is missing).
    fn reopen_for_copy(src: BorrowedFd<'_>) -> rustix::io::Result<std::os::fd::OwnedFd> {
        let proc = sys::proc_fd_path(&src);
        let flags = OFlags::RDONLY | OFlags::CLOEXEC;
        rustix::fs::open(&*proc, flags | OFlags::NOATIME, Mode::empty())
            .or_else(|_| rustix::fs::open(&*proc, flags, Mode::empty()))
    }

    /// The data of a lower metacopy file: the file at `data` in another layer, opened for
    /// reading by its path there (never following a symlink).
    fn open_data_elsewhere(
        &self,
        data: &crate::union::inode::DataLoc,
    ) -> Result<std::os::fd::OwnedFd> {
        let key = crate::union::dirfd::LayerKey::Lower(data.layer);
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        self.open_in(key, &data.path, flags | OFlags::NOATIME)
            .or_else(|_| self.open_in(key, &data.path, flags))
    }

    /// Copies up a regular file the way kernel overlayfs's `ovl_copy_up_tmpfile` does: an
    /// `O_TMPFILE` in the work directory gets the data (or only the size, `meta_only`),
    /// owner, mode, xattrs, inode flags, origin, metacopy mark and times through its fd,
    /// and is then linked as `name` in `pfd`. Until the link nothing has a name, so a
    /// killed daemon leaves nothing behind, and the copy costs no work-directory entry
    /// and no rename. `Ok(false)`: the work directory's filesystem has no `O_TMPFILE`, or
    /// the lower file cannot be opened for reading; nothing was done.
    fn copy_up_tmpfile(
        &self,
        c: TmpfileCopy<'_>,
        pfd: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<bool> {
        use std::sync::atomic::Ordering;
        if self.no_tmpfile.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let at = Where::Lower(c.layer);
        let reopened;
        let lower = if c.readable {
            c.src
        } else {
            let Ok(fd) = Self::reopen_for_copy(c.src) else {
                return Ok(false);
            };
            reopened = fd;
            reopened.as_fd()
        };
        let work = self.work_dir()?;
        let tmp_flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
        // Made with the lower file's permission bits (less the umask), so that where the
        // owner is right already no chmod is needed. Nothing can reach it before the link.
        let mut owner = self.disk_owner(c.st, c.layer);
        if let Some(mode) = c.mode {
            owner.st_mode = (owner.st_mode & libc::S_IFMT) | (mode & 0o7777);
        }
        let want_mode = owner.st_mode & 0o7777;
        let copy = match rustix::fs::openat(work, ".", tmp_flags, Mode::from_raw_mode(want_mode)) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR) => {
                tracing::debug!("no O_TMPFILE in the work directory: named copies");
                self.no_tmpfile.store(true, Ordering::Relaxed);
                return Ok(false);
            }
            Err(e) => return Err(Error::os("create copy", e, Where::Work)),
        };
        let size = c.st.st_size as u64;
        if c.meta_only {
            rustix::fs::ftruncate(&copy, size).at("truncate copy", Where::Work)?;
        } else {
            let other;
            let data = if c.data.layer == c.layer && c.data.path == c.path {
                lower.as_fd()
            } else {
                other = self.open_data_elsewhere(c.data)?;
                other.as_fd()
            };
            sys::copy_file_data(data, copy.as_fd(), size).at("copy data", Where::Work)?;
            // Durable before the link publishes it (see `build_copy`).
            if !self.opts.volatile {
                rustix::fs::fdatasync(&copy).at("fsync copy", Where::Work)?;
            }
        }
        let fd = copy.as_fd();
        let made = rustix::fs::fstat(fd).at("stat copy", Where::Work)?;
        if (made.st_uid, made.st_gid) == (owner.st_uid, owner.st_gid) {
            // Made with the right owner already (a journaled chown the less); a new file
            // has no capabilities for a chown to clear. The umask, or the kernel dropping
            // a set-group-id bit for a group not the creator's, may have left the mode short.
            if made.st_mode & 0o7777 != want_mode {
                sys::chmod_at(fd, OsStr::new(""), want_mode).at("chmod copy", Where::Work)?;
            }
        } else {
            copy_owner_mode(fd, OsStr::new(""), &owner)?;
        }
        let copied = copy_xattrs(XattrFd::Open(lower.as_fd()), XattrFd::Open(fd), at)?;
        if copied.access_acl && c.mode.is_some() {
            // The ACL set the group bits to its mask; the chmod sets the mask, as a chmod
            // after the copy-up would.
            sys::chmod_at(fd, OsStr::new(""), want_mode).at("chmod copy", Where::Work)?;
        }
        if let Some(wanted) = fileattr_to_copy(lower.as_fd()) {
            self.apply_fileattr(fd, wanted)?;
        }
        if let Some(o) = c.origin {
            XattrFd::Open(fd)
                .set(self.identity_xattrs().0, o, 0)
                .at("set origin", Where::Work)?;
        }
        if c.meta_only {
            crate::union::metacopy::mark(self.writable()?, XattrFd::Open(fd))?;
        }
        copy_times(fd, OsStr::new(""), c.st)?;
        // An existing name fails with EEXIST, as RENAME_NOREPLACE does.
        sys::link_fd(fd, pfd, name).at("publish copy-up", Where::Upper)?;
        Ok(true)
    }

    /// Carries the lower object's inode flags to its copy as kernel overlayfs's
    /// `ovl_copy_fileattr` does: `S` and `A` as real flags, `i`/`a` as `overlay.protattr`.
    /// Only files and directories (others cannot be opened for the ioctl); a lower
    /// filesystem without flags is no error.
    fn copy_fileattr(
        &self,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
        st: &rustix::fs::Stat,
        top: crate::union::layer::LowerIdx,
        lower_path: &std::path::Path,
    ) -> Result<()> {
        let t = st.st_mode & libc::S_IFMT;
        if t != libc::S_IFREG && t != libc::S_IFDIR {
            return Ok(());
        }
        let ro = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        let Ok(lfd) = self.open_in(crate::union::dirfd::LayerKey::Lower(top), lower_path, ro)
        else {
            return Ok(());
        };
        let Some(wanted) = fileattr_to_copy(lfd.as_fd()) else {
            return Ok(());
        };
        let fd = rustix::fs::openat(
            work,
            tmp,
            ro | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .at("open copy", Where::Work)?;
        self.apply_fileattr(fd.as_fd(), wanted)
    }

    /// Gives the copy open at `fd` the inode flags `fileattr_to_copy` found.
    fn apply_fileattr(&self, fd: BorrowedFd<'_>, (prot, copy): (Prot, u32)) -> Result<()> {
        if prot.any() {
            let name = OsStr::new(self.protattr_name());
            XattrFd::Open(fd)
                .set(name, &prot.format(), 0)
                .at("set protattr", Where::Work)?;
        }
        if copy != 0 {
            let cur = sys::get_flags(fd).at("getflags", Where::Work)?;
            sys::set_flags(fd, cur | copy).at("setflags", Where::Work)?;
        }
        Ok(())
    }

    /// Publishes a copy of a hard-linked lower file: first as its index entry, then linked
    /// to its name, so every other lower name of it finds the copy (kernel `index=on`).
    fn publish_indexed(
        &self,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
        entry: &str,
        pfd: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<()> {
        let index = self.index_fd()?;
        let mut r = rustix::fs::renameat_with(work, tmp, index, entry, RenameFlags::NOREPLACE);
        if r == Err(rustix::io::Errno::EXIST) {
            // A stale entry no name links to any more (the node would know otherwise).
            let _ = rustix::fs::unlinkat(index, entry, AtFlags::empty());
            r = rustix::fs::renameat_with(work, tmp, index, entry, RenameFlags::NOREPLACE);
        }
        if let Err(e) = r {
            let _ = crate::union::layer::remove_tree(work, tmp);
            return Err(Error::os("publish index entry", e, Where::Work));
        }
        if let Err(e) = rustix::fs::linkat(index, entry, pfd, name, AtFlags::empty()) {
            let _ = rustix::fs::unlinkat(index, entry, AtFlags::empty());
            return Err(Error::os("link copy-up", e, Where::Upper));
        }
        Ok(())
    }

    /// Changes the merged link count of a non-directory by `delta` (a lower name of a
    /// copied-up hard link was linked up or removed), persisting it for indexed objects.
    pub(crate) fn adjust_nlink(&self, ino: u64, delta: i64) -> Result<()> {
        let (offset, persist) = {
            let mut nodes = self.nodes.write();
            let n = nodes.get_mut(ino)?;
            n.set_nlink_offset(n.nlink_offset() + delta);
            (n.nlink_offset(), n.index().is_some())
        };
        if persist {
            let fd = self.open_real_path(&self.real(ino)?)?;
            let rec = origin::format_nlink(offset);
            sys::set_xattr(fd.as_fd(), self.identity_xattrs().1, rec.as_bytes(), 0)
                .at("set nlink", Where::Upper)?;
        }
        Ok(())
    }

    /// Makes sure the object of `ino` exists in the upper layer under (parent, name): a
    /// hard link whose object was copied up through another name is linked up.
    pub(crate) fn copy_up_at(&self, ino: u64, parent: u64, name: &OsStr) -> Result<()> {
        self.copy_up(ino)?;
        let (at_node, src_parent, src_name) = {
            let nodes = self.nodes.read();
            let n = nodes.get(ino)?;
            (
                n.parent == parent && n.name() == name,
                n.parent,
                n.name().to_os_string(),
            )
        };
        if at_node || self.nodes.read().get(ino)?.is_dir {
            return Ok(());
        }
        self.copy_up(parent)?;
        let (sp, dp) = {
            let nodes = self.nodes.read();
            (nodes.path_of(src_parent)?, nodes.path_of(parent)?)
        };
        let sfd = self.upper_dir(&sp)?;
        let dfd = self.upper_dir(&dp)?;
        match rustix::fs::linkat(&sfd, &src_name, &dfd, name, AtFlags::empty()) {
            Ok(()) => self.adjust_nlink(ino, -1),
            // Already an upper link (made by link() in the mount).
            Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(e) => Err(Error::os("link up", e, Where::Upper)),
        }
    }

    /// Builds the copy of `src` (`st`, at `path` in `layer`) as `tmp` in the work
    /// directory; a regular file's data comes from `data.0`, or is left out when `data.1`
    /// (a metacopy copy-up).
    #[allow(clippy::too_many_arguments)]
    fn build_copy(
        &self,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
        src: &impl AsFd,
        st: &Stat,
        path: &Path,
        layer: u16,
        data: (&crate::union::inode::DataLoc, bool),
    ) -> Result<()> {
        let at = Where::Lower(layer);
        let kind = FileType::from_raw_mode(st.st_mode);
        match kind {
            FileType::Directory => {
                rustix::fs::mkdirat(work, tmp, Mode::from_raw_mode(0o700))
                    .at("mkdir copy", Where::Work)?;
            }
            FileType::RegularFile if data.1 => {
                crate::union::metacopy::create_sparse(work, tmp, st.st_size as u64)?;
            }
            FileType::RegularFile => {
                let (data_loc, _) = data;
                let at = Where::Lower(data_loc.layer);
                // A lower metacopy file's data is in another file, opened by its path.
                let data = if data_loc.layer == layer && data_loc.path == path {
                    Self::reopen_for_copy(src.as_fd()).at("open lower data", at)?
                } else {
                    self.open_data_elsewhere(data_loc)?
                };
                let dst = rustix::fs::openat(
                    work,
                    tmp,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .at("create copy", Where::Work)?;
                sys::copy_file_data(data.as_fd(), dst.as_fd(), st.st_size as u64)
                    .at("copy data", Where::Work)?;
                // The data (and the size and block map that find it: fdatasync) must be on
                // disk before the rename publishes the copy and hides the lower file, or a
                // crash could leave an upper file without its data. An empty file has no
                // data: its creation and the rename are ordered by the filesystem's journal.
                if !self.opts.volatile && st.st_size > 0 {
                    rustix::fs::fdatasync(&dst).at("fsync copy", Where::Work)?;
                }
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(src, "", Vec::new()).at("readlink", at)?;
                rustix::fs::symlinkat(target.as_c_str(), work, tmp)
                    .at("symlink copy", Where::Work)?;
            }
            FileType::Fifo
            | FileType::Socket
            | FileType::CharacterDevice
            | FileType::BlockDevice => {
                rustix::fs::mknodat(work, tmp, kind, Mode::from_raw_mode(0o600), st.st_rdev)
                    .at("mknod copy", Where::Work)?;
            }
            FileType::Unknown => return Err(Error::Invariant("unknown file type in lower")),
        }
        let copy = rustix::fs::openat(
            work,
            tmp,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .at("open copy", Where::Work)?;
        // Owner and mode first (chown drops security.capability and set-id bits), then
        // the xattrs, then the times (which nothing after changes).
        copy_owner_mode(work, tmp, &self.disk_owner(st, layer))?;
        copy_xattrs(XattrFd::Path(src.as_fd()), XattrFd::Path(copy.as_fd()), at)?;
        copy_times(work, tmp, st)?;
        tracing::trace!(?path, "copy built");
        Ok(())
    }

    /// Records that this daemon just made the upper directory of `ino` (empty), when it
    /// writes whiteouts as devices (see `Node::no_wh_files`).
    pub(crate) fn made_upper_dir(&self, ino: u64) {
        if self.format.map(|f| f.whiteout) != Some(crate::format::whiteout::WhiteoutKind::CharDev) {
            return;
        }
        if let Ok(n) = self.nodes.write().get_mut(ino) {
            n.no_wh_files = n.is_dir;
        }
    }

    /// `st` with the owner to store for an object of lower `layer`: a shifted (idmapped)
    /// lower shows mount ids, the copy gets the ids they stand for.
    fn disk_owner(&self, st: &Stat, layer: u16) -> Stat {
        let mut owner = *st;
        if self.stack.lower(layer).shifted {
            let ids = &self.opts.ids;
            owner.st_uid = ids.uid_to_disk(st.st_uid).unwrap_or(st.st_uid);
            owner.st_gid = ids.gid_to_disk(st.st_gid).unwrap_or(st.st_gid);
        }
        owner
    }
}

impl UnionFs {
    /// Whether the object of `ino` lives in the upper layer (or the index) now, its data
    /// included (a metacopy file's data is still in a lower layer).
    pub fn is_upper(&self, Ino(ino): Ino) -> Result<bool> {
        let nodes = self.nodes.read();
        let n = nodes.get(ino)?;
        Ok(n.detached().is_none() && (n.upper || n.index().is_some()) && n.data().is_none())
    }

    /// The open file behind a handle (for FUSE passthrough registration).
    pub fn handle_file(&self, Fh(fh): Fh) -> Result<Arc<crate::union::handle::FileHandle>> {
        self.handles.file(fh)
    }
}

/// Copy-up policy: what a change asks to be copied up, and when it cannot be.
impl UnionFs {
    /// Makes the attributes of `ino` writable: copies it up (its metadata only, for a
    /// regular file under `metacopy`), unless it has no name any more (then it is written
    /// where it is, if that is not a lower layer).
    pub(crate) fn prepare_write(&self, ino: u64) -> Result<()> {
        self.prepare(ino, false, None).map(|_| ())
    }

    /// [`Self::prepare_write`] for a chmod to `mode`: true when the copy-up this caused
    /// gave the copy that mode already (one change of the upper file the less).
    pub(crate) fn prepare_chmod(&self, ino: u64, mode: u32) -> Result<bool> {
        self.prepare(ino, false, Some(mode))
    }

    /// Makes the data of `ino` writable too (open for writing, truncate): as
    /// [`Self::prepare_write`], and the data of a metacopy file is copied up.
    pub(crate) fn prepare_data(&self, ino: u64) -> Result<()> {
        self.prepare(ino, true, None).map(|_| ())
    }

    fn prepare(&self, ino: u64, data: bool, mode: Option<u32>) -> Result<bool> {
        self.writable()?;
        let _ns = self.ns_change();
        let (detached, lower) = {
            let nodes = self.nodes.read();
            let n = nodes.get(ino)?;
            (n.detached().is_some(), n.detached_lower)
        };
        let mode_done = match (detached, lower) {
            (false, _) => self.copy_up_chain(ino, data, mode)?,
            (true, false) => false,
            // A nameless lower object (unlinked while open, or left to passthrough
            // readers) cannot be made writable.
            (true, true) => return Err(Error::Stale),
        };
        if data {
            self.copy_up_data(ino)?;
        }
        Ok(mode_done)
    }
}
