//! Process plumbing for the daemon: going to the background once the mount is live,
//! and waiting for SIGTERM/SIGINT on a dedicated thread.

use std::os::fd::AsRawFd;
use std::path::Path;

/// Moves the calling thread to the `SCHED_IDLE` policy (see `crate::transport`, why the
/// io_uring queue workers run at it).
pub fn set_idle_policy() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is this thread.
    #[allow(unsafe_code)]
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Forks. The parent returns `Ok(true)` (it should exit 0: the mount is live); the child
/// returns `Ok(false)` after detaching from the terminal and pointing stdin/stdout/stderr
/// at /dev/null (or stderr at `log`), so a caller waiting on our output (podman) is not
/// kept waiting by the daemon. Must be called while the process has one thread.
pub fn daemonize(log: Option<&Path>) -> std::io::Result<bool> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let err_target = match log {
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)?,
        None => null.try_clone()?,
    };
    // SAFETY: the process is single-threaded here (the FUSE session threads start after),
    // so the child may run arbitrary code after fork.
    #[allow(unsafe_code)]
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(true);
    }
    // SAFETY: plain syscalls on descriptors we own.
    #[allow(unsafe_code)]
    unsafe {
        libc::setsid();
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(err_target.as_raw_fd(), 2);
    }
    let _ = std::env::set_current_dir("/");
    Ok(false)
}

/// The signals that end the daemon.
/// The signal that asks the daemon for its request counts (blocked and waited for with the
/// termination signals, so it never kills the daemon).
pub const STATS_SIGNAL: i32 = libc::SIGUSR1;

fn termination_sigset() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a zero-initialised local.
    #[allow(unsafe_code)]
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, STATS_SIGNAL);
        set
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and threads it starts later),
/// so that only [`wait_for_termination`] receives them.
pub fn block_termination_signals() {
    let set = termination_sigset();
    // SAFETY: pthread_sigmask on our own thread with a valid set.
    #[allow(unsafe_code)]
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits until SIGTERM, SIGINT or SIGHUP arrives; returns the signal number.
pub fn wait_for_termination() -> i32 {
    let set = termination_sigset();
    let mut sig = 0;
    // SAFETY: sigwait on a valid set of signals blocked by `block_termination_signals`.
    #[allow(unsafe_code)]
    unsafe {
        libc::sigwait(&set, &mut sig);
    }
    sig
}

/// Like [`wait_for_termination`], giving up after `limit`: the signal, or `None`.
pub fn wait_for_termination_timeout(limit: std::time::Duration) -> Option<i32> {
    let set = termination_sigset();
    let ts = libc::timespec {
        tv_sec: limit.as_secs() as libc::time_t,
        tv_nsec: limit.subsec_nanos() as libc::c_long,
    };
    // SAFETY: sigtimedwait on a valid set blocked by `block_termination_signals`, a valid
    // timespec, and no siginfo wanted.
    #[allow(unsafe_code)]
    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// CAP_FSETID: keeps set-id bits through changes by others than the owner or group.
const CAP_FSETID: u32 = 4;

/// Whether task `pid` may keep the set-group-id bit of an object with group `gid` when it
/// changes the object's mode (kernel `in_group_or_capable`): `gid` is its fs group or a
/// supplementary group, or it has CAP_FSETID. Read from `/proc/PID/status` (FUSE gives a
/// request's task id and fs ids, not its groups or capabilities); `None` when that cannot
/// be read (the task is gone).
pub fn in_group_or_capable(pid: u32, fsgid: u32, gid: u32) -> Option<bool> {
    if fsgid == gid {
        return Some(true);
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let groups = field("Groups:")?;
    let cap_eff = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
    Some(
        groups.split_whitespace().any(|g| g.parse() == Ok(gid)) || cap_eff & (1 << CAP_FSETID) != 0,
    )
}
