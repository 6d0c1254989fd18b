//! The Host Configuration: the YAML document that declares a host's desired state.
//!
//! Field names, defaults and shorthands follow Microsoft Trident's Host Configuration API,
//! so existing configurations parse unchanged; unknown keys are errors everywhere.
//!
//! - [`parse`] turns YAML into a [`HostConfiguration`]; a parse error carries the YAML path
//!   (`storage.disks[0].partitions[1].size`) and the line/column.
//! - [`validate`] checks the static rules (block-device graph, mount points, ESP, root,
//!   verity, datastore, scripts, users, files, netplan, health checks) and returns *all*
//!   errors at once, or the [`Warning`]s for accepted-but-suspicious input.
//! - [`parse_and_validate`] / [`load_and_validate`] do both and also attach line/column to
//!   validation errors, using a position index of the document.
//!
//! The rules and their codes are listed in `docs/host-configuration.md`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use crate::error::{TridentError, TridentErrors};

mod bytes;
mod image;
mod os;
mod parse;
pub mod plan;
mod scripts;
mod storage;
mod trident;
mod validate;

pub use bytes::{ByteCount, ByteCountError};
pub use image::{is_sha384_hex, url_scheme, ImageSha384, OsImage};
pub use os::{
    AdditionalFile, Extension, KernelCommandLine, LoadMode, ManagementOs, Module, Os, Password,
    Selinux, SelinuxMode, Services, SshMode, UefiFallbackMode, User, CONFEXT_DIRS,
    DEFAULT_CONFEXT_DIR, DEFAULT_SYSEXT_DIR, SYSEXT_DIRS,
};
pub use parse::PositionIndex;
pub use scripts::{
    runs_on, Check, Health, Script, ScriptSource, Scripts, ServicingType, ServicingTypeSelection,
    SystemdCheck,
};
pub use storage::{
    AbUpdate, AbVolumePair, AdoptedPartition, Disk, EncryptedVolume, Encryption, FileSystem,
    FileSystemSource, FileSystemType, MountPoint, OverrideEspMount, Partition, PartitionSize,
    PartitionTableType, PartitionType, Pcr, Raid, RaidLevel, SoftwareRaidArray, Storage, Swap,
    VerityCorruptionOption, VerityDevice, ESP_MOUNT_POINT,
};
pub use trident::{Trident, DEFAULT_DATASTORE_PATH};

/// The desired state of a host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostConfiguration {
    /// The agent on the target OS.
    #[serde(default, skip_serializing_if = "is_default")]
    pub trident: Trident,
    #[serde(default, skip_serializing_if = "is_default")]
    pub storage: Storage,
    #[serde(default, skip_serializing_if = "is_default")]
    pub scripts: Scripts,
    #[serde(default, skip_serializing_if = "is_default")]
    pub os: Os,
    /// The servicing OS (clean install only).
    #[serde(default, skip_serializing_if = "is_default")]
    pub management_os: ManagementOs,
    /// Free-form knobs that override internal behaviour (preview; not validated).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub internal_params: BTreeMap<String, serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<OsImage>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub health: Health,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl HostConfiguration {
    /// Serialize back to YAML (parses to an equal value).
    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        serde_yaml::to_string(self)
    }

    /// Whether an `internalParams` flag is set to `true`.
    pub fn internal_flag(&self, key: &str) -> bool {
        self.internal_params
            .get(key)
            .and_then(serde_yaml::Value::as_bool)
            .unwrap_or(false)
    }
}

/// Accepted-but-suspicious input: logged and reported by `trident validate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Warning {
    /// Stable kebab-case code, e.g. `image-checksum-ignored`.
    pub code: String,
    /// YAML path of the field concerned.
    pub path: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "warning [{}] at {}", self.code, self.path)?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, " (line {l}, column {c})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Parse a Host Configuration. Errors carry the YAML path and line/column.
pub fn parse(yaml: &str) -> Result<HostConfiguration, TridentErrors> {
    parse::parse(yaml)
}

/// Check the static rules; returns every error found, or the warnings.
pub fn validate(hc: &HostConfiguration) -> Result<Vec<Warning>, TridentErrors> {
    validate::validate(hc)
}

/// Parse and validate `yaml`; validation errors and warnings get line/column from the
/// document where their path is found in it.
pub fn parse_and_validate(yaml: &str) -> Result<(HostConfiguration, Vec<Warning>), TridentErrors> {
    let hc = parse(yaml)?;
    let index = PositionIndex::build(yaml);
    match validate(&hc) {
        Ok(mut warnings) => {
            for w in &mut warnings {
                if let Some((l, c)) = index.locate(&w.path) {
                    w.line = Some(l);
                    w.column = Some(c);
                }
            }
            Ok((hc, warnings))
        }
        Err(TridentErrors(errors)) => Err(TridentErrors(
            errors.into_iter().map(|e| index.attach(e)).collect(),
        )),
    }
}

/// Read, parse and validate a Host Configuration file.
pub fn load_and_validate(path: &Path) -> Result<(HostConfiguration, Vec<Warning>), TridentErrors> {
    let yaml = std::fs::read_to_string(path).map_err(|e| {
        TridentErrors(vec![TridentError::invalid_input(
            "unreadable-host-configuration",
            format!("cannot read Host Configuration {}: {e}", path.display()),
        )
        .on_device(path.display().to_string())])
    })?;
    parse_and_validate(&yaml).map_err(|TridentErrors(errors)| {
        TridentErrors(
            errors
                .into_iter()
                .map(|e| {
                    if e.device.is_none() {
                        e.on_device(path.display().to_string())
                    } else {
                        e
                    }
                })
                .collect(),
        )
    })
}
