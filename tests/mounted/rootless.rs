//! Rootless mounts: rlayerfs in a user namespace of its own (as podman runs it rootless),
//! without CAP_SYS_ADMIN in the initial namespace, so its overlay xattrs are
//! `user.overlay.*`. What it writes must mean the same after a remount, and what kernel
//! overlayfs with `userxattr` makes of it is pinned here.

use crate::common;

use std::process::Command;

use common::fixture::Stack;
use common::mount::{KernelOverlay, MountDirs};
use common::{can_mount, sys};

/// Runs `script` in `unshare -Urm` with `$B` the binary, `$O` the stack's `-o` string and
/// `$M` its mountpoint; returns stdout, panicking with stderr on failure.
fn rootless(stack: &Stack, script: &str) -> String {
    let o = format!(
        "lowerdir={},upperdir={},workdir={}",
        stack.lowerdir(),
        stack.upper.display(),
        stack.work.display()
    );
    let out = Command::new("unshare")
        .args(["-Urm", "sh", "-c", &format!("set -e; {script}")])
        .env("B", env!("CARGO_BIN_EXE_rlayerfs"))
        .env("O", &o)
        .env("M", &stack.mnt)
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Rootless, a lower hard link written through one name stays one file under every name,
/// also after a remount (an index in `WORKDIR/index` with `user.overlay.origin`/`nlink`, read
/// back without `open_by_handle_at`): data a container saw never changes on remount.
#[test]
fn rootless_hard_links_keep_their_content_across_remounts() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .file("d/a", b"orig\n")
        .hardlink("d/b", "d/a")
        .hardlink("e", "d/a");
    let show = "cat $M/d/a $M/d/b $M/e; stat -c '%h %i' $M/d/a $M/d/b $M/e | sort -u";
    let out = rootless(
        &stack,
        &format!(
            "$B mount -o $O $M; echo changed >> $M/d/a; chmod 600 $M/e; {show}; fusermount3 -u $M; \
             echo remounted; $B mount -o $O $M; {show}; rm $M/d/a; stat -c '%h' $M/d/b; \
             fusermount3 -u $M; echo remounted; $B mount -o $O $M; stat -c '%h %a' $M/d/b $M/e; \
             cat $M/e; fusermount3 -u $M"
        ),
    );
    let lines: Vec<&str> = out.lines().collect();
    // One `stat` line for the three names: one link count (3) and one inode number.
    let same = lines.get(6).copied().unwrap_or_default();
    assert!(same.starts_with("3 "), "{out}");
    assert_eq!(
        lines,
        [
            "orig",
            "changed",
            "orig",
            "changed",
            "orig",
            "changed",
            same,
            "remounted",
            "orig",
            "changed",
            "orig",
            "changed",
            "orig",
            "changed",
            same,
            "2",
            "remounted",
            "2 600",
            "2 600",
            "orig",
            "changed"
        ],
        "{out}"
    );
}

/// Rootless, a renamed lower directory gets `user.overlay.redirect`, which rlayerfs follows
/// (also once that upper is the top lower of a new stack). Kernel overlayfs with
/// `userxattr` does not: `userxattr` implies `redirect_dir=nofollow`, so the kernel
/// refuses to rename such a directory (EXDEV, `mv` then copies) and refuses to look up a
/// directory carrying a redirect in its upper (EPERM). This pins both behaviours.
#[test]
fn rootless_redirect_is_followed_here_and_refused_by_kernel_userxattr() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack.lower(0).file("a/f", b"lower content");
    let stdout = rootless(
        &stack,
        "$B mount -o $O $M; mv $M/a $M/b; cat $M/b/f; echo; fusermount3 -u $M; \
         $B mount -o $O $M; cat $M/b/f; echo; fusermount3 -u $M",
    );
    assert_eq!(stdout, "lower content\nlower content\n");
    let upper_b = stack.upper.join("b");
    assert_eq!(
        sys::get_xattr(&upper_b, "user.overlay.redirect")
            .ok()
            .as_deref(),
        Some(&b"a"[..]),
        "rootless redirect format"
    );
    assert!(sys::get_xattr(&upper_b, "trusted.overlay.redirect").is_err());

    // Kernel overlayfs with userxattr over the same upper: EPERM on the redirected dir.
    let mut dirs = MountDirs::of(&stack);
    dirs.work = stack.fresh_dir("kwork");
    dirs.mnt = stack.fresh_dir("kmnt");
    let kmnt = dirs.mnt.clone();
    let k = KernelOverlay::mount_with(&dirs, "userxattr").expect("kernel mount with userxattr");
    let err = std::fs::symlink_metadata(kmnt.join("b")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EPERM),
        "kernel lookup of b: {err}"
    );
    k.unmount().unwrap();

    // And the kernel itself will not rename a lower directory with userxattr.
    let fresh = Stack::new(1);
    fresh.lower(0).file("a/f", b"x");
    let k = KernelOverlay::mount_with(&MountDirs::of(&fresh), "userxattr")
        .expect("kernel mount with userxattr");
    let err = std::fs::rename(fresh.mnt.join("a"), fresh.mnt.join("b")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EXDEV),
        "kernel rename: {err}"
    );
    k.unmount().unwrap();
}

