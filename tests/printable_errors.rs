//! Errors that quote hostile input stay one printable line: `rlayerfs unpack` of random
//! bytes (which the tar reader quotes back), of tars whose entry names carry ESC and
//! newlines, and mount options with control characters. stderr must hold no byte below 0x20
//! (nor DEL) but the final newline. Needs no root: nothing is mounted.

use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_rlayerfs");

/// Control bytes a hostile name would use on a terminal: colour, clear screen, a title
/// change ended by BEL, a forged line, a carriage return, DEL.
const HOSTILE: &[u8] = b"\x1b[31m\x1b[2J\x1b]0;owned\x07\nrlayerfs: fake line\r\x7f";

/// Runs rlayerfs with `args` and checks that it failed with one printable line on stderr;
/// returns that line.
fn one_printable_line(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rlayerfs");
    assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
    let err = out.stderr;
    let shown = String::from_utf8_lossy(&err).into_owned();
    assert!(
        err.ends_with(b"\n"),
        "{args:?}: no final newline: {shown:?}"
    );
    let body = &err[..err.len() - 1];
    assert!(
        !body.iter().any(|&b| b < 0x20 || b == 0x7f),
        "{args:?}: raw control bytes on stderr: {shown:?}"
    );
    assert!(shown.starts_with("rlayerfs: "), "{shown:?}");
    shown
}

/// A tar of one entry per `(name, type, link target)`, names written into the header as
/// raw bytes (the tar crate's setters would refuse some of them), then `tail`.
fn tar_of(entries: &[(&[u8], tar::EntryType, &[u8])], tail: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link) in entries {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
    }
    out.extend_from_slice(tail);
    out
}

/// Deterministic bytes with ESC, newlines and the other hostile bytes mixed in.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match i % 7 {
                0 => HOSTILE[(x as usize) % HOSTILE.len()],
                _ => x as u8,
            }
        })
        .collect()
}

fn unpack(archive: &Path, dest: &Path) -> String {
    one_printable_line(&[
        "unpack".as_ref(),
        archive.as_os_str(),
        dest.as_os_str(),
        "-q".as_ref(),
    ])
}

fn name_with(prefix: &[u8]) -> Vec<u8> {
    [prefix, HOSTILE].concat()
}

#[test]
fn unpack_of_hostile_archives_prints_one_clean_line() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    let dest = |n: &str| tmp.path().join(n);

    // Random bytes, with the header the tar reader quotes full of ESC and newlines.
    let mut bytes = random_bytes(4096);
    bytes[..HOSTILE.len()].copy_from_slice(HOSTILE);
    std::fs::write(&archive, &bytes).unwrap();
    unpack(&archive, &dest("random"));

    // A refused entry (a ".." component) whose name has control characters.
    let dotdot = name_with(b"a/../");
    std::fs::write(
        &archive,
        tar_of(&[(&dotdot, tar::EntryType::Regular, b"")], &[]),
    )
    .unwrap();
    let line = unpack(&archive, &dest("dotdot"));
    assert!(line.contains("\\u{1b}") || line.contains("\\x1b"), "{line}");

    // A hard link to a missing target, both names hostile.
    let name = name_with(b"link");
    let target = name_with(b"t");
    let link = tar_of(&[(&name, tar::EntryType::Link, &target)], &[]);
    std::fs::write(&archive, link).unwrap();
    unpack(&archive, &dest("link"));

    // Garbage after a good entry with a hostile name: the error names that entry.
    let good = name_with(b"ok");
    let garbage = random_bytes(1024);
    let corrupt = tar_of(&[(&good, tar::EntryType::Regular, b"")], &garbage);
    std::fs::write(&archive, corrupt).unwrap();
    unpack(&archive, &dest("corrupt"));

    // A destination path with control characters.
    let bad_dest = tmp.path().join(String::from_utf8(name_with(b"d")).unwrap());
    std::fs::write(&bad_dest, b"a file, not a directory").unwrap();
    std::fs::write(
        &archive,
        tar_of(&[(b"f", tar::EntryType::Regular, b"")], &[]),
    )
    .unwrap();
    unpack(&archive, &bad_dest);
}

#[test]
fn mount_options_with_control_characters_print_one_clean_line() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let hostile = String::from_utf8(HOSTILE.to_vec()).unwrap();
    for o in [
        format!("timeout={hostile}"),
        format!("lowerdir=/nonexistent/{hostile}"),
        format!("lowerdir={},uidmapping={hostile}", tmp.path().display()),
    ] {
        let line = one_printable_line(&["-o".as_ref(), o.as_ref(), mnt.as_os_str()]);
        assert!(line.contains("\\x1b"), "{line}");
        let line =
            one_printable_line(&["mount".as_ref(), "-o".as_ref(), o.as_ref(), mnt.as_os_str()]);
        assert!(line.contains("\\x1b"), "{line}");
    }
}
