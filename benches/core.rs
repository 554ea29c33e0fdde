//! The union core without a mount: lookup against the number of lower layers, merged
//! readdir, and copy-up (data and metadata-only changes).
//!
//! Everything goes through the public core API, the same calls the FUSE adapter makes.
//! Layers are generated once per run under `$RLAYERFS_BENCH_DIR` (else `$TMPDIR`).
//! Copy-up builds files and renames them, so put that directory on a journaled
//! filesystem (the root filesystem of the build machines has no journal and its creates
//! are slowed by inodes freed by the previous run).
//!
//! What each group measures:
//! - `lookup/{hit,miss}_{cold,warm}/N`: a name only in the bottom of N lower layers, and a
//!   name in none. Cold is the first lookup in a directory on a fresh `UnionFs`, which
//!   reads every layer's directory into the per-directory index; warm repeats the lookup
//!   (the index is cached, but the upper is still asked each time).
//! - `readdir/{cold,warm}`: `list_merged` of a 10,000-entry directory spread over 4 lower
//!   layers with whiteouts (char-device and `.wh.` formats) and shadowed names.
//! - `copy_up/*`: every iteration starts from a fresh upper and workdir over shared lower
//!   layers; `open_write` opens for writing (copy-up) and writes 4 KiB, `chmod` is a
//!   metadata-only change (which still copies the data: there is no metacopy). `durable`
//!   fsyncs the copy before publishing it, as kernel overlayfs does; `volatile` does not.
//!   `chmod_upper` is the baseline: chmod of a file already in the upper.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode};
use rlayerfs::union::attr::SetAttr;
use rlayerfs::union::layer::StackPaths;
use rlayerfs::union::{CoreOptions, Ino, UnionFs, ROOT};

/// Lower-layer counts of the lookup benchmarks.
const LAYER_COUNTS: [usize; 5] = [1, 8, 32, 64, 128];
/// Unrelated files in the root of every filler layer, so that building a directory index
/// reads real listings and not empty directories.
const FILLER_PER_LAYER: usize = 32;
/// The merged directory of the readdir benchmark: 4 layers of `READDIR_PER_LAYER` new
/// names each, the top 3 whiting out `READDIR_WHITEOUTS` names of the layer below and
/// re-providing `READDIR_SHADOWED` of its names: 4 × 2650 − 3 × 200 = 10,000 visible.
const READDIR_LAYERS: usize = 4;
const READDIR_PER_LAYER: usize = 2650;
const READDIR_WHITEOUTS: usize = 200;
const READDIR_SHADOWED: usize = 100;
const READDIR_VISIBLE: usize =
    READDIR_LAYERS * READDIR_PER_LAYER - (READDIR_LAYERS - 1) * READDIR_WHITEOUTS;
/// Sizes of the copied-up files.
const SMALL: usize = 4 << 10;
const LARGE: usize = 64 << 20;

/// The generated layers, shared by every benchmark of the run.
struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    /// Filler layers for the lookup stacks (the bottom one is `lookup_bottom`).
    fillers: Vec<PathBuf>,
    lookup_bottom: PathBuf,
    readdir_layers: Vec<PathBuf>,
    copy_lower: PathBuf,
    seq: AtomicU64,
}

impl World {
    fn new() -> World {
        let tmp = match std::env::var_os("RLAYERFS_BENCH_DIR") {
            Some(d) => tempfile::tempdir_in(d),
            None => tempfile::tempdir(),
        }
        .expect("temporary directory");
        let root = tmp.path().to_path_buf();
        let max = LAYER_COUNTS.iter().copied().max().unwrap_or(1);
        let mut fillers = Vec::new();
        for i in 0..max - 1 {
            let dir = root.join(format!("filler{i}"));
            fs::create_dir(&dir).expect("mkdir");
            for j in 0..FILLER_PER_LAYER {
                fs::write(dir.join(format!("l{i}-f{j}")), b"").expect("write");
            }
            fillers.push(dir);
        }
        let lookup_bottom = root.join("lookup-bottom");
        fs::create_dir(&lookup_bottom).expect("mkdir");
        for j in 0..FILLER_PER_LAYER {
            fs::write(lookup_bottom.join(format!("bottom-f{j}")), b"").expect("write");
        }
        fs::write(lookup_bottom.join("target"), b"bottom").expect("write");

        let readdir_layers = (0..READDIR_LAYERS)
            .map(|i| generate_readdir_layer(&root, i))
            .collect();

        let copy_lower = root.join("copy-lower");
        fs::create_dir(&copy_lower).expect("mkdir");
        fs::write(copy_lower.join("small"), vec![0x5a; SMALL]).expect("write");
        fs::write(copy_lower.join("large"), pattern(LARGE)).expect("write");
        World {
            _tmp: tmp,
            root,
            fillers,
            lookup_bottom,
            readdir_layers,
            copy_lower,
            seq: AtomicU64::new(0),
        }
    }

