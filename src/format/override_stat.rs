//! The ownership override `UID:GID:MODE[:TYPE]` (containers/storage's `xattr_permissions`,
//! fuse-overlayfs's `xattr_permissions=`): an unprivileged writer cannot chown files to
//! ids it does not own, nor make device nodes, so the owner, the mode and the file type
//! are kept in an xattr. UID and GID in decimal (as stored on disk, i.e. container ids),
//! MODE in octal, TYPE one of `file`, `dir`, `symlink`, `pipe`, `socket`,
//! `block-MAJ-MIN`, `char-MAJ-MIN`.
//!
//! Names: `user.containers.override_stat` (containers/storage, and what fuse-overlayfs
//! ≥ 1.14 writes for `xattr_permissions=2`), `security.fuseoverlayfs.override_stat`
//! (`xattr_permissions=1`), `user.fuseoverlayfs.override_stat` (older fuse-overlayfs,
//! read only).
//!
//! One parser and one formatter, used by the mount, `unpack` and `commit`, with one answer
//! to each edge case:
//! - written as containers/storage writes it (`pkg/idtools`, `"%d:%d:%04o:%s"`): the mode
//!   in at least four octal digits;
//! - read in any octal width (`755` and `0755` alike, as `strconv.ParseUint(s, 8, 32)`
//!   and fuse-overlayfs's `sscanf("%o")` read it);
//! - a trailing NUL is ignored (writers in C may count it in the value);
//! - a mode above `0o7777` is malformed (it is not a permission value; containers/storage
//!   would drop the extra bits silently), so the real attributes stand;
//! - a device type may carry more `-` fields, ignored (containers/storage reads
//!   `MAJ-MIN` with `Sscanf`, forward compatible);
//! - an unknown type makes the value malformed.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// The override xattr containers/storage writes and fuse-overlayfs ≥ 1.14 prefers.
pub const CONTAINERS_OVERRIDE: &str = "user.containers.override_stat";
/// The privileged override xattr of fuse-overlayfs (`xattr_permissions=1`).
pub const PRIVILEGED_OVERRIDE: &str = "security.fuseoverlayfs.override_stat";
/// The unprivileged override xattr older fuse-overlayfs wrote (read only here).
pub const FUSEOVERLAYFS_OVERRIDE: &str = "user.fuseoverlayfs.override_stat";

/// Every override xattr name, in the order they are looked for when none is configured
/// (fuse-overlayfs's per-layer detection order).
pub const OVERRIDE_NAMES: [&str; 3] = [
    PRIVILEGED_OVERRIDE,
    CONTAINERS_OVERRIDE,
    FUSEOVERLAYFS_OVERRIDE,
];

/// True for the name of an ownership override xattr.
pub fn is_override_xattr(name: &OsStr) -> bool {
    OVERRIDE_NAMES
        .iter()
        .any(|n| name.as_bytes() == n.as_bytes())
}

/// The file type an override xattr may give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideKind {
    File,
    Dir,
    Symlink,
    Pipe,
    Socket,
    Block { major: u32, minor: u32 },
    Char { major: u32, minor: u32 },
}

impl OverrideKind {
    /// The `S_IFMT` bits of this type.
    pub fn type_bits(&self) -> u32 {
        match self {
            OverrideKind::File => libc::S_IFREG,
            OverrideKind::Dir => libc::S_IFDIR,
            OverrideKind::Symlink => libc::S_IFLNK,
            OverrideKind::Pipe => libc::S_IFIFO,
            OverrideKind::Socket => libc::S_IFSOCK,
            OverrideKind::Block { .. } => libc::S_IFBLK,
            OverrideKind::Char { .. } => libc::S_IFCHR,
        }
    }

    /// The type of a special file (`S_IFMT` bits and rdev) a regular file can stand for.
    pub fn special(mode: u32, rdev: u64) -> Option<OverrideKind> {
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        Some(match mode & libc::S_IFMT {
            libc::S_IFIFO => OverrideKind::Pipe,
            libc::S_IFSOCK => OverrideKind::Socket,
            libc::S_IFBLK => OverrideKind::Block { major, minor },
            libc::S_IFCHR => OverrideKind::Char { major, minor },
            _ => return None,
        })
    }

