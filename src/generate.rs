//! `rlayerfs generate man DIR` and `rlayerfs generate completions SHELL DIR` (not in
//! `--help`, the man pages or the completions): the man pages and shell completions, made from the same clap definitions as
//! `--help` so that they never drift from it. scripts/install.sh runs them at install time;
//! nothing generated is checked in.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use clap_complete::Shell;
use clap_mangen::Man;

/// The man section: rlayerfs mounts filesystems, an administrator's tool.
const SECTION: &str = "8";

/// Writes the man pages or shell completions of rlayerfs (scripts/install.sh runs it).
#[derive(Debug, Parser)]
#[command(name = "rlayerfs-generate", bin_name = "rlayerfs generate")]
struct GenerateArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Write rlayerfs.8 and one rlayerfs-SUBCOMMAND.8 per subcommand into DIR.
    Man { dir: PathBuf },
    /// Write the completion script for SHELL into DIR (rlayerfs.bash, _rlayerfs,
    /// rlayerfs.fish, …).
    Completions { shell: Shell, dir: PathBuf },
}

/// Runs `rlayerfs generate ARGS…` (`args` starting at `generate`) for the command line
/// `cmd`, printing each file written.
pub fn main(
    args: impl IntoIterator<Item = std::ffi::OsString>,
    cmd: clap::Command,
) -> Result<i32, String> {
    let args = match GenerateArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => return Ok(crate::cli::clap_exit(&e)),
    };
    let written = match &args.what {
        What::Man { dir } => man_pages(cmd, dir),
        What::Completions { shell, dir } => {
            let mut cmd = cmd;
            clap_complete::generate_to(*shell, &mut cmd, "rlayerfs", dir).map(|p| vec![p])
        }
    }
    .map_err(|e| format!("generate: {e}"))?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(0)
}

/// One page for rlayerfs itself and one per visible subcommand, as git's pages are: the main
/// page lists them as `rlayerfs-mount(8)`, …, and each shows its own options in full.
fn man_pages(cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    // Building sets the display names `rlayerfs-mount`, … that the page names come from.
    cmd.build();
    let mut pages = vec![cmd.clone()];
    pages.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    pages
        .into_iter()
        .map(|page| {
            let man = Man::new(page.clone()).section(SECTION);
            let path = dir.join(man.get_filename());
            let mut out = BufWriter::new(File::create(&path)?);
            render(&man, &page, &mut out)?;
            out.flush()?;
            Ok(path)
        })
        .collect()
}

/// clap_mangen's page, except that the long help after the options (the table of mount
/// options, signals, fstab) is kept as laid out in `--help`: clap_mangen would fill it into
/// running text.
fn render(man: &Man, cmd: &clap::Command, w: &mut dyn Write) -> io::Result<()> {
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(w)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(w)?;
    }
    if let Some(text) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) {
        writeln!(w, ".SH DETAILS\n.nf")?;
        for line in text.to_string().lines() {
            writeln!(w, "{}", roff_line(line))?;
        }
        writeln!(w, ".fi")?;
    }
    if cmd.get_version().is_some() {
        man.render_version_section(w)?;
    }
    Ok(())
}

/// One line of text as roff reads it literally: backslashes and dashes escaped (a plain `-`
/// may print as a hyphen that cannot be copied into a shell), and a leading `.` or `'` kept
/// from being read as a request.
fn roff_line(line: &str) -> String {
    let escaped = line.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::roff_line;

    #[test]
    fn roff_lines_are_literal() {
        assert_eq!(roff_line(r#"a "\:" b"#), r#"a "\e:" b"#);
        assert_eq!(roff_line("--lower"), r"\-\-lower");
        assert_eq!(roff_line(".SH x"), r"\&.SH x");
    }
}
