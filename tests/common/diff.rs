//! Differential runner: one stack copied twice, each copy mounted by one system (kernel
//! overlayfs as the reference, the FUSE binary under test), the same ops applied to both,
//! outcomes and whole-tree dumps compared after every step. On divergence it returns a
//! report with the label (seed), the op list with both outcomes, a dump diff and both dumps.

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::dump::{diff_dumps, dump_tree_with, DumpOptions};
use super::fixture::Stack;
use super::mount::{fuse_bin_name, FuseMount, KernelOverlay, MountDirs};
use super::ops::{Op, Outcome, TreeView};

/// Which implementation mounts a side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Kernel,
    Fuse,
}

impl System {
    pub fn name(self) -> String {
        match self {
            System::Kernel => "kernel".into(),
            System::Fuse => fuse_bin_name().to_string_lossy().into_owned(),
        }
    }
}

/// A live mount of either system.
pub enum Mounted {
    Kernel(KernelOverlay),
    Fuse(FuseMount),
}

impl Mounted {
    pub fn mount(system: System, dirs: &MountDirs) -> io::Result<Mounted> {
        Ok(match system {
            System::Kernel => Mounted::Kernel(KernelOverlay::mount_dirs(dirs)?),
            System::Fuse => Mounted::Fuse(FuseMount::mount_dirs(dirs)?),
        })
    }

    pub fn path(&self) -> &Path {
        match self {
            Mounted::Kernel(m) => m.path(),
            Mounted::Fuse(m) => m.path(),
        }
    }

    pub fn unmount(self) -> io::Result<()> {
        match self {
            Mounted::Kernel(m) => m.unmount(),
            Mounted::Fuse(m) => m.unmount(),
        }
    }

    /// Unblocks anything stuck on this mount (see `FuseMount::abort`).
    pub fn abort(&self) {
        match self {
            Mounted::Kernel(m) => {
                let _ = super::sys::umount2(m.path(), libc::MNT_DETACH);
            }
            Mounted::Fuse(m) => m.abort(),
        }
    }
}

/// How long one op (on both sides) or one pair of dumps may take before the mounts are
/// aborted and the step reported as hung: a deadlocked daemon must fail the test, not hang it.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// One applied op and what each side answered.
#[derive(Clone, Debug)]
pub struct Step {
    pub op: Op,
    pub a: Outcome,
    pub b: Outcome,
}

/// Two systems over identical copies of one stack. Side `a` is the reference.
pub struct Pair {
    // Mounts are declared before the stacks so they drop (unmount) first.
    ma: Option<Mounted>,
    mb: Option<Mounted>,
    pub sa: Stack,
    pub sb: Stack,
    pub a: System,
    pub b: System,
    pub label: String,
    pub opts: DumpOptions,
    pub steps: Vec<Step>,
    /// The reference dump from the last successful comparison.
    last: String,
}

fn show(o: &Outcome) -> String {
    match o {
        Ok(s) => format!("Ok({s})"),
        Err(e) => format!("Err({})", std::io::Error::from_raw_os_error(*e)),
    }
}

impl Pair {
    /// Kernel (reference) against the FUSE binary under test.
    pub fn new(label: impl Into<String>, stack: &Stack) -> Pair {
        Self::with_systems(label, stack, System::Kernel, System::Fuse)
    }

    /// Copies `stack` for each side (the kernel side gets `copy_kernel_formats`) and mounts
    /// both. Panics if a mount fails: that is a harness or binary failure, not a divergence.
    pub fn with_systems(label: impl Into<String>, stack: &Stack, a: System, b: System) -> Pair {
        let copy_for = |s: System| match s {
            System::Kernel => stack.copy_kernel_formats(),
            System::Fuse => stack.copy(),
        };
        let (sa, sb) = (copy_for(a), copy_for(b));
        let label = label.into();
        let mount = |s: System, st: &Stack| {
            Mounted::mount(s, &MountDirs::of(st))
                .unwrap_or_else(|e| panic!("[{label}] mounting {}: {e}", s.name()))
        };
        let ma = Some(mount(a, &sa));
        let mb = Some(mount(b, &sb));
        Pair {
            ma,
            mb,
            sa,
            sb,
            a,
            b,
            label,
            opts: DumpOptions::default(),
            steps: Vec::new(),
            last: String::new(),
        }
    }

