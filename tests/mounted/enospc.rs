//! A full upper: the upper and workdir live on a small tmpfs (`size=`) that fills up during
//! writes and copy-ups. The caller gets ENOSPC (as on kernel overlayfs, which runs the same
//! scenario over an identical tmpfs), the daemon stays alive and keeps serving, a copy-up
//! that ran out of space leaves no upper file and nothing in `WORKDIR/work` (a data copy-up
//! into a metacopy file leaves it marked: it still reads as the lower), and once space is
//! freed the same copy-up succeeds.
//!
//! EIO from the upper is tested in `eio` (an ext4 upper shut down while mounted).

#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use crate::common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::live::{assert_same, is_zombie, Watchdog};
use common::sys::errno_of;
use common::{can_mount, FuseMount, KernelOverlay, MountDirs, Stack};

/// Size of the upper tmpfs.
const UPPER_MB: u64 = 16;
/// The lower file copied up when there is no room for it.
const BIG: usize = 8 << 20;
const CHUNK: usize = 1 << 20;

/// A tmpfs mounted on a fresh temporary directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(size_mb: u64) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("rlayerfs-enospc-")
            .tempdir()
            .unwrap();
        common::sys::mount(
            "tmpfs",
            dir.path(),
            "tmpfs",
            &format!("size={size_mb}m,mode=0755"),
        )
        .unwrap();
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = common::sys::umount2(self.dir.path(), 0) {
            eprintln!("warning: umount {}: {e}", self.dir.path().display());
            let _ = common::sys::umount2(self.dir.path(), libc::MNT_DETACH);
        }
    }
}

fn big_content() -> Vec<u8> {
    (0..BIG).map(|i| (i % 251) as u8).collect()
}

fn errno<T>(r: io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| errno_of(&e))
}

/// Writes `path` in 1 MiB chunks until an error; returns the bytes written and the errno.
fn fill(path: &Path) -> (u64, Result<(), i32>) {
    let mut f = match File::create(path) {
        Ok(f) => f,
        Err(e) => return (0, Err(errno_of(&e))),
    };
    let chunk = vec![0x5a; CHUNK];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => return (written, Ok(())),
            Ok(n) => written += n as u64,
            Err(e) => return (written, Err(errno_of(&e))),
        }
        if written > (UPPER_MB + 4) << 20 {
            return (written, Ok(()));
        }
    }
}

