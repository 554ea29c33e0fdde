//! `rlayerfs bench`: a quick benchmark for users on their own machine and storage.
//!
//! Generates stacks of N lower layers under `--dir` (one bottom layer holding `--files`
//! small files in `d/`, N−1 filler layers above it that merge into `d/`), then for each N
//! measures, through a live rlayerfs mount (and kernel overlayfs with `--kernel`, root
//! only) and in-process through the union core:
//! - `lookup_hit_us`: first `lstat` of each file (a kernel lookup reaching the daemon);
//! - `lookup_miss_us`: `lstat` of as many names that exist nowhere;
//! - `readdir_first_ms` / `readdir_again_ms`: listing `d/` once, then again (median of
//!   [`READDIR_REPEATS`]);
//! - `small_read_us`: open, read and close of each file.
//!
//! Every mount is fresh (new upper and workdir), every figure is a per-operation mean of one
//! pass (so the first lookups include building the daemon's directory index). The timings
//! are wall-clock and include the noise of the machine: compare systems of one run.
//! The rlayerfs mount is this binary (`rlayerfs mount -f`), stopped with SIGTERM.
//! For the rlayerfs mount the row also says which FUSE transport served it (`classic` or
//! `io_uring`) and how many requests each operation cost, per opcode ([`requests`]).
//! `--plot FILE.svg` also draws the lookup figures against the layer count ([`plot`]).

mod plot;
mod requests;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use self::requests::{per_op, DaemonStats, PhaseRequests};
use crate::union::layer::StackPaths;
use crate::union::{CoreOptions, UnionFs, ROOT};

/// Filler files in each layer above the bottom one (they merge into the listed directory).
const FILLERS_PER_LAYER: usize = 10;
/// Size of each small file.
const FILE_SIZE: usize = 1024;
/// How many times the listing is taken again after the first one.
const READDIR_REPEATS: usize = 5;
/// How long a mount may take to appear or go away.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);

/// `rlayerfs bench` options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Numbers of lower layers to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    pub layers: Vec<usize>,
    /// Files in the bottom layer (looked up, listed and read).
    #[arg(long, default_value_t = 2000)]
    pub files: usize,
    /// Where to generate the layers (the filesystem being measured; default: the
    /// temporary directory). A fresh subdirectory is made and removed afterwards.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also measure kernel overlayfs (needs root).
    #[arg(long)]
    pub kernel: bool,
    /// Only measure the core in-process (no mount).
    #[arg(long)]
    pub no_mount: bool,
    /// Also draw lookup time (hits and misses) against the layer count, per system, as an
    /// SVG chart into this file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// The figures of one system at one layer count.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub layers: usize,
    /// `rlayerfs` (through the mount), `kernel` (kernel overlayfs) or `core` (in-process).
    pub system: &'static str,
    pub lookup_hit_us: f64,
    pub lookup_miss_us: f64,
    pub readdir_first_ms: f64,
    pub readdir_again_ms: f64,
    pub small_read_us: f64,
    /// Entries of the listed directory (a check that every system sees the same tree).
    pub entries: usize,
    /// The FUSE transport that served the rlayerfs mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// FUSE requests per operation of each phase (rlayerfs mount only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<PhaseRequests>,
}

/// The whole report (`--json`).
#[derive(Debug, Serialize)]
pub struct Report {
    pub files: usize,
    pub layers: Vec<usize>,
    pub dir: String,
    pub results: Vec<Row>,
    /// What was not measured, and why.
    pub skipped: Vec<String>,
}

