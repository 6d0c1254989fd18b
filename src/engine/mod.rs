//! The servicing engine: clean install, A/B update (stage + finalize), commit, rollback.
//!
//! Entry points take a Host Configuration and an [`EngineContext`] and know nothing of
//! the command line: the CLI, the units' `internal` verbs and the D-Bus service all call
//! the same functions. The flows, what is written where and how failures are handled
//! are documented step by step in `docs/engine.md`.
//!
//! - [`layout`]  — the Host Configuration's disks → partition plans, resolved partitions.
//! - [`image`]   — opening the COSI, checking it against the layout, streaming volumes.
//! - [`bootcfg`] — ESP population, boot entries, the boot backend for a layout.
//! - [`markers`] — marker files and the staged stamp (`docs/units.md` contract).
//! - [`install`], [`update`], [`commit`], [`rollback`] — the flows.
//! - [`runtime`] — runtime updates (sysexts/confexts/netplan) and their rollback.
//! - [`target`]  — a volume mounted for configuration, its fstab, the configure step.
//! - [`health`]  — the `internal health-check NAME` verb.

pub mod bootcfg;
pub mod commit;
pub mod health;
pub mod image;
pub mod install;
pub mod layout;
pub mod markers;
pub mod rollback;
pub mod runtime;
pub mod target;
pub mod update;

use crate::boot::{EspAccess, Volume};
use crate::config::HostConfiguration;
use crate::cosi::source::SourceOptions;
use crate::error::TridentError;
use crate::status::AbVolume;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use commit::{commit, health_check_failed, record_rollback, CommitOutcome};
pub use install::install;
pub use rollback::{rollback_ab, RollbackPlan};
pub use runtime::{rollback_runtime, RuntimeChanges, RuntimeRollbackPlan};
pub use update::{finalize, stage, StageOutcome};

/// Progress callback: `(what, done, total)` in bytes.
pub type ProgressFn = Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

/// Everything an engine entry point needs besides the Host Configuration.
#[derive(Clone)]
pub struct EngineContext {
    /// The running host's datastore (for install: the servicing OS's copy, which is
    /// then persisted onto the target's shared volume).
    pub datastore_path: PathBuf,
    /// efivarfs root (`/sys/firmware/efi/efivars`; tests use a directory).
    pub efivars_root: PathBuf,
    /// How to reach the ESP; `None`: through the ESP filesystem's partition (mounted
    /// directory when the running kernel has it mounted, user-space FAT otherwise).
    pub esp: Option<EspAccess>,
    /// Reboot at the end of finalize (the units reboot themselves: keep it off there).
    pub allow_reboot: bool,
    /// The block device the running root filesystem is on; `None`: from mountinfo.
    /// Tests inject which volume is "booted" with it.
    pub booted_root_override: Option<PathBuf>,
    /// Root directory of the running OS: its markers (`etc/trident/boot/`) and the
    /// staged stamp (`var/lib/trident/staged`) live under it. `/` in production.
    pub host_root: PathBuf,
    /// Directory for temporary mount points and files of this servicing.
    pub work_dir: PathBuf,
    /// Directory of the Host Configuration file (relative paths in it).
    pub config_dir: Option<PathBuf>,
    /// Progress reports.
    pub progress: ProgressFn,
    /// Set to stop streaming as soon as possible.
    pub cancel: Arc<AtomicBool>,
    /// Options for http(s):// and oci:// image sources.
    pub source: SourceOptions,
}

impl std::fmt::Debug for EngineContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineContext")
            .field("datastore_path", &self.datastore_path)
            .field("efivars_root", &self.efivars_root)
            .field("esp", &self.esp)
            .field("allow_reboot", &self.allow_reboot)
            .field("booted_root_override", &self.booted_root_override)
            .field("host_root", &self.host_root)
            .field("work_dir", &self.work_dir)
            .finish()
    }
}

