//! Resolving a name through the layers.
//!
//! The upper layer changes under us (only through this daemon), so it is asked on every
//! lookup: one `fstatat`, plus one for a `.wh.NAME` file when the name is absent. The
//! lower layers never change, so each lower directory is read once into a
//! [`LowerDir`] index (name → which layers hold it, whiteouts applied) kept in a bounded
//! LRU cache: after the first lookup in a directory, hits and misses cost a hash lookup
//! whatever the number of layers.
//!
//! Rules (kernel overlayfs): a non-directory in a higher layer hides everything below;
//! directories merge until one is opaque; a whiteout hides the name in every layer below
//! its own; an object in a layer is never hidden by a whiteout of that same layer.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::hash::BuildHasher;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use hashbrown::HashTable;
use lru::LruCache;
use parking_lot::Mutex;
use rustix::fs::{AtFlags, FileType, Stat};
use rustix::io::Errno;

use crate::error::{Error, OsContext, Result, Where};
use crate::format::xattr::{self, OpaqueXattr, XattrNs};
use crate::format::{origin, whiteout};
use crate::sys;
use crate::union::inode::{Lower, LowerRef, Node, ROOT_INO};
use crate::union::layer::LowerIdx;
use crate::union::redirect::{self, Redirect};
use crate::union::Ino;
use crate::union::{check_name, Attr, UnionFs};

/// How many names the lower index cache may hold in all (about 40 bytes each, plus the
/// name).
const MAX_INDEX_ENTRIES: usize = 256 * 1024;

/// What the lower layers hold under one name of a directory.
#[derive(Debug)]
pub enum LowerChild {
    /// A whiteout hides the name. `by_xattr`: the topmost one is an xattr whiteout, which
    /// kernel overlayfs counts as an entry when deciding whether a directory is empty.
    Hidden { by_xattr: bool },
    /// A non-directory, from `layer`. `meta`: whether a regular file is a metacopy file,
    /// once looked at (see `UnionFs::lower_is_metacopy`).
    NonDir {
        layer: LowerIdx,
        ino: u64,
        kind: FileType,
        meta: std::sync::atomic::AtomicU8,
    },
    /// A directory (boxed: most entries are files, and this keeps every entry small).
    Dir(Box<LowerSubdir>),
}

/// A directory entry of the lower layers.
#[derive(Debug)]
pub struct LowerSubdir {
    /// The layers holding it, top first (merging stops at a non-directory or whiteout).
    pub candidates: Vec<LowerIdx>,
    pub ino: u64,
    /// The merged directory (candidates cut after the first opaque one, redirects
    /// followed), once known.
    merged: OnceLock<Arc<LowerRef>>,
}

/// One name of a [`LowerDir`]: where its bytes are in the name buffer, and what it is.
#[derive(Debug)]
struct LowerSlot {
    name_at: u32,
    name_len: u16,
    child: LowerChild,
}

/// The merged lower listing of one directory. Kept compact, since the cache holds up to
/// [`MAX_INDEX_ENTRIES`] names: the names back to back in one buffer, the entries in one
/// slice, and a hash table of entry positions (hashed and compared through the buffer).
#[derive(Debug, Default)]
pub struct LowerDir {
    names: Box<[u8]>,
    slots: Box<[LowerSlot]>,
    index: HashTable<u32>,
    hasher: std::hash::RandomState,
}

impl LowerDir {
    fn from_children(children: Vec<(OsString, LowerChild)>) -> LowerDir {
        let mut names = Vec::with_capacity(children.iter().map(|(n, _)| n.len()).sum());
        let mut slots = Vec::with_capacity(children.len());
        for (name, child) in children {
            slots.push(LowerSlot {
                name_at: names.len() as u32,
                name_len: name.len() as u16,
                child,
            });
            names.extend_from_slice(name.as_bytes());
        }
        let mut dir = LowerDir {
            names: names.into_boxed_slice(),
            slots: slots.into_boxed_slice(),
            index: HashTable::with_capacity(0),
            hasher: Default::default(),
        };
        let mut index = HashTable::with_capacity(dir.slots.len());
        for i in 0..dir.slots.len() {
            let h = dir.hasher.hash_one(dir.slot_name(i));
            index.insert_unique(h, i as u32, |&j| {
                dir.hasher.hash_one(dir.slot_name(j as usize))
            });
        }
        dir.index = index;
        dir
    }

    fn slot_name(&self, i: usize) -> &[u8] {
        let s = &self.slots[i];
        let at = s.name_at as usize;
        &self.names[at..at + s.name_len as usize]
    }

    /// What the lower layers hold under `name`.
    pub fn get(&self, name: &OsStr) -> Option<&LowerChild> {
        let name = name.as_bytes();
        self.index
            .find(self.hasher.hash_one(name), |&i| {
                self.slot_name(i as usize) == name
            })
            .map(|&i| &self.slots[i as usize].child)
    }

