//! The command line: `rlayerfs mount …`, and the bare `rlayerfs -o OPTS MERGED` form that
//! container runtimes use for a `mount_program`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::mount::{self, MountRequest};
use crate::options::MountOptions;

/// A union filesystem over FUSE with kernel-overlayfs semantics.
#[derive(Debug, Parser)]
#[command(name = "rlayerfs", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Mount directly, as `rlayerfs mount` (the mount_program form).
    #[command(flatten)]
    mount: MountArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount a union of layers.
    Mount(MountArgs),
    /// Unpack an image (docker save archive, OCI layout, or one layer tarball) into layers.
    Unpack(crate::image::cli::UnpackArgs),
    /// Write an upper layer as an OCI layer tarball (optionally appended to an image).
    Commit(crate::image::cli::CommitArgs),
    /// Measure lookups, listings and small reads over generated stacks of N layers.
    Bench(crate::bench::BenchArgs),
}

/// How to mount.
#[derive(Debug, Args, Default)]
struct MountArgs {
    /// Mount options, comma separated; may be repeated: lowerdir=TOP:…:BOTTOM, upperdir=,
    /// workdir=, ro, volatile, timeout=SECONDS, allow_other, … (see README).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// A lower layer (repeat; first is the top), instead of lowerdir=.
    #[arg(long = "lower", value_name = "DIR")]
    lower: Vec<PathBuf>,
    /// The upper (writable) layer, instead of upperdir=.
    #[arg(long = "upper", value_name = "DIR")]
    upper: Option<PathBuf>,
    /// The work directory, instead of workdir=.
    #[arg(long = "work", value_name = "DIR")]
    work: Option<PathBuf>,
    /// Mount an image unpacked by `rlayerfs unpack` (its layers become the lowers).
    #[arg(long = "image", value_name = "DEST")]
    image: Option<PathBuf>,
    /// Never use FUSE passthrough (reads and writes then go through the daemon).
    #[arg(long = "no-passthrough")]
    no_passthrough: bool,
    /// Stay in the foreground.
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Debug logging (implies nothing else; fuse-overlayfs compatibility).
    #[arg(short = 'd', long = "debug")]
    debug: bool,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides.
    #[arg(long = "log-level", value_name = "LEVEL")]
    log_level: Option<String>,
    /// Where the daemon logs (default: stderr in the foreground, nowhere in the background).
    #[arg(long = "log-file", value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Where to mount.
    #[arg(value_name = "MOUNTPOINT")]
    mountpoint: Option<PathBuf>,
}

fn init_logging(level: &str, file: Option<&PathBuf>) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let res = match file {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("log file {}: {e}", p.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .try_init()
        }
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    res.map_err(|e| format!("logging: {e}"))
}

fn mount_request(args: MountArgs) -> Result<MountRequest, String> {
    let mut options = MountOptions::default();
    for o in &args.options {
        options.parse(o).map_err(|e| e.to_string())?;
    }
    if let Some(image) = &args.image {
        options.lowerdirs = crate::image::image_lowerdirs(image).map_err(|e| e.to_string())?;
    }
    if !args.lower.is_empty() {
        options.lowerdirs = args.lower.clone();
    }
    if args.upper.is_some() {
        options.upperdir = args.upper.clone();
    }
    if args.work.is_some() {
        options.workdir = args.work.clone();
    }
    let mountpoint = args.mountpoint.clone().ok_or("missing MOUNTPOINT")?;
    Ok(MountRequest {
        options,
        mountpoint,
        foreground: args.foreground,
        passthrough: !args.no_passthrough,
    })
}

fn run_mount(args: MountArgs) -> Result<i32, String> {
    let level = if args.debug {
        "debug".to_string()
    } else {
        args.log_level.clone().unwrap_or_else(|| "warn".into())
    };
    let log_file = args.log_file.clone();
    let req = mount_request(args)?;
    init_logging(&level, log_file.as_ref())?;
    mount::run(req)
}

/// Runs the command line; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let result = match cli.command {
        Some(Command::Mount(args)) => run_mount(args),
        Some(Command::Unpack(args)) => crate::image::cli::run_unpack(&args)
            .map(|()| 0)
            .map_err(|e| e.to_string()),
        Some(Command::Commit(args)) => crate::image::cli::run_commit(&args)
            .map(|()| 0)
            .map_err(|e| e.to_string()),
        Some(Command::Bench(args)) => crate::bench::run(&args),
        None => run_mount(cli.mount),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("rlayerfs: {msg}");
            1
        }
    }
}