    /// The lookup stack of `n` lower layers: `n - 1` fillers above the bottom layer.
    fn lookup_lowers(&self, n: usize) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.fillers[..n - 1].to_vec();
        v.push(self.lookup_bottom.clone());
        v
    }

    /// A new, empty upper and workdir, removed when the returned guard drops.
    fn fresh_upper(&self) -> Scratch {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.join(format!("run{n}"));
        fs::create_dir(&dir).expect("mkdir");
        fs::create_dir(dir.join("upper")).expect("mkdir");
        fs::create_dir(dir.join("work")).expect("mkdir");
        Scratch(dir)
    }
}

/// Directory holding one iteration's upper and workdir; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn paths(&self, lowers: Vec<PathBuf>) -> StackPaths {
        StackPaths {
            lowers,
            data: Vec::new(),
            upper: Some(self.0.join("upper")),
            work: Some(self.0.join("work")),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Non-repeating bytes, so no filesystem can shortcut the copy.
fn pattern(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Layer `i` of the readdir stack (0 = top): directory `big` with its own names, plus
/// whiteouts and shadowing copies of names of layer `i + 1`.
fn generate_readdir_layer(root: &Path, i: usize) -> PathBuf {
    let layer = root.join(format!("readdir{i}"));
    let big = layer.join("big");
    fs::create_dir_all(&big).expect("mkdir");
    for j in 0..READDIR_PER_LAYER {
        fs::write(big.join(format!("l{i}-entry-{j:05}")), b"").expect("write");
    }
    if i + 1 < READDIR_LAYERS {
        let below = i + 1;
        for j in 0..READDIR_WHITEOUTS {
            let name = format!("l{below}-entry-{j:05}");
            // Alternate the two formats a lower layer holds: char device 0/0 (needs
            // CAP_MKNOD; otherwise a `.wh.` file) and `.wh.NAME`.
            if j % 2 == 1 || !mknod_whiteout(&big.join(&name)) {
                fs::write(big.join(format!(".wh.{name}")), b"").expect("write");
            }
        }
        for j in READDIR_WHITEOUTS..READDIR_WHITEOUTS + READDIR_SHADOWED {
            fs::write(big.join(format!("l{below}-entry-{j:05}")), b"shadow").expect("write");
        }
    }
    layer
}

fn mknod_whiteout(path: &Path) -> bool {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .is_ok()
}

fn new_fs(paths: &StackPaths, volatile: bool) -> UnionFs {
    UnionFs::new(
        paths,
        CoreOptions {
            volatile,
            read_only: false,
            ..CoreOptions::default()
        },
    )
    .expect("stack")
}

/// Cold stacks hold `layers + 3` fds each; make room for criterion's batches.
fn raise_fd_limit() {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    );
}

fn bench_lookup(c: &mut Criterion, w: &World) {
    let mut g = c.benchmark_group("lookup");
    for &n in &LAYER_COUNTS {
        let scratch = w.fresh_upper();
        let paths = scratch.paths(w.lookup_lowers(n));
        for (case, name, found) in [("hit", "target", true), ("miss", "absent", false)] {
            let name = OsStr::new(name);
            let check = move |fs: &UnionFs| {
                let r = fs.lookup(ROOT, name);
                assert_eq!(
                    r.is_ok(),
                    found,
                    "lookup of {name:?} over {n} layers: {r:?}"
                );
                r
            };
            g.bench_with_input(BenchmarkId::new(format!("{case}_cold"), n), &n, |b, _| {
                b.iter_batched(
                    || new_fs(&paths, true),
                    |fs| {
                        let r = check(&fs);
                        // Dropping the stack (closing its fds) is not part of the lookup.
                        (fs, r)
                    },
                    BatchSize::PerIteration,
                );
            });
            let fs = new_fs(&paths, true);
            let _ = check(&fs);
            g.bench_with_input(BenchmarkId::new(format!("{case}_warm"), n), &n, |b, _| {
                b.iter(|| check(&fs));
            });
        }
        drop(scratch);
    }
    g.finish();
}

fn bench_readdir(c: &mut Criterion, w: &World) {
    let scratch = w.fresh_upper();
    let paths = scratch.paths(w.readdir_layers.clone());
    let open_big = || {
        let fs = new_fs(&paths, true);
        let ino = fs.lookup(ROOT, OsStr::new("big")).expect("big").ino;
        (fs, ino)
    };
    let list = |fs: &UnionFs, ino: Ino| {
        let v = fs.list_merged(ino).expect("list");
        // `.` and `..` come first.
        assert_eq!(v.len(), READDIR_VISIBLE + 2);
        v
    };
    let mut g = c.benchmark_group("readdir");
    g.throughput(criterion::Throughput::Elements(READDIR_VISIBLE as u64));
    g.bench_function("cold", |b| {
        b.iter_batched(
            open_big,
            |(fs, ino)| {
                let v = list(&fs, ino);
                (fs, v)
            },
            BatchSize::PerIteration,
        );
    });
    let (fs, ino) = open_big();
    let _ = list(&fs, ino);
    g.bench_function("warm", |b| b.iter(|| list(&fs, ino)));
    g.finish();
}

/// How a copy-up is triggered.
#[derive(Clone, Copy, Debug)]
enum Trigger {
    /// Open for writing and write one 4 KiB block at offset 0.
    OpenWrite,
    /// chmod: a metadata-only change.
    Chmod,
}

fn trigger(fs: &UnionFs, ino: Ino, how: Trigger) {
    match how {
        Trigger::OpenWrite => {
            let fh = fs.open(ino, libc::O_WRONLY).expect("open for write");
            fs.write(fh, 0, &[0xa5; SMALL]).expect("write");
            fs.release(fh);
        }
        Trigger::Chmod => {
            let set = SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            };
            fs.setattr(ino, &set).expect("chmod");
        }
    }
}

