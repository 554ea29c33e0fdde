//! A file open read-only from a lower layer while another open copies it up: as on kernel
//! overlayfs, the reader moves to the upper copy and sees what the writer wrote.

use crate::common;

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
    if !can_mount() {
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

/// The same with FUSE passthrough on (the default as root): the lower reader is served in
/// cached mode, so it follows the copy-up too.
#[test]
fn passthrough_mount_reader_follows_the_copy_up() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack.lower(0).file("f", b"lower data");
    let m = FuseMount::mount(&stack).unwrap();
    let got = scenario(m.path());
    let after = std::fs::read_to_string(m.path().join("f")).unwrap();
    m.unmount().unwrap();
    assert_eq!(got.1, "lower data + appended");
    assert_eq!(got.2, "lower data + appended");
    assert_eq!(after, "lower data + appended");
}
