//! The mount session: checks the request, builds the union core, mounts it with fuser,
//! goes to the background once the mount is live (unless foreground), and serves until
//! the filesystem is unmounted (`umount`, `fusermount3 -u`) or a SIGTERM/SIGINT asks us
//! to unmount (never lazily: a busy mount stays mounted and served until it can go, see
//! [`unmount_on_signals`]). The upperdir and workdir stay marked in use until the session
//! ends (`crate::union::inuse`).
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
        if let Some(m) = crate::mount_config::mount_option(f) {
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
    config.acl = match crate::mount_config::session_acl(o) {
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
            MountOption::CUSTOM(name) => spec.flags |= custom_flag(name),
            _ => {}
        }
    }
    if config.acl != SessionACL::Owner {
        spec.options.push("allow_other".into());
    }
    spec
}

/// The atime flags of the private upper mount, from the mount's atime options: FUSE inodes
/// never update atime themselves (the kernel leaves it to the server), so as kernel overlayfs
/// the upper is reached through a clone that applies the mount's own option (`noatime`,
/// `strictatime`, else the kernel's default `relatime`, plus `nodiratime`) to the real files,
/// FUSE passthrough reads included. The daemon's own reads use O_NOATIME. A read-only mount
/// updates no atime (the kernel skips atime on a read-only mount, whatever its atime option;
/// xfstests generic/003): its clone is `noatime`. (A later `mount -o remount,rw` changes the
/// FUSE mount's flags only: the clone stays `noatime` until the next mount.)
fn upper_atime(o: &MountOptions) -> rustix::mount::MountAttrFlags {
    use rustix::mount::MountAttrFlags as A;
    if o.read_only {
        return A::MOUNT_ATTR_NOATIME;
    }
    let mut attr = A::MOUNT_ATTR_RELATIME;
    for f in &o.fuse {
        match f {
            FuseFlag::NoAtime => attr = A::MOUNT_ATTR_NOATIME,
            FuseFlag::StrictAtime => attr = A::MOUNT_ATTR_STRICTATIME,
            FuseFlag::Atime | FuseFlag::RelAtime => attr = A::MOUNT_ATTR_RELATIME,
            _ => {}
        }
    }
    if o.fuse.contains(&FuseFlag::NoDirAtime) {
        attr |= A::MOUNT_ATTR_NODIRATIME;
    }
    attr
}

/// The mount flag of a [`FuseFlag`] that fuser has no variant for (its `CUSTOM` name).
fn custom_flag(name: &str) -> rustix::mount::MountFlags {
    use rustix::mount::MountFlags;
    match name {
        "strictatime" => MountFlags::STRICTATIME,
        "nodiratime" => MountFlags::NODIRATIME,
        "lazytime" => MountFlags::LAZYTIME,
        "nosymfollow" => MountFlags::NOSYMFOLLOW,
        _ => MountFlags::empty(),
    }
}

