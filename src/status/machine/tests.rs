use super::*;
use crate::error::Category;
use std::path::Path;

use AbVolume::{VolumeA as A, VolumeB as B};
use TransitionKind as K;

/// A distinct, realistic spec per `n`: the compat sample `basic.yaml` with its image URL
/// varied (parsed by whatever `HostConfiguration` is in the tree).
fn spec(n: u32) -> HostConfiguration {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/compat/host-configs/basic.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(text.contains("file:///path/to/image.cosi"));
    let text = text.replace(
        "file:///path/to/image.cosi",
        &format!("file:///path/to/image-v{n}.cosi"),
    );
    let parsed: HostConfiguration = serde_yaml::from_str(&text).expect("basic.yaml parses");
    parsed
}

fn image(n: u32) -> ImageRef {
    ImageRef {
        url: format!("file:///path/to/image-v{n}.cosi"),
        sha384: format!("{n:096x}"),
    }
}

fn devices() -> BTreeMap<String, PathBuf> {
    [("os".to_string(), PathBuf::from("/dev/loop7"))].into()
}

/// The legal graph, written out by hand (independently of `legal_sources`).
const LEGAL: &[(TransitionKind, ServicingState, ServicingState)] = &[
    (
        K::StageCleanInstall,
        S::NotProvisioned,
        S::CleanInstallStaged,
    ),
    (
        K::StageCleanInstall,
        S::CleanInstallStaged,
        S::CleanInstallStaged,
    ),
    (
        K::FinalizeCleanInstall,
        S::CleanInstallStaged,
        S::CleanInstallFinalized,
    ),
    (
        K::CommitCleanInstall,
        S::CleanInstallFinalized,
        S::Provisioned,
    ),
    (K::StageAbUpdate, S::Provisioned, S::AbUpdateStaged),
    (K::StageAbUpdate, S::AbUpdateStaged, S::AbUpdateStaged),
    (K::FinalizeAbUpdate, S::AbUpdateStaged, S::AbUpdateFinalized),
    (K::CommitAbUpdate, S::AbUpdateFinalized, S::Provisioned),
    (
        K::HealthCheckFailed,
        S::AbUpdateFinalized,
        S::AbUpdateHealthCheckFailed,
    ),
    (
        K::HealthCheckFailed,
        S::ManualRollbackAbFinalized,
        S::AbUpdateHealthCheckFailed,
    ),
    (K::RecordFallback, S::AbUpdateFinalized, S::Provisioned),
    (
        K::RecordFallback,
        S::AbUpdateHealthCheckFailed,
        S::Provisioned,
    ),
    (
        K::RecordFallback,
        S::ManualRollbackAbFinalized,
        S::Provisioned,
    ),
    (
        K::StageRuntimeUpdate,
        S::Provisioned,
        S::RuntimeUpdateStaged,
    ),
    (
        K::CommitRuntimeUpdate,
        S::RuntimeUpdateStaged,
        S::Provisioned,
    ),
    (K::RevertRuntime, S::RuntimeUpdateStaged, S::Provisioned),
    (
        K::RevertRuntime,
        S::ManualRollbackRuntimeStaged,
        S::Provisioned,
    ),
    (
        K::StageManualRollbackAb,
        S::Provisioned,
        S::ManualRollbackAbStaged,
    ),
    (
        K::StageManualRollbackAb,
        S::ManualRollbackAbStaged,
        S::ManualRollbackAbStaged,
    ),
    (
        K::FinalizeManualRollbackAb,
        S::ManualRollbackAbStaged,
        S::ManualRollbackAbFinalized,
    ),
    (
        K::CommitManualRollbackAb,
        S::ManualRollbackAbFinalized,
        S::Provisioned,
    ),
    (
        K::StageManualRollbackRuntime,
        S::Provisioned,
        S::ManualRollbackRuntimeStaged,
    ),
    (
        K::CommitManualRollbackRuntime,
        S::ManualRollbackRuntimeStaged,
        S::Provisioned,
    ),
    (K::Cancel, S::CleanInstallStaged, S::NotProvisioned),
    (K::Cancel, S::AbUpdateStaged, S::Provisioned),
    (K::Cancel, S::ManualRollbackAbStaged, S::Provisioned),
];

