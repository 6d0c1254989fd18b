//! The `trident` command line: one `match` from subcommand to library function.
//!
//! Exit codes (a contract with scripts and `Restart=`; documented in `docs/cli.md`):
//! 0 success, 1 unexpected failure, 2 usage error, 3–8 the error's category
//! (see [`crate::error::Category::exit_code`]).

use crate::error::{find_trident_error, TridentErrors};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};

/// Default location of the Host Configuration.
pub const DEFAULT_CONFIG: &str = "/etc/trident/config.yaml";
/// Default location of Trident's own settings file.
pub const DEFAULT_CONF_FILE: &str = "/etc/trident/trident.conf";

/// Trident keeps a Linux host in its declared state: installs the OS, updates it A/B,
/// and never leaves it unbootable.
#[derive(Debug, Parser)]
#[command(name = "trident", version = crate::VERSION, propagate_version = true)]
pub struct Cli {
    /// More detailed logs (RUST_LOG overrides).
    #[arg(short, long, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a Host Configuration; prints nothing and exits 0 when it is valid.
    Validate {
        /// Host Configuration file (YAML).
        #[arg(default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a Host Configuration and print what servicing it would do.
    Plan {
        /// Host Configuration file (YAML).
        #[arg(default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Show the host's state from the datastore.
    Get {
        /// What to show.
        #[arg(value_enum, default_value_t = GetKind::Status)]
        kind: GetKind,
        /// Output format.
        #[arg(long, value_enum, default_value_t = DataFormat::Yaml)]
        format: DataFormat,
        /// Datastore path (default: from /etc/trident/trident.conf, else
        /// /var/lib/trident/datastore.sqlite).
        #[arg(long)]
        datastore: Option<PathBuf>,
        /// Number of history entries (newest first) for `history`.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Work with COSI images.
    Cosi {
        #[command(subcommand)]
        command: CosiCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CosiCommand {
    /// Build a COSI 1.2 file from a raw GPT disk image.
    Build {
        #[command(flatten)]
        args: crate::cosi::build::args::BuildArgs,
        /// Output format of the summary.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Show a COSI file's metadata and sizes.
    Inspect {
        /// Path or URL (file://, http(s)://, oci://).
        image: String,
        #[command(flatten)]
        source: SourceArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Check every image's hash, zstd stream and size, writing nothing.
    Verify {
        /// Path or URL (file://, http(s)://, oci://).
        image: String,
        #[command(flatten)]
        source: SourceArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Publish a COSI file to an OCI registry as a one-layer artifact.
    Push {
        /// The COSI file.
        file: PathBuf,
        /// Destination, `oci://registry/repository:tag`.
        reference: String,
        #[command(flatten)]
        source: SourceArgs,
    },
}

/// Where and how images are fetched.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// Expected SHA-384 of the image's metadata.json (as in the Host Configuration's
    /// `image.sha384`); checked before anything else is read.
    #[arg(long)]
    pub sha384: Option<String>,
    /// Extra PEM CA certificate(s) to trust for HTTPS and registries.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Allow plain HTTP to OCI registries on loopback (127.0.0.1, localhost, [::1]).
    #[arg(long)]
    pub insecure_loopback_registry: bool,
}

impl SourceArgs {
    fn options(&self) -> crate::cosi::source::SourceOptions {
        crate::cosi::source::SourceOptions {
            ca_file: self.ca_file.clone(),
            oci_insecure_loopback: self.insecure_loopback_registry,
            ..Default::default()
        }
    }

    fn open(&self, image: &str) -> Result<crate::cosi::reader::Cosi> {
        let source = crate::cosi::open::open_source(image, &self.options())?;
        crate::cosi::reader::Cosi::open(source, self.sha384.as_deref())
            .with_context(|| format!("reading COSI image {image}"))
    }
}

/// Output format for human-or-machine output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
    Yaml,
}

/// Output format for data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataFormat {
    Yaml,
    Json,
}

/// What `trident get` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GetKind {
    Status,
    Configuration,
    LastError,
    History,
    RollbackChain,
    RollbackTarget,
}

/// Entry point of the `trident` binary; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    crate::logging::init(cli.verbose);
    match run(cli) {
        Ok(()) => 0,
        Err(err) => report(&err),
    }
}

/// Print an error once, as a chain, and map it to the exit code.
fn report(err: &anyhow::Error) -> i32 {
    if let Some(list) = err.downcast_ref::<TridentErrors>() {
        for e in &list.0 {
            eprintln!("error: {e}");
        }
        return list.0.first().map(|e| e.category.exit_code()).unwrap_or(1);
    }
    eprintln!("error: {err:#}");
    match find_trident_error(err) {
        Some(e) => e.category.exit_code(),
        None => 1,
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Plan { config, format } => plan(&config, format),
        Command::Get {
            kind,
            format,
            datastore,
            limit,
        } => get(kind, format, datastore.as_deref(), limit),
        Command::Cosi { command } => match command {
            CosiCommand::Inspect {
                image,
                source,
                format,
            } => cosi_inspect(&image, &source, format),
            CosiCommand::Verify {
                image,
                source,
                format,
            } => cosi_verify(&image, &source, format),
            CosiCommand::Push {
                file,
                reference,
                source,
            } => cosi_push(&file, &reference, &source),
            CosiCommand::Build { args, format } => cosi_build(&args, format),
        },
    }
}

fn read_config(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        anyhow::Error::new(
            crate::TridentError::invalid_input(
                "config-unreadable",
                format!("cannot read the Host Configuration: {e}"),
            )
            .on_device(path.display().to_string()),
        )
    })
}

/// Read, parse and validate a Host Configuration; print warnings to stderr.
fn load_config(path: &Path) -> Result<crate::config::HostConfiguration> {
    let text = read_config(path)?;
    let (hc, warnings) = crate::config::parse_and_validate(&text).map_err(anyhow::Error::new)?;
    for w in warnings {
        eprintln!("{w}");
    }
    Ok(hc)
}

fn validate(path: &Path) -> Result<()> {
    load_config(path).map(|_| ())
}

fn plan(path: &Path, format: Format) -> Result<()> {
    let hc = load_config(path)?;
    let plan = crate::config::plan::Plan::from_config(&hc);
    match format {
        Format::Human => print!("{plan}"),
        Format::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(&plan)?),
    }
    Ok(())
}

