//! Clearing set-user-id and set-group-id on a change, as the kernel's VFS does with the
//! caller's credentials.
//!
//! Kernel overlayfs decides on the overlay inode with the caller's credentials and passes
//! the resulting mode change to the upper object. The daemon makes its changes with its own
//! privilege (CAP_FSETID, CAP_CHOWN), so the filesystem below keeps bits the caller's change
//! must clear. Under `FUSE_HANDLE_KILLPRIV_V2` the FUSE client leaves the clearing to the
//! daemon (it saves the client a GETATTR before every chown and a GETXATTR
//! `security.capability` before every write): a WRITE or a truncating SETATTR by a caller
//! without CAP_FSETID carries a kill flag, a chown always implies one, and the client's own
//! `file_remove_privs` (write, fallocate, copy_file_range, also through passthrough) arrives
//! as a SETATTR that sets nothing, like `chown(f, -1, -1)`. `security.capability` stays the
//! client's: it still removes it (REMOVEXATTR) wherever the kernel would.

use crate::error::Result;
use crate::sys;
use crate::union::attr::SetAttr;
use crate::union::Ino;
use crate::union::{Caller, UnionFs};

/// What kind of change clears set-id bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillSetIds {
    /// A change of the data (write, truncate, fallocate) by a caller without CAP_FSETID
    /// (the kernel's `setattr_should_drop_suidgid`): a regular file loses set-user-id, and
    /// set-group-id when it is group-executable or the caller is outside its group.
    Data,
    /// A change of owner or group, also to the same ones (`chown_common`): a
    /// non-directory loses set-user-id (whoever the caller), and set-group-id when it is
    /// group-executable or the caller is outside its group without CAP_FSETID.
    Owner,
}

/// The permission bits `mode` keeps after a change of kind `kill`; `keeps_sgid` says
/// whether the caller is in the file's group or has CAP_FSETID (the kernel's
/// `in_group_or_capable`), asked only for a set-group-id file that is not group-executable.
pub fn mode_after(mode: u32, kill: KillSetIds, keeps_sgid: impl FnOnce() -> bool) -> u32 {
    let ty = mode & libc::S_IFMT;
    let applies = match kill {
        KillSetIds::Data => ty == libc::S_IFREG,
        KillSetIds::Owner => ty != libc::S_IFDIR,
    };
    let mut perm = mode & 0o7777;
    if !applies || perm & (libc::S_ISUID | libc::S_ISGID) == 0 {
        return perm;
    }
    perm &= !libc::S_ISUID;
    if perm & libc::S_ISGID != 0 && (perm & libc::S_IXGRP != 0 || !keeps_sgid()) {
        perm &= !libc::S_ISGID;
    }
    perm
}

impl UnionFs {
    /// The mode `ino` must get once a change of kind `kill` by `caller` is made, when that
    /// clears a bit (attributes read before the change: a chgrp judges by the old group).
    pub(crate) fn killed_mode(
        &self,
        ino: u64,
        kill: KillSetIds,
        caller: Caller,
    ) -> Result<Option<u32>> {
        let a = self.getattr(Ino(ino))?;
        let keep = mode_after(a.mode, kill, || {
            // A task gone meanwhile changes nothing more: keep the bit.
            sys::process::in_group_or_capable(caller.pid, caller.gid, a.gid).unwrap_or(true)
        });
        Ok((keep != a.mode & 0o7777).then_some(keep))
    }

    /// Clears the set-id bits a data change of `ino` by `caller` (without CAP_FSETID)
    /// clears: a WRITE with `FUSE_WRITE_KILL_SUIDGID`.
    pub fn kill_set_ids(&self, Ino(ino): Ino, caller: Caller) -> Result<()> {
        match self.killed_mode(ino, KillSetIds::Data, caller)? {
            Some(mode) => self
                .setattr(
                    Ino(ino),
                    &SetAttr {
                        mode: Some(mode),
                        ..SetAttr::default()
                    },
                )
                .map(drop),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: u32 = libc::S_IFREG;

    fn never() -> bool {
        panic!("group membership asked for")
    }

    #[test]
    fn data_changes_clear_like_the_kernel() {
        // Set-user-id always goes, set-group-id with group-execute whoever the caller is.
        assert_eq!(mode_after(REG | 0o6777, KillSetIds::Data, never), 0o777);
        assert_eq!(mode_after(REG | 0o4755, KillSetIds::Data, never), 0o755);
        // Without group-execute, only a caller outside the group loses it.
        assert_eq!(mode_after(REG | 0o2667, KillSetIds::Data, || false), 0o667);
        assert_eq!(mode_after(REG | 0o2667, KillSetIds::Data, || true), 0o2667);
        // Nothing to clear: nothing asked.
        assert_eq!(mode_after(REG | 0o1777, KillSetIds::Data, never), 0o1777);
        // Only regular files.
        assert_eq!(
            mode_after(libc::S_IFDIR | 0o2775, KillSetIds::Data, never),
            0o2775
        );
    }

    #[test]
    fn owner_changes_clear_like_chown() {
        assert_eq!(mode_after(REG | 0o6777, KillSetIds::Owner, never), 0o777);
        assert_eq!(mode_after(REG | 0o2667, KillSetIds::Owner, || true), 0o2667);
        assert_eq!(mode_after(REG | 0o2667, KillSetIds::Owner, || false), 0o667);
        // Directories keep both; other non-directories do not.
        assert_eq!(
            mode_after(libc::S_IFDIR | 0o6777, KillSetIds::Owner, never),
            0o6777
        );
        assert_eq!(
            mode_after(libc::S_IFCHR | 0o4666, KillSetIds::Owner, never),
            0o666
        );
    }
}