/// A plausible Host Status in `state`: volume A active (B targeted) once installed,
/// spec 2 over previous spec 1 while something is in flight.
fn host_in(state: ServicingState) -> HostStatus {
    let mut hs = HostStatus {
        servicing_state: state,
        block_devices: devices(),
        ..HostStatus::default()
    };
    match state {
        S::NotProvisioned => hs.block_devices.clear(),
        S::CleanInstallStaged | S::CleanInstallFinalized => {
            hs.spec = spec(1);
            hs.target_volume = Some(A);
            hs.staged_image = Some(image(1));
        }
        S::Provisioned => {
            hs.spec = spec(1);
            hs.active_volume = Some(A);
            hs.image = Some(image(1));
        }
        S::RuntimeUpdateStaged | S::ManualRollbackRuntimeStaged => {
            hs.spec = spec(2);
            hs.previous_spec = Some(spec(1));
            hs.active_volume = Some(A);
            hs.image = Some(image(1));
        }
        S::AbUpdateStaged
        | S::AbUpdateFinalized
        | S::AbUpdateHealthCheckFailed
        | S::ManualRollbackAbStaged
        | S::ManualRollbackAbFinalized => {
            hs.spec = spec(2);
            hs.previous_spec = Some(spec(1));
            hs.active_volume = Some(A);
            hs.target_volume = Some(B);
            hs.image = Some(image(1));
            hs.staged_image = Some(image(2));
            hs.trial_boot_pending = state.is_trial();
        }
    }
    hs
}

/// A sample transition of each kind, valid for the hosts built by `host_in`.
fn sample(kind: TransitionKind, from: ServicingState) -> Transition {
    let err = || TridentError::health_failed_for_test();
    match kind {
        K::StageCleanInstall => Transition::StageCleanInstall {
            spec: spec(3),
            image: image(3),
            block_devices: devices(),
        },
        K::FinalizeCleanInstall => Transition::FinalizeCleanInstall,
        K::CommitCleanInstall => Transition::CommitCleanInstall { booted: A },
        K::StageAbUpdate => Transition::StageAbUpdate {
            spec: spec(3),
            image: image(3),
        },
        K::FinalizeAbUpdate => Transition::FinalizeAbUpdate,
        K::CommitAbUpdate => Transition::CommitAbUpdate {
            booted: if from == S::CleanInstallFinalized {
                A
            } else {
                B
            },
        },
        K::HealthCheckFailed => Transition::HealthCheckFailed { error: err() },
        K::RecordFallback => Transition::RecordFallback {
            booted: A,
            error: None,
        },
        K::StageRuntimeUpdate => Transition::StageRuntimeUpdate { spec: spec(3) },
        K::CommitRuntimeUpdate => Transition::CommitRuntimeUpdate,
        K::RevertRuntime => Transition::RevertRuntime { error: err() },
        K::StageManualRollbackAb => Transition::StageManualRollbackAb {
            spec: spec(0),
            image: Some(image(0)),
        },
        K::FinalizeManualRollbackAb => Transition::FinalizeManualRollbackAb,
        K::CommitManualRollbackAb => Transition::CommitManualRollbackAb { booted: B },
        K::StageManualRollbackRuntime => Transition::StageManualRollbackRuntime { spec: spec(0) },
        K::CommitManualRollbackRuntime => Transition::CommitManualRollbackRuntime,
        K::Cancel => Transition::Cancel,
    }
}

impl TridentError {
    fn health_failed_for_test() -> TridentError {
        TridentError::new(
            Category::HealthChecks,
            "health-check-failed",
            "check-web failed",
        )
    }
}

