//! The kernel's metacopy mark: `trusted.overlay.metacopy` (`user.overlay.metacopy` with
//! `userxattr`) on an upper regular file whose data is still in a lower layer (a
//! metadata-only copy-up, kernel `metacopy=on`).
//!
//! The value is `struct ovl_metacopy` (packed): `version` (0), `len` (the size of the
//! value), `flags` (none defined: 0), `digest_algo` (fs-verity hash algorithm, 0 for none)
//! and the fs-verity digest of the lower data, `len - 4` bytes (32 for SHA-256, 64 for
//! SHA-512). The kernel writes an empty value when there is neither digest nor flag (every
//! metacopy written without `verity=`), which reads as version 0, len 4, no digest.
//!
//! Reading follows the kernel's two checks: at lookup only the size is looked at (1 to 3
//! bytes is EIO, anything else is a metacopy file); the fields are checked where they are
//! used (the digest, under `verity=`): version other than 0 or `len` other than the size
//! of the value is EIO.

/// Size of the fixed part (`version`, `len`, `flags`, `digest_algo`).
pub const MIN_SIZE: usize = 4;
/// Largest value: the fixed part and a 64-byte digest (`FS_VERITY_MAX_DIGEST_SIZE`).
pub const MAX_SIZE: usize = MIN_SIZE + MAX_DIGEST;
/// The one version defined.
pub const VERSION: u8 = 0;
const MAX_DIGEST: usize = 64;

/// fs-verity hash algorithms (`FS_VERITY_HASH_ALG_*`) and their digest sizes.
pub const HASH_SHA256: u8 = 1;
pub const HASH_SHA512: u8 = 2;

/// Digest size of an fs-verity hash algorithm, `None` for an unknown one.
pub fn digest_size(algo: u8) -> Option<usize> {
    match algo {
        HASH_SHA256 => Some(32),
        HASH_SHA512 => Some(64),
        _ => None,
    }
}

/// A decoded metacopy mark.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metacopy {
    /// `flags` (the kernel defines none).
    pub flags: u8,
    /// The fs-verity digest of the lower data: (`digest_algo`, digest bytes).
    pub digest: Option<(u8, Vec<u8>)>,
}

/// Why a metacopy value is refused (the kernel answers EIO to each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadMetacopy {
    /// 1 to 3 bytes: shorter than the fixed part.
    TooSmall,
    /// More than [`MAX_SIZE`] bytes.
    TooLarge,
    /// `version` is not 0.
    Version,
    /// `len` is not the size of the value.
    Length,
}

impl BadMetacopy {
    /// The errno a reader gets.
    pub fn errno(self) -> i32 {
        libc::EIO
    }
}

impl std::fmt::Display for BadMetacopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadMetacopy::TooSmall => "metacopy xattr too small",
            BadMetacopy::TooLarge => "metacopy xattr too large",
            BadMetacopy::Version => "metacopy xattr of an unsupported version",
            BadMetacopy::Length => "metacopy xattr with an invalid length",
        })
    }
}

/// The lookup check (the kernel's `ovl_check_metacopy_xattr` without a buffer): a value of
/// `size` bytes marks a metacopy file unless it is shorter than the fixed part.
pub fn check_size(size: usize) -> Result<(), BadMetacopy> {
    if size != 0 && size < MIN_SIZE {
        return Err(BadMetacopy::TooSmall);
    }
    Ok(())
}

/// Decodes a value, with every check the kernel makes where the fields are used.
pub fn decode(value: &[u8]) -> Result<Metacopy, BadMetacopy> {
    check_size(value.len())?;
    if value.is_empty() {
        return Ok(Metacopy::default());
    }
    if value.len() > MAX_SIZE {
        return Err(BadMetacopy::TooLarge);
    }
    if value[0] != VERSION {
        return Err(BadMetacopy::Version);
    }
    if value[1] as usize != value.len() {
        return Err(BadMetacopy::Length);
    }
    let (flags, algo) = (value[2], value[3]);
    let digest = (algo != 0).then(|| (algo, value[MIN_SIZE..].to_vec()));
    Ok(Metacopy { flags, digest })
}

/// Encodes a mark as the kernel writes it: empty when there is neither flag nor digest,
/// else the fixed part and the digest.
pub fn encode(m: &Metacopy) -> Vec<u8> {
    if m.flags == 0 && m.digest.is_none() {
        return Vec::new();
    }
    let (algo, digest) = match &m.digest {
        Some((algo, d)) => (*algo, &d[..d.len().min(MAX_DIGEST)]),
        None => (0, &[][..]),
    };
    let mut v = Vec::with_capacity(MIN_SIZE + digest.len());
    v.extend_from_slice(&[VERSION, (MIN_SIZE + digest.len()) as u8, m.flags, algo]);
    v.extend_from_slice(digest);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_value_is_a_plain_mark() {
        assert_eq!(decode(b""), Ok(Metacopy::default()));
        assert_eq!(encode(&Metacopy::default()), b"");
        // The fixed part alone, as the kernel would read it: the same mark.
        assert_eq!(decode(&[0, 4, 0, 0]), Ok(Metacopy::default()));
    }

    #[test]
    fn digests_round_trip() {
        for (algo, size) in [(HASH_SHA256, 32usize), (HASH_SHA512, 64)] {
            assert_eq!(digest_size(algo), Some(size));
            let m = Metacopy {
                flags: 0,
                digest: Some((algo, (0..size as u8).collect())),
            };
            let v = encode(&m);
            assert_eq!(v.len(), MIN_SIZE + size);
            assert_eq!(&v[..4], &[0, (4 + size) as u8, 0, algo]);
            assert_eq!(decode(&v), Ok(m.clone()));
            assert_eq!(encode(&decode(&v).unwrap()), v);
        }
        assert_eq!(digest_size(0), None);
        assert_eq!(digest_size(3), None);
        // Flags alone are kept too.
        let m = Metacopy {
            flags: 1,
            digest: None,
        };
        assert_eq!(encode(&m), [0, 4, 1, 0]);
        assert_eq!(decode(&encode(&m)), Ok(m));
    }

    #[test]
    fn refusals_match_the_kernel() {
        for v in [&[0u8][..], &[0, 4], &[0, 4, 0]] {
            assert_eq!(decode(v), Err(BadMetacopy::TooSmall), "{v:?}");
            assert_eq!(check_size(v.len()), Err(BadMetacopy::TooSmall));
        }
        assert_eq!(check_size(0), Ok(()));
        assert_eq!(check_size(4), Ok(()));
        // Looked at only by size at lookup: a bad version still marks a metacopy file.
        assert_eq!(check_size(36), Ok(()));
        assert_eq!(decode(&[1, 4, 0, 0]), Err(BadMetacopy::Version));
        assert_eq!(decode(&[0, 5, 0, 0]), Err(BadMetacopy::Length));
        assert_eq!(decode(&[0, 6, 0, 1, 9]), Err(BadMetacopy::Length));
        assert_eq!(decode(&[0u8; MAX_SIZE + 1]), Err(BadMetacopy::TooLarge));
        assert_eq!(BadMetacopy::Version.errno(), libc::EIO);
    }
}
