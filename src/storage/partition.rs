//! The whole "partition this disk" step as the engine runs it: read the current
//! table, plan, refuse a disk in use, write, and make the partition nodes.

use super::blkpg::{ensure_partition_nodes, partition_path};
use super::device::{device_size, logical_sector_size};
use super::gpt::{plan_layout, read_gpt_table, write_gpt_with_guid, DiskPlan, PlacedPartition};
use super::mounts::check_disk_not_in_use;
use crate::error::find_trident_error;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// A partition of the applied layout and its device node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedPartition {
    /// `/dev/loop0p2`, `/dev/sda2`, ...
    pub path: PathBuf,
    pub placed: PlacedPartition,
}

/// Lay out `disk` according to `plan` and return every partition (new and adopted)
/// with its device node, sorted by partition number.
///
/// Nothing is written unless the plan fits and the disk is not in use (adopted
/// partitions may be mounted). When partitions are adopted the disk keeps its GUID;
/// otherwise it gets a new one.
pub fn partition_disk(disk: &Path, plan: &DiskPlan) -> Result<Vec<AppliedPartition>> {
    let size = device_size(disk)?;
    let lba = logical_sector_size(disk)?;
    let existing = match read_gpt_table(disk) {
        Ok(t) => Some(t),
        Err(e) if find_trident_error(&e).is_some_and(|t| t.code == "no-partition-table") => None,
        Err(e) => return Err(e).context("reading the current partition table"),
    };
    let placed = plan_layout(
        size,
        lba,
        plan,
        existing.as_ref().map(|t| t.partitions.as_slice()),
    )
    .map_err(|e| anyhow::Error::new(e.on_device(disk.display().to_string())))
    .with_context(|| format!("planning the partitions of {}", disk.display()))?;

    let adopted: Vec<PathBuf> = placed
        .iter()
        .filter(|p| p.adopted)
        .map(|p| partition_path(disk, p.number))
        .collect();
    check_disk_not_in_use(disk, &adopted)?;

    let guid = match &existing {
        Some(t) if !adopted.is_empty() => t.disk_guid,
        _ => Uuid::new_v4(),
    };
    write_gpt_with_guid(disk, guid, &placed)
        .with_context(|| format!("writing the partition table of {}", disk.display()))?;
    let entries: Vec<_> = placed.iter().map(|p| p.to_entry()).collect();
    let paths = ensure_partition_nodes(disk, &entries)
        .with_context(|| format!("making the partition nodes of {}", disk.display()))?;
    Ok(placed
        .into_iter()
        .zip(paths)
        .map(|(placed, path)| AppliedPartition { path, placed })
        .collect())
}
