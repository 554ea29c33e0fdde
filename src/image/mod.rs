//! Image import/export beside the filesystem core: `rlayerfs unpack` turns an OCI image,
//! a `docker save` archive or a single layer tarball into one directory per layer in kernel
//! overlayfs' on-disk format (plus `rlayerfs-image.json` describing the stack), and
//! `rlayerfs commit` turns an upper directory back into an OCI layer tarball, optionally
//! appended to an image as a new one.
//!
//! Files: `archive` (compression by magic bytes, hashing streams), `oci` (index, manifest,
//! config types), `source` (reading layouts and archives, platform selection, digest
//! checks), `unpack`, `commit` (its `tar_writer`, the `walk` of an upper, `append` to an
//! image), `description` (rlayerfs-image.json, lowerdir list),
//! `error` (the one [`ImageError`]), `cli` (clap arguments and entry points).
//!
//! Every name of a tar or an upper is resolved one component at a time relative to a
//! directory fd, through `crate::sys::component`: none is ever joined onto a path.
//!
//! Semantics, in short (details in each file's docs):
//! - Whiteouts in a layer become overlay whiteouts (char 0/0, else `.wh.NAME` files);
//!   opaque markers become `trusted.overlay.opaque=y` (else `user.overlay.opaque=y` plus
//!   the `.wh..wh..opq` file). Whiteouts are recorded, never applied to lower layers.
//! - Absolute entry names are taken relative to the layer root (like GNU tar); `..` is
//!   refused, as is any entry whose parent path crosses a symlink.
//! - Digests of blobs and diff_ids are verified; a mismatch fails the whole unpack, which
//!   then leaves nothing behind.
//! - Unprivileged: ownership is recorded in `user.containers.override_stat` instead of
//!   chown; device nodes are refused unless `--devices=skip|placeholder`; `trusted.*`
//!   xattrs that cannot be set are skipped with a warning.

pub mod archive;
pub mod cli;
pub mod commit;
pub mod description;
pub mod error;
pub mod layer_marks;
pub mod lower_links;
pub mod oci;
pub mod source;
pub mod unpack;

pub use archive::Compression;
pub use cli::{run_commit, run_unpack, CommitArgs, UnpackArgs};
pub use commit::{
    append_to_image, commit, commit_over, commit_over_to_writer, commit_to_writer, AppendReport,
    CommitOptions, CommitReport,
};
pub use description::{image_lowerdirs, lowerdir_option, ImageDescription, LayerRecord};
pub use error::{ImageError, Refusal};
pub use oci::{Digest, Platform};
pub use source::InputFormat;
pub use unpack::{unpack, DeviceMode, UnpackOptions, UnpackReport};
