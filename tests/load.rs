//! Load: 8 concurrent clients doing mixed operations on one mount (creates, writes,
//! appends with fsync, reads, renames, unlinks, mkdir/rmdir, readdir, chmod, symlinks, hard
//! links, truncates, xattrs, `rm -rf`, and racing copy-ups of shared lower files) for
//! `RLAYERFS_LOAD_SECONDS` (default 30). Every second the daemon's RSS (`VmRSS`) and open fd
//! count (`/proc/PID/fd`) are sampled and the total op count checked: if no client makes
//! progress for `STALL` the mount is aborted and the test fails (deadlock watchdog).
//!
//! Fails on: an errno a client could not get from a correct file system under these races
//! (e.g. EIO, ENOTCONN, ESTALE, EBADF); a stall; RSS at the end above
//! `RSS_FACTOR` × the RSS after warm-up + `RSS_SLACK_MB`; open fds, after the clients stop,
//! an idle second and `echo 2 > /proc/sys/vm/drop_caches` (the kernel then forgets its
//! inodes), above the count right after mounting plus one per directory in the layers
//! (what the directory-fd cache may hold). Prints the samples. `scripts/loadtest.sh --seconds 600`
//! runs the long form.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::rng::Rng;
use common::sys::errno_of;
use common::{can_mount, env_u64, FuseMount, Stack};

const CLIENTS: usize = 8;
const SHARED_FILES: usize = 16;
/// No op completed by any client for this long: a deadlock.
const STALL: Duration = Duration::from_secs(30);
/// RSS at the end may be at most this multiple of the RSS after warm-up, plus the slack.
const RSS_FACTOR: u64 = 3;
const RSS_SLACK_MB: u64 = 32;
/// The first samples (seconds) are warm-up.
const WARMUP_SECS: u64 = 5;

/// Errnos the races between clients make legitimate (another client removed, created or
/// filled a name; a rename into a descendant; a symlink loop; a link to a directory).
const EXPECTED: &[i32] = &[
    libc::ENOENT,
    libc::EEXIST,
    libc::ENOTEMPTY,
    libc::ENOTDIR,
    libc::EISDIR,
    libc::EINVAL,
    libc::ELOOP,
    libc::EPERM,
];

const NAMES: &[&str] = &[
    "a", "b", "c", "d", "e", "sub/a", "sub/b", "sub/x/y", "lw", "ld",
];

fn build_stack() -> Stack {
    let stack = Stack::new(2);
    let (top, bottom) = (stack.lower(0), stack.lower(1));
    for i in 0..SHARED_FILES {
        bottom.file(
            &format!("shared/f{i}"),
            &vec![b'0' + (i % 10) as u8; 64 << 10],
        );
    }
    for c in 0..CLIENTS {
        bottom.file(&format!("c{c}/lw"), b"lower file");
        bottom.file(&format!("c{c}/ld/inner"), b"lower dir content");
        top.file(&format!("c{c}/sub/a"), b"top sub a");
        bottom.file(&format!("c{c}/sub/b"), b"bottom sub b");
    }
    stack
}

#[derive(Default)]
struct Stats {
    ops: AtomicU64,
    unexpected: Mutex<Vec<String>>,
    by_errno: Mutex<BTreeMap<i32, u64>>,
}

