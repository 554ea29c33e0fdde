//! The union core: a merged view of a stack of layers, with no knowledge of FUSE.
//!
//! Every operation takes inode numbers and names, and returns plain values or an
//! [`Error`](crate::error::Error) carrying an errno. The fuser adapter (`crate::fuse`) only
//! translates. Submodules: `lookup` (resolving names through the layers, and the cached
//! per-directory index of lower layers), `readdir` (merged listings, their snapshots, and
//! serving them into the adapter's reply), `copy_up`,
//! `mutate` (create, unlink, rmdir, rename, link), `attr` (stat, setattr, xattrs),
//! `handle` (open files and directories), `tmpfile` (unnamed files, `O_TMPFILE`), `fileattr`
//! (inode flags, `chattr`, and the immutable/append-only protection kept in
//! `overlay.protattr`), `metacopy` (files whose metadata was copied up without their data:
//! where the data is, and its copy-up).
//!
//! Locking: the node table sits behind an `RwLock` held only for table updates, never
//! across I/O. Changes to the namespace (create, remove, rename, copy-up) are serialised
//! by `ns_lock`, so two of them never interleave half-way; lookups, reads and writes to
//! open files run in parallel with each other and with those changes.

pub mod acl;
pub mod attr;
pub mod copy_up;
pub mod dirfd;
pub mod export;
pub mod fileattr;
pub mod handle;
pub mod ids;
pub mod inode;
pub mod inuse;
pub mod layer;
pub mod lookup;
pub mod metacopy;
pub mod mutate;
pub mod readdir;
pub mod redirect;
pub mod setid;
pub mod tmpfile;

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result, Where};
use crate::format::override_stat::OVERRIDE_NAMES;
use crate::format::whiteout::{WhiteoutKind, WriteFormat};
use crate::format::xattr::XattrNs;
use inode::{LowerRef, NodeTable, ROOT_INO};
use layer::{LowerIdx, Stack, StackPaths};

/// A point in time with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

/// A node as the kernel names it (FUSE's node id; [`ROOT`] is the root): what every
/// request on an inode carries across the core's boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Ino(pub u64);

/// The root directory's node.
pub const ROOT: Ino = Ino(ROOT_INO);

/// An open file or directory, as [`UnionFs::open`] and [`UnionFs::opendir`] give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fh(pub u64);

/// Attributes of a merged object, as `stat` would show them through the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attr {
    pub ino: Ino,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub blksize: u32,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    /// The FUSE generation of the node (see [`export`]): 0 unless the mount exports
    /// handles. Only entry replies carry it.
    pub generation: u32,
}

impl Attr {
    pub fn from_stat(ino: u64, st: &rustix::fs::Stat) -> Attr {
        Attr {
            ino: Ino(ino),
            mode: st.st_mode,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            blksize: st.st_blksize as u32,
            atime: Timespec {
                sec: st.st_atime,
                nsec: st.st_atime_nsec as u32,
            },
            mtime: Timespec {
                sec: st.st_mtime,
                nsec: st.st_mtime_nsec as u32,
            },
            ctime: Timespec {
                sec: st.st_ctime,
                nsec: st.st_ctime_nsec as u32,
            },
            generation: 0,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// Shows an inner overlay's whiteout as the character device 0/0 it was made as
    /// (stored as a zero-size file, see `crate::format::xattr::INNER_WHITEOUT_XATTRS`).
    pub(crate) fn show_inner_whiteout(&mut self) {
        self.mode = libc::S_IFCHR | (self.mode & 0o7777);
        self.rdev = 0;
        self.size = 0;
        self.blocks = 0;
    }
}

/// Who asks: the credentials new objects get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };
}

/// Options of the core that are not part of the stack itself.
#[derive(Debug, Clone, Default)]
pub struct CoreOptions {
    /// Never fsync (kernel `volatile`): copy-ups are not made durable.
    pub volatile: bool,
    /// Mount read-only even with an upper layer.
    pub read_only: bool,
    /// Ownership through the mount: id mappings, squashing, the override xattr.
    pub ids: ids::IdOptions,
    /// The atime flags of the private upper mount (kernel overlayfs's clone of the upper
    /// mount); `None` uses the upper mount as it is.
    pub atime: Option<rustix::mount::MountAttrFlags>,
    /// `nfs_export=on`: file handles outlive the kernel's caches and remounts (see
    /// [`export`]).
    pub nfs_export: bool,
    /// `metacopy=on|off`; `None`: on where the kernel's format can be written and read
    /// (`trusted.*` xattrs, i.e. rootful), off otherwise.
    pub metacopy: Option<bool>,
}

/// Maps (device, inode) of layer objects to stable, unique inode numbers of the mount.
#[derive(Debug)]
struct InoMap {
    devs: Mutex<Vec<u64>>,
    next_synthetic: AtomicU64,
}

/// Bits of a merged inode number that carry the device index.
const DEV_SHIFT: u32 = 48;
/// Synthetic inode numbers (for objects whose real number does not fit) start here.
const SYNTHETIC_BASE: u64 = 1 << 62;

impl InoMap {
    fn new(devs: Vec<u64>) -> Self {
        InoMap {
            devs: Mutex::new(devs),
            next_synthetic: AtomicU64::new(SYNTHETIC_BASE),
        }
    }

