//! Boot control: which volume boots next, and what is on the ESP.
//!
//! - [`efivar`]       — EFI variables through efivarfs at a configurable root.
//! - [`uefi`]         — UEFI load options (`Boot####`, `BootOrder`, `BootNext`).
//! - [`esp`]          — the ESP's FAT filesystem in user space (or a mounted ESP).
//! - [`systemd_boot`] — Type #1 entries and `LoaderEntry*` variables; a backend.
//! - [`firmware`]     — one UEFI firmware entry per volume; a backend.
//!
//! The engine talks to a [`BootControl`] chosen with [`backend_for`] from the image's
//! bootloader name. Nothing here knows the Host Configuration: callers pass plain
//! structs ([`EspLayout`], [`VolumeBootInfo`]).

pub mod efivar;
pub mod esp;
pub mod firmware;
pub mod systemd_boot;
pub mod uefi;

use crate::error::TridentError;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

pub use efivar::EfiVars;
pub use esp::{EspAccess, FatLocation};
pub use uefi::HardDrive;

/// One side of an A/B pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Volume {
    A,
    B,
}

impl Volume {
    /// Lower-case letter used in file and entry names.
    pub fn letter(self) -> &'static str {
        match self {
            Volume::A => "a",
            Volume::B => "b",
        }
    }

    pub fn other(self) -> Volume {
        match self {
            Volume::A => Volume::B,
            Volume::B => Volume::A,
        }
    }
}

impl fmt::Display for Volume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Volume::A => "A",
            Volume::B => "B",
        })
    }
}

/// Where the ESP is and, when known, its GPT partition (needed to name it in a UEFI
/// device path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspLayout {
    pub access: EspAccess,
    pub partition: Option<HardDrive>,
}

/// Bytes to install, given inline or as a file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Bytes(Vec<u8>),
    Path(PathBuf),
}

impl Payload {
    pub fn read(&self) -> Result<Vec<u8>> {
        match self {
            Payload::Bytes(b) => Ok(b.clone()),
            Payload::Path(p) => {
                std::fs::read(p).with_context(|| format!("reading {}", p.display()))
            }
        }
    }
}

/// What it takes to boot one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeBootInfo {
    pub volume: Volume,
    /// OS name shown in menus (`Azure Linux`).
    pub title: String,
    /// OS or kernel version shown in menus and used for sorting.
    pub version: String,
    /// The kernel; for the firmware backend an EFI-stub kernel or UKI.
    pub kernel: Payload,
    pub initrd: Option<Payload>,
    /// GPT partition UUID of the volume's root filesystem.
    pub root_partuuid: uuid::Uuid,
    /// More kernel arguments, in order (`rw`, `console=ttyS0`, ...).
    pub extra_args: Vec<String>,
}

/// What the engine asks of a boot loader.
pub trait BootControl {
    /// Backend name (`systemd-boot`, `uefi`).
    fn name(&self) -> &'static str;
    /// Write the boot files and entries of `volumes` (only those; other volumes'
    /// entries stay as they are). While a volume's files change, no entry for it exists.
    fn install_entries(&self, volumes: &[VolumeBootInfo]) -> Result<()>;
    /// Boot `volume` on the next boot only; later boots fall back to the default.
    fn set_trial(&self, volume: Volume) -> Result<()>;
    /// Boot `volume` by default from now on.
    fn set_default(&self, volume: Volume) -> Result<()>;
    /// The volume the boot loader says it booted this time, if it is one of ours.
    fn booted_volume(&self) -> Result<Option<Volume>>;
    /// Cancel a trial boot that has not happened yet.
    fn clear_trial(&self) -> Result<()>;
    /// The volume set for a trial boot that has not happened yet.
    fn pending_trial(&self) -> Result<Option<Volume>>;
}

/// Everything a backend needs, independent of the Host Configuration.
#[derive(Debug, Clone)]
pub struct BootEnv {
    pub efivars: EfiVars,
    pub esp: EspLayout,
    /// Menu timeout for systemd-boot.
    pub timeout_secs: u32,
    /// systemd-boot boot counting: tries for a newly installed entry.
    pub boot_tries: Option<u32>,
}

/// The backend for an image's bootloader: `systemd-boot` or `uefi` (firmware entries).
/// GRUB is refused with `grub-not-supported`.
pub fn backend_for(bootloader: &str, env: BootEnv) -> Result<Box<dyn BootControl>> {
    match bootloader.trim().to_ascii_lowercase().as_str() {
        "systemd-boot" | "systemd_boot" | "systemdboot" => {
            Ok(Box::new(systemd_boot::SystemdBoot::new(
                env.efivars,
                env.esp,
                systemd_boot::SystemdBootSettings {
                    timeout_secs: env.timeout_secs,
                    boot_tries: env.boot_tries,
                },
            )))
        }
        "uefi" | "efi" | "firmware" => Ok(Box::new(firmware::FirmwareEntries::new(
            env.efivars,
            env.esp,
        ))),
        "grub" | "grub2" => Err(TridentError::unsupported(
            "grub-not-supported",
            "GRUB images are not supported; use an image with systemd-boot or UEFI boot entries",
        )
        .into()),
        other => Err(TridentError::invalid_input(
            "unknown-bootloader",
            format!("unknown bootloader {other:?}; expected systemd-boot or uefi"),
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{find_trident_error, Category};

    fn env() -> BootEnv {
        BootEnv {
            efivars: EfiVars::new("/nonexistent"),
            esp: EspLayout {
                access: EspAccess::Mounted("/nonexistent".into()),
                partition: None,
            },
            timeout_secs: 3,
            boot_tries: None,
        }
    }

    #[test]
    fn grub_is_refused_as_unsupported() {
        let err = backend_for("grub", env()).err().unwrap();
        let te = find_trident_error(&err).unwrap();
        assert_eq!(te.category, Category::UnsupportedConfiguration);
        assert_eq!(te.code, "grub-not-supported");
        let err = backend_for("lilo", env()).err().unwrap();
        assert_eq!(find_trident_error(&err).unwrap().code, "unknown-bootloader");
    }

    #[test]
    fn known_backends() {
        assert_eq!(
            backend_for("systemd-boot", env()).unwrap().name(),
            "systemd-boot"
        );
        assert_eq!(backend_for("UEFI", env()).unwrap().name(), "uefi");
    }

    #[test]
    fn volume_names() {
        assert_eq!(Volume::A.letter(), "a");
        assert_eq!(Volume::B.to_string(), "B");
        assert_eq!(Volume::A.other(), Volume::B);
    }
}
