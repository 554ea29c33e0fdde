//! File handles that outlive the kernel's caches and remounts (`nfs_export=on`).
//!
//! The kernel's FUSE client encodes a handle itself, as (node id, generation), never asking
//! the daemon. To open one whose inode it no longer holds (after `drop_caches`, after a
//! remount) it sends `LOOKUP(node id, ".")`, compares the generation of the reply with the
//! handle's (ESTALE when they differ), and reconnects a directory to the root by
//! `LOOKUP(node id, "..")` and a listing of the parent. This module answers those two.
//!
//! A node id is the inode number the mount shows (see `InoMap`): the layer device's index
//! and the real inode number of the object that gives the merged object its identity
//! (the lower origin of a copy-up, the top lower directory of a merged directory, else the
//! object itself). Its generation is a hash of that object's own file handle on its layer,
//! which carries the object's `i_generation`: a node id reused by a new object after a
//! deletion gets another generation, so an old handle of it is stale, never the new file.
//!
//! Decoding finds the object from its inode number alone (the kernel sends no generation
//! with the lookup): per layer, a map from inode number to the directory holding it (and,
//! for a directory, its name), built by one walk of the layer the first time a handle
//! needs it. The upper's map also records the node ids that origin records give, so that a
//! copy-up found under a new name (a renamed lower file, a renamed merged directory) is
//! found too. Lower maps never go out of date (lower layers do not change); the upper's is
//! rebuilt when a decode misses and the namespace changed since it was built. A map entry
//! is only a hint: the location it gives is looked up through the union from the root, as
//! any lookup, and accepted only if that leads to the node id asked for. A whited-out
//! lower file, a name replaced since, a stale entry all end in ESTALE.
//!
//! Not decodable (ESTALE once the kernel forgot them): synthetic inode numbers (objects
//! whose real number does not fit or collides); objects below a directory that a lower
//! layer itself renamed (a redirect written when that layer was an upper: the object's
//! path differs from layer to layer). The cost of the option: one `name_to_handle_at` per
//! new node (the generation), an entry per generation handed out, and, once handles are
//! decoded, the walks of the layers and the memory of their maps.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rustix::fs::{AtFlags, FileType};

use crate::error::{Error, OsContext, Result, Where};
use crate::sys;
use crate::union::dirfd::LayerKey;
use crate::union::inode::ROOT_INO;
use crate::union::layer::LowerIdx;
use crate::union::Ino;
use crate::union::{Attr, UnionFs};

/// The FUSE generation of an object with file handle `h`: a 32-bit FNV-1a hash of the
/// handle type and bytes. Stable across remounts (no random seed): the kernel compares it
/// with the generation inside handles given out by earlier mounts.
pub fn handle_generation(h: &sys::FileHandle) -> u32 {
    let mut x: u32 = 0x811c_9dc5;
    for b in h.handle_type.to_le_bytes().iter().chain(&h.bytes) {
        x ^= u32::from(*b);
        x = x.wrapping_mul(0x0100_0193);
    }
    x
}

/// The generation of entry `name` of directory `dir`; 0 when its filesystem encodes no
/// handle (then the node's handles are as weak as the kernel's for such a filesystem).
pub fn generation_at(dir: BorrowedFd<'_>, name: &OsStr) -> u32 {
    sys::name_to_handle_at(dir, name).map_or(0, |h| handle_generation(&h))
}

/// Where a layer's objects are, by inode number.
#[derive(Debug, Default)]
struct LayerMap {
    /// Inode number of the layer root.
    root: u64,
    /// Every entry's inode number → the inode number of a directory holding it.
    parent: HashMap<u64, u64>,
    /// Directory inode number → (parent directory's inode number, name).
    dirs: HashMap<u64, (u64, Box<OsStr>)>,
    /// Upper only: the node id an entry's origin record gives → the entry's inode number.
    origins: HashMap<u64, u64>,
    /// The namespace change count it was built at (upper only).
    built_at: u64,
}

