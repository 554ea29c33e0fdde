//! The rlayerfs command line as a container runtime and a user meet it: bad input is refused
//! with one line on stderr, a non-zero exit, nothing mounted and nothing changed on disk;
//! the mount_program form (`rlayerfs -o OPTS MNT`), the `--lower/--upper/--work` flags,
//! foreground mode, SIGTERM, and an unmount followed at once by a new mount at the same path
//! (the exiting daemon must not take the new mount down).
//!
//! Always runs the rlayerfs binary cargo built (these are rlayerfs's own flags). Skips (with
//! a message) when not root or /dev/fuse is missing.

#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

mod common;

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::dump::{dump_tree_with, DumpOptions};
use common::fixture::Stack;
use common::live::{daemons_of, is_zombie, line_diff};
use common::mount::{mount_info, unmount_path, FuseMount, KernelOverlay, MountDirs};
use common::{can_mount, sys};

const BIN: &str = env!("CARGO_BIN_EXE_rlayerfs");
/// How long a refused or successful `rlayerfs mount` may take to exit.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit after an unmount or a signal.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

fn bin() -> PathBuf {
    PathBuf::from(BIN)
}

/// What one run of the binary gave.
#[derive(Debug)]
struct Run {
    /// Exit code; `None` if killed on timeout or by a signal.
    code: Option<i32>,
    stderr: String,
}

/// Runs rlayerfs with `args` (output to unnamed files, never pipes: a daemon keeps them
/// open), killing it after `RUN_TIMEOUT`.
fn run(args: &[OsString]) -> Run {
    run_program(Path::new(BIN), args)
}

/// Runs `program` (rlayerfs under another name, or a tool that runs it) like [`run`].
fn run_program(program: &Path, args: &[OsString]) -> Run {
    let mut err = tempfile::tempfile().expect("tempfile");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.try_clone().expect("dup"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    let code = wait_for(&mut child, RUN_TIMEOUT);
    let mut stderr = String::new();
    err.seek(SeekFrom::Start(0)).unwrap();
    err.read_to_string(&mut stderr).unwrap();
    Run { code, stderr }
}

/// Waits for `child` up to `limit`; kills it after that. The exit code, `None` if killed.
fn wait_for(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        sleep(Duration::from_millis(5));
    }
}

/// Polls `cond` every 5 ms up to `limit`.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        sleep(Duration::from_millis(5));
    }
    cond()
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// Mount table lines whose mount point lies under one of `roots`.
fn mounts_under(roots: &[PathBuf]) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|mp| roots.iter().any(|r| Path::new(mp).starts_with(r)))
        })
        .map(String::from)
        .collect()
}

/// How many mounts sit exactly at `mnt`.
fn mounts_at(mnt: &Path) -> usize {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(mnt.to_str().unwrap()))
        .count()
}

/// Exact state of the trees at `roots` (types, modes, owners, sizes, mtimes, every xattr,
/// content hashes), to check that a refused mount changed nothing.
fn snapshot(roots: &[PathBuf]) -> String {
    let opts = DumpOptions {
        mtime: true,
        private_xattrs: true,
        ..DumpOptions::default()
    };
    roots
        .iter()
        .map(|r| format!("== {}\n{}", r.display(), dump_tree_with(r, opts)))
        .collect()
}

