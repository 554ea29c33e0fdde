//! Copy-up: sparse files stay sparse, metadata, capabilities and ACLs kept, special files on chown,
//! a reader holding the lower file, times and truncation.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::common;
use crate::common::fixture::Stack;
use crate::common::live::{assert_same, both, fuse_name, same};
use crate::common::posix::{self, errno};
use crate::common::{can_mount, sys};

use super::{content, describe, ino, pair, remount, rich_dir, rich_file, rw, xattrs, WriteAt, MIB};

/// atime as (seconds, nanoseconds), lstat.
fn atime(p: &Path) -> Option<(i64, i64)> {
    fs::symlink_metadata(p)
        .ok()
        .map(|m| (m.atime(), m.atime_nsec()))
}

/// Allocated bytes below which a 16 MiB file with three small data runs counts as sparse
/// (kernel overlayfs copies up in 1 MiB chunks that skip holes).
const SPARSE_LIMIT: u64 = 4 * MIB;

#[test]
fn sparse_copy_up_stays_sparse() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let size = 16 * MIB;
    let runs: [(u64, &[u8]); 3] = [(0, b"head"), (8 * MIB, b"mid"), (size - 4, b"tail")];
    let stack = Stack::new(2);
    stack
        .lower(1)
        .sparse("s1", size, &runs)
        .sparse("s2", size, &runs);
    stack.lower(0).dir("d");
    let (pair, _wd) = pair(name, &stack);
    let mut want1 = vec![0u8; size as usize];
    for (off, data) in runs {
        want1[off as usize..off as usize + data.len()].copy_from_slice(data);
    }
    let mut want2 = want1.clone();
    want2[4 * MIB as usize] = b'X';
    let obs = |root: &Path, st: &Stack| {
        let mut obs = Vec::new();
        obs.push(format!(
            "chmod s1 (copy-up): {:?}",
            errno(sys::chmod(&root.join("s1"), 0o600))
        ));
        let w = rw(&root.join("s2")).and_then(|f| errno(f.write_at_all(b"X", 4 * MIB)));
        obs.push(format!("pwrite s2 @4MiB (copy-up): {w:?}"));
        let mut blocks = Vec::new();
        for (n, want) in [("s1", &want1), ("s2", &want2)] {
            for (side, p) in [("mount", root.join(n)), ("upper", st.upper.join(n))] {
                let m = fs::metadata(&p);
                obs.push(format!(
                    "{n} {side}: size={:?} reads={}",
                    m.as_ref().map(|m| m.len()).ok(),
                    content(fs::read(&p), &[("expected", want)])
                ));
                blocks.push(format!(
                    "{n} {side}: {} KiB allocated",
                    m.map(|m| m.blocks() / 2).unwrap_or(u64::MAX)
                ));
            }
        }
        (obs, blocks)
    };
    let (ra, rb) = pair.roots();
    let (ka, kblocks) = obs(ra, &pair.sa);
    let (fb, fblocks) = obs(rb, &pair.sb);
    assert_same(
        name,
        "sparse copy-up",
        "kernel".into(),
        &ka,
        &fuse_name(),
        &fb,
    );
    let limit_kib = SPARSE_LIMIT / 1024;
    let fat: Vec<&String> = fblocks
        .iter()
        .filter(|l| {
            l.split(' ')
                .nth(2)
                .and_then(|n| n.parse::<u64>().ok())
                .is_none_or(|k| k >= limit_kib)
        })
        .collect();
    assert!(
        fat.is_empty(),
        "[{name}] copied-up sparse files are not sparse on {} (limit {limit_kib} KiB): {fat:?}\n\
         kernel: {kblocks:?}\n{}: {fblocks:?}",
        fuse_name(),
        fuse_name()
    );
}

