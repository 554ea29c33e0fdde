#!/usr/bin/env bash
# The project's test command: format check, lints, then every test (unit, property, doc and
# integration) in release mode, then pjdfstest compared with kernel overlayfs. The
# integration tests mount FUSE file systems, so they need root and /dev/fuse (.ci/run
# prepares both). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

run() {
    printf '+ %s\n' "$*"
    "$@"
}

run cargo fmt --check
run cargo clippy --all-targets -- -D warnings
run cargo test --release "$@"
# pjdfstest inside rlayerfs and kernel overlayfs, compared test by test (root only).
run bash scripts/pjdfstest.sh
printf 'all checks passed\n'
