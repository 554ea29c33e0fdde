//! The inode table: which merged objects the kernel holds, where each one lives now
//! (parent and name: its upper path is derived from that chain, so a directory rename
//! moves every descendant at once), where its lower content comes from (an immutable
//! lower location, which never changes because lowers are read-only), and how many
//! kernel lookups pin it.
//!
//! Layout, for memory (a walk pins one node per file): a node holds its name once; the
//! name index stores only inode numbers and finds a node by hashing the node's own
//! (parent, name), so names are not stored twice. A non-directory's lower location is its
//! layer plus a shared reference to the lower directory it was found in (its name there
//! is the node's own, or kept aside if the node moved); only directories own a lower
//! path. Rarely set fields (detached handle, index entry, link count offset, moved lower
//! name, the data of a metacopy object) live in one boxed [`Extra`].
//!
//! Invariants: a node stays while the kernel holds lookups on it or while any node names
//! it as parent (so an upper path can always be rebuilt). Every live (parent, name) maps
//! to at most one node: through `names` when it is that node's own location, else through
//! `aliases` (other hard links of the object). A node's location only changes through
//! [`NodeTable::relocate`], which keeps `names` consistent with it.
//!
//! Also where the object behind a node is now ([`RealLoc`], `UnionFs::real`), read from
//! the table, and a handle on it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::hash::BuildHasher;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hashbrown::HashTable;

use crate::error::{Error, OsContext, Result, Where};
use crate::sys;
use crate::union::dirfd::LayerKey;
use crate::union::layer::LowerIdx;
use crate::union::UnionFs;

/// The FUSE root node id.
pub const ROOT_INO: u64 = 1;

/// A lower directory: fixed for its whole life.
///
/// `path` is where the directory is looked up from the top of the lower stack: the names
/// leading to it, with the redirects of the upper applied (what kernel overlayfs writes as
/// an absolute redirect when the directory moves). A redirect found in a lower layer
/// (that layer was once an upper, and the directory was renamed in it) moves the
/// directory for the layers below it: those layers are in `moved` with the path the
/// directory has there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LowerRef {
    /// Path relative to the lower layer roots ("" for the root).
    pub path: PathBuf,
    /// The layers that merge into it, top first, ending at the first opaque one.
    pub layers: Arc<[LowerIdx]>,
    /// The layers where the directory has another path than `path`, in layer order.
    pub moved: Option<Arc<[(LowerIdx, PathBuf)]>>,
}

impl LowerRef {
    /// A directory found at the same `path` in all of its `layers`.
    pub fn new(path: PathBuf, layers: Arc<[LowerIdx]>) -> LowerRef {
        LowerRef {
            path,
            layers,
            moved: None,
        }
    }

    /// The top layer holding the directory.
    pub fn top(&self) -> Option<LowerIdx> {
        self.layers.first().copied()
    }

    /// Where the directory is in lower layer `layer`.
    pub fn path_in(&self, layer: LowerIdx) -> &std::path::Path {
        self.moved
            .as_deref()
            .and_then(|m| m.iter().find(|(l, _)| *l == layer))
            .map_or(self.path.as_path(), |(_, p)| p.as_path())
    }

    /// The lower reference of child directory `name` found in `layers` (under `name` in
    /// each of them).
    pub fn child(&self, name: &OsStr, layers: Arc<[LowerIdx]>) -> LowerRef {
        let moved = self.moved.as_deref().and_then(|m| {
            let kept: Vec<(LowerIdx, PathBuf)> = m
                .iter()
                .filter(|(l, _)| layers.contains(l))
                .map(|(l, p)| (*l, p.join(name)))
                .collect();
            (!kept.is_empty()).then(|| Arc::from(kept))
        });
        LowerRef {
            path: self.path.join(name),
            layers,
            moved,
        }
    }
}

