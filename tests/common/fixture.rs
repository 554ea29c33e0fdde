//! Layer-stack fixtures: a `Stack` (lower layers, upper, workdir and mountpoint in one fresh
//! temporary directory), a `Layer` builder that writes every kind of entry and every
//! whiteout/opaque encoding straight into a layer directory, an exact copier (optionally
//! translating the formats only fuse-overlayfs/rlayerfs read into kernel ones) and a seeded
//! random stack generator over a tiny name alphabet so names collide across layers.
//!
//! Invariants: fixture calls panic on failure (a broken fixture is a broken test); the copier
//! never follows symlinks and preserves type, mode, owner, times, every xattr (trusted.*
//! included), hard links (by device+inode within one copy) and device numbers.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::rng::Rng;
use super::sys;

/// Whiteout encodings. `CharDev` and `XattrTrusted` are read by kernel overlayfs; the others
/// only by fuse-overlayfs/rlayerfs (`kernel_reads() == false`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutFormat {
    /// Character device 0/0 at the name.
    CharDev,
    /// Zero-size regular file with `trusted.overlay.whiteout`; parent gets `trusted.overlay.opaque=x`.
    XattrTrusted,
    /// Zero-size regular file with `user.overlay.whiteout`; parent gets `user.overlay.opaque=x`.
    XattrUser,
    /// Empty regular file `.wh.NAME` (OCI / fuse-overlayfs fallback).
    DotWh,
}

impl WhiteoutFormat {
    pub fn kernel_reads(self) -> bool {
        matches!(self, WhiteoutFormat::CharDev | WhiteoutFormat::XattrTrusted)
    }
}

/// Opaque-directory encodings; only `TrustedXattr` is read by kernel overlayfs (as mounted
/// by the harness, without `userxattr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpaqueFormat {
    /// `trusted.overlay.opaque=y`.
    TrustedXattr,
    /// `user.overlay.opaque=y`.
    UserOverlayXattr,
    /// `user.fuseoverlayfs.opaque=y`.
    FuseOverlayfsXattr,
    /// A file `.wh..wh..opq` inside the directory.
    DotWhOpq,
}

impl OpaqueFormat {
    pub fn kernel_reads(self) -> bool {
        matches!(self, OpaqueFormat::TrustedXattr)
    }
}

/// Fixed timestamp base for fixtures, so dumps with mtimes are reproducible.
pub const FIXTURE_EPOCH: i64 = 1_600_000_000;

/// One layer directory; every path argument is relative to the layer root ("a/b").
/// Missing parent directories are created (mode 0755, root-owned).
#[derive(Clone, Debug)]
pub struct Layer {
    pub root: PathBuf,
}

fn ctx<T>(r: io::Result<T>, what: &str, path: &Path) -> T {
    r.unwrap_or_else(|e| panic!("fixture: {what} {}: {e}", path.display()))
}

impl Layer {
    pub fn path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    fn parent(&self, rel: &str) -> &Self {
        if let Some(parent) = Path::new(rel).parent() {
            let p = self.root.join(parent);
            if !p.exists() {
                ctx(fs::create_dir_all(&p), "mkdir -p", &p);
            }
        }
        self
    }

    /// Regular file, mode 0644.
    pub fn file(&self, rel: &str, content: &[u8]) -> &Self {
        self.file_with(rel, content, 0o644, 0, 0)
    }

    pub fn file_with(&self, rel: &str, content: &[u8], mode: u32, uid: u32, gid: u32) -> &Self {
        self.parent(rel);
        let p = self.path(rel);
        ctx(fs::write(&p, content), "write", &p);
        self.chown(rel, uid, gid).chmod(rel, mode)
    }

    /// Directory, mode 0755 (an existing directory is left as is).
    pub fn dir(&self, rel: &str) -> &Self {
        let p = self.path(rel);
        if !p.is_dir() {
            ctx(fs::create_dir_all(&p), "mkdir -p", &p);
        }
        self
    }

    pub fn dir_with(&self, rel: &str, mode: u32, uid: u32, gid: u32) -> &Self {
        self.dir(rel).chown(rel, uid, gid).chmod(rel, mode)
    }

    pub fn symlink(&self, rel: &str, target: &str) -> &Self {
        self.parent(rel);
        let p = self.path(rel);
        ctx(symlink(target, &p), "symlink", &p);
        self
    }

