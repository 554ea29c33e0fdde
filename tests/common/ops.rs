//! Filesystem operations applied through a mount with std::fs/libc, each giving a comparable
//! outcome (`Ok(text)` or `Err(errno)`), and a seeded random op-sequence generator over the
//! tiny name alphabet of `fixture::NAMES`.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::dump::{fnv64, show_bytes};
use super::fixture::{random_path, NAMES};
use super::rng::Rng;
use super::sys;

/// What an op returned: a short text on success, the errno on failure.
pub type Outcome = Result<String, i32>;

/// renameat2 flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameFlags {
    None,
    NoReplace,
    Exchange,
}

impl RenameFlags {
    fn bits(self) -> u32 {
        match self {
            RenameFlags::None => 0,
            RenameFlags::NoReplace => libc::RENAME_NOREPLACE,
            RenameFlags::Exchange => libc::RENAME_EXCHANGE,
        }
    }
}

/// One operation; paths are relative to the mount root ("" is the root itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// open(O_CREAT|O_EXCL|O_WRONLY, mode).
    Create {
        path: String,
        mode: u32,
    },
    /// open(O_WRONLY) + pwrite at `offset` (may be past EOF).
    Write {
        path: String,
        offset: u64,
        data: Vec<u8>,
    },
    /// open(O_WRONLY|O_APPEND|O_CREAT, 0644) + write.
    Append {
        path: String,
        data: Vec<u8>,
    },
    /// truncate(2).
    Truncate {
        path: String,
        len: u64,
    },
    /// Reads the whole file through open(O_RDONLY).
    Read {
        path: String,
    },
    Unlink {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    /// Recursive removal like `rm -rf` (first error wins).
    RmRf {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        flags: RenameFlags,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    /// chmod(2) (follows a symlink, as chmod does).
    Chmod {
        path: String,
        mode: u32,
    },
    /// lchown(2).
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    /// utimensat(AT_SYMLINK_NOFOLLOW) with atime = mtime = `secs`.
    Utimens {
        path: String,
        secs: i64,
    },
    SetXattr {
        path: String,
        name: String,
        value: Vec<u8>,
    },
    RemoveXattr {
        path: String,
        name: String,
    },
    /// open(O_RDWR), unlink, then write and read through the fd and fstat it.
    OpenUnlinkRead {
        path: String,
    },
    /// Sorted names of a directory.
    ReadDir {
        path: String,
    },
    /// mknod(S_IFIFO | mode).
    MkFifo {
        path: String,
        mode: u32,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = |s: &String| {
            if s.is_empty() {
                ".".to_string()
            } else {
                s.clone()
            }
        };
        match self {
            Op::Create { path, mode } => write!(f, "create {} {mode:o}", p(path)),
            Op::Write { path, offset, data } => {
                write!(f, "write {} @{offset} {}", p(path), show_bytes(data))
            }
            Op::Append { path, data } => write!(f, "append {} {}", p(path), show_bytes(data)),
            Op::Truncate { path, len } => write!(f, "truncate {} {len}", p(path)),
            Op::Read { path } => write!(f, "read {}", p(path)),
            Op::Unlink { path } => write!(f, "unlink {}", p(path)),
            Op::Rmdir { path } => write!(f, "rmdir {}", p(path)),
            Op::Mkdir { path, mode } => write!(f, "mkdir {} {mode:o}", p(path)),
            Op::RmRf { path } => write!(f, "rm -rf {}", p(path)),
            Op::Rename { from, to, flags } => write!(f, "rename {} {} {flags:?}", p(from), p(to)),
            Op::Link { from, to } => write!(f, "link {} {}", p(from), p(to)),
            Op::Symlink { target, path } => write!(f, "symlink {target} {}", p(path)),
            Op::Chmod { path, mode } => write!(f, "chmod {} {mode:o}", p(path)),
            Op::Chown { path, uid, gid } => write!(f, "chown {} {uid}:{gid}", p(path)),
            Op::Utimens { path, secs } => write!(f, "utimens {} {secs}", p(path)),
            Op::SetXattr { path, name, value } => {
                write!(f, "setxattr {} {name}={}", p(path), show_bytes(value))
            }
            Op::RemoveXattr { path, name } => write!(f, "removexattr {} {name}", p(path)),
            Op::OpenUnlinkRead { path } => write!(f, "open-unlink-read {}", p(path)),
            Op::ReadDir { path } => write!(f, "readdir {}", p(path)),
            Op::MkFifo { path, mode } => write!(f, "mkfifo {} {mode:o}", p(path)),
        }
    }
}

fn at(root: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

fn io<T>(r: std::io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| sys::errno_of(&e))
}

fn done<T>(r: std::io::Result<T>) -> Outcome {
    io(r).map(|_| "ok".to_string())
}

fn rm_rf(p: &Path) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(p)?;
    if meta.is_dir() {
        let mut names: Vec<_> = fs::read_dir(p)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for n in names {
            rm_rf(&p.join(n))?;
        }
        fs::remove_dir(p)
    } else {
        fs::remove_file(p)
    }
}

