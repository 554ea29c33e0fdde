//! The mount session: checks the request, builds the union core, mounts it with fuser,
//! goes to the background once the mount is live (unless foreground), and serves until
//! the filesystem is unmounted (`umount`, `fusermount3 -u`) or a SIGTERM/SIGINT asks us
//! to unmount.
//!
//! The exiting daemon never unmounts by path after the kernel has detached it, so a new
//! mount at the same path that followed an external unmount is never torn down by us
//! (fuser 0.18 would do it; see [`serve`]).
//!
//! With the rights to mount(2) FUSE itself (root, or uid 0 in a user namespace as under
//! rootless podman) rlayerfs mounts by itself ([`mount_direct`]) so that the mount's type is
//! `fuse.rlayerfs` as with libfuse; otherwise fuser mounts (through `fusermount3`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use crate::fuse::{FuseAdapter, DEFAULT_TTL};
use crate::options::{FuseFlag, MountOptions};
use crate::union::layer::{is_within, StackPaths};
use crate::union::{CoreOptions, UnionFs};

/// Everything needed to mount.
#[derive(Debug, Clone)]
pub struct MountRequest {
    pub options: MountOptions,
    pub mountpoint: PathBuf,
    pub foreground: bool,
}

/// Checks the mountpoint: it exists, is a directory, is not already a mount point, and
/// no upper or work directory lies inside it.
fn check_mountpoint(req: &MountRequest) -> Result<PathBuf, String> {
    let mp = &req.mountpoint;
    let meta = std::fs::metadata(mp).map_err(|e| format!("mountpoint {}: {e}", mp.display()))?;
    if !meta.is_dir() {
        return Err(format!("mountpoint {}: not a directory", mp.display()));
    }
    let canon = mp
        .canonicalize()
        .map_err(|e| format!("mountpoint {}: {e}", mp.display()))?;
    if is_mount_point(&canon) {
        return Err(format!(
            "mountpoint {}: already a mount point (busy)",
            canon.display()
        ));
    }
    let o = &req.options;
    for (p, what) in [
        (o.upperdir.as_ref(), "upperdir"),
        (o.workdir.as_ref(), "workdir"),
    ] {
        if let Some(p) = p {
            if let Ok(c) = p.canonicalize() {
                if is_within(&c, &canon) {
                    return Err(format!(
                        "{what} {} is inside the mountpoint {}",
                        c.display(),
                        canon.display()
                    ));
                }
            }
        }
    }
    for l in &o.lowerdirs {
        if let Ok(c) = l.canonicalize() {
            if is_within(&c, &canon) || is_within(&canon, &c) && c == canon {
                return Err(format!(
                    "lowerdir {} is the mountpoint or inside it",
                    c.display()
                ));
            }
        }
    }
    Ok(canon)
}

/// True when `path` (canonical) is listed as a mount point in /proc/self/mountinfo.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

