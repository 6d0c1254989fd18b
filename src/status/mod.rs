//! Host Status: what the host actually is, and the servicing state machine that moves it.
//!
//! A [`HostStatus`] is the applied spec (Host Configuration), the previous spec while an
//! update is in flight, the [`ServicingState`], the active A/B volume, the resolved
//! device path of every block-device id and the last error. It is stored by the
//! [`crate::datastore`] after every change.
//!
//! The state only changes through the transition methods in [`machine`] (one method per
//! transition, each refusing an illegal source state); the legal graph is documented in
//! `docs/states.md` and encoded once in [`TransitionKind::legal_sources`].

// `TridentError` is returned by value on purpose (it is what callers record and
// report); its size is irrelevant next to the I/O around every call.
#![allow(clippy::result_large_err)]

use crate::config::HostConfiguration;
use crate::error::TridentError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

pub mod machine;

pub use machine::{Transition, TransitionKind};

/// The servicing state of a host. Stable kebab-case strings (CLI, D-Bus, datastore).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServicingState {
    /// No OS installed by Trident (installer environment, or a fresh datastore).
    NotProvisioned,
    /// Clean install wrote the disks; the target is not yet made bootable.
    CleanInstallStaged,
    /// Clean install armed the boot entry; waiting for the first boot of the target.
    CleanInstallFinalized,
    /// A new image was written into the inactive volume; the host still runs the old.
    AbUpdateStaged,
    /// The one-shot trial boot into the new volume is armed (or in progress).
    AbUpdateFinalized,
    /// The trial boot ran, but a health check failed; a rollback to the old volume is due.
    AbUpdateHealthCheckFailed,
    /// A configuration-only change is being applied live.
    RuntimeUpdateStaged,
    /// A manual rollback to the inactive volume's OS is prepared.
    ManualRollbackAbStaged,
    /// The one-shot trial boot into the inactive volume's OS is armed (or in progress).
    ManualRollbackAbFinalized,
    /// The previous runtime configuration is being re-applied live.
    ManualRollbackRuntimeStaged,
    /// The host runs its committed spec; nothing is in flight.
    Provisioned,
}

impl ServicingState {
    /// Every state, in documentation order.
    pub const ALL: [ServicingState; 11] = [
        ServicingState::NotProvisioned,
        ServicingState::CleanInstallStaged,
        ServicingState::CleanInstallFinalized,
        ServicingState::AbUpdateStaged,
        ServicingState::AbUpdateFinalized,
        ServicingState::AbUpdateHealthCheckFailed,
        ServicingState::RuntimeUpdateStaged,
        ServicingState::ManualRollbackAbStaged,
        ServicingState::ManualRollbackAbFinalized,
        ServicingState::ManualRollbackRuntimeStaged,
        ServicingState::Provisioned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServicingState::NotProvisioned => "not-provisioned",
            ServicingState::CleanInstallStaged => "clean-install-staged",
            ServicingState::CleanInstallFinalized => "clean-install-finalized",
            ServicingState::AbUpdateStaged => "ab-update-staged",
            ServicingState::AbUpdateFinalized => "ab-update-finalized",
            ServicingState::AbUpdateHealthCheckFailed => "ab-update-health-check-failed",
            ServicingState::RuntimeUpdateStaged => "runtime-update-staged",
            ServicingState::ManualRollbackAbStaged => "manual-rollback-ab-staged",
            ServicingState::ManualRollbackAbFinalized => "manual-rollback-ab-finalized",
            ServicingState::ManualRollbackRuntimeStaged => "manual-rollback-runtime-staged",
            ServicingState::Provisioned => "provisioned",
        }
    }

    /// Parse the stable string form (as stored in the datastore's history columns).
    pub fn parse(s: &str) -> Option<ServicingState> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True while a trial boot into another volume is armed or running: the boot-time
    /// generator then decides between "trial boot" and "fallback boot".
    pub fn is_trial(self) -> bool {
        matches!(
            self,
            ServicingState::AbUpdateFinalized
                | ServicingState::ManualRollbackAbFinalized
                | ServicingState::AbUpdateHealthCheckFailed
        )
    }
}

impl fmt::Display for ServicingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One side of every A/B volume pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AbVolume {
    VolumeA,
    VolumeB,
}

impl AbVolume {
    /// The other side of the pair.
    pub fn other(self) -> AbVolume {
        match self {
            AbVolume::VolumeA => AbVolume::VolumeB,
            AbVolume::VolumeB => AbVolume::VolumeA,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AbVolume::VolumeA => "volume-a",
            AbVolume::VolumeB => "volume-b",
        }
    }
}

impl fmt::Display for AbVolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of a deployed COSI image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRef {
    /// Where it was read from (`file://`, `https://`, `oci://`).
    pub url: String,
    /// SHA-384 (hex) of the image's raw `metadata.json`: what identifies the image.
    pub sha384: String,
}

