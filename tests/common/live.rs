//! Helpers for tests that work through live mounts: a `Watchdog` that unsticks a hung FUSE
//! mount instead of letting the test binary hang, `same` to run one observation on the
//! kernel reference and on the FUSE binary of a `Pair` and require equal results, and
//! `as_user` to run a syscall as an unprivileged user (via perl, which Debian always has)
//! and get its errno.

use std::fmt::Debug;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::diff::Pair;
use super::fixture::Stack;
use super::mount::{fuse_bin, fuse_bin_name};
use super::sys;

/// Pids of FUSE daemons (the binary under test) whose argv holds `mnt`.
pub fn daemons_serving(mnt: &Path) -> Vec<i32> {
    daemons_of(&fuse_bin(), mnt)
}

/// Pids of live processes running `bin` whose argv holds `mnt`.
pub fn daemons_of(bin: &Path, mnt: &Path) -> Vec<i32> {
    let ours = fs::canonicalize(bin).ok();
    let me = std::process::id() as i32;
    let want = mnt.as_os_str().as_encoded_bytes();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            cmdline.split(|&b| b == 0).any(|a| a == want)
                && fs::read_link(format!("/proc/{pid}/exe")).ok() == ours
                && !is_zombie(pid)
        })
        .collect();
    pids.sort();
    pids
}

/// True if `pid` is gone or a zombie.
pub fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// If not dropped within its limit, kills the FUSE daemons serving the given mountpoints and
/// lazily detaches every mount there, so that a test stuck in a syscall on a hung mount gets
/// an error (and fails) instead of hanging the whole test run.
pub struct Watchdog {
    tx: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn arm(label: &str, mnts: Vec<PathBuf>, limit: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let label = label.to_string();
        let thread = thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!(
                    "WATCHDOG {label}: still running after {limit:?}; killing the FUSE daemons \
                     of {mnts:?} and detaching the mounts (the test will fail)"
                );
                for m in &mnts {
                    for pid in daemons_serving(m) {
                        // SAFETY: kill has no memory preconditions; pid serves our mountpoint.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    let _ = sys::umount2(m, libc::MNT_DETACH);
                }
            }
        });
        Watchdog {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// A watchdog over both mounts of a pair.
    pub fn for_pair(pair: &Pair, limit: Duration) -> Watchdog {
        Watchdog::arm(
            &pair.label,
            vec![pair.sa.mnt.clone(), pair.sb.mnt.clone()],
            limit,
        )
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Default limit for one mounted test.
pub const TEST_LIMIT: Duration = Duration::from_secs(90);

/// Runs `f` on the reference side (a) and on the side under test (b) of `pair` — each call
/// gets that side's mount root and stack — and panics with both results unless equal.
/// Returns the reference's result. With `RLAYERFS_TEST_SHOW` set, prints the reference's
/// result (to check what a passing test observed).
pub fn same<T: PartialEq + Debug>(pair: &Pair, what: &str, f: impl Fn(&Path, &Stack) -> T) -> T {
    let (ra, rb) = pair.roots();
    let a = f(ra, &pair.sa);
    let b = f(rb, &pair.sb);
    if std::env::var_os("RLAYERFS_TEST_SHOW").is_some() {
        eprintln!("[{}] {what}: {} gives {a:#?}", pair.label, pair.a.name());
    }
    assert_same(&pair.label, what, pair.a.name(), &a, &pair.b.name(), &b);
    a
}

/// Runs `f` on both sides of `pair` like `same`, without comparing: (reference, under test).
pub fn both<T>(pair: &Pair, f: impl Fn(&Path, &Stack) -> T) -> (T, T) {
    let (ra, rb) = pair.roots();
    (f(ra, &pair.sa), f(rb, &pair.sb))
}

/// Panics with a readable report unless `a == b`.
pub fn assert_same<T: PartialEq + Debug>(
    label: &str,
    what: &str,
    a_name: String,
    a: &T,
    b_name: &str,
    b: &T,
) {
    if a != b {
        let (sa, sb) = (format!("{a:#?}"), format!("{b:#?}"));
        let diff = line_diff(&sa, &sb, &a_name, b_name);
        panic!(
            "[{label}] {what}: {b_name} differs from {a_name}\n--- differing lines:\n{diff}\
             --- {a_name}:\n{sa}\n--- {b_name}:\n{sb}"
        );
    }
}

/// Lines only in `a` or only in `b`, in order (longest-common-subsequence diff).
pub fn line_diff(a: &str, b: &str, a_name: &str, b_name: &str) -> String {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let (n, m) = (la.len(), lb.len());
    // lcs[i][j]: LCS length of la[i..] and lb[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if la[i] == lb[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < n || j < m {
        if i < n && j < m && la[i] == lb[j] {
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("  + {b_name}: {}\n", lb[j].trim()));
            j += 1;
        } else {
            out.push_str(&format!("  - {a_name}: {}\n", la[i].trim()));
            i += 1;
        }
    }
    out
}

/// The FUSE binary's name for messages.
pub fn fuse_name() -> String {
    fuse_bin_name().to_string_lossy().into_owned()
}

/// Runs perl `code` (which must `exit(0)` on success and `exit($!+0)` on failure) as
/// `uid:gid` with no supplementary groups, with `args` as @ARGV. Returns `Ok(stdout)` or the
/// errno.
pub fn as_user(uid: u32, gid: u32, code: &str, args: &[&Path]) -> Result<String, i32> {
    let out = Command::new("perl")
        .arg("-e")
        .arg(format!("use Fcntl; use POSIX; {code}"))
        .args(args)
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .output()
        .expect("run perl");
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Some(e) => Err(e),
        None => panic!("perl killed: {:?}", out.status),
    }
}
