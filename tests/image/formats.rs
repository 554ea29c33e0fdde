//! Input formats and image selection: single layers (plain/gzip/zstd), OCI layouts as
//! directories and tars (compressed too), both `docker save` styles, nested indexes chosen
//! by platform, references, metadata from PAX headers, GNU/PAX sparse files, the
//! description file, and `commit --image` appends.

use crate::common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::image::{compress, docker_save_old, tar_dir, write_layout, TarMaker};
use rlayerfs::image::archive::{sha256_digest, Compression};
use rlayerfs::image::{
    append_to_image, commit, image_lowerdirs, lowerdir_option, unpack, CommitOptions,
    ImageDescription, Platform, UnpackOptions,
};
use serde_json::json;

fn two_layers() -> (Vec<u8>, Vec<u8>) {
    let mut a = TarMaker::new();
    a.dir("etc/")
        .file("etc/base", b"base")
        .file("etc/old", b"old");
    let mut b = TarMaker::new();
    b.dir("etc/")
        .file("etc/top", b"top")
        .file("etc/.wh.old", b"");
    (a.finish(), b.finish())
}

fn check_two(dest: &Path) {
    let l = image_lowerdirs(dest).unwrap();
    assert_eq!(l.len(), 2);
    assert_eq!(fs::read(l[1].join("etc/base")).unwrap(), b"base");
    assert_eq!(fs::read(l[0].join("etc/top")).unwrap(), b"top");
    assert!(
        fs::symlink_metadata(l[0].join("etc/old")).is_ok() || l[0].join("etc/.wh.old").exists()
    );
}

#[test]
fn single_layers_in_every_compression() {
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let tmp = tempfile::tempdir().unwrap();
        let (a, _) = two_layers();
        let input = tmp.path().join("layer");
        fs::write(&input, compress(&a, c)).unwrap();
        let r = unpack(&input, &tmp.path().join("dest"), &UnpackOptions::default()).unwrap();
        let d = &r.description.layers[0];
        assert_eq!(d.compression, c);
        assert_eq!(d.diff_id, sha256_digest(&a));
        assert_eq!(
            fs::read(tmp.path().join("dest/layers/0/etc/base")).unwrap(),
            b"base"
        );
    }
}

#[test]
fn oci_layout_directory_tar_and_compressed_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_layers();
    let layout = tmp.path().join("layout");
    let md = write_layout(
        &layout,
        &[
            compress(&a, Compression::Gzip),
            compress(&b, Compression::Zstd),
        ],
        None,
        Some("v1"),
    );
    let r = unpack(&layout, &tmp.path().join("d1"), &UnpackOptions::default()).unwrap();
    assert_eq!(r.description.manifest_digest.as_ref().unwrap().as_str(), md);
    assert_eq!(r.description.source.reference.as_deref(), Some("v1"));
    check_two(&tmp.path().join("d1"));
    let tarred = tar_dir(&layout);
    fs::write(tmp.path().join("layout.tar"), &tarred).unwrap();
    unpack(
        &tmp.path().join("layout.tar"),
        &tmp.path().join("d2"),
        &UnpackOptions::default(),
    )
    .unwrap();
    check_two(&tmp.path().join("d2"));
    fs::write(
        tmp.path().join("layout.tar.gz"),
        compress(&tarred, Compression::Gzip),
    )
    .unwrap();
    unpack(
        &tmp.path().join("layout.tar.gz"),
        &tmp.path().join("d3"),
        &UnpackOptions::default(),
    )
    .unwrap();
    check_two(&tmp.path().join("d3"));
    assert_eq!(
        common::image::dump(&tmp.path().join("d1/layers")),
        common::image::dump(&tmp.path().join("d3/layers"))
    );
    // The scratch copy of the decompressed archive is not left in DEST.
    assert!(!tmp.path().join("d3/source.tar").exists());
}

