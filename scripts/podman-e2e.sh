#!/usr/bin/env bash
# End-to-end test of rlayerfs as podman's overlay `mount_program` (rootful), and a timing mode
# that compares it with fuse-overlayfs and kernel overlayfs.
#
#   scripts/podman-e2e.sh [--bin PATH] [--variant rlayerfs|fuse-overlayfs|native] [--keep]
#   scripts/podman-e2e.sh --timings [--runs N] [--variants rlayerfs,fuse-overlayfs,native] [--bin PATH]
#   scripts/podman-e2e.sh --rootless [--bin PATH]          # rootless flow, see below
#
# Everything podman writes lives in one private temp directory: storage.conf and
# containers.conf are passed with CONTAINERS_STORAGE_CONF / CONTAINERS_CONF, and graphroot,
# runroot, tmp_dir, network_config_dir, volumes and the image copy tmp dir all point inside it,
# so nothing global changes. The base image is a busybox-static rootfs brought in with
# `podman import` (no registry); `podman build --network=none` adds layers on top of it.
#
# The e2e flow checks: the built image's content (adds, deletes of a lower file and of a lower
# directory, a directory replaced by a file, an append); a container that reads, writes and
# deletes lower files; `podman diff`; `podman commit`; the committed image's content; while a
# container runs, that a fuse.rlayerfs mount serves its root (/proc/PID/mounts and findmnt),
# and that SIGTERM to its daemon leaves it mounted and served (one daemon, exec works).
# `--variant` runs the same flow over fuse-overlayfs or kernel overlayfs (the reference: the
# expected results are those of kernel overlayfs).
#
# Cleanup (containers, images, `podman system reset` on the private storage, leftover mounts,
# the temp dir) runs on exit, failure or signal. Needs root; installs podman, netavark, runc,
# busybox-static and fuse-overlayfs with apt-get when missing.
#
# --bin PATH: the rlayerfs binary (default $RLAYERFS_BIN, else `cargo build --release` and
# ${CARGO_TARGET_DIR:-target}/release/rlayerfs). --keep: keep the temp dir (for debugging).
# RLAYERFS_E2E_LOG=1: mount through a wrapper that runs rlayerfs with `--log-level debug
# --log-file TMP/logs/rlayerfs-*.log` (kept with --keep). RLAYERFS_E2E_PODMAN_ARGS: extra global
# podman options (e.g. "--log-level=debug --syslog").
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive
ARGS=("$@")
cd "$(dirname "$0")/.."
REPO=$(pwd)

MODE=e2e
VARIANT=rlayerfs
VARIANTS=rlayerfs,fuse-overlayfs,native
RUNS=5
KEEP=0
BIN=${RLAYERFS_BIN:-}
while [ $# -gt 0 ]; do
    case "$1" in
        --timings) MODE=timings ;;
        --rootless) MODE=rootless ;;
        --runs) RUNS=$2; shift ;;
        --variant) VARIANT=$2; shift ;;
        --variants) VARIANTS=$2; shift ;;
        --bin) BIN=$2; shift ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

PODMAN_ARGS=${RLAYERFS_E2E_PODMAN_ARGS:-}
log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (rootful podman)"

if [ "$MODE" = rootless ]; then
    bash "$REPO/scripts/setup.sh" rootless >&2
else
    bash "$REPO/scripts/setup.sh" podman >&2
fi

if [ -z "$BIN" ]; then
    log "building rlayerfs (release)"
    cargo build --release --quiet
    BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/rlayerfs
fi
BIN=$(readlink -f "$BIN")
[ -x "$BIN" ] || die "rlayerfs binary not found: $BIN"

# Podman writes a few things outside graphroot/runroot whatever its configuration says: the
# image copy blob-info cache (/var/lib/containers/cache) and netavark's run dir
# (/run/containers/networks). Run in a private mount namespace with both bind-mounted from the
# temp dir, so nothing global changes. Propagation "slave": host mounts still show here, ours
# (the container roots) never leak out, and they vanish with the namespace at the latest.
if [ -z "${RLAYERFS_E2E_NS:-}" ]; then
    export RLAYERFS_E2E_NS=1 RLAYERFS_BIN=$BIN
    exec unshare --mount --propagation slave -- "$REPO/scripts/podman-e2e.sh" "${ARGS[@]}"
fi
# The namespace starts with copies of the overlay and FUSE mounts other programs (tests,
# containers) had at that moment. Where the host's root is private (no systemd) their
# unmounts do not reach these copies, which would keep those filesystems and their FUSE
# daemons alive until we exit: drop them now (lazily; none of them is ours yet).
findmnt -rn -o TARGET,FSTYPE | while read -r target fstype; do
    case "$fstype" in
        overlay | fuse | fuse.*) umount -l "$(printf '%b' "$target")" 2>/dev/null || true ;;
    esac
done

# ---------------------------------------------------------------------------------------------
# Private podman environments. One "env" = one directory holding its storage and configs.