    fn parse(s: &str) -> Option<OverrideKind> {
        let device = |rest: &str| -> Option<(u32, u32)> {
            // Extra `-` fields are ignored, as containers/storage does (forward compatible).
            let mut parts = rest.split('-');
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        };
        Some(match s {
            "file" => OverrideKind::File,
            "dir" => OverrideKind::Dir,
            "symlink" => OverrideKind::Symlink,
            "pipe" => OverrideKind::Pipe,
            "socket" => OverrideKind::Socket,
            _ => {
                if let Some(rest) = s.strip_prefix("block-") {
                    let (major, minor) = device(rest)?;
                    OverrideKind::Block { major, minor }
                } else if let Some(rest) = s.strip_prefix("char-") {
                    let (major, minor) = device(rest)?;
                    OverrideKind::Char { major, minor }
                } else {
                    return None;
                }
            }
        })
    }

    fn format(&self) -> String {
        match self {
            OverrideKind::File => "file".into(),
            OverrideKind::Dir => "dir".into(),
            OverrideKind::Symlink => "symlink".into(),
            OverrideKind::Pipe => "pipe".into(),
            OverrideKind::Socket => "socket".into(),
            OverrideKind::Block { major, minor } => format!("block-{major}-{minor}"),
            OverrideKind::Char { major, minor } => format!("char-{major}-{minor}"),
        }
    }
}

/// The value of an override xattr: owner as stored on disk, permission bits, type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverrideStat {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub kind: Option<OverrideKind>,
}

impl OverrideStat {
    /// Parses `UID:GID:MODE[:TYPE]`; `None` when malformed (then the real attributes stand).
    pub fn parse(value: &[u8]) -> Option<OverrideStat> {
        let text = std::str::from_utf8(value).ok()?;
        // Writers in C may count a trailing NUL in the value.
        let text = text.trim_end_matches('\0');
        let mut parts = text.splitn(4, ':');
        let uid = parts.next()?.parse().ok()?;
        let gid = parts.next()?.parse().ok()?;
        let mode = u32::from_str_radix(parts.next()?, 8).ok()?;
        if mode > 0o7777 {
            return None;
        }
        let kind = match parts.next() {
            Some(t) => Some(OverrideKind::parse(t)?),
            None => None,
        };
        Some(OverrideStat {
            uid,
            gid,
            mode,
            kind,
        })
    }

    /// The xattr value, in containers/storage's format (`%d:%d:%04o[:TYPE]`).
    pub fn format(&self) -> String {
        let base = format!("{}:{}:{:04o}", self.uid, self.gid, self.mode & 0o7777);
        match &self.kind {
            Some(k) => format!("{base}:{}", k.format()),
            None => base,
        }
    }

