//! The servicing state machine.
//!
//! A [`Transition`] is an enum with the data each step needs; [`HostStatus::apply`]
//! checks the source state against the one table of legal sources
//! ([`TransitionKind::legal_sources`]) and the transition's own preconditions (which volume
//! booted, whether there is a spec to go back to) *before* touching anything, so a
//! refused transition leaves the Host Status exactly as it was. Each transition also
//! has its own method on [`HostStatus`] (`stage_ab_update`, `commit_ab_update`, ...).
//!
//! The graph (see `docs/states.md` for the picture):
//!
//! | transition                       | from                                                     | to |
//! |----------------------------------|----------------------------------------------------------|----|
//! | `stage-clean-install`            | not-provisioned, clean-install-staged                    | clean-install-staged |
//! | `finalize-clean-install`         | clean-install-staged                                     | clean-install-finalized |
//! | `commit-clean-install`           | clean-install-finalized                                  | provisioned |
//! | `stage-ab-update`                | provisioned, ab-update-staged                            | ab-update-staged |
//! | `finalize-ab-update`             | ab-update-staged                                         | ab-update-finalized |
//! | `commit-ab-update`               | ab-update-finalized                                      | provisioned |
//! | `health-check-failed`            | ab-update-finalized, manual-rollback-ab-finalized        | ab-update-health-check-failed |
//! | `record-fallback`                | ab-update-finalized, ab-update-health-check-failed, manual-rollback-ab-finalized | provisioned |
//! | `stage-runtime-update`           | provisioned                                              | runtime-update-staged |
//! | `commit-runtime-update`          | runtime-update-staged                                    | provisioned |
//! | `revert-runtime`                 | runtime-update-staged, manual-rollback-runtime-staged    | provisioned |
//! | `stage-manual-rollback-ab`       | provisioned, manual-rollback-ab-staged                   | manual-rollback-ab-staged |
//! | `finalize-manual-rollback-ab`    | manual-rollback-ab-staged                                | manual-rollback-ab-finalized |
//! | `commit-manual-rollback-ab`      | manual-rollback-ab-finalized                             | provisioned |
//! | `stage-manual-rollback-runtime`  | provisioned                                              | manual-rollback-runtime-staged |
//! | `commit-manual-rollback-runtime` | manual-rollback-runtime-staged                           | provisioned |
//! | `cancel`                         | clean-install-staged → not-provisioned; ab-update-staged, manual-rollback-ab-staged → provisioned | |

use super::{AbVolume, HostStatus, ImageRef, ServicingState};
use crate::config::HostConfiguration;
use crate::error::TridentError;
use std::collections::BTreeMap;
use std::path::PathBuf;

use ServicingState as S;

/// Error code of a refused transition (category `internal`: callers must check the state
/// before acting, so reaching this is a bug or a race).
pub const ILLEGAL_TRANSITION: &str = "illegal-state-transition";
/// Error code when the booted volume is not the one a commit or fallback expects.
pub const UNEXPECTED_BOOT_VOLUME: &str = "unexpected-boot-volume";
/// Error code of a synthesized `lastError` when a trial boot fell back without a reason.
pub const TRIAL_BOOT_FAILED: &str = "trial-boot-failed";

