//! Hard links a container broke out of its lower layers, found for `commit`.
//!
//! With `index=on` (kernel overlayfs and rlayerfs) a write through one name of a hard-linked
//! lower file copies it up once, into `WORKDIR/index/<origin>` linked to that name, and
//! every other lower name of the same inode then shows the new copy. The upper directory
//! holds only the names the container touched, so a layer made from it alone would show the
//! other names with their old content. Such a copy is recognised by its
//! `trusted.overlay.origin` and a link count above its names in the upper; its other names
//! are found in the lower layers (the group of the inode the origin names) and kept when
//! the merged view still shows them. [`find`] returns them, with the lower directories they
//! need, for the tar writer to add beside the upper's own entries.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::error::ImageError;
use super::layer_marks::dir_is_opaque;
use crate::format::origin;
use crate::format::whiteout::whiteout_file_name;
use crate::format::xattr::XattrNs;
use crate::sys::component::{self, Kind};

/// An entry the layer needs that the upper directory does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extra {
    /// A directory of the merged view, with the attributes of lower layer `layer`.
    Dir {
        /// Index into the lowers (top first).
        layer: usize,
    },
    /// Another name of the upper file at `upper_path` (relative, `/`-separated).
    Link {
        /// A name of the copied-up file in the upper.
        upper_path: Vec<u8>,
    },
}

/// Extra entries by parent directory (`""` for the root, else `"a/b/"`), names sorted.
#[derive(Debug, Default)]
pub struct LowerLinks {
    by_parent: BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Extra>>,
    lowers: Vec<PathBuf>,
}

impl LowerLinks {
    /// Extras whose parent is `prefix`.
    pub fn children(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Extra)> {
        self.by_parent
            .get(prefix)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// The lower layer directory `layer`.
    pub fn lower(&self, layer: usize) -> &Path {
        &self.lowers[layer]
    }

    /// Every lower layer directory, top first.
    pub fn lowers(&self) -> &[PathBuf] {
        &self.lowers
    }

    /// Whether nothing needs adding.
    pub fn is_empty(&self) -> bool {
        self.by_parent.is_empty()
    }

    fn add(&mut self, path: &[u8], extra: Extra) {
        let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (path[..=i].to_vec(), path[i + 1..].to_vec()),
            None => (Vec::new(), path.to_vec()),
        };
        self.by_parent
            .entry(parent)
            .or_default()
            .insert(name, extra);
    }
}

/// A regular upper file with more links than names in the upper.
struct Copied {
    nlink: u64,
    names: Vec<Vec<u8>>,
    origin: Option<Vec<u8>>,
}

fn io_err(op: &'static str, root: &Path, path: &[u8], e: io::Error) -> ImageError {
    ImageError::io(op, root.join(OsStr::from_bytes(path)), e)
}

