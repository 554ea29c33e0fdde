//! Helpers of the image tests: tar construction with full control over names (hostile
//! ones included), OCI layouts and docker archives made from them, a guarded parent
//! directory for escape checks. Trees are compared with the harness's one dump
//! ([`dump`]: `DumpOptions::LAYERS`) and merged with its kernel overlay guard.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rlayerfs::image::archive::{hex, sha256_digest, Compression, Compressor};
use serde_json::json;

/// Fixed mtime of test entries.
pub const MTIME: u64 = 1_600_000_000;

/// A tar under construction; entries written with raw names.
pub struct TarMaker {
    b: tar::Builder<Vec<u8>>,
}

impl Default for TarMaker {
    fn default() -> Self {
        Self::new()
    }
}

fn header(
    name: &[u8],
    ty: tar::EntryType,
    mode: u32,
    size: u64,
    link: Option<&[u8]>,
) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let n = name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    if let Some(l) = link {
        let n = l.len().min(100);
        h.as_old_mut().linkname[..n].copy_from_slice(&l[..n]);
    }
    h.set_entry_type(ty);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(size);
    h.set_cksum();
    h
}

impl TarMaker {
    pub fn new() -> Self {
        TarMaker {
            b: tar::Builder::new(Vec::new()),
        }
    }

    /// Any entry, with the name and link bytes written verbatim.
    pub fn raw(
        &mut self,
        name: &str,
        ty: tar::EntryType,
        mode: u32,
        data: &[u8],
        link: Option<&str>,
    ) -> &mut Self {
        let h = header(
            name.as_bytes(),
            ty,
            mode,
            data.len() as u64,
            link.map(str::as_bytes),
        );
        self.b.append(&h, data).unwrap();
        self
    }

    /// A header whose size field claims `size` but with `data` following (for corruption).
    pub fn raw_header_only(&mut self, name: &str, size: u64) -> &mut Self {
        let h = header(name.as_bytes(), tar::EntryType::Regular, 0o644, size, None);
        self.b.get_mut().extend_from_slice(h.as_bytes());
        self
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Directory, 0o755, b"", None)
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(name, tar::EntryType::Regular, 0o644, data, None)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Symlink, 0o777, b"", Some(target))
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Link, 0o644, b"", Some(target))
    }

    pub fn device(&mut self, name: &str, ty: tar::EntryType, major: u32, minor: u32) -> &mut Self {
        let mut h = header(name.as_bytes(), ty, 0o600, 0, None);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.b.append(&h, &b""[..]).unwrap();
        self
    }

    /// A PAX header with `records` followed by an entry.
    pub fn pax(
        &mut self,
        records: &[(&str, &[u8])],
        name: &str,
        ty: tar::EntryType,
        data: &[u8],
    ) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let base = k.len() + v.len() + 3;
            let mut len = base + 1;
            while len != base + len.to_string().len() {
                len = base + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let h = header(
            b"././@PaxHeader",
            tar::EntryType::XHeader,
            0o644,
            body.len() as u64,
            None,
        );
        self.b.append(&h, &body[..]).unwrap();
        self.raw(name, ty, 0o644, data, None)
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }

    /// The bytes so far without the end-of-archive marker.
    pub fn unterminated(&mut self) -> Vec<u8> {
        self.b.get_ref().clone()
    }
}

pub fn compress(data: &[u8], c: Compression) -> Vec<u8> {
    let mut w = Compressor::new(Vec::new(), c).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

pub fn decompress_all(blob: &[u8]) -> Vec<u8> {
    let (_, mut r) = rlayerfs::image::archive::decompress(blob).unwrap();
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

/// Writes an OCI layout holding one image with `layers` (blobs as given), returning the
/// manifest digest. `diff_ids` default to the real ones.
pub fn write_layout(
    dir: &Path,
    layers: &[Vec<u8>],
    diff_ids: Option<Vec<String>>,
    ref_name: Option<&str>,
) -> String {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let put = |bytes: &[u8]| -> String {
        let d = sha256_digest(bytes);
        fs::write(dir.join(d.blob_path()), bytes).unwrap();
        d.to_string()
    };
    let ids = diff_ids.unwrap_or_else(|| {
        layers
            .iter()
            .map(|l| sha256_digest(&decompress_all(l)).to_string())
            .collect()
    });
    let mut descs = Vec::new();
    for l in layers {
        let c = Compression::detect(l);
        descs.push(
            json!({"mediaType": c.oci_layer_media_type(), "digest": put(l), "size": l.len()}),
        );
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": ids},
    }))
    .unwrap();
    let cd = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let md = put(&manifest);
    let mut desc = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len()});
    if let Some(r) = ref_name {
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": r});
    }
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [desc]})).unwrap(),
    )
    .unwrap();
    md
}

