use super::*;
use crate::error::find_trident_error;
use crate::status::machine::ILLEGAL_TRANSITION;
use std::collections::BTreeMap;

use AbVolume::{VolumeA as A, VolumeB as B};
use ServicingState as S;

fn spec(n: u32) -> HostConfiguration {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/compat/host-configs/basic.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::from_str(&text.replace(
        "file:///path/to/image.cosi",
        &format!("file:///path/to/image-v{n}.cosi"),
    ))
    .unwrap()
}

fn image(n: u32) -> ImageRef {
    ImageRef {
        url: format!("file:///path/to/image-v{n}.cosi"),
        sha384: format!("{n:096x}"),
    }
}

fn fresh() -> (tempfile::TempDir, Datastore) {
    let dir = tempfile::tempdir().unwrap();
    let ds = Datastore::open(&dir.path().join("var/lib/trident/datastore.sqlite")).unwrap();
    (dir, ds)
}

/// Install spec 1 on A, then commit each later spec through an A/B update.
fn provisioned(ds: &mut Datastore, updates: &[u32]) {
    ds.transition(Transition::StageCleanInstall {
        spec: spec(1),
        image: image(1),
        block_devices: BTreeMap::new(),
    })
    .unwrap();
    ds.transition(Transition::FinalizeCleanInstall).unwrap();
    ds.transition(Transition::CommitCleanInstall { booted: A })
        .unwrap();
    for &n in updates {
        ab_update(ds, n);
    }
}

fn ab_update(ds: &mut Datastore, n: u32) {
    ds.transition(Transition::StageAbUpdate {
        spec: spec(n),
        image: image(n),
    })
    .unwrap();
    ds.transition(Transition::FinalizeAbUpdate).unwrap();
    let target = ds.host_status().unwrap().target_volume.unwrap();
    ds.transition(Transition::CommitAbUpdate { booted: target })
        .unwrap();
}

#[test]
fn fresh_datastore_is_not_provisioned_with_schema() {
    let (dir, ds) = fresh();
    assert_eq!(ds.host_status().unwrap(), HostStatus::default());
    assert!(ds.history(None).unwrap().is_empty());
    assert_eq!(ds.schema_version().unwrap(), LATEST_VERSION);
    ds.integrity_check().unwrap();
    let mode = std::fs::metadata(ds.path()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    let journal: String = ds
        .conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    let sync: i64 = ds
        .conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2, "synchronous=FULL");
    drop(ds);
    // Re-open: same file, nothing to migrate.
    let ds =
        Datastore::open_existing(&dir.path().join("var/lib/trident/datastore.sqlite")).unwrap();
    assert_eq!(ds.schema_version().unwrap(), LATEST_VERSION);
}

#[test]
fn record_appends_history_and_updates_current() {
    let (_dir, mut ds) = fresh();
    let mut hs = HostStatus::default();
    hs.stage_clean_install(spec(1), image(1), BTreeMap::new())
        .unwrap();
    let e1 = ds.record("stage-clean-install", &hs).unwrap();
    assert_eq!(e1.state_before, S::NotProvisioned);
    assert_eq!(e1.state_after, S::CleanInstallStaged);
    assert!(chrono::DateTime::parse_from_rfc3339(&e1.timestamp).is_ok());
    assert!(e1.timestamp.ends_with('Z'));
    hs.finalize_clean_install().unwrap();
    let e2 = ds.record("finalize-clean-install", &hs).unwrap();
    assert!(e2.id > e1.id);
    assert_eq!(e2.state_before, S::CleanInstallStaged);
    assert_eq!(ds.host_status().unwrap(), hs);

    let history = ds.history(None).unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0], e2, "newest first");
    assert_eq!(history[1], e1);
    assert_eq!(ds.history(Some(1)).unwrap(), vec![e2]);
    assert!(ds.history(Some(0)).unwrap().is_empty());
    assert!(ds.record("  ", &hs).is_err());
    assert_eq!(ds.history(None).unwrap().len(), 2);
}

#[test]
fn history_is_append_only() {
    let (_dir, mut ds) = fresh();
    ds.record("x", &HostStatus::default()).unwrap();
    let upd = ds
        .conn
        .execute("UPDATE history SET operation = 'forged'", []);
    assert!(upd.unwrap_err().to_string().contains("append-only"));
    let del = ds.conn.execute("DELETE FROM history", []);
    assert!(del.unwrap_err().to_string().contains("append-only"));
    assert_eq!(ds.history(None).unwrap()[0].operation, "x");
}

