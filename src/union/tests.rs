//! Core tests on temporary directories, without a mount: the union rules exercised
//! through the same API the FUSE adapter calls.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::union::layer::StackPaths;
use crate::union::mutate::NewKind;
use crate::union::Ino;
use crate::union::{Caller, CoreOptions, UnionFs, ROOT};

pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
    lowers: usize,
}

impl Fixture {
    pub(crate) fn new(lowers: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        for i in 0..lowers {
            std::fs::create_dir(root.join(format!("l{i}"))).unwrap();
        }
        std::fs::create_dir(root.join("u")).unwrap();
        std::fs::create_dir(root.join("w")).unwrap();
        Fixture {
            _dir: dir,
            root,
            lowers,
        }
    }

    pub(crate) fn l(&self, i: usize) -> PathBuf {
        self.root.join(format!("l{i}"))
    }

    pub(crate) fn u(&self) -> PathBuf {
        self.root.join("u")
    }

    pub(crate) fn write(&self, layer: &Path, rel: &str, data: &str) {
        let p = layer.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    pub(crate) fn mkdir(&self, layer: &Path, rel: &str) {
        std::fs::create_dir_all(layer.join(rel)).unwrap();
    }

    pub(crate) fn whiteout(&self, layer: &Path, rel: &str) {
        let p = layer.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
    }

    pub(crate) fn fs(&self) -> UnionFs {
        self.fs_with(crate::union::ids::IdOptions::default())
    }

    pub(crate) fn fs_with(&self, ids: crate::union::ids::IdOptions) -> UnionFs {
        self.fs_opts(ids, None)
    }

    pub(crate) fn fs_opts(
        &self,
        ids: crate::union::ids::IdOptions,
        metacopy: Option<bool>,
    ) -> UnionFs {
        let paths = StackPaths {
            lowers: (0..self.lowers).map(|i| self.l(i)).collect(),
            data: Vec::new(),
            upper: Some(self.u()),
            work: Some(self.root.join("w")),
        };
        UnionFs::new(
            &paths,
            CoreOptions {
                volatile: true,
                read_only: false,
                ids,
                atime: None,
                nfs_export: false,
                metacopy,
            },
        )
        .unwrap()
    }
}

pub(crate) fn walk(fs: &UnionFs, path: &str) -> Result<Ino, Error> {
    let mut ino = ROOT;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        ino = fs.lookup(ino, OsStr::new(c))?.ino;
    }
    Ok(ino)
}

pub(crate) fn names(fs: &UnionFs, path: &str) -> Vec<String> {
    let ino = walk(fs, path).unwrap();
    let mut v: Vec<String> = fs
        .list_merged(ino)
        .unwrap()
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    v.sort();
    v
}

pub(crate) fn read(fs: &UnionFs, path: &str) -> String {
    let ino = walk(fs, path).unwrap();
    let fh = fs.open(ino, libc::O_RDONLY).unwrap();
    let d = fs.read(fh, 0, 1 << 16).unwrap();
    fs.release(fh);
    String::from_utf8(d).unwrap()
}

pub(crate) fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let fd = rustix::fs::open(
        p,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    crate::sys::set_xattr(std::os::fd::AsFd::as_fd(&fd), OsStr::new(name), value, 0).unwrap();
}

#[test]
fn lookup_order_and_hiding() {
    let f = Fixture::new(3);
    f.write(&f.l(2), "a", "bottom");
    f.write(&f.l(0), "a", "top");
    f.write(&f.l(2), "d/x", "x2");
    f.write(&f.l(1), "d/y", "y1");
    f.write(&f.l(1), "f/inner", "hidden by file above");
    f.write(&f.l(0), "f", "file hides dir");
    let fs = f.fs();
    assert_eq!(read(&fs, "a"), "top");
    assert_eq!(names(&fs, "d"), ["x", "y"]);
    assert_eq!(read(&fs, "f"), "file hides dir");
    assert!(matches!(walk(&fs, "f/inner"), Err(Error::NotDir)));
    assert!(matches!(walk(&fs, "nothing"), Err(Error::NotFound)));
}

