//! Uppers and kernel overlayfs: uppers written by the kernel with features rlayerfs cannot
//! honour are refused at mount time with a clear error, never misread; rootless uppers
//! written by rlayerfs, and what kernel overlayfs with `userxattr` makes of them.

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

/// Rootless, a renamed lower directory gets `user.overlay.redirect`, which rlayerfs follows
/// (also once that upper is the top lower of a new stack). Kernel overlayfs with
/// `userxattr` does not: `userxattr` implies `redirect_dir=nofollow`, so the kernel
/// refuses to rename such a directory (EXDEV, `mv` then copies) and refuses to look up a
/// directory carrying a redirect in its upper (EPERM). This pins both behaviours.
#[test]
fn rootless_redirect_is_followed_here_and_refused_by_kernel_userxattr() {
    if !can_mount("rootless_redirect_is_followed_here_and_refused_by_kernel_userxattr") {
        return;
    }
    let stack = Stack::new(1);
    stack.lower(0).file("a/f", b"lower content");
    let bin = env!("CARGO_BIN_EXE_rlayerfs");
    let o = format!(
        "lowerdir={},upperdir={},workdir={}",
        stack.lowerdir(),
        stack.upper.display(),
        stack.work.display()
    );
    let m = stack.mnt.display().to_string();
    // In a user namespace of its own (as podman runs it rootless): no CAP_SYS_ADMIN in the
    // initial namespace, so no trusted.* xattrs.
    let script = format!(
        "set -e; {bin} mount -o {o} {m}; mv {m}/a {m}/b; cat {m}/b/f; echo; \
         fusermount3 -u {m}; {bin} mount -o {o} {m}; cat {m}/b/f; echo; fusermount3 -u {m}"
    );
    let out = Command::new("unshare")
        .args(["-Urm", "sh", "-c", &script])
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "lower content\nlower content\n");
    let upper_b = stack.upper.join("b");
    assert_eq!(
        sys::get_xattr(&upper_b, "user.overlay.redirect")
            .ok()
            .as_deref(),
        Some(&b"a"[..]),
        "rootless redirect format"
    );
    assert!(sys::get_xattr(&upper_b, "trusted.overlay.redirect").is_err());

    // Kernel overlayfs with userxattr over the same upper: EPERM on the redirected dir.
    let work = stack.fresh_dir("kwork");
    let kmnt = stack.fresh_dir("kmnt");
    let data = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        stack.lowerdir(),
        stack.upper.display(),
        work.display()
    );
    sys::mount("overlay", &kmnt, "overlay", &data).expect("kernel mount with userxattr");
    let k = KernelOverlay::adopt(&kmnt);
    let err = std::fs::symlink_metadata(kmnt.join("b")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EPERM),
        "kernel lookup of b: {err}"
    );
    k.unmount().unwrap();

    // And the kernel itself will not rename a lower directory with userxattr.
    let fresh = Stack::new(1);
    fresh.lower(0).file("a/f", b"x");
    let data = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        fresh.lowerdir(),
        fresh.upper.display(),
        fresh.work.display()
    );
    sys::mount("overlay", &fresh.mnt, "overlay", &data).expect("kernel mount with userxattr");
    let k = KernelOverlay::adopt(&fresh.mnt);
    let err = std::fs::rename(fresh.mnt.join("a"), fresh.mnt.join("b")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EXDEV),
        "kernel rename: {err}"
    );
    k.unmount().unwrap();
}