#[test]
fn transition_checks_the_stored_state() {
    let (_dir, mut ds) = fresh();
    let err = ds.transition(Transition::FinalizeAbUpdate).unwrap_err();
    assert_eq!(find_trident_error(&err).unwrap().code, ILLEGAL_TRANSITION);
    assert!(
        ds.history(None).unwrap().is_empty(),
        "refused: nothing recorded"
    );
    provisioned(&mut ds, &[2]);
    let hs = ds.host_status().unwrap();
    assert_eq!(hs.servicing_state, S::Provisioned);
    assert_eq!(hs.active_volume, Some(B));
    assert_eq!(hs.spec, spec(2));
    let ops: Vec<String> = ds
        .history(None)
        .unwrap()
        .into_iter()
        .rev()
        .map(|e| e.operation)
        .collect();
    assert_eq!(
        ops,
        [
            "stage-clean-install",
            "finalize-clean-install",
            "commit-clean-install",
            "stage-ab-update",
            "finalize-ab-update",
            "commit-ab-update"
        ]
    );
}

#[test]
fn rollback_chain_lists_earlier_ab_points_newest_first() {
    let (_dir, mut ds) = fresh();
    provisioned(&mut ds, &[]);
    assert!(ds.rollback_chain().unwrap().is_empty());
    assert_eq!(ds.ab_rollback_target().unwrap(), None);

    ab_update(&mut ds, 2); // now B
                           // A runtime update on B and a failed update attempt do not start a new epoch.
    ab_update(&mut ds, 3); // now A
    ds.transition(Transition::StageRuntimeUpdate { spec: spec(4) })
        .unwrap();
    ds.transition(Transition::CommitRuntimeUpdate).unwrap();
    ab_update(&mut ds, 5); // now B

    let chain = ds.rollback_chain().unwrap();
    let got: Vec<(AbVolume, HostConfiguration)> =
        chain.iter().map(|p| (p.volume, p.spec.clone())).collect();
    assert_eq!(got, vec![(A, spec(4)), (B, spec(2)), (A, spec(1))]);
    assert_eq!(chain[0].image, Some(image(3)));
    assert!(chain[0].history_id > chain[1].history_id);

    // The inactive volume (A) still holds spec 4: manual rollback goes there.
    let target = ds.ab_rollback_target().unwrap().unwrap();
    assert_eq!((target.volume, target.spec), (A, spec(4)));

    // A failed update overwrote A: nothing to roll back to any more.
    ds.transition(Transition::StageAbUpdate {
        spec: spec(6),
        image: image(6),
    })
    .unwrap();
    ds.transition(Transition::FinalizeAbUpdate).unwrap();
    ds.transition(Transition::RecordFallback {
        booted: B,
        error: None,
    })
    .unwrap();
    assert_eq!(ds.host_status().unwrap().spec, spec(5));
    assert_eq!(ds.rollback_chain().unwrap().len(), 3);
    assert_eq!(ds.ab_rollback_target().unwrap(), None);
}

#[test]
fn manual_ab_rollback_round_trip_through_the_datastore() {
    let (_dir, mut ds) = fresh();
    provisioned(&mut ds, &[2]);
    let target = ds.ab_rollback_target().unwrap().unwrap();
    ds.transition(Transition::StageManualRollbackAb {
        spec: target.spec.clone(),
        image: target.image.clone(),
    })
    .unwrap();
    ds.transition(Transition::FinalizeManualRollbackAb).unwrap();
    ds.transition(Transition::CommitManualRollbackAb { booted: A })
        .unwrap();
    let hs = ds.host_status().unwrap();
    assert_eq!(
        (hs.active_volume, hs.spec, hs.image),
        (Some(A), spec(1), Some(image(1)))
    );
    // Rolling back again returns to the newer OS, still on B.
    assert_eq!(ds.ab_rollback_target().unwrap().unwrap().spec, spec(2));
}

#[test]
fn runtime_rollback_target_is_the_spec_before_the_last_runtime_update() {
    let (_dir, mut ds) = fresh();
    provisioned(&mut ds, &[2]);
    assert_eq!(ds.runtime_rollback_target().unwrap(), None);
    ds.transition(Transition::StageRuntimeUpdate { spec: spec(3) })
        .unwrap();
    assert_eq!(
        ds.runtime_rollback_target().unwrap(),
        None,
        "not committed yet"
    );
    ds.transition(Transition::CommitRuntimeUpdate).unwrap();
    assert_eq!(ds.runtime_rollback_target().unwrap(), Some(spec(2)));
    ds.transition(Transition::StageManualRollbackRuntime { spec: spec(2) })
        .unwrap();
    ds.transition(Transition::CommitManualRollbackRuntime)
        .unwrap();
    assert_eq!(ds.host_status().unwrap().spec, spec(2));
    assert_eq!(
        ds.runtime_rollback_target().unwrap(),
        None,
        "already undone"
    );
    // A new A/B epoch has no runtime update to revert.
    ds.transition(Transition::StageRuntimeUpdate { spec: spec(3) })
        .unwrap();
    ds.transition(Transition::CommitRuntimeUpdate).unwrap();
    ab_update(&mut ds, 4);
    assert_eq!(ds.runtime_rollback_target().unwrap(), None);
}