fn fuse_config(o: &MountOptions, read_only: bool) -> Config {
    let mut opts = vec![
        MountOption::FSName("rlayerfs".into()),
        MountOption::Subtype("rlayerfs".into()),
        MountOption::DefaultPermissions,
    ];
    let root = rustix::process::geteuid().is_root();
    if root {
        // As kernel overlayfs: set-id bits and device nodes work unless refused.
        opts.push(MountOption::Suid);
        opts.push(MountOption::Dev);
    }
    for f in &o.fuse {
        if let Some(m) = f.to_mount_option() {
            if matches!(f, FuseFlag::FsName(_) | FuseFlag::Subtype(_)) {
                opts.retain(|x| std::mem::discriminant(x) != std::mem::discriminant(&m));
            }
            let opposite = match m {
                MountOption::NoSuid => Some(MountOption::Suid),
                MountOption::NoDev => Some(MountOption::Dev),
                _ => None,
            };
            if let Some(op) = opposite {
                opts.retain(|x| *x != op);
            }
            if !opts.contains(&m) {
                opts.push(m);
            }
        }
    }
    opts.push(if read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    let mut config = Config::default();
    config.mount_options = opts;
    config.acl = match o.session_acl() {
        SessionACL::Owner if root => SessionACL::All,
        other => other,
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    config.n_threads = Some(if o.threaded == Some(false) {
        1
    } else {
        cores.clamp(2, 8)
    });
    config.clone_fd = true;
    config
}

/// Mounts and serves. Returns the process exit code; errors are one line for stderr.
pub fn run(req: MountRequest) -> Result<i32, String> {
    for u in &req.options.unknown {
        eprintln!("rlayerfs: warning: unknown option {u:?} ignored");
    }
    req.options.validate().map_err(|e| e.to_string())?;
    let mountpoint = check_mountpoint(&req)?;
    let o = &req.options;
    let paths = StackPaths {
        lowers: o.lowerdirs.clone(),
        upper: o.upperdir.clone(),
        work: o.workdir.clone(),
    };
    let core_opts = CoreOptions {
        volatile: !o.fsync_enabled(),
        read_only: o.read_only,
    };
    let fs = Arc::new(UnionFs::new(&paths, core_opts)?);
    let ttl = o
        .timeout
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_TTL);
    let config = fuse_config(o, fs.is_read_only());
    crate::sys::process::block_termination_signals();
    let adapter = FuseAdapter::new(fs, ttl);
    let mount_err = |e: std::io::Error| format!("mount on {}: {e}", mountpoint.display());
    // `owned`: the mount point when we mounted it ourselves (we then unmount it too).
    let (mut session, owned) = match mount_direct(&mountpoint, &config).map_err(mount_err)? {
        Some(fd) => match fuser::Session::from_fd(adapter, fd, config.acl, config.clone()) {
            Ok(session) => (session, Some(mountpoint.clone())),
            Err(e) => {
                let _ = unmount_own(&mountpoint);
                return Err(mount_err(e));
            }
        },
        None => (
            fuser::Session::new(adapter, &mountpoint, &config).map_err(mount_err)?,
            None,
        ),
    };
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    if !req.foreground {
        match crate::sys::process::daemonize(None) {
            // The parent must not drop the session: that would unmount the live mount.
            Ok(true) => std::process::exit(0),
            Ok(false) => {}
            Err(e) => {
                let _ = match &owned {
                    Some(path) => unmount_own(path),
                    None => session.unmount(),
                };
                return Err(format!("cannot go to the background: {e}"));
            }
        }
    }
    serve(session, owned)
}

/// Mounts the FUSE file system at `mountpoint` with mount(2), as libfuse does when it may:
/// type `fuse.SUBTYPE` and source `FSNAME`. fuser 0.18's own mount(2) always passes type
/// `fuse` (the subtype only becomes the source), so /proc/mounts would show `fuse` where
/// fuse-overlayfs shows `fuse.fuse-overlayfs`.
///
/// Returns the /dev/fuse connection, or `None` when fuser must mount instead: not uid 0,
/// `auto_unmount` (needs fusermount3), /dev/fuse not openable, or mount(2) refused with EPERM
/// (fuser then tries fusermount3 and reports its own error).
fn mount_direct(mountpoint: &Path, config: &Config) -> std::io::Result<Option<OwnedFd>> {
    use rustix::mount::MountFlags;
    let opts = &config.mount_options;
    if !rustix::process::geteuid().is_root() || opts.contains(&MountOption::AutoUnmount) {
        return Ok(None);
    }
    let dev = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(f) => OwnedFd::from(f),
        Err(e) => {
            tracing::debug!(error = %e, "open /dev/fuse: letting fuser mount");
            return Ok(None);
        }
    };
    let root_mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id={},group_id={}",
        dev.as_raw_fd(),
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw()
    );
    if opts.contains(&MountOption::DefaultPermissions) {
        data.push_str(",default_permissions");
    }
    if config.acl != SessionACL::Owner {
        // The kernel only knows allow_other; fuser enforces allow_root itself.
        data.push_str(",allow_other");
    }
    let mut flags = MountFlags::empty();
    if !opts.contains(&MountOption::Suid) {
        flags |= MountFlags::NOSUID;
    }
    if !opts.contains(&MountOption::Dev) {
        flags |= MountFlags::NODEV;
    }
    let mut source = "rlayerfs".to_string();
    let mut fstype = "fuse".to_string();
    for o in opts {
        match o {
            MountOption::RO => flags |= MountFlags::RDONLY,
            MountOption::NoExec => flags |= MountFlags::NOEXEC,
            MountOption::NoAtime => flags |= MountFlags::NOATIME,
            MountOption::Sync => flags |= MountFlags::SYNCHRONOUS,
            MountOption::DirSync => flags |= MountFlags::DIRSYNC,
            MountOption::FSName(name) => source = name.clone(),
            MountOption::Subtype(name) => fstype = format!("fuse.{name}"),
            _ => {}
        }
    }
    let data = std::ffi::CString::new(data)?;
    match rustix::mount::mount(
        source.as_str(),
        mountpoint,
        fstype.as_str(),
        flags,
        data.as_c_str(),
    ) {
        Ok(()) => Ok(Some(dev)),
        Err(rustix::io::Errno::PERM) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Unmounts a mount we made with [`mount_direct`]. Only called while our session still runs
/// (or before it started), so the mount at `path` is ours. Lazily, as libfuse does
/// (`umount2(path, MNT_DETACH)`): the path is free at once, and the session serves open files
/// until their last user is gone.
fn unmount_own(path: &Path) -> std::io::Result<()> {
    rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH).map_err(Into::into)
}