#[test]
fn docker_save_archives_old_and_new_style() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_layers();
    fs::write(
        tmp.path().join("old.tar"),
        docker_save_old(&[a.clone(), b.clone()], "busy:1"),
    )
    .unwrap();
    let r = unpack(
        &tmp.path().join("old.tar"),
        &tmp.path().join("d1"),
        &UnpackOptions::default(),
    )
    .unwrap();
    assert_eq!(r.description.source.repo_tags, vec!["busy:1".to_string()]);
    check_two(&tmp.path().join("d1"));
    // Docker >= 25: an OCI layout plus manifest.json pointing into blobs/.
    let layout = tmp.path().join("new");
    write_layout(&layout, &[a.clone(), b.clone()], None, Some("busy:2"));
    let idx: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mdig = idx["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(&mdig)).unwrap())
            .unwrap();
    let blob = |v: &serde_json::Value| {
        format!(
            "blobs/sha256/{}",
            v["digest"].as_str().unwrap().trim_start_matches("sha256:")
        )
    };
    let dm = json!([{"Config": blob(&m["config"]), "RepoTags": ["busy:2"],
                     "Layers": m["layers"].as_array().unwrap().iter().map(blob).collect::<Vec<_>>()}]);
    fs::write(
        layout.join("manifest.json"),
        serde_json::to_vec(&dm).unwrap(),
    )
    .unwrap();
    fs::write(tmp.path().join("new.tar"), tar_dir(&layout)).unwrap();
    unpack(
        &tmp.path().join("new.tar"),
        &tmp.path().join("d2"),
        &UnpackOptions::default(),
    )
    .unwrap();
    check_two(&tmp.path().join("d2"));
    // The same without index.json / oci-layout goes through manifest.json.
    fs::remove_file(layout.join("index.json")).unwrap();
    fs::remove_file(layout.join("oci-layout")).unwrap();
    fs::write(tmp.path().join("new2.tar"), tar_dir(&layout)).unwrap();
    let r = unpack(
        &tmp.path().join("new2.tar"),
        &tmp.path().join("d3"),
        &UnpackOptions::default(),
    )
    .unwrap();
    assert_eq!(r.description.layers[0].digest, sha256_digest(&a));
    check_two(&tmp.path().join("d3"));
}

/// index.json → nested index with amd64 and arm64 manifests.
#[test]
fn nested_index_is_resolved_by_platform_and_ref() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let mk = |name: &str| {
        let mut t = TarMaker::new();
        t.file(name, name.as_bytes());
        t.finish()
    };
    let amd = tmp.path().join("amd");
    let arm = tmp.path().join("arm");
    write_layout(&amd, &[mk("amd64")], None, None);
    write_layout(&arm, &[mk("arm64")], None, None);
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let mut descs = Vec::new();
    for (dir, arch) in [(&amd, "arm64-not"), (&arm, "arm64")] {
        for e in fs::read_dir(dir.join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), layout.join("blobs/sha256").join(e.file_name())).unwrap();
        }
        let idx: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        let mut d = idx["manifests"][0].clone();
        let arch = if arch == "arm64" { "arm64" } else { "amd64" };
        d["platform"] = json!({"os": "linux", "architecture": arch});
        descs.push(d);
    }
    // An attestation-like manifest for unknown/unknown must be ignored.
    let mut att = descs[0].clone();
    att["platform"] = json!({"os": "unknown", "architecture": "unknown"});
    descs.push(att);
    let nested = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": descs})).unwrap();
    let nd = sha256_digest(&nested);
    fs::write(layout.join(nd.blob_path()), &nested).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let top = json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": nd, "size": nested.len(),
         "annotations": {"org.opencontainers.image.ref.name": "multi"}}]});
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();

    unpack(
        &layout,
        &tmp.path().join("d-amd"),
        &UnpackOptions::default(),
    )
    .unwrap();
    assert!(tmp.path().join("d-amd/layers/0/amd64").exists());
    let arm_opts = UnpackOptions {
        platform: Platform::parse("linux/arm64").unwrap(),
        ..UnpackOptions::default()
    };
    let r = unpack(&layout, &tmp.path().join("d-arm"), &arm_opts).unwrap();
    assert!(tmp.path().join("d-arm/layers/0/arm64").exists());
    assert_eq!(r.description.platform.unwrap().architecture, "arm64");
    let s390 = UnpackOptions {
        platform: Platform::parse("linux/s390x").unwrap(),
        ..UnpackOptions::default()
    };
    let err = unpack(&layout, &tmp.path().join("d-x"), &s390)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("linux/s390x") && err.contains("linux/arm64"),
        "{err}"
    );
    let bad_ref = UnpackOptions {
        reference: Some("nope".into()),
        ..UnpackOptions::default()
    };
    let err = unpack(&layout, &tmp.path().join("d-y"), &bad_ref)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope") && err.contains("multi"), "{err}");
}

