//! The one error type of image import/export.
//!
//! Every variant carries enough context (which layer, which tar entry, which file) for its
//! `Display` to be a single self-explaining line such as
//! `layer 2/3 (sha256:1234…): entry "a/../b": path has a ".." component`.

use std::fmt;
use std::io;
use std::path::Path;

/// Why a tar entry (or an image file) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A `..` component: it could climb out of the layer.
    DotDot,
    /// The name is empty after normalisation where a real name is required.
    EmptyName,
    /// A parent component is a symlink; following it could redirect the entry.
    ParentIsSymlink(String),
    /// A parent component exists but is not a directory.
    ParentNotDirectory(String),
    /// A hard link whose target is not an earlier entry of the same layer.
    HardLinkTargetMissing(String),
    /// A hard link to a directory, or to itself.
    HardLinkTargetInvalid(String),
    /// A symlink or hard link entry without a target.
    MissingLinkTarget,
    /// `.wh.` with nothing after it, or `.wh..`/`.wh...`.
    BadWhiteoutName,
    /// A whiteout (`.wh.NAME` or `.wh..wh..opq`) carrying data.
    WhiteoutWithContent,
    /// A whiteout or opaque marker that is a directory or a link.
    WhiteoutNotFile,
    /// A device node while device creation is not allowed (unprivileged).
    DeviceNeedsRoot,
    /// An entry type this unpacker does not handle (tar type flag).
    UnsupportedType(u8),
    /// A non-directory entry where the same layer already has a directory.
    ReplacesDirectory,
    /// The layer root (`./`) given as something other than a directory.
    RootNotDirectory,
    /// A sparse-file encoding that is not supported.
    UnsupportedSparse(String),
    /// A malformed sparse map or PAX record.
    BadSparseMap(String),
    /// A header field out of range or malformed.
    BadHeader(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::DotDot => write!(f, "path has a \"..\" component"),
            Refusal::EmptyName => write!(f, "empty name"),
            Refusal::ParentIsSymlink(p) => {
                write!(f, "parent {p:?} is a symlink (would redirect the entry)")
            }
            Refusal::ParentNotDirectory(p) => write!(f, "parent {p:?} is not a directory"),
            Refusal::HardLinkTargetMissing(t) => {
                write!(
                    f,
                    "hard link target {t:?} is not an earlier entry of this layer"
                )
            }
            Refusal::HardLinkTargetInvalid(t) => write!(f, "hard link target {t:?} is invalid"),
            Refusal::MissingLinkTarget => write!(f, "link entry has no target"),
            Refusal::BadWhiteoutName => write!(f, "malformed whiteout name"),
            Refusal::WhiteoutWithContent => write!(f, "whiteout entry carries data"),
            Refusal::WhiteoutNotFile => write!(f, "whiteout entry is not a regular file"),
            Refusal::DeviceNeedsRoot => write!(
                f,
                "device node needs root to create (use --devices=placeholder to write an \
                 empty file carrying user.containers.override_stat, or --devices=skip)"
            ),
            Refusal::UnsupportedType(t) => {
                write!(f, "unsupported tar entry type {:?}", char::from(*t))
            }
            Refusal::ReplacesDirectory => {
                write!(
                    f,
                    "non-directory entry would replace a directory of the same layer"
                )
            }
            Refusal::RootNotDirectory => write!(f, "layer root entry is not a directory"),
            Refusal::UnsupportedSparse(s) => write!(f, "unsupported sparse format {s}"),
            Refusal::BadSparseMap(s) => write!(f, "malformed sparse data: {s}"),
            Refusal::BadHeader(s) => write!(f, "bad header: {s}"),
        }
    }
}

/// Errors of `rlayerfs unpack` / `rlayerfs commit`.
#[derive(Debug)]
pub enum ImageError {
    /// A system call on a named object failed.
    Io {
        /// What was being done ("create", "read", "rename", …).
        op: &'static str,
        /// The object, as the user would name it.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// A tar entry was refused (hostile or malformed input).
    Entry {
        /// Which layer ("layer 2/3 (sha256:…)").
        layer: String,
        /// The entry name as found in the tar (lossy UTF-8).
        entry: String,
        /// Why.
        refusal: Refusal,
    },
    /// A system call failed while writing one tar entry.
    EntryIo {
        /// Which layer.
        layer: String,
        /// The entry name.
        entry: String,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A truncated or corrupt archive or compressed stream.
    Corrupt {
        /// What was being read, including the last good entry when known.
        what: String,
        /// The decoder's or tar reader's error.
        source: io::Error,
    },
    /// The input is not in a format this tool understands, or is inconsistent.
    Format {
        /// Which file or object.
        what: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A JSON document (index, manifest, config, description) did not parse.
    Json {
        /// Which document.
        what: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A blob's content does not match the digest that refers to it.
    DigestMismatch {
        /// Which blob or layer.
        what: String,
        /// The digest the image declares.
        expected: String,
        /// The digest of the bytes read.
        actual: String,
    },
    /// A manifest or index points at a blob the image does not contain.
    MissingBlob {
        /// The member path or digest.
        blob: String,
        /// Which document refers to it.
        referenced_by: String,
    },
    /// No image (or more than one) matches the requested platform / reference.
    Selection {
        /// What was asked for.
        wanted: String,
        /// What the image offers.
        available: Vec<String>,
    },
    /// A directory of the upper layer cannot be exported faithfully.
    Unsupported {
        /// The object.
        path: String,
        /// Why.
        what: String,
    },
    /// Bad command-line usage (destination exists, missing argument, …).
    Usage(String),
}

impl ImageError {
    /// An [`ImageError::Io`] for `op` on `path`.
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        ImageError::Io {
            op,
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Io { op, path, source } => write!(f, "{op} {path}: {source}"),
            ImageError::Entry {
                layer,
                entry,
                refusal,
            } => write!(f, "{layer}: entry {entry:?}: {refusal}"),
            ImageError::EntryIo {
                layer,
                entry,
                op,
                source,
            } => write!(f, "{layer}: entry {entry:?}: {op}: {source}"),
            ImageError::Corrupt { what, source } => {
                write!(f, "{what}: truncated or corrupt archive: {source}")
            }
            ImageError::Format { what, problem } => write!(f, "{what}: {problem}"),
            ImageError::Json { what, source } => write!(f, "{what}: invalid JSON: {source}"),
            ImageError::DigestMismatch {
                what,
                expected,
                actual,
            } => write!(
                f,
                "{what}: digest mismatch: expected {expected}, got {actual}"
            ),
            ImageError::MissingBlob {
                blob,
                referenced_by,
            } => write!(f, "{referenced_by}: refers to missing blob {blob}"),
            ImageError::Selection { wanted, available } => {
                if available.is_empty() {
                    write!(f, "no image matches {wanted}; the input holds no image")
                } else {
                    write!(
                        f,
                        "no single image matches {wanted}; available: {}",
                        available.join(", ")
                    )
                }
            }
            ImageError::Unsupported { path, what } => write!(f, "{path}: {what}"),
            ImageError::Usage(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for ImageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ImageError::Io { source, .. }
            | ImageError::EntryIo { source, .. }
            | ImageError::Corrupt { source, .. } => Some(source),
            ImageError::Json { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Shorthand used across the module.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
