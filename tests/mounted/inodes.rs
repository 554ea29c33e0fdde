//! st_ino stable across copy-up, remount and rename of lower objects.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::common;
use crate::common::fixture::Stack;
use crate::common::live::{assert_same, fuse_name, same};
use crate::common::posix::{errno, DirStream};
use crate::common::{can_mount, sys};

use super::{ino, pair, remount};

#[test]
fn st_ino_stable_across_copy_up_and_remount() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(2);
    stack
        .lower(1)
        .file("g", b"bottom file")
        .file("m/b", b"b")
        .dir("bd");
    stack
        .lower(0)
        .file("f", b"top file")
        .file("d/x", b"x")
        .file("m/t", b"t")
        .file("untouched", b"u");
    stack.upper_layer().file("u", b"upper file");
    let (mut pair, _wd) = pair(name, &stack);
    let names = ["", "f", "g", "d", "d/x", "m", "bd", "untouched", "u"];
    let inos =
        |root: &Path| -> Vec<Option<u64>> { names.iter().map(|n| ino(&root.join(n))).collect() };
    let (ra, rb) = pair.roots();
    let before = (inos(ra), inos(rb));
    same(&pair, "changes that copy up", |root, _| {
        vec![
            errno(
                OpenOptions::new()
                    .append(true)
                    .open(root.join("f"))
                    .and_then(|mut f| f.write_all(b"+")),
            ),
            errno(sys::chmod(&root.join("g"), 0o600)),
            errno(fs::write(root.join("d/new"), b"n")),
            errno(fs::write(root.join("m/new"), b"n")),
            errno(sys::set_xattr(&root.join("bd"), "user.x", b"1")),
            errno(sys::set_xattr(&root.join("d/x"), "user.x", b"1")),
        ]
    });
    let (ra, rb) = pair.roots();
    let after = (inos(ra), inos(rb));
    remount(&mut pair);
    let (ra, rb) = pair.roots();
    let remounted = (inos(ra), inos(rb));
    let report = |b: &[Option<u64>], a: &[Option<u64>], r: &[Option<u64>], lowers: &Stack| {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                // The real inode of the object in the layer that held it first.
                let origin = lowers
                    .lowers
                    .iter()
                    .chain([&lowers.upper])
                    .find_map(|l| ino(&l.join(n)).filter(|_| l.join(n).exists()));
                format!(
                    "{n:?}: present={} same after copy-up={} same after remount={} equals \
                     its topmost real inode={}",
                    b[i].is_some(),
                    b[i] == a[i],
                    a[i] == r[i],
                    origin == b[i]
                )
            })
            .collect::<Vec<_>>()
    };
    let ka = report(&before.0, &after.0, &remounted.0, &pair.sa);
    let fb = report(&before.1, &after.1, &remounted.1, &pair.sb);
    assert_same(
        name,
        "st_ino stability",
        "kernel".into(),
        &ka,
        &fuse_name(),
        &fb,
    );
    same(&pair, "readdir d_ino equals st_ino", |root, _| {
        let mut out = Vec::new();
        for dir in ["", "d", "m"] {
            let mut ds = DirStream::open(&root.join(dir)).expect("opendir");
            let mut v = Vec::new();
            while let Ok(Some(e)) = ds.read() {
                if e.name == "." || e.name == ".." {
                    continue;
                }
                v.push(format!(
                    "{dir}/{}: {}",
                    e.name,
                    Some(e.ino) == ino(&root.join(dir).join(&e.name))
                ));
            }
            v.sort();
            out.extend(v);
        }
        out
    });
}

#[test]
fn st_ino_stable_across_rename_of_lower_objects() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(2);
    stack
        .lower(1)
        .file("a/child", b"c")
        .file("m/bottom", b"b")
        .file("f", b"f")
        .dir("x");
    stack.lower(0).file("m/top", b"t").file("h", b"h");
    let (mut pair, _wd) = pair(name, &stack);
    let names_before = ["a", "a/child", "m", "m/top", "m/bottom", "f", "h"];
    let names_after = [
        "a2",
        "a2/child",
        "x/m2",
        "x/m2/top",
        "x/m2/bottom",
        "x/f2",
        "h2",
    ];
    let inos = |root: &Path, names: &[&str]| -> Vec<Option<u64>> {
        names.iter().map(|n| ino(&root.join(n))).collect()
    };
    let (ra, rb) = pair.roots();
    let before = (inos(ra, &names_before), inos(rb, &names_before));
    same(&pair, "renames", |root, _| {
        vec![
            errno(fs::rename(root.join("a"), root.join("a2"))),
            errno(fs::rename(root.join("m"), root.join("x/m2"))),
            errno(fs::rename(root.join("f"), root.join("x/f2"))),
            errno(fs::rename(root.join("h"), root.join("h2"))),
        ]
    });
    let (ra, rb) = pair.roots();
    let after = (inos(ra, &names_after), inos(rb, &names_after));
    remount(&mut pair);
    let (ra, rb) = pair.roots();
    let again = (inos(ra, &names_after), inos(rb, &names_after));
    let report = |b: &[Option<u64>], a: &[Option<u64>], r: &[Option<u64>]| {
        names_after
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "{n}: present={} same as before the rename={} same after remount={}",
                    a[i].is_some(),
                    b[i] == a[i],
                    a[i] == r[i]
                )
            })
            .collect::<Vec<_>>()
    };
    assert_same(
        name,
        "st_ino across renames",
        "kernel".into(),
        &report(&before.0, &after.0, &again.0),
        &fuse_name(),
        &report(&before.1, &after.1, &again.1),
    );
}
