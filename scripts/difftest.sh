#!/usr/bin/env bash
# Long differential campaign against kernel overlayfs (root, /dev/fuse):
#   scripts/difftest.sh [--seconds N] [--batch SEEDS] [--ops N] [--first SEED] [--log FILE]
# Runs batches of random stacks and operation sequences (both generators: kernel formats
# and the non-kernel ones), each compared step by step with kernel overlayfs and
# cross-mounted both ways at the end, until the time is up or a batch diverges. Prints how
# many sequences ran; a divergence prints its seed and the reproducer command, and the
# batch's whole output (the ops, the diff and both trees) is kept in --log FILE
# (default: target/difftest-divergence.log), since a timing-dependent divergence may not
# come back when its seed is run alone.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=600 batch=50 ops=30 seed=0 log=target/difftest-divergence.log
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;
        --ops) ops=$2; shift 2 ;;
        --first) seed=$2; shift 2 ;;
        --log) log=$2; shift 2 ;;
        *) echo "usage: $0 [--seconds N] [--batch SEEDS] [--ops N] [--first SEED] [--log FILE]" >&2; exit 2 ;;
    esac
done
cargo build --release --tests -q
end=$(( $(date +%s) + seconds ))
ran=0
while [ "$(date +%s)" -lt "$end" ]; do
    echo "==> seeds $seed..$((seed + batch - 1)), $ops ops each"
    out=$(mktemp)
    if ! RLAYERFS_DIFF_SEED=$seed RLAYERFS_DIFF_SEEDS=$batch RLAYERFS_DIFF_OPS=$ops \
        cargo test --release -q --test differential random_differential -- --nocapture \
        >"$out" 2>&1; then
        grep -A 40 "DIVERGENCE" "$out" | head -n 80 || true
        tail -n 5 "$out"
        mkdir -p "$(dirname "$log")"
        mv "$out" "$log"
        echo "divergence after $ran sequences (full output: $log)" >&2
        exit 1
    fi
    grep "test result" "$out" || true
    rm -f "$out"
    ran=$(( ran + 2 * batch ))
    seed=$(( seed + batch ))
done
echo "$ran sequences, no divergence"
