//! Marker files (`docs/units.md`, "Marker contract") and the staged stamp.

use crate::config::{Check, HostConfiguration, ServicingType};
use crate::generator::markers::{
    HealthCheckEntry, HealthCheckList, PendingMarker, TrialMarker, TrialOperation, HEALTH_CHECKS,
    MARKER_VERSION, PENDING_MARKER, TRIAL_MARKER,
};
use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// The stamp stage leaves for finalize, relative to the running root.
pub const STAGED_STAMP: &str = "var/lib/trident/staged";

/// Write `data` to `path` atomically: temp file, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().context("marker path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().context("no file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// Remove `path` if it exists.
pub fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// The health checks that run on a trial boot of `servicing`.
pub fn health_check_list(hc: &HostConfiguration, servicing: ServicingType) -> HealthCheckList {
    HealthCheckList {
        version: MARKER_VERSION,
        checks: hc
            .health
            .checks
            .iter()
            .filter(|c| c.should_run(servicing))
            .map(|c| HealthCheckEntry {
                name: c.name().to_string(),
                timeout_seconds: match c {
                    Check::SystemdCheck(s) => Some(s.timeout_seconds),
                    Check::Script(_) => None,
                },
            })
            .collect(),
    }
}

/// Into the root of the volume to be trial-booted: `health-checks` (if any), then
/// `trial`; any stale `pending` there is removed.
pub fn write_trial(
    root: &Path,
    hc: &HostConfiguration,
    servicing: ServicingType,
    operation: TrialOperation,
    update_id: &str,
    volume: &str,
) -> Result<()> {
    let checks = health_check_list(hc, servicing);
    if checks.checks.is_empty() {
        remove(&root.join(HEALTH_CHECKS))?;
    } else {
        write_atomic(
            &root.join(HEALTH_CHECKS),
            serde_json::to_string(&checks)?.as_bytes(),
        )?;
    }
    let trial = TrialMarker {
        version: MARKER_VERSION,
        operation,
        update_id: update_id.to_string(),
        volume: volume.to_string(),
        loader_entry: None,
    };
    write_atomic(
        &root.join(TRIAL_MARKER),
        serde_json::to_string(&trial)?.as_bytes(),
    )?;
    remove(&root.join(PENDING_MARKER))
}

/// Into the root of the running (old) volume.
pub fn write_pending(
    root: &Path,
    operation: TrialOperation,
    update_id: &str,
    trial_volume: &str,
) -> Result<()> {
    let m = PendingMarker {
        version: MARKER_VERSION,
        operation,
        update_id: update_id.to_string(),
        trial_volume: trial_volume.to_string(),
    };
    write_atomic(
        &root.join(PENDING_MARKER),
        serde_json::to_string(&m)?.as_bytes(),
    )
}

/// Remove the trial markers from a root.
pub fn clear_trial(root: &Path) -> Result<()> {
    remove(&root.join(TRIAL_MARKER))?;
    remove(&root.join(HEALTH_CHECKS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trial_and_pending_markers_follow_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let hc = crate::config::parse(
            "health:\n  checks:\n  - name: c1\n    content: 'true'\n    runOn: [ab-update]\n  - name: c2\n    content: 'true'\n    runOn: [clean-install]\n  - name: svc\n    systemdServices: [a]\n    timeoutSeconds: 5\n    runOn: [all]\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("etc/trident/boot")).unwrap();
        std::fs::write(dir.path().join(PENDING_MARKER), "{}").unwrap();
        write_trial(
            dir.path(),
            &hc,
            ServicingType::AbUpdate,
            TrialOperation::AbUpdate,
            "u1",
            "b",
        )
        .unwrap();
        let t: TrialMarker =
            serde_json::from_slice(&std::fs::read(dir.path().join(TRIAL_MARKER)).unwrap()).unwrap();
        assert_eq!(t.volume, "b");
        assert_eq!(t.operation, TrialOperation::AbUpdate);
        let c: HealthCheckList =
            serde_json::from_slice(&std::fs::read(dir.path().join(HEALTH_CHECKS)).unwrap())
                .unwrap();
        let names: Vec<_> = c.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["c1", "svc"]);
        assert_eq!(c.checks[1].timeout_seconds, Some(5));
        assert!(!dir.path().join(PENDING_MARKER).exists());
        write_pending(dir.path(), TrialOperation::AbUpdate, "u1", "b").unwrap();
        let p: PendingMarker =
            serde_json::from_slice(&std::fs::read(dir.path().join(PENDING_MARKER)).unwrap())
                .unwrap();
        assert_eq!(p.trial_volume, "b");
        clear_trial(dir.path()).unwrap();
        assert!(!dir.path().join(TRIAL_MARKER).exists());
        assert!(!dir.path().join(HEALTH_CHECKS).exists());
        clear_trial(dir.path()).unwrap();
    }
}
