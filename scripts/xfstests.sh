#!/usr/bin/env bash
# Runs the same xfstests list on kernel overlayfs and on rlayerfs, each over loop-mounted
# ext4 images, and compares them test by test. Needs root, /dev/fuse and overlayfs.
#
#   scripts/xfstests.sh XFSTESTS_DIR [TESTS...]
#   scripts/xfstests.sh XFSTESTS_DIR --list     # print the default list
#
# XFSTESTS_DIR: a checkout of xfstests-dev (built here with make if ltp/fsstress is missing).
# It is copied to a temp dir and the copy is patched and run: the checkout is not changed.
# TESTS: xfstests names (generic/001 ...); default: the generic/ tests of the "quick"
# group minus those in any group needing a block device, device-mapper, quota or shutdown.
#
# - kernel overlayfs: `./check -overlay` with TEST_DEV/SCRATCH_DEV the ext4 loop devices
#   (xfstests derives OVL_BASE_TEST_DEV/DIR, OVL_BASE_SCRATCH_DEV/MNT from them and mounts
#   the base itself), OVERLAY_MOUNT_OPTIONS="-o index=on,redirect_dir=on,nfs_export=on".
#   nfs_export=on on both systems: without it both refuse file handles and the handle
#   tests do not run (with it the kernel turns its default metacopy off, as rlayerfs does).
# - rlayerfs: FSTYP=fuse FUSE_SUBTYP=.rlayerfs; TEST_DEV/SCRATCH_DEV are source names and
#   the mount options carry lowerdir/upperdir/workdir (and nfs_export=on) on ext4 bases
#   this script mounts.
#   Three hooks are appended to the copy's common/rc (after its definitions, so they
#   override them; local.config cannot, it is sourced before): _fs_type maps the mount
#   table type fuse.rlayerfs to fuse; _scratch_options adds the scratch layers
#   (lowerdir/upperdir/workdir) to every scratch mount, so a test that sets its own
#   MOUNT_OPTIONS (generic/607 sets it empty) still names the layers; and _scratch_mkfs
#   (FSTYP=fuse) recreates empty
#   lower/upper/work directories on the scratch base instead of `rm -rf` through the mount.
# - rlayerfs is built with `cargo build --release` and reached by mount(8) through
#   mount.fuse3, which finds it in /usr/local/bin: everything runs in a private mount
#   namespace where /usr/local/bin is replaced by a dir with the original entries plus
#   rlayerfs. Users fsgqa, fsgqa2, 123456-fsgqa are created if missing and removed on exit,
#   as are the loop devices, images and mounts. Logs and results stay in the printed dir.
#
# Prints `TEST kernel=pass|fail|notrun rlayerfs=pass|fail|notrun` per test, the counts and
# the tests that pass on the kernel only; exits 1 if any of those is not in ALLOW below.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
[ $# -ge 1 ] || { usage >&2; exit 2; }
case "$1" in -h | --help) usage; exit 0 ;; esac

