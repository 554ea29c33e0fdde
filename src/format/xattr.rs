//! Overlay xattr names, per namespace, and what each namespace's names mean.
//!
//! Kernel overlayfs keeps its metadata in `trusted.overlay.*`, or in `user.overlay.*` when
//! mounted with `userxattr` (Documentation/filesystems/overlayfs.rst, "Non-standard
//! behavior" and "User xattr"); fuse-overlayfs adds `user.fuseoverlayfs.*`. rlayerfs reads
//! all three as its own and writes the first or the second, as privilege allows
//! ([`XattrNs`]). The names are:
//!
//! - `opaque`: `y` makes a directory opaque (overlayfs.rst "whiteouts and opaque
//!   directories"); `x` (kernel 6.7+) says the directory may hold xattr whiteouts;
//! - `whiteout`: on a zero-size regular file, a whiteout (kernel 6.7+, "Whiteouts"
//!   section on nesting);
//! - `redirect`: where a renamed directory's lower content is ("Redirect dir"), value in
//!   [`crate::format::redirect`];
//! - `origin`, `nlink`: identity of a copied-up object and its merged link count ("Index"
//!   and "inode index"), values in [`crate::format::origin`];
//! - `metacopy`: the data is still in a lower layer ("Metadata only copy up");
//! - `protattr`: immutable/append-only flags set through the mount (kernel
//!   `ovl_set_protattr`);
//! - `rlayerfs.literal`: rlayerfs's own mark of a `.wh.*` object that is a user's object
//!   ([`XattrNs::literal`]);
//! - `rlayerfs.inner-whiteout`: rlayerfs's own mark of an inner overlay's whiteout
//!   ([`INNER_WHITEOUT_XATTRS`]).
//!
//! A user's own xattr in a private namespace is stored escaped, `P.overlay.X` for `P.X`
//! (kernel 6.7+, overlayfs.rst "Nesting overlayfs mounts"): each overlay removes one level,
//! so overlays nest. [`classify`] gives the one answer to "whose name is this?".

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// The kernel's default namespace (needs CAP_SYS_ADMIN to write).
pub const TRUSTED_PREFIX: &str = "trusted.overlay.";
/// The kernel's `userxattr` namespace.
pub const USER_PREFIX: &str = "user.overlay.";
/// fuse-overlayfs's namespace (read here, never written).
pub const FUSE_OVERLAYFS_PREFIX: &str = "user.fuseoverlayfs.";

/// The xattr namespaces kernel overlayfs metadata can live in, in reading order.
pub const OVERLAY_PREFIXES: [&str; 2] = [TRUSTED_PREFIX, USER_PREFIX];

/// The namespaces that belong to an overlay: kernel overlayfs's two and fuse-overlayfs's.
pub const PRIVATE_PREFIXES: [&str; 3] = [TRUSTED_PREFIX, USER_PREFIX, FUSE_OVERLAYFS_PREFIX];

/// What follows a private prefix in the on-disk name of a user's own xattr of that
/// namespace. Applied to the three namespaces alike, since rlayerfs reads all three as its
/// own.
const ESCAPE: &str = "overlay.";

/// A name in each kernel namespace: `ns_name!(ns, "opaque")`.
macro_rules! ns_name {
    ($ns:expr, $suffix:literal) => {
        match $ns {
            XattrNs::Trusted => concat!("trusted.overlay.", $suffix),
            XattrNs::User => concat!("user.overlay.", $suffix),
        }
    };
}

/// Namespace of the overlay xattrs a mount writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrNs {
    /// `trusted.overlay.*` (kernel default; needs CAP_SYS_ADMIN).
    Trusted,
    /// `user.overlay.*` (kernel `userxattr`).
    User,
}

impl XattrNs {
    /// Both kernel namespaces, in reading order.
    pub const ALL: [XattrNs; 2] = [XattrNs::Trusted, XattrNs::User];

