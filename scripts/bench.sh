#!/usr/bin/env bash
# Mounted workloads, side by side: kernel overlayfs, rlayerfs, fuse-overlayfs 1.x (C, the
# Debian package), fuse-overlayfs 2.0 (Rust, `cargo install fuse-overlayfs`) and a plain
# directory holding the merged tree, over the same generated layers.
#
# Everything (layers, uppers, workdirs) lives on a loop-mounted ext4 image made with a journal:
# the root filesystem of these machines is ext4 without a journal, where every create scans
# the inodes the previous run deleted, which would make every write figure meaningless.
#
# The systems run interleaved, in a rotating order (A B C, B C A, ...), each run on a fresh
# mount with a fresh upper and workdir, and every figure is a median over runs together with
# its ratio to kernel overlayfs measured in the same invocation: the machines are shared and
# noisy, so only same-run ratios mean much. For FUSE systems the daemon's CPU time during the
# timed step and its peak RSS (VmHWM) are shown too. Raw numbers go to a TSV file.
#
# Durability differs: kernel overlayfs and rlayerfs fsync every copied-up file, fuse-overlayfs
# (1.x and 2.0) does not; `kernel-volatile` and `rlayerfs-volatile` are the no-fsync variants
# (compare those with fuse-overlayfs) and run only in the scenarios that write. No timing
# includes a final sync, but chmod64k's (the issue's measurement: metadata-only copy-up
# against full copies, whose data the sync writes out). Metadata-only copy-up differs too:
# rlayerfs does it by default as root (kernel `metacopy=on`), the kernel's default here is
# off; `kernel-metacopy` (metacopy=on) and `rlayerfs-nometacopy` (-o metacopy=off) are the
# other variants, also only in the scenarios that write. `rlayerfs-base` is a second
# rlayerfs binary (`--baseline PATH`, e.g. an older commit's) mounted as `rlayerfs` is, so
# that a change is compared with what it replaces in the same run, interleaved.
#
# Needs root, /dev/fuse, losetup, mkfs.ext4, perl; git for the git scenario. Run
# `scripts/bench.sh --help` for the options. Cold scenarios drop the page cache of the whole
# machine (echo 3 > /proc/sys/vm/drop_caches).
# shellcheck disable=SC2016,SC2317 # step commands are single-quoted on purpose (expanded
# by the shell that runs them); scenario functions are called by computed names.
set -uo pipefail

SELF_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$SELF_DIR/.." && pwd)

say() { printf '%s\n' "$*"; }

usage() {
    cat <<'EOF'
usage: scripts/bench.sh [--quick] [--runs N] [--only LIST] [--systems LIST] [--pin]
                        [--dir DIR] [--rlayerfs PATH] [--baseline PATH] [--mount-opts OPTS]
                        [--install]

  --quick          small sizes and 1 run (smoke test, CI)
  --runs N         runs per system and scenario (default 3; 1 with --quick)
  --only LIST      comma-separated scenarios, or prefixes of them (stat = all stat*):
                   walk stat1 stat8 stat32 stat128 readdir seqread smallread append
                   chmod chmod64k untar rm cpa git
  --systems LIST   comma-separated, from: kernel kernel-volatile kernel-metacopy
                   rlayerfs rlayerfs-volatile rlayerfs-classic rlayerfs-nometacopy
                   rlayerfs-base fuse-overlayfs fuse-overlayfs2 plain
                   (default: all of them, rlayerfs-base only with --baseline);
                   ratios are to `kernel`. `rlayerfs` serves over FUSE-over-io_uring
                   where the kernel allows it (this script sets the fuse module
                   parameter enable_uring=Y for the run and restores it), `rlayerfs-classic` over /dev/fuse read/write (-o uring=off). The -volatile
                   ones (no fsync of copy-ups), kernel-metacopy (metacopy=on) and
                   rlayerfs-nometacopy (-o metacopy=off) run only in the scenarios that write
  --pin            run the daemons and the clients on CPU 0 (taskset -c 0)
  --dir DIR        where the ext4 image and the results go (default /var/tmp/rlayerfs-bench)
  --rlayerfs PATH  the rlayerfs binary (default: target/release/rlayerfs, built if missing)
  --baseline PATH  a second rlayerfs binary, the system rlayerfs-base (mounted as rlayerfs):
                   old and new side by side in one run
  --mount-opts OPTS  more -o options for every rlayerfs system (e.g. uring=off: the
                   classic transport, whose speed is steadier from mount to mount)
  --scale F        multiply the full sizes by F (e.g. 0.2); ignored with --quick
  --install        try `cargo install fuse-overlayfs` (2.0) into /opt/fuse-overlayfs2 if
                   it is missing (slow: minutes of compilation)
  --report TSV     print the table of an earlier results file and exit
  --core [-- ARGS] instead of the mounted workloads, run the criterion benchmarks of the
                   core (cargo bench --bench core -- ARGS; default ARGS: --warm-up-time 1
                   --measurement-time 3) with their files on the journaled loop image
EOF
}

