//! rlayerfs as podman's overlay `mount_program`, end to end, rootful and rootless: runs
//! `scripts/podman-e2e.sh` (and `--rootless`) with the binary cargo built for this test run.
//!
//! The script does the whole flow in a private storage (see its header): import a busybox
//! image, `podman build` layers that add, delete and replace files and directories, run
//! containers that change lower files, `podman diff`, `podman commit`, check the committed
//! image, and check that a rlayerfs mount served the container roots. It prints one `ok`/`FAIL`
//! line per check; this test prints that output and fails when the script does.
//!
//! Skipped (prints `SKIP`, passes) when not root (the rootless flow needs root to create its
//! temporary user), when podman is not installed (`.ci/run` installs it), or when
//! `RLAYERFS_SKIP_PODMAN=1`.

use std::path::Path;
use std::process::Command;

fn skip_reason() -> Option<String> {
    if std::env::var_os("RLAYERFS_SKIP_PODMAN").is_some_and(|v| v == "1") {
        return Some("RLAYERFS_SKIP_PODMAN=1".into());
    }
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (rootful podman)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    let podman = Command::new("podman").arg("--version").output();
    if !podman.is_ok_and(|o| o.status.success()) {
        return Some("podman is not installed".into());
    }
    None
}

/// The two flows would compete for the machine's few cores: run them one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs scripts/podman-e2e.sh with the binary under test and `args`, prints its output and
/// fails when it fails.
fn run_e2e(test: &str, args: &[&str]) {
    if let Some(why) = skip_reason() {
        println!("SKIP {test}: {why}");
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/podman-e2e.sh");
    // One stream, in order: the script's progress goes to stderr, its checks to stdout.
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"exec 2>&1; exec bash "$0" "$@""#)
        .arg(&script)
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_rlayerfs"))
        .args(args)
        .output()
        .expect("run scripts/podman-e2e.sh");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "scripts/podman-e2e.sh {args:?} failed ({}); its output is above",
        out.status
    );
}

#[test]
fn podman_mount_program_e2e() {
    run_e2e("podman_mount_program_e2e", &[]);
}

/// The same flow rootless: a temporary unprivileged user with subuid/subgid ranges runs
/// podman, which runs rlayerfs inside its user namespace (plus a `--uidmap 0:1:65536`
/// container, for which containers/storage passes `uidmapping=` to rlayerfs).
#[test]
fn podman_mount_program_e2e_rootless() {
    run_e2e("podman_mount_program_e2e_rootless", &["--rootless"]);
}