    /// Hard link `rel` to the existing `existing` of the same layer.
    pub fn hardlink(&self, rel: &str, existing: &str) -> &Self {
        self.parent(rel);
        let p = self.path(rel);
        ctx(fs::hard_link(self.path(existing), &p), "link", &p);
        self
    }

    pub fn fifo(&self, rel: &str) -> &Self {
        self.parent(rel);
        let p = self.path(rel);
        ctx(sys::mknod(&p, libc::S_IFIFO | 0o644, 0, 0), "mkfifo", &p);
        self
    }

    /// Character device (not a whiteout unless 0/0: use `whiteout` for that).
    pub fn chardev(&self, rel: &str, major: u32, minor: u32) -> &Self {
        self.parent(rel);
        let p = self.path(rel);
        ctx(
            sys::mknod(&p, libc::S_IFCHR | 0o644, major, minor),
            "mknod",
            &p,
        );
        self
    }

    /// Sparse file of `size` bytes with `data` written at the given offsets, holes elsewhere.
    pub fn sparse(&self, rel: &str, size: u64, data: &[(u64, &[u8])]) -> &Self {
        self.parent(rel);
        let p = self.path(rel);
        let mut f = ctx(File::create(&p), "create", &p);
        for (off, bytes) in data {
            ctx(f.seek(SeekFrom::Start(*off)), "seek", &p);
            ctx(f.write_all(bytes), "write", &p);
        }
        ctx(f.set_len(size), "truncate", &p);
        self
    }

    pub fn xattr(&self, rel: &str, name: &str, value: &[u8]) -> &Self {
        let p = self.path(rel);
        ctx(
            sys::set_xattr(&p, name, value),
            &format!("setxattr {name}"),
            &p,
        );
        self
    }

    /// A whiteout for `rel` in the given encoding (marking the parent for xattr whiteouts).
    pub fn whiteout(&self, rel: &str, format: WhiteoutFormat) -> &Self {
        self.parent(rel);
        let p = self.path(rel);
        let parent_rel = parent_of(rel);
        match format {
            WhiteoutFormat::CharDev => {
                ctx(sys::mknod(&p, libc::S_IFCHR, 0, 0), "mknod whiteout", &p);
            }
            WhiteoutFormat::XattrTrusted => {
                self.file(rel, b"")
                    .xattr(rel, "trusted.overlay.whiteout", b"y");
                self.xattr(parent_rel, "trusted.overlay.opaque", b"x");
            }
            WhiteoutFormat::XattrUser => {
                self.file(rel, b"")
                    .xattr(rel, "user.overlay.whiteout", b"y");
                self.xattr(parent_rel, "user.overlay.opaque", b"x");
            }
            WhiteoutFormat::DotWh => {
                let name = Path::new(rel).file_name().unwrap().to_str().unwrap();
                let wh = join(parent_rel, &format!(".wh.{name}"));
                self.file(&wh, b"");
            }
        }
        self
    }

    /// Makes `rel` an opaque directory (creating it if missing).
    pub fn opaque(&self, rel: &str, format: OpaqueFormat) -> &Self {
        self.dir(rel);
        match format {
            OpaqueFormat::TrustedXattr => self.xattr(rel, "trusted.overlay.opaque", b"y"),
            OpaqueFormat::UserOverlayXattr => self.xattr(rel, "user.overlay.opaque", b"y"),
            OpaqueFormat::FuseOverlayfsXattr => self.xattr(rel, "user.fuseoverlayfs.opaque", b"y"),
            OpaqueFormat::DotWhOpq => self.file(&join(rel, ".wh..wh..opq"), b""),
        }
    }

    pub fn chown(&self, rel: &str, uid: u32, gid: u32) -> &Self {
        let p = self.path(rel);
        ctx(sys::lchown(&p, uid, gid), "lchown", &p);
        self
    }

    pub fn chmod(&self, rel: &str, mode: u32) -> &Self {
        let p = self.path(rel);
        ctx(
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)),
            "chmod",
            &p,
        );
        self
    }

    /// Sets atime and mtime of `rel` (not following a symlink) to `secs`.
    pub fn times(&self, rel: &str, secs: i64) -> &Self {
        let p = self.path(rel);
        ctx(sys::set_times(&p, (secs, 0), (secs, 0)), "utimensat", &p);
        self
    }

    /// Sets atime and mtime of every entry of the layer, root included, to `secs`.
    pub fn set_all_times(&self, secs: i64) -> &Self {
        fn walk(p: &Path, secs: i64) {
            let meta = ctx(fs::symlink_metadata(p), "lstat", p);
            if meta.is_dir() {
                for e in ctx(fs::read_dir(p), "readdir", p) {
                    walk(&ctx(e, "readdir", p).path(), secs);
                }
            }
            ctx(sys::set_times(p, (secs, 0), (secs, 0)), "utimensat", p);
        }
        walk(&self.root, secs);
        self
    }
}

