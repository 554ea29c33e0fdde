//! Core tests of metacopy files: metadata-only copy-up, reads of the lower data, the data
//! copy-up in place, lower metacopy chains and the refusals. They need `trusted.*` xattrs
//! (root); otherwise they check that no metacopy file is written.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::union::attr::SetAttr;
use crate::union::tests::{read, set_xattr, walk, Fixture};
use crate::union::Ino;

const MARK: &str = "trusted.overlay.metacopy";

fn root() -> bool {
    rustix::process::geteuid().is_root()
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let flags = rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW;
    let fd = rustix::fs::open(p, flags, rustix::fs::Mode::empty()).unwrap();
    crate::sys::get_xattr(std::os::fd::AsFd::as_fd(&fd), OsStr::new(name)).unwrap()
}

fn holds_data(p: &Path) -> bool {
    let f = std::fs::File::open(p).unwrap();
    rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(0)).is_ok()
}

fn chmod(fs: &crate::union::UnionFs, ino: Ino, mode: u32) {
    let set = SetAttr {
        mode: Some(mode),
        ..SetAttr::default()
    };
    fs.setattr(ino, &set).unwrap();
}

#[test]
fn chmod_copies_metadata_then_a_write_the_data_in_place() {
    // An O_TMPFILE linked into place, and a named work-directory file renamed.
    for named in [false, true] {
        chmod_copies_metadata_then_data_with(named);
    }
}

fn chmod_copies_metadata_then_data_with(named: bool) {
    let f = Fixture::new(1);
    let data = "0123456789".repeat(1000);
    f.write(&f.l(0), "d/file", &data);
    let fs = f.fs();
    fs.no_tmpfile
        .store(named, std::sync::atomic::Ordering::Relaxed);
    let ino = walk(&fs, "d/file").unwrap();
    chmod(&fs, ino, 0o600);
    let up = f.u().join("d/file");
    let md = std::fs::metadata(&up).unwrap();
    if !root() {
        assert!(holds_data(&up), "rootless: the data is copied up whole");
        return;
    }
    assert_eq!(md.len(), 10_000);
    assert!(!holds_data(&up), "metadata only");
    assert_eq!(xattr(&up, MARK).as_deref(), Some(&b""[..]));
    assert!(xattr(&up, "trusted.overlay.origin").is_some());
    let a = fs.getattr(ino).unwrap();
    let lower = std::fs::metadata(f.l(0).join("d/file")).unwrap();
    assert_eq!(a.blocks, lower.blocks(), "st_blocks of the data");
    assert_eq!((a.size, a.mode & 0o7777), (10_000, 0o600));
    assert_eq!(read(&fs, "d/file"), data);
    let fh = fs.open(ino, libc::O_WRONLY).unwrap();
    fs.write(fh, 0, b"ab").unwrap();
    fs.release(fh);
    assert_eq!(
        xattr(&up, MARK),
        None,
        "the mark goes with the data copy-up"
    );
    assert_eq!(
        std::fs::metadata(&up).unwrap().ino(),
        md.ino(),
        "same upper inode"
    );
    assert_eq!(fs.getattr(ino).unwrap().ino, a.ino);
    assert_eq!(read(&fs, "d/file"), format!("ab{}", &data[2..]));
}

#[test]
fn metacopy_off_copies_data_and_refuses_metacopy_files() {
    let f = Fixture::new(1);
    f.write(&f.l(0), "a", "data of a");
    f.write(&f.l(0), "b", "data of b");
    let fs = f.fs_opts(Default::default(), Some(false));
    chmod(&fs, walk(&fs, "a").unwrap(), 0o600);
    assert!(holds_data(&f.u().join("a")));
    drop(fs);
    if !root() {
        return;
    }
    // A metacopy upper (as the kernel writes one): refused with EPERM, read with metacopy on.
    std::fs::write(f.u().join("b"), b"").unwrap();
    std::fs::File::options()
        .write(true)
        .open(f.u().join("b"))
        .unwrap()
        .set_len(9)
        .unwrap();
    set_xattr(&f.u().join("b"), MARK, b"");
    let fs = f.fs_opts(Default::default(), Some(false));
    assert_eq!(walk(&fs, "b").unwrap_err().errno(), libc::EPERM);
    drop(fs);
    let fs = f.fs();
    assert_eq!(read(&fs, "b"), "data of b");
    drop(fs);
    // A mark of 1 to 3 bytes is EIO, as the kernel answers.
    set_xattr(&f.u().join("b"), MARK, b"\0\x04");
    let fs = f.fs();
    assert_eq!(walk(&fs, "b").unwrap_err().errno(), libc::EIO);
}