# Short: podman's exit command (`podman container cleanup`, run by conmon when a container
# exits) gets --runroot on its command line and refuses one longer than 50 characters; the
# container then stays "stopped" and `podman run --rm` waits 20 s for a cleanup that never comes.
TOP=$(mktemp -d /var/tmp/rlpm.XXXXXX)
chmod 0755 "$TOP"
for d in /var/lib/containers /run/containers; do
    mkdir -p "$d" "$TOP/global$d"
    mount --bind "$TOP/global$d" "$d"
done
ENVS=()
LOOPDEV=
RL_USER=   # the unprivileged user podman runs as, in --rootless mode
FUSE_MODE= # the mode /dev/fuse had before --rootless opened it to users

# Writes storage.conf/containers.conf for env dir $1 with mount program $2 ("" = native).
make_env() {
    local dir=$1 program=$2
    [ "${#dir}" -le 46 ] || die "runroot $dir/run is longer than podman's 50 characters"
    mkdir -p "$dir"/{graph,run,tmp,net,bigtmp}
    {
        printf '[storage]\ndriver = "overlay"\n'
        printf 'graphroot = "%s/graph"\nrunroot = "%s/run"\n' "$dir" "$dir"
        [ -z "$RL_USER" ] || printf 'rootless_storage_path = "%s/graph"\n' "$dir"
        printf '[storage.options.overlay]\n'
        [ -n "$program" ] && printf 'mount_program = "%s"\n' "$program"
        true
    } >"$dir/storage.conf"
    cat >"$dir/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"
log_driver = "k8s-file"

[network]
network_backend = "netavark"
network_config_dir = "$dir/net"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$dir/tmp"
static_dir = "$dir/graph/libpod"
volume_path = "$dir/graph/volumes"
image_copy_tmp_dir = "$dir/bigtmp"
EOF
    if [ -n "$RL_USER" ]; then
        mkdir -m 0700 "$dir/xdg"
        chown -R "$RL_USER:" "$dir"
    fi
    ENVS+=("$dir")
}

# Runs podman in env dir $1 (the remaining arguments are podman's), as $RL_USER if set.
pm() {
    local dir=$1
    shift
    in_env "$dir" podman $PODMAN_ARGS "$@"
}

# Runs a command with env dir $1's podman environment (as $RL_USER in --rootless mode).
in_env() {
    local dir=$1
    shift
    local as=()
    [ -z "$RL_USER" ] || as=(runuser -u "$RL_USER" -- env HOME="$TOP/home" XDG_RUNTIME_DIR="$dir/xdg")
    "${as[@]}" env CONTAINERS_STORAGE_CONF="$dir/storage.conf" CONTAINERS_CONF="$dir/containers.conf" \
        TMPDIR="$dir/bigtmp" "$@"
}

# Runs a command where podman's mounts are visible: the host (rootful), or podman's user and
# mount namespace (`podman unshare`, rootless), with env $1's podman environment.
in_podman_ns() {
    local dir=$1
    shift
    if [ -n "$RL_USER" ]; then
        pm "$dir" unshare "$@"
    else
        in_env "$dir" "$@"
    fi
}

# Unmounts every mount below $1, deepest first.
unmount_below() {
    local m
    while read -r m; do
        [ -n "$m" ] || continue
        umount "$m" 2>/dev/null || fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(awk -v top="$1" 'index($5, top) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    for dir in "${ENVS[@]}"; do
        [ -f "$dir/storage.conf" ] || continue
        pm "$dir" rm -af -t 0 >/dev/null 2>&1
        pm "$dir" system reset --force >/dev/null 2>&1
    done
    [ -z "$RL_USER" ] || remove_user
    [ -z "$FUSE_MODE" ] || chmod "$FUSE_MODE" /dev/fuse
    unmount_below "$TOP"
    umount /var/lib/containers /run/containers 2>/dev/null
    if [ -n "$LOOPDEV" ]; then
        umount "$TOP/fs" 2>/dev/null || umount -l "$TOP/fs" 2>/dev/null
        losetup -d "$LOOPDEV" 2>/dev/null
    fi
    if [ "$KEEP" = 1 ]; then
        log "kept $TOP"
    else
        rm -rf "$TOP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The mount program for a variant.
program_for() {
    case "$1" in
        rlayerfs)
            if [ "${RLAYERFS_E2E_LOG:-0}" = 1 ]; then
                # A wrapper that logs each mount_program invocation and runs rlayerfs with
                # debug logging: the first place to look when podman reports a mount error.
                mkdir -p -m 1777 "$TOP/logs"
                cat >"$TOP/rlayerfs-logged" <<EOF
#!/bin/sh
n=\$(date +%s%N)
printf '%s uid=%s cwd=%s\n' "\$*" "\$(id -u)" "\$(pwd)" >>"$TOP/logs/mount-program.log"
exec "$BIN" --log-level debug --log-file "$TOP/logs/rlayerfs-\$n.log" "\$@"
EOF
                chmod +x "$TOP/rlayerfs-logged"
                echo "$TOP/rlayerfs-logged"
            else
                echo "$BIN"
            fi
            ;;
        fuse-overlayfs) command -v fuse-overlayfs ;;
        native) echo "" ;;
        *) die "unknown variant $1" ;;
    esac
}

