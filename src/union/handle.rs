//! Open files and directories.
//!
//! A file handle owns a real fd on the layer object it was opened on: a reader that
//! opened a lower file keeps reading it even after another open copied it up (as with
//! kernel overlayfs). Opening for write copies up first. A directory handle holds the
//! merged listing taken at `opendir`, so offsets stay valid across telldir/seekdir and
//! while entries are removed (`rm -rf` walks a stable snapshot).

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
use crate::union::attr::{proc_path, RealLoc};
use crate::union::dirfd::LayerKey;
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

/// An open directory: the merged listing.
#[derive(Debug)]
pub struct DirHandle {
    pub ino: u64,
    entries: RwLock<Arc<Vec<DirEntry>>>,
    /// Entries were handed out: a read from offset 0 again is a rewind, which must show
    /// the directory as it is now.
    served: std::sync::atomic::AtomicBool,
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

    fn replace_file(&self, fh: u64, h: Arc<FileHandle>) {
        if let Some(slot) = self.map.write().get_mut(&fh) {
            *slot = Handle::File(h);
        }
    }

    fn remove(&self, fh: u64) {
        self.map.write().remove(&fh);
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
            self.prepare_write(ino)?;
        }
        let loc = self.real(ino)?;
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

    fn open_loc_with(&self, loc: &RealLoc, oflags: OFlags) -> Result<std::os::fd::OwnedFd> {
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

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        let h = self.handles.file(fh)?;
        let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
        rustix::fs::fallocate(h.file.as_fd(), flags, offset, length).at("fallocate", Where::Upper)
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

    /// Opens a directory: takes the merged listing.
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let entries = self.list_merged(ino)?;
        Ok(self.handles.insert(Handle::Dir(Arc::new(DirHandle {
            ino,
            entries: RwLock::new(Arc::new(entries)),
            served: std::sync::atomic::AtomicBool::new(false),
        }))))
    }

    /// The listing of an open directory (entry i has offset i+1). Offsets stay valid while
    /// entries are removed; reading from offset 0 again (rewinddir) takes a new listing.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>> {
        let d = self.handles.dir(fh)?;
        if offset == 0 && d.served.swap(true, Ordering::Relaxed) {
            if let Ok(fresh) = self.list_merged(d.ino) {
                *d.entries.write() = Arc::new(fresh);
            }
        }
        let entries = d.entries.read().clone();
        Ok(entries)
    }

    pub fn releasedir(&self, fh: u64) {
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