/// Kills leftover daemons for `mnt` and detaches anything mounted there (after a mount that
/// should have been refused but was not).
fn force_cleanup(mnt: &Path) {
    for pid in daemons_of(&bin(), mnt) {
        // SAFETY: kill has no memory preconditions; pid runs our binary for this mountpoint.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    while mount_info(mnt).is_some() {
        if sys::umount2(mnt, libc::MNT_DETACH).is_err() {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Bad input

/// One invocation that must be refused.
struct Bad {
    what: &'static str,
    args: Vec<OsString>,
    /// The error line must contain one of these (the offending path or option).
    mention: Vec<String>,
    /// Trees that must be left exactly as they were.
    watch: Vec<PathBuf>,
    /// The mountpoint used (nothing may be mounted there afterwards).
    mnt: PathBuf,
}

/// Runs a refused invocation; returns the problems found (empty if refused properly).
fn check_refused(case: &Bad) -> Vec<String> {
    let before = snapshot(&case.watch);
    let mounts_before = mounts_under(&case.watch);
    let r = run(&case.args);
    let mut problems = Vec::new();
    let shown = format!(
        "rlayerfs {}",
        case.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    match r.code {
        Some(0) => problems.push("exit status 0".to_string()),
        None => problems.push(format!("no exit within {RUN_TIMEOUT:?} (or killed)")),
        Some(_) => {}
    }
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() != 1 {
        problems.push(format!(
            "stderr has {} lines, want exactly 1: {:?}",
            lines.len(),
            r.stderr
        ));
    }
    if !lines
        .iter()
        .any(|l| case.mention.iter().any(|m| l.contains(m.as_str())))
    {
        problems.push(format!(
            "stderr {:?} names none of {:?}",
            r.stderr, case.mention
        ));
    }
    if let Some(info) = mount_info(&case.mnt) {
        problems.push(format!("something is mounted at the mountpoint: {info:?}"));
    }
    let mounts_after = mounts_under(&case.watch);
    if mounts_after != mounts_before {
        problems.push(format!(
            "mounts changed under the stack: {mounts_before:?} -> {mounts_after:?}"
        ));
    }
    if !daemons_of(&bin(), &case.mnt).is_empty() {
        problems.push("a daemon for the mountpoint is still running".into());
    }
    force_cleanup(&case.mnt);
    let after = snapshot(&case.watch);
    if after != before {
        problems.push(format!(
            "the trees changed:\n{}",
            line_diff(&before, &after, "before", "after")
        ));
    }
    problems
        .into_iter()
        .map(|pr| format!("{}: `{shown}`: {pr}", case.what))
        .collect()
}

/// `-o lowerdir=L,upperdir=U,workdir=W` with any of them left out (None).
fn opts(lower: Option<&str>, upper: Option<&Path>, work: Option<&Path>) -> String {
    let mut v = Vec::new();
    if let Some(l) = lower {
        v.push(format!("lowerdir={l}"));
    }
    if let Some(u) = upper {
        v.push(format!("upperdir={}", u.display()));
    }
    if let Some(w) = work {
        v.push(format!("workdir={}", w.display()));
    }
    v.join(",")
}

/// A stack with a file in each lower, and a plain file beside the layers.
fn bad_stack() -> Stack {
    let st = Stack::new(2);
    st.lower(0).file("f", b"top");
    st.lower(1).file("g", b"bottom");
    fs::write(st.root.join("plainfile"), b"not a dir").unwrap();
    st
}

/// Builds the table of refused invocations over `st` (and `shm`, a tmpfs dir, if any).
fn bad_cases(st: &Stack, shm: Option<&Path>, subcommand: bool) -> Vec<Bad> {
    let root = &st.root;
    let lower = st.lowerdir();
    let (u, w, m) = (&st.upper, &st.work, &st.mnt);
    let file = root.join("plainfile");
    let mut cases: Vec<(&'static str, String, PathBuf, Vec<String>)> = Vec::new();
    let mut add = |what, o: String, mnt: &Path, mention: Vec<String>| {
        cases.push((what, o, mnt.to_path_buf(), mention));
    };
    // Directories the cases need; created here so the snapshot covers them.
    for d in ["l0/up", "upper/w", "work/u", "mnt/u", "mnt/w", "upper/sub"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    add(
        "missing lowerdir",
        opts(None, Some(u), Some(w)),
        m,
        vec!["lowerdir".into()],
    );
    add(
        "lowerdir does not exist",
        opts(Some(&p(&root.join("nope"))), Some(u), Some(w)),
        m,
        vec![p(&root.join("nope"))],
    );
    add(
        "lower is a file",
        opts(Some(&p(&file)), Some(u), Some(w)),
        m,
        vec![p(&file)],
    );
    add(
        "second lower is a file",
        opts(
            Some(&format!("{}:{}", p(&st.lowers[0]), p(&file))),
            Some(u),
            Some(w),
        ),
        m,
        vec![p(&file)],
    );
    add(
        "upper inside a lower",
        opts(Some(&lower), Some(&root.join("l0/up")), Some(w)),
        m,
        vec![p(&root.join("l0/up"))],
    );
    add(
        "lower inside the upper",
        opts(Some(&p(&root.join("upper/sub"))), Some(u), Some(w)),
        m,
        vec![p(&root.join("upper/sub")), p(u)],
    );
    add(
        "upper is a lower",
        opts(Some(&lower), Some(&st.lowers[1]), Some(w)),
        m,
        vec![p(&st.lowers[1])],
    );
    add(
        "workdir inside upper",
        opts(Some(&lower), Some(u), Some(&root.join("upper/w"))),
        m,
        vec![p(&root.join("upper/w"))],
    );
    add(
        "upper inside workdir",
        opts(Some(&lower), Some(&root.join("work/u")), Some(w)),
        m,
        vec![p(&root.join("work/u")), p(w)],
    );
    add(
        "upper inside the mountpoint",
        opts(Some(&lower), Some(&root.join("mnt/u")), Some(w)),
        m,
        vec![p(&root.join("mnt/u"))],
    );
    add(
        "workdir inside the mountpoint",
        opts(Some(&lower), Some(u), Some(&root.join("mnt/w"))),
        m,
        vec![p(&root.join("mnt/w"))],
    );
    add(
        "upperdir does not exist",
        opts(Some(&lower), Some(&root.join("noupper")), Some(w)),
        m,
        vec![p(&root.join("noupper"))],
    );
    add(
        "workdir is a file",
        opts(Some(&lower), Some(u), Some(&file)),
        m,
        vec![p(&file)],
    );
    add(
        "workdir without upperdir",
        opts(Some(&lower), None, Some(w)),
        m,
        vec!["upperdir".into(), "workdir".into()],
    );
    add(
        "upperdir without workdir",
        opts(Some(&lower), Some(u), None),
        m,
        vec!["workdir".into()],
    );
    add(
        "missing mountpoint",
        opts(Some(&lower), Some(u), Some(w)),
        &root.join("nomnt"),
        vec![p(&root.join("nomnt"))],
    );
    add(
        "mountpoint is a file",
        opts(Some(&lower), Some(u), Some(w)),
        &file,
        vec![p(&file)],
    );
    add(
        "malformed uidmapping",
        format!("{},uidmapping=1:2", opts(Some(&lower), Some(u), Some(w))),
        m,
        vec!["uidmapping".into()],
    );
    add(
        "malformed gidmapping",
        format!("{},gidmapping=0:x:1", opts(Some(&lower), Some(u), Some(w))),
        m,
        vec!["gidmapping".into()],
    );
    add(
        "empty lowerdir",
        format!("lowerdir=,{}", opts(None, Some(u), Some(w))),
        m,
        vec!["lowerdir".into()],
    );
    if let Some(shm) = shm {
        let sw = shm.join("work");
        fs::create_dir_all(&sw).unwrap();
        add(
            "workdir on another filesystem than upper",
            opts(Some(&lower), Some(u), Some(&sw)),
            m,
            vec![p(&sw)],
        );
    }
    let watch: Vec<PathBuf> = [root.clone()]
        .into_iter()
        .chain(shm.map(Path::to_path_buf))
        .collect();
    cases
        .into_iter()
        .map(|(what, o, mnt, mention)| {
            let mut args = Vec::new();
            if subcommand {
                args.push(OsString::from("mount"));
            }
            args.push("-o".into());
            args.push(o.into());
            args.push(mnt.clone().into());
            Bad {
                what,
                args,
                mention,
                watch: watch.clone(),
                mnt,
            }
        })
        .collect()
}

fn tmpfs_dir() -> Option<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let on_tmpfs = common::posix::statfs_type(shm) == Ok(libc::TMPFS_MAGIC);
    on_tmpfs.then(|| {
        tempfile::Builder::new()
            .prefix("rlayerfs-cli-")
            .tempdir_in(shm)
            .unwrap()
    })
}

fn refuse_all(test: &str, subcommand: bool) {
    let st = bad_stack();
    let shm = tmpfs_dir();
    if shm.is_none() {
        eprintln!("note {test}: /dev/shm is not a tmpfs: the other-filesystem case is skipped");
    }
    let cases = bad_cases(&st, shm.as_ref().map(|d| d.path()), subcommand);
    let problems: Vec<String> = cases.iter().flat_map(check_refused).collect();
    assert!(
        problems.is_empty(),
        "{test}: {} problem(s) in {} refused invocations:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );
}

#[test]
fn bad_input_is_refused_cleanly() {
    if !can_mount() {
        return;
    }
    refuse_all("bad_input_is_refused_cleanly", true);
}

#[test]
fn bad_input_is_refused_cleanly_mount_program_form() {
    if !can_mount() {
        return;
    }
    refuse_all("bad_input_is_refused_cleanly_mount_program_form", false);
}

#[test]
fn missing_mountpoint_argument_is_refused() {
    if !can_mount() {
        return;
    }
    let st = bad_stack();
    let before = snapshot(std::slice::from_ref(&st.root));
    let r = run(&os(&[
        "mount",
        "-o",
        &opts(Some(&st.lowerdir()), Some(&st.upper), Some(&st.work)),
    ]));
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.code.is_some(), "{r:?}");
    assert!(!r.stderr.trim().is_empty(), "{r:?}");
    assert_eq!(before, snapshot(std::slice::from_ref(&st.root)));
}

// ---------------------------------------------------------------------------------------
// Mounts that work

/// A background mount made by a direct run of the binary; on drop: unmounted, its daemon
/// waited for (killed if it lingers).
struct Live {
    mnt: PathBuf,
    daemons: Vec<i32>,
}

impl Live {
    /// Runs `args` (which must mount at `mnt` in the background) and checks exit 0 + live mount.
    fn start(args: &[OsString], mnt: &Path) -> (Live, Run) {
        let known = daemons_of(&bin(), mnt);
        let r = run(args);
        let daemons: Vec<i32> = daemons_of(&bin(), mnt)
            .into_iter()
            .filter(|p| !known.contains(p))
            .collect();
        let live = Live {
            mnt: mnt.to_path_buf(),
            daemons,
        };
        assert_eq!(r.code, Some(0), "rlayerfs {args:?}: {r:?}");
        let info = mount_info(mnt);
        assert!(
            info.as_ref().is_some_and(|(t, _)| t.starts_with("fuse")),
            "rlayerfs {args:?} exited 0 but the mount table has {info:?} at {}",
            mnt.display()
        );
        (live, r)
    }

    fn wait_daemons_gone(&self, limit: Duration) -> bool {
        wait_until(limit, || self.daemons.iter().all(|&p| is_zombie(p)))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if mount_info(&self.mnt).is_some() {
            let _ = unmount_path(&self.mnt, fusermount_u);
        }
        if !self.wait_daemons_gone(EXIT_TIMEOUT) {
            for &pid in &self.daemons {
                if !is_zombie(pid) {
                    // SAFETY: kill has no memory preconditions; pid is the daemon we started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

fn fusermount_u(mnt: &Path) -> std::io::Result<()> {
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(mnt)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("fusermount3 -u: {st}")))
    }
}

/// A two-layer stack: `f` in both (top wins), `g` only in the bottom.
fn good_stack() -> Stack {
    let st = Stack::new(2);
    st.lower(0).file("f", b"top f");
    st.lower(1).file("f", b"bottom f").file("g", b"bottom g");
    st
}

/// The mount at `mnt` shows the top layer's `f`, the bottom's `g`, and writes reach `upper`.
fn check_serves(st: &Stack, mnt: &Path, tag: &str) {
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"top f", "{tag}: f");
    assert_eq!(fs::read(mnt.join("g")).unwrap(), b"bottom g", "{tag}: g");
    fs::write(mnt.join(tag), b"written").unwrap();
    assert_eq!(
        fs::read(st.upper.join(tag)).ok().as_deref(),
        Some(&b"written"[..]),
        "{tag}: a new file must land in the upper"
    );
}

#[test]
fn mount_program_form_mounts() {
    if !can_mount() {
        return;
    }
    let st = good_stack();
    let o = opts(Some(&st.lowerdir()), Some(&st.upper), Some(&st.work));
    let (live, r) = Live::start(
        &[OsString::from("-o"), o.into(), st.mnt.clone().into()],
        &st.mnt,
    );
    assert!(r.stderr.trim().is_empty(), "unexpected stderr: {r:?}");
    check_serves(&st, &st.mnt, "bare");
    drop(live);
    assert!(mount_info(&st.mnt).is_none());
}

#[test]
fn layer_flags_mount() {
    if !can_mount() {
        return;
    }
    for subcommand in [true, false] {
        let st = good_stack();
        let mut args: Vec<OsString> = Vec::new();
        if subcommand {
            args.push("mount".into());
        }
        for l in &st.lowers {
            args.push("--lower".into());
            args.push(l.clone().into());
        }
        args.extend([
            "--upper".into(),
            st.upper.clone().into(),
            "--work".into(),
            st.work.clone().into(),
            st.mnt.clone().into(),
        ]);
        let (live, _) = Live::start(&args, &st.mnt);
        check_serves(&st, &st.mnt, if subcommand { "flags" } else { "bareflags" });
        drop(live);
    }
}

#[test]
fn unknown_option_warns_once_and_mounts() {
    if !can_mount() {
        return;
    }
    let st = good_stack();
    let o = format!(
        "{},frobnicate=3",
        opts(Some(&st.lowerdir()), Some(&st.upper), Some(&st.work))
    );
    let (live, r) = Live::start(&os(&["mount", "-o", &o, &p(&st.mnt)]), &st.mnt);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one warning line, got {:?}", r.stderr);
    assert!(lines[0].contains("frobnicate"), "{:?}", lines[0]);
    check_serves(&st, &st.mnt, "unknown");
    drop(live);
}

#[test]
fn foreground_stays_until_unmounted_and_exits_0() {
    if !can_mount() {
        return;
    }
    let st = good_stack();
    let o = opts(Some(&st.lowerdir()), Some(&st.upper), Some(&st.work));
    let mut child = spawn_foreground(&o, &st.mnt);
    let mounted = wait_until(RUN_TIMEOUT, || mount_info(&st.mnt).is_some());
    let guard = Live {
        mnt: st.mnt.clone(),
        daemons: vec![child.id() as i32],
    };
    assert!(mounted, "-f: no mount within {RUN_TIMEOUT:?}");
    check_serves(&st, &st.mnt, "fg");
    sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "-f: the process left the foreground while mounted"
    );
    fusermount_u(&st.mnt).expect("fusermount3 -u");
    let code = wait_for(&mut child, EXIT_TIMEOUT);
    assert_eq!(code, Some(0), "-f: exit after fusermount3 -u");
    assert!(mount_info(&st.mnt).is_none());
    drop(guard);
}

fn spawn_foreground(o: &str, mnt: &Path) -> Child {
    Command::new(BIN)
        .args(["mount", "-f", "-o", o])
        .arg(mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create("/dev/null").unwrap())
        .spawn()
        .expect("spawn rlayerfs -f")
}

#[test]
fn sigterm_unmounts_and_exits_0() {
    if !can_mount() {
        return;
    }
    // Foreground: the exit status is ours to see. SIGINT (Ctrl-C) too.
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let st = good_stack();
        let o = opts(Some(&st.lowerdir()), Some(&st.upper), Some(&st.work));
        let mut child = spawn_foreground(&o, &st.mnt);
        let guard = Live {
            mnt: st.mnt.clone(),
            daemons: vec![child.id() as i32],
        };
        assert!(wait_until(RUN_TIMEOUT, || mount_info(&st.mnt).is_some()));
        check_serves(&st, &st.mnt, "term_fg");
        // SAFETY: kill has no memory preconditions; the pid is our child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let code = wait_for(&mut child, EXIT_TIMEOUT);
        assert_eq!(code, Some(0), "-f: exit status after {name}");
        assert!(
            mount_info(&st.mnt).is_none(),
            "-f: still mounted after {name} and exit"
        );
        drop(guard);
    }

    // Background daemon.
    let st = good_stack();
    let o = opts(Some(&st.lowerdir()), Some(&st.upper), Some(&st.work));
    let (live, _) = Live::start(&os(&["mount", "-o", &o, &p(&st.mnt)]), &st.mnt);
    assert_eq!(live.daemons.len(), 1, "one daemon: {:?}", live.daemons);
    // SAFETY: kill has no memory preconditions; the pid is the daemon we started.
    unsafe { libc::kill(live.daemons[0], libc::SIGTERM) };
    assert!(
        wait_until(EXIT_TIMEOUT, || mount_info(&st.mnt).is_none()),
        "background: still mounted {EXIT_TIMEOUT:?} after SIGTERM"
    );
    assert!(
        live.wait_daemons_gone(EXIT_TIMEOUT),
        "background: daemon alive {EXIT_TIMEOUT:?} after SIGTERM"
    );
    drop(live);
}

#[test]
fn busy_mountpoint_is_refused() {
    if !can_mount() {
        return;
    }
    let first = good_stack();
    let m = FuseMount::mount_dirs(&MountDirs::of(&first)).expect("first mount");
    let second = good_stack();
    let case = Bad {
        what: "busy mountpoint",
        args: os(&[
            "mount",
            "-o",
            &opts(
                Some(&second.lowerdir()),
                Some(&second.upper),
                Some(&second.work),
            ),
            &p(&first.mnt),
        ]),
        mention: vec![p(&first.mnt)],
        watch: vec![second.root.clone()],
        // The first mount stays: check the count instead.
        mnt: second.mnt.clone(),
    };
    let problems = check_refused(&case);
    let count = mounts_at(&first.mnt);
    let still = fs::read(first.mnt.join("f"));
    drop(m);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(
        count, 1,
        "mounts at the busy mountpoint after the refused mount"
    );
    assert_eq!(
        still.ok().as_deref(),
        Some(&b"top f"[..]),
        "first mount no longer serves"
    );
}

// ---------------------------------------------------------------------------------------
// One upper, one daemon

/// A second mount of an upperdir or workdir a live daemon uses is refused with one line
/// naming it; the workdir (with what the live daemon has in its scratch) and the upper are
/// left exactly as they were, and the first mount still serves.
#[test]
fn busy_upper_or_workdir_is_refused() {
    if !can_mount() {
        return;
    }
    let first = good_stack();
    let o = opts(
        Some(&first.lowerdir()),
        Some(&first.upper),
        Some(&first.work),
    );
    let (live, _) = Live::start(&os(&["mount", "-o", &o, &p(&first.mnt)]), &first.mnt);
    check_serves(&first, &first.mnt, "before");
    // What the live daemon could be building in its scratch: a second mount must not
    // empty it.
    fs::write(first.work.join("work/half-built"), b"copy-up in progress").unwrap();
    let (other_upper, other_work) = (first.fresh_dir("u2"), first.fresh_dir("w2"));
    let cases = [
        (
            "same upperdir and workdir",
            &first.upper,
            &first.work,
            p(&first.upper),
        ),
        ("same upperdir", &first.upper, &other_work, p(&first.upper)),
        ("same workdir", &other_upper, &first.work, p(&first.work)),
    ];
    let mut problems = Vec::new();
    for (what, upper, work, names) in cases {
        let mnt = first.fresh_dir("m2");
        let start = Instant::now();
        problems.extend(check_refused(&Bad {
            what,
            args: os(&[
                "mount",
                "-o",
                &opts(Some(&first.lowerdir()), Some(upper), Some(work)),
                &p(&mnt),
            ]),
            mention: vec![format!("{names} is in use")],
            watch: vec![
                first.upper.clone(),
                first.work.clone(),
                other_upper.clone(),
                other_work.clone(),
            ],
            mnt,
        }));
        eprintln!("{what}: refused after {:?}", start.elapsed());
    }
    let count = mounts_at(&first.mnt);
    let serving = std::panic::catch_unwind(|| check_serves(&first, &first.mnt, "after"));
    drop(live);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(count, 1, "mounts at the first mountpoint");
    assert!(serving.is_ok(), "the first mount no longer serves");
}

/// An upperdir or workdir a kernel overlay mount uses is refused, naming it and the mount.
#[test]
fn kernel_overlay_upper_is_refused() {
    if !can_mount() {
        return;
    }
    let st = good_stack();
    let k = match KernelOverlay::mount(&st) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("SKIP kernel_overlay_upper_is_refused: {e}");
            return;
        }
    };
    let other_work = st.fresh_dir("w2");
    let mnt = st.fresh_dir("m2");
    let problems = check_refused(&Bad {
        what: "upperdir of a kernel overlay mount",
        args: os(&[
            "mount",
            "-o",
            &opts(Some(&st.lowerdir()), Some(&st.upper), Some(&other_work)),
            &p(&mnt),
        ]),
        mention: vec![format!(
            "{} is in use by the kernel overlay mount at {}",
            p(&st.upper),
            p(&st.mnt)
        )],
        watch: vec![st.upper.clone(), st.work.clone(), other_work.clone()],
        mnt,
    });
    drop(k);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A daemon killed with SIGKILL frees its upperdir and workdir by dying: once its dead
/// mount is cleaned up, a new mount of the same dirs works (and empties the scratch).
#[test]
fn sigkill_frees_the_upper_for_a_new_mount() {
    if !can_mount() {
        return;
    }
    let st = good_stack();
    let o = opts(Some(&st.lowerdir()), Some(&st.upper), Some(&st.work));
    let args = os(&["mount", "-o", &o, &p(&st.mnt)]);
    let (live, _) = Live::start(&args, &st.mnt);
    check_serves(&st, &st.mnt, "killed");
    fs::write(st.work.join("work/left-by-the-dead"), b"x").unwrap();
    for &pid in &live.daemons {
        // SAFETY: kill has no memory preconditions; pid is the daemon we started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(
        live.wait_daemons_gone(EXIT_TIMEOUT),
        "daemon survived SIGKILL"
    );
    // The dead mount (ENOTCONN) stays in the table until unmounted.
    unmount_path(&st.mnt, fusermount_u).expect("unmount the dead mount");
    drop(live);
    let start = Instant::now();
    let (again, _) = Live::start(&args, &st.mnt);
    eprintln!("mount after SIGKILL took {:?}", start.elapsed());
    check_serves(&st, &st.mnt, "again");
    assert!(
        !st.work.join("work/left-by-the-dead").exists(),
        "the new mount did not empty the dead daemon's scratch"
    );
    drop(again);
}

/// SIGTERM while a process holds a file open in the mount: the mount stays listed and served
/// (writes through the open file land in the upper, a second mount of the upper is still
/// refused) while the daemon lives; once the file is closed the daemon unmounts and exits 0.
/// It never detaches lazily, which would leave a daemon writing an upper no mount shows.
#[test]
fn sigterm_while_busy_keeps_the_mount_until_idle() {
    if !can_mount() {
        return;
    }
    let st = good_stack();
    let o = opts(Some(&st.lowerdir()), Some(&st.upper), Some(&st.work));
    let mut child = spawn_foreground(&o, &st.mnt);
    let guard = Live {
        mnt: st.mnt.clone(),
        daemons: vec![child.id() as i32],
    };
    assert!(wait_until(RUN_TIMEOUT, || mount_info(&st.mnt).is_some()));
    let mut held = fs::OpenOptions::new()
        .append(true)
        .open(st.mnt.join("f"))
        .expect("open f in the mount");
    // SAFETY: kill has no memory preconditions; the pid is our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    sleep(Duration::from_millis(1500));
    let alive = child.try_wait().unwrap().is_none();
    let listed = mount_info(&st.mnt).is_some();
    use std::io::Write;
    let wrote = held
        .write_all(b" + after SIGTERM")
        .and_then(|()| held.sync_all());
    let in_upper = fs::read(st.upper.join("f")).unwrap_or_default();
    let second = {
        let mnt = st.fresh_dir("m2");
        let r = run(&os(&["mount", "-o", &o, &p(&mnt)]));
        force_cleanup(&mnt);
        r
    };
    drop(held);
    let code = wait_for(&mut child, EXIT_TIMEOUT);
    let gone = mount_info(&st.mnt).is_none();
    drop(guard);
    assert!(alive, "the daemon exited on SIGTERM while busy");
    assert!(listed, "the busy mount left the mount table on SIGTERM");
    assert!(wrote.is_ok(), "write through the held file: {wrote:?}");
    assert_eq!(
        in_upper, b"top f + after SIGTERM",
        "the write did not reach the upper"
    );
    assert_ne!(
        second.code,
        Some(0),
        "second mount of the served upper: {second:?}"
    );
    assert_eq!(code, Some(0), "exit status once the file was closed");
    assert!(gone, "still mounted after the daemon exited");
}

// ---------------------------------------------------------------------------------------
// Unmount followed at once by a new mount at the same path

/// Rounds of unmount + immediate remount.
const REMOUNT_ROUNDS: usize = 100;

#[test]
fn remount_race_keeps_the_new_mount() {
    if !can_mount() {
        return;
    }
    let st = good_stack();
    let o = opts(Some(&st.lowerdir()), Some(&st.upper), Some(&st.work));
    let args = os(&["mount", "-o", &o, &p(&st.mnt)]);
    let mut failures = Vec::new();
    let (mut current, _) = Live::start(&args, &st.mnt);
    for round in 0..REMOUNT_ROUNDS {
        let old = current.daemons.clone();
        if let Err(e) = fusermount_u(&st.mnt) {
            failures.push(format!(
                "round {round}: fusermount3 -u: {e} (mount table: {:?})",
                mount_info(&st.mnt)
            ));
            break;
        }
        // At once, while the old daemon may still be exiting.
        let known = daemons_of(&bin(), &st.mnt);
        let r = run(&args);
        let live_at_exit = mount_info(&st.mnt).is_some();
        let old_alive_at_exit = old.iter().any(|&p| !is_zombie(p));
        let new: Vec<i32> = daemons_of(&bin(), &st.mnt)
            .into_iter()
            .filter(|p| !known.contains(p))
            .collect();
        let new_pids = new.clone();
        // The old guard must not unmount the new mount: disarm it.
        current.mnt = PathBuf::from("/nonexistent-disarmed");
        drop(std::mem::replace(
            &mut current,
            Live {
                mnt: st.mnt.clone(),
                daemons: new,
            },
        ));
        if r.code != Some(0) {
            failures.push(format!("round {round}: second mount failed: {r:?}"));
            break;
        }
        let old_gone = wait_until(EXIT_TIMEOUT, || old.iter().all(|&p| is_zombie(p)));
        sleep(Duration::from_millis(50));
        let info = mount_info(&st.mnt);
        let serving = fs::read(st.mnt.join("f"));
        if !old_gone {
            failures.push(format!("round {round}: old daemon {old:?} still alive"));
        }
        match (&info, &serving) {
            (Some((t, _)), Ok(d)) if t.starts_with("fuse") && d == b"top f" => {}
            _ => failures.push(format!(
                "round {round}: the new mount (rlayerfs exited 0, mounted right after: \
                 {live_at_exit}, old daemon still running then: {old_alive_at_exit}) is gone \
                 once the old daemon {old:?} exited: mount table \
                 {info:?}, new daemon {new_pids:?} still running: {}, reading f gives {:?}",
                new_pids.iter().any(|&p| !is_zombie(p)),
                serving
                    .as_ref()
                    .map(|d| String::from_utf8_lossy(d).into_owned())
            )),
        }
        if mount_info(&st.mnt).is_none() {
            // Lost: let the daemon that lost its mount exit (it could take a new mount down
            // the same way), then mount again so later rounds still test something.
            drop(std::mem::replace(
                &mut current,
                Live {
                    mnt: PathBuf::from("/nonexistent-disarmed"),
                    daemons: Vec::new(),
                },
            ));
            let (l, _) = Live::start(&args, &st.mnt);
            current = l;
        }
    }
    drop(current);
    assert!(
        failures.is_empty(),
        "{} of {REMOUNT_ROUNDS} rounds went wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// What containers/storage passes

/// containers/storage runs the mount_program with cwd = its overlay directory and, when the
/// option string gets long, lowers as relative `l/ID` symlinks; it adds `volatile`, a quoted
/// SELinux `context` (commas and colons inside) and id mappings.
#[test]
fn containers_storage_invocation_mounts() {
    if !can_mount() {
        return;
    }
    let st = good_stack();
    let l = st.root.join("l");
    fs::create_dir(&l).unwrap();
    std::os::unix::fs::symlink("../l0", l.join("TOPLINK")).unwrap();
    std::os::unix::fs::symlink("../l1", l.join("BOTLINK")).unwrap();
    let o = format!(
        "lowerdir=l/TOPLINK:l/BOTLINK,upperdir={},workdir={},volatile,\
         context=\"system_u:object_r:container_file_t:s0:c1,c2\",\
         uidmapping=0:0:65536,gidmapping=0:0:65536",
        p(&st.upper),
        p(&st.work)
    );
    let known = daemons_of(&bin(), &st.mnt);
    let mut err = tempfile::tempfile().unwrap();
    let mut child = Command::new(BIN)
        .arg("-o")
        .arg(&o)
        .arg(&st.mnt)
        .current_dir(&st.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .unwrap();
    let code = wait_for(&mut child, RUN_TIMEOUT);
    let live = Live {
        mnt: st.mnt.clone(),
        daemons: daemons_of(&bin(), &st.mnt)
            .into_iter()
            .filter(|p| !known.contains(p))
            .collect(),
    };
    let mut stderr = String::new();
    err.seek(SeekFrom::Start(0)).unwrap();
    err.read_to_string(&mut stderr).unwrap();
    assert_eq!(
        code,
        Some(0),
        "rlayerfs -o {o:?} (cwd {}): {stderr}",
        p(&st.root)
    );
    assert!(
        stderr.trim().is_empty(),
        "options containers/storage passes must not warn: {stderr:?}"
    );
    check_serves(&st, &st.mnt, "storage");
    drop(live);
}

/// Layer and mount paths with spaces, commas and colons (escaped in lowerdir with `\:`,
/// commas inside double quotes).
#[test]
fn awkward_paths_mount() {
    if !can_mount() {
        return;
    }
    let st = Stack::new(1);
    let dir = |n: &str| {
        let d = st.root.join(n);
        fs::create_dir(&d).unwrap();
        d
    };
    let (top, bottom) = (dir("top layer:1"), dir("bottom,layer"));
    let (upper, work, mnt) = (dir("up per"), dir("work dir"), dir("merged dir"));
    fs::write(top.join("f"), b"top f").unwrap();
    fs::write(bottom.join("f"), b"bottom f").unwrap();
    fs::write(bottom.join("g"), b"bottom g").unwrap();
    let esc = |d: &Path| p(d).replace(':', "\\:");
    let o = format!(
        "lowerdir=\"{}\":\"{}\",upperdir=\"{}\",workdir=\"{}\"",
        esc(&top),
        esc(&bottom),
        p(&upper),
        p(&work)
    );
    let (live, r) = Live::start(&os(&["mount", "-o", &o, &p(&mnt)]), &mnt);
    assert!(r.stderr.trim().is_empty(), "{r:?}");
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"top f");
    assert_eq!(fs::read(mnt.join("g")).unwrap(), b"bottom g");
    fs::write(mnt.join("new"), b"n").unwrap();
    assert_eq!(fs::read(upper.join("new")).unwrap(), b"n");
    // Busy check on a mountpoint whose name needs escaping in /proc/self/mountinfo.
    let again = run(&os(&["mount", "-o", &o, &p(&mnt)]));
    assert_ne!(
        again.code,
        Some(0),
        "second mount on a busy {mnt:?}: {again:?}"
    );
    assert_eq!(mounts_at_escaped(&mnt), 1, "mounts at {mnt:?}");
    drop(live);
}

/// Like `mounts_at`, decoding mountinfo's octal escapes (space is `\040`).
fn mounts_at_escaped(mnt: &Path) -> usize {
    let want = p(mnt)
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012");
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .count()
}

/// Several `-o`, and a read-only mount without upperdir (writes fail with EROFS, as on
/// kernel overlayfs without upperdir).
#[test]
fn repeated_o_and_read_only_mounts() {
    if !can_mount() {
        return;
    }
    let st = good_stack();
    let args = os(&[
        "mount",
        "-o",
        &format!("lowerdir={}", st.lowerdir()),
        "-o",
        &format!("upperdir={},workdir={}", p(&st.upper), p(&st.work)),
        &p(&st.mnt),
    ]);
    let (live, _) = Live::start(&args, &st.mnt);
    check_serves(&st, &st.mnt, "repeated");
    drop(live);

    let st = good_stack();
    let (live, _) = Live::start(
        &os(&[
            "mount",
            "-o",
            &format!("lowerdir={}", st.lowerdir()),
            &p(&st.mnt),
        ]),
        &st.mnt,
    );
    assert_eq!(fs::read(st.mnt.join("f")).unwrap(), b"top f");
    let w = fs::write(st.mnt.join("new"), b"x").map_err(|e| e.raw_os_error());
    assert_eq!(
        w,
        Err(Some(libc::EROFS)),
        "write on a mount without upperdir"
    );
    let w = fs::OpenOptions::new()
        .write(true)
        .open(st.mnt.join("f"))
        .map(|_| ())
        .map_err(|e| e.raw_os_error());
    assert_eq!(
        w,
        Err(Some(libc::EROFS)),
        "open for writing without upperdir"
    );
    drop(live);
    assert_eq!(
        fs::read_dir(&st.upper).unwrap().count(),
        0,
        "a mount without upperdir must not touch the stack's upper"
    );
}

/// `rlayerfs bench`, tiny: it runs, removes what it generated, and its JSON has one row per
/// system and layer count with every figure (through the mount when one can be made).
#[test]
fn bench_subcommand_reports_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = can_mount();
    let mut args = os(&[
        "bench", "--layers", "1,2", "--files", "50", "--json", "--dir",
    ]);
    args.push(dir.path().into());
    if !mount {
        args.push("--no-mount".into());
    }
    let out = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run rlayerfs bench");
    assert!(out.status.success(), "bench failed: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(v["files"], 50);
    assert_eq!(v["layers"], serde_json::json!([1, 2]));
    let rows = v["results"].as_array().expect("results");
    let mut systems = vec!["core"];
    if mount {
        systems.push("rlayerfs");
    }
    for sys in systems {
        for layers in [1, 2] {
            let row = rows
                .iter()
                .find(|r| r["system"] == sys && r["layers"] == layers)
                .unwrap_or_else(|| panic!("no {sys} row at {layers} layers: {v}"));
            for key in [
                "lookup_hit_us",
                "lookup_miss_us",
                "readdir_first_ms",
                "readdir_again_ms",
                "small_read_us",
            ] {
                assert!(
                    row[key].as_f64().is_some(),
                    "{sys}/{layers}: {key} in {row}"
                );
            }
            // 50 files, and 10 fillers per layer above the bottom one.
            assert_eq!(
                row["entries"],
                50 + 10 * (layers - 1),
                "{sys}/{layers}: {row}"
            );
        }
    }
    assert!(v["skipped"].as_array().is_some_and(|s| s.is_empty()), "{v}");
    assert_eq!(
        fs::read_dir(dir.path()).expect("list").count(),
        0,
        "bench leaves nothing behind"
    );
}

// ---------------------------------------------------------------------------------------
// mount(8), /etc/fstab and --help

/// `mount.fuse.rlayerfs SOURCE MOUNTPOINT -sn -o OPTS` (how mount(8) runs a helper): mounts,
/// shows SOURCE in the mount table, ignores fstab-only options without a warning; `-f` (fake)
/// mounts nothing.
#[test]
fn mount_helper_argv0_form() {
    if !can_mount() {
        return;
    }
    let st = good_stack();
    let helper_dir = st.fresh_dir("helper");
    let helper = helper_dir.join("mount.fuse.rlayerfs");
    std::os::unix::fs::symlink(BIN, &helper).unwrap();
    let o = format!(
        "{},noauto,nofail,_netdev,defaults,x-systemd.automount",
        opts(Some(&st.lowerdir()), Some(&st.upper), Some(&st.work))
    );
    let fake = run_program(
        &helper,
        &os(&[
            "mysource",
            &p(&st.mnt),
            "-f",
            "-o",
            &o,
            "-t",
            "fuse.rlayerfs",
        ]),
    );
    assert_eq!(fake.code, Some(0), "fake mount: {fake:?}");
    assert!(mount_info(&st.mnt).is_none(), "-f (fake) mounted something");

    let known = daemons_of(&bin(), &st.mnt);
    let r = run_program(
        &helper,
        &os(&[
            "mysource",
            &p(&st.mnt),
            "-sn",
            "-o",
            &o,
            "-t",
            "fuse.rlayerfs",
        ]),
    );
    let live = Live {
        mnt: st.mnt.clone(),
        daemons: daemons_of(&bin(), &st.mnt)
            .into_iter()
            .filter(|p| !known.contains(p))
            .collect(),
    };
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.trim().is_empty(), "unexpected stderr: {r:?}");
    assert_eq!(
        mount_info(&st.mnt),
        Some(("fuse.rlayerfs".to_string(), "mysource".to_string()))
    );
    check_serves(&st, &st.mnt, "helper");
    drop(live);
    assert!(mount_info(&st.mnt).is_none());
    let bad = run_program(&helper, &os(&["src", &p(&st.mnt), "-q"]));
    assert_eq!(bad.code, Some(1), "{bad:?}");
}

/// `mount -t fuse.rlayerfs` (through mount.fuse3) and an /etc/fstab line, in a private mount
/// namespace where /usr/local/bin holds `rlayerfs` and /etc/fstab is a test file: the host's
/// directories and fstab are untouched, and the mounts vanish with the namespace.
#[test]
fn mount_t_fuse_rlayerfs_and_fstab() {
    if !can_mount() {
        return;
    }
    if !Path::new("/sbin/mount.fuse3").exists() && !Path::new("/usr/sbin/mount.fuse3").exists() {
        eprintln!("SKIP mount_t_fuse_rlayerfs_and_fstab: mount.fuse3 (package fuse3) missing");
        return;
    }
    let st = good_stack();
    let bindir = st.fresh_dir("bin");
    std::os::unix::fs::symlink(BIN, bindir.join("rlayerfs")).unwrap();
    let o = opts(Some(&st.lowerdir()), Some(&st.upper), Some(&st.work));
    let fstab = st.fresh_dir("etc").join("fstab");
    fs::write(
        &fstab,
        format!(
            "# test fstab\nfromfstab {} fuse.rlayerfs {o},nofail 0 0\n",
            p(&st.mnt)
        ),
    )
    .unwrap();
    // The namespace starts with copies of every mount, other tests' included; while it
    // lives those copies keep their filesystems (and FUSE daemons) alive after the tests
    // unmount them, so the ones under the temp directory are dropped first.
    let script = r#"
set -e
findmnt -rn -o TARGET | while read -r t; do
    case "$t" in "$5"/*) umount -l "$t" 2>/dev/null || true ;; esac
done
mount --bind "$1" /usr/local/bin
mount --bind "$2" /etc/fstab
mnt=$3
mount -t fuse.rlayerfs bycommand "$mnt" -o "$4"
findmnt -n -o FSTYPE,SOURCE --mountpoint "$mnt"
cat "$mnt/f"; echo
umount "$mnt"
mount "$mnt"
findmnt -n -o FSTYPE,SOURCE --mountpoint "$mnt"
cat "$mnt/g"; echo
umount "$mnt"
"#;
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&bindir)
        .arg(&fstab)
        .arg(&st.mnt)
        .arg(&o)
        .arg(std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stdout}{stderr}", out.status);
    let lines: Vec<&str> = stdout.lines().map(|l| l.trim()).collect();
    assert_eq!(
        lines,
        [
            "fuse.rlayerfs bycommand",
            "top f",
            "fuse.rlayerfs fromfstab",
            "bottom g"
        ],
        "stderr: {stderr}"
    );
    assert!(
        mount_info(&st.mnt).is_none(),
        "a mount leaked out of the namespace"
    );
}

/// Option names the parser in src/options.rs knows: the keys of `MountOptions::apply`'s and
/// `FuseFlag::from_name`'s match arms, the kernel overlayfs table and the fstab-only list.
fn parser_option_names() -> Vec<String> {
    let src = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/options.rs"))
        .expect("read src/options.rs");
    let region = |from: &str, to: &str| -> String {
        let start = src
            .find(from)
            .unwrap_or_else(|| panic!("{from} not in options.rs"));
        let len = src[start..]
            .find(to)
            .unwrap_or_else(|| panic!("{to} after {from}"));
        src[start..start + len].to_string()
    };
    let quoted = |line: &str| -> Vec<String> {
        line.split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let mut names = Vec::new();
    for body in [
        region("fn apply(", "fn add_fuse_flag("),
        region("fn from_name(", "fn family("),
    ] {
        for line in body.lines().map(str::trim) {
            // Match arms: `"a" | "b" => ...`.
            if line.starts_with('"') && line.contains("=>") {
                let arm = line.split("=>").next().unwrap_or_default();
                names.extend(quoted(arm));
            }
        }
    }
    for line in region("const OVERLAY_OPTIONS", "];").lines().map(str::trim) {
        if line.starts_with("(\"") {
            names.extend(quoted(line).into_iter().take(1));
        }
    }
    names.extend(quoted(&region("pub const FSTAB_ONLY_OPTIONS", "];")));
    names.sort();
    names.dedup();
    names
}

/// Whether `name` occurs in `text` as a whole option name.
fn mentions(text: &str, name: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + name.len()..].chars().next();
        !before.is_some_and(word)
            && !after.is_some_and(|c| word(c) || (c == '+' && !name.ends_with('+')))
    })
}

/// `--help` (and `mount --help`) list every option the parser knows.
#[test]
fn help_lists_every_option() {
    let names = parser_option_names();
    for must in [
        "lowerdir",
        "uidmapping",
        "xattr_permissions",
        "allow_other",
        "index",
        "nofail",
    ] {
        assert!(
            names.iter().any(|n| n == must),
            "extraction missed {must}: {names:?}"
        );
    }
    assert!(names.len() >= 60, "too few option names found: {names:?}");
    for args in [&["--help"][..], &["mount", "--help"][..]] {
        let out = Command::new(BIN).args(args).output().expect("run --help");
        assert!(out.status.success(), "{args:?}: {}", out.status);
        let help = String::from_utf8_lossy(&out.stdout);
        let missing: Vec<&String> = names.iter().filter(|n| !mentions(&help, n)).collect();
        assert!(missing.is_empty(), "{args:?} does not list {missing:?}");
    }
}

/// Runs `script` with `args` in a private mount namespace (the mounts it makes vanish with
/// it), after dropping the namespace's copies of mounts under the temp directory (other
/// tests' mounts, which the copies would keep alive). Returns (success, stdout, stderr).
fn in_mount_namespace(script: &str, args: &[&OsString]) -> (bool, String, String) {
    let prelude = r#"
findmnt -rn -o TARGET | while read -r t; do
    case "$t" in "$TMPROOT"/*) umount -l "$t" 2>/dev/null || true ;; esac
done
"#;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!("{prelude}{script}"))
        .arg("sh")
        .args(args)
        .env("TMPROOT", std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `mount -o remount,ro M` and `remount,rw` through mount(8), which runs the helper
/// (mount.fuse3, then `rlayerfs SOURCE M -o ro,relatime,remount,user_id=0,…`): writes fail
/// with EROFS in between and work again after, the mount table follows, no second daemon
/// starts. Kernel overlayfs, remounted the same way, is the reference.
#[test]
fn mount_remount_ro_and_rw() {
    if !can_mount() {
        return;
    }
    if !Path::new("/sbin/mount.fuse3").exists() && !Path::new("/usr/sbin/mount.fuse3").exists() {
        eprintln!("SKIP mount_remount_ro_and_rw: mount.fuse3 (package fuse3) missing");
        return;
    }
    let script = r#"
set -e
mount --bind "$1" /usr/local/bin
mnt=$2
mount -t "$3" src "$mnt" -o "$4"
write() {
    err=$(sh -c 'echo x > "$1"' sh "$mnt/$1" 2>&1 | sed 's/.*: //')
    echo "write $1: ${err:-ok}; mount $(findmnt -n -o VFS-OPTIONS --mountpoint "$mnt" | cut -d, -f1)"
}
write a
mount -o remount,ro "$mnt"
write b
mount -o remount,rw "$mnt"
write c
mount -o remount,ro "$mnt"
write d
echo "daemons: $(ps -eo comm=,args= | grep -c "^rlayerfs .*$mnt" || true)"
umount "$mnt"
"#;
    let mut seen = Vec::new();
    for fstype in ["overlay", "fuse.rlayerfs"] {
        let st = good_stack();
        let bindir = st.fresh_dir("bin");
        std::os::unix::fs::symlink(BIN, bindir.join("rlayerfs")).unwrap();
        let o = opts(Some(&st.lowerdir()), Some(&st.upper), Some(&st.work));
        let args: Vec<OsString> = vec![
            bindir.into(),
            st.mnt.clone().into(),
            fstype.into(),
            o.into(),
        ];
        let (ok, stdout, stderr) = in_mount_namespace(script, &args.iter().collect::<Vec<_>>());
        assert!(ok, "{fstype}: {stdout}{stderr}");
        assert!(mount_info(&st.mnt).is_none(), "a mount leaked out");
        seen.push((fstype, stdout, stderr));
    }
    let expect = "write a: ok; mount rw\n\
                  write b: Read-only file system; mount ro\n\
                  write c: ok; mount rw\n\
                  write d: Read-only file system; mount ro\n";
    let (_, kernel, kerr) = &seen[0];
    assert_eq!(*kernel, format!("{expect}daemons: 0\n"), "kernel: {kerr}");
    let (_, fuse, ferr) = &seen[1];
    assert_eq!(*fuse, format!("{expect}daemons: 1\n"), "rlayerfs: {ferr}");
    assert!(ferr.trim().is_empty(), "rlayerfs warned: {ferr}");
}