/// Directories from a layer root down, as (inode number, name).
type DirChain<'a> = Vec<(u64, &'a OsStr)>;

impl LayerMap {
    /// The directories from the layer root down to directory `d` (excluded the root), as
    /// (inode number, name); `None` if `d` is not in the map.
    fn dir_chain(&self, mut d: u64) -> Option<DirChain<'_>> {
        let mut chain = Vec::new();
        while d != self.root {
            let (p, name) = self.dirs.get(&d)?;
            chain.push((d, &**name));
            d = *p;
            if chain.len() > self.dirs.len() {
                return None; // a cycle: the map is damaged, never loop
            }
        }
        chain.reverse();
        Some(chain)
    }

    /// Where object `x` is: the chain of its directory and, for a directory, its name
    /// (a non-directory's names are read from its directory when needed).
    fn locate(&self, x: u64) -> Option<(DirChain<'_>, Option<&OsStr>)> {
        if let Some((p, name)) = self.dirs.get(&x) {
            return Some((self.dir_chain(*p)?, Some(&**name)));
        }
        Some((self.dir_chain(*self.parent.get(&x)?)?, None))
    }
}

/// The maps of one mount, built when first needed.
#[derive(Debug)]
pub struct ExportMaps {
    upper: Mutex<Option<Arc<LayerMap>>>,
    lowers: Vec<Mutex<Option<Arc<LayerMap>>>>,
}

impl ExportMaps {
    pub fn new(lowers: usize) -> Self {
        ExportMaps {
            upper: Mutex::new(None),
            lowers: (0..lowers).map(|_| Mutex::new(None)).collect(),
        }
    }
}

/// Where to look for an object: a directory path through the union and the names to try
/// in it (a directory's own name, or every name an object has in its layer directory).
struct Candidate {
    dir: PathBuf,
    names: Vec<OsString>,
}

