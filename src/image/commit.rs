//! `rlayerfs commit`: an overlay upper directory as an OCI layer tarball, and appending that
//! layer to an unpacked image or an OCI image layout as a new image.
//!
//! Every whiteout encoding an upper may hold (see `crate::format::whiteout`) is exported as `.wh.NAME`: a char
//! device 0/0, an empty `.wh.NAME` file, or a zero-size file carrying
//! `trusted.overlay.whiteout` / `user.overlay.whiteout`. A directory that is opaque in any
//! encoding (`trusted.overlay.opaque=y`, `user.overlay.opaque=y`,
//! `user.fuseoverlayfs.opaque=y`, or a `.wh..wh..opq` file inside) gets a `.wh..wh..opq`
//! entry right after its own. Overlay-private xattrs are never exported;
//! `user.containers.override_stat` is applied to the header (owner, mode, device type) and
//! dropped. Directories the kernel renamed (`overlay.redirect`) cannot be exported without
//! the lower layers and are refused. Metacopy files (`overlay.metacopy`: metadata copied
//! up, data still in a lower file) are exported with their data, read from the lower layers
//! (`--lower`) where kernel overlayfs finds it ([`metacopy_data`]); without them they are
//! refused. Hard-linked lower files changed through the workdir's index need the lower
//! layers too (`--lower`, see [`lower_links`]).
//!
//! Output is deterministic: entries in bytewise name order (a directory before its
//! children), ustar headers with empty uname/gname and no atime/ctime, mtimes in whole
//! seconds, PAX records in a fixed order (`path`, `linkpath`, then `SCHILY.xattr.*` by name),
//! whiteout and opaque entries with fixed metadata (mode 0644, root, mtime 0), gzip without
//! a name or timestamp. The same upper therefore gives byte-identical blobs.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::archive::{sha256_digest, Compression, Compressor, HashingWriter};
use super::description::{ImageDescription, LayerRecord, LAYERS_DIR};
use super::error::ImageError;
use super::layer_marks::{dir_is_opaque, has_xattr, is_whiteout_object};
use super::lower_links::{self, Extra, LowerLinks};
use super::oci::{
    parse_json, Descriptor, Digest, Index, Platform, ANNOTATION_REF_NAME, MT_DOCKER_MANIFEST,
    MT_OCI_CONFIG, MT_OCI_MANIFEST,
};
use super::safe_fs::{self, Kind, Meta};
use super::source::{check_blob, select_manifest, Store};
use super::unpack::{unpack_layer, DeviceMode};
use crate::format::override_stat::{OverrideKind, OverrideStat, CONTAINERS_OVERRIDE};
use crate::format::whiteout::{self, OPAQUE_MARKER, WH_META_PREFIX};
use crate::format::xattr::{self, LITERAL_XATTRS};

const BLOCK: usize = 512;
/// Mode of exported whiteout and opaque-marker entries.
const MARKER_MODE: u32 = 0o644;
/// ustar `name` field length.
const NAME_LEN: usize = 100;
/// ustar `prefix` field length.
const PREFIX_LEN: usize = 155;
/// Name of PAX extended headers (content-free, so constant for determinism).
const PAX_NAME: &[u8] = b"././@PaxHeader";
/// Options of [`commit`].
#[derive(Debug, Clone, Copy)]
pub struct CommitOptions {
    /// Compression of the blob.
    pub compression: Compression,
    /// Show a progress spinner on stderr.
    pub progress: bool,
}

/// What [`commit`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitReport {
    /// sha256 of the blob (compressed).
    pub digest: Digest,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Blob size in bytes.
    pub size: u64,
    /// Compression used.
    pub compression: Compression,
    /// Tar entries written (including whiteouts and PAX headers are not counted).
    pub entries: u64,
}

/// The record of one entry's header fields.
struct Hdr {
    kind: tar::EntryType,
    perm: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
    major: u32,
    minor: u32,
}

impl Hdr {
    fn marker() -> Self {
        Hdr {
            kind: tar::EntryType::Regular,
            perm: MARKER_MODE,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            major: 0,
            minor: 0,
        }
    }
}

/// One PAX record `"LEN KEY=VALUE\n"`, LEN counting the whole record.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Splits a path into ustar (prefix, name) if it fits.
fn ustar_split(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= NAME_LEN {
        return Some((&[], path));
    }
    // The name part must be non-empty; the split drops one '/'.
    for (i, b) in path.iter().enumerate().rev() {
        if *b == b'/' && i <= PREFIX_LEN && path.len() - i - 1 <= NAME_LEN && i + 1 < path.len() {
            return Some((&path[..i], &path[i + 1..]));
        }
    }
    None
}

/// A minimal deterministic tar writer.
struct TarOut<W: Write> {
    w: W,
    entries: u64,
}

