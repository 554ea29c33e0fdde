//! Open files and directories.
//!
//! A file handle owns a real fd on the layer object it was opened on: a reader that
//! opened a lower file (or the lower data of a metacopy file) moves to the upper copy
//! once another open copied the data up (as with kernel overlayfs). Opening for write
//! copies up first. A directory handle holds the
//! merged listing taken at its first read (a [`Listing`]), so offsets stay valid across
//! telldir/seekdir and while entries are removed (`rm -rf` walks a stable snapshot).
//!
//! Directory offsets are cookies derived from the names (see [`Listing`]), the same in
//! every listing of a directory: the kernel may keep a listing in its cache
//! (`FOPEN_CACHE_DIR`) and serve a `seekdir` of one open directory from a listing another
//! open directory read later; a cookie then still means "after this name".

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use rustix::fs::{Mode, OFlags};

use crate::error::{Error, OsContext, Result, Where};
use crate::sys;
use crate::union::attr::proc_path;
use crate::union::dirfd::LayerKey;
use crate::union::inode::RealLoc;
use crate::union::readdir::DirEntry;
use crate::union::UnionFs;

/// An open regular file.
#[derive(Debug)]
pub struct FileHandle {
    pub ino: u64,
    pub file: File,
    pub writable: bool,
    /// Opened on a lower object: reads move to the upper copy once there is one, as
    /// kernel overlayfs readers do.
    pub on_lower: bool,
}

/// A merged listing in cookie order: entry `i` is followed by offset `offs[i]`.
///
/// `.` and `..` come first with offsets 1 and 2; every other name has the offset
/// [`name_cookie`] gives it (above 2, below 2^63), so an offset handed out by one listing
/// means the same place in any other listing of the directory: "after this name". Two
/// names of one listing with the same cookie (a 63-bit hash: practically never) get
/// consecutive offsets.
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<DirEntry>,
    pub offs: Vec<u64>,
    /// Set for a directory that is only in the upper layer: see [`UpperOnly`].
    upper_only: Option<UpperOnly>,
}

/// The upper directory a listing of an upper-only directory was taken from, and its
/// ctime then. Kernel overlayfs reads such a directory straight from the upper
/// filesystem, so a name removed while the directory is being read is not returned
/// after (xfstests generic/637); merged directories are read from a snapshot, whose
/// removed names are still returned, as here.
#[derive(Debug)]
struct UpperOnly {
    dir: Arc<std::os::fd::OwnedFd>,
    ctime: (i64, i64),
}

/// Checks, for a listing whose upper-only directory changed since it was taken, that a
/// name is still there (see [`UpperOnly`]).
#[derive(Debug)]
pub struct Recheck(Arc<std::os::fd::OwnedFd>);

impl Recheck {
    /// False when `name` is gone from the directory (one `fstatat`).
    pub fn exists(&self, name: &std::ffi::OsStr) -> bool {
        !matches!(
            rustix::fs::statat(&*self.0, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW),
            Err(rustix::io::Errno::NOENT)
        )
    }
}

fn ctime_of(dir: &impl AsFd) -> Option<(i64, i64)> {
    rustix::fs::fstat(dir)
        .ok()
        .map(|st| (st.st_ctime, st.st_ctime_nsec as i64))
}

/// The directory offset that follows `name` (stable for the daemon's life).
pub fn name_cookie(name: &std::ffi::OsStr) -> u64 {
    use std::hash::{Hash, Hasher};
    // `DefaultHasher::new()` has fixed keys: the same name always gives the same cookie.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    (h.finish() >> 1).max(3)
}

