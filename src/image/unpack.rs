//! `rlayerfs unpack`: an image (or a single layer) into one directory per layer, in the
//! on-disk format of kernel overlayfs, plus `rlayerfs-image.json` describing the stack.
//!
//! Invariants:
//! - Nothing is written outside the staging directory `.<DEST>.rlayerfs-unpack.<pid>` beside
//!   DEST; it is renamed to DEST only after every layer unpacked and verified, and removed on
//!   any error. A staging directory left by a killed run is removed by the next unpack into
//!   the same parent once its pid is gone.
//! - Tar names are never joined onto a path: each entry's parent is reached one component at
//!   a time from the layer's directory fd with `O_NOFOLLOW | O_DIRECTORY` (see `crate::sys::component`), so a
//!   symlink — from this layer or planted by the archive — can never redirect a later entry.
//!   `..` components are refused; a leading `/` is dropped (as GNU tar does), so an absolute
//!   name lands inside the layer.
//! - OCI whiteouts are recorded while reading and materialised once the layer's entries are
//!   all in: `.wh.NAME` becomes a whiteout (char 0/0, or the empty file `.wh.NAME` where mknod
//!   is refused) unless the same layer has NAME itself (entries of a layer are never hidden by
//!   that layer's whiteouts; a whited-out name re-created as a directory becomes an opaque
//!   directory), and `DIR/.wh..wh..opq` marks DIR opaque (`trusted.overlay.opaque=y` when
//!   allowed, else `user.overlay.opaque=y` plus the `.wh..wh..opq` file) wherever it sits in
//!   the tar. A whiteout below a non-directory of the same layer hides nothing and is
//!   dropped (umoci writes a directory replaced by a file as the file, then whiteouts of the
//!   old directory's children).
//! - A later entry replaces an earlier non-directory of the same name (tar semantics, also
//!   by a directory); a directory is only "replaced" by a directory (its metadata changes).
//! - Directory modes and times are applied last, deepest first, so read-only directories and
//!   mtimes survive the creation of their children.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::archive::{decompress, Compression, HashingReader, ProgressReader};
use super::description::{
    ImageDescription, LayerRecord, OpaqueFormat, SourceRecord, WhiteoutFormat, LAYERS_DIR,
};
use super::error::{ImageError, Refusal};
use super::oci::{Digest, Platform};
use super::source::{self, InputFormat, SCRATCH_TAR};
use crate::format::override_stat::{OverrideKind, OverrideStat, CONTAINERS_OVERRIDE};
use crate::format::whiteout::{self, TarName, OPAQUE_MARKER, WHITEOUT_DEV, WH_PREFIX};
use crate::format::xattr::{self, XattrNs};
use crate::sys::component::{self, Kind};

/// Tar block size.
const BLOCK: usize = 512;
/// Granularity of hole detection when writing a sparse file.
const HOLE_CHUNK: usize = 4096;
/// Regular files from this size on are written with zero runs left as holes.
const SPARSE_MIN: u64 = 64 * 1024;
/// I/O buffer for sparse copies.
const COPY_BUF: usize = 128 * 1024;
/// Largest sparse map accepted (entries), against hostile maps.
const MAX_SPARSE_ENTRIES: u64 = 1 << 20;
/// What to do with device nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum DeviceMode {
    /// Create them when running as root, refuse the layer otherwise.
    #[default]
    Auto,
    /// Create them; fail if not permitted.
    Create,
    /// Refuse any layer holding one.
    Refuse,
    /// Leave them out, with a warning.
    Skip,
    /// Write an empty regular file carrying `user.containers.override_stat`
    /// (`UID:GID:MODE:char-MAJ-MIN`), the rootless convention of containers/storage.
    Placeholder,
}

/// Options of [`unpack`].
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Platform to pick from a multi-platform image.
    pub platform: Platform,
    /// `org.opencontainers.image.ref.name` (OCI) or repo tag (docker) to pick.
    pub reference: Option<String>,
    /// Input format (normally detected).
    pub format: InputFormat,
    /// Device node policy.
    pub devices: DeviceMode,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            platform: Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
                extra: Default::default(),
            },
            reference: None,
            format: InputFormat::Auto,
            devices: DeviceMode::Auto,
            progress: false,
        }
    }
}

/// What [`unpack`] did.
#[derive(Debug, Clone)]
pub struct UnpackReport {
    /// The destination.
    pub dest: PathBuf,
    /// The stack description written to `DEST/rlayerfs-image.json`.
    pub description: ImageDescription,
    /// Tar entries processed over all layers.
    pub entries: u64,
}

/// Removes the staging directory unless disarmed.
struct Staging {
    path: PathBuf,
    armed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            // std's remove_dir_all does not follow symlinks (it is fd-based on Linux).
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                tracing::warn!(
                    "could not remove staging directory {}: {e}",
                    self.path.display()
                );
            }
        }
    }
}

fn staging_prefix(name: &[u8]) -> Vec<u8> {
    let mut p = b".".to_vec();
    p.extend_from_slice(name);
    p.extend_from_slice(b".rlayerfs-unpack.");
    p
}

/// Removes staging directories of earlier runs whose process is gone.
fn clean_stale(parent: &Path, parent_fd: BorrowedFd<'_>, name: &[u8]) {
    let prefix = staging_prefix(name);
    let Ok(names) = component::read_dir_names(parent_fd) else {
        return;
    };
    for n in names {
        let Some(pid) = n.strip_prefix(prefix.as_slice()) else {
            continue;
        };
        let Ok(pid) = std::str::from_utf8(pid) else {
            continue;
        };
        if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        let p = parent.join(std::ffi::OsStr::from_bytes(&n));
        tracing::info!("removing stale staging directory {}", p.display());
        let _ = std::fs::remove_dir_all(p);
    }
}

fn progress_bar(len: u64, enabled: bool, prefix: String) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix);
    bar
}