/// Where an object's lower content lives.
#[derive(Debug, Clone)]
pub enum Lower {
    /// A directory, with its own lower path and merged layers.
    Dir(Arc<LowerRef>),
    /// A non-directory: an entry of lower directory `dir` in one `layer`. Its name is the
    /// one it was resolved under (for a node: see [`Node::lower_name`]). Sharing the
    /// directory's reference spares every file a path of its own.
    Entry { dir: Arc<LowerRef>, layer: LowerIdx },
}

impl Lower {
    /// The top layer holding the object.
    pub fn top(&self) -> Option<LowerIdx> {
        match self {
            Lower::Dir(d) => d.top(),
            Lower::Entry { layer, .. } => Some(*layer),
        }
    }

    /// More than one lower layer merges into the object.
    pub fn merged(&self) -> bool {
        matches!(self, Lower::Dir(d) if d.layers.len() > 1)
    }

    /// The directory reference, for a directory.
    pub fn dir(&self) -> Option<&Arc<LowerRef>> {
        match self {
            Lower::Dir(d) => Some(d),
            Lower::Entry { .. } => None,
        }
    }

    /// The path relative to the root of the top layer holding the object; `name` is the
    /// entry's name (unused for a directory, which knows its own path).
    pub fn path_at(&self, name: &OsStr) -> PathBuf {
        match self {
            Lower::Dir(d) => match d.top() {
                Some(top) => d.path_in(top).to_path_buf(),
                None => d.path.clone(),
            },
            Lower::Entry { dir, layer } => dir.path_in(*layer).join(name),
        }
    }
}

/// Where the data of a metacopy object is (kernel `metacopy=on`: its metadata is in the
/// upper layer, or in a higher lower layer, and its data is still this lower file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLoc {
    /// The layer holding the data (a data-only layer included).
    pub layer: LowerIdx,
    /// The data file's path in that layer.
    pub path: PathBuf,
    /// Its `st_blocks`, which `stat` shows for the metacopy file (lowers do not change).
    pub blocks: u64,
}

/// Node fields that most nodes never set.
#[derive(Debug, Default)]
struct Extra {
    detached: Option<Arc<OwnedFd>>,
    nlink_offset: i64,
    index: Option<Arc<str>>,
    /// The lower entry name of a non-directory that moved to another of its names.
    lower_name: Option<Box<OsStr>>,
    /// Set while the object is a metacopy file: where its data is.
    data: Option<DataLoc>,
}

impl Extra {
    fn is_default(&self) -> bool {
        self.detached.is_none()
            && self.nlink_offset == 0
            && self.index.is_none()
            && self.lower_name.is_none()
            && self.data.is_none()
    }
}

/// One merged object the kernel knows.
#[derive(Debug)]
pub struct Node {
    pub parent: u64,
    name: Box<OsStr>,
    pub lookups: u64,
    lower: Option<Lower>,
    /// Number of nodes whose `parent` is this node.
    pub children: u32,
    pub is_dir: bool,
    /// The object exists in the upper layer at the path given by the parent chain.
    pub upper: bool,
    /// The detached object is a lower layer's: it must never be written.
    pub detached_lower: bool,
    /// An upper directory this daemon made in this mount (by mkdir or copy-up) while it
    /// writes whiteouts as devices: it holds no `.wh.*` whiteout file, so a name missing
    /// from it needs no look for one (a `.wh.*` name made through the mount is literal).
    /// False when not known.
    pub no_wh_files: bool,
    /// The lower object was a regular file when it was last looked up: a copy-up may open
    /// it for reading at once (with O_NOFOLLOW, then checked by fstat) instead of through
    /// an `O_PATH` fd and its magic link. False when not known: a device must never be
    /// opened, since opening one can act (a watchdog starts).
    pub lower_reg: bool,
    /// The object's `overlay.protattr` flags as last read or written (see
    /// `crate::union::fileattr::ProtCache`); 0 while not known.
    pub prot: u8,
    extra: Option<Box<Extra>>,
}

