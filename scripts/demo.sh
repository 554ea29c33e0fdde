#!/usr/bin/env bash
# Demo: the image loop, image → container → commit → image, with rlayerfs alone, offline.
#
#   scripts/demo.sh [DIR]                        # DIR defaults to ./demo
#   RLAYERFS_BIN=/usr/local/bin/rlayerfs scripts/demo.sh   # an installed binary, no build
#
# 1. builds a three-layer image as an OCI layout with `rlayerfs commit` (busybox from the
#    busybox-static package and a few files; the third layer deletes a file of the second);
# 2. unpacks it (`rlayerfs unpack`) and mounts it as a container root with an upper
#    (`rlayerfs mount --image`);
# 3. runs a busybox shell inside (chroot) that changes, adds and deletes files;
# 4. commits the upper as a new tag of the OCI layout (`rlayerfs commit --image --tag`);
# 5. unpacks and mounts the new image, runs busybox in it and checks that the changes are
#    there, in the image and in the committed layer, and that the first image is unchanged.
# Each step is printed with the time since the start; the loop takes about a second. The
# script exits 1 if a check fails (CI runs it), leaves nothing mounted (also when it fails)
# and keeps its files in DIR:
#   DIR/build/{base,app,patch}   the trees the image's layers are made from
#   DIR/oci                      the OCI layout: tags demo:base, demo:app, demo:v1, demo:v2
#   DIR/v1, DIR/v2               demo:v1 and demo:v2 unpacked (layers/N, rlayerfs-image.json)
#   DIR/container/{upper,work,merged}   the container: its upper holds only what it changed
#   DIR/v2-root                  where demo:v2 is mounted for the checks
# Needs /dev/fuse; runs as root, or as a user who may open /dev/fuse (fusermount3 mounts, and
# chroot runs in a user namespace with `unshare -r`).
set -euo pipefail
umask 022

root="$(cd "$(dirname "$0")/.." && pwd)"
demo="${1:-./demo}"
mkdir -p "$demo"
demo="$(cd "$demo" && pwd)"
case "$demo" in *:*) echo "error: DIR must not contain ':' (it separates lowerdir layers)" >&2; exit 1 ;; esac
build="$demo/build"
oci="$demo/oci"
v1="$demo/v1"
v2="$demo/v2"
ctr="$demo/container"
v2root="$demo/v2-root"
mountpoints=("$ctr/merged" "$v2root")

default_bin="${CARGO_TARGET_DIR:-$root/target}/release/rlayerfs"
bin="${RLAYERFS_BIN:-$default_bin}"

start=$EPOCHREALTIME
elapsed() { awk -v s="$start" -v n="$EPOCHREALTIME" 'BEGIN { printf "%.2f", n - s }'; }
log() { printf '==> [%5s s] %s\n' "$(elapsed)" "$*"; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
# Runs a command, printing it first (indented output).
run() {
    printf '    $ %s\n' "$*"
    "$@" 2>&1 | sed 's/^/      /'
    return "${PIPESTATUS[0]}"
}

if [ "$(id -u)" = 0 ]; then
    bash "$root/scripts/setup.sh" demo
fi
for tool in fusermount3 busybox chroot mknod tar; do
    command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup.sh demo as root)"
done
busybox="$(command -v busybox)"
# The container has no libraries: its busybox must be the static one.
if ldd "$busybox" >/dev/null 2>&1; then
    die "$busybox is dynamically linked (apt-get install busybox-static)"
fi
[ -e /dev/fuse ] || die "/dev/fuse is missing (modprobe fuse, or run scripts/setup.sh demo as root)"
if [ "$(id -u)" = 0 ]; then
    in_root() { chroot "$@"; }
else
    [ -r /dev/fuse ] && [ -w /dev/fuse ] ||
        die "/dev/fuse is not usable by $(id -un) (run as root, or chmod 0666 /dev/fuse)"
    command -v unshare >/dev/null || die "unshare not found (util-linux), needed for chroot without root"
    in_root() { unshare -r chroot "$@"; }
fi

# Is anything mounted exactly at $1? (/proc/self/mountinfo field 5; works for a dead FUSE
# daemon too, where stat fails with ENOTCONN.)
is_mounted() {
    awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}
unmount() {
    local tries=0
    while is_mounted "$1"; do
        tries=$((tries + 1))
        [ "$tries" -le 5 ] || { echo "error: $1 is still mounted after 5 attempts" >&2; return 1; }
        fusermount3 -u "$1" 2>/dev/null || umount "$1" 2>/dev/null || sleep 0.2
    done
}
cleanup() {
    for m in "${mountpoints[@]}"; do
        unmount "$m" || true
    done
}
trap cleanup EXIT

if [ -z "${RLAYERFS_BIN:-}" ]; then
    log "building rlayerfs (cargo build --release; minutes the first time)"
    mkdir -p "$demo"
    if ! (cd "$root" && cargo build --release --quiet) 2>"$demo/build.log"; then
        cat "$demo/build.log" >&2
        die "cargo build failed"
    fi
    rm -f "$demo/build.log"
