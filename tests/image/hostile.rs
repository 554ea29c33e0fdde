//! A corpus of hostile or broken inputs: each must be refused with an error naming the
//! problem (and the entry), and nothing may be written outside DEST — nor DEST itself left
//! behind. Canary files beside DEST and a canary directory that symlinks point at are checked.

use crate::common;

use std::fs;
use std::path::Path;

use common::image::{compress, write_layout, Canary, TarMaker};
use rlayerfs::image::archive::Compression;
use rlayerfs::image::{unpack, DeviceMode, UnpackOptions};
use tar::EntryType;

enum Input {
    Layer(Vec<u8>),
    /// An OCI layout made by the closure inside the given directory.
    Layout(Box<dyn Fn(&Path)>),
}

struct Case {
    name: &'static str,
    input: Input,
    devices: DeviceMode,
    /// Substrings the error message must contain.
    expect: &'static [&'static str],
}

fn layer(f: impl FnOnce(&mut TarMaker, &str)) -> impl FnOnce(&str) -> Input {
    move |canary_dir: &str| {
        let mut t = TarMaker::new();
        f(&mut t, canary_dir);
        Input::Layer(t.finish())
    }
}

fn cases(canary_dir: &str) -> Vec<Case> {
    let mk = |name, devices, expect, input: Input| Case {
        name,
        input,
        devices,
        expect,
    };
    let auto = DeviceMode::Auto;
    let mut truncated_data = TarMaker::new();
    truncated_data.raw_header_only("big", 4096);
    let mut truncated_data = truncated_data.unterminated();
    truncated_data.extend_from_slice(&[7u8; 100]);
    let mut unterminated = TarMaker::new();
    unterminated.file("a", b"hello");
    let unterminated = unterminated.unterminated();
    let mut bad_sum = TarMaker::new();
    bad_sum.file("a", b"x").file("b", b"y");
    let mut bad_sum = bad_sum.finish();
    bad_sum[512 + 512 + 3] ^= 0x55; // name of the second header
    let mut gz = TarMaker::new();
    gz.file("a", &vec![b'z'; 100_000]);
    let mut gz = compress(&gz.finish(), Compression::Gzip);
    let mid = gz.len() / 2;
    gz[mid] ^= 0xff;
    let mut zs = TarMaker::new();
    zs.file("a", &vec![b'q'; 100_000]);
    let zs = compress(&zs.finish(), Compression::Zstd);
    let zs = zs[..zs.len() - 20].to_vec();

    vec![
        mk(
            "dotdot",
            auto,
            &["\"../escape\"", "\"..\" component"],
            layer(|t, _| {
                t.file("../escape", b"x");
            })(canary_dir),
        ),
        mk(
            "dotdot inside",
            auto,
            &["a/../../escape", "\"..\""],
            layer(|t, _| {
                t.dir("a/").file("a/../../escape", b"x");
            })(canary_dir),
        ),
        mk(
            "symlink redirect",
            auto,
            &["\"link/escape\"", "symlink"],
            layer(|t, c| {
                t.symlink("link", c).file("link/escape", b"x");
            })(canary_dir),
        ),
        mk(
            "symlink chain",
            auto,
            &["\"a/x\"", "symlink"],
            layer(|t, c| {
                t.symlink("b", c).symlink("a", "b").file("a/x", b"x");
            })(canary_dir),
        ),
        mk(
            "relative symlink up",
            auto,
            &["\"up/canary\"", "symlink"],
            layer(|t, _| {
                t.symlink("up", "../../..")
                    .file("up/canary", b"overwritten");
            })(canary_dir),
        ),
        mk(
            "hard link dotdot",
            auto,
            &["\"h\"", "\"..\""],
            layer(|t, _| {
                t.hardlink("h", "../canary");
            })(canary_dir),
        ),
        mk(
            "hard link absolute outside",
            auto,
            &["\"h\"", "not an earlier entry"],
            layer(|t, _| {
                t.hardlink("h", "/etc/passwd");
            })(canary_dir),
        ),
        mk(
            "hard link through symlink",
            auto,
            &["\"h\"", "symlink"],
            layer(|t, c| {
                t.symlink("s", c).hardlink("h", "s/inner");
            })(canary_dir),
        ),
        mk(
            "hard link to directory",
            auto,
            &["\"h\"", "invalid"],
            layer(|t, _| {
                t.dir("d/").hardlink("h", "d");
            })(canary_dir),
        ),
        mk(
            "parent is a file",
            auto,
            &["\"f/x\"", "not a directory"],
            layer(|t, _| {
                t.file("f", b"").file("f/x", b"");
            })(canary_dir),
        ),
        mk(
            "file replaces directory",
            auto,
            &["\"d\"", "replace a directory"],
            layer(|t, _| {
                t.dir("d/").file("d", b"");
            })(canary_dir),
        ),
        mk(
            "bare .wh.",
            auto,
            &["\"dir/.wh.\"", "malformed whiteout"],
            layer(|t, _| {
                t.dir("dir/").file("dir/.wh.", b"");
            })(canary_dir),
        ),
        mk(
            ".wh.. name",
            auto,
            &["\".wh..\""],
            layer(|t, _| {
                t.file(".wh..", b"");
            })(canary_dir),
        ),
        mk(
            "opaque marker with content",
            auto,
            &[".wh..wh..opq", "carries data"],
            layer(|t, _| {
                t.dir("d/").file("d/.wh..wh..opq", b"payload");
            })(canary_dir),
        ),
        mk(
            "whiteout with content",
            auto,
            &["\".wh.foo\"", "carries data"],
            layer(|t, _| {
                t.file(".wh.foo", b"payload");
            })(canary_dir),
        ),
        mk(
            "whiteout as directory",
            auto,
            &["\".wh.foo/\"", "not a regular file"],
            layer(|t, _| {
                t.dir(".wh.foo/");
            })(canary_dir),
        ),
        mk(
            "whiteout as symlink",
            auto,
            &["\".wh.foo\"", "not a regular file"],
            layer(|t, c| {
                t.symlink(".wh.foo", c);
            })(canary_dir),
        ),
        mk(
            "entry below a whiteout name",
            auto,
            &["\".wh.d/x\""],
            layer(|t, _| {
                t.file(".wh.d/x", b"");
            })(canary_dir),
        ),
        mk(
            "device when refused",
            DeviceMode::Refuse,
            &["\"dev/null\"", "needs root"],
            layer(|t, _| {
                t.dir("dev/").device("dev/null", EntryType::Char, 1, 3);
            })(canary_dir),
        ),
        mk(
            "truncated data",
            auto,
            &["truncated or corrupt"],
            Input::Layer(truncated_data),
        ),
        mk(
            "no end-of-archive marker",
            auto,
            &["\"a\"", "end-of-archive"],
            Input::Layer(unterminated),
        ),
        mk(
            "bad header checksum",
            auto,
            &["after entry \"a\"", "corrupt"],
            Input::Layer(bad_sum),
        ),
        mk("corrupt gzip", auto, &["corrupt"], Input::Layer(gz)),
        mk("truncated zstd", auto, &["corrupt"], Input::Layer(zs)),
        mk(
            "empty input",
            auto,
            &["end-of-archive"],
            Input::Layer(Vec::new()),
        ),
        mk(
            "missing blob",
            auto,
            &["missing blob"],
            Input::Layout(Box::new(|dir| {
                let mut t = TarMaker::new();
                t.file("a", b"a");
                let l = t.finish();
                write_layout(dir, std::slice::from_ref(&l), None, None);
                let d = rlayerfs::image::archive::sha256_digest(&l);
                fs::remove_file(dir.join(d.blob_path())).unwrap();
            })),
        ),
        mk(
            "layer digest mismatch",
            auto,
            &["digest mismatch"],
            Input::Layout(Box::new(|dir| {
                let mut t = TarMaker::new();
                t.file("a", b"a");
                let l = t.finish();
                write_layout(dir, std::slice::from_ref(&l), None, None);
                let d = rlayerfs::image::archive::sha256_digest(&l);
                let mut t = TarMaker::new();
                t.file("a", b"b");
                fs::write(dir.join(d.blob_path()), t.finish()).unwrap();
            })),
        ),
        mk(
            "diff_id mismatch",
            auto,
            &["diff_id", "digest mismatch"],
            Input::Layout(Box::new(|dir| {
                let mut t = TarMaker::new();
                t.file("a", b"a");
                let wrong = format!("sha256:{}", "0".repeat(64));
                write_layout(
                    dir,
                    &[compress(&t.finish(), Compression::Gzip)],
                    Some(vec![wrong]),
                    None,
                );
            })),
        ),
        mk(
            "index.json garbage",
            auto,
            &["index.json", "invalid JSON"],
            Input::Layout(Box::new(|dir| {
                let mut t = TarMaker::new();
                t.file("a", b"a");
                write_layout(dir, &[t.finish()], None, None);
                fs::write(
                    dir.join("index.json"),
                    b"{\"schemaVersion\": 2, \"manifests\": [{",
                )
                .unwrap();
            })),
        ),
        mk(
            "digest path traversal",
            auto,
            &["malformed digest"],
            Input::Layout(Box::new(|dir| {
                let mut t = TarMaker::new();
                t.file("a", b"a");
                write_layout(dir, &[t.finish()], None, None);
                let idx = r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../../../canary","size":6}]}"#;
                fs::write(dir.join("index.json"), idx).unwrap();
            })),
        ),
        mk(
            "layer count differs from diff_ids",
            auto,
            &["diff_ids"],
            Input::Layout(Box::new(|dir| {
                let mut t = TarMaker::new();
                t.file("a", b"a");
                write_layout(dir, &[t.finish()], Some(vec![]), None);
            })),
        ),
    ]
}

