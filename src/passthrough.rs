//! FUSE passthrough bookkeeping (kernel ≥ 6.9, CAP_SYS_ADMIN): reads, writes and mmap of
//! an open file go straight to the real file, without a request to the daemon.
//!
//! The kernel requires every concurrent open of one inode to use one backing file. So a
//! backing is registered per inode on its first open and dropped with its last release.
//! The one conflict is a write-open of a file whose lower object is open through
//! passthrough: the copy-up then gets a fresh inode (the old one stays bound to the lower
//! file for its readers, as kernel overlayfs readers keep the lower file), the kernel's
//! dentry is invalidated, and the writer gets ESTALE, which makes the kernel look the name
//! up again and retry the open once, reaching the upper copy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use fuser::{BackingId, Notifier};
use parking_lot::Mutex;

/// One registered backing file.
#[derive(Debug)]
struct Backing {
    id: BackingId,
    /// Whether it is the upper (or index) object.
    upper: bool,
    opens: usize,
}

/// Backings by inode, and whether passthrough is on.
#[derive(Debug, Default)]
pub struct Passthrough {
    enabled: AtomicBool,
    backings: Mutex<HashMap<u64, Backing>>,
    notifier: OnceLock<Notifier>,
}

/// What to do with an open.
#[derive(Debug, PartialEq, Eq)]
pub enum Conflict {
    /// No lower backing in the way.
    None,
    /// Lower readers hold the inode's backing while this open needs the upper copy.
    LowerReaders,
}

impl Passthrough {
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    pub fn disable(&self) {
        self.enabled.store(false, Ordering::Relaxed);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set_notifier(&self, n: Notifier) {
        let _ = self.notifier.set(n);
    }

    pub fn notifier(&self) -> Option<&Notifier> {
        self.notifier.get()
    }

    /// Holds the table while an open is decided and registered, so that two opens of one
    /// inode cannot register two backings.
    pub fn lock(&self) -> PassthroughGuard<'_> {
        PassthroughGuard {
            map: self.backings.lock(),
        }
    }
}

/// The locked backing table.
pub struct PassthroughGuard<'a> {
    map: parking_lot::MutexGuard<'a, HashMap<u64, Backing>>,
}

impl PassthroughGuard<'_> {
    /// Whether a write-open of `ino` collides with lower-backed readers.
    pub fn conflict(&self, ino: u64, wants_upper: bool) -> Conflict {
        match self.map.get(&ino) {
            Some(b) if !b.upper && wants_upper => Conflict::LowerReaders,
            _ => Conflict::None,
        }
    }

    /// The inode's backing, registering one with `make` on its first open.
    pub fn acquire(
        &mut self,
        ino: u64,
        upper: bool,
        make: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> std::io::Result<&BackingId> {
        use std::collections::hash_map::Entry;
        let b = match self.map.entry(ino) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert(Backing {
                id: make()?,
                upper,
                opens: 0,
            }),
        };
        b.opens += 1;
        Ok(&b.id)
    }

    /// One passthrough open of `ino` ended; the backing goes with the last one.
    pub fn release(&mut self, ino: u64) {
        if let Some(b) = self.map.get_mut(&ino) {
            b.opens = b.opens.saturating_sub(1);
            if b.opens == 0 {
                self.map.remove(&ino);
            }
        }
    }

    /// Whether `ino` has passthrough opens.
    pub fn has(&self, ino: u64) -> bool {
        self.map.contains_key(&ino)
    }
}
