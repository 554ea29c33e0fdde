//! The layers of a stack: directory fds opened once at mount time, plus the checks that
//! refuse a bad stack before anything is mounted or changed.
//!
//! Lower layers are read-only and ordered top first (as in `lowerdir=TOP:...:BOTTOM`),
//! followed by the data-only layers (`datadir+=`), which hold only the data of metacopy
//! files and are never merged into the tree: they are reached only through an absolute
//! redirect of a metacopy file (kernel overlayfs's data-only lower layers).
//! The upper layer and the work directory are optional (without them the mount is
//! read-only). The work directory's `work/` subdirectory is the scratch space where
//! copy-ups and replacements are built before being renamed into place; it is emptied at
//! every mount, which discards whatever a killed daemon left half-built.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

use super::inuse::InUseLock;
use crate::format::origin::{INDEX_SUBDIR, WORK_SUBDIR};
use crate::sys;

/// Index of a lower layer, 0 being the top lower.
pub type LowerIdx = u16;

/// One layer directory.
#[derive(Debug)]
pub struct Layer {
    pub root: OwnedFd,
    pub dev: u64,
    pub path: PathBuf,
    /// The filesystem's UUID, as origin records carry it.
    pub uuid: [u8; 16],
    /// Reached through an idmapped mount: its ids are already shifted to the ids the mount
    /// shows (containers/storage idmaps lowers under `LAYER/mapped/` when it can).
    pub shifted: bool,
}

/// The paths that make up a stack, as given by the user.
#[derive(Debug, Clone, Default)]
pub struct StackPaths {
    pub lowers: Vec<PathBuf>,
    /// Data-only lower layers, below the lowers (kernel `datadir+=`).
    pub data: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
}

/// The opened stack.
#[derive(Debug)]
pub struct Stack {
    /// The lower layers, top first, then the data-only layers.
    pub lowers: Vec<Layer>,
    /// How many of `lowers` are merged into the tree (the rest are data-only).
    pub regular: usize,
    pub upper: Option<Layer>,
    /// `WORKDIR/work`, the scratch directory on the upper's filesystem.
    pub work: Option<OwnedFd>,
    /// `WORKDIR/index`, where hard-linked copy-ups are recorded (kernel `index=on`).
    pub index: Option<OwnedFd>,
    /// The upperdir and workdir marked in use by this mount (see `inuse`).
    pub in_use: Option<InUseLock>,
}

fn open_layer(path: &Path, what: &str) -> Result<Layer, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if !meta.is_dir() {
        return Err(format!("{what} {}: not a directory", path.display()));
    }
    // Opened for reading (not O_PATH): it also serves as the mount fd of
    // open_by_handle_at and for filesystem ioctls.
    let root = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let st = rustix::fs::fstat(&root).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let path = path
        .canonicalize()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let uuid = sys::fs_uuid(root.as_fd());
    let shifted = is_idmapped(root.as_fd());
    Ok(Layer {
        root,
        dev: st.st_dev,
        path,
        uuid,
        shifted,
    })
}

/// Whether the mount holding `fd` is idmapped (`idmapped` among the per-mount options of its
/// /proc/self/mountinfo line, found by mount id).
fn is_idmapped(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use rustix::fs::{statx, AtFlags, StatxFlags};
    let Ok(stx) = statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID) else {
        return false;
    };
    let id = stx.stx_mnt_id.to_string();
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.first() == Some(&id.as_str())
            && f.get(5)
                .is_some_and(|o| o.split(',').any(|x| x == "idmapped"))
    })
}

/// True when `inner` is `outer` or lies below it (both canonical).
pub fn is_within(inner: &Path, outer: &Path) -> bool {
    inner.starts_with(outer)
}

