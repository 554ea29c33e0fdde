//! Redirects: where the lower content of a renamed directory is.
//!
//! A directory renamed on an overlay (with `redirect_dir=on`) carries `overlay.redirect`
//! in its layer: the name its content has in the layers below (relative: one name in the
//! same parent), or its path from the root (absolute: `/a/b`). Kernel overlayfs follows a
//! redirect found in any layer, upper or lower, for the layers below the one holding it,
//! so a container's upper that becomes the top lower of the next stack keeps the content
//! of its renamed directories. A redirect applies only to layers below its own, so
//! chains cannot loop; each layer can redirect again (relative: its last component
//! changes; absolute: the whole path, now looked up from the layer roots).
//!
//! Values are checked as the kernel checks them (`ovl_get_redirect_xattr`): a relative
//! one is one non-empty name, an absolute one has no empty component; anything else is
//! `EINVAL`. A `.` or `..` component is `EACCES` (the kernel's name lookup refuses them),
//! so a hostile layer cannot point outside the layer roots.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::AtFlags;
use rustix::io::Errno;

use crate::error::{Error, OsContext, Result, Where};
use crate::sys;
use crate::union::inode::LowerRef;
use crate::union::layer::LowerIdx;
use crate::union::lookup::{dir_marks, DirMarks};
use crate::union::UnionFs;

/// A parsed redirect value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// Another name in the same parent directory.
    Relative(OsString),
    /// A path from the root, as components.
    Absolute(Vec<OsString>),
}

/// Parses a redirect xattr value read from `at`.
pub fn parse(value: &[u8], at: Where) -> Result<Redirect> {
    let invalid = |errno: Errno| {
        tracing::warn!(value = %value.escape_ascii(), "invalid redirect");
        Err(Error::os("invalid redirect", errno, at))
    };
    if value.contains(&0) {
        return invalid(Errno::INVAL);
    }
    let check = |c: &[u8]| match c {
        b"" => Err(Errno::INVAL),
        b"." | b".." => Err(Errno::ACCESS),
        _ if c.len() > 255 => Err(Errno::NAMETOOLONG),
        _ => Ok(OsStr::from_bytes(c).to_os_string()),
    };
    match value.strip_prefix(b"/") {
        Some(rest) => match rest.split(|&b| b == b'/').map(check).collect() {
            Ok(comps) => Ok(Redirect::Absolute(comps)),
            Err(e) => invalid(e),
        },
        None if value.contains(&b'/') => invalid(Errno::INVAL),
        None => match check(value) {
            Ok(name) => Ok(Redirect::Relative(name)),
            Err(e) => invalid(e),
        },
    }
}

/// What one layer holds at the path being looked up.
enum Probe {
    /// Nothing: the lookup goes on in the next layer.
    Missing,
    /// A whiteout or a non-directory: the lookup ends here, without it.
    Stop,
    /// A directory, with its marks (`None` for the bottom layer, whose marks do not
    /// matter), and whether an opaque directory on the way ends the lookup after it.
    Dir {
        marks: Option<DirMarks>,
        stop_after: bool,
        path: PathBuf,
    },
}

/// Where the lookup of a redirected directory is: relative to the parent directory's
/// place in each layer, or to the layer roots.
struct Cursor {
    from_root: bool,
    path: PathBuf,
}

impl Cursor {
    fn apply(&mut self, r: Redirect) {
        match r {
            Redirect::Absolute(comps) => {
                self.from_root = true;
                self.path = comps.into_iter().collect();
            }
            Redirect::Relative(name) => self.path.set_file_name(name),
        }
    }
}

impl UnionFs {
    /// Adds to `layers`/`moved` the layers below `from` that merge into directory `name`
    /// of `parent`, which carries redirect `value` in layer `from`.
    pub(crate) fn follow_redirect(
        &self,
        parent: &LowerRef,
        from: LowerIdx,
        value: &[u8],
        layers: &mut Vec<LowerIdx>,
        moved: &mut Vec<(LowerIdx, PathBuf)>,
    ) -> Result<()> {
        let mut cur = Cursor {
            from_root: false,
            path: PathBuf::new(),
        };
        cur.apply(parse(value, Where::Lower(from))?);
        let bottom = (self.stack.lowers.len() - 1) as LowerIdx;
        for layer in from + 1..=bottom {
            if !cur.from_root && !parent.layers.contains(&layer) {
                continue;
            }
            let probe = if cur.from_root {
                self.probe_from_root(layer, &mut cur, layer == bottom)?
            } else {
                let base = parent.path_in(layer).to_path_buf();
                self.probe_last(layer, base.join(&cur.path), layer == bottom)?
            };
            match probe {
                Probe::Missing => continue,
                Probe::Stop => break,
                Probe::Dir {
                    marks,
                    stop_after,
                    path,
                } => {
                    layers.push(layer);
                    moved.push((layer, path));
                    let Some(marks) = marks else { break };
                    if marks.opaque || stop_after {
                        break;
                    }
                    if let Some(v) = marks.redirect {
                        cur.apply(parse(&v, Where::Lower(layer))?);
                    }
                }
            }
        }
        Ok(())
    }

