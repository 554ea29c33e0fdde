//! Mount option parsing: the `-o` strings that kernel overlayfs, fuse-overlayfs and
//! containers/storage (podman's `mount_program`) pass.
//!
//! # Grammar
//! * Options are separated by `,`. A `,` inside double quotes or escaped as `\,` does not split
//!   (SELinux `context="system_u:object_r:container_file_t:s0:c1022,c1023"`). Empty items
//!   (`a,,b`) are skipped. [`split_options`] only finds the split points: every item keeps its
//!   quotes and backslashes, because `lowerdir` needs them to find its own `:` separators.
//! * Values are then decoded: unescaped double quotes are removed and `\X` stands for `X`
//!   (the kernel's `ovl_unescape` rule). No octal escapes (`\054`) as libfuse has.
//! * `lowerdir=A:B:C` lists the lower layers top first. `\:` is a colon inside a name, `\\` a
//!   backslash, and a `:` inside double quotes does not split either ([`split_lowerdir`]).
//!   `A::B` makes `B` (and every layer after it, each also after `::`) a data-only layer, as
//!   kernel overlayfs reads it; any other empty component (`:::`, a leading or trailing `:`)
//!   is an error, and so is a regular layer after a data-only one (`A::B:C`).
//!
//! # Accumulation and precedence
//! [`MountOptions::parse`] may be called once per `-o` and accumulates. A later value replaces
//! an earlier one: `lowerdir` given twice keeps only the last list (as fuse-overlayfs does; the
//! kernel's `lowerdir+=DIR` appends one layer instead, and `datadir+=DIR` one data-only layer,
//! as the kernel takes them), the same for
//! `upperdir`, `uidmapping`, and every scalar. FUSE flags of one family (`suid`/`nosuid`,
//! `atime`/`noatime`/`relatime`/`strictatime`, `allow_other`/`allow_root`, …) keep only the last.
//! A call that fails leaves the options unchanged. Whole-set checks (a `lowerdir` is present,
//! `upperdir` comes with `workdir`) are in [`MountOptions::validate`], run once after the last `-o`.
//!
//! Paths are kept exactly as given, relative ones included: podman runs the mount program with
//! its cwd in the storage's overlay directory, so the mount code must resolve them against the
//! cwd before anything changes it.
//!
//! # Invariants
//! The parser never panics, whatever the input (a property test checks it). An unknown option is
//! not an error (fuse-overlayfs warns and goes on, and a drop-in must too): it lands in
//! [`MountOptions::unknown`] for the caller to warn about once.

use std::fmt;
use std::path::PathBuf;

use crate::union::ids::{container_to_host, host_to_container, IdMapping};

/// A generic FUSE / VFS mount flag (see `mount.fuse(8)`, `mount(8)`).
///
/// `ro` and `rw` are not here: they set [`MountOptions::read_only`], from which the mount code
/// derives fuser's `RO`/`RW`, so the two can never disagree.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FuseFlag {
    /// `allow_other`: every user may access the mount (podman needs it for rootful containers).
    AllowOther,
    /// `allow_root`: the owner and root may access the mount.
    AllowRoot,
    /// `default_permissions`: the kernel checks permissions from the attributes.
    DefaultPermissions,
    /// `auto_unmount`: unmount when the daemon dies (fuser needs allow_other or allow_root).
    AutoUnmount,
    /// `suid`
    Suid,
    /// `nosuid`
    NoSuid,
    /// `dev`
    Dev,
    /// `nodev`
    NoDev,
    /// `exec`
    Exec,
    /// `noexec`
    NoExec,
    /// `atime`
    Atime,
    /// `noatime`
    NoAtime,
    /// `relatime` (the kernel's default)
    RelAtime,
    /// `strictatime`
    StrictAtime,
    /// `diratime` (the default: directories follow the atime option)
    DirAtime,
    /// `nodiratime`: reading a directory never updates its atime
    NoDirAtime,
    /// `lazytime`: time updates may be kept in memory only (`MS_LAZYTIME`)
    LazyTime,
    /// `nolazytime` (the default)
    NoLazyTime,
    /// `symfollow` (the default)
    SymFollow,
    /// `nosymfollow`: path resolution does not follow symlinks in the mount (`MS_NOSYMFOLLOW`)
    NoSymFollow,
    /// `sync`
    Sync,
    /// `async`
    Async,
    /// `dirsync`
    DirSync,
    /// `fsname=NAME`: the source shown in `/proc/self/mountinfo`.
    FsName(String),
    /// `subtype=NAME`: shown as `fuse.NAME`.
    Subtype(String),
}

/// Flags of one family exclude each other: adding one replaces any earlier one of its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlagFamily {
    Access,
    DefaultPermissions,
    AutoUnmount,
    Suid,
    Dev,
    Exec,
    Atime,
    DirAtime,
    LazyTime,
    SymFollow,
    Sync,
    DirSync,
    FsName,
    Subtype,
}

impl FuseFlag {
    /// The flag for a value-less option name, if it is one.
    fn from_name(name: &str) -> Option<FuseFlag> {
        Some(match name {
            "allow_other" => FuseFlag::AllowOther,
            "allow_root" => FuseFlag::AllowRoot,
            "default_permissions" => FuseFlag::DefaultPermissions,
            "auto_unmount" => FuseFlag::AutoUnmount,
            "suid" => FuseFlag::Suid,
            "nosuid" => FuseFlag::NoSuid,
            "dev" => FuseFlag::Dev,
            "nodev" => FuseFlag::NoDev,
            "exec" => FuseFlag::Exec,
            "noexec" => FuseFlag::NoExec,
            "atime" => FuseFlag::Atime,
            "noatime" => FuseFlag::NoAtime,
            "relatime" => FuseFlag::RelAtime,
            "strictatime" => FuseFlag::StrictAtime,
            "diratime" => FuseFlag::DirAtime,
            "nodiratime" => FuseFlag::NoDirAtime,
            "lazytime" => FuseFlag::LazyTime,
            "nolazytime" => FuseFlag::NoLazyTime,
            "symfollow" => FuseFlag::SymFollow,
            "nosymfollow" => FuseFlag::NoSymFollow,
            "sync" => FuseFlag::Sync,
            "async" => FuseFlag::Async,
            "dirsync" => FuseFlag::DirSync,
            _ => return None,
        })
    }

    fn family(&self) -> FlagFamily {
        match self {
            FuseFlag::AllowOther | FuseFlag::AllowRoot => FlagFamily::Access,
            FuseFlag::DefaultPermissions => FlagFamily::DefaultPermissions,
            FuseFlag::AutoUnmount => FlagFamily::AutoUnmount,
            FuseFlag::Suid | FuseFlag::NoSuid => FlagFamily::Suid,
            FuseFlag::Dev | FuseFlag::NoDev => FlagFamily::Dev,
            FuseFlag::Exec | FuseFlag::NoExec => FlagFamily::Exec,
            FuseFlag::Atime | FuseFlag::NoAtime | FuseFlag::RelAtime | FuseFlag::StrictAtime => {
                FlagFamily::Atime
            }
            FuseFlag::DirAtime | FuseFlag::NoDirAtime => FlagFamily::DirAtime,
            FuseFlag::LazyTime | FuseFlag::NoLazyTime => FlagFamily::LazyTime,
            FuseFlag::SymFollow | FuseFlag::NoSymFollow => FlagFamily::SymFollow,
            FuseFlag::Sync | FuseFlag::Async => FlagFamily::Sync,
            FuseFlag::DirSync => FlagFamily::DirSync,
            FuseFlag::FsName(_) => FlagFamily::FsName,
            FuseFlag::Subtype(_) => FlagFamily::Subtype,
        }
    }
}

