//! Nested overlays: an overlay whose layers live on an rlayerfs mount stores its own marks
//! there. Its overlay xattrs must be data to rlayerfs: set through the mount, they are
//! stored escaped (`P.X` as `P.overlay.X`, kernel 6.7+), and escaped ones found in a
//! layer show unescaped, exactly as kernel overlayfs does for its own namespace
//! (`trusted.overlay.` by default, `user.overlay.` with `userxattr`).

mod common;

use std::path::Path;

use common::fixture::Stack;
use common::mount::{FuseMount, KernelOverlay, MountDirs};
use common::{can_mount, sys};

/// What one system shows and stores for `prefix` xattrs (the namespace it owns).
fn observe(root: &Path, upper: &Path, prefix: &str) -> Vec<String> {
    let opaque = format!("{prefix}opaque");
    let escaped = format!("{prefix}overlay.opaque");
    let mut out = Vec::new();
    let shown = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = sys::list_xattrs(p)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect();
        v.sort();
        v
    };
    // A lower dir carrying an escaped mark: an inner overlay's opaque dir, not opaque here.
    out.push(format!("lower d lists {:?}", shown(&root.join("d"))));
    out.push(format!(
        "lower d get {:?}",
        sys::get_xattr(&root.join("d"), &opaque).map_err(|e| sys::errno_of(&e))
    ));
    out.push(format!(
        "lower d/inner visible {}",
        root.join("d/inner").exists()
    ));
    // Set through the mount: stored escaped, shown as set.
    let set = sys::set_xattr(&root.join("f"), &opaque, b"y").map_err(|e| sys::errno_of(&e));
    out.push(format!("set on f {set:?}"));
    out.push(format!(
        "f get {:?}",
        sys::get_xattr(&root.join("f"), &opaque).map_err(|e| sys::errno_of(&e))
    ));
    out.push(format!("f lists {:?}", shown(&root.join("f"))));
    out.push(format!(
        "upper f holds {:?} {:?}",
        sys::get_xattr(&upper.join("f"), &escaped).ok(),
        sys::get_xattr(&upper.join("f"), &opaque).ok()
    ));
    let rm = sys::remove_xattr(&root.join("f"), &opaque).map_err(|e| sys::errno_of(&e));
    out.push(format!("remove {rm:?}, lists {:?}", shown(&root.join("f"))));
    out
}

fn stack_for(prefix: &str) -> Stack {
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file("f", b"f")
        .file("d/inner", b"inner")
        .xattr("d", &format!("{prefix}overlay.opaque"), b"y");
    stack
}

fn compare(prefix: &str, kernel_opts: &str) {
    let (ks, fs) = (stack_for(prefix), stack_for(prefix));
    let dirs = MountDirs::of(&ks);
    let data = format!("{},{kernel_opts}", dirs.options());
    sys::mount("overlay", &ks.mnt, "overlay", &data).expect("kernel mount");
    let k = KernelOverlay::adopt(&ks.mnt);
    let want = observe(&ks.mnt, &ks.upper, prefix);
    k.unmount().unwrap();
    let f = FuseMount::mount_dirs(&MountDirs::of(&fs)).expect("rlayerfs mount");
    let got = observe(f.path(), &fs.upper, prefix);
    f.unmount().unwrap();
    assert_eq!(
        got, want,
        "{prefix}: rlayerfs (left) vs kernel overlayfs -o {kernel_opts}"
    );
    assert!(
        want.iter().any(|l| l.contains("upper f holds Some")),
        "{want:?}"
    );
}

#[test]
fn trusted_overlay_xattrs_are_escaped_as_the_kernel_does() {
    if !can_mount("trusted_overlay_xattrs_are_escaped_as_the_kernel_does") {
        return;
    }
    compare("trusted.overlay.", "index=on,redirect_dir=on");
}

#[test]
fn user_overlay_xattrs_are_escaped_as_the_kernel_does_with_userxattr() {
    if !can_mount("user_overlay_xattrs_are_escaped_as_the_kernel_does_with_userxattr") {
        return;
    }
    compare("user.overlay.", "userxattr");
}
