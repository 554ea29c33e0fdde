//! POSIX ACLs: the fallback that matches setfacl, default ACLs in copied-up directories and over
//! whiteouts, enforcement, set-gid cleared by setfacl.

use std::fs::{self, OpenOptions};
use std::io::{self};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::common;
use crate::common::fixture::Stack;
use crate::common::live::{as_user, same};
use crate::common::posix::errno;
use crate::common::{can_mount, sys};

use super::{acl_xattr, describe, pair, perl_create, perl_read, rich_dir, set_acl, xattrs, NOBODY};

/// The fallback encoder writes what setfacl writes.
#[test]
fn acl_fallback_matches_setfacl() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (0o600, "u:65534:r"),
        (0o644, "u:65534:-"),
        (0o4755, "u:1000:rwx,g:100:r-x"),
    ];
    for (i, (mode, spec)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("f{i}"));
        fs::write(&f, b"").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(*mode)).unwrap();
        let ok = Command::new("setfacl")
            .args(["-m", spec])
            .arg(&f)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIP acl_fallback_matches_setfacl: no setfacl or no ACL support");
            return;
        }
        let got = sys::get_xattr(&f, "system.posix_acl_access").unwrap();
        assert_eq!(got, acl_xattr(*mode, spec), "mode {mode:o} spec {spec}");
    }
}

#[test]
fn default_acl_applies_in_copied_up_dir() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    rich_dir(&stack, "dir");
    let (pair, _wd) = pair(name, &stack);
    same(
        &pair,
        "new entries in a lower dir with a default ACL (copied up by the create)",
        |root, _| {
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o666)
                .open(root.join("dir/newfile"))
                .map(|_| ());
            let d = fs::create_dir(root.join("dir/newdir"));
            let mut obs = vec![format!("create: {:?} mkdir: {:?}", errno(f), errno(d))];
            for n in ["dir/newfile", "dir/newdir"] {
                let p = root.join(n);
                let mut line = describe(&p);
                // mtime is the wall clock here.
                line = line.split(" mtime=").next().unwrap_or("").to_string();
                obs.push(format!("{n}: {line} {:?}", xattrs(&p)));
            }
            obs
        },
    );
}

/// Objects created where a whiteout stands are built in the work directory; they must still
/// get the parent's default ACL (masked by their mode, and inherited by directories).
#[test]
fn default_acl_applies_over_whiteouts() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .dir("dir")
        .file("dir/f", b"f")
        .dir("dir/d")
        .file("dir/n", b"n")
        .file("dir/plain", b"p");
    let (pair, _wd) = pair(name, &stack);
    same(
        &pair,
        "files, dirs and nodes created over whiteouts under a default ACL",
        |root, _| {
            let dir = root.join("dir");
            set_acl(&dir, true, "u:1000:rwx,g:100:r-x");
            let mut obs = vec![format!(
                "unlink/rmdir: {:?} {:?} {:?}",
                errno(fs::remove_file(dir.join("f"))),
                errno(fs::remove_dir(dir.join("d"))),
                errno(fs::remove_file(dir.join("n")))
            )];
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o640)
                .open(dir.join("f"))
                .map(|_| ());
            let d = fs::create_dir(dir.join("d"));
            let n = sys::mknod(&dir.join("n"), libc::S_IFIFO | 0o666, 0, 0);
            let g = fs::write(dir.join("fresh"), b"no whiteout here");
            obs.push(format!(
                "create: {:?} {:?} {:?} {:?}",
                errno(f),
                errno(d),
                errno(n),
                errno(g)
            ));
            for n in ["dir/f", "dir/d", "dir/n", "dir/fresh"] {
                let p = root.join(n);
                let line = describe(&p);
                let line = line.split(" mtime=").next().unwrap_or("").to_string();
                obs.push(format!("{n}: {line} {:?}", xattrs(&p)));
            }
            obs
        },
    );
}

