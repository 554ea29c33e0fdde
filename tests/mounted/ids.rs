//! Ownership through a live mount: `uidmapping=`/`gidmapping=` (stat, chown, new objects,
//! POSIX ACL xattrs), `squash_to_root`/`squash_to_uid`/`squash_to_gid`, and
//! `xattr_permissions=2` (the `user.containers.override_stat` xattr: read, written by chown
//! and chmod, hidden, device stand-ins shown as devices).
//!
//! Skips (with a message) when not root or /dev/fuse is missing.

use crate::common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::fixture::Stack;
use common::live::as_user;
use common::mount::{FuseMount, MountDirs};
use common::{can_mount, sys};

const OVERRIDE: &str = "user.containers.override_stat";
const ACL_ACCESS: &str = "system.posix_acl_access";
/// Stored uids 1000..1010 show as 0..10, stored gids 2000..2010 as 0..10 (`C:H:S`: the id
/// in the layers first, the id shown through the mount second, as fuse-overlayfs reads it).
const MAPPING: &str = "uidmapping=1000:0:10,gidmapping=2000:0:10";

fn mount(st: &Stack, extra: &str) -> FuseMount {
    let dirs = MountDirs::of(st);
    FuseMount::mount_with(&dirs, &format!("{},{extra}", dirs.options()))
        .unwrap_or_else(|e| panic!("mount with {extra}: {e}"))
}

fn ids(p: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid())
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("succeeded: {v:?}"),
        Err(e) => sys::errno_of(&e),
    }
}