/// Every open is non-blocking: a FIFO must give an error, not hang the test (a regular
/// file ignores the flag).
const NB: i32 = libc::O_NONBLOCK;

impl Op {
    /// Applies the op under `root` (a mount) and returns its outcome.
    pub fn apply(&self, root: &Path) -> Outcome {
        match self {
            Op::Create { path, mode } => done(
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(*mode)
                    .open(at(root, path)),
            ),
            Op::Write { path, offset, data } => {
                let mut f = io(OpenOptions::new()
                    .write(true)
                    .custom_flags(NB)
                    .open(at(root, path)))?;
                io(f.seek(SeekFrom::Start(*offset)))?;
                io(f.write_all(data))?;
                Ok(format!("wrote {}", data.len()))
            }
            Op::Append { path, data } => {
                let mut f = io(OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o644)
                    .custom_flags(NB)
                    .open(at(root, path)))?;
                io(f.write_all(data))?;
                Ok(format!("appended {}", data.len()))
            }
            Op::Truncate { path, len } => {
                let p = sys::cpath(&at(root, path));
                // SAFETY: p is NUL-terminated.
                let r = unsafe { libc::truncate(p.as_ptr(), *len as libc::off_t) };
                done(if r < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                })
            }
            Op::Read { path } => {
                let mut f = io(OpenOptions::new()
                    .read(true)
                    .custom_flags(NB)
                    .open(at(root, path)))?;
                let mut data = Vec::new();
                io(f.read_to_end(&mut data))?;
                Ok(format!("len={} hash={:016x}", data.len(), fnv64(&data)))
            }
            Op::Unlink { path } => done(fs::remove_file(at(root, path))),
            Op::Rmdir { path } => done(fs::remove_dir(at(root, path))),
            Op::Mkdir { path, mode } => {
                let p = sys::cpath(&at(root, path));
                // SAFETY: p is NUL-terminated.
                let r = unsafe { libc::mkdir(p.as_ptr(), *mode as libc::mode_t) };
                done(if r < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                })
            }
            Op::RmRf { path } => done(rm_rf(&at(root, path))),
            Op::Rename { from, to, flags } => {
                done(sys::renameat2(&at(root, from), &at(root, to), flags.bits()))
            }
            Op::Link { from, to } => done(fs::hard_link(at(root, from), at(root, to))),
            Op::Symlink { target, path } => done(symlink(target, at(root, path))),
            Op::Chmod { path, mode } => done(sys::chmod(&at(root, path), *mode)),
            Op::Chown { path, uid, gid } => done(sys::lchown(&at(root, path), *uid, *gid)),
            Op::Utimens { path, secs } => {
                done(sys::set_times(&at(root, path), (*secs, 0), (*secs, 0)))
            }
            Op::SetXattr { path, name, value } => {
                done(sys::set_xattr(&at(root, path), name, value))
            }
            Op::RemoveXattr { path, name } => done(sys::remove_xattr(&at(root, path), name)),
            Op::OpenUnlinkRead { path } => {
                let p = at(root, path);
                let mut f = io(OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(NB)
                    .open(&p))?;
                io(fs::remove_file(&p))?;
                let mut before = Vec::new();
                io(f.read_to_end(&mut before))?;
                io(f.write_all(b"+tail"))?;
                io(f.seek(SeekFrom::Start(0)))?;
                let mut after = Vec::new();
                io(f.read_to_end(&mut after))?;
                let m = io(f.metadata())?;
                Ok(format!(
                    "read={:016x} after={:016x} size={} nlink={}",
                    fnv64(&before),
                    fnv64(&after),
                    m.len(),
                    m.nlink()
                ))
            }
            Op::ReadDir { path } => {
                let mut names: Vec<String> = io(fs::read_dir(at(root, path)))?
                    .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| sys::errno_of(&e))?;
                // Names listed but gone (kernel overlayfs lists some, see
                // `diff::without_kernel_ghosts`) are marked rather than compared as entries.
                let dir = at(root, path);
                names.retain(|n| {
                    !matches!(fs::symlink_metadata(dir.join(n)), Err(e) if e.raw_os_error() == Some(libc::ENOENT))
                });
                names.sort();
                Ok(names.join(" "))
            }
            Op::MkFifo { path, mode } => {
                done(sys::mknod(&at(root, path), libc::S_IFIFO | mode, 0, 0))
            }
        }
    }
}

const XATTR_NAMES: [&str; 4] = ["user.k1", "user.k2", "trusted.t1", "user.k3"];
const MODES: [u32; 5] = [0o644, 0o600, 0o755, 0o700, 0o4755];

/// `n` random ops from `seed` (independent of the stack generator's stream for that seed).
pub fn random_ops(seed: u64, n: usize) -> Vec<Op> {
    let mut rng = Rng::new(seed, 2);
    (0..n).map(|_| random_op(&mut rng)).collect()
}