# The mount serving the container root, as "FSTYPE SOURCE" of /proc/mounts (an ERE).
mount_re_for() {
    case "$1" in
        rlayerfs) echo '^fuse\.rlayerfs rlayerfs$' ;;
        fuse-overlayfs) echo '^fuse\.fuse-overlayfs fuse-overlayfs$' ;;
        native) echo '^overlay overlay$' ;;
    esac
}

# Builds the busybox rootfs tarball of the base image into $1.
make_base_tar() {
    local out=$1 root
    root=$(mktemp -d "$TOP/rootfs.XXXXXX")
    mkdir -p "$root"/{bin,etc,tmp,root,proc,sys,dev}
    chmod 1777 "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    # busybox --install needs /proc/self/exe inside the chroot: list applets and link them.
    local a
    for a in $("$root/bin/busybox" --list); do
        [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    # Lower content the tests read, change and delete.
    mkdir -p "$root"/data/{deldir/sub,dir2file,rundir/sub,keepdir}
    echo base >"$root/data/keep.txt"
    echo base >"$root/data/del.txt"
    echo base >"$root/data/modify.txt"
    echo base >"$root/data/rundel.txt"
    echo base >"$root/data/runmod.txt"
    echo base >"$root/data/deldir/a"
    echo base >"$root/data/deldir/sub/b"
    echo base >"$root/data/dir2file/x"
    echo base >"$root/data/rundir/a"
    echo base >"$root/data/rundir/sub/b"
    echo base >"$root/data/keepdir/k"
    chmod 0640 "$root/data/keep.txt"
    ln -s keep.txt "$root/data/link"
    ln "$root/data/keep.txt" "$root/data/hardlink"
    tar -C "$root" --numeric-owner -cf "$out" .
    rm -rf "$root"
}

# A build context in $1 whose Containerfile adds 5 layers on the base image: add files, delete a
# lower file and a lower directory, replace a lower directory by a file, append to a lower file,
# COPY from the context.
make_containerfile() {
    mkdir -p "$1"
    echo hello >"$1/hello.txt"
    cat >"$1/Containerfile" <<'CONTAINERFILE'
FROM localhost/rlayerfs-e2e-base:latest
RUN echo added > /data/added.txt && mkdir -p /data/newdir && echo n > /data/newdir/n
RUN rm /data/del.txt && rm -rf /data/deldir
RUN rm -rf /data/dir2file && echo nowfile > /data/dir2file
RUN echo appended >> /data/modify.txt
COPY hello.txt /data/hello.txt
CONTAINERFILE
}

# ---------------------------------------------------------------------------------------------
# The e2e flow.

check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    local out
    if out=$("$@" 2>&1); then
        printf 'ok   %s\n' "$what"
    else
        printf 'FAIL %s\n' "$what"
        [ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/     | /'
        FAILED=$((FAILED + 1))
    fi
}
FAILED=0

# Like check, but stop the flow on failure (later steps need this one).
must() {
    local before=$FAILED
    check "$@"
    [ "$FAILED" = "$before" ] || { printf 'FAILED: stopping after "%s"\n' "$1"; exit 1; }
}

# Expected content of the built image (checked inside a container, by busybox sh).
BUILT_CHECKS='
set -ex
test "$(cat /data/keep.txt)" = base
test "$(cat /data/link)" = base
test "$(stat -c %a /data/keep.txt)" = 640
test "$(stat -c %i /data/keep.txt)" = "$(stat -c %i /data/hardlink)"
test "$(cat /data/added.txt)" = added
test "$(cat /data/newdir/n)" = n
test ! -e /data/del.txt
test ! -e /data/deldir
test -f /data/dir2file
test "$(cat /data/dir2file)" = nowfile
test "$(cat /data/modify.txt)" = "base
appended"
test "$(cat /data/hello.txt)" = hello
test "$(ls /data/keepdir)" = k
test -z "$(ls -a /data | grep "^\.wh\.")"
'

# What the "work" container does: read, write and delete lower files and directories.
WORK_SCRIPT='
set -ex
test "$(cat /data/keep.txt)" = base
echo changed >/data/runmod.txt
echo new >/data/runnew.txt
rm /data/rundel.txt
rm -rf /data/rundir
mkdir /data/rundir
echo fresh >/data/rundir/fresh
rm /data/added.txt
echo more >>/data/keepdir/k
mkdir -p /newtop/x && echo y >/newtop/x/y
'

# Expected content of the committed image (and of the stopped work container).
COMMITTED_CHECKS='
set -ex
test "$(cat /data/runmod.txt)" = changed
test "$(cat /data/runnew.txt)" = new
test ! -e /data/rundel.txt
test ! -e /data/added.txt
test "$(ls -A /data/rundir)" = fresh
test "$(cat /data/rundir/fresh)" = fresh
test "$(cat /data/keepdir/k)" = "base
more"
test "$(cat /newtop/x/y)" = y
test "$(cat /data/keep.txt)" = base
test ! -e /data/del.txt
test ! -e /data/deldir
test "$(cat /data/dir2file)" = nowfile
test -z "$(ls -a /data /data/rundir | grep "^\.wh\.")"
'

# `podman diff` of the work container, sorted, as kernel overlayfs gives it.
# Without a mount program containers/storage reads the upper directly (native diff): `C /etc`
# because podman creates /etc/hosts and /etc/resolv.conf as bind-mount targets (it hides the
# files themselves); `D /data/rundir` because a deleted and recreated directory is opaque.
EXPECTED_DIFF_NATIVE='A /data/rundir/fresh
A /data/runnew.txt
A /newtop
A /newtop/x
A /newtop/x/y
C /data
C /data/keepdir/k
C /data/runmod.txt
C /etc
D /data/added.txt
D /data/rundel.txt
D /data/rundir'
# With a mount program containers/storage uses its "naive" diff: it mounts the container and
# its image through the mount program and compares the two trees (type, mode, owner, size,
# mtime). The recreated /data/rundir is then "changed", with its old children deleted. The
# naive diff also reports every directory that holds a change as changed itself
# (pkg/archive/changes.go: "If there were changes inside this directory, we need to add
# it"), so /data/keepdir is listed for /data/keepdir/k; its own mtime is checked unchanged
# separately below.
EXPECTED_DIFF_NAIVE='A /data/rundir/fresh
A /data/runnew.txt
A /newtop
A /newtop/x
A /newtop/x/y
C /data
C /data/keepdir
C /data/keepdir/k
C /data/rundir
C /data/runmod.txt
C /etc
D /data/added.txt
D /data/rundel.txt
D /data/rundir/a
D /data/rundir/sub'


# True when a running process of $BIN was started with mountpoint $1.
daemon_serves() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/exe" 2>/dev/null)" = "$BIN" ] || continue
        tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qxF "$1" && return 0
    done
    return 1
}