fn parent_of(rel: &str) -> &str {
    rel.rfind('/').map_or("", |i| &rel[..i])
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// A layer stack in one fresh temporary directory: `l0` (top lower) .. `lN-1` (bottom),
/// `upper`, `work`, `mnt`. Dropping it removes everything: drop mounts first (declare the
/// stack before its mount guards).
pub struct Stack {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    /// Lower layer directories, top first (the `lowerdir=` order).
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
    /// Where the temporary directory was made (`None`: the system default); copies go there too.
    pub base: Option<PathBuf>,
}

impl Stack {
    /// Empty stack with `n_lowers` (>= 1) empty lower layers.
    pub fn new(n_lowers: usize) -> Stack {
        Self::make(n_lowers, None)
    }

    /// Like `new`, in a temporary directory under `base` (e.g. a tmpfs for tests that create
    /// many files: creates on an ext4 without a journal get slow after mass deletions).
    pub fn new_in(n_lowers: usize, base: &Path) -> Stack {
        Self::make(n_lowers, Some(base.to_path_buf()))
    }

    fn make(n_lowers: usize, base: Option<PathBuf>) -> Stack {
        assert!(n_lowers >= 1, "a stack needs a lower layer");
        let mut builder = tempfile::Builder::new();
        builder.prefix("rlayerfs-test-");
        let tmp = match &base {
            Some(b) => builder.tempdir_in(b),
            None => builder.tempdir(),
        }
        .expect("create temp dir");
        // RLAYERFS_TEST_KEEP=1 leaves every stack on disk, to look at after a failure.
        let mut tmp = tmp;
        if std::env::var_os("RLAYERFS_TEST_KEEP").is_some() {
            tmp.disable_cleanup(true);
        }
        let root = tmp.path().to_path_buf();
        let lowers: Vec<PathBuf> = (0..n_lowers).map(|i| root.join(format!("l{i}"))).collect();
        let (upper, work, mnt) = (root.join("upper"), root.join("work"), root.join("mnt"));
        for d in lowers.iter().chain([&upper, &work, &mnt]) {
            ctx(fs::create_dir(d), "mkdir", d);
            ctx(
                fs::set_permissions(d, fs::Permissions::from_mode(0o755)),
                "chmod",
                d,
            );
        }
        Stack {
            _tmp: tmp,
            root,
            lowers,
            upper,
            work,
            mnt,
            base,
        }
    }

    /// Lower layer `i` (0 = top).
    pub fn lower(&self, i: usize) -> Layer {
        Layer {
            root: self.lowers[i].clone(),
        }
    }

    pub fn upper_layer(&self) -> Layer {
        Layer {
            root: self.upper.clone(),
        }
    }

    /// `lowerdir=` value: top first, colon separated.
    pub fn lowerdir(&self) -> String {
        self.lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// A new, empty directory under the stack root (e.g. a fresh workdir for a cross-check).
    pub fn fresh_dir(&self, prefix: &str) -> PathBuf {
        for i in 0.. {
            let p = self.root.join(format!("{prefix}{i}"));
            if !p.exists() {
                ctx(fs::create_dir(&p), "mkdir", &p);
                return p;
            }
        }
        unreachable!()
    }

    /// Exact copy of the lowers and the upper into a new stack (fresh work and mnt).
    pub fn copy(&self) -> Stack {
        self.copy_with(false)
    }

    /// Copy that rewrites the formats kernel overlayfs does not read into kernel ones:
    /// `.wh.NAME` -> char 0/0 `NAME`, `.wh..wh..opq` -> `trusted.overlay.opaque=y`,
    /// `user.overlay.*` -> `trusted.overlay.*`, `user.fuseoverlayfs.opaque` ->
    /// `trusted.overlay.opaque`. Gives the kernel reference for stacks using those formats.
    pub fn copy_kernel_formats(&self) -> Stack {
        self.copy_with(true)
    }

    fn copy_with(&self, translate: bool) -> Stack {
        let dst = Stack::make(self.lowers.len(), self.base.clone());
        let mut links = HashMap::new();
        for (s, d) in self
            .lowers
            .iter()
            .zip(&dst.lowers)
            .chain([(&self.upper, &dst.upper)])
        {
            ctx(fs::remove_dir(d), "rmdir", d);
            ctx(copy_tree(s, d, translate, &mut links), "copy", s);
        }
        dst
    }

    /// Paths (prefixed by layer name) using formats kernel overlayfs does not read.
    pub fn non_kernel_formats(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (name, dir) in self.layer_dirs() {
            scan_non_kernel(&dir, &name, &mut found);
        }
        found
    }

    fn layer_dirs(&self) -> Vec<(String, PathBuf)> {
        let mut v: Vec<(String, PathBuf)> = self
            .lowers
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("l{i}"), p.clone()))
            .collect();
        v.push(("upper".into(), self.upper.clone()));
        v
    }
}