fn one_op(rng: &mut Rng, base: &Path, root: &Path) -> (&'static str, io::Result<()>) {
    let p = |rng: &mut Rng| base.join(rng.pick(NAMES));
    match rng.below(17) {
        0 => ("write", {
            let len = rng.range(0, 64 << 10);
            fs::write(p(rng), rng.bytes(len))
        }),
        1 => ("read", fs::read(p(rng)).map(|_| ())),
        2 => ("append+fsync", {
            let path = p(rng);
            OpenOptions::new()
                .append(true)
                .open(path)
                .and_then(|mut f| {
                    f.write_all(b"appended\n")?;
                    f.sync_data()
                })
        }),
        3 => ("rename", fs::rename(p(rng), p(rng))),
        4 => ("unlink", fs::remove_file(p(rng))),
        5 => ("mkdir", fs::create_dir(p(rng))),
        6 => ("rmdir", fs::remove_dir(p(rng))),
        7 => ("readdir", {
            let d = if rng.chance(50) {
                base.to_path_buf()
            } else {
                base.join("sub")
            };
            fs::read_dir(d).and_then(|mut rd| rd.try_for_each(|e| e.map(|_| ())))
        }),
        8 => ("stat", fs::symlink_metadata(p(rng)).map(|_| ())),
        9 => ("chmod", {
            let mode = *rng.pick(&[0o644, 0o600, 0o755]);
            fs::set_permissions(p(rng), fs::Permissions::from_mode(mode))
        }),
        10 => ("symlink", {
            let target = rng.pick(NAMES).to_string();
            symlink(target, p(rng))
        }),
        11 => ("link", fs::hard_link(p(rng), p(rng))),
        12 => ("truncate", {
            let len = rng.range(0, 8192) as u64;
            OpenOptions::new()
                .write(true)
                .open(p(rng))
                .and_then(|f| f.set_len(len))
        }),
        13 => ("setxattr", {
            let path = p(rng);
            common::sys::set_xattr(&path, "user.load", b"v")
        }),
        14 => ("read shared", {
            let i = rng.below(SHARED_FILES);
            fs::read(root.join(format!("shared/f{i}"))).map(|_| ())
        }),
        15 => ("copy-up shared", {
            let i = rng.below(SHARED_FILES);
            OpenOptions::new()
                .append(true)
                .open(root.join(format!("shared/f{i}")))
                .and_then(|mut f| f.write_all(b"+"))
        }),
        _ => ("rm -rf", {
            let d = if rng.chance(50) {
                base.join("sub")
            } else {
                base.join("ld")
            };
            match fs::remove_dir_all(&d) {
                Err(e) if errno_of(&e) == libc::ENOENT => Ok(()),
                r => r,
            }
        }),
    }
}

fn client(id: usize, root: PathBuf, seed: u64, stop: Arc<AtomicBool>, stats: Arc<Stats>) {
    let mut rng = Rng::new(seed, id as u64 + 1);
    let base = root.join(format!("c{id}"));
    while !stop.load(Ordering::Relaxed) {
        let (what, res) = one_op(&mut rng, &base, &root);
        if let Err(e) = res {
            let errno = errno_of(&e);
            *stats.by_errno.lock().unwrap().entry(errno).or_default() += 1;
            if !EXPECTED.contains(&errno) {
                let mut u = stats.unexpected.lock().unwrap();
                if u.len() < 20 {
                    u.push(format!("client {id} {what}: {e}"));
                }
            }
        }
        stats.ops.fetch_add(1, Ordering::Relaxed);
    }
}

fn status_kb(pid: i32, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn count_dirs(root: &Path) -> usize {
    let mut n = 1;
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                n += count_dirs(&e.path());
            }
        }
    }
    n
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    secs: u64,
    ops: u64,
    rss_kb: u64,
    fds: usize,
}

