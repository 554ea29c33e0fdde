#!/usr/bin/env bash
# Long load test (root, /dev/fuse): tests/load.rs for the given time — 8 clients doing
# mixed operations on one rlayerfs mount, a progress watchdog, the daemon's RSS and open fds
# sampled every second (printed every 5 s) and checked to stay bounded.
#   scripts/loadtest.sh [--seconds N] [--seed N]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=600 seed=1
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        *) echo "usage: $0 [--seconds N] [--seed N]" >&2; exit 2 ;;
    esac
done
RLAYERFS_LOAD_SECONDS=$seconds RLAYERFS_LOAD_SEED=$seed \
    cargo test --release --test load -- --nocapture 2>&1 | grep -v '^ *at \|^ *[0-9]*: '
exit "${PIPESTATUS[0]}"
