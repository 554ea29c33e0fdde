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

/// The default-ACL xattr.
pub const DEFAULT_XATTR: &str = "system.posix_acl_default";
/// The access-ACL xattr.
pub const ACCESS_XATTR: &str = "system.posix_acl_access";

const VERSION: u32 = 2;
const HEADER: usize = 4;
const ENTRY: usize = 8;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

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
    if default.len() < HEADER
        || !(default.len() - HEADER).is_multiple_of(ENTRY)
        || u32::from_le_bytes(default[..HEADER].try_into().ok()?) != VERSION
    {
        return None;
    }
    let mut acl = default.to_vec();
    let mut m = mode & 0o777;
    let mut not_equiv = false;
    let (mut group_obj, mut mask_obj) = (None, None);
    for off in (HEADER..acl.len()).step_by(ENTRY) {
        let tag = u16::from_le_bytes([acl[off], acl[off + 1]]);
        let perm = u32::from(u16::from_le_bytes([acl[off + 2], acl[off + 3]]));
        let set = |acl: &mut Vec<u8>, p: u32| {
            acl[off + 2..off + 4].copy_from_slice(&(p as u16).to_le_bytes());
        };
        match tag {
            USER_OBJ => {
                let p = perm & ((m >> 6) & 7);
                set(&mut acl, p);
                m = (m & !0o700) | (p << 6);
            }
            USER | GROUP => not_equiv = true,
            GROUP_OBJ => group_obj = Some(off),
            OTHER => {
                let p = perm & (m & 7);
                set(&mut acl, p);
                m = (m & !0o007) | p;
            }
            MASK => {
                mask_obj = Some(off);
                not_equiv = true;
            }
            _ => return None,
        }
    }
    let off = mask_obj.or(group_obj)?;
    let perm = u32::from(u16::from_le_bytes([acl[off + 2], acl[off + 3]]));
    let p = perm & ((m >> 3) & 7);
    acl[off + 2..off + 4].copy_from_slice(&(p as u16).to_le_bytes());
    m = (m & !0o070) | (p << 3);
    Some(Inherited {
        mode: (mode & 0o7000) | m,
        access: not_equiv.then_some(acl),
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
        let mut v = VERSION.to_le_bytes().to_vec();
        for (t, p, id) in entries {
            v.extend_from_slice(&t.to_le_bytes());
            v.extend_from_slice(&p.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
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
