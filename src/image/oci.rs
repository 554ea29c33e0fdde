//! OCI image-spec (and Docker schema 2 / `docker save`) document types.
//!
//! Unknown fields are kept (`#[serde(flatten)] extra`) so a document read and written back
//! (as `commit --image` does with index.json) loses nothing. Digests are validated on parse:
//! only `sha256:` followed by 64 lower-case hex digits is accepted, which also guarantees that
//! `blobs/sha256/<hex>` is a safe relative path.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ImageError;

/// OCI image index media type.
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest media type.
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config media type.
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker manifest list media type.
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 2 manifest media type.
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The annotation naming a manifest in an OCI layout's index.json (its "tag").
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The content of the `oci-layout` file.
pub const OCI_LAYOUT_FILE: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// A content digest; only sha256 is supported.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lower-case hex>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some(hex) = s.strip_prefix("sha256:") else {
            return Err(format!(
                "unsupported digest {s:?} (only sha256 is supported)"
            ));
        };
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!("malformed digest {s:?}"));
        }
        Ok(Digest(s.to_string()))
    }

    /// Builds a digest from an already computed lower-case sha256 hex string.
    pub(crate) fn from_sha256_hex(hex: &str) -> Self {
        Digest(format!("sha256:{hex}"))
    }

    /// The full `sha256:…` text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        self.0.strip_prefix("sha256:").unwrap_or(&self.0)
    }

    /// The path of this blob inside an OCI layout.
    pub fn blob_path(&self) -> String {
        format!("blobs/sha256/{}", self.hex())
    }

    /// A short form for messages: `sha256:0123456789ab`.
    pub fn short(&self) -> String {
        let h = self.hex();
        format!("sha256:{}", &h[..h.len().min(12)])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The platform a manifest is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Platform {
    /// CPU architecture (`amd64`, `arm64`, …).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// CPU variant (`v7`, `v8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Everything else (`os.version`, `os.features`, …).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || ImageError::Usage(format!("bad platform {s:?}: expected OS/ARCH[/VARIANT]"));
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: normalise_arch(parts[1]).to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
            extra: BTreeMap::new(),
        })
    }

    /// Does a manifest for `have` run on this (wanted) platform?
    pub fn matches(&self, have: &Platform) -> bool {
        if self.os != have.os || self.architecture != normalise_arch(&have.architecture) {
            return false;
        }
        match (&self.variant, &have.variant) {
            (None, _) => true,
            (Some(w), Some(h)) => w == h,
            // arm64 images usually omit the default variant v8.
            (Some(w), None) => self.architecture == "arm64" && w == "v8",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

fn normalise_arch(a: &str) -> &str {
    match a {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A content descriptor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content (optional in very old documents).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// Digest of the referenced blob.
    pub digest: Digest,
    /// Size of the referenced blob in bytes.
    pub size: u64,
    /// Platform (index entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Everything else (`urls`, `artifactType`, …).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Descriptor {
    /// The `org.opencontainers.image.ref.name` annotation.
    pub fn ref_name(&self) -> Option<&str> {
        self.annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_REF_NAME))
            .map(String::as_str)
    }
}

/// An image index (index.json of a layout, or a nested multi-platform index).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests (or nested indexes).
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// An image manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The `rootfs` of an image config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Digests of the uncompressed layer tars, base first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// The parts of an image config this module reads; the whole document is kept as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageConfig {
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// Layer diff_ids.
    pub rootfs: RootFs,
    /// Everything else.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One element of a `docker save` manifest.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DockerManifestEntry {
    /// Path of the config JSON inside the archive.
    #[serde(rename = "Config")]
    pub config: String,
    /// Tags of the image.
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    /// Paths of the layer tars inside the archive, base first.
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Is `mt` an index / manifest list?
pub fn is_index_type(mt: &str) -> bool {
    mt == MT_OCI_INDEX || mt == MT_DOCKER_LIST
}

/// Is `mt` an image manifest?
pub fn is_manifest_type(mt: &str) -> bool {
    mt == MT_OCI_MANIFEST || mt == MT_DOCKER_MANIFEST
}

/// Parses a JSON document, naming it in the error.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        what: what.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_parsing() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(Digest::parse(&good).is_ok());
        for bad in [
            "sha256:",
            "sha512:abcd",
            "sha256:../../../../etc/passwd",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "a".repeat(63)),
            &format!("sha256:{}/", "a".repeat(63)),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn platform_matching() {
        let want = Platform::parse("linux/amd64").unwrap();
        let have = |os: &str, arch: &str, v: Option<&str>| Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: v.map(Into::into),
            extra: BTreeMap::new(),
        };
        assert!(want.matches(&have("linux", "amd64", None)));
        assert!(want.matches(&have("linux", "x86_64", None)));
        assert!(!want.matches(&have("linux", "arm64", None)));
        assert!(!want.matches(&have("windows", "amd64", None)));
        let arm = Platform::parse("linux/arm64/v8").unwrap();
        assert!(arm.matches(&have("linux", "arm64", None)));
        assert!(arm.matches(&have("linux", "aarch64", Some("v8"))));
        let armv7 = Platform::parse("linux/arm/v7").unwrap();
        assert!(!armv7.matches(&have("linux", "arm", Some("v6"))));
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//").is_err());
    }

    #[test]
    fn unknown_fields_survive() {
        let j = r#"{"schemaVersion":2,"manifests":[],"foo":{"bar":1}}"#;
        let idx: Index = parse_json(j.as_bytes(), "t").unwrap();
        let back = serde_json::to_string(&idx).unwrap();
        assert!(back.contains(r#""foo":{"bar":1}"#), "{back}");
    }
}