/// Rootless, only regular files and directories can carry `user.overlay.*` records: copying
/// up a symlink, a FIFO or a hard-linked symlink must work without them (as before the
/// index was kept rootless), and both names of a lower hard-linked symlink can go.
#[test]
fn rootless_copy_up_of_other_types_needs_no_records() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    stack
        .lower(0)
        .symlink("s", "target")
        .symlink("d/a", "t")
        .hardlink("d/b", "d/a")
        .fifo("p")
        .hardlink("p2", "p");
    let out = rootless(
        &stack,
        "$B mount -o $O $M; touch -h $M/s; echo touched; unlink $M/d/a; unlink $M/d/b; \
         ls -A $M/d; echo emptied; mv $M/p $M/p3; (cd $M && stat -c '%n %h %F' p2 p3); \
         fusermount3 -u $M",
    );
    assert_eq!(out, "touched\nemptied\np2 2 fifo\np3 2 fifo\n", "{out}");
}

/// Rootless nesting, as podman runs inside a rootless container: kernel overlayfs with
/// `userxattr` in the user namespace, its lowers, upper and workdir on a rootless rlayerfs
/// mount there (kernel overlayfs probes O_TMPFILE, RENAME_WHITEOUT and `user.*` xattrs on
/// it). Deletions, an opaque directory, a directory moved (copied: `userxattr` renames no
/// lower directory) and an unnamed file give, live and after an inner remount, what the
/// same inner stack on a plain directory of the namespace gives.
#[test]
fn rootless_kernel_overlayfs_nested_on_rlayerfs() {
    if !can_mount() {
        return;
    }
    let stack = Stack::new(1);
    let script = r#"
T=@O_TMPFILE@
inner() {
  mkdir -p $1/il/d $1/il/e/sub $1/iu $1/iw $1/im
  echo f > $1/il/f; echo g > $1/il/d/g; echo k > $1/il/e/sub/k
  o="lowerdir=$1/il,upperdir=$1/iu,workdir=$1/iw,userxattr"
  mount -t overlay overlay -o "$o" $1/im
  rm $1/im/f; rm -r $1/im/d; mkdir $1/im/d; echo n > $1/im/d/n; rm $1/im/e/sub/k
  mv $1/im/e $1/im/e2
  perl -e 'use Fcntl; sysopen(my $f, $ARGV[0], O_RDWR | $ARGV[1], 0600) or die "O_TMPFILE: $!"' $1/im $T
  find $1/im -printf '%P %y %m %s\n' | sort; umount $1/im
  mount -t overlay overlay -o "$o" $1/im
  echo remounted; find $1/im -printf '%P %y %m %s\n' | sort; cat $1/im/d/n; umount $1/im
}
P=$(dirname $M)/plain; mkdir -p $P
inner $P; echo NESTED; $B mount -o $O $M; inner $M/n; fusermount3 -u $M
"#;
    let script = script.replace("@O_TMPFILE@", &libc::O_TMPFILE.to_string());
    let out = rootless(&stack, &script);
    let (plain, nested) = out.split_once("NESTED\n").expect("both runs");
    assert_eq!(
        nested, plain,
        "nested on rlayerfs (left) vs on a plain directory"
    );
    assert!(
        plain.contains("e2/sub d") && !plain.contains("\nf f"),
        "{plain}"
    );
    assert!(plain.ends_with("n\n"), "{plain}");
}
