//! UEFI firmware entries as the boot loader: one `Boot####` per volume.
//!
//! Each volume's kernel (an EFI-stub kernel or a UKI) is written to
//! `EFI/trident/<v>/linux.efi` on the ESP, its initrd next to it, and a load option
//! `Trident <V>` points at the kernel with the command line as UTF-16 optional data
//! (what `efibootmgr --unicode` writes; the EFI stub reads it, including
//! `initrd=\EFI\trident\<v>\initrd`). The trial boot is `BootNext`, the default is the
//! head of `BootOrder`, and `BootCurrent` tells which entry the firmware booted. A
//! volume's entry is found by its file path on the ESP partition, so renumbering by the
//! firmware or another tool does not confuse it.

use super::efivar::EfiVars;
use super::esp::OpenEsp;
use super::systemd_boot::kernel_cmdline;
use super::uefi::{LoadOption, UefiBootVars};
use super::{BootControl, EspLayout, Volume, VolumeBootInfo};
use crate::error::TridentError;
use anyhow::{Context, Result};

/// Kernel path of a volume on the ESP, firmware style.
pub fn kernel_efi_path(volume: Volume) -> String {
    format!(r"\EFI\trident\{}\linux.efi", volume.letter())
}

/// Initrd path of a volume on the ESP, firmware style.
pub fn initrd_efi_path(volume: Volume) -> String {
    format!(r"\EFI\trident\{}\initrd", volume.letter())
}

fn esp_path(efi_path: &str) -> String {
    efi_path.trim_start_matches('\\').replace('\\', "/")
}

/// The firmware-entries [`BootControl`] backend.
#[derive(Debug, Clone)]
pub struct FirmwareEntries {
    boot: UefiBootVars,
    esp: EspLayout,
}

impl FirmwareEntries {
    pub fn new(vars: EfiVars, esp: EspLayout) -> Self {
        Self {
            boot: UefiBootVars::new(vars),
            esp,
        }
    }

    fn partition(&self) -> Result<super::HardDrive> {
        self.esp.partition.ok_or_else(|| {
            TridentError::invalid_input(
                "esp-partition-unknown",
                "UEFI boot entries need the ESP's GPT partition (number, start, size, UUID)",
            )
            .into()
        })
    }

    /// Entry numbers of `volume` (normally at most one).
    fn entries_of(&self, volume: Volume) -> Result<Vec<u16>> {
        let hd = self.partition()?;
        let file = kernel_efi_path(volume);
        Ok(self
            .boot
            .entries()?
            .into_iter()
            .filter(|(_, o)| o.device_path.points_at(&hd.partition_uuid, &file))
            .map(|(n, _)| n)
            .collect())
    }

    fn entry_of(&self, volume: Volume) -> Result<u16> {
        self.entries_of(volume)?.first().copied().ok_or_else(|| {
            TridentError::servicing(
                "boot-entry-missing",
                format!("no UEFI boot entry points at {}", kernel_efi_path(volume)),
            )
            .into()
        })
    }

    fn volume_of(&self, num: u16) -> Result<Option<Volume>> {
        for v in [Volume::A, Volume::B] {
            if self.entries_of(v)?.contains(&num) {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Delete a volume's entries, and their mentions in `BootOrder` and `BootNext`.
    fn remove_entries(&self, volume: Volume) -> Result<()> {
        let nums = self.entries_of(volume)?;
        if nums.is_empty() {
            return Ok(());
        }
        let order = self.boot.boot_order()?;
        let kept: Vec<u16> = order
            .iter()
            .copied()
            .filter(|n| !nums.contains(n))
            .collect();
        if kept != order {
            self.boot.set_boot_order(&kept)?;
        }
        if let Some(next) = self.boot.boot_next()? {
            if nums.contains(&next) {
                self.boot.clear_boot_next()?;
            }
        }
        for n in nums {
            tracing::info!(entry = %super::uefi::boot_var_name(n), %volume, "removing UEFI boot entry");
            self.boot.delete_entry(n)?;
        }
        Ok(())
    }
}

impl BootControl for FirmwareEntries {
    fn name(&self) -> &'static str {
        "uefi"
    }

    fn install_entries(&self, volumes: &[VolumeBootInfo]) -> Result<()> {
        let hd = self.partition()?;
        for info in volumes {
            let v = info.volume;
            (|| -> Result<()> {
                self.remove_entries(v)?;
                let open = OpenEsp::open(&self.esp.access).context("opening the ESP")?;
                let esp = open.fs();
                let kernel = info.kernel.read().context("reading the kernel")?;
                esp.write_file(&esp_path(&kernel_efi_path(v)), &kernel)?;
                let mut args = kernel_cmdline(&info.root_partuuid, &info.extra_args);
                match &info.initrd {
                    Some(p) => {
                        let data = p.read().context("reading the initrd")?;
                        esp.write_file(&esp_path(&initrd_efi_path(v)), &data)?;
                        args = format!("{args} initrd={}", initrd_efi_path(v));
                    }
                    None => esp.remove(&esp_path(&initrd_efi_path(v)))?,
                }
                open.close().context("closing the ESP")?;
                let opt = LoadOption::new(
                    &format!("{} {} (Trident {v})", info.title, info.version),
                    hd,
                    &kernel_efi_path(v),
                )
                .with_unicode_args(&args);
                self.boot.ensure_entry(&opt)?;
                Ok(())
            })()
            .with_context(|| format!("installing the UEFI boot entry of volume {v}"))?;
        }
        Ok(())
    }

    fn set_trial(&self, volume: Volume) -> Result<()> {
        let num = self.entry_of(volume)?;
        tracing::info!(entry = %super::uefi::boot_var_name(num), %volume, "setting BootNext");
        self.boot.set_boot_next(num).context("setting BootNext")
    }

    fn set_default(&self, volume: Volume) -> Result<()> {
        let num = self.entry_of(volume)?;
        let order = self.boot.boot_order()?;
        let new = super::uefi::order_with_first(&order, num);
        tracing::info!(entry = %super::uefi::boot_var_name(num), %volume, "putting entry first in BootOrder");
        if new != order {
            self.boot
                .set_boot_order(&new)
                .context("setting BootOrder")?;
        }
        Ok(())
    }

    fn booted_volume(&self) -> Result<Option<Volume>> {
        match self.boot.boot_current()? {
            None => Ok(None),
            Some(n) => self.volume_of(n),
        }
    }

    fn clear_trial(&self) -> Result<()> {
        if let Some(next) = self.boot.boot_next()? {
            if self.volume_of(next)?.is_some() {
                return self.boot.clear_boot_next().context("deleting BootNext");
            }
            tracing::warn!(entry = %super::uefi::boot_var_name(next), "BootNext names an entry that is not Trident's; leaving it");
        }
        Ok(())
    }

    fn pending_trial(&self) -> Result<Option<Volume>> {
        match self.boot.boot_next()? {
            None => Ok(None),
            Some(n) => self.volume_of(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(kernel_efi_path(Volume::B), r"\EFI\trident\b\linux.efi");
        assert_eq!(
            esp_path(&initrd_efi_path(Volume::A)),
            "EFI/trident/a/initrd"
        );
    }
}