# Pids of the running $BIN processes started with mountpoint $1.
daemon_pids() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/exe" 2>/dev/null)" = "$BIN" ] || continue
        tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qxF "$1" && echo "${p#/proc/}"
    done
}

# SIGTERM to the daemon serving running container "live" (merged dir $2) while the container
# writes: the busy mount stays in the table and served, `podman diff` (which mounts the
# container again) starts no second daemon on its upper, `podman exec` still works and sees
# every write.
sigterm_live_ok() {
    local env=$1 merged=$2 pids n
    pids=$(daemon_pids "$merged")
    [ "$(printf '%s\n' "$pids" | grep -c .)" = 1 ] || { echo "daemons: $pids"; return 1; }
    pm "$env" exec -d live sh -c 'i=0; while [ $i -lt 100 ]; do echo $i >>/sigterm.log; i=$((i + 1)); sleep 0.02; done' || return 1
    kill -TERM "$pids"
    sleep 1
    mount_points "$env" | grep -qxF "$merged" || { echo "merged no longer a mount after SIGTERM"; return 1; }
    kill -0 "$pids" || { echo "daemon $pids exited while the container runs"; return 1; }
    pm "$env" diff live | grep -qxF 'A /sigterm.log' || { echo "podman diff misses /sigterm.log"; return 1; }
    n=$(daemon_pids "$merged" | grep -c .)
    [ "$n" = 1 ] || { echo "$n daemons serve $merged after podman diff"; return 1; }
    sleep 2
    n=$(pm "$env" exec live sh -c 'wc -l </sigterm.log') || { echo "podman exec failed"; return 1; }
    [ "$n" = 100 ] || { echo "/sigterm.log has $n lines, want 100"; return 1; }
}

# Mount points as podman sees them (env $1).
mount_points() { in_podman_ns "$1" cat /proc/self/mountinfo | awk '{ print $5 }'; }
no_mount_at() { ! mount_points "$1" | grep -qxF "$2"; }
no_mount_below() {
    local left
    # Container roots (fuse*, overlay) only: containers/storage keeps its own private bind
    # mount of graph/overlay on itself, in rootless mode in the pause process's namespace.
    left=$(in_podman_ns "$1" cat /proc/self/mountinfo |
        awk -v top="$1" 'index($5, top) == 1 { for (i = 7; $i != "-"; i++); if ($(i + 1) ~ /^(fuse|overlay)/) print }')
    [ -z "$left" ] || { printf '%s\n' "$left"; return 1; }
}

