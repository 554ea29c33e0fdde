//! rlayerfs: a union filesystem over FUSE with kernel-overlayfs semantics.
//!
//! Layout: `union` is the FUSE-independent core (lookup, readdir, copy-up, mutations);
//! `fuse` is the thin fuser adapter; `mount` owns the session; `options` parses mount
//! options; `format` holds on-disk encodings of overlay metadata, without I/O; `image`
//! (unpack/commit) and `bench` (the `rlayerfs bench` command) sit beside the core;
//! `generate` writes the man pages and completions; `printable` escapes what messages
//! quote; `sys` holds the raw syscalls.

pub mod bench;
pub mod cli;
pub mod error;
pub mod format;
pub mod fuse;
pub mod generate;
pub mod image;
pub mod mount;
pub mod options;
pub mod passthrough;
pub mod printable;
pub mod sys;
pub mod transport;
pub mod union;
