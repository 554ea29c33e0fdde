//! Canonical text dump of a directory tree: one line per entry, sorted by path, never
//! following symlinks. It is the one format used to compare kernel overlayfs with rlayerfs
//! and to debug. Inode numbers never appear: entries sharing an inode within the dump get the
//! same hard-link group id (`hl=N`, numbered by first appearance in path order).
//!
//! Line: `PATH [hl=N] TYPE MODE UID:GID [size=N] [nlink=N] [-> TARGET] [rdev=MAJ:MIN]
//! [mtime=S.NS] [xattrs={k=v,...}] [hash=H]`. Directories show neither size nor nlink (both
//! differ between correct implementations).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::sys;

/// What a dump includes beyond the defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct DumpOptions {
    /// Include mtimes (off by default: ops create entries at wall-clock times).
    pub mtime: bool,
    /// Include private overlay xattrs (`trusted.overlay.*`, `user.overlay.*`,
    /// `user.fuseoverlayfs.*`) — useful when dumping raw layers.
    pub private_xattrs: bool,
    /// Include the mtimes of files, devices and fifos only, in whole seconds: tools that
    /// unpack or commit the same layer agree on those (a plain tar header keeps seconds),
    /// not on directories' or symlinks' (nor a whiteout's).
    pub file_mtime: bool,
    /// Leave out the line of the root itself (two trees made in different places).
    pub below_root: bool,
}

impl DumpOptions {
    /// The dump the image tests compare layer trees and merged views with.
    pub const LAYERS: DumpOptions = DumpOptions {
        mtime: false,
        private_xattrs: true,
        file_mtime: true,
        below_root: true,
    };
}

/// Whether an xattr name is in an overlay implementation's namespace (its own names, which
/// no mount shows, and users' escaped ones).
pub fn is_private_xattr(name: &str) -> bool {
    rlayerfs::format::xattr::is_overlay_namespace(name.as_bytes())
}

/// FNV-1a 64: a simple stable content hash.
pub fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Dump with default options (no mtimes, private xattrs hidden).
pub fn dump_tree(root: &Path) -> String {
    dump_tree_with(root, DumpOptions::default())
}

struct Raw {
    path: String,
    meta: Option<fs::Metadata>,
    text: String,
}

/// Dump of the tree at `root` (the root itself is `/`).
pub fn dump_tree_with(root: &Path, opts: DumpOptions) -> String {
    let mut raw = Vec::new();
    walk(root, "/", opts, &mut raw);
    raw.sort_by(|a, b| a.path.cmp(&b.path));
    // Hard-link groups: inodes seen more than once, numbered by first path.
    let mut count: HashMap<(u64, u64), usize> = HashMap::new();
    for r in raw
        .iter()
        .filter_map(|r| r.meta.as_ref())
        .filter(|m| !m.is_dir())
    {
        *count.entry((r.dev(), r.ino())).or_default() += 1;
    }
    let mut groups: HashMap<(u64, u64), usize> = HashMap::new();
    let mut out = String::new();
    for r in raw.iter().filter(|r| !(opts.below_root && r.path == "/")) {
        out.push_str(&r.path);
        if let Some(m) = r.meta.as_ref().filter(|m| !m.is_dir()) {
            let key = (m.dev(), m.ino());
            if count[&key] > 1 {
                let next = groups.len() + 1;
                let id = *groups.entry(key).or_insert(next);
                out.push_str(&format!(" hl={id}"));
            }
        }
        out.push(' ');
        out.push_str(&r.text);
        out.push('\n');
    }
    out
}

fn walk(path: &Path, rel: &str, opts: DumpOptions, out: &mut Vec<Raw>) {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => {
            out.push(Raw {
                path: rel.into(),
                meta: None,
                text: format!("ERROR lstat {}", sys::errno_of(&e)),
            });
            return;
        }
    };
    let text = describe(path, &meta, opts);
    let is_dir = meta.is_dir();
    out.push(Raw {
        path: rel.into(),
        meta: Some(meta),
        text,
    });
    if !is_dir {
        return;
    }
    let entries = match fs::read_dir(path) {
        Ok(it) => it.collect::<Result<Vec<_>, _>>(),
        Err(e) => Err(e),
    };
    match entries {
        Ok(entries) => {
            for e in entries {
                let name = e.file_name().to_string_lossy().into_owned();
                let child = if rel == "/" {
                    format!("/{name}")
                } else {
                    format!("{rel}/{name}")
                };
                walk(&e.path(), &child, opts, out);
            }
        }
        Err(e) => out.push(Raw {
            path: format!("{rel}/"),
            meta: None,
            text: format!("ERROR readdir {}", sys::errno_of(&e)),
        }),
    }
}

