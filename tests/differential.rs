//! Differential tests: kernel overlayfs (index=on,redirect_dir=on,metacopy=on) is the
//! reference; the FUSE binary under test (rlayerfs, or `RLAYERFS_TEST_BIN`, e.g.
//! fuse-overlayfs) must give the same outcome for every op and the same tree after every
//! op, and each system must read the other's on-disk result the same way.
//!
//! Env: `RLAYERFS_DIFF_SEEDS` (number of random seeds, default 8), `RLAYERFS_DIFF_SEED`
//! (first seed, default 0), `RLAYERFS_DIFF_OPS` (ops per seed, default 30).
//! Skips (with a message) when not root or /dev/fuse is missing.

mod common;

use common::fixture::{random_stack_with, GenOptions, Stack, FIXTURE_EPOCH};
use common::ops::{random_op_in, Op, RenameFlags};
use common::rng::Rng;
use common::{
    can_mount, dump_tree_with, env_u64, DumpOptions, OpaqueFormat, Pair, System, WhiteoutFormat,
};

fn s(p: &str) -> String {
    p.to_string()
}

fn create(p: &str) -> Op {
    Op::Create {
        path: s(p),
        mode: 0o644,
    }
}
fn readdir(p: &str) -> Op {
    Op::ReadDir { path: s(p) }
}
fn rename(from: &str, to: &str) -> Op {
    Op::Rename {
        from: s(from),
        to: s(to),
        flags: RenameFlags::None,
    }
}
fn write(p: &str, offset: u64, data: &[u8]) -> Op {
    Op::Write {
        path: s(p),
        offset,
        data: data.to_vec(),
    }
}

/// Runs `phases` of ops on a kernel/FUSE pair over `stack`, remounting between phases, then
/// cross-checks the on-disk results; panics with the divergence report.
fn run_scenario(name: &str, stack: &Stack, phases: &[Vec<Op>]) {
    let mut pair = Pair::new(name, stack);
    if let Err(report) = pair.run_phases(phases.to_vec()) {
        panic!("{report}");
    }
}

fn run_seed(seed: u64, n_ops: usize, opts: &GenOptions) -> Result<(), String> {
    let stack = random_stack_with(seed, opts);
    let mut pair = Pair::new(format!("seed {seed}"), &stack);
    pair.check("initially")?;
    // Ops are drawn against the reference tree as it evolves (deterministic, since the
    // reference is), so that most of them reach existing entries.
    let mut rng = Rng::new(seed, 2);
    for _ in 0..n_ops {
        let op = random_op_in(&mut rng, &pair.reference_tree());
        pair.apply(op)?;
    }
    pair.cross_check()
}

fn run_seeds(test: &str, opts: &GenOptions, default_seeds: u64) {
    let first = env_u64("RLAYERFS_DIFF_SEED", 0);
    let count = env_u64("RLAYERFS_DIFF_SEEDS", default_seeds);
    let n_ops = env_u64("RLAYERFS_DIFF_OPS", 30) as usize;
    let mut failed = Vec::new();
    for seed in first..first + count {
        if let Err(report) = run_seed(seed, n_ops, opts) {
            eprintln!("{report}");
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "{test}: {} of {count} seeds diverged: {failed:?} (rerun one: RLAYERFS_DIFF_SEED=N \
         RLAYERFS_DIFF_SEEDS=1 cargo test --test differential {test} -- --nocapture)",
        failed.len()
    );
}

#[test]
fn random_differential() {
    if !can_mount() {
        return;
    }
    run_seeds("random_differential", &GenOptions::from_env(), 8);
}

/// Stacks also using `.wh.*`, `user.overlay.*` and `user.fuseoverlayfs.opaque`; the kernel
/// reads a copy translated to its own encodings.
#[test]
fn random_differential_non_kernel_formats() {
    if !can_mount() {
        return;
    }
    let opts = GenOptions {
        non_kernel_formats: true,
        ..GenOptions::from_env()
    };
    run_seeds("random_differential_non_kernel_formats", &opts, 3);
}

#[test]
fn rename_lower_dir_then_remount() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(2);
    stack
        .lower(1)
        .file("a/w", b"bottom w")
        .file("a/x", b"bottom x");
    stack
        .lower(0)
        .file("a/x", b"top x")
        .file("a/y/z", b"z")
        .file("b/q", b"q");
    stack.upper_layer().file("a/u", b"upper u");
    let phases = vec![
        vec![
            rename("a", "c"),
            readdir("c"),
            readdir(""),
            create("c/new"),
            rename("c/y", "b/y"),
            readdir("b/y"),
        ],
        vec![
            readdir("c"),
            rename("c", "a"),
            readdir("a"),
            Op::Read { path: s("a/x") },
        ],
    ];
    run_scenario("rename_lower_dir_then_remount", &stack, &phases);
}

