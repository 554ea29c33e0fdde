//! Mount guards. `KernelOverlay` mounts kernel overlayfs (`index=on,redirect_dir=on,
//! metacopy=on`, rlayerfs's defaults as root; `RLAYERFS_TEST_METACOPY=off` mounts both the
//! kernel and rlayerfs with `metacopy=off`);
//! `FuseMount` runs the FUSE binary under test (rlayerfs, or `RLAYERFS_TEST_BIN`, e.g.
//! fuse-overlayfs), which must return exit 0 only once the mount is live.
//!
//! Both unmount in `Drop` (also while unwinding from a panic), falling back to a lazy
//! unmount. `FuseMount` kills only the daemon it started: the process whose argv holds this
//! guard's unique mountpoint and whose executable is the binary it ran.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::fixture::Stack;
use super::sys;

/// Options the kernel reference is always mounted with (see the module doc).
pub fn kernel_opts() -> String {
    format!("index=on,redirect_dir=on,metacopy={}", test_metacopy())
}

/// `on` unless `RLAYERFS_TEST_METACOPY=off`.
pub fn test_metacopy() -> &'static str {
    match std::env::var("RLAYERFS_TEST_METACOPY").as_deref() {
        Ok("off") => "off",
        _ => "on",
    }
}
/// How long the FUSE binary may take to report a live mount.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// Retries of an unmount that fails with EBUSY (a closing fd may still pin the mount).
const UNMOUNT_TRIES: u32 = 20;
const UNMOUNT_RETRY_DELAY: Duration = Duration::from_millis(50);
/// How long a FUSE daemon may take to exit after its unmount before it is killed.
const DAEMON_EXIT_GRACE: Duration = Duration::from_secs(5);

/// Directories of one mount: lowers (top first), upper, workdir, mountpoint.
#[derive(Clone, Debug)]
pub struct MountDirs {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl MountDirs {
    /// The stack's own dirs.
    pub fn of(stack: &Stack) -> MountDirs {
        MountDirs {
            lowers: stack.lowers.clone(),
            upper: stack.upper.clone(),
            work: stack.work.clone(),
            mnt: stack.mnt.clone(),
        }
    }

    /// The stack's lowers and mountpoint with a fresh upper and workdir made in `dir` (a
    /// test filesystem: a small tmpfs, an ext4 image).
    #[allow(dead_code)]
    pub fn with_upper_in(stack: &Stack, dir: &Path) -> MountDirs {
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        fs::create_dir(&upper).unwrap();
        fs::create_dir(&work).unwrap();
        MountDirs {
            lowers: stack.lowers.clone(),
            upper,
            work,
            mnt: stack.mnt.clone(),
        }
    }

    /// `lowerdir=..,upperdir=..,workdir=..`
    pub fn options(&self) -> String {
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            self.upper.display(),
            self.work.display()
        )
    }
}

/// The mount table entry at `mnt`: (fstype, source), from /proc/self/mountinfo.
pub fn mount_info(mnt: &Path) -> Option<(String, String)> {
    let want = fs::canonicalize(mnt).unwrap_or_else(|_| mnt.to_path_buf());
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    // The last matching line is the top mount at that point.
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let point = unescape_mountinfo(fields.get(4)?);
        if Path::new(&point) != want {
            return None;
        }
        let sep = fields.iter().position(|f| *f == "-")?;
        Some((
            fields.get(sep + 1)?.to_string(),
            fields.get(sep + 2)?.to_string(),
        ))
    })
}

