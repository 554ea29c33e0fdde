//! Serving an open directory's entries after an offset into a sink: the FUSE adapter's
//! reply buffer, or a test's vector.
//!
//! A READDIRPLUS entry carries a lookup: it gives the kernel one reference to the node,
//! which the kernel gives back with FORGET. An entry that does not fit in the buffer was
//! not sent, so its reference is taken back here at once; `.` and `..` take none (the
//! kernel makes no dentry for them).

use std::ffi::OsStr;

use rustix::fs::FileType;

use crate::error::{Error, Result};
use crate::union::{Attr, UnionFs};
use crate::union::{Fh, Ino};

/// Where the entries of one READDIR go.
pub trait DirSink {
    /// Adds the entry that offset `offset` follows; true when it did not fit (nothing
    /// was added and the reply is full).
    fn add(&mut self, ino: u64, offset: u64, kind: FileType, name: &OsStr) -> bool;
}

/// Where the entries of one READDIRPLUS go.
pub trait DirPlusSink {
    /// Adds the entry with its attributes (`attr.ino` 0: no dentry to be made); true
    /// when it did not fit (nothing was added and the reply is full).
    fn add(&mut self, attr: &Attr, offset: u64, name: &OsStr) -> bool;
}

fn is_dot(name: &OsStr) -> bool {
    name == "." || name == ".."
}

impl UnionFs {
    /// Fills `sink` with the entries of open directory `fh` after `offset` (see
    /// [`Self::listing`]), until the sink is full or the listing ends.
    pub fn readdir_into(&self, Fh(fh): Fh, offset: u64, sink: &mut impl DirSink) -> Result<()> {
        let (dir, start, recheck) = self.listing(fh, offset)?;
        for (e, off) in dir.entries[start..].iter().zip(&dir.offs[start..]) {
            if recheck.as_ref().is_some_and(|r| !r.exists(&e.name)) {
                continue;
            }
            if sink.add(e.ino, *off, e.kind, &e.name) {
                break;
            }
        }
        Ok(())
    }

