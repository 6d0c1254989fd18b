//! After a reboot: commit the trial volume, or record that the trial failed.

use super::layout;
use super::markers;
use super::target;
use super::update::booted_volume;
use super::{boot_volume, EngineContext};
use crate::datastore::Datastore;
use crate::error::TridentError;
use crate::generator::markers::PENDING_MARKER;
use crate::logging::message_id;
use crate::status::{AbVolume, ServicingState, Transition};
use anyhow::{Context, Result};

/// What [`commit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The trial volume booted and became the active, default volume.
    Committed(AbVolume),
    /// The old volume booted: the update was recorded as failed, the old spec restored.
    RolledBack(AbVolume),
    /// Nothing was in flight; the state is unchanged.
    NothingToCommit(ServicingState),
}

impl std::fmt::Display for CommitOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitOutcome::Committed(v) => write!(f, "committed: {v} is the active volume"),
            CommitOutcome::RolledBack(v) => write!(
                f,
                "the trial boot failed: recorded the rollback, {v} stays active"
            ),
            CommitOutcome::NothingToCommit(s) => write!(f, "nothing to commit (host is {s})"),
        }
    }
}

/// Commit the servicing in flight, judged by the volume the host booted from.
pub fn commit(ctx: &EngineContext) -> Result<CommitOutcome> {
    let mut store = Datastore::open_existing(&ctx.datastore_path)?;
    let hs = store.host_status()?;
    let state = hs.servicing_state;
    if !matches!(
        state,
        ServicingState::CleanInstallFinalized
            | ServicingState::AbUpdateFinalized
            | ServicingState::ManualRollbackAbFinalized
            | ServicingState::AbUpdateHealthCheckFailed
    ) {
        tracing::info!(%state, "nothing to commit");
        return Ok(CommitOutcome::NothingToCommit(state));
    }
    let hc = hs.spec.clone();
    let layout = layout::resolve(&hc)?;
    let booted = booted_volume(&hc, &layout, ctx)?.ok_or_else(|| {
        anyhow::Error::new(TridentError::servicing(
            "unexpected-boot-volume",
            "the running root filesystem is not on an A/B volume of this host",
        ))
    })?;
    let boot = super::bootcfg::backend_for_layout(&hc, &layout, ctx)?;
    if state == ServicingState::CleanInstallFinalized {
        boot.set_default(boot_volume(booted))?;
        record(
            &mut store,
            Transition::CommitCleanInstall { booted },
            &layout,
        )?;
        markers::clear_trial(&ctx.host_root)?;
        tracing::info!(MESSAGE_ID = message_id::COMMITTED, volume = %booted, "clean install committed");
        return Ok(CommitOutcome::Committed(booted));
    }
    let target = hs.target_volume;
    if Some(booted) == target && state != ServicingState::AbUpdateHealthCheckFailed {
        boot.set_default(boot_volume(booted))?;
        let t = if state == ServicingState::ManualRollbackAbFinalized {
            Transition::CommitManualRollbackAb { booted }
        } else {
            Transition::CommitAbUpdate { booted }
        };
        record(&mut store, t, &layout)?;
        markers::clear_trial(&ctx.host_root)?;
        // The old volume's pending marker: it will not be needed.
        let old = booted.other();
        let dir = ctx.work_dir.join("commit-old");
        match target::mount_tree(&hc, &layout, old, &dir, false, false) {
            Ok(tree) => {
                markers::remove(&tree.root.join(PENDING_MARKER))?;
                tree.unmount()?;
            }
            Err(e) => tracing::warn!("could not remove the old volume's pending marker: {e:#}"),
        }
        tracing::info!(MESSAGE_ID = message_id::COMMITTED, volume = %booted, "update committed");
        return Ok(CommitOutcome::Committed(booted));
    }
    record_fallback(ctx, &mut store, booted, &layout)?;
    Ok(CommitOutcome::RolledBack(booted))
}

/// Record `transition` together with the device paths of this, the booted, host (the
/// installer recorded its own, e.g. a loop device).
fn record(store: &mut Datastore, transition: Transition, layout: &layout::Layout) -> Result<()> {
    store.transition_with(transition, |hs| hs.block_devices = layout.block_devices())?;
    Ok(())
}

fn record_fallback(
    ctx: &EngineContext,
    store: &mut Datastore,
    booted: AbVolume,
    layout: &layout::Layout,
) -> Result<()> {
    let fallback = Transition::RecordFallback {
        booted,
        error: None,
    };
    record(store, fallback, layout).context("recording the failed trial boot")?;
    markers::remove(&ctx.host_path(PENDING_MARKER))?;
    tracing::warn!(
        MESSAGE_ID = message_id::ROLLED_BACK,
        volume = %booted,
        "the trial boot did not take: back on the previous OS"
    );
    Ok(())
}

/// `internal record-rollback`: on a boot of the old volume after a trial, record the
/// automatic rollback; always remove the pending marker.
pub fn record_rollback(ctx: &EngineContext) -> Result<CommitOutcome> {
    let mut store = Datastore::open_existing(&ctx.datastore_path)?;
    let hs = store.host_status()?;
    if !hs.servicing_state.is_trial() {
        markers::remove(&ctx.host_path(PENDING_MARKER))?;
        return Ok(CommitOutcome::NothingToCommit(hs.servicing_state));
    }
    let layout = layout::resolve(&hs.spec)?;
    let booted = booted_volume(&hs.spec, &layout, ctx)?;
    match booted {
        Some(b) if Some(b) == hs.active_volume => {
            record_fallback(ctx, &mut store, b, &layout)?;
            Ok(CommitOutcome::RolledBack(b))
        }
        _ => Err(TridentError::servicing(
            "unexpected-boot-volume",
            "record-rollback runs on the old volume, but this is not it",
        )
        .into()),
    }
}

/// `internal health-check-failed`: record the failed check on a trial boot; the unit
/// then reboots into the old volume (the trial was one-shot).
pub fn health_check_failed(ctx: &EngineContext, reason: &str) -> Result<()> {
    let mut store = Datastore::open_existing(&ctx.datastore_path)?;
    let hs = store.host_status()?;
    let err = TridentError::new(
        crate::error::Category::HealthChecks,
        "health-check-failed",
        reason.to_string(),
    );
    match hs.servicing_state {
        ServicingState::AbUpdateFinalized | ServicingState::ManualRollbackAbFinalized => {
            store.transition(Transition::HealthCheckFailed { error: err })?;
            // Make sure the next boot is the old volume, whatever the loader does.
            let layout = layout::resolve(&hs.spec)?;
            let boot = super::bootcfg::backend_for_layout(&hs.spec, &layout, ctx)?;
            boot.clear_trial()?;
            if let Some(active) = hs.active_volume {
                boot.set_default(boot_volume(active))?;
            }
        }
        ServicingState::CleanInstallFinalized => {
            let mut hs = hs;
            hs.set_last_error(err);
            store.record("clean-install-health-check-failed", &hs)?;
        }
        other => {
            tracing::info!(state = %other, "no trial boot in flight; nothing recorded");
        }
    }
    tracing::error!(MESSAGE_ID = message_id::HEALTH_CHECK_FAILED, "{reason}");
    Ok(())
}
