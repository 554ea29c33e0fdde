//! Thin libc wrappers used by the test harness: xattrs, device nodes, ownership, times and
//! `renameat2`. Every call works on the path itself and never follows a final symlink, so
//! fixtures, copies and dumps see links as links.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Converts a path to a C string (test paths never contain NUL bytes).
pub fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path contains a NUL byte")
}

fn cname(name: &str) -> CString {
    CString::new(name).expect("xattr name contains a NUL byte")
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The errno of an I/O error, or EIO when the error carries none.
pub fn errno_of(err: &io::Error) -> i32 {
    err.raw_os_error().unwrap_or(libc::EIO)
}

/// `lsetxattr(path, name, value, 0)`.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (p, n) = (cpath(path), cname(name));
    // SAFETY: both strings are NUL-terminated and the value pointer/length pair is valid.
    check(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// `lgetxattr`, sized by a first probing call.
pub fn get_xattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (p, n) = (cpath(path), cname(name));
    loop {
        // SAFETY: a NULL buffer of size 0 asks only for the value's size.
        let size = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buf is valid for buf.len() bytes.
        let got =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
    }
}

/// `llistxattr`, names in the order the filesystem gives them.
pub fn list_xattrs(path: &Path) -> io::Result<Vec<String>> {
    let p = cpath(path);
    loop {
        // SAFETY: a NULL buffer of size 0 asks only for the list's size.
        let size = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buf is valid for buf.len() bytes.
        let got = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
    }
}

/// `lremovexattr`.
pub fn remove_xattr(path: &Path, name: &str) -> io::Result<()> {
    let (p, n) = (cpath(path), cname(name));
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) })
}

/// `mknod(path, mode, makedev(major, minor))`; `mode` includes the file type bits.
pub fn mknod(path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let p = cpath(path);
    // SAFETY: p is NUL-terminated.
    check(unsafe {
        libc::mknod(
            p.as_ptr(),
            mode as libc::mode_t,
            libc::makedev(major, minor),
        )
    })
}

/// `lchown`.
pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let p = cpath(path);
    // SAFETY: p is NUL-terminated.
    check(unsafe { libc::lchown(p.as_ptr(), uid, gid) })
}

/// `fchmodat(AT_FDCWD, path, mode, 0)` (follows links; never call it on a symlink).
pub fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    let p = cpath(path);
    // SAFETY: p is NUL-terminated.
    check(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) })
}

/// A timestamp as (seconds, nanoseconds).
pub type Time = (i64, i64);

/// `utimensat(AT_FDCWD, path, [atime, mtime], AT_SYMLINK_NOFOLLOW)`.
pub fn set_times(path: &Path, atime: Time, mtime: Time) -> io::Result<()> {
    let p = cpath(path);
    let ts = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    // SAFETY: p is NUL-terminated and ts holds two timespecs.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// `renameat2(AT_FDCWD, from, AT_FDCWD, to, flags)`.
pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (f, t) = (cpath(from), cpath(to));
    // SAFETY: both paths are NUL-terminated.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    })
}

/// `umount2(path, flags)`.
pub fn umount2(path: &Path, flags: i32) -> io::Result<()> {
    let p = cpath(path);
    // SAFETY: p is NUL-terminated.
    check(unsafe { libc::umount2(p.as_ptr(), flags) })
}

/// `mount(source, target, fstype, 0, data)`.
pub fn mount(source: &str, target: &Path, fstype: &str, data: &str) -> io::Result<()> {
    let (s, t, f, d) = (cname(source), cpath(target), cname(fstype), cname(data));
    // SAFETY: all four strings are NUL-terminated; data is a C string as overlayfs expects.
    check(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, d.as_ptr().cast()) })
}

/// Whether the effective uid is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Bytes of an OsStr-like name.
pub fn bytes(name: &OsStr) -> &[u8] {
    name.as_bytes()
}

/// A file handle as `name_to_handle_at` gives it: (type, bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handle {
    pub handle_type: i32,
    pub bytes: Vec<u8>,
}

#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 128],
}

/// `name_to_handle_at(AT_FDCWD, path, .., flags)` (a final symlink is not followed).
pub fn name_to_handle(path: &Path, flags: i32) -> io::Result<Handle> {
    let p = cpath(path);
    let mut raw = RawHandle {
        handle_bytes: 128,
        handle_type: 0,
        f_handle: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `raw` is a `struct file_handle` with room for the 128 bytes it announces, `p`
    // is NUL-terminated and `mount_id` is a valid int to write.
    check(unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            p.as_ptr(),
            (&mut raw as *mut RawHandle).cast(),
            &mut mount_id,
            flags,
        )
    })?;
    Ok(Handle {
        handle_type: raw.handle_type,
        bytes: raw.f_handle[..(raw.handle_bytes as usize).min(128)].to_vec(),
    })
}

/// `open_by_handle_at(mount_fd, handle, flags)` with `mount_fd` opened on `mnt`.
pub fn open_by_handle(mnt: &Path, h: &Handle, flags: i32) -> io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mount_fd = std::fs::File::open(mnt)?;
    let mut raw = RawHandle {
        handle_bytes: h.bytes.len() as u32,
        handle_type: h.handle_type,
        f_handle: [0; 128],
    };
    raw.f_handle[..h.bytes.len()].copy_from_slice(&h.bytes);
    // SAFETY: `raw` is a valid `struct file_handle` whose length matches its data.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            (&mut raw as *mut RawHandle).cast(),
            flags | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// `echo 2 > /proc/sys/vm/drop_caches`: the kernel forgets unused dentries and inodes (a
/// FUSE mount's inodes then get FORGET).
pub fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop_caches");
}
