//! Clean install: partition, write volume A, ESP and boot entry, configure, persist the
//! datastore onto the target, finalize (volume A is the default boot).

use super::bootcfg;
use super::image;
use super::layout::{self, is_pair};
use super::markers;
use super::target;
use super::{boot_volume, check_supported, EngineContext};
use crate::boot::backend_for;
use crate::config::{FileSystemSource, FileSystemType, HostConfiguration, ServicingType};
use crate::configure::{HookContext, HookPhase};
use crate::datastore::Datastore;
use crate::error::TridentError;
use crate::generator::markers::TrialOperation;
use crate::logging::message_id;
use crate::status::{AbVolume, ServicingState, Transition};
use crate::storage::mkfs::{grow_ext4, mkfs, FsType, MkfsOptions};
use anyhow::{Context, Result};

/// Install the OS described by `hc` onto its disks. On success the target boots volume
/// A by default and its datastore says `clean-install-finalized`; the first boot's
/// commit makes it `provisioned`. Nothing is rebooted unless `ctx.allow_reboot`.
pub fn install(hc: &HostConfiguration, ctx: &EngineContext) -> Result<()> {
    check_supported(hc).map_err(anyhow::Error::new)?;
    let mut store = Datastore::open(&ctx.datastore_path)?;
    let hs = store.host_status()?;
    if !matches!(
        hs.servicing_state,
        ServicingState::NotProvisioned | ServicingState::CleanInstallStaged
    ) {
        return Err(TridentError::servicing(
            "already-provisioned",
            format!(
                "the datastore {} says this host is {}; a clean install starts from not-provisioned",
                ctx.datastore_path.display(),
                hs.servicing_state
            ),
        )
        .into());
    }
    let result = install_inner(hc, ctx, &mut store);
    if let Err(e) = &result {
        let mut hs = store.host_status()?;
        hs.set_last_error(
            crate::error::find_trident_error(e)
                .unwrap_or_else(|| TridentError::servicing("install-failed", format!("{e:#}"))),
        );
        store.record("install-failed", &hs)?;
    }
    result
}