impl Node {
    /// A node not yet placed in the table (the table sets its location).
    pub fn new(is_dir: bool, upper: bool, lower: Option<Lower>) -> Node {
        Node {
            parent: 0,
            name: Box::default(),
            lookups: 0,
            lower,
            children: 0,
            is_dir,
            upper,
            detached_lower: false,
            no_wh_files: false,
            lower_reg: false,
            prot: 0,
            extra: None,
        }
    }

    pub fn name(&self) -> &OsStr {
        &self.name
    }

    pub fn lower(&self) -> Option<&Lower> {
        self.lower.as_ref()
    }

    /// Replaces the lower location, resolved under the node's current name.
    pub fn set_lower(&mut self, lower: Option<Lower>) {
        self.lower = lower;
        self.edit_extra(|e| e.lower_name = None);
    }

    /// The name of the object's lower entry in its lower directory.
    pub fn lower_name(&self) -> &OsStr {
        self.extra
            .as_ref()
            .and_then(|e| e.lower_name.as_deref())
            .unwrap_or(&self.name)
    }

    /// The top lower layer holding the object and its path there.
    pub fn lower_path(&self) -> Option<(LowerIdx, PathBuf)> {
        let l = self.lower.as_ref()?;
        Some((l.top()?, l.path_at(self.lower_name())))
    }

    /// Set once the object lost its last name while still referenced: an `O_PATH`
    /// handle that keeps `getattr` and open handles working.
    pub fn detached(&self) -> Option<&Arc<OwnedFd>> {
        self.extra.as_ref()?.detached.as_ref()
    }

    pub fn set_detached(&mut self, fd: Option<Arc<OwnedFd>>) {
        self.edit_extra(|e| e.detached = fd);
    }

    /// Merged st_nlink minus the real one: lower names of a copied-up hard-linked file
    /// still count, as with kernel overlayfs `index=on` (persisted as `overlay.nlink`
    /// when the object is indexed).
    pub fn nlink_offset(&self) -> i64 {
        self.extra.as_ref().map_or(0, |e| e.nlink_offset)
    }

    pub fn set_nlink_offset(&mut self, offset: i64) {
        self.edit_extra(|e| e.nlink_offset = offset);
    }

    /// Name of the object's entry in `WORKDIR/index`, for an indexed hard-linked file.
    pub fn index(&self) -> Option<&Arc<str>> {
        self.extra.as_ref()?.index.as_ref()
    }

    pub fn set_index(&mut self, index: Option<Arc<str>>) {
        self.edit_extra(|e| e.index = index);
    }

    /// Where the data is, while the object is a metacopy file (its metadata is where
    /// [`Node::upper`], the index entry or the lower location say; its data is not).
    pub fn data(&self) -> Option<&DataLoc> {
        self.extra.as_ref()?.data.as_ref()
    }

    pub fn set_data(&mut self, data: Option<DataLoc>) {
        self.edit_extra(|e| e.data = data);
    }

    /// Changes the rare fields, allocating them only when one is set (lookups clear them
    /// on every refresh: that must not cost an allocation).
    fn edit_extra(&mut self, f: impl FnOnce(&mut Extra)) {
        match &mut self.extra {
            Some(e) => {
                f(e);
                if e.is_default() {
                    self.extra = None;
                }
            }
            None => {
                let mut e = Extra::default();
                f(&mut e);
                if !e.is_default() {
                    self.extra = Some(Box::new(e));
                }
            }
        }
    }
}

/// The table of nodes, guarded by one `RwLock` in the core, never held across I/O.
#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: HashMap<u64, Node>,
    /// Nodes by their own (parent, name): the key is read from the node itself.
    names: HashTable<u64>,
    /// Names that lead to a node located elsewhere (another hard link of its object).
    aliases: HashMap<(u64, Box<OsStr>), u64>,
    /// FUSE generations given to the kernel (only a mount exporting handles sets any;
    /// kept aside so that the others pay nothing for them).
    generations: HashMap<u64, u32>,
    hasher: std::hash::RandomState,
}

