//! The fuser adapter: translates FUSE requests into calls on the union core and its
//! results into replies. No union logic lives here.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyStatx, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use std::sync::OnceLock;

use crate::error::Error;
use crate::passthrough::{OpenKind, Passthrough};
use crate::transport::Transport;
use crate::union::attr::{SetAttr, TimeSet};
use crate::union::mutate::NewKind;
use crate::union::readdir::{DirPlusSink, DirSink};
use crate::union::setid::KillSetIds;
use crate::union::{Attr, Caller, Fh, Ino, Timespec, UnionFs};

/// How long the kernel may trust entries and attributes. Only this daemon changes the
/// layers while mounted, and every change goes through the kernel, which updates its
/// own caches, so the TTL can be long. The exception, writes through a passthrough
/// mmap, is handled per inode (`FuseAdapter::attr_ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// The filesystem handed to fuser.
#[derive(Debug)]
pub struct FuseAdapter {
    fs: Arc<UnionFs>,
    ttl: Duration,
    pt: Arc<Passthrough>,
    /// Ask the kernel for passthrough (root, not turned off by the user).
    want_passthrough: bool,
    /// Tells the kernel to drop cached attributes; set once the session exists.
    notifier: Arc<OnceLock<fuser::Notifier>>,
    /// Classic or io_uring: INIT asks for FUSE-over-io_uring when the plan allows it.
    transport: Arc<Transport>,
    /// INIT negotiated `FUSE_HANDLE_KILLPRIV_V2`: the daemon clears set-id bits itself.
    killpriv: bool,
}

/// The largest write (and so the largest request) the kernel may send.
pub const MAX_WRITE: u32 = 1 << 20;

impl FuseAdapter {
    pub fn new(
        fs: Arc<UnionFs>,
        ttl: Duration,
        pt: Arc<Passthrough>,
        want_passthrough: bool,
    ) -> Self {
        FuseAdapter {
            fs,
            ttl,
            pt,
            want_passthrough,
            notifier: Arc::new(OnceLock::new()),
            transport: Transport::classic(),
            killpriv: false,
        }
    }

    /// Serves over the transport `t` plans (FUSE-over-io_uring where it can be negotiated).
    pub fn with_transport(mut self, t: Arc<Transport>) -> Self {
        self.transport = t;
        self
    }

    /// Where the session's notifier goes once the session is made (the session takes the
    /// adapter, so the notifier cannot be given to `new`).
    pub fn notifier_slot(&self) -> Arc<OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// How long the kernel may keep the attributes of `ino`. Writes through a passthrough
    /// mmap change the real file's mtime and ctime without the kernel's FUSE inode
    /// knowing (plain writes update it), while kernel overlayfs always shows the real
    /// file's times: an inode with a passthrough handle open for writing is not cached.
    /// Everything else keeps the long TTL.
    fn attr_ttl(&self, ino: u64) -> Duration {
        if self.pt.has_writer(ino) {
            Duration::ZERO
        } else {
            self.ttl
        }
    }

    /// Makes the kernel drop the attributes it caches for `ino` (offset -1: no pages).
    /// The notification is processed while it is written, so it is in effect when the
    /// reply that follows it reaches the caller.
    fn invalidate_attrs(&self, ino: u64) {
        if let Some(n) = self.notifier.get() {
            if let Err(e) = n.inval_inode(INodeNo(ino), -1, 0) {
                tracing::debug!(ino, error = %e, "invalidating attributes");
            }
        }
    }

    /// Opens with the I/O mode the inode is in (see `crate::passthrough`).
    fn open_passthrough(&self, ino: u64, flags: i32, reply: ReplyOpen) {
        // Taken before the open: release removes a handle before it locks this table.
        let g = self.pt.lock();
        let r = self
            .fs
            .open(Ino(ino), flags)
            .and_then(|fh| Ok((fh, self.fs.handle_file(fh)?)));
        answer(reply, r, "open", |reply, (fh, file)| {
            self.reply_opened(g, ino, fh.0, &file, true, reply)
        })
    }

