//! Nested overlays: an overlay whose layers live on an rlayerfs mount stores its own marks
//! there. Its overlay xattrs must be data to rlayerfs: set through the mount, they are
//! stored escaped (`P.X` as `P.overlay.X`, kernel 6.7+), and escaped ones found in a
//! layer show unescaped, exactly as kernel overlayfs does for its own namespace
//! (`trusted.overlay.` by default, `user.overlay.` with `userxattr`). Its `.wh.*` files
//! (fuse-overlayfs's and rootless rlayerfs's whiteouts) are ordinary files here, as on the
//! kernel, and its 0/0 whiteout devices (`mknod`, `RENAME_WHITEOUT`) ordinary devices, as on
//! a plain directory (kernel overlayfs refuses them); whole inner overlays (rlayerfs,
//! fuse-overlayfs, kernel overlayfs) must behave as on a plain directory, and what kernel
//! overlayfs leaves in rlayerfs's upper must mean the same to kernel overlayfs reading it.

use crate::common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixture::Stack;
use common::mount::{FuseMount, KernelOverlay, MountDirs};
use common::ops::{random_op_in, TreeView};
use common::{can_mount, dump_tree_with, sys, DumpOptions, Op, Pair, RenameFlags};

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
    let k = KernelOverlay::mount_with(&MountDirs::of(&ks), kernel_opts).expect("kernel mount");
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
    if !can_mount() {
        return;
    }
    compare("trusted.overlay.", "index=on,redirect_dir=on");
}

#[test]
fn user_overlay_xattrs_are_escaped_as_the_kernel_does_with_userxattr() {
    if !can_mount() {
        return;
    }
    compare("user.overlay.", "userxattr");
}

/// Names beginning with `.wh.` made through the mount are ordinary objects, as on kernel
/// overlayfs (an inner overlay's fuse-overlayfs-style whiteouts and opaque markers): they
/// list, read, move away and go, they hide nothing of the lower layers, and they stay what
/// they are across a remount (stored with a literal mark, never as a whiteout).
#[test]
fn dot_wh_names_made_through_the_mount_are_ordinary() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file("x", b"lower x")
        .file("d/keep", b"k")
        .file("e/f", b"f");
    let s = |p: &str| p.to_string();
    let mut pair = Pair::new("dot_wh_names_made_through_the_mount_are_ordinary", &stack);
    let first = vec![
        Op::Create {
            path: s(".wh.x"),
            mode: 0o600,
        },
        Op::Append {
            path: s(".wh.x"),
            data: b"data".to_vec(),
        },
        Op::Mkdir {
            path: s(".wh.dir"),
            mode: 0o755,
        },
        Op::Create {
            path: s(".wh.dir/inner"),
            mode: 0o644,
        },
        // An opaque marker's name inside a merged directory: its lower content stays.
        Op::Create {
            path: s("d/.wh..wh..opq"),
            mode: 0o644,
        },
        Op::ReadDir { path: s("d") },
        Op::ReadDir { path: s("") },
    ];
    let then = vec![
        Op::Read { path: s(".wh.x") },
        Op::ReadDir { path: s("d") },
        Op::Rename {
            from: s(".wh.x"),
            to: s("e/plain"),
            flags: RenameFlags::None,
        },
        Op::Unlink {
            path: s("d/.wh..wh..opq"),
        },
        Op::RmRf { path: s(".wh.dir") },
        Op::ReadDir { path: s("") },
    ];
    let run = |pair: &mut Pair| -> Result<(), String> {
        pair.check("initially")?;
        pair.apply_all(first)?;
        pair.remount()?;
        pair.apply_all(then)
    };
    if let Err(report) = run(&mut pair) {
        panic!("{report}");
    }
}

/// The inner overlay [`Inner::mount`] runs for this name: kernel overlayfs.
const KERNEL: &str = "kernel overlayfs";
/// Its options: the project's kernel reference without `index=on`, which needs an upper
/// that decodes file handles of evicted inodes (FUSE export support: not yet).
const KERNEL_OPTS: &str = "redirect_dir=on";