fn name_hash(h: &std::hash::RandomState, parent: u64, name: &OsStr) -> u64 {
    h.hash_one((parent, name.as_bytes()))
}

impl NodeTable {
    /// A table holding only the root.
    pub fn new(root_upper: bool, root_lower: Arc<LowerRef>) -> Self {
        let mut t = NodeTable::default();
        let mut root = Node::new(true, root_upper, Some(Lower::Dir(root_lower)));
        root.parent = ROOT_INO;
        root.lookups = 1;
        t.nodes.insert(ROOT_INO, root);
        t
    }

    pub fn get(&self, ino: u64) -> Result<&Node> {
        self.nodes.get(&ino).ok_or(Error::Stale)
    }

    pub fn get_mut(&mut self, ino: u64) -> Result<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Error::Stale)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node located at (parent, name) and indexed there.
    fn located(&self, parent: u64, name: &OsStr) -> Option<u64> {
        let nodes = &self.nodes;
        self.names
            .find(name_hash(&self.hasher, parent, name), |i| {
                nodes
                    .get(i)
                    .is_some_and(|n| n.parent == parent && *n.name == *name)
            })
            .copied()
    }

    /// The node currently at (parent, name), if the kernel holds one.
    pub fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.located(parent, name).or_else(|| {
            if self.aliases.is_empty() {
                return None;
            }
            self.aliases.get(&(parent, Box::from(name))).copied()
        })
    }

    /// Forgets the name (parent, name); returns the node it led to.
    fn name_remove(&mut self, parent: u64, name: &OsStr) -> Option<u64> {
        let nodes = &self.nodes;
        let found = self
            .names
            .find_entry(name_hash(&self.hasher, parent, name), |i| {
                nodes
                    .get(i)
                    .is_some_and(|n| n.parent == parent && *n.name == *name)
            });
        match found {
            Ok(entry) => Some(entry.remove().0),
            Err(_) if self.aliases.is_empty() => None,
            Err(_) => self.aliases.remove(&(parent, Box::from(name))),
        }
    }

    /// Makes the name (parent, name) lead to `ino`.
    fn name_insert(&mut self, parent: u64, name: &OsStr, ino: u64) {
        self.name_remove(parent, name);
        let at_node = self
            .nodes
            .get(&ino)
            .is_some_and(|n| n.parent == parent && *n.name == *name);
        if at_node {
            self.index_location(ino);
        } else {
            self.aliases.insert((parent, Box::from(name)), ino);
        }
    }

    /// Enters `ino` in `names` under its own location (the name must lead nowhere yet).
    fn index_location(&mut self, ino: u64) {
        let Some(n) = self.nodes.get(&ino) else {
            return;
        };
        let (nodes, hasher) = (&self.nodes, &self.hasher);
        self.names
            .insert_unique(name_hash(hasher, n.parent, &n.name), ino, |i| {
                nodes
                    .get(i)
                    .map_or(0, |n| name_hash(hasher, n.parent, &n.name))
            });
    }

    /// Takes `ino` out of `names` if it is indexed under its own location.
    fn unindex_location(&mut self, ino: u64) -> bool {
        let Some(n) = self.nodes.get(&ino) else {
            return false;
        };
        match self
            .names
            .find_entry(name_hash(&self.hasher, n.parent, &n.name), |i| *i == ino)
        {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Moves node `ino` to (parent, name). The names that lead to it stay as they were
    /// (its old location, if indexed, becomes an alias); children counts are the
    /// caller's. A non-directory keeps the name of its lower entry.
    fn relocate(&mut self, ino: u64, parent: u64, name: &OsStr) {
        let indexed = self.unindex_location(ino);
        let Some(n) = self.nodes.get_mut(&ino) else {
            return;
        };
        let old_parent = std::mem::replace(&mut n.parent, parent);
        let old_name = std::mem::replace(&mut n.name, Box::from(name));
        if matches!(n.lower, Some(Lower::Entry { .. })) && *old_name != *name {
            n.edit_extra(|e| {
                if e.lower_name.is_none() {
                    e.lower_name = Some(old_name.clone());
                }
            });
        }
        if indexed {
            self.aliases.insert((old_parent, old_name), ino);
        }
        if self.aliases.get(&(parent, Box::from(name))) == Some(&ino) {
            self.aliases.remove(&(parent, Box::from(name)));
            if self.located(parent, name).is_none() {
                self.index_location(ino);
            }
        }
    }

    /// The object's path relative to the layer roots, following the parent chain.
    pub fn path_of(&self, ino: u64) -> Result<PathBuf> {
        let mut parts = Vec::new();
        let mut cur = ino;
        let mut guard = 0usize;
        while cur != ROOT_INO {
            let n = self.get(cur)?;
            parts.push(n.name());
            cur = n.parent;
            guard += 1;
            if guard > 1 << 20 {
                return Err(Error::Invariant("cycle in the parent chain"));
            }
        }
        Ok(parts.iter().rev().collect())
    }

    /// Records a lookup of `ino` at (parent, name), creating the node if new.
    /// `make` builds the node when it is not known yet.
    pub fn add_lookup(&mut self, ino: u64, parent: u64, name: &OsStr, make: impl FnOnce() -> Node) {
        if let Some(old) = self.child(parent, name) {
            if old != ino {
                // Another object held that name before (replaced behind the kernel's back
                // or a stale alias): the name now leads to `ino`.
                self.name_remove(parent, name);
            }
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups += 1;
            let moved = node.parent != parent || *node.name != *name;
            // A non-directory reached through another hard link keeps the location of its
            // upper copy; otherwise the node follows the name it was last found at.
            if moved && (node.is_dir || !node.upper || node.detached().is_some()) {
                let is_dir = node.is_dir;
                let old_parent = node.parent;
                let old_name = node.name.clone();
                node.set_detached(None);
                self.relocate(ino, parent, name);
                // A directory has one name: the old one is stale. A non-directory keeps
                // its other names (hard links) mapped.
                if is_dir && self.child(old_parent, &old_name) == Some(ino) {
                    self.name_remove(old_parent, &old_name);
                }
                self.reparent_count(old_parent, parent);
            }
        } else {
            let mut node = make();
            node.parent = parent;
            node.name = Box::from(name);
            node.lookups = 1;
            self.nodes.insert(ino, node);
            if let Some(p) = self.nodes.get_mut(&parent) {
                p.children += 1;
            }
        }
        self.name_insert(parent, name, ino);
    }

    /// Enters a node that has no name (an `O_TMPFILE` file, with one kernel lookup):
    /// reached through its node id and detached handle only, until a lookup at a name
    /// (its link) places it. Its `parent` is the directory it was made in, which stays
    /// in the table while the node does.
    pub fn add_unnamed(&mut self, ino: u64, parent: u64, mut node: Node) {
        node.parent = parent;
        node.lookups = 1;
        self.nodes.insert(ino, node);
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children += 1;
        }
    }

    fn reparent_count(&mut self, old_parent: u64, new_parent: u64) {
        if old_parent == new_parent {
            return;
        }
        if let Some(p) = self.nodes.get_mut(&new_parent) {
            p.children += 1;
        }
        self.release_child(old_parent);
    }

    fn release_child(&mut self, parent: u64) {
        let mut cur = parent;
        loop {
            let Some(p) = self.nodes.get_mut(&cur) else {
                return;
            };
            p.children = p.children.saturating_sub(1);
            if cur == ROOT_INO || p.children > 0 || p.lookups > 0 {
                return;
            }
            let next = p.parent;
            self.remove(cur);
            cur = next;
        }
    }

    fn remove(&mut self, ino: u64) {
        self.unindex_location(ino);
        self.nodes.remove(&ino);
        if !self.generations.is_empty() {
            self.generations.remove(&ino);
        }
    }

    /// The generation of node `ino`: the one it was given first, else `generation`, which
    /// it keeps from now on. The root's is 0 (the kernel wants it so).
    pub fn keep_generation(&mut self, ino: u64, generation: u32) -> u32 {
        if ino == ROOT_INO || !self.nodes.contains_key(&ino) {
            return 0;
        }
        *self.generations.entry(ino).or_insert(generation)
    }

    /// The generation node `ino` was given (0 if none).
    pub fn generation(&self, ino: u64) -> u32 {
        self.generations.get(&ino).copied().unwrap_or(0)
    }

    /// One more kernel lookup of a known node (the kernel's `LOOKUP(node, ".")` and
    /// `LOOKUP(node, "..")`).
    pub fn add_ref(&mut self, ino: u64) -> Result<()> {
        self.get_mut(ino)?.lookups += 1;
        Ok(())
    }

    /// Drops `n` kernel lookups of `ino`; frees the node when nothing pins it.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 && node.children == 0 {
            let parent = node.parent;
            self.remove(ino);
            self.release_child(parent);
        }
    }

    /// Records that the name (from_parent, from_name) of `ino` became (parent, name).
    /// The node moves only if that name was its location (a hard link renamed under
    /// another of its names leaves the node where it is).
    pub fn rename(
        &mut self,
        ino: u64,
        from_parent: u64,
        from_name: &OsStr,
        parent: u64,
        name: &OsStr,
    ) -> Result<()> {
        if self.child(from_parent, from_name) == Some(ino) {
            self.name_remove(from_parent, from_name);
        }
        self.name_insert(parent, name, ino);
        let node = self.get(ino)?;
        if node.parent != from_parent || node.name() != from_name {
            return Ok(());
        }
        self.relocate(ino, parent, name);
        if from_parent != parent {
            if let Some(p) = self.nodes.get_mut(&parent) {
                p.children += 1;
            }
            self.release_child(from_parent);
        }
        Ok(())
    }

    /// Forgets the name (parent, name). When it was the node's own location, the node
    /// moves to another known name of the same object (`aliases`: the object has other
    /// hard links), or, if none is known, keeps `detached` for open handles.
    pub fn unname(
        &mut self,
        parent: u64,
        name: &OsStr,
        aliases: bool,
        detached: Option<Arc<OwnedFd>>,
    ) {
        let Some(ino) = self.name_remove(parent, name) else {
            return;
        };
        let Some(n) = self.nodes.get(&ino) else {
            return;
        };
        if n.parent != parent || n.name() != name {
            return;
        }
        // Its own location is unnamed: any other name leading to it is an alias.
        let other = if aliases {
            self.aliases
                .iter()
                .find(|(_, v)| **v == ino)
                .map(|((p, nm), _)| (*p, nm.clone()))
        } else {
            None
        };
        match other {
            Some((p, nm)) => {
                // The object lives on under another name: move the node there.
                self.relocate(ino, p, &nm);
                if let Some(n) = self.nodes.get_mut(&ino) {
                    if n.index().is_some() {
                        // That name may be a lower one still: reach the object through
                        // its index entry, which is always one of its links.
                        n.upper = false;
                    }
                }
                self.reparent_count(parent, p);
            }
            None => {
                if let Some(n) = self.nodes.get_mut(&ino) {
                    n.upper = false;
                    if n.index().is_none() {
                        // An indexed object lives on in the index; anything else only
                        // through the handle taken before the removal.
                        n.set_detached(detached);
                        n.set_lower(None);
                    }
                }
            }
        }
    }

    /// Iterates all nodes (for tests and statistics).
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Node)> {
        self.nodes.iter()
    }
}

