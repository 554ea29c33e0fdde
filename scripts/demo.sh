#!/usr/bin/env bash
# Demo: build a three-layer stack that uses every on-disk format rlayerfs reads, mount it and
# show the merged view.
#
#   scripts/demo.sh [DIR]                     # DIR defaults to ./demo
#   RLAYERFS_BIN=fuse-overlayfs scripts/demo.sh   # same stack through another implementation
#
# DIR/layers/L1 (bottom), L2, L3 (top), DIR/upper, DIR/work and DIR/merged are (re)created; a
# mount left at DIR/merged by an earlier run is unmounted first. The layers hold:
#   L1  etc/hostname, usr/lib/libdemo.so.1, data/old.log, docs/readme.txt, var/cache/app/{a,b}
#   L2  etc/hostname (overrides L1), app/secret.txt, app/bin/run + app/bin/run-hardlink (one
#       inode), app/deep/a/b/c/file.txt, usr/lib/libdemo.so -> libdemo.so.1, var/cache/app/c
#   L3  app/secret.txt as a whiteout (char device 0/0), data/.wh.old.log (whiteout file),
#       var/cache/app opaque by xattr trusted.overlay.opaque=y, docs opaque by a
#       .wh..wh..opq file, etc/motd
# The merged view must hide app/secret.txt, data/old.log, var/cache/app/{a,b,c} and
# docs/readme.txt; the script checks that and exits 1 if it does not hold.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
demo="${1:-./demo}"
mkdir -p "$demo"
demo="$(cd "$demo" && pwd)"
layers="$demo/layers"
upper="$demo/upper"
work="$demo/work"
merged="$demo/merged"

default_bin="${CARGO_TARGET_DIR:-$root/target}/release/rlayerfs"
bin="${RLAYERFS_BIN:-$default_bin}"

log() { printf '==> %s\n' "$*"; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

if [ "$(id -u)" = 0 ]; then
    bash "$root/scripts/setup.sh" demo
fi
for tool in setfattr mknod fusermount3; do
    command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup.sh demo as root)"
done

# Is anything mounted exactly at $1? (/proc/self/mountinfo field 5; works for a dead FUSE
# daemon too, where stat fails with ENOTCONN.)
is_mounted() {
    awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

tries=0
while is_mounted "$merged"; do
    tries=$((tries + 1))
    [ "$tries" -le 5 ] || die "$merged is still mounted after 5 unmount attempts"
    log "unmounting the previous mount at $merged"
    fusermount3 -u "$merged" 2>/dev/null || umount "$merged" 2>/dev/null || umount -l "$merged"
done

log "creating layers in $demo"
rm -rf "$layers" "$upper" "$work"
mkdir -p "$layers/L1" "$layers/L2" "$layers/L3" "$upper" "$work" "$merged"

# L1: the base layer.
(
    cd "$layers/L1"
    mkdir -p etc usr/lib data docs var/cache/app
    echo base >etc/hostname
    echo 'library v1' >usr/lib/libdemo.so.1
    echo 'old log line' >data/old.log
    echo 'keep me' >data/kept.log
    echo 'base docs' >docs/readme.txt
    echo a >var/cache/app/a
    echo b >var/cache/app/b
)

# L2: the middle layer.
(
    cd "$layers/L2"
    mkdir -p etc app/bin app/deep/a/b/c usr/lib var/cache/app
    echo middle >etc/hostname
    echo '{"name": "demo"}' >app/config.json
    echo 'deleted in L3' >app/secret.txt
    printf '#!/bin/sh\necho running\n' >app/bin/run
    chmod 755 app/bin/run
    ln app/bin/run app/bin/run-hardlink
    echo 'deeply nested' >app/deep/a/b/c/file.txt
    ln -s libdemo.so.1 usr/lib/libdemo.so
    echo c >var/cache/app/c
)

# L3: the top layer, with the three whiteout/opaque formats.
(
    cd "$layers/L3"
    mkdir -p app data docs etc var/cache/app
    mknod app/secret.txt c 0 0
    : >data/.wh.old.log
    if ! setfattr -n trusted.overlay.opaque -v y var/cache/app 2>/dev/null; then
        # Not root: the unprivileged spelling, which fuse-overlayfs and rlayerfs read too.
        setfattr -n user.overlay.opaque -v y var/cache/app
    fi
    echo fresh >var/cache/app/fresh
    : >docs/.wh..wh..opq
    echo 'new docs' >docs/new.txt
    echo 'welcome to the demo' >etc/motd
)

if [ -z "${RLAYERFS_BIN:-}" ]; then
    log "building rlayerfs (cargo build --release)"
    (cd "$root" && cargo build --release)
fi
[ -x "$bin" ] || command -v "$bin" >/dev/null || die "$bin not found or not executable"

# rlayerfs takes a `mount` subcommand; fuse-overlayfs (for comparison) takes none.
case "$(basename "$bin")" in
    fuse-overlayfs*) subcommand=() ;;
    *) subcommand=(mount) ;;