#[test]
fn eight_clients_mixed_load() {
    if !can_mount() {
        return;
    }
    let seconds = env_u64("RLAYERFS_LOAD_SECONDS", 30).max(WARMUP_SECS + 2);
    let seed = env_u64("RLAYERFS_LOAD_SEED", 1);
    let stack = build_stack();
    // RLAYERFS_LOAD_LOG=FILE: the daemon's log (warnings and errors) goes there.
    let log = std::env::var("RLAYERFS_LOAD_LOG").unwrap_or_default();
    let args: Vec<&str> = if log.is_empty() {
        vec![]
    } else {
        vec!["--log-file", &log]
    };
    let m = FuseMount::mount_args(&stack, &args).unwrap();
    let pid = *m.daemons().first().expect("daemon pid");
    let root = m.path().to_path_buf();
    thread::sleep(Duration::from_millis(200));
    let fds_at_mount = fd_count(pid);
    let rss_at_mount = status_kb(pid, "VmRSS:").unwrap_or(0);

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (r, s, st) = (root.clone(), stop.clone(), stats.clone());
            thread::spawn(move || client(id, r, seed, s, st))
        })
        .collect();

    let start = Instant::now();
    let mut samples = Vec::new();
    let (mut last_ops, mut last_progress) = (0, Instant::now());
    let mut stalled = false;
    while start.elapsed() < Duration::from_secs(seconds) {
        thread::sleep(Duration::from_secs(1));
        let ops = stats.ops.load(Ordering::Relaxed);
        let s = Sample {
            secs: start.elapsed().as_secs(),
            ops,
            rss_kb: status_kb(pid, "VmRSS:").unwrap_or(0),
            fds: fd_count(pid),
        };
        samples.push(s);
        if ops != last_ops {
            (last_ops, last_progress) = (ops, Instant::now());
        } else if last_progress.elapsed() > STALL {
            eprintln!("WATCHDOG: no progress for {STALL:?} at {s:?}; aborting the mount");
            stalled = true;
            m.abort();
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(!stalled, "the clients stopped making progress (deadlock?)");

    // Idle, then make the kernel forget its inodes: the daemon must close what it held.
    thread::sleep(Duration::from_secs(1));
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    thread::sleep(Duration::from_secs(2));
    let fds_idle = fd_count(pid);
    let rss_idle = status_kb(pid, "VmRSS:").unwrap_or(0);
    let dirs_now = count_dirs(&root);
    m.unmount().unwrap();
    // The directory-fd cache may hold one fd per directory of each layer: every lower
    // directory (hidden ones too: lowers never change) and the upper's existing ones.
    let layer_dirs: usize = stack
        .lowers
        .iter()
        .chain([&stack.upper])
        .map(|l| count_dirs(l))
        .sum();

    eprintln!("  secs        ops   RSS MiB   fds");
    eprintln!(
        "  mount         0 {:9.1} {:5}",
        rss_at_mount as f64 / 1024.0,
        fds_at_mount
    );
    for s in samples.iter().filter(|s| s.secs % 5 == 0 || s.secs <= 2) {
        eprintln!(
            "  {:4} {:10} {:9.1} {:5}",
            s.secs,
            s.ops,
            s.rss_kb as f64 / 1024.0,
            s.fds
        );
    }
    eprintln!(
        "  idle+drop_caches {:5.1} MiB, {fds_idle} fds ({dirs_now} directories left, \
         {layer_dirs} in the layers)",
        rss_idle as f64 / 1024.0
    );
    let total = stats.ops.load(Ordering::Relaxed);
    eprintln!(
        "load: {total} ops in {seconds} s by {CLIENTS} clients; errnos {:?}",
        stats.by_errno.lock().unwrap()
    );
    let unexpected = stats.unexpected.lock().unwrap().clone();
    assert!(unexpected.is_empty(), "unexpected errors: {unexpected:#?}");

    let warm = samples
        .iter()
        .find(|s| s.secs >= WARMUP_SECS)
        .map_or(rss_at_mount, |s| s.rss_kb);
    let end = samples.last().map_or(0, |s| s.rss_kb);
    assert!(
        end <= RSS_FACTOR * warm + RSS_SLACK_MB * 1024,
        "RSS grew from {warm} kB after warm-up to {end} kB"
    );
    let allowed = fds_at_mount + layer_dirs;
    assert!(
        fds_idle <= allowed,
        "{fds_idle} fds open when idle after drop_caches, {fds_at_mount} at mount, at most \
         {allowed} allowed ({layer_dirs} directories in the layers): a leak"
    );
}