fi
[ -x "$bin" ] || command -v "$bin" >/dev/null || die "$bin not found or not executable"
start=$EPOCHREALTIME

# A mount left by an interrupted run goes first: the directories below are removed.
for m in "${mountpoints[@]}"; do
    unmount "$m" || die "cannot unmount $m"
done
rm -rf "$build" "$oci" "$v1" "$v2" "$ctr" "$v2root"

log "1. building the image's layers in $build"
mkdir -p "$build/base/bin" "$build/base/etc" "$build/base/root" "$build/base/tmp" \
    "$build/app/app/cache" "$build/app/etc" "$build/patch/app"
(
    cd "$build/base"
    cp "$busybox" bin/busybox
    for applet in $(bin/busybox --list); do
        [ "$applet" = busybox ] || ln -s busybox "bin/$applet"
    done
    chmod 1777 tmp
    echo 'root:x:0:0:root:/root:/bin/sh' >etc/passwd
    echo 'root:x:0:' >etc/group
    echo 'demo-base' >etc/hostname
    printf 'NAME="rlayerfs demo"\nID=demo\n' >etc/os-release
)
(
    cd "$build/app"
    echo 'hello from layer 2' >app/hello.txt
    echo v1 >app/version
    echo a >app/cache/a
    echo b >app/cache/b
    echo 'welcome to the demo image' >etc/motd
)
(
    cd "$build/patch"
    echo v2 >app/version
    mknod app/hello.txt c 0 0 # an overlay whiteout: layer 3 deletes layer 2's hello.txt
)
echo "    base: busybox and $(find "$build/base/bin" -type l | wc -l) applet links, /etc; app: /app, /etc/motd; patch: app/version, whiteout app/hello.txt"

log "2. committing the layers into the OCI layout $oci"
# An empty OCI layout, as `umoci init` makes it; each commit adds a layer and a tag.
mkdir -p "$oci/blobs/sha256"
echo '{"imageLayoutVersion":"1.0.0"}' >"$oci/oci-layout"
echo '{"schemaVersion":2,"manifests":[]}' >"$oci/index.json"
# Prints the new layer's digest and the new manifest (of what commit prints).
commit_layer() {
    printf '    $ %s\n' "$bin commit $*"
    "$bin" commit "$@" -q | awk '$1 == "digest:" || $1 == "manifest:" { print "      " $0 }'
    return "${PIPESTATUS[0]}"
}
commit_layer "$build/base" --image "$oci" --tag demo:base
commit_layer "$build/app" --image "$oci" --tag demo:app --from demo:base
commit_layer "$build/patch" --image "$oci" --tag demo:v1 --from demo:app

log "3. unpacking demo:v1 into $v1"
printf '    $ %s\n' "$bin unpack $oci $v1 --ref demo:v1 --print-lowerdir"
lowerdir="$("$bin" unpack "$oci" "$v1" --ref demo:v1 --print-lowerdir)"
echo "      lowerdir=$lowerdir"
lowers=()
IFS=: read -r -a layer_dirs <<<"$lowerdir"
for l in "${layer_dirs[@]}"; do lowers+=(--lower "$l"); done

log "4. mounting demo:v1 as a container root with an upper at $ctr/merged"
mkdir -p "$ctr/upper" "$ctr/work" "$ctr/merged"
run "$bin" mount --image "$v1" --upper "$ctr/upper" --work "$ctr/work" "$ctr/merged"
is_mounted "$ctr/merged" || die "nothing mounted at $ctr/merged"

log "5. running a shell in the container: change, add and delete files"
script='set -e
. /etc/os-release; echo "in $NAME, app version $(cat /app/version)"
echo "a line added in the container" >>/etc/motd
echo "written in the container" >/app/notes.txt
ln -s notes.txt /app/notes.link
mkdir /app/logs && echo "run 1" >/app/logs/run.log
chmod 600 /app/version
rm /etc/hostname
rm -r /app/cache
ls -l /app'
printf '    $ chroot %s /bin/sh -c ...\n' "$ctr/merged"
printf '%s\n' "$script" | sed 's/^/      # /'
if ! in_root "$ctr/merged" /bin/env -i PATH=/bin HOME=/root /bin/sh -c "$script" 2>&1 | sed 's/^/      /'; then
    die "the container's shell failed"
fi
unmount "$ctr/merged" || die "cannot unmount $ctr/merged"
echo "    unmounted; the upper holds only the changes:"
(cd "$ctr/upper" && find . -mindepth 1 \( -type c -printf '      %P (whiteout)\n' \) -o -printf '      %P\n' | sort)

log "6. committing the upper as demo:v2"
printf '    $ %s\n' "$bin commit $ctr/upper --image $oci --tag demo:v2 --from demo:v1 ${lowers[*]}"
commit_out="$("$bin" commit "$ctr/upper" --image "$oci" --tag demo:v2 --from demo:v1 "${lowers[@]}" -q)"
printf '%s\n' "$commit_out" | awk '$1 == "digest:" || $1 == "manifest:" { print "      " $0 }'
digest="$(printf '%s\n' "$commit_out" | awk '$1 == "digest:" { print $2 }')"
blob="$oci/blobs/sha256/${digest#sha256:}"