/// Redirects found in lower layers (each layer was once an upper in which directories were
/// renamed), in the kernel's format: relative and absolute ones, a chain through three
/// layers, an absolute redirect whose path crosses directories redirected in the layers
/// below, and one pointing nowhere.
#[test]
fn redirects_in_lower_layers() {
    if !can_mount() {
        return;
    }
    const R: &str = "trusted.overlay.redirect";
    let stack = Stack::new(4);
    stack
        .lower(3)
        .file("a/f", b"a/f from the bottom")
        .file("a/sub/g", b"g")
        .file("p/q/r", b"r")
        .file("x/y", b"y");
    // Layer 2: `a` renamed to `b` (relative), `p/q` moved to `s` (absolute).
    stack
        .lower(2)
        .file("b/h", b"h added after the rename")
        .xattr("b", R, b"a")
        .whiteout("a", WhiteoutFormat::CharDev)
        .dir("s")
        .xattr("s", R, b"/p/q")
        .whiteout("p/q", WhiteoutFormat::CharDev);
    // Layer 1: `b` renamed to `c` (a chain c -> b -> a), a dangling redirect.
    stack
        .lower(1)
        .dir("c")
        .xattr("c", R, b"b")
        .whiteout("b", WhiteoutFormat::CharDev)
        .dir("nowhere")
        .file("nowhere/own", b"own")
        .xattr("nowhere", R, b"/does/not/exist");
    // Layer 0: `c/sub` moved to `t`: its path crosses `c`, redirected below.
    stack
        .lower(0)
        .dir("c")
        .whiteout("c/sub", WhiteoutFormat::CharDev)
        .dir("t")
        .xattr("t", R, b"/c/sub");
    let phases = vec![
        vec![
            readdir(""),
            readdir("c"),
            readdir("t"),
            readdir("s"),
            readdir("nowhere"),
            Op::Read { path: s("c/f") },
            Op::Read { path: s("t/g") },
            Op::Read { path: s("s/r") },
            // Moving redirected directories again, in the upper.
            rename("c", "d"),
            rename("t", "d/t2"),
            create("d/new"),
            write("d/f", 0, b"changed"),
            readdir("d"),
        ],
        vec![
            readdir("d"),
            readdir("d/t2"),
            Op::Read { path: s("d/t2/g") },
        ],
    ];
    run_scenario("redirects_in_lower_layers", &stack, &phases);
}

/// An absolute redirect whose path crosses an opaque directory ends the lookup in that
/// layer, even where the path goes no further there (found by layer rotation, seed 30158).
#[test]
fn redirect_through_opaque_dir_stops() {
    if !can_mount() {
        return;
    }
    const R: &str = "trusted.overlay.redirect";
    let stack = Stack::new(3);
    stack.lower(2).file("p/q/hidden", b"below the opaque p");
    stack
        .lower(1)
        .opaque("p", OpaqueFormat::TrustedXattr)
        .file("p/other", b"o");
    stack.lower(0).file("x/own", b"own").xattr("x", R, b"/p/q");
    let phases = vec![vec![readdir("x"), readdir("p"), create("x/new")]];
    run_scenario("redirect_through_opaque_dir_stops", &stack, &phases);
}

