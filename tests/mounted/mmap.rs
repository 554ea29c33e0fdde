//! Shared writable mmaps: the write copies up, the times it leaves, msync reaching the upper.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::common;
use crate::common::can_mount;
use crate::common::fixture::Stack;
use crate::common::live::same;
use crate::common::posix::{self};

use super::{content, pair, remount, rw};

#[test]
fn mmap_shared_write_copies_up() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let (orig_f, orig_g) = (vec![b'a'; 8192], vec![b'b'; 4096]);
    let stack = Stack::new(1);
    stack.lower(0).file("f", &orig_f).file("g", &orig_g);
    let (mut pair, _wd) = pair(name, &stack);
    let mut want_f = orig_f.clone();
    want_f[..5].copy_from_slice(b"HELLO");
    want_f[5000..5005].copy_from_slice(b"WORLD");
    let mut want_g = orig_g.clone();
    want_g[100..103].copy_from_slice(b"MAP");
    let cand_f: &[(&str, &[u8])] = &[("mmap-written data", &want_f), ("lower data", &orig_f)];
    let cand_g: &[(&str, &[u8])] = &[("mmap-written data", &want_g), ("lower data", &orig_g)];
    same(&pair, "MAP_SHARED write to lower files", |root, st| {
        let mut obs = Vec::new();
        let r = rw(&root.join("f"))
            .and_then(|f| posix::mmap_shared_write(&f, 8192, &[(0, b"HELLO"), (5000, b"WORLD")]));
        obs.push(format!("f: open O_RDWR, mmap, write, munmap, close: {r:?}"));
        obs.push(format!(
            "f read through the mount: {}",
            content(fs::read(root.join("f")), cand_f)
        ));
        obs.push(format!(
            "f read through a new mmap: {}",
            content(
                File::open(root.join("f"))
                    .and_then(|f| posix::mmap_read(&f, 8192).map_err(io::Error::from_raw_os_error)),
                cand_f
            )
        ));
        obs.push(format!(
            "f in the upper: {}",
            content(fs::read(st.upper.join("f")), cand_f)
        ));
        // A reader opened before the copy-up keeps its fd while a writer maps the file.
        let mut reader = File::open(root.join("g")).expect("open g");
        let r =
            rw(&root.join("g")).and_then(|w| posix::mmap_shared_write(&w, 4096, &[(100, b"MAP")]));
        obs.push(format!("g: mmap write while a reader holds it open: {r:?}"));
        let mut old = Vec::new();
        let r = reader.read_to_end(&mut old).map(|_| old);
        obs.push(format!(
            "g via the earlier reader fd: {}",
            content(r, cand_g)
        ));
        obs.push(format!(
            "g reopened: {}",
            content(fs::read(root.join("g")), cand_g)
        ));
        obs
    });
    remount(&mut pair);
    same(&pair, "mmap-written data after remount", |root, st| {
        vec![
            content(fs::read(root.join("f")), cand_f),
            content(fs::read(st.upper.join("f")), cand_f),
            content(fs::read(root.join("g")), cand_g),
            content(fs::read(st.upper.join("g")), cand_g),
        ]
    });
}

/// Writes through a shared mapping move the file's mtime and ctime, and stat through the
/// mount shows the real file's times at once, mapped or not (xfstests generic/080, 215):
/// with FUSE passthrough those writes bypass the kernel's FUSE inode, whose cached times
/// stayed stale for the attribute timeout.
#[test]
fn mmap_write_updates_times_seen_through_mount() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack.lower(0).file("lower", &[b'l'; 4096]);
    let (pair, _wd) = pair(name, &stack);
    same(&pair, "mmap write, then stat", |root, st| {
        let f = File::create(root.join("new")).unwrap();
        f.write_all_at(&[b'n'; 4096], 0).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let times = |p: &Path| posix::statx_times(p).ok();
        let mut obs = Vec::new();
        for n in ["new", "lower"] {
            let (p, real) = (root.join(n), st.upper_layer().path(n));
            let before = times(&p);
            // More than a tick of the coarse clock file times are taken from.
            std::thread::sleep(std::time::Duration::from_millis(50));
            let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
            let r = posix::mmap_shared_write(&f, 4096, &[(0, &[b'M'; 4096])]);
            let open = times(&p);
            obs.push(format!(
                "{n}: mmap write {r:?}; still open: times moved {}, shown = real {}",
                open > before,
                open == times(&real)
            ));
            drop(f);
            let closed = times(&p);
            obs.push(format!(
                "{n}: closed: times moved {}, shown = real {}",
                closed > before,
                closed == times(&real)
            ));
        }
        obs
    });
}

#[test]
fn msync_reaches_the_upper() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let orig = vec![b'm'; 8192];
    let stack = Stack::new(1);
    stack.lower(0).file("f", &orig);
    let (pair, _wd) = pair(name, &stack);
    let mut want = orig.clone();
    want[4096..4101].copy_from_slice(b"SYNCD");
    let cand: &[(&str, &[u8])] = &[("msync-written data", &want), ("lower data", &orig)];
    same(&pair, "msync(MS_SYNC) of a shared mapping", |root, st| {
        let f = rw(&root.join("f")).expect("open");
        let r = posix::mmap_write_msync(&f, 8192, 4096, b"SYNCD");
        let obs = vec![
            format!("mmap+write+msync: {r:?}"),
            // Still open: the data must already be in the upper file after MS_SYNC.
            format!(
                "upper while still open: {}",
                content(fs::read(st.upper.join("f")), cand)
            ),
            format!(
                "another fd on the mount: {}",
                content(fs::read(root.join("f")), cand)
            ),
        ];
        drop(f);
        obs
    });
}
