//! The POSIX ACL xattr value (`system.posix_acl_access`, `system.posix_acl_default`) as
//! the kernel stores and passes it (`struct posix_acl_xattr_header` and
//! `struct posix_acl_xattr_entry` in `linux/posix_acl_xattr.h`): a little-endian `u32`
//! version (always 2), then 8-byte entries of `u16` tag, `u16` permission bits and `u32`
//! id. Parsing and serializing only; what an ACL means (inheritance, id mapping) is up to
//! the callers in `crate::union`.

/// The access-ACL xattr.
pub const ACCESS_XATTR: &str = "system.posix_acl_access";
/// The default-ACL xattr (directories only).
pub const DEFAULT_XATTR: &str = "system.posix_acl_default";

/// `POSIX_ACL_XATTR_VERSION`: the only version the kernel reads and writes.
pub const VERSION: u32 = 2;
/// Bytes of the header (the version).
pub const HEADER: usize = 4;
/// Bytes of one entry.
pub const ENTRY: usize = 8;

/// `ACL_USER_OBJ`: the owner's permissions.
pub const USER_OBJ: u16 = 0x01;
/// `ACL_USER`: a named user's permissions (carries a uid).
pub const USER: u16 = 0x02;
/// `ACL_GROUP_OBJ`: the owning group's permissions.
pub const GROUP_OBJ: u16 = 0x04;
/// `ACL_GROUP`: a named group's permissions (carries a gid).
pub const GROUP: u16 = 0x08;
/// `ACL_MASK`: the upper bound of group-class permissions.
pub const MASK: u16 = 0x10;
/// `ACL_OTHER`: everyone else's permissions.
pub const OTHER: u16 = 0x20;

/// One ACL entry. The id is only meaningful for [`USER`] and [`GROUP`]; the kernel writes
/// `ACL_UNDEFINED_ID` (`u32::MAX`) in the others, kept as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The tag ([`USER_OBJ`] … [`OTHER`]; other values are kept as found).
    pub tag: u16,
    /// Permission bits (`rwx` as 4/2/1).
    pub perm: u16,
    /// The uid or gid of a [`USER`] or [`GROUP`] entry.
    pub id: u32,
}

/// True for the names of the ACL xattrs.
pub fn is_acl_xattr(name: &[u8]) -> bool {
    name == ACCESS_XATTR.as_bytes() || name == DEFAULT_XATTR.as_bytes()
}

/// The entries of an ACL xattr value; `None` when it is not a version-2 header followed by
/// whole entries. Tags are not checked here: callers decide what an unknown tag means.
pub fn parse(value: &[u8]) -> Option<Vec<Entry>> {
    let (header, entries) = value.split_first_chunk::<HEADER>()?;
    if u32::from_le_bytes(*header) != VERSION || !entries.len().is_multiple_of(ENTRY) {
        return None;
    }
    Some(
        entries
            .chunks_exact(ENTRY)
            .map(|e| Entry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect(),
    )
}

/// The xattr value of `entries` (version-2 header, entries in the order given).
pub fn serialize(entries: &[Entry]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + ENTRY * entries.len());
    v.extend_from_slice(&VERSION.to_le_bytes());
    for e in entries {
        v.extend_from_slice(&e.tag.to_le_bytes());
        v.extend_from_slice(&e.perm.to_le_bytes());
        v.extend_from_slice(&e.id.to_le_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_table() {
        let e = |tag, perm, id| Entry { tag, perm, id };
        let table: &[(&[u8], Option<Vec<Entry>>)] = &[
            // Header only: an ACL without entries.
            (&[2, 0, 0, 0], Some(vec![])),
            (
                &[2, 0, 0, 0, 0x01, 0, 6, 0, 0xff, 0xff, 0xff, 0xff],
                Some(vec![e(USER_OBJ, 6, u32::MAX)]),
            ),
            (
                &[
                    2, 0, 0, 0, 0x02, 0, 4, 0, 0xe8, 0x03, 0, 0, 0x20, 0, 5, 0, 0, 0, 0, 0,
                ],
                Some(vec![e(USER, 4, 1000), e(OTHER, 5, 0)]),
            ),
            // Wrong version, short header, partial entry.
            (&[1, 0, 0, 0], None),
            (&[2, 0, 0], None),
            (&[], None),
            (&[2, 0, 0, 0, 0x01, 0, 6, 0, 0xff], None),
        ];
        for (value, want) in table {
            let got = parse(value);
            assert_eq!(&got, want, "{value:?}");
            // Whatever parses serializes back to the same bytes.
            if let Some(entries) = got {
                assert_eq!(serialize(&entries), *value);
            }
        }
    }

    #[test]
    fn acl_xattr_names() {
        assert!(is_acl_xattr(b"system.posix_acl_access"));
        assert!(is_acl_xattr(b"system.posix_acl_default"));
        assert!(!is_acl_xattr(b"system.posix_acl"));
        assert!(!is_acl_xattr(b"user.posix_acl_access"));
    }
}
