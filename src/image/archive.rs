//! Stream plumbing: compression detection by magic bytes, decompression, compression, and
//! readers/writers that hash (sha256) and count what passes through them.
//!
//! Detection never trusts a media type or a file name: `1f 8b` is gzip, `28 b5 2f fd` is zstd,
//! anything else is taken as a plain tar (whose own parser then judges it).

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use super::oci::Digest;

/// gzip magic (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// zstd frame magic (RFC 8878), little-endian 0xFD2FB528.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// zstd level for `commit --zstd`: the zstd CLI default, a good speed/size balance.
const ZSTD_LEVEL: i32 = 3;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (possibly several members).
    Gzip,
    /// zstd (possibly several frames).
    Zstd,
}

impl Compression {
    /// Detects the compression from the first bytes of a stream.
    pub fn detect(magic: &[u8]) -> Self {
        if magic.starts_with(&ZSTD_MAGIC) {
            Compression::Zstd
        } else if magic.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else {
            Compression::None
        }
    }

    /// The OCI media type of a layer with this compression.
    pub fn oci_layer_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// The Docker schema 2 media type of a layer with this compression, if Docker has one.
    pub fn docker_layer_media_type(self) -> Option<&'static str> {
        match self {
            Compression::None => Some("application/vnd.docker.image.rootfs.diff.tar"),
            Compression::Gzip => Some("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Compression::Zstd => None,
        }
    }
}

/// Reads up to `n` bytes (fewer only at end of stream).
fn read_up_to<R: Read>(r: &mut R, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Detects the compression of `r` and returns it with a reader of the decompressed bytes.
pub fn decompress<'a, R: Read + 'a>(mut r: R) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let magic = read_up_to(&mut r, ZSTD_MAGIC.len())?;
    let c = Compression::detect(&magic);
    let whole = io::Cursor::new(magic).chain(r);
    let out: Box<dyn Read + 'a> = match c {
        Compression::None => Box::new(whole),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(whole)?),
    };
    Ok((c, out))
}

/// A compressing writer chosen at run time.
pub enum Compressor<W: Write> {
    /// No compression.
    Plain(W),
    /// gzip, default level, no name and mtime 0 in its header (deterministic).
    Gzip(flate2::write::GzEncoder<W>),
    /// zstd at [`ZSTD_LEVEL`], single-threaded (deterministic).
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    /// Starts compressing into `w`.
    pub fn new(w: W, c: Compression) -> io::Result<Self> {
        Ok(match c {
            Compression::None => Compressor::Plain(w),
            Compression::Gzip => Compressor::Gzip(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .write(w, flate2::Compression::default()),
            ),
            Compression::Zstd => {
                Compressor::Zstd(zstd::stream::write::Encoder::new(w, ZSTD_LEVEL)?)
            }
        })
    }

    /// Ends the compressed stream and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Plain(w) => Ok(w),
            Compressor::Gzip(g) => g.finish(),
            Compressor::Zstd(z) => z.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Plain(w) => w.write(buf),
            Compressor::Gzip(g) => g.write(buf),
            Compressor::Zstd(z) => z.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Plain(w) => w.flush(),
            Compressor::Gzip(g) => g.flush(),
            Compressor::Zstd(z) => z.flush(),
        }
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// sha256 of a byte slice as a digest.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    Digest::from_sha256_hex(&hex(&Sha256::digest(bytes)))
}

/// A reader that hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The wrapped reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Reads and hashes the rest of the stream.
    pub fn drain(&mut self) -> io::Result<u64> {
        io::copy(self, &mut io::sink())
    }

    /// The digest of what was read, and its length.
    pub fn finish(self) -> (Digest, u64) {
        (
            Digest::from_sha256_hex(&hex(&self.hasher.finalize())),
            self.count,
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest and length of what was written, and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        (
            Digest::from_sha256_hex(&hex(&self.hasher.finalize())),
            self.count,
            self.inner,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that reports the bytes passing through it to a progress bar.
pub struct ProgressReader<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: Read> ProgressReader<R> {
    /// Wraps `inner`; `bar` may be hidden.
    pub fn new(inner: R, bar: indicatif::ProgressBar) -> Self {
        ProgressReader { inner, bar }
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_magic() {
        let table: &[(&[u8], Compression)] = &[
            (&[0x1f, 0x8b, 8, 0], Compression::Gzip),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (b"ustar", Compression::None),
            (&[], Compression::None),
            (&[0x1f], Compression::None),
        ];
        for (magic, want) in table {
            assert_eq!(Compression::detect(magic), *want, "{magic:?}");
        }
    }

    #[test]
    fn compress_then_decompress_round_trips() {
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let mut enc = Compressor::new(Vec::new(), c).unwrap();
            enc.write_all(b"hello world").unwrap();
            let bytes = enc.finish().unwrap();
            let (got_c, mut r) = decompress(&bytes[..]).unwrap();
            assert_eq!(got_c, c);
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            assert_eq!(s, "hello world");
        }
    }

    #[test]
    fn hex_and_sha256() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(
            sha256_digest(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
