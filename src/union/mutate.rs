//! Changes to the namespace: create (file, dir, symlink, node, hard link), unlink, rmdir
//! and rename, with kernel overlayfs semantics.
//!
//! - A name that a lower layer still holds gets a whiteout when removed.
//! - Something created where a whiteout stood is built in the work directory and renamed
//!   over the whiteout in one step; a directory created there is opaque.
//! - A directory removed from the upper is first moved out (to the work directory, or
//!   swapped with a whiteout), so the name switches atomically; its leftover whiteouts
//!   are deleted afterwards.
//! - A renamed directory that has lower content gets a redirect xattr (relative name
//!   within the same lower parent, absolute path otherwise), as kernel overlayfs with
//!   `redirect_dir=on` writes it; a pure-upper directory moved over a lower name becomes
//!   opaque.
//!
//! All of this runs under `ns_lock`.

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
use crate::format::whiteout::{self, WhiteoutKind, WriteFormat};
use crate::format::{origin, xattr};
use crate::sys;
use crate::union::acl;
use crate::union::fileattr::{refuses, Change, Prot};
use crate::union::inode::Lower;
use crate::union::layer::remove_tree;
use crate::union::lookup::{DirInfo, LowerChild, Resolved};
use crate::union::{check_name, ids, Attr, Caller, UnionFs};

/// What to create.
#[derive(Debug, Clone, Copy)]
pub enum NewKind<'a> {
    /// A regular file, opened with these flags.
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
    Link(u64),
}

/// What the upper holds at a name that is absent from the merged view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpperSlot {
    Empty,
    /// A whiteout object (char 0/0 or xattr whiteout) sits at the name.
    WhiteoutObject,
    /// A `.wh.NAME` file marks the name.
    WhiteoutFile,
}