    /// Looks at `path` in `layer`, whose parent is known to be a directory there.
    fn probe_last(&self, layer: LowerIdx, path: PathBuf, bottom: bool) -> Result<Probe> {
        let (parent, Some(name)) = crate::union::dirfd::split(&path) else {
            return Ok(Probe::Missing);
        };
        let at = Where::Lower(layer);
        let pfd = match self.lower_dir_fd(layer, parent) {
            Ok(fd) => fd,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => return Ok(Probe::Missing),
            Err(e) => return Err(Error::os("open lower dir", e, at)),
        };
        let name = name.to_os_string();
        match self.probe_one(pfd.as_fd(), &name, at, bottom)? {
            Step::Missing => Ok(Probe::Missing),
            Step::Stop => Ok(Probe::Stop),
            Step::Dir(marks) => Ok(Probe::Dir {
                marks,
                stop_after: false,
                path,
            }),
        }
    }

    /// Walks `cur.path` from the root of `layer` component by component, as the kernel
    /// walks an absolute redirect: a redirect on the way rewrites the path (for this layer
    /// and the next), an opaque directory on the way ends the lookup after this layer.
    fn probe_from_root(&self, layer: LowerIdx, cur: &mut Cursor, bottom: bool) -> Result<Probe> {
        let at = Where::Lower(layer);
        let comps: Vec<OsString> = cur.path.iter().map(OsStr::to_os_string).collect();
        let mut here = PathBuf::new();
        let mut stop_after = false;
        let mut marks = None;
        for (i, name) in comps.iter().enumerate() {
            let pfd = self.lower_dir_fd(layer, &here).at("open lower dir", at)?;
            let last = i + 1 == comps.len();
            match self.probe_one(pfd.as_fd(), name, at, bottom)? {
                // An opaque directory on the way ends the lookup even when the path goes
                // no further in this layer.
                Step::Missing if stop_after => return Ok(Probe::Stop),
                Step::Missing => return Ok(Probe::Missing),
                Step::Stop => return Ok(Probe::Stop),
                Step::Dir(m) => {
                    here.push(name);
                    if last {
                        marks = m;
                        break;
                    }
                    let Some(m) = m else { continue };
                    stop_after |= m.opaque;
                    if let Some(v) = m.redirect {
                        // The rest of the path now continues from the redirect's target.
                        let rest: PathBuf = comps[i + 1..].iter().collect();
                        let mut prefix = Cursor {
                            from_root: true,
                            path: comps[..=i].iter().collect(),
                        };
                        prefix.apply(parse(&v, at)?);
                        cur.path = prefix.path.join(rest);
                    }
                }
            }
        }
        Ok(Probe::Dir {
            marks,
            stop_after,
            path: here,
        })
    }

    /// Looks at `name` in a lower directory.
    fn probe_one(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        at: Where,
        bottom: bool,
    ) -> Result<Step> {
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => {
                return Ok(if crate::union::lookup::whiteout_file_hides(dir, name)? {
                    Step::Stop
                } else {
                    Step::Missing
                });
            }
            Err(e) => return Err(Error::os("stat", e, at)),
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            // A whiteout (any format) or a non-directory ends the lookup alike.
            return Ok(Step::Stop);
        }
        if bottom {
            return Ok(Step::Dir(None));
        }
        let fd = sys::open_dir_path(dir, std::path::Path::new(name)).at("open lower dir", at)?;
        Ok(Step::Dir(Some(dir_marks(fd.as_fd())?)))
    }
}

/// What one directory lookup step found.
enum Step {
    Missing,
    Stop,
    Dir(Option<DirMarks>),
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
            assert_eq!(&parse(v, Where::Unknown).unwrap(), want, "{v:?}");
        }
        let bad: &[(&[u8], i32)] = &[
            (b"", libc::EINVAL),
            (b"/", libc::EINVAL),
            (b"a/b", libc::EINVAL),
            (b"//a", libc::EINVAL),
            (b"/a/", libc::EINVAL),
            (b"/a//b", libc::EINVAL),
            (b"a\0b", libc::EINVAL),
            (b"..", libc::EACCES),
            (b".", libc::EACCES),
            (b"/a/../b", libc::EACCES),
            (b"/..", libc::EACCES),
        ];
        for (v, errno) in bad {
            assert_eq!(
                parse(v, Where::Unknown).unwrap_err().errno(),
                *errno,
                "{v:?}"
            );
        }
    }

    #[test]
    fn relative_redirects_replace_the_last_component() {
        let mut c = Cursor {
            from_root: false,
            path: "a".into(),
        };
        c.apply(Redirect::Relative("b".into()));
        assert_eq!(c.path, PathBuf::from("b"));
        c.apply(Redirect::Absolute(vec!["x".into(), "y".into()]));
        assert!(c.from_root);
        c.apply(Redirect::Relative("z".into()));
        assert_eq!(c.path, PathBuf::from("x/z"));
        assert!(c.from_root);
    }
}
