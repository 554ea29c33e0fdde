//! On-disk formats: the rules of how overlay metadata is encoded in the layers, each in
//! the kernel's format where the kernel has one, with no I/O (callers read and write the
//! xattrs), so every rule is unit-tested on its own.
//!
//! - [`metacopy`]: `overlay.metacopy`, the mark of a file copied up without its data
//!   (`struct ovl_metacopy`).

pub mod metacopy;
