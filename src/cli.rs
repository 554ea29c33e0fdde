//! The command line: `rlayerfs mount …`, and the bare `rlayerfs -o OPTS MERGED` form that
//! container runtimes use for a `mount_program`.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::mount::{self, MountRequest};
use crate::options::MountOptions;
use crate::printable;

/// A union filesystem over FUSE with kernel-overlayfs semantics.
///
/// Merges read-only lower layers and one writable upper layer into one mount, with
/// copy-on-write and whiteouts, as kernel overlayfs does, and serves as podman's and buildah's
/// overlay `mount_program` (fuse-overlayfs's options are understood). `--help` shows every
/// mount option; `-h` a summary.
#[derive(Debug, Parser)]
#[command(
    name = "rlayerfs",
    version,
    args_conflicts_with_subcommands = true,
    after_long_help = LONG_HELP
)]
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
    #[command(after_long_help = LONG_HELP)]
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
    /// Mount options, comma separated; may be repeated: lowerdir=TOP:...:BOTTOM, upperdir=,
    /// workdir=, ro, volatile, timeout=SECONDS, allow_other, ... (all of them: --help).
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
    /// Where to mount. Two operands are SOURCE MOUNTPOINT, SOURCE being shown in the mount
    /// table (`rlayerfs SOURCE MOUNTPOINT -o ...`, as mount.fuse3 runs it for
    /// `mount -t fuse.rlayerfs`).
    #[arg(value_name = "MOUNTPOINT", num_args = 0..=2)]
    operands: Vec<PathBuf>,
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
    let (source, mountpoint) = match args.operands.as_slice() {
        [mnt] => (None, mnt.clone()),
        [source, mnt] => (Some(source), mnt.clone()),
        _ => return Err("missing MOUNTPOINT".into()),
    };
    if let Some(source) = source {
        set_source(&mut options, &source.to_string_lossy())?;
    }
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

/// The mount table source (`fsname=`) from a SOURCE operand, unless `-o fsname=` gave one or
/// the source says nothing (`none`, empty).
fn set_source(options: &mut MountOptions, source: &str) -> Result<(), String> {
    let named = options
        .fuse
        .iter()
        .any(|f| matches!(f, crate::options::FuseFlag::FsName(_)));
    if named || source.is_empty() || source == "none" {
        return Ok(());
    }
    // Escaped so that commas and quotes in the source survive option splitting.
    let escaped: String = source
        .chars()
        .flat_map(|c| {
            let esc = matches!(c, ',' | '"' | '\\').then_some('\\');
            esc.into_iter().chain(std::iter::once(c))
        })
        .collect();
    options
        .parse(&format!("fsname={escaped}"))
        .map_err(|e| e.to_string())
}

/// `mount.fuse.rlayerfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t TYPE]`: how mount(8) runs a
/// helper for `-t fuse.rlayerfs` (when installed as `/sbin/mount.fuse.rlayerfs`). `-f` is
/// mount(8)'s fake mode (check, mount nothing); `-s` (sloppy), `-n` (no mtab) and `-v` are
/// accepted and change nothing; `-t` is ignored.
fn helper_main(args: Vec<std::ffi::OsString>) -> Result<i32, String> {
    let mut operands = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let text = a.to_string_lossy().into_owned();
        match text.as_str() {
            "-o" => options.push(
                it.next()
                    .ok_or("-o needs OPTIONS")?
                    .to_string_lossy()
                    .into_owned(),
            ),
            "-t" => {
                it.next().ok_or("-t needs a TYPE")?;
            }
            "-N" => return Err("-N (mount namespace) is not supported".into()),
            "-h" | "--help" => {
                println!(
                    "usage: mount.fuse.rlayerfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]\n\
                     (run by mount -t fuse.rlayerfs; see rlayerfs --help for OPTIONS)"
                );
                return Ok(0);
            }
            t if t.starts_with("-o") && t.len() > 2 => options.push(t[2..].to_string()),
            t if t.starts_with('-') && t.len() > 1 => {
                for c in t[1..].chars() {
                    match c {
                        'f' => fake = true,
                        's' | 'n' | 'v' => {}
                        _ => return Err(format!("unknown flag -{c}")),
                    }
                }
            }
            _ => operands.push(PathBuf::from(a)),
        }
    }
    let args = MountArgs {
        options,
        operands,
        ..MountArgs::default()
    };
    if fake {
        // Check everything a mount would, mount nothing.
        let req = mount_request(args)?;
        if !req.options.remount {
            req.options.validate().map_err(|e| e.to_string())?;
        }
        return Ok(0);
    }
    run_mount(args)
}

