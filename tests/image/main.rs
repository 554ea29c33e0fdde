//! The image code without a FUSE mount (kernel overlayfs mounts check the unpacked trees
//! where root allows): input formats, hostile inputs, umoci/skopeo interoperability,
//! parsers fed arbitrary bytes, commit → unpack round trips and the OCI whiteout table.
//! One module per concern, one crate so that one build links them all; the Docker cycle
//! through live mounts is `tests/mounted/image.rs`.

#[path = "../common/mod.rs"]
mod common;

mod formats;
mod hostile;
mod interop;
mod parsers;
mod roundtrip;
mod whiteouts;
