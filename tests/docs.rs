//! The man pages and shell completions that `rlayerfs generate` writes (for
//! scripts/install.sh) cover what `--help` shows: every subcommand, and every long option of
//! rlayerfs and of each subcommand, appears in the man pages and in the bash, zsh and fish
//! completions; and `man -l` renders each page without a warning (when man is installed:
//! scripts/setup.sh installs man-db for the tests). Needs no root.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_rlayerfs");

/// Runs rlayerfs with `args`, which must succeed; returns its stdout.
fn rlayerfs(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("run rlayerfs");
    assert!(
        out.status.success(),
        "rlayerfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The subcommands that `rlayerfs --help` lists (but `help`).
fn subcommands() -> Vec<String> {
    let help = rlayerfs(&["--help"]);
    let list = help
        .split("Commands:\n")
        .nth(1)
        .expect("--help lists commands");
    list.lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|&name| name != "help")
        .map(str::to_string)
        .collect()
}

/// The long options (without `--`) that `--help` of `args` lists.
fn long_options(args: &[&str]) -> Vec<String> {
    let mut args = args.to_vec();
    args.push("--help");
    rlayerfs(&args)
        .lines()
        .filter_map(|l| {
            // Option lines: "  -f, --foreground", "      --lower <DIR>".
            let l = l.trim_start();
            let l = match l.as_bytes() {
                [b'-', c, b',', b' ', ..] if *c != b'-' => &l[4..],
                _ => l,
            };
            let name = l.strip_prefix("--")?;
            let end = name
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(name.len());
            Some(name[..end].to_string()).filter(|n| !n.is_empty())
        })
        .collect()
}

/// A man page as text: rendered by `man -l` when man is installed (checking that it renders
/// without a warning), else its roff source with the escaped dashes plain.
fn man_text(page: &Path) -> String {
    let rendered = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "200")
        .env("MANPAGER", "cat")
        .env("LC_ALL", "C")
        .output();
    match rendered {
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && err.trim().is_empty(),
                "man -l {}: {err}",
                page.display()
            );
            let text = String::from_utf8(out.stdout).expect("UTF-8 page");
            assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{text}");
            text
        }
        Err(e) => {
            eprintln!("man not installed ({e}): checking the roff source only");
            std::fs::read_to_string(page)
                .expect("read page")
                .replace("\\-", "-")
        }
    }
}

#[test]
fn man_pages_and_completions_cover_help() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    rlayerfs(&["generate", "man", d]);
    for shell in ["bash", "zsh", "fish"] {
        rlayerfs(&["generate", "completions", shell, d]);
    }
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect(name);
    let (bash, zsh, fish) = (
        read("rlayerfs.bash"),
        read("_rlayerfs"),
        read("rlayerfs.fish"),
    );

    let subs = subcommands();
    assert!(
        ["mount", "unpack", "commit", "bench"]
            .iter()
            .all(|s| subs.iter().any(|x| x == s)),
        "{subs:?}"
    );
    let main = man_text(&dir.path().join("rlayerfs.8"));
    // The top-level form: rlayerfs [OPTIONS] MOUNTPOINT, then each subcommand.
    let mut pages = vec![(None, main.clone())];
    for sub in &subs {
        assert!(
            main.contains(&format!("rlayerfs-{sub}(8)")),
            "{sub} in rlayerfs(8)"
        );
        assert!(bash.contains(&format!("rlayerfs,{sub})")), "{sub} in bash");
        assert!(zsh.contains(&format!("'{sub}:")), "{sub} in zsh");
        assert!(fish.contains(&format!("-a \"{sub}\"")), "{sub} in fish");
        let page = man_text(&dir.path().join(format!("rlayerfs-{sub}.8")));
        pages.push((Some(sub.as_str()), page));
    }
    for (sub, page) in &pages {
        let args: Vec<&str> = sub.iter().copied().collect();
        let options = long_options(&args);
        assert!(options.iter().any(|o| o == "help"), "{sub:?}: {options:?}");
        // fish names the context on each line: the subcommand, or the top level.
        let fish_context = match sub {
            Some(s) => format!("__fish_rlayerfs_using_subcommand {s}"),
            None => "__fish_rlayerfs_needs_command".to_string(),
        };
        for o in &options {
            let long = format!("--{o}");
            assert!(
                page.contains(&long),
                "{long} of {sub:?} not in its man page"
            );
            assert!(
                bash.contains(&long),
                "{long} of {sub:?} not in bash completion"
            );
            assert!(
                zsh.contains(&long),
                "{long} of {sub:?} not in zsh completion"
            );
            assert!(
                fish.lines()
                    .any(|l| l.contains(&fish_context) && l.contains(&format!(" -l {o} "))),
                "{long} of {sub:?} not in fish completion"
            );
        }
    }
    // The long help (mount options) is in the pages, laid out as in --help.
    assert!(
        main.contains("lowerdir=TOP:...:BOTTOM   lower layers"),
        "{main}"
    );
}

#[test]
fn generate_is_not_in_help_or_completions() {
    let listed = |text: &str| {
        text.lines()
            .any(|l| l.trim_start().starts_with("generate "))
    };
    assert!(!listed(&rlayerfs(&["--help"])));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    rlayerfs(&["generate", "completions", "bash", d]);
    let bash = std::fs::read_to_string(dir.path().join("rlayerfs.bash")).unwrap();
    assert!(!bash.contains(" generate ") && !bash.contains("__generate"));
}
