//! Inode flags through the mount (`lsattr`/`chattr`, `FS_IOC_GETFLAGS`/`SETFLAGS` and
//! `FS_IOC_FSGETXATTR`/`FSSETXATTR`), as kernel overlayfs's `ovl_fileattr_get/set` do.
//!
//! - Reading shows the flags of the real object (upper, else top lower) with the
//!   protection flags of `overlay.protattr` added.
//! - Setting copies the object up (even when the change is then refused), stores
//!   immutable (`i`) and append-only (`a`) as the `overlay.protattr` xattr of the upper
//!   object (`"a"`, `"i"` or `"ai"`; removed when both are cleared) and passes every other
//!   flag to the real upper object, whose filesystem accepts or refuses it (ext4: `+j`
//!   EPERM, `+C` EOPNOTSUPP, `-e` EPERM). The real upper object never gets `i`/`a`: the
//!   daemon could not link, rename or mark it any more.
//! - A protected object refuses changes through the mount with EPERM as the kernel's VFS
//!   does for an overlay inode with `S_IMMUTABLE`/`S_APPEND` ([`Change`]); writes through
//!   a handle opened before the flag was set still go through, as on the kernel.
//!
//! The flags read from `overlay.protattr` are cached in the node ([`ProtCache`]): only
//! this daemon writes the xattr while mounted (through the mount the name is escaped).

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::OFlags;

use crate::error::{Error, OsContext, Result, Where};
use crate::format::xattr::XattrNs;
use crate::sys;
use crate::union::attr::{SetAttr, TimeSet};
use crate::union::inode::RealLoc;
use crate::union::Ino;
use crate::union::UnionFs;

/// `FS_APPEND_FL`.
pub const FS_APPEND_FL: u32 = 0x20;
/// `FS_IMMUTABLE_FL`.
pub const FS_IMMUTABLE_FL: u32 = 0x10;
/// `FS_XFLAG_IMMUTABLE` (in `struct fsxattr`'s first word).
pub const FS_XFLAG_IMMUTABLE: u32 = 0x8;
/// `FS_XFLAG_APPEND`.
pub const FS_XFLAG_APPEND: u32 = 0x10;
/// `FS_SYNC_FL`, copied up with the data (kernel `OVL_COPY_FS_FLAGS_MASK`).
pub const FS_SYNC_FL: u32 = 0x8;
/// `FS_NOATIME_FL`, copied up too.
pub const FS_NOATIME_FL: u32 = 0x80;

/// The protection flags of an overlay object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prot {
    pub append: bool,
    pub immutable: bool,
}

impl Prot {
    pub const NONE: Prot = Prot {
        append: false,
        immutable: false,
    };

    pub fn any(self) -> bool {
        self.append || self.immutable
    }

    /// From `FS_IOC_SETFLAGS` flags.
    pub fn from_flags(flags: u32) -> Prot {
        Prot {
            append: flags & FS_APPEND_FL != 0,
            immutable: flags & FS_IMMUTABLE_FL != 0,
        }
    }

    /// From `struct fsxattr`'s xflags.
    pub fn from_xflags(x: u32) -> Prot {
        Prot {
            append: x & FS_XFLAG_APPEND != 0,
            immutable: x & FS_XFLAG_IMMUTABLE != 0,
        }
    }

    pub fn flags(self) -> u32 {
        (if self.append { FS_APPEND_FL } else { 0 })
            | (if self.immutable { FS_IMMUTABLE_FL } else { 0 })
    }

    pub fn xflags(self) -> u32 {
        (if self.append { FS_XFLAG_APPEND } else { 0 })
            | (if self.immutable {
                FS_XFLAG_IMMUTABLE
            } else {
                0
            })
    }

    /// The `overlay.protattr` value, in the kernel's order (`ovl_set_protattr`): `a`
    /// then `i`.
    pub fn format(self) -> Vec<u8> {
        let mut v = Vec::new();
        if self.append {
            v.push(b'a');
        }
        if self.immutable {
            v.push(b'i');
        }
        v
    }

    /// Parses an `overlay.protattr` value as `ovl_check_protattr` does: only `a` and `i`;
    /// an empty value or any other byte is an incompatible format, ignored (`None`).
    pub fn parse(v: &[u8]) -> Option<Prot> {
        if v.is_empty() {
            return None;
        }
        let mut p = Prot::NONE;
        for b in v {
            match b {
                b'a' => p.append = true,
                b'i' => p.immutable = true,
                _ => return None,
            }
        }
        Some(p)
    }
}