/// Where the object behind a node is now.
#[derive(Debug, Clone)]
pub enum RealLoc {
    Upper(PathBuf),
    Lower(LowerIdx, PathBuf),
    /// An indexed hard-linked file reached through a lower name not linked up yet.
    Index(Arc<str>),
    /// No name any more: only this handle reaches it.
    Detached(Arc<OwnedFd>),
}

impl RealLoc {
    pub fn at(&self) -> Where {
        match self {
            RealLoc::Upper(_) | RealLoc::Index(_) => Where::Upper,
            RealLoc::Lower(l, _) => Where::Lower(*l),
            RealLoc::Detached(_) => Where::Unknown,
        }
    }
}

/// Where a node lives now.
impl UnionFs {
    /// Where the object of `ino` lives now.
    pub(crate) fn real(&self, ino: u64) -> Result<RealLoc> {
        let nodes = self.nodes.read();
        let node = nodes.get(ino)?;
        if let Some(fd) = node.detached() {
            return Ok(RealLoc::Detached(fd.clone()));
        }
        if node.upper {
            return Ok(RealLoc::Upper(nodes.path_of(ino)?));
        }
        if let Some(name) = node.index() {
            return Ok(RealLoc::Index(name.clone()));
        }
        match node.lower() {
            Some(_) => match node.lower_path() {
                Some((top, path)) => Ok(RealLoc::Lower(top, path)),
                None => Err(Error::Invariant("lower reference without layers")),
            },
            None => Err(Error::NotFound),
        }
    }