fn is_non_kernel_xattr(name: &str) -> bool {
    name.starts_with("user.overlay.") || name.starts_with("user.fuseoverlayfs.")
}

fn scan_non_kernel(p: &Path, rel: &str, found: &mut Vec<String>) {
    if let Ok(names) = sys::list_xattrs(p) {
        for n in names.iter().filter(|n| is_non_kernel_xattr(n)) {
            found.push(format!("{rel} xattr {n}"));
        }
    }
    if fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false) {
        let mut entries: Vec<_> = fs::read_dir(p).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let child = format!("{rel}/{name}");
            if name.starts_with(".wh.") {
                found.push(child.clone());
            }
            scan_non_kernel(&e.path(), &child, found);
        }
    }
}

/// Copies the tree at `src` to the not yet existing `dst` exactly (see module doc).
/// `links` maps (dev, ino) of already copied multi-link files to their copy, across calls.
pub fn copy_tree(
    src: &Path,
    dst: &Path,
    translate: bool,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    copy_entry(src, dst, translate, links)
}

fn translate_xattr(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("user.overlay.") {
        format!("trusted.overlay.{rest}")
    } else if name == "user.fuseoverlayfs.opaque" {
        "trusted.overlay.opaque".into()
    } else {
        name.to_string()
    }
}

fn copy_entry(
    src: &Path,
    dst: &Path,
    translate: bool,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    let ft = meta.file_type();
    let mut extra_xattrs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if !ft.is_dir() && meta.nlink() > 1 {
        if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
            return fs::hard_link(first, dst);
        }
        links.insert((meta.dev(), meta.ino()), dst.to_path_buf());
    }
    if ft.is_dir() {
        fs::create_dir(dst)?;
        let mut names: Vec<_> = fs::read_dir(src)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        // Listing the source updated its atime (relatime): put it back, so that a second
        // copy of the same source is identical to the first.
        sys::set_times(
            src,
            (meta.atime(), meta.atime_nsec()),
            (meta.mtime(), meta.mtime_nsec()),
        )?;
        names.sort();
        for name in &names {
            let s = name.to_string_lossy();
            if translate && s == ".wh..wh..opq" {
                extra_xattrs.insert("trusted.overlay.opaque".into(), b"y".to_vec());
            } else if let (true, Some(hidden)) = (translate, s.strip_prefix(".wh.")) {
                if !src.join(hidden).exists() {
                    sys::mknod(&dst.join(hidden), libc::S_IFCHR, 0, 0)?;
                }
            } else {
                copy_entry(&src.join(name), &dst.join(name), translate, links)?;
            }
        }
    } else if ft.is_file() {
        copy_file_data(src, dst, meta.len())?;
    } else if ft.is_symlink() {
        symlink(fs::read_link(src)?, dst)?;
    } else {
        let kind = if ft.is_fifo() {
            libc::S_IFIFO
        } else if ft.is_char_device() {
            libc::S_IFCHR
        } else if ft.is_block_device() {
            libc::S_IFBLK
        } else {
            libc::S_IFSOCK
        };
        let rdev = meta.rdev();
        sys::mknod(
            dst,
            kind | (meta.mode() & 0o7777),
            libc::major(rdev),
            libc::minor(rdev),
        )?;
    }
    sys::lchown(dst, meta.uid(), meta.gid())?;
    if !ft.is_symlink() {
        sys::chmod(dst, meta.mode() & 0o7777)?;
    }
    for name in sys::list_xattrs(src)? {
        let value = sys::get_xattr(src, &name)?;
        let name = if translate {
            translate_xattr(&name)
        } else {
            name
        };
        extra_xattrs.entry(name).or_insert(value);
    }
    for (name, value) in &extra_xattrs {
        sys::set_xattr(dst, name, value)?;
    }
    let at = (meta.atime(), meta.atime_nsec());
    let mt = (meta.mtime(), meta.mtime_nsec());
    sys::set_times(dst, at, mt)
}

