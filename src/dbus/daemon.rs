//! `tridentd`: connect, serve the object, then take the name; exit after an idle
//! period (bus activation starts it again on the next call).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use zbus::connection::Builder;
use zbus::Connection;

use super::interface::Trident1;
use super::servicer::{InProcessServicer, Servicer};
use super::systemd::SystemdServicer;
use super::{BUS_NAME, OBJECT_PATH};

/// Which bus to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusChoice {
    System,
    Session,
    /// A D-Bus address (`unix:path=/run/x/bus`); a bus unless `p2p` is set.
    Address {
        address: String,
        p2p: bool,
    },
}

/// Which servicer runs operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServicerChoice {
    /// systemd when `org.freedesktop.systemd1` is on the bus, in-process otherwise.
    Auto,
    Systemd,
    InProcess,
}

/// Everything `tridentd` needs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub bus: BusChoice,
    pub datastore: PathBuf,
    /// Exit after this long without calls or operations; `None` = never.
    pub idle_timeout: Option<Duration>,
    pub servicer: ServicerChoice,
    /// What the in-process servicer runs the engine with (its datastore path is
    /// replaced by `datastore`).
    pub engine: crate::engine::EngineContext,
}

fn builder(bus: &BusChoice) -> Result<Builder<'static>> {
    Ok(match bus {
        BusChoice::System => Builder::system()?,
        BusChoice::Session => Builder::session()?,
        BusChoice::Address { address, p2p } => {
            let b = Builder::address(address.as_str())
                .with_context(|| format!("parsing D-Bus address {address}"))?;
            if *p2p {
                b.p2p()
            } else {
                b
            }
        }
    })
}

/// Serve `object` on the connection `builder` makes. The object is served before the
/// well-known name is requested (when `request_name`), so a caller activated by the
/// name never finds the object missing.
pub async fn serve(
    builder: Builder<'_>,
    object: Trident1,
    request_name: bool,
) -> zbus::Result<Connection> {
    let builder = builder.serve_at(OBJECT_PATH, object)?;
    let builder = if request_name {
        builder.name(BUS_NAME)?
    } else {
        builder
    };
    builder.build().await
}

async fn pick_servicer(options: &DaemonOptions) -> Result<Arc<dyn Servicer>> {
    let mut engine = options.engine.clone();
    engine.datastore_path = options.datastore.clone();
    let in_process = Arc::new(InProcessServicer::new(engine));
    let p2p = matches!(options.bus, BusChoice::Address { p2p: true, .. });
    if options.servicer == ServicerChoice::InProcess || p2p {
        return Ok(in_process);
    }
    let conn = builder(&options.bus)?
        .build()
        .await
        .context("connecting to the bus for systemd")?;
    let available = SystemdServicer::available(&conn).await;
    match (options.servicer, available) {
        (ServicerChoice::Systemd, false) => {
            anyhow::bail!("systemd (org.freedesktop.systemd1) is not on the bus")
        }
        (_, true) => Ok(Arc::new(SystemdServicer::new(conn))),
        (_, false) => {
            tracing::info!("systemd is not on the bus: running operations in-process");
            Ok(in_process)
        }
    }
}

/// Run the daemon until idle (or SIGTERM/SIGINT).
pub async fn run(options: DaemonOptions) -> Result<()> {
    let servicer = pick_servicer(&options).await?;
    tracing::info!(
        servicer = servicer.name(),
        datastore = %options.datastore.display(),
        "starting tridentd"
    );
    let object = Trident1::new(servicer, options.datastore.clone());
    let p2p = matches!(options.bus, BusChoice::Address { p2p: true, .. });
    let conn = serve(builder(&options.bus)?, object.clone(), !p2p)
        .await
        .context("serving io.trident.Trident1")?;
    tracing::info!(name = BUS_NAME, path = OBJECT_PATH, "serving");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(timeout) = options.idle_timeout {
                    if object.idle_for(timeout) {
                        tracing::info!(?timeout, "idle: exiting");
                        break;
                    }
                }
            }
            _ = term.recv() => { tracing::info!("SIGTERM: exiting"); break; }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: exiting"); break; }
        }
    }
    if let Some(op) = object.running_operation() {
        tracing::warn!(operation = %op, "exiting while an operation runs; its unit continues");
    }
    if !p2p {
        // Give the name up first: a call arriving now activates a fresh daemon instead
        // of reaching one that is going away.
        if let Err(e) = conn.release_name(BUS_NAME).await {
            tracing::warn!(error = %e, "releasing the bus name");
        }
    }
    Ok(())
}

/// Parse `60s`, `5m`, `1h`, `500ms` or plain seconds; `0` = never exit.
pub fn parse_duration(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: expected e.g. 60s, 5m, 500ms, 0"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("bad duration unit in {s:?}: use ms, s, m or h")),
    };
    Ok(if d.is_zero() { None } else { Some(d) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("60s").unwrap(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_duration("90").unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("5m").unwrap(),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_duration("250ms").unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_duration("0").unwrap(), None);
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