impl fmt::Display for FuseFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            FuseFlag::AllowOther => "allow_other",
            FuseFlag::AllowRoot => "allow_root",
            FuseFlag::DefaultPermissions => "default_permissions",
            FuseFlag::AutoUnmount => "auto_unmount",
            FuseFlag::Suid => "suid",
            FuseFlag::NoSuid => "nosuid",
            FuseFlag::Dev => "dev",
            FuseFlag::NoDev => "nodev",
            FuseFlag::Exec => "exec",
            FuseFlag::NoExec => "noexec",
            FuseFlag::Atime => "atime",
            FuseFlag::NoAtime => "noatime",
            FuseFlag::RelAtime => "relatime",
            FuseFlag::StrictAtime => "strictatime",
            FuseFlag::DirAtime => "diratime",
            FuseFlag::NoDirAtime => "nodiratime",
            FuseFlag::LazyTime => "lazytime",
            FuseFlag::NoLazyTime => "nolazytime",
            FuseFlag::SymFollow => "symfollow",
            FuseFlag::NoSymFollow => "nosymfollow",
            FuseFlag::Sync => "sync",
            FuseFlag::Async => "async",
            FuseFlag::DirSync => "dirsync",
            FuseFlag::FsName(name) => return write!(f, "fsname={name}"),
            FuseFlag::Subtype(name) => return write!(f, "subtype={name}"),
        };
        f.write_str(name)
    }
}

/// A mount option that could not be accepted. `Display` is one line naming the option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionsError {
    option: String,
    reason: String,
}

impl OptionsError {
    fn new(option: impl Into<String>, reason: impl Into<String>) -> Self {
        OptionsError {
            option: option.into(),
            reason: reason.into(),
        }
    }

    /// The option as it was written (`key=value`), or the option name for whole-set checks.
    pub fn option(&self) -> &str {
        &self.option
    }

    /// Why it was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid mount option `{}`: {}", self.option, self.reason)
    }
}

impl std::error::Error for OptionsError {}

/// Kernel overlayfs options and the values the kernel accepts for them (an empty list: the
/// option takes no value; `None`: any non-empty value, a path).
const OVERLAY_OPTIONS: &[(&str, Option<&[&str]>)] = &[
    ("index", Some(&["on", "off"])),
    ("redirect_dir", Some(&["on", "off", "follow", "nofollow"])),
    ("metacopy", Some(&["on", "off"])),
    ("xino", Some(&["on", "off", "auto"])),
    ("nfs_export", Some(&["on", "off"])),
    ("uuid", Some(&["on", "off", "null", "auto"])),
    ("verity", Some(&["on", "off", "require"])),
    ("userxattr", Some(&[])),
];

/// Everything the `-o` options said. Build with `Default`, feed each `-o` to
/// [`parse`](Self::parse), then call [`validate`](Self::validate).
#[derive(Debug, Clone, PartialEq)]
pub struct MountOptions {
    /// Lower layers, top first (leftmost in `lowerdir=`).
    pub lowerdirs: Vec<PathBuf>,
    /// Data-only lower layers (`datadir+=`, or after `::` in `lowerdir=`), below the others:
    /// they hold the data of metacopy files and are not merged into the tree.
    pub datadirs: Vec<PathBuf>,
    /// The writable layer; `None` makes a read-only mount (additional image stores).
    pub upperdir: Option<PathBuf>,
    /// Scratch directory on the upper's filesystem; required with `upperdir`.
    pub workdir: Option<PathBuf>,
    /// `ro` (and `rw` to clear it).
    pub read_only: bool,
    /// `volatile`: never fsync to disk (kernel overlayfs and fuse-overlayfs). Independent of
    /// `fsync`; [`fsync_enabled`](Self::fsync_enabled) combines both.
    pub volatile: bool,
    /// `fsync=N` (fuse-overlayfs): 0 turns fsync off. Default true.
    pub fsync: bool,
    /// `uidmapping=C:H:S[:C:H:S...]`; empty means identity.
    pub uid_mappings: Vec<IdMapping>,
    /// `gidmapping=C:H:S[:C:H:S...]`; empty means identity.
    pub gid_mappings: Vec<IdMapping>,
    /// `squash_to_root`: everything shows as owned by 0:0.
    pub squash_to_root: bool,
    /// `squash_to_uid=N`: everything shows as owned by uid N (wins over `squash_to_root`).
    pub squash_to_uid: Option<u32>,
    /// `squash_to_gid=N`: everything shows as owned by gid N (wins over `squash_to_root`).
    pub squash_to_gid: Option<u32>,
    /// `xattr_permissions=N` (fuse-overlayfs): 0 stores ownership and mode with chown/chmod;
    /// 1 in the privileged xattr `security.fuseoverlayfs.override_stat`; 2 in the unprivileged
    /// `user.fuseoverlayfs.override_stat` (EPERM ignored).
    pub xattr_permissions: u8,
    /// `context="..."`: SELinux context of every file, without its quotes.
    pub context: Option<String>,
    /// `timeout=SECONDS` (fuse-overlayfs): entry and attribute cache time.
    pub timeout: Option<f64>,
    /// `threaded=N` (fuse-overlayfs): multi-threaded serving.
    pub threaded: Option<bool>,
    /// `writeback=N` (fuse-overlayfs): FUSE writeback cache.
    pub writeback: Option<bool>,
    /// `uring=auto|on|off`: serve requests over FUSE-over-io_uring when the kernel offers it.
    pub uring: crate::transport::UringChoice,
    /// `uring_sched=idle|normal`: the scheduling policy of the io_uring queue workers.
    pub uring_sched: crate::transport::QueueSched,
    /// `noxattrs` / `noxattrs=N`: refuse user xattrs.
    pub noxattrs: bool,
    /// `static_nlink`: directories report st_nlink 1.
    pub static_nlink: bool,
    /// `noacl`: do not ask the kernel for POSIX ACL support.
    pub noacl: bool,
    /// `ino32_t`: inode numbers fit 32 bits.
    pub ino32_t: bool,
    /// `remount`: change the flags of the existing mount at the mountpoint (mount(8) runs the
    /// helper with it for `mount -o remount,…`); no daemon is started.
    pub remount: bool,
    /// `bind` (with `remount`): change only the per-mount flags (`MS_BIND|MS_REMOUNT`).
    pub bind: bool,
    /// Generic FUSE / VFS flags, at most one per family, in the order given.
    pub fuse: Vec<FuseFlag>,
    /// Kernel overlayfs options (`index=on`, `userxattr` with an empty value, …), at most one
    /// per name, for the mount to honour or refuse. Values are checked against the kernel's.
    pub overlay: Vec<(String, String)>,
    /// Unknown options as written; the caller prints one warning and ignores them.
    pub unknown: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            lowerdirs: Vec::new(),
            datadirs: Vec::new(),
            upperdir: None,
            workdir: None,
            read_only: false,
            volatile: false,
            fsync: true,
            uid_mappings: Vec::new(),
            gid_mappings: Vec::new(),
            squash_to_root: false,
            squash_to_uid: None,
            squash_to_gid: None,
            xattr_permissions: 0,
            context: None,
            timeout: None,
            threaded: None,
            writeback: None,
            uring: crate::transport::UringChoice::Auto,
            uring_sched: crate::transport::QueueSched::Idle,
            noxattrs: false,
            static_nlink: false,
            noacl: false,
            ino32_t: false,
            remount: false,
            bind: false,
            fuse: Vec::new(),
            overlay: Vec::new(),
            unknown: Vec::new(),
        }
    }
}

