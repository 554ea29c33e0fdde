#!/usr/bin/env bash
# Long crash campaign (root, /dev/fuse, sqlite3): tests/crash.rs with many rounds. Each
# round builds a fresh stack, SIGKILLs the daemon at a random moment of heavy work (large
# copy-ups, directory renames, rm -rf, fsync'd appends, SQLite in WAL mode), remounts and
# checks the result, then compares with kernel overlayfs on the same upper.
#   scripts/crashtest.sh [--rounds N] [--first SEED] [--max-delay-ms MS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=100 first=1000 delay=1500
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --first) first=$2; shift 2 ;;
        --max-delay-ms) delay=$2; shift 2 ;;
        *) echo "usage: $0 [--rounds N] [--first SEED] [--max-delay-ms MS]" >&2; exit 2 ;;
    esac
done
RLAYERFS_CRASH_ROUNDS=$rounds RLAYERFS_CRASH_SEED=$first RLAYERFS_CRASH_MAX_DELAY_MS=$delay \
    cargo test --release --test crash -- --nocapture 2>&1 | grep -v '^ *at \|^ *[0-9]*: '
exit "${PIPESTATUS[0]}"