/// The dump's name of a file type: dir, file, symlink, fifo, chr, blk or sock.
pub fn kind_name(ft: fs::FileType) -> &'static str {
    if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "chr"
    } else if ft.is_block_device() {
        "blk"
    } else {
        "sock"
    }
}

fn describe(path: &Path, m: &fs::Metadata, opts: DumpOptions) -> String {
    let ft = m.file_type();
    let kind = kind_name(ft);
    let mut s = format!("{kind} {:04o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid());
    if ft.is_file() {
        s.push_str(&format!(" size={}", m.len()));
    }
    if !ft.is_dir() {
        s.push_str(&format!(" nlink={}", m.nlink()));
    }
    if ft.is_symlink() {
        match fs::read_link(path) {
            Ok(t) => s.push_str(&format!(" -> {}", t.display())),
            Err(e) => s.push_str(&format!(" -> ERROR {}", sys::errno_of(&e))),
        }
    }
    if ft.is_char_device() || ft.is_block_device() {
        s.push_str(&format!(
            " rdev={}:{}",
            libc::major(m.rdev()),
            libc::minor(m.rdev())
        ));
    }
    let whiteout = ft.is_char_device() && m.rdev() == 0;
    if opts.mtime {
        s.push_str(&format!(" mtime={}.{:09}", m.mtime(), m.mtime_nsec()));
    } else if opts.file_mtime && !ft.is_dir() && !ft.is_symlink() && !whiteout {
        s.push_str(&format!(" mtime={}", m.mtime()));
    }
    s.push_str(&xattrs_text(path, opts));
    if ft.is_file() {
        s.push_str(&content_text(path));
    }
    s
}

/// ` xattrs={k=v,...}` (sorted; empty string when there are none).
fn xattrs_text(path: &Path, opts: DumpOptions) -> String {
    let mut names = match sys::list_xattrs(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Vec::new(),
        Err(e) => return format!(" xattrs=ERROR {}", sys::errno_of(&e)),
    };
    names.retain(|n| opts.private_xattrs || !is_private_xattr(n));
    names.sort();
    if names.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = names
        .iter()
        .map(|n| match sys::get_xattr(path, n) {
            Ok(v) => format!("{n}={}", show_bytes(&v)),
            Err(e) => format!("{n}=ERROR {}", sys::errno_of(&e)),
        })
        .collect();
    format!(" xattrs={{{}}}", parts.join(","))
}

/// Printable ASCII values quoted, anything else as hex.
pub fn show_bytes(v: &[u8]) -> String {
    if v.iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b',')
    {
        format!("\"{}\"", String::from_utf8_lossy(v))
    } else {
        format!(
            "0x{}",
            v.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    }
}

fn content_text(path: &Path) -> String {
    let mut data = Vec::new();
    match fs::File::open(path).and_then(|mut f| f.read_to_end(&mut data)) {
        Ok(_) => format!(" hash={:016x}", fnv64(&data)),
        Err(e) => format!(" hash=ERROR {}", sys::errno_of(&e)),
    }
}

/// Lines only in `a` (`-`) and only in `b` (`+`), in path order: a readable diff of dumps.
pub fn diff_dumps(a: &str, b: &str) -> String {
    let la: Vec<&str> = a.lines().collect();
    let lb: Vec<&str> = b.lines().collect();
    let sa: std::collections::HashSet<&str> = la.iter().copied().collect();
    let sb: std::collections::HashSet<&str> = lb.iter().copied().collect();
    let mut out: Vec<(String, char, &str)> = Vec::new();
    for l in la.iter().filter(|l| !sb.contains(*l)) {
        out.push((l.split(' ').next().unwrap_or("").to_string(), '-', l));
    }
    for l in lb.iter().filter(|l| !sa.contains(*l)) {
        out.push((l.split(' ').next().unwrap_or("").to_string(), '+', l));
    }
    // By path, the `-` line before the `+` line of the same path.
    out.sort_by(|x, y| (&x.0, x.1 == '+').cmp(&(&y.0, y.1 == '+')));
    out.iter().map(|(_, c, l)| format!("{c} {l}\n")).collect()
}
