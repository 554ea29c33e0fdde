//! rlayerfs: a union filesystem over FUSE with kernel-overlayfs semantics.
//!
//! Layout: `format` defines the on-disk format once; `union` is the FUSE-independent core
//! (lookup, readdir, copy-up, mutations); `fuse` is the thin fuser adapter; `mount` owns
//! the session, `mount_config` turns the parsed options into the core's and fuser's;
//! `options` parses mount options; `image` (unpack/commit) and `bench` (the
//! `rlayerfs bench` command) sit beside the core; `generate` writes the man pages and
//! completions; `printable` escapes what messages quote; `sys` holds the raw syscalls.

pub mod bench;
pub mod cli;
pub mod error;
pub mod format;
pub mod fuse;
pub mod generate;
pub mod image;
pub mod mount;
pub mod mount_config;
pub mod options;
pub mod passthrough;
pub mod printable;
pub mod sys;
pub mod transport;
pub mod union;
