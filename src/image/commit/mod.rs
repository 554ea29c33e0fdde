//! `rlayerfs commit`: an overlay upper directory as an OCI layer tarball, and appending that
//! layer to an unpacked image or an OCI image layout as a new image.
//!
//! Every whiteout encoding an upper may hold (see `crate::format::whiteout`) is exported as `.wh.NAME`: a char
//! device 0/0, an empty `.wh.NAME` file, or a zero-size file carrying
//! `trusted.overlay.whiteout` / `user.overlay.whiteout`. A directory that is opaque in any
//! encoding (`trusted.overlay.opaque=y`, `user.overlay.opaque=y`,
//! `user.fuseoverlayfs.opaque=y`, or a `.wh..wh..opq` file inside) gets a `.wh..wh..opq`
//! entry right after its own. Overlay-private xattrs are never exported;
//! `user.containers.override_stat` is applied to the header (owner, mode, device type) and
//! dropped. Directories the kernel renamed (`overlay.redirect`) cannot be exported without
//! the lower layers and are refused. Metacopy files (`overlay.metacopy`: metadata copied
//! up, data still in a lower file) are exported with their data, read from the lower layers
//! (`--lower`) where kernel overlayfs finds it ([`walk::metacopy_data`]); without them they are
//! refused. Hard-linked lower files changed through the workdir's index need the lower
//! layers too (`--lower`, see [`lower_links`]).
//!
//! Output is deterministic: entries in bytewise name order (a directory before its
//! children), ustar headers with empty uname/gname and no atime/ctime, mtimes in whole
//! seconds, PAX records in a fixed order (`path`, `linkpath`, then `SCHILY.xattr.*` by name),
//! whiteout and opaque entries with fixed metadata (mode 0644, root, mtime 0), gzip without
//! a name or timestamp. The same upper therefore gives byte-identical blobs.
//!
//! Files: `tar_writer` (deterministic ustar/PAX headers), `walk` (the upper directory as
//! tar entries: whiteouts, opaque markers, exported xattrs, metacopy data), `append` (the
//! new layer added to an unpacked image or an OCI layout as a new image).

mod append;
mod tar_writer;
mod walk;

pub use append::{append_to_image, AppendReport};
use tar_writer::TarOut;
use walk::Committer;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::archive::{Compression, Compressor, HashingWriter};
use super::error::ImageError;
use super::lower_links::{self};
use super::oci::Digest;
use crate::format::whiteout::OPAQUE_MARKER;
use crate::sys::component;

/// Options of [`commit`].
#[derive(Debug, Clone, Copy)]
pub struct CommitOptions {
    /// Compression of the blob.
    pub compression: Compression,
    /// Show a progress spinner on stderr.
    pub progress: bool,
}

/// What [`commit`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitReport {
    /// sha256 of the blob (compressed).
    pub digest: Digest,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Blob size in bytes.
    pub size: u64,
    /// Compression used.
    pub compression: Compression,
    /// Tar entries written (including whiteouts and PAX headers are not counted).
    pub entries: u64,
}

/// Writes the layer tarball of `upper` into `out`; returns the report and the writer.
pub fn commit_to_writer<W: Write>(
    upper: &Path,
    out: W,
    opts: &CommitOptions,
) -> Result<(CommitReport, W), ImageError> {
    commit_over_to_writer(upper, &[], out, opts)
}

/// [`commit_to_writer`] for an upper over `lowers` (top first): other lower names of
/// hard links copied up through the workdir's index are kept (see [`lower_links`]).
pub fn commit_over_to_writer<W: Write>(
    upper: &Path,
    lowers: &[PathBuf],
    out: W,
    opts: &CommitOptions,
) -> Result<(CommitReport, W), ImageError> {
    let extras = lower_links::find(upper, lowers)?;
    let root = component::open_dir_path(upper).map_err(|e| ImageError::io("open", upper, e))?;
    let blob = HashingWriter::new(out);
    let comp = Compressor::new(blob, opts.compression)
        .map_err(|e| ImageError::io("compress", upper, e))?;
    let diff = HashingWriter::new(comp);
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new_spinner();
        if let Ok(s) =
            indicatif::ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec} {msg}")
        {
            b.set_style(s);
        }
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut c = Committer {
        out: TarOut {
            w: diff,
            entries: 0,
        },
        links: HashMap::new(),
        upper,
        bar: bar.clone(),
        extras,
    };
    c.emit_root(&root)?;
    if c.is_opaque(root.as_fd(), b"")? {
        c.marker(OPAQUE_MARKER.as_bytes())?;
    }
    c.walk(Some(&root), b"")?;
    bar.finish_and_clear();
    let entries = c.out.entries;
    let diff = c
        .out
        .finish()
        .map_err(|e| ImageError::io("write", upper, e))?;
    let (diff_id, _, comp) = diff.finish();
    let blob = comp
        .finish()
        .map_err(|e| ImageError::io("compress", upper, e))?;
    let (digest, size, w) = blob.finish();
    Ok((
        CommitReport {
            digest,
            diff_id,
            size,
            compression: opts.compression,
            entries,
        },
        w,
    ))
}

/// A temporary file beside `target`, renamed onto it by `persist`, removed if dropped.
struct TempFile {
    path: PathBuf,
    target: PathBuf,
    done: bool,
}

impl TempFile {
    fn beside(target: &Path) -> Result<(Self, File), ImageError> {
        let name = target
            .file_name()
            .ok_or_else(|| ImageError::Usage(format!("bad output path {}", target.display())))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".rlayerfs-tmp.{}", std::process::id()));
        let path = target.with_file_name(tmp_name);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| ImageError::io("create", &path, e))?;
        Ok((
            TempFile {
                path,
                target: target.to_path_buf(),
                done: false,
            },
            f,
        ))
    }

    fn persist(mut self) -> Result<(), ImageError> {
        std::fs::rename(&self.path, &self.target)
            .map_err(|e| ImageError::io("rename", &self.target, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes the layer tarball of `upper` to the file `out` (atomically).
pub fn commit(upper: &Path, out: &Path, opts: &CommitOptions) -> Result<CommitReport, ImageError> {
    commit_over(upper, &[], out, opts)
}

/// [`commit`] for an upper over `lowers` (top first), as [`commit_over_to_writer`].
pub fn commit_over(
    upper: &Path,
    lowers: &[PathBuf],
    out: &Path,
    opts: &CommitOptions,
) -> Result<CommitReport, ImageError> {
    let (tmp, f) = TempFile::beside(out)?;
    let (report, w) = commit_over_to_writer(upper, lowers, BufWriter::new(f), opts)?;
    let f = w
        .into_inner()
        .map_err(|e| ImageError::io("write", out, e.into_error()))?;
    f.sync_all().map_err(|e| ImageError::io("sync", out, e))?;
    tmp.persist()?;
    Ok(report)
}