# Tests the FUSE protocol cannot carry, each with the reason (passing on the kernel only
# is then not a failure). Only entries justified from the test's source: most need
# (_require_xfs_io_command) an operation the kernel's FUSE client never sends; the last
# group is what xfstests itself decides for FSTYP=fuse whatever the daemon does.
declare -A ALLOW=(
    [generic/614]="needs filefrag (FS_IOC_FIEMAP) to see delayed allocation; the VFS answers FIEMAP from inode_operations.fiemap, which FUSE has not"
    [generic/114]="direct I/O alignment: src/min_dio_alignment asks the block device or statx STATX_DIOALIGN, which fs/fuse does not fill, and falls back to the page size"
    [generic/240]="direct I/O alignment: src/min_dio_alignment asks the block device or statx STATX_DIOALIGN, which fs/fuse does not fill, and falls back to the page size"
    [generic/450]="direct I/O alignment: src/min_dio_alignment asks the block device or statx STATX_DIOALIGN, which fs/fuse does not fill, and falls back to the page size"
    [generic/538]="direct I/O alignment: src/min_dio_alignment asks the block device or statx STATX_DIOALIGN, which fs/fuse does not fill, and falls back to the page size"
    [generic/402]="xfstests' _filesystem_timestamp_range has no range for FSTYP=fuse, so the test does not run"
    [generic/020]="xfstests expects 1000 xattrs per file for FSTYP=fuse whatever the backing store; the ext4 upper holds about 100 (the kernel run is given ext4's limit)"
    [generic/424]="stx_attributes (append, immutable, nodump, compressed): fs/fuse fills a statx reply's basic fields and btime only, never its attributes"
    [generic/009]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
    [generic/012]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
    [generic/016]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
    [generic/021]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
    [generic/022]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
    [generic/031]="fuse_file_fallocate refuses FALLOC_FL_COLLAPSE_RANGE (EOPNOTSUPP) before any request"
    [generic/032]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
    [generic/058]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
    [generic/060]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
    [generic/061]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
    [generic/063]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
    [generic/064]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
    [generic/092]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
    [generic/094]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
    [generic/225]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
    [generic/255]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
    [generic/316]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
    [generic/404]="fuse_file_fallocate refuses FALLOC_FL_INSERT_RANGE (EOPNOTSUPP) before any request"
    [generic/425]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
    [generic/485]="fuse_file_fallocate refuses FALLOC_FL_INSERT_RANGE (EOPNOTSUPP) before any request"
    [generic/499]="fuse_file_fallocate refuses FALLOC_FL_COLLAPSE_RANGE (EOPNOTSUPP) before any request"
    [generic/503]="fuse_file_fallocate refuses FALLOC_FL_COLLAPSE_RANGE (EOPNOTSUPP) before any request"
    [generic/686]="fuse_file_fallocate refuses FALLOC_FL_INSERT_RANGE (EOPNOTSUPP) before any request"
    [generic/687]="fuse_file_fallocate refuses FALLOC_FL_COLLAPSE_RANGE (EOPNOTSUPP) before any request"
    [generic/742]="FS_IOC_FIEMAP is answered by the VFS from inode_operations.fiemap, which FUSE has not"
)

repo=$(cd "$(dirname "$0")/.." && pwd)
default_list() { # XFSTESTS_DIR (built: group.list is generated by make)
    awk '/^[0-9]/ && / quick( |$)/ {
            bad = 0
            for (i = 2; i <= NF; i++)
                if ($i ~ /^(blockdev|dm.*|quota|shutdown)$/) bad = 1
            if (!bad) print "generic/" $1
        }' "$1/tests/generic/group.list"
}
log() { printf '==> %s\n' "$*" >&2; }

