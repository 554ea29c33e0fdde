//! Every on-disk rule of whiteouts, opaque directories and private xattrs, read in all
//! the variants kernel overlayfs, fuse-overlayfs and containers/storage write
//! (see `shared/FACTS.md` and Documentation/filesystems/overlayfs.rst):
//!
//! - whiteout: a character device 0/0; an empty regular file `.wh.NAME`; a zero-size
//!   regular file carrying `trusted.overlay.whiteout` / `user.overlay.whiteout` inside a
//!   directory whose `overlay.opaque` is `x` (kernel 6.7+);
//! - opaque directory: `trusted.overlay.opaque=y`, `user.overlay.opaque=y`,
//!   `user.fuseoverlayfs.opaque=y`, or a file `.wh..wh..opq` inside;
//! - private xattrs (`trusted.overlay.*`, `user.overlay.*`, `user.fuseoverlayfs.*`) are
//!   never shown through the mount.
//!
//! What is written depends on privilege: [`WriteFormat`].

use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// Prefix of whiteout file names (OCI / AUFS style).
pub const WH_PREFIX: &[u8] = b".wh.";
/// Name of the opaque-directory marker file.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// The xattr namespaces overlay metadata can live in, in reading order.
pub const OVERLAY_PREFIXES: [&str; 2] = ["trusted.overlay.", "user.overlay."];
const FUSE_OVERLAY_OPAQUE: &str = "user.fuseoverlayfs.opaque";

/// How this mount writes its metadata, chosen by probing privileges at mount time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteFormat {
    pub whiteout: WhiteoutKind,
    pub xattr_ns: XattrNs,
}

/// Which whiteout this mount creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutKind {
    /// Character device 0/0 (kernel format; needs mknod).
    CharDev,
    /// Empty file `.wh.NAME` (fuse-overlayfs fallback).
    WhFile,
}

/// Namespace of the overlay xattrs this mount writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrNs {
    /// `trusted.overlay.*` (kernel default; needs CAP_SYS_ADMIN).
    Trusted,
    /// `user.overlay.*` (kernel `userxattr`).
    User,
}

impl XattrNs {
    pub fn opaque(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.overlay.opaque",
            XattrNs::User => "user.overlay.opaque",
        }
    }
    pub fn redirect(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.overlay.redirect",
            XattrNs::User => "user.overlay.redirect",
        }
    }
    /// The origin record of a copied-up object (see `crate::union::origin`).
    pub fn origin(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.overlay.origin",
            XattrNs::User => "user.overlay.origin",
        }
    }
    /// Immutable/append-only flags set through the mount (see `crate::union::fileattr`).
    pub fn protattr(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.overlay.protattr",
            XattrNs::User => "user.overlay.protattr",
        }
    }
    /// The mark of a `.wh.*` object that is the user's own (see [`LITERAL_XATTRS`]).
    pub fn literal(self) -> &'static str {
        match self {
            XattrNs::Trusted => LITERAL_XATTRS[0],
            XattrNs::User => LITERAL_XATTRS[1],
        }
    }
    /// The merged link count offset of an indexed hard link.
    pub fn nlink(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.overlay.nlink",
            XattrNs::User => "user.overlay.nlink",
        }
    }
    /// The mark of an inner overlay's whiteout (see [`INNER_WHITEOUT_XATTRS`]).
    pub fn inner_whiteout(self) -> &'static str {
        match self {
            XattrNs::Trusted => INNER_WHITEOUT_XATTRS[0],
            XattrNs::User => INNER_WHITEOUT_XATTRS[1],
        }
    }
    /// The kernel's xattr whiteout of an overlay nested one level deeper, as stored here
    /// (escaped `overlay.whiteout`).
    pub fn escaped_whiteout(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.overlay.overlay.whiteout",
            XattrNs::User => "user.overlay.overlay.whiteout",
        }
    }
    /// The opaque xattr of an overlay nested one level deeper, as stored here.
    pub fn escaped_opaque(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.overlay.overlay.opaque",
            XattrNs::User => "user.overlay.overlay.opaque",
        }
    }
    /// The mark of a file copied up without its data (see `crate::format::metacopy`).
    pub fn metacopy(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.overlay.metacopy",
            XattrNs::User => "user.overlay.metacopy",
        }
    }
}

/// The xattr namespaces that belong to an overlay: kernel overlayfs (`trusted.overlay.`,
/// `user.overlay.` with `userxattr`) and fuse-overlayfs (`user.fuseoverlayfs.`).
const PRIVATE_PREFIXES: [&str; 3] = ["trusted.overlay.", "user.overlay.", "user.fuseoverlayfs."];