/// A directory whose lower-layer redirect is invalid fails its lookup with the kernel's
/// errno (`..` or `.`: EACCES, a relative value with `/` or an empty component: EINVAL),
/// and a redirect can never lead out of the layers. (Not compared through a directory
/// listing: the kernel lists such a name, rlayerfs lists it without an inode number,
/// since a READDIRPLUS entry of fuser carries one number for both.)
#[test]
fn invalid_redirects_in_lower_layers() {
    if !can_mount() {
        return;
    }
    const R: &str = "trusted.overlay.redirect";
    let stack = Stack::new(2);
    stack
        .lower(1)
        .file("x/y", b"y")
        .file("etc/passwd", b"inside");
    let bad: &[(&str, &[u8])] = &[
        ("dotdot", b"/x/.."),
        ("up", b".."),
        ("dot", b"."),
        ("slash", b"x/y"),
        ("empty", b""),
        ("trailing", b"/x/"),
        ("double", b"//x"),
    ];
    for (name, value) in bad {
        stack.lower(0).dir(name).xattr(name, R, value);
    }
    let pair = Pair::new("invalid_redirects_in_lower_layers", &stack);
    let (ka, fb) = pair.roots();
    for (name, value) in bad {
        let errno = |root: &std::path::Path| {
            std::fs::symlink_metadata(root.join(name))
                .map(|_| 0)
                .unwrap_or_else(|e| e.raw_os_error().unwrap_or(-1))
        };
        let (k, f) = (errno(ka), errno(fb));
        assert_ne!(k, 0, "{name}: the kernel accepted redirect {value:?}");
        assert_eq!(
            k,
            f,
            "{name} (redirect {:?}): kernel errno {k}, rlayerfs {f}",
            String::from_utf8_lossy(value)
        );
    }
}

#[test]
fn rm_rf_merged_dir() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(2);
    stack
        .lower(1)
        .file("d/x", b"x1")
        .file("d/y", b"y1")
        .file("d/sub/z", b"z1");
    stack
        .lower(0)
        .file("d/y", b"y0")
        .file("d/w", b"w0")
        .file("d/sub/v", b"v0");
    stack.upper_layer().file("d/u", b"u").file("d/sub/t", b"t");
    let phases = vec![
        vec![
            Op::RmRf { path: s("d") },
            readdir(""),
            Op::Mkdir {
                path: s("d"),
                mode: 0o755,
            },
            readdir("d"),
            create("d/x"),
            Op::Mkdir {
                path: s("d/sub"),
                mode: 0o700,
            },
        ],
        vec![readdir("d"), readdir("d/sub")],
    ];
    run_scenario("rm_rf_merged_dir", &stack, &phases);
}

#[test]
fn create_over_whiteout_is_opaque() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file("d/x", b"x")
        .file("d/y", b"y")
        .dir("d/e");
    let phases = vec![
        vec![
            Op::Unlink { path: s("d/x") },
            Op::Unlink { path: s("d/y") },
            Op::Rmdir { path: s("d/e") },
            Op::Rmdir { path: s("d") },
            Op::Mkdir {
                path: s("d"),
                mode: 0o755,
            },
            create("d/z"),
            readdir("d"),
        ],
        vec![
            readdir("d"),
            Op::Unlink { path: s("d/z") },
            Op::Rmdir { path: s("d") },
            readdir(""),
        ],
    ];
    run_scenario("create_over_whiteout_is_opaque", &stack, &phases);
}

