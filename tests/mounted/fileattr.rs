//! Inode flags through the mount (`lsattr`/`chattr`, FS_IOC_GETFLAGS/SETFLAGS and
//! FS_IOC_FSGETXATTR/FSSETXATTR through `xfs_io`), compared with kernel overlayfs
//! (index=on, redirect_dir=on) over identical layers: the flags shown for lower and upper
//! files and directories, `chattr +i`/`+a` on lower and upper objects and the errno of every
//! change of a protected object, what lands in the upper layer (`overlay.protattr`, the real
//! flags), flags after a remount, and each system reading the other's upper.
//!
//! Skips (with a message) when not root, /dev/fuse is missing, or `chattr` is not there.

use crate::common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::fixture::Stack;
use common::live::{same, Watchdog, TEST_LIMIT};
use common::mount::{FuseMount, KernelOverlay, MountDirs};
use common::posix::errno;
use common::{can_mount, Pair};

/// The flag letters `lsattr -d` shows for `p` (its first field), or the error line.
fn lsattr(p: &Path) -> String {
    let out = Command::new("lsattr")
        .arg("-d")
        .arg(p)
        .output()
        .expect("lsattr");
    if !out.status.success() {
        return format!("error: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// `chattr ARG p`: Ok, or chattr's message without the path.
fn chattr(arg: &str, p: &Path) -> Result<(), String> {
    let out = Command::new("chattr")
        .arg(arg)
        .arg(p)
        .output()
        .expect("chattr");
    if out.status.success() {
        Ok(())
    } else {
        let e = String::from_utf8_lossy(&out.stderr);
        Err(e.split(" while ").next().unwrap_or("").to_string())
    }
}

/// `xfs_io -r -c CMD p` output, path removed.
fn xfs_io(cmd: &str, p: &Path) -> String {
    let out = Command::new("xfs_io")
        .arg("-r")
        .arg("-c")
        .arg(cmd)
        .arg(p)
        .output()
        .expect("xfs_io");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    all.replace(&p.display().to_string(), "P")
}

fn getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let out = Command::new("getfattr")
        .args(["--only-values", "-h", "-n", name])
        .arg(p)
        .output()
        .expect("getfattr");
    out.status.success().then_some(out.stdout)
}

fn have_tools(test: &str) -> bool {
    for t in ["chattr", "lsattr", "getfattr", "xfs_io"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            eprintln!("SKIP {test}: {t} not installed");
            return false;
        }
    }
    true
}

fn stack() -> Stack {
    let s = Stack::new(1);
    let l = s.lower(0);
    l.file("lf", b"lower file\n")
        .file("la", b"lower append\n")
        .file("lx", b"x\n")
        .file("lj", b"j\n")
        .file("noatime", b"A\n")
        .file("keepsA", b"A\n")
        .dir("ld")
        .file("ld/child", b"c\n")
        .dir("lda");
    let u = s.upper_layer();
    u.file("uf", b"upper file\n").dir("ud").file("ud/n", b"n\n");
    // A lower file with a flag of its own, copied up with it (ovl_copy_fileattr).
    let st = Command::new("chattr")
        .arg("+A")
        .arg(s.lowers[0].join("noatime"))
        .arg(s.lowers[0].join("keepsA"))
        .status()
        .expect("chattr");
    assert!(st.success());
    s
}

/// The errno of each change of `p` (a file), in order.
fn changes(p: &Path, dir: &Path) -> Vec<(&'static str, Result<(), i32>)> {
    let name = p.file_name().unwrap().to_string_lossy().to_string();
    vec![
        (
            "open write",
            errno(OpenOptions::new().write(true).open(p)).map(drop),
        ),
        (
            "append",
            errno(
                OpenOptions::new()
                    .append(true)
                    .open(p)
                    .and_then(|mut f| f.write_all(b"more\n")),
            ),
        ),
        (
            "truncate open",
            errno(OpenOptions::new().write(true).truncate(true).open(p)).map(drop),
        ),
        (
            "chmod",
            errno(fs::set_permissions(p, fs::Permissions::from_mode(0o600))),
        ),
        (
            "utimes now",
            errno(fs::File::open(p).and_then(|f| f.set_modified(std::time::SystemTime::now()))),
        ),
        (
            "setxattr",
            errno(
                Command::new("setfattr")
                    .args(["-n", "user.k", "-v", "1"])
                    .arg(p)
                    .status()
                    .map(|s| if s.success() { 0 } else { 1 }),
            )
            .and_then(|c| if c == 0 { Ok(()) } else { Err(libc::EPERM) }),
        ),
        (
            "link",
            errno(fs::hard_link(p, dir.join(format!("{name}.ln")))),
        ),
        (
            "rename",
            errno(fs::rename(p, dir.join(format!("{name}.mv")))),
        ),
        ("unlink", errno(fs::remove_file(p))),
        ("read", errno(fs::read(p)).map(drop)),
    ]
}

#[test]
fn chattr_lsattr_like_kernel_overlayfs() {
    if !can_mount() || !have_tools("chattr") {
        return;
    }
    let s = stack();
    let mut pair = Pair::new("fileattr", &s);
    let _wd = Watchdog::for_pair(&pair, TEST_LIMIT);
    let all = ["lf", "la", "lx", "lj", "noatime", "ld", "lda", "uf", "ud"];
    let _ = same(&pair, "lsattr before", |m, _| {
        all.iter()
            .map(|n| (*n, lsattr(&m.join(n))))
            .collect::<Vec<_>>()
    });
    let _ = same(&pair, "xfs_io lsattr before", |m, _| {
        xfs_io("lsattr", &m.join("noatime")) + &xfs_io("lsattr", &m.join("uf"))
    });
    // Protection on lower and upper files and on directories.
    let _ = same(&pair, "chattr +i/+a", |m, _| {
        vec![
            chattr("+i", &m.join("lf")),
            chattr("+a", &m.join("la")),
            chattr("+i", &m.join("uf")),
            chattr("+i", &m.join("ld")),
            chattr("+a", &m.join("ud")),
            chattr("+j", &m.join("lj")),
            chattr("-e", &m.join("lx")),
            chattr("+d", &m.join("lda")),
            chattr("+A", &m.join("noatime")),
        ]
    });
    let _ = same(&pair, "upper after chattr", |_, st| {
        all.iter()
            .map(|n| {
                let p = st.upper.join(n);
                (
                    *n,
                    p.exists(),
                    p.exists().then(|| lsattr(&p)),
                    getxattr(&p, "trusted.overlay.protattr"),
                )
            })
            .collect::<Vec<_>>()
    });
    let _ = same(&pair, "lsattr after chattr", |m, _| {
        all.iter()
            .map(|n| (*n, lsattr(&m.join(n))))
            .collect::<Vec<_>>()
    });
    let _ = same(&pair, "xfs_io lsattr of protected", |m, _| {
        xfs_io("lsattr", &m.join("lf")) + &xfs_io("lsattr", &m.join("la"))
    });
    let _ = same(&pair, "copy-up keeps A", |m, st| {
        let r = errno(fs::OpenOptions::new().append(true).open(m.join("keepsA"))).map(drop);
        (
            r,
            lsattr(&m.join("keepsA")),
            lsattr(&st.upper.join("keepsA")),
        )
    });
    let _ = same(&pair, "changes of an immutable lower file", |m, _| {
        changes(&m.join("lf"), m)
    });
    let _ = same(&pair, "changes of an append-only lower file", |m, _| {
        changes(&m.join("la"), m)
    });
    let _ = same(&pair, "changes of an immutable upper file", |m, _| {
        changes(&m.join("uf"), m)
    });
    let _ = same(&pair, "entries of protected directories", |m, _| {
        vec![
            ("create in +i", errno(fs::write(m.join("ld/new"), b"x"))),
            ("mkdir in +i", errno(fs::create_dir(m.join("ld/nd")))),
            ("unlink in +i", errno(fs::remove_file(m.join("ld/child")))),
            ("rmdir +i", errno(fs::remove_dir(m.join("ld")))),
            ("rename +i", errno(fs::rename(m.join("ld"), m.join("ld2")))),
            ("create in +a", errno(fs::write(m.join("ud/new"), b"x"))),
            ("unlink in +a", errno(fs::remove_file(m.join("ud/n")))),
            (
                "rename out of +a",
                errno(fs::rename(m.join("ud/n"), m.join("n2"))),
            ),
        ]
    });
    let _ = same(&pair, "read back", |m, _| {
        ["lf", "la", "uf"]
            .iter()
            .map(|n| errno(fs::read(m.join(n))))
            .collect::<Vec<_>>()
    });
    // Through xfs_io (FS_IOC_FSSETXATTR): +a on the upper file, -i on the lower one.
    let _ = same(&pair, "xfs_io chattr", |m, _| {
        xfs_io("chattr -i", &m.join("uf"))
            + &xfs_io("chattr +a", &m.join("uf"))
            + &xfs_io("lsattr", &m.join("uf"))
    });
    let _ = same(&pair, "protattr after xfs_io", |_, st| {
        getxattr(&st.upper.join("uf"), "trusted.overlay.protattr")
    });
    if let Err(r) = pair.remount() {
        panic!("{r}");
    }
    let _ = same(&pair, "lsattr after remount", |m, _| {
        all.iter()
            .map(|n| (*n, lsattr(&m.join(n))))
            .collect::<Vec<_>>()
    });
    let _ = same(&pair, "still protected after remount", |m, _| {
        vec![
            errno(OpenOptions::new().write(true).open(m.join("lf"))).map(drop),
            errno(fs::remove_file(m.join("la"))),
            errno(fs::remove_file(m.join("uf"))),
        ]
    });
    // chattr -i/-a clears the protection and removes the xattr.
    let _ = same(&pair, "chattr -i", |m, st| {
        let r = (chattr("-i", &m.join("lf")), chattr("-a", &m.join("la")));
        (
            r,
            lsattr(&m.join("lf")),
            getxattr(&st.upper.join("lf"), "trusted.overlay.protattr"),
            getxattr(&st.upper.join("la"), "trusted.overlay.protattr"),
            errno(fs::write(m.join("lf"), b"now writable\n")),
            errno(fs::remove_file(m.join("la"))),
        )
    });
    drop(_wd);
    drop(pair);
}

/// Each system reads the protection the other stored in its upper layer.
#[test]
fn protattr_cross_mount() {
    if !can_mount() || !have_tools("chattr") {
        return;
    }
    let probe = |m: &Path| {
        (
            lsattr(&m.join("lf")),
            lsattr(&m.join("la")),
            lsattr(&m.join("ld")),
            errno(OpenOptions::new().write(true).open(m.join("lf"))).map(drop),
            errno(OpenOptions::new().append(true).open(m.join("la"))).map(drop),
            errno(fs::remove_file(m.join("la"))),
            errno(fs::write(m.join("ld/new"), b"x")),
        )
    };
    let set = |m: &Path| {
        chattr("+i", &m.join("lf")).unwrap();
        chattr("+a", &m.join("la")).unwrap();
        chattr("+i", &m.join("ld")).unwrap();
    };
    // Written by the kernel, read by rlayerfs; written by rlayerfs, read by the kernel.
    let sk = stack();
    let k = KernelOverlay::mount(&sk).expect("kernel mount");
    set(k.path());
    let kernel_view = probe(k.path());
    k.unmount().expect("unmount");
    let f = FuseMount::mount_dirs(&MountDirs::of(&sk)).expect("fuse mount");
    let fuse_reads_kernel = probe(f.path());
    f.unmount().expect("unmount");
    assert_eq!(
        fuse_reads_kernel, kernel_view,
        "rlayerfs reading a kernel upper"
    );

    let sf = stack();
    let f = FuseMount::mount_dirs(&MountDirs::of(&sf)).expect("fuse mount");
    set(f.path());
    f.unmount().expect("unmount");
    for n in ["lf", "la", "ld"] {
        assert_eq!(
            getxattr(&sf.upper.join(n), "trusted.overlay.protattr"),
            getxattr(&sk.upper.join(n), "trusted.overlay.protattr"),
            "protattr of {n}"
        );
    }
    let k = KernelOverlay::mount(&sf).expect("kernel mount");
    let kernel_reads_fuse = probe(k.path());
    k.unmount().expect("unmount");
    assert_eq!(
        kernel_reads_fuse, kernel_view,
        "kernel reading an rlayerfs upper"
    );
}

/// `chattr` changes the file's ctime and `stat` right after it shows the new one
/// (xfstests generic/277: the FUSE client keeps cached attributes across the ioctl unless
/// the daemon drops them), on an upper file (`+A`, a real flag) and on a lower one (`+i`,
/// copied up, stored in `overlay.protattr`); and `copy_file_range` into a file made
/// immutable after it was opened fails with EPERM (generic/553), as on kernel overlayfs.
#[test]
fn chattr_updates_ctime_and_immutable_refuses_copy_file_range() {
    if !can_mount() || !have_tools("chattr") {
        return;
    }
    let s = stack();
    let pair = Pair::new("fileattr-ctime", &s);
    let _wd = Watchdog::for_pair(&pair, TEST_LIMIT);
    let ctime = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = fs::symlink_metadata(p).expect("stat");
        (m.ctime(), m.ctime_nsec())
    };
    let _ = same(&pair, "ctime changes with chattr", |m, _| {
        ["uf", "lf"]
            .iter()
            .zip(["+A", "+i"])
            .map(|(n, flag)| {
                let p = m.join(n);
                let before = ctime(&p);
                std::thread::sleep(std::time::Duration::from_millis(30));
                let r = chattr(flag, &p);
                (*n, r, ctime(&p) != before)
            })
            .collect::<Vec<_>>()
    });
    let _ = same(&pair, "copy_file_range into an immutable file", |m, _| {
        let src = fs::File::open(m.join("lx")).expect("open source");
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.join("uf"))
            .expect("open destination");
        let before = common::posix::copy_file_range(&src, 0, &dst, 0, 2);
        let set = chattr("+i", &m.join("uf"));
        let during = common::posix::copy_file_range(&src, 0, &dst, 0, 2);
        let cleared = (chattr("-i", &m.join("uf")), chattr("-i", &m.join("lf")));
        let after = common::posix::copy_file_range(&src, 0, &dst, 0, 2);
        (
            before,
            set,
            during,
            cleared,
            after,
            fs::read(m.join("uf")).ok(),
        )
    });
    drop(_wd);
    drop(pair);
}
