//! Logging setup: `tracing` to journald when running under systemd (JOURNAL_STREAM or
//! INVOCATION_ID set and the journal socket present), to stderr otherwise.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Fixed `MESSAGE_ID`s of milestone events (documented in `docs/units.md`).
pub mod message_id {
    pub const STAGED: &str = "4f6e0c1a8b2d4c3e9a7f1b2c3d4e5f60";
    pub const FINALIZED: &str = "4f6e0c1a8b2d4c3e9a7f1b2c3d4e5f61";
    pub const COMMITTED: &str = "4f6e0c1a8b2d4c3e9a7f1b2c3d4e5f62";
    pub const ROLLED_BACK: &str = "4f6e0c1a8b2d4c3e9a7f1b2c3d4e5f63";
    pub const HEALTH_CHECK_FAILED: &str = "4f6e0c1a8b2d4c3e9a7f1b2c3d4e5f64";
    pub const INSTALLED: &str = "4f6e0c1a8b2d4c3e9a7f1b2c3d4e5f65";
}

/// Initialise logging once. `verbose` raises the default level to debug; `RUST_LOG`
/// overrides both.
pub fn init(verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let under_systemd = std::env::var_os("INVOCATION_ID").is_some()
        && std::path::Path::new("/run/systemd/journal/socket").exists();
    if under_systemd {
        if let Ok(journald) = tracing_journald::layer() {
            let _ = tracing_subscriber::registry()
                .with(filter)
                // No field prefix: tracing-journald prefixes every field with "F_" by
                // default, which would turn the milestones' MESSAGE_ID into F_MESSAGE_ID
                // and break `journalctl MESSAGE_ID=...` (docs/units.md).
                .with(
                    journald
                        .with_syslog_identifier("trident".into())
                        .with_field_prefix(None),
                )
                .try_init();
            return;
        }
    }
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_writer(std::io::stderr).with_target(false))
        .try_init();
}