# summarize TSV "SYSTEM...": the table of medians and ratios of a results file, then the
# FUSE requests per operation of the rlayerfs systems by opcode.
summarize() {
    local pinned runs
    pinned=$(awk -F'\t' '$1 == "#pinned" { print $2 }' "$1")
    runs=$(awk -F'\t' '$1 !~ /^#/ && $2 !~ /^#/ && $4 + 0 > n { n = $4 + 0 } END { print n + 0 }' "$1")
    say ""
    say "medians of $runs run(s); ratio = system / kernel overlayfs; for FUSE daemons: CPU seconds"
    say "during the step (median) and peak RSS over the runs; for rlayerfs: rN = FUSE requests per"
    say "operation (file, name, listing or MiB; median). Durability: kernel and rlayerfs fsync"
    say "copied-up files, kernel-volatile, rlayerfs-volatile and fuse-overlayfs do not."
    if [ "$pinned" = yes ]; then say "pinned: daemons and clients on CPU 0"; else say "not pinned"; fi
    awk -F'\t' -v systems="$2" '
        function median(list,   n, v, i, j, t) {
            n = split(list, v, " ")
            for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) {
                t = v[j]; v[j] = v[j - 1]; v[j - 1] = t
            }
            return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        }
        function reqs(v) { return v >= 100 ? sprintf("%.0f", v) : v >= 10 ? sprintf("%.1f", v) : sprintf("%.2f", v) }
        $1 ~ /^#/ { next }
        {
            key = $1 SUBSEP $3
            if ($2 == "#hwm") { if ($5 + 0 > hwm[key] + 0) hwm[key] = $5; next }
            if ($2 == "#req") {
                k = $5 SUBSEP $3
                if (!(k in byop) || $4 + 0 >= byop_run[k]) { byop[k] = $6; byop_run[k] = $4 + 0 }
                if ($7 != "" && index(" " tr[$3] " ", " " $7 " ") == 0) tr[$3] = tr[$3] (tr[$3] == "" ? "" : " ") $7
                next
            }
            if ($2 ~ /-MiB$/) { mib[$2 SUBSEP $3] = 1 }
            m = $2
            if (!(m in seen)) { seen[m] = 1; order[++nm] = m; scen[m] = $1 }
            k = m SUBSEP $3
            if ($5 == "FAIL") { fail[k] = 1; next }
            t[k] = t[k] " " $5
            if ($6 != "-") c[k] = c[k] " " $6
            if ($7 != "" && $7 != "-") r[k] = r[k] " " $7
        }
        END {
            ns = split(systems, sys, " ")
            printf "%-20s", "scenario"
            for (i = 1; i <= ns; i++) printf " | %-33s", sys[i]
            printf "\n"
            for (o = 1; o <= nm; o++) {
                m = order[o]
                base = ""
                if ((m SUBSEP "kernel") in t && !((m SUBSEP "kernel") in fail)) base = median(t[m SUBSEP "kernel"])
                printf "%-20s", m
                for (i = 1; i <= ns; i++) {
                    k = m SUBSEP sys[i]
                    if (k in fail) cell = "FAILED"
                    else if (!(k in t)) cell = "-"
                    else {
                        v = median(t[k])
                        if (k in mib) { printf " | %-26s", sprintf("%.1f MiB", v); continue }
                        cell = sprintf("%.3fs", v)
                        if (base != "" && sys[i] != "kernel" && base > 0) cell = cell sprintf(" x%.2f", v / base)
                        if (k in c) {
                            h = hwm[scen[m] SUBSEP sys[i]]
                            cell = cell sprintf(" cpu%.2fs %dM", median(c[k]), (h + 512) / 1024)
                        }
                        if (k in r) cell = cell " r" reqs(median(r[k]))
                    }
                    printf " | %-33s", cell
                }
                printf "\n"
            }
            for (i = 1; i <= ns; i++) if (sys[i] in tr) printf "%s served over: %s\n", sys[i], tr[sys[i]]
            any = 0
            for (o = 1; o <= nm; o++) for (i = 1; i <= ns; i++) {
                k = order[o] SUBSEP sys[i]
                if (!(k in byop)) continue
                if (!any) { printf "\nFUSE requests per operation by opcode (last run):\n"; any = 1 }
                printf "%-20s %-18s %s\n", order[o], sys[i], byop[k]
            }
        }' "$1"
}

QUICK=0
RUNS=
ONLY=
PIN=()
SYSTEMS="kernel,kernel-volatile,kernel-metacopy,rlayerfs,rlayerfs-volatile,rlayerfs-classic,rlayerfs-nometacopy,fuse-overlayfs,fuse-overlayfs2,plain"
BASE_DIR=/var/tmp/rlayerfs-bench
RLAYERFS=
BASELINE=
MOUNT_OPTS=
SYSTEMS_GIVEN=0
INSTALL=0
SCALE=1
CORE=0
REPORT=
CORE_ARGS=(--warm-up-time 1 --measurement-time 3)
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --runs) RUNS=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --systems) SYSTEMS=$2; SYSTEMS_GIVEN=1; shift ;;
    --pin) PIN=(taskset -c 0) ;;
    --dir) BASE_DIR=$2; shift ;;
    --rlayerfs) RLAYERFS=$2; shift ;;
    --baseline) BASELINE=$2; shift ;;
    --mount-opts) MOUNT_OPTS=$2; shift ;;
    --install) INSTALL=1 ;;
    --scale) SCALE=$2; shift ;;
    --core) CORE=1 ;;
    --report) REPORT=$2; shift ;;
    --) shift; CORE_ARGS=("$@"); break ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [ -n "$REPORT" ]; then
    [ -r "$REPORT" ] || { echo "cannot read $REPORT" >&2; exit 2; }
    present=()
    for s in kernel kernel-volatile kernel-metacopy rlayerfs rlayerfs-volatile rlayerfs-classic \
        rlayerfs-nometacopy rlayerfs-base fuse-overlayfs fuse-overlayfs2 plain; do
        awk -F'\t' -v s="$s" '$3 == s { f = 1 } END { exit !f }' "$REPORT" && present+=("$s")
    done
    summarize "$REPORT" "${present[*]}"
    exit 0
fi
if [ -z "$RUNS" ]; then
    if [ "$QUICK" = 1 ]; then RUNS=1; else RUNS=3; fi
fi
case "$RUNS" in '' | *[!0-9]* | 0) echo "--runs needs a positive number" >&2; exit 2 ;; esac