/// What the host actually is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    /// The spec the host runs, or is being moved to while a servicing is in flight.
    #[serde(default)]
    pub spec: HostConfiguration,
    /// The spec the host ran before the in-flight servicing (restored by cancel,
    /// revert and fallback); `None` when nothing is in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<HostConfiguration>,
    pub servicing_state: ServicingState,
    /// The A/B volume the committed OS lives on (`None` before the first commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_volume: Option<AbVolume>,
    /// The volume being written by a stage, or trial-booted after a finalize: volume A
    /// during a clean install, the inactive volume during A/B updates and A/B rollbacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_volume: Option<AbVolume>,
    /// Boot-trial marker: a one-shot boot into `target_volume` was armed by finalize and
    /// neither committed nor recorded as fallen back yet.
    #[serde(default)]
    pub trial_boot_pending: bool,
    /// Resolved device path of every block-device id of the spec.
    #[serde(default)]
    pub block_devices: BTreeMap<String, PathBuf>,
    /// The image the committed OS was deployed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
    /// The image written into `target_volume` by the in-flight servicing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_image: Option<ImageRef>,
    /// The last servicing failure; cleared by the next successful commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<TridentError>,
    /// Version of the Trident agent that wrote this status.
    #[serde(default)]
    pub agent_version: String,
}

impl Default for HostStatus {
    fn default() -> Self {
        HostStatus {
            spec: HostConfiguration::default(),
            previous_spec: None,
            servicing_state: ServicingState::NotProvisioned,
            active_volume: None,
            target_volume: None,
            trial_boot_pending: false,
            block_devices: BTreeMap::new(),
            image: None,
            staged_image: None,
            last_error: None,
            agent_version: crate::VERSION.to_string(),
        }
    }
}

impl HostStatus {
    /// Record a failure that does not change the servicing state (e.g. staging failed
    /// before anything was written). Also stamps the agent version.
    pub fn set_last_error(&mut self, error: TridentError) {
        self.last_error = Some(error);
        self.agent_version = crate::VERSION.to_string();
    }

    /// The A/B volume not running the committed OS.
    pub fn inactive_volume(&self) -> Option<AbVolume> {
        self.active_volume.map(AbVolume::other)
    }

    /// Serialize for the datastore, `trident get` and D-Bus (`GetHostStatus`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("Host Status always serializes")
    }

    /// Render as YAML for `trident get`.
    pub fn to_yaml(&self) -> anyhow::Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_have_the_design_names() {
        let names: Vec<String> = ServicingState::ALL
            .iter()
            .map(|s| {
                serde_json::to_value(s)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            names,
            [
                "not-provisioned",
                "clean-install-staged",
                "clean-install-finalized",
                "ab-update-staged",
                "ab-update-finalized",
                "ab-update-health-check-failed",
                "runtime-update-staged",
                "manual-rollback-ab-staged",
                "manual-rollback-ab-finalized",
                "manual-rollback-runtime-staged",
                "provisioned",
            ]
        );
        for s in ServicingState::ALL {
            assert_eq!(s.to_string(), serde_json::to_value(s).unwrap());
            assert_eq!(ServicingState::parse(s.as_str()), Some(s));
        }
        assert_eq!(ServicingState::parse("installed"), None);
    }

    #[test]
    fn volumes_serialize_kebab_and_flip() {
        assert_eq!(
            serde_json::to_string(&AbVolume::VolumeA).unwrap(),
            "\"volume-a\""
        );
        assert_eq!(
            serde_yaml::from_str::<AbVolume>("volume-b").unwrap(),
            AbVolume::VolumeB
        );
        assert_eq!(AbVolume::VolumeA.other(), AbVolume::VolumeB);
        assert_eq!(AbVolume::VolumeB.other().other(), AbVolume::VolumeB);
    }

    #[test]
    fn host_status_round_trips_camel_case() {
        let mut hs = HostStatus {
            servicing_state: ServicingState::AbUpdateStaged,
            active_volume: Some(AbVolume::VolumeA),
            target_volume: Some(AbVolume::VolumeB),
            previous_spec: Some(HostConfiguration::default()),
            staged_image: Some(ImageRef {
                url: "file:///img.cosi".into(),
                sha384: "ab".repeat(48),
            }),
            ..HostStatus::default()
        };
        hs.block_devices
            .insert("root-a".into(), PathBuf::from("/dev/sda2"));
        hs.set_last_error(TridentError::servicing("hash-mismatch", "bad image"));
        let json = hs.to_json();
        for key in [
            "\"servicingState\":\"ab-update-staged\"",
            "\"activeVolume\":\"volume-a\"",
            "\"targetVolume\":\"volume-b\"",
            "\"previousSpec\"",
            "\"blockDevices\":{\"root-a\":\"/dev/sda2\"}",
            "\"lastError\"",
            "\"agentVersion\"",
            "\"stagedImage\"",
            "\"trialBootPending\":false",
        ] {
            assert!(json.contains(key), "{key} missing in {json}");
        }
        let back: HostStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, hs);
        let yaml = hs.to_yaml().unwrap();
        assert_eq!(serde_yaml::from_str::<HostStatus>(&yaml).unwrap(), hs);
    }

    #[test]
    fn default_is_not_provisioned_with_this_version() {
        let hs = HostStatus::default();
        assert_eq!(hs.servicing_state, ServicingState::NotProvisioned);
        assert_eq!(hs.agent_version, crate::VERSION);
        assert_eq!(hs.inactive_volume(), None);
        let parsed: HostStatus =
            serde_json::from_str(r#"{"servicingState":"not-provisioned"}"#).unwrap();
        assert_eq!(parsed.servicing_state, ServicingState::NotProvisioned);
    }
}