/// Unpacks `image` into `dest` (which must not exist, or be an empty directory).
pub fn unpack(image: &Path, dest: &Path, opts: &UnpackOptions) -> Result<UnpackReport, ImageError> {
    let name = dest
        .file_name()
        .ok_or_else(|| ImageError::Usage(format!("bad destination {}", dest.display())))?
        .as_bytes()
        .to_vec();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent_fd =
        component::open_dir_path(&parent).map_err(|e| ImageError::io("open", &parent, e))?;
    let dest_exists = match component::stat_at(parent_fd.as_fd(), &name) {
        Ok(m) if m.kind == Kind::Dir => {
            let fd = component::open_dir_at(parent_fd.as_fd(), &name)
                .map_err(|e| ImageError::io("open", dest, e))?;
            let entries = component::read_dir_names(fd.as_fd())
                .map_err(|e| ImageError::io("read", dest, e))?;
            if !entries.is_empty() {
                return Err(ImageError::Usage(format!(
                    "destination {} exists and is not empty",
                    dest.display()
                )));
            }
            true
        }
        Ok(_) => {
            return Err(ImageError::Usage(format!(
                "destination {} exists and is not a directory",
                dest.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(ImageError::io("stat", dest, e)),
    };
    clean_stale(&parent, parent_fd.as_fd(), &name);

    let mut staging_name = staging_prefix(&name);
    staging_name.extend_from_slice(std::process::id().to_string().as_bytes());
    let staging_path = parent.join(std::ffi::OsStr::from_bytes(&staging_name));
    component::mkdir_at(parent_fd.as_fd(), &staging_name, 0o700)
        .map_err(|e| ImageError::io("create", &staging_path, e))?;
    let mut staging = Staging {
        path: staging_path.clone(),
        armed: true,
    };
    let staging_fd = component::open_dir_at(parent_fd.as_fd(), &staging_name)
        .map_err(|e| ImageError::io("open", &staging_path, e))?;

    let (store, kind) = source::open_source(image, opts.format, staging_fd.as_fd(), &staging_path)?;
    let plan = source::plan(&store, kind, &opts.platform, opts.reference.as_deref())?;

    let layers_path = staging_path.join(LAYERS_DIR);
    component::mkdir_at(staging_fd.as_fd(), LAYERS_DIR.as_bytes(), 0o755)
        .map_err(|e| ImageError::io("create", &layers_path, e))?;
    let layers_fd = component::open_dir_at(staging_fd.as_fd(), LAYERS_DIR.as_bytes())
        .map_err(|e| ImageError::io("open", &layers_path, e))?;

    let devices = resolve_devices(opts.devices);
    let n = plan.layers.len();
    let mut records = Vec::with_capacity(n);
    let mut total_entries = 0;
    for (i, spec) in plan.layers.iter().enumerate() {
        let label = match &spec.digest {
            Some(d) => format!("layer {}/{n} ({})", i + 1, d.short()),
            None if kind == source::SourceKind::Layer => {
                format!("layer {}", image.display())
            }
            None => format!("layer {}/{n} ({})", i + 1, spec.member),
        };
        let dir_name = i.to_string();
        let layer_path = layers_path.join(&dir_name);
        component::mkdir_at(layers_fd.as_fd(), dir_name.as_bytes(), 0o700)
            .map_err(|e| ImageError::io("create", &layer_path, e))?;
        let layer_fd = component::open_dir_at(layers_fd.as_fd(), dir_name.as_bytes())
            .map_err(|e| ImageError::io("open", &layer_path, e))?;
        let referenced_by = match &plan.manifest_digest {
            Some(d) => format!("manifest {}", d.short()),
            None => "manifest.json".to_string(),
        };
        let (reader, size) = store.open(&spec.member, &referenced_by)?;
        let bar = progress_bar(size, opts.progress, format!("layer {}/{n}", i + 1));
        let out = unpack_layer(
            ProgressReader::new(reader, bar.clone()),
            layer_fd,
            &label,
            devices,
            &bar,
        )?;
        bar.finish_and_clear();
        if let Some(want) = &spec.digest {
            if *want != out.digest {
                return Err(ImageError::DigestMismatch {
                    what: label,
                    expected: want.to_string(),
                    actual: out.digest.to_string(),
                });
            }
        }
        if let Some(want) = spec.size {
            if want != out.size {
                return Err(ImageError::Format {
                    what: label,
                    problem: format!("blob has {} bytes, the manifest says {want}", out.size),
                });
            }
        }
        if let Some(want) = &spec.diff_id {
            if *want != out.diff_id {
                return Err(ImageError::DigestMismatch {
                    what: format!("{label} uncompressed (diff_id)"),
                    expected: want.to_string(),
                    actual: out.diff_id.to_string(),
                });
            }
        }
        total_entries += out.entries;
        records.push(LayerRecord {
            dir: format!("{LAYERS_DIR}/{dir_name}"),
            digest: out.digest,
            size: out.size,
            diff_id: out.diff_id,
            media_type: spec
                .media_type
                .clone()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| out.compression.oci_layer_media_type().to_string()),
            compression: out.compression,
            entries: out.entries,
            whiteouts: out.whiteouts,
            opaques: out.opaques,
        });
    }
    drop(store);
    match component::unlink_at(staging_fd.as_fd(), SCRATCH_TAR.as_bytes(), false) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ImageError::io("remove", staging_path.join(SCRATCH_TAR), e)),
    }

    let description = ImageDescription {
        schema_version: 1,
        source: SourceRecord {
            kind,
            path: image.display().to_string(),
            reference: plan.reference.clone(),
            repo_tags: plan.repo_tags.clone(),
        },
        manifest_digest: plan.manifest_digest.clone(),
        manifest_media_type: plan.manifest_media_type.clone(),
        config_digest: plan.config_digest.clone(),
        platform: plan.platform.clone(),
        tag: None,
        layers: records,
        config: plan.config.clone(),
    };
    description.write_at(staging_fd.as_fd(), &staging_path)?;
    component::chmod_fd(staging_fd.as_fd(), 0o755)
        .map_err(|e| ImageError::io("chmod", &staging_path, e))?;

    let renamed = if dest_exists {
        component::rename_at(parent_fd.as_fd(), &staging_name, parent_fd.as_fd(), &name)
    } else {
        component::rename_noreplace_at(parent_fd.as_fd(), &staging_name, parent_fd.as_fd(), &name)
    };
    renamed.map_err(|e| ImageError::io("rename into place", dest, e))?;
    staging.armed = false;
    Ok(UnpackReport {
        dest: dest.to_path_buf(),
        description,
        entries: total_entries,
    })
}

/// Device policy after looking at our privileges.
fn resolve_devices(mode: DeviceMode) -> DeviceMode {
    match mode {
        DeviceMode::Auto if component::is_root() => DeviceMode::Create,
        DeviceMode::Auto => DeviceMode::Refuse,
        m => m,
    }
}

/// The result of unpacking one layer stream.
#[derive(Debug)]
pub(crate) struct LayerOutcome {
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
    pub compression: Compression,
    pub entries: u64,
    pub whiteouts: Option<WhiteoutFormat>,
    pub opaques: Option<OpaqueFormat>,
}

/// A reader that remembers the last block it passed, to check the end-of-archive marker.
struct TailReader<R> {
    inner: R,
    tail: Vec<u8>,
}

impl<R: Read> Read for TailReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n >= BLOCK {
            self.tail.clear();
            self.tail.extend_from_slice(&buf[n - BLOCK..n]);
        } else {
            self.tail.extend_from_slice(&buf[..n]);
            let excess = self.tail.len().saturating_sub(BLOCK);
            self.tail.drain(..excess);
        }
        Ok(n)
    }
}