#[test]
fn lower_metacopy_files_and_their_redirects() {
    if !root() {
        return;
    }
    let f = Fixture::new(3);
    f.write(&f.l(2), "x/orig", "the data");
    // Layer 1: renamed there (a metacopy file with a relative redirect).
    f.write(&f.l(1), "x/mid", "");
    set_xattr(&f.l(1).join("x/mid"), MARK, b"");
    set_xattr(&f.l(1).join("x/mid"), "trusted.overlay.redirect", b"orig");
    // Layer 0: moved elsewhere (absolute redirect), and one whose data is gone.
    f.write(&f.l(0), "y/top", "");
    set_xattr(&f.l(0).join("y/top"), MARK, b"");
    set_xattr(&f.l(0).join("y/top"), "trusted.overlay.redirect", b"/x/mid");
    f.write(&f.l(0), "y/lost", "");
    set_xattr(&f.l(0).join("y/lost"), MARK, b"");
    for p in ["x/mid", "y/top", "y/lost"] {
        let l = if p == "x/mid" { f.l(1) } else { f.l(0) };
        std::fs::File::options()
            .write(true)
            .open(l.join(p))
            .unwrap()
            .set_len(8)
            .unwrap();
    }
    let fs = f.fs();
    assert_eq!(read(&fs, "x/mid"), "the data");
    assert_eq!(read(&fs, "y/top"), "the data");
    assert_eq!(walk(&fs, "y/lost").unwrap_err().errno(), libc::EIO);
    // Its copy-up is metadata only again; a write takes the data from the bottom layer.
    let ino = walk(&fs, "y/top").unwrap();
    chmod(&fs, ino, 0o600);
    assert!(!holds_data(&f.u().join("y/top")));
    let fh = fs.open(ino, libc::O_RDWR).unwrap();
    fs.release(fh);
    assert_eq!(std::fs::read(f.u().join("y/top")).unwrap(), b"the data");
}

#[test]
fn renames_and_links_of_metacopy_files_get_redirects() {
    if !root() {
        return;
    }
    let f = Fixture::new(1);
    f.write(&f.l(0), "f", "data of f");
    f.write(&f.l(0), "h", "data of h");
    f.mkdir(&f.l(0), "sub");
    let fs = f.fs();
    let sub = walk(&fs, "sub").unwrap();
    let redirect = |p: &str| xattr(&f.u().join(p), "trusted.overlay.redirect");
    fs.rename(
        crate::union::ROOT,
        OsStr::new("f"),
        crate::union::ROOT,
        OsStr::new("g"),
        0,
        crate::union::Caller::ROOT,
    )
    .unwrap();
    assert_eq!(redirect("g").as_deref(), Some(&b"f"[..]));
    fs.rename(
        crate::union::ROOT,
        OsStr::new("g"),
        sub,
        OsStr::new("g2"),
        0,
        crate::union::Caller::ROOT,
    )
    .unwrap();
    assert_eq!(redirect("sub/g2").as_deref(), Some(&b"/f"[..]));
    assert_eq!(read(&fs, "sub/g2"), "data of f");
    let h = walk(&fs, "h").unwrap();
    let c = crate::union::Caller::ROOT;
    fs.create(
        sub,
        OsStr::new("h2"),
        crate::union::mutate::NewKind::Link(h),
        0,
        0,
        c,
    )
    .unwrap();
    assert_eq!(redirect("h").as_deref(), Some(&b"/h"[..]));
    drop(fs);
    // After a remount the redirects find the data.
    let fs = f.fs();
    assert_eq!(read(&fs, "sub/g2"), "data of f");
    assert_eq!(read(&fs, "sub/h2"), "data of h");
}