/// Runs the command line; returns the exit code.
pub fn main() -> i32 {
    let mut argv = std::env::args_os();
    let argv0 = argv.next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("mount.") {
        return report(helper_main(argv.collect()));
    }
    // Not a subcommand of `Cli`: it would then show in the completions it writes.
    let mut rest = argv.peekable();
    if rest.peek().is_some_and(|a| a == "generate") {
        return report(crate::generate::main(rest, Cli::command()));
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return clap_exit(&e),
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
    report(result)
}

/// The exit code of a command's result, printing its error as one line on stderr (escaped:
/// it may quote names from layers, archives or options).
fn report(result: Result<i32, String>) -> i32 {
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("rlayerfs: {}", printable::escape(&msg));
            1
        }
    }
}

/// Prints a clap outcome (help, version, or a usage error) and gives its exit code. Usage
/// errors quote the arguments, so they are printed plain and escaped, without colours.
pub(crate) fn clap_exit(e: &clap::Error) -> i32 {
    if !e.use_stderr() {
        let _ = e.print();
        return 0;
    }
    eprint!("{}", printable::escape_lines(&e.render().to_string()));
    2
}

/// The man page part of `--help`: every mount option with its meaning. A test checks that
/// every option the parser in `crate::options` knows is listed here.
const LONG_HELP: &str = r#"FORMS
    rlayerfs mount -o lowerdir=TOP:...:BOTTOM[,upperdir=U,workdir=W][,OPTIONS] MOUNTPOINT
    rlayerfs -o OPTIONS MOUNTPOINT                 (podman/buildah mount_program form)
    rlayerfs SOURCE MOUNTPOINT -o OPTIONS          (as mount.fuse3 runs it: mount -t fuse.rlayerfs)
    mount.fuse.rlayerfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]   (mount(8) helper, argv[0])
    fusermount3 -u MOUNTPOINT                      (unmount; or umount, or SIGTERM to the daemon)
  The command returns once the mount is live, leaving the daemon in the background (-f keeps
  it in the foreground). Errors: one line on stderr, exit status 1, nothing mounted.
  An upperdir or workdir that a live rlayerfs daemon or a kernel overlay mount uses is
  refused (after waiting up to 3 s for a daemon whose mount was just unmounted).

SIGNALS
  SIGUSR1                  log the requests served so far per FUSE opcode and the
                           transport (also written as JSON to $RLAYERFS_STATS if set)
  SIGTERM, SIGINT, SIGHUP  unmount (never lazily) and exit 0; while the mount is busy (open
                           files, a cwd, a copy in another mount namespace: a container's
                           root) it stays mounted and served and
                           the unmount is retried every 0.5 s until it succeeds
  SIGKILL                  stop serving at once (users get ENOTCONN until the dead mount
                           is unmounted); the upperdir and workdir are free again

