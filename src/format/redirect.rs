//! The value of `overlay.redirect` (Documentation/filesystems/overlayfs.rst, "Redirect
//! dir"): where the lower content of a renamed directory is, relative (one name in the
//! same parent) or absolute (`/a/b`, from the layer roots).
//!
//! Values are checked as the kernel checks them (`ovl_get_redirect_xattr`): a relative
//! one is one non-empty name, an absolute one has no empty component; anything else is
//! `EINVAL`. A `.` or `..` component is `EACCES` (the kernel's name lookup refuses them),
//! so a hostile layer cannot point outside the layer roots. A component longer than 255
//! bytes is `ENAMETOOLONG`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::io::Errno;

/// A parsed redirect value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// Another name in the same parent directory.
    Relative(OsString),
    /// A path from the root, as components.
    Absolute(Vec<OsString>),
}

/// Parses a redirect xattr value; the errno the kernel gives for a bad one.
pub fn parse(value: &[u8]) -> Result<Redirect, Errno> {
    if value.contains(&0) {
        return Err(Errno::INVAL);
    }
    let check = |c: &[u8]| match c {
        b"" => Err(Errno::INVAL),
        b"." | b".." => Err(Errno::ACCESS),
        _ if c.len() > 255 => Err(Errno::NAMETOOLONG),
        _ => Ok(OsStr::from_bytes(c).to_os_string()),
    };
    match value.strip_prefix(b"/") {
        Some(rest) => rest
            .split(|&b| b == b'/')
            .map(check)
            .collect::<Result<_, _>>()
            .map(Redirect::Absolute),
        None if value.contains(&b'/') => Err(Errno::INVAL),
        None => check(value).map(Redirect::Relative),
    }
}

/// The value of a relative redirect to `name`.
pub fn relative(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

/// The value of an absolute redirect to `path` (relative to the layer roots).
pub fn absolute(path: &Path) -> Vec<u8> {
    let mut v = b"/".to_vec();
    v.extend_from_slice(path.as_os_str().as_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_as_the_kernel_checks_them() {
        let ok: &[(&[u8], Redirect)] = &[
            (b"a", Redirect::Relative("a".into())),
            (b"/a", Redirect::Absolute(vec!["a".into()])),
            (b"/a/b", Redirect::Absolute(vec!["a".into(), "b".into()])),
            (b"..a", Redirect::Relative("..a".into())),
        ];
        for (v, want) in ok {
            assert_eq!(&parse(v).unwrap(), want, "{v:?}");
        }
        let long = [b'n'; 256];
        let bad: &[(&[u8], Errno)] = &[
            (b"", Errno::INVAL),
            (b"/", Errno::INVAL),
            (b"a/b", Errno::INVAL),
            (b"//a", Errno::INVAL),
            (b"/a/", Errno::INVAL),
            (b"/a//b", Errno::INVAL),
            (b"a\0b", Errno::INVAL),
            (b"..", Errno::ACCESS),
            (b".", Errno::ACCESS),
            (b"/a/../b", Errno::ACCESS),
            (b"/..", Errno::ACCESS),
            (&long, Errno::NAMETOOLONG),
        ];
        for (v, errno) in bad {
            assert_eq!(parse(v), Err(*errno), "{v:?}");
        }
    }

    #[test]
    fn written_values_parse_back() {
        assert_eq!(relative(OsStr::new("old")), b"old");
        assert_eq!(
            parse(&relative(OsStr::new("old"))),
            Ok(Redirect::Relative("old".into()))
        );
        assert_eq!(absolute(Path::new("a/b")), b"/a/b");
        assert_eq!(
            parse(&absolute(Path::new("a/b"))),
            Ok(Redirect::Absolute(vec!["a".into(), "b".into()]))
        );
    }
}
