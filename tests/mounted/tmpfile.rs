//! Unnamed files (`open(2)` with `O_TMPFILE`, FUSE_TMPFILE) and birth times (statx
//! `STATX_BTIME`, FUSE_STATX) through the mount, each observation compared with kernel
//! overlayfs (`index=on,redirect_dir=on`) over a copy of the same layers.

use crate::common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::fixture::Stack;
use common::live::{as_user, same, Watchdog, TEST_LIMIT};
use common::posix::{self, LinkVia};
use common::{can_mount, Pair};

const NOBODY: u32 = 65534;

fn pair(label: &str, stack: &Stack) -> (Pair, Watchdog) {
    let p = Pair::new(label, stack);
    let wd = Watchdog::for_pair(&p, TEST_LIMIT);
    (p, wd)
}

/// Type, mode, owner, size and link count of an open file or a path.
fn meta(m: &fs::Metadata) -> String {
    format!(
        "mode={:o} owner={}:{} size={} nlink={}",
        m.mode(),
        m.uid(),
        m.gid(),
        m.len(),
        m.nlink()
    )
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) => vec![format!("ERROR {}", e.raw_os_error().unwrap_or(0))],
    };
    v.sort();
    v
}

/// `O_TMPFILE` in a lower-only directory three levels down (the parent chain is copied
/// up), written, then named by `linkat` through `AT_EMPTY_PATH` and through
/// `/proc/self/fd`; one never named leaves nothing behind; `O_EXCL` ones cannot be named;
/// mode, owner and set-group-id inheritance (also for a caller outside the directory's
/// group, whose set-group-id bit is dropped) as the kernel's; everything stays after a
/// remount.
#[test]
fn tmpfile_and_linkat_as_kernel_overlayfs() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file("a/b/c/old", b"old")
        .dir_with("sg", 0o2777, 0, 7)
        .file("plain", b"p");
    let (mut pair, _wd) = pair(name, &stack);
    same(&pair, "O_TMPFILE and linkat", |root, st| {
        let c = root.join("a/b/c");
        let mut obs = Vec::new();
        let mut f = posix::open_tmpfile(&c, libc::O_RDWR, 0o640).unwrap();
        f.write_all(b"hello").unwrap();
        obs.push(format!("unnamed: {}", meta(&f.metadata().unwrap())));
        obs.push(format!("listed: {:?}", names(&c)));
        obs.push(format!("upper holds: {:?}", names(&st.upper.join("a/b/c"))));
        obs.push(format!(
            "linkat empty path: {:?}",
            posix::link_file(&f, &c.join("named"), LinkVia::EmptyPath)
        ));
        obs.push(format!("named: {}", meta(&f.metadata().unwrap())));
        f.write_all(b" world").unwrap();
        obs.push(format!(
            "content: {:?}",
            fs::read_to_string(c.join("named"))
        ));
        obs.push(format!(
            "link again: {:?}",
            posix::link_file(&f, &c.join("second"), LinkVia::ProcFd)
        ));
        obs.push(format!(
            "nlink: {:?}",
            fs::metadata(c.join("second")).map(|m| m.nlink())
        ));
        drop(f);

        let mut g = posix::open_tmpfile(root, libc::O_WRONLY, 0o600).unwrap();
        g.write_all(b"via proc").unwrap();
        obs.push(format!(
            "proc link: {:?}",
            posix::link_file(&g, &root.join("viaproc"), LinkVia::ProcFd)
        ));
        obs.push(format!(
            "viaproc: {}",
            meta(&fs::metadata(root.join("viaproc")).unwrap())
        ));
        obs.push(format!(
            "exists: {:?}",
            posix::link_file(&g, &root.join("plain"), LinkVia::ProcFd)
        ));
        drop(g);

        let e = posix::open_tmpfile(root, libc::O_WRONLY | libc::O_EXCL, 0o600).unwrap();
        obs.push(format!(
            "O_EXCL link: {:?}",
            posix::link_file(&e, &root.join("excl"), LinkVia::EmptyPath)
        ));
        drop(e);
        let mut r = posix::open_tmpfile(root, libc::O_RDWR, 0o644).unwrap();
        r.write_all(b"scratch").unwrap();
        r.seek(SeekFrom::Start(0)).unwrap();
        let mut back = String::new();
        r.read_to_string(&mut back).unwrap();
        obs.push(format!("read back: {back:?}"));
        drop(r);
        obs.push(format!("root: {:?}", names(root)));
        obs.push(format!("upper root: {:?}", names(&st.upper)));

        // Set-group-id directory: the group is inherited; root keeps the file's
        // set-group-id bit, a caller outside the group loses it.
        let s = posix::open_tmpfile(&root.join("sg"), libc::O_RDWR, 0o2750).unwrap();
        obs.push(format!("sgid by root: {}", meta(&s.metadata().unwrap())));
        // O_TMPFILE is __O_TMPFILE | O_DIRECTORY.
        let code = format!(
            "sysopen(my $f, $ARGV[0], O_RDWR | {}, 02755) or exit($!+0); \
             my @s = stat($f); printf('%o %d:%d', $s[2], $s[4], $s[5])",
            libc::O_TMPFILE
        );
        obs.push(format!(
            "sgid by nobody: {:?}",
            as_user(NOBODY, NOBODY, &code, &[&root.join("sg")])
        ));
        // Errors: not a directory, no such directory.
        obs.push(format!(
            "in a file: {:?}",
            posix::open_tmpfile(&root.join("plain"), libc::O_RDWR, 0o600).err()
        ));
        obs.push(format!(
            "in nothing: {:?}",
            posix::open_tmpfile(&root.join("nothing"), libc::O_RDWR, 0o600).err()
        ));
        obs
    });
    if let Err(report) = pair.remount() {
        panic!("{report}");
    }
    same(&pair, "after a remount", |root, _| {
        (
            fs::read_to_string(root.join("a/b/c/named")).ok(),
            fs::read_to_string(root.join("viaproc")).ok(),
            names(&root.join("a/b/c")),
            names(root),
        )
    });
}

