//! Trident: keeps a Linux host in a declared state for its whole life.
//!
//! Module map (data flows top to bottom):
//!
//! - [`error`]     — categorised errors with stable codes (`TridentError`).
//! - [`config`]    — the Host Configuration (YAML) types, parsing and static validation.
//! - [`status`]    — Host Status and the servicing state machine.
//! - [`datastore`] — SQLite datastore: current Host Status + append-only history.
//! - [`cosi`]      — COSI images: tar walking, metadata, sources (file/HTTP/OCI),
//!   the streaming pipeline and the builder.
//! - [`storage`]   — block devices: GPT, partition nodes (BLKPG), loop devices, mkfs.
//! - [`boot`]      — boot control: EFI variables, systemd-boot entries, UEFI load options,
//!   the ESP (FAT in user space).
//! - [`configure`] — configures a target OS root before first boot; runs hook scripts.
//! - [`engine`]    — servicing flows: install, stage/finalize (A/B update), commit, rollback.
//! - [`generator`] — `trident-generator`: wires trial/rollback/installer units at boot.
//! - [`dbus`]      — `tridentd`, the D-Bus service `io.trident.Trident1`, and its client.
//! - [`cmd`]       — the one wrapper for running external tools.
//! - [`logging`]   — tracing setup (journald under systemd, stderr otherwise).
//! - [`progress`]  — progress bars on a terminal, periodic log lines otherwise.
//! - [`cli`]       — the `trident` command line; binaries in `src/bin/` are thin.

// `TridentError` is a rich value (path, location, device); returning it by value is
// deliberate and cheap next to the I/O it reports on.
#![allow(clippy::result_large_err)]

pub mod boot;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod configure;
pub mod cosi;
pub mod datastore;
pub mod dbus;
pub mod engine;
pub mod error;
pub mod generator;
pub mod logging;
pub mod progress;
pub mod status;
pub mod storage;

pub use error::{Category, TridentError, TridentErrors};

/// Agent version reported in Host Status, `--version` and over D-Bus.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