impl<W: Write> TarOut<W> {
    fn raw(&mut self, header: &tar::Header, data: &mut dyn Read, size: u64) -> io::Result<()> {
        self.w.write_all(header.as_bytes())?;
        let copied = io::copy(&mut data.take(size), &mut self.w)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being committed",
            ));
        }
        let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
        self.w.write_all(&[0u8; BLOCK][..pad])
    }

    fn entry(
        &mut self,
        path: &[u8],
        h: &Hdr,
        link: Option<&[u8]>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        data: Option<&mut dyn Read>,
    ) -> io::Result<()> {
        let mut pax = Vec::new();
        let split = ustar_split(path);
        if split.is_none() {
            pax_record(&mut pax, b"path", path);
        }
        if let Some(l) = link {
            if l.len() > NAME_LEN {
                pax_record(&mut pax, b"linkpath", l);
            }
        }
        for (k, v) in xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            pax_record(&mut pax, &key, v);
        }
        if !pax.is_empty() {
            let mut ph = tar::Header::new_ustar();
            set_name(&mut ph, &[], PAX_NAME);
            ph.set_entry_type(tar::EntryType::XHeader);
            ph.set_mode(MARKER_MODE);
            ph.set_uid(0);
            ph.set_gid(0);
            ph.set_mtime(0);
            ph.set_size(pax.len() as u64);
            ph.set_cksum();
            self.raw(&ph, &mut &pax[..], pax.len() as u64)?;
        }
        let mut hd = tar::Header::new_ustar();
        match split {
            Some((prefix, name)) => set_name(&mut hd, prefix, name),
            None => set_name(&mut hd, &[], &path[..NAME_LEN.min(path.len())]),
        }
        if let Some(l) = link {
            let n = l.len().min(NAME_LEN);
            hd.as_old_mut().linkname[..n].copy_from_slice(&l[..n]);
        }
        hd.set_entry_type(h.kind);
        hd.set_mode(h.perm);
        hd.set_uid(h.uid);
        hd.set_gid(h.gid);
        hd.set_mtime(h.mtime);
        hd.set_size(h.size);
        if matches!(h.kind, tar::EntryType::Char | tar::EntryType::Block) {
            hd.set_device_major(h.major)?;
            hd.set_device_minor(h.minor)?;
        }
        hd.set_cksum();
        self.entries += 1;
        match data {
            Some(r) => self.raw(&hd, r, h.size),
            None => self.raw(&hd, &mut io::empty(), 0),
        }
    }

    fn finish(mut self) -> io::Result<W> {
        self.w.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.w)
    }
}

fn set_name(h: &mut tar::Header, prefix: &[u8], name: &[u8]) {
    if let Some(u) = h.as_ustar_mut() {
        u.name = [0; NAME_LEN];
        u.name[..name.len()].copy_from_slice(name);
        u.prefix = [0; PREFIX_LEN];
        u.prefix[..prefix.len()].copy_from_slice(prefix);
    }
}

/// An xattr name and value.
type Xattr = (Vec<u8>, Vec<u8>);

/// The xattrs a layer keeps, and the entry type: `user.containers.override_stat` goes into
/// the header (owner, mode, and the device type a placeholder file stands for), private
/// overlay xattrs are dropped.
fn exported_xattrs(xattrs: Vec<Xattr>, h: &mut Hdr, real: Kind) -> (Kind, Vec<Xattr>) {
    let mut kind = real;
    let mut exported = Vec::with_capacity(xattrs.len());
    for (k, v) in xattrs {
        if k == CONTAINERS_OVERRIDE.as_bytes() {
            if let Some(o) = OverrideStat::parse(&v) {
                h.uid = u64::from(o.uid);
                h.gid = u64::from(o.gid);
                h.perm = o.mode;
                // A regular file standing for a device or fifo becomes one; a tar cannot
                // hold a socket, and the other types are the real one's.
                let special = match o.kind {
                    Some(OverrideKind::Char { major, minor }) => Some((Kind::Char, major, minor)),
                    Some(OverrideKind::Block { major, minor }) => Some((Kind::Block, major, minor)),
                    Some(OverrideKind::Pipe) => Some((Kind::Fifo, 0, 0)),
                    _ => None,
                };
                if let (Some((k2, ma, mi)), Kind::File) = (special, real) {
                    kind = k2;
                    h.major = ma;
                    h.minor = mi;
                }
            }
            continue;
        }
        if xattr::is_overlay_namespace(&k) {
            continue;
        }
        exported.push((k, v));
    }
    (kind, exported)
}

enum Item {
    Whiteout,
    Real(Vec<u8>, Meta),
    /// An entry of the merged view the upper lacks (see [`lower_links`]).
    Extra(Extra),
}

struct Committer<'a, W: Write> {
    out: TarOut<W>,
    links: HashMap<(u64, u64), Vec<u8>>,
    upper: &'a Path,
    bar: indicatif::ProgressBar,
    extras: LowerLinks,
}