    /// The namespace's prefix.
    pub const fn prefix(self) -> &'static str {
        match self {
            XattrNs::Trusted => TRUSTED_PREFIX,
            XattrNs::User => USER_PREFIX,
        }
    }
    /// `y`: opaque directory; `x`: may hold xattr whiteouts ([`classify_opaque`]).
    pub const fn opaque(self) -> &'static str {
        ns_name!(self, "opaque")
    }
    /// Marks a zero-size regular file as a whiteout (kernel 6.7+).
    pub const fn whiteout(self) -> &'static str {
        ns_name!(self, "whiteout")
    }
    /// Where a renamed directory's content is in the layers below.
    pub const fn redirect(self) -> &'static str {
        ns_name!(self, "redirect")
    }
    /// The origin record of a copied-up object.
    pub const fn origin(self) -> &'static str {
        ns_name!(self, "origin")
    }
    /// The merged link count offset of an indexed hard link.
    pub const fn nlink(self) -> &'static str {
        ns_name!(self, "nlink")
    }
    /// A metacopy file: its data is in a lower layer.
    pub const fn metacopy(self) -> &'static str {
        ns_name!(self, "metacopy")
    }
    /// Immutable/append-only flags set through the mount (see `crate::union::fileattr`).
    pub const fn protattr(self) -> &'static str {
        ns_name!(self, "protattr")
    }
    /// Marks a `.wh.*` entry that a user created through a mount (an inner overlay's
    /// fuse-overlayfs-style whiteout, say) as an ordinary object: rlayerfs shows it under
    /// its name instead of reading it as a whiteout. Kernel overlayfs hides these private
    /// names and shows the literal entry, so an overlay nested on either reads its own
    /// whiteouts. Written in the mount's namespace, read in both ([`LITERAL_XATTRS`]).
    pub const fn literal(self) -> &'static str {
        ns_name!(self, "rlayerfs.literal")
    }
    /// The mark of an inner overlay's whiteout (see [`INNER_WHITEOUT_XATTRS`]).
    pub const fn inner_whiteout(self) -> &'static str {
        ns_name!(self, "rlayerfs.inner-whiteout")
    }
    /// The kernel's xattr whiteout of an overlay nested one level deeper, as stored here
    /// (escaped `overlay.whiteout`).
    pub const fn escaped_whiteout(self) -> &'static str {
        ns_name!(self, "overlay.whiteout")
    }
    /// The opaque xattr of an overlay nested one level deeper, as stored here.
    pub const fn escaped_opaque(self) -> &'static str {
        ns_name!(self, "overlay.opaque")
    }
    /// The throwaway name written once at mount time to learn whether `trusted.*` can be
    /// written (only ever on a scratch directory of the workdir).
    pub const fn probe(self) -> &'static str {
        ns_name!(self, "probe")
    }
}

/// fuse-overlayfs's opaque mark (`y`), read only.
pub const FUSE_OVERLAYFS_OPAQUE: &str = "user.fuseoverlayfs.opaque";

/// The opaque xattr names to read, in order.
pub const OPAQUE_XATTRS: [&str; 3] = [
    XattrNs::Trusted.opaque(),
    XattrNs::User.opaque(),
    FUSE_OVERLAYFS_OPAQUE,
];
/// The xattr-whiteout names to read (kernel 6.7+ format).
pub const WHITEOUT_XATTRS: [&str; 2] = [XattrNs::Trusted.whiteout(), XattrNs::User.whiteout()];
/// The redirect xattr names to read.
pub const REDIRECT_XATTRS: [&str; 2] = [XattrNs::Trusted.redirect(), XattrNs::User.redirect()];
/// The metacopy xattr names to read.
pub const METACOPY_XATTRS: [&str; 2] = [XattrNs::Trusted.metacopy(), XattrNs::User.metacopy()];
/// The literal marks to read (see [`XattrNs::literal`]).
pub const LITERAL_XATTRS: [&str; 2] = [XattrNs::Trusted.literal(), XattrNs::User.literal()];

/// File capabilities (`struct vfs_cap_data`). Not an overlay xattr, but one a write to a
/// file or a chown drops (`file_remove_privs`), so code that writes a file on a caller's
/// behalf may have to put it back.
pub const CAPABILITY_XATTR: &str = "security.capability";

