//! Boot configuration for the engine: the ESP (populated from the image at install),
//! the boot backend for a layout, and what it takes to boot a volume (kernel and initrd
//! read from the volume's own `/boot`).

use super::layout::{Layout, ResolvedPartition};
use super::EngineContext;
use crate::boot::esp::{copy_tree_from_fat, format_fat32, OpenEsp};
use crate::boot::systemd_boot::{ENTRIES_DIR, LOADER_PATH};
use crate::boot::{
    backend_for, BootControl, BootEnv, EfiVars, EspAccess, EspLayout, FatLocation, HardDrive,
    Payload, Volume, VolumeBootInfo,
};
use crate::config::HostConfiguration;
use crate::cosi::reader::{Cosi, CosiImage};
use crate::error::TridentError;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// systemd-boot menu timeout written to `loader.conf`.
pub const MENU_TIMEOUT_SECS: u32 = 3;

/// The ESP partition of the layout.
pub fn esp_partition<'a>(
    hc: &HostConfiguration,
    layout: &'a Layout,
) -> Result<&'a ResolvedPartition> {
    let fs = hc.storage.esp_filesystem().ok_or_else(|| {
        anyhow::Error::new(
            TridentError::invalid_input(
                "no-esp",
                "the Host Configuration has no ESP filesystem (mounted at /boot/efi)",
            )
            .at("storage.filesystems"),
        )
    })?;
    let id = fs.device_id.as_deref().unwrap_or_default();
    layout.partition(id)
}

/// How to reach the ESP: the context's override, else the directory the running
/// kernel has the partition mounted at, else the partition itself as user-space FAT.
pub fn esp_access(ctx: &EngineContext, esp: &ResolvedPartition) -> Result<EspAccess> {
    if let Some(a) = &ctx.esp {
        return Ok(a.clone());
    }
    let dev = crate::storage::device::dev_number(&esp.path)?;
    let mounts = crate::storage::mounts::read_mountinfo()?;
    if let Some(m) = mounts
        .iter()
        .find(|m| m.dev == dev && m.root == Path::new("/"))
    {
        return Ok(EspAccess::Mounted(m.mount_point.clone()));
    }
    Ok(EspAccess::Fat(FatLocation::whole(&esp.path)))
}

/// The boot environment for the layout's ESP.
pub fn boot_env(ctx: &EngineContext, esp: &ResolvedPartition) -> Result<BootEnv> {
    Ok(BootEnv {
        efivars: EfiVars::new(&ctx.efivars_root),
        esp: EspLayout {
            access: esp_access(ctx, esp)?,
            partition: Some(HardDrive {
                partition_number: esp.number,
                start_lba: esp.offset / 512,
                size_lba: esp.size / 512,
                partition_uuid: esp.part_uuid,
            }),
        },
        timeout_secs: MENU_TIMEOUT_SECS,
        boot_tries: None,
    })
}

/// The backend already in use on an installed ESP: systemd-boot when the ESP holds it,
/// UEFI firmware entries otherwise.
pub fn installed_backend(env: BootEnv) -> Result<Box<dyn BootControl>> {
    let open = OpenEsp::open(&env.esp.access).context("opening the ESP")?;
    let sd = open.fs().exists(LOADER_PATH)?;
    open.close()?;
    backend_for(if sd { "systemd-boot" } else { "uefi" }, env)
}

/// Backend for a layout already installed.
pub fn backend_for_layout(
    hc: &HostConfiguration,
    layout: &Layout,
    ctx: &EngineContext,
) -> Result<Box<dyn BootControl>> {
    installed_backend(boot_env(ctx, esp_partition(hc, layout)?)?)
}