/// The data file of the metacopy file at `path` of an upper (its redirect `redirect`), in
/// `lowers` (top first), where kernel overlayfs finds it: at the same path, or where the
/// redirect points (absolute: from the root; relative: another name in the same directory),
/// in each layer from the top; a metacopy file of a lower layer moves the search for the
/// layers below by its own redirect; a whiteout or anything but a regular file ends it.
/// `None`: not found.
pub(crate) fn metacopy_data(
    lowers: &[PathBuf],
    path: &[u8],
    redirect: Option<Vec<u8>>,
) -> io::Result<Option<File>> {
    fn apply(cur: &mut Vec<u8>, r: &[u8]) {
        if let Some(abs) = r.strip_prefix(b"/") {
            *cur = abs.to_vec();
        } else {
            let keep = cur.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
            cur.truncate(keep);
            cur.extend_from_slice(r);
        }
    }
    let mut cur = path.to_vec();
    if let Some(r) = redirect {
        apply(&mut cur, &r);
    }
    for layer in lowers {
        let root = safe_fs::open_dir_path(layer)?;
        let (dir, name) = match lower_links::open_parent(&root, &cur) {
            Ok(v) => v,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => continue,
            Err(e) => return Err(e),
        };
        let m = match safe_fs::stat_at(dir.as_fd(), name) {
            Ok(m) => m,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let wh = whiteout::whiteout_file_name(OsStr::from_bytes(name)).into_vec();
                if safe_fs::stat_at(dir.as_fd(), &wh).is_ok() {
                    return Ok(None);
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if m.kind != Kind::File {
            return Ok(None);
        }
        let f = safe_fs::open_file_at(dir.as_fd(), name)?;
        if !has_xattr(f.as_fd(), &xattr::METACOPY_XATTRS, None)? {
            return Ok(Some(f));
        }
        let next = xattr::REDIRECT_XATTRS.iter().find_map(|n| {
            safe_fs::get_xattr_fd(f.as_fd(), n.as_bytes())
                .ok()
                .flatten()
        });
        if let Some(r) = next {
            apply(&mut cur, &r);
        }
    }
    Ok(None)
}

impl<W: Write> Committer<'_, W> {
    fn shown(&self, path: &[u8]) -> PathBuf {
        self.upper.join(OsStr::from_bytes(path))
    }

    fn io(&self, op: &'static str, path: &[u8], e: io::Error) -> ImageError {
        ImageError::io(op, self.shown(path), e)
    }

    fn marker(&mut self, path: &[u8]) -> Result<(), ImageError> {
        self.out
            .entry(path, &Hdr::marker(), None, &[], None)
            .map_err(|e| self.io("write", path, e))
    }

    /// Is `dir` opaque in any encoding?
    fn is_opaque(&self, dir: BorrowedFd<'_>, path: &[u8]) -> Result<bool, ImageError> {
        dir_is_opaque(dir).map_err(|e| self.io("read xattrs", path, e))
    }

    /// Writes the entries below `prefix`: the upper directory `dir`'s (none for a
    /// directory only the lowers hold) and the extras the merged view needs there.
    fn walk(&mut self, dir: Option<&OwnedFd>, prefix: &[u8]) -> Result<(), ImageError> {
        let mut items: Vec<(Vec<u8>, Item)> = self
            .extras
            .children(prefix)
            .into_iter()
            .map(|(n, e)| (n, Item::Extra(e)))
            .collect();
        if let Some(dir) = dir {
            self.upper_items(dir, prefix, &mut items)?;
        }
        items.sort_by(|a, b| a.0.cmp(&b.0));
        items.dedup_by(|a, b| a.0 == b.0);
        for (out_name, item) in items {
            let mut path = prefix.to_vec();
            path.extend_from_slice(&out_name);
            match item {
                Item::Whiteout => self.marker(&path)?,
                Item::Real(name, m) => {
                    if let Some(d) = dir {
                        self.emit(d.as_fd(), &name, &path, m, false)?;
                    }
                }
                Item::Extra(e) => self.emit_extra(e, &path)?,
            }
        }
        Ok(())
    }

    /// Writes the layer root (`./`) with the upper root's attributes, which the merged
    /// root shows.
    fn emit_root(&mut self, root: &OwnedFd) -> Result<(), ImageError> {
        let m = safe_fs::stat_fd(root.as_fd()).map_err(|e| self.io("stat", b"", e))?;
        let xattrs =
            safe_fs::list_xattrs_fd(root.as_fd()).map_err(|e| self.io("read xattrs", b"", e))?;
        let mut h = Hdr {
            kind: tar::EntryType::Directory,
            perm: m.perm,
            uid: u64::from(m.uid),
            gid: u64::from(m.gid),
            mtime: u64::try_from(m.mtime).unwrap_or(0),
            size: 0,
            major: 0,
            minor: 0,
        };
        let (_, exported) = exported_xattrs(xattrs, &mut h, Kind::Dir);
        self.out
            .entry(b"./", &h, None, &exported, None)
            .map_err(|e| self.io("write", b"", e))
    }

    /// Writes an extra entry: a lower directory's header (its children are extras too) or
    /// another name of a copied-up file.
    fn emit_extra(&mut self, extra: Extra, path: &[u8]) -> Result<(), ImageError> {
        let (root, rel, lower) = match &extra {
            Extra::Dir { layer } => (self.extras.lower(*layer).to_path_buf(), path, true),
            Extra::Link { upper_path } => (self.upper.to_path_buf(), &upper_path[..], false),
        };
        let rel = rel.to_vec();
        let shown = root.join(std::ffi::OsStr::from_bytes(&rel));
        let (parent, name) = (|| {
            let r = safe_fs::open_dir_path(&root)?;
            lower_links::open_parent(&r, &rel).map(|(d, n)| (d, n.to_vec()))
        })()
        .map_err(|e| ImageError::io("open", &shown, e))?;
        let m = safe_fs::stat_at(parent.as_fd(), &name)
            .map_err(|e| ImageError::io("stat", &shown, e))?;
        self.emit(parent.as_fd(), &name, path, m, lower)
    }

    /// The upper directory's entries as items (whiteouts in their OCI names).
    fn upper_items(
        &mut self,
        dir: &OwnedFd,
        prefix: &[u8],
        items: &mut Vec<(Vec<u8>, Item)>,
    ) -> Result<(), ImageError> {
        let names = safe_fs::read_dir_names(dir.as_fd())
            .map_err(|e| self.io("read directory", prefix, e))?;
        for name in names {
            let mut path = prefix.to_vec();
            path.extend_from_slice(&name);
            if whiteout::is_reserved_name(OsStr::from_bytes(&name)) {
                // A `.wh.*` object a user made through the mount (an inner overlay's
                // whiteout, say): an OCI layer has no way to hold that name as data.
                for x in LITERAL_XATTRS {
                    if safe_fs::has_xattr_at(dir.as_fd(), &name, x.as_bytes())
                        .map_err(|e| self.io("read xattrs", &path, e))?
                    {
                        return Err(ImageError::Unsupported {
                            path: self.shown(&path).display().to_string(),
                            what: "an object named .wh.* made through the mount: in an OCI \
                                   layer that name is a whiteout"
                                .into(),
                        });
                    }
                }
            }
            if name.starts_with(WH_META_PREFIX) {
                // The opaque marker (handled with its directory) or aufs metadata.
                continue;
            }
            let m = safe_fs::stat_at(dir.as_fd(), &name).map_err(|e| self.io("stat", &path, e))?;
            if whiteout::is_reserved_name(OsStr::from_bytes(&name)) {
                if m.kind == Kind::Dir {
                    tracing::warn!(
                        "skipping directory {} (reserved .wh. name)",
                        self.shown(&path).display()
                    );
                } else {
                    items.push((name, Item::Whiteout));
                }
                continue;
            }
            if m.kind == Kind::File && m.size == 0 {
                // An inner overlay's whiteout (a 0/0 device made through the mount): as a
                // 0/0 device an OCI layer's unpacker would make this overlay's whiteout of it.
                for x in xattr::INNER_WHITEOUT_XATTRS {
                    if safe_fs::has_xattr_at(dir.as_fd(), &name, x.as_bytes())
                        .map_err(|e| self.io("read xattrs", &path, e))?
                    {
                        return Err(ImageError::Unsupported {
                            path: self.shown(&path).display().to_string(),
                            what: "a character device 0/0 made through the mount (a nested \
                                   overlay's whiteout): in an OCI layer it is a whiteout"
                                .into(),
                        });
                    }
                }
            }
            let wh = || whiteout::whiteout_file_name(OsStr::from_bytes(&name)).into_vec();
            if is_whiteout_object(dir.as_fd(), &name, &m)
                .map_err(|e| self.io("read xattrs", &path, e))?
            {
                items.push((wh(), Item::Whiteout));
                continue;
            }
            if m.kind == Kind::Socket {
                tracing::warn!(
                    "skipping socket {} (tar cannot hold sockets)",
                    self.shown(&path).display()
                );
                continue;
            }
            items.push((name.clone(), Item::Real(name, m)));
        }
        Ok(())
    }

    fn link_of(&mut self, m: &Meta, path: &[u8]) -> Option<Vec<u8>> {
        if m.kind == Kind::Dir || m.nlink < 2 {
            return None;
        }
        match self.links.get(&(m.dev, m.ino)) {
            Some(first) => Some(first.clone()),
            None => {
                self.links.insert((m.dev, m.ino), path.to_vec());
                None
            }
        }
    }

    /// Writes the entry `name` of `dir` as `path`; a directory's children follow (for a
    /// lower directory, `lower`, only the extras below it).
    fn emit(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        m: Meta,
        lower: bool,
    ) -> Result<(), ImageError> {
        let mut h = Hdr {
            kind: tar::EntryType::Regular,
            perm: m.perm,
            uid: u64::from(m.uid),
            gid: u64::from(m.gid),
            mtime: u64::try_from(m.mtime).unwrap_or(0),
            size: 0,
            major: m.major,
            minor: m.minor,
        };
        let (xattrs, file, dirfd) = match m.kind {
            Kind::Dir => {
                let d = safe_fs::open_dir_at(dir, name).map_err(|e| self.io("open", path, e))?;
                if has_xattr(d.as_fd(), &xattr::REDIRECT_XATTRS, None)
                    .map_err(|e| self.io("read xattrs", path, e))?
                {
                    return Err(ImageError::Unsupported {
                        path: self.shown(path).display().to_string(),
                        what: "directory renamed by kernel overlayfs (overlay.redirect): its \
                               content is in a lower layer; commit the merged view instead"
                            .into(),
                    });
                }
                let x = safe_fs::list_xattrs_fd(d.as_fd())
                    .map_err(|e| self.io("read xattrs", path, e))?;
                (x, None, Some(d))
            }
            Kind::File => {
                let f = safe_fs::open_file_at(dir, name).map_err(|e| self.io("open", path, e))?;
                let x = safe_fs::list_xattrs_fd(f.as_fd())
                    .map_err(|e| self.io("read xattrs", path, e))?;
                let data = if !lower
                    && has_xattr(f.as_fd(), &xattr::METACOPY_XATTRS, None)
                        .map_err(|e| self.io("read xattrs", path, e))?
                {
                    let redirect = xattr::REDIRECT_XATTRS.iter().find_map(|n| {
                        x.iter()
                            .find(|(k, _)| k == n.as_bytes())
                            .map(|(_, v)| v.clone())
                    });
                    let found = metacopy_data(self.extras.lowers(), path, redirect)
                        .map_err(|e| self.io("read lower data", path, e))?;
                    match found {
                        Some(d) => d,
                        None => {
                            return Err(ImageError::Unsupported {
                                path: self.shown(path).display().to_string(),
                                what: "metacopy file (overlay.metacopy): its data is in a lower \
                                       layer, not found in the lower layers given (--lower)"
                                    .into(),
                            })
                        }
                    }
                } else {
                    f
                };
                (x, Some(data), None)
            }
            _ => {
                let x = safe_fs::list_xattrs_at_nofollow(dir, name)
                    .map_err(|e| self.io("read xattrs", path, e))?;
                (x, None, None)
            }
        };
        let (kind, exported) = exported_xattrs(xattrs, &mut h, m.kind);
        let mut tar_path = path.to_vec();
        if kind == Kind::Dir {
            tar_path.push(b'/');
        }
        if let Some(first) = self.link_of(&m, path) {
            h.kind = tar::EntryType::Link;
            return self
                .out
                .entry(&tar_path, &h, Some(&first), &exported, None)
                .map_err(|e| self.io("write", path, e));
        }
        let mut target = None;
        h.kind = match kind {
            Kind::Dir => tar::EntryType::Directory,
            Kind::File => {
                h.size = m.size;
                tar::EntryType::Regular
            }
            Kind::Symlink => {
                target = Some(
                    safe_fs::readlink_at(dir, name).map_err(|e| self.io("readlink", path, e))?,
                );
                tar::EntryType::Symlink
            }
            Kind::Char => tar::EntryType::Char,
            Kind::Block => tar::EntryType::Block,
            Kind::Fifo => tar::EntryType::Fifo,
            Kind::Socket => return Ok(()),
        };
        let res = match (file, h.kind) {
            (Some(mut f), tar::EntryType::Regular) => {
                let r = self.out.entry(&tar_path, &h, None, &exported, Some(&mut f));
                self.bar.inc(h.size);
                r
            }
            _ => self
                .out
                .entry(&tar_path, &h, target.as_deref(), &exported, None),
        };
        res.map_err(|e| self.io("write", path, e))?;
        if let Some(d) = dirfd {
            if lower {
                return self.walk(None, &tar_path);
            }
            if self.is_opaque(d.as_fd(), path)? {
                let mut p = tar_path.clone();
                p.extend_from_slice(OPAQUE_MARKER.as_bytes());
                self.marker(&p)?;
            }
            self.walk(Some(&d), &tar_path)?;
        }
        Ok(())
    }
}

/// Writes the layer tarball of `upper` into `out`; returns the report and the writer.
pub fn commit_to_writer<W: Write>(
    upper: &Path,
    out: W,
    opts: &CommitOptions,
) -> Result<(CommitReport, W), ImageError> {
    commit_over_to_writer(upper, &[], out, opts)
}

/// [`commit_to_writer`] for an upper over `lowers` (top first): other lower names of
/// hard links copied up through the workdir's index are kept (see [`lower_links`]).
pub fn commit_over_to_writer<W: Write>(
    upper: &Path,
    lowers: &[PathBuf],
    out: W,
    opts: &CommitOptions,
) -> Result<(CommitReport, W), ImageError> {
    let extras = lower_links::find(upper, lowers)?;
    let root = safe_fs::open_dir_path(upper).map_err(|e| ImageError::io("open", upper, e))?;
    let blob = HashingWriter::new(out);
    let comp = Compressor::new(blob, opts.compression)
        .map_err(|e| ImageError::io("compress", upper, e))?;
    let diff = HashingWriter::new(comp);
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new_spinner();
        if let Ok(s) =
            indicatif::ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec} {msg}")
        {
            b.set_style(s);
        }
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut c = Committer {
        out: TarOut {
            w: diff,
            entries: 0,
        },
        links: HashMap::new(),
        upper,
        bar: bar.clone(),
        extras,
    };
    c.emit_root(&root)?;
    if c.is_opaque(root.as_fd(), b"")? {
        c.marker(OPAQUE_MARKER.as_bytes())?;
    }
    c.walk(Some(&root), b"")?;
    bar.finish_and_clear();
    let entries = c.out.entries;
    let diff = c
        .out
        .finish()
        .map_err(|e| ImageError::io("write", upper, e))?;
    let (diff_id, _, comp) = diff.finish();
    let blob = comp
        .finish()
        .map_err(|e| ImageError::io("compress", upper, e))?;
    let (digest, size, w) = blob.finish();
    Ok((
        CommitReport {
            digest,
            diff_id,
            size,
            compression: opts.compression,
            entries,
        },
        w,
    ))
}

