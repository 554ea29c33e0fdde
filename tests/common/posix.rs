//! libc wrappers for the mounted tests that `std` does not offer: shared mmap, fallocate,
//! lseek with SEEK_DATA/SEEK_HOLE, copy_file_range, flock and open-file-description locks,
//! fsync family, statvfs, directory streams (opendir/readdir/telldir/seekdir), `O_TMPFILE`
//! opens and `linkat` of an open file, and statx birth times.
//!
//! Every call returns `Result<_, i32>` with the raw errno, so that outcomes of kernel
//! overlayfs and the FUSE binary compare directly.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::sys::cpath;

/// A result carrying the errno on failure.
pub type Errno<T> = Result<T, i32>;

fn last() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn check(ret: libc::c_int) -> Errno<()> {
    if ret < 0 {
        Err(last())
    } else {
        Ok(())
    }
}

/// An `io::Result` as an errno result.
pub fn errno<T>(r: io::Result<T>) -> Errno<T> {
    r.map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

/// Maps `len` bytes of `file` MAP_SHARED read/write, applies `writes` (offset, bytes) through
/// the mapping, then unmaps (no msync: the data must reach the file on munmap/close).
pub fn mmap_shared_write(file: &File, len: usize, writes: &[(usize, &[u8])]) -> Errno<()> {
    // SAFETY: a fresh shared mapping of a file we hold open; no other Rust reference aliases it.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(last());
    }
    for (off, data) in writes {
        assert!(off + data.len() <= len, "write outside the mapping");
        // SAFETY: the destination range lies inside the mapping of `len` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), addr.cast::<u8>().add(*off), data.len())
        };
    }
    // SAFETY: addr/len is exactly the mapping created above.
    check(unsafe { libc::munmap(addr, len) })
}

/// Reads `len` bytes of `file` through a private read-only mapping.
pub fn mmap_read(file: &File, len: usize) -> Errno<Vec<u8>> {
    // SAFETY: a fresh read-only mapping; it is only read and then unmapped.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(last());
    }
    // SAFETY: the mapping is `len` bytes long and readable.
    let data = unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), len) }.to_vec();
    // SAFETY: addr/len is exactly the mapping created above.
    check(unsafe { libc::munmap(addr, len) })?;
    Ok(data)
}

/// `fallocate(fd, mode, offset, len)`.
pub fn fallocate(file: &File, mode: i32, offset: i64, len: i64) -> Errno<()> {
    // SAFETY: plain syscall on an open fd.
    check(unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) })
}

/// `lseek(fd, offset, whence)`.
pub fn lseek(file: &File, offset: i64, whence: i32) -> Errno<i64> {
    // SAFETY: plain syscall on an open fd.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if r < 0 {
        Err(last())
    } else {
        Ok(r)
    }
}

/// Data extents `(start, end)` of a file, found with SEEK_DATA/SEEK_HOLE from offset 0.
pub fn data_extents(file: &File) -> Errno<Vec<(i64, i64)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let start = match lseek(file, pos, libc::SEEK_DATA) {
            Ok(s) => s,
            Err(libc::ENXIO) => return Ok(out),
            Err(e) => return Err(e),
        };
        let end = lseek(file, start, libc::SEEK_HOLE)?;
        out.push((start, end));
        pos = end;
    }
}

/// `copy_file_range(in, &off_in, out, &off_out, len, 0)`.
pub fn copy_file_range(
    src: &File,
    off_in: i64,
    dst: &File,
    off_out: i64,
    len: usize,
) -> Errno<usize> {
    let (mut oi, mut oo) = (off_in, off_out);
    // SAFETY: both offsets point to live locals; the fds are open.
    let r = unsafe {
        libc::copy_file_range(src.as_raw_fd(), &mut oi, dst.as_raw_fd(), &mut oo, len, 0)
    };
    if r < 0 {
        Err(last())
    } else {
        Ok(r as usize)
    }
}

/// `flock(fd, op)`.
pub fn flock(file: &File, op: i32) -> Errno<()> {
    // SAFETY: plain syscall on an open fd.
    check(unsafe { libc::flock(file.as_raw_fd(), op) })
}

/// A byte-range lock request/answer: (type, start, len, pid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lock {
    pub kind: i16,
    pub start: i64,
    pub len: i64,
    pub pid: i32,
}

/// `fcntl(fd, cmd, &flock)` for F_SETLK/F_GETLK/F_OFD_SETLK/F_OFD_GETLK; returns the
/// (possibly updated) lock description.
pub fn fcntl_lock(file: &File, cmd: i32, kind: i16, start: i64, len: i64) -> Errno<Lock> {
    // SAFETY: flock is plain old data; zeroed is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    fl.l_pid = 0;
    // SAFETY: fl is a valid flock struct for the duration of the call.
    check(unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) })?;
    Ok(Lock {
        kind: fl.l_type,
        start: fl.l_start,
        len: fl.l_len,
        pid: fl.l_pid,
    })
}