impl MountOptions {
    /// Parses one `-o` string into `self`, on top of what earlier calls set. On error `self` is
    /// unchanged and the error names the first bad option.
    pub fn parse(&mut self, opts: &str) -> Result<(), OptionsError> {
        let mut next = self.clone();
        for item in split_options(opts) {
            next.apply(&item)
                .map_err(|reason| OptionsError::new(item.as_str(), reason))?;
        }
        *self = next;
        Ok(())
    }

    /// Checks the options as a whole, once after the last `-o`.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.lowerdirs.is_empty() {
            return Err(OptionsError::new(
                "lowerdir",
                "missing: at least one lower directory is required",
            ));
        }
        match (&self.upperdir, &self.workdir) {
            (Some(_), None) => Err(OptionsError::new(
                "upperdir",
                "needs a workdir on the same filesystem",
            )),
            (None, Some(_)) => Err(OptionsError::new("workdir", "given without an upperdir")),
            // As the kernel: decoding handles needs the index.
            _ if self.overlay_option("nfs_export") == Some("on")
                && self.overlay_option("index") == Some("off") =>
            {
                Err(OptionsError::new(
                    "nfs_export",
                    "conflicting options: nfs_export=on,index=off",
                ))
            }
            // As the kernel: a metacopy file's handle would name its data nowhere.
            _ if self.overlay_option("nfs_export") == Some("on")
                && self.overlay_option("metacopy") == Some("on") =>
            {
                Err(OptionsError::new(
                    "nfs_export",
                    "conflicting options: nfs_export=on,metacopy=on",
                ))
            }
            _ => Ok(()),
        }
    }

    /// Whether data must reach the disk on fsync: `fsync` unless `volatile`.
    pub fn fsync_enabled(&self) -> bool {
        self.fsync && !self.volatile
    }

    /// The value of a kernel overlayfs option, `Some("")` for a flag such as `userxattr`.
    pub fn overlay_option(&self, name: &str) -> Option<&str> {
        self.overlay
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Uid shown through the mount (host) for a uid stored on disk (container); identity
    /// without mappings.
    pub fn mapped_uid_to_host(&self, uid: u32) -> Option<u32> {
        container_to_host(&self.uid_mappings, uid)
    }

    /// Gid shown through the mount (host) for a gid stored on disk (container); identity
    /// without mappings.
    pub fn mapped_gid_to_host(&self, gid: u32) -> Option<u32> {
        container_to_host(&self.gid_mappings, gid)
    }

    /// Uid stored on disk (container) for a uid given through the mount (host); identity
    /// without mappings.
    /// Squashing is not applied here.
    pub fn host_uid_to_container(&self, uid: u32) -> Option<u32> {
        host_to_container(&self.uid_mappings, uid)
    }

    /// Gid stored on disk (container) for a gid given through the mount (host); identity
    /// without mappings.
    /// Squashing is not applied here.
    pub fn host_gid_to_container(&self, gid: u32) -> Option<u32> {
        host_to_container(&self.gid_mappings, gid)
    }

    /// Applies one option item (as [`split_options`] returns it).
    fn apply(&mut self, item: &str) -> Result<(), String> {
        let (key, raw) = match item.split_once('=') {
            Some((key, raw)) => (key, Some(raw)),
            None => (item, None),
        };
        // Every value but lowerdir's is decoded the same way; lowerdir needs its escapes.
        let value = || -> Result<String, String> {
            match raw {
                Some(raw) => decode_value(raw),
                None => Err("needs a value (`KEY=VALUE`)".to_string()),
            }
        };
        match key {
            "lowerdir" => match raw {
                Some(raw) => (self.lowerdirs, self.datadirs) = parse_lowerdir(raw)?,
                None => return Err("needs a value (`KEY=VALUE`)".to_string()),
            },
            "lowerdir+" => {
                if !self.datadirs.is_empty() {
                    return Err(DATA_BEFORE_REGULAR.to_string());
                }
                self.lowerdirs.push(non_empty_path(value()?)?)
            }
            "datadir+" => self.datadirs.push(non_empty_path(value()?)?),
            "upperdir" => self.upperdir = Some(non_empty_path(value()?)?),
            "workdir" => self.workdir = Some(non_empty_path(value()?)?),
            // fstab and mount(8) options meant for mount itself, not for the filesystem
            // (mount.fuse3 drops some of them, mount(8) passes others on to helpers).
            _ if is_fstab_only(key) => {}
            "ro" | "rw" => {
                if raw.is_some() {
                    return Err("takes no value".to_string());
                }
                self.read_only = key == "ro";
            }
            "volatile" => self.volatile = flag_value(raw)?,
            "fsync" => self.fsync = flag_value(raw)?,
            "squash_to_root" => self.squash_to_root = flag_value(raw)?,
            "noxattrs" => self.noxattrs = flag_value(raw)?,
            "static_nlink" => self.static_nlink = flag_value(raw)?,
            "noacl" => self.noacl = flag_value(raw)?,
            "ino32_t" => self.ino32_t = flag_value(raw)?,
            "remount" | "bind" => {
                if raw.is_some() {
                    return Err("takes no value".to_string());
                }
                if key == "remount" {
                    self.remount = true;
                } else {
                    self.bind = true;
                }
            }
            // The kernel FUSE options a mount shows in the mount table; mount(8) passes them
            // back to the helper on a remount. The daemon sets them itself from its own ids.
            "user_id" | "group_id" => {
                parse_id(&value()?)?;
            }
            // fuse-overlayfs's test scripts pass `sync=0`; a value is read as 0 (off) or on.
            "sync" if raw.is_some() => self.add_fuse_flag(if flag_value(raw)? {
                FuseFlag::Sync
            } else {
                FuseFlag::Async
            }),
            "dirsync" if raw.is_some() => {
                if flag_value(raw)? {
                    self.add_fuse_flag(FuseFlag::DirSync);
                } else {
                    self.fuse.retain(|f| f.family() != FlagFamily::DirSync);
                }
            }
            "threaded" => self.threaded = Some(flag_value(raw)?),
            "writeback" => self.writeback = Some(flag_value(raw)?),
            "uring" => {
                use crate::transport::UringChoice;
                self.uring = match value()?.as_str() {
                    "auto" => UringChoice::Auto,
                    "on" | "1" => UringChoice::On,
                    "off" | "0" => UringChoice::Off,
                    _ => return Err("must be auto, on or off".into()),
                }
            }
            "uring_sched" => {
                use crate::transport::QueueSched;
                self.uring_sched = match value()?.as_str() {
                    "idle" => QueueSched::Idle,
                    "normal" => QueueSched::Normal,
                    _ => return Err("must be idle or normal".into()),
                }
            }
            "uidmapping" => self.uid_mappings = parse_mappings(&value()?)?,
            "gidmapping" => self.gid_mappings = parse_mappings(&value()?)?,
            "squash_to_uid" => self.squash_to_uid = Some(parse_id(&value()?)?),
            "squash_to_gid" => self.squash_to_gid = Some(parse_id(&value()?)?),
            "xattr_permissions" => {
                self.xattr_permissions = match value()?.as_str() {
                    "0" => 0,
                    "1" => 1,
                    "2" => 2,
                    other => return Err(format!("`{other}` is not 0, 1 or 2")),
                }
            }
            "context" => {
                let context = value()?;
                if context.is_empty() {
                    return Err("the SELinux context is empty".to_string());
                }
                self.context = Some(context);
            }
            "timeout" => {
                let text = value()?;
                match text.trim().parse::<f64>() {
                    Ok(t) if t.is_finite() && t >= 0.0 => self.timeout = Some(t),
                    _ => return Err(format!("`{text}` is not a number of seconds >= 0")),
                }
            }
            "fsname" | "subtype" => {
                let name = value()?;
                if name.is_empty() {
                    return Err("the name is empty".to_string());
                }
                self.add_fuse_flag(if key == "fsname" {
                    FuseFlag::FsName(name)
                } else {
                    FuseFlag::Subtype(name)
                });
            }
            _ => {
                if let Some(flag) = FuseFlag::from_name(key) {
                    if raw.is_some() {
                        return Err("takes no value".to_string());
                    }
                    self.add_fuse_flag(flag);
                } else if let Some((_, allowed)) =
                    OVERLAY_OPTIONS.iter().find(|(name, _)| *name == key)
                {
                    let value = overlay_value(raw, *allowed)?;
                    self.overlay.retain(|(name, _)| name != key);
                    self.overlay.push((key.to_string(), value));
                } else {
                    self.unknown.push(item.to_string());
                }
            }
        }
        Ok(())
    }

    fn add_fuse_flag(&mut self, flag: FuseFlag) {
        let family = flag.family();
        self.fuse.retain(|f| f.family() != family);
        self.fuse.push(flag);
    }
}