#[test]
fn copy_up_keeps_metadata() {
    // Reads through FUSE passthrough touch the upper file's atime (kernel overlayfs opens
    // real files with O_NOATIME): this test is about what copy-up keeps, so the reads its
    // tree dumps make are served by the daemon.
    common::mount::set_thread_fuse_args(&["--no-passthrough"]);
    let name = "copy_up_keeps_metadata";
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    for f in ["by_xattr", "by_link", "by_rename", "by_open_rw"] {
        rich_file(&stack, f);
    }
    rich_dir(&stack, "dir");
    let (pair, _wd) = pair(name, &stack);
    same(&pair, "lower objects before any change", |root, _| {
        ["by_xattr", "dir"]
            .iter()
            .map(|n| {
                format!(
                    "{n}: {} {:?}",
                    describe(&root.join(n)),
                    xattrs(&root.join(n))
                )
            })
            .collect::<Vec<_>>()
    });
    same(
        &pair,
        "copy-up keeps mode, owner, mtime and xattrs",
        |root, st| {
            let mut obs = vec![
                format!(
                    "setxattr by_xattr: {:?}",
                    errno(sys::set_xattr(&root.join("by_xattr"), "user.trigger", b"1"))
                ),
                format!(
                    "link by_link: {:?}",
                    errno(fs::hard_link(root.join("by_link"), root.join("by_link.2")))
                ),
                format!(
                    "rename by_rename: {:?}",
                    errno(fs::rename(root.join("by_rename"), root.join("renamed")))
                ),
                format!(
                    "open O_RDWR by_open_rw: {:?}",
                    rw(&root.join("by_open_rw")).map(|_| ())
                ),
                format!(
                    "setxattr dir: {:?}",
                    errno(sys::set_xattr(&root.join("dir"), "user.trigger", b"1"))
                ),
            ];
            for n in ["by_xattr", "by_link", "renamed", "by_open_rw", "dir"] {
                for (side, p) in [("mount", root.join(n)), ("upper", st.upper.join(n))] {
                    obs.push(format!("{n} {side}: {}", describe(&p)));
                    obs.push(format!("{n} {side}: atime {:?}", atime(&p)));
                    for x in xattrs(&p) {
                        obs.push(format!("{n} {side}:   {x}"));
                    }
                }
            }
            obs
        },
    );
}

#[test]
fn special_files_copy_up_on_chown() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    let l = stack.lower(0);
    l.fifo("fifo")
        .chardev("chr", 1, 3)
        .symlink("link", "target/x");
    sys::mknod(&l.path("blk"), libc::S_IFBLK | 0o640, 7, 0).unwrap();
    posix::make_socket(&l.path("sock")).unwrap();
    for n in ["fifo", "chr", "blk", "sock"] {
        l.chmod(n, 0o640);
    }
    for n in ["fifo", "chr", "blk", "sock", "link"] {
        l.chown(n, 7, 8);
        sys::set_times(&l.path(n), (1_500_000_000, 5), (1_600_000_000, 123_456_789)).unwrap();
    }
    let (mut pair, _wd) = pair(name, &stack);
    let names = ["fifo", "chr", "blk", "sock", "link"];
    same(&pair, "chown copies special files up", |root, st| {
        let mut obs = Vec::new();
        for n in names {
            let r = errno(sys::lchown(&root.join(n), 1234, 5678));
            obs.push(format!("lchown {n}: {r:?}"));
            obs.push(format!("{n} mount: {}", describe(&root.join(n))));
            obs.push(format!("{n} upper: {}", describe(&st.upper.join(n))));
        }
        obs
    });
    remount(&mut pair);
    same(&pair, "special files after remount", |root, _| {
        names
            .iter()
            .map(|n| format!("{n}: {}", describe(&root.join(n))))
            .collect::<Vec<_>>()
    });
}

#[test]
fn copy_up_while_open_for_reading() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack.lower(0).file("f", b"lower f").file("g", b"lower g");
    let (mut pair, _wd) = pair(name, &stack);
    let first_ino: std::sync::Mutex<HashMap<PathBuf, u64>> = Default::default();
    let (k_open, f_open) = both(&pair, |root, st| {
        let p = root.join("f");
        let mut r = File::open(&p).expect("open reader");
        let i0 = r.metadata().unwrap().ino();
        first_ino.lock().unwrap().insert(st.root.clone(), i0);
        let mut obs = vec![format!("stat ino == fstat ino: {}", ino(&p) == Some(i0))];
        let w = rw(&p);
        obs.push(format!(
            "open O_RDWR while a reader holds it: {:?}",
            w.as_ref().map(|_| ())
        ));
        if let Ok(w) = &w {
            obs.push(format!("write: {:?}", errno(w.write_at_all(b"LOWER", 0))));
            obs.push(format!(
                "fstat(writer) ino unchanged: {}",
                w.metadata().unwrap().ino() == i0
            ));
        }
        obs.push(format!("stat ino unchanged: {}", ino(&p) == Some(i0)));
        obs.push(format!(
            "fstat(reader) ino unchanged: {}",
            r.metadata().unwrap().ino() == i0
        ));
        let mut data = String::new();
        obs.push(format!(
            "read via reader: {:?} {data:?}",
            errno(r.read_to_string(&mut data)).map(|_| ())
        ));
        let proc = PathBuf::from(format!("/proc/self/fd/{}", r.as_raw_fd()));
        let re = OpenOptions::new().read(true).write(true).open(&proc);
        obs.push(format!(
            "reopen the reader's /proc/self/fd/N O_RDWR: {:?}",
            errno(re.and_then(|f| f.write_at_all(b"P", 0)))
        ));
        obs.push(format!(
            "f now: {:?}",
            fs::read(&p)
                .map(|d| String::from_utf8_lossy(&d).into_owned())
                .ok()
        ));
        // A hard link made through the reader's name keeps the inode too.
        obs.push(format!(
            "link: {:?}",
            errno(fs::hard_link(&p, root.join("f.link")))
        ));
        obs.push(format!(
            "link ino unchanged: {}",
            ino(&root.join("f.link")) == Some(i0)
        ));
        obs
    });
    remount(&mut pair);
    let (k_ino, f_ino) = both(&pair, |root, st| {
        let i0 = first_ino.lock().unwrap().get(&st.root).copied();
        vec![
            format!(
                "f: st_ino unchanged after remount: {}",
                ino(&root.join("f")) == i0
            ),
            format!(
                "f.link: st_ino unchanged after remount: {}",
                ino(&root.join("f.link")) == i0
            ),
        ]
    });
    // Both checks run before either is asserted, so one report shows every difference.
    let (k, f) = ([k_open, k_ino].concat(), [f_open, f_ino].concat());
    assert_same(
        name,
        "copy-up under an open reader",
        "kernel".into(),
        &k,
        &fuse_name(),
        &f,
    );
}

