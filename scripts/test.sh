#!/usr/bin/env bash
# The project's test command: installs the system packages the tests need (scripts/setup.sh,
# only those missing), then format check, lints, every test (unit, property, doc and
# integration) in release mode, then pjdfstest compared with kernel overlayfs. The
# integration tests mount FUSE file systems, so they need root and /dev/fuse. Extra
# arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

run() {
    printf '+ %s\n' "$*"
    "$@"
}

if [ "$(id -u)" = 0 ]; then
    run bash scripts/setup.sh test
fi
run cargo fmt --check
run cargo clippy --all-targets -- -D warnings
run cargo test --release "$@"
# pjdfstest inside rlayerfs and kernel overlayfs, compared test by test (root only).
run bash scripts/pjdfstest.sh
printf 'all checks passed\n'
