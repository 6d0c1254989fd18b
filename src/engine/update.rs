//! A/B update: stage (write the inactive volume while the OS runs) and finalize (one
//! trial boot into it).

use super::bootcfg;
use super::image;
use super::layout::{self, same_device, Layout};
use super::markers::{self, STAGED_STAMP};
use super::target;
use super::{boot_volume, check_supported, EngineContext};
use crate::config::{HostConfiguration, ServicingType};
use crate::configure::{HookContext, HookPhase};
use crate::datastore::Datastore;
use crate::error::{find_trident_error, TridentError};
use crate::generator::markers::TrialOperation;
use crate::logging::message_id;
use crate::status::{AbVolume, HostStatus, ServicingState, Transition};
use crate::storage::mkfs::grow_ext4;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// What [`stage`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageOutcome {
    /// The new image was written to this volume; `ab-update-staged`.
    Staged(AbVolume),
    /// The Host Configuration equals the applied one.
    NothingToDo,
    /// Only sysexts/confexts/netplan changed: applied live (`provisioned` with the new
    /// spec); nothing to finalize, no reboot.
    RuntimeUpdated(super::runtime::RuntimeChanges),
}

/// What kind of servicing a new Host Configuration needs, compared to the applied one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    None,
    AbUpdate,
    RuntimeUpdate,
    StorageChanged,
}

/// Compare a new Host Configuration with the applied one.
pub fn classify(applied: &HostConfiguration, new: &HostConfiguration) -> UpdateKind {
    if applied == new {
        return UpdateKind::None;
    }
    if applied.storage != new.storage {
        return UpdateKind::StorageChanged;
    }
    if applied.image != new.image {
        return UpdateKind::AbUpdate;
    }
    // Only what can change live?
    let mut a = applied.clone();
    a.os.sysexts = new.os.sysexts.clone();
    a.os.confexts = new.os.confexts.clone();
    a.os.netplan = new.os.netplan.clone();
    if &a == new {
        UpdateKind::RuntimeUpdate
    } else {
        UpdateKind::AbUpdate
    }
}

