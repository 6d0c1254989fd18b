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
    /// Install the OS onto the disks of a Host Configuration (clean install).
    Install {
        /// Host Configuration file (YAML).
        #[arg(default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Operations allowed (a clean install needs both).
        #[arg(long, value_delimiter = ',', default_values = ["stage", "finalize"])]
        allowed_operations: Vec<Operation>,
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// A/B update to a Host Configuration: stage, then finalize (as allowed).
    Update {
        /// Host Configuration file (YAML).
        #[arg(default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Operations allowed: `stage`, `finalize` or both.
        #[arg(long, value_delimiter = ',', default_values = ["stage", "finalize"])]
        allowed_operations: Vec<Operation>,
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Write the update into the inactive volume (no reboot).
    Stage {
        /// Host Configuration file (YAML).
        #[arg(default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Arm one trial boot into the staged volume and reboot.
    Finalize {
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// On a trial boot: make the booted volume the default (or record the fallback).
    Commit {
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Go back to the previous OS.
    Rollback {
        /// Boot the OS still on the inactive volume (the default).
        #[arg(long, conflicts_with = "runtime")]
        ab: bool,
        /// Revert the last runtime update.
        #[arg(long)]
        runtime: bool,
        /// Only print what would happen.
        #[arg(long)]
        check: bool,
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Verbs the systemd units call (see docs/units.md); not a stable interface.
    #[command(hide = true)]
    Internal {
        #[command(subcommand)]
        command: InternalCommand,
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

/// Options shared by the servicing verbs.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Datastore path (default: from /etc/trident/trident.conf, else
    /// /var/lib/trident/datastore.sqlite).
    #[arg(long)]
    pub datastore: Option<PathBuf>,
    /// efivarfs directory (tests use a plain directory).
    #[arg(long, default_value = crate::boot::efivar::DEFAULT_ROOT)]
    pub efivars: PathBuf,
    /// Do not reboot at the end.
    #[arg(long)]
    pub no_reboot: bool,
    /// Root of the running OS (markers, staged stamp).
    #[arg(long, default_value = "/", hide = true)]
    pub host_root: PathBuf,
    /// Block device to treat as the running root (tests).
    #[arg(long, hide = true)]
    pub booted_root: Option<PathBuf>,
    /// Directory for temporary mounts and files.
    #[arg(long, default_value = "/run/trident/engine", hide = true)]
    pub work_dir: PathBuf,
}

/// `--via-dbus`: ask the Trident service instead of running the engine in this process.
#[derive(Debug, Clone, clap::Args)]
pub struct BusArgs {
    /// Ask the Trident service (io.trident.Trident1 on the system bus, bus-activated) to
    /// run the operation, and follow its progress until it completes.
    #[arg(long)]
    pub via_dbus: bool,
    /// With --via-dbus: this D-Bus address instead of the system bus (tests).
    #[arg(long, hide = true, requires = "via_dbus")]
    pub bus_address: Option<String>,
}

/// A servicing operation allowed by `--allowed-operations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Operation {
    Stage,
    Finalize,
}

/// Hidden verbs the systemd units call.
#[derive(Debug, Subcommand)]
pub enum InternalCommand {
    /// Stage from the first existing request file, else the configuration.
    Stage {
        /// Request files (Host Configurations written by tridentd), first existing wins.
        #[arg(long)]
        request: Vec<PathBuf>,
        /// Host Configuration used when no request file exists.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Arm the trial boot (the unit reboots).
    Finalize {
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Run one Host Configuration health check.
    HealthCheck {
        /// The check's name.
        name: String,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Record a failed health check on a trial boot (the unit reboots).
    HealthCheckFailed {
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Commit the trial boot.
    Commit {
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// On the old volume after a failed trial: record the rollback.
    RecordRollback {
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Clean install from the Host Configuration at LOC (the unit reboots).
    Install {
        /// Request files (Host Configurations written by tridentd), first existing wins.
        #[arg(long)]
        request: Vec<PathBuf>,
        /// Host Configuration used when no request file exists.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Manual A/B rollback: arm one trial boot of the previous OS (the unit reboots);
    /// with `--runtime`, revert the last runtime update (no reboot).
    Rollback {
        #[arg(long)]
        runtime: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
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
    /// A few lines for people: `status` (state, volumes, image, last error) and
    /// `history` (one line per entry); the other kinds print YAML.
    Summary,
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
        Command::Install {
            config,
            allowed_operations,
            engine,
            bus,
        } => {
            if bus.via_dbus {
                if !(allowed_operations.contains(&Operation::Stage)
                    && allowed_operations.contains(&Operation::Finalize))
                {
                    return Err(install_needs_both().into());
                }
                return via_dbus(&bus, &engine, "install", Some(&config), false);
            }
            install(&config, &allowed_operations, &engine, true)
        }
        Command::Update {
            config,
            allowed_operations,
            engine,
            bus,
        } if bus.via_dbus => {
            if allowed_operations.contains(&Operation::Stage) {
                via_dbus(&bus, &engine, "stage", Some(&config), false)?;
            }
            if allowed_operations.contains(&Operation::Finalize) {
                // Nothing to finalize after a runtime update or "no update required".
                let state = crate::dbus::client::proxy_at(bus.bus_address.as_deref())
                    .and_then(|p| p.servicing_state())
                    .map_err(crate::dbus::client::call_error)?;
                if state != "ab-update-staged" {
                    eprintln!("nothing to finalize (host is {state})");
                    return Ok(());
                }
                via_dbus(&bus, &engine, "finalize", None, false)?;
            }
            Ok(())
        }
        Command::Update {
            config,
            allowed_operations,
            engine,
            bus: _,
        } => update(&config, &allowed_operations, &engine),
        Command::Stage {
            config,
            engine,
            bus,
        } if bus.via_dbus => via_dbus(&bus, &engine, "stage", Some(&config), false),
        Command::Stage {
            config,
            engine,
            bus: _,
        } => update(&config, &[Operation::Stage], &engine),
        Command::Finalize { engine, bus } if bus.via_dbus => {
            via_dbus(&bus, &engine, "finalize", None, false)
        }
        Command::Finalize { engine, bus: _ } => finalize(&engine, true),
        Command::Commit { engine, bus } if bus.via_dbus => {
            via_dbus(&bus, &engine, "commit", None, false)
        }
        Command::Commit { engine, bus: _ } => commit(&engine),
        Command::Rollback {
            ab: _,
            runtime,
            check,
            engine,
            bus,
        } if bus.via_dbus => {
            if check {
                return Err(crate::TridentError::unsupported(
                    "check-not-via-dbus",
                    "--check is answered locally: drop --via-dbus to see what a rollback would do",
                )
                .into());
            }
            via_dbus(&bus, &engine, "rollback", None, runtime)
        }
        Command::Rollback {
            ab: _,
            runtime,
            check,
            engine,
            bus: _,
        } => rollback(runtime, check, &engine),
        Command::Internal { command } => match command {
            InternalCommand::Stage {
                request,
                config,
                engine,
            } => internal_stage(&request, &config, &engine),
            InternalCommand::Finalize { engine } => finalize(&engine, false),
            InternalCommand::HealthCheck { name, engine } => health_check(&name, &engine),
            InternalCommand::HealthCheckFailed { engine } => crate::engine::health_check_failed(
                &engine_ctx(&engine, None, false)?,
                "a health check failed",
            ),
            InternalCommand::Commit { engine } => commit(&engine),
            InternalCommand::RecordRollback { engine } => {
                let outcome = crate::engine::record_rollback(&engine_ctx(&engine, None, false)?)?;
                eprintln!("{outcome:?}");
                Ok(())
            }
            InternalCommand::Install {
                request,
                config,
                engine,
            } => with_request(&request, &config, |path| {
                wait_for_network_if_remote(path);
                install(
                    path,
                    &[Operation::Stage, Operation::Finalize],
                    &engine,
                    false,
                )
            }),
            InternalCommand::Rollback {
                runtime,
                mut engine,
            } => {
                // The unit reboots after an A/B rollback; the verb never does.
                engine.no_reboot = true;
                rollback(runtime, false, &engine)
            }
        },
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
        DataFormat::Yaml | DataFormat::Summary => print!("{}", serde_yaml::to_string(value)?),
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
        let status = crate::status::HostStatus::default();
        if format == DataFormat::Summary {
            print_text(&status_summary(&status));
            return Ok(());
        }
        return print_data(&status, format);
    }
    let store = Datastore::open_existing(&path)?;
    match (kind, format) {
        (GetKind::Status, DataFormat::Summary) => {
            print_text(&status_summary(&store.host_status()?));
            return Ok(());
        }
        (GetKind::History, DataFormat::Summary) => {
            for e in store.history(Some(limit as usize))? {
                print_text(&history_line(&e));
            }
            return Ok(());
        }
        _ => {}
    }
    match kind {
        GetKind::Status => print_data(&store.host_status()?, format),
        GetKind::Configuration => print_data(&store.host_status()?.spec, format),
        GetKind::LastError => print_data(&store.host_status()?.last_error, format),
        GetKind::History => print_data(&store.history(Some(limit as usize))?, format),
        GetKind::RollbackChain => print_data(&store.rollback_chain()?, format),
        GetKind::RollbackTarget => print_data(&store.rollback_chain()?.into_iter().next(), format),
    }
}

/// `trident get status --format summary`.
fn status_summary(hs: &crate::status::HostStatus) -> String {
    let vol = |v: Option<crate::status::AbVolume>| v.map_or("-".to_string(), |v| v.to_string());
    let mut s = format!("state:          {}\n", hs.servicing_state);
    s += &format!("active volume:  {}\n", vol(hs.active_volume));
    if hs.target_volume.is_some() {
        s += &format!("target volume:  {}\n", vol(hs.target_volume));
    }
    if let Some(i) = &hs.image {
        s += &format!("image:          {}\n", i.url);
    }
    if let Some(i) = &hs.staged_image {
        s += &format!("staged image:   {}\n", i.url);
    }
    if let Some(e) = &hs.last_error {
        s += &format!("last error:     {e}\n");
    }
    s
}

/// One line of `trident get history --format summary`.
fn history_line(e: &crate::datastore::HistoryEntry) -> String {
    let mut s = format!(
        "#{:<4} {}  {:<28} {} -> {}",
        e.id, e.timestamp, e.operation, e.state_before, e.state_after
    );
    if let Some(v) = e.host_status.active_volume {
        s += &format!("  (active {v})");
    }
    if let Some(err) = &e.host_status.last_error {
        if e.operation.contains("fail") || e.state_before == e.state_after {
            s += &format!("  error [{}]", err.code);
        }
    }
    s
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

/// Run `operation` through the service: start it over D-Bus, show its `Progress`
/// signals, and return its outcome as this process's result (exit code by category).
fn via_dbus(
    bus: &BusArgs,
    engine: &EngineArgs,
    operation: &str,
    config: Option<&Path>,
    runtime: bool,
) -> Result<()> {
    use crate::dbus::client;
    use std::collections::HashMap;
    if engine.datastore.is_some() {
        return Err(crate::TridentError::invalid_input(
            "option-not-via-dbus",
            "--datastore cannot be combined with --via-dbus: the service uses its own datastore",
        )
        .into());
    }
    if engine.no_reboot && matches!(operation, "install" | "finalize") {
        return Err(crate::TridentError::invalid_input(
            "option-not-via-dbus",
            "--no-reboot cannot be combined with --via-dbus: the service's finalize reboots \
             (trident-finalize.service); run without --via-dbus to finalize without rebooting",
        )
        .into());
    }
    let yaml = config.map(read_config).transpose()?.unwrap_or_default();
    let proxy = client::proxy_at(bus.bus_address.as_deref()).map_err(client::call_error)?;
    let reporter = crate::progress::Reporter::new_percent(format!("{operation} (tridentd)"));
    let outcome = client::start_and_follow(
        &proxy,
        operation,
        |p| match operation {
            "install" => p.install(&yaml, HashMap::new()),
            "stage" => p.stage(&yaml, HashMap::new()),
            "finalize" => p.finalize(HashMap::new()),
            "commit" => p.commit(),
            _ => {
                let mut opts = HashMap::new();
                if runtime {
                    opts.insert("runtime", zbus::zvariant::Value::from(true));
                }
                p.rollback(opts)
            }
        },
        |percent, message| reporter.update_percent(message, percent),
    )
    .map_err(client::call_error);
    reporter.finish();
    outcome?.into_result()?;
    eprintln!("{operation} completed (through tridentd)");
    Ok(())
}

/// The cancel flag of this process's engine runs: set by the first SIGTERM or SIGINT
/// (`systemctl stop`, D-Bus `Cancel` through systemd, Ctrl-C), so the engine stops at
/// its next check, marks what it was writing unusable and records the cancellation;
/// a second signal ends the process at once. SIGTERM/SIGINT are blocked in every thread
/// and taken by one waiting thread (`sigwait`), so no code runs in a signal handler.
fn cancel_on_termination() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use nix::sys::signal::{SigSet, Signal};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, OnceLock};
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        if let Err(e) = set.thread_block() {
            tracing::warn!("cannot block SIGTERM/SIGINT; a stop will not cancel cleanly: {e}");
            return flag;
        }
        let f = flag.clone();
        std::thread::spawn(move || loop {
            match set.wait() {
                Ok(sig) if !f.swap(true, Ordering::SeqCst) => {
                    tracing::warn!("{sig}: cancelling; the engine stops at its next step");
                }
                Ok(sig) => {
                    eprintln!("{sig} again: exiting at once");
                    std::process::exit(128 + sig as i32);
                }
                Err(_) => return,
            }
        });
        flag
    })
    .clone()
}

/// The engine context for a servicing verb. `reboot`: the verb may reboot (public
/// verbs, unless `--no-reboot`; never the units' internal verbs).
fn engine_ctx(
    args: &EngineArgs,
    hc: Option<&crate::config::HostConfiguration>,
    reboot: bool,
) -> Result<crate::engine::EngineContext> {
    let hc_path = hc.map(|h| h.trident.datastore_path().to_path_buf());
    let path = crate::datastore::resolve_path(
        args.datastore.as_deref(),
        hc_path.as_deref(),
        Path::new(DEFAULT_CONF_FILE),
    )?;
    let mut ctx = crate::engine::EngineContext::new(path);
    ctx.cancel = cancel_on_termination();
    ctx.efivars_root = args.efivars.clone();
    ctx.allow_reboot = reboot && !args.no_reboot;
    ctx.host_root = args.host_root.clone();
    ctx.booted_root_override = args.booted_root.clone();
    ctx.work_dir = args.work_dir.clone();
    let reporter = std::sync::Arc::new(crate::progress::Reporter::new("servicing"));
    ctx.progress =
        std::sync::Arc::new(move |what: &str, done, total| reporter.update_item(what, done, total));
    Ok(ctx)
}

fn install_needs_both() -> crate::TridentError {
    crate::TridentError::unsupported(
        "install-needs-stage-and-finalize",
        "a clean install is staged and finalized in one run: allow both operations",
    )
}

fn install(path: &Path, ops: &[Operation], args: &EngineArgs, reboot: bool) -> Result<()> {
    if !(ops.contains(&Operation::Stage) && ops.contains(&Operation::Finalize)) {
        return Err(install_needs_both().into());
    }
    let hc = load_config(path)?;
    let mut ctx = engine_ctx(args, Some(&hc), reboot)?;
    ctx.config_dir = path.parent().map(Path::to_path_buf);
    crate::engine::install(&hc, &ctx)
}

fn update(path: &Path, ops: &[Operation], args: &EngineArgs) -> Result<()> {
    if ops.contains(&Operation::Stage) {
        let hc = load_config(path)?;
        let mut ctx = engine_ctx(args, Some(&hc), false)?;
        ctx.config_dir = path.parent().map(Path::to_path_buf);
        match crate::engine::stage(&hc, &ctx)? {
            crate::engine::StageOutcome::NothingToDo => {
                eprintln!("no update required: the Host Configuration is already applied");
                return Ok(());
            }
            crate::engine::StageOutcome::Staged(v) => eprintln!("staged into {v}"),
            crate::engine::StageOutcome::RuntimeUpdated(changes) => {
                eprintln!("runtime update applied: {changes}");
                eprintln!("(a runtime update has nothing to finalize and needs no reboot)");
                return Ok(());
            }
        }
    }
    if ops.contains(&Operation::Finalize) {
        finalize(args, true)?;
    }
    Ok(())
}

fn finalize(args: &EngineArgs, reboot: bool) -> Result<()> {
    crate::engine::finalize(&engine_ctx(args, None, reboot)?)
}

fn commit(args: &EngineArgs) -> Result<()> {
    let outcome = crate::engine::commit(&engine_ctx(args, None, false)?)?;
    eprintln!("{outcome}");
    Ok(())
}

fn rollback(runtime: bool, check: bool, args: &EngineArgs) -> Result<()> {
    let plan = if runtime {
        crate::engine::rollback_runtime(&engine_ctx(args, None, false)?, check)?.to_string()
    } else {
        crate::engine::rollback_ab(&engine_ctx(args, None, !check)?, check)?.to_string()
    };
    if check {
        println!("would {plan}");
    } else {
        eprintln!("{plan}");
    }
    Ok(())
}

fn internal_stage(requests: &[PathBuf], config: &Path, args: &EngineArgs) -> Result<()> {
    with_request(requests, config, |path| {
        wait_for_network_if_remote(path);
        update(path, &[Operation::Stage], args)
    })
}

/// How long staging waits for `network-online.target` at the most (systemd's own
/// wait-online services give up after 2 min).
const NETWORK_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Under systemd (`trident-stage.service`, `trident-install.service`): when the image
/// comes over the network, start `network-online.target` and wait for it, bounded. The
/// units are ordered only after `network.target`, so a local image never waits for a
/// network that may never come (an offline site: 2 min of
/// systemd-networkd-wait-online per stage). Decided here, on the request actually
/// served (a D-Bus request, a persistent one, or the configuration), not at boot. Best
/// effort: if the network does not come, the HTTP/OCI source retries and fails with its
/// own error.
fn wait_for_network_if_remote(hc_path: &Path) {
    if std::env::var_os("INVOCATION_ID").is_none() {
        return; // not a systemd service: the operator's shell has its network
    }
    // The verb reads, validates and reports on the file itself (warnings included).
    let Ok(text) = read_config(hc_path) else {
        return;
    };
    let Ok((hc, _)) = crate::config::parse_and_validate(&text) else {
        return;
    };
    let Some(url) = hc.image.as_ref().map(|i| &i.url) else {
        return;
    };
    if !crate::cosi::open::is_remote(url) {
        return;
    }
    tracing::info!(
        image = %crate::cosi::http::redact(url),
        "waiting for network-online.target: the image comes over the network"
    );
    let started = std::time::Instant::now();
    let mut child = match std::process::Command::new("systemctl")
        .args(["start", "network-online.target"])
        .stdin(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("cannot run systemctl to wait for the network: {e}");
            return;
        }
    };
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => {
                tracing::info!(
                    seconds = started.elapsed().as_secs(),
                    "network-online.target reached"
                );
                return;
            }
            Ok(Some(status)) => {
                tracing::warn!(
                    "network-online.target did not start ({status}); trying the image anyway"
                );
                return;
            }
            Ok(None) if started.elapsed() >= NETWORK_WAIT => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::warn!(
                    "network-online.target not reached within {} s; trying the image anyway",
                    NETWORK_WAIT.as_secs()
                );
                return;
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(200)),
            Err(e) => {
                tracing::warn!("waiting for systemctl: {e}");
                return;
            }
        }
    }
}

/// Run `f` on the first existing request file (then remove it), else on `config`.
fn with_request(
    requests: &[PathBuf],
    config: &Path,
    f: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let request = requests.iter().find(|p| p.exists());
    let path = request.map(PathBuf::as_path).unwrap_or(config);
    let result = f(path);
    if let Some(r) = request {
        // The outcome is recorded in the datastore either way.
        if let Err(e) = std::fs::remove_file(r) {
            tracing::warn!(request = %r.display(), "could not remove the request file: {e}");
        }
    }
    result
}

fn health_check(name: &str, args: &EngineArgs) -> Result<()> {
    let store =
        crate::datastore::Datastore::open_existing(&engine_ctx(args, None, false)?.datastore_path)?;
    crate::engine::health::run_check(&store.host_status()?.spec, name)
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
