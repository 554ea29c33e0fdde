//! Parsers never panic: arbitrary bytes (and mutated valid tars) fed to the layer
//! unpacker, the image-archive detection and the JSON document parsers give errors, not
//! panics, and never write outside DEST.

use crate::common;

use std::fs;

use common::image::TarMaker;
use proptest::prelude::*;
use rlayerfs::image::oci::{parse_json, DockerManifestEntry, ImageConfig, Index, Manifest};
use rlayerfs::image::{unpack, UnpackOptions};

fn valid_tar() -> Vec<u8> {
    let mut t = TarMaker::new();
    t.dir("d/")
        .file("d/f", b"hello")
        .symlink("d/s", "f")
        .hardlink("d/h", "d/f");
    t.file("d/.wh.x", b"").file("d/.wh..wh..opq", b"");
    t.pax(
        &[("SCHILY.xattr.user.a", b"b"), ("mtime", b"1.5")],
        "p",
        tar::EntryType::Regular,
        b"data",
    );
    t.finish()
}

fn try_unpack(bytes: &[u8]) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    fs::write(&input, bytes).unwrap();
    let dest = tmp.path().join("dest");
    if unpack(&input, &dest, &UnpackOptions::default()).is_err() {
        assert!(!dest.exists());
    }
    let mut names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert!(names.len() <= 2, "stray files: {names:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_as_layer(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        try_unpack(&bytes);
    }

    #[test]
    fn mutated_tars(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                    cut in any::<prop::sample::Index>(), do_cut in any::<bool>()) {
        let mut t = valid_tar();
        for (i, b) in flips {
            let at = i.index(t.len());
            t[at] = b;
        }
        if do_cut {
            let at = cut.index(t.len());
            t.truncate(at);
        }
        try_unpack(&t);
    }

    #[test]
    fn mutated_oci_archives(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let tmp = tempfile::tempdir().unwrap();
        common::image::write_layout(&tmp.path().join("l"), &[valid_tar()], None, Some("x"));
        let mut t = common::image::tar_dir(&tmp.path().join("l"));
        // Aim at the JSON documents and headers near the end as well as anywhere.
        for (i, b) in flips {
            let at = i.index(t.len());
            t[at] = b;
        }
        try_unpack(&t);
    }

    #[test]
    fn arbitrary_json_documents(s in "\\PC{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for input in [s.as_bytes(), &bytes[..]] {
            let _ = parse_json::<Index>(input, "t");
            let _ = parse_json::<Manifest>(input, "t");
            let _ = parse_json::<ImageConfig>(input, "t");
            let _ = parse_json::<Vec<DockerManifestEntry>>(input, "t");
        }
    }

    #[test]
    fn json_shaped_documents(schema in 0u32..4, digest in "[a-z0-9:./]{0,80}", size in any::<i64>()) {
        let doc = format!(r#"{{"schemaVersion":{schema},"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":{size}}}]}}"#);
        let _ = parse_json::<Index>(doc.as_bytes(), "t");
    }
}