/// Whether something is mounted at `mnt`.
pub fn is_mounted(mnt: &Path) -> bool {
    mount_info(mnt).is_some()
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts with retries on EBUSY, then lazily as a last resort. Ok(true) if a plain unmount
/// worked, Ok(false) if it had to be lazy.
pub fn unmount_path(mnt: &Path, first: impl Fn(&Path) -> io::Result<()>) -> io::Result<bool> {
    let mut last = None;
    for i in 0..UNMOUNT_TRIES {
        let r = if i == 0 {
            first(mnt)
        } else {
            sys::umount2(mnt, 0)
        };
        match r {
            Ok(()) => return Ok(true),
            Err(e) if !is_mounted(mnt) => {
                let _ = e;
                return Ok(true);
            }
            Err(e) => last = Some(e),
        }
        sleep(UNMOUNT_RETRY_DELAY);
    }
    sys::umount2(mnt, libc::MNT_DETACH)?;
    eprintln!(
        "warning: lazy unmount of {} after: {:?}",
        mnt.display(),
        last
    );
    Ok(false)
}

/// Kernel overlayfs mounted with [`kernel_opts`]; unmounted on drop.
#[derive(Debug)]
pub struct KernelOverlay {
    mnt: PathBuf,
    mounted: bool,
}

thread_local! {
    static THREAD_FUSE_ARGS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    static THREAD_FUSE_ENV: std::cell::RefCell<Vec<(String, PathBuf)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An environment variable for the daemons this test thread starts from now on. Not
/// `std::env::set_var`: that is the whole process's, so the daemons of the tests running
/// beside it in other threads would get it too (a request report file set that way was
/// overwritten by another test's daemon at its unmount).
#[allow(dead_code)]
pub fn set_thread_fuse_env(name: &str, value: &Path) {
    THREAD_FUSE_ENV.with(|e| e.borrow_mut().push((name.to_string(), value.to_path_buf())));
}

/// Extra rlayerfs arguments for every FUSE mount this test thread makes from now on
/// (e.g. `--no-passthrough` for a test about what reads do to atime).
#[allow(dead_code)]
pub fn set_thread_fuse_args(args: &[&str]) {
    THREAD_FUSE_ARGS.with(|a| *a.borrow_mut() = args.iter().map(|s| s.to_string()).collect());
}

impl KernelOverlay {
    /// Takes charge (unmount on drop) of an overlay the caller mounted at `mnt`.
    #[allow(dead_code)]
    pub fn adopt(mnt: &Path) -> KernelOverlay {
        KernelOverlay {
            mnt: mnt.to_path_buf(),
            mounted: true,
        }
    }

    /// Mounts the stack at its `mnt`.
    pub fn mount(stack: &Stack) -> io::Result<KernelOverlay> {
        Self::mount_dirs(&MountDirs::of(stack))
    }

    pub fn mount_dirs(dirs: &MountDirs) -> io::Result<KernelOverlay> {
        Self::mount_with(dirs, &kernel_opts())
    }

    /// Mounts with kernel overlayfs options `opts` instead of [`kernel_opts`] (e.g.
    /// `userxattr`).
    pub fn mount_with(dirs: &MountDirs, opts: &str) -> io::Result<KernelOverlay> {
        let data = format!("{},{opts}", dirs.options());
        sys::mount("overlay", &dirs.mnt, "overlay", &data).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("mount -t overlay -o {data} {}: {e}", dirs.mnt.display()),
            )
        })?;
        Ok(KernelOverlay {
            mnt: dirs.mnt.clone(),
            mounted: true,
        })
    }

    /// Mounts `lowers` (top first) alone, read-only, at `mnt`; a single lower gets an
    /// empty one below it (the kernel wants two without an upper), made beside `mnt`.
    pub fn mount_lowers(lowers: &[PathBuf], mnt: &Path) -> io::Result<KernelOverlay> {
        let mut lower = rlayerfs::image::lowerdir_option(lowers);
        if lowers.len() == 1 {
            let empty = mnt.with_extension("empty");
            fs::create_dir_all(&empty)?;
            lower = format!("{lower}:{}", empty.display());
        }
        let data = format!("lowerdir={lower}");
        sys::mount("overlay", mnt, "overlay", &data).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("mount -t overlay -o {data} {}: {e}", mnt.display()),
            )
        })?;
        Ok(KernelOverlay {
            mnt: mnt.to_path_buf(),
            mounted: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// Unmounts now, reporting failure (Drop would only warn).
    pub fn unmount(mut self) -> io::Result<()> {
        self.mounted = false;
        unmount_path(&self.mnt, |m| sys::umount2(m, 0)).map(|_| ())
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = unmount_path(&self.mnt, |m| sys::umount2(m, 0)) {
                eprintln!("warning: cannot unmount {}: {e}", self.mnt.display());
            }
        }
    }
}

