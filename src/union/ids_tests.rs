//! Core tests of ownership through the mount (no FUSE): uid/gid mappings on stat, chown,
//! create and POSIX ACL xattrs, squashing, and the ownership override xattr
//! (`xattr_permissions`), including an unprivileged daemon standing in for device nodes.

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::Error;
use crate::format::override_stat::{OverrideStat, CONTAINERS_OVERRIDE};
use crate::union::attr::SetAttr;
use crate::union::ids::tests::map;
use crate::union::ids::{IdOptions, OVERFLOW_ID};
use crate::union::mutate::NewKind;
use crate::union::tests::{set_xattr, walk, Fixture};
use crate::union::{Caller, UnionFs, ROOT};

/// Stored uids 1000..1010 show as 0..10, stored gids 2000..2010 as 0..10 (`C:H:S` with the
/// stored id first, as containers/storage and fuse-overlayfs read it).
fn mapped() -> IdOptions {
    IdOptions {
        uid_maps: vec![map(1000, 0, 10)],
        gid_maps: vec![map(2000, 0, 10)],
        ..IdOptions::default()
    }
}

fn caller(uid: u32, gid: u32) -> Caller {
    Caller { uid, gid, pid: 0 }
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

fn raw_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let fd = rustix::fs::open(
        p,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    crate::sys::get_xattr(std::os::fd::AsFd::as_fd(&fd), OsStr::new(name)).unwrap()
}

fn override_of(p: &Path) -> Option<OverrideStat> {
    raw_xattr(p, CONTAINERS_OVERRIDE).map(|v| OverrideStat::parse(&v).unwrap())
}

fn new_object(fs: &UnionFs, name: &str, kind: NewKind<'_>, mode: u32, who: Caller) {
    fs.create(ROOT, OsStr::new(name), kind, mode, 0o022, who)
        .unwrap();
}

fn set_owner(fs: &UnionFs, path: &str, uid: Option<u32>, gid: Option<u32>) -> Result<(), Error> {
    let ino = walk(fs, path).unwrap();
    fs.setattr(
        ino,
        &SetAttr {
            uid,
            gid,
            ..SetAttr::default()
        },
    )
    .map(|_| ())
}

/// A POSIX ACL xattr value: version 2, then (tag, perm, id) entries.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// A valid access ACL naming user `uid` (tags: USER_OBJ, USER, GROUP_OBJ, MASK, OTHER).
fn acl_for_user(uid: u32) -> Vec<u8> {
    const UNDEFINED: u32 = u32::MAX;
    acl(&[
        (0x01, 6, UNDEFINED),
        (0x02, 4, uid),
        (0x04, 4, UNDEFINED),
        (0x10, 4, UNDEFINED),
        (0x20, 0, UNDEFINED),
    ])
}

/// The id of the `ACL_USER` entry of an ACL value.
fn acl_user_id(v: &[u8]) -> u32 {
    let e = v[4..]
        .chunks_exact(8)
        .find(|e| u16::from_le_bytes([e[0], e[1]]) == 0x02)
        .expect("an ACL_USER entry");
    u32::from_le_bytes([e[4], e[5], e[6], e[7]])
}

#[test]
fn mapped_ids_in_stat_chown_and_create() {
    let f = Fixture::new(1);
    f.write(&f.l(0), "a", "a");
    chown(&f.l(0).join("a"), 1005, 2003);
    f.write(&f.l(0), "hosts", "owned by host root");
    f.mkdir(&f.l(0), "d");
    chown(&f.l(0).join("d"), 1000, 2000);
    let fs = f.fs_with(mapped());

    let a = fs.getattr(walk(&fs, "a").unwrap()).unwrap();
    assert_eq!((a.uid, a.gid), (5, 3));
    let h = fs.getattr(walk(&fs, "hosts").unwrap()).unwrap();
    assert_eq!((h.uid, h.gid), (OVERFLOW_ID, OVERFLOW_ID));
    let d = fs.lookup(ROOT, OsStr::new("d")).unwrap();
    assert_eq!((d.uid, d.gid), (0, 0), "lookup maps too");

    // chown stores host ids.
    set_owner(&fs, "a", Some(7), Some(1)).unwrap();
    assert_eq!(owner(&f.u().join("a")), (1007, 2001));
    let a = fs.getattr(walk(&fs, "a").unwrap()).unwrap();
    assert_eq!((a.uid, a.gid), (7, 1));
    // An id outside the mapping cannot be stored.
    assert_eq!(set_owner(&fs, "a", Some(10), None), Err(Error::Invalid));
    assert_eq!(set_owner(&fs, "a", None, Some(65534)), Err(Error::Invalid));
    assert_eq!(
        owner(&f.u().join("a")),
        (1007, 2001),
        "refused chown changed the owner"
    );

    // New objects belong to the caller's host ids.
    new_object(
        &fs,
        "file",
        NewKind::File {
            flags: libc::O_RDWR,
        },
        0o644,
        caller(2, 4),
    );
    new_object(&fs, "dir", NewKind::Dir, 0o755, caller(3, 3));
    new_object(&fs, "link", NewKind::Symlink(b"file"), 0o777, caller(4, 5));
    new_object(
        &fs,
        "fifo",
        NewKind::Node { rdev: 0 },
        libc::S_IFIFO | 0o600,
        caller(9, 9),
    );
    for (name, host, shown) in [
        ("file", (1002, 2004), (2, 4)),
        ("dir", (1003, 2003), (3, 3)),
        ("link", (1004, 2005), (4, 5)),
        ("fifo", (1009, 2009), (9, 9)),
    ] {
        assert_eq!(owner(&f.u().join(name)), host, "{name} on disk");
        let at = fs.getattr(walk(&fs, name).unwrap()).unwrap();
        assert_eq!((at.uid, at.gid), shown, "{name} through the mount");
    }
    // A caller outside the mapping creates objects stored with the overflow id.
    new_object(&fs, "outside", NewKind::Dir, 0o755, caller(10, 0));
    assert_eq!(owner(&f.u().join("outside")), (OVERFLOW_ID, 2000));
    let at = fs.getattr(walk(&fs, "outside").unwrap()).unwrap();
    assert_eq!((at.uid, at.gid), (OVERFLOW_ID, 0));
}

#[test]
fn acl_ids_are_mapped_both_ways() {
    let f = Fixture::new(1);
    f.write(&f.l(0), "a", "a");
    f.write(&f.l(0), "b", "b");
    f.write(&f.l(0), "c", "c");
    set_xattr(
        &f.l(0).join("b"),
        "system.posix_acl_access",
        &acl_for_user(1009),
    );
    set_xattr(
        &f.l(0).join("c"),
        "system.posix_acl_access",
        &acl_for_user(5),
    );
    let fs = f.fs_with(mapped());
    let name = OsStr::new("system.posix_acl_access");

    let b = walk(&fs, "b").unwrap();
    assert_eq!(acl_user_id(&fs.getxattr(b, name).unwrap()), 9);
    let c = walk(&fs, "c").unwrap();
    assert_eq!(acl_user_id(&fs.getxattr(c, name).unwrap()), OVERFLOW_ID);

    let a = walk(&fs, "a").unwrap();
    fs.setxattr(a, name, &acl_for_user(6), 0, Caller::ROOT)
        .unwrap();
    let on_disk = raw_xattr(&f.u().join("a"), "system.posix_acl_access").unwrap();
    assert_eq!(acl_user_id(&on_disk), 1006);
    assert_eq!(acl_user_id(&fs.getxattr(a, name).unwrap()), 6);
    assert_eq!(
        fs.setxattr(a, name, &acl_for_user(20), 0, Caller::ROOT),
        Err(Error::Invalid)
    );
    let on_disk = raw_xattr(&f.u().join("a"), "system.posix_acl_access").unwrap();
    assert_eq!(acl_user_id(&on_disk), 1006, "refused ACL changed the disk");
}

#[test]
fn squash_shows_one_owner_and_tolerates_unmapped_ids() {
    let f = Fixture::new(1);
    f.write(&f.l(0), "a", "a");
    chown(&f.l(0).join("a"), 1001, 2001);
    f.write(&f.l(0), "b", "b");
    chown(&f.l(0).join("b"), 4242, 4343);
    let ids = IdOptions {
        squash_uid: Some(7),
        squash_gid: Some(8),
        ..mapped()
    };
    let fs = f.fs_with(ids);
    for name in ["", "a", "b"] {
        let at = fs.getattr(walk(&fs, name).unwrap()).unwrap();
        assert_eq!((at.uid, at.gid), (7, 8), "{name:?}");
    }
    // Storing is still mapped; an unmapped id is ignored instead of refused.
    set_owner(&fs, "a", Some(3), None).unwrap();
    assert_eq!(owner(&f.u().join("a")), (1003, 2001));
    set_owner(&fs, "a", Some(50), Some(60)).unwrap();
    assert_eq!(owner(&f.u().join("a")), (1003, 2001));
    new_object(&fs, "n", NewKind::Dir, 0o755, caller(100, 100));
    let at = fs.getattr(walk(&fs, "n").unwrap()).unwrap();
    assert_eq!((at.uid, at.gid), (7, 8));
}

#[test]
fn override_stat_is_read_written_hidden_and_copied_up() {
    let f = Fixture::new(1);
    let l = f.l(0);
    f.write(&l, "f", "data");
    std::fs::set_permissions(l.join("f"), std::fs::Permissions::from_mode(0o644)).unwrap();
    set_xattr(&l.join("f"), CONTAINERS_OVERRIDE, b"1005:2003:0750");
    f.write(&l, "null", "");
    set_xattr(&l.join("null"), CONTAINERS_OVERRIDE, b"0:0:0666:char-1-3");
    f.mkdir(&l, "d");
    set_xattr(&l.join("d"), CONTAINERS_OVERRIDE, b"1001:2001:1777:dir");
    f.write(&l, "old", "");
    set_xattr(
        &l.join("old"),
        "user.fuseoverlayfs.override_stat",
        b"1003:2004:700",
    );
    f.write(&l, "bad", "");
    set_xattr(&l.join("bad"), CONTAINERS_OVERRIDE, b"garbage");
    let fs = f.fs_with(IdOptions {
        override_write: Some(CONTAINERS_OVERRIDE),
        ..mapped()
    });

    let at = |p: &str| fs.getattr(walk(&fs, p).unwrap()).unwrap();
    let a = at("f");
    assert_eq!((a.mode, a.uid, a.gid), (libc::S_IFREG | 0o750, 5, 3));
    let n = at("null");
    assert_eq!(n.mode, libc::S_IFCHR | 0o666);
    assert_eq!(n.rdev, libc::makedev(1, 3));
    assert_eq!((n.uid, n.size), (OVERFLOW_ID, 0));
    let d = at("d");
    assert_eq!((d.mode, d.uid, d.gid), (libc::S_IFDIR | 0o1777, 1, 1));
    let o = at("old");
    assert_eq!((o.mode, o.uid, o.gid), (libc::S_IFREG | 0o700, 3, 4));
    let b = at("bad");
    assert_eq!(
        b.mode & libc::S_IFMT,
        libc::S_IFREG,
        "malformed value is ignored"
    );
    // lookup (what the kernel caches) agrees with getattr.
    let looked = fs.lookup(ROOT, OsStr::new("null")).unwrap();
    assert_eq!((looked.mode, looked.rdev), (n.mode, n.rdev));

    // The override xattrs are not visible through the mount.
    let fi = walk(&fs, "f").unwrap();
    let listed = fs.listxattr(fi).unwrap();
    assert!(
        !listed
            .iter()
            .any(|n| n.to_string_lossy().contains("override_stat")),
        "{listed:?}"
    );
    assert!(fs.getxattr(fi, OsStr::new(CONTAINERS_OVERRIDE)).is_err());
    assert!(fs
        .setxattr(
            fi,
            OsStr::new(CONTAINERS_OVERRIDE),
            b"0:0:0777",
            0,
            Caller::ROOT
        )
        .is_err());

    // chmod and chown write the xattr (copied up with it); the real object stays.
    let ino = walk(&fs, "f").unwrap();
    fs.setattr(
        ino,
        &SetAttr {
            mode: Some(0o640),
            ..SetAttr::default()
        },
    )
    .unwrap();
    let up = f.u().join("f");
    assert_eq!(std::fs::metadata(&up).unwrap().mode() & 0o7777, 0o644);
    assert_eq!(
        override_of(&up).map(|o| o.format()).as_deref(),
        Some("1005:2003:0640")
    );
    set_owner(&fs, "f", Some(2), None).unwrap();
    assert_eq!(
        override_of(&up).map(|o| o.format()).as_deref(),
        Some("1002:2003:0640")
    );
    assert_eq!(owner(&up), owner(&l.join("f")), "real owner changed");
    let a = at("f");
    assert_eq!((a.mode, a.uid, a.gid), (libc::S_IFREG | 0o640, 2, 3));
    assert_eq!(set_owner(&fs, "f", Some(11), None), Err(Error::Invalid));

    // Copy-up for a write keeps the xattr of the device stand-in.
    set_owner(&fs, "null", None, Some(5)).unwrap();
    assert_eq!(
        override_of(&f.u().join("null"))
            .map(|o| o.format())
            .as_deref(),
        Some("0:2005:0666:char-1-3")
    );

    // New objects get an override with the caller's host ids and their mode.
    new_object(
        &fs,
        "n",
        NewKind::File {
            flags: libc::O_RDWR,
        },
        0o640,
        caller(1, 1),
    );
    assert_eq!(
        override_of(&f.u().join("n")).map(|o| o.format()).as_deref(),
        Some("1001:2001:0640")
    );
    new_object(&fs, "nd", NewKind::Dir, 0o750, caller(0, 0));
    assert_eq!(
        override_of(&f.u().join("nd"))
            .map(|o| o.format())
            .as_deref(),
        Some("1000:2000:0750")
    );
    let nd = at("nd");
    assert_eq!((nd.mode, nd.uid, nd.gid), (libc::S_IFDIR | 0o750, 0, 0));
}

/// As an unprivileged daemon (this thread's credentials only): devices cannot be made, so
/// `xattr_permissions` makes an empty file that shows as the device, and chown to any id
/// works through the xattr.
#[test]
fn unprivileged_daemon_stands_in_devices_and_foreign_owners() {
    if !rustix::process::geteuid().is_root() {
        println!("SKIP: needs root to switch this thread to an unprivileged user");
        return;
    }
    const NOBODY: u32 = 65534;
    let f = Fixture::new(1);
    f.write(&f.l(0), "lower", "x");
    let mut all = vec![f.root.clone()];
    for e in walkdir(&f.root) {
        all.push(e);
    }
    for p in &all {
        chown(p, NOBODY, NOBODY);
    }
    let fixture = &f;
    std::thread::scope(|s| {
        s.spawn(move || {
            use rustix::process::{Gid, Uid};
            rustix::thread::set_thread_groups(&[]).unwrap();
            rustix::thread::set_thread_res_gid(
                Gid::from_raw(NOBODY),
                Gid::from_raw(NOBODY),
                Gid::from_raw(NOBODY),
            )
            .unwrap();
            rustix::thread::set_thread_res_uid(
                Uid::from_raw(NOBODY),
                Uid::from_raw(NOBODY),
                Uid::from_raw(NOBODY),
            )
            .unwrap();
            let fs = fixture.fs_with(IdOptions {
                override_write: Some(CONTAINERS_OVERRIDE),
                ..IdOptions::default()
            });
            let dev = libc::makedev(1, 3);
            new_object(
                &fs,
                "null",
                NewKind::Node { rdev: dev },
                libc::S_IFCHR | 0o666,
                caller(0, 0),
            );
            let real = std::fs::symlink_metadata(fixture.u().join("null")).unwrap();
            assert!(real.file_type().is_file(), "stand-in is a regular file");
            assert_eq!(
                override_of(&fixture.u().join("null"))
                    .map(|o| o.format())
                    .as_deref(),
                Some("0:0:0644:char-1-3"),
                "mode 0666 under umask 022"
            );
            let at = fs.getattr(walk(&fs, "null").unwrap()).unwrap();
            assert_eq!((at.mode, at.rdev), (libc::S_IFCHR | 0o644, dev));
            assert_eq!((at.uid, at.gid), (0, 0));
            // chown to ids the daemon does not own.
            set_owner(&fs, "lower", Some(4242), Some(4343)).unwrap();
            let at = fs.getattr(walk(&fs, "lower").unwrap()).unwrap();
            assert_eq!((at.uid, at.gid), (4242, 4343));
            assert_eq!(owner(&fixture.u().join("lower")), (NOBODY, NOBODY));
        });
    });
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walkdir(&p));
        }
        out.push(p);
    }
    out
}