#[test]
fn hostile_inputs_are_refused_and_leave_nothing() {
    let mut failures = Vec::new();
    let probe = Canary::new();
    for case in cases(&probe.path().join("canary-dir").display().to_string()) {
        let canary = Canary::new();
        // Symlinks in the corpus point at this run's canary dir.
        let canary_dir = canary.path().join("canary-dir").display().to_string();
        let case = cases(&canary_dir)
            .into_iter()
            .find(|c| c.name == case.name)
            .unwrap();
        let input = canary.path().join("input");
        match &case.input {
            Input::Layer(bytes) => fs::write(&input, bytes).unwrap(),
            Input::Layout(make) => make(&input),
        }
        let opts = UnpackOptions {
            devices: case.devices,
            ..UnpackOptions::default()
        };
        match unpack(&input, &canary.dest(), &opts) {
            Ok(_) => failures.push(format!("{}: accepted", case.name)),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    !msg.contains('\n'),
                    "{}: multi-line error {msg:?}",
                    case.name
                );
                for want in case.expect {
                    if !msg.contains(want) {
                        failures.push(format!("{}: {msg:?} lacks {want:?}", case.name));
                    }
                }
            }
        }
        canary.assert_untouched(&["input"]);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn replaced_hard_link_does_not_write_through() {
    let canary = Canary::new();
    let mut t = TarMaker::new();
    t.file("f", b"original")
        .hardlink("hl", "f")
        .file("hl", b"replacement");
    let input = canary.path().join("input");
    fs::write(&input, t.finish()).unwrap();
    unpack(&input, &canary.dest(), &UnpackOptions::default()).unwrap();
    let l = canary.dest().join("layers/0");
    assert_eq!(fs::read(l.join("f")).unwrap(), b"original");
    assert_eq!(fs::read(l.join("hl")).unwrap(), b"replacement");
}