impl Listing {
    /// Orders a merged listing (`.` and `..` first) by cookie.
    pub fn new(entries: Vec<DirEntry>) -> Listing {
        let mut keyed: Vec<(u64, DirEntry)> = entries
            .into_iter()
            .map(|e| {
                let off = match e.name.as_encoded_bytes() {
                    b"." => 1,
                    b".." => 2,
                    _ => name_cookie(&e.name),
                };
                (off, e)
            })
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
        let mut offs = Vec::with_capacity(keyed.len());
        let mut out = Vec::with_capacity(keyed.len());
        for (off, e) in keyed {
            let off = match offs.last() {
                Some(&prev) if off <= prev => prev + 1,
                _ => off,
            };
            offs.push(off);
            out.push(e);
        }
        Listing {
            entries: out,
            offs,
            upper_only: None,
        }
    }

    /// Index of the first entry after offset `offset`.
    pub fn start(&self, offset: u64) -> usize {
        self.offs.partition_point(|&o| o <= offset)
    }
}

/// An open directory: the merged listing, taken at the first read.
#[derive(Debug)]
pub struct DirHandle {
    pub ino: u64,
    entries: RwLock<Option<Arc<Listing>>>,
    /// Entries were handed out: a read from offset 0 again is a rewind, which must show
    /// the directory as it is now.
    served: std::sync::atomic::AtomicBool,
    /// The kernel may keep this handle's listing in its cache and serve it from there.
    pub kernel_cache: bool,
}

#[derive(Debug)]
enum Handle {
    File(Arc<FileHandle>),
    Dir(Arc<DirHandle>),
}

/// All open handles, by number.
#[derive(Debug, Default)]
pub struct HandleTable {
    next: AtomicU64,
    map: RwLock<HashMap<u64, Handle>>,
    /// Directories with an open handle the kernel may serve from its listing cache.
    cache_users: parking_lot::Mutex<std::collections::HashSet<u64>>,
}

impl HandleTable {
    fn insert(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.map.write().insert(fh, h);
        fh
    }

    pub fn file(&self, fh: u64) -> Result<Arc<FileHandle>> {
        match self.map.read().get(&fh) {
            Some(Handle::File(f)) => Ok(f.clone()),
            _ => Err(Error::BadHandle),
        }
    }

    pub fn dir(&self, fh: u64) -> Result<Arc<DirHandle>> {
        match self.map.read().get(&fh) {
            Some(Handle::Dir(d)) => Ok(d.clone()),
            _ => Err(Error::BadHandle),
        }
    }

    // The replaced or removed handle is dropped after the lock: its last reference
    // closes the real file, which must not stall every other request.
    fn replace_file(&self, fh: u64, h: Arc<FileHandle>) {
        let old = self
            .map
            .write()
            .get_mut(&fh)
            .map(|slot| std::mem::replace(slot, Handle::File(h)));
        drop(old);
    }

    fn remove(&self, fh: u64) {
        let old = self.map.write().remove(&fh);
        drop(old);
    }

    /// Number of open handles (for leak checks).
    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Open flags passed on to the real file: only the access mode and the flags that change
/// how I/O is done. Creation and truncation were handled before, `O_APPEND` is dropped
/// because every write carries its offset, and kernel-internal bits the FUSE request may
/// carry (`__FMODE_EXEC` on an execve) would make `openat2` fail with EINVAL. `O_NOATIME`:
/// as kernel overlayfs, reading through the mount does not touch the real file's atime.
fn real_open_flags(flags: i32) -> OFlags {
    let keep = libc::O_ACCMODE | libc::O_DSYNC | libc::O_SYNC | libc::O_DIRECT | libc::O_LARGEFILE;
    OFlags::from_bits_retain((flags & keep) as u32)
        | OFlags::NOFOLLOW
        | OFlags::CLOEXEC
        | OFlags::NOATIME
}

pub(crate) fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl UnionFs {
    /// Opens a file; opening for write copies it up first.
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let write = wants_write(flags);
        if write {
            self.check_change(ino, crate::union::fileattr::Change::Open(flags))?;
            self.prepare_data(ino)?;
        }
        // A metacopy file is read from its data file, in a lower layer.
        let loc = self.read_loc(ino)?;
        let file = self.open_loc(&loc, flags)?;
        let on_lower = matches!(loc, RealLoc::Lower(..));
        Ok(self.handles.insert(Handle::File(Arc::new(FileHandle {
            ino,
            file,
            writable: write,
            on_lower,
        }))))
    }

