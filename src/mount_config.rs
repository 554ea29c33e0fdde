//! What the parsed `-o` options (`crate::options`) become for the mount: the core's
//! ownership options, and fuser's mount options and access control. The options parser
//! knows neither the core's types nor fuser's; the core knows nothing of `-o`.

use fuser::{MountOption, SessionACL};

use crate::format::override_stat::{CONTAINERS_OVERRIDE, PRIVILEGED_OVERRIDE};
use crate::options::{FuseFlag, MountOptions};
use crate::union::ids::IdOptions;

/// How the mount presents and stores ownership, from `uidmapping=`, `gidmapping=`,
/// `squash_to_*` and `xattr_permissions=`.
pub fn id_options(o: &MountOptions) -> IdOptions {
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

/// The fuser mount option for this flag. `None` for `allow_other`/`allow_root` (they become
/// fuser's `SessionACL`, see [`session_acl`]) and for the kernel's defaults
/// (`relatime`, `diratime`, `nolazytime`, `symfollow`: no mount flag means them). The mount
/// flags fuser 0.18 has no variant for (`strictatime`, `nodiratime`, `lazytime`,
/// `nosymfollow`) are `CUSTOM` with their mount(8) name: the root mount path turns them into
/// `MS_*` flags (see `crate::mount`), the fusermount3 path refuses them (fusermount3 3.14
/// knows none of them), so none is ever dropped.
pub fn mount_option(flag: &FuseFlag) -> Option<MountOption> {
    use MountOption as M;
    Some(match flag {
        FuseFlag::AllowOther | FuseFlag::AllowRoot => return None,
        FuseFlag::RelAtime | FuseFlag::DirAtime | FuseFlag::NoLazyTime | FuseFlag::SymFollow => {
            return None
        }
        FuseFlag::StrictAtime
        | FuseFlag::NoDirAtime
        | FuseFlag::LazyTime
        | FuseFlag::NoSymFollow => M::CUSTOM(flag.to_string()),
        FuseFlag::DefaultPermissions => M::DefaultPermissions,
        FuseFlag::AutoUnmount => M::AutoUnmount,
        FuseFlag::Suid => M::Suid,
        FuseFlag::NoSuid => M::NoSuid,
        FuseFlag::Dev => M::Dev,
        FuseFlag::NoDev => M::NoDev,
        FuseFlag::Exec => M::Exec,
        FuseFlag::NoExec => M::NoExec,
        FuseFlag::Atime => M::Atime,
        FuseFlag::NoAtime => M::NoAtime,
        FuseFlag::Sync => M::Sync,
        FuseFlag::Async => M::Async,
        FuseFlag::DirSync => M::DirSync,
        FuseFlag::FsName(name) => M::FSName(name.clone()),
        FuseFlag::Subtype(name) => M::Subtype(name.clone()),
    })
}

/// fuser's access control from `allow_other` / `allow_root`.
pub fn session_acl(o: &MountOptions) -> SessionACL {
    let access = o.fuse.iter().find_map(|f| match f {
        FuseFlag::AllowOther => Some(SessionACL::All),
        FuseFlag::AllowRoot => Some(SessionACL::RootAndOwner),
        _ => None,
    });
    access.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::union::ids::{container_to_host, OVERFLOW_ID};
    use MountOption as M;

    fn parsed(s: &str) -> MountOptions {
        let mut o = MountOptions::default();
        o.parse(s).unwrap();
        o
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
            let mut mo = MountOptions::default();
            mo.parse(&format!("{opts},uidmapping=0:1000:10")).unwrap();
            // Stored 0..10 shows as 1000..1010.
            let o = id_options(&mo);
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
    fn fuse_flags_to_fuser() {
        let cases: &[(&str, Option<M>)] = &[
            ("allow_other", None),
            ("allow_root", None),
            ("relatime", None),
            ("strictatime", Some(M::CUSTOM("strictatime".into()))),
            ("diratime", None),
            ("nodiratime", Some(M::CUSTOM("nodiratime".into()))),
            ("lazytime", Some(M::CUSTOM("lazytime".into()))),
            ("nolazytime", None),
            ("symfollow", None),
            ("nosymfollow", Some(M::CUSTOM("nosymfollow".into()))),
            ("default_permissions", Some(M::DefaultPermissions)),
            ("auto_unmount", Some(M::AutoUnmount)),
            ("suid", Some(M::Suid)),
            ("nosuid", Some(M::NoSuid)),
            ("dev", Some(M::Dev)),
            ("nodev", Some(M::NoDev)),
            ("exec", Some(M::Exec)),
            ("noexec", Some(M::NoExec)),
            ("atime", Some(M::Atime)),
            ("noatime", Some(M::NoAtime)),
            ("sync", Some(M::Sync)),
            ("async", Some(M::Async)),
            ("dirsync", Some(M::DirSync)),
            ("fsname=x", Some(M::FSName("x".into()))),
            ("subtype=y", Some(M::Subtype("y".into()))),
        ];
        for (input, want) in cases {
            let o = parsed(input);
            assert_eq!(o.fuse.len(), 1, "{input:?}");
            assert_eq!(mount_option(&o.fuse[0]), *want, "{input:?}");
            assert_eq!(
                o.fuse[0].to_string(),
                *input,
                "{input:?} does not round-trip"
            );
        }
        assert_eq!(session_acl(&parsed("")), SessionACL::Owner);
        assert_eq!(session_acl(&parsed("allow_other")), SessionACL::All);
        assert_eq!(session_acl(&parsed("allow_root")), SessionACL::RootAndOwner);
    }

    #[test]
    fn override_write_from_options() {
        let mut mo = MountOptions::default();
        mo.parse("xattr_permissions=2").unwrap();
        assert_eq!(id_options(&mo).override_write, Some(CONTAINERS_OVERRIDE));
        mo.parse("xattr_permissions=1").unwrap();
        assert_eq!(id_options(&mo).override_write, Some(PRIVILEGED_OVERRIDE));
        mo.parse("xattr_permissions=0").unwrap();
        assert_eq!(id_options(&mo).override_write, None);
    }
}
