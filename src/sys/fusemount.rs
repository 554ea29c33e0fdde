//! Mounting a FUSE filesystem ourselves (as root) instead of through fuser's `Mount`: the
//! session then owns only the /dev/fuse connection and never unmounts by path when it
//! ends. An exiting daemon must not tear down a new mount made at the same path right
//! after `fusermount3 -u` (fuser's unmount-on-drop does so when the old mount was only
//! lazily detached).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, UnmountFlags};

/// What to mount.
#[derive(Debug, Clone)]
pub struct FuseMountSpec {
    /// Shown as the source in /proc/mounts.
    pub fsname: String,
    /// The type is `fuse.<subtype>`.
    pub subtype: String,
    pub flags: MountFlags,
    /// Kernel FUSE options besides fd/rootmode/user_id/group_id (`default_permissions`,
    /// `allow_other`).
    pub options: Vec<String>,
}

/// A live mount: the connection fd and the device number of the mounted filesystem (to
/// recognise our own mount before unmounting by path).
#[derive(Debug)]
pub struct MountedFuse {
    pub dev_fuse: OwnedFd,
    pub st_dev: u64,
}

fn escape(s: &str) -> String {
    s.replace(',', "_")
}

/// Opens /dev/fuse and mounts it at `mountpoint`.
pub fn mount_fuse(mountpoint: &Path, spec: &FuseMountSpec) -> std::io::Result<MountedFuse> {
    let root_mode = rustix::fs::stat(mountpoint)?.st_mode;
    let dev_fuse = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={}",
        dev_fuse.as_raw_fd(),
        root_mode & libc::S_IFMT,
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw()
    );
    for o in &spec.options {
        data.push(',');
        data.push_str(o);
    }
    let data = CString::new(data).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let fstype = format!("fuse.{}", escape(&spec.subtype));
    rustix::mount::mount(
        escape(&spec.fsname).as_str(),
        mountpoint,
        fstype.as_str(),
        spec.flags,
        Some(data.as_c_str()),
    )?;
    // The kernel sends INIT now; the caller must answer it before anyone can stat the
    // mount, so the device number is read from /proc instead of by stat.
    let st_dev = mounted_dev(mountpoint).unwrap_or(0);
    Ok(MountedFuse { dev_fuse, st_dev })
}

/// The device number of the topmost mount at `mountpoint`, from /proc/self/mountinfo.
pub fn mounted_dev(mountpoint: &Path) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mountpoint
        .as_os_str()
        .to_string_lossy()
        .replace(' ', "\\040");
    info.lines()
        .rev()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .filter_map(|l| {
            let (maj, min) = l.split(' ').nth(2)?.split_once(':')?;
            Some(rustix::fs::makedev(maj.parse().ok()?, min.parse().ok()?))
        })
        .next()
}

/// Unmounts `mountpoint` only if the topmost mount there is still ours, lazily if it is
/// busy: for a daemon giving up before it served anything (its mount must not stay behind).
pub fn unmount_if_ours(mountpoint: &Path, st_dev: u64) -> std::io::Result<()> {
    match unmount_if_ours_now(mountpoint, st_dev) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            Ok(rustix::mount::unmount(mountpoint, UnmountFlags::DETACH)?)
        }
        r => r,
    }
}

/// Unmounts `mountpoint` only if the topmost mount there is still ours, never lazily: EBUSY
/// while files, cwds or submounts are in it. A detached mount would leave the daemon
/// serving (and writing the upper) while the mount table no longer shows it.
pub fn unmount_if_ours_now(mountpoint: &Path, st_dev: u64) -> std::io::Result<()> {
    match mounted_dev(mountpoint) {
        Some(dev) if dev == st_dev => {}
        _ => return Ok(()),
    }
    Ok(rustix::mount::unmount(mountpoint, UnmountFlags::empty())?)
}

/// Whether the filesystem with device `st_dev` is mounted in another mount namespace (a
/// container's root, made from our mount): found through each process's mountinfo, one per
/// namespace. An unmount here would then succeed, but the filesystem would live on, served,
/// where the mount table of whoever mounted it no longer shows it.
pub fn mounted_elsewhere(st_dev: u64) -> bool {
    let own = std::fs::read_link("/proc/self/ns/mnt").ok();
    let want = format!(
        "{}:{}",
        rustix::fs::major(st_dev),
        rustix::fs::minor(st_dev)
    );
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    let mut seen = std::collections::HashSet::new();
    for e in procs.flatten() {
        let name = e.file_name();
        if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let dir = e.path();
        let Ok(ns) = std::fs::read_link(dir.join("ns/mnt")) else {
            continue;
        };
        if Some(&ns) == own.as_ref() || !seen.insert(ns) {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(dir.join("mountinfo")) else {
            continue;
        };
        if info
            .lines()
            .any(|l| l.split(' ').nth(2) == Some(want.as_str()))
        {
            return true;
        }
    }
    false
}