/// The volume the running root filesystem is on (override, else mountinfo), if it is
/// one of the root pair's volumes.
pub fn booted_volume(
    hc: &HostConfiguration,
    layout: &Layout,
    ctx: &EngineContext,
) -> Result<Option<AbVolume>> {
    let root_dev: Option<PathBuf> = match &ctx.booted_root_override {
        Some(p) => Some(p.clone()),
        None => crate::storage::mounts::find_root_device()?.map(|r| r.path),
    };
    let Some(root_dev) = root_dev else {
        return Ok(None);
    };
    let Some(root_id) = hc
        .storage
        .root_filesystem()
        .and_then(|f| f.device_id.clone())
    else {
        return Ok(None);
    };
    for v in [AbVolume::VolumeA, AbVolume::VolumeB] {
        let p = layout.volume_partition(hc, &root_id, v)?;
        if same_device(&p.path, &root_dev) {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// Stage an A/B update to `hc`: write the new image into the inactive volume of every
/// A/B pair and configure it. The active volume is never written. Re-running after a
/// crash or failure starts over.
pub fn stage(hc: &HostConfiguration, ctx: &EngineContext) -> Result<StageOutcome> {
    check_supported(hc).map_err(anyhow::Error::new)?;
    let mut store = Datastore::open_existing(&ctx.datastore_path)?;
    let hs = store.host_status()?;
    let applied = match hs.servicing_state {
        ServicingState::Provisioned => hs.spec.clone(),
        ServicingState::AbUpdateStaged => {
            hs.previous_spec.clone().unwrap_or_else(|| hs.spec.clone())
        }
        other => {
            return Err(TridentError::servicing(
                "servicing-in-progress",
                format!("cannot stage an update while the host is {other}"),
            )
            .into())
        }
    };
    match classify(&applied, hc) {
        UpdateKind::None if hs.servicing_state == ServicingState::Provisioned => {
            tracing::info!("no update required: the Host Configuration is already applied");
            return Ok(StageOutcome::NothingToDo);
        }
        UpdateKind::StorageChanged => {
            return Err(TridentError::unsupported(
                "storage-layout-changed",
                "the storage section differs from the installed one; an update cannot \
                 change the disk layout (reinstall instead)",
            )
            .at("storage")
            .into())
        }
        UpdateKind::RuntimeUpdate => {
            if hs.servicing_state != ServicingState::Provisioned {
                return Err(TridentError::servicing(
                    "servicing-in-progress",
                    "an A/B update is staged: finalize or replace it before a runtime update",
                )
                .into());
            }
            drop(store);
            return super::runtime::update(hc, ctx).map(StageOutcome::RuntimeUpdated);
        }
        _ => {}
    }
    let stamp = ctx.host_path(STAGED_STAMP);
    markers::remove(&stamp)?;
    let mut touched: Vec<PathBuf> = Vec::new();
    let result = stage_inner(hc, ctx, &hs, &mut store, &mut touched);
    match result {
        Ok(v) => {
            markers::write_atomic(&stamp, b"")?;
            tracing::info!(MESSAGE_ID = message_id::STAGED, volume = %v, "update staged");
            Ok(StageOutcome::Staged(v))
        }
        Err(e) => {
            for dev in &touched {
                image::mark_unusable(dev);
            }
            let err = find_trident_error(&e)
                .unwrap_or_else(|| TridentError::servicing("stage-failed", format!("{e:#}")));
            let mut now = store.host_status()?;
            if now.servicing_state == ServicingState::AbUpdateStaged && !touched.is_empty() {
                // A failed re-stage destroyed the staged volume: cancel it.
                store.transition(Transition::Cancel)?;
                now = store.host_status()?;
            }
            now.set_last_error(err);
            store.record("stage-ab-update-failed", &now)?;
            Err(e)
        }
    }
}

fn stage_inner(
    hc: &HostConfiguration,
    ctx: &EngineContext,
    hs: &HostStatus,
    store: &mut Datastore,
    touched: &mut Vec<PathBuf>,
) -> Result<AbVolume> {
    let active = hs.active_volume.ok_or_else(|| {
        anyhow::Error::new(TridentError::internal(
            "missing-active-volume",
            "the Host Status has no active volume",
        ))
    })?;
    let inactive = active.other();
    // A run killed mid-way may have left the inactive volume mounted under the work
    // directory: never write a mounted volume.
    target::clean_stale_mounts(&ctx.work_dir)?;
    let layout = layout::resolve(&hs.spec)?;
    let booted = booted_volume(hc, &layout, ctx)?;
    if booted != Some(active) {
        return Err(TridentError::servicing(
            "unexpected-boot-volume",
            format!(
                "the running root is {} but the datastore says the active volume is {active}; \
                 refusing to write the other volume",
                booted
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "not an A/B volume".into())
            ),
        )
        .into());
    }
    let (cosi, image_ref) = image::open(hc, ctx).context("opening the OS image")?;
    // Check every image before anything is written.
    let mut jobs = Vec::new();
    for fs in image::image_filesystems(hc) {
        let id = fs.device_id.as_deref().unwrap_or_default();
        if !layout::is_pair(hc, id) {
            continue; // shared volumes (and the ESP) are not rewritten by an update
        }
        let img = image::image_for(&cosi, fs)?;
        let part = layout.volume_partition(hc, id, inactive)?;
        image::check_fits(img, fs, &part.id, part.size)?;
        let active_path = layout.volume_partition(hc, id, active)?.path.clone();
        jobs.push((img, part.clone(), active_path));
    }
    let esp = bootcfg::esp_partition(hc, &layout)?;
    let env = bootcfg::boot_env(ctx, esp)?;
    let boot = bootcfg::installed_backend(env.clone())?;
    target::run_hook_phase(
        HookPhase::PreServicing,
        hc,
        &HookContext {
            servicing_type: ServicingType::AbUpdate,
            target_root: None,
            config_dir: ctx.config_dir.clone(),
        },
    )?;

    // Nothing may boot the inactive volume while it is rewritten.
    if boot.name() == "systemd-boot" {
        bootcfg::remove_entries(&env, boot_volume(inactive))?;
    }
    for (img, part, active_path) in &jobs {
        if same_device(&part.path, active_path) {
            return Err(TridentError::internal(
                "active-volume-target",
                "refusing to write the active volume",
            )
            .into());
        }
        touched.push(part.path.clone());
        image::stream_to(&cosi, img, &part.path, false, ctx)?;
        if img.fs_type == "ext4" {
            grow_ext4(&part.path)?;
        }
    }
    ctx.cancelled()?;
    let dir = ctx.work_dir.join("stage-target");
    let tree = target::mount_tree(hc, &layout, inactive, &dir, false, false)?;
    let root_id = hc
        .storage
        .root_filesystem()
        .and_then(|f| f.device_id.clone())
        .unwrap_or_default();
    let root_part = layout.volume_partition(hc, &root_id, inactive)?;
    let info =
        bootcfg::volume_boot_info(hc, boot_volume(inactive), &tree.root, root_part.part_uuid)?;
    let fstab = target::fstab(hc, &layout, inactive)?;
    target::configure(
        hc,
        &tree,
        fstab,
        ServicingType::AbUpdate,
        Some(ctx.host_root.clone()),
        ctx,
    )?;
    // Stale markers from an earlier life of this volume must not survive.
    markers::clear_trial(&tree.root)?;
    markers::remove(&tree.root.join(crate::generator::markers::PENDING_MARKER))?;
    tree.unmount().context("unmounting the staged volume")?;
    boot.install_entries(&[info])?;
    store.transition(Transition::StageAbUpdate {
        spec: hc.clone(),
        image: image_ref,
    })?;
    Ok(inactive)
}

/// Finalize a staged A/B update (or manual A/B rollback): one trial boot into the
/// target volume, markers per `docs/units.md`, then reboot when allowed.
pub fn finalize(ctx: &EngineContext) -> Result<()> {
    let mut store = Datastore::open_existing(&ctx.datastore_path)?;
    let hs = store.host_status()?;
    let (operation, transition, servicing) = match hs.servicing_state {
        ServicingState::AbUpdateStaged => (
            TrialOperation::AbUpdate,
            Transition::FinalizeAbUpdate,
            ServicingType::AbUpdate,
        ),
        ServicingState::ManualRollbackAbStaged => (
            TrialOperation::ManualRollbackAb,
            Transition::FinalizeManualRollbackAb,
            ServicingType::AbUpdate,
        ),
        other => {
            return Err(TridentError::servicing(
                "nothing-staged",
                format!("nothing to finalize: the host is {other} (stage an update first)"),
            )
            .into())
        }
    };
    let target_volume = hs.target_volume.ok_or_else(|| {
        anyhow::Error::new(TridentError::internal(
            "missing-target-volume",
            "the staged Host Status has no target volume",
        ))
    })?;
    let hc = &hs.spec;
    let layout = layout::resolve(hc)?;
    let update_id = uuid::Uuid::new_v4().to_string();
    let letter = boot_volume(target_volume).letter();
    // Markers into the trial volume, then the pending marker into the running one.
    let dir = ctx.work_dir.join("finalize-target");
    let tree = target::mount_tree(hc, &layout, target_volume, &dir, false, false)?;
    markers::write_trial(&tree.root, hc, servicing, operation, &update_id, letter)?;
    tree.unmount()?;
    markers::write_pending(&ctx.host_root, operation, &update_id, letter)?;
    let boot = bootcfg::backend_for_layout(hc, &layout, ctx)?;
    boot.set_trial(boot_volume(target_volume))?;
    store.transition(transition)?;
    markers::remove(&ctx.host_path(STAGED_STAMP))?;
    tracing::info!(MESSAGE_ID = message_id::FINALIZED, volume = %target_volume, "trial boot set");
    if ctx.allow_reboot {
        reboot()?;
    }
    Ok(())
}

/// Ask systemd to reboot.
pub fn reboot() -> Result<()> {
    tracing::info!("rebooting");
    crate::cmd::Cmd::new("systemctl").arg("reboot").run()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(y: &str) -> HostConfiguration {
        crate::config::parse(y).unwrap()
    }

    #[test]
    fn classifies_changes() {
        let base = "image:\n  url: file:///a.cosi\n  sha384: ignored\nos:\n  hostname: h\n";
        let a = hc(base);
        assert_eq!(classify(&a, &a), UpdateKind::None);
        assert_eq!(
            classify(&a, &hc(&base.replace("a.cosi", "b.cosi"))),
            UpdateKind::AbUpdate
        );
        assert_eq!(
            classify(&a, &hc(&base.replace("hostname: h", "hostname: g"))),
            UpdateKind::AbUpdate
        );
        assert_eq!(
            classify(&a, &hc(&format!("{base}  netplan:\n    version: 2\n"))),
            UpdateKind::RuntimeUpdate
        );
        assert_eq!(
            classify(
                &a,
                &hc(&format!(
                    "{base}storage:\n  disks:\n  - id: d\n    device: /dev/x\n"
                ))
            ),
            UpdateKind::StorageChanged
        );
    }
}