MOUNT OPTIONS (-o, comma separated, may be repeated; unknown ones get one warning)
  Layers
    lowerdir=TOP:...:BOTTOM   lower layers, leftmost on top; "\:" is a colon in a name
    lowerdir+=DIR             append one lower layer (below the others)
    datadir+=DIR              append one data-only layer (kernel overlayfs's): it holds the data
                              of metacopy files of the lowers, reached by their absolute
                              redirects, and is not merged into the tree; lowerdir=A::B makes
                              B one too; needs metacopy
    upperdir=DIR              the writable layer; without it the mount is read-only
    workdir=DIR               scratch directory on the upper's filesystem (needs upperdir)
  Behaviour
    ro | rw                   read-only mount even with an upper layer / read-write
    volatile                  never fsync: faster copy-up, no durability after a crash
    fsync=0|1                 fuse-overlayfs's name for the opposite of volatile
    timeout=SECONDS           kernel cache time of entries and attributes (default 3600)
    threaded=0|1              one serving thread with 0 (default: several)
    uring=auto|on|off         FUSE-over-io_uring (Linux 6.14+, fuse module parameter
                              enable_uring=Y): one worker per CPU serves the requests
                              issued on that CPU; auto (default) falls back to /dev/fuse
                              read/write when unavailable, on refuses to mount then
    uring_sched=idle|normal   scheduling policy of the io_uring workers: idle (default,
                              SCHED_IDLE) keeps the clients they wake on their CPU
    writeback=0|1             accepted; the FUSE writeback cache is never used (it would
                              disable passthrough)
    noxattrs[=0|1]            accepted (fuse-overlayfs: refuse user xattrs)
    static_nlink              accepted; merged directories always report st_nlink 1
    noacl                     accepted (fuse-overlayfs: no POSIX ACL support)
    ino32_t                   accepted (fuse-overlayfs: 32-bit inode numbers)
  Ownership (containers/storage, fuse-overlayfs)
    uidmapping=C:H:S[:C:H:S...]  ids C..C+S stored in the layers show as H..H+S through the
                              mount (containers/storage sends ContainerID:HostID:Size); ids
                              given through the mount (chown, ACLs) are stored mapped back,
                              EINVAL outside the ranges; new objects of a caller outside
                              them, and stored ids outside them, become 65534
    gidmapping=C:H:S[:...]    the same for group ids
    squash_to_root            every object shows as owned by 0:0
    squash_to_uid=N           every object shows as owned by uid N
    squash_to_gid=N           every object shows as owned by gid N
    xattr_permissions=0|1|2   keep owner and mode changes in an xattr instead of chown/chmod
                              (for stores written without privilege): 1 writes
                              security.fuseoverlayfs.override_stat, 2 writes
                              user.containers.override_stat; value UID:GID:MODE[:TYPE] where
                              TYPE may make an empty file show as a device (char-MAJ-MIN,
                              block-MAJ-MIN), a pipe or a socket. Read whenever set or when a
                              layer root carries one; never visible through the mount
    context="CONTEXT"         SELinux context (commas allowed inside the quotes); accepted
  FUSE and VFS
    allow_other | allow_root  who may use the mount (root mounts default to allow_other)
    default_permissions       always on: the kernel checks permissions
    auto_unmount              unmount when the daemon dies
    suid | nosuid             honour set-id bits (default for root) / ignore them
    dev | nodev               honour device nodes (default for root) / refuse them
    exec | noexec             allow / refuse executing files
    atime | noatime | relatime | strictatime   access time updates, as kernel overlayfs
                              (relatime is the default)
    diratime | nodiratime     directories follow the atime option / never get atime updates
    lazytime | nolazytime     MS_LAZYTIME: time updates may stay in memory
    symfollow | nosymfollow   MS_NOSYMFOLLOW: paths through the mount do not follow symlinks
                              (strictatime, nodiratime, lazytime and nosymfollow need a root
                              mount: fusermount3 cannot set them, and they are refused)
    sync | async | dirsync    synchronous writes / directory changes; sync=0|1 and
                              dirsync=0|1 (fuse-overlayfs scripts) mean off / on
    remount [bind]            change the flags (ro, rw, nosuid, noatime, ...) of the mounted
                              rlayerfs at MOUNTPOINT, as mount -o remount,... runs the helper;
                              starts no daemon, and ignores layer options
    user_id=N | group_id=N    accepted (the kernel FUSE options the mount table shows)
    fsname=NAME               the source in the mount table (default rlayerfs)
    subtype=NAME              the type in the mount table (fuse.NAME, default rlayerfs)
  Kernel overlayfs (accepted with the kernel's values; rlayerfs behaves as index=on,
  redirect_dir=on, and honours metacopy)
    metacopy=on|off           attribute changes, renames and links of lower files copy up
                              their metadata only, the data at the first write (default on as
                              root; rootless always off: kernel userxattr has no metacopy);
                              off, metacopy files in the layers are refused (EPERM)
    index=on|off  redirect_dir=on|off|follow|nofollow  xino=on|off|auto
    nfs_export=on|off  uuid=on|off|null|auto  verity=on|off|require  userxattr
    (honoured: nfs_export=on gives file handles that outlive the kernel's caches and
    remounts; without it name_to_handle_at fails with EOPNOTSUPP, as on kernel overlayfs;
    it turns the default metacopy off, and nfs_export=on,metacopy=on is refused, as there)
  fstab only (ignored): defaults auto noauto nofail user users nouser owner group _netdev
    comment=... x-...

FSTAB
    rlayerfs /srv/merged fuse.rlayerfs lowerdir=/l1:/l2,upperdir=/u,workdir=/w,nofail 0 0
  mount(8) runs /sbin/mount.fuse.rlayerfs (a symlink to rlayerfs) when present, else
  mount.fuse3, which runs `rlayerfs SOURCE MOUNTPOINT -o OPTIONS` from /usr/local/bin,
  /usr/bin or /bin.

FORMATS WRITTEN
  Whiteouts: character device 0/0 when the daemon may mknod (root), else .wh.NAME files.
  Opaque and redirect xattrs: trusted.overlay.* with CAP_SYS_ADMIN, else user.overlay.*.
  Metacopy files (root): empty sparse files with trusted.overlay.metacopy, as the kernel.
"#;
