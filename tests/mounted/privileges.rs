//! Permission checks as an unprivileged user, and the set-id bits and ctime that chown, write,
//! truncate and fallocate leave.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common;
use crate::common::fixture::Stack;
use crate::common::live::{as_user, same};
use crate::common::posix::errno;
use crate::common::{can_mount, sys};

use super::{capability_v2, describe, pair, perl_create, perl_read, perl_write, xattrs, NOBODY};

#[test]
fn permissions_as_unprivileged_user() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(2);
    stack
        .lower(1)
        .file_with("secret", b"secret", 0o600, 0, 0)
        .file_with("public", b"public", 0o644, 0, 0)
        .file_with("group", b"group", 0o640, 0, NOBODY)
        .dir_with("rootdir", 0o755, 0, 0)
        .file_with("rootdir/f", b"f", 0o644, 0, 0)
        .dir_with("private", 0o700, 0, 0)
        .file_with("private/f", b"pf", 0o644, 0, 0)
        .dir_with("tmp", 0o1777, 0, 0)
        .file_with("tmp/rootfile", b"r", 0o666, 0, 0)
        .dir_with("mine", 0o755, NOBODY, NOBODY)
        .file_with("mine/f", b"m", 0o600, NOBODY, NOBODY);
    stack
        .lower(0)
        .dir_with("rootdir", 0o755, 0, 0)
        .file_with("rootdir/g", b"g", 0o600, 0, 0);
    let (pair, _wd) = pair(name, &stack);
    for st in [&pair.sa, &pair.sb] {
        // The temporary directory is 0700: let the unprivileged user reach the mounts.
        fs::set_permissions(&st.root, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mkdir = r#"mkdir($ARGV[0], 0755) or exit($!+0); exit 0;"#;
    let unlink = r#"unlink($ARGV[0]) or exit($!+0); exit 0;"#;
    let chmod = r#"chmod(0777, $ARGV[0]) or exit($!+0); exit 0;"#;
    let rename = r#"rename($ARGV[0], $ARGV[1]) or exit($!+0); exit 0;"#;
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        ("read 0600 root file", perl_read(), vec!["secret"]),
        ("read 0644 root file", perl_read(), vec!["public"]),
        ("read 0640 root:nobody file", perl_read(), vec!["group"]),
        ("write 0644 root file", perl_write(), vec!["public"]),
        (
            "create in 0755 root dir",
            perl_create(),
            vec!["rootdir/new"],
        ),
        ("mkdir in 0755 root dir", mkdir, vec!["rootdir/newdir"]),
        ("unlink in 0755 root dir", unlink, vec!["rootdir/f"]),
        (
            "read 0600 file of the upper lower layer",
            perl_read(),
            vec!["rootdir/g"],
        ),
        (
            "rename in 0755 root dir",
            rename,
            vec!["rootdir/f", "rootdir/f2"],
        ),
        ("traverse 0700 root dir", perl_read(), vec!["private/f"]),
        ("chmod root file", chmod, vec!["public"]),
        ("create in 1777 dir", perl_create(), vec!["tmp/mine"]),
        ("unlink root file in 1777 dir", unlink, vec!["tmp/rootfile"]),
        (
            "write 0666 root file in 1777 dir",
            perl_write(),
            vec!["tmp/rootfile"],
        ),
        ("create in own dir", perl_create(), vec!["mine/new"]),
        ("read own 0600 file", perl_read(), vec!["mine/f"]),
        ("chmod own file", chmod, vec!["mine/f"]),
        ("unlink own file", unlink, vec!["mine/f"]),
        (
            "create in root of mount (0755 root)",
            perl_create(),
            vec!["x"],
        ),
    ];
    same(&pair, "syscalls as uid/gid 65534", |root, _| {
        let mut obs = Vec::new();
        for (what, code, args) in &cases {
            let paths: Vec<PathBuf> = args.iter().map(|a| root.join(a)).collect();
            let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
            let r = as_user(NOBODY, NOBODY, code, &refs)
                .map_err(|e| io::Error::from_raw_os_error(e).to_string());
            obs.push(format!("{what}: {r:?}"));
        }
        // Root copies the secret up; the copy must stay unreadable.
        let r = errno(sys::set_xattr(&root.join("secret"), "user.x", b"1"));
        obs.push(format!("root setxattr secret: {r:?}"));
        let r = as_user(NOBODY, NOBODY, perl_read(), &[&root.join("secret")])
            .map_err(|e| io::Error::from_raw_os_error(e).to_string());
        obs.push(format!("read copied-up 0600 root file: {r:?}"));
        obs
    });
}

