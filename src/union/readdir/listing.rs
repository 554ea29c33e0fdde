//! A directory handle's listing: the snapshot taken at its first read, in cookie order.
//!
//! The snapshot keeps offsets valid across telldir/seekdir and while entries are removed
//! (`rm -rf` walks a stable snapshot). Offsets are cookies derived from the names, the
//! same in every listing of a directory: the kernel may keep a listing in its cache
//! (`FOPEN_CACHE_DIR`) and serve a `seekdir` of one open directory from a listing another
//! open directory read later; a cookie then still means "after this name".

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::Result;
use crate::union::readdir::DirEntry;
use crate::union::Ino;
use crate::union::UnionFs;

/// A merged listing in cookie order: entry `i` is followed by offset `offs[i]`.
///
/// `.` and `..` come first with offsets 1 and 2; every other name has the offset
/// [`name_cookie`] gives it (above 2, below 2^63), so an offset handed out by one listing
/// means the same place in any other listing of the directory: "after this name". Two
/// names of one listing with the same cookie (a 63-bit hash: practically never) get
/// consecutive offsets.
#[derive(Debug, Default)]
pub struct Listing {
    pub(crate) entries: Vec<DirEntry>,
    pub(crate) offs: Vec<u64>,
    /// Set for a directory that is only in the upper layer: see [`UpperOnly`].
    upper_only: Option<UpperOnly>,
}

/// The upper directory a listing of an upper-only directory was taken from, and its
/// ctime then. Kernel overlayfs reads such a directory straight from the upper
/// filesystem, so a name removed while the directory is being read is not returned
/// after (xfstests generic/637); merged directories are read from a snapshot, whose
/// removed names are still returned, as here.
#[derive(Debug)]
struct UpperOnly {
    dir: Arc<std::os::fd::OwnedFd>,
    ctime: (i64, i64),
}

/// Checks, for a listing whose upper-only directory changed since it was taken, that a
/// name is still there (see [`UpperOnly`]).
#[derive(Debug)]
pub struct Recheck(Arc<std::os::fd::OwnedFd>);

impl Recheck {
    /// False when `name` is gone from the directory (one `fstatat`).
    pub fn exists(&self, name: &std::ffi::OsStr) -> bool {
        !matches!(
            rustix::fs::statat(&*self.0, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW),
            Err(rustix::io::Errno::NOENT)
        )
    }
}

fn ctime_of(dir: &impl AsFd) -> Option<(i64, i64)> {
    rustix::fs::fstat(dir)
        .ok()
        .map(|st| (st.st_ctime, st.st_ctime_nsec as i64))
}

/// The directory offset that follows `name` (stable for the daemon's life).
pub fn name_cookie(name: &std::ffi::OsStr) -> u64 {
    use std::hash::{Hash, Hasher};
    // `DefaultHasher::new()` has fixed keys: the same name always gives the same cookie.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    (h.finish() >> 1).max(3)
}

impl Listing {
    /// Orders a merged listing (`.` and `..` first) by cookie.
    pub fn new(entries: Vec<DirEntry>) -> Listing {
        let mut keyed: Vec<(u64, DirEntry)> = entries
            .into_iter()
            .map(|e| {
                let off = match e.name.as_encoded_bytes() {
                    b"." => 1,
                    b".." => 2,
                    _ => name_cookie(&e.name),
                };
                (off, e)
            })
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
        let mut offs = Vec::with_capacity(keyed.len());
        let mut out = Vec::with_capacity(keyed.len());
        for (off, e) in keyed {
            let off = match offs.last() {
                Some(&prev) if off <= prev => prev + 1,
                _ => off,
            };
            offs.push(off);
            out.push(e);
        }
        Listing {
            entries: out,
            offs,
            upper_only: None,
        }
    }

    /// Index of the first entry after offset `offset`.
    pub fn start(&self, offset: u64) -> usize {
        self.offs.partition_point(|&o| o <= offset)
    }
}

