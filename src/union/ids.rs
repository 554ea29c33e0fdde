//! Ownership as seen through the mount: uid/gid mappings, squashing, the ownership
//! override xattr, and the ids inside POSIX ACL xattrs. Pure functions on values; the core
//! calls them where attributes leave it and where ids from a caller reach the disk.
//!
//! # Directions
//! `uidmapping=C:H:S` reads as fuse-overlayfs reads it (and as containers/storage, which sends
//! `ContainerID:HostID:Size`, relies on): the layers hold container ids `C..C+S` (the ids of
//! the image, unshifted), the mount shows host ids `H..H+S` (ids of the namespace the mount
//! serves, which the container's user namespace maps back to `C..`).
//! * Disk → mount (stat, getxattr of an ACL): a stored id is shown as the host id its range
//!   gives; a stored id no range covers shows as the overflow id 65534, as the kernel shows
//!   ids from outside a user namespace and as fuse-overlayfs does. Squashing (`squash_to_uid`,
//!   `squash_to_gid`, `squash_to_root`) replaces the shown owner of every object, whatever
//!   the disk says (fuse-overlayfs's `find_mapping`).
//! * Mount → disk (chown, setxattr of an ACL): a host id is stored as the container id of its
//!   range; an id no range covers is refused with `EINVAL` (an id that cannot be represented,
//!   as POSIX ACL decoding refuses one; fuse-overlayfs would store the overflow id instead,
//!   which loses the owner). A new object made by a caller outside the mapping is stored
//!   with the overflow id, as fuse-overlayfs does (podman, as host root, prepares files in
//!   container roots mapped elsewhere; refusing would fail the container). Squashing does not
//!   change what is stored, but with it a chown that fails is not an error (fuse-overlayfs).
//! * A lower layer reached through an idmapped mount (containers/storage makes one under
//!   `LAYER/mapped/` when the kernel allows, and still passes `uidmapping=`) already shows
//!   host ids: the core does not map its ids again, and stores them unmapped on copy-up.
//!
//! # Ownership override (`xattr_permissions`, containers/storage)
//! An unprivileged daemon cannot chown files to ids it does not own, nor make device nodes.
//! containers/storage and fuse-overlayfs then keep the owner, the mode and the file type in
//! an xattr `UID:GID:MODE[:TYPE]` (ids as stored on disk, i.e. host ids; MODE octal; TYPE
//! one of `file`, `dir`, `symlink`, `pipe`, `socket`, `block-MAJ-MIN`, `char-MAJ-MIN`).
//! Names: `user.containers.override_stat` (containers/storage, and what fuse-overlayfs
//! ≥ 1.14 writes for `xattr_permissions=2`), `security.fuseoverlayfs.override_stat`
//! (`xattr_permissions=1`), `user.fuseoverlayfs.override_stat` (older fuse-overlayfs,
//! read only). As in fuse-overlayfs the override is read on directories and regular files
//! only; the type field turns an empty regular file into the device, fifo or socket it
//! stands for.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::error::{Error, Result};
use crate::options::{container_to_host, host_to_container, IdMapping};

/// The id shown for a host id outside every mapping range (`/proc/sys/kernel/overflowuid`
/// and `overflowgid` default; the kernel's and fuse-overlayfs's choice).
pub const OVERFLOW_ID: u32 = 65534;

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

/// POSIX ACL xattrs, whose entries carry ids.
const ACL_XATTRS: [&str; 2] = ["system.posix_acl_access", "system.posix_acl_default"];
/// `POSIX_ACL_XATTR_VERSION`: the only version the kernel reads and writes.
const ACL_VERSION: u32 = 2;
/// Entry tags that carry an id (`ACL_USER`, `ACL_GROUP` in `linux/posix_acl.h`).
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;
/// Size of the header (version) and of one entry (tag u16, perm u16, id u32).
const ACL_HEADER: usize = 4;
const ACL_ENTRY: usize = 8;

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