/// Tars a directory (for OCI-layout-as-tar and docker archives), names relative.
pub fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

/// An old-style `docker save` archive: `<id>/layer.tar`, `<config>.json`, manifest.json.
pub fn docker_save_old(layers: &[Vec<u8>], tag: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut paths = Vec::new();
    let mut ids = Vec::new();
    let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(MTIME);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    for (i, l) in layers.iter().enumerate() {
        let id = hex(&[i as u8; 32]);
        let p = format!("{id}/layer.tar");
        add(&mut b, &p, l);
        add(&mut b, &format!("{id}/VERSION"), b"1.0");
        paths.push(p);
        ids.push(sha256_digest(&decompress_all(l)).to_string());
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": ids},
    }))
    .unwrap();
    let cname = format!("{}.json", sha256_digest(&config).hex());
    add(&mut b, &cname, &config);
    let manifest =
        serde_json::to_vec(&json!([{"Config": cname, "RepoTags": [tag], "Layers": paths}]))
            .unwrap();
    add(&mut b, "manifest.json", &manifest);
    b.into_inner().unwrap()
}

/// The canonical dump (see `super::dump`) of a layer tree or merged view, as the image
/// tests compare them: private xattrs and file mtimes included, the root's line left out.
pub fn dump(root: &Path) -> String {
    super::dump_tree_with(root, super::DumpOptions::LAYERS)
}

/// A parent directory with canary files; `check` asserts that only `dest` (if expected)
/// appeared and the canaries are intact.
pub struct Canary {
    pub dir: tempfile::TempDir,
}

impl Canary {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("canary"), b"canary").unwrap();
        fs::create_dir(dir.path().join("canary-dir")).unwrap();
        fs::write(dir.path().join("canary-dir/inner"), b"inner").unwrap();
        Canary { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn dest(&self) -> PathBuf {
        self.dir.path().join("dest")
    }

    /// Asserts nothing but the canaries (and the input files named in `inputs`) exist.
    pub fn assert_untouched(&self, inputs: &[&str]) {
        let mut names: Vec<String> = fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !inputs.contains(&n.as_str()))
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["canary", "canary-dir"],
            "unexpected files beside DEST"
        );
        assert_eq!(fs::read(self.path().join("canary")).unwrap(), b"canary");
        let inner: Vec<_> = fs::read_dir(self.path().join("canary-dir"))
            .unwrap()
            .collect();
        assert_eq!(inner.len(), 1);
        assert_eq!(
            fs::read(self.path().join("canary-dir/inner")).unwrap(),
            b"inner"
        );
    }
}

pub use super::sys::is_root;

/// Kernel overlayfs over `lowers` (top first) alone at `target`, read-only; `None` when
/// not root or refused.
pub fn kernel_overlay(lowers: &[PathBuf], target: &Path) -> Option<super::KernelOverlay> {
    if !is_root() {
        return None;
    }
    super::KernelOverlay::mount_lowers(lowers, target)
        .map_err(|e| eprintln!("kernel overlay refused: {e}"))
        .ok()
}

/// Sorted relative paths under `root`.
pub fn paths(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn rec(root: &Path, p: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap().path();
            out.push(e.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if fs::symlink_metadata(&e).unwrap().is_dir() {
                rec(root, &e, out);
            }
        }
    }
    rec(root, root, &mut out);
    out.sort();
    out
}