/// Copies file data, leaving all-zero blocks as holes (so sparse files stay sparse).
fn copy_file_data(src: &Path, dst: &Path, len: u64) -> io::Result<()> {
    const BLOCK: usize = 4096;
    // O_NOATIME: copying a stack must not change the source's atimes (relatime would), or a
    // second copy made from the same source would differ from the first.
    let mut input = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOATIME)
        .open(src)?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    let mut buf = vec![0u8; BLOCK];
    let mut off = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            out.seek(SeekFrom::Start(off))?;
            out.write_all(&buf[..n])?;
        }
        off += n as u64;
    }
    out.set_len(len)
}

/// Options of the random stack generator.
#[derive(Clone, Debug)]
pub struct GenOptions {
    /// Also use the encodings only fuse-overlayfs/rlayerfs read (compare against a
    /// `copy_kernel_formats` copy then).
    pub non_kernel_formats: bool,
    pub max_lowers: usize,
    /// Entries generated per layer: `min..=max`.
    pub entries: (usize, usize),
    /// Generate xattr whiteouts (`trusted.overlay.whiteout`, kernel 6.7+).
    pub xattr_whiteouts: bool,
    /// Generate hard links.
    pub hard_links: bool,
    /// Remove whiteouts that hide nothing and sit in a directory that is not merged: kernel
    /// overlayfs lists those in readdir (the real directory is read as is) while lookup says
    /// ENOENT. Real stacks rarely have them; `whiteout_in_unmerged_dir` covers the case.
    /// Needs root (a read-only kernel overlay mount finds them).
    pub prune_unmerged_whiteouts: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            non_kernel_formats: false,
            max_lowers: 6,
            entries: (3, 10),
            xattr_whiteouts: true,
            hard_links: true,
            prune_unmerged_whiteouts: true,
        }
    }
}

impl GenOptions {
    /// Defaults adjusted by `$RLAYERFS_DIFF_GEN`, a comma-separated list of `no-xwhiteouts`,
    /// `no-hardlinks`, `keep-unmerged-whiteouts` (to isolate a class of divergence), and
    /// `non-kernel-formats` (the generator of `random_differential_non_kernel_formats`).
    pub fn from_env() -> GenOptions {
        let mut o = GenOptions::default();
        let spec = std::env::var("RLAYERFS_DIFF_GEN").unwrap_or_default();
        for flag in spec.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            match flag {
                "no-xwhiteouts" => o.xattr_whiteouts = false,
                "no-hardlinks" => o.hard_links = false,
                "keep-unmerged-whiteouts" => o.prune_unmerged_whiteouts = false,
                "non-kernel-formats" => o.non_kernel_formats = true,
                other => panic!("RLAYERFS_DIFF_GEN: unknown flag {other:?}"),
            }
        }
        o
    }
}

/// The name alphabet: tiny on purpose, so paths collide across layers and ops.
pub const NAMES: [&str; 4] = ["a", "b", "c", "d"];