/// A visitor of [`walk_tree`]: `(dir, name, path, meta)`.
type Visit<'a> =
    dyn FnMut(BorrowedFd<'_>, &[u8], &[u8], &component::Meta) -> Result<(), ImageError> + 'a;

/// Calls `f(dir, name, path, meta)` for every entry under `dir` (depth first, no symlinks
/// followed, whiteout names included).
fn walk_tree(
    root: &Path,
    dir: &OwnedFd,
    prefix: &[u8],
    f: &mut Visit<'_>,
) -> Result<(), ImageError> {
    let names =
        component::read_dir_names(dir.as_fd()).map_err(|e| io_err("read", root, prefix, e))?;
    for name in names {
        let mut path = prefix.to_vec();
        path.extend_from_slice(&name);
        let m =
            component::stat_at(dir.as_fd(), &name).map_err(|e| io_err("stat", root, &path, e))?;
        f(dir.as_fd(), &name, &path, &m)?;
        if m.kind == Kind::Dir {
            let sub = component::open_dir_at(dir.as_fd(), &name)
                .map_err(|e| io_err("open", root, &path, e))?;
            path.push(b'/');
            walk_tree(root, &sub, &path, f)?;
        }
    }
    Ok(())
}

/// Upper files whose link count exceeds their names in the upper (linked elsewhere: the
/// workdir's index).
fn copied_hard_links(upper: &Path) -> Result<Vec<Copied>, ImageError> {
    let root = component::open_dir_path(upper).map_err(|e| ImageError::io("open", upper, e))?;
    let mut files: HashMap<(u64, u64), Copied> = HashMap::new();
    walk_tree(upper, &root, b"", &mut |dir, name, path, m| {
        if m.kind != Kind::File || m.nlink < 2 {
            return Ok(());
        }
        let c = files.entry((m.dev, m.ino)).or_insert_with(|| Copied {
            nlink: m.nlink,
            names: Vec::new(),
            origin: None,
        });
        if c.names.is_empty() {
            let f =
                component::open_file_at(dir, name).map_err(|e| io_err("open", upper, path, e))?;
            c.origin = component::get_xattr_fd(f.as_fd(), XattrNs::Trusted.origin().as_bytes())
                .map_err(|e| io_err("read xattrs", upper, path, e))?;
        }
        c.names.push(path.to_vec());
        Ok(())
    })?;
    let mut out: Vec<Copied> = files
        .into_values()
        .filter(|c| c.origin.is_some() && (c.names.len() as u64) < c.nlink)
        .collect();
    for c in &mut out {
        c.names.sort();
    }
    out.sort_by(|a, b| a.names.cmp(&b.names));
    Ok(out)
}

/// Hard-link groups of one lower layer: inode → names (files with `nlink > 1`).
fn lower_groups(layer: &Path) -> Result<Vec<Vec<Vec<u8>>>, ImageError> {
    let root = component::open_dir_path(layer).map_err(|e| ImageError::io("open", layer, e))?;
    let mut groups: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    walk_tree(layer, &root, b"", &mut |_, _, path, m| {
        if m.kind == Kind::File && m.nlink > 1 {
            groups.entry(m.ino).or_default().push(path.to_vec());
        }
        Ok(())
    })?;
    let mut v: Vec<Vec<Vec<u8>>> = groups.into_values().collect();
    for g in &mut v {
        g.sort();
    }
    Ok(v)
}

/// Opens the parent directory of `path` below `root` (no symlink followed) and returns it
/// with the last component.
pub fn open_parent<'p>(root: &OwnedFd, path: &'p [u8]) -> io::Result<(OwnedFd, &'p [u8])> {
    let mut dir = root.try_clone()?;
    let mut comps: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let last = comps
        .pop()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    for c in comps {
        dir = component::open_dir_at(dir.as_fd(), c)?;
    }
    Ok((dir, last))
}

/// The origin record of the lower object at `path` in `layer`.
fn origin_of(layer_root: &OwnedFd, uuid: &[u8; 16], path: &[u8]) -> Option<Vec<u8>> {
    let (dir, name) = open_parent(layer_root, path).ok()?;
    let f = component::open_file_at(dir.as_fd(), name).ok()?;
    let h = crate::sys::name_to_handle(f.as_fd()).ok()?;
    origin::encode(uuid, &h)
}

/// What a layer holds at one name, for visibility.
enum Held {
    Nothing,
    /// A whiteout or a non-directory: it hides the name below.
    Hides,
    /// A directory (open), and whether it is opaque.
    Dir(OwnedFd, bool),
}

fn held(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Held> {
    let wh = whiteout_file_name(OsStr::from_bytes(name));
    match component::stat_at(dir, wh.as_bytes()) {
        Ok(_) => return Ok(Held::Hides),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let m = match component::stat_at(dir, name) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Held::Nothing),
        Err(e) => return Err(e),
    };
    if m.kind != Kind::Dir {
        // A whiteout object or any other non-directory hides the name alike.
        return Ok(Held::Hides);
    }
    let d = component::open_dir_at(dir, name)?;
    let opaque = dir_is_opaque(d.as_fd())?;
    Ok(Held::Dir(d, opaque))
}