/// A mount of an inner overlay implementation: a FUSE binary, or [`KERNEL`].
struct Inner {
    mnt: PathBuf,
    kernel: bool,
    /// The inner FUSE daemon(s): processes whose command line names the mount point.
    daemons: Vec<u32>,
}

/// Processes whose command line has `mnt` as one of its arguments.
fn daemons_of(mnt: &Path) -> Vec<u32> {
    let want = mnt.as_os_str().as_encoded_bytes();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == want))
        })
        .collect()
}

impl Inner {
    fn mount(bin: &str, lower: &Path, upper: &Path, work: &Path, mnt: &Path) -> Inner {
        let o = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let kernel = bin == KERNEL;
        if kernel {
            let data = format!("{o},{KERNEL_OPTS}");
            if let Err(e) = sys::mount("overlay", mnt, "overlay", &data) {
                let log = Command::new("dmesg")
                    .output()
                    .map(|o| o.stdout)
                    .unwrap_or_default();
                let log = String::from_utf8_lossy(&log);
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                panic!("kernel overlayfs -o {data}: {e}; dmesg: {tail:?}");
            }
            return Inner {
                mnt: mnt.to_path_buf(),
                kernel,
                daemons: Vec::new(),
            };
        }
        let mut cmd = Command::new(bin);
        if bin.ends_with("rlayerfs") {
            cmd.arg("mount");
        }
        let out = cmd.arg("-o").arg(&o).arg(mnt).output().expect("run inner");
        assert!(
            out.status.success(),
            "{bin} -o {o}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Inner {
            mnt: mnt.to_path_buf(),
            kernel,
            daemons: daemons_of(mnt),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.kernel {
            let _ = common::mount::unmount_path(&self.mnt, |m| sys::umount2(m, 0));
        } else {
            // With the retries on EBUSY of every other unmount here: a plain fusermount3
            // alone failed once under load right after the tree was read.
            let _ = common::mount::unmount_path(&self.mnt, common::mount::fusermount_u);
            // The daemon exits after the unmount, and until it has, its open layer
            // directories keep the outer mount busy (EBUSY for the outer unmount).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while self
                .daemons
                .iter()
                .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// The inner overlays to nest: rlayerfs, kernel overlayfs, and fuse-overlayfs where
/// installed.
fn inner_overlays() -> Vec<String> {
    let mut inners = vec![
        env!("CARGO_BIN_EXE_rlayerfs").to_string(),
        KERNEL.to_string(),
    ];
    match Command::new("fuse-overlayfs").arg("--version").output() {
        Ok(o) if o.status.success() => inners.push("fuse-overlayfs".into()),
        _ => eprintln!("fuse-overlayfs not installed: not nested"),
    }
    inners
}

/// The inner stack of [`inner_overlay_dumps`]: the same files under `base`.
fn inner_stack(base: &Path) {
    for d in ["il/d", "il/e/sub", "iu", "iw", "im"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    for (f, c) in [
        ("il/f", "f"),
        ("il/d/g", "g"),
        ("il/d/h", "h"),
        ("il/e/sub/k", "k"),
        ("il/keep", "keep"),
    ] {
        std::fs::write(base.join(f), c).unwrap();
    }
}

/// Runs deletions, an opaque directory and a directory rename in an inner overlay (`bin`)
/// whose layers are under `base`; returns its merged tree live, after an inner remount and
/// (through `between`, e.g. remounting the outer mount) after another.
fn inner_overlay_dumps(bin: &str, base: &Path, between: &dyn Fn()) -> Vec<String> {
    let (l, u, w, m) = (
        base.join("il"),
        base.join("iu"),
        base.join("iw"),
        base.join("im"),
    );
    let opts = DumpOptions::default();
    let mut dumps = Vec::new();
    {
        let _inner = Inner::mount(bin, &l, &u, &w, &m);
        std::fs::remove_file(m.join("f")).unwrap();
        std::fs::remove_dir_all(m.join("d")).unwrap();
        std::fs::create_dir(m.join("d")).unwrap();
        std::fs::write(m.join("d/n"), "new").unwrap();
        // A directory rename: a redirect (rlayerfs) or a copy (fuse-overlayfs: EXDEV).
        let moved = Command::new("mv")
            .arg(m.join("e"))
            .arg(m.join("e2"))
            .status()
            .unwrap();
        assert!(moved.success());
        dumps.push(dump_tree_with(&m, opts));
    }
    {
        let _inner = Inner::mount(bin, &l, &u, &w, &m);
        dumps.push(dump_tree_with(&m, opts));
    }
    between();
    {
        let _inner = Inner::mount(bin, &l, &u, &w, &m);
        dumps.push(dump_tree_with(&m, opts));
    }
    dumps
}

/// An overlay nested on rlayerfs (its lowers, upper and workdir inside an rlayerfs mount,
/// as podman or buildah inside a container keep their storage) shows what the same inner
/// stack shows on a plain directory: for fuse-overlayfs and for rlayerfs as the inner
/// overlay, live, after an inner remount and after the outer mount was remounted too.
#[test]
fn inner_overlays_on_rlayerfs_match_a_plain_directory() {
    if !can_mount() {
        return;
    }
    for bin in &inner_overlays() {
        let plain = tempfile::tempdir().unwrap();
        inner_stack(plain.path());
        let want = inner_overlay_dumps(bin, plain.path(), &|| {});

        let outer_stack = Stack::new(1);
        let dirs = MountDirs::of(&outer_stack);
        let outer = std::cell::RefCell::new(Some(FuseMount::mount_dirs(&dirs).expect("outer")));
        inner_stack(&outer_stack.mnt);
        let got = inner_overlay_dumps(bin, &outer_stack.mnt, &|| {
            if let Some(m) = outer.borrow_mut().take() {
                m.unmount().unwrap();
            }
            *outer.borrow_mut() = Some(FuseMount::mount_dirs(&dirs).expect("outer again"));
        });
        if let Some(m) = outer.borrow_mut().take() {
            m.unmount().unwrap();
        }
        for (i, when) in ["live", "after an inner remount", "after an outer remount"]
            .iter()
            .enumerate()
        {
            assert_eq!(
                got[i], want[i],
                "{bin} nested on rlayerfs ({when}) vs on a plain directory"
            );
        }
        assert!(
            !want[0].contains("/f "),
            "{bin}: the deletion took: {}",
            want[0]
        );
    }
}

/// `rlayerfs commit` refuses an upper holding a `.wh.*` object or a character device 0/0
/// made through the mount (an inner overlay's whiteouts): in an OCI layer either would be
/// a whiteout, so the layer would mean something else.
#[test]
fn commit_refuses_a_literal_dot_wh_name() {
    if !can_mount() {
        return;
    }
    for (name, make) in [(".wh.x", false), ("dev", true)] {
        let stack = Stack::new(1);
        stack.lower(0).file("x", b"x");
        let m = FuseMount::mount_dirs(&MountDirs::of(&stack)).expect("mount");
        if make {
            sys::mknod(&m.path().join(name), libc::S_IFCHR | 0o600, 0, 0).unwrap();
        } else {
            std::fs::write(m.path().join(name), b"").unwrap();
        }
        m.unmount().unwrap();
        let out_tar = stack.root.join("out.tar");
        let out = Command::new(env!("CARGO_BIN_EXE_rlayerfs"))
            .arg("commit")
            .arg(&stack.upper)
            .arg(&out_tar)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "commit succeeded: {stderr}");
        assert!(stderr.contains(name), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
}

/// Random differential ops in an inner overlay (fuse-overlayfs, rlayerfs) nested on
/// rlayerfs against the same inner overlay on a plain directory: same outcome for every
/// op, same merged tree after every op and after remounting both the inner and the outer
/// mounts. `RLAYERFS_NEST_SEEDS` (default 2) seeds from `RLAYERFS_NEST_SEED` (default 0), of
/// `RLAYERFS_DIFF_OPS` (default 30) ops each.
#[test]
fn random_ops_in_nested_overlays() {
    if !can_mount() {
        return;
    }
    let first = common::env_u64("RLAYERFS_NEST_SEED", 0);
    let seeds = common::env_u64("RLAYERFS_NEST_SEEDS", 2);
    let n_ops = common::env_u64("RLAYERFS_DIFF_OPS", 30) as usize;
    let opts = DumpOptions::default();
    for bin in &inner_overlays() {
        for seed in first..first + seeds {
            let plain = tempfile::tempdir().unwrap();
            inner_stack(plain.path());
            let outer_stack = Stack::new(1);
            let dirs = MountDirs::of(&outer_stack);
            let mut outer = Some(FuseMount::mount_dirs(&dirs).expect("outer"));
            inner_stack(&outer_stack.mnt);
            let layers = |b: &Path| (b.join("il"), b.join("iu"), b.join("iw"), b.join("im"));
            let (pl, pu, pw, pm) = layers(plain.path());
            let (nl, nu, nw, nm) = layers(&outer_stack.mnt);
            let mut a = Some(Inner::mount(bin, &pl, &pu, &pw, &pm));
            let mut b = Some(Inner::mount(bin, &nl, &nu, &nw, &nm));
            let mut rng = common::rng::Rng::new(seed, 7);
            let mut log = Vec::new();
            for i in 0..n_ops {
                let tree = TreeView::from_dump(&dump_tree_with(&pm, opts));
                // Kernel overlayfs on a FUSE upper loses a hard link's other names
                // (ESTALE) once the name its inode remembers is removed: it revalidates
                // that removed FUSE dentry (docs/semantics.md). Links are left out there.
                let op = loop {
                    let op = random_op_in(&mut rng, &tree);
                    if !(bin == KERNEL && matches!(op, Op::Link { .. })) {
                        break op;
                    }
                };
                let (oa, ob) = (op.apply(&pm), op.apply(&nm));
                log.push(format!("{op} => {oa:?} / {ob:?}"));
                let (da, db) = (dump_tree_with(&pm, opts), dump_tree_with(&nm, opts));
                assert!(
                    oa == ob && da == db,
                    "{bin} seed {seed} op {i}: plain (left) vs nested (right) differ\nops:\n{}\n--- plain:\n{da}--- nested:\n{db}",
                    log.join("\n")
                );
            }
            let live = dump_tree_with(&pm, opts);
            drop((a.take(), b.take()));
            if let Some(m) = outer.take() {
                m.unmount().unwrap();
            }
            outer = Some(FuseMount::mount_dirs(&dirs).expect("outer again"));
            let _a = Inner::mount(bin, &pl, &pu, &pw, &pm);
            let _b = Inner::mount(bin, &nl, &nu, &nw, &nm);
            let (da, db) = (dump_tree_with(&pm, opts), dump_tree_with(&nm, opts));
            // fuse-overlayfs itself may show another st_nlink after a remount (seed 11:
            // a link to a lower file); only rlayerfs is held to its live tree here.
            if bin.ends_with("rlayerfs") {
                assert_eq!(
                    da, live,
                    "{bin} seed {seed}: the plain inner changed on remount"
                );
            }
            assert_eq!(
                db,
                da,
                "{bin} seed {seed}: nested after remounting both mounts\nops:\n{}",
                log.join("\n")
            );
            drop((_a, _b));
            drop(outer);
        }
    }
}

/// Kind, permissions, device number and link count of `p`, not followed.
fn kind_of(p: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(p) {
        Err(e) => format!("ERROR {}", sys::errno_of(&e)),
        Ok(m) => {
            let ft = m.file_type();
            let k = if ft.is_char_device() {
                format!("chr {}:{}", libc::major(m.rdev()), libc::minor(m.rdev()))
            } else if ft.is_dir() {
                "dir".into()
            } else {
                format!("file size={}", m.len())
            };
            format!("{k} mode={:o} nlink={}", m.mode() & 0o7777, m.nlink())
        }
    }
}

/// Names and `d_type` kinds of a listing, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Err(e) => return vec![format!("ERROR {}", sys::errno_of(&e))],
        Ok(rd) => rd
            .map(|e| {
                let e = e.unwrap();
                let t = e.file_type().unwrap();
                format!(
                    "{}:{}",
                    e.file_name().to_string_lossy(),
                    if t.is_char_device() {
                        "chr"
                    } else if t.is_dir() {
                        "dir"
                    } else {
                        "file"
                    }
                )
            })
            .collect(),
    };
    v.sort();
    v
}

/// The plain-directory tree [`whiteout_devices_as_on_a_plain_directory`] starts from,
/// under `base` (the same content the rlayerfs mount shows from its lower layer).
fn device_tree(base: &Path) {
    for (f, c) in [
        ("d/gone", "g"),
        ("d/kept", "k"),
        ("x", "x"),
        ("dir/y", "y"),
        ("e/f", "f"),
    ] {
        let p = base.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, c).unwrap();
    }
}

/// What [`whiteout_devices_as_on_a_plain_directory`] does and sees under `root`.
fn device_ops(root: &Path) -> Vec<String> {
    let e = |r: std::io::Result<()>| r.map_err(|e| sys::errno_of(&e));
    let mut obs = vec![format!(
        "unlink: {:?}",
        e(std::fs::remove_file(root.join("d/gone")))
    )];
    for (n, mode) in [
        ("d/fresh", 0o644),
        ("d/gone", 0o600),
        ("d/kept", 0o644),
        ("e/zero", 0),
    ] {
        let r = sys::mknod(&root.join(n), libc::S_IFCHR | mode, 0, 0);
        obs.push(format!("mknod {n}: {:?}", e(r)));
    }
    std::fs::write(root.join("up"), "up").unwrap();
    let rw = |a: &str, b: &str, f: u32| e(sys::renameat2(&root.join(a), &root.join(b), f));
    let w = libc::RENAME_WHITEOUT;
    obs.push(format!("lower file: {:?}", rw("x", "x2", w)));
    obs.push(format!("lower dir: {:?}", rw("dir", "dir2", w)));
    obs.push(format!("upper file: {:?}", rw("up", "up2", w)));
    obs.push(format!(
        "noreplace: {:?}",
        rw("d/kept", "x2", w | libc::RENAME_NOREPLACE)
    ));
    obs.push(format!(
        "exchange: {:?}",
        rw("d/kept", "x2", w | libc::RENAME_EXCHANGE)
    ));
    obs.push(format!("over a device: {:?}", rw("d/kept", "d/fresh", w)));
    // A device made so is linked, moved and removed like any other.
    let link = std::fs::hard_link(root.join("d/gone"), root.join("e/lnk"));
    obs.push(format!("link: {:?}", e(link)));
    obs.push(format!("move: {:?}", rw("e/zero", "d/moved", 0)));
    obs.push(format!(
        "exchange devices: {:?}",
        rw("d/moved", "e/lnk", libc::RENAME_EXCHANGE)
    ));
    obs.push(format!(
        "open: {:?}",
        std::fs::File::open(root.join("d/gone"))
            .map(drop)
            .map_err(|e| sys::errno_of(&e))
    ));
    obs.push(format!(
        "xattrs: {:?}",
        sys::list_xattrs(&root.join("d/gone")).map_err(|e| sys::errno_of(&e))
    ));
    for n in [
        "d/fresh", "d/gone", "d/kept", "d/moved", "e/lnk", "x", "dir", "up", "x2/.", "dir2/y",
    ] {
        obs.push(format!("{n}: {}", kind_of(&root.join(n))));
    }
    for d in ["", "d", "e", "dir2"] {
        obs.push(format!("list {d:?}: {:?}", listing(&root.join(d))));
    }
    obs.push(format!(
        "unlink a device: {:?}",
        e(std::fs::remove_file(root.join("d/moved")))
    ));
    obs.push(format!(
        "rmdir: {:?}",
        e(std::fs::remove_dir(root.join("dir2")))
    ));
    obs
}

/// A character device 0/0 made through the mount (`mknod`, or left by `RENAME_WHITEOUT`) is
/// an inner overlay's whiteout, an ordinary device to rlayerfs: it shows, lists (`d_type`),
/// links, moves and goes as on a plain directory (kernel overlayfs refuses both, EPERM and
/// EINVAL, so no inner overlay can keep its upper there), and hides nothing of the lower
/// layers. It stays that across a remount, and is stored not as rlayerfs's whiteout (a
/// 0/0 device) but as kernel 6.7+ stores a nested overlay's whiteout.
#[test]
fn whiteout_devices_as_on_a_plain_directory() {
    if !can_mount() {
        return;
    }
    let plain = tempfile::tempdir().unwrap();
    device_tree(plain.path());
    let want = device_ops(plain.path());
    let want_dump = dump_tree_with(plain.path(), DumpOptions::default());

    let stack = Stack::new(1);
    device_tree(&stack.lower(0).path(""));
    let dirs = MountDirs::of(&stack);
    let m = FuseMount::mount_dirs(&dirs).expect("mount");
    let got = device_ops(m.path());
    let got_dump = dump_tree_with(m.path(), DumpOptions::default());
    m.unmount().unwrap();
    assert_eq!(got, want, "rlayerfs (left) vs a plain directory");
    assert_eq!(got_dump, want_dump, "rlayerfs (left) vs a plain directory");
    assert!(
        want.iter().any(|l| l == "d/gone: chr 0:0 mode=600 nlink=2"),
        "{want:?}"
    );
    let m = FuseMount::mount_dirs(&dirs).expect("mount again");
    let again = dump_tree_with(m.path(), DumpOptions::default());
    m.unmount().unwrap();
    assert_eq!(again, want_dump, "after a remount (left)");
    // Stored as a zero-size file with the escaped xattr whiteout, in a directory with the
    // escaped `opaque=x` (what kernel overlayfs nesting reads), never as a 0/0 device.
    let stored = stack.upper.join("d/gone");
    assert_eq!(kind_of(&stored), "file size=0 mode=600 nlink=1");
    assert!(sys::get_xattr(&stored, "trusted.overlay.overlay.whiteout").is_ok());
    assert_eq!(
        sys::get_xattr(&stack.upper.join("d"), "trusted.overlay.overlay.opaque").ok(),
        Some(b"x".to_vec())
    );
}

/// Runs deletions, a directory made where one was deleted and a directory rename in kernel
/// overlayfs (`KERNEL_OPTS`) whose layers are `base/{il,iu,iw}`, mounted at `base/im`.
fn kernel_inner_changes(base: &Path) {
    let inner = Inner::mount(
        KERNEL,
        &base.join("il"),
        &base.join("iu"),
        &base.join("iw"),
        &base.join("im"),
    );
    let m = &inner.mnt;
    std::fs::remove_file(m.join("f")).unwrap();
    std::fs::remove_dir_all(m.join("d")).unwrap();
    std::fs::create_dir(m.join("d")).unwrap();
    std::fs::write(m.join("d/n"), "new").unwrap();
    std::fs::remove_file(m.join("e/sub/k")).unwrap();
    std::fs::rename(m.join("e"), m.join("e2")).unwrap();
    // An unnamed file through the inner overlay: it has its upper's O_TMPFILE.
    let t = common::posix::open_tmpfile(m, libc::O_RDWR, 0o600);
    assert!(t.is_ok(), "O_TMPFILE through the inner overlay: {t:?}");
}

/// The merged tree of kernel overlayfs with lower layers `lowers` (top first), read-only.
fn kernel_tree_of(lowers: &[PathBuf], mnt: &Path) -> String {
    /// Unmounts the reference overlay also when the dump panics.
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            // Retried, then detached: for a moment another test thread's fork holds
            // copies of the dump's descriptors until its exec closes them (EBUSY).
            let _ = common::mount::unmount_path(self.0, |m| sys::umount2(m, 0));
        }
    }
    let l: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    sys::mount(
        "overlay",
        mnt,
        "overlay",
        &format!("lowerdir={}", l.join(":")),
    )
    .expect("read-only kernel overlay");
    let _mounted = Unmount(mnt);
    dump_tree_with(mnt, DumpOptions::default())
}

/// Kernel overlayfs accepts a directory of an rlayerfs mount as upper and workdir (it probes
/// O_TMPFILE, RENAME_WHITEOUT and xattrs, and refuses an upper on FUSE lacking one of the
/// last two). What the inner overlay leaves there means the same wherever it is read:
/// (1) through rlayerfs, to the inner overlay again; (2) after the rlayerfs upper became a
/// lower of a new rlayerfs stack (layer rotation), to the inner overlay continuing there;
/// (3) to kernel overlayfs reading rlayerfs's layers, which shows the inner whiteouts as
/// zero-size files with `overlay.whiteout` in `opaque=x` directories: the inner overlay's
/// upper, used as its top lower there, hides what it deleted. Each compared with the same
/// inner stack on a plain directory.
#[test]
fn kernel_overlayfs_nested_on_rlayerfs() {
    if !can_mount() {
        return;
    }
    let plain = tempfile::tempdir().unwrap();
    inner_stack(plain.path());
    kernel_inner_changes(plain.path());
    let view = |base: &Path| {
        let i = Inner::mount(
            KERNEL,
            &base.join("il"),
            &base.join("iu"),
            &base.join("iw"),
            &base.join("im"),
        );
        dump_tree_with(&i.mnt, DumpOptions::default())
    };
    let want = view(plain.path());
    assert!(!want.contains("/f ") && want.contains("/e2/sub "), "{want}");
    let scratch = tempfile::tempdir().unwrap();
    let as_lower = |iu: PathBuf, il: PathBuf| kernel_tree_of(&[iu, il], scratch.path());
    let want_as_lower = as_lower(plain.path().join("iu"), plain.path().join("il"));
    assert!(
        !want_as_lower.contains("/f ") && want_as_lower.contains("/d/n "),
        "{want_as_lower}"
    );

    let outer = Stack::new(1);
    let dirs = MountDirs::of(&outer);
    let m = FuseMount::mount_dirs(&dirs).expect("outer");
    inner_stack(m.path());
    kernel_inner_changes(m.path());
    assert_eq!(
        view(m.path()),
        want,
        "(1) nested on rlayerfs (left) vs on a plain directory"
    );
    m.unmount().unwrap();

    // (3) kernel overlayfs over rlayerfs's layers, the inner upper as a lower below it.
    let kview = tempfile::tempdir().unwrap();
    let outer_ro = kview.path().join("m");
    std::fs::create_dir(&outer_ro).unwrap();
    sys::mount(
        "overlay",
        &outer_ro,
        "overlay",
        &format!("lowerdir={}:{}", outer.upper.display(), outer.lowerdir()),
    )
    .expect("kernel overlayfs over rlayerfs's layers");
    let got_as_lower = as_lower(outer_ro.join("iu"), outer_ro.join("il"));
    sys::umount2(&outer_ro, 0).unwrap();
    assert_eq!(
        got_as_lower, want_as_lower,
        "(3) the inner upper as a lower, read through kernel overlayfs over rlayerfs's layers (left) vs a plain directory"
    );

    // (2) layer rotation: rlayerfs's upper becomes the top lower of a new rlayerfs stack.
    let rotated = Stack::new(1);
    let rdirs = MountDirs {
        lowers: vec![outer.upper.clone(), outer.lower(0).path("")],
        ..MountDirs::of(&rotated)
    };
    let m = FuseMount::mount_dirs(&rdirs).expect("rotated");
    assert_eq!(
        view(m.path()),
        want,
        "(2) after layer rotation (left) vs a plain directory"
    );
    // The inner overlay goes on there: what it deletes now is copied up and stays deleted.
    let go_on = |base: &Path| {
        let i = Inner::mount(
            KERNEL,
            &base.join("il"),
            &base.join("iu"),
            &base.join("iw"),
            &base.join("im"),
        );
        std::fs::remove_file(i.mnt.join("keep")).unwrap();
        std::fs::rename(i.mnt.join("d"), i.mnt.join("d3")).unwrap();
    };
    go_on(plain.path());
    go_on(m.path());
    assert_eq!(
        view(m.path()),
        view(plain.path()),
        "(2) changed after rotation (left)"
    );
    m.unmount().unwrap();
}