# `podman mount` of stopped container $1 (through the mount program), checks of its content
# through that mount, `podman unmount`. Run by `bash -c` where podman's mounts are visible.
MOUNTED_WORK_CHECKS='
set -ex
mnt=$(podman $PODMAN_ARGS mount "$1")
test "$(cat "$mnt/data/runmod.txt")" = changed
test "$(cat "$mnt/data/runnew.txt")" = new
test ! -e "$mnt/data/rundel.txt"
test "$(ls -A "$mnt/data/rundir")" = fresh
test "$(cat "$mnt/data/keep.txt")" = base
test ! -e "$mnt/data/del.txt"
podman $PODMAN_ARGS unmount "$1"
! awk "{ print \$5 }" /proc/self/mountinfo | grep -qxF "$mnt"
'

mounted_work_ok() {
    in_podman_ns "$1" env PODMAN_ARGS="$PODMAN_ARGS" bash -c "$MOUNTED_WORK_CHECKS" _ "$2"
}

fresh_diff_empty() {
    local env=$1 ctr out
    ctr=$(pm "$env" create --pull=never "$2" true) || return 1
    out=$(pm "$env" diff "$ctr") || return 1
    pm "$env" rm "$ctr" >/dev/null || return 1
    [ -z "$out" ] || { printf '%s\n' "$out"; return 1; }
}

uidmap_ok() { # uidmap_ok ENV IMAGE MAPPING
    local out
    out=$(pm "$1" run --pull=never --rm --uidmap "$3" --gidmap "$3" "$2" \
        sh -c 'touch /data/x && stat -c %u:%g /data/keep.txt /data/x' 2>&1) &&
        [ "$(printf '%s' "$out" | tr '\n' ' ')" = "0:0 0:0" ] || { printf '%s\n' "$out"; return 1; }
}

remove_all() {
    pm "$1" rm -a -f -t 0 >/dev/null && pm "$1" rmi -a -f >/dev/null
}

# Podman inside a privileged container of env $1 (image $2, the base with the host's /usr
# bind-mounted read-only for podman and runc), keeping its storage in the container's root
# with the native overlay driver: kernel overlayfs with its upper in that root. Checks
# that the container root is served by rlayerfs, that the inner podman uses native
# overlay, that an inner container deletes a lower file, replaces a lower directory and
# appends to a lower file, and that its diff and commit are right.
# `podman container diff` of a name that is not hex: `podman diff NAME` looks for an image
# first, and a NAME that begins an image ID (one in 16 for "c") gives that image's diff.
nested_podman_ok() {
    local env=$1 img=$2 out raw want
    cat >"$TOP/nested.sh" <<'NESTED'
set -e
export PATH=/usr/bin:/usr/sbin:/bin
mkdir -p /etc/containers /var/lib/containers /run/containers /var/tmp
echo '{"default":[{"type":"insecureAcceptAnything"}]}' > /etc/containers/policy.json
printf '[storage]\ndriver = "overlay"\ngraphroot = "/var/lib/containers/storage"\nrunroot = "/run/containers/storage"\n' > /tmp/storage.conf
printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\nnetns = "none"\nlog_driver = "k8s-file"\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n' > /tmp/containers.conf
export CONTAINERS_STORAGE_CONF=/tmp/storage.conf CONTAINERS_CONF=/tmp/containers.conf
echo "root $(awk '$2 == "/" { print $3 }' /proc/self/mounts | tail -1)"
podman import --quiet /base.tar localhost/inner >/dev/null
podman info --format 'driver {{.Store.GraphDriverName}} native {{index .Store.GraphStatus "Native Overlay Diff"}}'
podman run --name inner-work --network none localhost/inner sh -c \
    'rm /data/del.txt; rm -r /data/deldir; mkdir /data/deldir; echo new > /data/deldir/n; echo more >> /data/modify.txt; awk "\$2 == \"/\" { print \"inner root \" \$3 }" /proc/self/mounts'
podman container diff inner-work | grep /data | sort | tr '\n' ' '; echo
podman commit --quiet inner-work localhost/inner2 >/dev/null
podman run --rm --network none localhost/inner2 sh -c 'ls /data /data/deldir | tr "\n" " "; cat /data/modify.txt | tr "\n" " "'
echo
NESTED
    raw=$(pm "$env" run --pull=never --rm --privileged --network none -v /usr:/usr:ro \
        -v "$TOP/base.tar:/base.tar:ro" -v "$TOP/nested.sh:/nested.sh:ro" "$img" sh /nested.sh 2>&1)
    out=$(printf '%s\n' "$raw" | grep -v 'level=warning')
    # The diff and the committed content are what the same flow gives with its storage on
    # ext4 (the replaced directory shows as deleted, opaque, with its new entry added).
    want='root fuse.rlayerfs
driver overlay native true
inner root overlay
A /data/deldir/n C /data C /data/modify.txt D /data/del.txt D /data/deldir 
/data: deldir dir2file hardlink keep.txt keepdir link modify.txt rundel.txt rundir runmod.txt  /data/deldir: n base more '
    # On a mismatch the warnings too (podman says there why it falls back to a naive diff).
    [ "$out" = "$want" ] || {
        printf 'got:\n%s\nwant:\n%s\nwith warnings:\n%s\n' "$out" "$want" "$raw"
        return 1
    }
}