fn bench_copy_up(c: &mut Criterion, w: &World) {
    let mut g = c.benchmark_group("copy_up");
    // Every sample gets the same number of iterations: a 64 MiB copy-up takes tens of
    // milliseconds and linear sampling would run it hundreds of times.
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    let cases = [
        (Trigger::OpenWrite, "small", "4KiB", true),
        (Trigger::OpenWrite, "small", "4KiB", false),
        (Trigger::OpenWrite, "large", "64MiB", true),
        (Trigger::OpenWrite, "large", "64MiB", false),
        (Trigger::Chmod, "small", "4KiB", true),
        (Trigger::Chmod, "small", "4KiB", false),
        (Trigger::Chmod, "large", "64MiB", true),
    ];
    for (how, file, size, volatile) in cases {
        let label = match how {
            Trigger::OpenWrite => "open_write",
            Trigger::Chmod => "chmod",
        };
        let durability = if volatile { "volatile" } else { "durable" };
        let id = BenchmarkId::new(format!("{label}_{durability}"), size);
        g.bench_function(id, |b| {
            b.iter_batched(
                || {
                    let scratch = w.fresh_upper();
                    let fs = new_fs(&scratch.paths(vec![w.copy_lower.clone()]), volatile);
                    let ino = fs.lookup(ROOT, OsStr::new(file)).expect("lookup").ino;
                    (scratch, fs, ino)
                },
                |(scratch, fs, ino)| {
                    trigger(&fs, ino, how);
                    (scratch, fs)
                },
                BatchSize::PerIteration,
            );
        });
    }
    // Baseline: the same chmod on a file that is already in the upper.
    let scratch = w.fresh_upper();
    let fs = new_fs(&scratch.paths(vec![w.copy_lower.clone()]), true);
    let ino = fs.lookup(ROOT, OsStr::new("small")).expect("lookup").ino;
    trigger(&fs, ino, Trigger::Chmod);
    g.sampling_mode(SamplingMode::Auto);
    g.sample_size(100);
    g.bench_function("chmod_upper", |b| {
        let mut mode = 0o600;
        b.iter(|| {
            mode ^= 0o044;
            let set = SetAttr {
                mode: Some(mode),
                ..SetAttr::default()
            };
            fs.setattr(ino, &set).expect("chmod")
        });
    });
    g.finish();
    drop(fs);
    drop(scratch);
}

fn benches(c: &mut Criterion) {
    raise_fd_limit();
    let started = std::time::Instant::now();
    let w = World::new();
    eprintln!(
        "generated layers in {:?} under {}",
        started.elapsed(),
        w.root.display()
    );
    bench_lookup(c, &w);
    bench_readdir(c, &w);
    bench_copy_up(c, &w);
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1))
}

criterion_group! {
    name = core;
    config = config();
    targets = benches
}
criterion_main!(core);
