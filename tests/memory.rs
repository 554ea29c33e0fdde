//! Daemon memory with many files looked up: `RLAYERFS_MEM_FILES` (default 100,000; the long
//! form `scripts/memtest.sh` uses 1,000,000) empty files in merged directories of 1,000
//! entries over two lowers. Two halves, A and B, are walked (readdir + lstat of every
//! entry) one after the other with `echo 2 > /proc/sys/vm/drop_caches` in between, which
//! makes the kernel forget every inode of A. The daemon's RSS is read after mounting, after
//! each walk and after each drop.
//!
//! Checks: the walks see every file; the memory the walk of A cost is reused for B (forget
//! honoured: walking B adds less than 2/3 of what A cost, while an inode table that never
//! forgot would add as much again); the cost per file stays under `MAX_BYTES_PER_FILE`. Prints MiB per
//! 40,000 files.

mod common;

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::{can_mount, env_u64, FuseMount, Stack};

const PER_DIR: usize = 1000;
/// A lookup needs a node (about 64 bytes plus its name), its slot in the name index and its
/// lower-directory index slot (about 40 bytes): about 230 bytes measured with hash-table
/// slack and allocator overhead. The bound leaves room for noise, not for a regression.
const MAX_BYTES_PER_FILE: u64 = 400;

fn rss_kb(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Creates `d{k}/f{i}` in `bottom` for every file, the directories also in `top`.
fn populate(stack: &Stack, dirs: usize) {
    for k in 0..dirs {
        let d = stack.lowers[1].join(format!("d{k:04}"));
        fs::create_dir_all(&d).unwrap();
        fs::create_dir_all(stack.lowers[0].join(format!("d{k:04}"))).unwrap();
        for i in 0..PER_DIR {
            fs::File::create(d.join(format!("f{i}"))).unwrap();
        }
    }
}

/// readdir + lstat of every entry of the directories `range`; returns the files seen.
fn walk(root: &Path, range: std::ops::Range<usize>) -> usize {
    let mut n = 0;
    for k in range {
        let d = root.join(format!("d{k:04}"));
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            fs::symlink_metadata(e.path()).unwrap();
            n += 1;
        }
    }
    n
}

/// Drops the kernel's dentries and inodes and waits for the daemon's RSS to settle.
fn drop_caches(pid: i32) -> u64 {
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    let t = Instant::now();
    let mut last = rss_kb(pid);
    loop {
        thread::sleep(Duration::from_millis(500));
        let now = rss_kb(pid);
        if now == last || t.elapsed() > Duration::from_secs(10) {
            return now;
        }
        last = now;
    }
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

#[test]
fn memory_stays_bounded_with_many_files_looked_up() {
    if !can_mount() {
        return;
    }
    let files = env_u64("RLAYERFS_MEM_FILES", 100_000) as usize;
    let dirs = (files / PER_DIR).max(2) & !1;
    let half = dirs / 2;
    let shm = Path::new("/dev/shm");
    let stack = if common::posix::statfs_type(shm) == Ok(libc::TMPFS_MAGIC) {
        Stack::new_in(2, shm)
    } else {
        Stack::new(2)
    };
    let t = Instant::now();
    populate(&stack, dirs);
    eprintln!("{} files created in {:.1?}", dirs * PER_DIR, t.elapsed());
    // Start from a cold kernel cache of the lowers too.
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();

    let m = FuseMount::mount(&stack).unwrap();
    let pid = *m.daemons().first().expect("daemon pid");
    let root = m.path().to_path_buf();
    fs::metadata(&root).unwrap();
    let at_mount = rss_kb(pid);
    let t = Instant::now();
    assert_eq!(walk(&root, 0..half), half * PER_DIR);
    let walk_time = t.elapsed();
    let after_a = rss_kb(pid);
    let dropped_a = drop_caches(pid);
    assert_eq!(walk(&root, half..dirs), half * PER_DIR);
    let after_b = rss_kb(pid);
    let dropped_b = drop_caches(pid);
    m.unmount().unwrap();

    let looked_up = (half * PER_DIR) as u64;
    let cost_a = after_a.saturating_sub(at_mount);
    let per_file = cost_a * 1024 / looked_up;
    eprintln!("RSS MiB: mount {:.1}", mib(at_mount));
    eprintln!(
        "  after {looked_up} lookups (A, {walk_time:.1?}) {:.1}, after drop_caches {:.1}",
        mib(after_a),
        mib(dropped_a)
    );
    eprintln!(
        "  after {looked_up} more (B) {:.1}, after drop_caches {:.1}",
        mib(after_b),
        mib(dropped_b)
    );
    eprintln!(
        "memory: {per_file} bytes per file looked up = {:.2} MiB per 40,000 files",
        (per_file * 40_000) as f64 / (1024.0 * 1024.0)
    );
    assert!(
        per_file <= MAX_BYTES_PER_FILE,
        "{per_file} bytes per file looked up (at most {MAX_BYTES_PER_FILE})"
    );
    // With forgets honoured, B reuses what A freed (only the bounded lower-directory index
    // grows); without, B adds as much again.
    let cost_b = after_b.saturating_sub(after_a);
    assert!(
        cost_b * 3 < cost_a * 2,
        "RSS after walking B ({after_b} kB) suggests A's {looked_up} inodes were never \
         forgotten (mount {at_mount} kB, after A {after_a} kB)"
    );
}