e2e() {
    local variant=$1 env program img=localhost/rlayerfs-e2e
    env=$TOP/$variant
    program=$(program_for "$variant")
    make_env "$env" "$program"
    log "variant $variant, mount_program=${program:-(kernel overlay)}, storage in $env"

    make_base_tar "$TOP/base.tar"
    must "podman import of the busybox rootfs" \
        pm "$env" import --quiet "$TOP/base.tar" "$img-base:latest"

    local ctx=$TOP/ctx
    make_containerfile "$ctx"
    must "podman build (5 layers over the base)" \
        pm "$env" build --quiet --pull=never --network=none --layers -f "$ctx/Containerfile" -t "$img-built:latest" "$ctx"
    check "built image has 6 layers" \
        test "$(pm "$env" image inspect --format '{{len .RootFS.Layers}}' "$img-built:latest")" = 6
    check "built image content (adds, deletes, dir->file, append)" \
        pm "$env" run --pull=never --rm "$img-built:latest" sh -c "$BUILT_CHECKS"
    if [ -z "$RL_USER" ]; then
        # With a mount program, containers/storage 1.43 on a kernel with idmapped mounts shifts
        # the lowers itself (an idmapped bind mount under LAYER/mapped/) AND passes
        # uidmapping=/gidmapping= to the mount program: the program must not shift them again
        # (it maps the upper, which is not idmapped).
        check "podman run --uidmap 0:100000:65536: lower files owned by container root, writes work" \
            uidmap_ok "$env" "$img-built:latest" 0:100000:65536
    else
        # Rootless: no idmapped mounts; containers/storage passes uidmapping=0:1:65536 and the
        # mount program shows the unshifted layers' ids shifted (ids of podman's namespace).
        check "podman run --uidmap 0:1:65536 (rootless): lower files owned by container root, writes work" \
            uidmap_ok "$env" "$img-built:latest" 0:1:65536
    fi
    local keepdir_mtime
    keepdir_mtime=$(pm "$env" run --pull=never --rm "$img-built:latest" stat -c %Y /data/keepdir)

    # The container root is served by the mount program while the container runs.
    local want pid merged
    want=$(mount_re_for "$variant")
    must "podman run -d" pm "$env" run --pull=never -d --name live "$img-built:latest" sleep 600
    pid=$(pm "$env" inspect --format '{{.State.Pid}}' live)
    merged=$(pm "$env" inspect --format '{{.GraphDriver.Data.MergedDir}}' live)
    printf '     container root: %s\n' "$(awk '$2 == "/" { print $3, $1 }' "/proc/$pid/mounts")"
    check "/proc/$pid/mounts: / is served by $variant" \
        grep -Eq "$want" <(awk '$2 == "/" { print $3, $1 }' "/proc/$pid/mounts")
    check "findmnt: the merged dir is served by $variant" \
        grep -Eq "$want" <(in_podman_ns "$env" findmnt -n -o FSTYPE,SOURCE --mountpoint "$merged" | tr -s ' ')
    check "inside the container: / is served by $variant" \
        grep -Eq "$want" <(pm "$env" exec live awk '$2 == "/" { print $3, $1 }' /proc/self/mounts)
    if [ "$variant" = rlayerfs ]; then
        check "a $BIN daemon serves the merged dir" daemon_serves "$merged"
        check "SIGTERM to the daemon while the container writes: still mounted and served, one daemon after podman diff, exec works" \
            sigterm_live_ok "$env" "$merged"
    fi
    check "podman rm -f live" pm "$env" rm -f -t 0 live
    check "no mount left at $merged" no_mount_at "$env" "$merged"

    must "work container: read, write, delete lower files" \
        pm "$env" run --pull=never --name work "$img-built:latest" sh -c "$WORK_SCRIPT"
    local diff expected=$EXPECTED_DIFF_NAIVE
    [ "$variant" = native ] && expected=$EXPECTED_DIFF_NATIVE
    diff=$(pm "$env" diff work | LC_ALL=C sort)
    if [ "$diff" = "$expected" ]; then
        printf 'ok   podman diff\n'
    else
        printf 'FAIL podman diff (< expected, > got)\n'
        command diff <(printf '%s\n' "$expected") <(printf '%s\n' "$diff") | grep '^[<>]' | sed 's/^/     | /' || true
        FAILED=$((FAILED + 1))
    fi
    check "podman mount of the stopped work container shows its changes" \
        mounted_work_ok "$env" work
    must "podman commit" pm "$env" commit --quiet work "$img-committed:latest"
    check "committed image has 7 layers" \
        test "$(pm "$env" image inspect --format '{{len .RootFS.Layers}}' "$img-committed:latest")" = 7
    check "committed image content" \
        pm "$env" run --pull=never --rm "$img-committed:latest" sh -c "$COMMITTED_CHECKS"
    local committed_mtime
    committed_mtime=$(pm "$env" run --pull=never --rm "$img-committed:latest" stat -c %Y /data/keepdir)
    check "copy-up of /data/keepdir/k kept the mtime of /data/keepdir ($keepdir_mtime -> $committed_mtime)" \
        test "$committed_mtime" = "$keepdir_mtime"
    check "podman diff of a fresh container of the committed image is empty" \
        fresh_diff_empty "$env" "$img-committed:latest"
    # Rootful only: rootless, the inner podman's native overlay works too, but runc cannot
    # make the inner container's cgroup there (and no cgroups needs crun).
    if [ "$variant" = rlayerfs ] && [ -z "$RL_USER" ]; then
        # The host's /usr provides podman; the loader and libraries are reached through it.
        printf 'FROM %s\nRUN ln -s usr/lib /lib && ln -s usr/lib64 /lib64 && ln -s usr/sbin /sbin\n' \
            "$img-base:latest" >"$ctx/Nested"
        must "podman build of the nesting image" \
            pm "$env" build --quiet --pull=never --network=none -f "$ctx/Nested" -t "$img-nested:latest" "$ctx"
        check "podman inside a container whose root is rlayerfs (native overlay storage there): run, diff, commit" \
            nested_podman_ok "$env" "$img-nested:latest"
    fi
    check "podman rm -a; podman rmi -a" remove_all "$env"
    check "no container root left mounted below $env" no_mount_below "$env"

    if [ "$FAILED" -gt 0 ]; then
        printf 'FAILED: %d check(s) (variant %s)\n' "$FAILED" "$variant"
        return 1
    fi
    printf 'PASS: podman e2e over %s\n' "$variant"
}

