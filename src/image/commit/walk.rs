//! The walk of an upper directory for `rlayerfs commit`: each object becomes tar entries
//! (whiteouts and opaque markers in `.wh.` form, exported xattrs, hard links, metacopy data
//! read from the lower layers, lower names of index-linked files).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::format::override_stat::{OverrideKind, OverrideStat, CONTAINERS_OVERRIDE};
use crate::format::whiteout::{self, OPAQUE_MARKER, WH_META_PREFIX};
use crate::format::xattr::{self, LITERAL_XATTRS};
use crate::image::error::ImageError;
use crate::image::layer_marks::{dir_is_opaque, has_xattr, is_whiteout_object};
use crate::image::lower_links::{self, Extra, LowerLinks};
use crate::sys::component::{self, Kind, Meta};

use super::tar_writer::{Hdr, TarOut};

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

pub(super) struct Committer<'a, W: Write> {
    pub(super) out: TarOut<W>,
    pub(super) links: HashMap<(u64, u64), Vec<u8>>,
    pub(super) upper: &'a Path,
    pub(super) bar: indicatif::ProgressBar,
    pub(super) extras: LowerLinks,
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
        let root = component::open_dir_path(layer)?;
        let (dir, name) = match lower_links::open_parent(&root, &cur) {
            Ok(v) => v,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => continue,
            Err(e) => return Err(e),
        };
        let m = match component::stat_at(dir.as_fd(), name) {
            Ok(m) => m,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let wh = whiteout::whiteout_file_name(OsStr::from_bytes(name)).into_vec();
                if component::stat_at(dir.as_fd(), &wh).is_ok() {
                    return Ok(None);
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if m.kind != Kind::File {
            return Ok(None);
        }
        let f = component::open_file_at(dir.as_fd(), name)?;
        if !has_xattr(f.as_fd(), &xattr::METACOPY_XATTRS, None)? {
            return Ok(Some(f));
        }
        let next = xattr::REDIRECT_XATTRS.iter().find_map(|n| {
            component::get_xattr_fd(f.as_fd(), n.as_bytes())
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

    pub(super) fn marker(&mut self, path: &[u8]) -> Result<(), ImageError> {
        self.out
            .entry(path, &Hdr::marker(), None, &[], None)
            .map_err(|e| self.io("write", path, e))
    }

    /// Is `dir` opaque in any encoding?
    pub(super) fn is_opaque(&self, dir: BorrowedFd<'_>, path: &[u8]) -> Result<bool, ImageError> {
        dir_is_opaque(dir).map_err(|e| self.io("read xattrs", path, e))
    }

    /// Writes the entries below `prefix`: the upper directory `dir`'s (none for a
    /// directory only the lowers hold) and the extras the merged view needs there.
    pub(super) fn walk(&mut self, dir: Option<&OwnedFd>, prefix: &[u8]) -> Result<(), ImageError> {
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
    pub(super) fn emit_root(&mut self, root: &OwnedFd) -> Result<(), ImageError> {
        let m = component::stat_fd(root.as_fd()).map_err(|e| self.io("stat", b"", e))?;
        let xattrs =
            component::list_xattrs_fd(root.as_fd()).map_err(|e| self.io("read xattrs", b"", e))?;
        let mut h = Hdr::of(tar::EntryType::Directory, &m);
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
            let r = component::open_dir_path(&root)?;
            lower_links::open_parent(&r, &rel).map(|(d, n)| (d, n.to_vec()))
        })()
        .map_err(|e| ImageError::io("open", &shown, e))?;
        let m = component::stat_at(parent.as_fd(), &name)
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
        let names = component::read_dir_names(dir.as_fd())
            .map_err(|e| self.io("read directory", prefix, e))?;
        for name in names {
            let mut path = prefix.to_vec();
            path.extend_from_slice(&name);
            if whiteout::is_reserved_name(OsStr::from_bytes(&name)) {
                // A `.wh.*` object a user made through the mount (an inner overlay's
                // whiteout, say): an OCI layer has no way to hold that name as data.
                for x in LITERAL_XATTRS {
                    if component::has_xattr_at(dir.as_fd(), &name, x.as_bytes())
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
            let m =
                component::stat_at(dir.as_fd(), &name).map_err(|e| self.io("stat", &path, e))?;
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
                    if component::has_xattr_at(dir.as_fd(), &name, x.as_bytes())
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
        let mut h = Hdr::of(tar::EntryType::Regular, &m);
        let (xattrs, file, dirfd) = match m.kind {
            Kind::Dir => {
                let d = component::open_dir_at(dir, name).map_err(|e| self.io("open", path, e))?;
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
                let x = component::list_xattrs_fd(d.as_fd())
                    .map_err(|e| self.io("read xattrs", path, e))?;
                (x, None, Some(d))
            }
            Kind::File => {
                let f = component::open_file_at(dir, name).map_err(|e| self.io("open", path, e))?;
                let x = component::list_xattrs_fd(f.as_fd())
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
                let x = component::list_xattrs_at_nofollow(dir, name)
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
                    component::readlink_at(dir, name).map_err(|e| self.io("readlink", path, e))?,
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

impl Hdr {
    /// The header of an object stat'ed as `m`, as type `kind` (the caller sets the size
    /// of what it writes, and a type it learns later).
    fn of(kind: tar::EntryType, m: &Meta) -> Hdr {
        Hdr {
            kind,
            perm: m.perm,
            uid: u64::from(m.uid),
            gid: u64::from(m.gid),
            mtime: u64::try_from(m.mtime).unwrap_or(0),
            size: 0,
            major: m.major,
            minor: m.minor,
        }
    }
}