/// One step of the state machine, with the data it needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Clean install wrote the disks (partitions, filesystems, images into volume A).
    StageCleanInstall {
        spec: HostConfiguration,
        image: ImageRef,
        block_devices: BTreeMap<String, PathBuf>,
    },
    /// Clean install armed the target's boot entry.
    FinalizeCleanInstall,
    /// First boot of the installed OS; `booted` is the volume the root came from.
    CommitCleanInstall { booted: AbVolume },
    /// A new image was written into the inactive volume (re-staging replaces it).
    StageAbUpdate {
        spec: HostConfiguration,
        image: ImageRef,
    },
    /// The one-shot trial boot into the staged volume was armed.
    FinalizeAbUpdate,
    /// The trial boot is healthy and runs from `booted`: make it the active volume.
    CommitAbUpdate { booted: AbVolume },
    /// A health check failed during a trial boot.
    HealthCheckFailed { error: TridentError },
    /// The host booted the old volume while a trial was pending: the trial failed.
    RecordFallback {
        booted: AbVolume,
        error: Option<TridentError>,
    },
    /// A configuration-only change is being applied live.
    StageRuntimeUpdate { spec: HostConfiguration },
    /// The live change succeeded.
    CommitRuntimeUpdate,
    /// A live change (update or manual runtime rollback) failed and was undone.
    RevertRuntime { error: TridentError },
    /// Manual rollback to the OS still on the inactive volume (no re-imaging).
    StageManualRollbackAb {
        spec: HostConfiguration,
        image: Option<ImageRef>,
    },
    /// The one-shot trial boot into the rollback volume was armed.
    FinalizeManualRollbackAb,
    /// The rollback OS booted from `booted` and is healthy.
    CommitManualRollbackAb { booted: AbVolume },
    /// Re-apply the spec from before the last runtime update, live.
    StageManualRollbackRuntime { spec: HostConfiguration },
    /// The runtime rollback succeeded.
    CommitManualRollbackRuntime,
    /// Abandon a staged (not yet finalized) install, A/B update or A/B rollback.
    Cancel,
}

/// The kind of a transition, without data (for tables, docs and history).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransitionKind {
    StageCleanInstall,
    FinalizeCleanInstall,
    CommitCleanInstall,
    StageAbUpdate,
    FinalizeAbUpdate,
    CommitAbUpdate,
    HealthCheckFailed,
    RecordFallback,
    StageRuntimeUpdate,
    CommitRuntimeUpdate,
    RevertRuntime,
    StageManualRollbackAb,
    FinalizeManualRollbackAb,
    CommitManualRollbackAb,
    StageManualRollbackRuntime,
    CommitManualRollbackRuntime,
    Cancel,
}

impl TransitionKind {
    pub const ALL: [TransitionKind; 17] = [
        TransitionKind::StageCleanInstall,
        TransitionKind::FinalizeCleanInstall,
        TransitionKind::CommitCleanInstall,
        TransitionKind::StageAbUpdate,
        TransitionKind::FinalizeAbUpdate,
        TransitionKind::CommitAbUpdate,
        TransitionKind::HealthCheckFailed,
        TransitionKind::RecordFallback,
        TransitionKind::StageRuntimeUpdate,
        TransitionKind::CommitRuntimeUpdate,
        TransitionKind::RevertRuntime,
        TransitionKind::StageManualRollbackAb,
        TransitionKind::FinalizeManualRollbackAb,
        TransitionKind::CommitManualRollbackAb,
        TransitionKind::StageManualRollbackRuntime,
        TransitionKind::CommitManualRollbackRuntime,
        TransitionKind::Cancel,
    ];