/// The cached form of [`Prot`] in a node: 0 unknown, else `KNOWN` with the flags.
pub struct ProtCache;

impl ProtCache {
    const KNOWN: u8 = 0x80;
    const APPEND: u8 = 1;
    const IMMUTABLE: u8 = 2;

    pub fn encode(p: Prot) -> u8 {
        Self::KNOWN
            | (if p.append { Self::APPEND } else { 0 })
            | (if p.immutable { Self::IMMUTABLE } else { 0 })
    }

    pub fn decode(v: u8) -> Option<Prot> {
        (v & Self::KNOWN != 0).then_some(Prot {
            append: v & Self::APPEND != 0,
            immutable: v & Self::IMMUTABLE != 0,
        })
    }
}

/// A change through the mount that protection flags may refuse, after the kernel's VFS
/// checks on an overlay inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Open with these flags (`may_open`, `inode_permission(MAY_WRITE)`).
    Open(i32),
    /// setattr: size, mode, owner or explicit times (`notify_change`).
    Metadata,
    /// setattr of the times to now only (`utimes(NULL)`): refused when immutable only.
    TouchNow,
    /// Set or remove an xattr (`xattr_permission`).
    Xattr,
    /// Unlink, rmdir, or rename of the object itself, or a new hard link to it
    /// (`may_delete`, `vfs_link`).
    Remove,
    /// A new entry in this directory (`may_create`: write permission on the dir).
    AddEntry,
    /// An entry removed from or replaced in this directory (`may_delete`: `IS_APPEND(dir)`,
    /// write permission on the dir).
    RemoveEntry,
}

/// Whether `p` refuses `c` (EPERM).
pub fn refuses(p: Prot, c: Change) -> bool {
    match c {
        Change::Open(flags) => {
            let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
            let trunc = flags & libc::O_TRUNC != 0;
            (p.immutable && (write || trunc))
                || (p.append && (trunc || (write && flags & libc::O_APPEND == 0)))
        }
        Change::TouchNow | Change::AddEntry => p.immutable,
        Change::Metadata | Change::Xattr | Change::Remove | Change::RemoveEntry => p.any(),
    }
}

/// Which [`Change`] a setattr is.
pub fn setattr_change(set: &SetAttr) -> Option<Change> {
    let explicit = |t: Option<TimeSet>| matches!(t, Some(TimeSet::At(_)));
    if set.mode.is_some()
        || set.uid.is_some()
        || set.gid.is_some()
        || set.size.is_some()
        || explicit(set.atime)
        || explicit(set.mtime)
    {
        Some(Change::Metadata)
    } else if set.atime.is_some() || set.mtime.is_some() {
        Some(Change::TouchNow)
    } else {
        None
    }
}

/// What `FS_IOC_*` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAttr {
    /// `FS_IOC_GETFLAGS`/`SETFLAGS` flags.
    Flags(u32),
    /// `struct fsxattr` bytes.
    Xattr([u8; sys::FSXATTR_SIZE]),
}

