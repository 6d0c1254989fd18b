//! Configure a target OS root directory before its first boot, so that the first boot
//! is already the desired state (fstab, hostname, machine-id, users, files, services,
//! kernel modules, netplan, SELinux mode), and run the Host Configuration's hooks.
//!
//! Every step is a function of the target root directory; nothing here needs a running
//! systemd. What each step writes is listed in `docs/configure.md`.

use anyhow::Result;
use std::path::PathBuf;

use crate::config::{HostConfiguration, ServicingType};

mod hooks;

pub use hooks::{run_hooks, HookContext, HookPhase};

/// What the engine knows about the volume being configured.
#[derive(Debug, Clone)]
pub struct ConfigureContext {
    /// Mounted root of the volume being configured.
    pub target_root: PathBuf,
    /// `CleanInstall` or `AbUpdate`.
    pub servicing_type: ServicingType,
    /// `/etc/fstab` entries for the mount points Trident manages (the engine knows the
    /// UUIDs/PARTUUIDs).
    pub fstab: Vec<FstabEntry>,
    /// A/B update: root of the running OS, to carry machine-id, hostname (when the Host
    /// Configuration sets none) and SSH host keys forward.
    pub carry_forward_from: Option<PathBuf>,
    /// Directory of the Host Configuration file, for relative `additionalFiles[].source`
    /// paths; relative sources are an error when unset.
    pub config_dir: Option<PathBuf>,
}

/// One `/etc/fstab` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    /// `UUID=..`, `PARTUUID=..`, a device path, or a pseudo filesystem name.
    pub spec: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub options: String,
    pub dump: u32,
    pub pass: u32,
}

/// Apply the Host Configuration's `os` section (and the fstab) to `ctx.target_root`.
pub fn configure_target(hc: &HostConfiguration, ctx: &ConfigureContext) -> Result<()> {
    let _ = (hc, ctx);
    Err(crate::error::TridentError::internal(
        "not-implemented",
        "configure_target is not implemented yet",
    )
    .into())
}