/// The value that makes a directory opaque.
pub const OPAQUE_VALUE: &[u8] = b"y";
/// The value that says a directory may hold xattr whiteouts (kernel 6.7+).
pub const XATTR_WHITEOUTS_VALUE: &[u8] = b"x";
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
    XattrNs::Trusted.inner_whiteout(),
    XattrNs::User.inner_whiteout(),
];

/// Whether `name` is the stored whiteout xattr of an inner whiteout (either namespace).
pub fn is_escaped_whiteout(name: &OsStr) -> bool {
    XattrNs::ALL
        .iter()
        .any(|ns| name.as_bytes() == ns.escaped_whiteout().as_bytes())
}

/// The value of the literal mark (any value marks; this one is written).
pub const LITERAL_VALUE: &[u8] = b"y";

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
        OPAQUE_VALUE => OpaqueXattr::Opaque,
        XATTR_WHITEOUTS_VALUE => OpaqueXattr::HasXattrWhiteouts,
        _ => OpaqueXattr::None,
    }
}

/// Whose an xattr name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrClass {
    /// Outside the overlay namespaces: the user's, stored as given.
    Plain,
    /// An overlay's own metadata (`P.X` for a private prefix `P`): never shown through the
    /// mount.
    Private,
    /// A user's own name of a private namespace, stored escaped (`P.overlay.X`): shown
    /// through the mount as `P.X`.
    Escaped,
}

/// The private prefix `name` starts with.
fn private_prefix(name: &[u8]) -> Option<&'static str> {
    PRIVATE_PREFIXES
        .into_iter()
        .find(|p| name.starts_with(p.as_bytes()))
}

/// Whose the on-disk xattr name `name` is.
pub fn classify(name: &[u8]) -> XattrClass {
    match private_prefix(name) {
        None => XattrClass::Plain,
        Some(p) if name[p.len()..].starts_with(ESCAPE.as_bytes()) => XattrClass::Escaped,
        Some(_) => XattrClass::Private,
    }
}

/// True for xattr names that belong to the overlay and are hidden from users (escaped
/// names are users' own).
pub fn is_private_xattr(name: &OsStr) -> bool {
    classify(name.as_bytes()) == XattrClass::Private
}

/// True for names an image layer never carries, in or out: the overlay's own and the
/// escaped ones alike. A tar layer has no escaping, so a user's overlay-namespace xattr
/// (the marks of an overlay nested on this one) cannot be told from an overlay's own and
/// would forge opaque directories, redirects or metacopy files in the layer.
pub fn is_overlay_namespace(name: &[u8]) -> bool {
    classify(name) != XattrClass::Plain
}

/// The on-disk name of an xattr a user sets through the mount: `P.X` for a private
/// namespace `P` is escaped to `P.overlay.X`, as kernel overlayfs does. `None` for names
/// that need no escaping.
pub fn escape_xattr(name: &OsStr) -> Option<OsString> {
    let b = name.as_bytes();
    let p = private_prefix(b)?;
    let mut v = Vec::with_capacity(b.len() + ESCAPE.len());
    v.extend_from_slice(p.as_bytes());
    v.extend_from_slice(ESCAPE.as_bytes());
    v.extend_from_slice(&b[p.len()..]);
    Some(OsString::from_vec(v))
}

