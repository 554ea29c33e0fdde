//! Copy-up: making a lower object writable by copying it into the upper layer.
//!
//! The copy is built under a fresh name in the work directory (data with holes kept,
//! then xattrs, owner, mode, timestamps), made durable with fsync unless the mount is
//! volatile, and only then renamed into place with RENAME_NOREPLACE. A daemon killed at
//! any point leaves either no upper object or a complete one; the work directory's
//! leftovers are removed at the next mount. Parents are copied up first, each the same
//! way. Callers hold `ns_lock`.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat, Timestamps};

use crate::error::{Error, OsContext, Result, Where};
use crate::sys;
use crate::union::{whiteout, UnionFs, ROOT};

/// Copies every xattr but the overlay's private ones from `src` to `dst`.
pub(crate) fn copy_xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, at: Where) -> Result<()> {
    for name in sys::list_xattrs(src).at("listxattr", at)? {
        if whiteout::is_private_xattr(&name) {
            continue;
        }
        let Some(value) = sys::get_xattr(src, &name).at("getxattr", at)? else {
            continue;
        };
        match sys::set_xattr(dst, &name, &value, 0) {
            Ok(()) => {}
            // The upper filesystem cannot hold this namespace: the kernel skips it too.
            Err(rustix::io::Errno::NOTSUP) => {
                tracing::debug!(?name, "xattr not supported by the upper filesystem");
            }
            Err(e) => return Err(Error::os("setxattr", e, Where::Upper)),
        }
    }
    Ok(())
}

/// Applies owner, mode and timestamps of `st` to the object `name` in `dir`.
pub(crate) fn copy_meta(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat) -> Result<()> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .at("open copy", Where::Work)?;
    // chown before chmod: chown clears set-id bits.
    rustix::fs::chownat(
        &fd,
        "",
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
        AtFlags::EMPTY_PATH,
    )
    .or_else(|e| {
        if rustix::process::geteuid().is_root() {
            Err(e)
        } else {
            Ok(())
        }
    })
    .at("chown copy", Where::Work)?;
    let path = crate::union::attr::proc_path(&fd);
    if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
        rustix::fs::chmod(&*path, Mode::from_raw_mode(st.st_mode & 0o7777))
            .at("chmod copy", Where::Work)?;
    }
    let ts = Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, &*path, &ts, AtFlags::empty())
        .at("utimens copy", Where::Work)?;
    Ok(())
}

impl UnionFs {
    /// Makes sure node `ino` exists in the upper layer. Caller holds `ns_lock`.
    pub(crate) fn copy_up(&self, ino: u64) -> Result<()> {
        let (parent, name, lower) = {
            let nodes = self.nodes.read();
            let node = nodes.get(ino)?;
            if node.upper {
                return Ok(());
            }
            if node.detached.is_some() {
                return Err(Error::NotFound);
            }
            (node.parent, node.name.clone(), node.lower.clone())
        };
        if ino == ROOT {
            return Err(Error::Invariant("upper root missing"));
        }
        self.copy_up(parent)?;
        let lower = lower.ok_or(Error::Invariant("node without upper or lower"))?;
        let top = lower
            .top()
            .ok_or(Error::Invariant("lower without layers"))?;
        let at = Where::Lower(top);
        let src_root = self.lower_root(top);
        let src = sys::open_path(src_root, &lower.path).at("open lower", at)?;
        let st = rustix::fs::fstat(&src).at("stat lower", at)?;
        let work = self.work_dir()?;
        let tmp = self.tmp_name();
        let built = self.build_copy(work, &tmp, &src, &st, &lower.path, top);
        if let Err(e) = built {
            let _ = crate::union::layer::remove_tree(work, &tmp);
            return Err(e);
        }
        let upper_parent = self.nodes.read().path_of(parent)?;
        let pfd = sys::open_dir_path(self.upper_root()?, &upper_parent)
            .at("open upper dir", Where::Upper)?;
        if let Err(e) = rustix::fs::renameat_with(work, &tmp, &pfd, &name, RenameFlags::NOREPLACE) {
            let _ = crate::union::layer::remove_tree(work, &tmp);
            return Err(Error::os("publish copy-up", e, Where::Upper));
        }
        if let Ok(n) = self.nodes.write().get_mut(ino) {
            n.upper = true;
            if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink > 1 {
                n.extra_links = st.st_nlink as u32 - 1;
            }
        }
        tracing::debug!(ino, path = ?lower.path, "copied up");
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
                n.parent == parent && n.name == name,
                n.parent,
                n.name.clone(),
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
        let root = self.upper_root()?;
        let sfd = sys::open_dir_path(root, &sp).at("open upper dir", Where::Upper)?;
        let dfd = sys::open_dir_path(root, &dp).at("open upper dir", Where::Upper)?;
        match rustix::fs::linkat(&sfd, &src_name, &dfd, name, AtFlags::empty()) {
            Ok(()) => {
                if let Ok(n) = self.nodes.write().get_mut(ino) {
                    n.extra_links = n.extra_links.saturating_sub(1);
                }
                Ok(())
            }
            // Already an upper link (made by link() in the mount).
            Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(e) => Err(Error::os("link up", e, Where::Upper)),
        }
    }

    fn build_copy(
        &self,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
        src: &impl AsFd,
        st: &Stat,
        path: &Path,
        layer: u16,
    ) -> Result<()> {
        let at = Where::Lower(layer);
        let kind = FileType::from_raw_mode(st.st_mode);
        match kind {
            FileType::Directory => {
                rustix::fs::mkdirat(work, tmp, Mode::from_raw_mode(0o700))
                    .at("mkdir copy", Where::Work)?;
            }
            FileType::RegularFile => {
                let data = rustix::fs::open(
                    &*crate::union::attr::proc_path(&src.as_fd()),
                    // No O_NOFOLLOW: the magic link must be followed, to the object
                    // that fstat just showed to be a regular file.
                    OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .at("open lower data", at)?;
                let dst = rustix::fs::openat(
                    work,
                    tmp,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .at("create copy", Where::Work)?;
                sys::copy_file_data(data.as_fd(), dst.as_fd(), st.st_size as u64)
                    .at("copy data", Where::Work)?;
                if !self.opts.volatile {
                    rustix::fs::fsync(&dst).at("fsync copy", Where::Work)?;
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
        copy_xattrs(src.as_fd(), copy.as_fd(), at)?;
        copy_meta(work, tmp, st)?;
        tracing::trace!(?path, "copy built");
        Ok(())
    }
}