/// Unpacks one layer blob (any compression) into the directory `root`, returning its
/// digests. `label` names the layer in errors.
pub(crate) fn unpack_layer<R: Read>(
    raw: R,
    root: OwnedFd,
    label: &str,
    devices: DeviceMode,
    bar: &indicatif::ProgressBar,
) -> Result<LayerOutcome, ImageError> {
    let mut blob = HashingReader::new(raw);
    let corrupt = |what: String| move |source: io::Error| ImageError::Corrupt { what, source };
    let (compression, dec) = decompress(&mut blob).map_err(corrupt(label.to_string()))?;
    let mut diff = HashingReader::new(TailReader {
        inner: dec,
        tail: Vec::new(),
    });
    let mut w = LayerWriter::new(root, label, resolve_devices(devices));
    let mut last = String::from("(start)");
    {
        let mut ar = tar::Archive::new(&mut diff);
        let entries = ar
            .entries()
            .map_err(corrupt(format!("{label} at entry {last:?}")))?;
        for e in entries {
            let mut e = e.map_err(corrupt(format!("{label} after entry {last:?}")))?;
            last = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            w.entry(&mut e, &last)?;
            if w.entries.is_multiple_of(256) {
                bar.set_message(format!("{} entries", w.entries));
            }
        }
    }
    let ended = diff.count() >= BLOCK as u64
        && diff.count().is_multiple_of(BLOCK as u64)
        && diff.inner_tail_is_zero();
    if !ended {
        return Err(ImageError::Corrupt {
            what: format!("{label} after entry {last:?}"),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "no end-of-archive marker (truncated?)",
            ),
        });
    }
    diff.drain()
        .map_err(corrupt(format!("{label} after the end-of-archive marker")))?;
    let (diff_id, _) = diff.finish();
    blob.drain()
        .map_err(corrupt(format!("{label} after the compressed stream")))?;
    let (digest, size) = blob.finish();
    let (whiteouts, opaques) = w.finish()?;
    Ok(LayerOutcome {
        digest,
        size,
        diff_id,
        compression,
        entries: w.entries,
        whiteouts,
        opaques,
    })
}

impl<R: Read> HashingReader<TailReader<R>> {
    fn inner_tail_is_zero(&self) -> bool {
        let t = &self.get_ref().tail;
        t.len() == BLOCK && t.iter().all(|b| *b == 0)
    }
}