    /// As [`Self::readdir_into`], each entry with its attributes from a lookup of it in
    /// directory `parent`. Every entry the sink took, other than `.` and `..`, holds one
    /// lookup reference; one it refused holds none.
    pub fn readdirplus_into(
        &self,
        Ino(parent): Ino,
        Fh(fh): Fh,
        offset: u64,
        sink: &mut impl DirPlusSink,
    ) -> Result<()> {
        let (dir, start, recheck) = self.listing(fh, offset)?;
        let mut added = false;
        for (e, off) in dir.entries[start..].iter().zip(&dir.offs[start..]) {
            let attr = if is_dot(&e.name) {
                // The kernel ignores their attributes: no stat needed.
                Attr {
                    ino: Ino(e.ino),
                    mode: libc::S_IFDIR,
                    ..Attr::default()
                }
            } else {
                match self.lookup(Ino(parent), &e.name) {
                    Ok(a) => a,
                    // Gone from an upper-only directory: not listed (see `Recheck`).
                    Err(Error::NotFound) if recheck.is_some() => continue,
                    // Gone since the listing was taken: still listed (the listing is a
                    // snapshot, as kernel overlayfs's of a merged directory). A READDIRPLUS
                    // entry's d_ino is its node id, which must be 0 here so the kernel
                    // makes no dentry: end the reply before it instead, and the kernel
                    // asks again with a plain READDIR (it uses READDIRPLUS only for the
                    // first read or after a lookup), which gives the real d_ino.
                    Err(_) if added => break,
                    Err(_) => Attr {
                        ino: Ino(0),
                        mode: e.kind.as_raw_mode(),
                        ..Attr::default()
                    },
                }
            };
            if sink.add(&attr, *off, &e.name) {
                if !is_dot(&e.name) && attr.ino != Ino(0) {
                    // Not sent: give the reference back.
                    self.forget(attr.ino, 1);
                }
                break;
            }
            added = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;
    use crate::union::tests::{walk, Fixture};
    use crate::union::{Fh, Ino};

    /// A reply buffer with room for `room` entries per request.
    struct Buffer {
        room: usize,
        got: Vec<(u64, u64, OsString)>,
    }

    impl Buffer {
        fn new(room: usize) -> Buffer {
            Buffer {
                room,
                got: Vec::new(),
            }
        }
        fn take(&mut self, ino: u64, offset: u64, name: &OsStr) -> bool {
            if self.got.len() == self.room {
                return true;
            }
            self.got.push((ino, offset, name.to_os_string()));
            false
        }
    }

    impl DirSink for Buffer {
        fn add(&mut self, ino: u64, offset: u64, _: FileType, name: &OsStr) -> bool {
            self.take(ino, offset, name)
        }
    }

    impl DirPlusSink for Buffer {
        fn add(&mut self, attr: &Attr, offset: u64, name: &OsStr) -> bool {
            self.take(attr.ino.0, offset, name)
        }
    }

    /// The lookup count of node `ino`, 0 when it has none (or no node).
    fn lookups(fs: &UnionFs, ino: u64) -> u64 {
        fs.nodes.read().get(ino).map(|n| n.lookups).unwrap_or(0)
    }

    /// `files` files `d/f0`… spread over the fixture's lowers; the core, `d` and an open
    /// handle of it.
    fn open_dir(f: &Fixture, files: usize, lowers: usize) -> (UnionFs, Ino, Fh) {
        for i in 0..files {
            f.write(&f.l(i % lowers), &format!("d/f{i}"), "x");
        }
        let fs = f.fs();
        let d = walk(&fs, "d").unwrap();
        let (fh, _) = fs.opendir(d).unwrap();
        (fs, d, fh)
    }

    /// Reads a whole listing in requests with room for `room` entries, each from the
    /// offset of the last entry before; `page` sees the entries of each request.
    fn read_pages(
        room: usize,
        mut read: impl FnMut(u64, &mut Buffer),
        mut page: impl FnMut(&[(u64, u64, OsString)]),
    ) {
        let mut offset = 0;
        loop {
            let mut buf = Buffer::new(room);
            read(offset, &mut buf);
            let Some(last) = buf.got.last() else { break };
            offset = last.1;
            page(&buf.got);
        }
    }

    fn files(got: &[(u64, u64, OsString)]) -> Vec<(u64, OsString)> {
        got.iter()
            .filter(|(_, _, n)| !is_dot(n))
            .map(|(i, _, n)| (*i, n.clone()))
            .collect()
    }

    #[test]
    fn readdirplus_gives_one_reference_per_entry_sent_and_none_for_one_refused() {
        let f = Fixture::new(2);
        let (fs, d, fh) = open_dir(&f, 7, 2);
        let mut sent = Vec::new();
        // Room for 3: the entry after them is looked up, refused and given back.
        read_pages(
            3,
            |offset, buf| fs.readdirplus_into(d, fh, offset, buf).unwrap(),
            |got| {
                for (ino, name) in files(got) {
                    assert_eq!(
                        lookups(&fs, ino),
                        1,
                        "{name:?} holds the reference it was sent with"
                    );
                    sent.push((ino, name));
                }
            },
        );
        fs.releasedir(fh);
        assert_eq!(sent.len(), 7, "{sent:?}");
        for (ino, name) in &sent {
            assert_eq!(
                lookups(&fs, *ino),
                1,
                "{name:?}: exactly one reference in all"
            );
            fs.forget(Ino(*ino), 1);
            assert!(
                fs.nodes.read().get(*ino).is_err(),
                "{name:?} freed by its FORGET"
            );
        }
        assert_eq!(lookups(&fs, d.0), 1, ". and .. take no reference");
    }

    #[test]
    fn readdir_takes_no_reference_and_resumes_after_the_last_offset() {
        let f = Fixture::new(1);
        let (fs, d, fh) = open_dir(&f, 5, 1);
        let mut names = Vec::new();
        read_pages(
            2,
            |offset, buf| fs.readdir_into(fh, offset, buf).unwrap(),
            |got| {
                for (ino, _, name) in got {
                    if !is_dot(name) {
                        assert_eq!(lookups(&fs, *ino), 0, "{name:?}");
                    }
                    names.push(name.to_string_lossy().into_owned());
                }
            },
        );
        fs.releasedir(fh);
        assert_eq!(lookups(&fs, d.0), 1);
        names.sort();
        assert_eq!(names, [".", "..", "f0", "f1", "f2", "f3", "f4"]);
    }

    #[test]
    fn readdirplus_entry_gone_since_the_listing_gets_no_dentry_or_ends_the_reply() {
        let f = Fixture::new(1);
        let (fs, d, fh) = open_dir(&f, 4, 1);
        let mut buf = Buffer::new(3);
        fs.readdirplus_into(d, fh, 0, &mut buf).unwrap();
        let offset = buf.got[2].1;
        // The snapshot's next two names are removed before the next read.
        let (snap, start, _) = fs.listing(fh.0, offset).unwrap();
        let gone: Vec<OsString> = snap.entries[start..start + 2]
            .iter()
            .map(|e| e.name.clone())
            .collect();
        for name in &gone {
            fs.unlink(d, name).unwrap();
        }
        let mut next = Buffer::new(10);
        fs.readdirplus_into(d, fh, offset, &mut next).unwrap();
        // The first is still listed (a snapshot) without a node id, so the kernel makes
        // no dentry; the reply ends before the second.
        assert_eq!(next.got.len(), 1, "{:?}", next.got);
        assert_eq!((next.got[0].0, &next.got[0].2), (0, &gone[0]));
        fs.releasedir(fh);
    }
}