/// Every whiteout/opaque encoding the kernel reads, then names created over them.
#[test]
fn kernel_whiteout_formats() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(2);
    stack
        .lower(1)
        .file("a", b"a")
        .file("b", b"b")
        .file("c", b"c")
        .file("d/a", b"da");
    stack.lower(1).file("d/b", b"db").file("e/x", b"ex");
    stack
        .lower(0)
        .whiteout("a", WhiteoutFormat::CharDev)
        .whiteout("b", WhiteoutFormat::XattrTrusted);
    stack
        .lower(0)
        .whiteout("d/a", WhiteoutFormat::XattrTrusted)
        .file("d/c", b"dc");
    stack
        .lower(0)
        .opaque("e", OpaqueFormat::TrustedXattr)
        .file("e/y", b"ey");
    stack.upper_layer().whiteout("c", WhiteoutFormat::CharDev);
    let phases = vec![
        vec![
            readdir(""),
            readdir("d"),
            readdir("e"),
            create("a"),
            Op::Mkdir {
                path: s("b"),
                mode: 0o755,
            },
        ],
        vec![
            readdir(""),
            Op::Symlink {
                target: s("x"),
                path: s("c"),
            },
        ],
    ];
    run_scenario("kernel_whiteout_formats", &stack, &phases);
}

/// Encodings only rlayerfs/fuse-overlayfs read; the kernel reference reads a translated copy.
#[test]
fn non_kernel_whiteout_formats() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(2);
    stack
        .lower(1)
        .file("a", b"a")
        .file("b", b"b")
        .file("d/a", b"da")
        .file("d/b", b"db");
    stack
        .lower(1)
        .file("e/x", b"ex")
        .file("f/x", b"fx")
        .file("g/x", b"gx");
    stack
        .lower(0)
        .whiteout("a", WhiteoutFormat::DotWh)
        .whiteout("d/a", WhiteoutFormat::XattrUser);
    stack
        .lower(0)
        .opaque("e", OpaqueFormat::DotWhOpq)
        .opaque("f", OpaqueFormat::UserOverlayXattr);
    stack
        .lower(0)
        .opaque("g", OpaqueFormat::FuseOverlayfsXattr)
        .file("g/y", b"gy");
    assert!(!stack.non_kernel_formats().is_empty());
    let phases = vec![vec![
        readdir(""),
        readdir("d"),
        readdir("e"),
        readdir("f"),
        readdir("g"),
        create("a"),
    ]];
    run_scenario("non_kernel_whiteout_formats", &stack, &phases);
}

/// Kernel quirk, deliberately not reproduced: a directory that is not merged (one layer
/// only) is read as is by the kernel, so a whiteout inside it that hides nothing is listed
/// by readdir while lookup says ENOENT. rlayerfs never lists a whiteout.
#[test]
fn whiteout_in_unmerged_dir() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(2);
    stack.lower(1).file("f", b"f");
    stack
        .lower(0)
        .whiteout("d/x", WhiteoutFormat::CharDev)
        .file("d/y", b"y");
    stack
        .upper_layer()
        .opaque("e", OpaqueFormat::TrustedXattr)
        .whiteout("e/z", WhiteoutFormat::CharDev);
    let m = common::mount::FuseMount::mount(&stack).expect("mount rlayerfs");
    let list = |rel: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(m.path().join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list("d"), ["y"]);
    assert!(list("e").is_empty());
    assert!(std::fs::symlink_metadata(m.path().join("d/x")).is_err());
    std::fs::write(m.path().join("d/x"), b"new").unwrap();
    assert_eq!(list("d"), ["x", "y"]);
    m.unmount().unwrap();
}

/// With index=on the kernel keeps a lower hard-link pair one inode across copy-up.
#[test]
fn hardlink_copy_up_keeps_link() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file("f", b"shared")
        .hardlink("g", "f")
        .hardlink("h/i", "f");
    let phases = vec![
        vec![
            write("f", 0, b"X"),
            Op::Read { path: s("g") },
            Op::Chmod {
                path: s("h/i"),
                mode: 0o600,
            },
        ],
        vec![Op::Read { path: s("h/i") }, Op::Unlink { path: s("g") }],
    ];
    run_scenario("hardlink_copy_up_keeps_link", &stack, &phases);
}