/// Whether the object at `path` of the layer below `above` (upper first, then the lowers
/// above it) still shows in the merged view: no layer above holds a whiteout or a
/// non-directory on its way, the name itself, or an opaque directory above it.
fn visible(above: &[OwnedFd], path: &[u8]) -> io::Result<bool> {
    let comps: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    for root in above {
        let mut dir = root.try_clone()?;
        for (i, c) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            match held(dir.as_fd(), c)? {
                Held::Nothing => break,
                Held::Hides => return Ok(false),
                Held::Dir(_, opaque) if last || opaque => return Ok(false),
                Held::Dir(d, _) => dir = d,
            }
        }
    }
    Ok(true)
}

/// The other lower names of copied-up hard links in `upper`, and the directories they need.
/// `lowers` top first; empty when commit was given none, which is refused if the upper
/// holds such a copy (the layer would show those names with their old content).
pub fn find(upper: &Path, lowers: &[PathBuf]) -> Result<LowerLinks, ImageError> {
    let copied = copied_hard_links(upper)?;
    let mut out = LowerLinks {
        lowers: lowers.to_vec(),
        ..LowerLinks::default()
    };
    if copied.is_empty() {
        return Ok(out);
    }
    if lowers.is_empty() {
        let first = String::from_utf8_lossy(&copied[0].names[0]).into_owned();
        return Err(ImageError::Unsupported {
            path: upper.join(first).display().to_string(),
            what: "changed copy of a hard-linked lower file (in the workdir's index): its other \
                   lower names show the new content only with the lower layers; give them \
                   with --lower (or --image of the unpacked image)"
                .into(),
        });
    }
    let upper_root =
        component::open_dir_path(upper).map_err(|e| ImageError::io("open", upper, e))?;
    let mut roots = Vec::with_capacity(lowers.len());
    for l in lowers {
        roots.push(component::open_dir_path(l).map_err(|e| ImageError::io("open", l, e))?);
    }
    let uuids: Vec<[u8; 16]> = roots
        .iter()
        .map(|r| crate::sys::fs_uuid(r.as_fd()))
        .collect();
    let mut groups: Vec<Option<Vec<Vec<Vec<u8>>>>> = vec![None; lowers.len()];
    for c in &copied {
        let Some(want) = c.origin.as_deref() else {
            continue;
        };
        let Some((uuid, _)) = origin::decode(want) else {
            continue;
        };
        'layers: for (li, layer) in lowers.iter().enumerate() {
            if uuids[li] != uuid {
                continue;
            }
            if groups[li].is_none() {
                groups[li] = Some(lower_groups(layer)?);
            }
            for g in groups[li].iter().flatten() {
                if origin_of(&roots[li], &uuid, &g[0]).as_deref() != Some(want) {
                    continue;
                }
                let mut above = vec![upper_root
                    .try_clone()
                    .map_err(|e| ImageError::io("open", upper, e))?];
                for r in &roots[..li] {
                    above.push(
                        r.try_clone()
                            .map_err(|e| ImageError::io("open", layer, e))?,
                    );
                }
                for name in g {
                    if c.names.contains(name) {
                        continue;
                    }
                    if !visible(&above, name).map_err(|e| io_err("look up", layer, name, e))? {
                        continue;
                    }
                    add_with_parents(&mut out, &above[0], li, name, &c.names[0])
                        .map_err(|e| io_err("look up", upper, name, e))?;
                }
                break 'layers;
            }
        }
    }
    Ok(out)
}

/// Records `name` as a link to `upper_path`, and each of its parent directories the upper
/// lacks as a directory of lower layer `layer`.
fn add_with_parents(
    out: &mut LowerLinks,
    upper_root: &OwnedFd,
    layer: usize,
    name: &[u8],
    upper_path: &[u8],
) -> io::Result<()> {
    let mut dir = Some(upper_root.try_clone()?);
    let mut prefix = Vec::new();
    let comps: Vec<&[u8]> = name
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        prefix.extend_from_slice(c);
        dir = match dir {
            Some(d) => match component::open_dir_at(d.as_fd(), c) {
                Ok(sub) => Some(sub),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        if dir.is_none() {
            out.add(&prefix, Extra::Dir { layer });
        }
        prefix.push(b'/');
    }
    out.add(
        name,
        Extra::Link {
            upper_path: upper_path.to_vec(),
        },
    );
    Ok(())
}
