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
//!
//! Beside the modes, the table keeps every open handle (so its release gives its open
//! back) and counts, by inode, the passthrough handles open for writing: the kernel does
//! not see such writes change the size and times it caches, so the adapter gives those
//! inodes no attribute TTL while one is open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use fuser::BackingId;
use parking_lot::Mutex;

/// The I/O mode of an open inode.
#[derive(Debug)]
enum Mode<B> {
    Passthrough { id: B, opens: usize },
    Cached { opens: usize },
}

/// How to answer one open.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenKind {
    Passthrough,
    Cached,
}

/// One registered open handle.
#[derive(Debug, Clone, Copy)]
struct Handle {
    ino: u64,
    /// A passthrough handle open for writing: counted in `writers`.
    writer: bool,
}

/// Modes by inode, open handles, and whether passthrough is on.
///
/// Lock order: `modes` before `handles` before `writers`; a release takes them one at a
/// time. `B` is the kernel's backing reference (a plain value in the unit tests).
#[derive(Debug)]
pub struct Passthrough<B = BackingId> {
    enabled: AtomicBool,
    modes: Mutex<HashMap<u64, Mode<B>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    writers: Mutex<HashMap<u64, usize>>,
}

impl<B> Default for Passthrough<B> {
    fn default() -> Self {
        Passthrough {
            enabled: AtomicBool::new(false),
            modes: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
        }
    }
}

impl<B> Passthrough<B> {
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
    pub fn lock(&self) -> PassthroughGuard<'_, B> {
        PassthroughGuard {
            map: self.modes.lock(),
            table: self,
        }
    }

    /// Registers handle `fh` of `ino`, counted as a writer when `writer`; true when it is
    /// the inode's first.
    fn add_handle(&self, fh: u64, ino: u64, writer: bool) -> bool {
        self.handles.lock().insert(fh, Handle { ino, writer });
        writer && {
            let mut w = self.writers.lock();
            let n = w.entry(ino).or_insert(0);
            *n += 1;
            *n == 1
        }
    }

    /// Whether a passthrough handle of `ino` is open for writing.
    pub fn has_writer(&self, ino: u64) -> bool {
        self.writers.lock().contains_key(&ino)
    }

    /// Handle `fh` was released: its open of the inode ends (see
    /// [`PassthroughGuard::release`]) and it no longer counts as a writer. A handle never
    /// registered is ignored.
    pub fn release_handle(&self, fh: u64) {
        let Some(h) = self.handles.lock().remove(&fh) else {
            return;
        };
        self.lock().release(h.ino);
        if h.writer {
            let mut w = self.writers.lock();
            if let Some(n) = w.get_mut(&h.ino) {
                *n -= 1;
                if *n == 0 {
                    w.remove(&h.ino);
                }
            }
        }
    }
}

/// The locked table.
pub struct PassthroughGuard<'a, B = BackingId> {
    map: parking_lot::MutexGuard<'a, HashMap<u64, Mode<B>>>,
    table: &'a Passthrough<B>,
}

impl<B> PassthroughGuard<'_, B> {
    /// How an open of `ino` (on an upper object or not) must be answered.
    pub fn kind(&self, ino: u64, upper: bool) -> OpenKind {
        match (upper, self.map.get(&ino)) {
            (false, _) | (true, Some(Mode::Cached { .. })) => OpenKind::Cached,
            (true, _) => OpenKind::Passthrough,
        }
    }

    /// Registers handle `fh`, a cached open of `ino`.
    pub fn add_cached(&mut self, fh: u64, ino: u64) {
        match self.map.entry(ino).or_insert(Mode::Cached { opens: 0 }) {
            Mode::Cached { opens } | Mode::Passthrough { opens, .. } => *opens += 1,
        }
        self.table.add_handle(fh, ino, false);
    }

    /// Registers handle `fh`, a passthrough open of `ino` (for writing when `writable`),
    /// and gives the inode's backing, made with `make` on its first passthrough open, with
    /// whether `fh` is the inode's first writer: attributes the kernel caches from before
    /// are then stale as soon as it writes. Nothing is registered on an error.
    pub fn add_passthrough(
        &mut self,
        fh: u64,
        ino: u64,
        writable: bool,
        make: impl FnOnce() -> std::io::Result<B>,
    ) -> std::io::Result<(&B, bool)> {
        if let std::collections::hash_map::Entry::Vacant(v) = self.map.entry(ino) {
            v.insert(Mode::Passthrough {
                id: make()?,
                opens: 0,
            });
        }
        let Some(Mode::Passthrough { id, opens }) = self.map.get_mut(&ino) else {
            return Err(std::io::Error::from_raw_os_error(libc::EBUSY));
        };
        *opens += 1;
        Ok((id, self.table.add_handle(fh, ino, writable)))
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

#[cfg(test)]
mod tests {
    use super::*;

    type Table = Passthrough<u32>;

    fn refused() -> std::io::Result<u32> {
        Err(std::io::Error::from_raw_os_error(libc::EPERM))
    }

    #[test]
    fn cached_handles_keep_the_inode_cached_until_the_last_release() {
        let pt = Table::default();
        pt.lock().add_cached(1, 7);
        pt.lock().add_cached(2, 7);
        assert_eq!(pt.lock().kind(7, true), OpenKind::Cached);
        // An inode in cached mode gets no backing: its maker is not even asked.
        let asked = std::cell::Cell::new(false);
        let refused_here = pt
            .lock()
            .add_passthrough(3, 7, false, || {
                asked.set(true);
                Ok(1)
            })
            .is_err();
        assert!(refused_here && !asked.get());
        pt.release_handle(1);
        assert_eq!(pt.lock().kind(7, true), OpenKind::Cached);
        pt.release_handle(2);
        assert_eq!(pt.lock().kind(7, true), OpenKind::Passthrough);
        // A lower object is always served cached; an unknown handle changes nothing.
        assert_eq!(pt.lock().kind(7, false), OpenKind::Cached);
        pt.release_handle(99);
        assert_eq!(pt.lock().kind(7, true), OpenKind::Passthrough);
    }

    #[test]
    fn one_backing_per_inode_and_writers_counted_until_their_release() {
        let pt = Table::default();
        let mut made = 0;
        let mut open = |fh, writable| {
            let mut g = pt.lock();
            let (id, first) = g
                .add_passthrough(fh, 8, writable, || {
                    made += 1;
                    Ok(40 + made)
                })
                .expect("passthrough open");
            (*id, first)
        };
        // The first writer says so, a second does not, a reader is no writer; all share
        // the backing made for the first open.
        assert_eq!(open(10, true), (41, true));
        assert_eq!(open(11, true), (41, false));
        assert_eq!(open(12, false), (41, false));
        assert_eq!(made, 1);
        assert!(pt.has_writer(8));
        pt.release_handle(10);
        pt.release_handle(12);
        assert!(pt.has_writer(8));
        assert_eq!(pt.lock().kind(8, false), OpenKind::Cached);
        pt.release_handle(11);
        assert!(!pt.has_writer(8));
        // The backing went with the last open: a refused maker now fails the open and
        // registers nothing.
        assert!(pt.lock().add_passthrough(13, 8, true, refused).is_err());
        assert!(!pt.has_writer(8));
        pt.release_handle(13);
        assert_eq!(pt.lock().kind(8, true), OpenKind::Passthrough);
    }
}