/// Where a birth time comes from: the object the merged one is now (the lower file,
/// its upper copy, a new upper file, the upper directory), as kernel overlayfs passes
/// statx on to it. The two sides' layers are copies, so each is compared with its own.
#[test]
fn statx_birth_time_as_kernel_overlayfs() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file("lower", b"l")
        .file("copied", b"c")
        .file("d/inner", b"i")
        .dir("ld");
    // Copies made now are born later than the lower files.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (mut pair, _wd) = pair(name, &stack);
    let observe = |root: &Path, st: &Stack| {
        let from = |merged: &str, real: &Path| match (
            posix::btime(&root.join(merged)),
            posix::btime(real),
        ) {
            (Ok(Some(a)), Ok(Some(b))) if a == b => "same as the real object".to_string(),
            (a, b) => format!("merged {a:?} real {b:?}"),
        };
        vec![
            format!("lower file: {}", from("lower", &st.lower(0).path("lower"))),
            format!("copied up: {}", from("copied", &st.upper.join("copied"))),
            format!("new file: {}", from("new", &st.upper.join("new"))),
            format!("merged dir: {}", from("d", &st.upper.join("d"))),
            format!("lower dir: {}", from("ld", &st.lower(0).path("ld"))),
            format!("root: {}", from("", &st.upper)),
        ]
    };
    same(&pair, "birth times", |root, st| {
        fs::write(root.join("new"), b"n").unwrap();
        sys_chmod(&root.join("copied"), 0o600);
        fs::write(root.join("d/more"), b"m").unwrap();
        observe(root, st)
    });
    if let Err(report) = pair.remount() {
        panic!("{report}");
    }
    same(&pair, "birth times after a remount", observe);
}

fn sys_chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}