fn upper_slot(pfd: BorrowedFd<'_>, name: &OsStr) -> Result<UpperSlot> {
    match rustix::fs::statat(pfd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => return Ok(UpperSlot::WhiteoutObject),
        Err(Errno::NOENT) => {}
        Err(e) => return Err(Error::os("stat", e, Where::Upper)),
    }
    if crate::union::lookup::whiteout_file_hides(pfd, name)? {
        return Ok(UpperSlot::WhiteoutFile);
    }
    Ok(UpperSlot::Empty)
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The mode and owner a new object gets (see [`UnionFs::new_owner`]).
pub(crate) struct NewOwner {
    /// The parent's default ACL, if any: the new object inherits it.
    pub(crate) default_acl: Option<Vec<u8>>,
    /// Permission bits, the umask applied unless a default ACL governs.
    pub(crate) perm: u32,
    /// The parent's ownership override (xattr_permissions), if any.
    pub(crate) parent_override: Option<OverrideStat>,
    /// The parent is set-group-id (as shown): the new object takes its group.
    pub(crate) setgid_parent: bool,
    /// The owner to store, as on disk.
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// Whether an object the daemon made itself in upper dir `pst` already has the owner it
/// should get (the daemon's ids; the parent's group under a setgid parent): then a chown
/// would change nothing.
pub(crate) fn made_with_ids(
    pst: &rustix::fs::Stat,
    parent_override: Option<OverrideStat>,
    setgid_parent: bool,
    uid: u32,
    gid: u32,
) -> bool {
    let kernel_gid = if setgid_parent {
        pst.st_gid
    } else {
        rustix::process::getegid().as_raw()
    };
    parent_override.is_none() && uid == rustix::process::geteuid().as_raw() && gid == kernel_gid
}

impl UnionFs {
    pub(crate) fn upper_dir_fd(&self, ino: u64) -> Result<Arc<OwnedFd>> {
        let path = self.nodes.read().path_of(ino)?;
        self.upper_dir(&path)
    }

    /// The mode and owner an object that `caller` creates with `mode` and `umask` in
    /// upper directory `pfd` (stat `pst`) gets, as the kernel's `inode_init_owner`.
    pub(crate) fn new_owner(
        &self,
        pfd: BorrowedFd<'_>,
        pst: &rustix::fs::Stat,
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> NewOwner {
        // Under a default ACL the umask does not apply: the filesystem derives the new
        // object's permissions from the ACL (and the daemon runs with umask 0).
        let default_acl = sys::get_dir_xattr(pfd, OsStr::new(acl::DEFAULT_XATTR))
            .ok()
            .flatten();
        let perm = if default_acl.is_some() {
            mode & 0o7777
        } else {
            mode & 0o7777 & !umask
        };
        let ids = &self.opts.ids;
        // With an override xattr the parent's shown mode and group are in it.
        let parent_override = if self.reads_override() {
            self.read_override_stat(pfd, pst.st_mode)
        } else {
            None
        };
        let (pmode, pgid) = match parent_override {
            Some(o) => (o.mode, o.gid),
            None => (pst.st_mode, pst.st_gid),
        };
        let setgid_parent = pmode & libc::S_ISGID != 0;
        // The caller's ids as stored on disk. A caller outside the mapping (podman, as host
        // root, creating /etc/mtab in a container root mapped elsewhere) still creates: the
        // object is stored with the overflow id, as fuse-overlayfs does.
        let uid = ids.uid_to_disk(caller.uid).unwrap_or(ids::OVERFLOW_ID);
        let gid = if setgid_parent {
            pgid
        } else {
            ids.gid_to_disk(caller.gid).unwrap_or(ids::OVERFLOW_ID)
        };
        NewOwner {
            default_acl,
            perm,
            parent_override,
            setgid_parent,
            uid,
            gid,
        }
    }

    /// Whether the lower layers (ignoring the upper) show `name` in directory `info`.
    fn lower_has(&self, info: &DirInfo, name: &OsStr) -> Result<bool> {
        match &info.lower {
            Some(l) => Ok(self.lower_child(l, name)?.is_some()),
            None => Ok(false),
        }
    }

    /// Puts a whiteout at `name` in upper dir `pfd`, replacing a non-directory there.
    fn put_whiteout(
        &self,
        fmt: WriteFormat,
        pfd: BorrowedFd<'_>,
        name: &OsStr,
        replace: bool,
    ) -> Result<()> {
        match fmt.whiteout {
            WhiteoutKind::CharDev => {
                if replace {
                    let work = self.work_dir()?;
                    let tmp = self.tmp_name();
                    rustix::fs::mknodat(work, &tmp, FileType::CharacterDevice, Mode::empty(), 0)
                        .at("mknod whiteout", Where::Work)?;
                    rustix::fs::renameat(work, &tmp, pfd, name).at("publish whiteout", Where::Upper)
                } else {
                    rustix::fs::mknodat(pfd, name, FileType::CharacterDevice, Mode::empty(), 0)
                        .at("mknod whiteout", Where::Upper)
                }
            }
            WhiteoutKind::WhFile => {
                let wh = whiteout::whiteout_file_name(name);
                if wh.len() > 255 {
                    return Err(Error::NameTooLong);
                }
                // A user's own `.wh.NAME` holds the slot this format needs.
                if rustix::fs::statat(pfd, &wh, AtFlags::SYMLINK_NOFOLLOW).is_ok()
                    && crate::union::lookup::is_literal(pfd, &wh)?
                {
                    return Err(Error::Exists);
                }
                rustix::fs::openat(
                    pfd,
                    &wh,
                    OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                    Mode::from_raw_mode(0o600),
                )
                .at("create whiteout file", Where::Upper)?;
                if replace {
                    rustix::fs::unlinkat(pfd, name, AtFlags::empty()).at("unlink", Where::Upper)?;
                }
                Ok(())
            }
        }
    }

    /// EPERM when the object `name` in `parent` (resolved as `r`) is immutable or
    /// append-only, as `may_delete` refuses it on the kernel.
    fn check_victim(&self, parent: u64, name: &OsStr, r: &Resolved) -> Result<()> {
        // Bound first: the table's read guard must be gone before `check_change`, which
        // may take the write lock to cache what it read.
        let known = self.nodes.read().child(parent, name);
        if let Some(ino) = known {
            return self.check_change(ino, Change::Remove);
        }
        if r.upper.is_none() {
            return Ok(());
        }
        let pfd = self.upper_dir_fd(parent)?;
        let p = sys::get_xattr_at(pfd.as_fd(), name, OsStr::new(self.protattr_name()))
            .at("getxattr", Where::Upper)?
            .and_then(|v| Prot::parse(&v))
            .unwrap_or(Prot::NONE);
        if refuses(p, Change::Remove) {
            return Err(Error::Permission);
        }
        Ok(())
    }

    /// Node for (parent, name), pinning a new one if the kernel has not looked it up.
    /// Returns whether a pin was added (to be dropped by the caller).
    fn node_for(&self, parent: u64, name: &OsStr, r: &Resolved) -> Result<(u64, bool)> {
        if let Some(ino) = self.nodes.read().child(parent, name) {
            return Ok((ino, false));
        }
        let attr = self.pin(parent, name, r, None)?;
        Ok((attr.ino, true))
    }

    /// True when the merged directory (resolved as `r` at `parent_info`/`name`) is empty.
    fn is_empty_dir(&self, parent_info: &DirInfo, name: &OsStr, r: &Resolved) -> Result<bool> {
        let info = DirInfo {
            upper: match (&parent_info.upper, &r.upper) {
                (Some(p), Some(_)) => Some(p.join(name)),
                _ => None,
            },
            lower: r.lower.as_ref().and_then(Lower::dir).cloned(),
        };
        if !self.merged_entries(&info, None)?.is_empty() {
            return Ok(false);
        }
        // As kernel overlayfs: a name whose topmost lower entry is an xattr whiteout
        // counts as an entry, unless the upper covers the name.
        let Some(l) = r.lower.as_ref().and_then(Lower::dir) else {
            return Ok(true);
        };
        let lower = self.lower_dir(l)?;
        let mut xhidden = lower
            .iter()
            .filter(|(_, c)| matches!(c, LowerChild::Hidden { by_xattr: true }))
            .map(|(n, _)| n);
        let Some(up) = &info.upper else {
            return Ok(xhidden.next().is_none());
        };
        let pfd = sys::open_dir_path(self.upper_root()?, up).at("open upper dir", Where::Upper)?;
        for n in xhidden {
            if upper_slot(pfd.as_fd(), n)? == UpperSlot::Empty {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Creates an object; for files also returns the open handle.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        kind: NewKind<'_>,
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<(Attr, Option<u64>)> {
        check_name(name)?;
        // A `.wh.*` name is the user's own (an inner overlay's whiteout file, say): built in
        // the work directory and marked literal before it is published, so that no crash
        // leaves an unmarked one, which would read as a whiteout.
        let _ns = self.ns_change();
        self.create_locked(parent, name, kind, mode, umask, caller)
    }

    /// [`Self::create`] under `ns_lock`.
    fn create_locked(
        &self,
        parent: u64,
        name: &OsStr,
        kind: NewKind<'_>,
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<(Attr, Option<u64>)> {
        let literal = whiteout::is_reserved_name(name);
        // A character device 0/0 is an inner overlay's whiteout (kernel overlayfs refuses
        // to make one, EPERM; an overlay nested here makes its whiteouts so): stored as
        // such (see `xattr::INNER_WHITEOUT_XATTRS`), built in the work directory and
        // marked before it is published, like a `.wh.*` name.
        let inner_wh =
            matches!(kind, NewKind::Node { rdev: 0 }) && mode & libc::S_IFMT == libc::S_IFCHR;
        let fmt = self.writable()?;
        let info = self.dir_info(parent)?;
        // In an upper parent an empty slot leaves the name to the lowers (their index is
        // cached): the common create costs two stats, not four.
        let early_slot = match &info.upper {
            Some(pu) => Some(upper_slot(self.upper_dir(pu)?.as_fd(), name)?),
            None => None,
        };
        let exists = match early_slot {
            // A `.wh.*` entry that did not resolve is a whiteout file: the name is taken.
            Some(UpperSlot::WhiteoutObject) if literal => true,
            Some(UpperSlot::Empty) => self.lower_has(&info, name)?,
            _ => match self.resolve(&info, name) {
                Ok(_) => true,
                Err(Error::NotFound) => false,
                Err(e) => return Err(e),
            },
        };
        if exists {
            return Err(Error::Exists);
        }
        self.check_change(parent, Change::AddEntry)?;
        // An unnamed upper file (O_TMPFILE) is linked through its handle.
        let mut unnamed = None;
        if let NewKind::Link(src) = kind {
            if self.nodes.read().get(src)?.is_dir {
                return Err(Error::Permission);
            }
            self.check_change(src, Change::Remove)?;
            unnamed = self.is_unnamed_upper(src)?;
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
        }
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
        let NewOwner {
            default_acl,
            perm,
            parent_override,
            setgid_parent,
            uid,
            gid,
        } = self.new_owner(pfd.as_fd(), &pst, mode, umask, caller);
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
                    let fd =
                        rustix::fs::openat(tdir, tname, oflags, Mode::from_raw_mode(real_perm))
                            .at("create", Where::Upper)?;
                    file = Some(File::from(fd));
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
                    rustix::fs::openat(
                        tdir,
                        tname,
                        OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::WRONLY
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(perm | 0o600),
                    )
                    .at("create inner whiteout", Where::Work)?;
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
                        Err(Errno::PERM) if override_name.is_some() => {
                            let special =
                                OverrideKind::special(mode, rdev).ok_or(Error::Permission)?;
                            rustix::fs::openat(
                                tdir,
                                tname,
                                OFlags::CREATE
                                    | OFlags::EXCL
                                    | OFlags::WRONLY
                                    | OFlags::NOFOLLOW
                                    | OFlags::CLOEXEC,
                                Mode::from_raw_mode(real_perm),
                            )
                            .at("create device stand-in", Where::Upper)?;
                            stand_in = Some(special);
                        }
                        r => r.at("mknod", Where::Upper)?,
                    }
                }
                NewKind::Link(_) if unnamed.is_some() => {
                    let fd = unnamed
                        .as_deref()
                        .ok_or(Error::Invariant("unnamed source"))?;
                    rustix::fs::linkat(
                        rustix::fs::CWD,
                        &*sys::proc_fd_path(fd),
                        tdir,
                        tname,
                        AtFlags::SYMLINK_FOLLOW,
                    )
                    .at("link", Where::Upper)?;
                    return Ok(());
                }
                NewKind::Link(src) => {
                    let (sp, sn) = {
                        let nodes = self.nodes.read();
                        let n = nodes.get(src)?;
                        (nodes.path_of(n.parent)?, n.name().to_os_string())
                    };
                    let sfd = sys::open_dir_path(self.upper_root()?, &sp)
                        .at("open upper dir", Where::Upper)?;
                    rustix::fs::linkat(&sfd, &sn, tdir, tname, AtFlags::empty())
                        .at("link", Where::Upper)?;
                    return Ok(());
                }
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
            let ids_given =
                in_place && made_with_ids(&pst, parent_override, setgid_parent, uid, gid);
            if let Some(name) = overridden {
                let sgid_dir = if is_dir && setgid_parent {
                    libc::S_ISGID
                } else {
                    0
                };
                let over = OverrideStat {
                    uid,
                    gid,
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
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                );
                if let Err(e) = chown {
                    if is_root() && !squash {
                        return Err(Error::os("chown new", e, Where::Upper));
                    }
                }
            }
            let want_sgid_dir = is_dir && setgid_parent && tdir.as_raw_fd_eq(work);
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
                &default_acl,
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
        match slot {
            UpperSlot::Empty if in_place => {}
            UpperSlot::Empty => {
                if let Err(e) =
                    rustix::fs::renameat_with(work, &tmp, &pfd, name, RenameFlags::NOREPLACE)
                {
                    let _ = remove_tree(work, &tmp);
                    return Err(Error::os("publish", e, Where::Upper));
                }
            }
            UpperSlot::WhiteoutObject => {
                // Exchange, not replace: a directory cannot replace a non-directory.
                rustix::fs::renameat_with(work, &tmp, &pfd, name, RenameFlags::EXCHANGE)
                    .at("publish over whiteout", Where::Upper)?;
                rustix::fs::unlinkat(work, &tmp, AtFlags::empty())
                    .at("drop whiteout", Where::Work)?;
            }
            UpperSlot::WhiteoutFile => {
                rustix::fs::renameat_with(work, &tmp, &pfd, name, RenameFlags::NOREPLACE)
                    .at("publish", Where::Upper)?;
                rustix::fs::unlinkat(&pfd, whiteout::whiteout_file_name(name), AtFlags::empty())
                    .at("remove whiteout file", Where::Upper)?;
            }
        }
        let forced = if let NewKind::Link(src) = kind {
            Some(src)
        } else {
            None
        };
        let r = match kind {
            // A link shares the source's identity (origin, index entry): resolve it.
            NewKind::Link(_) => self.resolve(&info, name)?,
            // A new object is upper-only: whatever a lower holds at the name is hidden.
            _ => {
                let mut st = rustix::fs::statat(&pfd, name, AtFlags::SYMLINK_NOFOLLOW)
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
                        crate::union::export::generation_at(pfd.as_fd(), name)
                    } else {
                        0
                    },
                    inner_whiteout: inner_wh,
                    data: None,
                }
            }
        };
        let attr = self.pin(parent, name, &r, forced)?;
        let fh = file.map(|f| self.register_file(attr.ino, f, true));
        Ok((attr, fh))
    }

    /// Removes a non-directory.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    /// Removes an empty (merged) directory.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        check_name(name)?;
        let fmt = self.writable()?;
        let _ns = self.ns_change();
        let info = self.dir_info(parent)?;
        let r = self.resolve(&info, name)?;
        self.check_change(parent, Change::RemoveEntry)?;
        self.check_victim(parent, name, &r)?;
        match (dir, r.is_dir) {
            (false, true) => return Err(Error::IsDir),
            (true, false) => return Err(Error::NotDir),
            (true, true) if !self.is_empty_dir(&info, name, &r)? => return Err(Error::NotEmpty),
            _ => {}
        }
        let lower_has = self.lower_has(&info, name)?;
        let lower_linked = !dir
            && r.upper.is_none()
            && r.stat()
                .is_some_and(|s| s.st_nlink > 1 && self.can_carry_identity(s.st_mode));
        let r = if lower_linked {
            // As kernel overlayfs with index=on: a lower hard link is copied up (into the
            // index) before one of its names goes, so the others keep an exact st_nlink.
            let (ino, pinned) = self.node_for(parent, name, &r)?;
            let res = self.copy_up_at(ino, parent, name);
            if pinned {
                self.nodes.write().forget(ino, 1);
            }
            res?;
            self.resolve(&self.dir_info(parent)?, name)?
        } else {
            r
        };
        self.copy_up(parent)?;
        let pfd = self.upper_dir_fd(parent)?;
        let known = self.nodes.read().child(parent, name);
        let detached = match known {
            Some(_) => {
                let fd = match (&r.upper, &r.lower) {
                    (Some(_), _) => {
                        sys::open_path(pfd.as_fd(), Path::new(name)).at("open", Where::Upper)?
                    }
                    (None, Some(l)) => {
                        let top = l.top().ok_or(Error::Invariant("lower without layers"))?;
                        sys::open_path(self.lower_root(top), &l.path_at(name))
                            .at("open", Where::Lower(top))?
                    }
                    (None, None) => return Err(Error::NotFound),
                };
                Some(Arc::new(fd))
            }
            _ => None,
        };
        if r.upper.is_some() {
            if dir {
                let work = self.work_dir()?;
                let tmp = self.tmp_name();
                if lower_has && fmt.whiteout == WhiteoutKind::CharDev {
                    rustix::fs::mknodat(work, &tmp, FileType::CharacterDevice, Mode::empty(), 0)
                        .at("mknod whiteout", Where::Work)?;
                    rustix::fs::renameat_with(work, &tmp, &pfd, name, RenameFlags::EXCHANGE)
                        .at("swap dir for whiteout", Where::Upper)?;
                } else {
                    rustix::fs::renameat(&pfd, name, work, &tmp)
                        .at("move dir out", Where::Upper)?;
                    if lower_has {
                        self.put_whiteout(fmt, pfd.as_fd(), name, false)?;
                    }
                }
                // Cached upper directory fds may name the directory just removed.
                // (It was empty: no directory below it can be cached.)
                self.dirs
                    .forget_upper(&info.upper.clone().unwrap_or_default().join(name));
                remove_tree(work, &tmp).at("remove dir", Where::Work)?;
            } else if lower_has {
                self.put_whiteout(fmt, pfd.as_fd(), name, true)?;
            } else {
                rustix::fs::unlinkat(&pfd, name, AtFlags::empty()).at("unlink", Where::Upper)?;
            }
        } else {
            self.put_whiteout(fmt, pfd.as_fd(), name, false)?;
        }
        let aliases = !dir
            && r.stat()
                .map(|s| s.st_nlink as i64 + r.nlink_offset > 1)
                .unwrap_or(false);
        if !dir && r.upper.is_none() {
            // A lower name of a copied-up hard link goes away: one name fewer.
            let copied = known.and_then(|ino| {
                self.nodes
                    .read()
                    .get(ino)
                    .ok()
                    .map(|n| n.upper || n.index().is_some())
            });
            match (known, copied) {
                (Some(ino), Some(true)) => self.adjust_nlink(ino, -1)?,
                _ => {
                    if let Some((entry, _)) = &r.index {
                        let fd = sys::open_path(self.index_fd()?, Path::new(&**entry))
                            .at("open index", Where::Work)?;
                        let rec = origin::format_nlink(r.nlink_offset - 1);
                        sys::set_xattr(fd.as_fd(), self.identity_xattrs().1, rec.as_bytes(), 0)
                            .at("set nlink", Where::Work)?;
                    }
                }
            }
        }
        let mut nodes = self.nodes.write();
        nodes.unname(parent, name, aliases, detached);
        if let Some(n) = known.and_then(|ino| nodes.get_mut(ino).ok()) {
            if n.detached().is_some() {
                n.detached_lower = r.upper.is_none();
            }
        }
        Ok(())
    }

    /// Renames with `flags` (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`, `RENAME_WHITEOUT`) on
    /// behalf of `caller`. `RENAME_WHITEOUT` (an overlay nested on this one moving an
    /// object it has in a lower layer) leaves a character device 0/0 of `caller`'s at the
    /// old name, an inner whiteout as `mknod` makes it (kernel overlayfs refuses the flag,
    /// EINVAL). The two steps run under `ns_lock`, and the kernel holds both directories
    /// locked meanwhile, so nothing sees the name empty; a crash between them can leave
    /// it so (the inner overlay's lower object shows there again).
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
        caller: Caller,
    ) -> Result<()> {
        check_name(name)?;
        check_name(new_name)?;
        // A `.wh.*` object (marked literal) may move to an ordinary name; a move to a
        // `.wh.*` name would need the mark set on the way, not supported yet.
        if whiteout::is_reserved_name(new_name) {
            return Err(Error::Invalid);
        }
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let leave_whiteout = flags & libc::RENAME_WHITEOUT != 0;
        let known = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT;
        if flags & !known != 0 || (exchange && (noreplace || leave_whiteout)) {
            return Err(Error::Invalid);
        }
        let fmt = self.writable()?;
        let _ns = self.ns_change();
        if !leave_whiteout {
            return self.rename_locked(fmt, parent, name, new_parent, new_name, flags);
        }
        // The steps that can fail for want of xattr support come first.
        self.copy_up(parent)?;
        crate::union::lookup::mark_inner_whiteout_dir(fmt, self.upper_dir_fd(parent)?.as_fd())?;
        let flags = flags & !libc::RENAME_WHITEOUT;
        self.rename_locked(fmt, parent, name, new_parent, new_name, flags)?;
        let made = self.create_locked(
            parent,
            name,
            NewKind::Node { rdev: 0 },
            libc::S_IFCHR,
            0,
            caller,
        );
        match made {
            // The kernel takes no reference on the whiteout.
            Ok((a, _)) => {
                self.nodes.write().forget(a.ino, 1);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, ?name, "renamed, but the whiteout left behind could not be made");
                Err(e)
            }
        }
    }

    /// [`Self::rename`] without `RENAME_WHITEOUT`, under `ns_lock`.
    fn rename_locked(
        &self,
        fmt: WriteFormat,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let sinfo = self.dir_info(parent)?;
        let src = self.resolve(&sinfo, name)?;
        let dinfo = self.dir_info(new_parent)?;
        let dst = match self.resolve(&dinfo, new_name) {
            Ok(r) => Some(r),
            Err(Error::NotFound) => None,
            Err(e) => return Err(e),
        };
        if parent == new_parent && name == new_name {
            return Ok(());
        }
        let (src_ino, src_pin) = self.node_for(parent, name, &src)?;
        let mut pins = vec![];
        if src_pin {
            pins.push(src_ino);
        }
        let dst_ino = match &dst {
            Some(d) => {
                let (i, p) = self.node_for(new_parent, new_name, d)?;
                if p {
                    pins.push(i);
                }
                Some(i)
            }
            None => None,
        };
        let res = (|| -> Result<()> {
            self.check_change(parent, Change::RemoveEntry)?;
            self.check_change(src_ino, Change::Remove)?;
            match dst_ino {
                Some(d) => {
                    self.check_change(new_parent, Change::RemoveEntry)?;
                    self.check_change(d, Change::Remove)?;
                }
                None => self.check_change(new_parent, Change::AddEntry)?,
            }
            if exchange {
                if dst.is_none() {
                    return Err(Error::NotFound);
                }
            } else if let Some(d) = &dst {
                if noreplace {
                    return Err(Error::Exists);
                }
                if dst_ino == Some(src_ino) && !src.is_dir {
                    // Two hard links of one file: POSIX says do nothing.
                    return Ok(());
                }
                match (src.is_dir, d.is_dir) {
                    (true, false) => return Err(Error::NotDir),
                    (false, true) => return Err(Error::IsDir),
                    (true, true) if !self.is_empty_dir(&dinfo, new_name, d)? => {
                        return Err(Error::NotEmpty)
                    }
                    _ => {}
                }
            }
            // As unlink (and kernel overlayfs with index=on): a lower hard link about to
            // be replaced is copied up into the index first, so its other names keep an
            // exact st_nlink.
            let refreshed;
            let dst = match (&dst, dst_ino) {
                (Some(d), Some(di))
                    if !exchange
                        && !d.is_dir
                        && d.upper.is_none()
                        && d.stat().is_some_and(|s| {
                            s.st_nlink > 1 && self.can_carry_identity(s.st_mode)
                        }) =>
                {
                    self.copy_up_at(di, new_parent, new_name)?;
                    refreshed = Some(self.resolve(&self.dir_info(new_parent)?, new_name)?);
                    &refreshed
                }
                _ => &dst,
            };
            self.copy_up_at(src_ino, parent, name)?;
            self.copy_up(new_parent)?;
            if exchange {
                if let Some(d) = dst_ino {
                    // At this name: a hard link's object may have another name in the
                    // node table.
                    self.copy_up_at(d, new_parent, new_name)?;
                }
            }
            let sinfo = self.dir_info(parent)?;
            let dinfo = self.dir_info(new_parent)?;
            let spfd = self.upper_dir_fd(parent)?;
            let dpfd = self.upper_dir_fd(new_parent)?;
            // An inner overlay's whiteout moves into a directory marked as holding them.
            if src.inner_whiteout {
                crate::union::lookup::mark_inner_whiteout_dir(fmt, dpfd.as_fd())?;
            }
            if exchange && dst.as_ref().is_some_and(|d| d.inner_whiteout) {
                crate::union::lookup::mark_inner_whiteout_dir(fmt, spfd.as_fd())?;
            }
            let src_lower_has = self.lower_has(&sinfo, name)?;
            let dst_lower_has = self.lower_has(&dinfo, new_name)?;
            let samedir = parent == new_parent;
            let (sp, dp) = (spfd.as_fd(), dpfd.as_fd());
            self.redirect_if_metacopy(fmt, src_ino, (sp, name), parent, &sinfo, samedir)?;
            if let (true, Some(d)) = (exchange, dst_ino) {
                self.redirect_if_metacopy(fmt, d, (dp, new_name), new_parent, &dinfo, samedir)?;
            }
            if exchange {
                let dst_ino = dst_ino.ok_or(Error::Invariant("exchange without target"))?;
                let (sp, dp) = (spfd.as_fd(), dpfd.as_fd());
                let saved_src = self.fix_moved_dir(
                    fmt,
                    src_ino,
                    (sp, name),
                    new_name,
                    &dinfo,
                    dst_lower_has,
                    MovePhase::Before,
                )?;
                let saved_dst = match self.fix_moved_dir(
                    fmt,
                    dst_ino,
                    (dp, new_name),
                    name,
                    &sinfo,
                    src_lower_has,
                    MovePhase::Before,
                ) {
                    Ok(s) => s,
                    Err(e) => {
                        self.undo_moved_dir(fmt, saved_src);
                        return Err(e);
                    }
                };
                if let Err(e) =
                    rustix::fs::renameat_with(&spfd, name, &dpfd, new_name, RenameFlags::EXCHANGE)
                {
                    self.undo_moved_dir(fmt, saved_src);
                    self.undo_moved_dir(fmt, saved_dst);
                    return Err(Error::os("rename exchange", e, Where::Upper));
                }
                self.invalidate_renamed(parent, name, new_parent, new_name)?;
                {
                    let mut nodes = self.nodes.write();
                    nodes.rename(src_ino, parent, name, new_parent, new_name)?;
                    nodes.rename(dst_ino, new_parent, new_name, parent, name)?;
                }
                self.fix_moved_dir(
                    fmt,
                    src_ino,
                    (dp, new_name),
                    new_name,
                    &dinfo,
                    dst_lower_has,
                    MovePhase::After,
                )?;
                self.fix_moved_dir(
                    fmt,
                    dst_ino,
                    (sp, name),
                    name,
                    &sinfo,
                    src_lower_has,
                    MovePhase::After,
                )?;
                return Ok(());
            }
            let slot = if dst.as_ref().map(|d| d.upper.is_some()).unwrap_or(false) {
                UpperSlot::Empty
            } else {
                upper_slot(dpfd.as_fd(), new_name)?
            };
            let mut detached = None;
            if let Some(d) = &dst {
                if d.upper.is_some() {
                    // Held until the kernel forgets the replaced object: its node id is
                    // its upper inode number, which the upper filesystem must not hand
                    // to a new object meanwhile.
                    detached = Some(Arc::new(
                        sys::open_path(dpfd.as_fd(), Path::new(new_name))
                            .at("open", Where::Upper)?,
                    ));
                    if d.is_dir {
                        // Merged-empty: only whiteouts remain inside; clear them so the
                        // rename can replace the directory.
                        let dfd = sys::open_dir_path(dpfd.as_fd(), Path::new(new_name))
                            .at("open", Where::Upper)?;
                        let listing = sys::read_dir(
                            sys::open_dir_for_read(dpfd.as_fd(), Path::new(new_name))
                                .at("opendir", Where::Upper)?,
                        )
                        .at("readdir", Where::Upper)?;
                        for e in listing {
                            remove_tree(dfd.as_fd(), &e.name)
                                .at("clear whiteouts", Where::Upper)?;
                        }
                    }
                }
            }
            let saved = self.fix_moved_dir(
                fmt,
                src_ino,
                (spfd.as_fd(), name),
                new_name,
                &dinfo,
                dst_lower_has,
                MovePhase::Before,
            )?;
            if slot == UpperSlot::WhiteoutObject && src.is_dir {
                // A directory cannot replace the whiteout object: swap them, and the
                // whiteout lands at the old name, where it is needed or removed.
                if let Err(e) =
                    rustix::fs::renameat_with(&spfd, name, &dpfd, new_name, RenameFlags::EXCHANGE)
                {
                    self.undo_moved_dir(fmt, saved);
                    return Err(Error::os("rename over whiteout", e, Where::Upper));
                }
                if !src_lower_has {
                    rustix::fs::unlinkat(&spfd, name, AtFlags::empty())
                        .at("drop whiteout", Where::Upper)?;
                }
            } else {
                let mut rflags = RenameFlags::empty();
                if src_lower_has && fmt.whiteout == WhiteoutKind::CharDev {
                    rflags |= RenameFlags::WHITEOUT;
                }
                if let Err(e) = rustix::fs::renameat_with(&spfd, name, &dpfd, new_name, rflags) {
                    self.undo_moved_dir(fmt, saved);
                    return Err(Error::os("rename", e, Where::Upper));
                }
                if src_lower_has && fmt.whiteout == WhiteoutKind::WhFile {
                    self.put_whiteout(fmt, spfd.as_fd(), name, false)?;
                }
            }
            if src.is_dir || dst.as_ref().map(|d| d.is_dir).unwrap_or(false) {
                self.invalidate_renamed(parent, name, new_parent, new_name)?;
            }
            if slot == UpperSlot::WhiteoutFile {
                rustix::fs::unlinkat(
                    &dpfd,
                    whiteout::whiteout_file_name(new_name),
                    AtFlags::empty(),
                )
                .at("remove whiteout file", Where::Upper)?;
            }
            {
                let mut nodes = self.nodes.write();
                if dst.is_some() {
                    let aliases = dst
                        .as_ref()
                        .and_then(|d| d.stat())
                        .map(|s| s.st_nlink > 1)
                        .unwrap_or(false);
                    nodes.unname(new_parent, new_name, aliases, detached);
                }
                nodes.rename(src_ino, parent, name, new_parent, new_name)?;
            }
            self.fix_moved_dir(
                fmt,
                src_ino,
                (dpfd.as_fd(), new_name),
                new_name,
                &dinfo,
                dst_lower_has,
                MovePhase::After,
            )?;
            Ok(())
        })();
        let mut nodes = self.nodes.write();
        for p in pins {
            nodes.forget(p, 1);
        }
        res
    }

    /// Gives a metacopy file about to move (or be linked: `samedir` false) the redirect
    /// that keeps its data found (see `UnionFs::redirect_before_move`).
    fn redirect_if_metacopy(
        &self,
        fmt: WriteFormat,
        ino: u64,
        at: (BorrowedFd<'_>, &OsStr),
        parent: u64,
        pinfo: &DirInfo,
        samedir: bool,
    ) -> Result<()> {
        let data = {
            let nodes = self.nodes.read();
            let n = nodes.get(ino)?;
            if n.is_dir {
                return Ok(());
            }
            n.data().cloned()
        };
        match data {
            Some(d) => self.redirect_before_move(fmt, at.0, at.1, parent, pinfo, &d, samedir),
            None => Ok(()),
        }
    }

    /// Paths at and under both names of a rename now name other things (or nothing).
    fn invalidate_renamed(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
    ) -> Result<()> {
        let (a, b) = {
            let nodes = self.nodes.read();
            (
                nodes.path_of(parent)?.join(name),
                nodes.path_of(new_parent)?.join(new_name),
            )
        };
        self.dirs.invalidate_upper(&a);
        self.dirs.invalidate_upper(&b);
        Ok(())
    }

    /// Points a directory that moves to `new_name` in the directory whose merged info is
    /// `dinfo` at its lower content (redirect), or hides what the lower layers hold at the
    /// new name (opaque). `at` is where the directory is in the upper now.
    ///
    /// `MovePhase::Before` runs before the rename and only adds xattrs, so that a daemon
    /// killed between the two steps never leaves a moved directory without its redirect
    /// (its lower content would vanish); a redirect or opaque mark at the old name is
    /// harmless (kernel overlayfs sets its redirect before renaming too). It returns the
    /// redirect value it replaced, for `undo_moved_dir` if the rename fails.
    /// `MovePhase::After` removes a redirect the directory no longer needs (moved back to
    /// its natural place); removing it before the rename would lose the content likewise.
    #[allow(clippy::too_many_arguments)]
    fn fix_moved_dir(
        &self,
        fmt: WriteFormat,
        ino: u64,
        at: (BorrowedFd<'_>, &OsStr),
        new_name: &OsStr,
        dinfo: &DirInfo,
        lower_occupied: bool,
        phase: MovePhase,
    ) -> Result<Option<SavedRedirect>> {
        let lower = {
            let nodes = self.nodes.read();
            let n = nodes.get(ino)?;
            if !n.is_dir {
                return Ok(None);
            }
            n.lower().and_then(Lower::dir).cloned()
        };
        let (pfd, name) = at;
        let dfd = sys::open_dir_path(pfd, Path::new(name)).at("open moved dir", Where::Upper)?;
        let redirect = OsStr::new(fmt.xattr_ns.redirect());
        match (lower, phase) {
            (Some(l), phase) => {
                let natural = dinfo.lower.as_ref().map(|pl| pl.path.join(new_name));
                if natural.as_deref() == Some(l.path.as_path()) {
                    if phase == MovePhase::After {
                        for n in xattr::REDIRECT_XATTRS {
                            match sys::remove_xattr(dfd.as_fd(), OsStr::new(n)) {
                                Ok(()) | Err(Errno::NODATA) | Err(Errno::NOTSUP)
                                | Err(Errno::PERM) => {}
                                Err(e) => {
                                    return Err(Error::os("remove redirect", e, Where::Upper))
                                }
                            }
                        }
                    }
                } else if phase == MovePhase::Before {
                    let same_parent = dinfo
                        .lower
                        .as_ref()
                        .map(|pl| Some(pl.path.as_path()) == l.path.parent())
                        .unwrap_or(false);
                    let value: Vec<u8> = if same_parent {
                        l.path
                            .file_name()
                            .map(crate::format::redirect::relative)
                            .unwrap_or_default()
                    } else {
                        crate::format::redirect::absolute(&l.path)
                    };
                    let old =
                        sys::get_xattr(dfd.as_fd(), redirect).at("get redirect", Where::Upper)?;
                    sys::set_xattr(dfd.as_fd(), redirect, &value, 0)
                        .at("set redirect", Where::Upper)?;
                    return Ok(Some(SavedRedirect { dir: dfd, old }));
                }
            }
            (None, MovePhase::Before) if lower_occupied => {
                sys::set_xattr(
                    dfd.as_fd(),
                    OsStr::new(fmt.xattr_ns.opaque()),
                    xattr::OPAQUE_VALUE,
                    0,
                )
                .at("set opaque", Where::Upper)?;
            }
            (None, _) => {}
        }
        Ok(None)
    }

    /// Puts back the redirect `fix_moved_dir` replaced before a rename that then failed.
    fn undo_moved_dir(&self, fmt: WriteFormat, saved: Option<SavedRedirect>) {
        let Some(saved) = saved else { return };
        let redirect = OsStr::new(fmt.xattr_ns.redirect());
        let r = match &saved.old {
            Some(v) => sys::set_xattr(saved.dir.as_fd(), redirect, v, 0),
            None => sys::remove_xattr(saved.dir.as_fd(), redirect),
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot restore a directory's redirect after a failed rename");
        }
    }
}

/// When `UnionFs::fix_moved_dir` runs: before or after the rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MovePhase {
    Before,
    After,
}

/// A redirect replaced before a rename: the directory and the previous value.
struct SavedRedirect {
    dir: OwnedFd,
    old: Option<Vec<u8>>,
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