/// `fsync(fd)`.
pub fn fsync(file: &File) -> Errno<()> {
    // SAFETY: plain syscall on an open fd.
    check(unsafe { libc::fsync(file.as_raw_fd()) })
}

/// `fdatasync(fd)`.
pub fn fdatasync(file: &File) -> Errno<()> {
    // SAFETY: plain syscall on an open fd.
    check(unsafe { libc::fdatasync(file.as_raw_fd()) })
}

/// `syncfs(fd)`.
pub fn syncfs(file: &File) -> Errno<()> {
    // SAFETY: plain syscall on an open fd.
    check(unsafe { libc::syncfs(file.as_raw_fd()) })
}

/// The `statvfs` fields that identify a filesystem's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsSize {
    pub bsize: u64,
    pub frsize: u64,
    pub blocks: u64,
    pub files: u64,
    pub namemax: u64,
}

/// `statvfs(path)`.
pub fn statvfs(path: &Path) -> Errno<FsSize> {
    let p = cpath(path);
    // SAFETY: statvfs is plain old data; zeroed is a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: p is NUL-terminated and s is valid for writing.
    check(unsafe { libc::statvfs(p.as_ptr(), &mut s) })?;
    Ok(FsSize {
        bsize: s.f_bsize,
        frsize: s.f_frsize,
        blocks: s.f_blocks,
        files: s.f_files,
        namemax: s.f_namemax,
    })
}

/// Bytes free to an unprivileged user on the filesystem of `path` (`f_bavail * f_frsize`).
pub fn free_bytes(path: &Path) -> Errno<u64> {
    let p = cpath(path);
    // SAFETY: statvfs is plain old data; zeroed is a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: p is NUL-terminated and s is valid for writing.
    check(unsafe { libc::statvfs(p.as_ptr(), &mut s) })?;
    Ok(s.f_bavail * s.f_frsize)
}

/// `f_type` of `statfs(path)`.
pub fn statfs_type(path: &Path) -> Errno<i64> {
    let p = cpath(path);
    // SAFETY: statfs is plain old data; zeroed is a valid value.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: p is NUL-terminated and s is valid for writing.
    check(unsafe { libc::statfs(p.as_ptr(), &mut s) })?;
    Ok(s.f_type)
}

/// One directory entry from `readdir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub ino: u64,
    /// `d_type` (DT_REG, DT_DIR, ...; DT_UNKNOWN = 0).
    pub kind: u8,
}

/// A libc directory stream (`opendir`), closed on drop.
pub struct DirStream {
    dir: *mut libc::DIR,
}

impl DirStream {
    pub fn open(path: &Path) -> Errno<DirStream> {
        let p = cpath(path);
        // SAFETY: p is NUL-terminated.
        let dir = unsafe { libc::opendir(p.as_ptr()) };
        if dir.is_null() {
            Err(last())
        } else {
            Ok(DirStream { dir })
        }
    }

    /// The next entry, `Ok(None)` at the end.
    pub fn read(&mut self) -> Errno<Option<DirEntry>> {
        // SAFETY: errno is thread-local; clearing it distinguishes end from error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: self.dir is an open stream.
        let ent = unsafe { libc::readdir64(self.dir) };
        if ent.is_null() {
            let e = last();
            return if e == 0 { Ok(None) } else { Err(e) };
        }
        // SAFETY: readdir returned a valid entry whose d_name is NUL-terminated; it is
        // copied before the next call on this stream.
        let (name, ino, kind) = unsafe {
            (
                CStr::from_ptr((*ent).d_name.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
                (*ent).d_ino,
                (*ent).d_type,
            )
        };
        Ok(Some(DirEntry { name, ino, kind }))
    }

    /// `telldir`.
    pub fn tell(&mut self) -> i64 {
        // SAFETY: self.dir is an open stream.
        unsafe { libc::telldir(self.dir) as i64 }
    }

    /// `seekdir`.
    pub fn seek(&mut self, pos: i64) {
        // SAFETY: self.dir is an open stream; pos came from telldir on it.
        unsafe { libc::seekdir(self.dir, pos as libc::c_long) }
    }

    /// `rewinddir`.
    pub fn rewind(&mut self) {
        // SAFETY: self.dir is an open stream.
        unsafe { libc::rewinddir(self.dir) }
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: self.dir is an open stream, closed exactly once.
        unsafe { libc::closedir(self.dir) };
    }
}

/// `mknod(path, S_IFSOCK)`-free way to get a socket file: bind a Unix socket there.
pub fn make_socket(path: &Path) -> io::Result<()> {
    let l = std::os::unix::net::UnixListener::bind(path)?;
    drop(l);
    Ok(())
}

/// `msync(MS_SYNC)` of a fresh shared mapping after writing through it, then `munmap`.
pub fn mmap_write_msync(file: &File, len: usize, off: usize, data: &[u8]) -> Errno<()> {
    // SAFETY: a fresh shared mapping of a file we hold open; no other Rust reference aliases it.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(last());
    }
    assert!(off + data.len() <= len, "write outside the mapping");
    // SAFETY: the destination range lies inside the mapping of `len` bytes.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr.cast::<u8>().add(off), data.len()) };
    // SAFETY: addr/len is exactly the mapping created above.
    let synced = check(unsafe { libc::msync(addr, len, libc::MS_SYNC) });
    // SAFETY: addr/len is exactly the mapping created above.
    check(unsafe { libc::munmap(addr, len) })?;
    synced
}