/// fstab-only options (`defaults`, `noauto`, `nofail`, `user`, `_netdev`, `x-*`, `comment=`):
/// accepted and ignored without a warning.
pub const FSTAB_ONLY_OPTIONS: &[&str] = &[
    "defaults", "auto", "noauto", "nofail", "user", "users", "nouser", "owner", "group", "_netdev",
    "comment",
];

fn is_fstab_only(key: &str) -> bool {
    FSTAB_ONLY_OPTIONS.contains(&key) || key.starts_with("x-")
}

/// Splits an option string on commas, except commas inside double quotes or escaped with `\`.
/// Items are returned verbatim (quotes and backslashes kept); empty items are dropped.
pub fn split_options(s: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                current.push(c);
                if let Some(escaped) = chars.next() {
                    current.push(escaped);
                }
            }
            '"' => {
                in_quotes = !in_quotes;
                current.push(c);
            }
            ',' if !in_quotes => {
                if !current.is_empty() {
                    items.push(std::mem::take(&mut current));
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        items.push(current);
    }
    items
}

/// Splits a `lowerdir` value on `:` into layers, top first. `\X` stands for `X` (so `\:` is a
/// colon in a name and `\\` a backslash) and a `:` inside double quotes does not split; quotes
/// are removed. Empty components are kept (`"a::b"` gives three, the middle one empty) so that
/// the caller can refuse them; `""` gives one empty component.
pub fn split_lowerdir(s: &str) -> Vec<PathBuf> {
    scan(s, Some(':'))
        .parts
        .into_iter()
        .map(PathBuf::from)
        .collect()
}

/// The result of decoding a value: its parts and what was wrong with the text.
struct Scan {
    parts: Vec<String>,
    unterminated_quote: bool,
    trailing_backslash: bool,
}

/// Decodes quotes and backslash escapes, splitting on `sep` outside quotes when given.
/// A trailing lone backslash is kept literally and reported.
fn scan(s: &str, sep: Option<char>) -> Scan {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut trailing_backslash = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) => current.push(escaped),
                None => {
                    current.push('\\');
                    trailing_backslash = true;
                }
            },
            '"' => in_quotes = !in_quotes,
            c if Some(c) == sep && !in_quotes => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    Scan {
        parts,
        unterminated_quote: in_quotes,
        trailing_backslash,
    }
}

fn check_scan(scan: &Scan) -> Result<(), String> {
    if scan.unterminated_quote {
        return Err("unterminated double quote".to_string());
    }
    if scan.trailing_backslash {
        return Err("ends with a lone backslash".to_string());
    }
    if scan.parts.iter().any(|p| p.contains('\0')) {
        return Err("contains a NUL byte".to_string());
    }
    Ok(())
}

/// Decodes one option value: quotes removed, `\X` read as `X`.
fn decode_value(raw: &str) -> Result<String, String> {
    let scan = scan(raw, None);
    check_scan(&scan)?;
    Ok(scan.parts.into_iter().next().unwrap_or_default())
}

const DATA_BEFORE_REGULAR: &str = "a regular lower layer cannot follow a data-only layer";

/// The lower layers and the data-only layers of a `lowerdir` value: `A:B::C::D` is lowers
/// `A`, `B` and data-only layers `C`, `D` (an empty component between two layers marks the
/// next one data-only, as the kernel reads `::`).
fn parse_lowerdir(raw: &str) -> Result<(Vec<PathBuf>, Vec<PathBuf>), String> {
    let scan = scan(raw, Some(':'));
    check_scan(&scan)?;
    if scan.parts.len() == 1 && scan.parts[0].is_empty() {
        return Err("no lower directory given".to_string());
    }
    let (mut lowers, mut data) = (Vec::new(), Vec::new());
    let mut data_next = false;
    let last = scan.parts.len() - 1;
    let mut layer = 0;
    for (i, p) in scan.parts.into_iter().enumerate() {
        if p.is_empty() {
            // `::` between two layers; a leading, trailing or tripled colon is an error.
            if i == 0 || i == last || data_next {
                return Err(format!(
                    "layer {} is empty (a leading or trailing `:`, or `:::`)",
                    layer + 1
                ));
            }
            data_next = true;
            continue;
        }
        layer += 1;
        if data_next {
            data.push(PathBuf::from(p));
        } else if !data.is_empty() {
            return Err(DATA_BEFORE_REGULAR.to_string());
        } else {
            lowers.push(PathBuf::from(p));
        }
        data_next = false;
    }
    Ok((lowers, data))
}

fn non_empty_path(value: String) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("the path is empty".to_string());
    }
    Ok(PathBuf::from(value))
}

/// A boolean option: bare means true; with a value, an integer as fuse-overlayfs's `%d`
/// (0 false, anything else true).
fn flag_value(raw: Option<&str>) -> Result<bool, String> {
    let Some(raw) = raw else {
        return Ok(true);
    };
    let text = decode_value(raw)?;
    match text.trim().parse::<i64>() {
        Ok(n) => Ok(n != 0),
        Err(_) => Err(format!("`{text}` is not an integer (0 for off, 1 for on)")),
    }
}

fn parse_id(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .map_err(|_| format!("`{text}` is not an id (an integer from 0 to {})", u32::MAX))
}

/// Parses `C:H:S[:C:H:S...]`. One leading and one trailing `:` are tolerated (podman builds the
/// list by prefixing or joining with `:`), and an empty value means no mapping (containers/storage
/// sends `gidmapping=` when it has uid maps but no gid maps). Ranges must not be empty, overflow
/// 32 bits, or overlap on either side (the kernel's rules for `uid_map`).
fn parse_mappings(text: &str) -> Result<Vec<IdMapping>, String> {
    let trimmed = text.strip_prefix(':').unwrap_or(text);
    let trimmed = trimmed.strip_suffix(':').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let numbers = trimmed
        .split(':')
        .map(|field| {
            if field.is_empty() {
                return Err("empty field (`::`)".to_string());
            }
            field
                .parse::<u32>()
                .map_err(|_| format!("`{field}` is not an id (an integer from 0 to {})", u32::MAX))
        })
        .collect::<Result<Vec<u32>, String>>()?;
    if numbers.len() % 3 != 0 {
        return Err(format!(
            "expected CONTAINER:HOST:SIZE triples, got {} number(s)",
            numbers.len()
        ));
    }
    let maps: Vec<IdMapping> = numbers
        .chunks_exact(3)
        .map(|c| IdMapping {
            container: c[0],
            host: c[1],
            size: c[2],
        })
        .collect();
    let end = |start: u32, size: u32| u64::from(start) + u64::from(size);
    for (i, m) in maps.iter().enumerate() {
        let triple = format!("{}:{}:{}", m.container, m.host, m.size);
        if m.size == 0 {
            return Err(format!("range {triple} has size 0"));
        }
        if end(m.container, m.size) > 1 << 32 || end(m.host, m.size) > 1 << 32 {
            return Err(format!("range {triple} goes past id {}", u32::MAX));
        }
        for other in &maps[..i] {
            let overlaps =
                |a: u32, b: u32| u64::from(a) < end(b, other.size) && u64::from(b) < end(a, m.size);
            if overlaps(m.container, other.container) || overlaps(m.host, other.host) {
                return Err(format!("range {triple} overlaps an earlier range"));
            }
        }
    }
    Ok(maps)
}