/// Reopens the upper and work directories through one private clone of their mount whose
/// atime flags are `atime` (see [`sys::clone_mount_root`]), as kernel overlayfs does: reads
/// through FUSE passthrough then update atime by the rules of the mount's atime option.
/// Without the privilege, or when the two cannot be reached through one clone, they stay as
/// opened (the upper mount's own rules apply), which a debug event records.
fn through_private_mount(
    upper: Layer,
    workdir: Layer,
    atime: rustix::mount::MountAttrFlags,
) -> (Layer, Layer) {
    let reopen = |tree: &OwnedFd, root: &Path, l: &Layer| -> rustix::io::Result<OwnedFd> {
        let rel = l
            .path
            .strip_prefix(root)
            .map_err(|_| rustix::io::Errno::XDEV)?;
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(tree, rel, flags, Mode::empty())?;
        let (a, b) = (rustix::fs::fstat(&fd)?, rustix::fs::fstat(&l.root)?);
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
            return Err(rustix::io::Errno::XDEV);
        }
        Ok(fd)
    };
    let reopened = sys::clone_mount_root(upper.root.as_fd(), atime).and_then(|(tree, root)| {
        Ok((
            reopen(&tree, &root, &upper)?,
            reopen(&tree, &root, &workdir)?,
        ))
    });
    match reopened {
        Ok((u, w)) => (Layer { root: u, ..upper }, Layer { root: w, ..workdir }),
        Err(e) => {
            tracing::debug!(error = %e, "no private upper mount: the upper mount's atime rules apply");
            (upper, workdir)
        }
    }
}

impl Stack {
    /// Opens and checks a stack. Every refusal is one line naming the offending path.
    pub fn open(paths: &StackPaths) -> Result<Stack, String> {
        Self::open_with_atime(paths, None)
    }

