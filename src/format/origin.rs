//! Kernel overlayfs identity records, in the kernel's on-disk format, so that both systems
//! read each other's uppers (Documentation/filesystems/overlayfs.rst, "Index" and "inode
//! index"; the layout of `struct ovl_fb` is in fs/overlayfs/overlayfs.h):
//!
//! - `overlay.origin` on a copied-up object: the lower object's file handle wrapped
//!   in `struct ovl_fb` (version 0, magic 0xfb, total length, flags 0 on little-endian,
//!   handle type, 16-byte filesystem UUID, then the handle bytes). The object keeps the
//!   lower origin's inode number across copy-up and remounts.
//! - `WORKDIR/index/<hex of origin>`: one hard link to the upper copy of a hard-linked lower
//!   file (`index=on`), so every lower name of it finds the same upper object.
//! - `overlay.nlink` `U±N`/`L±N`: the merged link count is the upper (or lower)
//!   count plus N.
//! - `WORKDIR/work`: the scratch directory where objects are built before being renamed
//!   into place.

use crate::sys::FileHandle;

const OVL_FH_VERSION: u8 = 0;
const OVL_FH_MAGIC: u8 = 0xfb;
/// version, magic, len, flags, type.
const FB_HEADER: usize = 5;
const UUID_LEN: usize = 16;

/// Name of the index directory inside the workdir (the kernel's).
pub const INDEX_SUBDIR: &str = "index";
/// Name of the scratch directory inside the workdir (the kernel uses the same name).
pub const WORK_SUBDIR: &str = "work";

/// The inode number a file handle carries, for the handle types whose layout is fixed:
/// `FILEID_INO32_GEN` and `FILEID_INO32_GEN_PARENT` (1, 2: a 32-bit inode number, then the
/// generation; ext2/3/4, xfs for small inode numbers, tmpfs) and FUSE's own (0x81, 0x82: the
/// 64-bit node id in two 32-bit words, high first, which rlayerfs and most FUSE servers
/// make the inode number). `None` for other types.
pub fn handle_ino(h: &FileHandle) -> Option<u64> {
    let word = |i: usize| -> Option<u32> {
        let b = h.bytes.get(i * 4..i * 4 + 4)?;
        Some(u32::from_ne_bytes(b.try_into().ok()?))
    };
    match h.handle_type {
        1 | 2 => word(0).map(u64::from),
        0x81 | 0x82 => Some((u64::from(word(0)?) << 32) | u64::from(word(1)?)),
        _ => None,
    }
}

/// Encodes an origin record.
pub fn encode(uuid: &[u8; 16], h: &FileHandle) -> Option<Vec<u8>> {
    let len = FB_HEADER + UUID_LEN + h.bytes.len();
    if len > u8::MAX as usize || !(0..=255).contains(&h.handle_type) {
        return None;
    }
    let mut v = Vec::with_capacity(len);
    let flags = if cfg!(target_endian = "big") { 1 } else { 0 };
    v.extend_from_slice(&[
        OVL_FH_VERSION,
        OVL_FH_MAGIC,
        len as u8,
        flags,
        h.handle_type as u8,
    ]);
    v.extend_from_slice(uuid);
    v.extend_from_slice(&h.bytes);
    Some(v)
}

/// Decodes an origin record into (filesystem UUID, handle). `None` when malformed.
pub fn decode(v: &[u8]) -> Option<([u8; 16], FileHandle)> {
    if v.len() < FB_HEADER + UUID_LEN || v[0] != OVL_FH_VERSION || v[1] != OVL_FH_MAGIC {
        return None;
    }
    if v[2] as usize != v.len() {
        return None;
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&v[FB_HEADER..FB_HEADER + UUID_LEN]);
    Some((
        uuid,
        FileHandle {
            handle_type: v[4] as i32,
            bytes: v[FB_HEADER + UUID_LEN..].to_vec(),
        },
    ))
}

/// The index entry name of an origin record: lowercase hex of the whole record.
pub fn index_name(origin: &[u8]) -> String {
    origin.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the nlink xattr is relative to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NlinkBase {
    Upper,
    Lower,
}

/// Parses `U+N`, `U-N`, `L+N`, `L-N`.
pub fn parse_nlink(v: &[u8]) -> Option<(NlinkBase, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let base = match s.as_bytes().first()? {
        b'U' => NlinkBase::Upper,
        b'L' => NlinkBase::Lower,
        _ => return None,
    };
    let rest = &s[1..];
    if !rest.starts_with('+') && !rest.starts_with('-') {
        return None;
    }
    Some((base, rest.parse().ok()?))
}

/// Formats the upper-relative nlink record.
pub fn format_nlink(offset: i64) -> String {
    format!("U{offset:+}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_round_trip_matches_kernel_bytes() {
        // Written by kernel 6.18 for an ext4 file (null fs uuid, FILEID_INO32_GEN).
        let kernel = hex("00fb1d00010000000000000000000000000000000034c59800df1a154d");
        let (uuid, h) = decode(&kernel).unwrap();
        assert_eq!(uuid, [0; 16]);
        assert_eq!(h.handle_type, 1);
        assert_eq!(encode(&uuid, &h).unwrap(), kernel);
        assert_eq!(
            index_name(&kernel),
            "00fb1d00010000000000000000000000000000000034c59800df1a154d"
        );
    }

    #[test]
    fn malformed_origins_are_refused() {
        for bad in [
            &b""[..],
            &[0u8; 10],
            &hex("01fb1d00010000000000000000000000000000000034c59800df1a154d"),
            &hex("00fb1e00010000000000000000000000000000000034c59800df1a154d"),
        ] {
            assert!(decode(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn nlink_records() {
        let table = [
            ("U+0", Some((NlinkBase::Upper, 0))),
            ("U-1", Some((NlinkBase::Upper, -1))),
            ("L+3", Some((NlinkBase::Lower, 3))),
            ("U0", None),
            ("X+1", None),
            ("", None),
        ];
        for (s, want) in table {
            assert_eq!(parse_nlink(s.as_bytes()), want, "{s}");
        }
        assert_eq!(format_nlink(0), "U+0");
        assert_eq!(format_nlink(-2), "U-2");
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