#[test]
fn specs_used_by_these_tests_are_distinct() {
    assert_ne!(spec(1), spec(2));
    assert_eq!(spec(1), spec(1));
}

#[test]
fn legal_table_matches_the_machine() {
    for kind in TransitionKind::ALL {
        for from in ServicingState::ALL {
            let expected = LEGAL
                .iter()
                .find(|(k, f, _)| *k == kind && *f == from)
                .map(|(_, _, to)| *to);
            assert_eq!(
                kind.legal_sources().contains(&from),
                expected.is_some(),
                "{} from {from}",
                kind.name()
            );
            if let Some(to) = expected {
                assert_eq!(kind.target(from), to, "{} from {from}", kind.name());
            }
        }
    }
    // Every state is reachable and every non-initial state can be left.
    for s in ServicingState::ALL {
        if s != S::NotProvisioned {
            assert!(LEGAL.iter().any(|(_, _, to)| *to == s), "{s} unreachable");
        }
        assert!(LEGAL.iter().any(|(_, f, _)| *f == s), "{s} is a dead end");
    }
}

#[test]
fn every_legal_transition_applies() {
    for &(kind, from, to) in LEGAL {
        let mut hs = host_in(from);
        let t = sample(kind, from);
        assert_eq!(t.kind(), kind);
        let got = hs
            .apply(t)
            .unwrap_or_else(|e| panic!("{} from {from}: {e}", kind.name()));
        assert_eq!(got, to, "{} from {from}", kind.name());
        assert_eq!(hs.servicing_state, to);
        assert_eq!(hs.agent_version, crate::VERSION);
        // Invariants of every resting state.
        if to == S::Provisioned {
            assert!(hs.previous_spec.is_none(), "{} from {from}", kind.name());
            assert!(hs.target_volume.is_none(), "{} from {from}", kind.name());
            assert!(hs.staged_image.is_none(), "{} from {from}", kind.name());
            assert!(!hs.trial_boot_pending, "{} from {from}", kind.name());
            assert!(hs.active_volume.is_some(), "{} from {from}", kind.name());
        }
        if to.is_trial() {
            assert!(hs.trial_boot_pending, "{} from {from}", kind.name());
            assert_eq!(hs.target_volume, hs.inactive_volume());
        }
    }
}

#[test]
fn every_illegal_transition_is_refused_and_changes_nothing() {
    let mut refused = 0;
    for kind in TransitionKind::ALL {
        for from in ServicingState::ALL {
            if kind.legal_sources().contains(&from) {
                continue;
            }
            let mut hs = host_in(from);
            let before = hs.clone();
            let err = hs.apply(sample(kind, from)).unwrap_err();
            assert_eq!(
                err.category,
                Category::Internal,
                "{} from {from}",
                kind.name()
            );
            assert_eq!(err.code, ILLEGAL_TRANSITION);
            let to = kind.target(from);
            assert!(
                err.message.contains(from.as_str()) && err.message.contains(to.as_str()),
                "message must name from/to: {}",
                err.message
            );
            assert!(err.message.contains(kind.name()), "{}", err.message);
            assert_eq!(hs, before, "{} from {from} changed the status", kind.name());
            refused += 1;
        }
    }
    assert_eq!(refused, 17 * 11 - LEGAL.len());
}