/// `utimensat(AT_FDCWD, path, times, AT_SYMLINK_NOFOLLOW)` with raw timespecs (tv_nsec may be
/// UTIME_NOW or UTIME_OMIT).
pub fn utimensat(path: &std::path::Path, atime: (i64, i64), mtime: (i64, i64)) -> Errno<()> {
    errno(super::sys::set_times(path, atime, mtime))
}

/// One `getdents64` call on `dir` with a `bufsize`-byte buffer (a small one reads a
/// directory a few entries at a time): (name, d_ino) of each entry; empty at the end.
pub fn getdents64(dir: &File, bufsize: usize) -> Errno<Vec<(String, u64)>> {
    let mut buf = vec![0u8; bufsize];
    // SAFETY: the buffer is valid for `bufsize` bytes.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_raw_fd(),
            buf.as_mut_ptr(),
            bufsize,
        )
    };
    if n < 0 {
        return Err(last());
    }
    let mut out = Vec::new();
    let mut off = 0;
    while off < n as usize {
        // struct linux_dirent64: u64 d_ino, i64 d_off, u16 d_reclen, u8 d_type, name.
        let ino = u64::from_ne_bytes(buf[off..off + 8].try_into().unwrap());
        let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
        let name = CStr::from_bytes_until_nul(&buf[off + 19..off + reclen])
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((name, ino));
        off += reclen;
    }
    Ok(out)
}

/// mtime and ctime (seconds, nanoseconds) of `path` (not followed) by `statx(2)` asking
/// for those two only, as `stat -c "%Y %Z"` does: FUSE answers such a call from its
/// attribute cache even where a full `lstat` would go to the daemon (after a read, say).
pub fn statx_times(path: &Path) -> Errno<(i64, u32, i64, u32)> {
    let p = cpath(path);
    // SAFETY: an all-zero `struct statx` is valid.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `p` is NUL-terminated and `st` is a valid out-pointer.
    check(unsafe {
        libc::statx(
            libc::AT_FDCWD,
            p.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MTIME | libc::STATX_CTIME,
            &mut st,
        )
    })?;
    let (m, c) = (st.stx_mtime, st.stx_ctime);
    Ok((m.tv_sec, m.tv_nsec, c.tv_sec, c.tv_nsec))
}

/// Opens an unnamed file in directory `dir` (`O_TMPFILE` with `flags`, e.g. `O_RDWR` or
/// `O_WRONLY | O_EXCL`) with `mode`.
pub fn open_tmpfile(dir: &Path, flags: i32, mode: u32) -> Errno<File> {
    use std::os::fd::FromRawFd;
    let p = cpath(dir);
    // SAFETY: `p` is NUL-terminated; the mode is passed as the variadic argument.
    let fd = unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_TMPFILE | libc::O_CLOEXEC | flags,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// How [`link_file`] names an open file.
#[derive(Debug, Clone, Copy)]
pub enum LinkVia {
    /// `linkat(fd, "", AT_FDCWD, to, AT_EMPTY_PATH)` (needs CAP_DAC_READ_SEARCH).
    EmptyPath,
    /// `linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, to, AT_SYMLINK_FOLLOW)`.
    ProcFd,
}

/// Gives the open file `file` the name `to`.
pub fn link_file(file: &File, to: &Path, via: LinkVia) -> Errno<()> {
    let t = cpath(to);
    match via {
        LinkVia::EmptyPath => {
            // SAFETY: both strings are NUL-terminated; the fd is open.
            check(unsafe {
                libc::linkat(
                    file.as_raw_fd(),
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    t.as_ptr(),
                    libc::AT_EMPTY_PATH,
                )
            })
        }
        LinkVia::ProcFd => {
            let p = cpath(Path::new(&format!("/proc/self/fd/{}", file.as_raw_fd())));
            // SAFETY: both strings are NUL-terminated.
            check(unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    p.as_ptr(),
                    libc::AT_FDCWD,
                    t.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            })
        }
    }
}

/// The birth time (seconds, nanoseconds) of `path` (not followed) by `statx(2)` asking
/// for `STATX_BASIC_STATS | STATX_BTIME` as `stat(1)` does; `None` where the filesystem
/// reports none.
pub fn btime(path: &Path) -> Errno<Option<(i64, u32)>> {
    let p = cpath(path);
    // SAFETY: an all-zero `struct statx` is valid.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `p` is NUL-terminated and `st` is a valid out-pointer.
    check(unsafe {
        libc::statx(
            libc::AT_FDCWD,
            p.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS | libc::STATX_BTIME,
            &mut st,
        )
    })?;
    Ok((st.stx_mask & libc::STATX_BTIME != 0)
        .then_some((st.stx_btime.tv_sec, st.stx_btime.tv_nsec)))
}