#[test]
fn several_images_need_a_ref() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let (a, b) = two_layers();
    write_layout(&layout, std::slice::from_ref(&a), None, Some("one"));
    let idx1: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    write_layout(&layout, &[a, b], None, Some("two"));
    let mut idx2: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    idx2["manifests"]
        .as_array_mut()
        .unwrap()
        .push(idx1["manifests"][0].clone());
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&idx2).unwrap(),
    )
    .unwrap();
    let err = unpack(&layout, &tmp.path().join("d"), &UnpackOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--ref") && err.contains("one") && err.contains("two"),
        "{err}"
    );
    let r = unpack(
        &layout,
        &tmp.path().join("d"),
        &UnpackOptions {
            reference: Some("one".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.description.layers.len(), 1);
}

#[test]
fn pax_metadata_is_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = TarMaker::new();
    t.pax(
        &[
            ("mtime", b"1234567890.5"),
            ("SCHILY.xattr.user.note", b"hello\0bin"),
            ("uid", b"4000000"),
            ("gid", b"77"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("path", b"a-very-long-name-from-pax"),
        ],
        "short",
        tar::EntryType::Regular,
        b"data",
    );
    fs::write(tmp.path().join("l.tar"), t.finish()).unwrap();
    unpack(
        &tmp.path().join("l.tar"),
        &tmp.path().join("d"),
        &UnpackOptions::default(),
    )
    .unwrap();
    let p = tmp.path().join("d/layers/0/a-very-long-name-from-pax");
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_234_567_890, 500_000_000));
    let mut v = [0u8; 64];
    let n = rustix::fs::getxattr(&p, "user.note", &mut v[..]).unwrap();
    assert_eq!(&v[..n], b"hello\0bin");
    // A tar cannot forge overlay metadata.
    assert!(rustix::fs::getxattr(&p, "trusted.overlay.opaque", &mut v[..]).is_err());
    if common::image::is_root() {
        assert_eq!((md.uid(), md.gid()), (4_000_000, 77));
    }
}

#[test]
fn gnu_tar_sparse_files() {
    if std::process::Command::new("tar")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("GNU tar missing: skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(32 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 16 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"end", (32 << 20) - 3).unwrap();
    drop(f);
    for format in ["gnu", "posix"] {
        let tarball = tmp.path().join(format!("{format}.tar"));
        let ok = std::process::Command::new("tar")
            .args(["--sparse", &format!("--format={format}"), "-C"])
            .arg(&src)
            .arg("-cf")
            .arg(&tarball)
            .arg("sparse")
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let dest = tmp.path().join(format!("d-{format}"));
        unpack(&tarball, &dest, &UnpackOptions::default())
            .unwrap_or_else(|e| panic!("{format}: {e}"));
        let out = dest.join("layers/0/sparse");
        assert_eq!(
            fs::read(&out).unwrap(),
            fs::read(src.join("sparse")).unwrap(),
            "{format}"
        );
        assert!(
            fs::metadata(&out).unwrap().blocks() < 1024,
            "{format}: holes lost"
        );
    }
}

#[test]
fn lowerdirs_and_description() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_layers();
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[a, b], None, None);
    let dest = tmp.path().join("with:colon");
    unpack(&layout, &dest, &UnpackOptions::default()).unwrap();
    let dirs = image_lowerdirs(&dest).unwrap();
    let opt = lowerdir_option(&dirs);
    assert!(opt.contains("with\\:colon/layers/1:"), "{opt}");
    assert!(opt.ends_with("with\\:colon/layers/0"), "{opt}");
    let d = ImageDescription::read(&dest).unwrap();
    assert_eq!(d.layers[0].dir, "layers/0");
    assert!(d.config.unwrap()["rootfs"]["diff_ids"].is_array());
}

