#!/usr/bin/env bash
# Daemon memory with many files looked up (root, /dev/fuse): tests/memory.rs with
# 1,000,000 files by default (its files go to /dev/shm: about 1 GiB there). Prints RSS after
# mounting, after each half's lookups and after drop_caches, and MiB per 40,000 files.
#   scripts/memtest.sh [--files N]
set -euo pipefail
cd "$(dirname "$0")/.."
files=1000000
while [ $# -gt 0 ]; do
    case "$1" in
        --files) files=$2; shift 2 ;;
        *) echo "usage: $0 [--files N]" >&2; exit 2 ;;
    esac
done
RLAYERFS_MEM_FILES=$files cargo test --release --test memory -- --nocapture 2>&1 |
    grep -v '^ *at \|^ *[0-9]*: '
exit "${PIPESTATUS[0]}"