    /// Stable kebab-case name; the datastore's history `operation` column.
    pub fn name(self) -> &'static str {
        match self {
            TransitionKind::StageCleanInstall => "stage-clean-install",
            TransitionKind::FinalizeCleanInstall => "finalize-clean-install",
            TransitionKind::CommitCleanInstall => "commit-clean-install",
            TransitionKind::StageAbUpdate => "stage-ab-update",
            TransitionKind::FinalizeAbUpdate => "finalize-ab-update",
            TransitionKind::CommitAbUpdate => "commit-ab-update",
            TransitionKind::HealthCheckFailed => "health-check-failed",
            TransitionKind::RecordFallback => "record-fallback",
            TransitionKind::StageRuntimeUpdate => "stage-runtime-update",
            TransitionKind::CommitRuntimeUpdate => "commit-runtime-update",
            TransitionKind::RevertRuntime => "revert-runtime",
            TransitionKind::StageManualRollbackAb => "stage-manual-rollback-ab",
            TransitionKind::FinalizeManualRollbackAb => "finalize-manual-rollback-ab",
            TransitionKind::CommitManualRollbackAb => "commit-manual-rollback-ab",
            TransitionKind::StageManualRollbackRuntime => "stage-manual-rollback-runtime",
            TransitionKind::CommitManualRollbackRuntime => "commit-manual-rollback-runtime",
            TransitionKind::Cancel => "cancel",
        }
    }

    /// The states this transition may start from. The single source of truth for the
    /// legal graph.
    pub fn legal_sources(self) -> &'static [ServicingState] {
        match self {
            TransitionKind::StageCleanInstall => &[S::NotProvisioned, S::CleanInstallStaged],
            TransitionKind::FinalizeCleanInstall => &[S::CleanInstallStaged],
            TransitionKind::CommitCleanInstall => &[S::CleanInstallFinalized],
            TransitionKind::StageAbUpdate => &[S::Provisioned, S::AbUpdateStaged],
            TransitionKind::FinalizeAbUpdate => &[S::AbUpdateStaged],
            TransitionKind::CommitAbUpdate => &[S::AbUpdateFinalized],
            TransitionKind::HealthCheckFailed => {
                &[S::AbUpdateFinalized, S::ManualRollbackAbFinalized]
            }
            TransitionKind::RecordFallback => &[
                S::AbUpdateFinalized,
                S::AbUpdateHealthCheckFailed,
                S::ManualRollbackAbFinalized,
            ],
            TransitionKind::StageRuntimeUpdate => &[S::Provisioned],
            TransitionKind::CommitRuntimeUpdate => &[S::RuntimeUpdateStaged],
            TransitionKind::RevertRuntime => {
                &[S::RuntimeUpdateStaged, S::ManualRollbackRuntimeStaged]
            }
            TransitionKind::StageManualRollbackAb => &[S::Provisioned, S::ManualRollbackAbStaged],
            TransitionKind::FinalizeManualRollbackAb => &[S::ManualRollbackAbStaged],
            TransitionKind::CommitManualRollbackAb => &[S::ManualRollbackAbFinalized],
            TransitionKind::StageManualRollbackRuntime => &[S::Provisioned],
            TransitionKind::CommitManualRollbackRuntime => &[S::ManualRollbackRuntimeStaged],
            TransitionKind::Cancel => &[
                S::CleanInstallStaged,
                S::AbUpdateStaged,
                S::ManualRollbackAbStaged,
            ],
        }
    }

    /// The state this transition leads to from `from` (for an illegal source, the state
    /// it would have led to from its usual source; used in error messages).
    pub fn target(self, from: ServicingState) -> ServicingState {
        match self {
            TransitionKind::StageCleanInstall => S::CleanInstallStaged,
            TransitionKind::FinalizeCleanInstall => S::CleanInstallFinalized,
            TransitionKind::StageAbUpdate => S::AbUpdateStaged,
            TransitionKind::FinalizeAbUpdate => S::AbUpdateFinalized,
            TransitionKind::HealthCheckFailed => S::AbUpdateHealthCheckFailed,
            TransitionKind::StageRuntimeUpdate => S::RuntimeUpdateStaged,
            TransitionKind::StageManualRollbackAb => S::ManualRollbackAbStaged,
            TransitionKind::FinalizeManualRollbackAb => S::ManualRollbackAbFinalized,
            TransitionKind::StageManualRollbackRuntime => S::ManualRollbackRuntimeStaged,
            TransitionKind::Cancel if from == S::CleanInstallStaged => S::NotProvisioned,
            TransitionKind::CommitCleanInstall
            | TransitionKind::CommitAbUpdate
            | TransitionKind::RecordFallback
            | TransitionKind::CommitRuntimeUpdate
            | TransitionKind::RevertRuntime
            | TransitionKind::CommitManualRollbackAb
            | TransitionKind::CommitManualRollbackRuntime
            | TransitionKind::Cancel => S::Provisioned,
        }
    }
}

