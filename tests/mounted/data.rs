//! fallocate, copy_file_range, SEEK_DATA/SEEK_HOLE, fsync and fdatasync.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;

use crate::common;
use crate::common::can_mount;
use crate::common::fixture::Stack;
use crate::common::live::same;
use crate::common::posix::{self, errno};

use super::{content, pair, remount, rw, WriteAt, MIB};

#[test]
fn fallocate_copy_file_range_and_seek() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let pattern: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    let stack = Stack::new(1);
    let runs: [(u64, &[u8]); 2] = [(0, &[b'x'; 4096]), (512 * 1024, &[b'y'; 4096])];
    stack
        .lower(0)
        .sparse("src", MIB, &runs)
        .sparse("pun", MIB, &runs)
        .file("small", b"0123456789")
        .file("pattern", &pattern);
    let (pair, _wd) = pair(name, &stack);
    same(
        &pair,
        "lseek SEEK_DATA/SEEK_HOLE on a lower sparse file",
        |root, _| {
            let f = File::open(root.join("src")).expect("open src");
            vec![
                format!("extents: {:?}", posix::data_extents(&f)),
                format!("HOLE from 0: {:?}", posix::lseek(&f, 0, libc::SEEK_HOLE)),
                format!(
                    "DATA from 4096: {:?}",
                    posix::lseek(&f, 4096, libc::SEEK_DATA)
                ),
                format!(
                    "HOLE from 1MiB-1: {:?}",
                    posix::lseek(&f, MIB as i64 - 1, libc::SEEK_HOLE)
                ),
                format!(
                    "DATA past EOF: {:?}",
                    posix::lseek(&f, 2 * MIB as i64, libc::SEEK_DATA)
                ),
                format!(
                    "HOLE past EOF: {:?}",
                    posix::lseek(&f, 2 * MIB as i64, libc::SEEK_HOLE)
                ),
                format!("END: {:?}", posix::lseek(&f, 0, libc::SEEK_END)),
            ]
        },
    );
    same(&pair, "fallocate", |root, _| {
        let mut obs = Vec::new();
        let fa = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(root.join("fa"))
            .expect("create fa");
        obs.push(format!(
            "fa: fallocate 0..1MiB: {:?}",
            posix::fallocate(&fa, 0, 0, MIB as i64)
        ));
        let m = fa.metadata().unwrap();
        obs.push(format!(
            "fa: size={} allocated>=1MiB: {}",
            m.len(),
            m.blocks() * 512 >= MIB
        ));
        let small = rw(&root.join("small")).expect("open small");
        obs.push(format!(
            "small: fallocate KEEP_SIZE 0..64KiB: {:?}",
            posix::fallocate(&small, libc::FALLOC_FL_KEEP_SIZE, 0, 65536)
        ));
        let m = small.metadata().unwrap();
        obs.push(format!(
            "small: size={} allocated>=64KiB: {}",
            m.len(),
            m.blocks() * 512 >= 65536
        ));
        obs.push(format!(
            "small: ZERO_RANGE 2+3: {:?}",
            posix::fallocate(
                &small,
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                2,
                3
            )
        ));
        obs.push(format!("small: {:?}", fs::read(root.join("small")).ok()));
        let pun = rw(&root.join("pun")).expect("open pun");
        obs.push(format!(
            "pun: PUNCH_HOLE 0+4096: {:?}",
            posix::fallocate(
                &pun,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                4096
            )
        ));
        // Kernel overlayfs copies up in 1 MiB chunks (holes inside a chunk get allocated), so
        // only the punched hole itself is compared, not the whole extent map.
        obs.push(format!(
            "pun: SEEK_DATA from 0 skips the punched hole: {:?}",
            posix::lseek(&pun, 0, libc::SEEK_DATA).map(|o| o >= 4096)
        ));
        let data = fs::read(root.join("pun")).unwrap_or_default();
        obs.push(format!(
            "pun: len={} zero head={} y at 512KiB={}",
            data.len(),
            data.len() >= 4096 && data[..4096].iter().all(|&b| b == 0),
            data.get(512 * 1024) == Some(&b'y')
        ));
        // FALLOC_FL_INSERT_RANGE / COLLAPSE_RANGE are not compared: the FUSE kernel module
        // refuses them (EOPNOTSUPP) before they reach any daemon.
        obs
    });
    same(&pair, "copy_file_range from a lower file", |root, _| {
        let mut obs = Vec::new();
        let src = File::open(root.join("pattern")).expect("open pattern");
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(root.join("copy"))
            .expect("create copy");
        obs.push(format!(
            "all 256KiB: {:?}",
            posix::copy_file_range(&src, 0, &dst, 0, pattern.len())
        ));
        obs.push(format!(
            "1000 bytes @100 -> @300000: {:?}",
            posix::copy_file_range(&src, 100, &dst, 300_000, 1000)
        ));
        obs.push(format!(
            "past EOF of the source: {:?}",
            posix::copy_file_range(&src, pattern.len() as i64, &dst, 0, 10)
        ));
        let mut want = pattern.clone();
        want.resize(300_000, 0);
        want.extend_from_slice(&pattern[100..1100]);
        obs.push(format!(
            "copy reads: {}",
            content(fs::read(root.join("copy")), &[("expected", &want)])
        ));
        // Into a lower file (copy-up of the destination).
        let small = rw(&root.join("small")).expect("open small");
        obs.push(format!(
            "into lower small @4: {:?}",
            posix::copy_file_range(&src, 0, &small, 4, 3)
        ));
        obs.push(format!("small: {:?}", fs::read(root.join("small")).ok()));
        obs
    });
}

#[test]
fn fsync_and_fdatasync() {
    let name = common::test_name();
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack.lower(0).file("f", b"lower").file("d/g", b"g");
    let (mut pair, _wd) = pair(name, &stack);
    same(&pair, "fsync family", |root, _| {
        let mut obs = Vec::new();
        let ro = File::open(root.join("f")).unwrap();
        obs.push(format!("fsync ro lower: {:?}", posix::fsync(&ro)));
        obs.push(format!("fdatasync ro lower: {:?}", posix::fdatasync(&ro)));
        let w = rw(&root.join("f")).unwrap();
        obs.push(format!("write: {:?}", errno(w.write_at_all(b"LOWER+", 0))));
        obs.push(format!("fsync rw: {:?}", posix::fsync(&w)));
        obs.push(format!("fdatasync rw: {:?}", posix::fdatasync(&w)));
        obs.push(format!("syncfs: {:?}", posix::syncfs(&w)));
        let mut n = File::create(root.join("d/new")).unwrap();
        obs.push(format!("write new: {:?}", errno(n.write_all(b"new data"))));
        obs.push(format!("fsync new: {:?}", posix::fsync(&n)));
        let d = File::open(root.join("d")).unwrap();
        obs.push(format!("fsync dir: {:?}", posix::fsync(&d)));
        let r = File::open(root).unwrap();
        obs.push(format!("fsync root: {:?}", posix::fsync(&r)));
        obs.push(format!("fdatasync dir: {:?}", posix::fdatasync(&d)));
        obs
    });
    remount(&mut pair);
    same(&pair, "synced data after remount", |root, _| {
        vec![
            fs::read(root.join("f")).ok(),
            fs::read(root.join("d/new")).ok(),
        ]
    });
}
