//! Directory fds held for the layers, so that names are resolved with one `openat` of a
//! single component relative to their parent's fd instead of walking a whole path from the
//! layer root each time (a path walk costs as many steps as the tree is deep).
//!
//! Lower layers never change: their fds stay valid for ever and are only evicted by the
//! LRU bound. The upper layer changes through this daemon only; a directory removal or
//! rename drops the cached paths at and below the directory, since they could then name
//! another directory.

use std::ffi::OsStr;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;
use rustix::fs::{Mode, OFlags};
use rustix::io::{Errno, Result};

use crate::union::layer::LowerIdx;

/// Which layer a directory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerKey {
    Upper,
    Lower(LowerIdx),
}

/// How many directory fds are kept per cache at most (bounded again by RLIMIT_NOFILE).
pub const MAX_CACHED_DIRS: usize = 4096;

/// LRU caches of `O_PATH` directory fds by (layer, relative path).
#[derive(Debug)]
pub struct DirFdCache {
    upper: Mutex<LruCache<PathBuf, Arc<OwnedFd>>>,
    lower: Mutex<LruCache<(LowerIdx, PathBuf), Arc<OwnedFd>>>,
}

fn open_child_dir(parent: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

impl DirFdCache {
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(16)).unwrap_or(NonZeroUsize::MIN);
        DirFdCache {
            upper: Mutex::new(LruCache::new(cap)),
            lower: Mutex::new(LruCache::new(cap)),
        }
    }

    fn cached(&self, layer: LayerKey, path: &Path) -> Option<Arc<OwnedFd>> {
        match layer {
            LayerKey::Upper => self.upper.lock().get(path).cloned(),
            LayerKey::Lower(l) => self.lower.lock().get(&(l, path.to_path_buf())).cloned(),
        }
    }

    fn store(&self, layer: LayerKey, path: PathBuf, fd: Arc<OwnedFd>) {
        match layer {
            LayerKey::Upper => {
                self.upper.lock().put(path, fd);
            }
            LayerKey::Lower(l) => {
                self.lower.lock().put((l, path), fd);
            }
        }
    }

    /// Forgets the upper directory at `path` and everything cached below it (after it was
    /// removed or renamed).
    pub fn invalidate_upper(&self, path: &Path) {
        let mut cache = self.upper.lock();
        if path.as_os_str().is_empty() {
            cache.clear();
            return;
        }
        use std::os::unix::ffi::OsStrExt;
        let want = path.as_os_str().as_bytes();
        // Byte comparison: component-wise `starts_with` is slow on very deep paths.
        let under = |p: &Path| {
            let b = p.as_os_str().as_bytes();
            b.starts_with(want) && (b.len() == want.len() || b[want.len()] == b'/')
        };
        let stale: Vec<PathBuf> = cache
            .iter()
            .filter(|(p, _)| under(p))
            .map(|(p, _)| p.clone())
            .collect();
        for p in stale {
            cache.pop(&p);
        }
    }

    /// Forgets exactly the upper directory at `path` (an empty directory was removed:
    /// nothing below it can be cached).
    pub fn forget_upper(&self, path: &Path) {
        self.upper.lock().pop(path);
    }

    /// The directory at `path` in a layer whose root is `root`, opened component by
    /// component from the nearest cached ancestor, never following a symlink.
    pub fn dir(&self, layer: LayerKey, root: BorrowedFd<'_>, path: &Path) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = self.cached(layer, path) {
            return Ok(fd);
        }
        // Find the nearest cached ancestor, then walk down from it.
        let comps: Vec<&OsStr> = path
            .components()
            .map(|c| match c {
                Component::Normal(n) => Ok(n),
                _ => Err(Errno::INVAL),
            })
            .collect::<Result<_>>()?;
        let mut start = 0;
        let mut base: Option<Arc<OwnedFd>> = None;
        for i in (1..comps.len()).rev() {
            let prefix: PathBuf = comps[..i].iter().collect();
            if let Some(fd) = self.cached(layer, &prefix) {
                base = Some(fd);
                start = i;
                break;
            }
        }
        let mut prefix: PathBuf = comps[..start].iter().collect();
        for name in &comps[start..] {
            let parent = base.as_ref().map(|b| b.as_fd()).unwrap_or(root);
            let fd = Arc::new(open_child_dir(parent, name)?);
            prefix.push(name);
            self.store(layer, prefix.clone(), fd.clone());
            base = Some(fd);
        }
        match base {
            Some(fd) => Ok(fd),
            // The layer root itself, kept like any other directory: without it every
            // request in the root directory would open and close it again.
            None => {
                let fd = Arc::new(open_child_dir(root, OsStr::new("."))?);
                self.store(layer, PathBuf::new(), fd.clone());
                Ok(fd)
            }
        }
    }
}

/// Splits a relative path into its parent and last name ("" has no name).
pub fn split(path: &Path) -> (&Path, Option<&OsStr>) {
    (path.parent().unwrap_or(Path::new("")), path.file_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_from_cached_ancestors_and_refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("a/evil")).unwrap();
        let root =
            rustix::fs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let cache = DirFdCache::new(16);
        let c = cache
            .dir(LayerKey::Lower(0), root.as_fd(), Path::new("a/b/c"))
            .unwrap();
        assert_eq!(
            rustix::fs::fstat(&*c).unwrap().st_ino,
            std::fs::metadata(dir.path().join("a/b/c"))
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .unwrap()
        );
        assert!(cache.cached(LayerKey::Lower(0), Path::new("a/b")).is_some());
        assert!(cache
            .dir(LayerKey::Lower(0), root.as_fd(), Path::new("a/evil"))
            .is_err());
        assert!(cache
            .dir(LayerKey::Lower(0), root.as_fd(), Path::new("a/../a"))
            .is_err());
        let r = cache
            .dir(LayerKey::Upper, root.as_fd(), Path::new(""))
            .unwrap();
        assert!(rustix::fs::fstat(&*r).is_ok());
        // The root is kept too: the second ask gives the same fd, and forgetting the
        // whole upper drops it.
        let again = cache
            .dir(LayerKey::Upper, root.as_fd(), Path::new(""))
            .unwrap();
        assert!(Arc::ptr_eq(&r, &again));
        cache.invalidate_upper(Path::new(""));
        assert!(cache.cached(LayerKey::Upper, Path::new("")).is_none());
    }
}
