//! Command-line arguments and entry points of `rlayerfs unpack` and `rlayerfs commit`.
//! The top-level CLI (src/cli.rs) embeds these `clap::Args` structs as subcommands and
//! calls [`run_unpack`] / [`run_commit`].

use std::io::IsTerminal;
use std::path::PathBuf;

use super::archive::Compression;
use super::commit::{append_to_image, commit_over, CommitOptions};
use super::description::{lowerdir_option, DESCRIPTION_FILE};
use super::error::ImageError;
use super::oci::Platform;
use super::source::InputFormat;
use super::unpack::{unpack, DeviceMode, UnpackOptions};

/// `rlayerfs unpack IMAGE DEST`
#[derive(clap::Args, Debug, Clone)]
pub struct UnpackArgs {
    /// A layer tarball (plain, gzip or zstd), an OCI image layout (directory or tar), or a
    /// `docker save` archive.
    pub image: PathBuf,
    /// Destination directory (must not exist, or be empty): one directory per layer plus
    /// rlayerfs-image.json.
    pub dest: PathBuf,
    /// Platform to pick from a multi-platform image, OS/ARCH[/VARIANT].
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// Image to pick: OCI `org.opencontainers.image.ref.name` or docker repo tag.
    #[arg(long = "ref", value_name = "NAME")]
    pub reference: Option<String>,
    /// Input format; detected from the content by default.
    #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
    pub format: InputFormat,
    /// Device nodes: created when root; unprivileged, refused unless `skip` or
    /// `placeholder` (empty file with user.containers.override_stat).
    #[arg(long, value_enum, default_value_t = DeviceMode::Auto)]
    pub devices: DeviceMode,
    /// After unpacking, print the overlay lowerdir value (top layer first, `:` escaped).
    #[arg(long)]
    pub print_lowerdir: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `rlayerfs commit UPPER [OUT]`
#[derive(clap::Args, Debug, Clone)]
pub struct CommitArgs {
    /// The overlay upper directory to export.
    pub upper: PathBuf,
    /// Output layer tarball (optional with --image).
    #[arg(required_unless_present = "image")]
    pub out: Option<PathBuf>,
    /// Compress with gzip.
    #[arg(long, conflicts_with = "zstd")]
    pub gzip: bool,
    /// Compress with zstd.
    #[arg(long)]
    pub zstd: bool,
    /// Append the layer to this unpacked image (DEST of unpack) or OCI layout as a new image.
    #[arg(long, requires = "tag")]
    pub image: Option<PathBuf>,
    /// Name of the new image (OCI ref name / description tag).
    #[arg(long, requires = "image")]
    pub tag: Option<String>,
    /// A lower layer of the upper (repeat, top first, as `lowerdir=`). Needed when the
    /// container changed a hard-linked lower file (its other names must be exported); an
    /// unpacked --image gives its own layers by default.
    #[arg(long = "lower", value_name = "DIR")]
    pub lowers: Vec<PathBuf>,
    /// Base image in an OCI layout (ref name); by default the one matching --platform.
    #[arg(long = "from", value_name = "REF")]
    pub from: Option<String>,
    /// Platform of the base image in an OCI layout.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// No progress display.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `rlayerfs unpack`.
pub fn run_unpack(args: &UnpackArgs) -> Result<(), ImageError> {
    let opts = UnpackOptions {
        platform: Platform::parse(&args.platform)?,
        reference: args.reference.clone(),
        format: args.format,
        devices: args.devices,
        progress: !args.quiet && std::io::stderr().is_terminal(),
    };
    let report = unpack(&args.image, &args.dest, &opts)?;
    if args.print_lowerdir {
        let dirs = super::image_lowerdirs(&args.dest)?;
        println!("{}", lowerdir_option(&dirs));
    } else if !args.quiet {
        eprintln!(
            "unpacked {} layer(s), {} entries into {}",
            report.description.layers.len(),
            report.entries,
            crate::printable::escape(&args.dest.display().to_string())
        );
    }
    Ok(())
}

/// Runs `rlayerfs commit`.
pub fn run_commit(args: &CommitArgs) -> Result<(), ImageError> {
    let compression = if args.gzip {
        Compression::Gzip
    } else if args.zstd {
        Compression::Zstd
    } else {
        Compression::None
    };
    let opts = CommitOptions {
        compression,
        progress: !args.quiet && std::io::stderr().is_terminal(),
    };
    // Without OUT the blob is written beside the image and removed afterwards.
    let (out, temporary) = match (&args.out, &args.image) {
        (Some(o), _) => (o.clone(), false),
        (None, Some(img)) => (
            img.join(format!(".rlayerfs-commit.{}.tar", std::process::id())),
            true,
        ),
        (None, None) => return Err(ImageError::Usage("commit needs OUT or --image".into())),
    };
    let lowers = match (&args.image, args.lowers.is_empty()) {
        (Some(img), true) if img.join(DESCRIPTION_FILE).is_file() => super::image_lowerdirs(img)?,
        _ => args.lowers.clone(),
    };
    let report = commit_over(&args.upper, &lowers, &out, &opts);
    let result = report.and_then(|report| {
        println!("digest: {}", report.digest);
        println!("diff_id: {}", report.diff_id);
        println!("size: {}", report.size);
        if let (Some(img), Some(tag)) = (&args.image, &args.tag) {
            let platform = Platform::parse(&args.platform)?;
            let a = append_to_image(img, &out, &report, tag, args.from.as_deref(), &platform)?;
            println!("config: {}", a.config_digest);
            if let Some(m) = a.manifest_digest {
                println!("manifest: {m}");
            }
        }
        Ok(())
    });
    if temporary {
        let _ = std::fs::remove_file(&out);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    #[derive(Parser)]
    struct Top {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Subcommand)]
    enum Cmd {
        Unpack(UnpackArgs),
        Commit(CommitArgs),
    }

    /// The command line `t ARGS...`, parsed (panics if it is refused).
    fn parse<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Cmd {
        let argv = std::iter::once("t".as_ref()).chain(args.iter().map(|a| a.as_ref()));
        match Top::try_parse_from(argv) {
            Ok(top) => top.cmd,
            Err(e) => panic!("arguments refused: {e}"),
        }
    }

    fn parse_unpack<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> UnpackArgs {
        match parse(args) {
            Cmd::Unpack(u) => u,
            Cmd::Commit(_) => panic!("not an unpack command"),
        }
    }

    fn parse_commit<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> CommitArgs {
        match parse(args) {
            Cmd::Commit(c) => c,
            Cmd::Unpack(_) => panic!("not a commit command"),
        }
    }

    #[test]
    fn arguments_are_consistent() {
        Top::command().debug_assert();
        assert!(
            Top::try_parse_from(["t", "commit", "upper"]).is_err(),
            "OUT or --image"
        );
        assert!(Top::try_parse_from(["t", "commit", "u", "o", "--gzip", "--zstd"]).is_err());
        assert!(
            Top::try_parse_from(["t", "commit", "u", "--image", "i"]).is_err(),
            "--tag"
        );
        assert!(Top::try_parse_from(["t", "commit", "u", "--image", "i", "--tag", "x"]).is_ok());
        let u = parse_unpack(&[
            "unpack",
            "img",
            "dest",
            "--platform",
            "linux/arm64",
            "--devices",
            "skip",
        ]);
        assert_eq!(u.devices, DeviceMode::Skip);
        assert_eq!(u.format, InputFormat::Auto);
    }

    #[test]
    fn commit_then_unpack_through_the_entry_points() {
        let tmp = tempfile::tempdir().unwrap();
        let upper = tmp.path().join("upper");
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(upper.join("etc/f"), b"f").unwrap();
        let out = tmp.path().join("layer.tar.zst");
        let c = parse_commit(&[
            "commit".as_ref(),
            upper.as_os_str(),
            out.as_os_str(),
            "--zstd".as_ref(),
            "-q".as_ref(),
        ]);
        run_commit(&c).unwrap();
        let dest = tmp.path().join("dest");
        let u = parse_unpack(&[
            "unpack".as_ref(),
            out.as_os_str(),
            dest.as_os_str(),
            "--print-lowerdir".as_ref(),
        ]);
        run_unpack(&u).unwrap();
        assert_eq!(std::fs::read(dest.join("layers/0/etc/f")).unwrap(), b"f");
        // Append through the CLI without OUT: the temporary blob is removed.
        let c = parse_commit(&[
            "commit".as_ref(),
            upper.as_os_str(),
            "--image".as_ref(),
            dest.as_os_str(),
            "--tag".as_ref(),
            "next".as_ref(),
        ]);
        run_commit(&c).unwrap();
        assert_eq!(super::super::image_lowerdirs(&dest).unwrap().len(), 2);
        let leftovers: Vec<_> = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".rlayerfs"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