    /// Mount roots (panics once unmounted).
    pub fn roots(&self) -> (&Path, &Path) {
        let ma = self.ma.as_ref().expect("side a not mounted");
        let mb = self.mb.as_ref().expect("side b not mounted");
        (ma.path(), mb.path())
    }

    /// Runs `f` (which touches the mounts) with `STEP_TIMEOUT`; on timeout aborts both
    /// mounts so the stuck call returns, and reports the hang.
    fn guarded<T: Send>(&self, what: &str, f: impl FnOnce() -> T + Send) -> Result<T, String> {
        let (tx, rx) = mpsc::channel();
        thread::scope(|scope| {
            scope.spawn(move || {
                let _ = tx.send(f());
            });
            rx.recv_timeout(STEP_TIMEOUT).map_err(|_| {
                for m in [&self.ma, &self.mb].into_iter().flatten() {
                    m.abort();
                }
                let mut r = self.header(&format!("{what} hung for {STEP_TIMEOUT:?}"));
                r.push_str("mounts aborted (daemon killed, lazy unmount)\n");
                r
            })
        })
    }

    /// Applies `op` to both sides, then compares outcomes and trees.
    pub fn apply(&mut self, op: Op) -> Result<(), String> {
        let (ra, rb) = self.roots();
        let (oa, ob) = self.guarded(&format!("`{op}`"), || (op.apply(ra), op.apply(rb)))?;
        let same = oa == ob;
        self.steps.push(Step {
            op: op.clone(),
            a: oa,
            b: ob,
        });
        if !same {
            let (da, db) = self.dumps()?;
            return Err(self.report(&format!("outcomes differ at `{op}`"), &da, &db));
        }
        self.check(&format!("after `{op}`"))
    }

    /// Applies every op in order, stopping at the first divergence.
    /// Checks the start, applies each phase (remounting both systems between phases) and
    /// cross-mounts at the end; the first divergence's report is the error.
    pub fn run_phases(&mut self, phases: Vec<Vec<Op>>) -> Result<(), String> {
        self.check("initially")?;
        for (i, phase) in phases.into_iter().enumerate() {
            if i > 0 {
                self.remount()?;
            }
            self.apply_all(phase)?;
        }
        self.cross_check()
    }

    pub fn apply_all(&mut self, ops: impl IntoIterator<Item = Op>) -> Result<(), String> {
        ops.into_iter().try_for_each(|op| self.apply(op))
    }

    fn dumps(&self) -> Result<(String, String), String> {
        let (ra, rb) = self.roots();
        let opts = self.opts;
        self.guarded("dumping the trees", || {
            (
                without_kernel_ghosts(&dump_tree_with(ra, opts)),
                dump_tree_with(rb, opts),
            )
        })
    }

    /// Compares the two live trees.
    pub fn check(&mut self, when: &str) -> Result<(), String> {
        let (da, db) = self.dumps()?;
        if da == db {
            self.last = da;
            Ok(())
        } else {
            Err(self.report(&format!("trees differ {when}"), &da, &db))
        }
    }

    /// The reference tree at the last successful check (for op generation).
    pub fn reference_tree(&self) -> TreeView {
        TreeView::from_dump(&self.last)
    }

    /// Dump of the reference side's live tree.
    pub fn reference_dump(&self) -> String {
        without_kernel_ghosts(&dump_tree_with(self.roots().0, self.opts))
    }

    fn unmount_both(&mut self) -> Result<(), String> {
        for m in [self.ma.take(), self.mb.take()].into_iter().flatten() {
            let p = m.path().display().to_string();
            m.unmount()
                .map_err(|e| format!("[{}] unmount {p}: {e}", self.label))?;
        }
        Ok(())
    }