/// A temporary file beside `target`, renamed onto it by `persist`, removed if dropped.
struct TempFile {
    path: PathBuf,
    target: PathBuf,
    done: bool,
}

impl TempFile {
    fn beside(target: &Path) -> Result<(Self, File), ImageError> {
        let name = target
            .file_name()
            .ok_or_else(|| ImageError::Usage(format!("bad output path {}", target.display())))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".rlayerfs-tmp.{}", std::process::id()));
        let path = target.with_file_name(tmp_name);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| ImageError::io("create", &path, e))?;
        Ok((
            TempFile {
                path,
                target: target.to_path_buf(),
                done: false,
            },
            f,
        ))
    }

    fn persist(mut self) -> Result<(), ImageError> {
        std::fs::rename(&self.path, &self.target)
            .map_err(|e| ImageError::io("rename", &self.target, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes the layer tarball of `upper` to the file `out` (atomically).
pub fn commit(upper: &Path, out: &Path, opts: &CommitOptions) -> Result<CommitReport, ImageError> {
    commit_over(upper, &[], out, opts)
}

/// [`commit`] for an upper over `lowers` (top first), as [`commit_over_to_writer`].
pub fn commit_over(
    upper: &Path,
    lowers: &[PathBuf],
    out: &Path,
    opts: &CommitOptions,
) -> Result<CommitReport, ImageError> {
    let (tmp, f) = TempFile::beside(out)?;
    let (report, w) = commit_over_to_writer(upper, lowers, BufWriter::new(f), opts)?;
    let f = w
        .into_inner()
        .map_err(|e| ImageError::io("write", out, e.into_error()))?;
    f.sync_all().map_err(|e| ImageError::io("sync", out, e))?;
    tmp.persist()?;
    Ok(report)
}

/// Where [`append_to_image`] put the new image.
#[derive(Debug, Clone)]
pub struct AppendReport {
    /// Digest of the new image config.
    pub config_digest: Digest,
    /// Digest of the new manifest (OCI layout only).
    pub manifest_digest: Option<Digest>,
}

/// The current time as RFC 3339 (UTC), or `SOURCE_DATE_EPOCH` when set (reproducible builds).
fn now_rfc3339() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
        });
    rfc3339(secs)
}

