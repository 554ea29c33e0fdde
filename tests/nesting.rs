//! Nested overlays: an overlay whose layers live on an rlayerfs mount stores its own marks
//! there. Its overlay xattrs must be data to rlayerfs: set through the mount, they are
//! stored escaped (`P.X` as `P.overlay.X`, kernel 6.7+), and escaped ones found in a
//! layer show unescaped, exactly as kernel overlayfs does for its own namespace
//! (`trusted.overlay.` by default, `user.overlay.` with `userxattr`). Its `.wh.*` files
//! (fuse-overlayfs's and rootless rlayerfs's whiteouts) are ordinary files here, as on the
//! kernel; and whole inner overlays must behave as on a plain directory.

mod common;

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

/// Names beginning with `.wh.` made through the mount are ordinary objects, as on kernel
/// overlayfs (an inner overlay's fuse-overlayfs-style whiteouts and opaque markers): they
/// list, read, move away and go, they hide nothing of the lower layers, and they stay what
/// they are across a remount (stored with a literal mark, never as a whiteout).
#[test]
fn dot_wh_names_made_through_the_mount_are_ordinary() {
    if !can_mount("dot_wh_names_made_through_the_mount_are_ordinary") {
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

/// A mount of an inner overlay implementation.
struct Inner {
    mnt: PathBuf,
}

impl Inner {
    fn mount(bin: &str, lower: &Path, upper: &Path, work: &Path, mnt: &Path) -> Inner {
        let o = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
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
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .status();
    }
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
    if !can_mount("inner_overlays_on_rlayerfs_match_a_plain_directory") {
        return;
    }
    let mut inners = vec![env!("CARGO_BIN_EXE_rlayerfs").to_string()];
    match Command::new("fuse-overlayfs").arg("--version").output() {
        Ok(o) if o.status.success() => inners.push("fuse-overlayfs".into()),
        _ => eprintln!("fuse-overlayfs not installed: only rlayerfs as the inner overlay"),
    }
    for bin in &inners {
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

/// `rlayerfs commit` refuses an upper holding a `.wh.*` object made through the mount: in an
/// OCI layer that name would be a whiteout, so the layer would mean something else.
#[test]
fn commit_refuses_a_literal_dot_wh_name() {
    if !can_mount("commit_refuses_a_literal_dot_wh_name") {
        return;
    }
    let stack = Stack::new(1);
    stack.lower(0).file("x", b"x");
    let m = FuseMount::mount_dirs(&MountDirs::of(&stack)).expect("mount");
    std::fs::write(m.path().join(".wh.x"), b"").unwrap();
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
    assert!(stderr.contains(".wh.x"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

/// Random differential ops in an inner overlay (fuse-overlayfs, rlayerfs) nested on
/// rlayerfs against the same inner overlay on a plain directory: same outcome for every
/// op, same merged tree after every op and after remounting both the inner and the outer
/// mounts. `RLAYERFS_NEST_SEEDS` (default 2) seeds from `RLAYERFS_NEST_SEED` (default 0), of
/// `RLAYERFS_DIFF_OPS` (default 30) ops each.
#[test]
fn random_ops_in_nested_overlays() {
    if !can_mount("random_ops_in_nested_overlays") {
        return;
    }
    let first = common::env_u64("RLAYERFS_NEST_SEED", 0);
    let seeds = common::env_u64("RLAYERFS_NEST_SEEDS", 2);
    let n_ops = common::env_u64("RLAYERFS_DIFF_OPS", 30) as usize;
    let mut inners = vec![env!("CARGO_BIN_EXE_rlayerfs").to_string()];
    if Command::new("fuse-overlayfs")
        .arg("--version")
        .output()
        .is_ok()
    {
        inners.push("fuse-overlayfs".into());
    }
    let opts = DumpOptions::default();
    for bin in &inners {
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
                let op = random_op_in(&mut rng, &tree);
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
