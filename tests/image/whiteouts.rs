//! Every whiteout example of the OCI image-spec (layer.md), plus the same-layer rules, as a
//! table: the unpacked top layer must hold overlay whiteouts/opaque dirs, and (as root) a
//! kernel overlay mount of the unpacked layers must show the merged tree the spec describes.

use crate::common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::image::{kernel_overlay, paths, write_layout, TarMaker};
use rlayerfs::image::{image_lowerdirs, unpack, UnpackOptions};

type Build = fn(&mut TarMaker);

struct Case {
    name: &'static str,
    base: Build,
    change: Build,
    /// The change layer's directory, classified.
    layer: &'static [&'static str],
    /// The merged view.
    merged: &'static [&'static str],
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut v = vec![0u8; 256];
    rustix::fs::lgetxattr(p, name, &mut v[..])
        .ok()
        .map(|n| v[..n].to_vec())
}

/// "path kind" lines: file, dir, dir opaque, whiteout, symlink.
fn classify(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for rel in paths(root) {
        let p = root.join(&rel);
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name == ".wh..wh..opq" {
            continue; // rootless companion of the opaque xattr
        }
        let md = fs::symlink_metadata(&p).unwrap();
        let line = if let Some(target) = name.strip_prefix(".wh.") {
            let parent = Path::new(&rel).parent().unwrap().join(target);
            format!("{} whiteout", parent.display())
        } else if md.file_type().is_char_device() && md.rdev() == 0 {
            format!("{rel} whiteout")
        } else if md.is_dir() {
            let opaque = xattr(&p, "trusted.overlay.opaque").as_deref() == Some(b"y")
                || xattr(&p, "user.overlay.opaque").as_deref() == Some(b"y");
            if opaque {
                format!("{rel} dir opaque")
            } else {
                format!("{rel} dir")
            }
        } else if md.file_type().is_symlink() {
            format!("{rel} symlink")
        } else {
            format!("{rel} file")
        };
        out.push(line);
    }
    out.sort();
    out
}

fn app_base(t: &mut TarMaker) {
    t.dir("etc/").file("etc/my-app-config", b"cfg").dir("bin/");
    t.file("bin/my-app-binary", b"bin")
        .file("bin/my-app-tools", b"tools");
    t.dir("bin/tools/")
        .file("bin/tools/my-app-tool-one", b"one");
}

fn abc_base(t: &mut TarMaker) {
    t.dir("a/")
        .dir("a/b/")
        .dir("a/b/c/")
        .file("a/b/c/bar", b"bar");
}

const CASES: &[Case] = &[
    Case {
        name: "changeset (layer.md Representing Changes)",
        base: app_base,
        change: |t| {
            t.dir("./etc/my-app.d/")
                .file("./etc/my-app.d/default.cfg", b"d");
            t.file("./bin/my-app-tools", b"tools v2")
                .file("./etc/.wh.my-app-config", b"");
        },
        layer: &[
            "bin dir",
            "bin/my-app-tools file",
            "etc dir",
            "etc/my-app-config whiteout",
            "etc/my-app.d dir",
            "etc/my-app.d/default.cfg file",
        ],
        merged: &[
            "bin",
            "bin/my-app-binary",
            "bin/my-app-tools",
            "bin/tools",
            "bin/tools/my-app-tool-one",
            "etc",
            "etc/my-app.d",
            "etc/my-app.d/default.cfg",
        ],
    },
    Case {
        name: "opaque marker first (layer.md Whiteouts)",
        base: abc_base,
        change: |t| {
            t.dir("a/")
                .file("a/.wh..wh..opq", b"")
                .dir("a/b/")
                .dir("a/b/c/");
            t.file("a/b/c/foo", b"foo");
        },
        layer: &["a dir opaque", "a/b dir", "a/b/c dir", "a/b/c/foo file"],
        merged: &["a", "a/b", "a/b/c", "a/b/c/foo"],
    },
    Case {
        name: "opaque marker last applies before the layer's entries",
        base: abc_base,
        change: |t| {
            t.dir("a/")
                .dir("a/b/")
                .dir("a/b/c/")
                .file("a/b/c/foo", b"foo");
            t.file("a/.wh..wh..opq", b"");
        },
        layer: &["a dir opaque", "a/b dir", "a/b/c dir", "a/b/c/foo file"],
        merged: &["a", "a/b", "a/b/c", "a/b/c/foo"],
    },
    Case {
        name: "opaque whiteout of bin/ (layer.md Opaque Whiteout)",
        base: app_base,
        change: |t| {
            t.dir("bin/").file("bin/.wh..wh..opq", b"");
        },
        layer: &["bin dir opaque"],
        merged: &["bin", "etc", "etc/my-app-config"],
    },
    Case {
        name: "explicit whiteouts equivalent to the opaque one",
        base: app_base,
        change: |t| {
            t.dir("bin/").file("bin/.wh.my-app-binary", b"");
            t.file("bin/.wh.my-app-tools", b"")
                .file("bin/.wh.tools", b"");
        },
        layer: &[
            "bin dir",
            "bin/my-app-binary whiteout",
            "bin/my-app-tools whiteout",
            "bin/tools whiteout",
        ],
        merged: &["bin", "etc", "etc/my-app-config"],
    },
    Case {
        name: "entries of the same layer are not hidden by its whiteouts",
        base: |t| {
            t.file("x", b"old").dir("y/").file("y/old", b"old");
        },
        change: |t| {
            t.file(".wh.x", b"").file("x", b"new");
            t.dir("y/").file("y/new", b"new").file(".wh.y", b"");
        },
        layer: &["x file", "y dir opaque", "y/new file"],
        merged: &["x", "y", "y/new"],
    },
    Case {
        name: "whiteout before its parent directory entry",
        base: |t| {
            t.dir("d/").file("d/gone", b"").file("d/kept", b"");
        },
        change: |t| {
            t.file("d/.wh.gone", b"").dir("d/");
        },
        layer: &["d dir", "d/gone whiteout"],
        merged: &["d", "d/kept"],
    },
    Case {
        name: "whiteout of a whole directory",
        base: |t| {
            t.dir("a/").dir("a/b/").file("a/b/f", b"");
        },
        change: |t| {
            t.file("a/.wh.b", b"");
        },
        layer: &["a dir", "a/b whiteout"],
        merged: &["a"],
    },
];

#[test]
fn oci_whiteout_examples() {
    for case in CASES {
        let tmp = tempfile::tempdir().unwrap();
        let mut base = TarMaker::new();
        (case.base)(&mut base);
        let mut change = TarMaker::new();
        (case.change)(&mut change);
        let layout = tmp.path().join("layout");
        write_layout(&layout, &[base.finish(), change.finish()], None, None);
        let dest = tmp.path().join("dest");
        unpack(&layout, &dest, &UnpackOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let lowers = image_lowerdirs(&dest).unwrap();
        assert_eq!(lowers.len(), 2);
        assert!(lowers[0].ends_with("layers/1"), "top layer first");
        assert_eq!(classify(&lowers[0]), case.layer, "{}: layer", case.name);

        let mnt = tmp.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        if let Some(_guard) = kernel_overlay(&lowers, &mnt) {
            assert_eq!(paths(&mnt), case.merged, "{}: merged view", case.name);
        } else {
            eprintln!(
                "{}: kernel overlay unavailable, merged view not checked",
                case.name
            );
        }
    }
}