# ---------------------------------------------------------------------------------------------
# Timings: `podman run --rm IMG true` and `podman commit` of a container that changed lower
# files, per variant, interleaved (the order rotates every round), unpinned and pinned to CPU 0
# (podman, conmon, runc and the mount program all inherit the affinity). Storage is on a
# loop-mounted ext4 image with a journal: the root fs here is ext4 without one, where every
# create scans the inodes the previous run deleted, so write timings on it mean nothing.

now_ns() { date +%s%N; }

median() {
    sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# The container change that `podman commit` then writes as a layer: 100 new 64 KiB files, a
# changed lower file, a deleted lower directory.
COMMIT_WORK='set -e
i=0
while [ $i -lt 100 ]; do head -c 65536 /dev/urandom >/data/new$i; i=$((i + 1)); done
echo changed >>/data/keep.txt
rm -rf /data/keepdir'

# Runs podman in env $2, pinned to CPU 0 when $1 is "pinned".
pm_pin() {
    local pin=$1 dir=$2
    shift 2
    local pre=()
    [ "$pin" = pinned ] && pre=(taskset -c 0)
    "${pre[@]}" env CONTAINERS_STORAGE_CONF="$dir/storage.conf" CONTAINERS_CONF="$dir/containers.conf" \
        TMPDIR="$dir/bigtmp" podman $PODMAN_ARGS "$@"
}

timings() {
    local variants v env round pin t0 t1
    IFS=, read -r -a variants <<<"$VARIANTS"
    local img=localhost/rlayerfs-e2e-built:latest
    command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 missing (e2fsprogs)"
    truncate -s 4G "$TOP/fs.img"
    mkfs.ext4 -q -F "$TOP/fs.img"
    mkdir -p "$TOP/fs"
    LOOPDEV=$(losetup -f --show "$TOP/fs.img")
    mount "$LOOPDEV" "$TOP/fs"
    make_base_tar "$TOP/base.tar"
    make_containerfile "$TOP/ctx"
    for v in "${variants[@]}"; do
        env=$TOP/fs/$v
        make_env "$env" "$(program_for "$v")"
        pm "$env" import --quiet "$TOP/base.tar" localhost/rlayerfs-e2e-base:latest >/dev/null
        pm "$env" build --quiet --pull=never --network=none -f "$TOP/ctx/Containerfile" \
            -t "$img" "$TOP/ctx" >/dev/null || die "podman build failed over $v"
        pm "$env" run --pull=never --rm "$img" true || die "podman run failed over $v"
    done
    log "timing $RUNS rounds over ${variants[*]} (image: 6 layers, busybox)"
    local n=${#variants[@]} i k
    for ((round = 0; round < RUNS; round++)); do
        for pin in unpinned pinned; do
            for ((k = 0; k < n; k++)); do
                i=$(((round + k) % n))
                v=${variants[$i]}
                env=$TOP/fs/$v
                t0=$(now_ns)
                pm_pin "$pin" "$env" run --pull=never --rm "$img" true
                t1=$(now_ns)
                echo $(((t1 - t0) / 1000000)) >>"$TOP/t.run.$v.$pin"
                pm_pin "$pin" "$env" run --pull=never --name tc "$img" sh -c "$COMMIT_WORK"
                t0=$(now_ns)
                pm_pin "$pin" "$env" commit --quiet tc localhost/tc:latest >/dev/null
                t1=$(now_ns)
                echo $(((t1 - t0) / 1000000)) >>"$TOP/t.commit.$v.$pin"
                pm "$env" rm -f -t 0 tc >/dev/null
                pm "$env" rmi -f localhost/tc:latest >/dev/null
            done
        done
    done
    printf '\nmedians of %d runs, milliseconds (ratio to the first variant)\n' "$RUNS"
    printf '%-40s' ""
    for v in "${variants[@]}"; do printf ' %22s' "$v"; done
    printf '\n'
    local op label m first
    for op in run commit; do
        label="podman run --rm IMG true"
        [ "$op" = commit ] && label="podman commit (6.4 MB change)"
        for pin in unpinned pinned; do
            printf '%-40s' "$label, $pin"
            first=
            for v in "${variants[@]}"; do
                m=$(median <"$TOP/t.$op.$v.$pin")
                [ -n "$first" ] || first=$m
                printf ' %22s' "$m ($(awk -v a="$m" -v b="$first" 'BEGIN { printf "%.2fx", a / b }'))"
            done
            printf '\n'
        done
    done
    printf '\nall samples (ms):\n'
    for f in "$TOP"/t.*; do printf '  %-32s %s\n' "${f##*/t.}" "$(tr '\n' ' ' <"$f")"; done
}

# ---------------------------------------------------------------------------------------------
# Rootless: the same e2e flow run by an unprivileged user with subordinate id ranges.
# Podman then runs rlayerfs inside its user namespace (uid 0 there, no capability on the host),
# where FUSE mounts are allowed; the mounts live in podman's mount namespace, so they are
# checked through `podman unshare`. The user (and its subuid/subgid ranges) is removed on exit.

RL_NAME=rlpm-e2e
RL_COMMENT="rlayerfs podman e2e (temporary)"

remove_user() {
    local p
    # Processes the test user runs are ours (podman's pause process, leftover daemons).
    for p in $(pgrep -u "$RL_USER" 2>/dev/null); do kill "$p" 2>/dev/null; done
    sleep 0.5
    for p in $(pgrep -u "$RL_USER" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    userdel "$RL_USER" 2>/dev/null
    sed -i "/^$RL_USER:/d" /etc/subuid /etc/subgid 2>/dev/null
}

# Picks a free subordinate id range start (65536 ids) above every range in use.
free_subid_start() {
    cat /etc/subuid /etc/subgid 2>/dev/null |
        awk -F: 'BEGIN { m = 1000000 } NF == 3 && $2 + $3 > m { m = $2 + $3 } END { print m }'
}

rootless() {
    if id "$RL_NAME" >/dev/null 2>&1; then
        [ "$(getent passwd "$RL_NAME" | cut -d: -f5)" = "$RL_COMMENT" ] ||
            die "user $RL_NAME exists and is not ours"
        RL_USER=$RL_NAME remove_user
    fi
    local start
    start=$(free_subid_start)
    useradd --comment "$RL_COMMENT" --home-dir "$TOP/home" --create-home --shell /bin/sh \
        --no-user-group --gid nogroup "$RL_NAME"
    RL_USER=$RL_NAME
    sed -i "/^$RL_USER:/d" /etc/subuid /etc/subgid 2>/dev/null || true
    usermod --add-subuids "$start-$((start + 65535))" --add-subgids "$start-$((start + 65535))" "$RL_USER"
    log "rootless as $RL_USER (uid $(id -u "$RL_USER"), subids $start-$((start + 65535)))"
    runuser -u "$RL_USER" -- test -x "$BIN" || die "$BIN is not executable by $RL_USER"
    # In podman's user namespace the mount program is uid 0 without host privileges: it opens
    # /dev/fuse itself and mounts with mount(2) (FUSE allows that in a user namespace); the
    # setuid fusermount3 does not help there (setuid is ignored when host root is not mapped).
    # Debian's default mode is 0666; some sandboxes have 0600, which makes every rootless FUSE
    # mount fail with EACCES (fuse-overlayfs too): open it up for the run, restore it on exit.
    if ! runuser -u "$RL_USER" -- test -r /dev/fuse -a -w /dev/fuse; then
        FUSE_MODE=$(stat -c %a /dev/fuse)
        log "/dev/fuse is mode $FUSE_MODE: chmod 0666 for the rootless run (restored on exit)"
        chmod 0666 /dev/fuse
    fi
    e2e rlayerfs
}

case "$MODE" in
    e2e) e2e "$VARIANT" ;;
    timings) timings ;;
    rootless) rootless ;;
esac
