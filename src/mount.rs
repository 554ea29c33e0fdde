//! The mount session: checks the request, builds the union core, mounts it with fuser,
//! goes to the background once the mount is live (unless foreground), and serves until
//! the filesystem is unmounted (`umount`, `fusermount3 -u`) or a SIGTERM/SIGINT asks us
//! to unmount.
//!
//! The exiting daemon never unmounts by path after the kernel has detached it: fuser
//! checks its own /dev/fuse connection first, so a new mount at the same path that
//! followed an external unmount is never torn down by us.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use crate::fuse::{FuseAdapter, DEFAULT_TTL};
use crate::options::{FuseFlag, MountOptions};
use crate::passthrough::Passthrough;
use crate::union::layer::{is_within, StackPaths};
use crate::union::{CoreOptions, UnionFs};

/// Everything needed to mount.
#[derive(Debug, Clone)]
pub struct MountRequest {
    pub options: MountOptions,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    /// Use FUSE passthrough when the kernel and privileges allow it.
    pub passthrough: bool,
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

/// The kernel mount of a root mount, from the fuser options chosen for it.
fn mount_spec(config: &Config) -> crate::sys::fusemount::FuseMountSpec {
    use rustix::mount::MountFlags;
    let mut spec = crate::sys::fusemount::FuseMountSpec {
        fsname: "rlayerfs".into(),
        subtype: "rlayerfs".into(),
        flags: MountFlags::empty(),
        options: Vec::new(),
    };
    for o in &config.mount_options {
        match o {
            MountOption::FSName(n) => spec.fsname = n.clone(),
            MountOption::Subtype(n) => spec.subtype = n.clone(),
            MountOption::DefaultPermissions => spec.options.push("default_permissions".into()),
            MountOption::RO => spec.flags |= MountFlags::RDONLY,
            MountOption::NoSuid => spec.flags |= MountFlags::NOSUID,
            MountOption::NoDev => spec.flags |= MountFlags::NODEV,
            MountOption::NoExec => spec.flags |= MountFlags::NOEXEC,
            MountOption::NoAtime => spec.flags |= MountFlags::NOATIME,
            MountOption::Sync => spec.flags |= MountFlags::SYNCHRONOUS,
            MountOption::DirSync => spec.flags |= MountFlags::DIRSYNC,
            _ => {}
        }
    }
    if config.acl != SessionACL::Owner {
        spec.options.push("allow_other".into());
    }
    spec
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
        ids: crate::union::ids::IdOptions::from_mount_options(o),
    };
    let fs = Arc::new(UnionFs::new(&paths, core_opts)?);
    let ttl = o
        .timeout
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_TTL);
    let config = fuse_config(o, fs.is_read_only());
    crate::sys::process::block_termination_signals();
    // Modes of new objects are computed per request (caller's umask, default ACLs): the
    // daemon's own umask must not strip them again.
    rustix::process::umask(rustix::fs::Mode::empty());
    let pt = Arc::new(Passthrough::default());
    let want_passthrough = req.passthrough && rustix::process::geteuid().is_root();
    let adapter = FuseAdapter::new(fs, ttl, pt.clone(), want_passthrough);
    let notifier_slot = adapter.notifier_slot();
    // Mount ourselves when we may (uid 0, also in a user namespace): the session then never
    // unmounts by path (see module doc), and the type is `fuse.rlayerfs`. EPERM (no
    // CAP_SYS_ADMIN over the mount namespace) falls back to fuser and fusermount3.
    let direct = if rustix::process::geteuid().is_root() {
        match crate::sys::fusemount::mount_fuse(&mountpoint, &mount_spec(&config)) {
            Ok(m) => Some(m),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => None,
            Err(e) => return Err(format!("mount on {}: {e}", mountpoint.display())),
        }
    } else {
        None
    };
    let (session, ours) = if let Some(m) = direct {
        let st_dev = m.st_dev;
        match fuser::Session::from_fd(adapter, m.dev_fuse, config.acl, config.clone()) {
            Ok(s) => (s, Some(st_dev)),
            Err(e) => {
                let _ = crate::sys::fusemount::unmount_if_ours(&mountpoint, st_dev);
                return Err(format!("mount on {}: {e}", mountpoint.display()));
            }
        }
    } else {
        let s = fuser::Session::new(adapter, &mountpoint, &config)
            .map_err(|e| format!("mount on {}: {e}", mountpoint.display()))?;
        (s, None)
    };
    let mut session = session;
    let _ = notifier_slot.set(session.notifier());
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    if !req.foreground {
        match crate::sys::process::daemonize(None) {
            // The parent must not drop the session: that would unmount the live mount.
            Ok(true) => std::process::exit(0),
            Ok(false) => {}
            Err(e) => {
                match ours {
                    Some(dev) => drop(crate::sys::fusemount::unmount_if_ours(&mountpoint, dev)),
                    None => drop(session.unmount()),
                }
                return Err(format!("cannot go to the background: {e}"));
            }
        }
    }
    let mut unmounter = session.unmount_callable();
    let path = mountpoint.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = crate::sys::process::wait_for_termination();
            tracing::info!(sig, "signal: unmounting");
            let r = match ours {
                Some(dev) => crate::sys::fusemount::unmount_if_ours(&path, dev),
                None => unmounter.unmount(),
            };
            if let Err(e) = r {
                tracing::error!(error = %e, "unmount on signal failed");
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    match session.run() {
        Ok(()) => {
            tracing::info!("unmounted, exiting");
            Ok(0)
        }
        Err(e) => {
            tracing::error!(error = %e, "session ended with an error");
            Ok(1)
        }
    }
}
