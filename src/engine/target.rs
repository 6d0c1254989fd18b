//! A volume's filesystem tree mounted under a work directory, its fstab, and the
//! configure step.

use super::layout::{is_pair, Layout};
use super::EngineContext;
use crate::config::{FileSystem, FileSystemSource, HostConfiguration, ServicingType};
use crate::configure::{
    configure_target, run_hooks, ConfigureContext, FstabEntry, HookContext, HookPhase,
};
use crate::error::{find_trident_error, TridentError};
use crate::status::AbVolume;
use crate::storage::mkfs::{probe, Mount};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// How often a busy unmount is retried.
pub const UNMOUNT_RETRIES: u32 = 50;

/// Filesystems the kernel cannot or must not mount for configuration.
fn mountable(fs_type: &str) -> bool {
    matches!(fs_type, "ext4" | "xfs" | "btrfs")
}

/// The filesystem tree of `volume`, mounted at a fixed directory under the work
/// directory (so a crashed run's mounts are found and removed by the next run).
pub struct TargetTree {
    pub root: PathBuf,
    // Unmounted in reverse order on drop.
    mounts: Vec<Mount>,
}

impl TargetTree {
    /// Unmount everything, reporting errors. A mount that is briefly busy (a process
    /// forked elsewhere may hold a descriptor until its `exec`) is retried for up to
    /// [`UNMOUNT_RETRIES`] × 100 ms.
    pub fn unmount(mut self) -> Result<()> {
        while let Some(m) = self.mounts.pop() {
            let mut tries = 0;
            loop {
                match nix::mount::umount(m.path()) {
                    Ok(()) => {
                        // Already unmounted: skip the guard's own unmount.
                        std::mem::forget(m);
                        break;
                    }
                    Err(nix::errno::Errno::EBUSY) if tries < UNMOUNT_RETRIES => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("unmounting {}", m.path().display()))
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for TargetTree {
    fn drop(&mut self) {
        while let Some(m) = self.mounts.pop() {
            drop(m);
        }
    }
}

/// Unmount whatever a crashed run left mounted under `dir` (deepest first).
pub fn clean_stale_mounts(dir: &Path) -> Result<()> {
    let mounts = crate::storage::mounts::read_mountinfo()?;
    let mut stale: Vec<PathBuf> = mounts
        .iter()
        .map(|m| m.mount_point.clone())
        .filter(|p| p.starts_with(dir))
        .collect();
    stale.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in stale {
        tracing::warn!(mount = %p.display(), "unmounting a mount left by an interrupted run");
        nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting stale {}", p.display()))?;
    }
    Ok(())
}

/// Which filesystems belong to the tree of a volume: with `shared`, every mountable
/// filesystem (install); without, only those on A/B pairs (update: shared volumes are
/// in use by the running OS).
fn tree_filesystems(hc: &HostConfiguration, shared: bool) -> Vec<&FileSystem> {
    let mut list: Vec<&FileSystem> = hc
        .storage
        .filesystems
        .iter()
        .filter(|f| f.mount_path().is_some() && f.device_id.is_some() && !f.is_esp())
        .filter(|f| f.source != FileSystemSource::Adopted || shared)
        .filter(|f| shared || is_pair(hc, f.device_id.as_deref().unwrap_or_default()))
        .collect();
    list.sort_by_key(|f| f.mount_path().map(|p| p.components().count()).unwrap_or(0));
    list
}

/// Mount the tree of `volume` at `dir` (root first).
pub fn mount_tree(
    hc: &HostConfiguration,
    layout: &Layout,
    volume: AbVolume,
    dir: &Path,
    shared: bool,
    read_only: bool,
) -> Result<TargetTree> {
    clean_stale_mounts(dir)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tree = TargetTree {
        root: dir.to_path_buf(),
        mounts: Vec::new(),
    };
    let list = tree_filesystems(hc, shared);
    if !list.first().is_some_and(|f| f.is_root()) {
        return Err(TridentError::invalid_input(
            "no-root-filesystem",
            "the Host Configuration has no filesystem mounted at /",
        )
        .at("storage.filesystems")
        .into());
    }
    for fs in list {
        let part =
            layout.volume_partition(hc, fs.device_id.as_deref().unwrap_or_default(), volume)?;
        let Some(info) = probe(&part.path)? else {
            return Err(TridentError::servicing(
                "filesystem-missing",
                format!(
                    "{} on {} has no filesystem",
                    fs.describe(),
                    part.path.display()
                ),
            )
            .into());
        };
        if !mountable(&info.fs_type) {
            continue;
        }
        let mp = fs.mount_path().expect("filtered");
        let at = dir.join(mp.strip_prefix("/").unwrap_or(mp));
        std::fs::create_dir_all(&at).with_context(|| format!("creating {}", at.display()))?;
        let opts = if read_only { "ro" } else { "rw" };
        tree.mounts
            .push(Mount::new(&part.path, &at, &info.fs_type, Some(opts))?);
    }
    Ok(tree)
}

/// `/etc/fstab` entries for volume `volume`: filesystems by UUID, the ESP by PARTUUID.
pub fn fstab(hc: &HostConfiguration, layout: &Layout, volume: AbVolume) -> Result<Vec<FstabEntry>> {
    let mut out = Vec::new();
    for fs in &hc.storage.filesystems {
        let (Some(mp), Some(id)) = (fs.mount_point.as_ref(), fs.device_id.as_deref()) else {
            continue;
        };
        let part = layout.volume_partition(hc, id, volume)?;
        let info = probe(&part.path)?;
        let fs_type = info
            .as_ref()
            .map(|i| i.fs_type.clone())
            .or_else(|| fs.effective_type().map(|t| t.as_str().to_string()))
            .unwrap_or_else(|| "auto".into());
        let spec = match (&info, fs.is_esp()) {
            (Some(i), false) if !i.uuid.is_empty() => format!("UUID={}", i.uuid),
            _ => format!("PARTUUID={}", part.part_uuid),
        };
        out.push(FstabEntry {
            spec,
            mount_point: mp.path.clone(),
            fs_type,
            options: mp.options.clone(),
            dump: 0,
            pass: if fs.is_root() { 1 } else { 2 },
        });
    }
    Ok(out)
}

/// Configure the mounted tree and run the post-provision and post-configure hooks.
pub fn configure(
    hc: &HostConfiguration,
    tree: &TargetTree,
    fstab: Vec<FstabEntry>,
    servicing: ServicingType,
    carry_forward_from: Option<PathBuf>,
    ctx: &EngineContext,
) -> Result<()> {
    let cctx = ConfigureContext {
        target_root: tree.root.clone(),
        servicing_type: servicing,
        fstab: fstab.clone(),
        carry_forward_from,
        config_dir: ctx.config_dir.clone(),
    };
    match configure_target(hc, &cctx) {
        Ok(()) => {}
        Err(e) if find_trident_error(&e).is_some_and(|t| t.code == "not-implemented") => {
            // The configure module is a placeholder in this build: apply the minimum
            // the first boot needs ourselves.
            tracing::warn!("configure module not implemented: writing fstab and hostname only");
            minimal_configure(hc, &tree.root, &fstab)?;
        }
        Err(e) => return Err(e).context("configuring the target"),
    }
    let hctx = HookContext {
        servicing_type: servicing,
        target_root: Some(tree.root.clone()),
        config_dir: ctx.config_dir.clone(),
    };
    for phase in [HookPhase::PostProvision, HookPhase::PostConfigure] {
        run_hook_phase(phase, hc, &hctx)?;
    }
    Ok(())
}

/// Run one hook phase (a placeholder `run_hooks` with no scripts to run is fine).
pub fn run_hook_phase(phase: HookPhase, hc: &HostConfiguration, hctx: &HookContext) -> Result<()> {
    match run_hooks(phase, hc, hctx) {
        Ok(()) => Ok(()),
        Err(e)
            if find_trident_error(&e).is_some_and(|t| t.code == "not-implemented")
                && hc
                    .scripts
                    .hooks()
                    .iter()
                    .all(|(_, s)| s.iter().all(|s| !s.should_run(hctx.servicing_type))) =>
        {
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("running the {phase:?} hooks")),
    }
}

fn minimal_configure(hc: &HostConfiguration, root: &Path, fstab: &[FstabEntry]) -> Result<()> {
    let mut text = String::from("# Written by Trident from the Host Configuration.\n");
    for e in fstab {
        text.push_str(&format!(
            "{} {} {} {} {} {}\n",
            e.spec,
            e.mount_point.display(),
            e.fs_type,
            e.options,
            e.dump,
            e.pass
        ));
    }
    super::markers::write_atomic(&root.join("etc/fstab"), text.as_bytes())?;
    if let Some(h) = &hc.os.hostname {
        super::markers::write_atomic(&root.join("etc/hostname"), format!("{h}\n").as_bytes())?;
    }
    Ok(())
}
