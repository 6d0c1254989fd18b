//! Hook scripts: `preServicing`, `postProvision` and `postConfigure`.

use anyhow::Result;
use std::path::PathBuf;

use crate::config::{HostConfiguration, ServicingType};

/// When a hook list runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPhase {
    /// Before servicing starts, in the servicing OS.
    PreServicing,
    /// After provisioning, in the servicing OS with `TARGET_ROOT` set.
    PostProvision,
    /// After configuration, inside a chroot of the target OS.
    PostConfigure,
}

/// What hooks need to know about the servicing.
#[derive(Debug, Clone)]
pub struct HookContext {
    pub servicing_type: ServicingType,
    /// Mounted target root (`TARGET_ROOT`); required for `PostConfigure`.
    pub target_root: Option<PathBuf>,
    /// Directory of the Host Configuration file, for relative script paths.
    pub config_dir: Option<PathBuf>,
}

/// Run the scripts of `phase` whose `runOn` selects `ctx.servicing_type`, in order.
pub fn run_hooks(phase: HookPhase, hc: &HostConfiguration, ctx: &HookContext) -> Result<()> {
    let _ = (phase, hc, ctx);
    Err(
        crate::error::TridentError::internal("not-implemented", "run_hooks is not implemented yet")
            .into(),
    )
}