/// POSIX ACLs on lower objects decide access as on kernel overlayfs: a named-user entry can
/// grant what the mode bits refuse, and deny what they allow.
#[test]
fn posix_acls_are_enforced() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    let l = stack.lower(0);
    l.file_with("acl_grant", b"granted", 0o600, 0, 0)
        .file_with("acl_deny", b"denied", 0o644, 0, 0)
        .dir_with("acl_dir", 0o700, 0, 0)
        .file_with("acl_dir/inside", b"inside", 0o644, 0, 0);
    set_acl(&l.path("acl_grant"), false, "u:65534:r");
    set_acl(&l.path("acl_deny"), false, "u:65534:-");
    set_acl(&l.path("acl_dir"), false, "u:65534:rwx");
    let (pair, _wd) = pair(name, &stack);
    for st in [&pair.sa, &pair.sb] {
        fs::set_permissions(&st.root, fs::Permissions::from_mode(0o755)).unwrap();
    }
    same(&pair, "access decided by ACLs, as uid 65534", |root, _| {
        let cases: [(&str, &str, &str); 4] = [
            ("read, ACL grants", perl_read(), "acl_grant"),
            ("read, ACL denies", perl_read(), "acl_deny"),
            (
                "create in a 0700 dir, ACL grants rwx",
                perl_create(),
                "acl_dir/new",
            ),
            (
                "read through a 0700 dir, ACL grants x",
                perl_read(),
                "acl_dir/inside",
            ),
        ];
        cases
            .iter()
            .map(|(what, code, rel)| {
                let r = as_user(NOBODY, NOBODY, code, &[&root.join(rel)])
                    .map_err(|e| io::Error::from_raw_os_error(e).to_string());
                format!("{what}: {r:?}")
            })
            .collect::<Vec<_>>()
    });
}

/// Setting an access ACL as an owner outside the object's group clears set-group-id, as
/// chmod does (kernel `posix_acl_update_mode`; xfstests generic/375): files and
/// directories, lower and upper, and an owner in the group keeps the bit.
#[test]
fn setfacl_by_owner_outside_group_clears_sgid() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file_with("lower_file", b"f", 0o2755, NOBODY, 0)
        .dir_with("lower_dir", 0o2775, NOBODY, 0)
        .file_with("in_group", b"g", 0o2755, NOBODY, NOBODY)
        .file_with("by_root", b"r", 0o2755, NOBODY, 0);
    let (pair, _wd) = pair(name, &stack);
    for st in [&pair.sa, &pair.sb] {
        fs::set_permissions(&st.root, fs::Permissions::from_mode(0o755)).unwrap();
    }
    same(&pair, "setfacl as the owner", |root, _| {
        fs::write(root.join("upper_file"), b"u").unwrap();
        fs::create_dir(root.join("upper_dir")).unwrap();
        for (n, mode) in [("upper_file", 0o2755), ("upper_dir", 0o2775)] {
            std::os::unix::fs::chown(root.join(n), Some(NOBODY), Some(0)).unwrap();
            fs::set_permissions(root.join(n), fs::Permissions::from_mode(mode)).unwrap();
        }
        let objects = [
            "lower_file",
            "lower_dir",
            "in_group",
            "upper_file",
            "upper_dir",
        ];
        objects
            .iter()
            .chain(&["by_root"])
            .map(|n| {
                let p = root.join(n);
                // setfacl as the owner, with no supplementary group (std drops them), or
                // as root (CAP_FSETID keeps the bit).
                let id = if *n == "by_root" { 0 } else { NOBODY };
                let st = Command::new("setfacl")
                    .args(["-m", "u:1:r"])
                    .arg(&p)
                    .uid(id)
                    .gid(id)
                    .status()
                    .expect("run setfacl");
                let mode = fs::symlink_metadata(&p).map(|m| format!("{:o}", m.mode() & 0o7777));
                format!("{n}: setfacl {st} mode {mode:?}")
            })
            .collect::<Vec<_>>()
    });
}

/// A chmod that copies a lower file up is done on the copy before it is published; an
/// access ACL copied with it must not undo the new mode, and the chmod sets the ACL's
/// mask, as a chmod after the copy-up does on the kernel.
#[test]
fn chmod_of_lower_files_with_acls_sets_mode_and_mask() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    let l = stack.lower(0);
    for (n, mode) in [
        ("acl_file", 0o664),
        ("acl_setgid", 0o2775),
        ("plain", 0o644),
    ] {
        l.file_with(n, b"data", mode, 1000, 1001);
    }
    set_acl(&l.path("acl_file"), false, "u:65534:rwx,g:100:r-x");
    set_acl(&l.path("acl_setgid"), false, "u:1000:rw-");
    let (pair, _wd) = pair(name, &stack);
    same(
        &pair,
        "chmod of lower files, with and without ACLs",
        |root, _| {
            [
                ("acl_file", 0o600),
                ("acl_setgid", 0o2751),
                ("plain", 0o4710),
            ]
            .iter()
            .map(|(n, mode)| {
                let p = root.join(n);
                let r = fs::set_permissions(&p, fs::Permissions::from_mode(*mode));
                let line = describe(&p);
                // The mtime is the lower file's; ctime (the wall clock) is not shown.
                format!("{n}: chmod {:?} {line} {:?}", errno(r), xattrs(&p))
            })
            .collect::<Vec<_>>()
        },
    );
}