    /// The one choice of a new handle's I/O, for OPEN and for CREATE/TMPFILE: through
    /// its backing file (passthrough) where the passthrough table allows it, otherwise
    /// through the daemon with the kernel's page cache kept. `cached`: the kernel may
    /// hold attributes of the inode (false for a file just created). A backing file the
    /// kernel refuses turns passthrough off for the mount.
    fn reply_opened(
        &self,
        mut g: crate::passthrough::PassthroughGuard<'_>,
        ino: u64,
        fh: u64,
        file: &crate::union::handle::FileHandle,
        cached: bool,
        reply: impl OpenReply,
    ) {
        if g.kind(ino, !file.on_lower) == OpenKind::Passthrough {
            match g.add_passthrough(fh, ino, file.writable, || reply.open_backing(&file.file)) {
                Ok((id, first_writer)) => {
                    // The first writer of an inode the kernel may hold attributes of
                    // drops them, after registering, so no reply after it is kept long.
                    if first_writer && cached {
                        self.invalidate_attrs(ino);
                    }
                    return reply.passthrough(self, FileHandle(fh), id);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "FUSE passthrough refused: serving reads and writes");
                    self.pt.disable();
                }
            }
        }
        g.add_cached(fh, ino);
        reply.cached(self, FileHandle(fh));
    }
}

/// The replies that open a file: OPEN's, and CREATE's or TMPFILE's with their entry.
trait OpenReply {
    fn open_backing(&self, file: &std::fs::File) -> std::io::Result<fuser::BackingId>;
    /// Opened in passthrough mode.
    fn passthrough(self, fs: &FuseAdapter, fh: FileHandle, id: &fuser::BackingId);
    /// Opened for I/O through the daemon, the page cache kept.
    fn cached(self, fs: &FuseAdapter, fh: FileHandle);
}

impl OpenReply for ReplyOpen {
    fn open_backing(&self, file: &std::fs::File) -> std::io::Result<fuser::BackingId> {
        ReplyOpen::open_backing(self, file)
    }
    fn passthrough(self, _: &FuseAdapter, fh: FileHandle, id: &fuser::BackingId) {
        self.opened_passthrough(fh, FopenFlags::empty(), id)
    }
    fn cached(self, _: &FuseAdapter, fh: FileHandle) {
        self.opened(fh, FopenFlags::FOPEN_KEEP_CACHE)
    }
}

/// CREATE's reply with the entry it carries.
struct CreatedReply {
    reply: ReplyCreate,
    attr: Attr,
}

impl OpenReply for CreatedReply {
    fn open_backing(&self, file: &std::fs::File) -> std::io::Result<fuser::BackingId> {
        self.reply.open_backing(file)
    }
    fn passthrough(self, fs: &FuseAdapter, fh: FileHandle, id: &fuser::BackingId) {
        let a = &self.attr;
        self.reply.created_passthrough(
            &fs.attr_ttl(a.ino.0),
            &to_fuse(a),
            Generation(a.generation.into()),
            fh,
            FopenFlags::empty(),
            id,
        )
    }
    fn cached(self, fs: &FuseAdapter, fh: FileHandle) {
        let a = &self.attr;
        self.reply.created(
            &fs.ttl,
            &to_fuse(a),
            Generation(a.generation.into()),
            fh,
            FopenFlags::FOPEN_KEEP_CACHE,
        )
    }
}

/// READDIR's reply buffer as the core's listing sink.
struct DirReply<'a>(&'a mut ReplyDirectory);

impl DirSink for DirReply<'_> {
    fn add(&mut self, ino: u64, offset: u64, kind: rustix::fs::FileType, name: &OsStr) -> bool {
        self.0.add(INodeNo(ino), offset, kind_of(kind), name)
    }
}

/// READDIRPLUS's reply buffer as the core's listing sink, each entry with its TTLs.
struct DirPlusReply<'a> {
    reply: &'a mut ReplyDirectoryPlus,
    adapter: &'a FuseAdapter,
}

impl DirPlusSink for DirPlusReply<'_> {
    fn add(&mut self, a: &Attr, offset: u64, name: &OsStr) -> bool {
        self.reply.add(
            INodeNo(a.ino.0),
            offset,
            name,
            &self.adapter.attr_ttl(a.ino.0),
            &to_fuse(a),
            Generation(a.generation.into()),
        )
    }
}

