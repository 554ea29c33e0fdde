//! The documentation stays in step with the code and stays a user's documentation:
//! - the man pages and shell completions that `rlayerfs generate` writes (for
//!   scripts/install.sh) cover what `--help` shows: every subcommand, and every long option of
//!   rlayerfs and of each subcommand, appears in the man pages and in the bash, zsh and fish
//!   completions; and `man -l` renders each page without a warning (when man is installed:
//!   scripts/setup.sh installs man-db for the tests);
//! - the README is a front page (short, the two commands first, one benchmark table) and
//!   the rest lives in docs/;
//! - README.md, docs/*.md and tests/README.md hold no lab notes (no words about sessions,
//!   issue numbers or commit hashes: git history keeps those), their relative links and
//!   `#anchors` resolve, and every script, test or source file they name exists.
//!
//! Needs no root.

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

/// The repository root (where Cargo.toml is).
fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, tests/README.md and every docs/*.md, as (path relative to the root, text).
fn documents() -> Vec<(String, String)> {
    let mut names = vec!["README.md".to_string(), "tests/README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(repo().join(&n)).expect(&n);
            (n, text)
        })
        .collect()
}

/// The README's longest allowed length: a front page, the rest is in docs/.
const README_MAX_LINES: usize = 170;

/// The documents docs/ must hold (the README links to each).
const DOCS: &[&str] = &[
    "docs/usage.md",
    "docs/semantics.md",
    "docs/podman.md",
    "docs/images.md",
    "docs/reliability.md",
    "docs/benchmarks.md",
    "docs/design.md",
];

#[test]
fn readme_is_a_front_page() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines (at most {README_MAX_LINES}: move details to docs/)"
    );
    // The first two commands are the demo and the tests, in that order.
    let commands: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("    scripts/"))
        .map(|l| l.split_whitespace().next().unwrap())
        .take(2)
        .collect();
    assert_eq!(commands, ["scripts/demo.sh", "scripts/test.sh"], "README");
    // One benchmark table (the bench.sh header line), with the command that made it.
    let tables = readme
        .lines()
        .filter(|l| l.starts_with("scenario ") && l.contains("| kernel"))
        .count();
    assert_eq!(tables, 1, "README: one benchmark table");
    assert!(
        readme.contains("scripts/bench.sh --"),
        "README: the table's command"
    );
    for doc in DOCS {
        assert!(repo().join(doc).is_file(), "{doc} missing");
        assert!(readme.contains(&format!("]({doc})")), "README links {doc}");
    }
}

/// Lab-note wording found in `text`: "session 3", "this session", "issue 6", "issue #6",
/// "this round", or a word that looks like a commit hash (7 to 40 hex digits with a digit
/// and a letter). A hash right after "sha256:" is a digest and one right after
/// "xfstests-dev " names the upstream revision a figure was measured on: both allowed.
fn lab_notes(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut found = Vec::new();
    let phrases = [
        "this session",
        "that session",
        "last session",
        "previous session",
        "earlier session",
        "next session",
        "sessions",
        "session's",
        "this round",
        "previous round",
    ];
    for p in phrases {
        if lower.contains(p) {
            found.push(p.to_string());
        }
    }
    for word in ["session", "issue"] {
        for (i, _) in lower.match_indices(word) {
            let rest = &lower[i + word.len()..];
            let numbered = rest
                .strip_prefix(' ')
                .map(|r| r.starts_with(|c: char| c.is_ascii_digit() || c == '#'))
                .unwrap_or(false);
            if numbered {
                found.push(lower[i..(i + word.len() + 4).min(lower.len())].to_string());
            }
        }
    }
    let bytes = lower.as_bytes();
    let mut start = None;
    for i in 0..=bytes.len() {
        let alnum = i < bytes.len() && bytes[i].is_ascii_alphanumeric();
        match (alnum, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                let w = &lower[s..i];
                let hexlike = (7..=40).contains(&w.len())
                    && w.bytes().all(|b| b.is_ascii_hexdigit())
                    && w.bytes().any(|b| b.is_ascii_digit())
                    && w.bytes().any(|b| b.is_ascii_alphabetic());
                let before = &lower[..s];
                let allowed = before.ends_with("sha256:") || before.ends_with("xfstests-dev ");
                if hexlike && !allowed {
                    found.push(w.to_string());
                }
                start = None;
            }
            _ => {}
        }
    }
    found
}

#[test]
fn lab_notes_are_recognised() {
    assert!(lab_notes("the table of session 3 and this session").len() >= 2);
    assert!(!lab_notes("Targets of issue 6").is_empty());
    assert!(!lab_notes("see issue #12").is_empty());
    assert!(!lab_notes("before the change 6f9a5d0,").is_empty());
    assert!(!lab_notes("final code of this round").is_empty());
    let clean = "a FUSE session; 1000000 files; sha256:0123abcd4567ef; xfstests-dev 63a29724; \
                 cpu0.86s x1.30 0x81 deadbeef; a known issue";
    assert_eq!(lab_notes(clean), Vec::<String>::new());
}

#[test]
fn docs_hold_no_lab_notes() {
    for (name, text) in documents() {
        let found = lab_notes(&text);
        assert!(
            found.is_empty(),
            "{name}: historical wording {found:?} (git history keeps it; state current facts)"
        );
    }
}

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_` dropped, spaces
/// as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a markdown text's headings (outside code blocks).
fn anchors(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for l in text.lines() {
        if l.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && l.starts_with('#') {
            out.push(anchor(l.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn doc_links_and_named_files_exist() {
    let docs = documents();
    for (name, text) in &docs {
        let dir = Path::new(name).parent().unwrap();
        // Markdown links: ](target)
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let target = &rest[..rest.find(')').expect("closed link")];
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, frag) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                Path::new(name).to_path_buf()
            } else {
                normalise(&dir.join(file))
            };
            let rel = path.to_string_lossy().into_owned();
            assert!(
                repo().join(&path).exists(),
                "{name}: link to {target}: {rel} does not exist"
            );
            if !frag.is_empty() {
                let linked = std::fs::read_to_string(repo().join(&path)).unwrap();
                assert!(
                    anchors(&linked).iter().any(|a| a == frag),
                    "{name}: link to {target}: no heading #{frag} in {rel}"
                );
            }
        }
        // Files of the repository named in the text.
        for word in text.split(|c: char| c.is_whitespace() || "`()[],;:'\"".contains(c)) {
            let w = word.trim_end_matches('.');
            let named = ["scripts/", "tests/", "src/", "benches/", "docs/", ".ci/"]
                .iter()
                .any(|p| w.starts_with(p));
            let file_like = [".sh", ".rs", ".md"].iter().any(|e| w.ends_with(e));
            if named && file_like && !w.contains('*') {
                assert!(
                    repo().join(w).exists(),
                    "{name} names {w}, which does not exist"
                );
            }
        }
    }
}

/// `a/../b` as `b` (the links are relative to their document's directory).
fn normalise(p: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