fn xflags_of(b: &[u8; sys::FSXATTR_SIZE]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

fn set_xflags(b: &mut [u8; sys::FSXATTR_SIZE], x: u32) {
    b[..4].copy_from_slice(&x.to_ne_bytes());
}

impl FileAttr {
    pub fn prot(&self) -> Prot {
        match self {
            FileAttr::Flags(f) => Prot::from_flags(*f),
            FileAttr::Xattr(b) => Prot::from_xflags(xflags_of(b)),
        }
    }

    /// With the protection flags of `p` added.
    pub fn with_prot(self, p: Prot) -> FileAttr {
        match self {
            FileAttr::Flags(f) => FileAttr::Flags(f | p.flags()),
            FileAttr::Xattr(mut b) => {
                let x = xflags_of(&b) | p.xflags();
                set_xflags(&mut b, x);
                FileAttr::Xattr(b)
            }
        }
    }

    /// Without any protection flag: what the real upper object gets.
    pub fn without_prot(self) -> FileAttr {
        match self {
            FileAttr::Flags(f) => FileAttr::Flags(f & !(FS_APPEND_FL | FS_IMMUTABLE_FL)),
            FileAttr::Xattr(mut b) => {
                let x = xflags_of(&b) & !(FS_XFLAG_APPEND | FS_XFLAG_IMMUTABLE);
                set_xflags(&mut b, x);
                FileAttr::Xattr(b)
            }
        }
    }
}

impl UnionFs {
    pub(crate) fn protattr_name(&self) -> &'static str {
        self.format
            .map(|f| f.xattr_ns)
            .unwrap_or(XattrNs::Trusted)
            .protattr()
    }

    /// The protection flags of `ino`: from the node's cache, else its upper object's
    /// `overlay.protattr` (lower objects have none).
    pub(crate) fn prot(&self, ino: u64) -> Result<Prot> {
        {
            let nodes = self.nodes.read();
            let n = nodes.get(ino)?;
            if let Some(p) = ProtCache::decode(n.prot) {
                return Ok(p);
            }
            if !n.upper && n.index().is_none() && n.detached().is_none() {
                return Ok(Prot::NONE);
            }
        }
        let loc = self.real(ino)?;
        if let RealLoc::Lower(..) = loc {
            return Ok(Prot::NONE);
        }
        let p = self
            .get_xattr_real(&loc, std::ffi::OsStr::new(self.protattr_name()))?
            .and_then(|v| Prot::parse(&v))
            .unwrap_or(Prot::NONE);
        self.cache_prot(ino, p);
        Ok(p)
    }

    pub(crate) fn cache_prot(&self, ino: u64, p: Prot) {
        if let Ok(n) = self.nodes.write().get_mut(ino) {
            n.prot = ProtCache::encode(p);
        }
    }

    /// EPERM when the protection flags of `ino` refuse `c`.
    pub(crate) fn check_change(&self, ino: u64, c: Change) -> Result<()> {
        if refuses(self.prot(ino)?, c) {
            return Err(Error::Permission);
        }
        Ok(())
    }

    /// Opens the real object for an inode-flags ioctl (reading, never blocking).
    fn open_for_ioctl(&self, loc: &RealLoc) -> Result<OwnedFd> {
        let path = self.open_real_path(loc)?;
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
        rustix::fs::open(
            crate::union::attr::proc_path(&*path).as_c_str(),
            flags,
            rustix::fs::Mode::empty(),
        )
        .at("open", loc.at())
    }

    /// `FS_IOC_GETFLAGS` (`want` is `Flags(_)`) or `FS_IOC_FSGETXATTR` (`Xattr(_)`).
    pub fn fileattr_get(&self, Ino(ino): Ino, want: FileAttr) -> Result<FileAttr> {
        let loc = self.real(ino)?;
        let fd = self.open_for_ioctl(&loc)?;
        let real = match want {
            FileAttr::Flags(_) => {
                FileAttr::Flags(sys::get_flags(fd.as_fd()).at("getflags", loc.at())?)
            }
            FileAttr::Xattr(_) => {
                FileAttr::Xattr(sys::get_fsxattr(fd.as_fd()).at("fsgetxattr", loc.at())?)
            }
        };
        Ok(real.with_prot(self.prot(ino)?))
    }

    /// `FS_IOC_SETFLAGS`/`FS_IOC_FSSETXATTR`: copy-up, protection flags into
    /// `overlay.protattr`, the rest to the real upper object.
    pub fn fileattr_set(&self, Ino(ino): Ino, set: FileAttr) -> Result<()> {
        let fmt = self.writable()?;
        self.prepare_write(ino)?;
        let old = self.prot(ino)?;
        let new = set.prot();
        let loc = self.real(ino)?;
        if let RealLoc::Lower(..) = loc {
            return Err(Error::Invariant("fileattr_set on a lower object"));
        }
        let path = self.open_real_path(&loc)?;
        let xname = std::ffi::OsStr::new(fmt.xattr_ns.protattr());
        if new.any() {
            // The kernel refuses protection flags it cannot store (`ovl_check_setxattr`
            // with EPERM for an upper without xattrs).
            match sys::set_xattr(path.as_fd(), xname, &new.format(), 0) {
                Ok(()) => {}
                Err(rustix::io::Errno::OPNOTSUPP) => return Err(Error::Permission),
                Err(e) => return Err(Error::os("set protattr", e, Where::Upper)),
            }
        } else if old.any() {
            match sys::remove_xattr(path.as_fd(), xname) {
                Ok(()) | Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::OPNOTSUPP) => {}
                Err(e) => return Err(Error::os("remove protattr", e, Where::Upper)),
            }
        }
        self.cache_prot(ino, new);
        let fd = self.open_for_ioctl(&loc)?;
        match set.without_prot() {
            FileAttr::Flags(f) => sys::set_flags(fd.as_fd(), f).at("setflags", Where::Upper),
            FileAttr::Xattr(b) => sys::set_fsxattr(fd.as_fd(), &b).at("fssetxattr", Where::Upper),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protattr_format_matches_kernel() {
        let ai = Prot {
            append: true,
            immutable: true,
        };
        assert_eq!(ai.format(), b"ai");
        assert_eq!(Prot::from_flags(FS_IMMUTABLE_FL).format(), b"i");
        assert_eq!(Prot::from_flags(FS_APPEND_FL | 0x80000).format(), b"a");
        assert_eq!(Prot::parse(b"ai"), Some(ai));
        assert_eq!(Prot::parse(b"ia"), Some(ai));
        assert_eq!(Prot::parse(b"i"), Some(Prot::from_flags(FS_IMMUTABLE_FL)));
        // Incompatible values are ignored, as ovl_check_protattr does.
        assert_eq!(Prot::parse(b""), None);
        assert_eq!(Prot::parse(b"ix"), None);
        for p in [Prot::NONE, ai, Prot::from_flags(FS_APPEND_FL)] {
            assert_eq!(ProtCache::decode(ProtCache::encode(p)), Some(p));
        }
        assert_eq!(ProtCache::decode(0), None);
    }

    #[test]
    fn flags_and_xflags() {
        let f = FileAttr::Flags(0x80000 | FS_IMMUTABLE_FL | FS_APPEND_FL);
        assert_eq!(f.without_prot(), FileAttr::Flags(0x80000));
        assert_eq!(
            FileAttr::Flags(0x80000).with_prot(Prot::from_flags(FS_APPEND_FL)),
            FileAttr::Flags(0x80000 | FS_APPEND_FL)
        );
        let mut b = [0u8; sys::FSXATTR_SIZE];
        set_xflags(&mut b, 0x40 | FS_XFLAG_IMMUTABLE);
        b[12] = 7; // projid kept
        let x = FileAttr::Xattr(b);
        assert!(x.prot().immutable && !x.prot().append);
        let FileAttr::Xattr(stripped) = x.without_prot() else {
            unreachable!()
        };
        assert_eq!(xflags_of(&stripped), 0x40);
        assert_eq!(stripped[12], 7);
        let FileAttr::Xattr(back) = FileAttr::Xattr(stripped).with_prot(x.prot()) else {
            unreachable!()
        };
        assert_eq!(back, b);
    }

    #[test]
    fn refusals_follow_the_vfs() {
        let i = Prot::from_flags(FS_IMMUTABLE_FL);
        let a = Prot::from_flags(FS_APPEND_FL);
        let n = Prot::NONE;
        use Change::*;
        assert!(!refuses(i, Open(libc::O_RDONLY)));
        assert!(refuses(i, Open(libc::O_WRONLY | libc::O_APPEND)));
        assert!(refuses(i, Open(libc::O_RDONLY | libc::O_TRUNC)));
        assert!(!refuses(a, Open(libc::O_WRONLY | libc::O_APPEND)));
        assert!(!refuses(a, Open(libc::O_RDWR | libc::O_APPEND)));
        assert!(refuses(a, Open(libc::O_WRONLY)));
        assert!(refuses(
            a,
            Open(libc::O_WRONLY | libc::O_APPEND | libc::O_TRUNC)
        ));
        assert!(refuses(i, TouchNow) && !refuses(a, TouchNow));
        assert!(refuses(i, AddEntry) && !refuses(a, AddEntry));
        for c in [Metadata, Xattr, Remove, RemoveEntry] {
            assert!(refuses(i, c) && refuses(a, c) && !refuses(n, c));
        }
        assert!(!refuses(n, Open(libc::O_WRONLY | libc::O_TRUNC)));
    }

    #[test]
    fn setattr_kinds() {
        let now = SetAttr {
            atime: Some(TimeSet::Now),
            mtime: Some(TimeSet::Now),
            ..SetAttr::default()
        };
        assert_eq!(setattr_change(&now), Some(Change::TouchNow));
        let at = SetAttr {
            mtime: Some(TimeSet::At(Default::default())),
            ..SetAttr::default()
        };
        assert_eq!(setattr_change(&at), Some(Change::Metadata));
        let size = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        assert_eq!(setattr_change(&size), Some(Change::Metadata));
        assert_eq!(setattr_change(&SetAttr::default()), None);
    }
}
