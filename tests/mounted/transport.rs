//! The request transport: FUSE-over-io_uring when the fuse module offers it (module parameter
//! `enable_uring=Y`, Linux 6.14+), the classic `/dev/fuse` read/write loop otherwise, chosen
//! with `-o uring=auto|on|off`. The whole suite runs on both transports in CI (`.ci/run`
//! switches the module parameter); these tests check the choice itself: which transport
//! served the requests (the daemon's request report, `SIGUSR1` / `$RLAYERFS_STATS`), its
//! worker threads and their scheduling policy (`uring_sched=`), and the refusal of
//! `uring=on` where io_uring cannot be had.
//!
//! Skips (with a message) when not root or /dev/fuse is missing.

use crate::common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::can_mount;
use common::fixture::Stack;
use common::mount::{FuseMount, MountDirs};

/// Whether the fuse module offers io_uring to daemons now.
fn uring_enabled() -> bool {
    fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .map(|v| v.trim() == "Y")
        .unwrap_or(false)
}

fn thread_names(pid: i32) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| fs::read_to_string(e.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Asks the daemon for its request report and waits for it to appear at `stats`.
fn request_report(pid: i32, stats: &Path) -> serde_json::Value {
    let _ = fs::remove_file(stats);
    // SAFETY: kill has no memory preconditions; pid is the daemon of our own mount.
    #[allow(unsafe_code)]
    let r = unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert_eq!(r, 0, "kill -USR1 {pid}");
    let start = Instant::now();
    loop {
        if let Ok(text) = fs::read_to_string(stats) {
            return serde_json::from_str(&text).expect("the report is JSON");
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no request report at {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Some lookups, creations, reads and writes through the mount.
fn workload(mnt: &Path) {
    for i in 0..200 {
        let p = mnt.join(format!("f{i}"));
        fs::write(&p, format!("content {i}")).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), format!("content {i}"));
        assert!(fs::symlink_metadata(mnt.join(format!("missing{i}"))).is_err());
    }
    assert_eq!(
        fs::read_to_string(mnt.join("lower.txt")).unwrap(),
        "from the lower\n"
    );
    assert_eq!(fs::read_dir(mnt).unwrap().count(), 201);
}

fn new_stack() -> Stack {
    let stack = Stack::new(1);
    fs::write(stack.lowers[0].join("lower.txt"), "from the lower\n").unwrap();
    stack
}

/// The default (`uring=auto`) serves over io_uring exactly when the module offers it, and the
/// report counts the requests of each opcode and those the rings served.
#[test]
fn auto_serves_over_what_the_kernel_offers() {
    if !can_mount() {
        return;
    }
    let stack = new_stack();
    let stats = stack.root.join("stats.json");
    // For this test's daemon only (see `set_thread_fuse_env`).
    common::mount::set_thread_fuse_env("RLAYERFS_STATS", &stats);
    let m = FuseMount::mount(&stack).unwrap();
    workload(m.path());
    let pid = m.daemons()[0];
    let threads = thread_names(pid);
    let report = request_report(pid, &stats);
    let ring = report["ring_requests"].as_u64().unwrap();
    let lookups = report["requests"]["LOOKUP"].as_u64().unwrap_or(0);
    let creates = report["requests"]["CREATE"].as_u64().unwrap_or(0);
    assert!(lookups >= 200, "lookups counted: {report}");
    assert!(creates >= 200, "creates counted: {report}");
    if uring_enabled() {
        assert_eq!(report["transport"], "io_uring", "{report}");
        assert!(threads.iter().any(|t| t == "uring-0"), "{threads:?}");
        // Everything but FORGET, INTERRUPT and the requests before the rings were
        // registered comes over the rings.
        let total: u64 = report["requests"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        let forgets = report["requests"]["FORGET"].as_u64().unwrap_or(0)
            + report["requests"]["BATCH_FORGET"].as_u64().unwrap_or(0);
        assert!(
            ring + forgets + 20 >= total && ring > 600,
            "ring requests {ring} of {total}: {report}"
        );
    } else {
        assert_eq!(report["transport"], "classic", "{report}");
        assert_eq!(ring, 0, "{report}");
        assert!(
            !threads.iter().any(|t| t.starts_with("uring")),
            "{threads:?}"
        );
    }
    m.unmount().unwrap();
}

/// `uring=off` never uses the rings; `uring=on` mounts over them or, where the module does
/// not offer io_uring, refuses with a message that says how to turn it on.
#[test]
fn uring_on_and_off() {
    if !can_mount() {
        return;
    }
    let stack = new_stack();
    let dirs = MountDirs::of(&stack);
    let off = FuseMount::mount_with(&dirs, &format!("{},uring=off", dirs.options())).unwrap();
    workload(off.path());
    let threads = thread_names(off.daemons()[0]);
    assert!(
        !threads.iter().any(|t| t.starts_with("uring")),
        "{threads:?}"
    );
    off.unmount().unwrap();

    let stack = new_stack();
    let dirs = MountDirs::of(&stack);
    let on = FuseMount::mount_with(&dirs, &format!("{},uring=on", dirs.options()));
    if uring_enabled() {
        let on = on.unwrap();
        workload(on.path());
        let threads = thread_names(on.daemons()[0]);
        assert!(threads.iter().any(|t| t == "uring-0"), "{threads:?}");
        on.unmount().unwrap();
    } else {
        let err = on
            .expect_err("uring=on without enable_uring must not mount")
            .to_string();
        assert!(err.contains("enable_uring=Y"), "{err}");
        assert!(
            !common::mount::is_mounted(&dirs.mnt),
            "nothing stays mounted"
        );
    }
}

/// The scheduling policy (`/proc/PID/task/TID/stat` field 41) of each `uring-N` worker.
fn worker_policies(pid: i32) -> Vec<u32> {
    let mut policies = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = e.unwrap().path();
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.trim().starts_with("uring-") {
            continue;
        }
        let stat = fs::read_to_string(dir.join("stat")).unwrap();
        // Fields after the parenthesised command start at field 3.
        let rest = stat.rsplit_once(')').unwrap().1;
        let policy = rest.split_whitespace().nth(41 - 3).unwrap();
        policies.push(policy.parse().unwrap());
    }
    policies
}

/// The io_uring workers run at `SCHED_IDLE` by default and at the normal policy with
/// `uring_sched=normal`, and serve the same requests either way.
#[test]
fn uring_workers_scheduling_policy() {
    if !can_mount() {
        return;
    }
    if !uring_enabled() {
        eprintln!("SKIP {}: io_uring not offered", common::test_name());
        return;
    }
    for (opt, want) in [
        ("", libc::SCHED_IDLE),
        (",uring_sched=normal", libc::SCHED_OTHER),
    ] {
        let stack = new_stack();
        let dirs = MountDirs::of(&stack);
        let m = FuseMount::mount_with(&dirs, &format!("{}{opt}", dirs.options())).unwrap();
        workload(m.path());
        let policies = worker_policies(m.daemons()[0]);
        assert!(!policies.is_empty(), "no uring workers ({opt:?})");
        assert!(
            policies.iter().all(|&p| p == want as u32),
            "policies {policies:?}, want {want} ({opt:?})"
        );
        m.unmount().unwrap();
    }
}
