//! Throughput of `unpack` and `commit` (MB/s of uncompressed layer) on a generated layer:
//! a tree of a few thousand small files plus some larger ones, plain and gzip.
//! GNU tar on the same tree and blobs (`tar_c`, `tar_x`) is measured beside them.
//! Put TMPDIR on a journaled filesystem for meaningful numbers: on ext4 without a journal
//! every create scans the inodes the previous run deleted.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rlayerfs::image::archive::Compression;
use rlayerfs::image::{commit, commit_to_writer, unpack, CommitOptions, UnpackOptions};

/// Files in the generated tree, and their sizes.
const SMALL_FILES: usize = 2000;
const SMALL_SIZE: usize = 4096;
const LARGE_FILES: usize = 8;
const LARGE_SIZE: usize = 2 << 20;

fn generate(root: &Path) {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut data = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Half-compressible content.
                (seed as u8) & 0x3f
            })
            .collect()
    };
    for i in 0..SMALL_FILES {
        let dir = root.join(format!("d{:02}", i % 50));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("f{i}")), data(SMALL_SIZE)).unwrap();
    }
    for i in 0..LARGE_FILES {
        fs::write(root.join(format!("large{i}")), data(LARGE_SIZE)).unwrap();
    }
}

fn benches(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path().join("upper");
    fs::create_dir(&upper).unwrap();
    generate(&upper);
    let total = (SMALL_FILES * SMALL_SIZE + LARGE_FILES * LARGE_SIZE) as u64;

    let mut g = c.benchmark_group("image");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(total));
    for comp in [Compression::None, Compression::Gzip] {
        let opts = CommitOptions {
            compression: comp,
            progress: false,
        };
        g.bench_with_input(
            BenchmarkId::new("commit", format!("{comp:?}")),
            &opts,
            |b, opts| {
                b.iter(|| commit_to_writer(&upper, std::io::sink(), opts).unwrap());
            },
        );
        // GNU tar creating the same tree into a pipe that is drained (not /dev/null, which
        // GNU tar detects and then skips reading file data).
        g.bench_with_input(
            BenchmarkId::new("tar_c", format!("{comp:?}")),
            &comp,
            |b, comp| {
                b.iter(|| {
                    let mut cmd = Command::new("tar");
                    cmd.args(["--xattrs", "-C"]).arg(&upper).arg("-c");
                    if *comp == Compression::Gzip {
                        cmd.arg("-z");
                    }
                    let mut child = cmd
                        .args(["-f", "-", "."])
                        .stdout(Stdio::piped())
                        .spawn()
                        .unwrap();
                    let mut out = child.stdout.take().unwrap();
                    std::io::copy(&mut out, &mut std::io::sink()).unwrap();
                    assert!(child.wait().unwrap().success());
                });
            },
        );
        let blob = tmp.path().join(format!("layer-{comp:?}"));
        commit(&upper, &blob, &opts).unwrap();
        let mut n = 0u64;
        g.bench_with_input(
            BenchmarkId::new("unpack", format!("{comp:?}")),
            &blob,
            |b, blob| {
                b.iter(|| {
                    n += 1;
                    let dest = tmp.path().join(format!("dest{n}"));
                    unpack(blob, &dest, &UnpackOptions::default()).unwrap();
                    fs::remove_dir_all(&dest).unwrap();
                });
            },
        );
        g.bench_with_input(
            BenchmarkId::new("tar_x", format!("{comp:?}")),
            &blob,
            |b, blob| {
                b.iter(|| {
                    n += 1;
                    let dest = tmp.path().join(format!("dest{n}"));
                    fs::create_dir(&dest).unwrap();
                    let st = Command::new("tar")
                        .args(["--xattrs", "--xattrs-include=*", "-C"])
                        .arg(&dest)
                        .arg("-xf")
                        .arg(blob)
                        .status()
                        .unwrap();
                    assert!(st.success());
                    fs::remove_dir_all(&dest).unwrap();
                });
            },
        );
    }
    g.finish();
}

criterion_group!(image, benches);
criterion_main!(image);