die() { printf 'bench.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- sizes
if [ "$QUICK" = 1 ]; then
    WALK_FILES=2000 STAT_NAMES=500 READDIR_ENTRIES=1000 SEQ_MIB=32 SMALL_FILES=500
    APPEND_MIB=16 CHMOD_FILES=300 CHMOD64K_FILES=200 UNTAR_FILES=500 RM_FILES=500
    CPA_FILES=300 GIT_FILES=300
    IMAGE_GIB=3
else
    WALK_FILES=100000 STAT_NAMES=20000 READDIR_ENTRIES=10000 SEQ_MIB=1024 SMALL_FILES=20000
    APPEND_MIB=512 CHMOD_FILES=10000 CHMOD64K_FILES=2000 UNTAR_FILES=20000 RM_FILES=20000
    CPA_FILES=5000
    GIT_FILES=10000 IMAGE_GIB=24
    if [ "$SCALE" != 1 ]; then
        awk -v f="$SCALE" 'BEGIN { exit !(f > 0 && f <= 1) }' || die "--scale needs a number in (0, 1]"
        for v in WALK_FILES STAT_NAMES READDIR_ENTRIES SEQ_MIB SMALL_FILES APPEND_MIB CHMOD_FILES CHMOD64K_FILES \
            UNTAR_FILES RM_FILES CPA_FILES GIT_FILES; do
            # Whole hundreds, at least 100: the generators spread files 100 to a directory.
            printf -v "$v" '%d' "$(awk -v n="${!v}" -v f="$SCALE" \
                'BEGIN { x = int(n * f / 100) * 100; print (x < 100 ? 100 : x) }')"
        done
    fi
fi
WALK_LAYERS=10
READDIR_LAYERS=4
# Filler files in each layer above the bottom one of the stat stacks.
STAT_FILLERS=10
ALL_SCENARIOS="walk stat1 stat8 stat32 stat128 readdir seqread smallread append chmod chmod64k untar rm cpa git"

# ---------------------------------------------------------------- output helpers
note() { printf '  - %s\n' "$*"; SKIPPED+=("$*"); }
SKIPPED=()

# ---------------------------------------------------------------- prerequisites
[ "$(id -u)" = 0 ] || die "needs root (loop devices, kernel overlay mounts, drop_caches)"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
for tool in losetup mkfs.ext4 mount umount perl tar find xargs; do
    command -v "$tool" >/dev/null || die "missing $tool"
done
if [ "${#PIN[@]}" -gt 0 ]; then
    command -v taskset >/dev/null || die "--pin needs taskset (util-linux)"
fi

# ---------------------------------------------------------------- the loop image
mkdir -p "$BASE_DIR" || die "cannot create $BASE_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS="$BASE_DIR/results-$STAMP.tsv"
LOG="$BASE_DIR/log-$STAMP.txt"
IMG="$BASE_DIR/image-$$.ext4"
# A short root: 128 lower paths must fit in the kernel's one-page mount options.
R=/run/rlb$$
LOOP=
STARTED=() # "pid mountpoint" of every daemon this script started

# FUSE-over-io_uring for `rlayerfs` (kernel 6.14+): the module parameter is switched on for
# the run and put back as it was found.
URING_PARAM=/sys/module/fuse/parameters/enable_uring
URING_WAS=
cleanup() {
    set +e
    trap - EXIT INT TERM
    [ -n "$URING_WAS" ] && echo "$URING_WAS" >"$URING_PARAM"
    if [ -n "$R" ] && [ -d "$R" ]; then
        local m
        for m in $(awk -v r="$R/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r); do
            fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || umount -l "$m"
        done
    fi
    local e pid mnt
    for e in "${STARTED[@]}"; do
        pid=${e%% *} mnt=${e#* }
        if grep -qzxF -- "$mnt" "/proc/$pid/cmdline" 2>/dev/null; then
            kill "$pid" 2>/dev/null
        fi
    done
    if mountpoint -q "$R" 2>/dev/null; then
        umount "$R" 2>/dev/null || umount -l "$R"
    fi
    [ -n "$LOOP" ] && losetup -d "$LOOP"
    [ -d "$R" ] && rmdir "$R"
    rm -f "$IMG"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ -w "$URING_PARAM" ]; then
    URING_WAS=$(cat "$URING_PARAM")
    echo Y >"$URING_PARAM" || URING_WAS=
fi

setup_image() {
    say "preparing a ${IMAGE_GIB} GiB ext4 image (with journal) at $IMG, mounted at $R"
    truncate -s "${IMAGE_GIB}G" "$IMG" || die "cannot create $IMG"
    mkfs.ext4 -q -F -i 8192 "$IMG" || die "mkfs.ext4 failed"
    LOOP=$(losetup -f --show "$IMG") || die "losetup failed"
    mkdir -p "$R" && mount "$LOOP" "$R" || die "cannot mount $LOOP"
    mkdir -p "$R/x" "$R/m"
    if [ "${#PIN[@]}" -gt 0 ]; then pinned=yes; else pinned=no; fi
    printf '#pinned\t%s\n' "$pinned" >"$RESULTS"
    : >"$LOG"
}

if [ "$CORE" = 1 ]; then
    command -v cargo >/dev/null || die "--core needs cargo"
    setup_image
    rm -f "$RESULTS" "$LOG"
    say "criterion benchmarks of the core, files on the loop image (RLAYERFS_BENCH_DIR=$R)"
    (cd "$REPO" && RLAYERFS_BENCH_DIR=$R cargo bench --bench core -- "${CORE_ARGS[@]}")
    exit $?
fi

say "prerequisites and systems:"
if [ -n "$BASELINE" ] && [ "$SYSTEMS_GIVEN" = 0 ]; then SYSTEMS="$SYSTEMS,rlayerfs-base"; fi
WANT_SYSTEMS=()
IFS=, read -r -a WANT_SYSTEMS <<<"$SYSTEMS"
HAVE_FUSE=1
if [ ! -e /dev/fuse ]; then
    HAVE_FUSE=0
    note "no /dev/fuse: FUSE systems skipped"
elif ! command -v fusermount3 >/dev/null; then
    HAVE_FUSE=0
    note "no fusermount3 (package fuse3): FUSE systems skipped"
fi
HAVE_KERNEL=1
if ! grep -qw overlay /proc/filesystems; then
    modprobe overlay 2>/dev/null
    grep -qw overlay /proc/filesystems || {
        HAVE_KERNEL=0
        note "kernel overlayfs unavailable: kernel systems skipped, no ratios"
    }
fi

FO1='' FO2=''
find_fo2() {
    local c
    for c in "${FUSE_OVERLAYFS2:-}" /opt/fuse-overlayfs2/bin/fuse-overlayfs \
        "$HOME/.cargo/bin/fuse-overlayfs" "$(command -v fuse-overlayfs 2>/dev/null)"; do
        [ -n "$c" ] && [ -x "$c" ] || continue
        if "$c" --version 2>&1 | grep -q 'version 2\.'; then
            FO2=$c
            return 0
        fi
    done
    return 1
}

SYS=()
for s in "${WANT_SYSTEMS[@]}"; do
    case "$s" in
    kernel | kernel-volatile | kernel-metacopy)
        [ "$HAVE_KERNEL" = 1 ] && SYS+=("$s")
        ;;
    rlayerfs | rlayerfs-volatile | rlayerfs-classic | rlayerfs-nometacopy)
        [ "$HAVE_FUSE" = 1 ] || continue
        if [ -z "$RLAYERFS" ]; then
            RLAYERFS="${CARGO_TARGET_DIR:-$REPO/target}/release/rlayerfs"
            if [ ! -x "$RLAYERFS" ]; then
                say "  building rlayerfs (cargo build --release)"
                (cd "$REPO" && cargo build --release --quiet) || die "cargo build failed"
            fi
        fi
        [ -x "$RLAYERFS" ] || die "no rlayerfs binary at $RLAYERFS"
        SYS+=("$s")
        ;;
    rlayerfs-base)
        [ "$HAVE_FUSE" = 1 ] || continue
        [ -n "$BASELINE" ] || die "rlayerfs-base needs --baseline PATH"
        [ -x "$BASELINE" ] || die "no rlayerfs binary at $BASELINE (--baseline)"
        SYS+=("$s")
        ;;
    fuse-overlayfs)
        [ "$HAVE_FUSE" = 1 ] || continue
        FO1=$(command -v fuse-overlayfs 2>/dev/null)
        if [ -z "$FO1" ] || "$FO1" --version 2>&1 | grep -q 'version 2\.'; then
            FO1=/usr/bin/fuse-overlayfs
        fi
        if [ ! -x "$FO1" ]; then
            say "  installing fuse-overlayfs 1.x (apt-get install fuse-overlayfs)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse-overlayfs >/dev/null 2>&1 ||
                { apt-get update -qq >/dev/null 2>&1 &&
                    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse-overlayfs >/dev/null 2>&1; }
        fi
        if [ -x "$FO1" ]; then
            SYS+=("$s")
        else
            note "fuse-overlayfs 1.x: not installed and apt-get install failed: skipped"
        fi
        ;;
    fuse-overlayfs2)
        [ "$HAVE_FUSE" = 1 ] || continue
        if ! find_fo2 && [ "$INSTALL" = 1 ]; then
            say "  cargo install fuse-overlayfs (2.0) into /opt/fuse-overlayfs2"
            CARGO_TARGET_DIR=/var/tmp/fuse-overlayfs2-build cargo install --quiet \
                --root /opt/fuse-overlayfs2 fuse-overlayfs >/dev/null 2>&1
            find_fo2
        fi
        if [ -n "$FO2" ]; then
            SYS+=("$s")
        else
            note "fuse-overlayfs 2.0: not found (install with --install, or: cargo install --root /opt/fuse-overlayfs2 fuse-overlayfs; or set FUSE_OVERLAYFS2=PATH): skipped"
        fi
        ;;
    plain) SYS+=("$s") ;;
    *) die "unknown system: $s" ;;
    esac