/// How the mount presents and stores ownership.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdOptions {
    /// `uidmapping=`; empty is identity.
    pub uid_maps: Vec<IdMapping>,
    /// `gidmapping=`; empty is identity.
    pub gid_maps: Vec<IdMapping>,
    /// Owner every object shows (`squash_to_uid=`, or 0 with `squash_to_root`).
    pub squash_uid: Option<u32>,
    /// Group every object shows (`squash_to_gid=`, or 0 with `squash_to_root`).
    pub squash_gid: Option<u32>,
    /// `xattr_permissions=1|2`: the override xattr owner and mode changes are written to,
    /// instead of chown/chmod of the real object.
    pub override_write: Option<&'static str>,
}

impl IdOptions {
    /// The options from the mount options.
    pub fn from_mount_options(o: &crate::options::MountOptions) -> IdOptions {
        let root = o.squash_to_root.then_some(0);
        IdOptions {
            uid_maps: o.uid_mappings.clone(),
            gid_maps: o.gid_mappings.clone(),
            squash_uid: o.squash_to_uid.or(root),
            squash_gid: o.squash_to_gid.or(root),
            override_write: match o.xattr_permissions {
                1 => Some(PRIVILEGED_OVERRIDE),
                2 => Some(CONTAINERS_OVERRIDE),
                _ => None,
            },
        }
    }

    /// True when ids pass unchanged both ways (no mapping, no squashing).
    pub fn is_identity(&self) -> bool {
        self.uid_maps.is_empty()
            && self.gid_maps.is_empty()
            && self.squash_uid.is_none()
            && self.squash_gid.is_none()
    }

    /// True when some squashing is on: failed chowns are then not errors.
    pub fn squashing(&self) -> bool {
        self.squash_uid.is_some() || self.squash_gid.is_some()
    }

    /// The uid shown for an owner stored as `disk`.
    pub fn uid_to_mount(&self, disk: u32) -> u32 {
        self.squash_uid.unwrap_or_else(|| self.uid_unsquashed(disk))
    }

    /// The gid shown for a group stored as `disk`.
    pub fn gid_to_mount(&self, disk: u32) -> u32 {
        self.squash_gid.unwrap_or_else(|| self.gid_unsquashed(disk))
    }

    fn uid_unsquashed(&self, disk: u32) -> u32 {
        container_to_host(&self.uid_maps, disk).unwrap_or(OVERFLOW_ID)
    }

    fn gid_unsquashed(&self, disk: u32) -> u32 {
        container_to_host(&self.gid_maps, disk).unwrap_or(OVERFLOW_ID)
    }

    /// The uid stored for `id` given through the mount; `EINVAL` outside every range.
    pub fn uid_to_disk(&self, id: u32) -> Result<u32> {
        host_to_container(&self.uid_maps, id).ok_or(Error::Invalid)
    }

    /// The gid stored for `id` given through the mount; `EINVAL` outside every range.
    pub fn gid_to_disk(&self, id: u32) -> Result<u32> {
        host_to_container(&self.gid_maps, id).ok_or(Error::Invalid)
    }

    /// True when the ids inside ACL xattrs need translating.
    fn maps_acls(&self) -> bool {
        !self.uid_maps.is_empty() || !self.gid_maps.is_empty()
    }

    /// An ACL xattr value read from disk, with its ids as the mount shows them (ids outside
    /// the mapping become the overflow id, as the kernel does). Other xattrs and malformed
    /// values pass unchanged (the kernel refuses malformed ones itself).
    pub fn xattr_to_mount(&self, name: &OsStr, value: Vec<u8>) -> Vec<u8> {
        if !self.maps_acls() || !is_acl_xattr(name) {
            return value;
        }
        translate_acl(value.clone(), |tag, id| {
            Some(match tag {
                ACL_USER => self.uid_unsquashed(id),
                _ => self.gid_unsquashed(id),
            })
        })
        .unwrap_or(value)
    }