/// Normalises a tar entry name into components: a leading `/`, `.` and empty components
/// are dropped (GNU tar's treatment of absolute names); `..` is refused.
pub fn entry_components(raw: &[u8]) -> Result<Vec<&[u8]>, Refusal> {
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(Refusal::DotDot),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[derive(Debug, Clone, Copy)]
struct DirMeta {
    perm: u32,
    atime: Option<(i64, u32)>,
    mtime: Option<(i64, u32)>,
}

impl DirMeta {
    /// A directory implied by a deeper entry: the usual 0755, time left alone.
    const IMPLICIT: DirMeta = DirMeta {
        perm: 0o755,
        atime: None,
        mtime: None,
    };
}

/// The metadata of one entry, from the header and its PAX records.
struct EntryMeta {
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    atime: (i64, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Parses a PAX time (`SECONDS[.FRACTION]`, possibly negative).
pub fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    if secs < 0 && nsec > 0 {
        // -1.5 means 1.5 s before the epoch.
        return Some((secs - 1, 1_000_000_000 - nsec));
    }
    Some((secs, nsec))
}

#[derive(Default)]
struct Pax {
    mtime: Option<(i64, u32)>,
    atime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse_major: Option<Vec<u8>>,
    sparse_minor: Option<Vec<u8>>,
    sparse_name: Option<Vec<u8>>,
    sparse_realsize: Option<u64>,
    sparse_old: bool,
}

/// Writes one layer's entries below its root directory fd.
struct LayerWriter<'a> {
    root: Rc<OwnedFd>,
    label: &'a str,
    devices: DeviceMode,
    privileged: bool,
    own: (u32, u32),
    cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
    dirs: BTreeMap<Vec<u8>, DirMeta>,
    whiteouts: BTreeSet<Vec<u8>>,
    opaques: BTreeSet<Vec<u8>>,
    entries: u64,
    warned: BTreeSet<&'static str>,
}

impl<'a> LayerWriter<'a> {
    fn new(root: OwnedFd, label: &'a str, devices: DeviceMode) -> Self {
        let mut dirs = BTreeMap::new();
        dirs.insert(Vec::new(), DirMeta::IMPLICIT);
        LayerWriter {
            root: Rc::new(root),
            label,
            devices,
            privileged: component::is_root(),
            own: component::own_ids(),
            cache: None,
            dirs,
            whiteouts: BTreeSet::new(),
            opaques: BTreeSet::new(),
            entries: 0,
            warned: BTreeSet::new(),
        }
    }

    fn refuse(&self, entry: &str, refusal: Refusal) -> ImageError {
        ImageError::Entry {
            layer: self.label.to_string(),
            entry: entry.to_string(),
            refusal,
        }
    }

    fn io_err(&self, entry: &str, op: &'static str, source: io::Error) -> ImageError {
        ImageError::EntryIo {
            layer: self.label.to_string(),
            entry: entry.to_string(),
            op,
            source,
        }
    }

    fn warn_once(&mut self, key: &'static str, msg: &str) {
        if self.warned.insert(key) {
            tracing::warn!("{}: {msg}", self.label);
        }
    }

    /// Opens the directory `comps` below the layer root, creating missing components when
    /// `create`. Returns `None` when a component is missing and `!create`.
    fn dir(
        &mut self,
        comps: &[&[u8]],
        create: bool,
        entry: &str,
    ) -> Result<Option<Rc<OwnedFd>>, ImageError> {
        let key = join(comps);
        if let Some((k, fd)) = &self.cache {
            if *k == key {
                return Ok(Some(fd.clone()));
            }
        }
        let mut cur: Option<OwnedFd> = None;
        for (i, c) in comps.iter().enumerate() {
            let base = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            if c.starts_with(WH_PREFIX) {
                return Err(self.refuse(entry, Refusal::WhiteoutNotFile));
            }
            let next = match component::open_dir_at(base, c) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    match component::mkdir_at(base, c, 0o700) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(self.io_err(entry, "create parent directory", e)),
                    }
                    self.dirs
                        .entry(join(&comps[..=i]))
                        .or_insert(DirMeta::IMPLICIT);
                    component::open_dir_at(base, c)
                        .map_err(|e| self.io_err(entry, "open parent directory", e))?
                }
                Err(e) => {
                    let shown = lossy(&join(&comps[..=i]));
                    return Err(match component::stat_at(base, c) {
                        Ok(m) if m.kind == Kind::Symlink => {
                            self.refuse(entry, Refusal::ParentIsSymlink(shown))
                        }
                        Ok(m) if m.kind != Kind::Dir => {
                            self.refuse(entry, Refusal::ParentNotDirectory(shown))
                        }
                        _ => self.io_err(entry, "open parent directory", e),
                    });
                }
            };
            cur = Some(next);
        }
        let fd = match cur {
            Some(fd) => Rc::new(fd),
            None => self.root.clone(),
        };
        self.cache = Some((key, fd.clone()));
        Ok(Some(fd))
    }

    fn read_pax<R: Read>(&self, e: &mut tar::Entry<'_, R>, entry: &str) -> Result<Pax, ImageError> {
        let mut pax = Pax::default();
        let exts = e
            .pax_extensions()
            .map_err(|err| self.io_err(entry, "read PAX header", err))?;
        let Some(exts) = exts else {
            return Ok(pax);
        };
        for ext in exts {
            let ext = ext.map_err(|err| self.io_err(entry, "read PAX header", err))?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                pax.xattrs.push((name.to_vec(), value.to_vec()));
                continue;
            }
            match key {
                b"mtime" => pax.mtime = parse_pax_time(value),
                b"atime" => pax.atime = parse_pax_time(value),
                b"GNU.sparse.major" => pax.sparse_major = Some(value.to_vec()),
                b"GNU.sparse.minor" => pax.sparse_minor = Some(value.to_vec()),
                b"GNU.sparse.name" => pax.sparse_name = Some(value.to_vec()),
                b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                    pax.sparse_realsize =
                        std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
                }
                b"GNU.sparse.map" | b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                    pax.sparse_old = true;
                }
                _ => {}
            }
        }
        Ok(pax)
    }

    fn meta<R: Read>(
        &self,
        e: &tar::Entry<'_, R>,
        pax: &mut Pax,
        entry: &str,
    ) -> Result<EntryMeta, ImageError> {
        let h = e.header();
        let bad = |what: &str| self.refuse(entry, Refusal::BadHeader(what.to_string()));
        let perm = h.mode().map_err(|_| bad("mode"))? & 0o7777;
        let uid =
            u32::try_from(h.uid().map_err(|_| bad("uid"))?).map_err(|_| bad("uid out of range"))?;
        let gid =
            u32::try_from(h.gid().map_err(|_| bad("gid"))?).map_err(|_| bad("gid out of range"))?;
        let mtime = match pax.mtime {
            Some(t) => t,
            None => (
                i64::try_from(h.mtime().map_err(|_| bad("mtime"))?).map_err(|_| bad("mtime"))?,
                0,
            ),
        };
        let atime = pax.atime.unwrap_or(mtime);
        Ok(EntryMeta {
            perm,
            uid,
            gid,
            mtime,
            atime,
            xattrs: std::mem::take(&mut pax.xattrs),
        })
    }

    /// Handles one tar entry.
    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>, shown: &str) -> Result<(), ImageError> {
        let ty = e.header().entry_type();
        if ty.is_pax_global_extensions() {
            return Ok(());
        }
        self.entries += 1;
        let mut pax = self.read_pax(e, shown)?;
        let raw = match &pax.sparse_name {
            Some(n) if pax.sparse_major.as_deref() == Some(b"1") => n.clone(),
            _ => e.path_bytes().into_owned(),
        };
        let comps = entry_components(&raw).map_err(|r| self.refuse(shown, r))?;
        let Some((leaf, parent)) = comps.split_last() else {
            // The layer root itself ("./").
            return self.root_entry(e, ty, &mut pax, shown);
        };
        let leaf: &[u8] = leaf;
        match whiteout::classify_tar_name(leaf) {
            TarName::Plain => {}
            TarName::Malformed => return Err(self.refuse(shown, Refusal::BadWhiteoutName)),
            TarName::Meta => {
                self.warn_once("wh-meta", "skipping .wh..wh.* implementation metadata");
                return Ok(());
            }
            w => return self.whiteout_entry(ty, e.size(), parent, w, shown),
        }
        let pfd = self
            .dir(parent, true, shown)?
            .ok_or_else(|| self.io_err(shown, "open parent", io::ErrorKind::NotFound.into()))?;
        let pfd = pfd.as_fd();
        // An earlier entry of this layer at the same name is replaced (tar semantics);
        // a directory may only be "replaced" by a directory, which updates its metadata.
        let existing = match component::stat_at(pfd, leaf) {
            Ok(m) => Some(m.kind),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(self.io_err(shown, "stat", err)),
        };
        match existing {
            Some(Kind::Dir) if ty.is_dir() => {}
            Some(Kind::Dir) => return Err(self.refuse(shown, Refusal::ReplacesDirectory)),
            Some(_) => {
                component::unlink_at(pfd, leaf, false)
                    .map_err(|err| self.io_err(shown, "replace earlier entry", err))?;
            }
            None => {}
        }
        if pax.sparse_old {
            return Err(self.refuse(shown, Refusal::UnsupportedSparse("PAX 0.x".into())));
        }
        let m = self.meta(e, &mut pax, shown)?;
        match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.regular_entry(e, ty, pfd, leaf, &pax, &m, shown)?;
            }
            tar::EntryType::Directory => {
                // A non-directory of an earlier entry was unlinked above: the directory
                // replaces it (tar semantics, as GNU tar and containerd's applier).
                if existing != Some(Kind::Dir) {
                    component::mkdir_at(pfd, leaf, 0o700)
                        .map_err(|err| self.io_err(shown, "mkdir", err))?;
                }
                let d = component::open_dir_at(pfd, leaf)
                    .map_err(|err| self.io_err(shown, "open", err))?;
                self.owner_and_xattrs_fd(d.as_fd(), &m, shown)?;
                self.dirs.insert(
                    join(&comps),
                    DirMeta {
                        perm: m.perm,
                        atime: Some(m.atime),
                        mtime: Some(m.mtime),
                    },
                );
            }
            tar::EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| self.refuse(shown, Refusal::MissingLinkTarget))?;
                component::symlink_at(&target, pfd, leaf)
                    .map_err(|err| self.io_err(shown, "symlink", err))?;
                self.meta_at(pfd, leaf, &m, false, shown)?;
            }
            tar::EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| self.refuse(shown, Refusal::MissingLinkTarget))?
                    .into_owned();
                self.hard_link(&target, &comps, shown)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let h = e.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                let kind = if ty == tar::EntryType::Char {
                    Kind::Char
                } else {
                    Kind::Block
                };
                self.device(pfd, leaf, &comps, kind, major, minor, &m, shown)?;
            }
            tar::EntryType::Fifo => {
                component::mknod_at(pfd, leaf, Kind::Fifo, 0o600, 0, 0)
                    .map_err(|err| self.io_err(shown, "mkfifo", err))?;
                self.meta_at(pfd, leaf, &m, true, shown)?;
            }
            other => return Err(self.refuse(shown, Refusal::UnsupportedType(other.as_byte()))),
        }
        Ok(())
    }

    /// The entry of the layer root itself (`./`): its owner, xattrs and directory metadata.
    fn root_entry<R: Read>(
        &mut self,
        e: &tar::Entry<'_, R>,
        ty: tar::EntryType,
        pax: &mut Pax,
        shown: &str,
    ) -> Result<(), ImageError> {
        if !ty.is_dir() {
            return Err(self.refuse(shown, Refusal::RootNotDirectory));
        }
        let m = self.meta(e, pax, shown)?;
        let root = self.root.clone();
        self.owner_and_xattrs_fd(root.as_fd(), &m, shown)?;
        self.dirs.insert(
            Vec::new(),
            DirMeta {
                perm: m.perm,
                atime: Some(m.atime),
                mtime: Some(m.mtime),
            },
        );
        Ok(())
    }

    /// A whiteout entry (`.wh.NAME` or the opaque marker `w` in directory `parent`): recorded,
    /// never applied to the lower layers.
    fn whiteout_entry(
        &mut self,
        ty: tar::EntryType,
        size: u64,
        parent: &[&[u8]],
        w: TarName<'_>,
        shown: &str,
    ) -> Result<(), ImageError> {
        if !matches!(ty, tar::EntryType::Regular | tar::EntryType::Continuous) {
            return Err(self.refuse(shown, Refusal::WhiteoutNotFile));
        }
        if size != 0 {
            return Err(self.refuse(shown, Refusal::WhiteoutWithContent));
        }
        match self.dir(parent, true, shown) {
            Ok(_) => {}
            // umoci writes a directory replaced by a file as the file followed by
            // whiteouts of the old directory's children (`x`, then `x/.wh.f1`), and
            // `umoci unpack` takes it: below a non-directory a whiteout hides nothing.
            // A symlink parent is still refused (see `dir`).
            Err(ImageError::Entry {
                refusal: Refusal::ParentNotDirectory(p),
                ..
            }) => {
                tracing::debug!(
                    layer = self.label,
                    entry = shown,
                    parent = p,
                    "whiteout below a non-directory: nothing to hide"
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        match w {
            TarName::Delete(name) => {
                let mut p = join(parent);
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                self.whiteouts.insert(p);
            }
            _ => {
                self.opaques.insert(join(parent));
            }
        }
        Ok(())
    }

    /// A regular file (plain, contiguous or sparse) at `leaf` in `pfd`: data, holes, owner,
    /// xattrs, mode and times.
    #[allow(clippy::too_many_arguments)]
    fn regular_entry<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        ty: tar::EntryType,
        pfd: BorrowedFd<'_>,
        leaf: &[u8],
        pax: &Pax,
        m: &EntryMeta,
        shown: &str,
    ) -> Result<(), ImageError> {
        let mut f = component::create_file_at(pfd, leaf, 0o600)
            .map_err(|err| self.io_err(shown, "create", err))?;
        if pax.sparse_major.is_some() {
            let (major, minor) = (pax.sparse_major.clone(), pax.sparse_minor.clone());
            if major.as_deref() != Some(b"1") || minor.as_deref() != Some(b"0") {
                return Err(self.refuse(
                    shown,
                    Refusal::UnsupportedSparse(format!(
                        "PAX {}.{}",
                        lossy(&major.unwrap_or_default()),
                        lossy(&minor.unwrap_or_default())
                    )),
                ));
            }
            let real = pax.sparse_realsize.ok_or_else(|| {
                self.refuse(
                    shown,
                    Refusal::BadSparseMap("no GNU.sparse.realsize".into()),
                )
            })?;
            self.write_pax_sparse(e, &f, real, shown)?;
        } else if ty == tar::EntryType::GNUSparse {
            let size = e.size();
            write_holey(e, &f, 0, size).map_err(|err| self.io_err(shown, "write", err))?;
            f.set_len(size)
                .map_err(|err| self.io_err(shown, "truncate", err))?;
        } else if e.size() >= SPARSE_MIN {
            // Holes are not recorded in plain entries: recreate them from zero runs.
            let size = e.size();
            write_holey(e, &f, 0, size).map_err(|err| self.io_err(shown, "write", err))?;
            f.set_len(size)
                .map_err(|err| self.io_err(shown, "truncate", err))?;
        } else {
            io::copy(e, &mut f).map_err(|err| self.io_err(shown, "write", err))?;
        }
        f.flush().map_err(|err| self.io_err(shown, "write", err))?;
        self.owner_and_xattrs_fd(f.as_fd(), m, shown)?;
        component::chmod_fd(f.as_fd(), m.perm).map_err(|err| self.io_err(shown, "chmod", err))?;
        component::set_times_fd(f.as_fd(), m.atime, m.mtime)
            .map_err(|err| self.io_err(shown, "set times", err))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn device(
        &mut self,
        pfd: BorrowedFd<'_>,
        leaf: &[u8],
        comps: &[&[u8]],
        kind: Kind,
        major: u32,
        minor: u32,
        m: &EntryMeta,
        shown: &str,
    ) -> Result<(), ImageError> {
        if kind == Kind::Char && (major, minor) == WHITEOUT_DEV {
            // An overlay whiteout in the tar itself: allowed unprivileged since Linux 5.8;
            // where refused it is recorded like `.wh.NAME`.
            let (major, minor) = WHITEOUT_DEV;
            return match component::mknod_at(pfd, leaf, kind, 0, major, minor) {
                Ok(()) => self.meta_at(pfd, leaf, m, true, shown),
                Err(err) if component::is_privilege_error(&err) => {
                    self.whiteouts.insert(join(comps));
                    Ok(())
                }
                Err(err) => Err(self.io_err(shown, "mknod", err)),
            };
        }
        let placeholder = |this: &mut Self| -> Result<(), ImageError> {
            let f = component::create_file_at(pfd, leaf, 0o600)
                .map_err(|err| this.io_err(shown, "create placeholder", err))?;
            let v = OverrideStat {
                uid: m.uid,
                gid: m.gid,
                mode: m.perm,
                kind: Some(if kind == Kind::Char {
                    OverrideKind::Char { major, minor }
                } else {
                    OverrideKind::Block { major, minor }
                }),
            }
            .format();
            component::set_xattr_fd(f.as_fd(), CONTAINERS_OVERRIDE.as_bytes(), v.as_bytes())
                .map_err(|err| this.io_err(shown, "set override xattr", err))?;
            component::set_times_fd(f.as_fd(), m.atime, m.mtime)
                .map_err(|err| this.io_err(shown, "set times", err))?;
            Ok(())
        };
        match self.devices {
            DeviceMode::Skip => {
                tracing::warn!("{}: skipping device node {shown:?}", self.label);
                Ok(())
            }
            DeviceMode::Placeholder if !self.privileged => placeholder(self),
            DeviceMode::Refuse | DeviceMode::Auto => {
                Err(self.refuse(shown, Refusal::DeviceNeedsRoot))
            }
            DeviceMode::Create | DeviceMode::Placeholder => {
                match component::mknod_at(pfd, leaf, kind, 0o600, major, minor) {
                    Ok(()) => self.meta_at(pfd, leaf, m, true, shown),
                    Err(err) if component::is_privilege_error(&err) => {
                        if self.devices == DeviceMode::Placeholder {
                            placeholder(self)
                        } else {
                            Err(self.refuse(shown, Refusal::DeviceNeedsRoot))
                        }
                    }
                    Err(err) => Err(self.io_err(shown, "mknod", err)),
                }
            }
        }
    }

    fn hard_link(&mut self, target: &[u8], comps: &[&[u8]], shown: &str) -> Result<(), ImageError> {
        let shown_target = lossy(target);
        let tcomps = entry_components(target).map_err(|r| self.refuse(shown, r))?;
        let Some((tleaf, tparent)) = tcomps.split_last() else {
            return Err(self.refuse(shown, Refusal::HardLinkTargetInvalid(shown_target)));
        };
        if tcomps == comps {
            return Err(self.refuse(shown, Refusal::HardLinkTargetInvalid(shown_target)));
        }
        let Some(tfd) = self.dir(tparent, false, shown)? else {
            return Err(self.refuse(shown, Refusal::HardLinkTargetMissing(shown_target)));
        };
        match component::stat_at(tfd.as_fd(), tleaf) {
            Ok(m) if m.kind == Kind::Dir => {
                return Err(self.refuse(shown, Refusal::HardLinkTargetInvalid(shown_target)))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(self.refuse(shown, Refusal::HardLinkTargetMissing(shown_target)))
            }
            Err(e) => return Err(self.io_err(shown, "stat link target", e)),
        }
        let Some((leaf, parent)) = comps.split_last() else {
            return Err(self.refuse(shown, Refusal::EmptyName));
        };
        let pfd = self
            .dir(parent, true, shown)?
            .ok_or_else(|| self.io_err(shown, "open parent", io::ErrorKind::NotFound.into()))?;
        component::link_at(tfd.as_fd(), tleaf, pfd.as_fd(), leaf)
            .map_err(|e| self.io_err(shown, "link", e))
    }

    /// Ownership: chown when privileged; unprivileged, a foreign owner is recorded in
    /// `user.containers.override_stat` (best effort) and the file stays ours.
    fn owner_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        m: &EntryMeta,
        shown: &str,
    ) -> Result<(), ImageError> {
        if self.privileged {
            return component::chown_fd(fd, m.uid, m.gid)
                .map_err(|e| self.io_err(shown, "chown", e));
        }
        if (m.uid, m.gid) != self.own {
            let v = OverrideStat {
                uid: m.uid,
                gid: m.gid,
                mode: m.perm,
                kind: None,
            }
            .format();
            if component::set_xattr_fd(fd, CONTAINERS_OVERRIDE.as_bytes(), v.as_bytes()).is_err() {
                self.warn_once("owner", "not root: ownership not kept");
            }
        }
        Ok(())
    }

    fn owner_and_xattrs_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        m: &EntryMeta,
        shown: &str,
    ) -> Result<(), ImageError> {
        self.owner_fd(fd, m, shown)?;
        self.set_xattrs(m, shown, |name, value| {
            component::set_xattr_fd(fd, name, value)
        })
    }

    /// Sets the entry's xattrs with `set`, but none in an overlay-private namespace: a
    /// layer must not be able to plant whiteouts, redirects or origins of its own.
    fn set_xattrs(
        &mut self,
        m: &EntryMeta,
        shown: &str,
        mut set: impl FnMut(&[u8], &[u8]) -> io::Result<()>,
    ) -> Result<(), ImageError> {
        for (name, value) in &m.xattrs {
            if xattr::is_overlay_namespace(name) {
                self.warn_once(
                    "private-xattr",
                    "dropping overlay-private xattrs found in the tar",
                );
                continue;
            }
            if let Err(e) = set(name, value) {
                self.xattr_failed(e, name, shown)?;
            }
        }
        Ok(())
    }

    fn xattr_failed(&mut self, e: io::Error, name: &[u8], shown: &str) -> Result<(), ImageError> {
        if component::is_privilege_error(&e) {
            tracing::debug!(
                "{}: {shown:?}: xattr {} not set: {e}",
                self.label,
                lossy(name)
            );
            self.warn_once(
                "xattr",
                "some xattrs could not be set (not permitted or unsupported)",
            );
            Ok(())
        } else {
            Err(self.io_err(shown, "set xattr", e))
        }
    }

    /// Metadata of an object that cannot be opened (symlink, fifo, device node).
    fn meta_at(
        &mut self,
        pfd: BorrowedFd<'_>,
        leaf: &[u8],
        m: &EntryMeta,
        chmod: bool,
        shown: &str,
    ) -> Result<(), ImageError> {
        if self.privileged {
            component::chown_at_nofollow(pfd, leaf, m.uid, m.gid)
                .map_err(|e| self.io_err(shown, "chown", e))?;
        }
        if chmod {
            component::chmod_at(pfd, leaf, m.perm).map_err(|e| self.io_err(shown, "chmod", e))?;
        }
        self.set_xattrs(m, shown, |name, value| {
            component::set_xattr_at_nofollow(pfd, leaf, name, value)
        })?;
        component::set_times_at_nofollow(pfd, leaf, m.atime, m.mtime)
            .map_err(|e| self.io_err(shown, "set times", e))
    }

    /// GNU PAX sparse format 1.0: the data starts with a decimal map (count, then offset/size
    /// pairs, one per line) padded to a block, followed by the data chunks back to back.
    fn write_pax_sparse<R: Read>(
        &self,
        e: &mut tar::Entry<'_, R>,
        f: &File,
        real: u64,
        shown: &str,
    ) -> Result<(), ImageError> {
        let bad = |s: &str| self.refuse(shown, Refusal::BadSparseMap(s.to_string()));
        let mut buf: Vec<u8> = Vec::new();
        let mut pos = 0usize;
        let mut next_number = |buf: &mut Vec<u8>, pos: &mut usize| -> Result<u64, ImageError> {
            loop {
                if let Some(nl) = buf[*pos..].iter().position(|b| *b == b'\n') {
                    let s = std::str::from_utf8(&buf[*pos..*pos + nl])
                        .map_err(|_| bad("not decimal"))?;
                    let v = s.parse::<u64>().map_err(|_| bad("not decimal"))?;
                    *pos += nl + 1;
                    return Ok(v);
                }
                if buf.len() - *pos > 64 {
                    return Err(bad("number too long"));
                }
                let mut block = [0u8; BLOCK];
                e.read_exact(&mut block).map_err(|_| bad("map truncated"))?;
                buf.extend_from_slice(&block);
            }
        };
        let count = next_number(&mut buf, &mut pos)?;
        if count > MAX_SPARSE_ENTRIES {
            return Err(bad("too many entries"));
        }
        let mut chunks = Vec::new();
        for _ in 0..count {
            let off = next_number(&mut buf, &mut pos)?;
            let len = next_number(&mut buf, &mut pos)?;
            if off.checked_add(len).is_none_or(|end| end > real) {
                return Err(bad("chunk beyond the file size"));
            }
            chunks.push((off, len));
        }
        // The map is padded to whole blocks, all of which were read already.
        for (off, len) in chunks {
            write_holey(e, f, off, len).map_err(|err| self.io_err(shown, "write", err))?;
        }
        f.set_len(real)
            .map_err(|err| self.io_err(shown, "truncate", err))
    }

    /// Materialises whiteouts and opaque markers, then directory modes and times.
    fn finish(&mut self) -> Result<(Option<WhiteoutFormat>, Option<OpaqueFormat>), ImageError> {
        let mut wformat = None;
        for w in std::mem::take(&mut self.whiteouts) {
            let comps: Vec<&[u8]> = w.split(|b| *b == b'/').collect();
            let Some((leaf, parent)) = comps.split_last() else {
                continue;
            };
            let shown = lossy(&w);
            let pfd = self.dir(parent, true, &shown)?.ok_or_else(|| {
                self.io_err(&shown, "open parent", io::ErrorKind::NotFound.into())
            })?;
            match component::stat_at(pfd.as_fd(), leaf) {
                // Re-created as a directory in this layer: lower content is gone, so opaque.
                Ok(m) if m.kind == Kind::Dir => {
                    self.opaques.insert(w.clone());
                    continue;
                }
                // The layer's own entry (or a whiteout char device) already hides the lower.
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io_err(&shown, "stat", e)),
            }
            let (major, minor) = WHITEOUT_DEV;
            match component::mknod_at(pfd.as_fd(), leaf, Kind::Char, 0, major, minor) {
                Ok(()) => {
                    wformat.get_or_insert(WhiteoutFormat::CharDevice);
                }
                Err(e) if component::is_privilege_error(&e) => {
                    let name = whiteout::whiteout_file_name(OsStr::from_bytes(leaf)).into_vec();
                    match component::create_file_at(pfd.as_fd(), &name, 0o600) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(self.io_err(&shown, "create whiteout file", e)),
                    }
                    wformat = Some(WhiteoutFormat::WhFile);
                }
                Err(e) => return Err(self.io_err(&shown, "create whiteout", e)),
            }
        }
        let mut oformat = None;
        for o in std::mem::take(&mut self.opaques) {
            let comps: Vec<&[u8]> = if o.is_empty() {
                Vec::new()
            } else {
                o.split(|b| *b == b'/').collect()
            };
            let shown = lossy(&o);
            let fd = self
                .dir(&comps, true, &shown)?
                .ok_or_else(|| self.io_err(&shown, "open", io::ErrorKind::NotFound.into()))?;
            let (trusted, user) = (XattrNs::Trusted.opaque(), XattrNs::User.opaque());
            match component::set_xattr_fd(fd.as_fd(), trusted.as_bytes(), xattr::OPAQUE_VALUE) {
                Ok(()) => {
                    oformat.get_or_insert(OpaqueFormat::TrustedXattr);
                }
                Err(e) if component::is_privilege_error(&e) => {
                    if let Err(e) =
                        component::set_xattr_fd(fd.as_fd(), user.as_bytes(), xattr::OPAQUE_VALUE)
                    {
                        if !component::is_privilege_error(&e) {
                            return Err(self.io_err(&shown, "set user opaque xattr", e));
                        }
                    }
                    match component::create_file_at(fd.as_fd(), OPAQUE_MARKER.as_bytes(), 0o600) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(self.io_err(&shown, "create opaque marker", e)),
                    }
                    oformat = Some(OpaqueFormat::UserXattrAndFile);
                }
                Err(e) => return Err(self.io_err(&shown, "set opaque xattr", e)),
            }
        }
        // Deepest first, so setting a parent's mtime comes after its children change it.
        let mut dirs: Vec<(Vec<u8>, DirMeta)> =
            std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by_key(|(p, _)| {
            std::cmp::Reverse(p.iter().filter(|b| **b == b'/').count() + usize::from(!p.is_empty()))
        });
        self.cache = None;
        for (p, m) in dirs {
            let comps: Vec<&[u8]> = if p.is_empty() {
                Vec::new()
            } else {
                p.split(|b| *b == b'/').collect()
            };
            let shown = if p.is_empty() {
                "./".to_string()
            } else {
                lossy(&p)
            };
            let Some(fd) = self.dir(&comps, false, &shown)? else {
                continue;
            };
            self.cache = None;
            component::chmod_fd(fd.as_fd(), m.perm).map_err(|e| self.io_err(&shown, "chmod", e))?;
            if let Some(mtime) = m.mtime {
                component::set_times_fd(fd.as_fd(), m.atime.unwrap_or(mtime), mtime)
                    .map_err(|e| self.io_err(&shown, "set times", e))?;
            }
        }
        Ok((wformat, oformat))
    }
}

