//! The deterministic tar writer of `rlayerfs commit`: ustar headers with fixed fields,
//! PAX records in a fixed order, long names split into ustar prefix/name or carried in PAX.

use std::io::{self, Read, Write};

const BLOCK: usize = 512;
/// Mode of exported whiteout and opaque-marker entries.
const MARKER_MODE: u32 = 0o644;
/// ustar `name` field length.
const NAME_LEN: usize = 100;
/// ustar `prefix` field length.
const PREFIX_LEN: usize = 155;
/// Name of PAX extended headers (content-free, so constant for determinism).
const PAX_NAME: &[u8] = b"././@PaxHeader";

/// The record of one entry's header fields.
pub(super) struct Hdr {
    pub(super) kind: tar::EntryType,
    pub(super) perm: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) mtime: u64,
    pub(super) size: u64,
    pub(super) major: u32,
    pub(super) minor: u32,
}

impl Hdr {
    pub(super) fn marker() -> Self {
        Hdr {
            kind: tar::EntryType::Regular,
            perm: MARKER_MODE,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            major: 0,
            minor: 0,
        }
    }
}

/// One PAX record `"LEN KEY=VALUE\n"`, LEN counting the whole record.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Splits a path into ustar (prefix, name) if it fits.
fn ustar_split(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= NAME_LEN {
        return Some((&[], path));
    }
    // The name part must be non-empty; the split drops one '/'.
    for (i, b) in path.iter().enumerate().rev() {
        if *b == b'/' && i <= PREFIX_LEN && path.len() - i - 1 <= NAME_LEN && i + 1 < path.len() {
            return Some((&path[..i], &path[i + 1..]));
        }
    }
    None
}

/// A minimal deterministic tar writer.
pub(super) struct TarOut<W: Write> {
    pub(super) w: W,
    pub(super) entries: u64,
}

impl<W: Write> TarOut<W> {
    fn raw(&mut self, header: &tar::Header, data: &mut dyn Read, size: u64) -> io::Result<()> {
        self.w.write_all(header.as_bytes())?;
        let copied = io::copy(&mut data.take(size), &mut self.w)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being committed",
            ));
        }
        let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
        self.w.write_all(&[0u8; BLOCK][..pad])
    }

    pub(super) fn entry(
        &mut self,
        path: &[u8],
        h: &Hdr,
        link: Option<&[u8]>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        data: Option<&mut dyn Read>,
    ) -> io::Result<()> {
        let mut pax = Vec::new();
        let split = ustar_split(path);
        if split.is_none() {
            pax_record(&mut pax, b"path", path);
        }
        if let Some(l) = link {
            if l.len() > NAME_LEN {
                pax_record(&mut pax, b"linkpath", l);
            }
        }
        for (k, v) in xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            pax_record(&mut pax, &key, v);
        }
        if !pax.is_empty() {
            let mut ph = tar::Header::new_ustar();
            set_name(&mut ph, &[], PAX_NAME);
            ph.set_entry_type(tar::EntryType::XHeader);
            ph.set_mode(MARKER_MODE);
            ph.set_uid(0);
            ph.set_gid(0);
            ph.set_mtime(0);
            ph.set_size(pax.len() as u64);
            ph.set_cksum();
            self.raw(&ph, &mut &pax[..], pax.len() as u64)?;
        }
        let mut hd = tar::Header::new_ustar();
        match split {
            Some((prefix, name)) => set_name(&mut hd, prefix, name),
            None => set_name(&mut hd, &[], &path[..NAME_LEN.min(path.len())]),
        }
        if let Some(l) = link {
            let n = l.len().min(NAME_LEN);
            hd.as_old_mut().linkname[..n].copy_from_slice(&l[..n]);
        }
        hd.set_entry_type(h.kind);
        hd.set_mode(h.perm);
        hd.set_uid(h.uid);
        hd.set_gid(h.gid);
        hd.set_mtime(h.mtime);
        hd.set_size(h.size);
        if matches!(h.kind, tar::EntryType::Char | tar::EntryType::Block) {
            hd.set_device_major(h.major)?;
            hd.set_device_minor(h.minor)?;
        }
        hd.set_cksum();
        self.entries += 1;
        match data {
            Some(r) => self.raw(&hd, r, h.size),
            None => self.raw(&hd, &mut io::empty(), 0),
        }
    }

    pub(super) fn finish(mut self) -> io::Result<W> {
        self.w.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.w)
    }
}

fn set_name(h: &mut tar::Header, prefix: &[u8], name: &[u8]) {
    if let Some(u) = h.as_ustar_mut() {
        u.name = [0; NAME_LEN];
        u.name[..name.len()].copy_from_slice(name);
        u.prefix = [0; PREFIX_LEN];
        u.prefix[..prefix.len()].copy_from_slice(prefix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths() {
        let table: &[(&[u8], &[u8], &[u8])] = &[
            (b"path", b"a", b"9 path=a\n"),
            (b"k", b"1234", b"9 k=1234\n"),
            (b"k", b"12345", b"11 k=12345\n"),
        ];
        for (k, v, want) in table {
            let mut out = Vec::new();
            pax_record(&mut out, k, v);
            assert_eq!(&out, want);
        }
        // Around the digit-count boundary the length must still count itself.
        for n in 90..110 {
            let mut out = Vec::new();
            pax_record(&mut out, b"k", &vec![b'x'; n]);
            let (len, _) = out.split_at(out.iter().position(|b| *b == b' ').unwrap());
            let len: usize = std::str::from_utf8(len).unwrap().parse().unwrap();
            assert_eq!(len, out.len());
        }
    }

    #[test]
    fn ustar_splits() {
        assert_eq!(ustar_split(b"a/b"), Some((&b""[..], &b"a/b"[..])));
        let long = [vec![b'd'; 120], b"/".to_vec(), vec![b'f'; 50]].concat();
        assert_eq!(ustar_split(&long), Some((&long[..120], &long[121..])));
        assert_eq!(ustar_split(&[b'x'; 101]), None);
        let too_long = [vec![b'd'; 160], b"/".to_vec(), vec![b'f'; 50]].concat();
        assert_eq!(ustar_split(&too_long), None);
    }
}
