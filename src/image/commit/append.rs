//! Appending a committed layer to an image: a new layer directory and config in an unpacked
//! image, or a new blob, config, manifest and index entry in an OCI image layout.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::AsFd;
use std::path::Path;

use serde_json::{json, Value};

use crate::image::archive::{sha256_digest, HashingWriter};
use crate::image::description::{ImageDescription, LayerRecord, LAYERS_DIR};
use crate::image::error::ImageError;
use crate::image::oci::{
    parse_json, Descriptor, Digest, Index, Platform, ANNOTATION_REF_NAME, MT_DOCKER_MANIFEST,
    MT_OCI_CONFIG, MT_OCI_MANIFEST,
};
use crate::image::source::{check_blob, select_manifest, Store};
use crate::image::unpack::{unpack_layer, DeviceMode};
use crate::sys::component::{self};

use super::{CommitReport, TempFile};

/// Where [`append_to_image`] put the new image.
#[derive(Debug, Clone)]
pub struct AppendReport {
    /// Digest of the new image config.
    pub config_digest: Digest,
    /// Digest of the new manifest (OCI layout only).
    pub manifest_digest: Option<Digest>,
}

/// The current time as RFC 3339 (UTC), or `SOURCE_DATE_EPOCH` when set (reproducible builds).
fn now_rfc3339() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
        });
    rfc3339(secs)
}

/// Seconds since the epoch as RFC 3339 (UTC).
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The base config with one more layer.
fn extend_config(
    base: Option<Value>,
    diff_ids: &[Digest],
    new: &Digest,
    platform: &Platform,
) -> Value {
    let mut cfg = base.unwrap_or_else(|| {
        json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        })
    });
    if let Some(obj) = cfg.as_object_mut() {
        let rootfs = obj
            .entry("rootfs")
            .or_insert_with(|| json!({"type": "layers", "diff_ids": diff_ids}));
        if let Some(ids) = rootfs.get_mut("diff_ids").and_then(Value::as_array_mut) {
            ids.push(json!(new));
        } else {
            *rootfs = json!({"type": "layers", "diff_ids": [new]});
        }
        let history = obj.entry("history").or_insert_with(|| json!([]));
        if let Some(h) = history.as_array_mut() {
            h.push(json!({"created": now_rfc3339(), "created_by": "rlayerfs commit"}));
        }
    }
    cfg
}

/// Appends the layer blob `layer` (described by `report`) to the image at `image` as a new
/// image named `tag`: an unpacked image (DEST of `unpack`) gets a new layer directory and an
/// updated description; an OCI layout gets the blob, a new config, a new manifest and an
/// index.json entry annotated with `org.opencontainers.image.ref.name=tag`. For a layout,
/// the base image is chosen like `unpack` does (`from` ref and `platform`); an empty layout
/// (fresh `umoci init`) gets a one-layer image.
pub fn append_to_image(
    image: &Path,
    layer: &Path,
    report: &CommitReport,
    tag: &str,
    from: Option<&str>,
    platform: &Platform,
) -> Result<AppendReport, ImageError> {
    if tag.is_empty() {
        return Err(ImageError::Usage("--tag must not be empty".into()));
    }
    let new = NewImage {
        layer,
        report,
        tag,
        platform,
    };
    if image
        .join(crate::image::description::DESCRIPTION_FILE)
        .is_file()
    {
        append_unpacked(image, new)
    } else if image.join("oci-layout").is_file() {
        append_oci(image, new, from)
    } else {
        Err(ImageError::Usage(format!(
            "{} is neither an unpacked image (rlayerfs-image.json) nor an OCI layout (oci-layout)",
            image.display()
        )))
    }
}

/// What [`append_to_image`] adds: the layer blob (as its commit reported it), and the new
/// image's name and platform.
#[derive(Clone, Copy)]
struct NewImage<'a> {
    layer: &'a Path,
    report: &'a CommitReport,
    tag: &'a str,
    platform: &'a Platform,
}

