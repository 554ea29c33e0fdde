//! Merging a directory's layers into one listing: the upper directory first, then the
//! cached lower index; a name appears once, whiteouts and `.wh.*` names never appear.

use std::collections::HashSet;
use std::ffi::OsString;

use rustix::fs::{AtFlags, FileType};

use crate::error::{OsContext, Result, Where};
use crate::format::whiteout;
use crate::sys;
use crate::union::lookup::{dir_marks, is_inner_whiteout, DirInfo, LowerChild};
use crate::union::Ino;
use crate::union::UnionFs;

/// One entry of a merged listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub name: OsString,
    pub kind: FileType,
}

impl UnionFs {
    /// The merged listing of directory `ino`, with `.` and `..` first.
    pub fn list_merged(&self, Ino(ino): Ino) -> Result<Vec<DirEntry>> {
        let info = self.dir_info(ino)?;
        let parent = self.nodes.read().get(ino)?.parent;
        let mut out = vec![
            DirEntry {
                ino,
                name: ".".into(),
                kind: FileType::Directory,
            },
            DirEntry {
                ino: parent,
                name: "..".into(),
                kind: FileType::Directory,
            },
        ];
        out.extend(self.merged_entries(&info, Some(ino))?);
        Ok(out)
    }

    /// The merged entries of the directory described by `info` (no `.`/`..`). `ino` is
    /// the directory's node when it has one, to reuse the numbers of known children.
    pub(crate) fn merged_entries(
        &self,
        info: &DirInfo,
        dir_ino: Option<u64>,
    ) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        let mut seen: HashSet<OsString> = HashSet::new();
        let lower_dir = match &info.lower {
            Some(l) => Some(self.lower_dir(l)?),
            None => None,
        };
        if let Some(up) = &info.upper {
            let pfd = self.upper_dir(up)?;
            let marks = dir_marks(std::os::fd::AsFd::as_fd(&*pfd))?;
            let xattr_whiteouts = !marks.opaque && marks.xattr_whiteouts;
            let listing = sys::read_dir(
                sys::reopen_dir_for_read(std::os::fd::AsFd::as_fd(&*pfd))
                    .at("opendir", Where::Upper)?,
            )
            .at("readdir", Where::Upper)?;
            let upper_dev = self.stack.upper.as_ref().map(|u| u.dev).unwrap_or(0);
            for e in listing {
                if whiteout::is_reserved_name(&e.name)
                    && !crate::union::lookup::is_literal(std::os::fd::AsFd::as_fd(&*pfd), &e.name)?
                {
                    if let Some(target) = whiteout::whiteout_target(&e.name) {
                        seen.insert(target.to_os_string());
                    }
                    continue;
                }
                let mut kind = e.file_type;
                if matches!(kind, FileType::CharacterDevice | FileType::Unknown)
                    || ((xattr_whiteouts || marks.inner_whiteouts) && kind == FileType::RegularFile)
                {
                    let Ok(st) = rustix::fs::statat(&pfd, &e.name, AtFlags::SYMLINK_NOFOLLOW)
                    else {
                        continue;
                    };
                    if whiteout::is_chardev_whiteout(st.st_mode, st.st_rdev) {
                        seen.insert(e.name);
                        continue;
                    }
                    if xattr_whiteouts && st.st_size == 0 && kind == FileType::RegularFile {
                        // Rare format: resolve exactly through the lookup path.
                        if self.resolve(info, &e.name).is_err() {
                            seen.insert(e.name);
                            continue;
                        }
                    }
                    kind = FileType::from_raw_mode(st.st_mode);
                    if marks.inner_whiteouts
                        && is_inner_whiteout(std::os::fd::AsFd::as_fd(&*pfd), &e.name, &st)?
                    {
                        kind = FileType::CharacterDevice;
                    }
                }
                let known = dir_ino.and_then(|d| self.nodes.read().child(d, &e.name));
                let lower_ino = match (&lower_dir, kind) {
                    (Some(ld), FileType::Directory) => match ld.get(&e.name) {
                        Some(LowerChild::Dir(d)) => d
                            .candidates
                            .first()
                            .map(|l| self.inos_for(self.stack.lower(*l).dev, d.ino)),
                        _ => None,
                    },
                    _ => None,
                };
                let ino = known
                    .or(lower_ino)
                    .unwrap_or_else(|| self.inos_for(upper_dev, e.ino));
                seen.insert(e.name.clone());
                out.push(DirEntry {
                    ino,
                    name: e.name,
                    kind,
                });
            }
        }
        if let Some(ld) = lower_dir {
            for (name, child) in ld.iter() {
                if seen.contains(name) {
                    continue;
                }
                let (layer, lino, kind) = match child {
                    LowerChild::Hidden { .. } => continue,
                    LowerChild::NonDir {
                        layer, ino, kind, ..
                    } => (*layer, *ino, *kind),
                    LowerChild::Dir(d) => match d.candidates.first() {
                        Some(l) => (*l, d.ino, FileType::Directory),
                        None => continue,
                    },
                };
                let known = dir_ino.and_then(|d| self.nodes.read().child(d, name));
                let ino = known.unwrap_or_else(|| self.inos_for(self.stack.lower(layer).dev, lino));
                out.push(DirEntry {
                    ino,
                    name: name.to_os_string(),
                    kind,
                });
            }
        }
        Ok(out)
    }

    fn inos_for(&self, dev: u64, ino: u64) -> u64 {
        self.map_dev_ino(dev, ino)
    }
}