    /// Unmounts both sides and mounts them again on the same dirs (same workdirs).
    pub fn remount(&mut self) -> Result<(), String> {
        let before = self.reference_dump();
        self.unmount_both()?;
        self.ma = Some(self.mount_on(self.a, &self.sa, None)?);
        self.mb = Some(self.mount_on(self.b, &self.sb, None)?);
        let after = self.reference_dump();
        if before != after {
            let msg = format!("{} changed its own tree across a remount", self.a.name());
            return Err(self.report(&msg, &before, &after));
        }
        self.check("after remount")
    }

    fn mount_on(&self, sys: System, st: &Stack, work: Option<&Path>) -> Result<Mounted, String> {
        let mut dirs = MountDirs::of(st);
        if let Some(w) = work {
            dirs.work = w.to_path_buf();
        }
        Mounted::mount(sys, &dirs).map_err(|e| {
            format!(
                "[{}] mounting {} on {}: {e}",
                self.label,
                sys.name(),
                st.root.display()
            )
        })
    }

    /// Ends the live comparison: unmounts both, then checks that every system reads every
    /// side's on-disk result as the reference did while live: a(a) remounted, b(b) remounted,
    /// a over b's upper+lowers and b over a's (with the other's workdir, which holds the
    /// index of hard-linked copy-ups). Reports all
    /// mismatches at once.
    pub fn cross_check(&mut self) -> Result<(), String> {
        let expected = self.reference_dump();
        self.unmount_both()?;
        let mut problems = Vec::new();
        let plan = [
            (self.a, false, false),
            (self.b, true, false),
            (self.b, false, false),
            (self.a, true, false),
        ];
        for (sys, on_b, fresh) in plan {
            let st = if on_b { &self.sb } else { &self.sa };
            let whose = if on_b { self.b.name() } else { self.a.name() };
            let what = format!("{} reading {whose}'s stack after the run", sys.name());
            if sys == System::Kernel && !st.non_kernel_formats().is_empty() {
                st.translate_lowers_in_place();
            }
            let work = fresh.then(|| st.fresh_dir("work-x"));
            let m = match self.mount_on(sys, st, work.as_deref()) {
                Ok(m) => m,
                Err(e) => {
                    problems.push(format!("{what}: {e}"));
                    continue;
                }
            };
            let mut got = dump_tree_with(m.path(), self.opts);
            if sys == System::Kernel {
                got = without_kernel_ghosts(&got);
            }
            if let Err(e) = m.unmount() {
                problems.push(format!("{what}: unmount: {e}"));
            }
            if got != expected {
                problems.push(format!(
                    "{what} differs from the live reference\n--- diff (- live {}, + {what}):\n{}",
                    self.a.name(),
                    diff_dumps(&expected, &got)
                ));
            }
        }
        for on_b in [false, true] {
            self.rotation_check(on_b, &mut problems);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            let mut r = self.header("cross-check failed");
            for p in problems {
                let _ = writeln!(r, "{p}");
            }
            let _ = writeln!(r, "--- live reference dump:\n{expected}");
            Err(r)
        }
    }

