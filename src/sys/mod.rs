//! Raw system-call helpers: the only place that knows about `/proc/self/fd`, `openat2`
//! resolve flags and data-copy strategies.
//!
//! Every name is resolved relative to a directory fd with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, so a symlink planted in a layer (or a
//! `..`) can never lead the daemon outside the layer. Callers pass relative paths built
//! from single name components; this module never joins a path onto an absolute root.

pub mod component;
pub mod fuse_uring;
pub mod fusemount;
pub mod process;

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, SeekFrom};
use rustix::io::{Errno, Result};

/// The resolve flags of every lookup inside a layer.
pub const RESOLVE_SAFE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Opens `path` (relative, "" for the root itself) beneath `root` without following any
/// symlink. `O_NOFOLLOW | O_CLOEXEC` are always added.
pub fn open_beneath(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd> {
    let path: &Path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    if path.as_os_str().len() > LONG_PATH {
        return open_beneath_long(root, path, flags, mode);
    }
    rustix::fs::openat2(
        root,
        path,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        mode,
        RESOLVE_SAFE,
    )
}

/// Paths longer than this are resolved in pieces (the kernel refuses paths longer than
/// PATH_MAX, while a layer may hold trees deeper than that).
const LONG_PATH: usize = 3000;

/// `open_beneath` for a path longer than the kernel takes at once: walks it in chunks of
/// whole components, each chunk beneath the directory the previous one reached.
fn open_beneath_long(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd> {
    let mut dir: Option<OwnedFd> = None;
    let mut chunk = std::path::PathBuf::new();
    let comps: Vec<_> = path.components().collect();
    for (i, c) in comps.iter().enumerate() {
        if !chunk.as_os_str().is_empty()
            && chunk.as_os_str().len() + c.as_os_str().len() + 1 > LONG_PATH
        {
            let base = dir.as_ref().map(|d| d.as_fd()).unwrap_or(root);
            dir = Some(open_beneath(
                base,
                &chunk,
                OFlags::PATH | OFlags::DIRECTORY,
                Mode::empty(),
            )?);
            chunk.clear();
        }
        chunk.push(c);
        if i + 1 == comps.len() {
            let base = dir.as_ref().map(|d| d.as_fd()).unwrap_or(root);
            return open_beneath(base, &chunk, flags, mode);
        }
    }
    Err(Errno::NOENT)
}

/// An `O_PATH` handle on the object at `path` (which may be a symlink, fifo or device:
/// opening it this way never blocks and never follows).
pub fn open_path(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd> {
    open_beneath(root, path, OFlags::PATH, Mode::empty())
}

/// An `O_PATH` handle on the directory at `path`.
pub fn open_dir_path(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd> {
    open_beneath(root, path, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
}

/// `/proc/self/fd/N`: lets the path-based xattr calls act on an `O_PATH` fd (the magic
/// link lands on the object itself, a symlink included).
pub fn proc_fd_path(fd: &impl AsRawFd) -> CString {
    // The formatted string never holds a NUL byte.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Reads an xattr value with `read` (a getxattr-style call: fills the buffer, or with an
/// empty one returns the size), growing the buffer on ERANGE. `Ok(None)` when absent.
fn read_xattr_value(mut read: impl FnMut(&mut [u8]) -> Result<usize>) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        match read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::NODATA) => return Ok(None),
            Err(Errno::RANGE) => {
                let size = read(&mut [])?;
                buf.resize(size.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads one xattr of the object behind `fd` (any kind of fd, `O_PATH` included).
/// `Ok(None)` when absent. Through `/proc/self/fd/N`: `getxattrat(fd, "",
/// AT_EMPTY_PATH)` refuses `O_PATH` fds (EBADF, Linux 6.18); see [`get_dir_xattr`].
pub fn get_xattr(fd: BorrowedFd<'_>, name: &OsStr) -> Result<Option<Vec<u8>>> {
    let path = proc_fd_path(&fd);
    read_xattr_value(|buf| rustix::fs::getxattr(&*path, name, buf))
}

/// Reads one xattr of the directory behind `dir` (an `O_PATH` fd included): one
/// `getxattrat(dir, ".")`, which resolves to the directory itself, where the kernel has
/// it; else as [`get_xattr`].
pub fn get_dir_xattr(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<Vec<u8>>> {
    match try_getxattrat(dir, c".", name) {
        Some(r) => r,
        None => get_xattr(dir, name),
    }
}

/// Reads one xattr of `child` in `dir` (never following a symlink there) with
/// `getxattrat`; `None` where the kernel lacks the call (remembered after the first
/// ENOSYS), so the caller falls back.
fn try_getxattrat(
    dir: BorrowedFd<'_>,
    child: &CStr,
    name: &OsStr,
) -> Option<Result<Option<Vec<u8>>>> {
    use std::sync::atomic::Ordering;
    if NO_GETXATTRAT.load(Ordering::Relaxed) {
        return None;
    }
    let n = match CString::new(name.as_bytes()) {
        Ok(n) => n,
        Err(_) => return Some(Err(Errno::INVAL)),
    };
    let flags = libc::AT_SYMLINK_NOFOLLOW;
    match read_xattr_value(|buf| getxattrat(dir, child, flags, &n, buf)) {
        Err(Errno::NOSYS) => {
            NO_GETXATTRAT.store(true, Ordering::Relaxed);
            None
        }
        r => Some(r),
    }
}

/// `getxattrat(2)` (Linux 6.13) is missing: set at the first ENOSYS.
static NO_GETXATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The system call number of `getxattrat` (the same in every architecture's table).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_GETXATTRAT: libc::c_long = 464;

/// `struct xattr_args` of `getxattrat(2)`.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// One `getxattrat(dir, child, at_flags, name)` into `buf`: the value's size.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn getxattrat(
    dir: BorrowedFd<'_>,
    child: &CStr,
    at_flags: libc::c_int,
    name: &CStr,
    buf: &mut [u8],
) -> Result<usize> {
    let mut args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: buf.len() as u32,
        flags: 0,
    };
    // SAFETY: `child` and `name` are NUL-terminated strings that outlive the call, `args`
    // is a `struct xattr_args` whose size is passed, and its `value` points to `buf`,
    // writable for `size` bytes (the kernel writes at most that many).
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir.as_raw_fd(),
            child.as_ptr(),
            at_flags,
            name.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    if r < 0 {
        Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO))
    } else {
        Ok(r as usize)
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn getxattrat(
    _: BorrowedFd<'_>,
    _: &CStr,
    _: libc::c_int,
    _: &CStr,
    _: &mut [u8],
) -> Result<usize> {
    Err(Errno::NOSYS)
}

/// `listxattrat(2)` (Linux 6.13) is missing: set at the first ENOSYS.
static NO_LISTXATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The system call number of `listxattrat` (the same in every architecture's table).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_LISTXATTRAT: libc::c_long = 465;

/// Lists the xattr names of `child` (one name component) in directory `dir` into `buf`,
/// never following a symlink there: one `listxattrat` call, without opening the object.
/// The size of the list (names each ending in NUL); ERANGE when `buf` is too small.
/// `None` where the kernel lacks the call (remembered after the first ENOSYS) or `child`
/// is not one component: the caller asks by name instead.
pub fn list_xattr_names_at(
    dir: BorrowedFd<'_>,
    child: &OsStr,
    buf: &mut [u8],
) -> Option<Result<usize>> {
    use std::sync::atomic::Ordering;
    if NO_LISTXATTRAT.load(Ordering::Relaxed) || child.as_bytes().contains(&b'/') {
        return None;
    }
    let c = match CString::new(child.as_bytes()) {
        Ok(c) => c,
        Err(_) => return Some(Err(Errno::INVAL)),
    };
    match listxattrat(dir, &c, buf) {
        Err(Errno::NOSYS) => {
            NO_LISTXATTRAT.store(true, Ordering::Relaxed);
            None
        }
        r => Some(r),
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn listxattrat(dir: BorrowedFd<'_>, child: &CStr, buf: &mut [u8]) -> Result<usize> {
    // SAFETY: `child` is a NUL-terminated string that outlives the call; `buf` is
    // writable for the length passed (the kernel writes at most that many bytes).
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dir.as_raw_fd(),
            child.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if r < 0 {
        Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO))
    } else {
        Ok(r as usize)
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn listxattrat(_: BorrowedFd<'_>, _: &CStr, _: &mut [u8]) -> Result<usize> {
    Err(Errno::NOSYS)
}

/// Reads one xattr of `child` (one name component) in directory `dir`, never following a
/// symlink there: one `getxattrat` call, without opening the object. Where the kernel
/// lacks it, opens an `O_PATH` handle and uses [`get_xattr`]. `Ok(None)` when absent.
pub fn get_xattr_at(dir: BorrowedFd<'_>, child: &OsStr, name: &OsStr) -> Result<Option<Vec<u8>>> {
    if !child.as_bytes().contains(&b'/') {
        let c = CString::new(child.as_bytes()).map_err(|_| Errno::INVAL)?;
        if let Some(r) = try_getxattrat(dir, &c, name) {
            return r;
        }
    }
    let fd = open_path(dir, Path::new(child))?;
    get_xattr(fd.as_fd(), name)
}

/// `fchmodat2(2)` (Linux 6.6) is missing or refuses `AT_EMPTY_PATH`: set at the first
/// ENOSYS (or EINVAL on an empty path).
static NO_FCHMODAT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets the permission bits of `child` in `dir` without following a symlink there (a
/// symlink gives EOPNOTSUPP), or of `dir` itself when `child` is empty (an `O_PATH` fd
/// included). One `fchmodat2` where the kernel has it, else through an `O_PATH` handle and
/// its `/proc/self/fd/N` path.
pub fn chmod_at(dir: BorrowedFd<'_>, child: &OsStr, mode: u32) -> Result<()> {
    use std::sync::atomic::Ordering;
    let flags = if child.is_empty() {
        libc::AT_EMPTY_PATH
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if !NO_FCHMODAT2.load(Ordering::Relaxed) {
        let c = CString::new(child.as_bytes()).map_err(|_| Errno::INVAL)?;
        // SAFETY: the path is a NUL-terminated string that outlives the call; the other
        // arguments are plain integers.
        #[allow(unsafe_code)]
        let r = unsafe {
            libc::syscall(
                libc::SYS_fchmodat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                mode as libc::c_uint,
                flags,
            )
        };
        if r == 0 {
            return Ok(());
        }
        match Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO) {
            Errno::NOSYS => NO_FCHMODAT2.store(true, Ordering::Relaxed),
            Errno::INVAL if child.is_empty() => NO_FCHMODAT2.store(true, Ordering::Relaxed),
            e => return Err(e),
        }
    }
    let held;
    let fd = if child.is_empty() {
        dir
    } else {
        held = rustix::fs::openat(
            dir,
            child,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        held.as_fd()
    };
    if rustix::fs::fstat(fd)?.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(Errno::OPNOTSUPP);
    }
    rustix::fs::chmod(&*proc_fd_path(&fd), Mode::from_raw_mode(mode))
}

/// `utimensat(2)` refuses `AT_EMPTY_PATH` (before Linux 5.8): set at the first EINVAL.
static NO_UTIMENS_EMPTY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets the times of `child` in `dir`, or of `dir` itself when `child` is empty (an
/// `O_PATH` fd included), never following a symlink.
pub fn set_times_at(dir: BorrowedFd<'_>, child: &OsStr, ts: &rustix::fs::Timestamps) -> Result<()> {
    use std::sync::atomic::Ordering;
    if !child.is_empty() {
        return rustix::fs::utimensat(dir, child, ts, AtFlags::SYMLINK_NOFOLLOW);
    }
    if !NO_UTIMENS_EMPTY.load(Ordering::Relaxed) {
        match rustix::fs::utimensat(dir, "", ts, AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::INVAL) => NO_UTIMENS_EMPTY.store(true, Ordering::Relaxed),
            r => return r,
        }
    }
    rustix::fs::utimensat(rustix::fs::CWD, &*proc_fd_path(&dir), ts, AtFlags::empty())
}

/// Sets the owner of `child` in `dir`, or of `dir` itself when `child` is empty (an
/// `O_PATH` fd included), never following a symlink.
pub fn chown_at(
    dir: BorrowedFd<'_>,
    child: &OsStr,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<()> {
    let flags = if child.is_empty() {
        AtFlags::EMPTY_PATH
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    rustix::fs::chownat(
        dir,
        child,
        uid.map(rustix::fs::Uid::from_raw),
        gid.map(rustix::fs::Gid::from_raw),
        flags,
    )
}

/// Lists the xattr names of the object behind `fd`.
pub fn list_xattrs(fd: BorrowedFd<'_>) -> Result<Vec<OsString>> {
    XattrFd::Path(fd).list()
}

/// Sets one xattr on the object behind `fd`.
pub fn set_xattr(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
    XattrFd::Path(fd).set(name, value, flags)
}

/// Gives the file open at `fd` (an `O_TMPFILE` one included) the name `name` in `dir`.
/// `linkat(fd, "", AT_EMPTY_PATH)` needs CAP_DAC_READ_SEARCH (ENOENT without it, then
/// remembered); the magic link `/proc/self/fd/N` followed needs nothing, but costs a path
/// walk.
pub fn link_fd(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static NO_EMPTY_PATH: AtomicBool = AtomicBool::new(false);
    if !NO_EMPTY_PATH.load(Ordering::Relaxed) {
        match rustix::fs::linkat(fd, "", dir, name, AtFlags::EMPTY_PATH) {
            Err(Errno::NOENT) => NO_EMPTY_PATH.store(true, Ordering::Relaxed),
            r => return r,
        }
    }
    let proc = proc_fd_path(&fd);
    rustix::fs::linkat(rustix::fs::CWD, &*proc, dir, name, AtFlags::SYMLINK_FOLLOW)
}

/// Reads the xattr names with `list` (a listxattr-style call: fills the buffer, or with an
/// empty one returns the size), growing the buffer on ERANGE; none where the filesystem
/// has no xattrs.
fn read_xattr_names(mut list: impl FnMut(&mut [u8]) -> Result<usize>) -> Result<Vec<OsString>> {
    let mut buf = vec![0u8; 1024];
    let n = loop {
        match list(&mut buf[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) => {
                let size = list(&mut [])?;
                buf.resize(size.max(buf.len() * 2), 0);
            }
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    };
    Ok(buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsString::from_vec(s.to_vec()))
        .collect())
}

/// An fd to read or write xattrs through, by how it was opened: the `f*xattr` calls act
/// on an open file directly, while an `O_PATH` fd (which they refuse with EBADF) needs
/// the path calls on `/proc/self/fd/N`, a path walk each.
#[derive(Debug, Clone, Copy)]
pub enum XattrFd<'a> {
    /// An `O_PATH` fd (any kind of object, symlinks included).
    Path(BorrowedFd<'a>),
    /// An fd opened for reading or writing.
    Open(BorrowedFd<'a>),
}

impl XattrFd<'_> {
    /// The xattr names of the object (none where its filesystem has no xattrs).
    pub fn list(self) -> Result<Vec<OsString>> {
        match self {
            XattrFd::Path(fd) => {
                let path = proc_fd_path(&fd);
                read_xattr_names(|buf| rustix::fs::listxattr(&*path, buf))
            }
            XattrFd::Open(fd) => read_xattr_names(|buf| rustix::fs::flistxattr(fd, buf)),
        }
    }

    /// One xattr's value; `Ok(None)` when absent.
    pub fn get(self, name: &OsStr) -> Result<Option<Vec<u8>>> {
        match self {
            XattrFd::Path(fd) => get_xattr(fd, name),
            XattrFd::Open(fd) => read_xattr_value(|buf| rustix::fs::fgetxattr(fd, name, buf)),
        }
    }

    /// Sets one xattr (`flags`: XATTR_CREATE / XATTR_REPLACE or 0).
    pub fn set(self, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let flags = rustix::fs::XattrFlags::from_bits_retain(flags as u32);
        match self {
            XattrFd::Path(fd) => rustix::fs::setxattr(&*proc_fd_path(&fd), name, value, flags),
            XattrFd::Open(fd) => rustix::fs::fsetxattr(fd, name, value, flags),
        }
    }
}

/// Removes one xattr from the object behind `fd`.
pub fn remove_xattr(fd: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    let path = proc_fd_path(&fd);
    rustix::fs::removexattr(&*path, name)
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub name: OsString,
    pub ino: u64,
    pub file_type: rustix::fs::FileType,
}

/// Lists a directory (without `.` and `..`). `dir` must be opened for reading.
pub fn read_dir(dir: OwnedFd) -> Result<Vec<RawEntry>> {
    let mut d = rustix::fs::Dir::new(dir)?;
    let mut out = Vec::new();
    while let Some(entry) = d.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push(RawEntry {
            name: OsStr::from_bytes(name).to_os_string(),
            ino: entry.ino(),
            file_type: entry.file_type(),
        });
    }
    Ok(out)
}

/// Opens for listing the directory an `O_PATH` fd refers to. `O_NOATIME` (when allowed):
/// listing for the mount is not a read of the real directory by the user, as with kernel
/// overlayfs.
pub fn reopen_dir_for_read(dir: BorrowedFd<'_>) -> Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::openat(dir, ".", flags | OFlags::NOATIME, Mode::empty())
        .or_else(|_| rustix::fs::openat(dir, ".", flags, Mode::empty()))
}

/// Opens the directory `path` beneath `root` for listing.
pub fn open_dir_for_read(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd> {
    open_beneath(
        root,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
}

/// Copies `len` bytes of file data, keeping holes: data extents found with
/// SEEK_DATA/SEEK_HOLE are copied with `copy_file_range` (which reflinks or copies inside
/// the kernel), falling back to a read/write loop where the kernel refuses.
pub fn copy_file_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, len: u64) -> Result<()> {
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break, // only a hole remains
            Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => pos, // no SEEK_DATA: copy all
            Err(e) => return Err(e),
        };
        if data >= len {
            break;
        }
        let hole = match rustix::fs::seek(src, SeekFrom::Hole(data)) {
            Ok(h) => h.min(len),
            Err(_) => len,
        };
        copy_range(src, dst, data, hole - data)?;
        pos = hole;
    }
    rustix::fs::ftruncate(dst, len)
}

fn copy_range(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, start: u64, len: u64) -> Result<()> {
    let mut off_in = start;
    let mut off_out = start;
    let end = start + len;
    while off_in < end {
        let want = (end - off_in).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => break,
            Ok(_) => {}
            Err(Errno::XDEV) | Err(Errno::NOSYS) | Err(Errno::OPNOTSUPP) | Err(Errno::INVAL) => {
                return copy_range_rw(src, dst, off_in, end - off_in);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn copy_range_rw(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, start: u64, len: u64) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = start;
    let end = start + len;
    while off < end {
        let want = ((end - off) as usize).min(buf.len());
        let n = rustix::io::pread(src, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        let mut written = 0;
        while written < n {
            written += rustix::io::pwrite(dst, &buf[written..n], off + written as u64)?;
        }
        off += n as u64;
    }
    Ok(())
}

/// Whether the daemon can create char-device whiteouts (mknod 0/0) in `dir`: probed once
/// at mount time in the work directory.
pub fn can_mknod_whiteout(work: BorrowedFd<'_>) -> bool {
    let name = c"rlayerfs-probe-whiteout";
    let _ = rustix::fs::unlinkat(work, name, rustix::fs::AtFlags::empty());
    let ok = rustix::fs::mknodat(
        work,
        name,
        rustix::fs::FileType::CharacterDevice,
        Mode::empty(),
        0,
    )
    .is_ok();
    let _ = rustix::fs::unlinkat(work, name, rustix::fs::AtFlags::empty());
    ok
}

/// Whether `trusted.*` xattrs can be written (needs CAP_SYS_ADMIN): probed at mount time.
pub fn can_set_trusted_xattr(work: BorrowedFd<'_>) -> bool {
    let name = c"rlayerfs-probe-xattr";
    let _ = rustix::fs::unlinkat(work, name, rustix::fs::AtFlags::REMOVEDIR);
    if rustix::fs::mkdirat(work, name, Mode::from_raw_mode(0o700)).is_err() {
        return false;
    }
    let ok = match open_dir_path(work, Path::new("rlayerfs-probe-xattr")) {
        Ok(fd) => set_xattr(
            fd.as_fd(),
            OsStr::new(crate::format::xattr::XattrNs::Trusted.probe()),
            b"y",
            0,
        )
        .is_ok(),
        Err(_) => false,
    };
    let _ = rustix::fs::unlinkat(work, name, rustix::fs::AtFlags::REMOVEDIR);
    ok
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A private, detached clone of the whole mount that holds `dir` (from that mount's root,
/// without submounts), with its atime flags replaced by `atime_attr` (`MOUNT_ATTR_NOATIME`,
/// `_RELATIME` or `_STRICTATIME`, optionally with `_NODIRATIME`), and the path of that root
/// as this process sees it. Kernel overlayfs works on such a clone of the upper mount: files
/// reached through it (FUSE passthrough backing files too) get their atime updated by the
/// rules of the overlay mount's own atime option, not the upper mount's. Needs
/// CAP_SYS_ADMIN; the clone lives as long as an fd on it.
pub fn clone_mount_root(
    dir: BorrowedFd<'_>,
    atime_attr: rustix::mount::MountAttrFlags,
) -> Result<(OwnedFd, std::path::PathBuf)> {
    use rustix::fs::{statx, StatxFlags};
    use rustix::mount::{open_tree, OpenTreeFlags};
    let mnt_id = |fd: BorrowedFd<'_>| -> Result<(u64, u64, u64)> {
        let st = statx(
            fd,
            "",
            AtFlags::EMPTY_PATH,
            StatxFlags::MNT_ID | StatxFlags::INO,
        )?;
        let dev = rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor);
        Ok((st.stx_mnt_id, dev, st.stx_ino))
    };
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut cur = rustix::fs::openat(dir, ".", flags, Mode::empty())?;
    let (id, mut at) = {
        let (id, dev, ino) = mnt_id(cur.as_fd())?;
        (id, (dev, ino))
    };
    loop {
        let up = rustix::fs::openat(&cur, "..", flags, Mode::empty())?;
        let (up_id, dev, ino) = mnt_id(up.as_fd())?;
        if up_id != id || (dev, ino) == at {
            break;
        }
        at = (dev, ino);
        cur = up;
    }
    let root_path = std::fs::read_link(format!("/proc/self/fd/{}", cur.as_raw_fd()))
        .map_err(|_| Errno::NOENT)?;
    let tree = open_tree(
        &cur,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )?;
    let attr = MountAttr {
        attr_set: u64::from(atime_attr.bits()),
        attr_clr: u64::from(
            (rustix::mount::MountAttrFlags::MOUNT_ATTR__ATIME
                | rustix::mount::MountAttrFlags::MOUNT_ATTR_NODIRATIME)
                .bits(),
        ),
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `tree` is an open fd, the path is a NUL-terminated empty string, and `attr` is
    // a `struct mount_attr` whose size is passed; the kernel only reads it.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO));
    }
    Ok((tree, root_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn open_beneath_refuses_symlinks_and_dotdot() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        symlink("/etc", dir.path().join("evil")).unwrap();
        symlink("d", dir.path().join("inner")).unwrap();
        let root =
            rustix::fs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        // The symlink itself can be opened with O_PATH ...
        assert!(open_path(root.as_fd(), Path::new("evil")).is_ok());
        // ... but never traversed, even when it stays inside.
        for p in ["evil/passwd", "inner/x", "../x", "d/../../x"] {
            let err = open_path(root.as_fd(), Path::new(p)).unwrap_err();
            assert!(
                [Errno::LOOP, Errno::XDEV, Errno::NOENT].contains(&err),
                "{p}: {err:?}"
            );
        }
        assert!(open_dir_path(root.as_fd(), Path::new("d")).is_ok());
    }

    #[test]
    fn sparse_copy_keeps_holes_and_data() {
        use std::io::{Seek, Write};
        let dir = tempfile::tempdir().unwrap();
        let mut f = std::fs::File::create(dir.path().join("src")).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(std::io::SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        let src = std::fs::File::open(dir.path().join("src")).unwrap();
        let dst = std::fs::File::create(dir.path().join("dst")).unwrap();
        let len = src.metadata().unwrap().len();
        copy_file_data(src.as_fd(), dst.as_fd(), len).unwrap();
        let data = std::fs::read(dir.path().join("dst")).unwrap();
        assert_eq!(data.len() as u64, len);
        assert_eq!(&data[..4], b"head");
        assert_eq!(&data[data.len() - 4..], b"tail");
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(dir.path().join("dst")).unwrap().blocks();
        assert!(blocks < 1024, "hole was filled: {blocks} blocks");
    }

    #[test]
    fn xattrs_on_o_path_fds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let root =
            rustix::fs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let fd = open_path(root.as_fd(), Path::new("f")).unwrap();
        set_xattr(fd.as_fd(), OsStr::new("user.t"), b"v", 0).unwrap();
        assert_eq!(
            get_xattr(fd.as_fd(), OsStr::new("user.t"))
                .unwrap()
                .as_deref(),
            Some(&b"v"[..])
        );
        assert_eq!(
            get_xattr(fd.as_fd(), OsStr::new("user.none")).unwrap(),
            None
        );
        assert!(list_xattrs(fd.as_fd())
            .unwrap()
            .contains(&OsString::from("user.t")));
        remove_xattr(fd.as_fd(), OsStr::new("user.t")).unwrap();
        assert_eq!(get_xattr(fd.as_fd(), OsStr::new("user.t")).unwrap(), None);
    }

    #[test]
    fn dir_xattrs_modes_and_times_on_o_path_fds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        let root =
            rustix::fs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let d = open_dir_path(root.as_fd(), Path::new("d")).unwrap();
        set_xattr(d.as_fd(), OsStr::new("user.t"), b"dv", 0).unwrap();
        assert_eq!(
            get_dir_xattr(d.as_fd(), OsStr::new("user.t"))
                .unwrap()
                .as_deref(),
            Some(&b"dv"[..])
        );
        assert_eq!(
            get_dir_xattr(d.as_fd(), OsStr::new("user.none")).unwrap(),
            None
        );

        let f = open_path(root.as_fd(), Path::new("f")).unwrap();
        chmod_at(f.as_fd(), OsStr::new(""), 0o4640).unwrap();
        let ts = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 1000,
                tv_nsec: 5,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 2000,
                tv_nsec: 7,
            },
        };
        set_times_at(f.as_fd(), OsStr::new(""), &ts).unwrap();
        let st = rustix::fs::fstat(&f).unwrap();
        assert_eq!(st.st_mode & 0o7777, 0o4640);
        assert_eq!((st.st_atime, st.st_atime_nsec), (1000, 5));
        assert_eq!((st.st_mtime, st.st_mtime_nsec), (2000, 7));

        // A symlink's own times change; its target's do not.
        let l = open_path(root.as_fd(), Path::new("l")).unwrap();
        let before = rustix::fs::fstat(&f).unwrap();
        set_times_at(l.as_fd(), OsStr::new(""), &ts).unwrap();
        let lst = rustix::fs::statat(&root, "l", AtFlags::SYMLINK_NOFOLLOW).unwrap();
        assert_eq!(lst.st_mtime, 2000);
        let ts2 = rustix::fs::Timestamps {
            last_access: ts.last_access,
            last_modification: rustix::fs::Timespec {
                tv_sec: 3000,
                tv_nsec: 0,
            },
        };
        set_times_at(root.as_fd(), OsStr::new("l"), &ts2).unwrap();
        let lst = rustix::fs::statat(&root, "l", AtFlags::SYMLINK_NOFOLLOW).unwrap();
        assert_eq!(lst.st_mtime, 3000);
        assert_eq!(
            rustix::fs::fstat(&f).unwrap().st_ctime_nsec,
            before.st_ctime_nsec
        );
        // By name: a symlink is refused, its target untouched; a file changes.
        assert_eq!(
            chmod_at(root.as_fd(), OsStr::new("l"), 0o600),
            Err(Errno::OPNOTSUPP)
        );
        assert_eq!(rustix::fs::fstat(&f).unwrap().st_mode & 0o7777, 0o4640);
        chmod_at(root.as_fd(), OsStr::new("f"), 0o600).unwrap();
        assert_eq!(rustix::fs::fstat(&f).unwrap().st_mode & 0o7777, 0o600);
    }
}

/// A file handle as `name_to_handle_at` encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHandle {
    pub handle_type: i32,
    pub bytes: Vec<u8>,
}

#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

const MAX_HANDLE_SZ: usize = 128;

/// Encodes a file handle for the object behind `fd` (an `O_PATH` fd is fine).
pub fn name_to_handle(fd: BorrowedFd<'_>) -> std::io::Result<FileHandle> {
    encode_handle(fd, c"", libc::AT_EMPTY_PATH)
}

/// Encodes a file handle for entry `name` of directory `dir` (a final symlink is not
/// followed), without opening it.
pub fn name_to_handle_at(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<FileHandle> {
    let name = CString::new(name.as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    encode_handle(dir, &name, 0)
}

/// `name_to_handle_at`, falling back to an identifier-only handle (`AT_HANDLE_FID`, the
/// same bytes) where the filesystem encodes handles it will not decode: a FUSE server
/// that declares `FUSE_NO_EXPORT_SUPPORT`, kernel overlayfs with `nfs_export=off`. The
/// handle then still identifies the object (origin records, generations).
fn encode_handle(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
) -> std::io::Result<FileHandle> {
    match encode_handle_raw(dir, path, flags) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            encode_handle_raw(dir, path, flags | libc::AT_HANDLE_FID)
        }
        r => r,
    }
}

fn encode_handle_raw(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
) -> std::io::Result<FileHandle> {
    let mut raw = RawHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `raw` is a properly sized `struct file_handle` with room for MAX_HANDLE_SZ
    // bytes, `path` is a valid NUL-terminated string (empty only with AT_EMPTY_PATH).
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::name_to_handle_at(
            dir.as_raw_fd(),
            path.as_ptr(),
            &mut raw as *mut RawHandle as *mut libc::file_handle,
            &mut mount_id,
            flags,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok(FileHandle {
        handle_type: raw.handle_type,
        bytes: raw.f_handle[..n].to_vec(),
    })
}

/// Opens (with `O_PATH`) the object a handle names, on the filesystem of `mount_fd`.
/// Needs CAP_DAC_READ_SEARCH.
pub fn open_by_handle(mount_fd: BorrowedFd<'_>, h: &FileHandle) -> std::io::Result<OwnedFd> {
    if h.bytes.len() > MAX_HANDLE_SZ {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut raw = RawHandle {
        handle_bytes: h.bytes.len() as u32,
        handle_type: h.handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    raw.f_handle[..h.bytes.len()].copy_from_slice(&h.bytes);
    // SAFETY: `raw` is a valid `struct file_handle` whose length field matches its data.
    #[allow(unsafe_code)]
    let fd = unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            &mut raw as *mut RawHandle as *mut libc::file_handle,
            libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    #[allow(unsafe_code)]
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// The filesystem's UUID as the kernel's `s_uuid` (FS_IOC_GETFSUUID); all zeros when the
/// filesystem has none or cannot tell.
pub fn fs_uuid(dir: BorrowedFd<'_>) -> [u8; 16] {
    #[repr(C)]
    struct FsUuid2 {
        len: u8,
        uuid: [u8; 16],
    }
    // _IOR(0x15, 0, struct fsuuid2)
    const FS_IOC_GETFSUUID: libc::c_ulong = 0x8011_1500;
    let Ok(fd) = open_dir_for_read(dir, Path::new("")) else {
        return [0; 16];
    };
    let mut out = FsUuid2 {
        len: 0,
        uuid: [0; 16],
    };
    // SAFETY: FS_IOC_GETFSUUID writes at most size_of::<FsUuid2>() bytes into `out`.
    #[allow(unsafe_code)]
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GETFSUUID, &mut out as *mut FsUuid2) };
    if r != 0 || out.len as usize != 16 {
        return [0; 16];
    }
    out.uuid
}

#[cfg(test)]
mod long_path_tests {
    use super::*;

    #[test]
    fn paths_longer_than_path_max_resolve_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let root =
            rustix::fs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let mut cur =
            rustix::fs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let mut rel = std::path::PathBuf::new();
        for _ in 0..3000 {
            rustix::fs::mkdirat(&cur, "dd", Mode::from_raw_mode(0o755)).unwrap();
            cur = rustix::fs::openat(&cur, "dd", OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
                .unwrap();
            rel.push("dd");
        }
        assert!(rel.as_os_str().len() > 8000);
        let fd = open_dir_path(root.as_fd(), &rel).unwrap();
        assert_eq!(
            rustix::fs::fstat(&fd).unwrap().st_ino,
            rustix::fs::fstat(&cur).unwrap().st_ino
        );
        rel.push("missing");
        assert_eq!(open_path(root.as_fd(), &rel).unwrap_err(), Errno::NOENT);
    }
}

/// `FS_IOC_GETFLAGS`: the inode flags (`chattr` letters) of the object behind `fd`
/// (opened for reading; `O_PATH` fds are refused by the kernel). The kernel reads and
/// writes an `int` whatever the command's encoded size says.
pub const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
/// `FS_IOC_SETFLAGS`.
pub const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
/// `FS_IOC_FSGETXATTR`: a `struct fsxattr` ([`FSXATTR_SIZE`] bytes).
pub const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
/// `FS_IOC_FSSETXATTR`.
pub const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;
/// Size of `struct fsxattr` (xflags, extsize, nextents, projid, cowextsize, 8 pad bytes).
pub const FSXATTR_SIZE: usize = 28;

/// Reads the inode flags of the object behind `fd`.
pub fn get_flags(fd: BorrowedFd<'_>) -> Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one `int` to the pointer, which points to `v`, alive
    // and writable for the whole call.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            FS_IOC_GETFLAGS as _,
            &mut v as *mut libc::c_int,
        )
    };
    if r < 0 {
        return Err(last_errno());
    }
    Ok(v as u32)
}

/// Sets the inode flags of the object behind `fd`.
pub fn set_flags(fd: BorrowedFd<'_>, flags: u32) -> Result<()> {
    let v = flags as libc::c_int;
    // SAFETY: FS_IOC_SETFLAGS reads one `int` from the pointer, which points to `v`, alive
    // for the whole call.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            FS_IOC_SETFLAGS as _,
            &v as *const libc::c_int,
        )
    };
    if r < 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// Reads the `struct fsxattr` of the object behind `fd`, as raw bytes.
pub fn get_fsxattr(fd: BorrowedFd<'_>) -> Result<[u8; FSXATTR_SIZE]> {
    let mut buf = [0u8; FSXATTR_SIZE];
    // SAFETY: FS_IOC_FSGETXATTR writes one `struct fsxattr` (FSXATTR_SIZE bytes, the size
    // encoded in the command) to the pointer, which points to `buf`, that long and
    // writable for the whole call; the struct has no alignment need beyond 4 bytes, which
    // the kernel's copy_to_user does not require.
    #[allow(unsafe_code)]
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR as _, buf.as_mut_ptr()) };
    if r < 0 {
        return Err(last_errno());
    }
    Ok(buf)
}

/// Sets the `struct fsxattr` of the object behind `fd` from raw bytes.
pub fn set_fsxattr(fd: BorrowedFd<'_>, value: &[u8; FSXATTR_SIZE]) -> Result<()> {
    // SAFETY: FS_IOC_FSSETXATTR reads one `struct fsxattr` (FSXATTR_SIZE bytes) from the
    // pointer, which points to `value`, that long and alive for the whole call.
    #[allow(unsafe_code)]
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR as _, value.as_ptr()) };
    if r < 0 {
        return Err(last_errno());
    }
    Ok(())
}

fn last_errno() -> Errno {
    Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO)
}