/// Seconds since the epoch as RFC 3339 (UTC).
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The base config with one more layer.
fn extend_config(
    base: Option<Value>,
    diff_ids: &[Digest],
    new: &Digest,
    platform: &Platform,
) -> Value {
    let mut cfg = base.unwrap_or_else(|| {
        json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        })
    });
    if let Some(obj) = cfg.as_object_mut() {
        let rootfs = obj
            .entry("rootfs")
            .or_insert_with(|| json!({"type": "layers", "diff_ids": diff_ids}));
        if let Some(ids) = rootfs.get_mut("diff_ids").and_then(Value::as_array_mut) {
            ids.push(json!(new));
        } else {
            *rootfs = json!({"type": "layers", "diff_ids": [new]});
        }
        let history = obj.entry("history").or_insert_with(|| json!([]));
        if let Some(h) = history.as_array_mut() {
            h.push(json!({"created": now_rfc3339(), "created_by": "rlayerfs commit"}));
        }
    }
    cfg
}

/// Appends the layer blob `layer` (described by `report`) to the image at `image` as a new
/// image named `tag`: an unpacked image (DEST of `unpack`) gets a new layer directory and an
/// updated description; an OCI layout gets the blob, a new config, a new manifest and an
/// index.json entry annotated with `org.opencontainers.image.ref.name=tag`. For a layout,
/// the base image is chosen like `unpack` does (`from` ref and `platform`); an empty layout
/// (fresh `umoci init`) gets a one-layer image.
pub fn append_to_image(
    image: &Path,
    layer: &Path,
    report: &CommitReport,
    tag: &str,
    from: Option<&str>,
    platform: &Platform,
) -> Result<AppendReport, ImageError> {
    if tag.is_empty() {
        return Err(ImageError::Usage("--tag must not be empty".into()));
    }
    if image.join(super::description::DESCRIPTION_FILE).is_file() {
        append_unpacked(image, layer, report, tag, platform)
    } else if image.join("oci-layout").is_file() {
        append_oci(image, layer, report, tag, from, platform)
    } else {
        Err(ImageError::Usage(format!(
            "{} is neither an unpacked image (rlayerfs-image.json) nor an OCI layout (oci-layout)",
            image.display()
        )))
    }
}

