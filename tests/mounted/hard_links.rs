//! Hard links across copy-up, remount and cross-mount, of every file type, changed through another
//! name.

use std::collections::HashMap;
use std::fs::{self};
use std::io::{self};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::common;
use crate::common::fixture::Stack;
use crate::common::live::{same, Watchdog, TEST_LIMIT};
use crate::common::ops::{Op, RenameFlags};
use crate::common::posix::errno;
use crate::common::{can_mount, sys, Pair};

use super::{kind, pair, remount, rn};

/// Per name: hard-link group (by st_ino, numbered by first name), nlink, content.
fn link_view(root: &Path, names: &[&str]) -> Vec<String> {
    let mut groups: HashMap<u64, usize> = HashMap::new();
    names
        .iter()
        .map(|n| match fs::symlink_metadata(root.join(n)) {
            Err(e) => format!("{n}: ERROR {}", sys::errno_of(&e)),
            Ok(m) => {
                let next = groups.len() + 1;
                let g = *groups.entry(m.ino()).or_insert(next);
                let data = fs::read(root.join(n)).unwrap_or_default();
                format!(
                    "{n}: group={g} nlink={} content={:?}",
                    m.nlink(),
                    String::from_utf8_lossy(&data)
                )
            }
        })
        .collect()
}

#[test]
fn hard_links_survive_copy_up_remount_and_cross_mount() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(2);
    stack
        .lower(0)
        .file("a", b"shared")
        .hardlink("b", "a")
        .hardlink("sub/c", "a")
        .file("p", b"pair")
        .hardlink("q", "p");
    stack.lower(1).file("z", b"bottom").hardlink("sub/z2", "z");
    let (mut pair, _wd) = pair(name, &stack);
    let names = ["a", "b", "sub/c", "p", "q", "z", "sub/z2"];
    same(&pair, "lower hard links", |root, _| link_view(root, &names));
    let apply = |pair: &mut Pair, op: Op| {
        if let Err(r) = pair.apply(op) {
            panic!("{r}");
        }
    };
    apply(
        &mut pair,
        Op::Write {
            path: "a".into(),
            offset: 0,
            data: b"SHARED".to_vec(),
        },
    );
    apply(
        &mut pair,
        Op::Chmod {
            path: "q".into(),
            mode: 0o600,
        },
    );
    apply(
        &mut pair,
        Op::Link {
            from: "sub/z2".into(),
            to: "z3".into(),
        },
    );
    let names2 = ["a", "b", "sub/c", "p", "q", "z", "sub/z2", "z3"];
    same(&pair, "after copy-up through one name", |root, _| {
        link_view(root, &names2)
    });
    remount(&mut pair);
    same(&pair, "after remount", |root, _| link_view(root, &names2));
    apply(&mut pair, Op::Unlink { path: "b".into() });
    apply(&mut pair, Op::Unlink { path: "p".into() });
    same(&pair, "after unlinking names", |root, _| {
        link_view(root, &names2)
    });
    remount(&mut pair);
    same(&pair, "after unlink and remount", |root, _| {
        link_view(root, &names2)
    });
    // Kernel over rlayerfs's layers and rlayerfs over the kernel's (dumps carry hl groups
    // and nlink).
    if let Err(r) = pair.cross_check() {
        panic!("{r}");
    }
}

/// A lower hard-link pair copied up through one name, remounted, then changed through the
/// other names (kernel overlayfs finds the copy through its index).
#[test]
fn hard_link_changed_through_other_name_after_remount() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file("a", b"shared")
        .hardlink("b", "a")
        .hardlink("sub/c", "a");
    let mut pair = Pair::new(name, &stack);
    let _wd = Watchdog::for_pair(&pair, TEST_LIMIT);
    let read = |p: &str| Op::Read { path: p.into() };
    let phases = vec![
        vec![Op::Write {
            path: "a".into(),
            offset: 0,
            data: b"SH".to_vec(),
        }],
        vec![
            read("b"),
            Op::Write {
                path: "sub/c".into(),
                offset: 6,
                data: b"!".to_vec(),
            },
            read("a"),
            read("b"),
            Op::Chmod {
                path: "b".into(),
                mode: 0o600,
            },
            rn("b", "sub/b2", RenameFlags::None),
        ],
        vec![read("a"), read("sub/b2"), read("sub/c")],
    ];
    if let Err(r) = pair.run_phases(phases) {
        panic!("{r}");
    }
}