/// Checks an overlayfs option's value against the kernel's accepted values.
fn overlay_value(raw: Option<&str>, allowed: Option<&[&str]>) -> Result<String, String> {
    match (allowed, raw) {
        (Some([]), None) => Ok(String::new()),
        (Some([]), Some(_)) => Err("takes no value".to_string()),
        (_, None) => Err("needs a value (`KEY=VALUE`)".to_string()),
        (None, Some(raw)) => Ok(non_empty_path(decode_value(raw)?)?
            .to_string_lossy()
            .into_owned()),
        (Some(values), Some(raw)) => {
            let value = decode_value(raw)?;
            if values.contains(&value.as_str()) {
                Ok(value)
            } else {
                Err(format!("`{value}` is not one of {}", values.join(", ")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parsed(opts: &str) -> MountOptions {
        let mut o = MountOptions::default();
        if let Err(e) = o.parse(opts) {
            panic!("{opts:?} failed: {e}");
        }
        o
    }

    fn paths(list: &[&str]) -> Vec<PathBuf> {
        list.iter().map(PathBuf::from).collect()
    }

    fn map(container: u32, host: u32, size: u32) -> IdMapping {
        IdMapping {
            container,
            host,
            size,
        }
    }

    type Edit = fn(&mut MountOptions);

    /// Every option, one at a time: what the default options become.
    const ACCEPTED: &[(&str, Edit)] = &[
        ("", |_| {}),
        (",,,", |_| {}),
        ("lowerdir=/a", |o| o.lowerdirs = paths(&["/a"])),
        ("lowerdir=/a:/b:/c", |o| {
            o.lowerdirs = paths(&["/a", "/b", "/c"])
        }),
        ("lowerdir=l/ABC:l/DEF", |o| {
            o.lowerdirs = paths(&["l/ABC", "l/DEF"])
        }),
        (r"lowerdir=/a\:b:/c", |o| {
            o.lowerdirs = paths(&["/a:b", "/c"])
        }),
        (r"lowerdir=/a\\:/c", |o| {
            o.lowerdirs = paths(&[r"/a\", "/c"])
        }),
        (r"lowerdir=/a\,b:/c", |o| {
            o.lowerdirs = paths(&["/a,b", "/c"])
        }),
        (r#"lowerdir="/a,b:c":/d"#, |o| {
            o.lowerdirs = paths(&["/a,b:c", "/d"])
        }),
        ("lowerdir=/a,lowerdir=/b:/c", |o| {
            o.lowerdirs = paths(&["/b", "/c"])
        }),
        ("lowerdir=/a,lowerdir+=/b,lowerdir+=/c:d", |o| {
            o.lowerdirs = paths(&["/a", "/b", "/c:d"])
        }),
        ("upperdir=/u", |o| o.upperdir = Some("/u".into())),
        (r"upperdir=/u\,x", |o| o.upperdir = Some("/u,x".into())),
        (r#"upperdir="/u x""#, |o| o.upperdir = Some("/u x".into())),
        ("workdir=/w", |o| o.workdir = Some("/w".into())),
        ("ro", |o| o.read_only = true),
        ("ro,rw", |_| {}),
        ("volatile", |o| o.volatile = true),
        ("volatile=0", |_| {}),
        ("fsync=0", |o| o.fsync = false),
        ("fsync=0,fsync=1", |_| {}),
        ("fsync", |_| {}),
        ("uidmapping=0:1000:1", |o| {
            o.uid_mappings = vec![map(0, 1000, 1)]
        }),
        ("uidmapping=0:1000:1:1:100000:65536", |o| {
            o.uid_mappings = vec![map(0, 1000, 1), map(1, 100000, 65536)]
        }),
        ("uidmapping=:0:1000:1:1:100000:65536", |o| {
            o.uid_mappings = vec![map(0, 1000, 1), map(1, 100000, 65536)]
        }),
        ("uidmapping=0:1000:1:", |o| {
            o.uid_mappings = vec![map(0, 1000, 1)]
        }),
        ("uidmapping=0:0:4294967295", |o| {
            o.uid_mappings = vec![map(0, 0, u32::MAX)]
        }),
        ("uidmapping=1:0:4294967295", |o| {
            o.uid_mappings = vec![map(1, 0, u32::MAX)]
        }),
        ("uidmapping=0:1:1,uidmapping=5:6:7", |o| {
            o.uid_mappings = vec![map(5, 6, 7)]
        }),
        ("uidmapping=", |_| {}),
        ("gidmapping=0:1000:1:1:100000:65536", |o| {
            o.gid_mappings = vec![map(0, 1000, 1), map(1, 100000, 65536)]
        }),
        ("squash_to_root", |o| o.squash_to_root = true),
        ("squash_to_uid=0", |o| o.squash_to_uid = Some(0)),
        ("squash_to_uid=4294967295", |o| {
            o.squash_to_uid = Some(u32::MAX)
        }),
        ("squash_to_gid=100", |o| o.squash_to_gid = Some(100)),
        ("xattr_permissions=0", |_| {}),
        ("xattr_permissions=1", |o| o.xattr_permissions = 1),
        ("xattr_permissions=2", |o| o.xattr_permissions = 2),
        (
            r#"context="system_u:object_r:container_file_t:s0:c1022,c1023""#,
            |o| o.context = Some("system_u:object_r:container_file_t:s0:c1022,c1023".into()),
        ),
        ("context=system_u:object_r:usr_t:s0", |o| {
            o.context = Some("system_u:object_r:usr_t:s0".into())
        }),
        ("timeout=1000000", |o| o.timeout = Some(1e6)),
        ("timeout=0.5", |o| o.timeout = Some(0.5)),
        ("threaded=1", |o| o.threaded = Some(true)),
        ("threaded=0", |o| o.threaded = Some(false)),
        ("writeback=0", |o| o.writeback = Some(false)),
        ("uring=on", |o| o.uring = crate::transport::UringChoice::On),
        ("uring=off", |o| {
            o.uring = crate::transport::UringChoice::Off
        }),
        ("uring=auto", |_| {}),
        ("uring_sched=normal", |o| {
            o.uring_sched = crate::transport::QueueSched::Normal
        }),
        ("uring_sched=idle", |_| {}),
        ("writeback=1", |o| o.writeback = Some(true)),
        ("noxattrs", |o| o.noxattrs = true),
        ("noxattrs=1", |o| o.noxattrs = true),
        ("noxattrs=0", |_| {}),
        ("static_nlink", |o| o.static_nlink = true),
        ("noacl", |o| o.noacl = true),
        ("ino32_t", |o| o.ino32_t = true),
        ("allow_other", |o| o.fuse = vec![FuseFlag::AllowOther]),
        ("allow_root", |o| o.fuse = vec![FuseFlag::AllowRoot]),
        ("allow_other,allow_root", |o| {
            o.fuse = vec![FuseFlag::AllowRoot]
        }),
        ("default_permissions", |o| {
            o.fuse = vec![FuseFlag::DefaultPermissions]
        }),
        ("auto_unmount", |o| o.fuse = vec![FuseFlag::AutoUnmount]),
        ("suid", |o| o.fuse = vec![FuseFlag::Suid]),
        ("nosuid", |o| o.fuse = vec![FuseFlag::NoSuid]),
        ("dev", |o| o.fuse = vec![FuseFlag::Dev]),
        ("nodev", |o| o.fuse = vec![FuseFlag::NoDev]),
        ("exec", |o| o.fuse = vec![FuseFlag::Exec]),
        ("noexec", |o| o.fuse = vec![FuseFlag::NoExec]),
        ("atime", |o| o.fuse = vec![FuseFlag::Atime]),
        ("noatime", |o| o.fuse = vec![FuseFlag::NoAtime]),
        ("relatime", |o| o.fuse = vec![FuseFlag::RelAtime]),
        ("strictatime", |o| o.fuse = vec![FuseFlag::StrictAtime]),
        ("noatime,strictatime", |o| {
            o.fuse = vec![FuseFlag::StrictAtime]
        }),
        ("sync", |o| o.fuse = vec![FuseFlag::Sync]),
        ("async", |o| o.fuse = vec![FuseFlag::Async]),
        ("sync,async", |o| o.fuse = vec![FuseFlag::Async]),
        ("dirsync", |o| o.fuse = vec![FuseFlag::DirSync]),
        // fuse-overlayfs's test scripts pass sync=0.
        ("sync=0", |o| o.fuse = vec![FuseFlag::Async]),
        ("sync=1", |o| o.fuse = vec![FuseFlag::Sync]),
        ("async,sync=1", |o| o.fuse = vec![FuseFlag::Sync]),
        ("dirsync=1", |o| o.fuse = vec![FuseFlag::DirSync]),
        ("dirsync,dirsync=0", |_| {}),
        ("nodiratime", |o| o.fuse = vec![FuseFlag::NoDirAtime]),
        ("nodiratime,diratime", |o| o.fuse = vec![FuseFlag::DirAtime]),
        ("lazytime", |o| o.fuse = vec![FuseFlag::LazyTime]),
        ("nolazytime", |o| o.fuse = vec![FuseFlag::NoLazyTime]),
        ("nosymfollow", |o| o.fuse = vec![FuseFlag::NoSymFollow]),
        ("symfollow", |o| o.fuse = vec![FuseFlag::SymFollow]),
        ("noatime,nodiratime", |o| {
            o.fuse = vec![FuseFlag::NoAtime, FuseFlag::NoDirAtime]
        }),
        // What mount(8) passes the helper for `mount -o remount,ro`.
        (
            "ro,relatime,remount,user_id=0,group_id=0,default_permissions,allow_other",
            |o| {
                o.read_only = true;
                o.remount = true;
                o.fuse = vec![
                    FuseFlag::RelAtime,
                    FuseFlag::DefaultPermissions,
                    FuseFlag::AllowOther,
                ];
            },
        ),
        ("remount,bind", |o| {
            o.remount = true;
            o.bind = true;
        }),
        ("nosuid,nodev,suid", |o| {
            o.fuse = vec![FuseFlag::NoDev, FuseFlag::Suid]
        }),
        ("fsname=overlay", |o| {
            o.fuse = vec![FuseFlag::FsName("overlay".into())]
        }),
        (r#"fsname="a,b""#, |o| {
            o.fuse = vec![FuseFlag::FsName("a,b".into())]
        }),
        ("subtype=rlayerfs", |o| {
            o.fuse = vec![FuseFlag::Subtype("rlayerfs".into())]
        }),
        ("index=on", |o| {
            o.overlay = vec![("index".into(), "on".into())]
        }),
        ("index=on,index=off", |o| {
            o.overlay = vec![("index".into(), "off".into())]
        }),
        ("redirect_dir=nofollow", |o| {
            o.overlay = vec![("redirect_dir".into(), "nofollow".into())]
        }),
        ("metacopy=off", |o| {
            o.overlay = vec![("metacopy".into(), "off".into())]
        }),
        ("xino=auto", |o| {
            o.overlay = vec![("xino".into(), "auto".into())]
        }),
        ("userxattr", |o| {
            o.overlay = vec![("userxattr".into(), "".into())]
        }),
        ("nfs_export=off", |o| {
            o.overlay = vec![("nfs_export".into(), "off".into())]
        }),
        ("uuid=null", |o| {
            o.overlay = vec![("uuid".into(), "null".into())]
        }),
        ("verity=require", |o| {
            o.overlay = vec![("verity".into(), "require".into())]
        }),
        ("datadir+=/data", |o| o.datadirs = paths(&["/data"])),
        ("lowerdir=/a,datadir+=/d1,datadir+=/d2", |o| {
            o.lowerdirs = paths(&["/a"]);
            o.datadirs = paths(&["/d1", "/d2"]);
        }),
        ("lowerdir=/a:/b::/d1::/d2", |o| {
            o.lowerdirs = paths(&["/a", "/b"]);
            o.datadirs = paths(&["/d1", "/d2"]);
        }),
        (r"lowerdir=/a\:\:b::/d", |o| {
            o.lowerdirs = paths(&["/a::b"]);
            o.datadirs = paths(&["/d"]);
        }),
        ("fast_ino=1", |o| o.unknown = vec!["fast_ino=1".into()]),
        // fstab-only options are ignored silently.
        (
            "defaults,noauto,nofail,_netdev,user,x-systemd.automount,comment=x,ro",
            |o| o.read_only = true,
        ),
        ("plugins=/x.so,frobnicate", |o| {
            o.unknown = vec!["plugins=/x.so".into(), "frobnicate".into()]
        }),
        ("Lowerdir=/a", |o| o.unknown = vec!["Lowerdir=/a".into()]),
    ];

    #[test]
    fn accepted_options() {
        for (input, edit) in ACCEPTED {
            let mut want = MountOptions::default();
            edit(&mut want);
            assert_eq!(parsed(input), want, "input: {input:?}");
        }
    }

    /// Malformed options and a piece of the one-line message each must give.
    const REJECTED: &[(&str, &str)] = &[
        ("lowerdir", "needs a value"),
        ("lowerdir=", "no lower directory"),
        ("lowerdir=:/a", "layer 1 is empty"),
        ("lowerdir=/a:", "layer 2 is empty"),
        (r#"lowerdir="/a"#, "unterminated double quote"),
        (r"lowerdir=/a\", "lone backslash"),
        ("lowerdir+=", "path is empty"),
        ("upperdir=", "path is empty"),
        ("upperdir", "needs a value"),
        ("workdir=", "path is empty"),
        ("workdir=\"\"", "path is empty"),
        ("workdir=/a\0b", "NUL"),
        ("ro=1", "takes no value"),
        ("rw=0", "takes no value"),
        ("volatile=yes", "not an integer"),
        ("fsync=off", "not an integer"),
        ("threaded=", "not an integer"),
        ("uring=yes", "must be auto, on or off"),
        ("uring", "needs a value"),
        ("uring_sched=fifo", "must be idle or normal"),
        ("uidmapping=1:2", "got 2 number(s)"),
        ("uidmapping=1:2:3:4", "got 4 number(s)"),
        ("uidmapping=a:b:c", "`a` is not an id"),
        ("uidmapping=0:-1:1", "`-1` is not an id"),
        ("uidmapping=0:4294967296:1", "is not an id"),
        ("uidmapping=0::1000:1", "empty field"),
        ("uidmapping=0:1000:0", "size 0"),
        ("uidmapping=2:0:4294967295", "goes past id"),
        ("uidmapping=0:4294967295:2", "goes past id"),
        ("uidmapping=0:1000:10:5:2000:1", "overlaps"),
        ("uidmapping=0:1000:10:20:1005:1", "overlaps"),
        ("gidmapping=0:1000", "got 2 number(s)"),
        ("uidmapping", "needs a value"),
        ("squash_to_uid=x", "`x` is not an id"),
        ("squash_to_uid=-1", "`-1` is not an id"),
        ("squash_to_uid=", "`` is not an id"),
        ("squash_to_gid=1.5", "`1.5` is not an id"),
        ("squash_to_gid", "needs a value"),
        ("xattr_permissions=3", "not 0, 1 or 2"),
        ("xattr_permissions=x", "not 0, 1 or 2"),
        ("context=", "context is empty"),
        ("context=\"\"", "context is empty"),
        (r#"context="a,b"#, "unterminated"),
        ("timeout=x", "not a number of seconds"),
        ("timeout=-1", "not a number of seconds"),
        ("timeout=inf", "not a number of seconds"),
        ("timeout=NaN", "not a number of seconds"),
        ("allow_other=1", "takes no value"),
        ("nosuid=0", "takes no value"),
        ("sync=x", "not an integer"),
        ("dirsync=on", "not an integer"),
        ("nosymfollow=1", "takes no value"),
        ("remount=1", "takes no value"),
        ("user_id=x", "not an id"),
        ("group_id", "needs a value"),
        ("fsname=", "name is empty"),
        ("subtype", "needs a value"),
        ("index=maybe", "`maybe` is not one of on, off"),
        ("index", "needs a value"),
        ("redirect_dir=yes", "not one of on, off, follow, nofollow"),
        ("metacopy=", "not one of"),
        ("xino=on2", "not one of"),
        ("nfs_export=", "not one of"),
        ("uuid=random", "not one of"),
        ("verity=1", "not one of"),
        ("userxattr=on", "takes no value"),
        ("datadir+=", "path is empty"),
        ("lowerdir=/a::/d:/b", "cannot follow a data-only layer"),
        ("lowerdir=/a:::/d", "layer 2 is empty"),
        ("lowerdir=::/d", "layer 1 is empty"),
        ("lowerdir=/a::", "layer 2 is empty"),
    ];

    #[test]
    fn rejected_options() {
        for (input, reason) in REJECTED {
            let mut o = MountOptions::default();
            let err = match o.parse(input) {
                Ok(()) => panic!("{input:?} was accepted: {o:?}"),
                Err(e) => e,
            };
            let text = err.to_string();
            assert!(
                text.contains(reason),
                "{input:?}: {text:?} lacks {reason:?}"
            );
            assert!(!text.contains('\n'), "{input:?}: message is not one line");
            assert_eq!(
                err.option(),
                *input,
                "{input:?}: error names the wrong option"
            );
            assert_eq!(o, MountOptions::default(), "{input:?} changed the options");
        }
    }

    #[test]
    fn regular_layers_cannot_follow_data_only_ones() {
        let mut o = parsed("lowerdir=/a,datadir+=/d");
        let err = o.parse("lowerdir+=/b").unwrap_err();
        assert_eq!(err.option(), "lowerdir+=/b");
        assert!(
            err.reason().contains("cannot follow a data-only layer"),
            "{err}"
        );
        assert_eq!(o.lowerdirs, paths(&["/a"]));
        assert_eq!(o.datadirs, paths(&["/d"]));
    }

    #[test]
    fn error_names_the_bad_item_and_leaves_options_unchanged() {
        let mut o = parsed("lowerdir=/a,ro");
        let before = o.clone();
        let err = o
            .parse("upperdir=/u,workdir=/w,squash_to_uid=x,volatile")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid mount option `squash_to_uid=x`: `x` is not an id (an integer from 0 to \
             4294967295)"
        );
        assert_eq!(err.option(), "squash_to_uid=x");
        assert_eq!(o, before);
    }

    #[test]
    fn podman_mount_program_string() {
        let opts = "lowerdir=/var/lib/containers/storage/overlay/l/ABC:\
                    /var/lib/containers/storage/overlay/l/DEF,\
                    upperdir=/x/diff,workdir=/x/work,,volatile,\
                    context=\"system_u:object_r:container_file_t:s0:c1022,c1023\",\
                    uidmapping=0:1000:1:1:100000:65536,gidmapping=:0:1000:1:1:100000:65536";
        let mut want = MountOptions {
            lowerdirs: paths(&[
                "/var/lib/containers/storage/overlay/l/ABC",
                "/var/lib/containers/storage/overlay/l/DEF",
            ]),
            upperdir: Some("/x/diff".into()),
            workdir: Some("/x/work".into()),
            volatile: true,
            context: Some("system_u:object_r:container_file_t:s0:c1022,c1023".into()),
            uid_mappings: vec![map(0, 1000, 1), map(1, 100000, 65536)],
            ..MountOptions::default()
        };
        want.gid_mappings = want.uid_mappings.clone();
        let got = parsed(opts);
        assert_eq!(got, want);
        assert!(got.validate().is_ok());
        assert!(!got.fsync_enabled());
        assert!(got.unknown.is_empty());
    }

    #[test]
    fn podman_strings_with_squash_and_relative_layers() {
        // Rootless additional image store: no upper, relative links, squashing, xattr perms.
        let o = parsed(
            "lowerdir=l/A:l/B:l/C,squash_to_uid=1000,squash_to_gid=1000,xattr_permissions=2",
        );
        assert_eq!(o.lowerdirs, paths(&["l/A", "l/B", "l/C"]));
        assert_eq!((o.squash_to_uid, o.squash_to_gid), (Some(1000), Some(1000)));
        assert_eq!(o.xattr_permissions, 2);
        assert_eq!(o.upperdir, None);
        assert!(o.validate().is_ok());
        // containers/storage sends an empty gidmapping when it has uid maps only.
        let o = parsed("lowerdir=/a,uidmapping=0:1000:1,gidmapping=");
        assert_eq!(o.uid_mappings, vec![map(0, 1000, 1)]);
        assert!(o.gid_mappings.is_empty());
    }

    #[test]
    fn parse_accumulates_across_calls() {
        let mut o = MountOptions::default();
        o.parse("lowerdir=/a:/b").unwrap();
        o.parse("upperdir=/u,workdir=/w").unwrap();
        o.parse("allow_other,nosuid").unwrap();
        o.parse("lowerdir=/c,frob").unwrap();
        o.parse("suid").unwrap();
        assert_eq!(o.lowerdirs, paths(&["/c"]));
        assert_eq!(o.upperdir, Some("/u".into()));
        assert_eq!(o.workdir, Some("/w".into()));
        assert_eq!(o.fuse, vec![FuseFlag::AllowOther, FuseFlag::Suid]);
        assert_eq!(o.unknown, vec!["frob".to_string()]);
    }

    #[test]
    fn split_options_table() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            (",", &[]),
            ("a", &["a"]),
            ("a,b", &["a", "b"]),
            ("a,,b,", &["a", "b"]),
            (",a", &["a"]),
            (r"a\,b,c", &[r"a\,b", "c"]),
            (r"a\\,b", &[r"a\\", "b"]),
            (r"a\", &[r"a\"]),
            (r#"k="x,y",z"#, &[r#"k="x,y""#, "z"]),
            (r#"k="x\",y",z"#, &[r#"k="x\",y""#, "z"]),
            (r#"k="x,y"#, &[r#"k="x,y"#]),
            (r#"a="",b"#, &[r#"a="""#, "b"]),
            (r"lowerdir=/a\:b:/c,ro", &[r"lowerdir=/a\:b:/c", "ro"]),
            ("ä,ö", &["ä", "ö"]),
        ];
        for (input, want) in cases {
            assert_eq!(split_options(input), *want, "input: {input:?}");
        }
    }

    #[test]
    fn split_lowerdir_table() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[""]),
            ("/a", &["/a"]),
            ("/a:/b:/c", &["/a", "/b", "/c"]),
            ("/a::/b", &["/a", "", "/b"]),
            (":", &["", ""]),
            (r"/a\:b", &["/a:b"]),
            (r"/a\\:b", &[r"/a\", "b"]),
            (r"/a\\\:b", &[r"/a\:b"]),
            (r"/a\,b", &["/a,b"]),
            (r"/a\", &[r"/a\"]),
            (r#""/a:b":c"#, &["/a:b", "c"]),
            (r#"/a"b"#, &["/ab"]),
        ];
        for (input, want) in cases {
            assert_eq!(split_lowerdir(input), paths(want), "input: {input:?}");
        }
    }

    #[test]
    fn id_mapping_helpers() {
        let o = parsed("uidmapping=0:1000:1:1:100000:65536,gidmapping=0:2000:10");
        let uid_to_host: &[(u32, Option<u32>)] = &[
            (0, Some(1000)),
            (1, Some(100000)),
            (2, Some(100001)),
            (65536, Some(165535)),
            (65537, None),
            (u32::MAX, None),
        ];
        for (uid, host) in uid_to_host {
            assert_eq!(o.mapped_uid_to_host(*uid), *host, "uid {uid}");
            if let Some(host) = host {
                assert_eq!(
                    o.host_uid_to_container(*host),
                    Some(*uid),
                    "host uid {host}"
                );
            }
        }
        let uid_to_container: &[(u32, Option<u32>)] = &[
            (0, None),
            (999, None),
            (1000, Some(0)),
            (1001, None),
            (165536, None),
        ];
        for (host, uid) in uid_to_container {
            assert_eq!(o.host_uid_to_container(*host), *uid, "host uid {host}");
        }
        assert_eq!(o.mapped_gid_to_host(9), Some(2009));
        assert_eq!(o.mapped_gid_to_host(10), None);
        assert_eq!(o.host_gid_to_container(2000), Some(0));
        assert_eq!(o.host_gid_to_container(1999), None);
        // No mapping: identity both ways.
        let o = MountOptions::default();
        for id in [0, 1, 1000, u32::MAX] {
            assert_eq!(o.mapped_uid_to_host(id), Some(id));
            assert_eq!(o.mapped_gid_to_host(id), Some(id));
            assert_eq!(o.host_uid_to_container(id), Some(id));
            assert_eq!(o.host_gid_to_container(id), Some(id));
        }
        // A full-range mapping at the top of the id space does not overflow.
        let full = map(0, 1, u32::MAX);
        assert_eq!(full.to_host(u32::MAX - 1), Some(u32::MAX));
        assert_eq!(full.to_host(u32::MAX), None);
        assert_eq!(full.to_container(0), None);
    }

    #[test]
    fn validate_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("lowerdir=/a", None),
            ("lowerdir=/a,upperdir=/u,workdir=/w", None),
            ("lowerdir=/a,ro,upperdir=/u,workdir=/w", None),
            ("", Some("`lowerdir`: missing")),
            ("upperdir=/u,workdir=/w", Some("`lowerdir`: missing")),
            (
                "lowerdir=/a,upperdir=/u",
                Some("`upperdir`: needs a workdir"),
            ),
            ("lowerdir=/a,workdir=/w", Some("`workdir`: given without")),
            ("lowerdir=/a,nfs_export=on,index=on", None),
            (
                "lowerdir=/a,nfs_export=on,index=off",
                Some("conflicting options: nfs_export=on,index=off"),
            ),
            (
                "lowerdir=/a,metacopy=on,nfs_export=on",
                Some("conflicting options: nfs_export=on,metacopy=on"),
            ),
            ("lowerdir=/a,metacopy=off,nfs_export=on", None),
        ];
        for (input, want) in cases {
            let got = parsed(input).validate().err().map(|e| e.to_string());
            match (want, &got) {
                (None, None) => {}
                (Some(want), Some(got)) if got.contains(want) => {}
                _ => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn fsync_enabled_table() {
        let cases = [
            ("", true),
            ("fsync=1", true),
            ("fsync=0", false),
            ("volatile", false),
            ("volatile,fsync=1", false),
        ];
        for (input, want) in cases {
            assert_eq!(parsed(input).fsync_enabled(), want, "input: {input:?}");
        }
    }

    #[test]
    fn overlay_option_lookup() {
        let o = parsed("index=on,userxattr,redirect_dir=follow,index=off");
        assert_eq!(o.overlay_option("index"), Some("off"));
        assert_eq!(o.overlay_option("userxattr"), Some(""));
        assert_eq!(o.overlay_option("redirect_dir"), Some("follow"));
        assert_eq!(o.overlay_option("metacopy"), None);
    }

    /// Escapes one lowerdir component so that `split_lowerdir` gives it back.
    fn escape_component(s: &str) -> String {
        let mut out = String::new();
        for c in s.chars() {
            if matches!(c, '\\' | ':' | ',' | '"') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in any::<String>()) {
            let mut o = MountOptions::default();
            let _ = o.parse(&s);
            let _ = o.validate();
            let _ = split_options(&s);
            let _ = split_lowerdir(&s);
        }

        /// Strings made of the characters the grammar cares about reach the deep paths.
        #[test]
        fn parser_never_panics_on_option_like_strings(
            s in r#"([a-z_+]{0,12}=?[0-9a-z:,\\"/ +.-]{0,20},?){0,6}"#
        ) {
            let mut o = MountOptions::default();
            if o.parse(&s).is_ok() {
                let _ = o.validate();
            }
        }

        #[test]
        fn escaped_lowerdirs_round_trip(dirs in prop::collection::vec("[^\0]{1,12}", 1..5)) {
            let joined: Vec<String> = dirs.iter().map(|d| escape_component(d)).collect();
            let value = joined.join(":");
            let want: Vec<PathBuf> = dirs.iter().map(PathBuf::from).collect();
            prop_assert_eq!(split_lowerdir(&value), want.clone());
            let mut o = MountOptions::default();
            let opts = format!("ro,lowerdir={value},volatile");
            prop_assert!(o.parse(&opts).is_ok());
            prop_assert_eq!(o.lowerdirs, want);
            prop_assert!(o.read_only && o.volatile);
        }

        #[test]
        fn mappings_round_trip(raw in prop::collection::vec((0u32..1000, 0u32..1000, 1u32..50), 1..4)) {
            // Spread ranges apart so that they never overlap.
            let maps: Vec<IdMapping> = raw
                .iter()
                .enumerate()
                .map(|(i, (c, h, s))| map(*c + 2000 * i as u32, *h + 2000 * i as u32, *s))
                .collect();
            let text: Vec<String> = maps
                .iter()
                .map(|m| format!("{}:{}:{}", m.container, m.host, m.size))
                .collect();
            let o = parsed(&format!("uidmapping={}", text.join(":")));
            prop_assert_eq!(&o.uid_mappings, &maps);
            for m in &maps {
                for id in [m.container, m.container + m.size - 1] {
                    let host = o.mapped_uid_to_host(id);
                    prop_assert!(host.is_some());
                    prop_assert_eq!(host.and_then(|h| o.host_uid_to_container(h)), Some(id));
                }
            }
        }
    }
}