    /// The mount's inode number for a layer object. When every layer shares one
    /// filesystem this is the real inode number, as with kernel overlayfs.
    fn map(&self, dev: u64, ino: u64) -> u64 {
        let idx = {
            let mut devs = self.devs.lock();
            match devs.iter().position(|d| *d == dev) {
                Some(i) => i as u64,
                None => {
                    devs.push(dev);
                    (devs.len() - 1) as u64
                }
            }
        };
        if ino >> DEV_SHIFT == 0 && idx < (1 << (62 - DEV_SHIFT)) {
            let v = (idx << DEV_SHIFT) | ino;
            if v != ROOT_INO && v != 0 {
                return v;
            }
        }
        self.synthetic()
    }

    fn synthetic(&self) -> u64 {
        self.next_synthetic.fetch_add(1, Ordering::Relaxed)
    }

    /// The (device, inode) a number made by [`map`](Self::map) stands for; `None` for a
    /// synthetic number, which stands for nothing on disk.
    fn unmap(&self, v: u64) -> Option<(u64, u64)> {
        if v >= SYNTHETIC_BASE || v == ROOT_INO || v == 0 {
            return None;
        }
        let dev = *self.devs.lock().get((v >> DEV_SHIFT) as usize)?;
        Some((dev, v & ((1 << DEV_SHIFT) - 1)))
    }
}

/// The merged filesystem.
#[derive(Debug)]
pub struct UnionFs {
    pub(crate) stack: Stack,
    /// How this mount writes metadata; `None` when read-only.
    pub(crate) format: Option<WriteFormat>,
    pub(crate) opts: CoreOptions,
    pub(crate) nodes: RwLock<NodeTable>,
    pub(crate) lower_index: lookup::LowerIndexCache,
    pub(crate) handles: handle::HandleTable,
    /// Serialises namespace changes and copy-ups.
    pub(crate) ns_lock: Mutex<()>,
    pub(crate) dirs: dirfd::DirFdCache,
    inos: InoMap,
    tmp_seq: AtomicU64,
    /// The work directory's filesystem refused `O_TMPFILE`: copies are built under names.
    pub(crate) no_tmpfile: std::sync::atomic::AtomicBool,
    /// Counts namespace changes (taken under `ns_lock`): tells when the export maps of
    /// the upper may be out of date.
    ns_changes: AtomicU64,
    /// The maps that decode file handles, with `nfs_export=on`.
    pub(crate) export: Option<export::ExportMaps>,
    /// Metadata-only copy-up, and following metacopy files of the layers (kernel
    /// `metacopy=on`); off, such a file is refused with EPERM as the kernel refuses it.
    pub(crate) metacopy: bool,
    /// Read ownership override xattrs (`xattr_permissions`, or a layer root carrying one,
    /// as fuse-overlayfs detects stores written that way).
    read_override: bool,
}

impl UnionFs {
    /// Opens and checks the stack. Errors are one line for the user.
    pub fn new(paths: &StackPaths, opts: CoreOptions) -> std::result::Result<UnionFs, String> {
        let stack = Stack::open_with_atime(paths, opts.atime)?;
        let format = match (&stack.work, opts.read_only) {
            (Some(work), false) => Some(WriteFormat {
                whiteout: if crate::sys::can_mknod_whiteout(work.as_fd()) {
                    WhiteoutKind::CharDev
                } else {
                    WhiteoutKind::WhFile
                },
                xattr_ns: if crate::sys::can_set_trusted_xattr(work.as_fd()) {
                    XattrNs::Trusted
                } else {
                    XattrNs::User
                },
            }),
            _ => None,
        };
        let mut devs = Vec::new();
        for l in stack.upper.iter().chain(stack.lowers.iter()) {
            if !devs.contains(&l.dev) {
                devs.push(l.dev);
            }
        }
        let read_override = opts.ids.override_write.is_some()
            || stack.upper.iter().chain(stack.lowers.iter()).any(|l| {
                OVERRIDE_NAMES.iter().any(|n| {
                    matches!(
                        crate::sys::get_xattr(l.root.as_fd(), OsStr::new(n)),
                        Ok(Some(_))
                    )
                })
            });
        // The kernel's metacopy format lives in `trusted.overlay.*`: kernel overlayfs with
        // `userxattr` (rootless) has no metacopy and refuses such files, so a rootless mount
        // copies data up whole.
        let trusted = match format {
            Some(f) => f.xattr_ns == XattrNs::Trusted,
            None => rustix::process::geteuid().is_root(),
        };
        let metacopy = opts.metacopy.unwrap_or(true) && trusted;
        if stack.regular < stack.lowers.len() && !metacopy {
            return Err(
                "data-only lower layers (datadir+, lowerdir=..::..) need metacopy=on, which needs \
                 trusted.* xattrs (CAP_SYS_ADMIN)"
                    .into(),
            );
        }
        let root_lower = Arc::new(LowerRef::new(
            Default::default(),
            (0..stack.regular as LowerIdx).collect(),
        ));
        let (opts_export, lowers) = (opts.nfs_export, stack.lowers.len());
        let fs = UnionFs {
            nodes: RwLock::new(NodeTable::new(stack.upper.is_some(), root_lower)),
            stack,
            format,
            opts,
            lower_index: lookup::LowerIndexCache::new(),
            handles: handle::HandleTable::default(),
            ns_lock: Mutex::new(()),
            dirs: dirfd::DirFdCache::new(dir_cache_capacity()),
            inos: InoMap::new(devs),
            tmp_seq: AtomicU64::new(0),
            no_tmpfile: Default::default(),
            ns_changes: AtomicU64::new(0),
            export: opts_export.then(|| export::ExportMaps::new(lowers)),
            metacopy,
            read_override,
        };
        Ok(fs)
    }