    pub(crate) fn register_file(&self, ino: u64, file: File, writable: bool) -> u64 {
        self.handles.insert(Handle::File(Arc::new(FileHandle {
            ino,
            file,
            writable,
            on_lower: false,
        })))
    }

    /// The handle to read through: a lower one is moved to the upper copy made since.
    fn readable(&self, fh: u64) -> Result<Arc<FileHandle>> {
        let h = self.handles.file(fh)?;
        if !h.on_lower || !self.is_upper(h.ino)? {
            return Ok(h);
        }
        let loc = self.real(h.ino)?;
        let file = self.open_loc(&loc, libc::O_RDONLY)?;
        let moved = Arc::new(FileHandle {
            ino: h.ino,
            file,
            writable: false,
            on_lower: false,
        });
        self.handles.replace_file(fh, moved.clone());
        Ok(moved)
    }

    pub(crate) fn open_loc(&self, loc: &RealLoc, flags: i32) -> Result<File> {
        // O_NONBLOCK: a layer changed behind our back could hold a FIFO where a regular
        // file was; opening it must not block the daemon (regular files ignore the flag).
        let oflags = real_open_flags(flags) | OFlags::NONBLOCK;
        let fd = match self.open_loc_with(loc, oflags) {
            // O_NOATIME needs ownership or CAP_FOWNER.
            Err(Error::Os {
                errno: libc::EPERM, ..
            }) => self.open_loc_with(loc, oflags & !OFlags::NOATIME)?,
            r => r?,
        };
        let st = rustix::fs::fstat(&fd).at("stat opened", loc.at())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            tracing::error!(
                ?loc,
                "opened object is not a regular file: layer changed under the mount"
            );
            return Err(Error::Stale);
        }
        if flags & libc::O_NONBLOCK == 0 {
            rustix::fs::fcntl_setfl(&fd, oflags & !OFlags::NONBLOCK).at("fcntl", loc.at())?;
        }
        Ok(File::from(fd))
    }

    pub(crate) fn open_loc_with(
        &self,
        loc: &RealLoc,
        oflags: OFlags,
    ) -> Result<std::os::fd::OwnedFd> {
        Ok(match loc {
            RealLoc::Upper(p) => self.open_in(LayerKey::Upper, p, oflags)?,
            RealLoc::Lower(l, p) => self.open_in(LayerKey::Lower(*l), p, oflags)?,
            RealLoc::Index(name) => {
                sys::open_beneath(self.index_fd()?, Path::new(&**name), oflags, Mode::empty())
                    .at("open index", Where::Work)?
            }
            RealLoc::Detached(fd) => {
                // Reopening through /proc lands on the nameless object itself.
                rustix::fs::open(
                    &*proc_path(&**fd),
                    oflags & !OFlags::NOFOLLOW,
                    Mode::empty(),
                )
                .at("reopen", Where::Unknown)?
            }
        })
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let h = self.readable(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match h.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read", &e, Where::Unknown)),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let h = self.handles.file(fh)?;
        if !h.writable {
            return Err(Error::BadHandle);
        }
        h.file
            .write_all_at(data, offset)
            .map_err(|e| Error::io("write", &e, Where::Upper))?;
        Ok(data.len() as u32)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        if self.opts.volatile {
            return Ok(());
        }
        let h = self.handles.file(fh)?;
        let r = if datasync {
            rustix::fs::fdatasync(h.file.as_fd())
        } else {
            rustix::fs::fsync(h.file.as_fd())
        };
        r.at("fsync", Where::Upper)
    }

    /// `fallocate` on an open file. As a change of the file's data by `caller`, it drops
    /// set-group-id when the caller is outside the file's group without CAP_FSETID, as
    /// the kernel's `file_modified` does (the FUSE client drops set-user-id itself; the
    /// daemon's own fallocate keeps both bits, having the privilege).
    pub fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
        caller: crate::union::Caller,
    ) -> Result<()> {
        let h = self.handles.file(fh)?;
        let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
        rustix::fs::fallocate(h.file.as_fd(), flags, offset, length)
            .at("fallocate", Where::Upper)?;
        self.kill_sgid_of_outsider(h.ino, caller)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let h = self.readable(fh)?;
        let pos = match whence {
            libc::SEEK_DATA => rustix::fs::SeekFrom::Data(offset as u64),
            libc::SEEK_HOLE => rustix::fs::SeekFrom::Hole(offset as u64),
            libc::SEEK_SET => rustix::fs::SeekFrom::Start(offset as u64),
            libc::SEEK_END => rustix::fs::SeekFrom::End(offset),
            _ => return Err(Error::Invalid),
        };
        let r = rustix::fs::seek(h.file.as_fd(), pos).at("lseek", Where::Unknown)?;
        Ok(r as i64)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u32> {
        let src = self.readable(fh_in)?;
        let dst = self.handles.file(fh_out)?;
        if !dst.writable {
            return Err(Error::BadHandle);
        }
        // The VFS refuses a copy into an immutable file (generic_copy_file_checks) even
        // through a descriptor opened before `chattr +i`, but it reads S_IMMUTABLE off the
        // FUSE inode, which never has it: the flag lives in `overlay.protattr` here.
        if self.prot(dst.ino)?.immutable {
            return Err(Error::Permission);
        }
        let (mut i, mut o) = (off_in, off_out);
        let n = rustix::fs::copy_file_range(
            src.file.as_fd(),
            Some(&mut i),
            dst.file.as_fd(),
            Some(&mut o),
            len.min(u32::MAX as u64) as usize,
        )
        .at("copy_file_range", Where::Upper)?;
        Ok(n as u32)
    }

    pub fn release(&self, fh: u64) {
        self.handles.remove(fh);
    }

    /// Opens a directory; returns the handle and whether the kernel may cache its listing.
    /// The listing is taken at the first read: when the kernel serves it from its cache,
    /// an open costs no I/O.
    ///
    /// The kernel keeps one listing cache per directory, shared by the open handles that
    /// use it, while each handle here is a snapshot of its own (as kernel overlayfs's merged
    /// directories are): a handle opened while another one uses the cache would rebuild it
    /// from a newer snapshot under the older handle's offsets. So at most one open handle
    /// of a directory uses the kernel cache; others are served by the daemon.
    pub fn opendir(&self, ino: u64) -> Result<(u64, bool)> {
        self.dir_info(ino)?;
        let kernel_cache = self.handles.cache_users.lock().insert(ino);
        let fh = self.handles.insert(Handle::Dir(Arc::new(DirHandle {
            ino,
            entries: RwLock::new(None),
            served: std::sync::atomic::AtomicBool::new(false),
            kernel_cache,
        })));
        Ok((fh, kernel_cache))
    }

    /// The listing of an open directory, the index of the first entry after `offset`, and
    /// whether entries must be checked before they are handed out (a [`Recheck`]: the
    /// directory is upper-only and changed since the listing was taken).
    /// Offsets stay valid while entries are removed; reading from offset 0 again
    /// (rewinddir) takes a new listing.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<(Arc<Listing>, usize, Option<Recheck>)> {
        let d = self.handles.dir(fh)?;
        let rewind = d.served.swap(true, Ordering::Relaxed) && offset == 0;
        let current = d.entries.read().clone();
        let listing = match current {
            Some(l) if !rewind => l,
            old => match self
                .upper_only(d.ino)
                .and_then(|up| Ok((up, self.list_merged(d.ino)?)))
            {
                Ok((upper_only, fresh)) => {
                    let mut fresh = Listing::new(fresh);
                    fresh.upper_only = upper_only;
                    let fresh = Arc::new(fresh);
                    *d.entries.write() = Some(fresh.clone());
                    fresh
                }
                Err(e) => match old {
                    // A rewind of a directory that has gone since: the old listing.
                    Some(l) => l,
                    None => return Err(e),
                },
            },
        };
        let start = listing.start(offset);
        let recheck = listing
            .upper_only
            .as_ref()
            .filter(|u| ctime_of(&*u.dir) != Some(u.ctime))
            .map(|u| Recheck(u.dir.clone()));
        Ok((listing, start, recheck))
    }

    /// The upper directory of `ino` and its ctime, taken before a listing, when `ino` is
    /// only in the upper layer.
    fn upper_only(&self, ino: u64) -> Result<Option<UpperOnly>> {
        let info = self.dir_info(ino)?;
        let (Some(up), None) = (&info.upper, &info.lower) else {
            return Ok(None);
        };
        let dir = self.upper_dir(up)?;
        Ok(ctime_of(&*dir).map(|ctime| UpperOnly { dir, ctime }))
    }

    pub fn releasedir(&self, fh: u64) {
        if let Ok(d) = self.handles.dir(fh) {
            if d.kernel_cache {
                self.handles.cache_users.lock().remove(&d.ino);
            }
        }
        self.handles.remove(fh);
    }

    pub fn fsyncdir(&self, ino: u64) -> Result<()> {
        if self.opts.volatile {
            return Ok(());
        }
        match self.real(ino)? {
            RealLoc::Upper(p) => {
                let d = sys::open_dir_for_read(self.upper_root()?, &p).at("open", Where::Upper)?;
                rustix::fs::fsync(&d).at("fsync dir", Where::Upper)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::FileType;

    fn entry(name: &str) -> DirEntry {
        DirEntry {
            ino: 7,
            name: name.into(),
            kind: FileType::RegularFile,
        }
    }

    fn listing(names: &[&str]) -> Listing {
        let mut v = vec![entry("."), entry("..")];
        v.extend(names.iter().map(|n| entry(n)));
        Listing::new(v)
    }

    #[test]
    fn offsets_mean_the_same_name_in_every_listing() {
        let full = listing(&["a", "b", "c", "d", "e"]);
        assert_eq!(&full.offs[..2], &[1, 2], ". and .. come first");
        assert!(full.offs.windows(2).all(|w| w[0] < w[1]), "{:?}", full.offs);
        // A later listing with some names removed and one added.
        let later = listing(&["a", "c", "e", "z"]);
        for (i, e) in full.entries.iter().enumerate() {
            let after = full.offs[i];
            // What follows `e` in the later listing: every later name with a greater cookie.
            let rest: Vec<_> = later.entries[later.start(after)..]
                .iter()
                .map(|x| x.name.clone())
                .collect();
            let want: Vec<_> = later
                .entries
                .iter()
                .zip(&later.offs)
                .filter(|(_, o)| **o > after)
                .map(|(x, _)| x.name.clone())
                .collect();
            assert_eq!(rest, want, "after {:?}", e.name);
            if let Some(j) = later.entries.iter().position(|x| x.name == e.name) {
                assert_eq!(later.offs[j], after, "{:?} keeps its offset", e.name);
            }
        }
        assert_eq!(full.start(0), 0);
        assert_eq!(full.start(u64::MAX), full.entries.len());
    }

    #[test]
    fn cookies_are_above_dot_entries_and_below_2_63() {
        for name in ["", "a", "..", "very-long-name-0123456789", "\u{e9}t\u{e9}"] {
            let c = name_cookie(std::ffi::OsStr::new(name));
            assert!((3..1 << 63).contains(&c), "{name:?}: {c}");
        }
    }
}
