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
//! Values are checked as the kernel checks them (see `crate::format::redirect`), so a
//! hostile layer cannot point outside the layer roots.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use rustix::fs::AtFlags;
use rustix::io::Errno;

use crate::error::{Error, OsContext, Result, Where};
pub use crate::format::redirect::Redirect;
use crate::sys;
use crate::union::inode::LowerRef;
use crate::union::layer::LowerIdx;
use crate::union::lookup::{dir_marks, DirMarks};
use crate::union::UnionFs;

/// Parses a redirect xattr value read from `at`; a bad one is the kernel's errno.
pub fn parse(value: &[u8], at: Where) -> Result<Redirect> {
    crate::format::redirect::parse(value).map_err(|errno| {
        tracing::warn!(value = %value.escape_ascii(), "invalid redirect");
        Error::os("invalid redirect", errno, at)
    })
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

/// Where the lookup of a redirected directory (or of a metacopy file's data) is: relative
/// to the parent directory's place in each layer, or to the layer roots.
pub(crate) struct Cursor {
    pub(crate) from_root: bool,
    pub(crate) path: PathBuf,
}

/// What one layer holds where the data of a metacopy file is looked up.
// One short-lived value per probed layer, moved out at once: boxing the stat would cost an
// allocation per lookup for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum FileProbe {
    /// Nothing: the lookup goes on in the next layer.
    Missing,
    /// A whiteout, a directory or another non-regular object: the lookup ends, without data.
    Stop,
    /// A regular file (`name` in directory `dir`, at `path` in the layer), and whether an
    /// opaque directory on the way ends the lookup after this layer.
    File {
        dir: std::sync::Arc<std::os::fd::OwnedFd>,
        name: OsString,
        path: PathBuf,
        st: rustix::fs::Stat,
        stop_after: bool,
    },
}

/// The end of a walk from a layer root along directories (see
/// `UnionFs::walk_from_root`).
enum Walked {
    /// The walk ended before the last component.
    Ended(Probe),
    /// Every component is a directory: the path reached, the last one's marks (unless
    /// `bottom`), and whether an opaque directory on the way ends the lookup after it.
    Reached {
        path: PathBuf,
        marks: Option<DirMarks>,
        stop_after: bool,
    },
}

impl Cursor {
    pub(crate) fn apply(&mut self, r: Redirect) {
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
        let bottom = self.stack.bottom();
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
        let comps: Vec<OsString> = cur.path.iter().map(OsStr::to_os_string).collect();
        Ok(match self.walk_from_root(layer, cur, &comps, bottom)? {
            Walked::Ended(p) => p,
            Walked::Reached {
                path,
                marks,
                stop_after,
            } => Probe::Dir {
                marks,
                stop_after,
                path,
            },
        })
    }

    /// Walks the directories `comps` (the first ones of `cur.path`) from the root of
    /// `layer`, rewriting `cur.path` where a directory on the way carries a redirect.
    fn walk_from_root(
        &self,
        layer: LowerIdx,
        cur: &mut Cursor,
        comps: &[OsString],
        bottom: bool,
    ) -> Result<Walked> {
        let at = Where::Lower(layer);
        let all: Vec<OsString> = cur.path.iter().map(OsStr::to_os_string).collect();
        let mut here = PathBuf::new();
        let mut stop_after = false;
        for (i, name) in comps.iter().enumerate() {
            let pfd = self.lower_dir_fd(layer, &here).at("open lower dir", at)?;
            let last = i + 1 == comps.len();
            match self.probe_one(pfd.as_fd(), name, at, bottom)? {
                // An opaque directory on the way ends the lookup even when the path goes
                // no further in this layer.
                Step::Missing if stop_after => return Ok(Walked::Ended(Probe::Stop)),
                Step::Missing => return Ok(Walked::Ended(Probe::Missing)),
                Step::Stop => return Ok(Walked::Ended(Probe::Stop)),
                Step::Dir(m) => {
                    here.push(name);
                    if last {
                        return Ok(Walked::Reached {
                            path: here,
                            marks: m,
                            stop_after,
                        });
                    }
                    let Some(m) = m else { continue };
                    stop_after |= m.opaque;
                    if let Some(v) = m.redirect {
                        // The rest of the path now continues from the redirect's target.
                        let rest: PathBuf = all[i + 1..].iter().collect();
                        let mut prefix = Cursor {
                            from_root: true,
                            path: all[..=i].iter().collect(),
                        };
                        prefix.apply(parse(&v, at)?);
                        cur.path = prefix.path.join(rest);
                    }
                }
            }
        }
        Ok(Walked::Reached {
            path: here,
            marks: None,
            stop_after,
        })
    }

