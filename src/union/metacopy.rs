//! Metacopy files, as kernel overlayfs writes and reads them with `metacopy=on`.
//!
//! A change of a lower regular file's attributes (mode, owner, times, xattrs, ACLs, inode
//! flags), a rename or a link copies up only its metadata: the upper gets an empty file of
//! the lower's size (no data blocks), its attributes, `overlay.origin`, and the mark
//! `overlay.metacopy` (see [`crate::format::metacopy`]); its data stays in the lower file.
//! Reads go to that lower file, stat shows the upper's attributes with the lower's
//! `st_blocks`. The first open for writing (or truncate) copies the data up.
//!
//! Where the data is: below the metacopy file, the lower layers are searched at its name
//! in its parent directory, or where its own `overlay.redirect` points (a metacopy file
//! that was renamed or linked carries one: its name, relative, or its lower path from the
//! root, absolute). A lower layer may hold a metacopy file too (a former upper): its
//! redirect applies to the layers below it, and the data is the first regular file that is
//! no metacopy. A whiteout or anything but a regular file on the way, or no such file,
//! means no data: the lookup fails with EIO, as the kernel's. After the lower layers, the
//! data-only layers are searched, by path, when the last redirect seen was absolute.
//!
//! The data copy-up is done in place, in the upper file itself, as the kernel does it (the
//! inode must stay: an indexed hard link has several upper names and an index entry): the
//! data is copied (holes kept), made durable with `fdatasync` (unless volatile), then the
//! mark is removed. A daemon killed before the removal leaves the file marked, and a mark
//! means its data is read from the lower file: a half-copied upper is never shown. Times
//! and `security.capability` (which a write may drop) are put back before the mark goes.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::{Mode, OFlags, Stat};

use crate::error::{Error, OsContext, Result, Where};
use crate::format::metacopy as fmt_metacopy;
use crate::format::whiteout::WriteFormat;
use crate::format::xattr::{self, XattrNs};
use crate::sys;
use crate::union::dirfd::LayerKey;
use crate::union::inode::RealLoc;
use crate::union::inode::{DataLoc, LowerRef};
use crate::union::layer::LowerIdx;
use crate::union::lookup::DirInfo;
use crate::union::redirect::{self, Cursor, FileProbe, Redirect};
use crate::union::UnionFs;

/// The data of a metacopy object, as a lookup found it.
#[derive(Debug, Clone)]
pub struct FoundData {
    pub loc: DataLoc,
    pub st: Stat,
}