/// A valid access ACL value naming user `uid`: USER_OBJ, USER, GROUP_OBJ, MASK, OTHER.
fn acl_for_user(uid: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 4, uid),
        (0x04, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

fn acl_user_id(v: &[u8]) -> u32 {
    let e = v[4..]
        .chunks_exact(8)
        .find(|e| u16::from_le_bytes([e[0], e[1]]) == 0x02)
        .expect("an ACL_USER entry");
    u32::from_le_bytes([e[4], e[5], e[6], e[7]])
}

#[test]
fn uid_gid_mapping_through_the_mount() {
    if !can_mount() {
        return;
    }
    let st = Stack::new(1);
    st.lower(0)
        .file("a", b"a")
        .chown("a", 1005, 2003)
        .file("hostroot", b"owned by host root")
        .file("acl", b"acl")
        .xattr("acl", ACL_ACCESS, &acl_for_user(1009))
        .dir_with("shared", 0o777, 1000, 2000);
    let m = mount(&st, MAPPING);
    let mnt = m.path();

    assert_eq!(ids(&mnt.join("a")), (5, 3));
    assert_eq!(ids(&mnt.join("hostroot")), (65534, 65534));
    assert_eq!(ids(&mnt.join("shared")), (0, 0));
    let v = sys::get_xattr(&mnt.join("acl"), ACL_ACCESS).unwrap();
    assert_eq!(acl_user_id(&v), 9, "ACL ids are shown mapped");

    // chown stores host ids; an id outside the mapping is refused.
    sys::lchown(&mnt.join("a"), 7, 1).unwrap();
    assert_eq!(ids(&st.upper.join("a")), (1007, 2001));
    assert_eq!(ids(&mnt.join("a")), (7, 1));
    assert_eq!(errno_of(sys::lchown(&mnt.join("a"), 10, 1)), libc::EINVAL);
    assert_eq!(errno_of(sys::lchown(&mnt.join("a"), 1, 4000)), libc::EINVAL);
    assert_eq!(ids(&st.upper.join("a")), (1007, 2001));

    // New objects: root's are stored as host 1000:2000, user 3's as 1003:2003.
    fs::write(mnt.join("byroot"), b"x").unwrap();
    assert_eq!(ids(&st.upper.join("byroot")), (1000, 2000));
    assert_eq!(ids(&mnt.join("byroot")), (0, 0));
    let made = as_user(
        3,
        3,
        "mkdir(qq{$ARGV[0]/d}, 0755) or exit($!+0); \
         symlink(q{t}, qq{$ARGV[0]/l}) or exit($!+0); \
         sysopen(my $f, qq{$ARGV[0]/f}, O_CREAT|O_WRONLY, 0644) or exit($!+0); exit(0)",
        &[&mnt.join("shared")],
    );
    assert_eq!(made, Ok(String::new()));
    for n in ["d", "l", "f"] {
        assert_eq!(ids(&st.upper.join("shared").join(n)), (1003, 2003), "{n}");
        assert_eq!(ids(&mnt.join("shared").join(n)), (3, 3), "{n}");
    }
    // A caller outside the mapping creates objects stored with the overflow id.
    let outside = as_user(
        50,
        50,
        "mkdir(qq{$ARGV[0]/o}, 0755) or exit($!+0); exit(0)",
        &[&mnt.join("shared")],
    );
    assert_eq!(outside, Ok(String::new()));
    assert_eq!(ids(&st.upper.join("shared/o")), (65534, 65534));
    assert_eq!(ids(&mnt.join("shared/o")), (65534, 65534));

    // ACLs set through the mount are stored with host ids.
    sys::set_xattr(&mnt.join("a"), ACL_ACCESS, &acl_for_user(6)).unwrap();
    let on_disk = sys::get_xattr(&st.upper.join("a"), ACL_ACCESS).unwrap();
    assert_eq!(acl_user_id(&on_disk), 1006);
    assert_eq!(
        errno_of(sys::set_xattr(
            &mnt.join("a"),
            ACL_ACCESS,
            &acl_for_user(60)
        )),
        libc::EINVAL
    );
    m.unmount().unwrap();
}

#[test]
fn squash_options_show_one_owner() {
    if !can_mount() {
        return;
    }
    for (opts, want) in [
        ("squash_to_root", (0, 0)),
        ("squash_to_uid=1234,squash_to_gid=4321", (1234, 4321)),
        ("squash_to_root,squash_to_uid=77", (77, 0)),
    ] {
        let st = Stack::new(1);
        st.lower(0)
            .file("a", b"a")
            .chown("a", 1005, 2003)
            .dir_with("d", 0o755, 42, 43);
        let m = mount(&st, opts);
        for n in ["", "a", "d"] {
            assert_eq!(ids(&m.path().join(n)), want, "{opts}: {n:?}");
        }
        fs::write(m.path().join("new"), b"n").unwrap();
        assert_eq!(ids(&m.path().join("new")), want, "{opts}: new");
        // Stored ownership is unchanged by squashing: root created it.
        assert_eq!(ids(&st.upper.join("new")), (0, 0), "{opts}");
        m.unmount().unwrap();
    }
}

#[test]
fn xattr_permissions_override_stat() {
    if !can_mount() {
        return;
    }
    let st = Stack::new(1);
    st.lower(0)
        .file_with("f", b"data", 0o644, 0, 0)
        .xattr("f", OVERRIDE, b"1005:2003:0750")
        .file_with("null", b"", 0o600, 0, 0)
        .xattr("null", OVERRIDE, b"1000:2000:0666:char-1-3")
        .dir_with("d", 0o755, 0, 0)
        .xattr("d", OVERRIDE, b"1001:2001:1777:dir");
    let m = mount(&st, &format!("{MAPPING},xattr_permissions=2"));
    let mnt = m.path();

    let f = fs::symlink_metadata(mnt.join("f")).unwrap();
    assert_eq!((f.uid(), f.gid(), f.mode()), (5, 3, libc::S_IFREG | 0o750));
    let d = fs::symlink_metadata(mnt.join("d")).unwrap();
    assert_eq!((d.uid(), d.gid(), d.mode()), (1, 1, libc::S_IFDIR | 0o1777));
    let n = fs::symlink_metadata(mnt.join("null")).unwrap();
    assert!(n.file_type().is_char_device(), "{:?}", n.file_type());
    assert_eq!((n.rdev(), n.mode() & 0o7777), (libc::makedev(1, 3), 0o666));
    assert_eq!((n.uid(), n.gid()), (0, 0));

    // Hidden: not listed, not readable, not settable.
    let listed = sys::list_xattrs(&mnt.join("f")).unwrap();
    assert!(!listed.iter().any(|x| x == OVERRIDE), "{listed:?}");
    assert_eq!(
        errno_of(sys::get_xattr(&mnt.join("f"), OVERRIDE)),
        libc::ENODATA
    );
    assert!(sys::set_xattr(&mnt.join("f"), OVERRIDE, b"0:0:0777").is_err());

    // chmod and chown write the xattr of the copied-up file; the real one keeps 0644 root.
    fs::set_permissions(mnt.join("f"), fs::Permissions::from_mode(0o640)).unwrap();
    sys::lchown(&mnt.join("f"), 2, 4).unwrap();
    let up = st.upper.join("f");
    assert_eq!(
        sys::get_xattr(&up, OVERRIDE).unwrap(),
        b"1002:2004:0640".to_vec()
    );
    let real = fs::symlink_metadata(&up).unwrap();
    assert_eq!(
        (real.uid(), real.gid(), real.mode() & 0o7777),
        (0, 0, 0o644)
    );
    let f = fs::symlink_metadata(mnt.join("f")).unwrap();
    assert_eq!((f.uid(), f.gid(), f.mode()), (2, 4, libc::S_IFREG | 0o640));
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"data");

    // New files carry an override with the caller's host ids.
    fs::write(mnt.join("new"), b"n").unwrap();
    let v = sys::get_xattr(&st.upper.join("new"), OVERRIDE).unwrap();
    let text = String::from_utf8(v).unwrap();
    assert!(text.starts_with("1000:2000:"), "{text}");
    m.unmount().unwrap();

    // Kept across a remount.
    let m = mount(&st, &format!("{MAPPING},xattr_permissions=2"));
    let f = fs::symlink_metadata(m.path().join("f")).unwrap();
    assert_eq!((f.uid(), f.gid(), f.mode()), (2, 4, libc::S_IFREG | 0o640));
    m.unmount().unwrap();
}