    /// Looks for the data of a metacopy file at `cur.path` in `layer`: from the layer root
    /// (`cur.from_root`, the directories on the way followed as the kernel follows them)
    /// or below `parent`'s place in the layer.
    pub(crate) fn probe_file(
        &self,
        layer: LowerIdx,
        cur: &mut Cursor,
        parent: Option<&LowerRef>,
        bottom: bool,
    ) -> Result<FileProbe> {
        let at = Where::Lower(layer);
        let Some(name) = cur.path.file_name().map(OsStr::to_os_string) else {
            return Ok(FileProbe::Missing);
        };
        let (dir_path, stop_after) = if cur.from_root {
            let comps: Vec<OsString> = cur.path.iter().map(OsStr::to_os_string).collect();
            let dirs = &comps[..comps.len() - 1];
            match self.walk_from_root(layer, cur, dirs, bottom)? {
                Walked::Ended(Probe::Missing) => return Ok(FileProbe::Missing),
                Walked::Ended(_) => return Ok(FileProbe::Stop),
                Walked::Reached {
                    path,
                    marks,
                    mut stop_after,
                } => {
                    // The file's own directory is on the way too: its marks count.
                    if let Some(m) = marks {
                        stop_after |= m.opaque;
                        if let Some(v) = m.redirect {
                            let mut prefix = Cursor {
                                from_root: true,
                                path: dirs.iter().collect(),
                            };
                            prefix.apply(parse(&v, at)?);
                            cur.path = prefix.path.join(&name);
                        }
                    }
                    (path, stop_after)
                }
            }
        } else {
            let Some(parent) = parent else {
                return Ok(FileProbe::Missing);
            };
            let full = parent.path_in(layer).join(&cur.path);
            let dir = full.parent().map(PathBuf::from).unwrap_or_default();
            (dir, false)
        };
        let dir = match self.lower_dir_fd(layer, &dir_path) {
            Ok(fd) => fd,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
                return Ok(FileProbe::Missing)
            }
            Err(e) => return Err(Error::os("open lower dir", e, at)),
        };
        let st = match rustix::fs::statat(&*dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => {
                let hidden = crate::union::lookup::whiteout_file_hides(dir.as_fd(), &name)?;
                return Ok(if hidden || stop_after {
                    FileProbe::Stop
                } else {
                    FileProbe::Missing
                });
            }
            Err(e) => return Err(Error::os("stat", e, at)),
        };
        // Below a metacopy file only a regular file can hold its data: a whiteout, a
        // directory or anything else ends the lookup (kernel `ovl_lookup_single`).
        if st.st_mode & libc::S_IFMT != libc::S_IFREG
            || (st.st_size == 0 && crate::union::lookup::is_xattr_whiteout(dir.as_fd(), &name)?)
        {
            return Ok(FileProbe::Stop);
        }
        Ok(FileProbe::File {
            path: dir_path.join(&name),
            dir,
            name,
            st,
            stop_after,
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
    fn bad_values_are_the_kernels_errno() {
        assert!(parse(b"a", Where::Unknown).is_ok());
        assert_eq!(
            parse(b"/..", Where::Unknown).unwrap_err().errno(),
            libc::EACCES
        );
        assert_eq!(
            parse(b"a/b", Where::Unknown).unwrap_err().errno(),
            libc::EINVAL
        );
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