#[test]
fn copy_to_makes_a_consistent_standalone_copy() {
    let (dir, mut ds) = fresh();
    provisioned(&mut ds, &[2, 3]);
    let dest = dir.path().join("target/var/lib/trident/datastore.sqlite");
    ds.copy_to(&dest).unwrap();
    assert!(!schema::wal_path(&dest).exists());
    // The copy is a datastore with the same content, and the source still works.
    let copy = Datastore::open_existing(&dest).unwrap();
    copy.integrity_check().unwrap();
    assert_eq!(copy.host_status().unwrap(), ds.host_status().unwrap());
    assert_eq!(copy.history(None).unwrap(), ds.history(None).unwrap());
    drop(copy);
    ab_update(&mut ds, 4);
    // Replacing an older copy of ours is fine ...
    ds.copy_to(&dest).unwrap();
    assert_eq!(
        Datastore::open_existing(&dest)
            .unwrap()
            .host_status()
            .unwrap()
            .spec,
        spec(4)
    );
    // ... replacing someone else's file is not.
    let foreign = dir.path().join("notes.txt");
    std::fs::write(&foreign, b"precious").unwrap();
    let err = ds.copy_to(&foreign).unwrap_err();
    assert_eq!(
        find_trident_error(&err).unwrap().code,
        "datastore-not-sqlite"
    );
    assert_eq!(std::fs::read(&foreign).unwrap(), b"precious");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn open_existing_reports_a_missing_datastore_as_not_provisioned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none/datastore.sqlite");
    let err = Datastore::open_existing(&path).unwrap_err();
    let te = find_trident_error(&err).unwrap();
    assert_eq!(te.code, "not-provisioned");
    assert_eq!(te.category, crate::error::Category::ExecutionEnvironment);
    assert!(te.message.contains(&path.display().to_string()));
    assert!(
        !path.exists() && !path.parent().unwrap().exists(),
        "nothing created"
    );
}

#[test]
fn a_zero_length_file_is_initialised() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ds.sqlite");
    std::fs::write(&path, b"").unwrap();
    let ds = Datastore::open(&path).unwrap();
    assert_eq!(ds.schema_version().unwrap(), LATEST_VERSION);
}

#[test]
fn two_handles_see_each_others_commits() {
    let (dir, mut a) = fresh();
    let mut b = Datastore::open(&dir.path().join("var/lib/trident/datastore.sqlite")).unwrap();
    a.record("one", &HostStatus::default()).unwrap();
    b.record("two", &HostStatus::default()).unwrap();
    let ops: Vec<String> = a
        .history(None)
        .unwrap()
        .into_iter()
        .map(|e| e.operation)
        .collect();
    assert_eq!(ops, ["two", "one"]);
}

#[test]
fn racing_transitions_move_the_state_once() {
    let (dir, mut ds) = fresh();
    provisioned(&mut ds, &[]);
    ds.transition(Transition::StageAbUpdate {
        spec: spec(2),
        image: image(2),
    })
    .unwrap();
    let path = dir.path().join("var/lib/trident/datastore.sqlite");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut ds = Datastore::open_existing(&path).unwrap();
                barrier.wait();
                ds.transition(Transition::FinalizeAbUpdate)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "exactly one finalize wins");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(find_trident_error(r).unwrap().code, ILLEGAL_TRANSITION);
    }
    let finalizes = ds
        .history(None)
        .unwrap()
        .iter()
        .filter(|e| e.operation == "finalize-ab-update")
        .count();
    assert_eq!(finalizes, 1);
}

#[test]
fn transition_with_records_observations_but_not_state_changes() {
    let (_dir, mut ds) = fresh();
    ds.transition(Transition::StageCleanInstall {
        spec: spec(1),
        image: image(1),
        block_devices: BTreeMap::from([("root-a".into(), PathBuf::from("/dev/loop0p2"))]),
    })
    .unwrap();
    ds.transition(Transition::FinalizeCleanInstall).unwrap();
    // The installed OS sees its disk under another name than the installer did.
    ds.transition_with(Transition::CommitCleanInstall { booted: A }, |hs| {
        hs.block_devices = BTreeMap::from([("root-a".into(), PathBuf::from("/dev/vda2"))])
    })
    .unwrap();
    let hs = ds.host_status().unwrap();
    assert_eq!(hs.servicing_state, S::Provisioned);
    assert_eq!(hs.block_devices["root-a"], PathBuf::from("/dev/vda2"));
    assert_eq!(
        ds.history(None).unwrap()[0].host_status.block_devices["root-a"],
        PathBuf::from("/dev/vda2"),
        "the history row has what was observed"
    );
    // An observation that would move the state is refused; nothing is recorded.
    ds.transition(Transition::StageAbUpdate {
        spec: spec(2),
        image: image(2),
    })
    .unwrap();
    let rows = ds.history(None).unwrap().len();
    let err = ds
        .transition_with(Transition::FinalizeAbUpdate, |hs| {
            hs.servicing_state = S::Provisioned
        })
        .unwrap_err();
    assert!(format!("{err:#}").contains("observation"), "{err:#}");
    assert_eq!(ds.history(None).unwrap().len(), rows);
    assert_eq!(ds.host_status().unwrap().servicing_state, S::AbUpdateStaged);
}