/// Polls the filesystem of `dir` for up to 5 s until `need` bytes are free.
fn wait_for_room(dir: &Path, need: u64) -> bool {
    for _ in 0..500 {
        if common::posix::free_bytes(dir).is_ok_and(|n| n >= need) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// What the upper holds for a copied-up file: `none`, `metacopy` (marked, its data in the
/// lower) or `data`.
fn upper_state(p: &Path) -> String {
    match fs::symlink_metadata(p) {
        Err(_) => "none".into(),
        Ok(_) if common::sys::get_xattr(p, "trusted.overlay.metacopy").is_ok() => "metacopy".into(),
        Ok(_) => "data".into(),
    }
}

fn scratch_entries(dirs: &MountDirs) -> Vec<String> {
    fs::read_dir(dirs.work.join("work"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The scenario; returns what it observed (compared between kernel overlayfs and rlayerfs).
fn scenario(root: &Path, dirs: &MountDirs, daemon_alive: &dyn Fn() -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    let mut note = |what: &str, v: String| seen.push(format!("{what}: {v}"));
    // 1. A new file fills the upper: ENOSPC.
    let (written, res) = fill(&root.join("fill"));
    note("fill", format!("{res:?}"));
    assert!(written > 0, "nothing could be written");
    note("alive after fill", daemon_alive().to_string());
    note(
        "stat root",
        format!("{:?}", errno(fs::metadata(root)).map(|_| ())),
    );
    // Leave about 4 MiB free: too little for the 8 MiB lower file.
    let keep = written.saturating_sub(4 << 20);
    note(
        "shrink fill",
        format!(
            "{:?}",
            errno(
                OpenOptions::new()
                    .write(true)
                    .open(root.join("fill"))
                    .and_then(|f| f.set_len(keep))
            )
        ),
    );
    // 2. Copy-ups that do not fit. Opening for writing copies the data: ENOSPC. Under
    // metacopy a chmod and a rename copy up the metadata only, which fits; then an open for
    // writing cannot copy the data into the metacopy file either. Without metacopy the
    // chmod and the rename copy the data and fail too.
    let open = errno(OpenOptions::new().append(true).open(root.join("big")));
    note("open big for append", format!("{:?}", open.map(|_| ())));
    let chmod = errno(fs::set_permissions(
        root.join("big"),
        fs::Permissions::from_mode(0o600),
    ));
    note("chmod big", format!("{chmod:?}"));
    let ren = errno(fs::rename(root.join("big"), root.join("big2")));
    note("rename big", format!("{ren:?}"));
    let cur = if ren.is_ok() { "big2" } else { "big" };
    let again = errno(OpenOptions::new().append(true).open(root.join(cur)));
    note(
        "open it again for append",
        format!("{:?}", again.map(|_| ())),
    );
    // Nothing half-done is visible: the file reads as the lower, work is clean.
    let data = fs::read(root.join(cur)).unwrap();
    note(
        "big reads as the lower",
        (data == big_content()).to_string(),
    );
    note(
        "big mode",
        format!(
            "{:o}",
            fs::metadata(root.join(cur)).unwrap().permissions().mode() & 0o7777
        ),
    );
    note("upper copy of big", upper_state(&dirs.upper.join(cur)));
    note("work leftovers", format!("{:?}", scratch_entries(dirs)));
    note("alive after copy-ups", daemon_alive().to_string());
    // 3. Small files until full.
    let mut small = 0;
    let err = loop {
        let p = root.join(format!("s{small}"));
        match fs::write(&p, vec![1u8; 256 << 10]) {
            Ok(()) => small += 1,
            Err(e) => break errno_of(&e),
        }
        if small > 1000 {
            break 0;
        }
    };
    note("small files", format!("errno {err}"));
    // 4. Space freed: the copy-up now succeeds and is complete.
    for i in 0..=small {
        let _ = fs::remove_file(root.join(format!("s{i}")));
    }
    note(
        "rm fill",
        format!("{:?}", errno(fs::remove_file(root.join("fill")))),
    );
    // The fill file's space comes back when its last descriptor closes. Through FUSE that
    // is the daemon's, closed at RELEASE, which the kernel sends after close(2) returns:
    // wait (bounded) until the upper has room for the copy-up, as a user would retry.
    note(
        "room after freeing",
        wait_for_room(&dirs.upper, BIG as u64 + (1 << 20)).to_string(),
    );
    let res = errno(
        OpenOptions::new()
            .append(true)
            .open(root.join(cur))
            .and_then(|mut f| f.write_all(b"tail")),
    );
    note("append after freeing", format!("{res:?}"));
    let mut want = big_content();
    want.extend_from_slice(b"tail");
    note(
        "big complete",
        (fs::read(root.join(cur)).unwrap() == want).to_string(),
    );
    note(
        "work leftovers at the end",
        format!("{:?}", scratch_entries(dirs)),
    );
    seen
}

#[test]
fn full_upper_gives_enospc_and_no_partial_copy_up() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack.lower(0).file("big", &big_content());

    let ktmp = Tmpfs::new(UPPER_MB);
    let kdirs = MountDirs::with_upper_in(&stack, ktmp.path());
    let k = KernelOverlay::mount_dirs(&kdirs).unwrap();
    let want = scenario(k.path(), &kdirs, &|| true);
    k.unmount().unwrap();

    let ftmp = Tmpfs::new(UPPER_MB);
    let fdirs = MountDirs::with_upper_in(&stack, ftmp.path());
    let m = FuseMount::mount_dirs(&fdirs).unwrap();
    let _dog = Watchdog::arm(
        "enospc",
        vec![m.path().to_path_buf()],
        Duration::from_secs(120),
    );
    let pids = m.daemons().to_vec();
    assert!(!pids.is_empty());
    let alive = || pids.iter().all(|&p| !is_zombie(p));
    let got = scenario(m.path(), &fdirs, &alive);
    m.unmount().unwrap();
    for line in &got {
        eprintln!("{line}");
    }
    assert_same(
        "enospc",
        "observations",
        "kernel overlayfs".into(),
        &want,
        "rlayerfs",
        &got,
    );
    // The kernel's own results, so that a change on both sides is noticed too.
    assert!(want[0].contains("Err(28)"), "{want:?}");
    let upper = if common::mount::test_metacopy() == "on" {
        "upper copy of big: metacopy"
    } else {
        "upper copy of big: none"
    };
    assert!(want.iter().any(|l| l == upper), "{want:?}");
}