done
[ "${#SYS[@]}" -gt 0 ] || die "no system left to measure"
say "  systems: ${SYS[*]}"
[ -n "$RLAYERFS" ] && say "  rlayerfs: $RLAYERFS"
[ -n "$BASELINE" ] && say "  rlayerfs-base: $BASELINE"
[ -n "$MOUNT_OPTS" ] && say "  rlayerfs options: $MOUNT_OPTS"
[ -n "$FO1" ] && say "  fuse-overlayfs 1.x: $FO1 ($("$FO1" --version 2>&1 | grep -m1 -o 'version [0-9.]*'))"
[ -n "$FO2" ] && say "  fuse-overlayfs 2.0: $FO2 ($("$FO2" --version 2>&1 | grep -m1 -o 'version [0-9.]*'))"

SCENARIOS=()
for sc in $ALL_SCENARIOS; do
    if [ -n "$ONLY" ]; then
        keep=0
        IFS=, read -r -a only_list <<<"$ONLY"
        for o in "${only_list[@]}"; do
            case "$sc" in "$o"*) keep=1 ;; esac
        done
        [ "$keep" = 1 ] || continue
    fi
    if [ "$sc" = git ] && ! command -v git >/dev/null; then
        note "git not installed: scenario git skipped"
        continue
    fi
    SCENARIOS+=("$sc")
done
[ "${#SCENARIOS[@]}" -gt 0 ] || die "no scenario matches --only $ONLY"
setup_image


# ---------------------------------------------------------------- generators
# genfiles DIR COUNT PER_DIR MIN MAX PREFIX [LIST]: COUNT files PREFIX<i> in DIR/dNNN
# subdirectories of PER_DIR files, sizes between MIN and MAX bytes; with LIST, their paths
# relative to DIR's parent are appended to LIST.
genfiles() {
    perl -e '
        use strict; use warnings;
        my ($dir, $n, $per, $min, $max, $prefix, $list) = @ARGV;
        my $lf;
        if (defined $list) { open($lf, ">>", $list) or die "$list: $!" }
        my ($base) = $dir =~ m{([^/]+)$};
        my $blob = join("", map { chr(32 + ($_ * 7) % 95) } 0 .. 65535);
        my $last = -1;
        for my $i (0 .. $n - 1) {
            my $d = int($i / $per);
            my $sub = sprintf("d%03d", $d);
            if ($d != $last) { mkdir("$dir/$sub"); $last = $d }
            my $size = $max > $min ? $min + ($i * 7919) % ($max - $min + 1) : $min;
            open(my $f, ">", "$dir/$sub/$prefix$i") or die "$dir/$sub/$prefix$i: $!";
            while ($size > 0) {
                my $k = $size > 65536 ? 65536 : $size;
                print $f substr($blob, 0, $k);
                $size -= $k;
            }
            close($f) or die;
            print $lf "$base/$sub/$prefix$i\n" if $lf;
        }' "$@"
}

# bigfile PATH MIB: a file of incompressible data.
bigfile() {
    head -c "$(($2 << 20))" /dev/urandom >"$1"
}