    /// Whether stat reads ownership override xattrs.
    pub(crate) fn reads_override(&self) -> bool {
        self.read_override
    }

    /// Whether attribute changes copy up metadata only (kernel `metacopy=on`).
    pub fn metacopy_enabled(&self) -> bool {
        self.metacopy
    }

    /// True when the mount accepts no change.
    pub fn is_read_only(&self) -> bool {
        self.format.is_none()
    }

    /// The write format, or EROFS.
    pub(crate) fn writable(&self) -> Result<WriteFormat> {
        self.format.ok_or(Error::ReadOnly)
    }

    pub(crate) fn upper_root(&self) -> Result<BorrowedFd<'_>> {
        self.stack
            .upper
            .as_ref()
            .map(|l| l.root.as_fd())
            .ok_or(Error::ReadOnly)
    }

    pub(crate) fn work_dir(&self) -> Result<BorrowedFd<'_>> {
        self.stack
            .work
            .as_ref()
            .map(|w| w.as_fd())
            .ok_or(Error::ReadOnly)
    }

    /// Frees the upperdir and workdir for another mount. Only once nothing is served any
    /// more: the daemon calls it when its session has ended, ahead of the rest of the exit.
    pub fn release_in_use(&self) {
        if let Some(l) = &self.stack.in_use {
            l.release();
        }
    }

    pub(crate) fn lower_root(&self, idx: LowerIdx) -> BorrowedFd<'_> {
        self.stack.lower(idx).root.as_fd()
    }

    pub(crate) fn map_ino(&self, st: &rustix::fs::Stat) -> u64 {
        self.inos.map(st.st_dev, st.st_ino)
    }

    pub(crate) fn map_dev_ino(&self, dev: u64, ino: u64) -> u64 {
        self.inos.map(dev, ino)
    }

    pub(crate) fn synthetic_ino(&self) -> u64 {
        self.inos.synthetic()
    }

    /// The (device, inode) behind a mount inode number, `None` for a synthetic one.
    pub(crate) fn unmap_ino(&self, ino: u64) -> Option<(u64, u64)> {
        self.inos.unmap(ino)
    }

    /// Takes `ns_lock` for a change of the namespace (or a copy-up), counting it.
    pub(crate) fn ns_change(&self) -> parking_lot::MutexGuard<'_, ()> {
        let g = self.ns_lock.lock();
        self.ns_changes.fetch_add(1, Ordering::Relaxed);
        g
    }

    /// How many namespace changes have begun (see [`ns_change`](Self::ns_change)).
    pub(crate) fn ns_change_count(&self) -> u64 {
        self.ns_changes.load(Ordering::Relaxed)
    }

    /// Whether file handles outlive the kernel's caches (`nfs_export=on`).
    pub fn exports(&self) -> bool {
        self.export.is_some()
    }

    /// A fresh name for something being built in the work directory.
    pub(crate) fn tmp_name(&self) -> std::ffi::OsString {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        format!("#rlayerfs-{}-{n}", std::process::id()).into()
    }

    /// Number of nodes the kernel holds (for tests and memory accounting).
    pub fn node_count(&self) -> usize {
        self.nodes.read().len()
    }

    /// Statistics of the filesystem holding the upper (or the top lower when read-only).
    pub fn statfs(&self) -> Result<rustix::fs::StatVfs> {
        let fd = match &self.stack.upper {
            Some(u) => u.root.as_fd(),
            None => self.stack.lowers[0].root.as_fd(),
        };
        // Layer roots are held open for reading: no reopen per statfs.
        rustix::fs::fstatvfs(fd).map_err(|e| Error::os("statfs", e, Where::Upper))
    }
}

