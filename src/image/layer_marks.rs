//! The overlay marks of an upper directory, read through `crate::sys::component` for `commit` and
//! `lower_links`: whether a directory is opaque and whether an entry is a whiteout object,
//! in every encoding `crate::format` lists.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use crate::format::whiteout::{OPAQUE_MARKER, WHITEOUT_DEV};
use crate::format::xattr::{self, OPAQUE_VALUE};
use crate::sys::component::{self, Kind, Meta};

/// Whether directory `dir` is opaque in any encoding (an opaque xattr set to `y`, or a
/// `.wh..wh..opq` file inside).
pub fn dir_is_opaque(dir: BorrowedFd<'_>) -> io::Result<bool> {
    if has_xattr(dir, &xattr::OPAQUE_XATTRS, Some(OPAQUE_VALUE))? {
        return Ok(true);
    }
    match component::stat_at(dir, OPAQUE_MARKER.as_bytes()) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the entry `name` of `dir` (stat `m`) is a whiteout object: a char device 0/0 or
/// a zero-size file carrying an overlay whiteout xattr. (`.wh.NAME` files are told by name.)
pub fn is_whiteout_object(dir: BorrowedFd<'_>, name: &[u8], m: &Meta) -> io::Result<bool> {
    match m.kind {
        Kind::Char => Ok((m.major, m.minor) == WHITEOUT_DEV),
        Kind::File if m.size == 0 => {
            let f = component::open_file_at(dir, name)?;
            has_xattr(f.as_fd(), &xattr::WHITEOUT_XATTRS, None)
        }
        _ => Ok(false),
    }
}

/// Whether `fd` carries one of `names` (with the value `want`, if given).
pub fn has_xattr(fd: BorrowedFd<'_>, names: &[&str], want: Option<&[u8]>) -> io::Result<bool> {
    for n in names {
        if let Some(v) = component::get_xattr_fd(fd, n.as_bytes())? {
            if want.is_none_or(|w| v == w) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}