# whiteouts DIR NAME...: char-device whiteouts for the first few names (a fork each), `.wh.`
# files for the rest: lower layers hold both formats.
whiteouts() {
    local dir=$1 i=0 n
    shift
    for n in "$@"; do
        if [ "$i" -lt 50 ] && mknod "$dir/$n" c 0 0 2>/dev/null; then
            :
        else
            : >"$dir/.wh.$n"
        fi
        i=$((i + 1))
    done
}

# layer_list DIR N: DIR/0:DIR/1:...:DIR/N-1 (0 is the top lower).
layer_list() {
    local i out=
    for ((i = 0; i < $2; i++)); do out+="${out:+:}$1/$i"; done
    printf '%s' "$out"
}

# Each scenario: gen_X (layers under $R/X, once), lowers_X (lowerdir string), run_X (timed
# steps through `measure`, with the merged tree at $M and the scenario's data at $D), and
# the kind: ro (no writes: the -volatile systems skip it) or rw (plain gets a fresh copy of
# the merged tree every run); cold scenarios drop the page cache before mounting.
declare -A KIND COLD
KIND=([walk]=ro [stat1]=ro [stat8]=ro [stat32]=ro [stat128]=ro [readdir]=ro [seqread]=ro
    [smallread]=ro [append]=rw [chmod]=rw [chmod64k]=rw [untar]=rw [rm]=rw [cpa]=rw [git]=rw)
COLD=([walk]=1 [seqread]=1)

gen_walk() {
    local i j per=$((WALK_FILES / WALK_LAYERS)) names
    for ((i = 0; i < WALK_LAYERS; i++)); do
        mkdir -p "$D/L/$i/t"
        # 100 files a directory, every directory present in every layer: merged dirs.
        genfiles "$D/L/$i/t" "$per" $(((per + 99) / 100)) 0 64 "f$i-"
    done
    # 1% of each layer's files whited out by the layer above.
    for ((i = 0; i < WALK_LAYERS - 1; i++)); do
        for ((j = 0; j < per / 100; j++)); do
            names=("f$((i + 1))-$((j * 100))")
            whiteouts "$D/L/$i/t/$(printf 'd%03d' $((j * 100 / ((per + 99) / 100))))" "${names[@]}"
        done
    done
}
lowers_walk() { layer_list "$D/L" "$WALK_LAYERS"; }
run_walk() {
    local walk='find "$M/t" -printf "%i %s %m %U %T@\n"'
    measure walk-cold "$walk" "$WALK_FILES"
    measure walk-warm "$walk" "$WALK_FILES"
}

# The stat stacks share one bottom layer (the names) and the fillers above it.
gen_stat_common() {
    local S=$R/statdata i
    [ -d "$S" ] && return 0
    mkdir -p "$S/B/d"
    perl -e 'my ($d, $n) = @ARGV; for my $i (0 .. $n - 1) { open(my $f, ">", "$d/n$i") or die; close $f }' \
        "$S/B/d" "$STAT_NAMES"
    for ((i = 0; i < 127; i++)); do
        mkdir -p "$S/F/$i/d"
        for ((j = 0; j < STAT_FILLERS; j++)); do : >"$S/F/$i/d/x$i-$j"; done
    done
    perl -e 'my $n = shift; print "d/n$_\n" for 0 .. $n - 1' "$STAT_NAMES" >"$S/hits"
    perl -e 'my $n = shift; print "d/m$_\n" for 0 .. $n - 1' "$STAT_NAMES" >"$S/misses"
}
stat_lowers() {
    local n=$1 i out=
    for ((i = 0; i < n - 1; i++)); do out+="$R/statdata/F/$i:"; done
    printf '%s' "${out}$R/statdata/B"
}
stat_run() {
    local n=$1 lstat='cd "$M" && perl -e '"'"'while (<STDIN>) { chomp; lstat($_) }'"'"
    measure "stat-hit-$n" "$lstat <$R/statdata/hits" "$STAT_NAMES"
    measure "stat-miss-$n" "$lstat <$R/statdata/misses" "$STAT_NAMES"
}
for n in 1 8 32 128; do
    eval "gen_stat$n() { mkdir -p \"\$D\"; gen_stat_common; }"
    eval "lowers_stat$n() { stat_lowers $n; }"
    eval "run_stat$n() { stat_run $n; }"
done

gen_readdir() {
    # Layer i: `per` own names; layers 0..2 white out `wh` names of the layer below and
    # shadow `sh` more: READDIR_LAYERS * per - (READDIR_LAYERS - 1) * wh are visible.
    local wh=$((READDIR_ENTRIES / 50)) sh=$((READDIR_ENTRIES / 100)) i j names
    local per=$(((READDIR_ENTRIES + (READDIR_LAYERS - 1) * wh) / READDIR_LAYERS))
    for ((i = 0; i < READDIR_LAYERS; i++)); do
        mkdir -p "$D/L/$i/big"
        perl -e 'my ($d, $l, $n) = @ARGV; for my $j (0 .. $n - 1) { open(my $f, ">", sprintf("%s/l%d-entry-%05d", $d, $l, $j)) or die; close $f }' \
            "$D/L/$i/big" "$i" "$per"
        if [ $((i + 1)) -lt "$READDIR_LAYERS" ]; then
            names=()
            for ((j = 0; j < wh; j++)); do names+=("$(printf 'l%d-entry-%05d' $((i + 1)) "$j")"); done
            whiteouts "$D/L/$i/big" "${names[@]}"
            for ((j = wh; j < wh + sh; j++)); do
                echo shadow >"$D/L/$i/big/$(printf 'l%d-entry-%05d' $((i + 1)) "$j")"
            done
        fi
    done
}
lowers_readdir() { layer_list "$D/L" "$READDIR_LAYERS"; }
run_readdir() {
    measure readdir-first 'ls -f "$M/big" >/dev/null'
    measure readdir-again-x10 'for i in 1 2 3 4 5 6 7 8 9 10; do ls -f "$M/big"; done >/dev/null' 10
}

gen_seqread() {
    mkdir -p "$D/L/0" "$D/L/1"
    echo top >"$D/L/0/readme"
    bigfile "$D/L/1/big" "$SEQ_MIB"
}
lowers_seqread() { layer_list "$D/L" 2; }
run_seqread() {
    measure seqread-cold 'dd if="$M/big" of=/dev/null bs=1M status=none' "$SEQ_MIB"
    measure seqread-warm 'dd if="$M/big" of=/dev/null bs=1M status=none' "$SEQ_MIB"
}

