//! The Host Configuration's storage section turned into what the storage layer takes
//! (one [`DiskPlan`] per disk), and partitions resolved to device nodes.
//!
//! A disk whose `device:` is a regular file is attached as a loop device for the
//! duration of the operation (RAII, autoclear): the demo and the tests install onto
//! disk image files this way. Partitions are found again on later operations by their
//! GPT name (the partition's `label`, or its id when it has none, as written at
//! install), so nothing depends on device numbers staying the same between boots.

use crate::config::{Disk, HostConfiguration};
use crate::error::TridentError;
use crate::status::AbVolume;
use crate::storage::gpt::{
    plan_layout, read_gpt_table, AdoptKey, AdoptMatch, DiskPlan, ExistingPartition, PartSize,
    PartitionPlan,
};
use crate::storage::loopdev::{LoopDevice, Options};
use crate::storage::{blkpg, device, parttypes};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// A partition of the layout with its device node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPartition {
    pub id: String,
    pub path: PathBuf,
    pub disk: PathBuf,
    pub number: u32,
    /// Byte offset and size on the disk.
    pub offset: u64,
    pub size: u64,
    pub first_lba: u64,
    pub sector_size: u64,
    pub part_uuid: Uuid,
}

/// Disks opened for an operation (loop devices stay attached while this lives) and
/// their partitions by Host Configuration id.
#[derive(Debug, Default)]
pub struct Layout {
    pub partitions: BTreeMap<String, ResolvedPartition>,
    /// Disk id → device node.
    pub disks: BTreeMap<String, PathBuf>,
    // Dropped last: detaches the loop devices.
    loops: Vec<LoopDevice>,
}

impl Layout {
    /// The partition with Host Configuration id `id`.
    pub fn partition(&self, id: &str) -> Result<&ResolvedPartition> {
        self.partitions.get(id).ok_or_else(|| {
            TridentError::invalid_input(
                "unknown-device-id",
                format!("no partition with id '{id}' in the layout"),
            )
            .into()
        })
    }

    /// The partition holding `device_id` on `volume`: the pair's volume for an A/B
    /// pair, the partition itself otherwise.
    pub fn volume_partition(
        &self,
        hc: &HostConfiguration,
        device_id: &str,
        volume: AbVolume,
    ) -> Result<&ResolvedPartition> {
        self.partition(&volume_partition_id(hc, device_id, volume))
    }

    /// `id → device path` for the Host Status.
    pub fn block_devices(&self) -> BTreeMap<String, PathBuf> {
        let mut m: BTreeMap<String, PathBuf> = self
            .partitions
            .iter()
            .map(|(k, v)| (k.clone(), v.path.clone()))
            .collect();
        m.extend(self.disks.iter().map(|(k, v)| (k.clone(), v.clone())));
        m
    }
}

/// For an A/B pair id, the partition id of `volume`; any other id is returned as is.
pub fn volume_partition_id(hc: &HostConfiguration, device_id: &str, volume: AbVolume) -> String {
    match hc.storage.ab_volume_pair(device_id) {
        Some(p) => match volume {
            AbVolume::VolumeA => p.volume_a_id.clone(),
            AbVolume::VolumeB => p.volume_b_id.clone(),
        },
        None => device_id.to_string(),
    }
}

/// Whether `device_id` names an A/B volume pair.
pub fn is_pair(hc: &HostConfiguration, device_id: &str) -> bool {
    hc.storage.ab_volume_pair(device_id).is_some()
}

/// The disk as a block device: a block device is used as is, a regular file is attached
/// as a loop device (kept in `loops`).
fn open_disk(disk: &Disk, loops: &mut Vec<LoopDevice>) -> Result<PathBuf> {
    let path = &disk.device;
    let meta = std::fs::metadata(path).map_err(|e| {
        anyhow::Error::new(
            TridentError::environment(
                "disk-not-found",
                format!("disk '{}' ({}): {e}", disk.id, path.display()),
            )
            .on_device(path.display().to_string()),
        )
    })?;
    if meta.file_type().is_file() {
        let lo = LoopDevice::attach(path, Options::default())
            .with_context(|| format!("attaching disk image {} as a loop device", path.display()))?;
        tracing::info!(disk = %disk.id, file = %path.display(), loop_device = %lo.path().display(), "disk image attached");
        let p = lo.path().to_path_buf();
        loops.push(lo);
        return Ok(p);
    }
    if !device::is_block_device(path)? {
        return Err(TridentError::invalid_input(
            "disk-not-block-device",
            format!(
                "disk '{}': {} is neither a block device nor a disk image file",
                disk.id,
                path.display()
            ),
        )
        .on_device(path.display().to_string())
        .into());
    }
    Ok(path.clone())
}

/// The GPT type GUID of a Host Configuration partition type.
fn type_guid(t: &crate::config::PartitionType) -> Result<Uuid> {
    if let Some(g) = t.custom_guid() {
        return Ok(g);
    }
    let name = t.as_name().unwrap_or("linux-generic");
    Ok(parttypes::PartitionType::parse(name)?.guid())
}