/// The FUSE binary under test: `$RLAYERFS_TEST_BIN` if set (e.g. `fuse-overlayfs`, looked up
/// in PATH), else the rlayerfs binary built by cargo.
pub fn fuse_bin() -> PathBuf {
    match std::env::var_os("RLAYERFS_TEST_BIN") {
        Some(bin) if !bin.is_empty() => which(&bin).unwrap_or_else(|| PathBuf::from(bin)),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_rlayerfs")),
    }
}

fn which(bin: &std::ffi::OsStr) -> Option<PathBuf> {
    let p = Path::new(bin);
    if p.components().count() > 1 {
        return Some(p.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(p))
        .find(|c| c.is_file())
}

/// Whether the FUSE binary under test is rlayerfs (takes a `mount` subcommand) rather than
/// a fuse-overlayfs-style program (`PROG -o OPTS MNT`).
fn takes_mount_subcommand(bin: &Path) -> bool {
    bin.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("rlayerfs"))
}

/// A FUSE mount made by the binary under test; unmounted (fusermount3 -u) on drop, its
/// daemon waited for and, if it lingers, killed.
#[derive(Debug)]
pub struct FuseMount {
    mnt: PathBuf,
    bin: PathBuf,
    daemons: Vec<i32>,
    mounted: bool,
}

impl FuseMount {
    pub fn mount(stack: &Stack) -> io::Result<FuseMount> {
        Self::mount_dirs(&MountDirs::of(stack))
    }

    pub fn mount_dirs(dirs: &MountDirs) -> io::Result<FuseMount> {
        Self::mount_with(dirs, &dirs.options())
    }

    /// Mounts with extra command-line arguments (e.g. `--no-passthrough`).
    #[allow(dead_code)]
    pub fn mount_args(stack: &Stack, args: &[&str]) -> io::Result<FuseMount> {
        let dirs = MountDirs::of(stack);
        Self::mount_full(&dirs, Some(&dirs.options()), args)
    }

    /// `rlayerfs mount ARGS MNT` with no `-o` string (e.g. `--image DEST --upper U --work W`).
    #[allow(dead_code)]
    pub fn mount_cli(mnt: &Path, args: &[&str]) -> io::Result<FuseMount> {
        let dirs = MountDirs {
            lowers: Vec::new(),
            upper: PathBuf::new(),
            work: PathBuf::new(),
            mnt: mnt.to_path_buf(),
        };
        Self::mount_full(&dirs, None, args)
    }

    /// A read-only mount of the lowers only (no upperdir/workdir; `dirs.upper`/`work` unused).
    pub fn mount_read_only(dirs: &MountDirs) -> io::Result<FuseMount> {
        let lowers: Vec<String> = dirs
            .lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        Self::mount_with(dirs, &format!("lowerdir={}", lowers.join(":")))
    }

    /// Mounts at `dirs.mnt` with the given `-o` string.
    pub fn mount_with(dirs: &MountDirs, options: &str) -> io::Result<FuseMount> {
        Self::mount_full(dirs, Some(options), &[])
    }