esac
opts="lowerdir=$layers/L3:$layers/L2:$layers/L1,upperdir=$upper,workdir=$work"
cmd=("$bin" "${subcommand[@]}" -o "$opts" "$merged")
log "mounting: ${cmd[*]}"
"${cmd[@]}"

# Exit 0 should already mean "mounted"; allow a slow daemon a moment anyway.
for _ in $(seq 50); do
    is_mounted "$merged" && break
    sleep 0.1
done
is_mounted "$merged" || die "$bin returned but nothing is mounted at $merged"

log "ls -la $merged"
ls -la "$merged"
log "find $merged (mode, links, path)"
(cd "$merged" && find . -mindepth 1 \( -type l -printf '%M %2n  %P -> %l\n' \) -o -printf '%M %2n  %P\n' | sort -k3)

log "checks"
failed=0
check() {
    local what="$1"
    shift
    if "$@"; then
        printf '  ok    %s\n' "$what"
    else
        printf '  FAIL  %s\n' "$what"
        failed=1
    fi
}
# The predicates below are called through `check`.
# shellcheck disable=SC2317
absent() { [ ! -e "$merged/$1" ] && [ ! -L "$merged/$1" ]; }
# shellcheck disable=SC2317
content() { [ "$(cat "$merged/$1")" = "$2" ]; }
# shellcheck disable=SC2317
same_inode() { [ "$(stat -c %i "$merged/$1")" = "$(stat -c %i "$merged/$2")" ]; }
# shellcheck disable=SC2317
cache_opaque() { absent var/cache/app/a && absent var/cache/app/b && absent var/cache/app/c; }
# shellcheck disable=SC2317
no_wh_names() { [ -z "$(find "$merged" -name '.wh.*' -print -quit)" ]; }
# shellcheck disable=SC2317
link_target() { [ "$(readlink "$merged/$1")" = "$2" ]; }
check "etc/hostname comes from L2 (middle)" content etc/hostname middle
check "app/secret.txt hidden by a char 0/0 whiteout" absent app/secret.txt
check "data/old.log hidden by data/.wh.old.log" absent data/old.log
check "data/kept.log still visible" content data/kept.log 'keep me'
check "var/cache/app opaque: a, b (L1) and c (L2) hidden" cache_opaque
check "var/cache/app/fresh visible" content var/cache/app/fresh fresh
check "docs opaque by .wh..wh..opq: readme.txt hidden" absent docs/readme.txt
check "docs/new.txt visible" content docs/new.txt 'new docs'
check "no .wh. names visible" no_wh_names
check "symlink usr/lib/libdemo.so -> libdemo.so.1" link_target usr/lib/libdemo.so libdemo.so.1
check "symlink resolves" content usr/lib/libdemo.so 'library v1'
check "app/bin/run and run-hardlink are one inode" same_inode app/bin/run app/bin/run-hardlink
check "nested app/deep/a/b/c/file.txt" content app/deep/a/b/c/file.txt 'deeply nested'

echo
echo "Mounted at $merged. Unmount with:"
echo "  fusermount3 -u $merged"
exit "$failed"