impl UnionFs {
    /// The metacopy xattr this mount reads and writes (its own namespace, as the kernel
    /// reads only its own).
    pub(crate) fn metacopy_xattr(&self) -> &'static OsStr {
        let ns = self.format.map(|f| f.xattr_ns).unwrap_or(XattrNs::Trusted);
        OsStr::new(ns.metacopy())
    }

    /// Whether regular file `name` in `dir` carries the metacopy mark. A value the kernel
    /// refuses at lookup (1 to 3 bytes) is EIO.
    pub(crate) fn metacopy_mark_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        at: Where,
    ) -> Result<bool> {
        let Some(v) = sys::get_xattr_at(dir, name, self.metacopy_xattr()).at("getxattr", at)?
        else {
            return Ok(false);
        };
        if let Err(bad) = fmt_metacopy::check_size(v.len()) {
            tracing::warn!(?name, %bad, "refusing a metacopy file");
            return Err(Error::Os {
                op: "metacopy",
                errno: bad.errno(),
                at,
            });
        }
        Ok(true)
    }

    /// The redirect of metacopy file `name` in `dir`, if it has one.
    pub(crate) fn file_redirect_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        at: Where,
    ) -> Result<Option<Redirect>> {
        for x in xattr::REDIRECT_XATTRS {
            if let Some(v) = sys::get_xattr_at(dir, name, OsStr::new(x)).at("getxattr", at)? {
                return redirect::parse(&v, at).map(Some);
            }
        }
        Ok(None)
    }

    /// Finds the data of a metacopy file named `name` in the directory whose lower part is
    /// `parent`, carrying `redirect`, in the layers below `after` (all lower layers for an
    /// upper file). `None`: no data anywhere (the caller fails with EIO).
    pub(crate) fn find_data(
        &self,
        parent: Option<&LowerRef>,
        name: &OsStr,
        redirect: Option<Redirect>,
        after: Option<LowerIdx>,
    ) -> Result<Option<FoundData>> {
        let mut cur = Cursor {
            from_root: false,
            path: PathBuf::from(name),
        };
        let mut absolute = matches!(redirect, Some(Redirect::Absolute(_)));
        if let Some(r) = redirect {
            cur.apply(r);
        }
        let bottom = self.stack.bottom();
        let data_layers = self.stack.data_layers();
        let first = after.map_or(0, |a| a + 1);
        for layer in first..=bottom {
            if !cur.from_root && !parent.is_some_and(|p| p.layers.contains(&layer)) {
                continue;
            }
            let last = layer == bottom && data_layers.is_empty();
            match self.probe_file(layer, &mut cur, parent, last)? {
                FileProbe::Missing => continue,
                FileProbe::Stop => return Ok(None),
                FileProbe::File {
                    dir,
                    name,
                    path,
                    st,
                    stop_after,
                } => {
                    let at = Where::Lower(layer);
                    if !self.metacopy_mark_at(dir.as_fd(), &name, at)? {
                        return Ok(Some(FoundData {
                            loc: DataLoc {
                                layer,
                                path,
                                blocks: st.st_blocks as u64,
                            },
                            st,
                        }));
                    }
                    // A metacopy file of a lower layer: its redirect moves the search for
                    // the layers below it.
                    let r = self.file_redirect_at(dir.as_fd(), &name, at)?;
                    absolute = matches!(r, Some(Redirect::Absolute(_)));
                    if let Some(r) = r {
                        cur.apply(r);
                    }
                    if stop_after {
                        break;
                    }
                }
            }
        }
        if !absolute {
            return Ok(None);
        }
        // Data-only layers: the path as it is, no merging, whiteouts or redirects (kernel
        // `ovl_lookup_data_layers`); the first regular file.
        for layer in data_layers {
            let Ok(fd) = sys::open_path(self.lower_root(layer), &cur.path) else {
                continue;
            };
            let st = rustix::fs::fstat(&fd).at("stat", Where::Lower(layer))?;
            if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                return Ok(Some(FoundData {
                    loc: DataLoc {
                        layer,
                        path: cur.path.clone(),
                        blocks: st.st_blocks as u64,
                    },
                    st,
                }));
            }
        }
        Ok(None)
    }

    /// Where the object of `ino` is read from: its data file while it is a metacopy file,
    /// else where it lives.
    pub(crate) fn read_loc(&self, ino: u64) -> Result<RealLoc> {
        let data = self.nodes.read().get(ino)?.data().cloned();
        match data {
            Some(d) => Ok(RealLoc::Lower(d.layer, d.path)),
            None => self.real(ino),
        }
    }

    /// Copies the data of metacopy object `ino` into its upper file (see the module doc).
    /// Caller holds `ns_lock`; the metadata is in the upper layer already.
    pub(crate) fn copy_up_data(&self, ino: u64) -> Result<()> {
        let Some(data) = self.nodes.read().get(ino)?.data().cloned() else {
            return Ok(());
        };
        let loc = self.real(ino)?;
        if let RealLoc::Lower(..) = loc {
            return Err(Error::Invariant("data copy-up of an object not copied up"));
        }
        let at = loc.at();
        let dst = self.open_loc_with(&loc, OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC)?;
        let st = rustix::fs::fstat(&dst).at("stat copy", at)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::Stale);
        }
        let src_at = Where::Lower(data.layer);
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let key = LayerKey::Lower(data.layer);
        let src = self
            .open_in(key, &data.path, flags | OFlags::NOATIME)
            .or_else(|_| self.open_in(key, &data.path, flags))?;
        let caps = if st.st_size > 0 {
            sys::get_xattr(dst.as_fd(), OsStr::new(xattr::CAPABILITY_XATTR)).at("getxattr", at)?
        } else {
            None
        };
        sys::copy_file_data(src.as_fd(), dst.as_fd(), st.st_size as u64).at("copy data", src_at)?;
        // The data must be on disk before the mark goes: until then the lower data is what
        // every reader (and a remount after a crash) sees.
        if !self.opts.volatile && st.st_size > 0 {
            rustix::fs::fdatasync(&dst).at("fsync copy", at)?;
        }
        // Copying the data is no change of the file: its times stay.
        rustix::fs::futimens(&dst, &crate::union::copy_up::stat_times(&st))
            .at("utimens copy", at)?;
        if let Some(c) = caps {
            sys::set_xattr(dst.as_fd(), OsStr::new(xattr::CAPABILITY_XATTR), &c, 0)
                .at("setxattr", at)?;
        }
        match sys::remove_xattr(dst.as_fd(), self.metacopy_xattr()) {
            Ok(()) | Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(Error::os("remove metacopy", e, at)),
        }
        if let Ok(n) = self.nodes.write().get_mut(ino) {
            n.set_data(None);
        }
        tracing::debug!(ino, path = ?data.path, "data copied up");
        Ok(())
    }

    /// Before metacopy file `name` of the directory `pinfo` (upper fd `pfd`, node `parent`)
    /// moves to another name (or gets another hard link: `samedir` false), gives it the
    /// redirect that keeps its data found from there, as kernel overlayfs does
    /// (`ovl_set_redirect`): a redirect it has is kept when absolute or when the file stays
    /// in its directory; else it gets its name (relative) when it stays in its directory
    /// and its lower file has one link, its lower path from the root (absolute) otherwise.
    /// Set before the move, so no crash leaves a moved file without it; at the old name it
    /// points where the data is anyway.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn redirect_before_move(
        &self,
        fmt: WriteFormat,
        pfd: BorrowedFd<'_>,
        name: &OsStr,
        parent: u64,
        pinfo: &DirInfo,
        data: &DataLoc,
        samedir: bool,
    ) -> Result<()> {
        let existing = self.file_redirect_at(pfd, name, Where::Upper)?;
        let value: Vec<u8> = match existing {
            Some(Redirect::Absolute(_)) => return Ok(()),
            Some(Redirect::Relative(_)) if samedir => return Ok(()),
            existing => {
                let nlink = self
                    .stat_in(LayerKey::Lower(data.layer), &data.path)?
                    .st_nlink;
                match existing {
                    None if samedir && nlink <= 1 => name.as_bytes().to_vec(),
                    existing => {
                        let comp = match existing {
                            Some(Redirect::Relative(r)) => r,
                            _ => name.to_os_string(),
                        };
                        let base = match &pinfo.lower {
                            Some(l) => l.path.clone(),
                            None => self.nodes.read().path_of(parent)?,
                        };
                        let mut v = b"/".to_vec();
                        v.extend_from_slice(base.join(comp).as_os_str().as_bytes());
                        v
                    }
                }
            }
        };
        let fd = sys::open_path(pfd, std::path::Path::new(name)).at("open", Where::Upper)?;
        sys::set_xattr(fd.as_fd(), OsStr::new(fmt.xattr_ns.redirect()), &value, 0)
            .at("set redirect", Where::Upper)
    }

    /// Whether the lower regular file `name` of lower directory `dir` (found in `layer`) is
    /// a metacopy file; remembered in the directory's cached index (lowers do not change).
    pub(crate) fn lower_is_metacopy(
        &self,
        dir: &LowerRef,
        name: &OsStr,
        layer: LowerIdx,
        cache: &std::sync::atomic::AtomicU8,
    ) -> Result<bool> {
        use std::sync::atomic::Ordering;
        const NO: u8 = 1;
        const YES: u8 = 2;
        match cache.load(Ordering::Relaxed) {
            NO => return Ok(false),
            YES => return Ok(true),
            _ => {}
        }
        let at = Where::Lower(layer);
        let pfd = self
            .lower_dir_fd(layer, dir.path_in(layer))
            .at("open lower dir", at)?;
        let yes = self.metacopy_mark_at(pfd.as_fd(), name, at)?;
        cache.store(if yes { YES } else { NO }, Ordering::Relaxed);
        Ok(yes)
    }
}

/// An empty upper file for a metacopy copy-up: `name` in `dir`, sparse at `size`.
pub(crate) fn create_sparse(dir: BorrowedFd<'_>, name: &OsStr, size: u64) -> Result<()> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .at("create copy", Where::Work)?;
    rustix::fs::ftruncate(&fd, size).at("truncate copy", Where::Work)
}

/// Marks the copy being built behind `fd` a metacopy file (the kernel's value: empty, no
/// digest).
pub(crate) fn mark(fmt: WriteFormat, fd: sys::XattrFd<'_>) -> Result<()> {
    let value = fmt_metacopy::encode(&fmt_metacopy::Metacopy::default());
    fd.set(OsStr::new(fmt.xattr_ns.metacopy()), &value, 0)
        .at("set metacopy", Where::Work)
}
