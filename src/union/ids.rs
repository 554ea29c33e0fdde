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
//! # Ownership override
//! The override xattr (`crate::format::override_stat`) is read on directories and regular
//! files only, as in fuse-overlayfs; its type field turns an empty regular file into the
//! device, fifo or socket it stands for
//! (`crate::format::override_stat::OverrideStat::apply`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::error::{Error, Result};
use crate::format::acl::{self as posix_acl, GROUP as ACL_GROUP, USER as ACL_USER};

/// One range of an id mapping `C:H:S` (containers/storage writes `ContainerID:HostID:Size`):
/// ids `container..container+size` as stored in the layers (the ids of the image) are shown
/// through the mount as `host..host+size` (ids of the namespace the mount serves). This is
/// fuse-overlayfs's reading (`find_mapping`: the first field is the id on disk, the second the
/// id it reports), the one containers/storage relies on when it passes `uidmapping=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdMapping {
    /// First id of the range as stored in the layers (the container's own id).
    pub container: u32,
    /// First id of the range as shown through the mount (the id on the host side).
    pub host: u32,
    /// Number of ids in the range; never 0 once parsed.
    pub size: u32,
}

impl IdMapping {
    /// The host id for container id `id`, if this range covers it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        let offset = id.checked_sub(self.container)?;
        (offset < self.size).then(|| self.host.wrapping_add(offset))
    }

    /// The container id for host id `id`, if this range covers it.
    pub fn to_container(&self, id: u32) -> Option<u32> {
        let offset = id.checked_sub(self.host)?;
        (offset < self.size).then(|| self.container.wrapping_add(offset))
    }
}

/// Maps a container id (on disk) to the host (through the mount) with `maps`: identity when
/// `maps` is empty, `None` when mappings exist but none covers `id` (fuse-overlayfs then shows
/// the overflow id, 65534).
pub fn container_to_host(maps: &[IdMapping], id: u32) -> Option<u32> {
    if maps.is_empty() {
        return Some(id);
    }
    maps.iter().find_map(|m| m.to_host(id))
}

/// Maps a host id to the container through `maps`, with the rules of [`container_to_host`].
pub fn host_to_container(maps: &[IdMapping], id: u32) -> Option<u32> {
    if maps.is_empty() {
        return Some(id);
    }
    maps.iter().find_map(|m| m.to_container(id))
}

/// The id shown for a host id outside every mapping range (`/proc/sys/kernel/overflowuid`
/// and `overflowgid` default; the kernel's and fuse-overlayfs's choice).
pub const OVERFLOW_ID: u32 = 65534;

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
        translate_acl(&value, |tag, id| {
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
        translate_acl(value, |tag, id| match tag {
            ACL_USER => self.uid_to_disk(id).ok(),
            _ => self.gid_to_disk(id).ok(),
        })
        .ok_or(Error::Invalid)
    }
}

fn is_acl_xattr(name: &OsStr) -> bool {
    posix_acl::is_acl_xattr(name.as_bytes())
}

/// Rewrites the id of every `ACL_USER`/`ACL_GROUP` entry with `f(tag, id)`. `None` when the
/// value is not a version-2 ACL or `f` refuses an id.
fn translate_acl(v: &[u8], f: impl Fn(u16, u32) -> Option<u32>) -> Option<Vec<u8>> {
    let mut entries = posix_acl::parse(v)?;
    for e in &mut entries {
        if e.tag == ACL_USER || e.tag == ACL_GROUP {
            e.id = f(e.tag, e.id)?;
        }
    }
    Some(posix_acl::serialize(&entries))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The range `C:H:S` (stored `container` first), for the tables of the core's tests.
    pub(in crate::union) fn map(container: u32, host: u32, size: u32) -> IdMapping {
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
        let entries: Vec<posix_acl::Entry> = entries
            .iter()
            .map(|&(tag, perm, id)| posix_acl::Entry { tag, perm, id })
            .collect();
        posix_acl::serialize(&entries)
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
}