/// The options fusermount3 (the unprivileged mount path) cannot set: refused rather than
/// dropped, since each of them changes what the mount does.
fn check_fusermount_options(config: &Config) -> Result<(), String> {
    let custom: Vec<&str> = config
        .mount_options
        .iter()
        .filter_map(|o| match o {
            MountOption::CUSTOM(name) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    if custom.is_empty() {
        return Ok(());
    }
    Err(format!(
        "option {} needs a mount by root (fusermount3 cannot set it)",
        custom.join(", ")
    ))
}

/// `-o remount,…`, as mount(8) runs the helper for `mount -o remount,ro M`: sets the mount
/// flags the options give on the existing FUSE mount at the mountpoint (`MS_REMOUNT`, with
/// `MS_BIND` for `bind`: the per-mount flags only), as mount(8) itself does with `-i`. Starts
/// no daemon. Layer and other filesystem options are ignored, as kernel overlayfs ignores
/// them on a remount (mount(8) passes the fstab line's options back).
fn remount(req: &MountRequest) -> Result<i32, String> {
    let mp = req
        .mountpoint
        .canonicalize()
        .map_err(|e| format!("mountpoint {}: {e}", req.mountpoint.display()))?;
    match mount_type(&mp) {
        Some(t) if t == "fuse" || t.starts_with("fuse.") => {}
        Some(t) => {
            return Err(format!(
                "remount of {}: a {t} mount, not FUSE",
                mp.display()
            ))
        }
        None => return Err(format!("remount of {}: not mounted", mp.display())),
    }
    let o = &req.options;
    let mut flags = mount_spec(&fuse_config(o, o.read_only)).flags;
    if o.bind {
        flags |= rustix::mount::MountFlags::BIND;
    }
    rustix::mount::mount_remount(&mp, flags, "")
        .map_err(|e| format!("remount of {}: {e}", mp.display()))?;
    tracing::info!(mountpoint = %mp.display(), ?flags, "remounted");
    Ok(0)
}

/// The filesystem type of the topmost mount at `path` (canonical), from mountinfo.
fn mount_type(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.as_os_str().to_string_lossy().replace(' ', "\\040");
    info.lines()
        .rev()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .find_map(|l| {
            let (_, rest) = l.split_once(" - ")?;
            rest.split(' ').next().map(str::to_string)
        })
}

/// Mounts and serves. Returns the process exit code; errors are one line for stderr.
pub fn run(req: MountRequest) -> Result<i32, String> {
    for u in &req.options.unknown {
        let quoted = format!("{u:?}");
        eprintln!(
            "rlayerfs: warning: unknown option {} ignored",
            crate::printable::escape(&quoted)
        );
    }
    if req.options.remount {
        return remount(&req);
    }
    req.options.validate().map_err(|e| e.to_string())?;
    let mountpoint = check_mountpoint(&req)?;
    let o = &req.options;
    let paths = StackPaths {
        lowers: o.lowerdirs.clone(),
        data: o.datadirs.clone(),
        upper: o.upperdir.clone(),
        work: o.workdir.clone(),
    };
    let core_opts = CoreOptions {
        volatile: !o.fsync_enabled(),
        read_only: o.read_only,
        ids: crate::mount_config::id_options(o),
        atime: Some(upper_atime(o)),
        nfs_export: o.overlay_option("nfs_export") == Some("on"),
        // As the kernel: nfs_export=on turns the default metacopy off (both given: refused
        // by `validate`).
        metacopy: match o.overlay_option("metacopy") {
            Some(v) => Some(v == "on"),
            None if o.overlay_option("nfs_export") == Some("on") => Some(false),
            None => None,
        },
    };
    let fs = Arc::new(UnionFs::new(&paths, core_opts)?);
    if o.overlay_option("metacopy") == Some("on") && !fs.metacopy_enabled() {
        eprintln!(
            "rlayerfs: warning: metacopy=on needs trusted.* xattrs (CAP_SYS_ADMIN): data is \
             copied up whole"
        );
    }
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
    let core = fs.clone();
    let transport = crate::transport::Transport::plan(o.uring, o.uring_sched)?;
    let adapter =
        FuseAdapter::new(fs, ttl, pt.clone(), want_passthrough).with_transport(transport.clone());
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
        check_fusermount_options(&config)?;
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
    // The device of the fuser-made mount too, so that a signal never unmounts a newer mount
    // made at the same path.
    let dev = ours.or_else(|| crate::sys::fusemount::mounted_dev(&mountpoint));
    let path = mountpoint.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn({
            let transport = transport.clone();
            move || unmount_on_signals(&path, dev, ours.is_some(), &transport)
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    let dev_fuse = std::os::fd::AsFd::as_fd(&session)
        .try_clone_to_owned()
        .map_err(|e| format!("cannot duplicate /dev/fuse: {e}"))?;
    let result =
        session.run_with(|d| transport.start(d, dev_fuse, crate::fuse::MAX_WRITE as usize));
    // Nothing is served any more: free the upper and workdir for a remount right away.
    core.release_in_use();
    transport.report_requests(true);
    match result {
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

/// How often a termination signal that found the mount busy tries the unmount again.
const BUSY_RETRY: Duration = Duration::from_millis(500);

/// What SIGTERM, SIGINT and SIGHUP mean: unmount (never lazily) and so end the session.
/// While the mount is busy (open files, a cwd, a submount, or a copy of it in another mount
/// namespace: a container's root) it stays mounted and served, and the unmount is retried
/// until it succeeds. A lazy detach would hide the mount
/// from the table while the daemon still serves its users and writes the upper unseen:
/// containers/storage would then mount the same upper again.
fn unmount_on_signals(
    path: &Path,
    dev: Option<u64>,
    direct: bool,
    transport: &crate::transport::Transport,
) {
    let sig = loop {
        match crate::sys::process::wait_for_termination() {
            crate::sys::process::STATS_SIGNAL => transport.report_requests(false),
            sig => break sig,
        }
    };
    tracing::info!(sig, "signal: unmounting");
    let mut warned = false;
    loop {
        let r = match dev {
            Some(dev) if crate::sys::fusemount::mounted_elsewhere(dev) => Err(
                std::io::Error::other("also mounted in another mount namespace (a container?)"),
            ),
            Some(dev) if direct => crate::sys::fusemount::unmount_if_ours_now(path, dev),
            Some(dev) if crate::sys::fusemount::mounted_dev(path) != Some(dev) => Ok(()),
            _ => fusermount_u(path),
        };
        match r {
            Ok(()) => return,
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(
                    error = %e,
                    "signal: cannot unmount yet (busy?); still mounted and serving, retrying \
                     until it is no longer in use"
                );
            }
            Err(_) => {}
        }
        // Another signal retries at once.
        if crate::sys::process::wait_for_termination_timeout(BUSY_RETRY)
            == Some(crate::sys::process::STATS_SIGNAL)
        {
            transport.report_requests(false);
        }
    }
}

/// `fusermount3 -u` (not `-z`), for a mount made through fusermount3 (without privilege).
fn fusermount_u(path: &Path) -> std::io::Result<()> {
    let st = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("--")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("fusermount3 -u: {st}")))
    }
}