fn install_inner(hc: &HostConfiguration, ctx: &EngineContext, store: &mut Datastore) -> Result<()> {
    let volume = AbVolume::VolumeA;
    // 1. Everything that can be checked before a byte is written.
    let (cosi, image_ref) = image::open(hc, ctx).context("opening the OS image")?;
    let loader = image::bootloader_name(&cosi);
    if loader == "grub" {
        // Refused by the boot layer; ask it now, before the disks are touched.
        backend_for(
            loader,
            crate::boot::BootEnv {
                efivars: crate::boot::EfiVars::new(&ctx.efivars_root),
                esp: crate::boot::EspLayout {
                    access: crate::boot::EspAccess::Mounted(ctx.work_dir.clone()),
                    partition: None,
                },
                timeout_secs: 0,
                boot_tries: None,
            },
        )?;
    }
    target::clean_stale_mounts(&ctx.work_dir)?;
    let (mut layout, sizes) = layout::open_and_plan(hc)?;
    for fs in image::image_filesystems(hc) {
        let img = image::image_for(&cosi, fs)?;
        let pid =
            layout::volume_partition_id(hc, fs.device_id.as_deref().unwrap_or_default(), volume);
        let size = *sizes.get(&pid).ok_or_else(|| {
            anyhow::Error::new(TridentError::invalid_input(
                "unknown-device-id",
                format!(
                    "{} refers to '{pid}', which is not a partition",
                    fs.describe()
                ),
            ))
        })?;
        image::check_fits(img, fs, &pid, size)?;
    }
    run_pre_servicing(hc, ctx)?;

    // 2. Disks.
    layout::partition_all(hc, &mut layout)?;
    tracing::info!(partitions = layout.partitions.len(), "disks partitioned");

    // 3. Filesystems: images into volume A (and plain partitions), new ones created.
    for fs in &hc.storage.filesystems {
        let Some(id) = fs.device_id.as_deref() else {
            continue;
        };
        let part = layout.volume_partition(hc, id, volume)?.clone();
        match fs.source {
            FileSystemSource::Image if fs.is_esp() => {
                let img = image::image_for(&cosi, fs)?;
                bootcfg::populate_esp(&cosi, img, &part, ctx).context("populating the ESP")?;
            }
            FileSystemSource::Image => {
                let img = image::image_for(&cosi, fs)?;
                image::stream_to(&cosi, img, &part.path, false, ctx)?;
                if img.fs_type == "ext4" {
                    grow_ext4(&part.path)?;
                }
            }
            FileSystemSource::New => {
                let t = match fs.effective_type() {
                    Some(FileSystemType::Xfs) => FsType::Xfs,
                    Some(FileSystemType::Vfat) if fs.is_esp() => FsType::Fat32,
                    Some(FileSystemType::Vfat) => FsType::Vfat,
                    Some(FileSystemType::Ext4) | None => FsType::Ext4,
                    Some(other) => {
                        return Err(TridentError::unsupported(
                            "filesystem-type-unsupported",
                            format!(
                                "cannot create a {} filesystem ({})",
                                other.as_str(),
                                fs.describe()
                            ),
                        )
                        .into())
                    }
                };
                if is_pair(hc, id) {
                    // Both volumes of a pair get one.
                    let b = layout
                        .volume_partition(hc, id, AbVolume::VolumeB)?
                        .path
                        .clone();
                    mkfs(&b, t, &MkfsOptions::default())?;
                }
                mkfs(&part.path, t, &MkfsOptions::default())?;
            }
            FileSystemSource::Adopted => {}
        }
    }
    ctx.cancelled()?;

    // 4. Mount the target, boot entry, configure.
    let dir = ctx.work_dir.join("install-target");
    let tree = target::mount_tree(hc, &layout, volume, &dir, true, false)?;
    let root_part = layout.volume_partition(
        hc,
        hc.storage
            .root_filesystem()
            .and_then(|f| f.device_id.as_deref())
            .unwrap_or_default(),
        volume,
    )?;
    let info = bootcfg::volume_boot_info(hc, boot_volume(volume), &tree.root, root_part.part_uuid)?;
    let esp = bootcfg::esp_partition(hc, &layout)?;
    let env = bootcfg::boot_env(ctx, esp)?;
    let boot = backend_for(loader, env)?;
    boot.install_entries(&[info])?;
    let fstab = target::fstab(hc, &layout, volume)?;
    target::configure(hc, &tree, fstab, ServicingType::CleanInstall, None, ctx)?;

    // 5. Record, markers, finalize, persist the datastore onto the target.
    store.transition(Transition::StageCleanInstall {
        spec: hc.clone(),
        image: image_ref,
        block_devices: layout.block_devices(),
    })?;
    let update_id = uuid::Uuid::new_v4().to_string();
    markers::write_trial(
        &tree.root,
        hc,
        ServicingType::CleanInstall,
        TrialOperation::CleanInstall,
        &update_id,
        "a",
    )?;
    boot.set_default(boot_volume(volume))?;
    store.transition(Transition::FinalizeCleanInstall)?;
    let ds_rel = hc.trident.datastore_path();
    let ds_target = tree.root.join(ds_rel.strip_prefix("/").unwrap_or(ds_rel));
    store
        .copy_to(&ds_target)
        .context("persisting the datastore onto the target")?;
    tree.unmount().context("unmounting the target")?;
    tracing::info!(
        MESSAGE_ID = message_id::INSTALLED,
        "clean install finished: volume A is the default boot entry"
    );
    if ctx.allow_reboot {
        super::update::reboot()?;
    }
    Ok(())
}

fn run_pre_servicing(hc: &HostConfiguration, ctx: &EngineContext) -> Result<()> {
    target::run_hook_phase(
        HookPhase::PreServicing,
        hc,
        &HookContext {
            servicing_type: ServicingType::CleanInstall,
            target_root: None,
            config_dir: ctx.config_dir.clone(),
        },
    )
}