fn append_unpacked(
    dest: &Path,
    layer: &Path,
    report: &CommitReport,
    tag: &str,
    platform: &Platform,
) -> Result<AppendReport, ImageError> {
    let mut desc = ImageDescription::read(dest)?;
    let dest_fd = safe_fs::open_dir_path(dest).map_err(|e| ImageError::io("open", dest, e))?;
    let layers_path = dest.join(LAYERS_DIR);
    let layers_fd = safe_fs::open_dir_at(dest_fd.as_fd(), LAYERS_DIR.as_bytes())
        .map_err(|e| ImageError::io("open", &layers_path, e))?;
    let n = desc.layers.len().to_string();
    let tmp = format!(".{n}.rlayerfs-tmp.{}", std::process::id());
    safe_fs::mkdir_at(layers_fd.as_fd(), tmp.as_bytes(), 0o700)
        .map_err(|e| ImageError::io("create", layers_path.join(&tmp), e))?;
    let cleanup = |layers_path: &Path| {
        let _ = std::fs::remove_dir_all(layers_path.join(&tmp));
    };
    let result = (|| {
        let fd = safe_fs::open_dir_at(layers_fd.as_fd(), tmp.as_bytes())
            .map_err(|e| ImageError::io("open", layers_path.join(&tmp), e))?;
        let f = File::open(layer).map_err(|e| ImageError::io("open", layer, e))?;
        let label = format!("layer {}", layer.display());
        let out = unpack_layer(
            f,
            fd,
            &label,
            DeviceMode::Auto,
            &indicatif::ProgressBar::hidden(),
        )?;
        if out.digest != report.digest {
            return Err(ImageError::DigestMismatch {
                what: label,
                expected: report.digest.to_string(),
                actual: out.digest.to_string(),
            });
        }
        safe_fs::rename_noreplace_at(
            layers_fd.as_fd(),
            tmp.as_bytes(),
            layers_fd.as_fd(),
            n.as_bytes(),
        )
        .map_err(|e| ImageError::io("rename", layers_path.join(&n), e))?;
        Ok(out)
    })();
    let out = match result {
        Ok(o) => o,
        Err(e) => {
            cleanup(&layers_path);
            return Err(e);
        }
    };
    let diff_ids: Vec<Digest> = desc.layers.iter().map(|l| l.diff_id.clone()).collect();
    let cfg = extend_config(desc.config.take(), &diff_ids, &out.diff_id, platform);
    let cfg_bytes = serde_json::to_vec(&cfg).map_err(|source| ImageError::Json {
        what: "new image config".into(),
        source,
    })?;
    let config_digest = sha256_digest(&cfg_bytes);
    desc.layers.push(LayerRecord {
        dir: format!("{LAYERS_DIR}/{n}"),
        digest: out.digest,
        size: out.size,
        diff_id: out.diff_id,
        media_type: report.compression.oci_layer_media_type().to_string(),
        compression: out.compression,
        entries: out.entries,
        whiteouts: out.whiteouts,
        opaques: out.opaques,
    });
    desc.config = Some(cfg);
    desc.config_digest = Some(config_digest.clone());
    desc.manifest_digest = None;
    desc.tag = Some(tag.to_string());
    if let Err(e) = desc.write_at(dest_fd.as_fd(), dest) {
        let _ = std::fs::remove_dir_all(layers_path.join(&n));
        return Err(e);
    }
    Ok(AppendReport {
        config_digest,
        manifest_digest: None,
    })
}

