//! POSIX ACL inheritance for objects built in the work directory.
//!
//! A new object normally gets its parent's default ACL from the filesystem. One created
//! where a whiteout stood is built in `WORKDIR/work` (whose directory has no default ACL)
//! and renamed into place, so the kernel's `posix_acl_create` rules are applied here, as
//! kernel overlayfs does for the same case: the access ACL is the parent's default ACL
//! masked by the requested mode (and dropped when it says no more than the mode), and a
//! directory also inherits the default ACL itself.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;

use crate::sys;

use crate::format::acl::{self as format, GROUP, GROUP_OBJ, MASK, OTHER, USER, USER_OBJ};
pub use crate::format::acl::{ACCESS_XATTR, DEFAULT_XATTR};

/// What a new object gets from its parent's default ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inherited {
    /// Its permission bits (special bits of the requested mode kept).
    pub mode: u32,
    /// Its access ACL, when the mode alone cannot express it.
    pub access: Option<Vec<u8>>,
}

/// Applies `posix_acl_create_masq` to the parent's default ACL `default` (the xattr
/// value) for a new object requested with `mode`. `None` when the value is malformed.
pub fn create_masq(default: &[u8], mode: u32) -> Option<Inherited> {
    let mut acl = format::parse(default)?;
    let mut m = mode & 0o777;
    let mut not_equiv = false;
    let (mut group_obj, mut mask_obj) = (None, None);
    for (i, e) in acl.iter_mut().enumerate() {
        let perm = u32::from(e.perm);
        match e.tag {
            USER_OBJ => {
                let p = perm & ((m >> 6) & 7);
                e.perm = p as u16;
                m = (m & !0o700) | (p << 6);
            }
            USER | GROUP => not_equiv = true,
            GROUP_OBJ => group_obj = Some(i),
            OTHER => {
                let p = perm & (m & 7);
                e.perm = p as u16;
                m = (m & !0o007) | p;
            }
            MASK => {
                mask_obj = Some(i);
                not_equiv = true;
            }
            _ => return None,
        }
    }
    let e = &mut acl[mask_obj.or(group_obj)?];
    let p = u32::from(e.perm) & ((m >> 3) & 7);
    e.perm = p as u16;
    m = (m & !0o070) | (p << 3);
    Some(Inherited {
        mode: (mode & 0o7000) | m,
        access: not_equiv.then(|| format::serialize(&acl)),
    })
}

/// Gives the object at `new` (an `O_PATH` fd; `path` its `/proc/self/fd` path for chmod)
/// the ACL and mode it would have got had it been created in `parent`, whose default ACL
/// is `default`. `mode` is what the object was created with.
pub fn inherit(
    default: &[u8],
    new: BorrowedFd<'_>,
    path: &std::ffi::CStr,
    mode: u32,
    is_dir: bool,
) -> std::io::Result<()> {
    let Some(inh) = create_masq(default, mode) else {
        return Err(std::io::Error::from_raw_os_error(libc::EIO));
    };
    match &inh.access {
        // Setting the access ACL also sets the permission bits it implies.
        Some(acl) => sys::set_xattr(new, OsStr::new(ACCESS_XATTR), acl, 0)?,
        None => rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(inh.mode))?,
    }
    if is_dir {
        sys::set_xattr(new, OsStr::new(DEFAULT_XATTR), default, 0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let entries: Vec<format::Entry> = entries
            .iter()
            .map(|&(tag, perm, id)| format::Entry { tag, perm, id })
            .collect();
        format::serialize(&entries)
    }

    #[test]
    fn minimal_default_acl_only_masks_the_mode() {
        let d = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0), (OTHER, 0, 0)]);
        let got = create_masq(&d, 0o4666).unwrap();
        assert_eq!(got.mode, 0o4640);
        assert_eq!(got.access, None);
    }

    #[test]
    fn named_entries_keep_an_access_acl_with_the_mask_cut_by_the_mode() {
        let id = u32::MAX;
        let d = acl(&[
            (USER_OBJ, 7, id),
            (USER, 7, 1234),
            (GROUP_OBJ, 5, id),
            (MASK, 7, id),
            (OTHER, 5, id),
        ]);
        let got = create_masq(&d, 0o640).unwrap();
        assert_eq!(got.mode, 0o640);
        let want = acl(&[
            (USER_OBJ, 6, id),
            (USER, 7, 1234),
            (GROUP_OBJ, 5, id),
            (MASK, 4, id),
            (OTHER, 0, id),
        ]);
        assert_eq!(got.access, Some(want));
    }

    #[test]
    fn malformed_values_are_refused() {
        assert_eq!(create_masq(b"", 0o644), None);
        assert_eq!(create_masq(&acl(&[(USER_OBJ, 7, 0)]), 0o644), None);
        let mut bad = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0), (OTHER, 0, 0)]);
        bad[0] = 1;
        assert_eq!(create_masq(&bad, 0o644), None);
        bad.pop();
        assert_eq!(create_masq(&bad, 0o644), None);
    }
}