#[test]
fn clean_install_then_ab_update_then_commit() {
    let mut hs = HostStatus::default();
    hs.stage_clean_install(spec(1), image(1), devices())
        .unwrap();
    assert_eq!(hs.target_volume, Some(A));
    assert_eq!(hs.active_volume, None);
    hs.finalize_clean_install().unwrap();
    hs.commit_clean_install(A).unwrap();
    assert_eq!(hs.servicing_state, S::Provisioned);
    assert_eq!(hs.active_volume, Some(A));
    assert_eq!(hs.image, Some(image(1)));
    assert_eq!(hs.block_devices, devices());

    hs.stage_ab_update(spec(2), image(2)).unwrap();
    assert_eq!(hs.spec, spec(2));
    assert_eq!(hs.previous_spec, Some(spec(1)));
    assert_eq!(hs.target_volume, Some(B));
    assert!(!hs.trial_boot_pending);
    // Re-stage keeps the committed spec as previous.
    hs.stage_ab_update(spec(3), image(3)).unwrap();
    assert_eq!(hs.spec, spec(3));
    assert_eq!(hs.previous_spec, Some(spec(1)));
    assert_eq!(hs.staged_image, Some(image(3)));
    hs.finalize_ab_update().unwrap();
    assert!(hs.trial_boot_pending);
    hs.commit_ab_update(B).unwrap();
    assert_eq!(hs.active_volume, Some(B));
    assert_eq!(hs.image, Some(image(3)));
    assert_eq!(hs.spec, spec(3));
    assert_eq!(hs.previous_spec, None);
    assert_eq!(hs.last_error, None);

    // The next update goes to A.
    hs.stage_ab_update(spec(4), image(4)).unwrap();
    assert_eq!(hs.target_volume, Some(A));
}

#[test]
fn commit_on_the_wrong_volume_is_refused() {
    let mut hs = host_in(S::AbUpdateFinalized);
    let before = hs.clone();
    let err = hs.commit_ab_update(A).unwrap_err();
    assert_eq!(err.code, UNEXPECTED_BOOT_VOLUME);
    assert_eq!(err.category, Category::Servicing);
    assert!(err.message.contains("volume-a") && err.message.contains("volume-b"));
    assert_eq!(hs, before);

    let mut hs = host_in(S::CleanInstallFinalized);
    assert_eq!(
        hs.commit_clean_install(B).unwrap_err().code,
        UNEXPECTED_BOOT_VOLUME
    );
    // A fallback must be detected on the old volume.
    let mut hs = host_in(S::AbUpdateFinalized);
    assert_eq!(
        hs.record_fallback(B, None).unwrap_err().code,
        UNEXPECTED_BOOT_VOLUME
    );
}

#[test]
fn fallback_restores_the_old_spec_with_an_error() {
    let mut hs = host_in(S::AbUpdateFinalized);
    hs.record_fallback(A, None).unwrap();
    assert_eq!(hs.servicing_state, S::Provisioned);
    assert_eq!(hs.spec, spec(1));
    assert_eq!(hs.active_volume, Some(A));
    assert_eq!(hs.image, Some(image(1)));
    let err = hs.last_error.clone().unwrap();
    assert_eq!(err.code, TRIAL_BOOT_FAILED);
    assert!(err.message.contains("volume-b"), "{}", err.message);

    let given = TridentError::servicing("kernel-panic", "watchdog fired");
    let mut hs = host_in(S::AbUpdateFinalized);
    hs.record_fallback(A, Some(given.clone())).unwrap();
    assert_eq!(hs.last_error, Some(given));
}

#[test]
fn failed_health_check_is_kept_through_the_rollback() {
    let mut hs = host_in(S::AbUpdateFinalized);
    hs.health_check_failed(TridentError::health_failed_for_test())
        .unwrap();
    assert_eq!(hs.servicing_state, S::AbUpdateHealthCheckFailed);
    assert!(hs.trial_boot_pending);
    // Commit is impossible now; only the fallback is.
    assert_eq!(
        hs.clone().commit_ab_update(B).unwrap_err().code,
        ILLEGAL_TRANSITION
    );
    hs.record_fallback(A, None).unwrap();
    assert_eq!(hs.last_error, Some(TridentError::health_failed_for_test()));
    assert_eq!(hs.spec, spec(1));
    assert!(!hs.trial_boot_pending);
}