fn append_unpacked(
    dest: &Path,
    NewImage {
        layer,
        report,
        tag,
        platform,
    }: NewImage<'_>,
) -> Result<AppendReport, ImageError> {
    let mut desc = ImageDescription::read(dest)?;
    let dest_fd = component::open_dir_path(dest).map_err(|e| ImageError::io("open", dest, e))?;
    let layers_path = dest.join(LAYERS_DIR);
    let layers_fd = component::open_dir_at(dest_fd.as_fd(), LAYERS_DIR.as_bytes())
        .map_err(|e| ImageError::io("open", &layers_path, e))?;
    let n = desc.layers.len().to_string();
    let tmp = format!(".{n}.rlayerfs-tmp.{}", std::process::id());
    component::mkdir_at(layers_fd.as_fd(), tmp.as_bytes(), 0o700)
        .map_err(|e| ImageError::io("create", layers_path.join(&tmp), e))?;
    let cleanup = |layers_path: &Path| {
        let _ = std::fs::remove_dir_all(layers_path.join(&tmp));
    };
    let result = (|| {
        let fd = component::open_dir_at(layers_fd.as_fd(), tmp.as_bytes())
            .map_err(|e| ImageError::io("open", layers_path.join(&tmp), e))?;
        let f = File::open(layer).map_err(|e| ImageError::io("open", layer, e))?;
        let label = format!("layer {}", layer.display());
        let out = unpack_layer(
            f,
            fd,
            &label,
            DeviceMode::Auto,
            &indicatif::ProgressBar::hidden(),
        )?;
        if out.digest != report.digest {
            return Err(ImageError::DigestMismatch {
                what: label,
                expected: report.digest.to_string(),
                actual: out.digest.to_string(),
            });
        }
        component::rename_noreplace_at(
            layers_fd.as_fd(),
            tmp.as_bytes(),
            layers_fd.as_fd(),
            n.as_bytes(),
        )
        .map_err(|e| ImageError::io("rename", layers_path.join(&n), e))?;
        Ok(out)
    })();
    let out = match result {
        Ok(o) => o,
        Err(e) => {
            cleanup(&layers_path);
            return Err(e);
        }
    };
    let diff_ids: Vec<Digest> = desc.layers.iter().map(|l| l.diff_id.clone()).collect();
    let cfg = extend_config(desc.config.take(), &diff_ids, &out.diff_id, platform);
    let cfg_bytes = serde_json::to_vec(&cfg).map_err(|source| ImageError::Json {
        what: "new image config".into(),
        source,
    })?;
    let config_digest = sha256_digest(&cfg_bytes);
    desc.layers.push(LayerRecord {
        dir: format!("{LAYERS_DIR}/{n}"),
        digest: out.digest,
        size: out.size,
        diff_id: out.diff_id,
        media_type: report.compression.oci_layer_media_type().to_string(),
        compression: out.compression,
        entries: out.entries,
        whiteouts: out.whiteouts,
        opaques: out.opaques,
    });
    desc.config = Some(cfg);
    desc.config_digest = Some(config_digest.clone());
    desc.manifest_digest = None;
    desc.tag = Some(tag.to_string());
    if let Err(e) = desc.write_at(dest_fd.as_fd(), dest) {
        let _ = std::fs::remove_dir_all(layers_path.join(&n));
        return Err(e);
    }
    Ok(AppendReport {
        config_digest,
        manifest_digest: None,
    })
}

/// Writes a blob into `layout/blobs/sha256/` (temporary name, then rename).
fn put_blob(layout: &Path, bytes: &[u8]) -> Result<(Digest, u64), ImageError> {
    let d = sha256_digest(bytes);
    let target = layout.join(d.blob_path());
    if !target.exists() {
        let (tmp, mut f) = TempFile::beside(&target)?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| ImageError::io("write", &target, e))?;
        tmp.persist()?;
    }
    Ok((d, bytes.len() as u64))
}