impl EngineContext {
    /// Production defaults: the host's efivarfs, `/` as the running root, work files
    /// under `/run/trident`, no progress output, no reboot.
    pub fn new(datastore_path: impl Into<PathBuf>) -> Self {
        EngineContext {
            datastore_path: datastore_path.into(),
            efivars_root: PathBuf::from(crate::boot::efivar::DEFAULT_ROOT),
            esp: None,
            allow_reboot: false,
            booted_root_override: None,
            host_root: PathBuf::from("/"),
            work_dir: PathBuf::from("/run/trident/engine"),
            config_dir: None,
            progress: Arc::new(|_, _, _| {}),
            cancel: Arc::new(AtomicBool::new(false)),
            source: SourceOptions::default(),
        }
    }

    pub(crate) fn cancelled(&self) -> anyhow::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(TridentError::servicing("cancelled", "servicing was cancelled").into());
        }
        Ok(())
    }

    /// A path of the running OS: `path` (absolute or relative) under the host root.
    pub(crate) fn host_path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        self.host_root.join(path.strip_prefix("/").unwrap_or(path))
    }
}

/// Refuse what this engine cannot service, before anything is touched: software RAID,
/// encryption and dm-verity (`unsupported-configuration`, naming the field).
pub fn check_supported(hc: &HostConfiguration) -> Result<(), TridentError> {
    let s = &hc.storage;
    if !s.raid.software.is_empty() {
        return Err(TridentError::unsupported(
            "raid-not-supported",
            "software RAID (storage.raid.software) is not supported by this engine",
        )
        .at("storage.raid.software"));
    }
    if s.encryption.is_some() {
        return Err(TridentError::unsupported(
            "encryption-not-supported",
            "encrypted volumes (storage.encryption) are not supported by this engine",
        )
        .at("storage.encryption"));
    }
    if !s.verity.is_empty() {
        return Err(TridentError::unsupported(
            "verity-not-supported",
            "dm-verity devices (storage.verity) are not supported by this engine",
        )
        .at("storage.verity"));
    }
    if s.disks.is_empty() {
        return Err(TridentError::invalid_input(
            "no-disks",
            "the Host Configuration declares no disks (storage.disks); nothing to install onto",
        )
        .at("storage.disks"));
    }
    Ok(())
}

/// `status::AbVolume` → `boot::Volume`.
pub fn boot_volume(v: AbVolume) -> Volume {
    match v {
        AbVolume::VolumeA => Volume::A,
        AbVolume::VolumeB => Volume::B,
    }
}

/// `boot::Volume` → `status::AbVolume`.
pub fn ab_volume(v: Volume) -> AbVolume {
    match v {
        Volume::A => AbVolume::VolumeA,
        Volume::B => AbVolume::VolumeB,
    }
}

/// Create `dir` (and parents) and return it.
pub(crate) fn ensure_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Category;

    fn hc(yaml: &str) -> HostConfiguration {
        crate::config::parse(yaml).unwrap()
    }

    #[test]
    fn refuses_raid_encryption_verity_naming_the_field() {
        let base = "storage:\n  disks:\n  - id: os\n    device: /dev/null\n    partitions:\n    - id: a\n      size: 1M\n    - id: b\n      size: 1M\n";
        let raid = format!("{base}  raid:\n    software:\n    - id: r\n      name: r\n      level: raid1\n      devices: [a, b]\n");
        let e = check_supported(&hc(&raid)).unwrap_err();
        assert_eq!(e.category, Category::UnsupportedConfiguration);
        assert_eq!(e.code, "raid-not-supported");
        assert!(e.message.contains("storage.raid"));
        let enc = format!("{base}  encryption:\n    volumes:\n    - id: e\n      deviceName: e\n      deviceId: a\n");
        assert_eq!(
            check_supported(&hc(&enc)).unwrap_err().code,
            "encryption-not-supported"
        );
        assert!(check_supported(&hc(base)).is_ok());
        assert_eq!(
            check_supported(&hc("os:\n  hostname: x\n"))
                .unwrap_err()
                .code,
            "no-disks"
        );
    }

    #[test]
    fn volume_conversions_round_trip() {
        for v in [AbVolume::VolumeA, AbVolume::VolumeB] {
            assert_eq!(ab_volume(boot_volume(v)), v);
        }
    }
}
