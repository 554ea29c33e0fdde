//! `DEST/rlayerfs-image.json`: the machine-readable description of an unpacked image, and
//! the lowerdir list derived from it.
//!
//! Layers are listed base first (image order) with their directory relative to DEST, blob
//! digest, diff_id, media type and the on-disk whiteout/opaque format that was written.
//! Overlay wants the opposite order, so [`image_lowerdirs`] reverses it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::archive::Compression;
use super::error::ImageError;
use super::oci::{parse_json, Digest, Platform};
use super::source::SourceKind;
use crate::sys::component;

/// File name of the description inside DEST.
pub const DESCRIPTION_FILE: &str = "rlayerfs-image.json";
/// Directory holding one subdirectory per layer inside DEST.
pub const LAYERS_DIR: &str = "layers";
/// Largest description accepted.
const MAX_DESCRIPTION: u64 = 64 << 20;

/// How whiteouts were written in a layer directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhiteoutFormat {
    /// Character device 0/0 (kernel overlayfs format).
    CharDevice,
    /// Empty regular file `.wh.NAME` (fuse-overlayfs fallback; mknod was refused).
    WhFile,
}

/// How opaque directories were marked in a layer directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpaqueFormat {
    /// `trusted.overlay.opaque=y`.
    TrustedXattr,
    /// `user.overlay.opaque=y` plus a `.wh..wh..opq` file (unprivileged).
    UserXattrAndFile,
}

/// Where the image came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceRecord {
    /// Input kind.
    pub kind: SourceKind,
    /// Input path as given.
    pub path: String,
    /// Selected reference (OCI ref name / docker tag), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Repo tags of a docker archive image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repo_tags: Vec<String>,
}

/// One unpacked layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Directory relative to DEST (`layers/N`).
    pub dir: String,
    /// sha256 of the blob as read (compressed).
    pub digest: Digest,
    /// Blob size in bytes.
    pub size: u64,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Media type declared by the manifest, or derived from the detected compression.
    pub media_type: String,
    /// Detected compression.
    pub compression: Compression,
    /// Number of tar entries.
    pub entries: u64,
    /// Whiteout format written, if the layer has whiteouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whiteouts: Option<WhiteoutFormat>,
    /// Opaque format written, if the layer has opaque directories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opaques: Option<OpaqueFormat>,
}

/// The content of `rlayerfs-image.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageDescription {
    /// Format version of this file (1).
    pub schema_version: u32,
    /// Where the image came from.
    pub source: SourceRecord,
    /// Digest of the image manifest, when the input had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<Digest>,
    /// Media type of the image manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_media_type: Option<String>,
    /// Digest of the image config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<Digest>,
    /// Platform of the selected manifest, when the index declared one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Tag given by `commit --image DEST --tag NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Layers, base first.
    pub layers: Vec<LayerRecord>,
    /// The image config, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
}

impl ImageDescription {
    /// Reads `dest/rlayerfs-image.json`.
    pub fn read(dest: &Path) -> Result<Self, ImageError> {
        let path = dest.join(DESCRIPTION_FILE);
        let f = File::open(&path).map_err(|e| ImageError::io("open", &path, e))?;
        let mut buf = Vec::new();
        f.take(MAX_DESCRIPTION)
            .read_to_end(&mut buf)
            .map_err(|e| ImageError::io("read", &path, e))?;
        parse_json(&buf, &path.display().to_string())
    }

    /// Writes the description as `DESCRIPTION_FILE` in `dir` (which is `dir_path`),
    /// atomically (temporary file, then rename).
    pub fn write_at(&self, dir: BorrowedFd<'_>, dir_path: &Path) -> Result<(), ImageError> {
        let tmp = format!(".{DESCRIPTION_FILE}.tmp");
        let tmp_path = dir_path.join(&tmp);
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| ImageError::Json {
            what: DESCRIPTION_FILE.into(),
            source,
        })?;
        let _ = component::unlink_at(dir, tmp.as_bytes(), false);
        let mut f = component::create_file_at(dir, tmp.as_bytes(), 0o644)
            .map_err(|e| ImageError::io("create", &tmp_path, e))?;
        f.write_all(&bytes)
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.sync_all())
            .map_err(|e| ImageError::io("write", &tmp_path, e))?;
        component::rename_at(dir, tmp.as_bytes(), dir, DESCRIPTION_FILE.as_bytes())
            .map_err(|e| ImageError::io("rename", dir_path.join(DESCRIPTION_FILE), e))
    }
}

/// Checks that a layer directory named in a description stays inside DEST.
fn check_layer_dir(dir: &str) -> bool {
    !dir.is_empty()
        && !dir.starts_with('/')
        && dir
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// The lower directories of an unpacked image, **top layer first** (overlay's `lowerdir`
/// order), as absolute paths.
pub fn image_lowerdirs(dest: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let desc = ImageDescription::read(dest)?;
    let base = std::fs::canonicalize(dest).map_err(|e| ImageError::io("resolve", dest, e))?;
    let mut out = Vec::with_capacity(desc.layers.len());
    for l in desc.layers.iter().rev() {
        if !check_layer_dir(&l.dir) {
            return Err(ImageError::Format {
                what: dest.join(DESCRIPTION_FILE).display().to_string(),
                problem: format!("layer directory {:?} is not inside the image", l.dir),
            });
        }
        let p = base.join(&l.dir);
        let md = std::fs::symlink_metadata(&p).map_err(|e| ImageError::io("stat", &p, e))?;
        if !md.is_dir() {
            return Err(ImageError::Format {
                what: p.display().to_string(),
                problem: "layer is not a directory".into(),
            });
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err(ImageError::Format {
            what: dest.join(DESCRIPTION_FILE).display().to_string(),
            problem: "image has no layers".into(),
        });
    }
    Ok(out)
}

/// Joins directories into an overlay `lowerdir=` value: `:` separated, with `\`, `:` and
/// `,` escaped by a backslash (the kernel's and rlayerfs' option parsers unescape them).
pub fn lowerdir_option(dirs: &[PathBuf]) -> String {
    let mut s = String::new();
    for (i, d) in dirs.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        for ch in d.to_string_lossy().chars() {
            if matches!(ch, '\\' | ':' | ',') {
                s.push('\\');
            }
            s.push(ch);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdir_escaping() {
        let dirs = [
            PathBuf::from("/a/b"),
            PathBuf::from("/with:colon"),
            PathBuf::from("/x,y\\z"),
        ];
        assert_eq!(lowerdir_option(&dirs), r"/a/b:/with\:colon:/x\,y\\z");
    }

    #[test]
    fn layer_dirs_stay_inside() {
        assert!(check_layer_dir("layers/0"));
        for bad in [
            "",
            "/etc",
            "../x",
            "layers/../../x",
            "layers//0",
            "./layers",
        ] {
            assert!(!check_layer_dir(bad), "{bad}");
        }
    }
}
