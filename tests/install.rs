//! scripts/install.sh into a temporary --destdir: it installs the binary, the mount(8)
//! helper link, the man pages and the bash, zsh and fish completions where the distributions
//! look for them, prints each path it writes, and `--uninstall` removes exactly those.
//! Uses the binary cargo built (`--bin`), so no release build; writes nothing outside the
//! temporary directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_rlayerfs");

/// Runs install.sh with `args` (scratch files in `tmp` too); returns the paths it printed.
fn install_sh(tmp: &Path, args: &[&str]) -> BTreeSet<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(["--bin", BIN])
        .args(args)
        .env("TMPDIR", tmp)
        .output()
        .expect("run install.sh");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "install.sh {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| {
            let path = l
                .strip_prefix("installed ")
                .or_else(|| l.strip_prefix("removed "))
                .unwrap_or_else(|| panic!("unexpected line {l:?}"));
            PathBuf::from(path.split(" -> ").next().unwrap())
        })
        .collect()
}

/// Every file and symlink under `dir`.
fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                found.insert(e.path());
            }
        }
    }
    found
}

#[test]
fn install_into_destdir_and_uninstall() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("root");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let d = dest.to_str().unwrap();
    let args = ["--prefix", "/opt/rl", "--destdir", d];
    let installed = install_sh(&scratch, &args);
    assert_eq!(
        installed,
        files_under(&dest),
        "printed paths are the files written"
    );
    let at = |p: &str| dest.join(p);
    for p in [
        "opt/rl/bin/rlayerfs",
        "sbin/mount.fuse.rlayerfs",
        "opt/rl/share/man/man8/rlayerfs.8",
        "opt/rl/share/man/man8/rlayerfs-mount.8",
        "opt/rl/share/man/man8/rlayerfs-unpack.8",
        "opt/rl/share/bash-completion/completions/rlayerfs",
        "opt/rl/share/zsh/site-functions/_rlayerfs",
        "opt/rl/share/fish/vendor_completions.d/rlayerfs.fish",
    ] {
        assert!(
            installed.contains(&at(p)),
            "{p} not installed: {installed:?}"
        );
    }
    // The helper points at the installed binary's final path, not into the staging root.
    let link = std::fs::read_link(at("sbin/mount.fuse.rlayerfs")).unwrap();
    assert_eq!(link, Path::new("/opt/rl/bin/rlayerfs"));
    let version = Command::new(at("opt/rl/bin/rlayerfs"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("rlayerfs "));
    // Nothing left in the scratch directory either.
    assert!(files_under(&scratch).is_empty());

    // A file of someone else's in the same directories stays.
    let other = at("opt/rl/share/man/man8/other.8");
    std::fs::write(&other, ".TH OTHER 8\n").unwrap();
    let mut uninstall_args = args.to_vec();
    uninstall_args.push("--uninstall");
    let removed = install_sh(&scratch, &uninstall_args);
    assert_eq!(
        removed, installed,
        "--uninstall removes exactly what was installed"
    );
    assert_eq!(files_under(&dest), BTreeSet::from([other]));
}