/// The generated layers, removed on drop.
struct World {
    base: PathBuf,
    bottom: PathBuf,
    fillers: Vec<PathBuf>,
    seq: usize,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn io_err(what: &str, p: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", p.display())
}

impl World {
    fn new(dir: &Path, files: usize, max_layers: usize) -> Result<World, String> {
        let base = dir.join(format!("rlayerfs-bench-{}", std::process::id()));
        std::fs::create_dir(&base).map_err(|e| io_err("create", &base, e))?;
        let mut w = World {
            bottom: base.join("b"),
            base,
            fillers: Vec::new(),
            seq: 0,
        };
        let d = w.bottom.join("d");
        std::fs::create_dir_all(&d).map_err(|e| io_err("create", &d, e))?;
        let data: Vec<u8> = (0..FILE_SIZE).map(|i| b'a' + (i % 26) as u8).collect();
        for i in 0..files {
            let p = d.join(format!("n{i}"));
            std::fs::write(&p, &data).map_err(|e| io_err("write", &p, e))?;
        }
        for k in 0..max_layers.saturating_sub(1) {
            let layer = w.base.join("f").join(k.to_string());
            let d = layer.join("d");
            std::fs::create_dir_all(&d).map_err(|e| io_err("create", &d, e))?;
            for j in 0..FILLERS_PER_LAYER {
                let p = d.join(format!("x{k}-{j}"));
                std::fs::write(&p, b"").map_err(|e| io_err("write", &p, e))?;
            }
            w.fillers.push(layer);
        }
        Ok(w)
    }

    /// The lower layers of an N-layer stack, top first.
    fn lowers(&self, n: usize) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.fillers[..n.saturating_sub(1)].to_vec();
        v.push(self.bottom.clone());
        v
    }

    /// Fresh upper, work and mount directories.
    fn fresh(&mut self) -> Result<(PathBuf, PathBuf, PathBuf), String> {
        self.seq += 1;
        let mk = |name: String| -> Result<PathBuf, String> {
            let p = self.base.join(name);
            std::fs::create_dir(&p).map_err(|e| io_err("create", &p, e))?;
            Ok(p)
        };
        Ok((
            mk(format!("u{}", self.seq))?,
            mk(format!("w{}", self.seq))?,
            mk(format!("m{}", self.seq))?,
        ))
    }
}

fn per_op_us(t: Duration, n: usize) -> f64 {
    t.as_secs_f64() * 1e6 / n.max(1) as f64
}