#[test]
fn runtime_update_commit_and_revert() {
    let mut hs = host_in(S::Provisioned);
    hs.stage_runtime_update(spec(5)).unwrap();
    assert_eq!(hs.previous_spec, Some(spec(1)));
    hs.commit_runtime_update().unwrap();
    assert_eq!(hs.spec, spec(5));
    assert_eq!(hs.previous_spec, None);
    assert_eq!(hs.active_volume, Some(A));

    hs.stage_runtime_update(spec(6)).unwrap();
    let err = TridentError::servicing("runtime-update-failed", "hostname failed");
    hs.revert_runtime(err.clone()).unwrap();
    assert_eq!(hs.spec, spec(5));
    assert_eq!(hs.last_error, Some(err));

    // Manual runtime rollback to the spec before the last runtime update.
    hs.stage_manual_rollback_runtime(spec(1)).unwrap();
    assert_eq!(hs.previous_spec, Some(spec(5)));
    hs.commit_manual_rollback_runtime().unwrap();
    assert_eq!(hs.spec, spec(1));
    assert_eq!(hs.last_error, None);
}

#[test]
fn manual_ab_rollback_flips_without_reimaging() {
    let mut hs = host_in(S::Provisioned);
    hs.stage_manual_rollback_ab(spec(0), Some(image(0)))
        .unwrap();
    assert_eq!(hs.target_volume, Some(B));
    assert_eq!(hs.previous_spec, Some(spec(1)));
    hs.finalize_manual_rollback_ab().unwrap();
    assert!(hs.trial_boot_pending);
    hs.commit_manual_rollback_ab(B).unwrap();
    assert_eq!(hs.active_volume, Some(B));
    assert_eq!(hs.spec, spec(0));
    assert_eq!(hs.image, Some(image(0)));

    // A failed rollback trial falls back like an update.
    let mut hs = host_in(S::Provisioned);
    hs.stage_manual_rollback_ab(spec(0), None).unwrap();
    hs.finalize_manual_rollback_ab().unwrap();
    hs.record_fallback(A, None).unwrap();
    assert_eq!(hs.spec, spec(1));
    assert_eq!(hs.active_volume, Some(A));
}

#[test]
fn cancel_returns_to_the_resting_state() {
    let mut hs = host_in(S::AbUpdateStaged);
    hs.cancel().unwrap();
    assert_eq!(hs.servicing_state, S::Provisioned);
    assert_eq!(hs.spec, spec(1));
    assert_eq!(hs.image, Some(image(1)));
    assert_eq!(hs.target_volume, None);
    assert_eq!(hs.staged_image, None);

    let mut hs = host_in(S::CleanInstallStaged);
    hs.set_last_error(TridentError::servicing("mkfs-failed", "mkfs.ext4 failed"));
    hs.cancel().unwrap();
    assert_eq!(hs.servicing_state, S::NotProvisioned);
    assert_eq!(hs.spec, HostConfiguration::default());
    assert!(hs.block_devices.is_empty());
    assert_eq!(hs.last_error.unwrap().code, "mkfs-failed");

    // A finalized update cannot be cancelled (the one-shot boot is armed).
    let mut hs = host_in(S::AbUpdateFinalized);
    assert_eq!(hs.cancel().unwrap_err().code, ILLEGAL_TRANSITION);
}

#[test]
fn inconsistent_status_is_refused_not_guessed() {
    let mut hs = host_in(S::AbUpdateStaged);
    hs.previous_spec = None;
    let before = hs.clone();
    assert_eq!(hs.cancel().unwrap_err().code, "missing-previous-spec");
    assert_eq!(hs, before);
    let mut hs = host_in(S::Provisioned);
    hs.active_volume = None;
    assert_eq!(
        hs.stage_ab_update(spec(2), image(2)).unwrap_err().code,
        "missing-active-volume"
    );
}

#[test]
fn transition_names_are_unique_kebab_case() {
    let mut names: Vec<&str> = TransitionKind::ALL.iter().map(|k| k.name()).collect();
    assert!(names
        .iter()
        .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '-')));
    names.sort();
    names.dedup();
    assert_eq!(names.len(), TransitionKind::ALL.len());
}