/// Found by the campaign (seed 6086): renaming a file over one name of a copied-up lower
/// hard link must drop the merged link count of the names left.
#[test]
fn rename_over_copied_up_hardlink() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file("c/d", b"linked")
        .hardlink("a/c/a", "c/d")
        .file("c/a", b"replacement")
        .file("e", b"second group")
        .hardlink("f", "e")
        .hardlink("g", "e");
    let phases = vec![
        vec![
            Op::SetXattr {
                path: s("c/d"),
                name: s("user.k"),
                value: b"v".to_vec(),
            },
            rename("c/a", "c/d"),
            Op::Read { path: s("a/c/a") },
            // Copied up through one name, replaced at another that is still lower-only.
            Op::SetXattr {
                path: s("e"),
                name: s("user.k"),
                value: b"w".to_vec(),
            },
            rename("a/c/a", "f"),
            Op::Read { path: s("g") },
        ],
        vec![Op::Read { path: s("a/c/a") }, Op::Read { path: s("g") }],
    ];
    run_scenario("rename_over_copied_up_hardlink", &stack, &phases);
}

/// The same with the target never copied up: the lower name goes, its copy-up first.
#[test]
fn rename_over_lower_hardlink() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file("c/d", b"linked")
        .hardlink("a/c/a", "c/d")
        .hardlink("b", "c/d")
        .file("c/a", b"replacement");
    let phases = vec![
        vec![rename("c/a", "c/d"), Op::Read { path: s("a/c/a") }],
        vec![Op::Read { path: s("b") }],
    ];
    run_scenario("rename_over_lower_hardlink", &stack, &phases);
}

/// Found by the campaign (seed 6496): RENAME_EXCHANGE with a lower hard link whose other
/// name the mount already knows copies it up at the exchanged name.
#[test]
fn exchange_with_lower_hardlink() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file("b/d/b", b"linked")
        .hardlink("b/c", "b/d/b")
        .file("c/x", b"x");
    let phases = vec![
        vec![
            Op::Read { path: s("b/d/b") },
            readdir("b"),
            Op::Rename {
                from: s("c"),
                to: s("b/c"),
                flags: RenameFlags::Exchange,
            },
            readdir("b/c"),
            Op::Read { path: s("c") },
        ],
        vec![Op::Read { path: s("b/d/b") }, readdir("b/c")],
    ];
    run_scenario("exchange_with_lower_hardlink", &stack, &phases);
}

#[test]
fn open_unlink_lower_file() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file("f", b"lower data")
        .sparse("s", 100_000, &[(50_000, b"mid")]);
    let phases = vec![vec![
        Op::OpenUnlinkRead { path: s("f") },
        Op::OpenUnlinkRead { path: s("s") },
        readdir(""),
    ]];
    run_scenario("open_unlink_lower_file", &stack, &phases);
}

/// Harness self-check (no FUSE): copies are exact, translated copies hold no non-kernel
/// encodings.
#[test]
fn harness_copy_is_exact() {
    if !common::sys::is_root() {
        use std::io::Write as _;
        let msg = "SKIP harness_copy_is_exact: not root (trusted.* xattrs need it)";
        let _ = writeln!(std::io::stderr(), "{msg}");
        return;
    }
    let full = DumpOptions {
        mtime: true,
        private_xattrs: true,
        ..DumpOptions::default()
    };
    for seed in 0..10 {
        let opts = GenOptions {
            non_kernel_formats: true,
            ..GenOptions::default()
        };
        let stack = random_stack_with(seed, &opts);
        let copy = stack.copy();
        for (a, b) in stack
            .lowers
            .iter()
            .chain([&stack.upper])
            .zip(copy.lowers.iter().chain([&copy.upper]))
        {
            assert_eq!(
                dump_tree_with(a, full),
                dump_tree_with(b, full),
                "seed {seed} layer {}",
                a.display()
            );
        }
        let k = stack.copy_kernel_formats();
        assert!(
            k.non_kernel_formats().is_empty(),
            "seed {seed}: {:?}",
            k.non_kernel_formats()
        );
        stack.translate_lowers_in_place();
        assert!(stack.non_kernel_formats().is_empty(), "seed {seed}");
    }
    let _ = FIXTURE_EPOCH;
}