#[test]
#[ignore = "unstable reference: kernel overlayfs itself changes these atimes across the remount (the dumps read the files); run with --ignored"]
fn utimens_and_truncate_copy_up() {
    // Reads through FUSE passthrough touch the upper file's atime (kernel overlayfs opens
    // real files with O_NOATIME): this test is about what copy-up keeps, so the reads its
    // tree dumps make are served by the daemon.
    common::mount::set_thread_fuse_args(&["--no-passthrough"]);
    let name = "utimens_and_truncate_copy_up";
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    let l = stack.lower(0);
    for n in [
        "omit_mtime",
        "omit_atime",
        "explicit",
        "trunc",
        "otrunc",
        "linked",
    ] {
        l.file(n, b"0123456789");
    }
    l.hardlink("linked2", "linked");
    for n in [
        "omit_mtime",
        "omit_atime",
        "explicit",
        "trunc",
        "otrunc",
        "linked",
    ] {
        sys::set_times(&l.path(n), (1_500_000_000, 7), (1_600_000_000, 987_654_321)).unwrap();
    }
    let (mut pair, _wd) = pair(name, &stack);
    let view = |root: &Path| {
        [
            "omit_mtime",
            "omit_atime",
            "explicit",
            "trunc",
            "otrunc",
            "linked",
            "linked2",
        ]
        .iter()
        .map(|n| {
            let p = root.join(n);
            let m = fs::symlink_metadata(&p).ok();
            format!(
                "{n}: size={:?} nlink={:?} mtime={:?} atime={:?}",
                m.as_ref().map(|m| m.len()),
                m.as_ref().map(|m| m.nlink()),
                m.as_ref().map(|m| (m.mtime(), m.mtime_nsec())),
                m.as_ref().map(|m| (m.atime(), m.atime_nsec()))
            )
        })
        .collect::<Vec<_>>()
    };
    same(&pair, "utimensat/truncate on lower files", |root, _| {
        let omit = (0, libc::UTIME_OMIT);
        let mut obs = vec![
            format!(
                "atime=1.5, mtime=OMIT: {:?}",
                posix::utimensat(&root.join("omit_mtime"), (1_500_000_005, 5), omit)
            ),
            format!(
                "atime=OMIT, mtime=1.7: {:?}",
                posix::utimensat(&root.join("omit_atime"), omit, (1_700_000_000, 1))
            ),
            format!(
                "both explicit: {:?}",
                posix::utimensat(
                    &root.join("explicit"),
                    (1_400_000_000, 2),
                    (1_650_000_000, 3)
                )
            ),
            format!(
                "truncate(3): {:?}",
                errno(
                    OpenOptions::new()
                        .write(true)
                        .open(root.join("trunc"))
                        .and_then(|f| f.set_len(3))
                )
            ),
        ];
        let t = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(root.join("otrunc"))
            .map(|_| ());
        obs.push(format!("open O_TRUNC: {:?}", errno(t)));
        let t = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(root.join("linked"))
            .map(|_| ());
        obs.push(format!("open O_TRUNC of a hard link: {:?}", errno(t)));
        // Times of the truncated files are the wall clock: compare everything else.
        for line in view(root) {
            let keep = !(line.starts_with("trunc")
                || line.starts_with("otrunc")
                || line.starts_with("linked"));
            obs.push(if keep {
                line
            } else {
                line.split(" mtime=").next().unwrap_or("").to_string()
            });
        }
        obs
    });
    let (ra, rb) = pair.roots();
    let before = (view(ra), view(rb));
    remount(&mut pair);
    let (ra, rb) = pair.roots();
    assert_same(
        name,
        "kernel: unchanged by remount",
        "before".into(),
        &before.0,
        "after",
        &view(ra),
    );
    assert_same(
        name,
        &format!("{}: unchanged by remount", fuse_name()),
        "before".into(),
        &before.1,
        "after",
        &view(rb),
    );
}