gen_smallread() {
    local i per=$((SMALL_FILES / 4))
    for ((i = 0; i < 4; i++)); do
        mkdir -p "$D/L/$i/s"
        genfiles "$D/L/$i/s" "$per" 100 1024 8192 "f$i-" "$D/list"
    done
}
lowers_smallread() { layer_list "$D/L" 4; }
run_smallread() {
    measure smallread 'cd "$M" && xargs -d "\n" -a "$D/list" cat >/dev/null' "$SMALL_FILES"
}

gen_append() {
    mkdir -p "$D/L/0" "$D/L/1"
    echo top >"$D/L/0/readme"
    bigfile "$D/L/1/big" "$APPEND_MIB"
}
lowers_append() { layer_list "$D/L" 2; }
run_append() {
    measure copyup-append 'echo appended >>"$M/big"'
}

gen_chmod() {
    local i
    for ((i = 0; i < 2; i++)); do
        mkdir -p "$D/L/$i/c"
        genfiles "$D/L/$i/c" $((CHMOD_FILES / 2)) 100 512 4096 "f$i-" "$D/list"
    done
}
lowers_chmod() { layer_list "$D/L" 2; }
run_chmod() {
    measure chmod 'cd "$M" && xargs -d "\n" -a "$D/list" chmod 600' "$CHMOD_FILES"
}

# The issue's measurement: 2,000 lower files of 64 KiB, chmod 600 of all of them, then a
# sync of the upper's filesystem (full copies are written out then); the upper's size after.
gen_chmod64k() {
    mkdir -p "$D/L/0/c"
    genfiles "$D/L/0/c" "$CHMOD64K_FILES" 100 65536 65536 "f" "$D/list"
}
lowers_chmod64k() { layer_list "$D/L" 1; }
run_chmod64k() {
    measure chmod64k 'cd "$M" && xargs -d "\n" -a "$D/list" chmod 600 && sync -f "$UP"'
    local kib
    kib=$(du -sk "$UP" | awk '{ print $1 }')
    printf '%s\t%s\t%s\t%s\t%s\t-\n' "$SCEN" "chmod64k-upper-MiB" "$SYSNAME" "$RUN" \
        "$(awk -v k="$kib" 'BEGIN { printf "%.2f", k / 1024 }')" >>"$RESULTS"
}

gen_untar() {
    mkdir -p "$D/L/0/dst" "$D/L/1/dst" "$D/src/tree"
    echo lower >"$D/L/1/dst/existing"
    echo top >"$D/L/0/readme"
    genfiles "$D/src/tree" "$UNTAR_FILES" 100 0 4096 f
    tar -C "$D/src" -cf "$D/tree.tar" tree
    rm -rf "$D/src"
}
lowers_untar() { layer_list "$D/L" 2; }
run_untar() {
    measure untar 'tar -xf "$D/tree.tar" -C "$M/dst"' "$UNTAR_FILES"
}

gen_rm() {
    local i
    for ((i = 0; i < 2; i++)); do
        mkdir -p "$D/L/$i/t"
        genfiles "$D/L/$i/t" $((RM_FILES / 2)) 100 0 1024 "f$i-"
    done
}
lowers_rm() { layer_list "$D/L" 2; }
run_rm() {
    measure rm-rf 'rm -rf "$M/t"' "$RM_FILES"
}

gen_cpa() {
    local i
    mkdir -p "$D/L/0/src" "$D/L/1/src"
    # A source tree: the bottom layer holds most of it, the top one changes a part.
    for ((i = 0; i < 10; i++)); do
        mkdir -p "$D/L/1/src/m$i"
        genfiles "$D/L/1/src/m$i" $((CPA_FILES * 9 / 100)) 50 0 16384 "f"
        ln -s "../m$i/d000/f0" "$D/L/1/src/m$i/link"
    done
    mkdir -p "$D/L/0/src/m0"
    genfiles "$D/L/0/src/m0" $((CPA_FILES / 10)) 50 0 16384 "g"
}
lowers_cpa() { layer_list "$D/L" 2; }
run_cpa() {
    measure cp-a 'cp -a "$M/src" "$M/src-copy"' "$CPA_FILES"
}

gen_git() {
    mkdir -p "$D/L/0" "$D/L/1/repo"
    echo top >"$D/L/0/readme"
    local i
    for ((i = 0; i < 10; i++)); do
        mkdir -p "$D/L/1/repo/p$i"
        genfiles "$D/L/1/repo/p$i" $((GIT_FILES / 10)) 100 0 8192 "src"
    done
    git -C "$D/L/1/repo" init -q &&
        git -C "$D/L/1/repo" add -A &&
        git -C "$D/L/1/repo" -c user.name=bench -c user.email=bench@localhost commit -qm tree
}
lowers_git() { layer_list "$D/L" 2; }
run_git() {
    # The first status after mounting sees new st_dev/st_ino, rehashes and rewrites the
    # index (a copy-up of .git/index); the second one is the everyday case.
    measure git-status-first 'git -C "$M/repo" status --porcelain >/dev/null' "$GIT_FILES"
    measure git-status-again 'git -C "$M/repo" status --porcelain >/dev/null' "$GIT_FILES"
}

# ---------------------------------------------------------------- mounting
SCEN='' SYSNAME='' RUN='' M='' D='' DPID='' STATS=''
export M D UP

