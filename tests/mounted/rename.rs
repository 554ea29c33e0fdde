//! Renames of lower directories and files with every flag, and a directory replaced by rename.

use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use crate::common;
use crate::common::can_mount;
use crate::common::fixture::Stack;
use crate::common::live::same;
use crate::common::ops::{Op, RenameFlags};
use crate::common::posix::errno;

use super::{pair, rd, rn};

#[test]
fn rename_lower_dirs_and_flags() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    use RenameFlags::{Exchange, NoReplace, None as Plain};
    let stack = Stack::new(2);
    stack
        .lower(1)
        .file("a/x", b"ax")
        .file("a/sub/y", b"y")
        .file("b/z", b"bz")
        .dir("empty_merged")
        .file("emptied/c", b"c")
        .file("full/k", b"k")
        .file("p/1", b"p1")
        .file("q/2", b"q2");
    stack
        .lower(0)
        .file("a/w", b"aw")
        .dir("empty_merged")
        .dir("emptied")
        .file("f", b"file f")
        .file("g", b"file g")
        .file("h", b"file h")
        .file("nr/n", b"n")
        .dir("target");
    let (mut pair, _wd) = pair(name, &stack);
    let ops = vec![
        // Same parent, different parent, then over empty merged dirs.
        rn("a", "a2", Plain),
        rd("a2"),
        rd("a2/sub"),
        rn("a2/sub", "b/sub2", Plain),
        rd("b/sub2"),
        rn("b", "empty_merged", Plain),
        rd("empty_merged"),
        Op::Unlink {
            path: "emptied/c".into(),
        },
        rn("a2", "emptied", Plain),
        rd("emptied"),
        rn("emptied", "full", Plain),
        rn("emptied", "emptied/x/inside", Plain),
        rn("emptied", "target/moved", Plain),
        // New dir where a renamed lower dir was: must not show the old contents.
        Op::Mkdir {
            path: "a".into(),
            mode: 0o755,
        },
        rd("a"),
        // RENAME_NOREPLACE.
        rn("nr", "full", NoReplace),
        rn("nr", "f", NoReplace),
        rn("f", "g", NoReplace),
        rn("nr", "nr2", NoReplace),
        rd("nr2"),
        rn("f", "f2", NoReplace),
        // RENAME_EXCHANGE: dirs, files, file with dir, with a missing name.
        rn("p", "q", Exchange),
        rd("p"),
        rd("q"),
        rn("g", "h", Exchange),
        Op::Read { path: "g".into() },
        Op::Read { path: "h".into() },
        rn("h", "p", Exchange),
        rd("h"),
        Op::Read { path: "p".into() },
        rn("g", "missing", Exchange),
        rn("full", "target", Exchange),
        rd("full"),
        rd("target"),
        rd(""),
    ];
    let phases: Vec<Vec<Op>> = vec![
        ops,
        vec![
            rd(""),
            rd("target"),
            rd("target/moved"),
            rd("empty_merged"),
            rd("a"),
            rn("target/moved", "back", Plain),
            rd("back"),
            rn("q", "p", Exchange),
        ],
        vec![rd(""), rd("back"), rd("p"), rd("q")],
    ];
    if let Err(r) = pair.run_phases(phases) {
        panic!("{r}");
    }
}

/// Found by the long load test (`scripts/loadtest.sh --seconds 600`: `mkdir` failing with
/// ESTALE about once per 10 s). The FUSE node id is the object's real inode number. A
/// directory replaced by a rename kept no handle on its upper inode, so the upper
/// filesystem (ext4 here) could give that inode number to the next new directory while
/// the kernel still held the replaced one under it: the new directory got the old node
/// id, the kernel reused its old inode, a process holding the replaced directory saw the
/// new one's entries, and `d_splice_alias` could fail the `mkdir` with ESTALE; `stat`
/// through the replaced directory's fd failed too. Kernel overlayfs keeps the replaced
/// directory's identity (and answers `stat` on it).
#[test]
fn directory_replaced_by_rename_never_shows_a_new_directory() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    // The stack on /tmp (ext4 here): tmpfs does not reuse inode numbers soon.
    let stack = Stack::new(1);
    stack.lower(0).dir("lowerdir");
    let (pair, _wd) = pair(name, &stack);
    same(
        &pair,
        "entries seen through a replaced directory",
        |root, _| {
            let mut seen = Vec::new();
            for round in 0..20 {
                let (a, b) = (
                    root.join(format!("a{round}")),
                    root.join(format!("b{round}")),
                );
                fs::create_dir(&a).unwrap();
                fs::create_dir(&b).unwrap();
                let held = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                    .open(&b)
                    .unwrap();
                let held_ino = fs::metadata(&b).map(|m| m.ino()).ok();
                fs::rename(&a, &b).unwrap();
                let fstat = fs::metadata(format!("/proc/self/fd/{}", held.as_raw_fd()));
                seen.push(format!(
                    "stat of the replaced b{round} through its fd: {:?}",
                    errno(fstat).map(|m| Some(m.ino()) == held_ino)
                ));
                for i in 0..20 {
                    // Alternate parents, as the load test's clients do.
                    let parent = if i % 2 == 0 {
                        root.to_path_buf()
                    } else {
                        root.join("lowerdir")
                    };
                    let d = parent.join(format!("new{round}.{i}"));
                    if let Err(e) = fs::create_dir(&d) {
                        seen.push(format!("mkdir new{round}.{i}: {e}"));
                    }
                    if fs::metadata(&d).map(|m| m.ino()).ok() == held_ino {
                        seen.push(format!("new{round}.{i} has the replaced b{round}'s st_ino"));
                    }
                    let _ = fs::write(d.join("marker"), b"m");
                    let via_held =
                        fs::metadata(format!("/proc/self/fd/{}/marker", held.as_raw_fd()));
                    if via_held.is_ok() {
                        seen.push(format!(
                            "new{round}.{i} visible through the replaced b{round}"
                        ));
                    }
                }
            }
            seen
        },
    );
}
