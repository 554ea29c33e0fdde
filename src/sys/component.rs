//! Single-component, directory-fd-relative file operations for unpack and commit, in
//! `io::Result` and byte names (a tar's or an upper's names need not be UTF-8). The xattr
//! reads and the directory listing are the daemon's own (the parent module's).
//!
//! Invariant: every name handed to the kernel here is a single path component (no `/`, not `.`
//! or `..`) resolved relative to an open directory fd, and nothing follows a symlink:
//! directories are walked one component at a time with `O_NOFOLLOW | O_DIRECTORY`, and
//! leaves are created with `O_EXCL` / `*at` calls that never dereference the final name.
//! Blobs of an OCI layout are opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`
//! (falling back to the component walk where `openat2` is unavailable).
//! All calls go through rustix, so this file has no `unsafe`.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, XattrFlags};
use rustix::io::Errno;

/// The file types a layer can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device.
    Char,
    /// Block device.
    Block,
    /// Named pipe.
    Fifo,
    /// Unix socket (cannot travel in a tar).
    Socket,
}

/// The metadata of one object, decoded from `struct stat`.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    /// File type.
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Device major number (devices only).
    pub major: u32,
    /// Device minor number (devices only).
    pub minor: u32,
    /// Link count.
    pub nlink: u64,
    /// Device of the filesystem holding the object.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

/// Decodes a `struct stat` (field widths differ between architectures, hence the casts).
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn meta_of(st: &rfs::Stat) -> Meta {
    let kind = match FileType::from_raw_mode(st.st_mode as rfs::RawMode) {
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::CharacterDevice => Kind::Char,
        FileType::BlockDevice => Kind::Block,
        FileType::Fifo => Kind::Fifo,
        FileType::Socket => Kind::Socket,
        _ => Kind::File,
    };
    let rdev = st.st_rdev as u64;
    Meta {
        kind,
        perm: (st.st_mode as u32) & 0o7777,
        uid: st.st_uid as u32,
        gid: st.st_gid as u32,
        size: u64::try_from(st.st_size).unwrap_or(0),
        mtime: st.st_mtime as i64,
        mtime_nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
        major: rfs::major(rdev),
        minor: rfs::minor(rdev),
        nlink: st.st_nlink as u64,
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
    }
}

fn errno(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// Checks that `name` is one component the kernel will not reinterpret.
pub fn check_component(name: &[u8]) -> io::Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a single path component",
        ));
    }
    Ok(())
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Meta> {
    check_component(name)?;
    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map(|st| meta_of(&st))
        .map_err(errno)
}

/// `fstat(fd)`.
pub fn stat_fd(fd: BorrowedFd<'_>) -> io::Result<Meta> {
    rfs::fstat(fd).map(|st| meta_of(&st)).map_err(errno)
}

/// Opens the directory `name` inside `dir` without following a symlink at `name`.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    check_component(name)?;
    rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

/// Opens a directory path (`/`-separated, relative) for reading.
pub fn open_dir_path(path: &std::path::Path) -> io::Result<OwnedFd> {
    rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

/// Opens the regular file `name` inside `dir` for reading, never following a symlink.
pub fn open_file_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<File> {
    check_component(name)?;
    rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map(File::from)
    .map_err(errno)
}

/// Creates a new regular file (`O_EXCL`, never through a symlink) for writing.
pub fn create_file_at(dir: BorrowedFd<'_>, name: &[u8], perm: u32) -> io::Result<File> {
    check_component(name)?;
    rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(perm),
    )
    .map(File::from)
    .map_err(errno)
}

/// `mkdirat(dir, name, perm)`.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &[u8], perm: u32) -> io::Result<()> {
    check_component(name)?;
    rfs::mkdirat(dir, name, Mode::from_raw_mode(perm)).map_err(errno)
}

/// `mknodat` of a device, fifo or whiteout (char 0/0).
pub fn mknod_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    kind: Kind,
    perm: u32,
    major: u32,
    minor: u32,
) -> io::Result<()> {
    check_component(name)?;
    let ft = match kind {
        Kind::Char => FileType::CharacterDevice,
        Kind::Block => FileType::BlockDevice,
        Kind::Fifo => FileType::Fifo,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a node type",
            ))
        }
    };
    rfs::mknodat(
        dir,
        name,
        ft,
        Mode::from_raw_mode(perm),
        rfs::makedev(major, minor),
    )
    .map_err(errno)
}