    /// Every name with what the layers hold under it.
    pub fn iter(&self) -> impl Iterator<Item = (&OsStr, &LowerChild)> {
        (0..self.slots.len()).map(|i| (OsStr::from_bytes(self.slot_name(i)), &self.slots[i].child))
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// LRU cache of [`LowerDir`]s keyed by lower path and layer list.
#[derive(Debug)]
pub struct LowerIndexCache {
    cache: Mutex<LruCache<LowerRef, Arc<LowerDir>>>,
    entries: AtomicUsize,
}

impl LowerIndexCache {
    pub fn new() -> Self {
        LowerIndexCache {
            cache: Mutex::new(LruCache::unbounded()),
            entries: AtomicUsize::new(0),
        }
    }

    fn get(&self, key: &LowerRef) -> Option<Arc<LowerDir>> {
        self.cache.lock().get(key).cloned()
    }

    fn put(&self, key: LowerRef, dir: Arc<LowerDir>) {
        let mut cache = self.cache.lock();
        let mut total = self.entries.load(Ordering::Relaxed) + dir.len();
        if let Some(old) = cache.put(key, dir) {
            total -= old.len();
        }
        while total > MAX_INDEX_ENTRIES && cache.len() > 1 {
            match cache.pop_lru() {
                Some((_, old)) => total -= old.len(),
                None => break,
            }
        }
        self.entries.store(total, Ordering::Relaxed);
    }
}

impl Default for LowerIndexCache {
    fn default() -> Self {
        Self::new()
    }
}

/// The result of resolving one name.
#[derive(Debug)]
pub struct Resolved {
    pub is_dir: bool,
    pub upper: Option<Stat>,
    /// For a non-directory, an entry named as the name resolved.
    pub lower: Option<Lower>,
    pub lower_stat: Option<Stat>,
    /// For a lower hard link whose object was copied up: its index entry and stat.
    pub index: Option<(Arc<str>, Stat)>,
    /// Inode number of the lower origin of a copied-up non-directory.
    pub origin_ino: Option<u64>,
    /// Merged st_nlink minus the real one (from `overlay.nlink`).
    pub nlink_offset: i64,
    /// The FUSE generation of the object (see `crate::union::export`), 0 when the mount
    /// exports no handles.
    pub generation: u32,
    /// The object is an inner overlay's whiteout (its stats show a char device 0/0).
    pub inner_whiteout: bool,
    /// Set for a metacopy object (its metadata where `stat` says, its data here).
    pub data: Option<crate::union::metacopy::FoundData>,
}

impl Resolved {
    /// The stat the user sees (its st_nlink before `nlink_offset`).
    pub fn stat(&self) -> Option<&Stat> {
        self.upper
            .as_ref()
            .or(self.index.as_ref().map(|(_, st)| st))
            .or(self.lower_stat.as_ref())
    }
}

/// What a parent directory looks like to a child lookup.
#[derive(Debug, Clone)]
pub struct DirInfo {
    pub upper: Option<PathBuf>,
    pub lower: Option<Arc<LowerRef>>,
    /// The upper directory holds no `.wh.*` whiteout files (see `Node::no_wh_files`).
    pub no_wh_files: bool,
}

/// The overlay marks of one directory: its opaque state and its redirect.
#[derive(Debug, Default)]
pub struct DirMarks {
    /// Hides the layers below (xattr `opaque=y` in any namespace, or the marker file).
    pub opaque: bool,
    /// Not opaque, but holds xattr whiteouts (`opaque=x`).
    pub xattr_whiteouts: bool,
    /// The raw `overlay.redirect` value, if any (see [`crate::union::redirect`]).
    pub redirect: Option<Vec<u8>>,
    /// Holds whiteouts of an overlay nested on this one (see
    /// [`xattr::INNER_WHITEOUT_XATTRS`]).
    pub inner_whiteouts: bool,
}

/// Reads the marks of a directory: one `listxattr`, a `getxattr` only for the overlay
/// names it lists, and a `stat` for the opaque marker file.
pub fn dir_marks(dir: BorrowedFd<'_>) -> Result<DirMarks> {
    let names = sys::list_xattrs(dir).at("listxattr", Where::Unknown)?;
    let mut marks = DirMarks::default();
    let listed = |want: &str| names.iter().any(|n| n == want);
    for want in xattr::OPAQUE_XATTRS {
        if !listed(want) {
            continue;
        }
        if let Some(v) = sys::get_dir_xattr(dir, OsStr::new(want)).at("getxattr", Where::Unknown)? {
            match xattr::classify_opaque(&v) {
                OpaqueXattr::Opaque => marks.opaque = true,
                OpaqueXattr::HasXattrWhiteouts => marks.xattr_whiteouts = true,
                OpaqueXattr::None => {}
            }
        }
    }
    marks.inner_whiteouts = xattr::INNER_WHITEOUT_XATTRS.iter().any(|n| listed(n));
    for want in xattr::REDIRECT_XATTRS {
        if marks.redirect.is_none() && listed(want) {
            marks.redirect =
                sys::get_dir_xattr(dir, OsStr::new(want)).at("getxattr", Where::Unknown)?;
        }
    }
    if !marks.opaque {
        match rustix::fs::statat(dir, whiteout::OPAQUE_MARKER, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => marks.opaque = !is_literal(dir, OsStr::new(whiteout::OPAQUE_MARKER))?,
            Err(Errno::NOENT) => {}
            Err(e) => return Err(Error::os("stat opaque marker", e, Where::Unknown)),
        }
    }
    Ok(marks)
}

/// Reads the opaque state of a directory (xattr in any namespace, or marker file).
pub fn dir_opaque(dir: BorrowedFd<'_>) -> Result<OpaqueXattr> {
    let marks = dir_marks(dir)?;
    Ok(if marks.opaque {
        OpaqueXattr::Opaque
    } else if marks.xattr_whiteouts {
        OpaqueXattr::HasXattrWhiteouts
    } else {
        OpaqueXattr::None
    })
}

/// True when the zero-size regular file `name` in `dir` carries a whiteout xattr.
pub(crate) fn is_xattr_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool> {
    for n in xattr::WHITEOUT_XATTRS {
        if sys::get_xattr_at(dir, name, OsStr::new(n))
            .at("getxattr", Where::Unknown)?
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `st` is a zero-size regular file: the only kind of object that can be an
/// xattr whiteout or an inner overlay's whiteout.
pub(crate) fn is_empty_file(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_size == 0
}

/// The xattr names of one zero-size regular file, listed once. Whiteouts in xattr form
/// (this overlay's or an inner one's) and metacopy files of empty data are all such files,
/// told apart by xattrs alone: one listing answers what would otherwise be a read per
/// mark and namespace (five for a lookup), and most such files carry no xattr at all.
pub(crate) struct EmptyFileXattrs {
    buf: [u8; 512],
    /// The length of the list; `None` when it could not be listed (no `listxattrat`, or
    /// too long a list): then every question is read by name.
    len: Option<usize>,
}

impl EmptyFileXattrs {
    pub(crate) fn list(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Self> {
        let mut x = EmptyFileXattrs {
            buf: [0; 512],
            len: None,
        };
        match sys::list_xattr_names_at(dir, name, &mut x.buf) {
            Some(Ok(n)) => x.len = Some(n),
            None | Some(Err(Errno::RANGE)) => {}
            Some(Err(e)) => return Err(Error::os("listxattr", e, Where::Unknown)),
        }
        Ok(x)
    }

    /// Whether `name` in `dir` has one of the xattrs `names`.
    pub(crate) fn any(&self, dir: BorrowedFd<'_>, name: &OsStr, names: &[&OsStr]) -> Result<bool> {
        if let Some(len) = self.len {
            let listed = || self.buf[..len].split(|&b| b == 0);
            return Ok(names.iter().any(|n| listed().any(|l| l == n.as_bytes())));
        }
        for n in names {
            match sys::get_xattr_at(dir, name, n) {
                Ok(Some(_)) => return Ok(true),
                Ok(None) | Err(Errno::NOENT) => {}
                Err(e) => return Err(Error::os("getxattr", e, Where::Unknown)),
            }
        }
        Ok(false)
    }
}

/// Whether `name` in `dir` (stat `st`) is an inner overlay's whiteout as this overlay
/// stores it: a zero-size regular file with the mark of
/// [`xattr::INNER_WHITEOUT_XATTRS`]. Others cost no xattr read.
pub(crate) fn is_inner_whiteout(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat) -> Result<bool> {
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size != 0 {
        return Ok(false);
    }
    for n in xattr::INNER_WHITEOUT_XATTRS {
        match sys::get_xattr_at(dir, name, OsStr::new(n)) {
            Ok(Some(_)) => return Ok(true),
            Ok(None) | Err(Errno::NOENT) => {}
            Err(e) => return Err(Error::os("getxattr", e, Where::Unknown)),
        }
    }
    Ok(false)
}

/// Stores the zero-size regular file `name` in `dir` as an inner overlay's whiteout (see
/// [`xattr::INNER_WHITEOUT_XATTRS`]), in the mount's namespace.
pub(crate) fn mark_inner_whiteout(
    fmt: whiteout::WriteFormat,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    at: Where,
) -> Result<()> {
    set_marks(
        dir,
        name,
        &[
            (fmt.xattr_ns.escaped_whiteout(), b"", "set escaped whiteout"),
            (fmt.xattr_ns.inner_whiteout(), b"y", "mark inner whiteout"),
        ],
        at,
    )
}

/// Marks upper directory `dir` as holding inner whiteouts (before one is put there): this
/// overlay's mark, and, unless the directory has an escaped opaque mark of its own, the
/// escaped `opaque=x` by which the nested overlay (on kernel overlayfs reading this layer)
/// reads the escaped xattr whiteouts.
pub(crate) fn mark_inner_whiteout_dir(
    fmt: whiteout::WriteFormat,
    dir: BorrowedFd<'_>,
) -> Result<()> {
    let mark = OsStr::new(fmt.xattr_ns.inner_whiteout());
    if sys::get_dir_xattr(dir, mark)
        .at("getxattr", Where::Upper)?
        .is_some()
    {
        return Ok(());
    }
    let opaque = OsStr::new(fmt.xattr_ns.escaped_opaque());
    if sys::get_dir_xattr(dir, opaque)
        .at("getxattr", Where::Upper)?
        .is_none()
    {
        sys::set_xattr(dir, opaque, b"x", 0).at("set escaped opaque", Where::Upper)?;
    }
    sys::set_xattr(dir, mark, b"y", 0).at("mark inner whiteouts", Where::Upper)
}

/// What a stat of an inner overlay's whiteout shows: the character device 0/0 it was made
/// as, with the file's permissions, owner and times.
pub(crate) fn show_inner_whiteout(st: &mut Stat) {
    st.st_mode = libc::S_IFCHR | (st.st_mode & 0o7777);
    st.st_rdev = 0;
    st.st_size = 0;
    st.st_blocks = 0;
}

/// Whether the `.wh.*` entry `name` in `dir` is a user's own object (marked literal), not a
/// whiteout or opaque marker.
pub(crate) fn is_literal(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool> {
    for n in xattr::LITERAL_XATTRS {
        match sys::get_xattr_at(dir, name, OsStr::new(n)) {
            Ok(Some(_)) => return Ok(true),
            Ok(None) | Err(Errno::NOENT) => {}
            Err(e) => return Err(Error::os("getxattr", e, Where::Unknown)),
        }
    }
    Ok(false)
}

/// Whether a `.wh.NAME` whiteout file in `dir` hides `name` (one not marked literal).
pub(crate) fn whiteout_file_hides(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool> {
    let wh = whiteout::whiteout_file_name(name);
    Ok(wh.len() <= 255
        && rustix::fs::statat(dir, &wh, AtFlags::SYMLINK_NOFOLLOW).is_ok()
        && !is_literal(dir, &wh)?)
}

/// Marks the `.wh.*` object `name` in `dir` literal, in the mount's namespace.
pub(crate) fn mark_literal(
    fmt: whiteout::WriteFormat,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    at: Where,
) -> Result<()> {
    set_marks(
        dir,
        name,
        &[(fmt.xattr_ns.literal(), xattr::LITERAL_VALUE, "mark literal")],
        at,
    )
}

/// Sets each `(xattr, value, what)` of `marks` on the object `name` in `dir` (never
/// following it), `what` naming the step in an error.
fn set_marks(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    marks: &[(&str, &[u8], &'static str)],
    at: Where,
) -> Result<()> {
    let fd = sys::open_path(dir, Path::new(name)).at("open", at)?;
    for &(xname, value, what) in marks {
        sys::set_xattr(fd.as_fd(), OsStr::new(xname), value, 0).at(what, at)?;
    }
    Ok(())
}

/// Whether a stat of `name` in `dir` shows a whiteout, in any format that is an object.
fn stat_is_whiteout(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    st: &Stat,
    xattr_whiteouts: bool,
) -> Result<bool> {
    if whiteout::is_chardev_whiteout(st.st_mode, st.st_rdev) {
        return Ok(true);
    }
    if xattr_whiteouts && st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_size == 0 {
        return is_xattr_whiteout(dir, name);
    }
    Ok(false)
}

impl UnionFs {
    /// The cached lower index of `dir`, built on first use.
    pub(crate) fn lower_dir(&self, dir: &LowerRef) -> Result<Arc<LowerDir>> {
        if let Some(d) = self.lower_index.get(dir) {
            return Ok(d);
        }
        let built = Arc::new(self.build_lower_dir(dir)?);
        self.lower_index.put(dir.clone(), built.clone());
        Ok(built)
    }

    fn build_lower_dir(&self, dir: &LowerRef) -> Result<LowerDir> {
        struct Slot {
            child: LowerChild,
            open: bool,
        }
        let mut map: HashMap<OsString, Slot> = HashMap::new();
        for &layer in dir.layers.iter() {
            let at = Where::Lower(layer);
            let pfd = match self.lower_dir_fd(layer, dir.path_in(layer)) {
                Ok(fd) => fd,
                Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => continue,
                Err(e) => return Err(Error::os("open lower dir", e, at)),
            };
            let marks = dir_marks(pfd.as_fd())?;
            // Xattr whiteouts are listed as whiteouts where the directory is marked
            // `opaque=x`, as kernel overlayfs's readdir takes them. Elsewhere one is an
            // entry here and in the kernel's listings, though a lookup of it finds a
            // whiteout (see `resolve`), as the kernel's does.
            let xattr_whiteouts = !marks.opaque && marks.xattr_whiteouts;
            let listing = sys::read_dir(sys::reopen_dir_for_read(pfd.as_fd()).at("opendir", at)?)
                .at("readdir", at)?;
            let mut whiteouts: Vec<(OsString, bool)> = Vec::new();
            let mut objects: Vec<(OsString, FileType, u64)> = Vec::new();
            for e in listing {
                if whiteout::is_reserved_name(&e.name) && !is_literal(pfd.as_fd(), &e.name)? {
                    if let Some(target) = whiteout::whiteout_target(&e.name) {
                        whiteouts.push((target.to_os_string(), false));
                    }
                    continue;
                }
                let mut kind = e.file_type;
                let needs_stat = matches!(kind, FileType::Unknown | FileType::CharacterDevice)
                    || ((xattr_whiteouts || marks.inner_whiteouts)
                        && kind == FileType::RegularFile);
                if needs_stat {
                    let st = match rustix::fs::statat(&pfd, &e.name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) => st,
                        Err(Errno::NOENT) => continue,
                        Err(err) => return Err(Error::os("stat", err, at)),
                    };
                    if stat_is_whiteout(pfd.as_fd(), &e.name, &st, xattr_whiteouts)? {
                        whiteouts.push((e.name, kind == FileType::RegularFile));
                        continue;
                    }
                    kind = FileType::from_raw_mode(st.st_mode);
                    if marks.inner_whiteouts && is_inner_whiteout(pfd.as_fd(), &e.name, &st)? {
                        kind = FileType::CharacterDevice;
                    }
                }
                objects.push((e.name, kind, e.ino));
            }
            let mut present: HashSet<&OsStr> = HashSet::new();
            for (name, kind, ino) in &objects {
                present.insert(name.as_os_str());
                match map.get_mut(name.as_os_str()) {
                    None => {
                        let child = if *kind == FileType::Directory {
                            LowerChild::Dir(Box::new(LowerSubdir {
                                candidates: vec![layer],
                                ino: *ino,
                                merged: OnceLock::new(),
                            }))
                        } else {
                            LowerChild::NonDir {
                                layer,
                                ino: *ino,
                                kind: *kind,
                                meta: std::sync::atomic::AtomicU8::new(0),
                            }
                        };
                        let open = *kind == FileType::Directory;
                        map.insert(name.clone(), Slot { child, open });
                    }
                    Some(slot) if slot.open => {
                        if let (LowerChild::Dir(d), FileType::Directory) = (&mut slot.child, kind) {
                            d.candidates.push(layer);
                        } else {
                            slot.open = false;
                        }
                    }
                    Some(_) => {}
                }
            }
            for (name, by_xattr) in whiteouts {
                if present.contains(name.as_os_str()) {
                    continue;
                }
                match map.get_mut(&name) {
                    None => {
                        map.insert(
                            name,
                            Slot {
                                child: LowerChild::Hidden { by_xattr },
                                open: false,
                            },
                        );
                    }
                    Some(slot) => slot.open = false,
                }
            }
        }
        Ok(LowerDir::from_children(
            map.into_iter().map(|(k, v)| (k, v.child)).collect(),
        ))
    }

    /// The merged lower directory of child `name` of `parent`: its candidates top down
    /// until one is opaque; a redirect on one of them moves the lookup of the layers
    /// below it to the redirect's target. As the kernel, the bottom layer's marks are
    /// not read (nothing is below it).
    pub(crate) fn merged_dir(
        &self,
        parent: &LowerRef,
        name: &OsStr,
        child: &LowerChild,
    ) -> Result<Option<Arc<LowerRef>>> {
        let LowerChild::Dir(d) = child else {
            return Ok(None);
        };
        if let Some(m) = d.merged.get() {
            return Ok(Some(m.clone()));
        }
        let bottom = self.stack.bottom();
        let mut layers: Vec<LowerIdx> = Vec::with_capacity(d.candidates.len());
        let mut moved: Vec<(LowerIdx, PathBuf)> = Vec::new();
        for &layer in &d.candidates {
            layers.push(layer);
            if layer == bottom {
                break;
            }
            let path = parent.path_in(layer).join(name);
            let fd = self
                .lower_dir_fd(layer, &path)
                .at("open lower dir", Where::Lower(layer))?;
            let marks = dir_marks(fd.as_fd())?;
            if marks.opaque {
                break;
            }
            if let Some(v) = marks.redirect {
                self.follow_redirect(parent, layer, &v, &mut layers, &mut moved)?;
                break;
            }
        }
        let mut dir = parent.child(name, layers.into());
        if !moved.is_empty() {
            let mut all: Vec<(LowerIdx, PathBuf)> =
                dir.moved.as_deref().map(<[_]>::to_vec).unwrap_or_default();
            all.retain(|(l, _)| !moved.iter().any(|(m, _)| m == l));
            all.extend(moved);
            all.sort_by_key(|(l, _)| *l);
            dir.moved = Some(all.into());
        }
        Ok(Some(d.merged.get_or_init(|| Arc::new(dir)).clone()))
    }

    /// The lower location of `name` inside lower directory `parent`, if visible there.
    pub(crate) fn lower_child(
        &self,
        parent: &Arc<LowerRef>,
        name: &OsStr,
    ) -> Result<Option<Lower>> {
        let dir = self.lower_dir(parent)?;
        let Some(child) = dir.get(name) else {
            return Ok(None);
        };
        match child {
            LowerChild::Hidden { .. } => Ok(None),
            LowerChild::NonDir { layer, .. } => Ok(Some(Lower::Entry {
                dir: parent.clone(),
                layer: *layer,
            })),
            LowerChild::Dir(_) => Ok(self.merged_dir(parent, name, child)?.map(Lower::Dir)),
        }
    }

    /// Resolves an absolute lower path (a redirect from the root) component by component.
    fn lower_from_root(&self, comps: &[OsString]) -> Result<Option<Arc<LowerRef>>> {
        let mut cur = self
            .nodes
            .read()
            .get(ROOT_INO)?
            .lower()
            .and_then(Lower::dir)
            .cloned();
        for name in comps {
            let Some(dir) = cur else { return Ok(None) };
            match self.lower_child(&dir, name)? {
                Some(Lower::Dir(child)) => cur = Some(child),
                _ => return Ok(None),
            }
        }
        Ok(cur)
    }

    /// Where a directory node's children are looked up.
    pub(crate) fn dir_info(&self, ino: u64) -> Result<DirInfo> {
        let nodes = self.nodes.read();
        let node = nodes.get(ino)?;
        if !node.is_dir {
            return Err(Error::NotDir);
        }
        if node.detached().is_some() {
            return Err(Error::NotFound);
        }
        Ok(DirInfo {
            upper: if node.upper {
                Some(nodes.path_of(ino)?)
            } else {
                None
            },
            lower: node.lower().and_then(Lower::dir).cloned(),
            no_wh_files: node.no_wh_files,
        })
    }

    /// Resolves `name` in a directory. `Err(NotFound)` when hidden or absent.
    pub(crate) fn resolve(&self, parent: &DirInfo, name: &OsStr) -> Result<Resolved> {
        let mut upper = None;
        let mut origin: (Option<u64>, i64) = (None, 0);
        let mut upper_index = None;
        let mut redirect: Option<Redirect> = None;
        // An upper metacopy file, with its own redirect (where its data is).
        let mut upper_meta: Option<Option<Redirect>> = None;
        let mut opaque = false;
        // Generations (with nfs_export): of the upper object, and of the origin it names.
        let mut upper_gen = 0;
        let mut origin_gen = None;
        let mut inner_whiteout = false;
        // The upper has no entry of the name: a `.wh.NAME` file there may hide the lowers'.
        let mut check_wh_file = None;
        if let Some(pu) = &parent.upper {
            let pfd = self.upper_dir(pu)?;
            match rustix::fs::statat(&pfd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(mut st) => {
                    let empty = match is_empty_file(&st) {
                        true => Some(EmptyFileXattrs::list(pfd.as_fd(), name)?),
                        false => None,
                    };
                    let has = |names: &[&OsStr]| match &empty {
                        Some(x) => x.any(pfd.as_fd(), name, names),
                        None => Ok(false),
                    };
                    if whiteout::is_chardev_whiteout(st.st_mode, st.st_rdev)
                        || has(&xattr::WHITEOUT_XATTRS.map(OsStr::new))?
                    {
                        return Err(Error::NotFound);
                    }
                    // A `.wh.*` entry of the upper is a whiteout file unless marked literal.
                    if whiteout::is_reserved_name(name) && !is_literal(pfd.as_fd(), name)? {
                        return Err(Error::NotFound);
                    }
                    if has(&xattr::INNER_WHITEOUT_XATTRS.map(OsStr::new))? {
                        inner_whiteout = true;
                        show_inner_whiteout(&mut st);
                    }
                    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                        let dfd = sys::open_dir_path(pfd.as_fd(), Path::new(name))
                            .at("open upper dir", Where::Upper)?;
                        let marks = dir_marks(dfd.as_fd())?;
                        opaque = marks.opaque;
                        redirect = match marks.redirect {
                            Some(v) => Some(redirect::parse(&v, Where::Upper)?),
                            None => None,
                        };
                    } else {
                        // The xattrs are read by name (`getxattrat`), without an open. Every
                        // regular file is asked for the metacopy mark: its blocks tell
                        // nothing (the xattrs may take a block of their own, a small file
                        // needs one block either way).
                        let may_be_metacopy = match &empty {
                            Some(_) => has(&[self.metacopy_xattr()])?,
                            None => st.st_mode & libc::S_IFMT == libc::S_IFREG,
                        };
                        if may_be_metacopy
                            && self.metacopy_mark_at(pfd.as_fd(), name, Where::Upper)?
                        {
                            upper_meta =
                                Some(self.file_redirect_at(pfd.as_fd(), name, Where::Upper)?);
                        }
                        if self.index_enabled() {
                            let (ino, offset, record) =
                                self.read_identity(pfd.as_fd(), name, st.st_nlink > 1)?;
                            if ino.is_some() && self.exports() {
                                origin_gen = record
                                    .as_deref()
                                    .and_then(crate::format::origin::decode)
                                    .map(|(_, h)| crate::union::export::handle_generation(&h));
                            }
                            origin = (ino, offset);
                            if st.st_nlink > 1 {
                                upper_index = self.index_entry(record.as_deref())?;
                            }
                        }
                    }
                    if self.exports() {
                        upper_gen = crate::union::export::generation_at(pfd.as_fd(), name);
                    }
                    upper = Some(st);
                }
                Err(Errno::NOENT) => {
                    if !parent.no_wh_files {
                        check_wh_file = Some(pfd);
                    }
                }
                Err(e) => return Err(Error::os("stat", e, Where::Upper)),
            }
        }
        let upper_is_dir = upper
            .as_ref()
            .map(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR);
        let lower = match upper_is_dir {
            Some(false) => None,
            Some(true) if opaque => None,
            _ => match (&redirect, &parent.lower) {
                (Some(Redirect::Absolute(comps)), _) => {
                    self.lower_from_root(comps)?.map(Lower::Dir)
                }
                (Some(Redirect::Relative(r)), Some(pl)) => self.lower_child(pl, r)?,
                (None, Some(pl)) => self.lower_child(pl, name)?,
                (_, None) => None,
            }
            // A redirect names a directory only; an entry is always found under `name`.
            .filter(|l| upper_is_dir.is_none() || matches!(l, Lower::Dir(_))),
        };
        if upper.is_none() && lower.is_none() {
            return Err(Error::NotFound);
        }
        // Only now: a name no layer has is missing whatever the upper holds.
        if let Some(pfd) = check_wh_file {
            if lower.is_some() && whiteout_file_hides(pfd.as_fd(), name)? {
                return Err(Error::NotFound);
            }
        }
        // A zero-size lower file whose xattrs were listed and show no metacopy mark.
        let mut lower_not_metacopy = false;
        let lower_stat = match &lower {
            Some(l) => match l.top() {
                Some(top) => {
                    let path = l.path_at(name);
                    let mut st = self.stat_lower(top, &path)?;
                    // Kernel overlayfs's lookup takes a zero-size file with the whiteout
                    // xattr for a whiteout in any directory (`ovl_path_is_whiteout`); only
                    // its readdir wants the directory marked (see `build_lower_dir`).
                    if upper.is_none() && is_empty_file(&st) {
                        let key = crate::union::dirfd::LayerKey::Lower(top);
                        if let (pfd, Some(leaf), _) = self.parent_in(key, &path)? {
                            let x = EmptyFileXattrs::list(pfd.as_fd(), leaf)?;
                            let has = |names: &[&OsStr]| x.any(pfd.as_fd(), leaf, names);
                            if has(&xattr::WHITEOUT_XATTRS.map(OsStr::new))? {
                                return Err(Error::NotFound);
                            }
                            if has(&xattr::INNER_WHITEOUT_XATTRS.map(OsStr::new))? {
                                inner_whiteout = true;
                                show_inner_whiteout(&mut st);
                            }
                            lower_not_metacopy = !has(&[self.metacopy_xattr()])?;
                        }
                    }
                    Some(st)
                }
                None => None,
            },
            None => None,
        };
        let is_dir = match (&upper, &lower_stat) {
            (Some(st), _) | (None, Some(st)) => st.st_mode & libc::S_IFMT == libc::S_IFDIR,
            (None, None) => return Err(Error::NotFound),
        };
        let mut data = None;
        if let Some(r) = upper_meta {
            data = Some(self.metacopy_data(parent.lower.as_deref(), name, r, None)?);
        } else if let (None, Some(Lower::Entry { dir, layer }), Some(st)) =
            (&upper, &lower, &lower_stat)
        {
            if st.st_mode & libc::S_IFMT == libc::S_IFREG
                && !lower_not_metacopy
                && self.lower_entry_is_metacopy(dir, name, *layer)?
            {
                let at = Where::Lower(*layer);
                let pfd = self
                    .lower_dir_fd(*layer, dir.path_in(*layer))
                    .at("open lower dir", at)?;
                let r = self.file_redirect_at(pfd.as_fd(), name, at)?;
                data = Some(self.metacopy_data(Some(dir), name, r, Some(*layer))?);
            }
        }
        let mut index = upper_index;
        if let (None, Some(l), Some(st)) = (&upper, &lower, &lower_stat) {
            if !is_dir && st.st_nlink > 1 && self.index_enabled() {
                if let Some(found) = self.find_index(l, name)? {
                    let entry = OsStr::new(&*found.0);
                    let (_, offset, _) = self.read_identity(self.index_fd()?, entry, true)?;
                    origin = (Some(self.map_ino(st)), offset);
                    // The index entry is what shows: a metacopy entry reads the data of
                    // this lower file (or of the data below it, if it is a metacopy file).
                    let index_meta = found.1.st_mode & libc::S_IFMT == libc::S_IFREG
                        && self.metacopy_mark_at(self.index_fd()?, entry, Where::Work)?;
                    data = match (index_meta, data) {
                        (false, _) => None,
                        (true, Some(d)) => Some(d),
                        (true, None) => Some(crate::union::metacopy::FoundData {
                            loc: crate::union::inode::DataLoc {
                                layer: l.top().ok_or(Error::NotFound)?,
                                path: l.path_at(name),
                                blocks: st.st_blocks as u64,
                            },
                            st: *st,
                        }),
                    };
                    index = Some(found);
                }
            }
        }
        // The generation of the object that gives the identity (see `identity`).
        let generation = match (&lower, &lower_stat) {
            _ if !self.exports() => 0,
            _ if upper.is_some() && !is_dir => origin_gen.unwrap_or(upper_gen),
            (Some(l), Some(_)) => match l.top() {
                Some(top) => self.lower_generation(top, &l.path_at(name)),
                None => upper_gen,
            },
            _ => upper_gen,
        };
        Ok(Resolved {
            is_dir,
            upper,
            lower,
            lower_stat,
            index,
            origin_ino: origin.0,
            nlink_offset: origin.1,
            generation,
            inner_whiteout,
            data,
        })
    }

    /// The lower entry at `path` (stat `st`) is an xattr whiteout the lower index did not
    /// take for one (its directory is not marked as holding them).
    pub(crate) fn lower_is_xattr_whiteout(
        &self,
        layer: LowerIdx,
        path: &Path,
        st: &Stat,
    ) -> Result<bool> {
        self.ask_empty_lower_file(layer, path, st, is_xattr_whiteout)
    }

    /// `ask` about the lower object at `path` of `layer` (stat `st`), by its name in its
    /// parent's cached fd, when it is a zero-size regular file (the only kind a whiteout
    /// file can be); false for anything else.
    fn ask_empty_lower_file(
        &self,
        layer: LowerIdx,
        path: &Path,
        st: &Stat,
        ask: impl FnOnce(BorrowedFd<'_>, &OsStr) -> Result<bool>,
    ) -> Result<bool> {
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size != 0 {
            return Ok(false);
        }
        match self.parent_in(crate::union::dirfd::LayerKey::Lower(layer), path)? {
            (pfd, Some(name), _) => ask(pfd.as_fd(), name),
            _ => Ok(false),
        }
    }

    /// The data of a metacopy file (see [`UnionFs::find_data`]): EPERM when this mount
    /// does not follow metacopy files (`metacopy=off`, rootless), EIO when there is none,
    /// as kernel overlayfs refuses them.
    fn metacopy_data(
        &self,
        parent: Option<&LowerRef>,
        name: &OsStr,
        redirect: Option<Redirect>,
        after: Option<LowerIdx>,
    ) -> Result<crate::union::metacopy::FoundData> {
        if !self.metacopy {
            tracing::warn!(?name, "refusing to follow a metacopy file (metacopy=off)");
            return Err(Error::Permission);
        }
        let found = self.find_data(parent, name, redirect, after)?;
        let Some(found) = found else {
            tracing::warn!(?name, "metacopy file without lower data");
            return Err(Error::Os {
                op: "metacopy data",
                errno: libc::EIO,
                at: Where::Unknown,
            });
        };
        Ok(found)
    }

    /// Whether the lower entry `name` of `dir`, a regular file in `layer`, is a metacopy
    /// file.
    fn lower_entry_is_metacopy(
        &self,
        dir: &LowerRef,
        name: &OsStr,
        layer: LowerIdx,
    ) -> Result<bool> {
        let ld = self.lower_dir(dir)?;
        match ld.get(name) {
            Some(LowerChild::NonDir { meta, .. }) => self.lower_is_metacopy(dir, name, layer, meta),
            _ => Ok(false),
        }
    }

    /// Whether origin records and the index are read and written: on every writable
    /// mount with an index directory. Rootless, the records are `user.overlay.*` (kernel
    /// overlayfs with `userxattr` has no index; rlayerfs keeps one so that the names of a
    /// copied-up lower hard link stay one file across remounts, as rootful).
    pub(crate) fn index_enabled(&self) -> bool {
        self.stack.index.is_some() && self.format.is_some()
    }

    /// Whether an object of type `mode` can carry origin and nlink records: any as root;
    /// rootless only regular files and directories (Linux refuses `user.*` xattrs on
    /// other types), so other hard-linked types are then not indexed.
    pub(crate) fn can_carry_identity(&self, mode: u32) -> bool {
        let t = mode & libc::S_IFMT;
        self.index_enabled()
            && (t == libc::S_IFREG
                || t == libc::S_IFDIR
                || self.format.map(|f| f.xattr_ns) == Some(XattrNs::Trusted))
    }

    /// The names of the origin and nlink xattrs this mount reads and writes.
    pub(crate) fn identity_xattrs(&self) -> (&'static OsStr, &'static OsStr) {
        let ns = self.format.map(|f| f.xattr_ns).unwrap_or(XattrNs::Trusted);
        (OsStr::new(ns.origin()), OsStr::new(ns.nlink()))
    }

    pub(crate) fn index_fd(&self) -> Result<BorrowedFd<'_>> {
        self.stack
            .index
            .as_ref()
            .map(|f| f.as_fd())
            .ok_or(Error::Invariant("no index directory"))
    }

    /// The origin record of a lower object, when its filesystem can encode handles.
    pub(crate) fn origin_of(&self, layer: LowerIdx, fd: BorrowedFd<'_>) -> Option<Vec<u8>> {
        let h = sys::name_to_handle(fd).ok()?;
        origin::encode(&self.stack.lower(layer).uuid, &h)
    }

    /// The index entry of lower object `l` (resolved under `name`), if one exists.
    fn find_index(&self, l: &Lower, name: &OsStr) -> Result<Option<(Arc<str>, Stat)>> {
        let Some(top) = l.top() else { return Ok(None) };
        let fd = self.path_fd(crate::union::dirfd::LayerKey::Lower(top), &l.path_at(name))?;
        self.index_entry(self.origin_of(top, fd.as_fd()).as_deref())
    }

    /// The index entry for an origin record, if one exists.
    fn index_entry(&self, origin: Option<&[u8]>) -> Result<Option<(Arc<str>, Stat)>> {
        let Some(origin) = origin else {
            return Ok(None);
        };
        let name = origin::index_name(origin);
        match rustix::fs::statat(self.index_fd()?, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some((Arc::from(name.as_str()), st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(Error::os("stat index", e, Where::Work)),
        }
    }

    /// Reads the origin of upper object `name` in `dir` (→ the inode number of its lower
    /// origin) and, for hard-linked ones, its `overlay.nlink` offset.
    fn read_identity(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        linked: bool,
    ) -> Result<(Option<u64>, i64, Option<Vec<u8>>)> {
        let (origin_xattr, nlink_xattr) = self.identity_xattrs();
        let record = sys::get_xattr_at(dir, name, origin_xattr).at("getxattr", Where::Upper)?;
        let ino = record
            .as_deref()
            .and_then(origin::decode)
            .and_then(|(uuid, h)| self.decode_origin_ino(&uuid, &h));
        let mut offset = 0;
        if linked {
            let v = sys::get_xattr_at(dir, name, nlink_xattr).at("getxattr", Where::Upper)?;
            // The kernel writes upper-relative records; a lower-relative one (only written
            // by old kernels) is taken as an offset of 0.
            if let Some((origin::NlinkBase::Upper, n)) = v.as_deref().and_then(origin::parse_nlink)
            {
                offset = n;
            }
        }
        Ok((ino, offset, record))
    }

    /// Finds the lower object an origin record names and returns its inode number: by
    /// opening the handle, or, where that is not allowed (rootless: `open_by_handle_at`
    /// needs privilege) or not possible (a FUSE lower without export support, once its
    /// inode left the kernel's cache), from the handle itself when its type carries the
    /// number. Every name of a copied-up hard link holds the same record, so all of them
    /// get the same number, as the lower-only names resolved through the index do.
    pub(crate) fn decode_origin_ino(&self, uuid: &[u8; 16], h: &sys::FileHandle) -> Option<u64> {
        let mut tried: Vec<u64> = Vec::new();
        for layer in &self.stack.lowers {
            if &layer.uuid != uuid || tried.contains(&layer.dev) {
                continue;
            }
            tried.push(layer.dev);
            if let Ok(fd) = sys::open_by_handle(layer.root.as_fd(), h) {
                if let Ok(st) = rustix::fs::fstat(&fd) {
                    return Some(self.map_ino(&st));
                }
            }
        }
        let ino = origin::handle_ino(h)?;
        let layer = self.stack.lowers.iter().find(|l| &l.uuid == uuid)?;
        Some(self.map_dev_ino(layer.dev, ino))
    }

    pub(crate) fn stat_lower(&self, layer: LowerIdx, path: &Path) -> Result<Stat> {
        self.stat_in(crate::union::dirfd::LayerKey::Lower(layer), path)
    }

    /// The inode number of a resolved object: directories and copied-up files keep the
    /// number of their lower origin, so st_ino does not change on copy-up.
    pub(crate) fn identity(&self, r: &Resolved, known: Option<u64>) -> u64 {
        if let Some(ino) = known {
            return ino;
        }
        if let (Some(ino), false) = (r.origin_ino, r.is_dir) {
            return ino;
        }
        match (&r.lower_stat, &r.upper) {
            (Some(l), _) if r.is_dir => self.map_ino(l),
            (_, Some(u)) => self.map_ino(u),
            (Some(l), None) => self.map_ino(l),
            (None, None) => self.synthetic_ino(),
        }
    }

    /// The attributes of a resolved object under inode number `ino`.
    pub(crate) fn attr_of(&self, ino: u64, r: &Resolved) -> Result<Attr> {
        let st = r.stat().ok_or(Error::NotFound)?;
        let mut attr = Attr::from_stat(ino, st);
        if r.inner_whiteout {
            attr.show_inner_whiteout();
        }
        if !r.is_dir {
            attr.nlink = (attr.nlink as i64 + r.nlink_offset).max(0) as u32;
        }
        if let Some(d) = &r.data {
            // A metacopy file's blocks are its data's, as kernel overlayfs shows them.
            attr.blocks = d.st.st_blocks as u64;
        }
        let merged = match (&r.upper, &r.lower) {
            (Some(_), Some(_)) => true,
            (None, Some(l)) => l.merged(),
            _ => false,
        };
        if r.is_dir && merged {
            // As kernel overlayfs: counting subdirectories of a merged dir is not worth it.
            attr.nlink = 1;
        }
        Ok(attr)
    }

    /// Looks up `name` in directory `parent`, pinning the result (one kernel lookup).
    pub fn lookup(&self, Ino(parent): Ino, name: &OsStr) -> Result<Attr> {
        check_name(name)?;
        let info = self.dir_info(parent)?;
        let r = self.resolve(&info, name)?;
        self.pin(parent, name, &r, None)
    }

    /// Enters a resolved object in the node table and returns its attributes.
    pub(crate) fn pin(
        &self,
        parent: u64,
        name: &OsStr,
        r: &Resolved,
        forced: Option<u64>,
    ) -> Result<Attr> {
        let mut nodes = self.nodes.write();
        let known = forced.or_else(|| {
            nodes.child(parent, name).filter(|ino| {
                nodes
                    .get(*ino)
                    .map(|n| n.is_dir == r.is_dir && n.detached().is_none())
                    .unwrap_or(false)
            })
        });
        let mut ino = self.identity(r, known);
        if known.is_none() {
            if let Ok(n) = nodes.get(ino) {
                // The number is held by an object that lost its name (ext4 reuses freed
                // inode numbers) or by a different kind of object: pick a fresh one.
                if n.detached().is_some()
                    || n.is_dir != r.is_dir
                    || (r.is_dir
                        && n.parent != parent
                        && nodes.child(n.parent, n.name()) == Some(ino))
                {
                    // Prefer the upper object's own number (a copy-up detached from its
                    // lower origin for passthrough readers has one).
                    ino = r
                        .upper
                        .as_ref()
                        .map(|st| self.map_ino(st))
                        .filter(|i| nodes.get(*i).is_err())
                        .unwrap_or_else(|| self.synthetic_ino());
                }
            }
        }
        let attr = self.attr_of(ino, r)?;
        let (is_dir, upper, lower) = (r.is_dir, r.upper.is_some(), r.lower.clone());
        let index = r.index.as_ref().map(|(n, _)| n.clone());
        let nlink_offset = r.nlink_offset;
        let data = r.data.as_ref().map(|d| d.loc.clone());
        let lower_reg = r
            .lower_stat
            .as_ref()
            .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
        nodes.add_lookup(ino, parent, name, || {
            let mut n = Node::new(is_dir, upper, lower.clone());
            n.set_nlink_offset(nlink_offset);
            n.set_index(index.clone());
            n.set_data(data.clone());
            n
        });
        // The kernel refuses an entry whose generation differs from the one its inode
        // got first: a known node keeps the one it was given.
        let generation = if self.exports() {
            nodes.keep_generation(ino, r.generation)
        } else {
            0
        };
        // Refresh what the disk says now (the object may have been copied up).
        let mut elsewhere = false;
        if let Ok(n) = nodes.get_mut(ino) {
            // A copy-up that finished after this lookup read the disk must not be undone:
            // the upper state of a name only ever goes from false to true here (removals
            // go through `unname`).
            if n.parent == parent && n.name() == name && !n.upper {
                n.upper = upper;
                n.lower_reg = lower_reg;
                if lower.is_some() || upper {
                    n.set_lower(lower);
                }
                if index.is_some() || upper {
                    n.set_index(index);
                    n.set_nlink_offset(nlink_offset);
                }
                n.set_data(data);
            } else if n.parent != parent || n.name() != name {
                // A hard link found under another name: the object is where the node is.
                elsewhere = n.upper || n.index().is_some() || n.nlink_offset() != 0;
            }
        }
        drop(nodes);
        // The override xattr needs the object itself: stat it again through its node.
        if elsewhere || self.reads_override() {
            return self.getattr(Ino(ino)).map(|a| Attr { generation, ..a });
        }
        let shifted = r.upper.is_none()
            && r.index.is_none()
            && r.lower
                .as_ref()
                .and_then(|l| l.top())
                .is_some_and(|t| self.stack.lower(t).shifted);
        Ok(Attr {
            generation,
            ..self.present(attr, None, shifted)
        })
    }
}