/// Walks the tree under `root` depth first, holding one fd per level, and calls `f` with
/// each entry and the directory holding it (never following a symlink).
fn walk(
    root: BorrowedFd<'_>,
    mut f: impl FnMut(BorrowedFd<'_>, u64, &sys::RawEntry, bool),
) -> rustix::io::Result<u64> {
    struct Level {
        fd: OwnedFd,
        ino: u64,
        subdirs: Vec<OsString>,
    }
    let open_level = |fd: OwnedFd, f: &mut dyn FnMut(BorrowedFd<'_>, u64, &sys::RawEntry, bool)| {
        let ino = rustix::fs::fstat(&fd)?.st_ino;
        let mut subdirs = Vec::new();
        for e in sys::read_dir(sys::reopen_dir_for_read(fd.as_fd())?)? {
            let is_dir = match e.file_type {
                FileType::Directory => true,
                FileType::Unknown => rustix::fs::statat(&fd, &e.name, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR),
                _ => false,
            };
            f(fd.as_fd(), ino, &e, is_dir);
            if is_dir {
                subdirs.push(e.name);
            }
        }
        Ok::<_, rustix::io::Errno>(Level { fd, ino, subdirs })
    };
    let top = sys::open_dir_path(root, Path::new(""))?;
    let first = open_level(top, &mut f)?;
    let root_ino = first.ino;
    let mut stack = vec![first];
    while let Some(level) = stack.last_mut() {
        let Some(name) = level.subdirs.pop() else {
            stack.pop();
            continue;
        };
        // Gone or replaced since listed: skipped, the map is a hint.
        let Ok(fd) = sys::open_dir_path(level.fd.as_fd(), Path::new(&name)) else {
            continue;
        };
        if let Ok(next) = open_level(fd, &mut f) {
            stack.push(next);
        }
    }
    Ok(root_ino)
}

impl UnionFs {
    /// The generation of the object at `path` in lower layer `layer` (see
    /// [`handle_generation`]).
    pub(crate) fn lower_generation(&self, layer: LowerIdx, path: &Path) -> u32 {
        let Ok((pfd, name, _)) = self.parent_in(LayerKey::Lower(layer), path) else {
            return 0;
        };
        match name {
            Some(name) => generation_at(pfd.as_fd(), name),
            None => sys::name_to_handle(pfd.as_fd()).map_or(0, |h| handle_generation(&h)),
        }
    }

    /// The kernel's `LOOKUP(ino, ".")` (`dotdot`: `LOOKUP(ino, "..")`): the node itself or
    /// its parent, with one more lookup counted. A node this daemon does not know is
    /// decoded from its number when the mount exports handles.
    pub fn lookup_dot(&self, Ino(ino): Ino, dotdot: bool) -> Result<Attr> {
        let target = {
            let mut nodes = self.nodes.write();
            match nodes.get(ino) {
                Ok(n) => {
                    if dotdot && !n.is_dir {
                        return Err(Error::NotDir);
                    }
                    let t = if dotdot { n.parent } else { ino };
                    nodes.add_ref(t)?;
                    Some(t)
                }
                Err(_) => None,
            }
        };
        match target {
            Some(t) => match self.getattr(Ino(t)) {
                Ok(a) => Ok(Attr {
                    generation: self.nodes.read().generation(t),
                    ..a
                }),
                Err(e) => {
                    self.forget(Ino(t), 1);
                    Err(e)
                }
            },
            None if !dotdot && self.exports() => self.decode(ino),
            None => Err(Error::Stale),
        }
    }

    /// Finds the merged object with node id `n` (unknown to the node table) and pins it.
    fn decode(&self, n: u64) -> Result<Attr> {
        let (Some(maps), Some((dev, ino))) = (self.export.as_ref(), self.unmap_ino(n)) else {
            return Err(Error::Stale);
        };
        for fresh in [false, true] {
            if fresh && !self.upper_map_outdated(maps) {
                break;
            }
            let upper = self.upper_map(maps, fresh)?;
            if let Some(m) = upper.as_deref() {
                // A copy-up (moved or not) carrying the origin `n`, then an upper object.
                let upper_dev = self.stack.upper.as_ref().map(|u| u.dev);
                let own = (upper_dev == Some(dev)).then_some(ino);
                for x in m.origins.get(&n).copied().into_iter().chain(own) {
                    if let Some(a) = self.upper_candidate(m, x).and_then(|c| self.reach(&c, n)) {
                        return Ok(a);
                    }
                }
            }
            // Lower layers top first, each map built only when the ones above missed.
            for l in 0..self.stack.lowers.len() as LowerIdx {
                if self.stack.lower(l).dev != dev {
                    continue;
                }
                let c = self.lower_candidate(maps, upper.as_deref(), l, ino)?;
                if let Some(a) = c.and_then(|c| self.reach(&c, n)) {
                    return Ok(a);
                }
            }
        }
        tracing::debug!(ino = n, "file handle: no such object");
        Err(Error::Stale)
    }

    /// Where inode `ino` of lower layer `l` is in the union.
    fn lower_candidate(
        &self,
        maps: &ExportMaps,
        upper: Option<&LayerMap>,
        l: LowerIdx,
        ino: u64,
    ) -> Result<Option<Candidate>> {
        let m = self.lower_map(maps, l)?;
        let Some((chain, name)) = m.locate(ino) else {
            return Ok(None);
        };
        let path: PathBuf = chain.iter().map(|(_, n)| *n).collect();
        let names = match name {
            Some(nm) => vec![nm.to_os_string()],
            None => self
                .lower_dir_fd(l, &path)
                .map(|fd| names_of(fd.as_fd(), ino))
                .unwrap_or_default(),
        };
        // The union path: the layer's, unless a directory on the way was copied up and
        // moved. Its upper copy carries the origin of the merged directory's top layer,
        // the first layer from the top holding a directory at that path.
        let mut dir = path;
        if let Some(um) = upper {
            let comps: Vec<&OsStr> = chain.iter().map(|(_, n)| *n).collect();
            for i in (0..comps.len()).rev() {
                let prefix: PathBuf = comps[..=i].iter().collect();
                let top = (0..=l).find_map(|k| {
                    let st = self.stat_lower(k, &prefix).ok()?;
                    (st.st_mode & libc::S_IFMT == libc::S_IFDIR).then(|| self.map_ino(&st))
                });
                let moved = top
                    .and_then(|t| um.origins.get(&t))
                    .and_then(|u| um.dir_chain(*u));
                if let Some(up) = moved {
                    let rest = comps[i + 1..].iter().copied();
                    dir = up.iter().map(|(_, n)| *n).chain(rest).collect();
                    break;
                }
            }
        }
        Ok(Some(Candidate { dir, names }))
    }

    /// The candidate for upper object `x` of map `m`.
    fn upper_candidate(&self, m: &LayerMap, x: u64) -> Option<Candidate> {
        let (chain, name) = m.locate(x)?;
        let dir: PathBuf = chain.iter().map(|(_, n)| *n).collect();
        let names = match name {
            Some(nm) => vec![nm.to_os_string()],
            None => names_of(self.upper_dir(&dir).ok()?.as_fd(), x),
        };
        Some(Candidate { dir, names })
    }

    /// Looks candidate `c` up through the union from the root; the node it leads to, if
    /// that is `n`, stays pinned (the kernel's lookup), everything else is released.
    fn reach(&self, c: &Candidate, n: u64) -> Option<Attr> {
        let mut pinned = Vec::new();
        let mut cur = ROOT_INO;
        let mut found = None;
        let reached =
            c.dir
                .components()
                .all(|comp| match self.lookup(Ino(cur), comp.as_os_str()) {
                    Ok(a) => {
                        pinned.push(a.ino);
                        cur = a.ino.0;
                        a.is_dir()
                    }
                    Err(_) => false,
                });
        if reached {
            for name in &c.names {
                match self.lookup(Ino(cur), name) {
                    Ok(a) if a.ino == Ino(n) => {
                        found = Some(a);
                        break;
                    }
                    Ok(a) => self.forget(a.ino, 1),
                    Err(_) => {}
                }
            }
        }
        // The found node keeps its parents (they are its parent chain); their own pins go.
        for ino in pinned.into_iter().rev() {
            self.forget(ino, 1);
        }
        found
    }

    fn upper_map_outdated(&self, maps: &ExportMaps) -> bool {
        maps.upper
            .lock()
            .as_ref()
            .is_none_or(|m| m.built_at != self.ns_change_count())
    }

    /// The upper's map, built if missing or (`fresh`) out of date. `None` without upper.
    fn upper_map(&self, maps: &ExportMaps, fresh: bool) -> Result<Option<Arc<LayerMap>>> {
        let Ok(root) = self.upper_root() else {
            return Ok(None);
        };
        let mut slot = maps.upper.lock();
        if let Some(m) = slot.as_ref() {
            if !fresh || m.built_at == self.ns_change_count() {
                return Ok(Some(m.clone()));
            }
        }
        // No namespace change while walking: the count then says exactly what it saw.
        let _ns = self.ns_lock.lock();
        let mut m = self.build_map(root, true)?;
        m.built_at = self.ns_change_count();
        let m = Arc::new(m);
        *slot = Some(m.clone());
        Ok(Some(m))
    }

    /// The map of lower layer `l`, built once.
    fn lower_map(&self, maps: &ExportMaps, l: LowerIdx) -> Result<Arc<LayerMap>> {
        let mut slot = maps.lowers[l as usize].lock();
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let m = Arc::new(self.build_map(self.lower_root(l), false)?);
        *slot = Some(m.clone());
        Ok(m)
    }

    /// Walks a layer into a map; `origins`: record what the origin records name.
    fn build_map(&self, root: BorrowedFd<'_>, origins: bool) -> Result<LayerMap> {
        let at = if origins {
            Where::Upper
        } else {
            Where::Unknown
        };
        let origin_xattr = self.identity_xattrs().0;
        let mut m = LayerMap::default();
        let started = std::time::Instant::now();
        m.root = walk(root, |dir, dir_ino, e, is_dir| {
            m.parent.entry(e.ino).or_insert(dir_ino);
            if is_dir {
                m.dirs
                    .insert(e.ino, (dir_ino, Box::from(e.name.as_os_str())));
            }
            if origins {
                if let Some((uuid, h)) = sys::get_xattr_at(dir, &e.name, origin_xattr)
                    .ok()
                    .flatten()
                    .as_deref()
                    .and_then(crate::format::origin::decode)
                {
                    if let Some(n) = self.decode_origin_ino(&uuid, &h) {
                        m.origins.insert(n, e.ino);
                    }
                }
            }
        })
        .at("walk layer for file handles", at)?;
        tracing::debug!(
            entries = m.parent.len(),
            ms = started.elapsed().as_millis() as u64,
            "file handles: layer map built"
        );
        Ok(m)
    }
}

/// The names under which directory `dir` holds inode `ino`.
fn names_of(dir: BorrowedFd<'_>, ino: u64) -> Vec<OsString> {
    let Ok(rd) = sys::reopen_dir_for_read(dir) else {
        return Vec::new();
    };
    sys::read_dir(rd)
        .map(|l| {
            l.into_iter()
                .filter(|e| e.ino == ino)
                .map(|e| e.name)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_stable_and_tell_handles_apart() {
        let h = |t: i32, b: &[u8]| sys::FileHandle {
            handle_type: t,
            bytes: b.to_vec(),
        };
        // Fixed value: a generation handed out by one mount must hold for the next.
        assert_eq!(
            handle_generation(&h(1, &[1, 0, 0, 0, 7, 0, 0, 0])),
            0x7b8c_9472
        ); // FNV-1a of 01000000 01000000 07000000
        let a = handle_generation(&h(1, &[1, 0, 0, 0, 7, 0, 0, 0]));
        let b = handle_generation(&h(1, &[1, 0, 0, 0, 8, 0, 0, 0]));
        let c = handle_generation(&h(2, &[1, 0, 0, 0, 7, 0, 0, 0]));
        assert!(a != b && a != c && b != c);
    }

    #[test]
    fn walk_maps_every_entry_to_its_directory() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::fs::write(t.path().join("a/b/f"), b"x").unwrap();
        std::fs::hard_link(t.path().join("a/b/f"), t.path().join("a/g")).unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("a/s")).unwrap();
        let root = rustix::fs::open(
            t.path(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let mut m = LayerMap::default();
        m.root = walk(root.as_fd(), |_, d, e, is_dir| {
            m.parent.entry(e.ino).or_insert(d);
            if is_dir {
                m.dirs.insert(e.ino, (d, Box::from(e.name.as_os_str())));
            }
        })
        .unwrap();
        let ino = |p: &str| std::fs::symlink_metadata(t.path().join(p)).unwrap();
        use std::os::unix::fs::MetadataExt;
        let (chain, name) = m.locate(ino("a/b").ino()).unwrap();
        assert_eq!(name, Some(OsStr::new("b")));
        assert_eq!(
            chain.iter().map(|(_, n)| *n).collect::<PathBuf>(),
            Path::new("a")
        );
        let (chain, name) = m.locate(ino("a/b/f").ino()).unwrap();
        assert_eq!(name, None);
        let dir: PathBuf = chain.iter().map(|(_, n)| *n).collect();
        assert!(dir == Path::new("a/b") || dir == Path::new("a"), "{dir:?}");
        // The symlink is an entry, never followed.
        assert!(m.locate(ino("a/s").ino()).is_some());
        let root_dir = std::fs::File::open(t.path()).unwrap();
        let names = names_of(root_dir.as_fd(), ino("a").ino());
        assert_eq!(names, vec![OsString::from("a")]);
    }
}
