//! The marker-file contract between the engine (finalize, commit, install) and the
//! generator. The engine writes these files with the types below (JSON, written
//! atomically: temp file, fsync, rename, fsync the directory); the generator reads them
//! at boot. Paths are relative to the root filesystem of the volume they live in, which
//! must hold `/etc` (the generator runs before any other filesystem is mounted).

use serde::{Deserialize, Serialize};

/// Directory of all boot markers, on the root filesystem.
pub const MARKER_DIR: &str = "etc/trident/boot";
/// Written by finalize (and install) into the root of the volume that will be
/// trial-booted. Removed by commit. Its presence makes a boot a trial boot.
pub const TRIAL_MARKER: &str = "etc/trident/boot/trial";
/// Written by finalize into the root of the *currently booted* (old) volume. A boot of
/// the old volume that finds it means the trial did not commit: record the automatic
/// rollback. Removed by `trident internal record-rollback` and by commit (which mounts
/// the old volume) and by finalize when the volume becomes the trial target.
pub const PENDING_MARKER: &str = "etc/trident/boot/pending";
/// Health checks of the trial, next to the trial marker. Absent means no checks.
pub const HEALTH_CHECKS: &str = "etc/trident/boot/health-checks";
/// Present in an installer image's root: pull in `trident-install.service`. Its first
/// non-empty line, if any, is the Host Configuration location.
pub const INSTALL_MARKER: &str = "etc/trident/boot/install";
/// Default Host Configuration location of an installer boot.
pub const DEFAULT_INSTALL_CONFIG: &str = "/etc/trident/config.yaml";
/// Highest marker format version this build understands.
pub const MARKER_VERSION: u32 = 1;

/// The operation whose first boot is being tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrialOperation {
    CleanInstall,
    AbUpdate,
    ManualRollbackAb,
}

/// Content of [`TRIAL_MARKER`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrialMarker {
    /// Format version, [`MARKER_VERSION`].
    pub version: u32,
    pub operation: TrialOperation,
    /// Identifies the servicing operation (the datastore's history row of finalize).
    pub update_id: String,
    /// Volume being tried: `a` or `b`.
    pub volume: String,
    /// systemd-boot entry id of the trial (e.g. `trident-b.conf`), if systemd-boot is
    /// used. When `LoaderEntrySelected` is readable and names another entry (boot
    /// counters ignored), the boot is not treated as the trial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loader_entry: Option<String>,
}

/// Content of [`PENDING_MARKER`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingMarker {
    pub version: u32,
    pub operation: TrialOperation,
    pub update_id: String,
    /// Volume that was being tried.
    pub trial_volume: String,
}

/// Content of [`HEALTH_CHECKS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckList {
    pub version: u32,
    pub checks: Vec<HealthCheckEntry>,
}

/// One Host Configuration health check (already filtered by `runOn`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckEntry {
    /// The check's `name` from the Host Configuration.
    pub name: String,
    /// The check's `timeoutSeconds`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// Escape a string into a unit instance name like `systemd-escape` (non-path mode):
/// `[A-Za-z0-9:_.]` kept (`.` not first), `/` becomes `-`, everything else `\xNN`.
/// `%I` in the template unescapes it back, so `trident internal health-check` receives
/// the check's name verbatim.
pub fn escape_instance(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.') => {
                out.push(b as char)
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// Strip a systemd-boot boot counter (`+LEFT` or `+LEFT-DONE`) from an entry id, so
/// `b+2.conf`, `b+1-1.conf` and `b.conf` compare equal.
pub fn strip_boot_counter(entry: &str) -> String {
    let (stem, ext) = match entry.rfind('.') {
        Some(i) if matches!(&entry[i..], ".conf" | ".efi") => (&entry[..i], &entry[i..]),
        _ => (entry, ""),
    };
    if let Some(plus) = stem.rfind('+') {
        let counter = &stem[plus + 1..];
        let mut parts = counter.splitn(2, '-');
        let left_ok = parts
            .next()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let done_ok = parts.next().map_or(true, |p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
        });
        if left_ok && done_ok {
            return format!("{}{}", &stem[..plus], ext);
        }
    }
    entry.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_matches_systemd_escape() {
        // Expected values produced by `systemd-escape` 252.
        assert_eq!(
            escape_instance("sample-commit-script"),
            "sample\\x2dcommit\\x2dscript"
        );
        assert_eq!(escape_instance("a b/c"), "a\\x20b-c");
        assert_eq!(escape_instance(".hidden"), "\\x2ehidden");
        assert_eq!(escape_instance("ok_1:2.x"), "ok_1:2.x");
        assert_eq!(escape_instance("ü"), "\\xc3\\xbc");
    }

    #[test]
    fn boot_counter_is_ignored() {
        assert_eq!(strip_boot_counter("b+2.conf"), "b.conf");
        assert_eq!(strip_boot_counter("b+1-1.conf"), "b.conf");
        assert_eq!(strip_boot_counter("b.conf"), "b.conf");
        assert_eq!(strip_boot_counter("linux+x.conf"), "linux+x.conf");
        assert_eq!(strip_boot_counter("uki+3.efi"), "uki.efi");
        assert_eq!(strip_boot_counter("plain"), "plain");
    }
}
