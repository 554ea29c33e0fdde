//! Reading an image input: a single layer tarball, an OCI image layout (directory or tar),
//! or a `docker save` archive (old `<id>/layer.tar` style and Docker ≥ 25 OCI style).
//!
//! An archive is indexed once (headers only, data skipped by seeking); members are then read
//! in place with positional reads, so nothing is extracted twice. A compressed archive is
//! first decompressed into the unpack's own staging directory. Member names are normalised
//! (`./` and leading `/` dropped) and links between members are followed only within the
//! archive. Every blob reached through a descriptor is checked against its size and digest.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::archive::{decompress, sha256_digest, Compression};
use super::error::ImageError;
use super::oci::{
    is_index_type, is_manifest_type, parse_json, Descriptor, Digest, DockerManifestEntry,
    ImageConfig, Index, Manifest, Platform,
};
use crate::sys::component;

/// Largest JSON document (index, manifest, config) read into memory: far above real ones
/// (a few KiB), low enough that a hostile input cannot exhaust memory.
const MAX_JSON: u64 = 32 << 20;
/// How deep image indexes may nest, and how many links between archive members are followed.
const MAX_DEPTH: usize = 8;
/// Name of the decompressed copy of a compressed image archive inside the staging directory.
pub(crate) const SCRATCH_TAR: &str = "source.tar";

/// What kind of input to expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum InputFormat {
    /// Detect from the content.
    #[default]
    Auto,
    /// A single layer tarball (plain, gzip or zstd).
    Layer,
    /// An OCI image layout, as a directory or a tar.
    Oci,
    /// A `docker save` archive.
    Docker,
}

/// What the input turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// A single layer tarball.
    Layer,
    /// An OCI image layout.
    OciLayout,
    /// A `docker save` archive.
    DockerArchive,
}

pub(crate) enum Member {
    Data { offset: u64, size: u64 },
    HardLink(String),
    Symlink(String),
    Other,
}

/// Random access to the files of an image input.
pub(crate) enum Store {
    /// A directory (OCI layout or extracted docker save); files opened beneath it.
    Dir { fd: OwnedFd, path: PathBuf },
    /// An uncompressed tar archive, indexed.
    Tar {
        file: File,
        path: PathBuf,
        members: HashMap<String, Member>,
    },
    /// A single layer file: every name opens the file itself.
    Single { path: PathBuf },
}