    /// An `O_PATH` handle on the real object.
    pub(crate) fn open_real_path(&self, loc: &RealLoc) -> Result<Arc<OwnedFd>> {
        match loc {
            RealLoc::Upper(p) => Ok(Arc::new(self.path_fd(LayerKey::Upper, p)?)),
            RealLoc::Lower(l, p) => Ok(Arc::new(self.path_fd(LayerKey::Lower(*l), p)?)),
            RealLoc::Index(name) => {
                let index = self
                    .stack
                    .index
                    .as_ref()
                    .ok_or(Error::Invariant("index entry without index"))?;
                Ok(Arc::new(
                    sys::open_path(index.as_fd(), Path::new(&**name))
                        .at("open index", Where::Work)?,
                ))
            }
            RealLoc::Detached(fd) => Ok(fd.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(is_dir: bool) -> Node {
        Node::new(is_dir, false, None)
    }

    fn table() -> NodeTable {
        NodeTable::new(
            true,
            Arc::new(LowerRef::new(PathBuf::new(), Arc::from(vec![0u16]))),
        )
    }

    #[test]
    fn paths_follow_renames_and_forget_frees_chains() {
        let mut t = table();
        t.add_lookup(10, ROOT_INO, OsStr::new("a"), || leaf(true));
        t.add_lookup(11, 10, OsStr::new("b"), || leaf(true));
        t.add_lookup(12, 11, OsStr::new("c"), || leaf(false));
        assert_eq!(t.path_of(12).unwrap(), PathBuf::from("a/b/c"));
        t.rename(10, ROOT_INO, OsStr::new("a"), ROOT_INO, OsStr::new("z"))
            .unwrap();
        assert_eq!(t.path_of(12).unwrap(), PathBuf::from("z/b/c"));
        assert_eq!(t.child(ROOT_INO, OsStr::new("z")), Some(10));
        assert_eq!(t.child(ROOT_INO, OsStr::new("a")), None);
        // Parents stay while a child is pinned, even after their own forget.
        t.forget(10, 1);
        t.forget(11, 1);
        assert_eq!(t.len(), 4);
        t.forget(12, 1);
        assert_eq!(t.len(), 1, "the whole chain is freed with its last child");
    }

    #[test]
    fn lookups_count_and_aliases() {
        let mut t = table();
        t.add_lookup(20, ROOT_INO, OsStr::new("x"), || leaf(false));
        t.add_lookup(20, ROOT_INO, OsStr::new("y"), || leaf(false));
        assert_eq!(t.get(20).unwrap().lookups, 2);
        assert_eq!(t.child(ROOT_INO, OsStr::new("x")), Some(20));
        assert_eq!(t.child(ROOT_INO, OsStr::new("y")), Some(20));
        t.forget(20, 1);
        assert!(t.get(20).is_ok());
        t.forget(20, 1);
        assert!(t.get(20).is_err());
    }

    fn entry() -> Node {
        let dir = Arc::new(LowerRef::new(PathBuf::from("d"), Arc::from(vec![0u16])));
        Node::new(false, false, Some(Lower::Entry { dir, layer: 0 }))
    }

    #[test]
    fn a_moved_lower_entry_keeps_its_lower_name() {
        let mut t = table();
        t.add_lookup(30, ROOT_INO, OsStr::new("x"), entry);
        assert_eq!(
            t.get(30).unwrap().lower_path().unwrap().1,
            PathBuf::from("d/x")
        );
        // The same lower object found under another hard link: the node follows it.
        t.add_lookup(30, ROOT_INO, OsStr::new("y"), entry);
        let n = t.get(30).unwrap();
        assert_eq!(n.name(), "y");
        assert_eq!(n.lower_path().unwrap().1, PathBuf::from("d/x"));
        assert_eq!(t.child(ROOT_INO, OsStr::new("x")), Some(30));
        assert_eq!(t.child(ROOT_INO, OsStr::new("y")), Some(30));
        // Resolved again under its new name: the lower name is the node's own again.
        t.get_mut(30).unwrap().set_lower(entry().lower().cloned());
        assert_eq!(
            t.get(30).unwrap().lower_path().unwrap().1,
            PathBuf::from("d/y")
        );
    }

    #[test]
    fn unname_moves_a_node_to_its_other_name() {
        let mut t = table();
        t.add_lookup(40, ROOT_INO, OsStr::new("a"), || leaf(false));
        t.get_mut(40).unwrap().upper = true;
        // An upper hard link found under another name: the node stays at "a".
        t.add_lookup(40, ROOT_INO, OsStr::new("b"), || leaf(false));
        assert_eq!(t.get(40).unwrap().name(), "a");
        t.unname(ROOT_INO, OsStr::new("a"), true, None);
        assert_eq!(t.get(40).unwrap().name(), "b");
        assert_eq!(t.child(ROOT_INO, OsStr::new("a")), None);
        assert_eq!(t.child(ROOT_INO, OsStr::new("b")), Some(40));
        // Renaming the last name moves the node and its index entry.
        t.rename(40, ROOT_INO, OsStr::new("b"), ROOT_INO, OsStr::new("c"))
            .unwrap();
        assert_eq!(t.child(ROOT_INO, OsStr::new("b")), None);
        assert_eq!(t.child(ROOT_INO, OsStr::new("c")), Some(40));
        t.unname(ROOT_INO, OsStr::new("c"), false, None);
        assert_eq!(t.child(ROOT_INO, OsStr::new("c")), None);
        assert!(t.get(40).unwrap().lower().is_none());
    }

    #[test]
    fn a_name_taken_by_another_object_leads_to_it() {
        let mut t = table();
        t.add_lookup(50, ROOT_INO, OsStr::new("n"), || leaf(false));
        t.add_lookup(51, ROOT_INO, OsStr::new("n"), || leaf(false));
        assert_eq!(t.child(ROOT_INO, OsStr::new("n")), Some(51));
        // The old node still sits at "n" but the name no longer leads to it: forgetting
        // it must leave the new node's name alone.
        t.forget(50, 1);
        assert_eq!(t.child(ROOT_INO, OsStr::new("n")), Some(51));
        t.forget(51, 1);
        assert_eq!(t.child(ROOT_INO, OsStr::new("n")), None);
        assert_eq!(t.len(), 1);
    }
}