/// Copies `len` bytes from `r` to `f` at `off`, leaving all-zero chunks as holes (runs of
/// data chunks are written with one `pwrite`).
fn write_holey<R: Read>(r: &mut R, f: &File, mut off: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(COPY_BUF as u64)).unwrap_or(COPY_BUF);
        r.read_exact(&mut buf[..want])?;
        let mut run: Option<usize> = None;
        let mut i = 0;
        while i < want {
            let end = (i + HOLE_CHUNK).min(want);
            let zero = buf[i..end].iter().all(|b| *b == 0);
            match (zero, run) {
                (true, Some(start)) => {
                    f.write_all_at(&buf[start..i], off + start as u64)?;
                    run = None;
                }
                (false, None) => run = Some(i),
                _ => {}
            }
            i = end;
        }
        if let Some(start) = run {
            f.write_all_at(&buf[start..want], off + start as u64)?;
        }
        off += want as u64;
        left -= want as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components() {
        let ok: &[(&[u8], &[&[u8]])] = &[
            (b"a/b", &[b"a", b"b"]),
            (b"./a//b/", &[b"a", b"b"]),
            (b"/etc/passwd", &[b"etc", b"passwd"]),
            (b"./", &[]),
            (b"a/./b", &[b"a", b"b"]),
        ];
        for (raw, want) in ok {
            assert_eq!(entry_components(raw).unwrap(), *want, "{raw:?}");
        }
        for raw in [&b"../x"[..], b"a/../b", b"a/..", b"/.."] {
            assert_eq!(entry_components(raw), Err(Refusal::DotDot), "{raw:?}");
        }
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(parse_pax_time(b"1.5"), Some((1, 500_000_000)));
        assert_eq!(parse_pax_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.x"), None);
    }
}