# Ticks of CPU (user + system, all threads) the daemon used so far.
daemon_ticks() {
    local line a
    if [ -z "$DPID" ] || ! read -r line <"/proc/$DPID/stat" 2>/dev/null; then
        echo 0
        return
    fi
    line=${line##*) }
    read -r -a a <<<"$line"
    echo $((a[11] + a[12]))
}
CLK_TCK=$(getconf CLK_TCK)

# The pid of the daemon serving mountpoint $1 (an exact argument of its command line).
find_daemon() {
    # As a pattern with the dots bracketed, so that grep does not find its own arguments.
    local f pat=${1//./[.]}
    f=$(grep -lzx -- "$pat" /proc/[0-9]*/cmdline 2>/dev/null | head -n1)
    [ -n "$f" ] || return 1
    f=${f#/proc/}
    echo "${f%/cmdline}"
}

is_fuse() { case "$1" in rlayerfs* | fuse-overlayfs*) return 0 ;; esac; return 1; }

# Mounts $SYSNAME for scenario $SCEN over the scenario's lowers; sets M and DPID.
mount_system() {
    local ld=$1 x=$R/x/$SYSNAME.$RUN
    M=$R/m/$SYSNAME.$RUN
    UP=$x/u
    DPID=
    STATS=
    mkdir -p "$x/u" "$x/w" "$M"
    case "$SYSNAME" in rlayerfs*) STATS=$x/stats.json ;; esac
    local opts="lowerdir=$ld,upperdir=$x/u,workdir=$x/w"
    case "$SYSNAME" in rlayerfs*) [ -n "$MOUNT_OPTS" ] && opts="$opts,$MOUNT_OPTS" ;; esac
    case "$SYSNAME" in
    kernel) mount -t overlay overlay -o "$opts" "$M" ;;
    kernel-volatile) mount -t overlay overlay -o "$opts,volatile" "$M" ;;
    kernel-metacopy) mount -t overlay overlay -o "$opts,metacopy=on,index=on,redirect_dir=on" "$M" ;;
    rlayerfs) RLAYERFS_STATS=$STATS "${PIN[@]}" "$RLAYERFS" mount -o "$opts" "$M" ;;
    rlayerfs-volatile) RLAYERFS_STATS=$STATS "${PIN[@]}" "$RLAYERFS" mount -o "$opts,volatile" "$M" ;;
    rlayerfs-classic) RLAYERFS_STATS=$STATS "${PIN[@]}" "$RLAYERFS" mount -o "$opts,uring=off" "$M" ;;
    rlayerfs-nometacopy) RLAYERFS_STATS=$STATS "${PIN[@]}" "$RLAYERFS" mount -o "$opts,metacopy=off" "$M" ;;
    rlayerfs-base) RLAYERFS_STATS=$STATS "${PIN[@]}" "$BASELINE" mount -o "$opts" "$M" ;;
    fuse-overlayfs) "${PIN[@]}" "$FO1" -o "$opts" "$M" ;;
    fuse-overlayfs2) "${PIN[@]}" "$FO2" -o "$opts" "$M" ;;
    esac >>"$LOG" 2>&1 || return 1
    local i
    for ((i = 0; i < 100; i++)); do
        mountpoint -q "$M" && break
        sleep 0.05
    done
    mountpoint -q "$M" || return 1
    if is_fuse "$SYSNAME"; then
        DPID=$(find_daemon "$M") || {
            echo "no daemon found for $M" >>"$LOG"
            DPID=
        }
        [ -n "$DPID" ] && STARTED+=("$DPID $M")
    fi
    return 0
}

unmount_system() {
    local i
    if is_fuse "$SYSNAME"; then
        for ((i = 0; i < 20; i++)); do
            fusermount3 -u "$M" 2>>"$LOG" && break
            sleep 0.2
        done
        mountpoint -q "$M" && umount -l "$M"
        if [ -n "$DPID" ]; then
            for ((i = 0; i < 100; i++)); do
                [ -d "/proc/$DPID" ] || break
                sleep 0.05
            done
            if [ -d "/proc/$DPID" ]; then
                echo "daemon $DPID of $M did not exit: killed" >>"$LOG"
                kill "$DPID" 2>/dev/null
            fi
        fi
    else
        for ((i = 0; i < 20; i++)); do
            umount "$M" 2>>"$LOG" && break
            sleep 0.2
        done
        mountpoint -q "$M" && umount -l "$M"
    fi
    rmdir "$M" 2>/dev/null
    rm -rf "$R/x/$SYSNAME.$RUN"
}

# A failure of rlayerfs makes the exit status 1; one of a reference system is only reported.
FAILED=0
REF_FAILED=0
failed() {
    case "$SYSNAME" in rlayerfs*) FAILED=1 ;; *) REF_FAILED=1 ;; esac
}

# The daemon's request counts so far (rlayerfs systems: RLAYERFS_STATS names the file its
# SIGUSR1 report is written to, replaced by a rename once complete) copied to $1.
snap_requests() {
    local i
    [ -n "$STATS" ] && [ -n "$DPID" ] || return 1
    rm -f "$STATS"
    kill -USR1 "$DPID" 2>/dev/null || return 1
    for ((i = 0; i < 500; i++)); do
        [ -s "$STATS" ] && break
        sleep 0.01
    done
    [ -s "$STATS" ] && cp "$STATS" "$1"
}