/// The name users see for an on-disk xattr name (undoes [`escape_xattr`]).
pub fn unescape_xattr(name: &OsStr) -> Option<OsString> {
    let b = name.as_bytes();
    let p = private_prefix(b)?;
    let rest = b[p.len()..].strip_prefix(ESCAPE.as_bytes())?;
    let mut v = p.as_bytes().to_vec();
    v.extend_from_slice(rest);
    Some(OsString::from_vec(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_per_namespace() {
        // overlayfs.rst: "trusted.overlay.opaque", "trusted.overlay.redirect",
        // "trusted.overlay.origin", "trusted.overlay.metacopy", "trusted.overlay.whiteout";
        // with "userxattr" the same names under "user.overlay.".
        /// A name of both namespaces, and its trusted and user spellings.
        type Row = (fn(XattrNs) -> &'static str, &'static str, &'static str);
        let table: &[Row] = &[
            (
                XattrNs::opaque,
                "trusted.overlay.opaque",
                "user.overlay.opaque",
            ),
            (
                XattrNs::whiteout,
                "trusted.overlay.whiteout",
                "user.overlay.whiteout",
            ),
            (
                XattrNs::redirect,
                "trusted.overlay.redirect",
                "user.overlay.redirect",
            ),
            (
                XattrNs::origin,
                "trusted.overlay.origin",
                "user.overlay.origin",
            ),
            (
                XattrNs::nlink,
                "trusted.overlay.nlink",
                "user.overlay.nlink",
            ),
            (
                XattrNs::metacopy,
                "trusted.overlay.metacopy",
                "user.overlay.metacopy",
            ),
            (
                XattrNs::protattr,
                "trusted.overlay.protattr",
                "user.overlay.protattr",
            ),
            (
                XattrNs::literal,
                "trusted.overlay.rlayerfs.literal",
                "user.overlay.rlayerfs.literal",
            ),
            (
                XattrNs::inner_whiteout,
                "trusted.overlay.rlayerfs.inner-whiteout",
                "user.overlay.rlayerfs.inner-whiteout",
            ),
            // A nested overlay's marks, escaped one level ("Nesting overlayfs mounts").
            (
                XattrNs::escaped_whiteout,
                "trusted.overlay.overlay.whiteout",
                "user.overlay.overlay.whiteout",
            ),
            (
                XattrNs::escaped_opaque,
                "trusted.overlay.overlay.opaque",
                "user.overlay.overlay.opaque",
            ),
        ];
        for (name, trusted, user) in table {
            assert_eq!(name(XattrNs::Trusted), *trusted);
            assert_eq!(name(XattrNs::User), *user);
            assert!(trusted.starts_with(XattrNs::Trusted.prefix()));
            assert!(user.starts_with(XattrNs::User.prefix()));
        }
        assert_eq!(
            OPAQUE_XATTRS,
            [
                "trusted.overlay.opaque",
                "user.overlay.opaque",
                "user.fuseoverlayfs.opaque"
            ]
        );
    }

    #[test]
    fn private_xattrs() {
        let table = [
            ("trusted.overlay.opaque", XattrClass::Private),
            ("user.overlay.redirect", XattrClass::Private),
            ("user.fuseoverlayfs.opaque", XattrClass::Private),
            ("user.fuseoverlayfs.origin", XattrClass::Private),
            ("trusted.overlay.rlayerfs.literal", XattrClass::Private),
            ("user.containers.override_stat", XattrClass::Plain),
            (CAPABILITY_XATTR, XattrClass::Plain),
            ("trusted.foo", XattrClass::Plain),
            ("user.overlayx", XattrClass::Plain),
            ("trusted.overlay.overlay.opaque", XattrClass::Escaped),
            ("user.overlay.overlay.opaque", XattrClass::Escaped),
            ("user.fuseoverlayfs.overlay.opaque", XattrClass::Escaped),
        ];
        for (name, class) in table {
            assert_eq!(classify(name.as_bytes()), class, "{name}");
            assert_eq!(
                is_private_xattr(OsStr::new(name)),
                class == XattrClass::Private,
                "{name}"
            );
            assert_eq!(
                is_overlay_namespace(name.as_bytes()),
                class != XattrClass::Plain,
                "{name}"
            );
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
        assert_eq!(unescape_xattr(OsStr::new("trusted.overlay.opaque")), None);
        assert_eq!(escape_xattr(OsStr::new("user.foo")), None);
    }

    #[test]
    fn opaque_values() {
        assert_eq!(classify_opaque(b"y"), OpaqueXattr::Opaque);
        assert_eq!(classify_opaque(b"x"), OpaqueXattr::HasXattrWhiteouts);
        assert_eq!(classify_opaque(b"n"), OpaqueXattr::None);
        assert_eq!(classify_opaque(b""), OpaqueXattr::None);
    }
}
