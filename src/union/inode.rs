//! The inode table: which merged objects the kernel holds, where each one lives now
//! (parent and name: its upper path is derived from that chain, so a directory rename
//! moves every descendant at once), where its lower content comes from (an immutable
//! lower path and layer list, which never changes because lowers are read-only), and
//! how many kernel lookups pin it.
//!
//! Invariants: a node stays while the kernel holds lookups on it or while any node names
//! it as parent (so an upper path can always be rebuilt); `names` maps every live
//! (parent, name) to the node it leads to.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::union::layer::LowerIdx;

/// The FUSE root node id.
pub const ROOT_INO: u64 = 1;

/// Where an object's lower content lives: fixed for its whole life.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LowerRef {
    /// Path relative to every lower layer root ("" for the root).
    pub path: PathBuf,
    /// For a directory: the layers that merge into it, top first, ending at the first
    /// opaque one. For a non-directory: the one layer holding it.
    pub layers: Arc<[LowerIdx]>,
}

impl LowerRef {
    /// The top layer holding the object.
    pub fn top(&self) -> Option<LowerIdx> {
        self.layers.first().copied()
    }

    /// The lower reference of child `name` found in `layers`.
    pub fn child(&self, name: &OsStr, layers: Arc<[LowerIdx]>) -> LowerRef {
        LowerRef {
            path: self.path.join(name),
            layers,
        }
    }
}

/// One merged object the kernel knows.
#[derive(Debug)]
pub struct Node {
    pub parent: u64,
    pub name: OsString,
    pub is_dir: bool,
    /// The object exists in the upper layer at the path given by the parent chain.
    pub upper: bool,
    pub lower: Option<Arc<LowerRef>>,
    pub lookups: u64,
    /// Number of nodes whose `parent` is this node.
    pub children: u32,
    /// Set once the object lost its last name while still referenced: an `O_PATH`
    /// handle that keeps `getattr` and open handles working.
    pub detached: Option<Arc<OwnedFd>>,
    /// The detached object is a lower layer's: it must never be written.
    pub detached_lower: bool,
    /// Merged st_nlink minus the real one: lower names of a copied-up hard-linked file
    /// still count, as with kernel overlayfs `index=on` (persisted as `overlay.nlink`
    /// when the object is indexed).
    pub nlink_offset: i64,
    /// Name of the object's entry in `WORKDIR/index`, for an indexed hard-linked file.
    pub index: Option<Arc<str>>,
}

/// The table of nodes, guarded by one `RwLock` in the core, never held across I/O.
#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: HashMap<u64, Node>,
    names: HashMap<(u64, OsString), u64>,
}

impl NodeTable {
    /// A table holding only the root.
    pub fn new(root_upper: bool, root_lower: Arc<LowerRef>) -> Self {
        let mut t = NodeTable::default();
        t.nodes.insert(
            ROOT_INO,
            Node {
                parent: ROOT_INO,
                name: OsString::new(),
                is_dir: true,
                upper: root_upper,
                lower: Some(root_lower),
                lookups: 1,
                children: 0,
                detached: None,
                detached_lower: false,
                nlink_offset: 0,
                index: None,
            },
        );
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

    /// The node currently at (parent, name), if the kernel holds one.
    pub fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.names.get(&(parent, name.to_os_string())).copied()
    }

    /// The object's path relative to the layer roots, following the parent chain.
    pub fn path_of(&self, ino: u64) -> Result<PathBuf> {
        let mut parts = Vec::new();
        let mut cur = ino;
        let mut guard = 0usize;
        while cur != ROOT_INO {
            let n = self.get(cur)?;
            parts.push(n.name.as_os_str());
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
        let name_key = (parent, name.to_os_string());
        if let Some(old) = self.names.get(&name_key).copied() {
            if old != ino {
                // Another object held that name before (replaced behind the kernel's back
                // or a stale alias): the name now leads to `ino`.
                self.names.remove(&name_key);
            }
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups += 1;
            let moved = node.parent != parent || node.name != name;
            // A non-directory reached through another hard link keeps the location of its
            // upper copy; otherwise the node follows the name it was last found at.
            if moved && (node.is_dir || !node.upper || node.detached.is_some()) {
                let old_parent = node.parent;
                let old_name = std::mem::replace(&mut node.name, name.to_os_string());
                node.parent = parent;
                node.detached = None;
                // A directory has one name: the old one is stale. A non-directory keeps
                // its other names (hard links) mapped.
                if node.is_dir && self.names.get(&(old_parent, old_name.clone())) == Some(&ino) {
                    self.names.remove(&(old_parent, old_name));
                }
                self.reparent_count(old_parent, parent);
            }
        } else {
            let mut node = make();
            node.parent = parent;
            node.name = name.to_os_string();
            node.lookups = 1;
            self.nodes.insert(ino, node);
            if let Some(p) = self.nodes.get_mut(&parent) {
                p.children += 1;
            }
        }
        self.names.insert(name_key, ino);
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
        if let Some(n) = self.nodes.remove(&ino) {
            let key = (n.parent, n.name);
            if self.names.get(&key) == Some(&ino) {
                self.names.remove(&key);
            }
        }
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
        let old_key = (from_parent, from_name.to_os_string());
        if self.names.get(&old_key) == Some(&ino) {
            self.names.remove(&old_key);
        }
        self.names.insert((parent, name.to_os_string()), ino);
        let node = self.get_mut(ino)?;
        if node.parent != from_parent || node.name != from_name {
            return Ok(());
        }
        node.name = name.to_os_string();
        node.parent = parent;
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
        let Some(ino) = self.names.remove(&(parent, name.to_os_string())) else {
            return;
        };
        let Some(n) = self.nodes.get(&ino) else {
            return;
        };
        if n.parent != parent || n.name != name {
            return;
        }
        let other = if aliases {
            self.names
                .iter()
                .find(|(_, v)| **v == ino)
                .map(|(k, _)| k.clone())
        } else {
            None
        };
        match other {
            Some((p, nm)) => {
                // The object lives on under another name: move the node there.
                if let Some(n) = self.nodes.get_mut(&ino) {
                    n.parent = p;
                    n.name = nm;
                    if n.index.is_some() {
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
                    if n.index.is_none() {
                        // An indexed object lives on in the index; anything else only
                        // through the handle taken before the removal.
                        n.detached = detached;
                        n.lower = None;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(is_dir: bool) -> Node {
        Node {
            parent: 0,
            name: OsString::new(),
            is_dir,
            upper: false,
            lower: None,
            lookups: 0,
            children: 0,
            detached: None,
            detached_lower: false,
            nlink_offset: 0,
            index: None,
        }
    }

    fn table() -> NodeTable {
        NodeTable::new(
            true,
            Arc::new(LowerRef {
                path: PathBuf::new(),
                layers: Arc::from(vec![0u16]),
            }),
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
}