/// Writes a blob into `layout/blobs/sha256/` (temporary name, then rename).
fn put_blob(layout: &Path, bytes: &[u8]) -> Result<(Digest, u64), ImageError> {
    let d = sha256_digest(bytes);
    let target = layout.join(d.blob_path());
    if !target.exists() {
        let (tmp, mut f) = TempFile::beside(&target)?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| ImageError::io("write", &target, e))?;
        tmp.persist()?;
    }
    Ok((d, bytes.len() as u64))
}

fn append_oci(
    layout: &Path,
    layer: &Path,
    report: &CommitReport,
    tag: &str,
    from: Option<&str>,
    platform: &Platform,
) -> Result<AppendReport, ImageError> {
    let fd = safe_fs::open_dir_path(layout).map_err(|e| ImageError::io("open", layout, e))?;
    let store = Store::Dir {
        fd,
        path: layout.to_path_buf(),
    };
    let index_bytes = store.read_small("index.json", "oci-layout")?;
    let mut index: Index = parse_json(&index_bytes, "index.json")?;
    let (base_desc, base_manifest, base_config) = if index.manifests.is_empty() && from.is_none() {
        (None, None, None)
    } else {
        let (desc, _, _) = select_manifest(&store, platform, from)?;
        let mbytes = store.read_blob(&desc, "index.json")?;
        let manifest: Value = parse_json(&mbytes, &desc.digest.blob_path())?;
        let cdesc: Descriptor =
            serde_json::from_value(manifest.get("config").cloned().unwrap_or(Value::Null))
                .map_err(|source| ImageError::Json {
                    what: desc.digest.blob_path(),
                    source,
                })?;
        let cbytes = store.read_blob(&cdesc, &desc.digest.blob_path())?;
        let config: Value = parse_json(&cbytes, &cdesc.digest.blob_path())?;
        (Some(desc), Some(manifest), Some(config))
    };

    // The layer blob.
    let blob_target = layout.join(report.digest.blob_path());
    if !blob_target.exists() {
        let mut src = File::open(layer).map_err(|e| ImageError::io("open", layer, e))?;
        let (tmp, f) = TempFile::beside(&blob_target)?;
        let mut w = HashingWriter::new(BufWriter::new(f));
        io::copy(&mut src, &mut w).map_err(|e| ImageError::io("copy", &blob_target, e))?;
        let (d, _, bw) = w.finish();
        let f = bw
            .into_inner()
            .map_err(|e| ImageError::io("write", &blob_target, e.into_error()))?;
        f.sync_all()
            .map_err(|e| ImageError::io("sync", &blob_target, e))?;
        if d != report.digest {
            return Err(ImageError::DigestMismatch {
                what: layer.display().to_string(),
                expected: report.digest.to_string(),
                actual: d.to_string(),
            });
        }
        tmp.persist()?;
    }

    let base_ids: Vec<Digest> = base_config
        .as_ref()
        .and_then(|c| c.pointer("/rootfs/diff_ids"))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let cfg = extend_config(base_config, &base_ids, &report.diff_id, platform);
    let cfg_bytes = serde_json::to_vec(&cfg).map_err(|source| ImageError::Json {
        what: "new image config".into(),
        source,
    })?;
    let (config_digest, config_size) = put_blob(layout, &cfg_bytes)?;

    let docker = base_manifest
        .as_ref()
        .and_then(|m| m.get("mediaType"))
        .and_then(Value::as_str)
        == Some(MT_DOCKER_MANIFEST);
    let layer_mt = if docker {
        report
            .compression
            .docker_layer_media_type()
            .unwrap_or(report.compression.oci_layer_media_type())
    } else {
        report.compression.oci_layer_media_type()
    };
    let mut manifest = base_manifest.unwrap_or_else(
        || json!({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST, "config": {}, "layers": []}),
    );
    let config_mt = manifest
        .pointer("/config/mediaType")
        .and_then(Value::as_str)
        .unwrap_or(MT_OCI_CONFIG)
        .to_string();
    let Some(obj) = manifest.as_object_mut() else {
        return Err(ImageError::Format {
            what: "base manifest".into(),
            problem: "not a JSON object".into(),
        });
    };
    obj.insert(
        "config".into(),
        json!({"mediaType": config_mt, "digest": config_digest, "size": config_size}),
    );
    let layers = obj.entry("layers").or_insert_with(|| json!([]));
    if let Some(l) = layers.as_array_mut() {
        l.push(json!({"mediaType": layer_mt, "digest": report.digest, "size": report.size}));
    }
    let manifest_mt = obj
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or(MT_OCI_MANIFEST)
        .to_string();
    let mbytes = serde_json::to_vec(&manifest).map_err(|source| ImageError::Json {
        what: "new manifest".into(),
        source,
    })?;
    let (manifest_digest, manifest_size) = put_blob(layout, &mbytes)?;
    // Check what we wrote reads back.
    check_blob(
        &mbytes,
        &manifest_digest,
        Some(manifest_size),
        "new manifest",
    )?;

    index.manifests.retain(|d| d.ref_name() != Some(tag));
    let mut annotations = std::collections::BTreeMap::new();
    annotations.insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
    index.manifests.push(Descriptor {
        media_type: manifest_mt,
        digest: manifest_digest.clone(),
        size: manifest_size,
        platform: base_desc.and_then(|d| d.platform),
        annotations: Some(annotations),
        extra: Default::default(),
    });
    let ibytes = serde_json::to_vec(&index).map_err(|source| ImageError::Json {
        what: "index.json".into(),
        source,
    })?;
    let index_path = layout.join("index.json");
    let (tmp, mut f) = TempFile::beside(&index_path)?;
    f.write_all(&ibytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ImageError::io("write", &index_path, e))?;
    tmp.persist()?;
    Ok(AppendReport {
        config_digest,
        manifest_digest: Some(manifest_digest),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths() {
        let table: &[(&[u8], &[u8], &[u8])] = &[
            (b"path", b"a", b"9 path=a\n"),
            (b"k", b"1234", b"9 k=1234\n"),
            (b"k", b"12345", b"11 k=12345\n"),
        ];
        for (k, v, want) in table {
            let mut out = Vec::new();
            pax_record(&mut out, k, v);
            assert_eq!(&out, want);
        }
        // Around the digit-count boundary the length must still count itself.
        for n in 90..110 {
            let mut out = Vec::new();
            pax_record(&mut out, b"k", &vec![b'x'; n]);
            let (len, _) = out.split_at(out.iter().position(|b| *b == b' ').unwrap());
            let len: usize = std::str::from_utf8(len).unwrap().parse().unwrap();
            assert_eq!(len, out.len());
        }
    }

    #[test]
    fn ustar_splits() {
        assert_eq!(ustar_split(b"a/b"), Some((&b""[..], &b"a/b"[..])));
        let long = [vec![b'd'; 120], b"/".to_vec(), vec![b'f'; 50]].concat();
        assert_eq!(ustar_split(&long), Some((&long[..120], &long[121..])));
        assert_eq!(ustar_split(&[b'x'; 101]), None);
        let too_long = [vec![b'd'; 160], b"/".to_vec(), vec![b'f'; 50]].concat();
        assert_eq!(ustar_split(&too_long), None);
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
