//! The D-Bus service `io.trident.Trident1` (`tridentd`) and its client side.
//!
//! - [`interface`] — the object: methods, properties, signals (the stable contract in
//!   `docs/dbus.md`, checked-in introspection in `dbus/io.trident.Trident1.xml`).
//! - [`error`]     — `io.trident.Trident1.Error.*`, mapped from [`crate::error`].
//! - [`auth`]      — who may call a mutating method (root, or polkit for the caller).
//! - [`servicer`]  — the hand-off to whatever runs an operation ([`servicer::Servicer`]).
//! - [`systemd`]   — [`systemd::SystemdServicer`]: runs operations as systemd units.
//! - [`daemon`]    — `tridentd`: connection, name, idle exit.
//! - [`client`]    — proxies and `follow` for `trident --via-dbus`.

pub mod auth;
pub mod client;
pub mod daemon;
pub mod error;
pub mod interface;
pub mod servicer;
pub mod systemd;

pub use error::Error;
pub use interface::Trident1;
pub use servicer::{
    CancelFlag, InProcessServicer, OpEvent, OpOptions, Operation, ProgressSender, Request,
    RunningOp, Servicer,
};

/// Well-known bus name.
pub const BUS_NAME: &str = "io.trident.Trident1";
/// Object path of the one object.
pub const OBJECT_PATH: &str = "/io/trident/Trident1";
/// Interface name.
pub const INTERFACE: &str = "io.trident.Trident1";