impl Transition {
    pub fn kind(&self) -> TransitionKind {
        match self {
            Transition::StageCleanInstall { .. } => TransitionKind::StageCleanInstall,
            Transition::FinalizeCleanInstall => TransitionKind::FinalizeCleanInstall,
            Transition::CommitCleanInstall { .. } => TransitionKind::CommitCleanInstall,
            Transition::StageAbUpdate { .. } => TransitionKind::StageAbUpdate,
            Transition::FinalizeAbUpdate => TransitionKind::FinalizeAbUpdate,
            Transition::CommitAbUpdate { .. } => TransitionKind::CommitAbUpdate,
            Transition::HealthCheckFailed { .. } => TransitionKind::HealthCheckFailed,
            Transition::RecordFallback { .. } => TransitionKind::RecordFallback,
            Transition::StageRuntimeUpdate { .. } => TransitionKind::StageRuntimeUpdate,
            Transition::CommitRuntimeUpdate => TransitionKind::CommitRuntimeUpdate,
            Transition::RevertRuntime { .. } => TransitionKind::RevertRuntime,
            Transition::StageManualRollbackAb { .. } => TransitionKind::StageManualRollbackAb,
            Transition::FinalizeManualRollbackAb => TransitionKind::FinalizeManualRollbackAb,
            Transition::CommitManualRollbackAb { .. } => TransitionKind::CommitManualRollbackAb,
            Transition::StageManualRollbackRuntime { .. } => {
                TransitionKind::StageManualRollbackRuntime
            }
            Transition::CommitManualRollbackRuntime => TransitionKind::CommitManualRollbackRuntime,
            Transition::Cancel => TransitionKind::Cancel,
        }
    }

    /// Stable name (the datastore's history `operation`).
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }
}

impl HostStatus {
    /// Apply one transition. Refuses an illegal source state with an `internal`
    /// [`ILLEGAL_TRANSITION`] error, and a wrong booted volume with a `servicing`
    /// [`UNEXPECTED_BOOT_VOLUME`] error; on any error `self` is unchanged.
    /// Returns the new state.
    pub fn apply(&mut self, transition: Transition) -> Result<ServicingState, TridentError> {
        let kind = transition.kind();
        let from = self.servicing_state;
        let to = kind.target(from);
        if !kind.legal_sources().contains(&from) {
            return Err(TridentError::internal(
                ILLEGAL_TRANSITION,
                format!(
                    "cannot {} from servicing state {from} to {to}: allowed only from {}",
                    kind.name(),
                    join(kind.legal_sources())
                ),
            ));
        }
        self.check_preconditions(&transition)?;

        match transition {
            Transition::StageCleanInstall {
                spec,
                image,
                block_devices,
            } => {
                *self = HostStatus {
                    spec,
                    target_volume: Some(AbVolume::VolumeA),
                    block_devices,
                    staged_image: Some(image),
                    last_error: self.last_error.take(),
                    ..HostStatus::default()
                };
            }
            Transition::FinalizeCleanInstall => {}
            Transition::CommitCleanInstall { .. }
            | Transition::CommitAbUpdate { .. }
            | Transition::CommitManualRollbackAb { .. } => {
                self.active_volume = self.target_volume.take();
                self.trial_boot_pending = false;
                self.previous_spec = None;
                self.image = self.staged_image.take();
                self.last_error = None;
            }
            Transition::StageAbUpdate { spec, image } => {
                self.stage_into_inactive(spec, Some(image));
            }
            Transition::StageManualRollbackAb { spec, image } => {
                self.stage_into_inactive(spec, image);
            }
            Transition::FinalizeAbUpdate | Transition::FinalizeManualRollbackAb => {
                self.trial_boot_pending = true;
            }
            Transition::HealthCheckFailed { error } => {
                self.last_error = Some(error);
            }
            Transition::RecordFallback { booted: _, error } => {
                let error = match error {
                    Some(e) => e,
                    None if from == S::AbUpdateHealthCheckFailed && self.last_error.is_some() => {
                        self.last_error.take().expect("checked above")
                    }
                    None => TridentError::servicing(
                        TRIAL_BOOT_FAILED,
                        format!(
                            "the trial boot of {} did not complete; the host fell back to {}",
                            volume_name(self.target_volume),
                            volume_name(self.active_volume)
                        ),
                    ),
                };
                self.restore_previous_spec();
                self.last_error = Some(error);
            }
            Transition::StageRuntimeUpdate { spec }
            | Transition::StageManualRollbackRuntime { spec } => {
                self.previous_spec = Some(std::mem::replace(&mut self.spec, spec));
            }
            Transition::CommitRuntimeUpdate | Transition::CommitManualRollbackRuntime => {
                self.previous_spec = None;
                self.last_error = None;
            }
            Transition::RevertRuntime { error } => {
                self.restore_previous_spec();
                self.last_error = Some(error);
            }
            Transition::Cancel => {
                if from == S::CleanInstallStaged {
                    *self = HostStatus {
                        last_error: self.last_error.take(),
                        ..HostStatus::default()
                    };
                } else {
                    self.restore_previous_spec();
                }
            }
        }
        self.servicing_state = to;
        self.agent_version = crate::VERSION.to_string();
        Ok(to)
    }