/// `symlinkat(target, dir, name)`; the target is stored verbatim and never followed here.
pub fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    check_component(name)?;
    rfs::symlinkat(target, dir, name).map_err(errno)
}

/// `readlinkat(dir, name)`.
pub fn readlink_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<u8>> {
    check_component(name)?;
    rfs::readlinkat(dir, name, Vec::new())
        .map(|c| c.into_bytes())
        .map_err(errno)
}

/// `linkat(odir, oname, ndir, nname, 0)`: a hard link to the object itself, symlinks included.
pub fn link_at(
    odir: BorrowedFd<'_>,
    oname: &[u8],
    ndir: BorrowedFd<'_>,
    nname: &[u8],
) -> io::Result<()> {
    check_component(oname)?;
    check_component(nname)?;
    rfs::linkat(odir, oname, ndir, nname, AtFlags::empty()).map_err(errno)
}

/// `unlinkat(dir, name)`, with `AT_REMOVEDIR` for an (empty) directory.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &[u8], is_dir: bool) -> io::Result<()> {
    check_component(name)?;
    let flags = if is_dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    rfs::unlinkat(dir, name, flags).map_err(errno)
}

/// `renameat(odir, oname, ndir, nname)`.
pub fn rename_at(
    odir: BorrowedFd<'_>,
    oname: &[u8],
    ndir: BorrowedFd<'_>,
    nname: &[u8],
) -> io::Result<()> {
    check_component(oname)?;
    check_component(nname)?;
    rfs::renameat(odir, oname, ndir, nname).map_err(errno)
}

/// `renameat2(…, RENAME_NOREPLACE)`.
pub fn rename_noreplace_at(
    odir: BorrowedFd<'_>,
    oname: &[u8],
    ndir: BorrowedFd<'_>,
    nname: &[u8],
) -> io::Result<()> {
    check_component(oname)?;
    check_component(nname)?;
    rfs::renameat_with(odir, oname, ndir, nname, rfs::RenameFlags::NOREPLACE).map_err(errno)
}

