//! Whiteouts and opaque markers, in every form a layer or an image layer holds them.
//!
//! In a layer (Documentation/filesystems/overlayfs.rst, "whiteouts and opaque
//! directories"), a whiteout is one of:
//! - a character device 0/0 (the kernel's format);
//! - an empty regular file `.wh.NAME` (fuse-overlayfs's fallback where mknod is refused);
//! - a zero-size regular file carrying `overlay.whiteout` inside a directory whose
//!   `overlay.opaque` is `x` (kernel 6.7+, see [`crate::format::xattr`]).
//!
//! A directory is opaque by `overlay.opaque=y` in any namespace, or by a file
//! `.wh..wh..opq` inside it (fuse-overlayfs, containers/storage's rootless layers).
//!
//! In an OCI tar layer (image-spec layer.md, "Whiteouts"), `.wh.NAME` deletes NAME,
//! `.wh..wh..opq` makes its directory opaque, and other `.wh..wh.*` names are an
//! implementation's metadata (aufs `.wh..wh.plnk`, `.wh..wh.aufs`), skipped
//! ([`classify_tar_name`]).
//!
//! Every `.wh.*` name is reserved for this encoding: a `.wh.*` object that is a user's
//! own carries the literal mark ([`crate::format::xattr::XattrNs::literal`]).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::format::xattr::XattrNs;

/// Prefix of whiteout file names (OCI / AUFS style).
pub const WH_PREFIX: &[u8] = b".wh.";
/// Name of the opaque-directory marker file.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Names with this prefix are an implementation's metadata in a tar layer (aufs).
pub const WH_META_PREFIX: &[u8] = b".wh..wh.";

/// How a mount writes its metadata, chosen by probing privileges at mount time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteFormat {
    pub whiteout: WhiteoutKind,
    pub xattr_ns: XattrNs,
}

/// Which whiteout a mount creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutKind {
    /// Character device 0/0 (kernel format; needs mknod).
    CharDev,
    /// Empty file `.wh.NAME` (fuse-overlayfs fallback).
    WhFile,
}

/// If `name` is a whiteout file name `.wh.X` (but not the opaque marker), returns `X`.
pub fn whiteout_target(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes();
    if b == OPAQUE_MARKER.as_bytes() {
        return None;
    }
    b.strip_prefix(WH_PREFIX)
        .filter(|rest| !rest.is_empty())
        .map(OsStr::from_bytes)
}

/// Names of the whiteout encoding (`.wh.*`): in a layer, a whiteout or opaque marker
/// unless marked literal.
pub fn is_reserved_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WH_PREFIX)
}

/// The `.wh.NAME` file name for `name`.
pub fn whiteout_file_name(name: &OsStr) -> OsString {
    let mut v = WH_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    OsString::from_vec(v)
}

/// The device numbers of a character-device whiteout.
pub const WHITEOUT_DEV: (u32, u32) = (0, 0);

/// A character device 0/0 is a whiteout (`mode`: full `st_mode`).
pub fn is_chardev_whiteout(mode: u32, rdev: u64) -> bool {
    mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0
}

/// How a leaf name of a tar layer is to be understood.
#[derive(Debug, PartialEq, Eq)]
pub enum TarName<'a> {
    /// Not a whiteout.
    Plain,
    /// `.wh..wh..opq`: the parent directory is opaque.
    Opaque,
    /// `.wh..wh.*` other than the opaque marker: implementation metadata, skipped.
    Meta,
    /// `.wh.NAME`: NAME is deleted from the lower layers.
    Delete(&'a [u8]),
    /// `.wh.`, `.wh..`, `.wh...`: a whiteout of no name, `.` or `..`.
    Malformed,
}

/// Classifies a leaf name of a tar layer (OCI image-spec layer.md, "Whiteouts").
pub fn classify_tar_name(leaf: &[u8]) -> TarName<'_> {
    let Some(rest) = leaf.strip_prefix(WH_PREFIX) else {
        return TarName::Plain;
    };
    if leaf == OPAQUE_MARKER.as_bytes() {
        return TarName::Opaque;
    }
    if leaf.starts_with(WH_META_PREFIX) {
        return TarName::Meta;
    }
    if rest.is_empty() || rest == b"." || rest == b".." {
        return TarName::Malformed;
    }
    TarName::Delete(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteout_names() {
        // (name, whiteout target in a layer, reserved)
        let table: &[(&str, Option<&str>, bool)] = &[
            (".wh.foo", Some("foo"), true),
            (".wh..wh..opq", None, true),
            (".wh.", None, true),
            ("foo", None, false),
            ("a.wh.b", None, false),
            (".wh..hidden", Some(".hidden"), true),
        ];
        for (name, target, reserved) in table {
            let n = OsStr::new(name);
            assert_eq!(whiteout_target(n), target.map(OsStr::new), "{name}");
            assert_eq!(is_reserved_name(n), *reserved, "{name}");
        }
        assert_eq!(whiteout_file_name(OsStr::new("x")), ".wh.x");
    }

    #[test]
    fn tar_names() {
        // image-spec layer.md: ".wh." prefix deletes, ".wh..wh..opq" is opaque; aufs'
        // ".wh..wh.plnk" metadata is skipped.
        let table: &[(&[u8], TarName)] = &[
            (b"foo", TarName::Plain),
            (b".wh.foo", TarName::Delete(b"foo")),
            (b".wh..wh..opq", TarName::Opaque),
            (b".wh..wh.plnk", TarName::Meta),
            (b".wh..foo", TarName::Delete(b".foo")),
            (b".wh.", TarName::Malformed),
            (b".wh..", TarName::Malformed),
            (b".wh...", TarName::Malformed),
        ];
        for (name, want) in table {
            assert_eq!(classify_tar_name(name), *want, "{name:?}");
        }
    }

    #[test]
    fn chardev_whiteouts() {
        // overlayfs.rst: "A whiteout is created as a character device with 0/0 device
        // number".
        let (major, minor) = WHITEOUT_DEV;
        let rdev = libc::makedev(major, minor);
        assert!(is_chardev_whiteout(libc::S_IFCHR | 0o644, rdev));
        assert!(is_chardev_whiteout(libc::S_IFCHR, 0));
        assert!(!is_chardev_whiteout(libc::S_IFCHR | 0o644, 0x0103));
        assert!(!is_chardev_whiteout(libc::S_IFREG, 0));
        assert!(!is_chardev_whiteout(libc::S_IFBLK, 0));
    }
}