# req_delta BEFORE AFTER OPS: requests per operation between two snapshots, as
# "TOTAL<tab>TRANSPORT<tab>OPCODE=N ..." (opcodes by count, per operation; two decimals).
req_delta() {
    perl -MJSON::PP -e '
        my ($before, $after, $ops) = @ARGV;
        my $read = sub { local $/; open(my $f, "<", $_[0]) or die "$_[0]: $!"; decode_json(<$f>) };
        my ($j, $k) = ($read->($before), $read->($after));
        my ($x, $y) = ($j->{requests}, $k->{requests});
        my %d;
        for my $k (keys %$y) { my $n = $y->{$k} - ($x->{$k} // 0); $d{$k} = $n if $n > 0 }
        my $t = 0; $t += $_ for values %d;
        my @parts = map { sprintf("%s=%.2f", $_, $d{$_} / $ops) } sort { $d{$b} <=> $d{$a} || $a cmp $b } keys %d;
        printf "%.2f\t%s\t%s\n", $t / $ops, $k->{transport}, @parts ? join(" ", @parts) : "none";
    ' "$@"
}

# measure NAME 'SHELL COMMAND' [OPS]: times one step (M and D set), with the daemon's CPU
# and, for rlayerfs, the FUSE requests it served per operation (OPS operations in the step:
# files, names, listings, MiB; 1 if not given).
measure() {
    local name=$1 cmd=$2 ops=${3:-1} t0 t1 c0 c1 rc req=- have_before=0
    sync -f "$R"
    snap_requests "$R/x/req-before.json" && have_before=1
    c0=$(daemon_ticks)
    t0=$EPOCHREALTIME
    "${PIN[@]}" bash -c "$cmd" >/dev/null 2>>"$LOG"
    rc=$?
    t1=$EPOCHREALTIME
    c1=$(daemon_ticks)
    if [ "$have_before" = 1 ] && snap_requests "$R/x/req-after.json"; then
        local delta transport byop
        if delta=$(req_delta "$R/x/req-before.json" "$R/x/req-after.json" "$ops" 2>>"$LOG"); then
            IFS=$'\t' read -r req transport byop <<<"$delta"
            printf '%s\t#req\t%s\t%s\t%s\t%s\t%s\n' "$SCEN" "$SYSNAME" "$RUN" "$name" "$byop" "$transport" >>"$RESULTS"
            printf 'requests per operation (%s ops, %s): %s/%s on %s run %s: %s\n' "$ops" "$transport" \
                "$SCEN" "$name" "$SYSNAME" "$RUN" "$byop" >>"$LOG"
        fi
    fi
    rm -f "$R/x/req-before.json" "$R/x/req-after.json"
    local secs cpu=-
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
    [ -n "$DPID" ] && cpu=$(awk -v t=$((c1 - c0)) -v h="$CLK_TCK" 'BEGIN { printf "%.2f", t / h }')
    if [ "$rc" -ne 0 ]; then
        echo "FAILED ($rc): $SCEN/$name on $SYSNAME run $RUN: $cmd" >>"$LOG"
        secs=FAIL
        failed
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$SCEN" "$name" "$SYSNAME" "$RUN" "$secs" "$cpu" "$req" >>"$RESULTS"
    printf '    %-8s %-18s %-16s run %s: %ss cpu %s req/op %s\n' "$SCEN" "$name" "$SYSNAME" "$RUN" "$secs" "$cpu" "$req"
    sync -f "$R"
}

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# The merged tree as a plain directory: the lowers copied through a read-only kernel mount.
make_plain_master() {
    local ld=$1 dst=$D/plain tmp=$R/m/plain-src
    [ -d "$dst" ] && return 0
    mkdir -p "$dst" "$tmp"
    if [[ "$ld" == *:* ]]; then
        mount -t overlay overlay -o "lowerdir=$ld" "$tmp" || return 1
        cp -a "$tmp/." "$dst/"
        umount "$tmp"
    else
        cp -a "$ld/." "$dst/"
    fi
    rmdir "$tmp"
}

# ---------------------------------------------------------------- main loop
say "sizes: walk $WALK_FILES files/$WALK_LAYERS layers, stat $STAT_NAMES names, readdir $READDIR_ENTRIES," \
    "seqread $SEQ_MIB MiB, smallread $SMALL_FILES, append to $APPEND_MIB MiB, chmod $CHMOD_FILES," \
    "untar $UNTAR_FILES, rm $RM_FILES, cp -a $CPA_FILES, git $GIT_FILES files; $RUNS run(s)" \
    "${PIN[*]:+, pinned (taskset -c 0)}"
say "log: $LOG"

for SCEN in "${SCENARIOS[@]}"; do
    D=$R/$SCEN
    mkdir -p "$D"
    say "scenario $SCEN: generating"
    t0=$EPOCHREALTIME
    "gen_$SCEN" >>"$LOG" 2>&1 || { say "  generation failed (see $LOG): skipped"; note "$SCEN: generation failed"; continue; }
    LD=$("lowers_$SCEN")
    plain_ok=1
    if [[ " ${SYS[*]} " == *" plain "* ]]; then
        make_plain_master "$LD" >>"$LOG" 2>&1 || { plain_ok=0; note "$SCEN: no plain copy"; }
    fi
    sync -f "$R"
    say "  generated in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s"
    here=()
    for s in "${SYS[@]}"; do
        case "$s" in *-volatile | kernel-metacopy | rlayerfs-nometacopy)
            [ "${KIND[$SCEN]}" = rw ] || continue ;;
        esac
        [ "$s" = plain ] && [ "$plain_ok" = 0 ] && continue
        here+=("$s")
    done
    for ((RUN = 1; RUN <= RUNS; RUN++)); do
        n=${#here[@]}
        for ((k = 0; k < n; k++)); do
            SYSNAME=${here[$(((k + RUN - 1) % n))]}
            DPID='' STATS=
            if [ "$SYSNAME" = plain ]; then
                if [ "${KIND[$SCEN]}" = rw ]; then
                    M=$R/x/plain.$RUN
                    UP=$M
                    cp -a "$D/plain" "$M"
                else
                    M=$D/plain
                fi
                [ -n "${COLD[$SCEN]:-}" ] && drop_caches
            else
                [ -n "${COLD[$SCEN]:-}" ] && drop_caches
                if ! mount_system "$LD"; then
                    say "    $SYSNAME: mount failed (see $LOG)"
                    printf '%s\t%s\t%s\t%s\tFAIL\t-\n' "$SCEN" mount "$SYSNAME" "$RUN" >>"$RESULTS"
                    failed
                    rm -rf "$R/x/$SYSNAME.$RUN"
                    rmdir "$M" 2>/dev/null
                    continue
                fi
            fi
            "run_$SCEN"
            if [ -n "$DPID" ]; then
                hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$DPID/status" 2>/dev/null)
                printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$SCEN" "#hwm" "$SYSNAME" "$RUN" "${hwm:-0}" - >>"$RESULTS"
            fi
            if [ "$SYSNAME" = plain ]; then
                [ "${KIND[$SCEN]}" = rw ] && rm -rf "$M"
            else
                unmount_system
            fi
        done
    done
    # Free the space of this scenario's layers before the next one.
    rm -rf "$D"
done

# ---------------------------------------------------------------- summary
summarize "$RESULTS" "${SYS[*]}"
say ""
say "raw results: $RESULTS"
if [ "${#SKIPPED[@]}" -gt 0 ]; then
    say "skipped or degraded:"
    for s in "${SKIPPED[@]}"; do say "  - $s"; done
fi
[ "$REF_FAILED" = 0 ] || say "some steps of reference systems FAILED: see $LOG"
[ "$FAILED" = 0 ] || { say "some rlayerfs steps FAILED: see $LOG"; exit 1; }
exit 0