#[test]
fn absolute_names_land_inside_the_layer() {
    let canary = Canary::new();
    let mut t = TarMaker::new();
    let abs = canary.path().join("canary").display().to_string();
    t.file(&abs, b"inside").symlink("/abs-link", "/etc/passwd");
    let input = canary.path().join("input");
    fs::write(&input, t.finish()).unwrap();
    unpack(&input, &canary.dest(), &UnpackOptions::default()).unwrap();
    let l = canary.dest().join("layers/0");
    let rel = abs.trim_start_matches('/');
    assert_eq!(fs::read(l.join(rel)).unwrap(), b"inside");
    assert_eq!(
        fs::read_link(l.join("abs-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    fs::remove_dir_all(canary.dest()).unwrap();
    canary.assert_untouched(&["input"]);
}

#[test]
fn stale_staging_directories_are_removed_and_dest_must_be_free() {
    let canary = Canary::new();
    let stale = canary.path().join(".dest.rlayerfs-unpack.999999999");
    fs::create_dir(&stale).unwrap();
    fs::write(stale.join("junk"), b"").unwrap();
    let mut t = TarMaker::new();
    t.file("a", b"a");
    let input = canary.path().join("input");
    fs::write(&input, t.finish()).unwrap();
    unpack(&input, &canary.dest(), &UnpackOptions::default()).unwrap();
    assert!(!stale.exists());
    // A second unpack onto a non-empty DEST is refused and changes nothing.
    let before = common::image::dump(&canary.dest());
    let err = unpack(&input, &canary.dest(), &UnpackOptions::default()).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(common::image::dump(&canary.dest()), before);
    // An empty directory is fine.
    fs::remove_dir_all(canary.dest()).unwrap();
    fs::create_dir(canary.dest()).unwrap();
    unpack(&input, &canary.dest(), &UnpackOptions::default()).unwrap();
    fs::remove_dir_all(canary.dest()).unwrap();
    canary.assert_untouched(&["input"]);
}
