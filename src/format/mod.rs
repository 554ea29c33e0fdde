//! The on-disk format: every name and value rlayerfs reads from or writes to a layer, a
//! workdir or an image layer, defined once, each in the kernel's format where the kernel
//! has one. The union core (`crate::union`), the image code (`crate::image`) and the tests
//! take them from here; nothing here does I/O (callers read and write the xattrs), so every
//! rule is unit-tested on its own.
//!
//! The reference is kernel overlayfs (Documentation/filesystems/overlayfs.rst), then what
//! fuse-overlayfs and containers/storage write, then the OCI image-spec (layer.md) for tar
//! layers. Submodules:
//! - [`whiteout`]: whiteout objects and names (`.wh.NAME`, char 0/0), the opaque marker
//!   file, the OCI tar names, and which whiteout a mount writes;
//! - [`xattr`]: overlay xattr names per namespace (`trusted.overlay.`, `user.overlay.`,
//!   `user.fuseoverlayfs.`), opaque values, private and escaped names, rlayerfs's own marks;
//! - [`redirect`]: the value of `overlay.redirect`;
//! - [`origin`]: `overlay.origin` file handles, the workdir's `index/` and `work/`, and
//!   `overlay.nlink`;
//! - [`metacopy`]: `overlay.metacopy`, the mark of a file copied up without its data
//!   (`struct ovl_metacopy`);
//! - [`override_stat`]: the ownership override `UID:GID:MODE[:TYPE]`;
//! - [`acl`]: the POSIX ACL xattr value (`system.posix_acl_*`): header, entry tags, entries.

pub mod acl;
pub mod metacopy;
pub mod origin;
pub mod override_stat;
pub mod redirect;
pub mod whiteout;
pub mod xattr;