fn append_oci(
    layout: &Path,
    NewImage {
        layer,
        report,
        tag,
        platform,
    }: NewImage<'_>,
    from: Option<&str>,
) -> Result<AppendReport, ImageError> {
    let fd = component::open_dir_path(layout).map_err(|e| ImageError::io("open", layout, e))?;
    let store = Store::Dir {
        fd,
        path: layout.to_path_buf(),
    };
    let index_bytes = store.read_small("index.json", "oci-layout")?;
    let mut index: Index = parse_json(&index_bytes, "index.json")?;
    let (base_desc, base_manifest, base_config) = if index.manifests.is_empty() && from.is_none() {
        (None, None, None)
    } else {
        let (desc, _, _) = select_manifest(&store, platform, from)?;
        let mbytes = store.read_blob(&desc, "index.json")?;
        let manifest: Value = parse_json(&mbytes, &desc.digest.blob_path())?;
        let cdesc: Descriptor =
            serde_json::from_value(manifest.get("config").cloned().unwrap_or(Value::Null))
                .map_err(|source| ImageError::Json {
                    what: desc.digest.blob_path(),
                    source,
                })?;
        let cbytes = store.read_blob(&cdesc, &desc.digest.blob_path())?;
        let config: Value = parse_json(&cbytes, &cdesc.digest.blob_path())?;
        (Some(desc), Some(manifest), Some(config))
    };

    // The layer blob.
    let blob_target = layout.join(report.digest.blob_path());
    if !blob_target.exists() {
        let mut src = File::open(layer).map_err(|e| ImageError::io("open", layer, e))?;
        let (tmp, f) = TempFile::beside(&blob_target)?;
        let mut w = HashingWriter::new(BufWriter::new(f));
        io::copy(&mut src, &mut w).map_err(|e| ImageError::io("copy", &blob_target, e))?;
        let (d, _, bw) = w.finish();
        let f = bw
            .into_inner()
            .map_err(|e| ImageError::io("write", &blob_target, e.into_error()))?;
        f.sync_all()
            .map_err(|e| ImageError::io("sync", &blob_target, e))?;
        if d != report.digest {
            return Err(ImageError::DigestMismatch {
                what: layer.display().to_string(),
                expected: report.digest.to_string(),
                actual: d.to_string(),
            });
        }
        tmp.persist()?;
    }

    let base_ids: Vec<Digest> = base_config
        .as_ref()
        .and_then(|c| c.pointer("/rootfs/diff_ids"))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let cfg = extend_config(base_config, &base_ids, &report.diff_id, platform);
    let cfg_bytes = serde_json::to_vec(&cfg).map_err(|source| ImageError::Json {
        what: "new image config".into(),
        source,
    })?;
    let (config_digest, config_size) = put_blob(layout, &cfg_bytes)?;

    let docker = base_manifest
        .as_ref()
        .and_then(|m| m.get("mediaType"))
        .and_then(Value::as_str)
        == Some(MT_DOCKER_MANIFEST);
    let layer_mt = if docker {
        report
            .compression
            .docker_layer_media_type()
            .unwrap_or(report.compression.oci_layer_media_type())
    } else {
        report.compression.oci_layer_media_type()
    };
    let mut manifest = base_manifest.unwrap_or_else(
        || json!({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST, "config": {}, "layers": []}),
    );
    let config_mt = manifest
        .pointer("/config/mediaType")
        .and_then(Value::as_str)
        .unwrap_or(MT_OCI_CONFIG)
        .to_string();
    let Some(obj) = manifest.as_object_mut() else {
        return Err(ImageError::Format {
            what: "base manifest".into(),
            problem: "not a JSON object".into(),
        });
    };
    obj.insert(
        "config".into(),
        json!({"mediaType": config_mt, "digest": config_digest, "size": config_size}),
    );
    let layers = obj.entry("layers").or_insert_with(|| json!([]));
    if let Some(l) = layers.as_array_mut() {
        l.push(json!({"mediaType": layer_mt, "digest": report.digest, "size": report.size}));
    }
    let manifest_mt = obj
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or(MT_OCI_MANIFEST)
        .to_string();
    let mbytes = serde_json::to_vec(&manifest).map_err(|source| ImageError::Json {
        what: "new manifest".into(),
        source,
    })?;
    let (manifest_digest, manifest_size) = put_blob(layout, &mbytes)?;
    // Check what we wrote reads back.
    check_blob(
        &mbytes,
        &manifest_digest,
        Some(manifest_size),
        "new manifest",
    )?;

    index.manifests.retain(|d| d.ref_name() != Some(tag));
    let mut annotations = std::collections::BTreeMap::new();
    annotations.insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
    index.manifests.push(Descriptor {
        media_type: manifest_mt,
        digest: manifest_digest.clone(),
        size: manifest_size,
        platform: base_desc.and_then(|d| d.platform),
        annotations: Some(annotations),
        extra: Default::default(),
    });
    let ibytes = serde_json::to_vec(&index).map_err(|source| ImageError::Json {
        what: "index.json".into(),
        source,
    })?;
    let index_path = layout.join("index.json");
    let (tmp, mut f) = TempFile::beside(&index_path)?;
    f.write_all(&ibytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ImageError::io("write", &index_path, e))?;
    tmp.persist()?;
    Ok(AppendReport {
        config_digest,
        manifest_digest: Some(manifest_digest),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