fn errno(e: &Error, op: &'static str) -> Errno {
    if e.is_expected() {
        tracing::debug!(op, error = %e);
    } else if matches!(e, Error::Invariant(_)) {
        tracing::error!(op, error = %e);
    } else {
        tracing::warn!(op, error = %e);
    }
    Errno::from_i32(e.errno())
}

fn system_time(t: Timespec) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::new(t.sec.unsigned_abs(), 0) + Duration::new(0, t.nsec)
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn kind_of(ft: rustix::fs::FileType) -> FileType {
    file_type(ft.as_raw_mode())
}

fn to_fuse(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: UNIX_EPOCH,
        kind: file_type(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: a.blksize,
        flags: 0,
    }
}

/// The attributes of a negative entry: only the node id 0 matters.
fn negative_attr() -> FileAttr {
    to_fuse(&Attr {
        mode: libc::S_IFREG,
        ..Attr::default()
    })
}

fn time_set(t: Option<TimeOrNow>) -> Option<TimeSet> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => TimeSet::At(Timespec {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            }),
            Err(e) => {
                let d = e.duration();
                TimeSet::At(Timespec {
                    sec: -(d.as_secs() as i64) - i64::from(d.subsec_nanos() > 0),
                    nsec: if d.subsec_nanos() > 0 {
                        1_000_000_000 - d.subsec_nanos()
                    } else {
                        0
                    },
                })
            }
        },
    })
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

/// A reply that can carry an errno: each of fuser's reply types.
trait ErrnoReply {
    fn error(self, e: Errno);
}

macro_rules! errno_reply {
    ($($t:ty),*) => {
        $(impl ErrnoReply for $t {
            fn error(self, e: Errno) {
                <$t>::error(self, e)
            }
        })*
    };
}

errno_reply!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyIoctl,
    ReplyLseek,
    ReplyOpen,
    ReplyStatfs,
    ReplyStatx,
    ReplyWrite,
    ReplyXattr
);

/// Answers `reply` with `ok` and the value of `r`, or with the errno of the failed `op`.
fn answer<R: ErrnoReply, T>(
    reply: R,
    r: crate::error::Result<T>,
    op: &'static str,
    ok: impl FnOnce(R, T),
) {
    match r {
        Ok(v) => ok(reply, v),
        Err(e) => reply.error(errno(&e, op)),
    }
}

impl FuseAdapter {
    fn entry(&self, reply: ReplyEntry, r: crate::error::Result<Attr>, op: &'static str) {
        answer(reply, r, op, |reply, a| {
            reply.entry(
                &self.attr_ttl(a.ino.0),
                &to_fuse(&a),
                Generation(a.generation.into()),
            )
        })
    }

    fn empty(&self, reply: ReplyEmpty, r: crate::error::Result<()>, op: &'static str) {
        answer(reply, r, op, |reply, ()| reply.ok())
    }

    /// Replies to a create or tmpfile with the new file open (`r`), in passthrough mode
    /// where the other opens use it, or with the errno of the failed `op`.
    fn created(&self, reply: ReplyCreate, r: crate::error::Result<(Attr, Fh)>, op: &'static str) {
        answer(reply, r, op, |reply, (attr, fh)| {
            let reply = CreatedReply { reply, attr };
            match (self.pt.is_enabled(), self.fs.handle_file(fh)) {
                // New: the kernel has nothing cached of it to drop.
                (true, Ok(f)) => {
                    self.reply_opened(self.pt.lock(), attr.ino.0, fh.0, &f, false, reply)
                }
                _ => reply.cached(self, FileHandle(fh.0)),
            }
        })
    }