/// A reader of a byte range of a file using positional reads.
struct RangeReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive member is truncated",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Normalises an archive member name: drops `.`, empty components and a leading `/`;
/// resolves `..` lexically, refusing to climb above the root.
pub(crate) fn normalise_member(name: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

impl Store {
    fn describe(&self) -> String {
        match self {
            Store::Dir { path, .. } | Store::Tar { path, .. } | Store::Single { path } => {
                path.display().to_string()
            }
        }
    }

    /// Does the input contain `name`?
    pub(crate) fn exists(&self, name: &str) -> bool {
        match self {
            Store::Dir { fd, .. } => component::open_beneath(fd.as_fd(), name).is_ok(),
            Store::Tar { .. } => self.resolve(name).is_ok(),
            Store::Single { .. } => true,
        }
    }

    fn resolve(&self, name: &str) -> io::Result<(u64, u64)> {
        let Store::Tar { members, .. } = self else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        let mut cur = normalise_member(name).ok_or(io::ErrorKind::NotFound)?;
        for _ in 0..MAX_DEPTH {
            match members.get(&cur) {
                Some(Member::Data { offset, size }) => return Ok((*offset, *size)),
                Some(Member::HardLink(t)) => {
                    cur = normalise_member(t).ok_or(io::ErrorKind::NotFound)?;
                }
                Some(Member::Symlink(t)) => {
                    let base = match cur.rfind('/') {
                        Some(i) if !t.starts_with('/') => format!("{}/{}", &cur[..i], t),
                        _ => t.clone(),
                    };
                    cur = normalise_member(&base).ok_or(io::ErrorKind::NotFound)?;
                }
                Some(Member::Other) | None => return Err(io::ErrorKind::NotFound.into()),
            }
        }
        Err(io::Error::other("too many links between archive members"))
    }

    /// Opens `name` for reading; returns the reader and the size.
    pub(crate) fn open(
        &self,
        name: &str,
        referenced_by: &str,
    ) -> Result<(Box<dyn Read + '_>, u64), ImageError> {
        let missing = || ImageError::MissingBlob {
            blob: name.to_string(),
            referenced_by: referenced_by.to_string(),
        };
        match self {
            Store::Single { path } => {
                let f = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
                let size = f
                    .metadata()
                    .map_err(|e| ImageError::io("stat", path, e))?
                    .len();
                Ok((Box::new(f), size))
            }
            Store::Dir { fd, path } => {
                let f = match component::open_beneath(fd.as_fd(), name) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
                    Err(e) => return Err(ImageError::io("open", path.join(name), e)),
                };
                let md = f
                    .metadata()
                    .map_err(|e| ImageError::io("stat", path.join(name), e))?;
                if !md.is_file() {
                    return Err(missing());
                }
                Ok((Box::new(f), md.len()))
            }
            Store::Tar { file, .. } => {
                let (offset, size) = self.resolve(name).map_err(|_| missing())?;
                let end = offset.checked_add(size).ok_or_else(missing)?;
                Ok((
                    Box::new(RangeReader {
                        file,
                        pos: offset,
                        end,
                    }),
                    size,
                ))
            }
        }
    }

    /// Reads a small member (a JSON document) whole.
    pub(crate) fn read_small(
        &self,
        name: &str,
        referenced_by: &str,
    ) -> Result<Vec<u8>, ImageError> {
        let (r, size) = self.open(name, referenced_by)?;
        if size > MAX_JSON {
            return Err(ImageError::Format {
                what: format!("{} {name}", self.describe()),
                problem: format!("document of {size} bytes is too large"),
            });
        }
        let mut buf = Vec::new();
        r.take(MAX_JSON)
            .read_to_end(&mut buf)
            .map_err(|source| ImageError::Corrupt {
                what: format!("{} {name}", self.describe()),
                source,
            })?;
        Ok(buf)
    }

    /// Reads the blob of a descriptor and checks its size and digest.
    pub(crate) fn read_blob(
        &self,
        desc: &Descriptor,
        referenced_by: &str,
    ) -> Result<Vec<u8>, ImageError> {
        let name = desc.digest.blob_path();
        let bytes = self.read_small(&name, referenced_by)?;
        check_blob(&bytes, &desc.digest, Some(desc.size), &name)?;
        Ok(bytes)
    }
}