    /// An ACL xattr value given through the mount, with its ids as stored on disk; `EINVAL`
    /// for an id outside the mapping or a malformed ACL.
    pub fn xattr_to_disk(&self, name: &OsStr, value: &[u8]) -> Result<Vec<u8>> {
        if !self.maps_acls() || !is_acl_xattr(name) {
            return Ok(value.to_vec());
        }
        translate_acl(value.to_vec(), |tag, id| match tag {
            ACL_USER => self.uid_to_disk(id).ok(),
            _ => self.gid_to_disk(id).ok(),
        })
        .ok_or(Error::Invalid)
    }
}

fn is_acl_xattr(name: &OsStr) -> bool {
    ACL_XATTRS.iter().any(|n| name.as_bytes() == n.as_bytes())
}

/// Rewrites the id of every `ACL_USER`/`ACL_GROUP` entry with `f(tag, id)`. `None` when the
/// value is not a version-2 ACL or `f` refuses an id.
fn translate_acl(mut v: Vec<u8>, f: impl Fn(u16, u32) -> Option<u32>) -> Option<Vec<u8>> {
    if v.len() < ACL_HEADER || !(v.len() - ACL_HEADER).is_multiple_of(ACL_ENTRY) {
        return None;
    }
    let version = u32::from_le_bytes(v[..ACL_HEADER].try_into().ok()?);
    if version != ACL_VERSION {
        return None;
    }
    for entry in v[ACL_HEADER..].chunks_exact_mut(ACL_ENTRY) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        if tag == ACL_USER || tag == ACL_GROUP {
            let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
            entry[4..8].copy_from_slice(&f(tag, id)?.to_le_bytes());
        }
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(container: u32, host: u32, size: u32) -> IdMapping {
        IdMapping {
            container,
            host,
            size,
        }
    }

    fn mapped() -> IdOptions {
        IdOptions {
            // Stored 1000 shows as 0, stored 100000.. as 1.., stored 2000.. as gid 0..
            uid_maps: vec![map(1000, 0, 1), map(100000, 1, 65536)],
            gid_maps: vec![map(2000, 0, 10)],
            ..IdOptions::default()
        }
    }

    /// An ACL value: header plus (tag, perm, id) entries.
    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = ACL_VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    /// `ACL_USER_OBJ`, `ACL_GROUP_OBJ`, `ACL_MASK`, `ACL_OTHER` carry the undefined id.
    const UNDEFINED: u32 = u32::MAX;

    #[test]
    fn ids_both_ways_table() {
        let o = mapped();
        // (host uid, shown uid)
        let shown: &[(u32, u32)] = &[
            (1000, 0),
            (100000, 1),
            (165535, 65536),
            (0, OVERFLOW_ID),
            (999, OVERFLOW_ID),
            (165536, OVERFLOW_ID),
        ];
        for (host, want) in shown {
            assert_eq!(o.uid_to_mount(*host), *want, "host uid {host}");
        }
        // (given uid, stored uid or refused)
        let stored: &[(u32, Option<u32>)] = &[
            (0, Some(1000)),
            (1, Some(100000)),
            (65536, Some(165535)),
            (65537, None),
            (u32::MAX, None),
        ];
        for (id, want) in stored {
            assert_eq!(o.uid_to_disk(*id).ok(), *want, "uid {id}");
        }
        assert_eq!(o.uid_to_disk(65537), Err(Error::Invalid));
        assert_eq!(o.gid_to_mount(2009), 9);
        assert_eq!(o.gid_to_mount(2010), OVERFLOW_ID);
        assert_eq!(o.gid_to_disk(9), Ok(2009));
        assert_eq!(o.gid_to_disk(10), Err(Error::Invalid));
        let id = IdOptions::default();
        assert!(id.is_identity());
        for v in [0, 1, 65534, u32::MAX] {
            assert_eq!(id.uid_to_mount(v), v);
            assert_eq!(id.gid_to_disk(v), Ok(v));
        }
    }

    #[test]
    fn squash_shows_one_owner_and_stores_mapped_ids() {
        let cases: &[(&str, Option<u32>, Option<u32>)] = &[
            ("squash_to_root", Some(0), Some(0)),
            ("squash_to_uid=7", Some(7), None),
            ("squash_to_gid=8", None, Some(8)),
            ("squash_to_root,squash_to_uid=7", Some(7), Some(0)),
            ("squash_to_root,squash_to_gid=8", Some(0), Some(8)),
        ];
        for (opts, uid, gid) in cases {
            let mut mo = crate::options::MountOptions::default();
            mo.parse(&format!("{opts},uidmapping=0:1000:10")).unwrap();
            // Stored 0..10 shows as 1000..1010.
            let o = IdOptions::from_mount_options(&mo);
            assert!(o.squashing(), "{opts}");
            for host in [0, 1000, 1005, 50000] {
                let mapped_uid = container_to_host(&o.uid_maps, host).unwrap_or(OVERFLOW_ID);
                assert_eq!(o.uid_to_mount(host), uid.unwrap_or(mapped_uid), "{opts}");
                assert_eq!(o.gid_to_mount(host), gid.unwrap_or(host), "{opts}");
            }
            // Storing is not squashed.
            assert_eq!(o.uid_to_disk(1003), Ok(3), "{opts}");
        }
    }

    #[test]
    fn acl_ids_translate_both_ways() {
        let o = mapped();
        let name = OsStr::new("system.posix_acl_access");
        let disk = acl(&[
            (0x01, 6, UNDEFINED),
            (ACL_USER, 4, 100005),
            (ACL_USER, 4, 42),
            (0x04, 4, UNDEFINED),
            (ACL_GROUP, 5, 2003),
            (0x10, 7, UNDEFINED),
            (0x20, 0, UNDEFINED),
        ]);
        let shown = o.xattr_to_mount(name, disk.clone());
        assert_eq!(
            shown,
            acl(&[
                (0x01, 6, UNDEFINED),
                (ACL_USER, 4, 6),
                (ACL_USER, 4, OVERFLOW_ID),
                (0x04, 4, UNDEFINED),
                (ACL_GROUP, 5, 3),
                (0x10, 7, UNDEFINED),
                (0x20, 0, UNDEFINED),
            ])
        );
        let given = acl(&[(0x01, 6, UNDEFINED), (ACL_USER, 4, 6), (ACL_GROUP, 5, 3)]);
        assert_eq!(
            o.xattr_to_disk(OsStr::new("system.posix_acl_default"), &given),
            Ok(acl(&[
                (0x01, 6, UNDEFINED),
                (ACL_USER, 4, 100005),
                (ACL_GROUP, 5, 2003)
            ]))
        );
        // An id outside the mapping cannot be stored.
        let bad = acl(&[(ACL_GROUP, 5, 10)]);
        assert_eq!(o.xattr_to_disk(name, &bad), Err(Error::Invalid));
        // Malformed ACLs are refused on the way in, passed through on the way out.
        for v in [
            vec![],
            vec![2, 0, 0],
            acl(&[(ACL_USER, 4, 1)])[..10].to_vec(),
        ] {
            assert_eq!(o.xattr_to_disk(name, &v), Err(Error::Invalid));
            assert_eq!(o.xattr_to_mount(name, v.clone()), v);
        }
        // Other xattrs and identity mounts pass unchanged.
        assert_eq!(
            o.xattr_to_mount(OsStr::new("user.x"), disk.clone()),
            disk.clone()
        );
        assert_eq!(
            IdOptions::default().xattr_to_mount(name, disk.clone()),
            disk
        );
    }

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
        let dev = OverrideStat::parse(b"0:0:0666:char-1-3").unwrap();
        assert_eq!(dev.format(), "0:0:0666:char-1-3");
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
        let mut mo = crate::options::MountOptions::default();
        mo.parse("xattr_permissions=2").unwrap();
        assert_eq!(
            IdOptions::from_mount_options(&mo).override_write,
            Some(CONTAINERS_OVERRIDE)
        );
        mo.parse("xattr_permissions=1").unwrap();
        assert_eq!(
            IdOptions::from_mount_options(&mo).override_write,
            Some(PRIVILEGED_OVERRIDE)
        );
        mo.parse("xattr_permissions=0").unwrap();
        assert_eq!(IdOptions::from_mount_options(&mo).override_write, None);
    }
}