/// How often the main thread looks whether the session thread has ended. Only bounds how long
/// the process outlives an unmount from outside; nothing waits for that.
const SESSION_POLL: Duration = Duration::from_millis(50);

/// Serves until the mount goes away, without ever unmounting by path once it has.
///
/// fuser 0.18 unmounts by path whenever a session (or its `BackgroundSession`) is dropped, and
/// its "still mounted?" check is inverted: it polls the /dev/fuse connection and treats
/// `POLLERR`, the sign of a connection the kernel has already torn down, as "mounted". After an
/// unmount from outside (`fusermount3 -u`, as podman does) the exiting daemon then calls
/// `umount(MOUNTPOINT)` and, when a new mount already sits there (podman remounts a merged dir
/// at once), takes that one down instead (measured: 2 of 40 quick remounts lost).
/// So the session runs on fuser's background thread, and its `BackgroundSession`, which owns
/// the mount, is never dropped once the session has ended: it is forgotten and the process
/// exits. Only a signal unmounts, and only while the session still runs (the mount is ours).
///
/// `owned` is the mount point when [`mount_direct`] mounted it: fuser then knows of no mount,
/// and a signal unmounts it here.
fn serve<FS: fuser::Filesystem + Send + 'static>(
    session: fuser::Session<FS>,
    owned: Option<PathBuf>,
) -> Result<i32, String> {
    let background = session
        .spawn()
        .map_err(|e| format!("cannot start the FUSE session: {e}"))?;
    let slot = Arc::new(parking_lot::Mutex::new(Some(background)));
    let signal_slot = Arc::clone(&slot);
    let signals = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = crate::sys::process::wait_for_termination();
            let Some(background) = signal_slot.lock().take() else {
                return 0;
            };
            if background.guard.is_finished() {
                // Unmounted from outside in the meantime: the path is no longer ours.
                std::mem::forget(background);
                return 0;
            }
            tracing::info!(sig, "signal: unmounting");
            let unmounted = match &owned {
                Some(path) => unmount_own(path).and_then(|()| background.join()),
                None => background.umount_and_join(),
            };
            match unmounted {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "unmount on signal failed");
                    1
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    loop {
        {
            let mut guard = slot.lock();
            match guard.as_ref() {
                Some(background) if background.guard.is_finished() => {
                    // Detached by the kernel (an unmount from outside): never touch the path.
                    std::mem::forget(guard.take());
                    tracing::info!("unmounted, exiting");
                    return Ok(0);
                }
                Some(_) => {}
                // The signal thread took the session to unmount it.
                None => break,
            }
        }
        std::thread::sleep(SESSION_POLL);
    }
    let code = signals.join().unwrap_or(1);
    tracing::info!("unmounted, exiting");
    Ok(code)
}