/// Lower hard links of every file type, one directory per (type, what is done, whether
/// it was looked up first): kernel overlayfs with index=on copies any hard-linked
/// non-directory up into its index before one name goes, so the other names keep the
/// object and an exact st_nlink. Symlinks, FIFOs, sockets and devices were copied up
/// without the index: the other name kept st_nlink 2 (cold), or could not be unlinked
/// (after `ls -l`: ENOENT, the name still listed).
#[test]
fn hard_links_of_every_file_type() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    const KINDS: [&str; 7] = ["symlink", "fifo", "sock", "chr", "blk", "empty", "file"];
    const ACTS: [&str; 4] = ["unlink-a", "unlink-b", "rename", "rename-over"];
    let dirs: Vec<String> = KINDS
        .iter()
        .flat_map(|k| ACTS.iter().map(move |a| (k, a)))
        .flat_map(|(k, a)| ["ls", "cold"].map(|w| format!("{k}.{a}.{w}")))
        .collect();
    let stack = Stack::new(1);
    let l = stack.lower(0);
    for d in &dirs {
        let a = format!("{d}/a");
        let p = l.dir(d).path(&a);
        let node = |mode, major, minor| sys::mknod(&p, mode | 0o644, major, minor).unwrap();
        match d.split('.').next() {
            Some("symlink") => {
                l.symlink(&a, "target");
            }
            Some("fifo") => node(libc::S_IFIFO, 0, 0),
            Some("sock") => node(libc::S_IFSOCK, 0, 0),
            Some("chr") => node(libc::S_IFCHR, 1, 3),
            Some("blk") => node(libc::S_IFBLK, 7, 0),
            Some("empty") => {
                l.file(&a, b"");
            }
            _ => {
                l.file(&a, b"data");
            }
        }
        l.hardlink(&format!("{d}/b"), &a);
        if d.contains("rename-over") {
            l.file(&format!("{d}/c"), b"victim");
        }
    }
    let (mut pair, _wd) = pair(name, &stack);
    // Names present, each with its type, link count and which object it is.
    let view = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(dir) {
            Ok(rd) => rd
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<io::Result<_>>()
                .unwrap_or_else(|e| vec![format!("ERROR readdir {}", sys::errno_of(&e))]),
            Err(e) => vec![format!("ERROR readdir {}", sys::errno_of(&e))],
        };
        names.sort();
        let mut inos: Vec<u64> = Vec::new();
        names
            .iter()
            .map(|n| match fs::symlink_metadata(dir.join(n)) {
                Err(e) => format!("{n}: ERROR {}", sys::errno_of(&e)),
                Ok(m) => {
                    let group = inos.iter().position(|i| *i == m.ino()).unwrap_or_else(|| {
                        inos.push(m.ino());
                        inos.len() - 1
                    });
                    format!(
                        "{n}: {} nlink={} object={group}",
                        kind(m.file_type()),
                        m.nlink()
                    )
                }
            })
            .collect()
    };
    for d in &dirs {
        same(&pair, d, |root, _| {
            let dir = root.join(d);
            let mut seen = Vec::new();
            if d.ends_with(".ls") {
                seen.push(format!("ls -l: {:?}", view(&dir)));
            }
            let step = |seen: &mut Vec<String>, what: &str, r: io::Result<()>| {
                seen.push(format!("{what}: {:?}", errno(r)));
                seen.push(format!("  then {:?}", view(&dir)));
            };
            match d.split('.').nth(1) {
                Some("unlink-a") => step(&mut seen, "unlink a", fs::remove_file(dir.join("a"))),
                Some("unlink-b") => step(&mut seen, "unlink b", fs::remove_file(dir.join("b"))),
                _ => step(
                    &mut seen,
                    "rename a c",
                    fs::rename(dir.join("a"), dir.join("c")),
                ),
            }
            let last = if d.contains(".unlink-b.") { "a" } else { "b" };
            step(&mut seen, "unlink other", fs::remove_file(dir.join(last)));
            seen
        });
    }
    remount(&mut pair);
    for d in &dirs {
        same(&pair, &format!("{d} after remount"), |root, _| {
            view(&root.join(d))
        });
    }
    if let Err(r) = pair.cross_check() {
        panic!("{r}");
    }
}
