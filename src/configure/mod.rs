//! Configure a target OS root directory before its first boot, so that the first boot
//! is already the desired state (fstab, hostname, machine-id, users, files, services,
//! kernel modules, netplan, SELinux mode), and run the Host Configuration's hooks.
//!
//! Every step is a function of the target root directory; nothing here needs a running
//! systemd. What each step writes is listed in `docs/configure.md`.

use anyhow::{Context, Result};
use std::path::PathBuf;

use crate::config::{HostConfiguration, ServicingType};

mod accounts;
mod files;
mod fstab;
mod fsutil;
mod hooks;
mod identity;
mod services;
mod system;
mod users;

pub use fsutil::write_in_target;
pub use hooks::{run_hooks, HookContext, HookPhase};
pub use system::{write_netplan, NETPLAN_FILE};

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
/// Steps run in a fixed order; the first failure stops and names its step.
pub fn configure_target(hc: &HostConfiguration, ctx: &ConfigureContext) -> Result<()> {
    let root = ctx.target_root.as_path();
    let os = &hc.os;
    let running = ctx.carry_forward_from.as_deref();
    tracing::info!(root = %root.display(), servicing = ?ctx.servicing_type, "configuring target");
    fstab::write_fstab(root, &ctx.fstab).context("writing /etc/fstab")?;
    identity::configure_hostname(root, os.hostname.as_deref(), ctx.servicing_type, running)
        .context("setting the hostname")?;
    identity::configure_machine_id(root, ctx.servicing_type, running)
        .context("setting the machine-id")?;
    if let (ServicingType::AbUpdate, Some(running)) = (ctx.servicing_type, running) {
        let n = identity::carry_ssh_host_keys(root, running)
            .context("carrying SSH host keys forward")?;
        tracing::info!(keys = n, "carried SSH host keys forward");
    }
    users::configure_users(root, &os.users).context("configuring users")?;
    files::write_additional_files(root, &os.additional_files, ctx.config_dir.as_deref())
        .context("writing additional files")?;
    services::configure_services(root, &os.services.enable, &os.services.disable)
        .context("configuring services")?;
    system::write_modules(root, &os.modules).context("configuring kernel modules")?;
    if let Some(netplan) = &os.netplan {
        system::write_netplan(root, netplan).context("writing the netplan configuration")?;
    }
    if let Some(mode) = os.selinux.mode {
        system::write_selinux(root, mode).context("setting the SELinux mode")?;
    }
    tracing::info!(root = %root.display(), "target configured");
    Ok(())
}