log "7. unpacking demo:v2 into $v2 and mounting it (read-only) at $v2root"
run "$bin" unpack "$oci" "$v2" --ref demo:v2
mkdir -p "$v2root"
run "$bin" mount --image "$v2" "$v2root"
is_mounted "$v2root" || die "nothing mounted at $v2root"
printf '    $ chroot %s /bin/cat /etc/motd /app/notes.txt\n' "$v2root"
in_root "$v2root" /bin/cat /etc/motd /app/notes.txt 2>&1 | sed 's/^/      /' || true

log "8. checks"
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
absent() { [ ! -e "$v2root/$1" ] && [ ! -L "$v2root/$1" ]; }
# shellcheck disable=SC2317
content() { [ "$(cat "$v2root/$1")" = "$2" ]; }
# shellcheck disable=SC2317
mode_of() { [ "$(stat -c %a "$v2root/$1")" = "$2" ]; }
# shellcheck disable=SC2317
link_target() { [ "$(readlink "$v2root/$1")" = "$2" ]; }
# shellcheck disable=SC2317
runs_in_v2() { [ "$(in_root "$v2root" /bin/cat /app/logs/run.log)" = "run 1" ]; }
# The committed layer's entries (read once: `tar | grep -q` would fail by SIGPIPE).
layer_entries="$(tar -tf "$blob")"
# shellcheck disable=SC2317
in_layer() { grep -qx "$1" <<<"$layer_entries"; }
# shellcheck disable=SC2317
not_in_layer() { ! grep -qx "$1" <<<"$layer_entries"; }
# shellcheck disable=SC2317
v1_unchanged() {
    [ "$(cat "$v1/layers/1/etc/motd")" = 'welcome to the demo image' ] &&
        [ -f "$v1/layers/0/etc/hostname" ] && [ -d "$v1/layers/1/app/cache" ] &&
        [ "$(stat -c %a "$v1/layers/2/app/version")" = 644 ]
}
# shellcheck disable=SC2317
v1_tag_kept() { grep -q '"demo:v1"' "$oci/index.json" && grep -q '"demo:v2"' "$oci/index.json"; }
# shellcheck disable=SC2317
v2_layers() { [ "$(find "$v2/layers" -mindepth 1 -maxdepth 1 -type d | wc -l)" = 4 ]; }
# shellcheck disable=SC2317
upper_is_small() { [ ! -e "$ctr/upper/bin" ] && [ ! -e "$ctr/upper/etc/passwd" ]; }
check "demo:v2: /etc/motd changed (the line added in the container)" \
    content etc/motd $'welcome to the demo image\na line added in the container'
check "demo:v2: /app/notes.txt added" content app/notes.txt 'written in the container'
check "demo:v2: /app/notes.link -> notes.txt added" link_target app/notes.link notes.txt
check "demo:v2: /app/logs/run.log added" content app/logs/run.log 'run 1'
check "demo:v2: /app/version chmod 600" mode_of app/version 600
check "demo:v2: /app/version reads v2" content app/version v2
check "demo:v2: /etc/hostname deleted" absent etc/hostname
check "demo:v2: /app/cache deleted (directory)" absent app/cache
check "demo:v2: /app/hello.txt still deleted by layer 3's whiteout" absent app/hello.txt
check "demo:v2: busybox runs in it" runs_in_v2
check "demo:v2 has 4 layers (demo:v1's 3 + the container's)" v2_layers
check "committed layer: whiteouts in OCI form (etc/.wh.hostname, app/.wh.cache)" \
    eval 'in_layer etc/.wh.hostname && in_layer app/.wh.cache'
check "committed layer: the added files (app/notes.txt, app/logs/run.log)" \
    eval 'in_layer app/notes.txt && in_layer app/logs/run.log'
check "committed layer: no unchanged file (no bin/busybox)" not_in_layer bin/busybox
check "the container's upper holds only the changes (no copy of /bin)" upper_is_small
check "demo:v1 unchanged (its layers, and its tag beside demo:v2)" eval 'v1_unchanged && v1_tag_kept'

unmount "$v2root" || die "cannot unmount $v2root"
loop="$(elapsed)"
# shellcheck disable=SC2317
nothing_mounted() {
    ! awk -v d="$demo/" 'index($5, d) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo
}
# shellcheck disable=SC2317
fast() { awk -v t="$loop" 'BEGIN { exit !(t < 10) }'; }
check "nothing left mounted under $demo" nothing_mounted
check "the loop took ${loop} s (under 10 s)" fast

echo
echo "Files in $demo: build/ (layer trees), oci/ (the OCI layout, tags demo:base, demo:app,"
echo "demo:v1, demo:v2), v1/ and v2/ (unpacked), container/upper (what the container changed)."
echo "Nothing is mounted. Mount the new image again with:"
echo "  $bin mount --image $v2 $v2root"
[ "$failed" = 0 ] || echo "some checks FAILED" >&2
exit "$failed"