/// What follows a private prefix in the on-disk name of a user's own xattr of that
/// namespace (kernel 6.7+ escaping: `trusted.overlay.X` set through the mount is
/// `trusted.overlay.overlay.X` on disk, and each overlay removes one level, so overlays
/// nest: an inner overlay's marks on an outer overlay's tree are data to the outer one).
/// Applied to the three namespaces alike, since rlayerfs reads all three as its own.
const ESCAPE: &str = "overlay.";

/// The private prefix `name` starts with.
fn private_prefix(name: &[u8]) -> Option<&'static str> {
    PRIVATE_PREFIXES
        .into_iter()
        .find(|p| name.starts_with(p.as_bytes()))
}

/// True for xattr names that belong to the overlay and are hidden from users (escaped
/// names are users' own).
pub fn is_private_xattr(name: &OsStr) -> bool {
    let b = name.as_bytes();
    private_prefix(b).is_some_and(|p| !b[p.len()..].starts_with(ESCAPE.as_bytes()))
}

/// The on-disk name of an xattr a user sets through the mount: `P.X` for a private
/// namespace `P` is escaped to `P.overlay.X`, as kernel overlayfs does. `None` for names
/// that need no escaping.
pub fn escape_xattr(name: &OsStr) -> Option<std::ffi::OsString> {
    let b = name.as_bytes();
    let p = private_prefix(b)?;
    let mut v = Vec::with_capacity(b.len() + ESCAPE.len());
    v.extend_from_slice(p.as_bytes());
    v.extend_from_slice(ESCAPE.as_bytes());
    v.extend_from_slice(&b[p.len()..]);
    Some(std::ffi::OsString::from_vec(v))
}

/// The name users see for an on-disk xattr name (undoes [`escape_xattr`]).
pub fn unescape_xattr(name: &OsStr) -> Option<std::ffi::OsString> {
    let b = name.as_bytes();
    let p = private_prefix(b)?;
    let rest = b[p.len()..].strip_prefix(ESCAPE.as_bytes())?;
    let mut v = p.as_bytes().to_vec();
    v.extend_from_slice(rest);
    Some(std::ffi::OsString::from_vec(v))
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
/// unless marked literal (see [`LITERAL_XATTRS`]).
pub fn is_reserved_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WH_PREFIX)
}

/// Marks a `.wh.*` entry that a user created through a mount (an inner overlay's
/// fuse-overlayfs-style whiteout, say) as an ordinary object: rlayerfs shows it under its
/// name instead of reading it as a whiteout. Kernel overlayfs hides these private names
/// and shows the literal entry, so an overlay nested on either reads its own whiteouts.
/// Written in the mount's namespace, read in both.
pub const LITERAL_XATTRS: [&str; 2] = [
    "trusted.overlay.rlayerfs.literal",
    "user.overlay.rlayerfs.literal",
];

/// The whiteouts of an overlay nested on this one (a character device 0/0 made through
/// the mount by `mknod` or `RENAME_WHITEOUT`): a 0/0 device in a layer is this overlay's
/// own whiteout, so an inner one is stored as kernel 6.7+ stores a nested overlay's
/// whiteout, a zero-size regular file carrying the escaped `overlay.overlay.whiteout`
/// (kernel overlayfs reading the layer shows it as a file with `overlay.whiteout` in a
/// directory whose escaped opaque mark is set to `x`, the nested overlay's xattr whiteout),
/// plus this mark, by which rlayerfs shows it as the character device 0/0 it was made as.
/// On a directory the mark says that it holds such files (listings look at its regular
/// files only then). Written in the mount's namespace, read in both.
pub const INNER_WHITEOUT_XATTRS: [&str; 2] = [
    "trusted.overlay.rlayerfs.inner-whiteout",
    "user.overlay.rlayerfs.inner-whiteout",
];

/// Whether `name` is the stored whiteout xattr of an inner whiteout (either namespace).
pub fn is_escaped_whiteout(name: &OsStr) -> bool {
    [XattrNs::Trusted, XattrNs::User]
        .iter()
        .any(|ns| name == ns.escaped_whiteout())
}

/// The `.wh.NAME` file name for `name`.
pub fn whiteout_file_name(name: &OsStr) -> std::ffi::OsString {
    let mut v = WH_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    std::ffi::OsString::from(OsStr::from_bytes(&v))
}