/// Harness self-check: the kernel against itself never diverges (the generator, copier,
/// dump and cross-check are deterministic). `RLAYERFS_SELFTEST_SEEDS` seeds (default 3) for
/// each generator mode.
#[test]
fn harness_kernel_vs_kernel() {
    if !can_mount() {
        return;
    }
    let seeds = env_u64("RLAYERFS_SELFTEST_SEEDS", 3);
    for non_kernel_formats in [false, true] {
        let opts = GenOptions {
            non_kernel_formats,
            ..GenOptions::default()
        };
        for seed in 0..seeds {
            let stack = random_stack_with(seed, &opts);
            let label =
                format!("kernel-vs-kernel seed {seed} non-kernel formats {non_kernel_formats}");
            let mut pair = Pair::with_systems(label, &stack, System::Kernel, System::Kernel);
            let mut rng = Rng::new(seed, 2);
            let r = (|| {
                pair.check("initially")?;
                for _ in 0..30 {
                    let op = random_op_in(&mut rng, &pair.reference_tree());
                    pair.apply(op)?;
                }
                pair.cross_check()
            })();
            if let Err(report) = r {
                panic!("{report}");
            }
        }
    }
}

/// Debug aid: prints the stack layers, the ops with the reference outcomes and the final
/// reference tree for `RLAYERFS_DIFF_SEED` (`cargo test --test differential print_seed --
/// --ignored --nocapture`).
#[test]
#[ignore]
fn print_seed() {
    if !can_mount() {
        return;
    }
    let seed = env_u64("RLAYERFS_DIFF_SEED", 0);
    let n_ops = env_u64("RLAYERFS_DIFF_OPS", 30) as usize;
    let stack = random_stack_with(seed, &GenOptions::from_env());
    let raw = DumpOptions {
        mtime: false,
        private_xattrs: true,
        ..DumpOptions::default()
    };
    for (i, l) in stack.lowers.iter().enumerate() {
        println!("--- lower {i}:\n{}", dump_tree_with(l, raw));
    }
    println!("--- upper:\n{}", dump_tree_with(&stack.upper, raw));
    let mut pair = Pair::with_systems(
        format!("seed {seed}"),
        &stack,
        System::Kernel,
        System::Kernel,
    );
    pair.check("initially").unwrap();
    let mut rng = Rng::new(seed, 2);
    for _ in 0..n_ops {
        let op = random_op_in(&mut rng, &pair.reference_tree());
        pair.apply(op.clone()).unwrap();
        println!("{op}  => {:?}", pair.steps.last().unwrap().a);
    }
    println!("--- merged (kernel):\n{}", pair.reference_dump());
}

/// Harness self-check: the FUSE guard sees the live mount and its daemon, and unmounts and
/// reaps it on drop, also when the test panics.
#[test]
fn harness_fuse_guard_cleans_up() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack.lower(0).file("f", b"x");
    let mnt = stack.mnt.clone();
    let daemons = std::panic::catch_unwind(|| {
        let m = common::FuseMount::mount(&stack).unwrap_or_else(|e| panic!("{e}"));
        assert!(common::mount::is_mounted(&mnt));
        assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"x");
        let daemons = m.daemons().to_vec();
        std::panic::panic_any(daemons);
    })
    .expect_err("the closure panics")
    .downcast::<Vec<i32>>()
    .unwrap_or_else(|_| panic!("mounting failed (see output above)"));
    assert!(
        !common::mount::is_mounted(&stack.mnt),
        "still mounted after a panic"
    );
    eprintln!("FUSE daemon pids seen: {daemons:?}");
    if daemons.is_empty() {
        eprintln!("note: no daemon process found for the FUSE mount (not daemonized by name?)");
    }
    for pid in *daemons {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
            .unwrap_or(false);
        assert!(!alive, "daemon {pid} still running after unmount");
    }
}
