//! `tridentd`: the D-Bus service `io.trident.Trident1` (see docs/dbus.md).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use trident::dbus::daemon::{self, BusChoice, DaemonOptions, ServicerChoice};

/// Serve io.trident.Trident1 on the system bus (bus-activated by tridentd.service).
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Connect to the session bus instead of the system bus (development).
    #[arg(long, conflicts_with = "address")]
    session: bool,
    /// Connect to this D-Bus address instead of the system bus (tests).
    #[arg(long)]
    address: Option<String>,
    /// With --address: the address is a peer, not a bus (no name is requested).
    #[arg(long, requires = "address")]
    p2p: bool,
    /// Exit after this long without calls or running operations (e.g. 60s, 5m; 0 = never).
    #[arg(long, default_value = "60s", value_parser = parse_idle)]
    idle_timeout: Duration,
    /// Datastore path (default: from /etc/trident/trident.conf, else /var/lib/trident/datastore.sqlite).
    #[arg(long)]
    datastore: Option<PathBuf>,
    /// Who runs operations: systemd units, in-process, or auto (systemd if on the bus).
    #[arg(long, default_value = "auto", value_parser = ["auto", "systemd", "in-process"])]
    servicer: String,
    /// In-process servicer: efivarfs directory (tests use a plain directory).
    #[arg(long, default_value = trident::boot::efivar::DEFAULT_ROOT, hide = true)]
    efivars: PathBuf,
    /// In-process servicer: root of the running OS (markers, staged stamp).
    #[arg(long, default_value = "/", hide = true)]
    host_root: PathBuf,
    /// In-process servicer: block device to treat as the running root (tests).
    #[arg(long, hide = true)]
    booted_root: Option<PathBuf>,
    /// In-process servicer: directory for temporary mounts and files.
    #[arg(long, default_value = "/run/trident/engine", hide = true)]
    work_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    trident::logging::init(false);
    let args = Args::parse();
    let bus = match (args.session, args.address) {
        (true, _) => BusChoice::Session,
        (false, Some(address)) => BusChoice::Address {
            address,
            p2p: args.p2p,
        },
        (false, None) => BusChoice::System,
    };
    let datastore = trident::datastore::resolve_path(
        args.datastore.as_deref(),
        None,
        std::path::Path::new(trident::datastore::CONFIG_FILE),
    )?;
    let servicer = match args.servicer.as_str() {
        "systemd" => ServicerChoice::Systemd,
        "in-process" => ServicerChoice::InProcess,
        _ => ServicerChoice::Auto,
    };
    let mut engine = trident::engine::EngineContext::new(&datastore);
    engine.efivars_root = args.efivars;
    engine.host_root = args.host_root;
    engine.booted_root_override = args.booted_root;
    engine.work_dir = args.work_dir;
    daemon::run(DaemonOptions {
        bus,
        datastore,
        engine,
        idle_timeout: Some(args.idle_timeout).filter(|d| !d.is_zero()),
        servicer,
    })
    .await
}

fn parse_idle(s: &str) -> Result<Duration, String> {
    daemon::parse_duration(s).map(Option::unwrap_or_default)
}