    /// Layer rotation: one side's upper becomes the top lower of a new stack (a
    /// container's upper turned into the next image layer), mounted with a fresh upper by
    /// both systems, which must show the same tree. The rotated tree need not match the
    /// live one (hard links copied up with an index break once the index is gone), so the
    /// two systems are compared with each other.
    fn rotation_check(&self, on_b: bool, problems: &mut Vec<String>) {
        let st = if on_b { &self.sb } else { &self.sa };
        let whose = if on_b { self.b.name() } else { self.a.name() };
        let mut dumps = Vec::new();
        for sys in [self.a, self.b] {
            let mut lowers = vec![st.upper.clone()];
            lowers.extend(st.lowers.iter().cloned());
            let dirs = MountDirs {
                lowers,
                upper: st.fresh_dir("rot-upper"),
                work: st.fresh_dir("rot-work"),
                mnt: st.fresh_dir("rot-mnt"),
            };
            let what = format!("{} over {whose}'s upper as the top lower", sys.name());
            let m = match Mounted::mount(sys, &dirs) {
                Ok(m) => m,
                Err(e) => {
                    problems.push(format!("{what}: {e}"));
                    return;
                }
            };
            let mut got = dump_tree_with(m.path(), self.opts);
            if sys == System::Kernel {
                got = without_kernel_ghosts(&got);
            }
            if let Err(e) = m.unmount() {
                problems.push(format!("{what}: unmount: {e}"));
            }
            dumps.push((what, got));
        }
        if let [(wa, da), (wb, db)] = &dumps[..] {
            if da != db {
                let mut layers = String::new();
                for l in std::iter::once(&st.upper).chain(&st.lowers) {
                    let _ = writeln!(layers, "{}:\n{}", l.display(), layer_marks(l));
                }
                problems.push(format!(
                    "layer rotation: {wb} differs from {wa}\n--- diff (- {wa}, + {wb}):\n{}\n--- {wa}:\n{da}\n--- overlay marks of the rotated layers, top first:\n{layers}",
                    diff_dumps(da, db)
                ));
            }
        }
    }

    fn header(&self, headline: &str) -> String {
        let mut r = String::new();
        let _ = writeln!(r, "=== DIVERGENCE [{}] {headline}", self.label);
        let _ = writeln!(r, "systems: a={} b={}", self.a.name(), self.b.name());
        let _ = writeln!(r, "ops ({}):", self.steps.len());
        for (i, s) in self.steps.iter().enumerate() {
            let mark = if s.a == s.b { "" } else { "   <-- differs" };
            if s.a == s.b {
                let _ = writeln!(r, "  {:3}. {}  => {}", i + 1, s.op, show(&s.a));
            } else {
                let _ = writeln!(
                    r,
                    "  {:3}. {}  => a {} / b {}{mark}",
                    i + 1,
                    s.op,
                    show(&s.a),
                    show(&s.b)
                );
            }
        }
        r
    }

    /// Full divergence report: header, dump diff, both dumps.
    pub fn report(&self, headline: &str, da: &str, db: &str) -> String {
        let mut r = self.header(headline);
        let _ = writeln!(
            r,
            "--- diff (- a {}, + b {}):\n{}",
            self.a.name(),
            self.b.name(),
            diff_dumps(da, db)
        );
        let _ = writeln!(
            r,
            "--- a ({}) dump:\n{da}--- b ({}) dump:\n{db}",
            self.a.name(),
            self.b.name()
        );
        r
    }
}

/// Every entry of a layer directory with what marks it for an overlay: whiteout devices
/// and overlay xattrs (for divergence reports about redirects and whiteouts).
fn layer_marks(root: &Path) -> String {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = String::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
            let kind = if md.file_type().is_char_device() && md.rdev() == 0 {
                "whiteout"
            } else if md.is_dir() {
                todo.push(p.clone());
                "dir"
            } else {
                "other"
            };
            let marks: Vec<String> = super::sys::list_xattrs(&p)
                .unwrap_or_default()
                .into_iter()
                .filter(|n| n.contains(".overlay."))
                .map(|n| {
                    let v = super::sys::get_xattr(&p, &n).unwrap_or_default();
                    format!("{n}={}", v.escape_ascii())
                })
                .collect();
            let _ = writeln!(out, "  {rel} {kind} {}", marks.join(" "));
        }
    }
    out
}

/// Drops entries kernel overlayfs lists in readdir but cannot stat (ENOENT): the kernel
/// shows xattr whiteouts of non-merged directories and, after some removals, stale names.
/// rlayerfs hides such names; a name listed but missing on its side is still reported.
pub fn without_kernel_ghosts(dump: &str) -> String {
    dump.lines()
        .filter(|l| !l.ends_with("ERROR lstat 2"))
        .map(|l| format!("{l}\n"))
        .collect()
}