/// One random op over blind random paths.
pub fn random_op(rng: &mut Rng) -> Op {
    random_op_in(rng, &TreeView::default())
}

/// What exists in the reference tree now (relative paths, root excluded).
#[derive(Clone, Debug, Default)]
pub struct TreeView {
    pub paths: Vec<String>,
    pub dirs: Vec<String>,
}

impl TreeView {
    /// The paths of a tree dump (`dump_tree_with`'s format).
    pub fn from_dump(dump: &str) -> TreeView {
        let mut t = TreeView::default();
        for line in dump.lines() {
            let mut words = line.split(' ').filter(|w| !w.starts_with("hl="));
            let (Some(path), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let Some(rel) = path.strip_prefix('/').filter(|p| !p.is_empty()) else {
                continue;
            };
            t.paths.push(rel.to_string());
            if kind == "dir" {
                t.dirs.push(rel.to_string());
            }
        }
        t
    }
}

/// One random op whose paths are often drawn from `tree`, so that more ops reach real
/// entries: existing paths for ops on entries, a new name in an existing directory for
/// creations; blind random paths otherwise.
pub fn random_op_in(rng: &mut Rng, tree: &TreeView) -> Op {
    let pick_path = |rng: &mut Rng| {
        if !tree.paths.is_empty() && rng.chance(60) {
            rng.pick(&tree.paths).clone()
        } else {
            random_path(rng)
        }
    };
    let pick_new = |rng: &mut Rng| {
        if rng.chance(60) {
            let name = *rng.pick(&NAMES);
            if tree.dirs.is_empty() || rng.chance(25) {
                name.to_string()
            } else {
                format!("{}/{name}", rng.pick(&tree.dirs))
            }
        } else {
            pick_path(rng)
        }
    };
    let data = |rng: &mut Rng| {
        let len = if rng.chance(10) {
            rng.range(3000, 6000)
        } else {
            rng.range(1, 16)
        };
        rng.bytes(len)
    };
    let roll = rng.below(100);
    let path = match roll {
        0..=7 | 40..=48 | 67..=70 | 97..=99 => pick_new(rng),
        _ => pick_path(rng),
    };
    match roll {
        0..=7 => Op::Create {
            path,
            mode: *rng.pick(&MODES),
        },
        8..=16 => {
            let offset = if rng.chance(70) {
                rng.below(12) as u64
            } else {
                rng.range(100, 9000) as u64
            };
            Op::Write {
                path,
                offset,
                data: data(rng),
            }
        }
        17..=21 => Op::Append {
            path,
            data: data(rng),
        },
        22..=25 => Op::Truncate {
            path,
            len: *rng.pick(&[0, 3, 100, 5000]),
        },
        26..=27 => Op::Read { path },
        28..=34 => Op::Unlink { path },
        35..=39 => Op::Rmdir { path },
        40..=48 => Op::Mkdir {
            path,
            mode: *rng.pick(&[0o755, 0o700, 0o1777]),
        },
        49..=50 => Op::RmRf { path },
        51..=62 => {
            let flags = match rng.below(10) {
                0..=5 => RenameFlags::None,
                6..=7 => RenameFlags::NoReplace,
                _ => RenameFlags::Exchange,
            };
            let to = if flags == RenameFlags::Exchange {
                pick_path(rng)
            } else {
                pick_new(rng)
            };
            Op::Rename {
                from: path,
                to,
                flags,
            }
        }
        63..=66 => Op::Link {
            from: path,
            to: pick_new(rng),
        },
        67..=70 => {
            let target = if rng.chance(50) {
                random_path(rng)
            } else {
                format!("../{}", rng.pick(&NAMES))
            };
            Op::Symlink { target, path }
        }
        71..=74 => Op::Chmod {
            path,
            mode: *rng.pick(&MODES),
        },
        75..=77 => Op::Chown {
            path,
            uid: *rng.pick(&[0, 1000, 65534]),
            gid: *rng.pick(&[0, 1000]),
        },
        78..=80 => Op::Utimens {
            path,
            secs: 1_700_000_000 + rng.below(1000) as i64,
        },
        81..=85 => {
            // Rarely a private name: the mount must refuse or hide it the same way.
            let name = if rng.chance(8) {
                "trusted.overlay.opaque"
            } else {
                rng.pick(&XATTR_NAMES)
            };
            let len = rng.range(1, 8);
            Op::SetXattr {
                path,
                name: name.to_string(),
                value: rng.bytes(len),
            }
        }
        86..=88 => Op::RemoveXattr {
            path,
            name: rng.pick(&XATTR_NAMES).to_string(),
        },
        89..=90 => Op::OpenUnlinkRead { path },
        91..=96 => {
            let path = if rng.chance(25) { String::new() } else { path };
            Op::ReadDir { path }
        }
        _ => Op::MkFifo { path, mode: 0o644 },
    }
}
