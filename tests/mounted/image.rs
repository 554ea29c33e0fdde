//! The Docker model end to end through live mounts, with the rlayerfs binary as a user runs
//! it: `unpack` an OCI image → `mount --image` it with an upper (the container) → change
//! files (write, append, delete lower files and directories, replace a directory by a new
//! one, by a file, a file by a directory, chmod/chown, xattrs, new hard links, symlinks,
//! fifos) → `commit --image --tag` → `unpack` the new image → mount it: the tree equals what
//! the container saw (canonical dump with mtimes to the second, as a tar keeps them). A chmod
//! or chown leaves a metacopy file: commit reads its data from the lower layers.

use crate::common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::image::{write_layout, TarMaker};
use common::{can_mount, dump_tree_with, DumpOptions, FuseMount};

fn rlayerfs(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rlayerfs"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rlayerfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The image's layers, bottom first: a base, a layer with whiteouts and an opaque
/// directory, and a layer that replaces a directory by a file.
fn image_layers() -> Vec<Vec<u8>> {
    let base = TarMaker::new()
        .dir("etc")
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .file("etc/hosts", b"127.0.0.1 localhost\n")
        .dir("usr")
        .dir("usr/bin")
        .raw(
            "usr/bin/tool",
            tar::EntryType::Regular,
            0o755,
            b"#!/bin/sh\necho v1\n",
            None,
        )
        .dir("usr/lib")
        .file("usr/lib/libx.so.1", &[7u8; 5000])
        .symlink("usr/lib/libx.so", "libx.so.1")
        .dir("var")
        .dir("var/log")
        .file("var/log/old.log", b"old\n")
        .dir("data")
        .file("data/a", &[b'a'; 10000])
        .file("data/b", b"bee\n")
        .file("data/c", b"sea\n")
        .dir("docs")
        .file("docs/readme", b"read me\n")
        .dir("docs/sub")
        .file("docs/sub/deep", b"deep\n")
        .dir("opt")
        .dir("opt/app")
        .dir("opt/app/conf")
        .file("opt/app/conf/app.ini", b"[app]\n")
        .pax(
            &[("SCHILY.xattr.user.origin", b"base")],
            "etc/motd",
            tar::EntryType::Regular,
            b"hello\n",
        )
        .finish();
    let middle = TarMaker::new()
        .dir("etc")
        .file("etc/.wh.hosts", b"")
        .dir("var")
        .dir("var/log")
        .file("var/log/.wh..wh..opq", b"")
        .file("var/log/new.log", b"new\n")
        .dir("usr")
        .dir("usr/bin")
        .raw(
            "usr/bin/tool",
            tar::EntryType::Regular,
            0o755,
            b"#!/bin/sh\necho v2\n",
            None,
        )
        .finish();
    let top = TarMaker::new()
        .dir("docs")
        .file("docs/sub", b"a file where a directory was\n")
        .dir("opt")
        .dir("opt/app")
        .file("opt/app/extra", b"extra\n")
        .finish();
    vec![base, middle, top]
}

/// What a container does to its root filesystem.
fn change(root: &Path) {
    let p = |rel: &str| root.join(rel);
    // Write inside and append to lower files.
    let f = OpenOptions::new().write(true).open(p("data/a")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_at(b"CHANGED", 4096).unwrap();
    drop(f);
    let mut f = OpenOptions::new()
        .append(true)
        .open(p("etc/passwd"))
        .unwrap();
    f.write_all(b"app:x:1000:1000::/home/app:/bin/sh\n")
        .unwrap();
    drop(f);
    // Delete lower files and a lower directory tree spread over two layers.
    fs::remove_file(p("data/b")).unwrap();
    fs::remove_file(p("usr/lib/libx.so")).unwrap();
    fs::remove_dir_all(p("opt/app")).unwrap();
    // Replace a lower directory by a new one (opaque), by a file, and a file by a directory.
    fs::remove_dir_all(p("usr/lib")).unwrap();
    fs::create_dir(p("usr/lib")).unwrap();
    fs::write(p("usr/lib/libnew.so"), b"new library").unwrap();
    fs::remove_dir_all(p("var/log")).unwrap();
    fs::write(p("var/log"), b"logs are a file now\n").unwrap();
    fs::remove_file(p("data/c")).unwrap();
    fs::create_dir(p("data/c")).unwrap();
    fs::write(p("data/c/inside"), b"inside\n").unwrap();
    // Metadata changes of lower objects (copy-up without data change).
    fs::set_permissions(p("usr/bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::lchown(p("docs/readme"), Some(1000), Some(1000)).unwrap();
    common::sys::set_xattr(&p("etc/motd"), "user.changed", b"yes").unwrap();
    // A file renamed within a merged directory, and a deleted file recreated.
    fs::rename(p("docs/readme"), p("docs/README")).unwrap();
    fs::remove_file(p("etc/motd")).unwrap();
    fs::write(p("etc/motd"), b"new motd\n").unwrap();
    // New objects: a tree with hard links, a symlink, a fifo, an empty directory.
    fs::create_dir_all(p("home/app/empty")).unwrap();
    fs::write(p("home/app/x"), b"linked").unwrap();
    fs::hard_link(p("home/app/x"), p("home/app/y")).unwrap();
    symlink("../../etc/passwd", p("home/app/passwd")).unwrap();
    nix_mkfifo(&p("home/app/pipe"));
}

fn nix_mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success(), "mkfifo {}", path.display());
}

/// Canonical dump with mtimes truncated to whole seconds (tar headers keep seconds).
fn view(root: &Path) -> String {
    let d = dump_tree_with(
        root,
        DumpOptions {
            mtime: true,
            private_xattrs: false,
            ..DumpOptions::default()
        },
    );
    d.lines()
        .map(|l| match l.find(" mtime=") {
            Some(i) => {
                let rest = &l[i + 7..];
                let end = rest.find(' ').unwrap_or(rest.len());
                let secs = rest[..end].split('.').next().unwrap();
                format!("{} mtime={secs}{}\n", &l[..i], &rest[end..])
            }
            None => format!("{l}\n"),
        })
        .collect()
}

/// Mounts the unpacked image `image` read-only at `mnt` and checks it shows `seen`.
fn assert_image_shows(mnt: &Path, image: &Path, seen: &str, what: &str) {
    let m = FuseMount::mount_cli(mnt, &["--image", s(image)]).unwrap();
    let got = view(m.path());
    m.unmount().unwrap();
    assert_eq!(
        got,
        seen,
        "{what} differs from the container's view:\n{}",
        common::dump::diff_dumps(seen, &got)
    );
}

struct Dirs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        for d in ["mnt", "upper", "work", "mnt2", "mnt3"] {
            fs::create_dir(root.join(d)).unwrap();
        }
        Dirs { _tmp: tmp, root }
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

#[test]
fn unpack_mount_change_commit_unpack_mount_round_trip() {
    if !can_mount() {
        return;
    }
    let d = Dirs::new();
    let layout = d.at("layout");
    write_layout(&layout, &image_layers(), None, Some("v1"));
    let (image, upper, work) = (d.at("image"), d.at("upper"), d.at("work"));
    rlayerfs(&["unpack", "--quiet", s(&layout), s(&image)]);

    let container = FuseMount::mount_cli(
        &d.at("mnt"),
        &[
            "--image",
            s(&image),
            "--upper",
            s(&upper),
            "--work",
            s(&work),
        ],
    )
    .unwrap();
    let before = view(container.path());
    assert!(before.contains("/var/log/new.log ") && !before.contains("/etc/hosts "));
    change(container.path());
    let seen = view(container.path());
    // Committing the upper of a live container gives the same layer as after unmount. The
    // chmod/chown of lower files left metacopy files (metadata only in the upper): their
    // data is read from the lower layers, given with --lower where no unpacked image is.
    let lowers = rlayerfs::image::image_lowerdirs(&image).unwrap();
    let with_lowers = |args: &[&str]| -> String {
        let mut v: Vec<&str> = args.to_vec();
        for l in &lowers {
            v.extend(["--lower", s(l)]);
        }
        rlayerfs(&v)
    };
    let (live, after) = (d.at("live.tar"), d.at("after.tar"));
    let live_out = with_lowers(&["commit", "--quiet", s(&upper), s(&live)]);
    container.unmount().unwrap();
    assert_ne!(before, seen, "the changes must show in the container");
    let after_out = with_lowers(&["commit", "--quiet", s(&upper), s(&after)]);
    let refused = Command::new(env!("CARGO_BIN_EXE_rlayerfs"))
        .args(["commit", "--quiet", s(&upper), s(&d.at("no-lowers.tar"))])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("metacopy") && err.contains("--lower"),
        "a metacopy file without its lower layers must be refused clearly: {err}"
    );
    assert_eq!(live_out, after_out);
    assert!(fs::read(&live).unwrap() == fs::read(&after).unwrap());

    // The new image as a new tag of the OCI layout, unpacked and mounted read-only.
    let printed = with_lowers(&[
        "commit",
        "--quiet",
        s(&upper),
        "--gzip",
        "--image",
        s(&layout),
        "--tag",
        "v2",
    ]);
    assert!(printed.contains("digest: sha256:") && printed.contains("diff_id: sha256:"));
    let image2 = d.at("image2");
    rlayerfs(&["unpack", "--quiet", "--ref", "v2", s(&layout), s(&image2)]);
    let lowerdir = rlayerfs(&[
        "unpack",
        "--quiet",
        "--ref",
        "v1",
        s(&layout),
        s(&d.at("i1")),
    ]);
    assert!(
        lowerdir.is_empty(),
        "no lowerdir printed without --print-lowerdir"
    );
    assert_image_shows(&d.at("mnt2"), &image2, &seen, "the committed image");

    // The same layer appended to the unpacked image itself (commit --image DEST).
    rlayerfs(&[
        "commit",
        "--quiet",
        s(&upper),
        "--image",
        s(&image),
        "--tag",
        "v2",
    ]);
    assert_image_shows(
        &d.at("mnt3"),
        &image,
        &seen,
        "the image with the appended layer",
    );
}

/// A container that writes one name of a hard-linked lower file sees the new content under
/// every name (index=on keeps them one inode); the committed image must show the same.
#[test]
fn changed_lower_hard_link_round_trips() {
    if !can_mount() {
        return;
    }
    let d = Dirs::new();
    let layout = d.at("layout");
    let layer = TarMaker::new()
        .dir("bin")
        .file("bin/perl", b"perl 5.36")
        .hardlink("bin/perl5.36", "bin/perl")
        .dir("other")
        .hardlink("other/perl", "bin/perl")
        .dir("gone")
        .hardlink("gone/perl", "bin/perl")
        .finish();
    write_layout(&layout, &[layer], None, Some("v1"));
    let (image, upper, work) = (d.at("image"), d.at("upper"), d.at("work"));
    rlayerfs(&["unpack", "--quiet", s(&layout), s(&image)]);
    let container = FuseMount::mount_cli(
        &d.at("mnt"),
        &[
            "--image",
            s(&image),
            "--upper",
            s(&upper),
            "--work",
            s(&work),
        ],
    )
    .unwrap();
    fs::write(container.path().join("bin/perl5.36"), b"perl 5.38").unwrap();
    fs::remove_file(container.path().join("gone/perl")).unwrap();
    let seen = view(container.path());
    container.unmount().unwrap();
    assert!(seen.contains("/other/perl hl=1 ") && !seen.contains("/gone/perl "));

    // Without the lower layers the other names cannot be exported: refused, naming the file.
    let out = Command::new(env!("CARGO_BIN_EXE_rlayerfs"))
        .args(["commit", "--quiet", s(&upper), s(&d.at("layer.tar"))])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "commit without lowers must fail");
    assert!(
        err.contains("perl") && err.contains("--lower"),
        "unclear error: {err}"
    );
    assert!(!d.at("layer.tar").exists(), "nothing written on refusal");
    // With explicit --lower it works as with the image.
    let lowers = rlayerfs::image::image_lowerdirs(&image).unwrap();
    let tarball = d.at("layer.tar");
    let mut args = vec!["commit", "--quiet", s(&upper), s(&tarball)];
    for l in &lowers {
        args.extend(["--lower", s(l)]);
    }
    let explicit = rlayerfs(&args);
    let appended = rlayerfs(&[
        "commit",
        "--quiet",
        s(&upper),
        "--image",
        s(&image),
        "--tag",
        "v2",
    ]);
    let digest = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("digest: "))
            .map(str::to_owned)
    };
    assert!(digest(&explicit).is_some(), "{explicit}");
    assert_eq!(
        digest(&explicit),
        digest(&appended),
        "--lower and an unpacked --image must give the same layer"
    );
    assert_image_shows(&d.at("mnt2"), &image, &seen, "the committed image");
}
