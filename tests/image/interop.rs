//! Interoperability with umoci (and skopeo): an OCI layout built and modified with umoci
//! unpacks under rlayerfs to the same tree `umoci unpack` gives (compared through a kernel
//! overlay mount of the unpacked layers), and a layer committed by rlayerfs and appended
//! with `append_to_image` is accepted by umoci and skopeo. Skipped, with a message, when
//! umoci is not installed (`apt-get install umoci skopeo busybox-static`) or not root.

use crate::common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::image::{dump, is_root, kernel_overlay};
use rlayerfs::image::archive::Compression;
use rlayerfs::image::{
    append_to_image, commit, image_lowerdirs, unpack, CommitOptions, Platform, UnpackOptions,
};

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn umoci(args: &[&str], paths: &[&Path]) {
    let mut c = Command::new("umoci");
    c.args(args).args(paths);
    run(&mut c);
}

fn populate(rootfs: &Path) {
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::create_dir_all(rootfs.join("etc/conf.d")).unwrap();
    fs::create_dir_all(rootfs.join("var/cache/app")).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    match busybox {
        Some(b) => {
            fs::copy(b, rootfs.join("bin/busybox")).unwrap();
        }
        None => fs::write(rootfs.join("bin/busybox"), vec![0x7fu8; 300_000]).unwrap(),
    }
    fs::hard_link(rootfs.join("bin/busybox"), rootfs.join("bin/ls")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("/bin/busybox", rootfs.join("bin/abs")).unwrap();
    fs::write(rootfs.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    fs::write(rootfs.join("etc/conf.d/a"), b"a").unwrap();
    fs::write(rootfs.join("etc/conf.d/b"), b"b").unwrap();
    fs::write(rootfs.join("var/cache/app/blob"), vec![3u8; 10_000]).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        rootfs.join("var/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    rustix::fs::lsetxattr(
        rootfs.join("etc/hosts"),
        "user.origin",
        b"test",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

fn modify(rootfs: &Path) {
    fs::remove_file(rootfs.join("etc/hosts")).unwrap();
    fs::remove_dir_all(rootfs.join("var/cache")).unwrap();
    fs::remove_file(rootfs.join("etc/conf.d/a")).unwrap();
    fs::write(rootfs.join("etc/conf.d/c"), b"c").unwrap();
    fs::write(rootfs.join("etc/newfile"), b"new").unwrap();
    fs::write(rootfs.join("bin/busybox-config"), b"cfg").unwrap();
}

#[test]
fn umoci_layout_unpacks_to_the_same_tree_and_accepts_our_layer() {
    if !have("umoci") {
        eprintln!("umoci not installed: interop test skipped");
        return;
    }
    if !is_root() {
        eprintln!("not root: umoci interop test skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = t.join("layout");
    let bundle = t.join("bundle");
    umoci(&["init", "--layout"], &[&layout]);
    umoci(
        &["new", "--image", &format!("{}:base", layout.display())],
        &[],
    );
    umoci(
        &["unpack", "--image", &format!("{}:base", layout.display())],
        &[&bundle],
    );
    populate(&bundle.join("rootfs"));
    umoci(
        &["repack", "--image", &format!("{}:v1", layout.display())],
        &[&bundle],
    );
    let bundle2 = t.join("bundle2");
    umoci(
        &["unpack", "--image", &format!("{}:v1", layout.display())],
        &[&bundle2],
    );
    modify(&bundle2.join("rootfs"));
    umoci(
        &["repack", "--image", &format!("{}:v2", layout.display())],
        &[&bundle2],
    );

    let reference = t.join("reference");
    umoci(
        &["unpack", "--image", &format!("{}:v2", layout.display())],
        &[&reference],
    );
    let dest = t.join("dest");
    let opts = UnpackOptions {
        reference: Some("v2".into()),
        ..UnpackOptions::default()
    };
    unpack(&layout, &dest, &opts).unwrap();
    let lowers = image_lowerdirs(&dest).unwrap();
    assert!(lowers.len() >= 2);
    let mnt = t.join("mnt");
    fs::create_dir(&mnt).unwrap();
    match kernel_overlay(&lowers, &mnt) {
        Some(_guard) => assert_eq!(dump(&mnt), dump(&reference.join("rootfs"))),
        None => eprintln!("kernel overlay unavailable: merged view not compared"),
    }

    // A layer committed by rlayerfs, appended as v3, is accepted by umoci.
    let upper = t.join("upper");
    fs::create_dir_all(upper.join("opt")).unwrap();
    fs::create_dir_all(upper.join("etc")).unwrap();
    fs::write(upper.join("opt/added"), b"added").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        upper.join("etc/newfile"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    fs::create_dir(upper.join("etc/conf.d")).unwrap();
    fs::write(upper.join("etc/conf.d/only"), b"only").unwrap();
    rustix::fs::lsetxattr(
        upper.join("etc/conf.d"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let blob = t.join("layer.tar.gz");
    let report = commit(
        &upper,
        &blob,
        &CommitOptions {
            compression: Compression::Gzip,
            progress: false,
        },
    )
    .unwrap();
    append_to_image(
        &layout,
        &blob,
        &report,
        "v3",
        Some("v2"),
        &Platform::parse("linux/amd64").unwrap(),
    )
    .unwrap();
    let b3 = t.join("b3");
    umoci(
        &["unpack", "--image", &format!("{}:v3", layout.display())],
        &[&b3],
    );
    let r3 = b3.join("rootfs");
    assert_eq!(fs::read(r3.join("opt/added")).unwrap(), b"added");
    assert!(!r3.join("etc/newfile").exists());
    let mut conf: Vec<_> = fs::read_dir(r3.join("etc/conf.d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    conf.sort();
    assert_eq!(conf, vec!["only"]);
    assert!(r3.join("bin/busybox").exists());
    // And our unpack of v3 agrees with umoci's.
    let d3 = t.join("d3");
    unpack(
        &layout,
        &d3,
        &UnpackOptions {
            reference: Some("v3".into()),
            ..UnpackOptions::default()
        },
    )
    .unwrap();
    let mnt3 = t.join("mnt3");
    fs::create_dir(&mnt3).unwrap();
    if let Some(_g) = kernel_overlay(&image_lowerdirs(&d3).unwrap(), &mnt3) {
        assert_eq!(dump(&mnt3), dump(&r3));
    }
    if have("skopeo") {
        run(Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:v3", layout.display())));
        // skopeo copies it to a fresh layout, verifying every blob.
        let copy = t.join("copy");
        run(Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:v3", layout.display()))
            .arg(format!("oci:{}:v3", copy.display())));
        unpack(&copy, &t.join("d4"), &UnpackOptions::default()).unwrap();
    } else {
        eprintln!("skopeo not installed: skopeo checks skipped");
    }
}

/// umoci writes a lower directory replaced by a file as the file followed by whiteouts of the
/// directory's children (`var/cache/x`, then `var/cache/x/.wh.f1`); `umoci unpack` takes it,
/// and so must `rlayerfs unpack`: the merged tree equals umoci's (through kernel overlayfs).
#[test]
fn umoci_directory_replaced_by_a_file() {
    if !have("umoci") || !is_root() {
        eprintln!("umoci not installed or not root: test skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = t.join("layout");
    let image = |tag: &str| format!("{}:{tag}", layout.display());
    umoci(&["init", "--layout"], &[&layout]);
    umoci(&["new", "--image", &image("base")], &[]);
    let b1 = t.join("b1");
    umoci(&["unpack", "--image", &image("base")], &[&b1]);
    let cache = b1.join("rootfs/var/cache");
    fs::create_dir_all(cache.join("x/sub")).unwrap();
    fs::write(cache.join("x/f1"), b"one").unwrap();
    fs::write(cache.join("x/sub/f2"), b"two").unwrap();
    fs::write(cache.join("k"), b"keep").unwrap();
    umoci(&["repack", "--image", &image("v1")], &[&b1]);
    let b2 = t.join("b2");
    umoci(&["unpack", "--image", &image("v1")], &[&b2]);
    let x = b2.join("rootfs/var/cache/x");
    fs::remove_dir_all(&x).unwrap();
    fs::write(&x, b"now a file").unwrap();
    umoci(&["repack", "--image", &image("v2")], &[&b2]);

    let reference = t.join("reference");
    umoci(&["unpack", "--image", &image("v2")], &[&reference]);
    let dest = t.join("dest");
    let opts = UnpackOptions {
        reference: Some("v2".into()),
        ..UnpackOptions::default()
    };
    unpack(&layout, &dest, &opts).unwrap();
    let lowers = image_lowerdirs(&dest).unwrap();
    assert_eq!(
        fs::read(lowers[0].join("var/cache/x")).unwrap(),
        b"now a file"
    );
    let mnt = t.join("mnt");
    fs::create_dir(&mnt).unwrap();
    match kernel_overlay(&lowers, &mnt) {
        Some(_guard) => assert_eq!(dump(&mnt), dump(&reference.join("rootfs"))),
        None => eprintln!("kernel overlay unavailable: merged view not compared"),
    }
}