fn print_data<T: serde::Serialize>(value: &T, format: DataFormat) -> Result<()> {
    match format {
        DataFormat::Yaml => print!("{}", serde_yaml::to_string(value)?),
        DataFormat::Json => println!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

fn get(kind: GetKind, format: DataFormat, flag: Option<&Path>, limit: u32) -> Result<()> {
    use crate::datastore::{self, Datastore};
    let path = datastore::resolve_path(flag, None, Path::new(DEFAULT_CONF_FILE))?;
    if !path.exists() && kind == GetKind::Status {
        // A host Trident has never touched: a valid, explicit answer.
        eprintln!(
            "note: no datastore at {}: this host is not provisioned by Trident",
            path.display()
        );
        return print_data(&crate::status::HostStatus::default(), format);
    }
    let store = Datastore::open_existing(&path)?;
    match kind {
        GetKind::Status => print_data(&store.host_status()?, format),
        GetKind::Configuration => print_data(&store.host_status()?.spec, format),
        GetKind::LastError => print_data(&store.host_status()?.last_error, format),
        GetKind::History => print_data(&store.history(Some(limit as usize))?, format),
        GetKind::RollbackChain => print_data(&store.rollback_chain()?, format),
        GetKind::RollbackTarget => print_data(&store.rollback_chain()?.into_iter().next(), format),
    }
}

fn cosi_inspect(image: &str, source: &SourceArgs, format: Format) -> Result<()> {
    let cosi = source.open(image)?;
    let summary = cosi.summary();
    match format {
        Format::Human => print_text(&summary.render_human()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(&summary)?),
    }
    Ok(())
}

fn cosi_build(args: &crate::cosi::build::args::BuildArgs, format: Format) -> Result<()> {
    let progress = crate::progress::Reporter::new("building COSI");
    let summary = crate::cosi::build::build(&args.to_options(), &|done, total| {
        progress.update(done, total)
    });
    progress.finish();
    let summary = summary?;
    match format {
        Format::Human => print_text(&summary.render_human()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(&summary)?),
    }
    Ok(())
}

/// Print text, ending with exactly one newline.
fn print_text(s: &str) {
    println!("{}", s.trim_end_matches('\n'));
}

fn cosi_verify(image: &str, source: &SourceArgs, format: Format) -> Result<()> {
    let cosi = source.open(image)?;
    let progress = crate::progress::Reporter::new("verifying COSI");
    let verified = crate::cosi::verify::verify(&cosi, &|done, total| progress.update(done, total));
    progress.finish();
    let verified = verified?;
    match format {
        Format::Human => {
            for v in &verified {
                println!(
                    "ok  {}  {} -> {} bytes  sha384 {}",
                    v.path, v.compressed_size, v.uncompressed_size, v.sha384
                );
            }
            println!("{image}: {} images verified", verified.len());
        }
        Format::Json => println!("{}", serde_json::to_string_pretty(&verified)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(&verified)?),
    }
    Ok(())
}

fn cosi_push(file: &Path, reference: &str, source: &SourceArgs) -> Result<()> {
    // Refuse to publish something that is not a valid COSI file.
    crate::cosi::reader::Cosi::open(
        Box::new(crate::cosi::source::FileSource::new(file)?),
        source.sha384.as_deref(),
    )
    .with_context(|| format!("checking {} before publishing", file.display()))?;
    let digest = crate::cosi::oci::push(file, reference, &source.options())
        .with_context(|| format!("publishing {} to {reference}", file.display()))?;
    println!("{reference}@{digest}");
    Ok(())
}