    /// Transition-specific checks, run before any mutation.
    fn check_preconditions(&self, transition: &Transition) -> Result<(), TridentError> {
        let kind = transition.kind();
        match transition {
            Transition::CommitCleanInstall { booted }
            | Transition::CommitAbUpdate { booted }
            | Transition::CommitManualRollbackAb { booted } => {
                expect_booted(kind, *booted, self.target_volume, "the new volume")
            }
            Transition::RecordFallback { booted, .. } => {
                expect_booted(kind, *booted, self.active_volume, "the old volume")?;
                self.expect_previous_spec(kind)
            }
            Transition::StageAbUpdate { .. } | Transition::StageManualRollbackAb { .. } => {
                if self.active_volume.is_none() {
                    return Err(TridentError::internal(
                        "missing-active-volume",
                        format!(
                            "cannot {}: the Host Status has no active volume",
                            kind.name()
                        ),
                    ));
                }
                if self.servicing_state != S::Provisioned {
                    self.expect_previous_spec(kind)?;
                }
                Ok(())
            }
            Transition::RevertRuntime { .. } => self.expect_previous_spec(kind),
            Transition::Cancel if self.servicing_state != S::CleanInstallStaged => {
                self.expect_previous_spec(kind)
            }
            _ => Ok(()),
        }
    }

    fn expect_previous_spec(&self, kind: TransitionKind) -> Result<(), TridentError> {
        if self.previous_spec.is_none() {
            return Err(TridentError::internal(
                "missing-previous-spec",
                format!(
                    "cannot {} from servicing state {}: the Host Status has no previous spec",
                    kind.name(),
                    self.servicing_state
                ),
            ));
        }
        Ok(())
    }

    fn stage_into_inactive(&mut self, spec: HostConfiguration, image: Option<ImageRef>) {
        let old = std::mem::replace(&mut self.spec, spec);
        if self.servicing_state == S::Provisioned {
            self.previous_spec = Some(old);
        }
        self.target_volume = self.active_volume.map(AbVolume::other);
        self.staged_image = image;
        self.trial_boot_pending = false;
    }

    fn restore_previous_spec(&mut self) {
        if let Some(previous) = self.previous_spec.take() {
            self.spec = previous;
        }
        self.target_volume = None;
        self.staged_image = None;
        self.trial_boot_pending = false;
    }

    // One method per transition (thin wrappers over `apply`).

