//! Creating a name: a regular file, directory, symlink, special file or hard link, made
//! in place in an empty upper slot, or built in the work directory (over a whiteout, a
//! `.wh.*` name, an inner overlay's whiteout) and renamed into place in one step, with
//! the owner, mode, default ACL and marks it needs set before it is published.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::error::{Error, OsContext, Result, Where};
use crate::format::override_stat::{OverrideKind, OverrideStat};
use crate::format::whiteout::{self, WriteFormat};
use crate::format::xattr;
use crate::sys;
use crate::union::acl;
use crate::union::fileattr::Change;
use crate::union::layer::remove_tree;
use crate::union::lookup::{DirInfo, Resolved};
use crate::union::{check_name, Attr, Caller, UnionFs};

use super::{upper_slot, UpperSlot};
use crate::union::{Fh, Ino};

/// What to create.
#[derive(Debug, Clone, Copy)]
pub enum NewKind<'a> {
    /// A regular file, opened with these flags (the handle `UnionFs::create_open` returns).
    File {
        flags: i32,
    },
    Dir,
    Symlink(&'a [u8]),
    /// A fifo, socket or device (type bits in `mode`).
    Node {
        rdev: u64,
    },
    /// A hard link to this inode.
    Link(Ino),
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

impl UnionFs {
    /// Creates an object. A regular file is made as mknod makes it: the file opened to
    /// make it is closed again.
    pub fn create(
        &self,
        Ino(parent): Ino,
        name: &OsStr,
        kind: NewKind<'_>,
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<Attr> {
        check_name(name)?;
        let _ns = self.ns_change();
        let (attr, _file) = self.create_locked(parent, name, kind, mode, umask, caller)?;
        Ok(attr)
    }

    /// Creates a regular file and opens it with `flags` (FUSE CREATE); returns its
    /// attributes and the open handle.
    pub fn create_open(
        &self,
        Ino(parent): Ino,
        name: &OsStr,
        flags: i32,
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<(Attr, Fh)> {
        check_name(name)?;
        let _ns = self.ns_change();
        let kind = NewKind::File { flags };
        let (attr, file) = self.create_locked(parent, name, kind, mode, umask, caller)?;
        let file = file.ok_or(Error::Invariant(
            "regular file created without its open file",
        ))?;
        Ok((attr, self.register_file(attr.ino.0, file, true)))
    }

    /// [`Self::create`] under `ns_lock`; also returns the open file of a regular file
    /// (`NewKind::File`), which the caller keeps or closes.
    pub(super) fn create_locked(
        &self,
        parent: u64,
        name: &OsStr,
        kind: NewKind<'_>,
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<(Attr, Option<File>)> {
        // A `.wh.*` name is the user's own (an inner overlay's whiteout file, say): built in
        // the work directory and marked literal before it is published, so that no crash
        // leaves an unmarked one, which would read as a whiteout.
        let literal = whiteout::is_reserved_name(name);
        // A character device 0/0 is an inner overlay's whiteout (kernel overlayfs refuses
        // to make one, EPERM; an overlay nested here makes its whiteouts so): stored as
        // such (see `xattr::INNER_WHITEOUT_XATTRS`), built in the work directory and
        // marked before it is published, like a `.wh.*` name.
        let inner_wh =
            matches!(kind, NewKind::Node { rdev: 0 }) && mode & libc::S_IFMT == libc::S_IFCHR;
        let fmt = self.writable()?;
        let info = self.dir_info(parent)?;
        let early_slot = self.check_free(&info, name, literal)?;
        self.check_change(parent, Change::AddEntry)?;
        // An unnamed upper file (O_TMPFILE) is linked through its handle.
        let unnamed = match kind {
            NewKind::Link(Ino(src)) => self.prepare_link_source(fmt, src)?,
            _ => None,
        };
        self.copy_up(parent)?;
        let info = self.dir_info(parent)?;
        let pfd = self.upper_dir_fd(parent)?;
        // A link of an inner whiteout is one too (kernel overlayfs shares one whiteout
        // among many names): its directory is marked as holding them first.
        let marks_dir = inner_wh
            || match kind {
                NewKind::Link(src) => {
                    let a = self.getattr(src)?;
                    whiteout::is_chardev_whiteout(a.mode, a.rdev)
                }
                _ => false,
            };
        if marks_dir {
            crate::union::lookup::mark_inner_whiteout_dir(fmt, pfd.as_fd())?;
        }
        let pst = rustix::fs::fstat(&pfd).at("stat upper dir", Where::Upper)?;
        let slot = match early_slot {
            // Copying up a link source may have changed the parent: look again.
            Some(slot) if !matches!(kind, NewKind::Link(_)) => slot,
            _ => upper_slot(pfd.as_fd(), name)?,
        };
        if literal && slot == UpperSlot::WhiteoutObject {
            return Err(Error::Exists);
        }
        let work = self.work_dir()?;
        let in_place = slot == UpperSlot::Empty && !literal && !inner_wh;
        let tmp = if in_place {
            std::ffi::OsString::new()
        } else {
            self.tmp_name()
        };
        let (tdir, tname): (BorrowedFd<'_>, &OsStr) = if in_place {
            (pfd.as_fd(), name)
        } else {
            (work, &tmp)
        };
        let own = self.new_owner(pfd.as_fd(), &pst, mode, umask, caller);
        let perm = own.perm;
        let ids = &self.opts.ids;
        let squash = ids.squashing();
        // xattr_permissions: directories and regular files (and stand-ins for devices the
        // daemon may not create) keep owner and mode in the override xattr; the real object
        // stays the daemon's and keeps owner access, so the daemon can always reach it.
        let override_name = match kind {
            _ if inner_wh => None,
            NewKind::File { .. } | NewKind::Dir | NewKind::Node { .. } => ids.override_write,
            NewKind::Symlink(_) | NewKind::Link(_) => None,
        };
        let owner_bits = if matches!(kind, NewKind::Dir) {
            0o700
        } else {
            0o600
        };
        let real_perm = if override_name.is_some() {
            perm | owner_bits
        } else {
            perm
        };
        let mut stand_in = None;
        let mut file = None;
        let made = (|| -> Result<()> {
            let made = self.make_object(
                fmt,
                kind,
                (tdir, tname),
                (mode, perm, real_perm),
                inner_wh,
                override_name.is_some(),
                unnamed.as_deref(),
            )?;
            match made {
                // A hard link keeps the source's owner, mode and marks.
                Made::Link => return Ok(()),
                Made::File(f) => file = Some(f),
                Made::StandIn(special) => stand_in = Some(special),
                Made::Other => {}
            }
            let is_dir = matches!(kind, NewKind::Dir);
            let overridden = match override_name {
                Some(_) => {
                    let real = rustix::fs::statat(tdir, tname, AtFlags::SYMLINK_NOFOLLOW)
                        .at("stat new", Where::Upper)?;
                    let real_ty = real.st_mode & libc::S_IFMT;
                    override_name.filter(|_| real_ty == libc::S_IFREG || real_ty == libc::S_IFDIR)
                }
                None => None,
            };
            // Made in place by the daemon, the object already has the daemon's ids (the
            // parent's group under a setgid parent): a chown would change nothing.
            let ids_given = in_place && own.made_with(&pst);
            if let Some(name) = overridden {
                let sgid_dir = if is_dir && own.setgid_parent {
                    libc::S_ISGID
                } else {
                    0
                };
                let over = OverrideStat {
                    uid: own.uid,
                    gid: own.gid,
                    mode: perm | sgid_dir,
                    kind: stand_in,
                };
                let fd = sys::open_path(tdir, Path::new(tname)).at("open new", Where::Upper)?;
                sys::set_xattr(fd.as_fd(), OsStr::new(name), over.format().as_bytes(), 0)
                    .at("set override xattr", Where::Upper)?;
            } else if !ids_given {
                let chown = rustix::fs::chownat(
                    tdir,
                    tname,
                    Some(rustix::fs::Uid::from_raw(own.uid)),
                    Some(rustix::fs::Gid::from_raw(own.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                );
                if let Err(e) = chown {
                    if is_root() && !squash {
                        return Err(Error::os("chown new", e, Where::Upper));
                    }
                }
            }
            let want_sgid_dir = is_dir && own.setgid_parent && tdir.as_raw_fd_eq(work);
            if override_name.is_none()
                && !matches!(kind, NewKind::Symlink(_))
                && (perm & 0o6000 != 0 || want_sgid_dir || inner_wh)
            {
                let fd = rustix::fs::openat(
                    tdir,
                    tname,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .at("open new", Where::Upper)?;
                let extra = if want_sgid_dir { libc::S_ISGID } else { 0 };
                rustix::fs::chmod(
                    &*crate::union::attr::proc_path(&fd),
                    Mode::from_raw_mode(perm | extra),
                )
                .at("chmod new", Where::Upper)?;
            }
            if let (Some(default), false) = (
                &own.default_acl,
                in_place || matches!(kind, NewKind::Symlink(_)),
            ) {
                // Built in the work directory: give it what the parent would have.
                let fd = rustix::fs::openat(
                    tdir,
                    tname,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .at("open new", Where::Work)?;
                let st = rustix::fs::fstat(&fd).at("stat new", Where::Work)?;
                let path = sys::proc_fd_path(&fd);
                acl::inherit(default, fd.as_fd(), &path, st.st_mode & 0o7777, is_dir)
                    .map_err(|e| Error::io("inherit default ACL", &e, Where::Work))?;
            }
            if is_dir && slot != UpperSlot::Empty {
                let fd =
                    sys::open_dir_path(tdir, Path::new(tname)).at("open new dir", Where::Work)?;
                sys::set_xattr(
                    fd.as_fd(),
                    OsStr::new(fmt.xattr_ns.opaque()),
                    xattr::OPAQUE_VALUE,
                    0,
                )
                .at("set opaque", Where::Work)?;
            }
            if literal {
                crate::union::lookup::mark_literal(fmt, tdir, tname, Where::Work)?;
            }
            Ok(())
        })();
        if let Err(e) = made {
            if !in_place {
                let _ = remove_tree(work, &tmp);
            }
            return Err(e);
        }
        if !in_place {
            publish(work, &tmp, pfd.as_fd(), name, slot)?;
        }
        let forced = if let NewKind::Link(Ino(src)) = kind {
            Some(src)
        } else {
            None
        };
        let r = self.new_resolved(&info, pfd.as_fd(), name, kind, inner_wh)?;
        let attr = self.pin(parent, name, &r, forced)?;
        if r.is_dir {
            self.made_upper_dir(attr.ino.0);
        }
        Ok((attr, file))
    }

    /// Fails with EEXIST unless `name` is free in directory `info`. Returns what the upper
    /// holds at the name, when the parent is in the upper.
    fn check_free(&self, info: &DirInfo, name: &OsStr, literal: bool) -> Result<Option<UpperSlot>> {
        // In an upper parent an empty slot leaves the name to the lowers (their index is
        // cached): the common create costs two stats, not four.
        let early_slot = match &info.upper {
            Some(pu) => Some(upper_slot(self.upper_dir(pu)?.as_fd(), name)?),
            None => None,
        };
        let exists = match early_slot {
            // A `.wh.*` entry that did not resolve is a whiteout file: the name is taken.
            Some(UpperSlot::WhiteoutObject) if literal => true,
            Some(UpperSlot::Empty) => self.lower_has(info, name)?,
            _ => match self.resolve(info, name) {
                Ok(_) => true,
                Err(Error::NotFound) => false,
                Err(e) => return Err(e),
            },
        };
        if exists {
            return Err(Error::Exists);
        }
        Ok(early_slot)
    }

    /// Readies the source `src` of a hard link: in the upper, with the redirect a
    /// metacopy file's new name needs. Returns the handle of an unnamed upper file
    /// (O_TMPFILE), which is linked through it instead.
    fn prepare_link_source(&self, fmt: WriteFormat, src: u64) -> Result<Option<Arc<OwnedFd>>> {
        if self.nodes.read().get(src)?.is_dir {
            return Err(Error::Permission);
        }
        self.check_change(src, Change::Remove)?;
        let unnamed = self.is_unnamed_upper(src)?;
        if unnamed.is_none() {
            self.copy_up(src)?;
            // Its new name must find its data too (kernel `ovl_set_link_redirect`).
            let (sp, sn) = {
                let nodes = self.nodes.read();
                let n = nodes.get(src)?;
                (n.parent, n.name().to_os_string())
            };
            let (spfd, sinfo) = (self.upper_dir_fd(sp)?, self.dir_info(sp)?);
            self.redirect_if_metacopy(fmt, src, (spfd.as_fd(), &sn), sp, &sinfo, false)?;
        }
        Ok(unnamed)
    }

    /// Makes the object itself at `at` (in the upper parent or the work directory),
    /// `mode` (type bits), `perm` (as asked) and `real_perm` (as stored) as
    /// [`Self::create_locked`] worked them out. `may_stand_in`: an empty file may stand
    /// for a device the daemon cannot make (xattr_permissions).
    #[allow(clippy::too_many_arguments)]
    fn make_object(
        &self,
        fmt: WriteFormat,
        kind: NewKind<'_>,
        at: (BorrowedFd<'_>, &OsStr),
        (mode, perm, real_perm): (u32, u32, u32),
        inner_wh: bool,
        may_stand_in: bool,
        unnamed: Option<&OwnedFd>,
    ) -> Result<Made> {
        let (tdir, tname) = at;
        match kind {
            NewKind::File { flags } => {
                let oflags = OFlags::from_bits_retain(
                    (flags
                        & (libc::O_ACCMODE
                            | libc::O_DIRECT
                            | libc::O_SYNC
                            | libc::O_DSYNC
                            | libc::O_NOATIME)) as u32,
                ) | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(tdir, tname, oflags, Mode::from_raw_mode(real_perm))
                    .at("create", Where::Upper)?;
                return Ok(Made::File(File::from(fd)));
            }
            NewKind::Dir => {
                rustix::fs::mkdirat(tdir, tname, Mode::from_raw_mode(real_perm))
                    .at("mkdir", Where::Upper)?;
            }
            NewKind::Symlink(target) => {
                rustix::fs::symlinkat(OsStr::from_bytes(target), tdir, tname)
                    .at("symlink", Where::Upper)?;
            }
            NewKind::Node { .. } if inner_wh => {
                // Owner access until the marks are set (user.* xattrs need it).
                create_empty(tdir, tname, perm | 0o600).at("create inner whiteout", Where::Work)?;
                crate::union::lookup::mark_inner_whiteout(fmt, tdir, tname, Where::Work)?;
            }
            NewKind::Node { rdev } => {
                let made = rustix::fs::mknodat(
                    tdir,
                    tname,
                    FileType::from_raw_mode(mode),
                    Mode::from_raw_mode(perm),
                    rdev,
                );
                match made {
                    // An unprivileged daemon cannot make devices: with xattr_permissions
                    // an empty file stands for one, its type in the override xattr
                    // (containers/storage's `char-MAJ-MIN` / `block-MAJ-MIN`).
                    Err(Errno::PERM) if may_stand_in => {
                        let special = OverrideKind::special(mode, rdev).ok_or(Error::Permission)?;
                        create_empty(tdir, tname, real_perm)
                            .at("create device stand-in", Where::Upper)?;
                        return Ok(Made::StandIn(special));
                    }
                    r => r.at("mknod", Where::Upper)?,
                }
            }
            NewKind::Link(_) if unnamed.is_some() => {
                let fd = unnamed.ok_or(Error::Invariant("unnamed source"))?;
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    &*sys::proc_fd_path(fd),
                    tdir,
                    tname,
                    AtFlags::SYMLINK_FOLLOW,
                )
                .at("link", Where::Upper)?;
                return Ok(Made::Link);
            }
            NewKind::Link(Ino(src)) => {
                let (sp, sn) = {
                    let nodes = self.nodes.read();
                    let n = nodes.get(src)?;
                    (nodes.path_of(n.parent)?, n.name().to_os_string())
                };
                let sfd = sys::open_dir_path(self.upper_root()?, &sp)
                    .at("open upper dir", Where::Upper)?;
                rustix::fs::linkat(&sfd, &sn, tdir, tname, AtFlags::empty())
                    .at("link", Where::Upper)?;
                return Ok(Made::Link);
            }
        }
        Ok(Made::Other)
    }

    /// How the object just published at `name` in upper dir `pfd` (directory `info`)
    /// resolves.
    fn new_resolved(
        &self,
        info: &DirInfo,
        pfd: BorrowedFd<'_>,
        name: &OsStr,
        kind: NewKind<'_>,
        inner_wh: bool,
    ) -> Result<Resolved> {
        Ok(match kind {
            // A link shares the source's identity (origin, index entry): resolve it.
            NewKind::Link(_) => self.resolve(info, name)?,
            // A new object is upper-only: whatever a lower holds at the name is hidden.
            _ => {
                let mut st = rustix::fs::statat(pfd, name, AtFlags::SYMLINK_NOFOLLOW)
                    .at("stat new", Where::Upper)?;
                if inner_wh {
                    crate::union::lookup::show_inner_whiteout(&mut st);
                }
                Resolved {
                    is_dir: matches!(kind, NewKind::Dir),
                    upper: Some(st),
                    lower: None,
                    lower_stat: None,
                    index: None,
                    origin_ino: None,
                    nlink_offset: 0,
                    generation: if self.exports() {
                        crate::union::export::generation_at(pfd, name)
                    } else {
                        0
                    },
                    inner_whiteout: inner_wh,
                    data: None,
                }
            }
        })
    }
}

/// Renames a new object built in the work directory as `tmp` to `name` in upper dir
/// `pfd`, over the whiteout that `slot` says is there (if any), which then goes.
fn publish(
    work: BorrowedFd<'_>,
    tmp: &OsStr,
    pfd: BorrowedFd<'_>,
    name: &OsStr,
    slot: UpperSlot,
) -> Result<()> {
    match slot {
        UpperSlot::Empty => {
            if let Err(e) = rustix::fs::renameat_with(work, tmp, pfd, name, RenameFlags::NOREPLACE)
            {
                let _ = remove_tree(work, tmp);
                return Err(Error::os("publish", e, Where::Upper));
            }
        }
        UpperSlot::WhiteoutObject => {
            // Exchange, not replace: a directory cannot replace a non-directory.
            rustix::fs::renameat_with(work, tmp, pfd, name, RenameFlags::EXCHANGE)
                .at("publish over whiteout", Where::Upper)?;
            rustix::fs::unlinkat(work, tmp, AtFlags::empty()).at("drop whiteout", Where::Work)?;
        }
        UpperSlot::WhiteoutFile => {
            rustix::fs::renameat_with(work, tmp, pfd, name, RenameFlags::NOREPLACE)
                .at("publish", Where::Upper)?;
            rustix::fs::unlinkat(pfd, whiteout::whiteout_file_name(name), AtFlags::empty())
                .at("remove whiteout file", Where::Upper)?;
        }
    }
    Ok(())
}

/// What [`UnionFs::make_object`] made.
enum Made {
    /// A regular file, open.
    File(File),
    /// An empty file standing for a device the daemon may not make (its type goes into
    /// the override xattr).
    StandIn(OverrideKind),
    /// A hard link: it has its source's owner, mode and marks already.
    Link,
    /// A directory, symlink, special file or inner whiteout.
    Other,
}

trait FdEq {
    fn as_raw_fd_eq(&self, other: BorrowedFd<'_>) -> bool;
}

impl FdEq for BorrowedFd<'_> {
    fn as_raw_fd_eq(&self, other: BorrowedFd<'_>) -> bool {
        use std::os::fd::AsRawFd;
        self.as_raw_fd() == other.as_raw_fd()
    }
}

/// A new empty regular file at `name` in `dir` (never an existing one, never through a
/// symlink), closed at once: it stands for an object that is not a regular file.
fn create_empty(dir: BorrowedFd<'_>, name: &OsStr, perm: u32) -> rustix::io::Result<()> {
    let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(perm)).map(drop)
}