/// `lstat(2)` (fstatat), as C programs stat a name. Not `std::fs::symlink_metadata`: it
/// calls statx asking for the birth time too, which the FUSE client does not get from a
/// LOOKUP and so fetches with one more request (FUSE_STATX) at the first stat of a file.
fn lstat(p: &Path) -> std::io::Result<()> {
    rustix::fs::statat(rustix::fs::CWD, p, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .map(drop)
        .map_err(std::io::Error::from)
}

/// Open, read to the end and close, as `cat` does. Not `std::fs::read`: it asks statx for
/// a size hint, birth time included, which costs a FUSE_STATX request (see [`lstat`]).
fn read_small(p: &Path, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut f = std::fs::File::open(p)?;
    let mut total = 0;
    loop {
        match f.read(buf)? {
            0 => return Ok(total),
            n => total += n,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Measures through a mounted tree at `mnt`; with `stats`, also the requests of each
/// phase (the counters are read between phases, outside the timed parts).
fn measure_mounted(
    mnt: &Path,
    files: usize,
    layers: usize,
    system: &'static str,
    stats: Option<&DaemonStats>,
) -> Result<Row, String> {
    let snap = || stats.map(DaemonStats::snapshot).transpose();
    let d = mnt.join("d");
    let s0 = snap()?;
    let t = Instant::now();
    for i in 0..files {
        let p = d.join(format!("n{i}"));
        lstat(&p).map_err(|e| io_err("lstat", &p, e))?;
    }
    let hit = per_op_us(t.elapsed(), files);
    let s1 = snap()?;
    let t = Instant::now();
    for i in 0..files {
        if lstat(&d.join(format!("m{i}"))).is_ok() {
            return Err(format!("m{i} should not exist in {}", d.display()));
        }
    }
    let miss = per_op_us(t.elapsed(), files);
    let s2 = snap()?;
    let list = || -> Result<(usize, f64), String> {
        let t = Instant::now();
        let n = std::fs::read_dir(&d)
            .map_err(|e| io_err("readdir", &d, e))?
            .count();
        Ok((n, t.elapsed().as_secs_f64() * 1e3))
    };
    let (entries, first) = list()?;
    let s3 = snap()?;
    let mut again = Vec::new();
    for _ in 0..READDIR_REPEATS {
        again.push(list()?.1);
    }
    let s4 = snap()?;
    let mut buf = vec![0u8; FILE_SIZE * 2];
    let t = Instant::now();
    for i in 0..files {
        let p = d.join(format!("n{i}"));
        let n = read_small(&p, &mut buf).map_err(|e| io_err("read", &p, e))?;
        if n != FILE_SIZE {
            return Err(format!("{}: read {n} bytes", p.display()));
        }
    }
    let read = per_op_us(t.elapsed(), files);
    let s5 = snap()?;
    let (transport, requests) = match (s0, s1, s2, s3, s4, s5) {
        (Some(s0), Some(s1), Some(s2), Some(s3), Some(s4), Some(s5)) => (
            Some(s5.transport.clone()),
            Some(PhaseRequests {
                lookup_hit: per_op(&s0, &s1, files),
                lookup_miss: per_op(&s1, &s2, files),
                readdir_first: per_op(&s2, &s3, 1),
                readdir_again: per_op(&s3, &s4, READDIR_REPEATS),
                small_read: per_op(&s4, &s5, files),
            }),
        ),
        _ => (None, None),
    };
    Ok(Row {
        layers,
        system,
        lookup_hit_us: hit,
        lookup_miss_us: miss,
        readdir_first_ms: first,
        readdir_again_ms: median(again),
        small_read_us: read,
        entries,
        transport,
        requests,
    })
}

/// Measures in-process through the union core (no kernel, no FUSE).
fn measure_core(lowers: &[PathBuf], files: usize, layers: usize) -> Result<Row, String> {
    let paths = StackPaths {
        lowers: lowers.to_vec(),
        data: Vec::new(),
        upper: None,
        work: None,
    };
    let fs = UnionFs::new(
        &paths,
        CoreOptions {
            read_only: true,
            ..CoreOptions::default()
        },
    )?;
    let d = fs
        .lookup(ROOT, std::ffi::OsStr::new("d"))
        .map_err(|e| format!("lookup d: {e}"))?
        .ino;
    let names: Vec<OsString> = (0..files).map(|i| format!("n{i}").into()).collect();
    let t = Instant::now();
    let mut inos = Vec::with_capacity(files);
    for n in &names {
        inos.push(
            fs.lookup(d, n)
                .map_err(|e| format!("lookup {n:?}: {e}"))?
                .ino,
        );
    }
    let hit = per_op_us(t.elapsed(), files);
    let t = Instant::now();
    for i in 0..files {
        if fs.lookup(d, &OsString::from(format!("m{i}"))).is_ok() {
            return Err(format!("m{i} should not exist"));
        }
    }
    let miss = per_op_us(t.elapsed(), files);
    let t = Instant::now();
    let entries = fs.list_merged(d).map_err(|e| format!("list: {e}"))?.len();
    let first = t.elapsed().as_secs_f64() * 1e3;
    let mut again = Vec::new();
    for _ in 0..READDIR_REPEATS {
        let t = Instant::now();
        fs.list_merged(d).map_err(|e| format!("list: {e}"))?;
        again.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let t = Instant::now();
    for &ino in &inos {
        let fh = fs
            .open(ino, libc::O_RDONLY)
            .map_err(|e| format!("open: {e}"))?;
        let r = fs.read(fh, 0, FILE_SIZE as u32 * 2);
        fs.release(fh);
        let data = r.map_err(|e| format!("read: {e}"))?;
        if data.len() != FILE_SIZE {
            return Err(format!("read {} bytes", data.len()));
        }
    }
    let read = per_op_us(t.elapsed(), files);
    for ino in inos {
        fs.forget(ino, 1);
    }
    Ok(Row {
        layers,
        system: "core",
        lookup_hit_us: hit,
        lookup_miss_us: miss,
        // "." and ".." are not in the core's count as the mount's read_dir skips them.
        readdir_first_ms: first,
        readdir_again_ms: median(again),
        small_read_us: read,
        entries: entries.saturating_sub(2),
        transport: None,
        requests: None,
    })
}

/// Waits until `mnt` is (`want`) or is not a mount point.
fn wait_mounted(mnt: &Path, want: bool, child: Option<&mut Child>) -> Result<(), String> {
    let canon = mnt
        .canonicalize()
        .map_err(|e| io_err("mountpoint", mnt, e))?;
    let start = Instant::now();
    let mut child = child;
    while crate::mount::is_mount_point(&canon) != want {
        if let Some(c) = child.as_deref_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!("rlayerfs mount exited early ({status})"));
            }
        }
        if start.elapsed() > MOUNT_TIMEOUT {
            return Err(format!(
                "{}: mount state did not change in time",
                mnt.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn join_lowers(lowers: &[PathBuf]) -> String {
    lowers
        .iter()
        .map(|p| p.to_string_lossy().replace(':', "\\:"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Mounts rlayerfs (this binary, in the foreground), measures, stops it with SIGTERM.
fn run_rlayerfs(world: &mut World, n: usize, files: usize) -> Result<Row, String> {
    let (u, w, m) = world.fresh()?;
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let stats_file = m.with_extension("stats.json");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        join_lowers(&world.lowers(n)),
        u.display(),
        w.display()
    );
    let mut child = Command::new(exe)
        .arg("mount")
        .arg("-f")
        .arg("-o")
        .arg(&opts)
        .arg(&m)
        .env("RLAYERFS_STATS", &stats_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start rlayerfs mount: {e}"))?;
    let stats = DaemonStats::new(&stats_file, &child);
    let measured = wait_mounted(&m, true, Some(&mut child))
        .and_then(|()| measure_mounted(&m, files, n, "rlayerfs", Some(&stats)));
    let pid = rustix::process::Pid::from_child(&child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if start.elapsed() > MOUNT_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    measured
}

/// Mounts kernel overlayfs (relative layer paths: 128 absolute ones may not fit the
/// kernel's one-page option string), measures, unmounts.
fn run_kernel(world: &mut World, n: usize, files: usize) -> Result<Row, String> {
    let (u, w, m) = world.fresh()?;
    let rel = |p: &Path| -> PathBuf { p.strip_prefix(&world.base).unwrap_or(p).to_path_buf() };
    let lowers: Vec<PathBuf> = world.lowers(n).iter().map(|p| rel(p)).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        join_lowers(&lowers),
        rel(&u).display(),
        rel(&w).display()
    );
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&m)
        .current_dir(&world.base)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("mount: {e}"))?;
    if !status.success() {
        return Err(format!("mount -t overlay failed ({status})"));
    }
    let measured = measure_mounted(&m, files, n, "kernel", None);
    let _ = Command::new("umount").arg(&m).status();
    measured
}

/// Runs the benchmark; returns the process exit code.
pub fn run(args: &BenchArgs) -> Result<i32, String> {
    let mut layers: Vec<usize> = args.layers.iter().copied().filter(|&n| n > 0).collect();
    layers.dedup();
    if layers.is_empty() || args.files == 0 {
        return Err("bench: --layers and --files need positive numbers".into());
    }
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    // A chart that cannot be written is refused before the minutes of measuring.
    if let Some(p) = &args.plot {
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
        if parent.is_some_and(|d| !d.is_dir()) || p.is_dir() {
            return Err(format!(
                "bench: --plot {}: not a file in an existing directory",
                p.display()
            ));
        }
    }
    let max = layers.iter().copied().max().unwrap_or(1);
    let root = rustix::process::geteuid().is_root();
    let mut systems: Vec<&'static str> = Vec::new();
    let mut skipped = Vec::new();
    if !args.no_mount {
        if Path::new("/dev/fuse").exists() {
            systems.push("rlayerfs");
        } else {
            skipped.push("rlayerfs mount: no /dev/fuse".to_string());
        }
        if args.kernel {
            if root {
                systems.push("kernel");
            } else {
                skipped.push("kernel overlayfs: needs root".to_string());
            }
        }
    }
    systems.push("core");
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new((layers.len() * systems.len()) as u64 + 1);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix("bench");
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_message(format!("generating {max} layers, {} files", args.files));
    let mut world = World::new(&dir, args.files, max)?;
    bar.inc(1);
    let mut results = Vec::new();
    for &n in &layers {
        for &sys in &systems {
            bar.set_message(format!("{sys}, {n} layer(s)"));
            let r = match sys {
                "rlayerfs" => run_rlayerfs(&mut world, n, args.files),
                "kernel" => run_kernel(&mut world, n, args.files),
                _ => measure_core(&world.lowers(n), args.files, n),
            };
            match r {
                Ok(row) => results.push(row),
                Err(e) => skipped.push(format!("{sys} at {n} layer(s): {e}")),
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let report = Report {
        files: args.files,
        layers,
        dir: dir.display().to_string(),
        results,
        skipped,
    };
    if let Some(p) = &args.plot {
        plot::write_svg(&report, p)?;
        eprintln!("bench: chart written to {}", p.display());
    }
    if args.json {
        let s = serde_json::to_string_pretty(&report).map_err(|e| format!("json: {e}"))?;
        println!("{s}");
    } else {
        print_table(&report);
    }
    Ok(0)
}

fn print_table(r: &Report) {
    println!(
        "{} files in the bottom layer, {FILLERS_PER_LAYER} more per layer above; layers in {}",
        r.files, r.dir
    );
    println!(
        "{:>6}  {:<8}  {:>10}  {:>11}  {:>13}  {:>13}  {:>12}  {:>7}",
        "layers",
        "system",
        "hit µs/op",
        "miss µs/op",
        "readdir ms",
        "again ms",
        "read µs/file",
        "entries"
    );
    for row in &r.results {
        println!(
            "{:>6}  {:<8}  {:>10.2}  {:>11.2}  {:>13.3}  {:>13.3}  {:>12.2}  {:>7}",
            row.layers,
            row.system,
            row.lookup_hit_us,
            row.lookup_miss_us,
            row.readdir_first_ms,
            row.readdir_again_ms,
            row.small_read_us,
            row.entries
        );
    }
    let counted: Vec<(&Row, &PhaseRequests)> = r
        .results
        .iter()
        .filter_map(|row| row.requests.as_ref().map(|q| (row, q)))
        .collect();
    if !counted.is_empty() {
        println!();
        println!("FUSE requests per operation (rlayerfs mount)");
        println!(
            "{:>6}  {:<9}  {:>9}  {:>10}  {:>12}  {:>11}  {:>10}",
            "layers", "transport", "hit", "miss", "readdir", "again", "read"
        );
        for (row, q) in counted {
            println!(
                "{:>6}  {:<9}  {:>9.2}  {:>10.2}  {:>12.1}  {:>11.1}  {:>10.2}",
                row.layers,
                row.transport.as_deref().unwrap_or("?"),
                q.lookup_hit.total,
                q.lookup_miss.total,
                q.readdir_first.total,
                q.readdir_again.total,
                q.small_read.total
            );
        }
    }
    for s in &r.skipped {
        println!("skipped: {s}");
    }
}