#[test]
fn commit_appends_to_unpacked_image_and_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_layers();
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[a, b], None, Some("base"));
    let dest = tmp.path().join("dest");
    unpack(&layout, &dest, &UnpackOptions::default()).unwrap();
    let upper = tmp.path().join("upper");
    fs::create_dir_all(upper.join("etc")).unwrap();
    fs::write(upper.join("etc/new"), b"new").unwrap();
    let blob = tmp.path().join("new.tar.gz");
    let report = commit(
        &upper,
        &blob,
        &CommitOptions {
            compression: Compression::Gzip,
            progress: false,
        },
    )
    .unwrap();
    let platform = Platform::parse("linux/amd64").unwrap();

    append_to_image(&dest, &blob, &report, "next", None, &platform).unwrap();
    let dirs = image_lowerdirs(&dest).unwrap();
    assert_eq!(dirs.len(), 3);
    assert_eq!(fs::read(dirs[0].join("etc/new")).unwrap(), b"new");
    let d = ImageDescription::read(&dest).unwrap();
    assert_eq!(d.tag.as_deref(), Some("next"));
    assert_eq!(
        d.config.unwrap()["rootfs"]["diff_ids"][2],
        json!(report.diff_id)
    );

    append_to_image(&layout, &blob, &report, "next", Some("base"), &platform).unwrap();
    let r = unpack(
        &layout,
        &tmp.path().join("again"),
        &UnpackOptions {
            reference: Some("next".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.description.layers.len(), 3);
    assert_eq!(r.description.layers[2].digest, report.digest);
    // Re-tagging replaces the index entry.
    append_to_image(&layout, &blob, &report, "next", Some("base"), &platform).unwrap();
    let idx: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(idx["manifests"].as_array().unwrap().len(), 2);
}

/// A later entry replaces an earlier non-directory of the same name, a directory included
/// (tar semantics; GNU tar and containerd's applier do so): file `d` then directory `d/`, and
/// symlink `s` (to outside the layer) then directory `s/` whose child lands in the layer.
#[test]
fn later_directory_replaces_earlier_file_or_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let mut t = TarMaker::new();
    t.file("d", b"was a file")
        .dir("d/")
        .file("d/inner", b"inner")
        .symlink("s", outside.to_str().unwrap())
        .dir("s/")
        .file("s/x", b"x");
    let input = tmp.path().join("layer.tar");
    fs::write(&input, t.finish()).unwrap();
    let dest = tmp.path().join("dest");
    unpack(&input, &dest, &UnpackOptions::default()).unwrap();
    let l = dest.join("layers/0");
    assert!(fs::symlink_metadata(l.join("d")).unwrap().is_dir());
    assert_eq!(fs::read(l.join("d/inner")).unwrap(), b"inner");
    assert!(fs::symlink_metadata(l.join("s")).unwrap().is_dir());
    assert_eq!(fs::read(l.join("s/x")).unwrap(), b"x");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "wrote outside");
}

/// umoci's form of a directory replaced by a file (the file, then whiteouts of the old
/// directory's children below it): the whiteouts hide nothing and the layer unpacks.
#[test]
fn whiteouts_below_a_file_are_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let mut base = TarMaker::new();
    base.dir("var/")
        .dir("var/cache/")
        .dir("var/cache/x/")
        .file("var/cache/x/f1", b"one")
        .file("var/cache/k", b"keep");
    let mut top = TarMaker::new();
    top.dir("var/cache/")
        .file("var/cache/x", b"file")
        .file("var/cache/x/.wh.f1", b"");
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[base.finish(), top.finish()], None, None);
    let dest = tmp.path().join("dest");
    unpack(&layout, &dest, &UnpackOptions::default()).unwrap();
    let l = image_lowerdirs(&dest).unwrap();
    assert_eq!(fs::read(l[0].join("var/cache/x")).unwrap(), b"file");
    let mut top_names: Vec<_> = fs::read_dir(l[0].join("var/cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top_names.sort();
    assert_eq!(top_names, ["x"]);
}