/// Install: format the ESP partition as FAT32 and copy the image's ESP into it (the
/// image's ESP is streamed into a temporary file first, hash-checked). The image's own
/// loader entries are removed: Trident writes one entry per volume.
pub fn populate_esp(
    cosi: &Cosi,
    img: &CosiImage,
    esp: &ResolvedPartition,
    ctx: &EngineContext,
) -> Result<()> {
    let dir = super::ensure_dir(&ctx.work_dir)?;
    let tmp = tempfile::Builder::new()
        .prefix("esp-image")
        .tempfile_in(&dir)
        .context("creating a temporary file for the image's ESP")?;
    super::image::stream_to(cosi, img, tmp.path(), true, ctx)?;
    let dst = FatLocation::whole(&esp.path);
    format_fat32(&dst, "ESP")
        .with_context(|| format!("formatting the ESP {}", esp.path.display()))?;
    copy_tree_from_fat(&FatLocation::whole(tmp.path()), &dst)
        .context("copying the image's ESP files")?;
    let open = OpenEsp::open(&EspAccess::Fat(dst))?;
    let fs = open.fs();
    if fs.exists(ENTRIES_DIR)? {
        for e in fs.list(ENTRIES_DIR)? {
            if !e.is_dir && !e.name.starts_with("trident-") {
                tracing::info!(entry = %e.name, "removing the image's own loader entry");
                fs.remove(&format!("{ENTRIES_DIR}/{}", e.name))?;
            }
        }
    }
    open.close()
}

/// Remove `volume`'s systemd-boot entries (nothing may boot a volume being rewritten).
pub fn remove_entries(env: &BootEnv, volume: Volume) -> Result<()> {
    let open = OpenEsp::open(&env.esp.access).context("opening the ESP")?;
    let fs = open.fs();
    if fs.exists(ENTRIES_DIR)? {
        let stem = format!("trident-{}", volume.letter());
        for e in fs.list(ENTRIES_DIR)? {
            let rest = e.name.strip_prefix(&stem);
            if !e.is_dir && rest.is_some_and(|r| r.starts_with('.') || r.starts_with('+')) {
                tracing::info!(entry = %e.name, "removing the boot entry of the volume being rewritten");
                fs.remove(&format!("{ENTRIES_DIR}/{}", e.name))?;
            }
        }
    }
    open.close()
}

/// What it takes to boot `volume` whose root filesystem is mounted at `root`: the
/// newest kernel in `/boot` and its initrd, the OS name for the menu, the root's
/// PARTUUID and the Host Configuration's extra command line.
pub fn volume_boot_info(
    hc: &HostConfiguration,
    volume: Volume,
    root: &Path,
    root_partuuid: uuid::Uuid,
) -> Result<VolumeBootInfo> {
    let boot = root.join("boot");
    let mut kernels: Vec<(String, PathBuf)> = std::fs::read_dir(&boot)
        .with_context(|| format!("listing {}", boot.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let v = name.strip_prefix("vmlinuz-")?.to_string();
            Some((v, e.path()))
        })
        .collect();
    kernels.sort();
    let (version, kernel) = kernels.pop().ok_or_else(|| {
        anyhow::Error::new(TridentError::invalid_input(
            "kernel-not-found",
            format!("the image's root filesystem has no /boot/vmlinuz-* (volume {volume})"),
        ))
    })?;
    let initrd = [
        format!("initrd.img-{version}"),
        format!("initramfs-{version}.img"),
        format!("initrd-{version}"),
    ]
    .into_iter()
    .map(|n| boot.join(n))
    .find(|p| p.is_file());
    let title = os_name(root).unwrap_or_else(|| "Linux".to_string());
    let mut extra_args = vec!["rw".to_string()];
    extra_args.extend(hc.os.kernel_command_line.extra_command_line.iter().cloned());
    Ok(VolumeBootInfo {
        volume,
        title,
        version,
        kernel: Payload::Bytes(
            std::fs::read(&kernel).with_context(|| format!("reading {}", kernel.display()))?,
        ),
        initrd: initrd
            .map(|p| {
                std::fs::read(&p)
                    .map(Payload::Bytes)
                    .with_context(|| format!("reading {}", p.display()))
            })
            .transpose()?,
        root_partuuid,
        extra_args,
    })
}

/// PRETTY_NAME (or NAME) from the root's os-release.
fn os_name(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join("usr/lib/os-release"))
        .or_else(|_| std::fs::read_to_string(root.join("etc/os-release")))
        .ok()?;
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    get("PRETTY_NAME").or_else(|| get("NAME"))
}
