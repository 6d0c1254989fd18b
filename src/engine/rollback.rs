//! Manual A/B rollback: boot the OS still on the inactive volume again (no re-imaging).

use super::EngineContext;
use crate::datastore::{Datastore, RollbackPoint};
use crate::error::TridentError;
use crate::status::{AbVolume, ServicingState, Transition};
use anyhow::Result;

/// What `rollback --ab` does (or would do, with `--check`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackPlan {
    /// The volume that will be trial-booted.
    pub volume: AbVolume,
    /// The history row whose Host Status is restored.
    pub history_id: i64,
    pub timestamp: String,
    pub image: Option<String>,
}

impl std::fmt::Display for RollbackPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "roll back to {} (recorded {} as history #{}; image {}): one trial boot, committed when healthy",
            self.volume,
            self.timestamp,
            self.history_id,
            self.image.as_deref().unwrap_or("unknown")
        )
    }
}

/// The rollback target, or a servicing error saying why there is none.
pub fn plan(store: &Datastore) -> Result<(RollbackPlan, RollbackPoint)> {
    let hs = store.host_status()?;
    if hs.servicing_state != ServicingState::Provisioned {
        return Err(TridentError::servicing(
            "servicing-in-progress",
            format!("cannot roll back while the host is {}", hs.servicing_state),
        )
        .into());
    }
    let point = store.ab_rollback_target()?.ok_or_else(|| {
        anyhow::Error::new(TridentError::servicing(
            "no-rollback-target",
            "no earlier OS is available on the inactive volume (never updated, or it was overwritten by a later stage)",
        ))
    })?;
    Ok((
        RollbackPlan {
            volume: point.volume,
            history_id: point.history_id,
            timestamp: point.timestamp.clone(),
            image: point.image.as_ref().map(|i| i.url.clone()),
        },
        point,
    ))
}

/// `rollback --ab`: stage the manual rollback and finalize it (trial boot into the
/// previous OS). With `check`, only say what would happen.
pub fn rollback_ab(ctx: &EngineContext, check: bool) -> Result<RollbackPlan> {
    let mut store = Datastore::open_existing(&ctx.datastore_path)?;
    let (plan, point) = plan(&store)?;
    if check {
        return Ok(plan);
    }
    store.transition(Transition::StageManualRollbackAb {
        spec: point.spec,
        image: point.image,
    })?;
    drop(store);
    super::update::finalize(ctx)?;
    Ok(plan)
}