/// Checks bytes against a digest (and size).
pub(crate) fn check_blob(
    bytes: &[u8],
    digest: &Digest,
    size: Option<u64>,
    what: &str,
) -> Result<(), ImageError> {
    let actual = sha256_digest(bytes);
    if &actual != digest {
        return Err(ImageError::DigestMismatch {
            what: what.to_string(),
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    if let Some(size) = size {
        if size != bytes.len() as u64 {
            return Err(ImageError::Format {
                what: what.to_string(),
                problem: format!("size {} differs from the declared {size}", bytes.len()),
            });
        }
    }
    Ok(())
}

fn index_tar(file: File, path: &Path) -> Result<Store, ImageError> {
    let corrupt = |source| ImageError::Corrupt {
        what: path.display().to_string(),
        source,
    };
    let mut members = HashMap::new();
    {
        let mut ar = tar::Archive::new(&file);
        for entry in ar.entries_with_seek().map_err(corrupt)? {
            let entry = entry.map_err(corrupt)?;
            let raw = entry.path_bytes();
            let Some(name) = normalise_member(&String::from_utf8_lossy(&raw)) else {
                continue;
            };
            let link = || {
                entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default()
            };
            let m = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Member::Data {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Link => Member::HardLink(link()),
                tar::EntryType::Symlink => Member::Symlink(link()),
                _ => Member::Other,
            };
            members.insert(name, m);
        }
    }
    Ok(Store::Tar {
        file,
        path: path.to_path_buf(),
        members,
    })
}

/// Does this first member name look like an image archive rather than a root filesystem?
fn image_like_name(name: &str) -> bool {
    let n = normalise_member(name).unwrap_or_default();
    let first = n.split('/').next().unwrap_or("");
    let first_stem = first.strip_suffix(".json").unwrap_or(first);
    matches!(
        first,
        "blobs" | "oci-layout" | "index.json" | "manifest.json" | "repositories"
    ) || (first_stem.len() == 64 && first_stem.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Opens an image input and finds out what it is.
///
/// `scratch` is the staging directory, used to hold a decompressed copy of a compressed
/// image archive.
pub(crate) fn open_source(
    path: &Path,
    format: InputFormat,
    scratch: BorrowedFd<'_>,
    scratch_path: &Path,
) -> Result<(Store, SourceKind), ImageError> {
    let md = std::fs::metadata(path).map_err(|e| ImageError::io("stat", path, e))?;
    if md.is_dir() {
        let fd = component::open_dir_path(path).map_err(|e| ImageError::io("open", path, e))?;
        let store = Store::Dir {
            fd,
            path: path.to_path_buf(),
        };
        let kind = kind_of_store(&store, format).ok_or_else(|| ImageError::Format {
            what: path.display().to_string(),
            problem: "directory is neither an OCI image layout (oci-layout, index.json) \
                      nor an extracted docker save (manifest.json)"
                .into(),
        })?;
        return Ok((store, kind));
    }
    if format == InputFormat::Layer {
        return Ok((
            Store::Single {
                path: path.to_path_buf(),
            },
            SourceKind::Layer,
        ));
    }
    let mut f = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
    let mut magic = [0u8; 4];
    let n = f
        .read(&mut magic)
        .map_err(|e| ImageError::io("read", path, e))?;
    let compression = Compression::detect(&magic[..n]);
    let (file, tar_path) = if compression == Compression::None {
        f.rewind().map_err(|e| ImageError::io("seek", path, e))?;
        (f, path.to_path_buf())
    } else {
        // Compressed: nearly always a layer. Peek at the first member to decide whether
        // it is worth decompressing the whole thing to index it.
        if format == InputFormat::Auto && !first_member_is_image_like(path)? {
            return Ok((
                Store::Single {
                    path: path.to_path_buf(),
                },
                SourceKind::Layer,
            ));
        }
        let tmp = scratch_path.join(SCRATCH_TAR);
        let mut out = component::create_file_at(scratch, SCRATCH_TAR.as_bytes(), 0o600)
            .map_err(|e| ImageError::io("create", &tmp, e))?;
        let src = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
        let (_, mut r) = decompress(src).map_err(|source| ImageError::Corrupt {
            what: path.display().to_string(),
            source,
        })?;
        io::copy(&mut r, &mut out).map_err(|source| ImageError::Corrupt {
            what: path.display().to_string(),
            source,
        })?;
        let f = component::open_file_at(scratch, SCRATCH_TAR.as_bytes())
            .map_err(|e| ImageError::io("open", &tmp, e))?;
        (f, path.to_path_buf())
    };
    let store = match index_tar(file, &tar_path) {
        Ok(s) => s,
        // Not a readable archive: let the layer unpacker report it with entry context.
        Err(_) if format == InputFormat::Auto && compression == Compression::None => {
            return Ok((
                Store::Single {
                    path: path.to_path_buf(),
                },
                SourceKind::Layer,
            ))
        }
        Err(e) => return Err(e),
    };
    match kind_of_store(&store, format) {
        Some(kind) => Ok((store, kind)),
        None if format == InputFormat::Auto => Ok((
            Store::Single {
                path: path.to_path_buf(),
            },
            SourceKind::Layer,
        )),
        None => Err(ImageError::Format {
            what: path.display().to_string(),
            problem: format!("not a {format:?} image archive"),
        }),
    }
}

fn first_member_is_image_like(path: &Path) -> Result<bool, ImageError> {
    let f = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
    let corrupt = |source| ImageError::Corrupt {
        what: path.display().to_string(),
        source,
    };
    let (_, r) = decompress(f).map_err(corrupt)?;
    let mut ar = tar::Archive::new(r);
    let entries = ar.entries().map_err(corrupt)?;
    for e in entries {
        // Let the layer unpacker report errors with their context.
        let Ok(e) = e else { return Ok(false) };
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        // Skip the archive's own root ("./"), then judge by the first real member.
        if normalise_member(&name).is_some_and(|n| n.is_empty()) {
            continue;
        }
        return Ok(image_like_name(&name));
    }
    Ok(false)
}

fn kind_of_store(store: &Store, format: InputFormat) -> Option<SourceKind> {
    let oci = store.exists("oci-layout") && store.exists("index.json");
    let docker = store.exists("manifest.json");
    match format {
        InputFormat::Oci if oci => Some(SourceKind::OciLayout),
        InputFormat::Docker if docker => Some(SourceKind::DockerArchive),
        InputFormat::Auto if oci => Some(SourceKind::OciLayout),
        InputFormat::Auto if docker && docker_manifest_usable(store) => {
            Some(SourceKind::DockerArchive)
        }
        _ => None,
    }
}

fn docker_manifest_usable(store: &Store) -> bool {
    let Ok(bytes) = store.read_small("manifest.json", "manifest.json") else {
        return false;
    };
    let Ok(entries) = serde_json::from_slice::<Vec<DockerManifestEntry>>(&bytes) else {
        return false;
    };
    !entries.is_empty()
        && entries
            .iter()
            .all(|e| store.exists(&e.config) && e.layers.iter().all(|l| store.exists(l)))
}

/// One layer to unpack.
#[derive(Debug, Clone)]
pub(crate) struct LayerSpec {
    /// Member name in the store.
    pub member: String,
    /// Digest of the blob as stored (compressed), when the image declares one.
    pub digest: Option<Digest>,
    /// Size of the blob, when declared.
    pub size: Option<u64>,
    /// Digest of the uncompressed tar, when the config declares one.
    pub diff_id: Option<Digest>,
    /// Media type, when declared.
    pub media_type: Option<String>,
}

/// Everything needed to unpack one image.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub layers: Vec<LayerSpec>,
    pub config: Option<Value>,
    pub config_digest: Option<Digest>,
    pub manifest_digest: Option<Digest>,
    pub manifest_media_type: Option<String>,
    pub platform: Option<Platform>,
    pub reference: Option<String>,
    pub repo_tags: Vec<String>,
}

struct Candidate {
    desc: Descriptor,
    top_ref: Option<String>,
}

fn collect_candidates(
    store: &Store,
    descs: &[Descriptor],
    top_ref: Option<&str>,
    depth: usize,
    what: &str,
    out: &mut Vec<Candidate>,
) -> Result<(), ImageError> {
    for d in descs {
        let r = top_ref
            .map(str::to_string)
            .or_else(|| d.ref_name().map(str::to_string));
        let mut mt = d.media_type.clone();
        if mt.is_empty() {
            // Media type omitted: look inside.
            let bytes = store.read_blob(d, what)?;
            let v: Value = parse_json(&bytes, &d.digest.blob_path())?;
            mt = if v.get("manifests").is_some() {
                super::oci::MT_OCI_INDEX.into()
            } else {
                super::oci::MT_OCI_MANIFEST.into()
            };
        }
        if is_index_type(&mt) {
            if depth >= MAX_DEPTH {
                return Err(ImageError::Format {
                    what: what.to_string(),
                    problem: "image indexes nest too deeply".into(),
                });
            }
            let bytes = store.read_blob(d, what)?;
            let idx: Index = parse_json(&bytes, &d.digest.blob_path())?;
            collect_candidates(
                store,
                &idx.manifests,
                r.as_deref(),
                depth + 1,
                &d.digest.blob_path(),
                out,
            )?;
        } else if is_manifest_type(&mt) {
            out.push(Candidate {
                desc: d.clone(),
                top_ref: r,
            });
        }
        // Anything else (artifacts, attestations by type) is not an image.
    }
    Ok(())
}

fn candidate_label(c: &Candidate) -> String {
    let mut s = c.top_ref.clone().unwrap_or_else(|| c.desc.digest.short());
    if let Some(p) = &c.desc.platform {
        s.push_str(&format!(" ({p})"));
    }
    s
}

/// Picks the manifest of an OCI layout for `platform` (and `reference`, when given).
pub(crate) fn select_manifest(
    store: &Store,
    platform: &Platform,
    reference: Option<&str>,
) -> Result<(Descriptor, Manifest, Option<String>), ImageError> {
    let index_bytes = store.read_small("index.json", "oci-layout")?;
    let index: Index = parse_json(&index_bytes, "index.json")?;
    let top: Vec<Descriptor> = match reference {
        Some(r) => index
            .manifests
            .iter()
            .filter(|d| d.ref_name() == Some(r))
            .cloned()
            .collect(),
        None => index.manifests.clone(),
    };
    let mut cands = Vec::new();
    collect_candidates(store, &top, None, 0, "index.json", &mut cands)?;
    let wanted = match reference {
        Some(r) => format!("{platform} with ref {r:?}"),
        None => platform.to_string(),
    };
    let labels = |c: &[Candidate]| c.iter().map(candidate_label).collect::<Vec<_>>();
    if reference.is_some() && top.is_empty() {
        let mut all = Vec::new();
        collect_candidates(store, &index.manifests, None, 0, "index.json", &mut all)?;
        return Err(ImageError::Selection {
            wanted,
            available: labels(&all),
        });
    }
    let exact: Vec<usize> = (0..cands.len())
        .filter(|&i| {
            cands[i]
                .desc
                .platform
                .as_ref()
                .is_some_and(|p| platform.matches(p))
        })
        .collect();
    let chosen = if exact.len() == 1 {
        exact[0]
    } else if exact.len() > 1 {
        return Err(ImageError::Selection {
            wanted: format!("{wanted} (several match: choose one with --ref)"),
            available: labels(&cands),
        });
    } else {
        let unknown: Vec<usize> = (0..cands.len())
            .filter(|&i| cands[i].desc.platform.is_none())
            .collect();
        if unknown.len() == 1 {
            unknown[0]
        } else {
            let hint = if unknown.len() > 1 {
                " (several images: choose one with --ref)"
            } else {
                ""
            };
            return Err(ImageError::Selection {
                wanted: format!("{wanted}{hint}"),
                available: labels(&cands),
            });
        }
    };
    let c = cands.swap_remove(chosen);
    let what = c.desc.digest.blob_path();
    let bytes = store.read_blob(&c.desc, "index.json")?;
    let manifest: Manifest = parse_json(&bytes, &what)?;
    Ok((c.desc, manifest, c.top_ref))
}

fn read_config(
    store: &Store,
    desc: &Descriptor,
    manifest_name: &str,
) -> Result<(Value, ImageConfig), ImageError> {
    let bytes = store.read_blob(desc, manifest_name)?;
    let name = desc.digest.blob_path();
    let v: Value = parse_json(&bytes, &name)?;
    let c: ImageConfig = parse_json(&bytes, &name)?;
    Ok((v, c))
}

fn check_layer_count(cfg: &ImageConfig, layers: usize, what: &str) -> Result<(), ImageError> {
    if cfg.rootfs.diff_ids.len() != layers {
        return Err(ImageError::Format {
            what: what.to_string(),
            problem: format!(
                "config lists {} diff_ids but the manifest has {layers} layers",
                cfg.rootfs.diff_ids.len()
            ),
        });
    }
    Ok(())
}

/// Works out which layers to unpack, verifying every document on the way.
pub(crate) fn plan(
    store: &Store,
    kind: SourceKind,
    platform: &Platform,
    reference: Option<&str>,
) -> Result<Plan, ImageError> {
    match kind {
        SourceKind::Layer => Ok(Plan {
            layers: vec![LayerSpec {
                member: String::new(),
                digest: None,
                size: None,
                diff_id: None,
                media_type: None,
            }],
            config: None,
            config_digest: None,
            manifest_digest: None,
            manifest_media_type: None,
            platform: None,
            reference: None,
            repo_tags: Vec::new(),
        }),
        SourceKind::OciLayout => {
            let (desc, manifest, top_ref) = select_manifest(store, platform, reference)?;
            let mname = desc.digest.blob_path();
            let (cfg_value, cfg) = read_config(store, &manifest.config, &mname)?;
            check_layer_count(&cfg, manifest.layers.len(), &mname)?;
            if !cfg.os.is_empty() && !cfg.architecture.is_empty() {
                let have = Platform {
                    os: cfg.os.clone(),
                    architecture: cfg.architecture.clone(),
                    variant: cfg_value
                        .get("variant")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    extra: Default::default(),
                };
                if desc.platform.is_none() && !platform.matches(&have) {
                    return Err(ImageError::Selection {
                        wanted: platform.to_string(),
                        available: vec![have.to_string()],
                    });
                }
            }
            let layers = manifest
                .layers
                .iter()
                .zip(cfg.rootfs.diff_ids.iter())
                .map(|(l, d)| LayerSpec {
                    member: l.digest.blob_path(),
                    digest: Some(l.digest.clone()),
                    size: Some(l.size),
                    diff_id: Some(d.clone()),
                    media_type: Some(l.media_type.clone()),
                })
                .collect();
            Ok(Plan {
                layers,
                config: Some(cfg_value),
                config_digest: Some(manifest.config.digest.clone()),
                manifest_digest: Some(desc.digest.clone()),
                manifest_media_type: manifest
                    .media_type
                    .clone()
                    .or(Some(desc.media_type.clone())),
                platform: desc.platform.clone(),
                reference: top_ref,
                repo_tags: Vec::new(),
            })
        }
        SourceKind::DockerArchive => {
            let bytes = store.read_small("manifest.json", "docker archive")?;
            let entries: Vec<DockerManifestEntry> = parse_json(&bytes, "manifest.json")?;
            let tags = |e: &DockerManifestEntry| e.repo_tags.clone().unwrap_or_default();
            let chosen: Vec<&DockerManifestEntry> = match reference {
                Some(r) => entries
                    .iter()
                    .filter(|e| {
                        tags(e)
                            .iter()
                            .any(|t| t == r || t.rsplit_once(':').is_some_and(|(_, tag)| tag == r))
                    })
                    .collect(),
                None => entries.iter().collect(),
            };
            let [entry] = chosen.as_slice() else {
                return Err(ImageError::Selection {
                    wanted: reference.map_or_else(
                        || "an image (several in manifest.json: choose one with --ref)".into(),
                        |r| format!("ref {r:?}"),
                    ),
                    available: entries.iter().flat_map(tags).collect(),
                });
            };
            let cfg_bytes = store.read_small(&entry.config, "manifest.json")?;
            let cfg_digest = digest_from_member_name(&entry.config);
            if let Some(d) = &cfg_digest {
                check_blob(&cfg_bytes, d, None, &entry.config)?;
            }
            let cfg_value: Value = parse_json(&cfg_bytes, &entry.config)?;
            let cfg: ImageConfig = parse_json(&cfg_bytes, &entry.config)?;
            check_layer_count(&cfg, entry.layers.len(), "manifest.json")?;
            let layers = entry
                .layers
                .iter()
                .zip(cfg.rootfs.diff_ids.iter())
                .map(|(l, d)| LayerSpec {
                    member: l.clone(),
                    digest: digest_from_member_name(l),
                    size: None,
                    diff_id: Some(d.clone()),
                    media_type: None,
                })
                .collect();
            Ok(Plan {
                layers,
                config: Some(cfg_value),
                config_digest: Some(cfg_digest.unwrap_or_else(|| sha256_digest(&cfg_bytes))),
                manifest_digest: None,
                manifest_media_type: None,
                platform: None,
                reference: reference.map(str::to_string),
                repo_tags: tags(entry),
            })
        }
    }
}

/// `blobs/sha256/<hex>` or `<hex>.json` names carry the digest of their content.
fn digest_from_member_name(name: &str) -> Option<Digest> {
    let n = normalise_member(name)?;
    let hex = n
        .strip_prefix("blobs/sha256/")
        .or_else(|| n.strip_suffix(".json"))?;
    Digest::parse(&format!("sha256:{hex}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names() {
        let table = [
            ("./a/b", Some("a/b")),
            ("/a//b/", Some("a/b")),
            ("a/../b", Some("b")),
            ("../a", None),
            ("a/../../b", None),
            ("", Some("")),
        ];
        for (input, want) in table {
            assert_eq!(normalise_member(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn image_like_names() {
        assert!(image_like_name("blobs/"));
        assert!(image_like_name("./oci-layout"));
        assert!(image_like_name(&format!("{}/layer.tar", "0a".repeat(32))));
        assert!(image_like_name(&format!("{}.json", "0a".repeat(32))));
        assert!(!image_like_name("bin/"));
        assert!(!image_like_name("./etc/passwd"));
    }

    #[test]
    fn digests_from_names() {
        let h = "ab".repeat(32);
        assert!(digest_from_member_name(&format!("blobs/sha256/{h}")).is_some());
        assert!(digest_from_member_name(&format!("{h}.json")).is_some());
        assert!(digest_from_member_name(&format!("{h}/layer.tar")).is_none());
    }
}
