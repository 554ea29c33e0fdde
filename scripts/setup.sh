#!/usr/bin/env bash
# Installs the system packages a job needs, only those missing, printing what it installs,
# and makes sure FUSE (and kernel overlayfs, the tests' reference) are available. The one
# place where the package lists live: scripts/demo.sh, scripts/test.sh, scripts/podman-e2e.sh
# and .ci/run all call it. Debian 12 (apt-get); needs root to install.
#
#   scripts/setup.sh [demo|test|podman|rootless]...   # install what is missing (default: test)
#   scripts/setup.sh --check [JOB]...                 # list what is missing; exit 1 if anything
#
# demo:     fuse3 (fusermount3), busybox-static (the demo image's shell)
# test:     demo's, plus attr (setfattr), fuse-overlayfs (reference implementation), acl
#           (setfacl), e2fsprogs (mkfs.ext4 for loop-mounted images), umoci, skopeo (image interop),
#           podman, netavark, runc (podman mount_program end to end), sqlite3 (the crash
#           test's WAL database), xfsprogs (xfs_io for mmap/time tests), util-linux (unshare),
#           man-db (man -l renders the generated man pages)
# podman:   podman, netavark (its network backend; not pulled in without recommends), runc,
#           busybox-static, fuse-overlayfs, fuse3
# rootless: podman's, plus uidmap (newuidmap for the rootless user)
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

check=false
jobs=()
for a in "$@"; do
    case "$a" in
        --check) check=true ;;
        demo | test | podman | rootless) jobs+=("$a") ;;
        -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup.sh: unknown job or option: $a (demo, test, podman, rootless, --check)" >&2; exit 2 ;;
    esac
done
[ "${#jobs[@]}" -gt 0 ] || jobs=(test)

packages_of() {
    case "$1" in
        demo) echo fuse3 busybox-static ;;
        test) echo fuse3 attr fuse-overlayfs acl e2fsprogs umoci skopeo busybox-static podman \
            netavark runc sqlite3 xfsprogs util-linux man-db ;;
        podman) echo podman netavark runc busybox-static fuse-overlayfs fuse3 ;;
        rootless) echo podman netavark runc busybox-static fuse-overlayfs fuse3 uidmap ;;
    esac
}

log() { printf '==> %s\n' "$*"; }

installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

wanted=()
for j in "${jobs[@]}"; do
    for p in $(packages_of "$j"); do
        case " ${wanted[*]} " in *" $p "*) ;; *) wanted+=("$p") ;; esac
    done
done
# kmod (modprobe) only when a module below is not loaded yet.
if [ ! -e /dev/fuse ] || ! grep -qw overlay /proc/filesystems; then
    wanted+=(kmod)
fi
missing=()
for p in "${wanted[@]}"; do
    installed "$p" || missing+=("$p")
done

if $check; then
    problems=("${missing[@]/#/package }")
    [ -e /dev/fuse ] || problems+=("/dev/fuse")
    if [ "${#problems[@]}" -gt 0 ]; then
        printf 'missing: %s\n' "${problems[@]}"
        exit 1
    fi
    log "nothing missing for: ${jobs[*]}"
    exit 0
fi

if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "setup.sh: missing ${missing[*]}; run as root to install them" >&2; exit 1; }
    log "installing missing packages: ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "system packages present: ${wanted[*]}"
fi

if [ ! -e /dev/fuse ] && [ "$(id -u)" = 0 ]; then
    log "/dev/fuse missing: modprobe fuse"
    modprobe fuse || true
    if [ ! -e /dev/fuse ] && grep -qw fuse /proc/filesystems; then
        # Built in or loaded, but no device node (a minimal /dev): make it (misc 10:229).
        log "creating /dev/fuse"
        mknod -m 0666 /dev/fuse c 10 229
    fi
fi
if [ ! -e /dev/fuse ]; then
    echo "setup.sh: /dev/fuse is not available and could not be created" >&2
    exit 1
fi
if ! grep -qw overlay /proc/filesystems && [ "$(id -u)" = 0 ]; then
    # Kernel overlayfs is the reference the differential tests compare against.
    log "loading the overlay module"
    modprobe overlay || log "warning: kernel overlayfs unavailable"
fi
