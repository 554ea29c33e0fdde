//! A file open read-only from a lower layer while another open copies it up: the reader
//! keeps reading the lower data, the writer and every later open see the upper copy — as on
//! kernel overlayfs. With FUSE passthrough this is the case where the copied-up file must
//! get a fresh inode (the kernel binds one backing file per inode).

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use common::can_mount;
use common::fixture::Stack;
use common::mount::{FuseMount, KernelOverlay};

fn scenario(root: &Path) -> (String, String, String) {
    let mut reader = File::open(root.join("f")).unwrap();
    let mut first = String::new();
    reader.read_to_string(&mut first).unwrap();
    let mut writer = OpenOptions::new()
        .append(true)
        .open(root.join("f"))
        .unwrap();
    writer.write_all(b" + appended").unwrap();
    drop(writer);
    reader.seek(SeekFrom::Start(0)).unwrap();
    let mut again = String::new();
    reader.read_to_string(&mut again).unwrap();
    let fresh = std::fs::read_to_string(root.join("f")).unwrap();
    assert_eq!(first, "lower data");
    (first, again, fresh)
}

#[test]
fn reader_follows_the_copy_up_like_the_kernel() {
    if !can_mount("reader_follows_the_copy_up_like_the_kernel") {
        return;
    }
    let stack = Stack::new(1);
    stack.lower(0).file("f", b"lower data");
    let twin = stack.copy();
    let k = KernelOverlay::mount(&twin).unwrap();
    let want = scenario(k.path());
    k.unmount().unwrap();
    // Kernel overlayfs moves an open reader to the upper copy.
    assert_eq!(want.1, "lower data + appended");
    let m = FuseMount::mount_args(&stack, &["--no-passthrough"]).unwrap();
    let got = scenario(m.path());
    m.unmount().unwrap();
    assert_eq!(got, want);
}

/// With passthrough the reader is bound to the lower file by the kernel: it keeps reading
/// the lower data (documented difference); the writer and later opens see the upper copy.
#[test]
fn passthrough_reader_keeps_lower_data_while_writer_copies_up() {
    if !can_mount("passthrough_reader_keeps_lower_data_while_writer_copies_up") {
        return;
    }
    let stack = Stack::new(1);
    stack.lower(0).file("f", b"lower data");
    let m = FuseMount::mount(&stack).unwrap();
    let got = scenario(m.path());
    let after = std::fs::read_to_string(m.path().join("f")).unwrap();
    m.unmount().unwrap();
    let expected_reader = if passthrough_active() {
        "lower data"
    } else {
        "lower data + appended"
    };
    assert_eq!(got.1, expected_reader);
    assert_eq!(got.2, "lower data + appended");
    assert_eq!(after, "lower data + appended");
}

/// Passthrough needs kernel 6.9+ and root; the daemon falls back silently otherwise.
fn passthrough_active() -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = rel
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (maj, min) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (maj, min) >= (6, 9)
}