#[test]
fn every_whiteout_and_opaque_format_is_honoured() {
    let f = Fixture::new(2);
    for n in ["chr", "whfile", "xattr", "keep"] {
        f.write(&f.l(1), n, "lower");
    }
    f.write(&f.l(1), "opq1/old", "");
    f.write(&f.l(1), "opq2/old", "");
    f.write(&f.l(1), "opq3/old", "");
    f.write(&f.l(1), "opq4/old", "");
    f.whiteout(&f.l(0), "chr");
    f.write(&f.l(0), ".wh.whfile", "");
    // Kernel 6.7+ xattr whiteout: zero-size file with overlay.whiteout in an "x" dir.
    f.write(&f.l(0), "xattr", "");
    set_xattr(&f.l(0).join("xattr"), "trusted.overlay.whiteout", b"");
    set_xattr(&f.l(0), "trusted.overlay.opaque", b"x");
    f.write(&f.l(0), "opq1/new", "");
    set_xattr(&f.l(0).join("opq1"), "trusted.overlay.opaque", b"y");
    f.write(&f.l(0), "opq2/new", "");
    set_xattr(&f.l(0).join("opq2"), "user.overlay.opaque", b"y");
    f.write(&f.l(0), "opq3/new", "");
    set_xattr(&f.l(0).join("opq3"), "user.fuseoverlayfs.opaque", b"y");
    f.write(&f.l(0), "opq4/new", "");
    f.write(&f.l(0), "opq4/.wh..wh..opq", "");
    let fs = f.fs();
    assert_eq!(names(&fs, ""), ["keep", "opq1", "opq2", "opq3", "opq4"]);
    for d in ["opq1", "opq2", "opq3", "opq4"] {
        assert_eq!(names(&fs, d), ["new"], "{d}");
    }
    for hidden in ["chr", "whfile", "xattr", ".wh.whfile", "opq4/.wh..wh..opq"] {
        assert!(walk(&fs, hidden).is_err(), "{hidden}");
    }
    // Private xattrs are not visible.
    let ino = walk(&fs, "opq1").unwrap();
    assert!(fs.listxattr(ino).unwrap().is_empty());
}

#[test]
fn redirects_in_lower_layers_are_followed() {
    let f = Fixture::new(3);
    f.write(&f.l(2), "a/f", "from a");
    f.write(&f.l(2), "a/deep/g", "g");
    // Layer 1 renamed `a` to `b` (relative), layer 0 moved `b/deep` to `top` (absolute).
    f.mkdir(&f.l(1), "b");
    set_xattr(&f.l(1).join("b"), "trusted.overlay.redirect", b"a");
    f.whiteout(&f.l(1), "a");
    f.write(&f.l(1), "b/h", "added in b");
    f.mkdir(&f.l(0), "top");
    set_xattr(&f.l(0).join("top"), "trusted.overlay.redirect", b"/b/deep");
    f.mkdir(&f.l(0), "b");
    f.whiteout(&f.l(0), "b/deep");
    let fs = f.fs();
    assert_eq!(names(&fs, ""), ["b", "top"]);
    assert_eq!(names(&fs, "b"), ["f", "h"]);
    assert_eq!(read(&fs, "b/f"), "from a");
    assert_eq!(names(&fs, "top"), ["g"]);
    assert_eq!(read(&fs, "top/g"), "g");
    // A redirect is only followed below its own layer, and never out of the layers.
    f.mkdir(&f.l(0), "evil");
    set_xattr(&f.l(0).join("evil"), "trusted.overlay.redirect", b"/..");
    drop(fs);
    let fs = f.fs();
    assert_eq!(walk(&fs, "evil").unwrap_err().errno(), libc::EACCES);
}