if [ -z "${RLAYERFS_XFSTESTS_INNER:-}" ]; then
    [ "$(id -u)" = 0 ] || { echo "xfstests.sh: needs root" >&2; exit 1; }
    src=$(cd "$1" && pwd)
    [ -x "$src/check" ] || { echo "xfstests.sh: $src is not an xfstests checkout" >&2; exit 2; }
    packages="xfslibs-dev uuid-dev libtool-bin e2fsprogs automake gcc make libuuid1 quota attr
        acl libacl1-dev libaio-dev xfsprogs libgdbm-dev gawk fio uuid-runtime liburing-dev
        libcap-dev python3 bc fuse3 util-linux pkg-config"
    missing=()
    for p in $packages; do
        [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing missing packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
    [ -e /dev/fuse ] || modprobe fuse
    grep -qw overlay /proc/filesystems || modprobe overlay
    if [ ! -x "$src/ltp/fsstress" ]; then
        log "building xfstests in $src (make -j2)"
        make -C "$src" -j2 >/dev/null
    fi
    if [ "${2:-}" = --list ]; then
        default_list "$src"
        exit 0
    fi
    log "cargo build --release"
    (cd "$repo" && cargo build --release --quiet)
    shift
    RLAYERFS_XFSTESTS_INNER=1 exec unshare --mount --propagation private -- "$0" "$src" "$@"
fi

# ---- inside the private mount namespace ----
src=$1
shift
bin="$repo/target/release/rlayerfs"
work=$(mktemp -d /var/tmp/rlayerfs-xfstests.XXXXXX)
chmod 755 "$work" # tests run as fsgqa: every dir on the way must be searchable
users=()

cleanup() {
    set +e
    # rlayerfs and overlay mounts first (deepest first), then the ext4 bases.
    findmnt -rn -o TARGET | grep "^$work/" | sort -r | while read -r t; do
        umount "$t" 2>/dev/null || umount -l "$t"
    done
    for img in "$work"/*.img; do
        [ -e "$img" ] || continue
        losetup -n -O NAME -j "$img" | while read -r l; do losetup -d "$l"; done
    done
    for u in "${users[@]}"; do userdel -r "$u" 2>/dev/null || userdel "$u"; done
    rm -rf "$work/xfstests" "$work"/*.img "$work"/kernel/{test,scratch} \
        "$work"/rlayerfs/{test,scratch,test-base,scratch-base} "$work/bin"
    [ ! -d "$work/orig-local-bin" ] || rmdir "$work/orig-local-bin" # never rm -r: it may still be /usr/local/bin
    log "logs and results kept in $work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The namespace starts with copies of every mount; copies of other jobs' FUSE and overlay
# mounts would keep their file systems (and daemons) alive after those jobs unmount them.
{ findmnt -rn -t overlay,fuse,fuse.rlayerfs,fuse.fuse-overlayfs -o TARGET || true; } | sort -r |
    while read -r t; do umount -l "$t" 2>/dev/null || true; done

# mount(8) -> mount.fuse3 -> rlayerfs, found in /usr/local/bin (helpers get no PATH).
mkdir "$work/bin" "$work/orig-local-bin"
mount --bind /usr/local/bin "$work/orig-local-bin"
for f in "$work"/orig-local-bin/*; do
    if [ -e "$f" ]; then ln -s "$f" "$work/bin/"; fi
done
rm -f "$work/bin/rlayerfs"
ln -s "$bin" "$work/bin/rlayerfs"
mount --bind "$work/bin" /usr/local/bin

for u in fsgqa fsgqa2 123456-fsgqa; do
    if ! id "$u" >/dev/null 2>&1; then
        log "creating user $u"
        useradd --badname -m "$u"
        users+=("$u")
    fi
done

cp -a "$src" "$work/xfstests"
chmod -R a+rX "$work/xfstests"
cat >>"$work/xfstests/common/rc" <<'EOF'

# ---- rlayerfs harness hooks (appended at run time by rlayerfs scripts/xfstests.sh) ----
eval "_rlayerfs_orig_fs_type() $(declare -f _fs_type | tail -n +2)"
_fs_type()
{
	_rlayerfs_orig_fs_type "$@" | sed -e 's/^fuse\.rlayerfs$/fuse/'
}
eval "_rlayerfs_orig_scratch_mkfs() $(declare -f _scratch_mkfs | tail -n +2)"
_scratch_mkfs()
{
	if [ "$FSTYP" = fuse ] && [ -n "$RLAYERFS_SCRATCH_BASE" ]; then
		if findmnt -rn "$SCRATCH_MNT" >/dev/null; then
			_scratch_unmount || return 1
		fi
		rm -rf "$RLAYERFS_SCRATCH_BASE"/lower "$RLAYERFS_SCRATCH_BASE"/upper \
			"$RLAYERFS_SCRATCH_BASE"/work || return 1
		mkdir "$RLAYERFS_SCRATCH_BASE"/lower "$RLAYERFS_SCRATCH_BASE"/upper \
			"$RLAYERFS_SCRATCH_BASE"/work
		return
	fi
	_rlayerfs_orig_scratch_mkfs "$@"
}
eval "_rlayerfs_orig_scratch_options() $(declare -f _scratch_options | tail -n +2)"
_scratch_options()
{
	_rlayerfs_orig_scratch_options "$@"
	if [ "$FSTYP" = fuse ] && [ "$1" = mount ] && [ -n "$RLAYERFS_SCRATCH_OPTS" ]; then
		SCRATCH_OPTIONS="$SCRATCH_OPTIONS $RLAYERFS_SCRATCH_OPTS"
	fi
}
/bin/true
EOF

if [ $# -gt 0 ]; then
    tests=("$@")
else
    mapfile -t tests < <(default_list "$work/xfstests")
fi
log "${#tests[@]} tests; work dir $work"

image() { # NAME -> loop device of a fresh 4 GiB sparse ext4 image
    truncate -s 4G "$work/$1.img"
    mkfs.ext4 -q -F "$work/$1.img"
    losetup -f --show "$work/$1.img" # cleanup finds it again with losetup -j
}

# Kernel overlayfs: xfstests' own overlay mode over two ext4 devices.
mkdir -p "$work/kernel/test" "$work/kernel/scratch"
kt=$(image kernel-test)
ks=$(image kernel-scratch)
cat >"$work/kernel.config" <<EOF
export FSTYP=ext4
export TEST_DEV=$kt
export TEST_DIR=$work/kernel/test
export SCRATCH_DEV=$ks
export SCRATCH_MNT=$work/kernel/scratch
export OVERLAY_MOUNT_OPTIONS="-o index=on,redirect_dir=on,nfs_export=on"
# the base's own options: left empty, xfstests would default them to the overlay's
export TEST_FS_MOUNT_OPTS="-o rw"
export MOUNT_OPTIONS="-o rw"
export RESULT_BASE=$work/kernel/results
export AWK_PROG=$(type -P gawk)
EOF

# rlayerfs: FSTYP=fuse over directories on two mounted ext4 images.
tb=$work/rlayerfs/test-base
sb=$work/rlayerfs/scratch-base
mkdir -p "$work/rlayerfs/test" "$work/rlayerfs/scratch" "$tb" "$sb"
mount "$(image rlayerfs-test)" "$tb"
mount "$(image rlayerfs-scratch)" "$sb"
mkdir "$tb"/lower "$tb"/upper "$tb"/work "$sb"/lower "$sb"/upper "$sb"/work
cat >"$work/rlayerfs.config" <<EOF
export FSTYP=fuse
export FUSE_SUBTYP=.rlayerfs
export TEST_DEV=rlayerfs-test
export TEST_DIR=$work/rlayerfs/test
export TEST_FS_MOUNT_OPTS="-o lowerdir=$tb/lower,upperdir=$tb/upper,workdir=$tb/work,nfs_export=on"
export SCRATCH_DEV=rlayerfs-scratch
export SCRATCH_MNT=$work/rlayerfs/scratch
export MOUNT_OPTIONS="-o rw"
export RLAYERFS_SCRATCH_OPTS="-o lowerdir=$sb/lower,upperdir=$sb/upper,workdir=$sb/work,nfs_export=on"
export RLAYERFS_SCRATCH_BASE=$sb
export RESULT_BASE=$work/rlayerfs/results
export AWK_PROG=$(type -P gawk)
EOF

declare -A result
for sys in kernel rlayerfs; do
    args=()
    [ "$sys" = kernel ] && args=(-overlay)
    log "running ${#tests[@]} tests on $sys (log: $work/$sys.log)"
    (cd "$work/xfstests" && HOST_OPTIONS="$work/$sys.config" ./check "${args[@]}" "${tests[@]}") \
        >"$work/$sys.log" 2>&1 || true
    ran=$(sed -n 's/^Ran: //p' "$work/$sys.log" | tail -n 1)
    notrun=$(sed -n 's/^Not run: //p' "$work/$sys.log" | tail -n 1)
    failed=$(sed -n 's/^Failures: //p' "$work/$sys.log" | tail -n 1)
    if [ -z "$ran$notrun" ]; then
        log "$sys: check reported nothing; end of its log:"
        tail -n 20 "$work/$sys.log" >&2
    fi
    for t in "${tests[@]}"; do
        r=fail # not reported at all (check aborted) counts as a failure
        case " $ran " in *" $t "*) r=pass ;; esac
        case " $notrun " in *" $t "*) r=notrun ;; esac
        case " $failed " in *" $t "*) r=fail ;; esac
        result[$sys,$t]=$r
    done
done

declare -A count
kernel_only=()
for t in "${tests[@]}"; do
    k=${result[kernel,$t]}
    r=${result[rlayerfs,$t]}
    echo "$t kernel=$k rlayerfs=$r"
    count[kernel,$k]=$((${count[kernel,$k]:-0} + 1))
    count[rlayerfs,$r]=$((${count[rlayerfs,$r]:-0} + 1))
    [ "$k" = pass ] && [ "$r" != pass ] && kernel_only+=("$t")
done
for sys in kernel rlayerfs; do
    echo "$sys: pass ${count[$sys,pass]:-0}, fail ${count[$sys,fail]:-0}, notrun ${count[$sys,notrun]:-0}"
done
status=0
if [ "${#kernel_only[@]}" -gt 0 ]; then
    echo "passing on the kernel only:"
    for t in "${kernel_only[@]}"; do
        if [ -n "${ALLOW[$t]:-}" ]; then
            echo "  $t (allowed: ${ALLOW[$t]})"
            continue
        fi
        status=1
        echo "  $t"
        bad="$work/rlayerfs/results/$t.out.bad"
        if [ -f "$bad" ]; then
            { diff "$work/xfstests/tests/$t.out" "$bad" || true; } | head -n 8 | sed 's/^/      /'
        elif [ -f "$work/rlayerfs/results/$t.notrun" ]; then
            echo "      not run: $(cat "$work/rlayerfs/results/$t.notrun")"
        fi
    done
fi
exit "$status"