impl UnionFs {
    /// The listing of an open directory, the index of the first entry after `offset`, and
    /// whether entries must be checked before they are handed out (a [`Recheck`]: the
    /// directory is upper-only and changed since the listing was taken).
    /// Offsets stay valid while entries are removed; reading from offset 0 again
    /// (rewinddir) takes a new listing.
    pub(crate) fn listing(
        &self,
        fh: u64,
        offset: u64,
    ) -> Result<(Arc<Listing>, usize, Option<Recheck>)> {
        let d = self.handles.dir(fh)?;
        let rewind = d.served.swap(true, Ordering::Relaxed) && offset == 0;
        let current = d.entries.read().clone();
        let listing = match current {
            Some(l) if !rewind => l,
            old => match self
                .upper_only(d.ino)
                .and_then(|up| Ok((up, self.list_merged(Ino(d.ino))?)))
            {
                Ok((upper_only, fresh)) => {
                    let mut fresh = Listing::new(fresh);
                    fresh.upper_only = upper_only;
                    let fresh = Arc::new(fresh);
                    *d.entries.write() = Some(fresh.clone());
                    fresh
                }
                Err(e) => match old {
                    // A rewind of a directory that has gone since: the old listing.
                    Some(l) => l,
                    None => return Err(e),
                },
            },
        };
        let start = listing.start(offset);
        let recheck = listing
            .upper_only
            .as_ref()
            .filter(|u| ctime_of(&*u.dir) != Some(u.ctime))
            .map(|u| Recheck(u.dir.clone()));
        Ok((listing, start, recheck))
    }

    /// The upper directory of `ino` and its ctime, taken before a listing, when `ino` is
    /// only in the upper layer.
    fn upper_only(&self, ino: u64) -> Result<Option<UpperOnly>> {
        let info = self.dir_info(ino)?;
        let (Some(up), None) = (&info.upper, &info.lower) else {
            return Ok(None);
        };
        let dir = self.upper_dir(up)?;
        Ok(ctime_of(&*dir).map(|ctime| UpperOnly { dir, ctime }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::FileType;

    fn entry(name: &str) -> DirEntry {
        DirEntry {
            ino: 7,
            name: name.into(),
            kind: FileType::RegularFile,
        }
    }

    fn listing(names: &[&str]) -> Listing {
        let mut v = vec![entry("."), entry("..")];
        v.extend(names.iter().map(|n| entry(n)));
        Listing::new(v)
    }

    #[test]
    fn offsets_mean_the_same_name_in_every_listing() {
        let full = listing(&["a", "b", "c", "d", "e"]);
        assert_eq!(&full.offs[..2], &[1, 2], ". and .. come first");
        assert!(full.offs.windows(2).all(|w| w[0] < w[1]), "{:?}", full.offs);
        // A later listing with some names removed and one added.
        let later = listing(&["a", "c", "e", "z"]);
        for (i, e) in full.entries.iter().enumerate() {
            let after = full.offs[i];
            // What follows `e` in the later listing: every later name with a greater cookie.
            let rest: Vec<_> = later.entries[later.start(after)..]
                .iter()
                .map(|x| x.name.clone())
                .collect();
            let want: Vec<_> = later
                .entries
                .iter()
                .zip(&later.offs)
                .filter(|(_, o)| **o > after)
                .map(|(x, _)| x.name.clone())
                .collect();
            assert_eq!(rest, want, "after {:?}", e.name);
            if let Some(j) = later.entries.iter().position(|x| x.name == e.name) {
                assert_eq!(later.offs[j], after, "{:?} keeps its offset", e.name);
            }
        }
        assert_eq!(full.start(0), 0);
        assert_eq!(full.start(u64::MAX), full.entries.len());
    }

    #[test]
    fn cookies_are_above_dot_entries_and_below_2_63() {
        for name in ["", "a", "..", "very-long-name-0123456789", "\u{e9}t\u{e9}"] {
            let c = name_cookie(std::ffi::OsStr::new(name));
            assert!((3..1 << 63).contains(&c), "{name:?}: {c}");
        }
    }
}