    /// [`open`](Self::open), with the upper and work directories reached through a private
    /// mount with the atime flags `atime` when given (see [`through_private_mount`]).
    pub fn open_with_atime(
        paths: &StackPaths,
        atime: Option<rustix::mount::MountAttrFlags>,
    ) -> Result<Stack, String> {
        if paths.lowers.is_empty() {
            return Err("no lower layer given (lowerdir= is empty)".into());
        }
        let count = paths.lowers.len() + paths.data.len();
        if count > LowerIdx::MAX as usize {
            return Err(format!("too many lower layers: {count}"));
        }
        let lowers = paths
            .lowers
            .iter()
            .map(|p| open_layer(p, "lowerdir"))
            .chain(paths.data.iter().map(|p| open_layer(p, "datadir")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut index = None;
        let mut in_use = None;
        let (upper, work) = match (&paths.upper, &paths.work) {
            (None, None) => (None, None),
            (Some(_), None) => return Err("upperdir given without workdir".into()),
            (None, Some(_)) => return Err("workdir given without upperdir".into()),
            (Some(u), Some(w)) => {
                let upper = open_layer(u, "upperdir")?;
                let workdir = open_layer(w, "workdir")?;
                for l in &lowers {
                    for (p, what) in [(&upper.path, "upperdir"), (&workdir.path, "workdir")] {
                        if is_within(p, &l.path) || is_within(&l.path, p) {
                            return Err(format!(
                                "{what} {} overlaps lowerdir {}",
                                p.display(),
                                l.path.display()
                            ));
                        }
                    }
                }
                if is_within(&upper.path, &workdir.path) || is_within(&workdir.path, &upper.path) {
                    return Err(format!(
                        "workdir {} and upperdir {} must be separate subtrees",
                        workdir.path.display(),
                        upper.path.display()
                    ));
                }
                if upper.dev != workdir.dev {
                    return Err(format!(
                        "workdir {} is not on the same filesystem as upperdir {}",
                        workdir.path.display(),
                        upper.path.display()
                    ));
                }
                // Before the scratch is emptied: it may be a live daemon's.
                in_use = Some(InUseLock::acquire(&upper, &workdir)?);
                let (upper, workdir) = match atime {
                    Some(a) => through_private_mount(upper, workdir, a),
                    None => (upper, workdir),
                };
                let scratch = prepare_scratch(workdir.root.as_fd())
                    .map_err(|e| format!("workdir {}: {e}", workdir.path.display()))?;
                index = open_index(workdir.root.as_fd());
                (Some(upper), Some(scratch))
            }
        };
        Ok(Stack {
            lowers,
            regular: paths.lowers.len(),
            upper,
            work,
            index,
            in_use,
        })
    }

    /// The lower layer `idx`.
    pub fn lower(&self, idx: LowerIdx) -> &Layer {
        &self.lowers[idx as usize]
    }

    /// The bottom layer merged into the tree (the last before the data-only layers).
    pub fn bottom(&self) -> LowerIdx {
        (self.regular - 1) as LowerIdx
    }

    /// The data-only layers, top first.
    pub fn data_layers(&self) -> std::ops::Range<LowerIdx> {
        self.regular as LowerIdx..self.lowers.len() as LowerIdx
    }
}

/// Opens `WORKDIR/index`, creating it (mode 0, as the kernel does) when possible.
/// `None` when it cannot be had (the mount then works without an index). Entries are
/// never removed here: one with a single link may still hold the data of lower names
/// whose upper name was unlinked while open.
///
/// Without privilege over its mode, a mode-0 directory cannot be entered: one this daemon
/// just made gets mode 0700 then; one it cannot use means no index.
fn open_index(workdir: BorrowedFd<'_>) -> Option<OwnedFd> {
    let name = INDEX_SUBDIR;
    let made = match rustix::fs::mkdirat(workdir, name, Mode::empty()) {
        Ok(()) => true,
        Err(rustix::io::Errno::EXIST) => false,
        Err(_) => return None,
    };
    let usable = || {
        rustix::fs::accessat(
            workdir,
            name,
            rustix::fs::Access::EXEC_OK | rustix::fs::Access::WRITE_OK,
            AtFlags::empty(),
        )
        .is_ok()
    };
    let fixable = || {
        made && rustix::fs::chmodat(workdir, name, Mode::from_raw_mode(0o700), AtFlags::empty())
            .is_ok()
    };
    let ok = usable() || (fixable() && usable());
    if !ok {
        return None;
    }
    sys::open_dir_path(workdir, Path::new(name)).ok()
}

/// Creates `WORKDIR/work` if needed and removes everything a previous run left in it.
fn prepare_scratch(workdir: BorrowedFd<'_>) -> rustix::io::Result<OwnedFd> {
    match rustix::fs::mkdirat(workdir, WORK_SUBDIR, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    let scratch = sys::open_dir_path(workdir, Path::new(WORK_SUBDIR))?;
    let listing = sys::read_dir(sys::open_dir_for_read(scratch.as_fd(), Path::new(""))?)?;
    for entry in listing {
        remove_tree(scratch.as_fd(), &entry.name)?;
    }
    Ok(scratch)
}

/// Removes `name` in `dir`, recursively, never following symlinks.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::ISDIR) | Err(rustix::io::Errno::PERM) => {}
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    }
    let sub = sys::open_dir_for_read(dir, Path::new(name))?;
    let sub_path = rustix::fs::openat(
        &sub,
        ".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for entry in sys::read_dir(sub)? {
        remove_tree(sub_path.as_fd(), &entry.name)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(l: &[&Path], u: Option<&Path>, w: Option<&Path>) -> StackPaths {
        StackPaths {
            lowers: l.iter().map(|p| p.to_path_buf()).collect(),
            data: Vec::new(),
            upper: u.map(Path::to_path_buf),
            work: w.map(Path::to_path_buf),
        }
    }

    #[test]
    fn refuses_bad_stacks() {
        let t = tempfile::tempdir().unwrap();
        let d = |n: &str| {
            let p = t.path().join(n);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let (l1, u, w) = (d("l1"), d("u"), d("w"));
        std::fs::write(t.path().join("file"), b"").unwrap();
        let file = t.path().join("file");
        let inner = d("l1/inner");
        let cases: Vec<(StackPaths, &str)> = vec![
            (paths(&[], None, None), "no lower"),
            (paths(&[&t.path().join("missing")], None, None), "lowerdir"),
            (paths(&[&file], None, None), "not a directory"),
            (paths(&[&l1], Some(&u), None), "without workdir"),
            (paths(&[&l1], None, Some(&w)), "without upperdir"),
            (paths(&[&l1], Some(&inner), Some(&w)), "overlaps"),
            (paths(&[&l1], Some(&u), Some(&u.join("."))), "separate"),
        ];
        for (p, want) in cases {
            let err = Stack::open(&p).unwrap_err();
            assert!(err.contains(want), "{p:?}: {err}");
            assert!(!err.contains('\n'));
        }
        assert!(Stack::open(&paths(&[&l1], Some(&u), Some(&w))).is_ok());
    }

    #[test]
    fn scratch_is_emptied() {
        let t = tempfile::tempdir().unwrap();
        for n in ["l", "u", "w/work/leftover/deep"] {
            std::fs::create_dir_all(t.path().join(n)).unwrap();
        }
        std::fs::write(t.path().join("w/work/partial"), b"half").unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("w/work/leftover/link")).unwrap();
        let p = paths(
            &[&t.path().join("l")],
            Some(&t.path().join("u")),
            Some(&t.path().join("w")),
        );
        Stack::open(&p).unwrap();
        assert_eq!(
            std::fs::read_dir(t.path().join("w/work")).unwrap().count(),
            0
        );
        assert!(Path::new("/etc/passwd").exists());
    }
}