    fn xattr_reply(reply: ReplyXattr, data: &[u8], size: u32) {
        if size == 0 {
            reply.size(data.len() as u32);
        } else if data.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(data);
        }
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_MAX_PAGES
            // The kernel enforces POSIX ACLs read through getxattr, as overlayfs does.
            | InitFlags::FUSE_POSIX_ACL
            // The umask comes separately: it must not apply under a default ACL.
            | InitFlags::FUSE_DONT_MASK
            // The daemon clears set-id bits (`crate::union::setid`): no GETATTR before each
            // chown, and no GETXATTR security.capability before every write (the kernel
            // then marks an inode found without capabilities, SB_NOSEC).
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        // Handles that outlive the kernel's caches, or none at all (`name_to_handle_at`
        // then fails with EOPNOTSUPP, as on kernel overlayfs without `nfs_export=on`):
        // never handles that go stale once the kernel forgets the inode.
        let handles = if self.fs.exports() {
            InitFlags::FUSE_EXPORT_SUPPORT
        } else {
            InitFlags::FUSE_NO_EXPORT_SUPPORT
        };
        let offered = config.capabilities() & (wanted | handles);
        if let Err(missing) = config.add_capabilities(offered) {
            tracing::debug!(?missing, "kernel lacks some FUSE capabilities");
        }
        self.killpriv = offered.contains(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        if self.fs.exports() && !offered.contains(InitFlags::FUSE_EXPORT_SUPPORT) {
            tracing::warn!("the kernel offers no FUSE export support: nfs_export=on has no effect");
        }
        let _ = config.set_max_write(MAX_WRITE);
        let offered = config
            .capabilities()
            .contains(InitFlags::FUSE_OVER_IO_URING);
        if self
            .transport
            .negotiate(offered)
            .map_err(std::io::Error::other)?
        {
            // Offered, so this cannot fail.
            let _ = config.add_capabilities(InitFlags::FUSE_OVER_IO_URING);
        }
        if self.want_passthrough && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH) {
            // Backing files live on ordinary filesystems: one level of stacking.
            if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok()
            {
                self.pt.enable();
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        // "." and "..": the kernel decoding a file handle (export support).
        if name == "." || name == ".." {
            return self.entry(
                reply,
                self.fs.lookup_dot(Ino(parent.0), name == ".."),
                "lookup",
            );
        }
        match self.fs.lookup(Ino(parent.0), name) {
            // A negative entry (node id 0) lets the kernel cache the miss: only this daemon
            // changes the layers, and every creation goes through the kernel, which replaces
            // the negative dentry itself.
            Err(Error::NotFound) => reply.entry(&self.ttl, &negative_attr(), Generation(0)),
            r => self.entry(reply, r, "lookup"),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(Ino(ino.0), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        answer(reply, self.fs.getattr(Ino(ino.0)), "getattr", |r, a| {
            r.attr(&self.attr_ttl(a.ino.0), &to_fuse(&a))
        })
    }

    fn statx(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: Option<FileHandle>,
        _flags: u32,
        _mask: u32,
        reply: ReplyStatx,
    ) {
        // The kernel asks only for the birth time (a caller's STATX_BTIME) and caches it
        // with the other attributes, which are those of GETATTR.
        let r = self
            .fs
            .getattr(Ino(ino.0))
            .and_then(|a| Ok((a, self.fs.btime(Ino(ino.0))?)));
        answer(reply, r, "statx", |reply, (a, btime)| {
            reply.statx(
                &self.attr_ttl(a.ino.0),
                &to_fuse(&a),
                btime.map(system_time),
            )
        })
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        kill_suidgid: bool,
        reply: ReplyAttr,
    ) {
        // Under FUSE_HANDLE_KILLPRIV_V2 (see `crate::union::setid`): a chown, and a SETATTR
        // setting nothing (`chown(f, -1, -1)`, or the client's `file_remove_privs` after a
        // write), clear set-id bits as a chown; a truncate the kernel marks, as a write.
        let owner = uid.is_some() || gid.is_some();
        let nothing =
            !owner && mode.is_none() && size.is_none() && atime.is_none() && mtime.is_none();
        let kill = match (
            self.killpriv,
            owner || nothing,
            size.is_some() && kill_suidgid,
        ) {
            (false, _, _) => None,
            (true, true, _) => Some((KillSetIds::Owner, caller(req))),
            (true, false, true) => Some((KillSetIds::Data, caller(req))),
            (true, false, false) => None,
        };
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_set(atime),
            mtime: time_set(mtime),
            fh: fh.map(|f| f.0),
            kill,
        };
        answer(
            reply,
            self.fs.setattr(Ino(ino.0), &set),
            "setattr",
            |r, a| r.attr(&self.attr_ttl(a.ino.0), &to_fuse(&a)),
        )
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        answer(reply, self.fs.readlink(Ino(ino.0)), "readlink", |r, t| {
            r.data(&t)
        })
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = if mode & libc::S_IFMT == libc::S_IFREG || mode & libc::S_IFMT == 0 {
            NewKind::File {
                flags: libc::O_RDONLY,
            }
        } else {
            NewKind::Node { rdev: rdev as u64 }
        };
        let r = self
            .fs
            .create(Ino(parent.0), name, kind, mode, umask, caller(req));
        self.entry(reply, r, "mknod");
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self
            .fs
            .create(Ino(parent.0), name, NewKind::Dir, mode, umask, caller(req));
        self.entry(reply, r, "mkdir");
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(reply, self.fs.unlink(Ino(parent.0), name), "unlink");
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(reply, self.fs.rmdir(Ino(parent.0), name), "rmdir");
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.fs.create(
            Ino(parent.0),
            link_name,
            NewKind::Symlink(target.as_os_str().as_bytes()),
            0o777,
            0,
            caller(req),
        );
        self.entry(reply, r, "symlink");
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.empty(
            reply,
            self.fs.rename(
                Ino(parent.0),
                name,
                Ino(newparent.0),
                newname,
                flags.bits(),
                caller(req),
            ),
            "rename",
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.fs.create(
            Ino(newparent.0),
            newname,
            NewKind::Link(Ino(ino.0)),
            0,
            0,
            caller(req),
        );
        self.entry(reply, r, "link");
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.pt.is_enabled() {
            return self.open_passthrough(ino.0, flags.0, reply);
        }
        answer(reply, self.fs.open(Ino(ino.0), flags.0), "open", |r, fh| {
            r.opened(FileHandle(fh.0), FopenFlags::FOPEN_KEEP_CACHE)
        })
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        answer(
            reply,
            self.fs.read(Fh(fh.0), offset, size),
            "read",
            |r, d| r.data(&d),
        )
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // A writer without CAP_FSETID: the kernel left clearing set-id bits to the daemon.
        let kill = self.killpriv && write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let r = self.fs.write(Fh(fh.0), offset, data).and_then(|n| {
            if kill {
                self.fs.kill_set_ids(Ino(ino.0), caller(req))?;
            }
            Ok(n)
        });
        answer(reply, r, "write", |r, n| r.written(n))
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do on close (writes went to the real file already, the kernel handles
        // locks): ENOSYS tells the kernel never to send FLUSH again, which saves a round
        // trip on every close.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.pt.release_handle(fh.0);
        self.fs.release(Fh(fh.0));
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.empty(reply, self.fs.fsync(Fh(fh.0), datasync), "fsync");
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        answer(
            reply,
            self.fs.opendir(Ino(ino.0)),
            "opendir",
            |reply, (fh, cache)| {
                // The kernel keeps listings (`FOPEN_CACHE_DIR`) across opens (`FOPEN_KEEP_CACHE`)
                // and drops one when it sees the directory change (every change goes through
                // it): a warm re-listing reaches the daemon only for the open and release. A
                // handle that may not use the cache (see `UnionFs::opendir`) still keeps it
                // (`FOPEN_KEEP_CACHE`) for the handle that does.
                let flags = if cache {
                    FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::FOPEN_KEEP_CACHE
                };
                reply.opened(FileHandle(fh.0), flags)
            },
        )
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self
            .fs
            .readdir_into(Fh(fh.0), offset, &mut DirReply(&mut reply));
        answer(reply, r, "readdir", |reply, ()| reply.ok())
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut sink = DirPlusReply {
            reply: &mut reply,
            adapter: self,
        };
        let r = self
            .fs
            .readdirplus_into(Ino(ino.0), Fh(fh.0), offset, &mut sink);
        answer(reply, r, "readdirplus", |reply, ()| reply.ok())
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(Fh(fh.0));
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.empty(reply, self.fs.fsyncdir(Ino(ino.0)), "fsyncdir");
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        answer(reply, self.fs.statfs(), "statfs", |reply, s| {
            reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            )
        })
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.empty(
            reply,
            self.fs
                .setxattr(Ino(ino.0), name, value, flags, caller(req)),
            "setxattr",
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        answer(
            reply,
            self.fs.getxattr(Ino(ino.0), name),
            "getxattr",
            |r, v| Self::xattr_reply(r, &v, size),
        )
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        answer(
            reply,
            self.fs.listxattr(Ino(ino.0)),
            "listxattr",
            |reply, names| {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(n.as_bytes());
                    buf.push(0);
                }
                Self::xattr_reply(reply, &buf, size)
            },
        )
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(reply, self.fs.removexattr(Ino(ino.0), name), "removexattr");
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self
            .fs
            .create_open(Ino(parent.0), name, flags, mode, umask, caller(req));
        self.created(reply, r, "create")
    }

    fn tmpfile(
        &self,
        req: &Request,
        parent: INodeNo,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self
            .fs
            .tmpfile(Ino(parent.0), mode, umask, flags, caller(req));
        self.created(reply, r, "tmpfile")
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        // The kernel's fileattr_get/set (chattr, lsattr, xfs_io) reach FUSE as these four
        // commands, on a file it opened itself; flags travel as an `int`. Any other ioctl
        // is not one overlayfs passes on.
        use crate::sys::{FSXATTR_SIZE, FS_IOC_FSGETXATTR, FS_IOC_FSSETXATTR};
        use crate::sys::{FS_IOC_GETFLAGS, FS_IOC_SETFLAGS};
        use crate::union::fileattr::FileAttr;
        let r = match cmd {
            FS_IOC_GETFLAGS if out_size >= 4 => self
                .fs
                .fileattr_get(Ino(ino.0), FileAttr::Flags(0))
                .map(|a| match a {
                    FileAttr::Flags(f) => f.to_ne_bytes().to_vec(),
                    FileAttr::Xattr(b) => b.to_vec(),
                }),
            FS_IOC_FSGETXATTR if out_size as usize >= FSXATTR_SIZE => self
                .fs
                .fileattr_get(Ino(ino.0), FileAttr::Xattr([0; FSXATTR_SIZE]))
                .map(|a| match a {
                    FileAttr::Flags(f) => f.to_ne_bytes().to_vec(),
                    FileAttr::Xattr(b) => b.to_vec(),
                }),
            FS_IOC_SETFLAGS => match <[u8; 4]>::try_from(in_data.get(..4).unwrap_or_default()) {
                Ok(b) => self
                    .fs
                    .fileattr_set(Ino(ino.0), FileAttr::Flags(u32::from_ne_bytes(b)))
                    .map(|()| Vec::new()),
                Err(_) => return reply.error(Errno::EINVAL),
            },
            FS_IOC_FSSETXATTR => match <[u8; FSXATTR_SIZE]>::try_from(in_data) {
                Ok(b) => self
                    .fs
                    .fileattr_set(Ino(ino.0), FileAttr::Xattr(b))
                    .map(|()| Vec::new()),
                Err(_) => return reply.error(Errno::EINVAL),
            },
            _ => return reply.error(Errno::ENOTTY),
        };
        if r.is_ok() && matches!(cmd, FS_IOC_SETFLAGS | FS_IOC_FSSETXATTR) {
            // Setting flags changed the upper inode's ctime (and copied it up, maybe),
            // but the kernel's FUSE client keeps the attributes it holds: drop them
            // before the reply, so a stat right after chattr shows the new ctime.
            self.invalidate_attrs(ino.0);
        }
        answer(reply, r, "ioctl", |r, data| r.ioctl(0, &data))
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.empty(
            reply,
            self.fs
                .fallocate(Fh(fh.0), offset, length, mode, caller(req)),
            "fallocate",
        );
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        answer(
            reply,
            self.fs.lseek(Fh(fh.0), offset, whence),
            "lseek",
            |r, o| r.offset(o),
        )
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let r = self
            .fs
            .copy_file_range(Fh(fh_in.0), offset_in, Fh(fh_out.0), offset_out, len);
        answer(reply, r, "copy_file_range", |reply, n| reply.written(n))
    }
}