/// `fchown(fd, uid, gid)`.
pub fn chown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    rfs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(errno)
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)` (for symlinks).
pub fn chown_at_nofollow(dir: BorrowedFd<'_>, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    check_component(name)?;
    rfs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(errno)
}

/// `fchmod(fd, perm)`.
pub fn chmod_fd(fd: BorrowedFd<'_>, perm: u32) -> io::Result<()> {
    rfs::fchmod(fd, Mode::from_raw_mode(perm & 0o7777)).map_err(errno)
}

/// `fchmodat(dir, name, perm)` for fifos and device nodes (which cannot be opened safely);
/// only called on a name this process just created with `mknodat`.
pub fn chmod_at(dir: BorrowedFd<'_>, name: &[u8], perm: u32) -> io::Result<()> {
    check_component(name)?;
    rfs::chmodat(
        dir,
        name,
        Mode::from_raw_mode(perm & 0o7777),
        AtFlags::empty(),
    )
    .map_err(errno)
}

fn timespec(t: (i64, u32)) -> rfs::Timespec {
    rfs::Timespec {
        tv_sec: t.0,
        tv_nsec: i64::from(t.1.min(999_999_999)) as _,
    }
}

/// `futimens(fd, {atime, mtime})`, times as (seconds, nanoseconds).
pub fn set_times_fd(fd: BorrowedFd<'_>, atime: (i64, u32), mtime: (i64, u32)) -> io::Result<()> {
    rfs::futimens(
        fd,
        &rfs::Timestamps {
            last_access: timespec(atime),
            last_modification: timespec(mtime),
        },
    )
    .map_err(errno)
}

/// `utimensat(dir, name, …, AT_SYMLINK_NOFOLLOW)` (for symlinks).
pub fn set_times_at_nofollow(
    dir: BorrowedFd<'_>,
    name: &[u8],
    atime: (i64, u32),
    mtime: (i64, u32),
) -> io::Result<()> {
    check_component(name)?;
    rfs::utimensat(
        dir,
        name,
        &rfs::Timestamps {
            last_access: timespec(atime),
            last_modification: timespec(mtime),
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(errno)
}

/// `fsetxattr(fd, name, value)`.
pub fn set_xattr_fd(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> io::Result<()> {
    rfs::fsetxattr(fd, name, value, XattrFlags::empty()).map_err(errno)
}

/// The `/proc/self/fd/N/NAME` path of `name` in `dir`: the only way to reach a symlink's
/// own xattrs; safe because `name` is one checked component and `N` is our own fd.
fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<u8>> {
    check_component(name)?;
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    Ok(p)
}

/// `lsetxattr` on `name` in `dir`, not following a symlink at `name`.
pub fn set_xattr_at_nofollow(
    dir: BorrowedFd<'_>,
    name: &[u8],
    xname: &[u8],
    value: &[u8],
) -> io::Result<()> {
    let p = proc_path(dir, name)?;
    rfs::lsetxattr(p, xname, value, XattrFlags::empty()).map_err(errno)
}

/// Whether entry `name` of `dir` (never followed) carries xattr `xname`.
pub fn has_xattr_at(dir: BorrowedFd<'_>, name: &[u8], xname: &[u8]) -> io::Result<bool> {
    let p = proc_path(dir, name)?;
    match rfs::lgetxattr_query(p, xname) {
        Ok(_) => Ok(true),
        Err(Errno::NODATA) | Err(Errno::NOTSUP) => Ok(false),
        Err(e) => Err(errno(e)),
    }
}

/// `fgetxattr(fd, name)`; `None` when the attribute is absent or xattrs are unsupported.
pub fn get_xattr_fd(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    match super::XattrFd::Open(fd).get(OsStr::from_bytes(name)) {
        Err(Errno::NOTSUP) => Ok(None),
        r => r.map_err(errno),
    }
}

/// Every xattr's value of the object behind `fd`, sorted by name (one that goes between
/// the listing and the read is left out).
fn xattrs_of(fd: super::XattrFd<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for n in fd.list().map_err(errno)? {
        match fd.get(&n) {
            Ok(Some(v)) => out.push((n.into_vec(), v)),
            Ok(None) | Err(Errno::NOTSUP) => {}
            Err(e) => return Err(errno(e)),
        }
    }
    out.sort();
    Ok(out)
}

/// All xattrs of an open file or directory, sorted by name.
pub fn list_xattrs_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    xattrs_of(super::XattrFd::Open(fd))
}

/// All xattrs of `name` in `dir` without following a symlink (for symlinks), sorted.
pub fn list_xattrs_at_nofollow(
    dir: BorrowedFd<'_>,
    name: &[u8],
) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    check_component(name)?;
    let fd = super::open_path(dir, Path::new(OsStr::from_bytes(name))).map_err(errno)?;
    xattrs_of(super::XattrFd::Path(fd.as_fd()))
}

/// The names in a directory (without `.` and `..`), sorted bytewise.
pub fn read_dir_names(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let listed = super::read_dir(super::reopen_dir_for_read(dir).map_err(errno)?);
    let mut names: Vec<Vec<u8>> = listed
        .map_err(errno)?
        .into_iter()
        .map(|e| e.name.into_vec())
        .collect();
    names.sort();
    Ok(names)
}

/// Opens `rel` (a `/`-separated relative path) beneath `root` for reading, refusing to leave
/// `root`: `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, or a per-component walk with
/// `O_NOFOLLOW` where `openat2` is missing.
pub fn open_beneath(root: BorrowedFd<'_>, rel: &str) -> io::Result<File> {
    match rfs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => return Ok(File::from(fd)),
        Err(Errno::NOSYS) | Err(Errno::PERM) => {}
        Err(e) => return Err(errno(e)),
    }
    let comps: Vec<&str> = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let Some((leaf, parents)) = comps.split_last() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
    };
    let mut cur: Option<OwnedFd> = None;
    for c in parents {
        let next = open_dir_at(cur.as_ref().map_or(root, |f| f.as_fd()), c.as_bytes())?;
        cur = Some(next);
    }
    open_file_at(cur.as_ref().map_or(root, |f| f.as_fd()), leaf.as_bytes())
}

/// True when running with uid 0 (in whatever user namespace).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The effective uid and gid of this process.
pub fn own_ids() -> (u32, u32) {
    (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    )
}

/// Is this error "permission denied / not permitted / unsupported" (a privilege problem)?
pub fn is_privilege_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::ENOTSUP)
    )
}