/// The storage layer's plan for one disk of the Host Configuration.
pub fn disk_plan(disk: &Disk) -> Result<DiskPlan> {
    let mut partitions = Vec::new();
    for p in &disk.partitions {
        partitions.push(PartitionPlan {
            id: p.id.clone(),
            type_guid: type_guid(&p.partition_type)?,
            size: match p.size.fixed_bytes() {
                Some(b) => PartSize::Fixed(b),
                None => PartSize::Grow,
            },
            label: Some(p.gpt_label().to_string()),
            uuid: p.uuid,
        });
    }
    let mut adopted = Vec::new();
    for a in &disk.adopted_partitions {
        let by = match (&a.match_label, a.match_uuid) {
            (_, Some(u)) => AdoptKey::Uuid(u),
            (Some(l), None) => AdoptKey::Label(l.clone()),
            (None, None) => {
                return Err(TridentError::invalid_input(
                    "adopted-partition-unmatched",
                    format!(
                        "adopted partition '{}' has neither matchLabel nor matchUuid",
                        a.id
                    ),
                )
                .into())
            }
        };
        adopted.push(AdoptMatch {
            id: a.id.clone(),
            by,
        });
    }
    Ok(DiskPlan {
        partitions,
        adopted,
    })
}

/// Attach the disks and compute, without writing anything, the size every partition
/// will have. Used by install to check images against partitions before writing.
pub fn open_and_plan(hc: &HostConfiguration) -> Result<(Layout, BTreeMap<String, u64>)> {
    let mut layout = Layout::default();
    let mut sizes = BTreeMap::new();
    for disk in &hc.storage.disks {
        let dev = open_disk(disk, &mut layout.loops)?;
        let size = device::device_size(&dev)?;
        let lba = device::logical_sector_size(&dev)?;
        let existing = match read_gpt_table(&dev) {
            Ok(t) => Some(t.partitions),
            Err(_) => None,
        };
        let placed = plan_layout(size, lba, &disk_plan(disk)?, existing.as_deref())
            .map_err(|e| anyhow::Error::new(e.on_device(disk.device.display().to_string())))
            .with_context(|| format!("planning the partitions of disk '{}'", disk.id))?;
        for p in placed {
            sizes.insert(p.id.clone(), p.size());
        }
        layout.disks.insert(disk.id.clone(), dev);
    }
    Ok((layout, sizes))
}

/// Write the partition tables of every disk (the layout from [`open_and_plan`]).
pub fn partition_all(hc: &HostConfiguration, layout: &mut Layout) -> Result<()> {
    for disk in &hc.storage.disks {
        let dev = layout.disks[&disk.id].clone();
        let applied = crate::storage::partition::partition_disk(&dev, &disk_plan(disk)?)
            .with_context(|| format!("partitioning disk '{}' ({})", disk.id, dev.display()))?;
        for a in applied {
            let p = &a.placed;
            layout.partitions.insert(
                p.id.clone(),
                ResolvedPartition {
                    id: p.id.clone(),
                    path: a.path.clone(),
                    disk: dev.clone(),
                    number: p.number,
                    offset: p.offset(),
                    size: p.size(),
                    first_lba: p.first_lba,
                    sector_size: p.sector_size,
                    part_uuid: p.uuid,
                },
            );
        }
    }
    Ok(())
}

/// Open the disks of an installed host and find every partition of the Host
/// Configuration on them (by GPT name), making partition nodes as needed.
pub fn resolve(hc: &HostConfiguration) -> Result<Layout> {
    let mut layout = Layout::default();
    for disk in &hc.storage.disks {
        let dev = open_disk(disk, &mut layout.loops)?;
        let table = read_gpt_table(&dev)
            .with_context(|| format!("reading the partition table of disk '{}'", disk.id))?;
        let mut wanted: Vec<(String, ExistingPartition)> = Vec::new();
        let names: Vec<(String, String)> = disk
            .partitions
            .iter()
            .map(|p| (p.id.clone(), p.gpt_label().to_string()))
            .chain(disk.adopted_partitions.iter().map(|a| {
                (
                    a.id.clone(),
                    a.match_label.clone().unwrap_or_else(|| a.id.clone()),
                )
            }))
            .collect();
        for (id, label) in names {
            let adopted_uuid = disk
                .adopted_partitions
                .iter()
                .find(|a| a.id == id)
                .and_then(|a| a.match_uuid);
            let found: Vec<&ExistingPartition> = table
                .partitions
                .iter()
                .filter(|e| match adopted_uuid {
                    Some(u) => e.uuid == u,
                    None => e.label == label,
                })
                .collect();
            match found.as_slice() {
                [one] => wanted.push((id, (*one).clone())),
                [] => {
                    return Err(TridentError::environment(
                        "partition-not-found",
                        format!(
                            "disk '{}' ({}) has no partition named '{label}' (id '{id}'): \
                             the disk does not hold the layout Trident installed",
                            disk.id,
                            disk.device.display()
                        ),
                    )
                    .on_device(dev.display().to_string())
                    .into())
                }
                _ => {
                    return Err(TridentError::environment(
                        "partition-ambiguous",
                        format!("disk '{}' has several partitions named '{label}'", disk.id),
                    )
                    .on_device(dev.display().to_string())
                    .into())
                }
            }
        }
        let entries: Vec<ExistingPartition> = table.partitions.clone();
        let paths = blkpg::ensure_partition_nodes(&dev, &entries)
            .with_context(|| format!("making the partition nodes of {}", dev.display()))?;
        for (id, e) in wanted {
            let idx = entries
                .iter()
                .position(|x| x.number == e.number)
                .expect("listed");
            layout.partitions.insert(
                id.clone(),
                ResolvedPartition {
                    id,
                    path: paths[idx].clone(),
                    disk: dev.clone(),
                    number: e.number,
                    offset: e.offset(),
                    size: e.size(),
                    first_lba: e.first_lba,
                    sector_size: e.sector_size,
                    part_uuid: e.uuid,
                },
            );
        }
        layout.disks.insert(disk.id.clone(), dev);
    }
    Ok(layout)
}

/// Same `major:minor` (or the same path when either cannot be stat'ed as a device).
pub fn same_device(a: &Path, b: &Path) -> bool {
    match (device::dev_number(a), device::dev_number(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