/// How many directory fds each cache may hold: raises the soft RLIMIT_NOFILE to the hard
/// one and keeps a quarter of it for each of the two caches.
fn dir_cache_capacity() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(1 << 20) as usize;
    (soft / 4).min(dirfd::MAX_CACHED_DIRS)
}

impl UnionFs {
    /// The upper directory at `path`.
    pub(crate) fn upper_dir(&self, path: &Path) -> Result<std::sync::Arc<std::os::fd::OwnedFd>> {
        self.dirs
            .dir(dirfd::LayerKey::Upper, self.upper_root()?, path)
            .map_err(|e| Error::os("open upper dir", e, Where::Upper))
    }

    /// The lower directory at `path` in layer `l`.
    pub(crate) fn lower_dir_fd(
        &self,
        l: LowerIdx,
        path: &Path,
    ) -> rustix::io::Result<std::sync::Arc<std::os::fd::OwnedFd>> {
        self.dirs
            .dir(dirfd::LayerKey::Lower(l), self.lower_root(l), path)
    }

    /// The cached fd of the parent directory of `path` in a layer, the last component
    /// (`None` for the layer root) and where errors come from.
    pub(crate) fn parent_in<'p>(
        &self,
        layer: dirfd::LayerKey,
        path: &'p Path,
    ) -> Result<(
        std::sync::Arc<std::os::fd::OwnedFd>,
        Option<&'p OsStr>,
        Where,
    )> {
        let (at, root) = match layer {
            dirfd::LayerKey::Upper => (Where::Upper, self.upper_root()?),
            dirfd::LayerKey::Lower(l) => (Where::Lower(l), self.lower_root(l)),
        };
        let (parent, name) = dirfd::split(path);
        let pfd = self
            .dirs
            .dir(layer, root, parent)
            .map_err(|e| Error::os("open dir", e, at))?;
        Ok((pfd, name, at))
    }

    /// Opens the object at `path` in a layer (`O_NOFOLLOW` always), relative to its
    /// parent's cached fd.
    pub(crate) fn open_in(
        &self,
        layer: dirfd::LayerKey,
        path: &Path,
        flags: rustix::fs::OFlags,
    ) -> Result<std::os::fd::OwnedFd> {
        let (pfd, name, at) = self.parent_in(layer, path)?;
        let name = name.unwrap_or(OsStr::new("."));
        rustix::fs::openat(
            &*pfd,
            name,
            flags | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| Error::os("open", e, at))
    }

    /// The stat of the object at `path` in a layer (never following a symlink): one
    /// `fstatat` relative to the parent's cached fd, no open.
    pub(crate) fn stat_in(&self, layer: dirfd::LayerKey, path: &Path) -> Result<rustix::fs::Stat> {
        let (pfd, name, at) = self.parent_in(layer, path)?;
        match name {
            Some(name) => rustix::fs::statat(&*pfd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW),
            None => rustix::fs::fstat(&*pfd),
        }
        .map_err(|e| Error::os("stat", e, at))
    }

    /// The stat of the object a node lives at now (see [`inode::RealLoc`]).
    pub(crate) fn stat_real(&self, loc: &inode::RealLoc) -> Result<rustix::fs::Stat> {
        use crate::error::OsContext;
        match loc {
            inode::RealLoc::Upper(p) => self.stat_in(dirfd::LayerKey::Upper, p),
            inode::RealLoc::Lower(l, p) => self.stat_in(dirfd::LayerKey::Lower(*l), p),
            _ => {
                let fd = self.open_real_path(loc)?;
                rustix::fs::fstat(&*fd).at("stat", loc.at())
            }
        }
    }

    /// Reads xattr `xname` of the object a node lives at now: by name relative to the
    /// parent's cached fd (one `getxattrat`), else through an `O_PATH` handle.
    pub(crate) fn get_xattr_real(
        &self,
        loc: &inode::RealLoc,
        xname: &OsStr,
    ) -> Result<Option<Vec<u8>>> {
        use crate::error::OsContext;
        let (layer, path, root) = match loc {
            inode::RealLoc::Upper(p) => (dirfd::LayerKey::Upper, p, self.upper_root()?),
            inode::RealLoc::Lower(l, p) => (dirfd::LayerKey::Lower(*l), p, self.lower_root(*l)),
            _ => {
                let fd = self.open_real_path(loc)?;
                return crate::sys::get_xattr(fd.as_fd(), xname).at("getxattr", loc.at());
            }
        };
        let (parent, name) = dirfd::split(path);
        let Some(name) = name else {
            let fd = self.open_real_path(loc)?;
            return crate::sys::get_xattr(fd.as_fd(), xname).at("getxattr", loc.at());
        };
        let pfd = self
            .dirs
            .dir(layer, root, parent)
            .map_err(|e| Error::os("open dir", e, loc.at()))?;
        crate::sys::get_xattr_at(pfd.as_fd(), name, xname).at("getxattr", loc.at())
    }

    /// An `O_PATH` handle on the object at `path` in a layer.
    pub(crate) fn path_fd(
        &self,
        layer: dirfd::LayerKey,
        path: &Path,
    ) -> Result<std::os::fd::OwnedFd> {
        self.open_in(layer, path, rustix::fs::OFlags::PATH)
    }
}

/// Checks a name given by the kernel: one component, not reserved.
pub(crate) fn check_name(name: &OsStr) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let b = name.as_bytes();
    if b.len() > 255 {
        return Err(Error::NameTooLong);
    }
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(Error::Invalid);
    }
    Ok(())
}

impl UnionFs {
    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, Ino(ino): Ino, n: u64) {
        self.nodes.write().forget(ino, n);
    }
}

#[cfg(test)]
mod ids_tests;
#[cfg(test)]
mod metacopy_tests;
#[cfg(test)]
mod tests;