/// Under `FUSE_HANDLE_KILLPRIV_V2` the daemon clears the bits (`union::setid`), through
/// FUSE passthrough writes too: compared with kernel overlayfs.
#[test]
fn chown_write_truncate_drop_privileges() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    let l = stack.lower(0);
    l.file_with("suid_cap", b"x", 0o4755, 0, 0)
        .xattr("suid_cap", "security.capability", &capability_v2())
        .file_with("sgid_cap", b"x", 0o2755, 0, 0)
        .xattr("sgid_cap", "security.capability", &capability_v2())
        .file_with("cap", b"x", 0o755, 0, 0)
        .xattr("cap", "security.capability", &capability_v2())
        .file_with("root_write_suid", b"x", 0o6755, 0, 0)
        .file_with("suid_open", b"x", 0o4777, 0, 0)
        .file_with("sgid_open", b"x", 0o2777, 0, 0)
        .file_with("suid_trunc", b"x", 0o4777, 0, 0)
        .file_with("sgid_noexec", b"x", 0o2666, 0, 0)
        // Set-group-id without group-execute stays when the writer is in the group.
        .file_with("sgid_noexec_member", b"x", 0o2666, 0, NOBODY);
    let (pair, _wd) = pair(name, &stack);
    for st in [&pair.sa, &pair.sb] {
        fs::set_permissions(&st.root, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let append = r#"open(my $f, ">>", $ARGV[0]) or exit($!+0); print $f "y"; close($f) or exit($!+0); exit 0;"#;
    let trunc = r#"truncate($ARGV[0], 0) or exit($!+0); exit 0;"#;
    same(&pair, "privileges after chown/write/truncate", |root, _| {
        let mut obs = vec![
            format!(
                "root chown suid_cap: {:?}",
                errno(sys::lchown(&root.join("suid_cap"), 1000, 1000))
            ),
            format!(
                "root chown sgid_cap (same owner): {:?}",
                errno(sys::lchown(&root.join("sgid_cap"), 0, 0))
            ),
            format!(
                "root write cap: {:?}",
                errno(
                    OpenOptions::new()
                        .append(true)
                        .open(root.join("cap"))
                        .and_then(|mut f| f.write_all(b"y"))
                )
            ),
            format!(
                "root write root_write_suid: {:?}",
                errno(
                    OpenOptions::new()
                        .append(true)
                        .open(root.join("root_write_suid"))
                        .and_then(|mut f| f.write_all(b"y"))
                )
            ),
        ];
        for (n, code) in [
            ("suid_open", append),
            ("sgid_open", append),
            ("suid_trunc", trunc),
            ("sgid_noexec", append),
            ("sgid_noexec_member", append),
        ] {
            obs.push(format!(
                "nobody {} {n}: {:?}",
                if code == append { "write" } else { "truncate" },
                as_user(NOBODY, NOBODY, code, &[&root.join(n)])
            ));
        }
        for n in [
            "suid_cap",
            "sgid_cap",
            "cap",
            "root_write_suid",
            "suid_open",
            "sgid_open",
            "suid_trunc",
            "sgid_noexec",
            "sgid_noexec_member",
        ] {
            let p = root.join(n);
            let line = describe(&p);
            let line = line.split(" mtime=").next().unwrap_or("").to_string();
            obs.push(format!("{n}: {line} {:?}", xattrs(&p)));
        }
        obs
    });
}

/// `chown(path, -1, -1)` changes nothing but ctime (pjdfstest chown/00.t): the kernel
/// sends a SETATTR with no attribute set, which must still reach the upper object.
#[test]
fn chown_to_no_owner_moves_ctime() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack.lower(0).file("lower", b"l").dir("lowerdir");
    let (pair, _wd) = pair(name, &stack);
    same(&pair, "chown -1 -1", |root, _| {
        let _ = fs::write(root.join("file"), b"f");
        let _ = fs::create_dir(root.join("dir"));
        let _ = std::os::unix::fs::symlink("t", root.join("link"));
        ["file", "dir", "link", "lower", "lowerdir"]
            .iter()
            .map(|n| {
                let p = root.join(n);
                let ctime = || {
                    fs::symlink_metadata(&p)
                        .map(|m| (m.ctime(), m.ctime_nsec()))
                        .ok()
                };
                let before = ctime();
                // More than a tick of the coarse clock ctime is taken from.
                std::thread::sleep(std::time::Duration::from_millis(30));
                let r = errno(std::os::unix::fs::lchown(&p, None, None));
                let after = ctime();
                format!(
                    "{n}: {r:?} ctime moved: {}",
                    before.is_some() && after > before
                )
            })
            .collect::<Vec<_>>()
    });
}

/// fallocate, punch hole and zero range by the owner outside the file's group drop
/// set-group-id (and set-user-id), as on kernel overlayfs (xfstests generic/683-685), for
/// lower and upper files; root keeps the bits.
#[test]
fn fallocate_by_owner_outside_group_drops_set_ids() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file_with("sgid", b"0123456789", 0o2666, NOBODY, 0)
        .file_with("both", b"0123456789", 0o6666, NOBODY, 0)
        .file_with("punch", b"0123456789", 0o2666, NOBODY, 0)
        .file_with("zero", b"0123456789", 0o2666, NOBODY, 0)
        .file_with("by_root", b"0123456789", 0o2666, NOBODY, 0);
    let (pair, _wd) = pair(name, &stack);
    for st in [&pair.sa, &pair.sb] {
        fs::set_permissions(&st.root, fs::Permissions::from_mode(0o755)).unwrap();
    }
    same(&pair, "fallocate as the owner", |root, _| {
        fs::write(root.join("upper"), b"0123456789").unwrap();
        std::os::unix::fs::chown(root.join("upper"), Some(NOBODY), Some(0)).unwrap();
        fs::set_permissions(root.join("upper"), fs::Permissions::from_mode(0o2666)).unwrap();
        [
            ("sgid", &["-l", "8192"][..]),
            ("both", &["-l", "8192"][..]),
            ("punch", &["-p", "-o", "0", "-l", "4"][..]),
            ("zero", &["-z", "-o", "0", "-l", "4"][..]),
            ("upper", &["-l", "8192"][..]),
            ("by_root", &["-l", "8192"][..]),
        ]
        .iter()
        .map(|(n, args)| {
            let p = root.join(n);
            let id = if *n == "by_root" { 0 } else { NOBODY };
            let st = Command::new("fallocate")
                .args(*args)
                .arg(&p)
                .uid(id)
                .gid(id)
                .status()
                .expect("run fallocate");
            let mode = fs::symlink_metadata(&p).map(|m| format!("{:o}", m.mode() & 0o7777));
            format!("{n}: fallocate {st} mode {mode:?}")
        })
        .collect::<Vec<_>>()
    });
}