    pub fn stage_clean_install(
        &mut self,
        spec: HostConfiguration,
        image: ImageRef,
        block_devices: BTreeMap<String, PathBuf>,
    ) -> Result<ServicingState, TridentError> {
        self.apply(Transition::StageCleanInstall {
            spec,
            image,
            block_devices,
        })
    }
    pub fn finalize_clean_install(&mut self) -> Result<ServicingState, TridentError> {
        self.apply(Transition::FinalizeCleanInstall)
    }
    pub fn commit_clean_install(
        &mut self,
        booted: AbVolume,
    ) -> Result<ServicingState, TridentError> {
        self.apply(Transition::CommitCleanInstall { booted })
    }
    pub fn stage_ab_update(
        &mut self,
        spec: HostConfiguration,
        image: ImageRef,
    ) -> Result<ServicingState, TridentError> {
        self.apply(Transition::StageAbUpdate { spec, image })
    }
    pub fn finalize_ab_update(&mut self) -> Result<ServicingState, TridentError> {
        self.apply(Transition::FinalizeAbUpdate)
    }
    pub fn commit_ab_update(&mut self, booted: AbVolume) -> Result<ServicingState, TridentError> {
        self.apply(Transition::CommitAbUpdate { booted })
    }
    pub fn health_check_failed(
        &mut self,
        error: TridentError,
    ) -> Result<ServicingState, TridentError> {
        self.apply(Transition::HealthCheckFailed { error })
    }
    pub fn record_fallback(
        &mut self,
        booted: AbVolume,
        error: Option<TridentError>,
    ) -> Result<ServicingState, TridentError> {
        self.apply(Transition::RecordFallback { booted, error })
    }
    pub fn stage_runtime_update(
        &mut self,
        spec: HostConfiguration,
    ) -> Result<ServicingState, TridentError> {
        self.apply(Transition::StageRuntimeUpdate { spec })
    }
    pub fn commit_runtime_update(&mut self) -> Result<ServicingState, TridentError> {
        self.apply(Transition::CommitRuntimeUpdate)
    }
    pub fn revert_runtime(&mut self, error: TridentError) -> Result<ServicingState, TridentError> {
        self.apply(Transition::RevertRuntime { error })
    }
    pub fn stage_manual_rollback_ab(
        &mut self,
        spec: HostConfiguration,
        image: Option<ImageRef>,
    ) -> Result<ServicingState, TridentError> {
        self.apply(Transition::StageManualRollbackAb { spec, image })
    }
    pub fn finalize_manual_rollback_ab(&mut self) -> Result<ServicingState, TridentError> {
        self.apply(Transition::FinalizeManualRollbackAb)
    }
    pub fn commit_manual_rollback_ab(
        &mut self,
        booted: AbVolume,
    ) -> Result<ServicingState, TridentError> {
        self.apply(Transition::CommitManualRollbackAb { booted })
    }
    pub fn stage_manual_rollback_runtime(
        &mut self,
        spec: HostConfiguration,
    ) -> Result<ServicingState, TridentError> {
        self.apply(Transition::StageManualRollbackRuntime { spec })
    }
    pub fn commit_manual_rollback_runtime(&mut self) -> Result<ServicingState, TridentError> {
        self.apply(Transition::CommitManualRollbackRuntime)
    }
    pub fn cancel(&mut self) -> Result<ServicingState, TridentError> {
        self.apply(Transition::Cancel)
    }
}

fn expect_booted(
    kind: TransitionKind,
    booted: AbVolume,
    expected: Option<AbVolume>,
    what: &str,
) -> Result<(), TridentError> {
    if Some(booted) != expected {
        return Err(TridentError::servicing(
            UNEXPECTED_BOOT_VOLUME,
            format!(
                "cannot {}: the host booted {booted}, but {what} is {}",
                kind.name(),
                volume_name(expected)
            ),
        ));
    }
    Ok(())
}

fn volume_name(v: Option<AbVolume>) -> &'static str {
    v.map(AbVolume::as_str).unwrap_or("unknown")
}

fn join(states: &[ServicingState]) -> String {
    states
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
