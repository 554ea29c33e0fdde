//! Integration-test harness for rlayerfs: layer-stack fixtures (`fixture`), mount guards
//! for kernel overlayfs and the FUSE binary under test (`mount`), the canonical tree dump
//! (`dump`), operations and their random generator (`ops`), the differential runner
//! (`diff`), helpers for tests on live mounts (`live`), tars and image layouts for the
//! image tests (`image`) and libc wrappers (`posix`). See each module's doc.
//!
//! Environment: `RLAYERFS_TEST_BIN` selects the FUSE binary (default: the rlayerfs binary
//! cargo built; e.g. `fuse-overlayfs` as a stand-in).

#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]
// Each test binary uses a different part of the harness.
#![allow(dead_code, unused_imports)]

pub mod diff;
pub mod dump;
pub mod fixture;
pub mod image;
pub mod live;
pub mod mount;
pub mod ops;
pub mod posix;
pub mod rng;
pub mod sys;

pub use diff::{Pair, System};
pub use dump::{dump_tree, dump_tree_with, DumpOptions};
pub use fixture::{
    random_stack, random_stack_with, GenOptions, Layer, OpaqueFormat, Stack, WhiteoutFormat,
};
pub use mount::{FuseMount, KernelOverlay, MountDirs};
pub use ops::{random_ops, Op, Outcome, RenameFlags};

use std::io::Write;
use std::path::Path;

/// Why mounted tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !sys::is_root() {
        return Some("not running as root (kernel overlay mounts need it)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    None
}

/// The running test's name, from its thread (the test harness names each test's thread
/// after it; its last path segment), for temporary directories and messages. Leaked:
/// once per test.
pub fn test_name() -> &'static str {
    let thread = std::thread::current();
    let full = thread.name().unwrap_or("test");
    let name = full.rsplit("::").next().unwrap_or(full);
    Box::leak(name.to_string().into_boxed_str())
}

/// True if mounted tests can run; otherwise prints a SKIP line naming the running test
/// (bypassing the test harness's output capture, so it is always seen) and returns false.
pub fn can_mount() -> bool {
    match skip_reason() {
        None => true,
        Some(why) => {
            let _ = writeln!(std::io::stderr(), "SKIP {}: {why}", test_name());
            false
        }
    }
}

/// An unsigned integer from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}
