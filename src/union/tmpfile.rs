//! Unnamed files (`open(2)` with `O_TMPFILE`), as kernel overlayfs makes them: the
//! parent directory is copied up, the file is an `O_TMPFILE` of the upper filesystem in
//! the parent's upper copy (so the upper filesystem applies the default ACL there), with
//! the mode and owner a create in that directory would give (set-group-id parent
//! included). It has no name: its node lives on its handle alone (a detached node)
//! until `linkat` gives it one, or goes when the kernel forgets it. The link itself is a
//! [`NewKind::Link`](crate::union::mutate::NewKind) of that node (see `UnionFs::create`).

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, OsContext, Result, Where};
use crate::format::override_stat::OverrideStat;
use crate::sys;
use crate::union::fileattr::Change;
use crate::union::inode::Node;
use crate::union::{Attr, Caller, UnionFs};
use crate::union::{Fh, Ino};

impl UnionFs {
    /// Makes an unnamed regular file in directory `parent` for `caller`, open with
    /// `flags`; returns its attributes (st_nlink 0) and the open handle.
    pub fn tmpfile(
        &self,
        Ino(parent): Ino,
        mode: u32,
        umask: u32,
        flags: i32,
        caller: Caller,
    ) -> Result<(Attr, Fh)> {
        self.writable()?;
        let _ns = self.ns_change();
        self.dir_info(parent)?;
        self.check_change(parent, Change::AddEntry)?;
        self.copy_up(parent)?;
        let pfd = self.upper_dir_fd(parent)?;
        let pst = rustix::fs::fstat(&*pfd).at("stat upper dir", Where::Upper)?;
        let own = self.new_owner(pfd.as_fd(), &pst, mode, umask, caller);
        let ids = &self.opts.ids;
        // xattr_permissions: owner and mode go to the override xattr, the real file keeps
        // owner access for the daemon (as `create`).
        let override_name = ids.override_write;
        let real_perm = if override_name.is_some() {
            own.perm | 0o600
        } else {
            own.perm
        };
        let kept =
            libc::O_ACCMODE | libc::O_DIRECT | libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME;
        let oflags =
            OFlags::from_bits_retain((flags & kept) as u32) | OFlags::TMPFILE | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&*pfd, ".", oflags, Mode::from_raw_mode(real_perm)) {
            Ok(fd) => fd,
            // An upper filesystem without O_TMPFILE (old kernels say EISDIR).
            Err(Errno::OPNOTSUPP) | Err(Errno::ISDIR) => return Err(Error::NotSupported),
            Err(e) => return Err(Error::os("open tmpfile", e, Where::Upper)),
        };
        match override_name {
            Some(name) => {
                let over = OverrideStat {
                    uid: own.uid,
                    gid: own.gid,
                    mode: own.perm,
                    kind: None,
                };
                sys::set_xattr(
                    fd.as_fd(),
                    std::ffi::OsStr::new(name),
                    over.format().as_bytes(),
                    0,
                )
                .at("set override xattr", Where::Upper)?;
            }
            None => {
                if !own.made_with(&pst) {
                    let chown = sys::chown_at(
                        fd.as_fd(),
                        std::ffi::OsStr::new(""),
                        Some(own.uid),
                        Some(own.gid),
                    );
                    if let Err(e) = chown {
                        if rustix::process::geteuid().is_root() && !ids.squashing() {
                            return Err(Error::os("chown new", e, Where::Upper));
                        }
                    }
                }
                // A chown clears set-user-id and set-group-id: give them back.
                if own.perm & 0o6000 != 0 {
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(own.perm))
                        .at("chmod new", Where::Upper)?;
                }
            }
        }
        let st = rustix::fs::fstat(&fd).at("stat new", Where::Upper)?;
        let handle: Arc<OwnedFd> = Arc::new(
            rustix::fs::open(
                &*sys::proc_fd_path(&fd),
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .at("open new", Where::Upper)?,
        );
        // With nfs_export, the generation it will have once linked (its upper handle): the
        // kernel takes an inode whose generation changes for a reused node id and makes it
        // bad, failing the open file's I/O.
        let generation = if self.exports() {
            sys::name_to_handle(fd.as_fd())
                .map_or(0, |h| crate::union::export::handle_generation(&h))
        } else {
            0
        };
        let ino = {
            let mut nodes = self.nodes.write();
            let mut ino = self.map_ino(&st);
            if nodes.get(ino).is_ok() {
                // Held by an object that lost its name (the upper reuses inode numbers).
                ino = self.synthetic_ino();
            }
            let mut node = Node::new(false, false, None);
            node.set_detached(Some(handle));
            nodes.add_unnamed(ino, parent, node);
            if self.exports() {
                nodes.keep_generation(ino, generation);
            }
            ino
        };
        match self.getattr(Ino(ino)) {
            Ok(attr) => Ok((
                Attr { generation, ..attr },
                self.register_file(ino, File::from(fd), true),
            )),
            Err(e) => {
                self.nodes.write().forget(ino, 1);
                Err(e)
            }
        }
    }

    /// Whether `ino` is an unnamed upper file (an `O_TMPFILE` file, or an upper file
    /// unlinked while open): a link names it through its handle, no copy-up needed.
    pub(crate) fn is_unnamed_upper(&self, ino: u64) -> Result<Option<Arc<OwnedFd>>> {
        let nodes = self.nodes.read();
        let n = nodes.get(ino)?;
        Ok(n.detached().filter(|_| !n.detached_lower).cloned())
    }
}
