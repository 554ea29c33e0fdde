//! The one error type of the core and the one table that turns it into an errno.
//!
//! Every failure in the union core is an [`Error`]: either a failed system call on a layer
//! (with the operation that failed and the errno the kernel gave), or a union-level refusal
//! (`NotFound`, `NotEmpty`, ...). [`Error::errno`] is the single exhaustive mapping to the
//! errno the FUSE caller sees, so no call site picks errno values on its own.

use std::fmt;

/// Which part of the stack an error came from, for log context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    Upper,
    Lower(u16),
    Work,
    Unknown,
}

/// An error of the union core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A system call on a layer failed.
    Os {
        op: &'static str,
        errno: i32,
        at: Where,
    },
    /// The name does not exist in the merged view.
    NotFound,
    /// The name exists already.
    Exists,
    /// Directory not empty in the merged view.
    NotEmpty,
    /// A directory was expected.
    NotDir,
    /// A non-directory was expected.
    IsDir,
    /// The mount is read-only.
    ReadOnly,
    /// The argument is not acceptable (e.g. a reserved `.wh.` name).
    Invalid,
    /// The name is too long.
    NameTooLong,
    /// Private overlay attributes cannot be read or changed through the mount.
    NotSupported,
    /// Unknown inode or handle: the kernel asked about something we do not hold.
    Stale,
    /// Bad file handle.
    BadHandle,
    /// Caller lacks the privilege.
    Permission,
    /// An internal invariant did not hold; the caller gets EIO.
    Invariant(&'static str),
}

impl Error {
    /// Wraps a raw errno from a system call.
    pub fn os(op: &'static str, err: rustix::io::Errno, at: Where) -> Self {
        Error::Os {
            op,
            errno: err.raw_os_error(),
            at,
        }
    }

    /// From a std I/O error (e.g. from `File` methods).
    pub fn io(op: &'static str, err: &std::io::Error, at: Where) -> Self {
        Error::Os {
            op,
            errno: err.raw_os_error().unwrap_or(libc::EIO),
            at,
        }
    }

    /// The errno the caller sees. The one table of the crate.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Os { errno, .. } => *errno,
            Error::NotFound => libc::ENOENT,
            Error::Exists => libc::EEXIST,
            Error::NotEmpty => libc::ENOTEMPTY,
            Error::NotDir => libc::ENOTDIR,
            Error::IsDir => libc::EISDIR,
            Error::ReadOnly => libc::EROFS,
            Error::Invalid => libc::EINVAL,
            Error::NameTooLong => libc::ENAMETOOLONG,
            Error::NotSupported => libc::EOPNOTSUPP,
            Error::Stale => libc::ESTALE,
            Error::BadHandle => libc::EBADF,
            Error::Permission => libc::EPERM,
            Error::Invariant(_) => libc::EIO,
        }
    }

    /// True for failures that are a normal answer (a missing name), logged at debug only.
    pub fn is_expected(&self) -> bool {
        matches!(
            self.errno(),
            libc::ENOENT | libc::EEXIST | libc::ENOTEMPTY | libc::ENODATA | libc::ERANGE
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Os { op, errno, at } => write!(
                f,
                "{op} on {at:?}: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            Error::Invariant(what) => write!(f, "internal invariant broken: {what}"),
            other => write!(f, "{}", std::io::Error::from_raw_os_error(other.errno())),
        }
    }
}

impl std::error::Error for Error {}

/// Result of the union core.
pub type Result<T> = std::result::Result<T, Error>;

/// Extension to attach context to rustix results.
pub trait OsContext<T> {
    fn at(self, op: &'static str, at: Where) -> Result<T>;
}

impl<T> OsContext<T> for rustix::io::Result<T> {
    fn at(self, op: &'static str, at: Where) -> Result<T> {
        self.map_err(|e| Error::os(op, e, at))
    }
}

impl<T> OsContext<T> for std::io::Result<T> {
    fn at(self, op: &'static str, at: Where) -> Result<T> {
        self.map_err(|e| Error::io(op, &e, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_table() {
        let cases = [
            (Error::NotFound, libc::ENOENT),
            (Error::Exists, libc::EEXIST),
            (Error::NotEmpty, libc::ENOTEMPTY),
            (Error::NotDir, libc::ENOTDIR),
            (Error::IsDir, libc::EISDIR),
            (Error::ReadOnly, libc::EROFS),
            (Error::Invalid, libc::EINVAL),
            (Error::NameTooLong, libc::ENAMETOOLONG),
            (Error::NotSupported, libc::EOPNOTSUPP),
            (Error::Stale, libc::ESTALE),
            (Error::BadHandle, libc::EBADF),
            (Error::Permission, libc::EPERM),
            (Error::Invariant("x"), libc::EIO),
            (
                Error::os("open", rustix::io::Errno::ACCESS, Where::Upper),
                libc::EACCES,
            ),
        ];
        for (err, errno) in cases {
            assert_eq!(err.errno(), errno, "{err:?}");
        }
    }
}
