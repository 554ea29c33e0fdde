//! Open files and directories.
//!
//! A file handle owns a real fd on the layer object it was opened on: a reader that
//! opened a lower file (or the lower data of a metacopy file) moves to the upper copy
//! once another open copied the data up (as with kernel overlayfs). Opening for write
//! copies up first. A directory handle holds the merged listing taken at its first read
//! (a [`Listing`], see `crate::union::readdir`).

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
use crate::union::readdir::Listing;
use crate::union::UnionFs;
use crate::union::{Fh, Ino};

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

/// An open directory: the merged listing, taken at the first read.
#[derive(Debug)]
pub struct DirHandle {
    pub ino: u64,
    pub(crate) entries: RwLock<Option<Arc<Listing>>>,
    /// Entries were handed out: a read from offset 0 again is a rewind, which must show
    /// the directory as it is now.
    pub(crate) served: std::sync::atomic::AtomicBool,
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

    pub(crate) fn dir(&self, fh: u64) -> Result<Arc<DirHandle>> {
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
    pub fn open(&self, Ino(ino): Ino, flags: i32) -> Result<Fh> {
        let write = wants_write(flags);
        if write {
            self.check_change(ino, crate::union::fileattr::Change::Open(flags))?;
            self.prepare_data(ino)?;
        }
        // A metacopy file is read from its data file, in a lower layer.
        let loc = self.read_loc(ino)?;
        let file = self.open_loc(&loc, flags)?;
        let on_lower = matches!(loc, RealLoc::Lower(..));
        Ok(Fh(self.handles.insert(Handle::File(Arc::new(
            FileHandle {
                ino,
                file,
                writable: write,
                on_lower,
            },
        )))))
    }

    pub(crate) fn register_file(&self, ino: u64, file: File, writable: bool) -> Fh {
        Fh(self.handles.insert(Handle::File(Arc::new(FileHandle {
            ino,
            file,
            writable,
            on_lower: false,
        }))))
    }

    /// The handle to read through: a lower one is moved to the upper copy made since.
    fn readable(&self, fh: u64) -> Result<Arc<FileHandle>> {
        let h = self.handles.file(fh)?;
        if !h.on_lower || !self.is_upper(Ino(h.ino))? {
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

    pub fn read(&self, Fh(fh): Fh, offset: u64, size: u32) -> Result<Vec<u8>> {
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

    pub fn write(&self, Fh(fh): Fh, offset: u64, data: &[u8]) -> Result<u32> {
        let h = self.handles.file(fh)?;
        if !h.writable {
            return Err(Error::BadHandle);
        }
        h.file
            .write_all_at(data, offset)
            .map_err(|e| Error::io("write", &e, Where::Upper))?;
        Ok(data.len() as u32)
    }

    pub fn fsync(&self, Fh(fh): Fh, datasync: bool) -> Result<()> {
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
        Fh(fh): Fh,
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

    pub fn lseek(&self, Fh(fh): Fh, offset: i64, whence: i32) -> Result<i64> {
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
        Fh(fh_in): Fh,
        off_in: u64,
        Fh(fh_out): Fh,
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

    pub fn release(&self, Fh(fh): Fh) {
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
    pub fn opendir(&self, Ino(ino): Ino) -> Result<(Fh, bool)> {
        self.dir_info(ino)?;
        let kernel_cache = self.handles.cache_users.lock().insert(ino);
        let fh = self.handles.insert(Handle::Dir(Arc::new(DirHandle {
            ino,
            entries: RwLock::new(None),
            served: std::sync::atomic::AtomicBool::new(false),
            kernel_cache,
        })));
        Ok((Fh(fh), kernel_cache))
    }

    pub fn releasedir(&self, Fh(fh): Fh) {
        if let Ok(d) = self.handles.dir(fh) {
            if d.kernel_cache {
                self.handles.cache_users.lock().remove(&d.ino);
            }
        }
        self.handles.remove(fh);
    }

    pub fn fsyncdir(&self, Ino(ino): Ino) -> Result<()> {
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