    fn mount_full(dirs: &MountDirs, options: Option<&str>, args: &[&str]) -> io::Result<FuseMount> {
        let bin = fuse_bin();
        let mut cmd = Command::new(&bin);
        THREAD_FUSE_ENV.with(|e| cmd.envs(e.borrow().iter().map(|(k, v)| (k, v))));
        if takes_mount_subcommand(&bin) {
            cmd.arg("mount");
            cmd.args(args);
            THREAD_FUSE_ARGS.with(|a| cmd.args(a.borrow().iter()));
        }
        if let Some(options) = options {
            cmd.arg("-o").arg(options);
            if test_metacopy() == "off" && takes_mount_subcommand(&bin) {
                cmd.arg("-o").arg("metacopy=off");
            }
        }
        cmd.arg(&dirs.mnt);
        // Output goes to an unnamed file, never a pipe: a daemon that keeps stderr open would
        // make reading a pipe to EOF hang.
        let mut log = tempfile::tempfile()?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?);
        let shown = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{shown}: {e}")))?;
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break Some(st);
            }
            if start.elapsed() > MOUNT_TIMEOUT {
                break None;
            }
            sleep(Duration::from_millis(5));
        };
        let mut guard = FuseMount {
            mnt: dirs.mnt.clone(),
            bin: bin.clone(),
            daemons: Vec::new(),
            mounted: true,
        };
        guard.daemons = guard.find_daemons();
        let output = read_log(&mut log);
        match status {
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(io::Error::other(format!(
                    "{shown}: no exit within {MOUNT_TIMEOUT:?}; output: {output}"
                )))
            }
            Some(st) if !st.success() => {
                Err(io::Error::other(format!("{shown}: {st}; output: {output}")))
            }
            Some(_) => match mount_info(&dirs.mnt) {
                Some((fstype, _)) if fstype.starts_with("fuse") => Ok(guard),
                other => Err(io::Error::other(format!(
                    "{shown}: exited 0 but no FUSE mount is live at {} ({other:?}); output: {output}",
                    dirs.mnt.display()
                ))),
            },
        }
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// Pids of the daemons serving this mount (see module doc).
    pub fn daemons(&self) -> &[i32] {
        &self.daemons
    }

    /// Processes whose argv contains our (unique) mountpoint and whose exe is our binary.
    fn find_daemons(&self) -> Vec<i32> {
        let me = std::process::id() as i32;
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut pids: Vec<i32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me && self.is_our_daemon(pid))
            .collect();
        pids.sort();
        pids
    }

    fn is_our_daemon(&self, pid: i32) -> bool {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let mnt = self.mnt.as_os_str().as_encoded_bytes();
        let has_mnt = cmdline.split(|&b| b == 0).any(|arg| arg == mnt);
        let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
        let ours = fs::canonicalize(&self.bin).ok();
        has_mnt && exe.is_some() && exe == ours && !is_zombie(pid)
    }

    /// Emergency stop for a hung mount: SIGKILL our daemons (pending requests then fail)
    /// and detach the mount. The guard still cleans up on drop.
    pub fn abort(&self) {
        for &pid in &self.daemons {
            if self.is_our_daemon(pid) {
                // SAFETY: kill has no memory preconditions; pid was checked to be our daemon.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = sys::umount2(&self.mnt, libc::MNT_DETACH);
    }

    /// Unmounts now and waits for the daemon, reporting failure (Drop would only warn).
    pub fn unmount(mut self) -> io::Result<()> {
        self.mounted = false;
        self.do_unmount()
    }

    fn do_unmount(&mut self) -> io::Result<()> {
        let plain = unmount_path(&self.mnt, fusermount_u)?;
        let deadline = Instant::now() + DAEMON_EXIT_GRACE;
        let mut lingering: Vec<i32> = self.daemons.clone();
        while !lingering.is_empty() && Instant::now() < deadline {
            lingering.retain(|&pid| self.is_our_daemon(pid));
            sleep(Duration::from_millis(10));
        }
        for (sig, wait) in [(libc::SIGTERM, 1000), (libc::SIGKILL, 1000)] {
            lingering.retain(|&pid| self.is_our_daemon(pid));
            for &pid in &lingering {
                eprintln!("warning: FUSE daemon {pid} did not exit after unmount; signal {sig}");
                // SAFETY: kill has no memory preconditions; pid was checked to be our daemon.
                unsafe { libc::kill(pid, sig) };
            }
            if !lingering.is_empty() {
                sleep(Duration::from_millis(wait));
            }
        }
        if !lingering.is_empty() && lingering.iter().any(|&p| self.is_our_daemon(p)) {
            return Err(io::Error::other(format!(
                "daemon(s) {lingering:?} survive SIGKILL"
            )));
        }
        if !self.daemons.is_empty() && !plain {
            return Err(io::Error::other("only a lazy unmount worked"));
        }
        Ok(())
    }
}

/// `fusermount3 -u`: the first try of [`unmount_path`] for a FUSE mount.
pub fn fusermount_u(mnt: &Path) -> io::Result<()> {
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(mnt)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(io::Error::other(
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )),
        // No fusermount3: as root a plain umount does the same.
        Err(_) => sys::umount2(mnt, 0),
    }
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn read_log(f: &mut File) -> String {
    let mut s = String::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_string(&mut s);
    s.trim().to_string()
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if self.mounted {
            self.mounted = false;
            if let Err(e) = self.do_unmount() {
                eprintln!("warning: unmounting FUSE at {}: {e}", self.mnt.display());
            }
        }
    }
}

/// The binary's display name for messages.
pub fn fuse_bin_name() -> OsString {
    fuse_bin()
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default()
}