/// A random relative path of depth 1..=3 over `NAMES`.
pub fn random_path(rng: &mut Rng) -> String {
    let depth = match rng.below(10) {
        0..=3 => 1,
        4..=7 => 2,
        _ => 3,
    };
    (0..depth)
        .map(|_| *rng.pick(&NAMES))
        .collect::<Vec<_>>()
        .join("/")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Held {
    Dir,
    File,
    Other,
    Whiteout,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DirMark {
    Plain,
    /// Holds xattr whiteouts (`opaque=x`): may not be made opaque (`y` would replace `x`).
    XWhiteouts,
    Opaque,
}

/// What one generated layer holds, to keep it consistent (no child under a file, no name
/// twice, xattr whiteouts only in directories marked `x`).
struct LayerGen {
    held: HashMap<String, Held>,
    marks: HashMap<String, DirMark>,
    files: Vec<String>,
}

const OWNERS: [u32; 5] = [0, 0, 0, 1000, 65534];
const FILE_MODES: [u32; 6] = [0o644, 0o644, 0o600, 0o755, 0o444, 0o640];
const DIR_MODES: [u32; 5] = [0o755, 0o755, 0o700, 0o1777, 0o750];

/// Random stack from `seed` with default options (kernel-readable formats only).
pub fn random_stack(seed: u64) -> Stack {
    random_stack_with(seed, &GenOptions::default())
}

/// Random stack from `seed`: 1..=max_lowers lowers plus a non-empty upper, entries over
/// `NAMES`, all times set to `FIXTURE_EPOCH + 1000 * layer`.
pub fn random_stack_with(seed: u64, opts: &GenOptions) -> Stack {
    let mut rng = Rng::new(seed, 1);
    let n = rng.range(1, opts.max_lowers);
    let stack = Stack::new(n);
    // Bottom layer first, upper last (the order a real stack is built).
    // No xattr whiteouts in the bottom layer: kernel overlayfs never reads the `opaque=x`
    // mark there (`ovl_lookup_single` stops before it in the last layer), so its readdir
    // may list them while its lookup finds whiteouts, and two kernel mounts of the same
    // layers were seen to list them differently (seed 583).
    let bottom_opts = GenOptions {
        xattr_whiteouts: false,
        ..opts.clone()
    };
    for i in (0..n).rev() {
        let o = if i == n - 1 { &bottom_opts } else { opts };
        gen_layer(&mut rng, &stack.lower(i), o, true);
    }
    let upper_opts = GenOptions {
        non_kernel_formats: false,
        ..opts.clone()
    };
    gen_layer(&mut rng, &stack.upper_layer(), &upper_opts, false);
    if opts.prune_unmerged_whiteouts {
        stack.prune_unmerged_whiteouts();
    }
    let epoch = |layer: usize| FIXTURE_EPOCH + 1000 * layer as i64;
    for i in 0..n {
        stack.lower(i).set_all_times(epoch(n - i));
    }
    stack.upper_layer().set_all_times(epoch(n + 1));
    stack
}

impl Stack {
    /// Removes whiteouts that kernel overlayfs would list in readdir but not find by lookup
    /// (see `GenOptions::prune_unmerged_whiteouts`), using a read-only kernel mount of all
    /// layers (upper on top) at `mnt` to find them. Translated (kernel) encodings only.
    pub fn prune_unmerged_whiteouts(&self) {
        let all = |s: &Stack| -> Vec<PathBuf> {
            [s.upper.clone()]
                .into_iter()
                .chain(s.lowers.clone())
                .collect()
        };
        let layers = all(self);
        for _round in 0..8 {
            // The kernel must see its own encodings: probe a translated copy if needed.
            let probe = (!self.non_kernel_formats().is_empty()).then(|| self.copy_kernel_formats());
            let probe_layers = probe.as_ref().map_or_else(|| layers.clone(), all);
            let lowerdir: Vec<String> = probe_layers
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            let data = format!("lowerdir={}", lowerdir.join(":"));
            ctx(
                sys::mount("overlay", &self.mnt, "overlay", &data),
                "mount ro overlay",
                &self.mnt,
            );
            let mut dangling = Vec::new();
            find_dangling(&self.mnt, "", &mut dangling);
            ctx(
                super::mount::unmount_path(&self.mnt, |m| sys::umount2(m, 0)),
                "umount",
                &self.mnt,
            );
            if dangling.is_empty() {
                return;
            }
            for rel in dangling {
                let holder = layers.iter().find_map(|l| whiteout_entry(l, &rel));
                match holder {
                    Some(p) => ctx(fs::remove_file(&p), "remove whiteout", &p),
                    None => panic!("fixture: {rel} is listed, not found, and not whited out"),
                }
            }
        }
        panic!(
            "fixture: pruning whiteouts did not converge in {}",
            self.root.display()
        );
    }
}

fn find_dangling(dir: &Path, rel: &str, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let child_rel = join(rel, &e.file_name().to_string_lossy());
        match fs::symlink_metadata(e.path()) {
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => out.push(child_rel),
            Ok(m) if m.is_dir() => find_dangling(&e.path(), &child_rel, out),
            _ => {}
        }
    }
}

/// The whiteout for `rel` in `layer`, in any encoding: a char 0/0 device, a zero-size file
/// carrying an overlay whiteout xattr, or a `.wh.NAME` sibling.
fn whiteout_entry(layer: &Path, rel: &str) -> Option<PathBuf> {
    let p = layer.join(rel);
    if let Ok(m) = fs::symlink_metadata(&p) {
        let ft = m.file_type();
        let xattr_wh = ft.is_file()
            && m.len() == 0
            && (sys::get_xattr(&p, "trusted.overlay.whiteout").is_ok()
                || sys::get_xattr(&p, "user.overlay.whiteout").is_ok());
        return ((ft.is_char_device() && m.rdev() == 0) || xattr_wh).then_some(p);
    }
    let name = Path::new(rel).file_name()?.to_str()?;
    let dot_wh = layer.join(join(parent_of(rel), &format!(".wh.{name}")));
    dot_wh.is_file().then_some(dot_wh)
}

fn gen_layer(rng: &mut Rng, layer: &Layer, opts: &GenOptions, is_lower: bool) {
    let mut g = LayerGen {
        held: HashMap::new(),
        marks: HashMap::new(),
        files: Vec::new(),
    };
    g.held.insert(String::new(), Held::Dir);
    let count = rng.range(opts.entries.0, opts.entries.1);
    for _ in 0..count {
        let path = random_path(rng);
        if !g.prepare_parents(layer, &path) {
            continue;
        }
        let existing = g.held.get(&path).copied();
        let roll = rng.below(100);
        match existing {
            Some(Held::Dir) if roll < 50 => g.make_opaque(rng, layer, &path, opts),
            Some(Held::Dir | Held::File) => add_xattr(rng, layer, &path, true),
            Some(Held::Other | Held::Whiteout) => {}
            None => g.create(rng, layer, &path, opts, is_lower, roll),
        }
    }
}

impl LayerGen {
    /// Creates missing parents as directories; false if a parent is not a directory.
    fn prepare_parents(&mut self, layer: &Layer, path: &str) -> bool {
        let comps: Vec<&str> = path.split('/').collect();
        for i in 1..comps.len() {
            let p = comps[..i].join("/");
            match self.held.get(&p) {
                Some(Held::Dir) => {}
                Some(_) => return false,
                None => {
                    layer.dir(&p);
                    self.held.insert(p, Held::Dir);
                }
            }
        }
        true
    }

    fn mark(&self, dir: &str) -> DirMark {
        self.marks.get(dir).copied().unwrap_or(DirMark::Plain)
    }

    fn make_opaque(&mut self, rng: &mut Rng, layer: &Layer, path: &str, opts: &GenOptions) {
        if self.mark(path) != DirMark::Plain {
            return;
        }
        let format = if opts.non_kernel_formats {
            *rng.pick(&[
                OpaqueFormat::TrustedXattr,
                OpaqueFormat::UserOverlayXattr,
                OpaqueFormat::FuseOverlayfsXattr,
                OpaqueFormat::DotWhOpq,
            ])
        } else {
            OpaqueFormat::TrustedXattr
        };
        layer.opaque(path, format);
        self.marks.insert(path.to_string(), DirMark::Opaque);
    }

    fn create(
        &mut self,
        rng: &mut Rng,
        layer: &Layer,
        path: &str,
        opts: &GenOptions,
        is_lower: bool,
        roll: usize,
    ) {
        let (uid, gid) = (*rng.pick(&OWNERS), *rng.pick(&OWNERS));
        let held = match roll {
            0..=29 => {
                let len = if rng.chance(15) {
                    rng.range(4000, 9000)
                } else {
                    rng.below(40)
                };
                let content = rng.bytes(len);
                layer.file_with(path, &content, *rng.pick(&FILE_MODES), uid, gid);
                if rng.chance(30) {
                    add_xattr(rng, layer, path, true);
                }
                self.files.push(path.to_string());
                Held::File
            }
            30..=44 => {
                layer.dir_with(path, *rng.pick(&DIR_MODES), uid, gid);
                if rng.chance(20) {
                    add_xattr(rng, layer, path, true);
                }
                if rng.chance(25) {
                    self.held.insert(path.to_string(), Held::Dir);
                    self.make_opaque(rng, layer, path, opts);
                }
                Held::Dir
            }
            45..=52 => {
                let target = match rng.below(3) {
                    0 => random_path(rng),
                    1 => format!("../{}", rng.pick(&NAMES)),
                    _ => format!("/nonexistent/{}", rng.pick(&NAMES)),
                };
                layer.symlink(path, &target).chown(path, uid, gid);
                if rng.chance(20) {
                    add_xattr(rng, layer, path, false);
                }
                Held::Other
            }
            53..=58 if opts.hard_links && !self.files.is_empty() => {
                let existing = rng.pick(&self.files).clone();
                layer.hardlink(path, &existing);
                Held::File
            }
            59..=62 => {
                layer.fifo(path).chown(path, uid, gid);
                Held::Other
            }
            63..=64 => {
                layer.chardev(path, 1, 3);
                Held::Other
            }
            65..=67 => {
                let size = rng.range(10_000, 300_000) as u64;
                let off = rng.below(size as usize - 10) as u64;
                layer.sparse(path, size, &[(0, b"head"), (off, b"mid")]);
                self.files.push(path.to_string());
                Held::File
            }
            _ => {
                let parent = parent_of(path).to_string();
                let mut choices = vec![WhiteoutFormat::CharDev];
                if is_lower && self.mark(&parent) != DirMark::Opaque {
                    if opts.xattr_whiteouts {
                        choices.push(WhiteoutFormat::XattrTrusted);
                    }
                    if opts.non_kernel_formats {
                        choices.push(WhiteoutFormat::DotWh);
                        if opts.xattr_whiteouts {
                            choices.push(WhiteoutFormat::XattrUser);
                        }
                    }
                }
                let mut format = *rng.pick(&choices);
                // One directory holds one kind of xattr whiteout marker.
                if format == WhiteoutFormat::XattrUser
                    && sys::get_xattr(&layer.path(&parent), "trusted.overlay.opaque").is_ok()
                    || format == WhiteoutFormat::XattrTrusted
                        && sys::get_xattr(&layer.path(&parent), "user.overlay.opaque").is_ok()
                {
                    format = WhiteoutFormat::CharDev;
                }
                layer.whiteout(path, format);
                if matches!(
                    format,
                    WhiteoutFormat::XattrTrusted | WhiteoutFormat::XattrUser
                ) {
                    self.marks.insert(parent, DirMark::XWhiteouts);
                }
                Held::Whiteout
            }
        };
        self.held.insert(path.to_string(), held);
    }
}

/// Adds one xattr; `user_ok` is false for entries where user.* is not allowed (symlinks).
fn add_xattr(rng: &mut Rng, layer: &Layer, path: &str, user_ok: bool) {
    let names: &[&str] = if user_ok {
        &["user.k1", "user.k2", "trusted.t1"]
    } else {
        &["trusted.t1"]
    };
    let name = *rng.pick(names);
    let len = rng.range(1, 12);
    let value = rng.bytes(len);
    layer.xattr(path, name, &value);
}

impl Stack {
    /// Rewrites, in place, the non-kernel encodings of every lower layer into kernel ones (as
    /// `copy_kernel_formats` does while copying). Used before the kernel reads a stack that a
    /// FUSE mount has already used, where a copy would break `index=on` origin checks.
    pub fn translate_lowers_in_place(&self) {
        for l in &self.lowers {
            ctx(translate_in_place(l), "translate", l);
        }
    }
}

fn translate_in_place(p: &Path) -> io::Result<()> {
    for name in sys::list_xattrs(p)? {
        let to = translate_xattr(&name);
        if to != name {
            let v = sys::get_xattr(p, &name)?;
            sys::set_xattr(p, &to, &v)?;
            sys::remove_xattr(p, &name)?;
        }
    }
    if !fs::symlink_metadata(p)?.is_dir() {
        return Ok(());
    }
    let mut names: Vec<_> = fs::read_dir(p)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let s = name.to_string_lossy().into_owned();
        let child = p.join(&name);
        if s == ".wh..wh..opq" {
            fs::remove_file(&child)?;
            sys::set_xattr(p, "trusted.overlay.opaque", b"y")?;
        } else if let Some(hidden) = s.strip_prefix(".wh.") {
            fs::remove_file(&child)?;
            if fs::symlink_metadata(p.join(hidden)).is_err() {
                sys::mknod(&p.join(hidden), libc::S_IFCHR, 0, 0)?;
            }
        } else {
            translate_in_place(&child)?;
        }
    }
    Ok(())
}