#[test]
fn whiteout_hides_only_below_its_layer() {
    let f = Fixture::new(3);
    f.write(&f.l(2), "n", "bottom");
    f.whiteout(&f.l(1), "n");
    f.write(&f.l(0), "n", "top wins over the whiteout below it");
    f.write(&f.l(2), "m", "bottom");
    f.write(&f.l(1), ".wh.m", "");
    f.write(
        &f.l(1),
        "m",
        "same layer: object wins over its own whiteout",
    );
    let fs = f.fs();
    assert_eq!(read(&fs, "n"), "top wins over the whiteout below it");
    assert_eq!(
        read(&fs, "m"),
        "same layer: object wins over its own whiteout"
    );
}

#[test]
fn copy_up_keeps_data_meta_and_inode() {
    // Both ways a regular file is built: an O_TMPFILE linked into place, and a named
    // work-directory file renamed (where the work directory's filesystem has no O_TMPFILE).
    for named in [false, true] {
        copy_up_keeps_data_meta_and_inode_with(named);
    }
}

fn copy_up_keeps_data_meta_and_inode_with(named: bool) {
    let f = Fixture::new(1);
    f.write(&f.l(0), "dir/file", "data");
    std::fs::set_permissions(
        f.l(0).join("dir/file"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::chown(f.l(0).join("dir/file"), Some(1234), Some(5678)).unwrap();
    set_xattr(&f.l(0).join("dir/file"), "user.keep", b"v");
    let fs = f.fs();
    fs.no_tmpfile
        .store(named, std::sync::atomic::Ordering::Relaxed);
    let ino = walk(&fs, "dir/file").unwrap();
    let before = fs.getattr(ino).unwrap();
    let fh = fs.open(ino, libc::O_WRONLY).unwrap();
    fs.write(fh, 4, b"+more").unwrap();
    fs.release(fh);
    let after = fs.getattr(ino).unwrap();
    assert_eq!(after.ino, before.ino, "st_ino survives copy-up");
    assert_eq!(
        (after.uid, after.gid, after.mode),
        (1234, 5678, before.mode)
    );
    assert_eq!(read(&fs, "dir/file"), "data+more");
    assert_eq!(
        std::fs::read_to_string(f.l(0).join("dir/file")).unwrap(),
        "data",
        "lower untouched"
    );
    let up = f.u().join("dir/file");
    assert_eq!(std::fs::metadata(&up).unwrap().uid(), 1234);
    assert_eq!(fs.getxattr(ino, OsStr::new("user.keep")).unwrap(), b"v");
    // The parent was copied up first, with its metadata; the work dir is left empty.
    assert!(f.u().join("dir").is_dir());
    assert_eq!(std::fs::read_dir(f.root.join("w/work")).unwrap().count(), 0);
}

#[test]
fn unlink_and_rmdir_leave_whiteouts_only_where_needed() {
    let f = Fixture::new(1);
    f.write(&f.l(0), "lowerfile", "");
    f.write(&f.l(0), "ldir/a", "");
    let fs = f.fs();
    let c = Caller::ROOT;
    fs.create_open(ROOT, OsStr::new("upperfile"), libc::O_WRONLY, 0o644, 0, c)
        .unwrap();
    fs.unlink(ROOT, OsStr::new("upperfile")).unwrap();
    assert!(
        !f.u().join("upperfile").exists()
            && std::fs::symlink_metadata(f.u().join("upperfile")).is_err()
    );
    fs.unlink(ROOT, OsStr::new("lowerfile")).unwrap();
    let wh = std::fs::symlink_metadata(f.u().join("lowerfile")).unwrap();
    assert_eq!((wh.mode() & libc::S_IFMT, wh.rdev()), (libc::S_IFCHR, 0));
    let ldir = walk(&fs, "ldir").unwrap();
    assert!(matches!(
        fs.rmdir(ROOT, OsStr::new("ldir")),
        Err(Error::NotEmpty)
    ));
    fs.unlink(ldir, OsStr::new("a")).unwrap();
    fs.rmdir(ROOT, OsStr::new("ldir")).unwrap();
    assert_eq!(names(&fs, ""), Vec::<String>::new());
    // A directory created where a whiteout stands is opaque.
    fs.create(ROOT, OsStr::new("ldir"), NewKind::Dir, 0o755, 0, c)
        .unwrap();
    assert_eq!(names(&fs, "ldir"), Vec::<String>::new());
    let fd = rustix::fs::open(
        f.u().join("ldir"),
        rustix::fs::OFlags::PATH,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    assert_eq!(
        crate::sys::get_xattr(
            std::os::fd::AsFd::as_fd(&fd),
            OsStr::new("trusted.overlay.opaque")
        )
        .unwrap()
        .as_deref(),
        Some(&b"y"[..])
    );
}

#[test]
fn rename_errors_and_flags() {
    let f = Fixture::new(1);
    f.write(&f.l(0), "a", "A");
    f.write(&f.l(0), "b", "B");
    f.write(&f.l(0), "d/x", "");
    f.mkdir(&f.l(0), "e");
    let fs = f.fs();
    for n in ["a", "b", "d", "e"] {
        walk(&fs, n).unwrap();
    }
    let r = |a: &str, b: &str, fl: u32| {
        fs.rename(ROOT, OsStr::new(a), ROOT, OsStr::new(b), fl, Caller::ROOT)
    };
    assert!(matches!(
        r("a", "b", libc::RENAME_NOREPLACE),
        Err(Error::Exists)
    ));
    assert!(matches!(r("a", "d", 0), Err(Error::IsDir)));
    assert!(matches!(r("d", "a", 0), Err(Error::NotDir)));
    assert!(matches!(r("e", "d", 0), Err(Error::NotEmpty)));
    assert!(matches!(
        r("a", "zz", libc::RENAME_EXCHANGE),
        Err(Error::NotFound)
    ));
    assert!(matches!(r("a", ".wh.x", 0), Err(Error::Invalid)));
    r("a", "b", libc::RENAME_EXCHANGE).unwrap();
    assert_eq!((read(&fs, "a"), read(&fs, "b")), ("B".into(), "A".into()));
    r("d", "moved", 0).unwrap();
    assert_eq!(names(&fs, "moved"), ["x"]);
    assert!(walk(&fs, "d").is_err());
    r("e", "moved", 0).unwrap_err();
}

#[test]
fn rename_lower_dir_survives_a_new_core() {
    let f = Fixture::new(2);
    f.write(&f.l(1), "src/deep/file", "content");
    f.write(&f.l(0), "src/top", "t");
    f.mkdir(&f.l(0), "other");
    {
        let fs = f.fs();
        let other = walk(&fs, "other").unwrap();
        walk(&fs, "src").unwrap();
        fs.rename(
            ROOT,
            OsStr::new("src"),
            other,
            OsStr::new("dst"),
            0,
            Caller::ROOT,
        )
        .unwrap();
        assert_eq!(names(&fs, "other/dst"), ["deep", "top"]);
    }
    let fs = f.fs();
    assert_eq!(names(&fs, "other/dst"), ["deep", "top"]);
    assert_eq!(read(&fs, "other/dst/deep/file"), "content");
    assert!(walk(&fs, "src").is_err());
}

#[test]
fn hard_links_share_one_inode_across_copy_up() {
    let f = Fixture::new(1);
    f.write(&f.l(0), "one", "shared");
    std::fs::hard_link(f.l(0).join("one"), f.l(0).join("two")).unwrap();
    let fs = f.fs();
    let a = walk(&fs, "one").unwrap();
    let b = walk(&fs, "two").unwrap();
    assert_eq!(a, b);
    let fh = fs.open(a, libc::O_WRONLY).unwrap();
    fs.write(fh, 0, b"SHARED").unwrap();
    fs.release(fh);
    assert_eq!(read(&fs, "two"), "SHARED");
    // link() in the mount keeps one inode too.
    let attr = fs
        .create(
            ROOT,
            OsStr::new("three"),
            NewKind::Link(a),
            0,
            0,
            Caller::ROOT,
        )
        .unwrap();
    assert_eq!(attr.ino, a);
}

#[test]
fn readdir_of_many_entries_over_layers_then_remove_all() {
    let f = Fixture::new(3);
    for i in 0..3000 {
        f.write(&f.l(i % 3), &format!("big/f{i}"), "");
    }
    f.whiteout(&f.l(0), "big/f1");
    let fs = f.fs();
    let big = walk(&fs, "big").unwrap();
    let listed = names(&fs, "big");
    assert_eq!(listed.len(), 2999);
    for n in &listed {
        fs.lookup(big, OsStr::new(n)).unwrap();
        fs.unlink(big, OsStr::new(n)).unwrap();
    }
    assert!(names(&fs, "big").is_empty());
    fs.rmdir(ROOT, OsStr::new("big")).unwrap();
}

#[test]
fn reserved_names_and_read_only() {
    let f = Fixture::new(1);
    f.write(&f.l(0), "x", "");
    let fs = f.fs();
    let c = Caller::ROOT;
    // A `.wh.*` name made through the mount is the user's (as on kernel overlayfs): it
    // hides nothing and stays an object; moving something onto such a name is refused.
    fs.create(ROOT, OsStr::new(".wh.x"), NewKind::Dir, 0o755, 0, c)
        .unwrap();
    assert_eq!(names(&fs, ""), [".wh.x", "x"]);
    assert!(matches!(
        fs.rename(
            ROOT,
            OsStr::new("x"),
            ROOT,
            OsStr::new(".wh.y"),
            0,
            Caller::ROOT
        ),
        Err(Error::Invalid)
    ));
    assert!(matches!(
        fs.create(ROOT, OsStr::new("x"), NewKind::Dir, 0o755, 0, c),
        Err(Error::Exists)
    ));
    let ro = UnionFs::new(
        &StackPaths {
            lowers: vec![f.l(0)],
            data: Vec::new(),
            upper: None,
            work: None,
        },
        CoreOptions::default(),
    )
    .unwrap();
    assert!(matches!(
        ro.create(ROOT, OsStr::new("y"), NewKind::Dir, 0o755, 0, c),
        Err(Error::ReadOnly)
    ));
    let x = walk(&ro, "x").unwrap();
    assert!(matches!(ro.open(x, libc::O_RDWR), Err(Error::ReadOnly)));
}

#[test]
fn forget_frees_nodes() {
    let f = Fixture::new(1);
    for i in 0..100 {
        f.write(&f.l(0), &format!("d/f{i}"), "");
    }
    let fs = f.fs();
    let d = walk(&fs, "d").unwrap();
    let inos: Vec<Ino> = (0..100)
        .map(|i| fs.lookup(d, OsStr::new(&format!("f{i}"))).unwrap().ino)
        .collect();
    assert_eq!(fs.node_count(), 102);
    for ino in inos {
        fs.forget(ino, 1);
    }
    fs.forget(d, 1);
    assert_eq!(fs.node_count(), 1);
}

#[test]
fn unlinking_one_upper_hard_link_keeps_the_other_reachable() {
    let f = Fixture::new(1);
    f.write(&f.u(), "b/a", "data");
    std::fs::create_dir_all(f.u().join("c")).unwrap();
    std::fs::hard_link(f.u().join("b/a"), f.u().join("c/c")).unwrap();
    std::fs::create_dir_all(f.u().join("a")).unwrap();
    let fs = f.fs();
    let x = walk(&fs, "b/a").unwrap();
    assert_eq!(walk(&fs, "c/c").unwrap(), x);
    let a = walk(&fs, "a").unwrap();
    let aa = fs
        .create(a, OsStr::new("a"), NewKind::Dir, 0o755, 0, Caller::ROOT)
        .unwrap()
        .ino;
    let c = walk(&fs, "c").unwrap();
    fs.rename(c, OsStr::new("c"), aa, OsStr::new("b"), 0, Caller::ROOT)
        .unwrap();
    fs.unlink(aa, OsStr::new("b")).unwrap();
    let attr = fs.getattr(x).unwrap();
    assert_eq!(attr.nlink, 1);
    assert_eq!(read(&fs, "b/a"), "data");
}

#[test]
fn open_dirs_snapshot_and_one_uses_the_kernel_cache() {
    let f = Fixture::new(2);
    for i in 0..5 {
        f.write(&f.l(i % 2), &format!("d/f{i}"), "x");
    }
    let fs = f.fs();
    let d = walk(&fs, "d").unwrap();
    let (a, a_cache) = fs.opendir(d).unwrap();
    let (b, b_cache) = fs.opendir(d).unwrap();
    assert!(
        a_cache && !b_cache,
        "one open handle at a time uses the kernel cache"
    );
    let (first, start, _) = fs.listing(a.0, 0).unwrap();
    assert_eq!((first.entries.len(), start), (7, 0));
    // Stop after the third entry, remove the fourth and fifth, then read on.
    let after = first.offs[2];
    let gone: Vec<_> = first.entries[3..5].iter().map(|e| e.name.clone()).collect();
    for name in &gone {
        fs.unlink(d, name).unwrap();
    }
    let (same, i, _) = fs.listing(a.0, after).unwrap();
    assert_eq!(
        same.entries[i].name, gone[0],
        "the open handle keeps its snapshot"
    );
    // Another handle lists the directory as it is now, with the same offsets.
    let (now, j, _) = fs.listing(b.0, after).unwrap();
    assert!(now.entries[j..].iter().all(|e| !gone.contains(&e.name)));
    assert_eq!(now.entries.len(), 5);
    // rewinddir: a new snapshot.
    let (fresh, _, _) = fs.listing(a.0, 0).unwrap();
    assert_eq!(fresh.entries.len(), 5);
    fs.releasedir(a);
    let (c, c_cache) = fs.opendir(d).unwrap();
    assert!(c_cache, "the cache is free again once its user is released");
    fs.releasedir(b);
    fs.releasedir(c);
}

#[test]
fn tmpfile_is_unnamed_until_linked() {
    let f = Fixture::new(1);
    f.write(&f.l(0), "a/b/old", "o");
    let fs = f.fs();
    let b = walk(&fs, "a/b").unwrap();
    let (attr, fh) = fs
        .tmpfile(b, libc::S_IFREG | 0o640, 0o022, libc::O_RDWR, Caller::ROOT)
        .unwrap();
    assert_eq!((attr.nlink, attr.mode), (0, libc::S_IFREG | 0o640));
    fs.write(fh, 0, b"data").unwrap();
    // The parent chain is upper now; the file has no name there.
    assert!(f.u().join("a/b").is_dir());
    assert_eq!(std::fs::read_dir(f.u().join("a/b")).unwrap().count(), 0);
    assert_eq!(names(&fs, "a/b"), ["old"]);
    let linked = fs
        .create(
            b,
            OsStr::new("named"),
            NewKind::Link(attr.ino),
            0,
            0,
            Caller::ROOT,
        )
        .unwrap();
    assert_eq!((linked.ino, linked.nlink), (attr.ino, 1));
    assert_eq!(read(&fs, "a/b/named"), "data");
    assert_eq!(fs.getattr(attr.ino).unwrap().nlink, 1);
    fs.release(fh);
    // One never linked leaves nothing.
    let (_, fh) = fs
        .tmpfile(ROOT, libc::S_IFREG | 0o600, 0, libc::O_WRONLY, Caller::ROOT)
        .unwrap();
    fs.release(fh);
    assert_eq!(names(&fs, ""), ["a"]);
}

#[test]
fn whiteout_devices_are_inner_whiteouts() {
    let f = Fixture::new(1);
    f.write(&f.l(0), "d/gone", "g");
    f.write(&f.l(0), "x", "x");
    let fs = f.fs();
    let d = walk(&fs, "d").unwrap();
    fs.unlink(d, OsStr::new("gone")).unwrap();
    let dev = NewKind::Node { rdev: 0 };
    let a = fs
        .create(
            d,
            OsStr::new("gone"),
            dev,
            libc::S_IFCHR | 0o600,
            0,
            Caller::ROOT,
        )
        .unwrap();
    assert_eq!((a.mode, a.rdev), (libc::S_IFCHR | 0o600, 0));
    // Stored as a zero-size file (with the escaped xattr whiteout), shown as the device.
    let stored = std::fs::symlink_metadata(f.u().join("d/gone")).unwrap();
    assert!(stored.is_file() && stored.len() == 0);
    let kinds: Vec<_> = fs
        .list_merged(d)
        .unwrap()
        .into_iter()
        .filter(|e| e.name == "gone")
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [rustix::fs::FileType::CharacterDevice]);
    // RENAME_WHITEOUT leaves one at the old name: a device, not this overlay's whiteout.
    fs.rename(
        ROOT,
        OsStr::new("x"),
        d,
        OsStr::new("x2"),
        libc::RENAME_WHITEOUT,
        Caller::ROOT,
    )
    .unwrap();
    let x = fs.getattr(walk(&fs, "x").unwrap()).unwrap();
    assert_eq!(x.mode & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(read(&fs, "d/x2"), "x");
    // A new core (a remount) reads them back the same.
    drop(fs);
    let fs = f.fs();
    assert_eq!(names(&fs, ""), ["d", "x"]);
    assert_eq!(names(&fs, "d"), ["gone", "x2"]);
    let g = fs.getattr(walk(&fs, "d/gone").unwrap()).unwrap();
    assert_eq!((g.mode, g.rdev), (libc::S_IFCHR | 0o600, 0));
    assert!(matches!(
        fs.rename(
            ROOT,
            OsStr::new("x"),
            d,
            OsStr::new("y"),
            libc::RENAME_WHITEOUT | libc::RENAME_EXCHANGE,
            Caller::ROOT
        ),
        Err(Error::Invalid)
    ));
}

#[test]
fn create_open_hands_back_a_writable_handle_and_create_keeps_none() {
    let f = Fixture::new(1);
    let fs = f.fs();
    let c = Caller::ROOT;
    let (a, fh) = fs
        .create_open(ROOT, OsStr::new("opened"), libc::O_RDWR, 0o644, 0, c)
        .unwrap();
    assert_eq!(fs.write(fh, 0, b"data").unwrap(), 4);
    fs.release(fh);
    assert_eq!(read(&fs, "opened"), "data");
    assert_eq!(a.mode & libc::S_IFMT, libc::S_IFREG);
    // As mknod of a regular file: made, not left open.
    let kind = NewKind::File {
        flags: libc::O_RDONLY,
    };
    let made = fs
        .create(ROOT, OsStr::new("made"), kind, 0o644, 0, c)
        .unwrap();
    assert_eq!((made.mode & libc::S_IFMT, made.size), (libc::S_IFREG, 0));
    assert!(f.u().join("made").is_file());
}

#[test]
fn copy_up_takes_the_lower_object_as_it_is_at_the_copy() {
    // Modes the umask would cut (0o777) or that carry set-id bits are copied exactly by
    // a change that does not touch them; a lower name that is no longer a regular file
    // when it is copied up (looked up as one) is copied as what it is now, never opened
    // for reading as a file.
    let f = Fixture::new(1);
    let perm = |rel: &str, mode: u32| {
        std::fs::set_permissions(
            f.l(0).join(rel),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .unwrap()
    };
    f.write(&f.l(0), "d/open", "a");
    perm("d/open", 0o777);
    f.write(&f.l(0), "d/setid", "b");
    perm("d/setid", 0o6755);
    f.write(&f.l(0), "d/now_fifo", "c");
    f.write(&f.l(0), "d/now_link", "d");
    let fs = f.fs();
    let touch = crate::union::attr::SetAttr {
        mtime: Some(crate::union::attr::TimeSet::Now),
        ..Default::default()
    };
    let inos: Vec<Ino> = ["open", "setid", "now_fifo", "now_link"]
        .iter()
        .map(|n| walk(&fs, &format!("d/{n}")).unwrap())
        .collect();
    std::fs::remove_file(f.l(0).join("d/now_fifo")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        f.l(0).join("d/now_fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    std::fs::remove_file(f.l(0).join("d/now_link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", f.l(0).join("d/now_link")).unwrap();
    for ino in &inos {
        // A FIFO with no writer would block a reading open without O_NONBLOCK.
        fs.setattr(*ino, &touch).unwrap();
    }
    let up = |rel: &str| std::fs::symlink_metadata(f.u().join(rel)).unwrap();
    assert_eq!(up("d/open").mode() & 0o7777, 0o777);
    assert_eq!(up("d/setid").mode() & 0o7777, 0o6755);
    use std::os::unix::fs::FileTypeExt;
    assert!(up("d/now_fifo").file_type().is_fifo());
    assert_eq!(up("d/now_fifo").mode() & 0o7777, 0o640);
    assert!(
        up("d/now_link").file_type().is_symlink(),
        "copied as the symlink it is now"
    );
    assert_eq!(
        std::fs::read_link(f.u().join("d/now_link")).unwrap(),
        Path::new("/etc/passwd")
    );
}

#[test]
fn empty_files_are_told_apart_by_their_xattrs() {
    // A lookup lists a zero-size file's xattr names once and answers every mark from the
    // list; a list too long for its buffer is read by name. Both must agree, in either
    // namespace, in the upper and the lowers.
    let f = Fixture::new(2);
    let many: Vec<String> = (0..40)
        .map(|i| format!("user.some-long-attribute-name-{i:03}"))
        .collect();
    let cases: [(&str, &[&str], bool); 6] = [
        ("trusted", &["trusted.overlay.whiteout"], false),
        ("user", &["user.overlay.whiteout"], false),
        ("other", &["user.other", "trusted.other"], true),
        ("none", &[], true),
        ("long_whiteout", &["trusted.overlay.whiteout"], false),
        ("long_visible", &[], true),
    ];
    for (n, marks, _) in cases {
        for (layer, dir) in [(f.l(0), "d"), (f.u(), "u")] {
            let under = if dir == "d" { f.l(1) } else { f.l(0) };
            f.write(&under, &format!("{dir}/{n}"), "real");
            f.write(&layer, &format!("{dir}/{n}"), "");
            let p = layer.join(format!("{dir}/{n}"));
            for m in marks {
                set_xattr(&p, m, b"y");
            }
            if n.starts_with("long") {
                for m in &many {
                    set_xattr(&p, m, b"1");
                }
            }
        }
    }
    let fs = f.fs();
    for (n, _, visible) in cases {
        for dir in ["d", "u"] {
            let path = format!("{dir}/{n}");
            match walk(&fs, &path) {
                Ok(_) => {
                    assert!(visible, "{path} shows, but is a whiteout");
                    assert_eq!(read(&fs, &path), "", "{path}: the empty file shows");
                }
                Err(Error::NotFound) => assert!(!visible, "{path} is hidden"),
                Err(e) => panic!("{path}: {e}"),
            }
        }
    }
}

#[test]
fn xattr_whiteout_in_an_unmarked_directory_hides_on_lookup_and_needs_no_whiteout() {
    // Kernel overlayfs's lookup takes a zero-size file with the whiteout xattr for a
    // whiteout whether or not its directory is marked `opaque=x` (`ovl_path_is_whiteout`),
    // and removing an upper file over one leaves no whiteout (`ovl_lower_positive`).
    let f = Fixture::new(2);
    for d in ["d", "u"] {
        f.write(&f.l(1), &format!("{d}/c"), "real");
        f.write(&f.l(0), &format!("{d}/c"), "");
        set_xattr(
            &f.l(0).join(format!("{d}/c")),
            "trusted.overlay.whiteout",
            b"y",
        );
    }
    f.write(&f.u(), "u/c", "upper");
    let fs = f.fs();
    assert!(matches!(walk(&fs, "d/c"), Err(Error::NotFound)));
    let u = walk(&fs, "u").unwrap();
    assert_eq!(read(&fs, "u/c"), "upper");
    fs.unlink(u, OsStr::new("c")).unwrap();
    assert!(matches!(walk(&fs, "u/c"), Err(Error::NotFound)));
    assert!(
        std::fs::symlink_metadata(f.u().join("u/c")).is_err(),
        "no whiteout over a lower whiteout"
    );
}