    /// Applies the override to a stat of the real object (`mode`: full st_mode). Returns the
    /// new (mode, uid, gid, rdev), or `None` when the override does not apply to this object
    /// (fuse-overlayfs reads it on directories and regular files only; a type other than the
    /// real one is honoured only for a regular file standing for a special file).
    pub fn apply(&self, mode: u32, rdev: u64) -> Option<(u32, u32, u32, u64)> {
        let real = mode & libc::S_IFMT;
        if real != libc::S_IFDIR && real != libc::S_IFREG {
            return None;
        }
        let (ty, rdev) = match self.kind {
            Some(
                k @ (OverrideKind::Block { major, minor } | OverrideKind::Char { major, minor }),
            ) if real == libc::S_IFREG => (k.type_bits(), libc::makedev(major, minor)),
            Some(k @ (OverrideKind::Pipe | OverrideKind::Socket)) if real == libc::S_IFREG => {
                (k.type_bits(), 0)
            }
            _ => (real, rdev),
        };
        Some((ty | (self.mode & 0o7777), self.uid, self.gid, rdev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_values_table() {
        let cases: &[(&str, Option<OverrideStat>)] = &[
            (
                "0:0:755",
                Some(OverrideStat {
                    uid: 0,
                    gid: 0,
                    mode: 0o755,
                    kind: None,
                }),
            ),
            (
                "1000:100:0644:file",
                Some(OverrideStat {
                    uid: 1000,
                    gid: 100,
                    mode: 0o644,
                    kind: Some(OverrideKind::File),
                }),
            ),
            (
                "5:6:4755:dir",
                Some(OverrideStat {
                    uid: 5,
                    gid: 6,
                    mode: 0o4755,
                    kind: Some(OverrideKind::Dir),
                }),
            ),
            (
                "0:0:0666:char-1-3",
                Some(OverrideStat {
                    uid: 0,
                    gid: 0,
                    mode: 0o666,
                    kind: Some(OverrideKind::Char { major: 1, minor: 3 }),
                }),
            ),
            (
                "0:6:0660:block-8-0-extra",
                Some(OverrideStat {
                    uid: 0,
                    gid: 6,
                    mode: 0o660,
                    kind: Some(OverrideKind::Block { major: 8, minor: 0 }),
                }),
            ),
            (
                "1:2:0600:pipe\0",
                Some(OverrideStat {
                    uid: 1,
                    gid: 2,
                    mode: 0o600,
                    kind: Some(OverrideKind::Pipe),
                }),
            ),
            ("", None),
            ("0:0", None),
            ("a:0:755", None),
            ("0:0:9", None),
            ("0:0:17777", None),
            ("0:0:10000", None),
            (
                "0:0:7777",
                Some(OverrideStat {
                    uid: 0,
                    gid: 0,
                    mode: 0o7777,
                    kind: None,
                }),
            ),
            (
                "0:0:0755\0",
                Some(OverrideStat {
                    uid: 0,
                    gid: 0,
                    mode: 0o755,
                    kind: None,
                }),
            ),
            (
                "4294967295:0:00755",
                Some(OverrideStat {
                    uid: u32::MAX,
                    gid: 0,
                    mode: 0o755,
                    kind: None,
                }),
            ),
            ("4294967296:0:755", None),
            ("0:0:755:", None),
            ("-1:0:755", None),
            ("0:0:755:door", None),
            ("0:0:755:char-1", None),
            ("0:0:755:char-x-1", None),
        ];
        for (text, want) in cases {
            let got = OverrideStat::parse(text.as_bytes());
            assert_eq!(got, *want, "{text:?}");
            if let Some(v) = got {
                assert_eq!(
                    OverrideStat::parse(v.format().as_bytes()),
                    Some(v),
                    "{text:?}"
                );
            }
        }
        // Written with at least four octal digits, as containers/storage writes it.
        let written: &[(&str, &str)] = &[
            ("0:0:0666:char-1-3", "0:0:0666:char-1-3"),
            ("1:2:755", "1:2:0755"),
            ("1:2:0", "1:2:0000"),
            ("1:2:4755:dir", "1:2:4755:dir"),
            ("0:6:0660:block-8-0-extra", "0:6:0660:block-8-0"),
            ("1:2:0600:pipe\0", "1:2:0600:pipe"),
        ];
        for (read, want) in written {
            let v = OverrideStat::parse(read.as_bytes()).unwrap();
            assert_eq!(v.format(), *want, "{read:?}");
        }
    }

    #[test]
    fn override_apply_table() {
        let o = |s: &str| OverrideStat::parse(s.as_bytes()).unwrap();
        let reg = libc::S_IFREG | 0o600;
        let dir = libc::S_IFDIR | 0o700;
        /// (mode, uid, gid, rdev) shown.
        type Shown = (u32, u32, u32, u64);
        let cases: &[(OverrideStat, u32, Option<Shown>)] = &[
            (o("5:6:0755"), reg, Some((libc::S_IFREG | 0o755, 5, 6, 0))),
            (
                o("5:6:1777:dir"),
                dir,
                Some((libc::S_IFDIR | 0o1777, 5, 6, 0)),
            ),
            (
                o("0:0:0620:char-4-1"),
                reg,
                Some((libc::S_IFCHR | 0o620, 0, 0, libc::makedev(4, 1))),
            ),
            (
                o("0:0:0660:block-8-1"),
                reg,
                Some((libc::S_IFBLK | 0o660, 0, 0, libc::makedev(8, 1))),
            ),
            (
                o("0:0:0644:pipe"),
                reg,
                Some((libc::S_IFIFO | 0o644, 0, 0, 0)),
            ),
            // A directory never becomes a device; the type must match otherwise.
            (
                o("0:0:0755:char-1-3"),
                dir,
                Some((libc::S_IFDIR | 0o755, 0, 0, 0)),
            ),
            (
                o("0:0:0755:dir"),
                reg,
                Some((libc::S_IFREG | 0o755, 0, 0, 0)),
            ),
            // Only directories and regular files are overridden.
            (o("0:0:0755"), libc::S_IFLNK | 0o777, None),
            (o("0:0:0755"), libc::S_IFCHR | 0o600, None),
        ];
        for (ov, mode, want) in cases {
            assert_eq!(ov.apply(*mode, 0), *want, "{ov:?} on {mode:o}");
        }
    }

    #[test]
    fn override_names() {
        for n in OVERRIDE_NAMES {
            assert!(is_override_xattr(OsStr::new(n)));
        }
        assert!(!is_override_xattr(OsStr::new("user.containers.other")));
    }
}