/// A character device 0/0 is a whiteout.
pub fn is_chardev_whiteout(mode: u32, rdev: u64) -> bool {
    mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0
}

/// What a directory's opaque xattrs say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpaqueXattr {
    /// No opaque xattr.
    #[default]
    None,
    /// `y`: hides everything below.
    Opaque,
    /// `x`: not opaque, but may hold xattr whiteouts (kernel 6.7+).
    HasXattrWhiteouts,
}

/// Classifies the value of one opaque xattr.
pub fn classify_opaque(value: &[u8]) -> OpaqueXattr {
    match value {
        b"y" => OpaqueXattr::Opaque,
        b"x" => OpaqueXattr::HasXattrWhiteouts,
        _ => OpaqueXattr::None,
    }
}

/// The opaque xattr names to read, in order.
pub fn opaque_xattr_names() -> [&'static str; 3] {
    [
        "trusted.overlay.opaque",
        "user.overlay.opaque",
        FUSE_OVERLAY_OPAQUE,
    ]
}

/// The xattr-whiteout names to read (kernel 6.7+ format).
pub fn whiteout_xattr_names() -> [&'static str; 2] {
    ["trusted.overlay.whiteout", "user.overlay.whiteout"]
}

/// The redirect xattr names to read.
pub fn redirect_xattr_names() -> [&'static str; 2] {
    ["trusted.overlay.redirect", "user.overlay.redirect"]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteout_names() {
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
    fn private_xattrs() {
        let table = [
            ("trusted.overlay.opaque", true),
            ("user.overlay.redirect", true),
            ("user.fuseoverlayfs.opaque", true),
            ("user.containers.override_stat", false),
            ("security.capability", false),
            ("trusted.foo", false),
            ("user.overlayx", false),
            ("trusted.overlay.overlay.opaque", false),
            ("user.overlay.overlay.opaque", false),
            ("user.fuseoverlayfs.overlay.opaque", false),
            ("user.fuseoverlayfs.origin", true),
        ];
        for (name, private) in table {
            assert_eq!(is_private_xattr(OsStr::new(name)), private, "{name}");
        }
    }

    #[test]
    fn users_overlay_xattrs_are_stored_escaped() {
        let table = [
            (
                "trusted.overlay.opaque",
                Some("trusted.overlay.overlay.opaque"),
            ),
            (
                "user.overlay.redirect",
                Some("user.overlay.overlay.redirect"),
            ),
            (
                "user.fuseoverlayfs.opaque",
                Some("user.fuseoverlayfs.overlay.opaque"),
            ),
            // Nested one level deeper: each overlay removes one prefix.
            (
                "trusted.overlay.overlay.whiteout",
                Some("trusted.overlay.overlay.overlay.whiteout"),
            ),
            ("user.mime", None),
            ("trusted.overlayx", None),
        ];
        for (user, disk) in table {
            let got = escape_xattr(OsStr::new(user));
            assert_eq!(got.as_deref(), disk.map(OsStr::new), "{user}");
            if let Some(d) = got {
                assert!(!is_private_xattr(&d), "{user}: escaped name is the user's");
                assert_eq!(unescape_xattr(&d).as_deref(), Some(OsStr::new(user)));
            }
        }
        assert_eq!(unescape_xattr(OsStr::new("user.overlay.opaque")), None);
    }

    #[test]
    fn xattr_escaping() {
        let e = escape_xattr(OsStr::new("trusted.overlay.opaque")).unwrap();
        assert_eq!(e, "trusted.overlay.overlay.opaque");
        assert_eq!(unescape_xattr(&e).unwrap(), "trusted.overlay.opaque");
        assert_eq!(escape_xattr(OsStr::new("user.foo")), None);
        assert_eq!(unescape_xattr(OsStr::new("trusted.overlay.opaque")), None);
    }

    #[test]
    fn opaque_values_and_chardev() {
        assert_eq!(classify_opaque(b"y"), OpaqueXattr::Opaque);
        assert_eq!(classify_opaque(b"x"), OpaqueXattr::HasXattrWhiteouts);
        assert_eq!(classify_opaque(b"n"), OpaqueXattr::None);
        assert!(is_chardev_whiteout(libc::S_IFCHR | 0o644, 0));
        assert!(!is_chardev_whiteout(libc::S_IFCHR | 0o644, 0x0103));
        assert!(!is_chardev_whiteout(libc::S_IFREG, 0));
    }
}
