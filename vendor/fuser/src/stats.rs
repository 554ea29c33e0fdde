//! Requests dispatched, per FUSE opcode, over every transport (an rlayerfs patch: the daemon
//! reports requests per operation). One relaxed atomic add per request.

use std::sync::atomic::{AtomicU64, Ordering};

/// Opcodes are small numbers (FUSE_STATX is 52); anything larger shares the last slot.
const SLOTS: usize = 64;

static COUNTS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];

pub(crate) fn count(opcode: u32) {
    let slot = (opcode as usize).min(SLOTS - 1);
    COUNTS[slot].fetch_add(1, Ordering::Relaxed);
}

/// `(opcode, requests)` for every opcode seen since the process started (the last slot,
/// 63, counts every opcode from 63 up).
pub fn request_counts() -> Vec<(u32, u64)> {
    COUNTS
        .iter()
        .enumerate()
        .filter_map(|(op, c)| {
            let n = c.load(Ordering::Relaxed);
            (n > 0).then_some((op as u32, n))
        })
        .collect()
}
