#!/usr/bin/env bash
# The project's test command: installs the system packages the tests need (scripts/setup.sh,
# only those missing), then format check, lints, every test (unit, property, doc and
# integration) in release mode, then pjdfstest compared with kernel overlayfs. The
# integration tests mount FUSE file systems, so they need root and /dev/fuse. Extra
# arguments go to `cargo test`.
#
# The tests and pjdfstest run once per FUSE transport: the classic /dev/fuse read/write loop
# and, where the fuse module has the `enable_uring` parameter (Linux 6.14+, as root),
# FUSE-over-io_uring, which rlayerfs uses by default when the module offers it. The
# parameter is switched for each pass and put back as it was found. RLAYERFS_TRANSPORTS
# ("classic", "uring" or "classic uring") chooses the passes.
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
URING_PARAM=/sys/module/fuse/parameters/enable_uring
transports=${RLAYERFS_TRANSPORTS:-}
if [ -z "$transports" ]; then
    if [ "$(id -u)" = 0 ] && [ -w "$URING_PARAM" ]; then
        transports="classic uring"
    else
        transports="as-is"
    fi
fi
uring_was=$(cat "$URING_PARAM" 2>/dev/null || true)
restore_uring() {
    if [ -n "$uring_was" ] && [ -w "$URING_PARAM" ]; then
        echo "$uring_was" >"$URING_PARAM"
    fi
}
trap restore_uring EXIT
for transport in $transports; do
    case "$transport" in
    classic) echo N >"$URING_PARAM" ;;
    uring) echo Y >"$URING_PARAM" ;;
    as-is) ;;
    *) echo "RLAYERFS_TRANSPORTS: unknown transport $transport" >&2; exit 2 ;;
    esac
    printf '== transport: %s\n' "$transport"
    run cargo test --release "$@"
    # pjdfstest inside rlayerfs and kernel overlayfs, compared test by test (root only).
    run bash scripts/pjdfstest.sh
done
printf 'all checks passed\n'
