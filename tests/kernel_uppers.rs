//! Uppers written by kernel overlayfs with features rlayerfs cannot honour are refused at
//! mount time with a clear error, never misread.

mod common;

use std::process::Command;

use common::fixture::Stack;
use common::mount::{is_mounted, KernelOverlay};
use common::{can_mount, sys};

#[test]
fn kernel_metacopy_upper_is_refused() {
    if !can_mount("kernel_metacopy_upper_is_refused") {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file("big", &vec![7u8; 100_000])
        .file("small", b"x");
    // A kernel mount with metacopy=on records a chmod as a metadata-only copy-up.
    let data = format!(
        "lowerdir={},upperdir={},workdir={},metacopy=on,index=on,redirect_dir=on",
        stack.lowerdir(),
        stack.upper.display(),
        stack.work.display()
    );
    sys::mount("overlay", &stack.mnt, "overlay", &data).expect("kernel mount with metacopy");
    let k = KernelOverlay::adopt(&stack.mnt);
    std::fs::set_permissions(
        stack.mnt.join("big"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    k.unmount().unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_rlayerfs"))
        .arg("mount")
        .arg("-o")
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            stack.lowerdir(),
            stack.upper.display(),
            stack.work.display()
        ))
        .arg(&stack.mnt)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("metacopy") && stderr.contains("/big"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!is_mounted(&stack.mnt));
}
