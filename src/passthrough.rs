//! FUSE passthrough bookkeeping (kernel ≥ 6.9, CAP_SYS_ADMIN): reads, writes and mmap of
//! an open upper file go straight to the real file, without a request to the daemon.
//!
//! The kernel keeps each inode in one I/O mode at a time: every concurrent open of an
//! inode must either share one backing file or use none. Files open from a lower layer are
//! served by the daemon (cached I/O), because kernel overlayfs moves such a reader to the
//! upper copy when another open copies the file up, and a passthrough backing cannot be
//! switched; so an inode with lower (cached) opens gets cached opens only, until they are
//! all released. An inode whose object is in the upper layer gets one backing shared by
//! all its opens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use fuser::BackingId;
use parking_lot::Mutex;

/// The I/O mode of an open inode.
#[derive(Debug)]
enum Mode {
    Passthrough { id: BackingId, opens: usize },
    Cached { opens: usize },
}

/// How to answer one open.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenKind {
    Passthrough,
    Cached,
}

/// Modes by inode, and whether passthrough is on.
#[derive(Debug, Default)]
pub struct Passthrough {
    enabled: AtomicBool,
    modes: Mutex<HashMap<u64, Mode>>,
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

    /// Holds the table while an open is decided and registered.
    pub fn lock(&self) -> PassthroughGuard<'_> {
        PassthroughGuard {
            map: self.modes.lock(),
        }
    }
}

/// The locked table.
pub struct PassthroughGuard<'a> {
    map: parking_lot::MutexGuard<'a, HashMap<u64, Mode>>,
}

impl PassthroughGuard<'_> {
    /// How an open of `ino` (on an upper object or not) must be answered.
    pub fn kind(&self, ino: u64, upper: bool) -> OpenKind {
        match (upper, self.map.get(&ino)) {
            (false, _) | (true, Some(Mode::Cached { .. })) => OpenKind::Cached,
            (true, _) => OpenKind::Passthrough,
        }
    }

    /// Registers a cached open of `ino`.
    pub fn add_cached(&mut self, ino: u64) {
        match self.map.entry(ino).or_insert(Mode::Cached { opens: 0 }) {
            Mode::Cached { opens } | Mode::Passthrough { opens, .. } => *opens += 1,
        }
    }

    /// The inode's backing, registering one with `make` on its first passthrough open.
    pub fn add_passthrough(
        &mut self,
        ino: u64,
        make: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> std::io::Result<&BackingId> {
        if let std::collections::hash_map::Entry::Vacant(v) = self.map.entry(ino) {
            v.insert(Mode::Passthrough {
                id: make()?,
                opens: 0,
            });
        }
        match self.map.get_mut(&ino) {
            Some(Mode::Passthrough { id, opens }) => {
                *opens += 1;
                Ok(id)
            }
            _ => Err(std::io::Error::from_raw_os_error(libc::EBUSY)),
        }
    }

    /// One registered open of `ino` ended; the mode (and backing) goes with the last one.
    pub fn release(&mut self, ino: u64) {
        let last = match self.map.get_mut(&ino) {
            Some(Mode::Cached { opens }) | Some(Mode::Passthrough { opens, .. }) => {
                *opens = opens.saturating_sub(1);
                *opens == 0
            }
            None => false,
        };
        if last {
            self.map.remove(&ino);
        }
    }
}
