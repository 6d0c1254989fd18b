//! GUID Partition Tables: planning a layout (a pure function), and reading and writing
//! tables natively (protective MBR, primary and backup header, CRC32s).
//!
//! We write the GPT ourselves rather than through the `gpt` crate because that crate
//! renumbers partitions when writing and sizes the entry array from the partition
//! count; adopted partitions must keep their numbers and other tools expect the usual
//! 128-entry array.
//!
//! Layout rules ([`plan_layout`]): every new partition starts on a 1 MiB boundary;
//! fixed sizes are rounded up to whole sectors; at most one `grow` partition takes all
//! the space left in its gap (ending on a 1 MiB boundary); adopted partitions keep
//! their place, number, type, UUID and label, and new partitions are placed around
//! them in plan order.

use crate::error::TridentError;
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use uuid::Uuid;

use super::device::{file_sector_size, file_size};

/// Alignment of new partitions.
pub const ALIGNMENT: u64 = 1 << 20;
/// Number of entries in the partition entry array (the usual 128).
pub const ENTRY_COUNT: u32 = 128;
/// Size of one partition entry.
pub const ENTRY_SIZE: u32 = 128;
/// Longest partition name (UTF-16 code units).
pub const MAX_LABEL_UNITS: usize = 36;

const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION: u32 = 0x0001_0000;
const HEADER_SIZE: u32 = 92;

/// Size of a partition in a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartSize {
    /// Exactly this many bytes (rounded up to a whole sector).
    Fixed(u64),
    /// All the space left in its gap.
    Grow,
}

/// A new partition to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    /// Block-device id from the configuration (used in errors and in the result).
    pub id: String,
    pub type_guid: Uuid,
    pub size: PartSize,
    /// GPT partition name; `None` writes the id.
    pub label: Option<String>,
    /// Partition UUID; `None` picks a random one.
    pub uuid: Option<Uuid>,
}

/// How an adopted partition is found in the existing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdoptKey {
    Label(String),
    Uuid(Uuid),
}

/// An existing partition to keep as is (place, number, type, UUID, label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptMatch {
    pub id: String,
    pub by: AdoptKey,
}

/// The desired layout of one disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskPlan {
    pub partitions: Vec<PartitionPlan>,
    pub adopted: Vec<AdoptMatch>,
}

/// A partition as found in a table on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingPartition {
    /// 1-based partition number (entry index + 1).
    pub number: u32,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub type_guid: Uuid,
    pub uuid: Uuid,
    pub label: String,
    pub attributes: u64,
    /// Logical sector size the LBAs are counted in.
    pub sector_size: u64,
}

impl ExistingPartition {
    /// Byte offset on the disk.
    pub fn offset(&self) -> u64 {
        self.first_lba * self.sector_size
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * self.sector_size
    }
}

/// A partition of a planned layout: new or adopted, with its final place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedPartition {
    pub id: String,
    /// Kept from the existing table.
    pub adopted: bool,
    pub number: u32,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub type_guid: Uuid,
    pub uuid: Uuid,
    pub label: String,
    pub attributes: u64,
    pub sector_size: u64,
}

impl PlacedPartition {
    pub fn offset(&self) -> u64 {
        self.first_lba * self.sector_size
    }
    pub fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * self.sector_size
    }
    /// The table entry this placement becomes.
    pub fn to_entry(&self) -> ExistingPartition {
        ExistingPartition {
            number: self.number,
            first_lba: self.first_lba,
            last_lba: self.last_lba,
            type_guid: self.type_guid,
            uuid: self.uuid,
            label: self.label.clone(),
            attributes: self.attributes,
            sector_size: self.sector_size,
        }
    }
}

/// Geometry of a GPT on a disk of `total_lbas` sectors of `lba` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub lba: u64,
    pub total_lbas: u64,
    /// Sectors taken by the entry array.
    pub entry_lbas: u64,
    pub first_usable: u64,
    pub last_usable: u64,
}

impl Geometry {
    pub fn new(disk_size: u64, lba: u64) -> Result<Self, TridentError> {
        if !matches!(lba, 512 | 1024 | 2048 | 4096) {
            return Err(TridentError::internal(
                "bad-sector-size",
                format!("unsupported logical sector size {lba}"),
            ));
        }
        let entry_lbas = (ENTRY_COUNT as u64 * ENTRY_SIZE as u64).div_ceil(lba);
        let total_lbas = disk_size / lba;
        // MBR + header + entries at the start, entries + header at the end, and at
        // least one usable sector.
        let overhead = 2 + 2 * entry_lbas + 1;
        if total_lbas < overhead + 1 {
            return Err(too_small(overhead * lba + lba, disk_size));
        }
        Ok(Self {
            lba,
            total_lbas,
            entry_lbas,
            first_usable: 2 + entry_lbas,
            last_usable: total_lbas - 2 - entry_lbas,
        })
    }

    fn align(&self) -> u64 {
        (ALIGNMENT / self.lba).max(1)
    }
}

fn too_small(needed: u64, available: u64) -> TridentError {
    TridentError::environment(
        "disk-too-small",
        format!(
            "the disk is too small for the partition layout: it needs at least {needed} bytes \
             ({}) but has {available} bytes ({})",
            human(needed),
            human(available)
        ),
    )
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

fn round_down(v: u64, to: u64) -> u64 {
    v / to * to
}

fn check_label(id: &str, label: &str) -> Result<(), TridentError> {
    if label.encode_utf16().count() > MAX_LABEL_UNITS {
        return Err(TridentError::invalid_input(
            "partition-label-too-long",
            format!(
                "label {label:?} of partition {id:?} is longer than {MAX_LABEL_UNITS} UTF-16 \
                 characters"
            ),
        ));
    }
    Ok(())
}

/// Plan where every partition of `plan` goes on a disk of `disk_size` bytes with
/// logical sector size `lba`. `existing` is the disk's current table, needed when
/// the plan adopts partitions. Pure: reads nothing, writes nothing.
///
/// The result is sorted by partition number. Adopted partitions keep their numbers;
/// new ones take the lowest free numbers in plan order.
pub fn plan_layout(
    disk_size: u64,
    lba: u64,
    plan: &DiskPlan,
    existing: Option<&[ExistingPartition]>,
) -> Result<Vec<PlacedPartition>, TridentError> {
    let geo = Geometry::new(disk_size, lba)?;
    let align = geo.align();

    // Ids are unique across new and adopted partitions.
    let mut ids = HashSet::new();
    for id in plan
        .partitions
        .iter()
        .map(|p| &p.id)
        .chain(plan.adopted.iter().map(|a| &a.id))
    {
        if !ids.insert(id.as_str()) {
            return Err(TridentError::invalid_input(
                "duplicate-partition-id",
                format!("partition id {id:?} appears twice on the disk"),
            ));
        }
    }
    if plan.partitions.len() + plan.adopted.len() > ENTRY_COUNT as usize {
        return Err(TridentError::unsupported(
            "too-many-partitions",
            format!("a GPT holds at most {ENTRY_COUNT} partitions"),
        ));
    }
    let grow_count = plan
        .partitions
        .iter()
        .filter(|p| p.size == PartSize::Grow)
        .count();
    if grow_count > 1 {
        return Err(TridentError::invalid_input(
            "multiple-grow-partitions",
            "at most one partition per disk can have size `grow`",
        ));
    }

    // Adopted partitions, found in the existing table.
    let mut placed: Vec<PlacedPartition> = Vec::new();
    for a in &plan.adopted {
        let candidates: Vec<&ExistingPartition> = existing
            .unwrap_or(&[])
            .iter()
            .filter(|e| match &a.by {
                AdoptKey::Label(l) => &e.label == l,
                AdoptKey::Uuid(u) => &e.uuid == u,
            })
            .collect();
        let what = match &a.by {
            AdoptKey::Label(l) => format!("label {l:?}"),
            AdoptKey::Uuid(u) => format!("UUID {u}"),
        };
        let e = match candidates.as_slice() {
            [] => {
                return Err(TridentError::environment(
                    "adopted-partition-not-found",
                    format!(
                        "adopted partition {:?}: no existing partition with {what}{}",
                        a.id,
                        if existing.is_none() {
                            " (the disk has no partition table)"
                        } else {
                            ""
                        }
                    ),
                ))
            }
            [one] => *one,
            _ => {
                return Err(TridentError::environment(
                    "adopted-partition-ambiguous",
                    format!(
                        "adopted partition {:?}: {} existing partitions have {what}",
                        a.id,
                        candidates.len()
                    ),
                ))
            }
        };
        if e.sector_size != lba {
            return Err(TridentError::internal(
                "sector-size-mismatch",
                format!(
                    "existing table uses {}-byte sectors, plan uses {lba}",
                    e.sector_size
                ),
            ));
        }
        if e.first_lba < geo.first_usable || e.last_lba > geo.last_usable {
            return Err(TridentError::environment(
                "adopted-partition-out-of-range",
                format!(
                    "adopted partition {:?} (sectors {}-{}) lies outside the usable area \
                     {}-{} of the disk",
                    a.id, e.first_lba, e.last_lba, geo.first_usable, geo.last_usable
                ),
            ));
        }
        if placed.iter().any(|p| p.number == e.number) {
            return Err(TridentError::invalid_input(
                "duplicate-adopted-partition",
                format!(
                    "adopted partition {:?} matches partition {} that is already adopted",
                    a.id, e.number
                ),
            ));
        }
        placed.push(PlacedPartition {
            id: a.id.clone(),
            adopted: true,
            number: e.number,
            first_lba: e.first_lba,
            last_lba: e.last_lba,
            type_guid: e.type_guid,
            uuid: e.uuid,
            label: e.label.clone(),
            attributes: e.attributes,
            sector_size: lba,
        });
    }

    // Sizes of new partitions in sectors (grow: its minimum, one alignment unit).
    let mut sizes = Vec::with_capacity(plan.partitions.len());
    for p in &plan.partitions {
        let sectors = match p.size {
            PartSize::Fixed(0) => {
                return Err(TridentError::invalid_input(
                    "zero-size-partition",
                    format!("partition {:?} has size 0", p.id),
                ))
            }
            PartSize::Fixed(bytes) => bytes.div_ceil(lba),
            PartSize::Grow => align,
        };
        check_label(&p.id, p.label.as_deref().unwrap_or(&p.id))?;
        sizes.push(sectors);
    }

    // The total demand, for a readable error when it cannot possibly fit.
    let adopted_sectors: u64 = placed.iter().map(|p| p.last_lba + 1 - p.first_lba).sum();
    let new_sectors: u64 = sizes.iter().map(|s| round_up(*s, align)).sum();
    let needed_lbas =
        round_up(geo.first_usable, align) + new_sectors + adopted_sectors + geo.entry_lbas + 1;
    if needed_lbas > geo.total_lbas {
        return Err(too_small(needed_lbas * lba, disk_size));
    }

    // Gaps between adopted partitions: [start, end) in sectors.
    let mut obstacles: Vec<(u64, u64)> = placed
        .iter()
        .map(|p| (p.first_lba, p.last_lba + 1))
        .collect();
    obstacles.sort();
    let mut gaps = Vec::new();
    let mut cursor = geo.first_usable;
    for (s, e) in obstacles.iter().copied().chain([(geo.last_usable + 1, 0)]) {
        let start = round_up(cursor, align);
        let end = s; // exclusive
        if end > start {
            gaps.push((start, end));
        }
        cursor = cursor.max(e);
    }

    // Assign new partitions to gaps in plan order: (gap index, start, sectors).
    let mut spots: Vec<(usize, u64, u64)> = Vec::with_capacity(sizes.len());
    let mut gap = 0;
    let mut pos = gaps.first().map(|g| g.0).unwrap_or(0);
    for (i, &sectors) in sizes.iter().enumerate() {
        loop {
            let Some(&(_, end)) = gaps.get(gap) else {
                let free: u64 = gaps.iter().map(|(s, e)| e - s).sum();
                let want: u64 = sizes[i..].iter().map(|s| round_up(*s, align)).sum();
                return Err(TridentError::environment(
                    "disk-too-small",
                    format!(
                        "partitions from {:?} on do not fit around the adopted partitions: \
                         they need {} bytes ({}) but only {} bytes ({}) are free",
                        plan.partitions[i].id,
                        want * lba,
                        human(want * lba),
                        free * lba,
                        human(free * lba)
                    ),
                ));
            };
            if pos + sectors <= end {
                spots.push((gap, pos, sectors));
                pos = round_up(pos + sectors, align);
                break;
            }
            gap += 1;
            if let Some(g) = gaps.get(gap) {
                pos = g.0;
            }
        }
    }

    // The grow partition takes what is left in its gap; later ones in it shift right.
    if let Some(gi) = plan
        .partitions
        .iter()
        .position(|p| p.size == PartSize::Grow)
    {
        let g = spots[gi].0;
        let (_, gap_end) = gaps[g];
        let last_in_gap = spots
            .iter()
            .rposition(|s| s.0 == g)
            .expect("the grow partition is in its gap");
        let used_end = spots[last_in_gap].1 + spots[last_in_gap].2;
        let limit = if last_in_gap == gi {
            round_down(gap_end, align).max(used_end)
        } else {
            // Keep the partitions after it aligned: grow by whole alignment units.
            used_end + round_down(gap_end - used_end, align)
        };
        let extra = limit - used_end;
        spots[gi].2 += extra;
        for s in spots.iter_mut().take(last_in_gap + 1).skip(gi + 1) {
            s.1 += extra;
        }
    }

    // Numbers: adopted keep theirs, new ones take the lowest free ones in plan order.
    let mut used: HashSet<u32> = placed.iter().map(|p| p.number).collect();
    let mut next = 1;
    for (p, (_, start, sectors)) in plan.partitions.iter().zip(spots) {
        while used.contains(&next) {
            next += 1;
        }
        used.insert(next);
        placed.push(PlacedPartition {
            id: p.id.clone(),
            adopted: false,
            number: next,
            first_lba: start,
            last_lba: start + sectors - 1,
            type_guid: p.type_guid,
            uuid: p.uuid.unwrap_or_else(Uuid::new_v4),
            label: p.label.clone().unwrap_or_else(|| p.id.clone()),
            attributes: 0,
            sector_size: lba,
        });
    }
    if placed.iter().any(|p| p.number > ENTRY_COUNT) {
        return Err(TridentError::unsupported(
            "too-many-partitions",
            format!("partition numbers above {ENTRY_COUNT} do not fit in the table"),
        ));
    }
    placed.sort_by_key(|p| p.number);
    Ok(placed)
}

// ---------------------------------------------------------------------------------
// On-disk format

/// CRC-32 (IEEE 802.3, reflected), as used by GPT headers and entry arrays.
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// A GPT header's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    current_lba: u64,
    backup_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: Uuid,
    entries_lba: u64,
    entry_count: u32,
    entry_size: u32,
    entries_crc: u32,
}

impl Header {
    fn to_bytes(&self, lba: u64) -> Vec<u8> {
        let mut b = vec![0u8; lba as usize];
        b[0..8].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&REVISION.to_le_bytes());
        b[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
        // 16..20 CRC (below), 20..24 reserved.
        b[24..32].copy_from_slice(&self.current_lba.to_le_bytes());
        b[32..40].copy_from_slice(&self.backup_lba.to_le_bytes());
        b[40..48].copy_from_slice(&self.first_usable.to_le_bytes());
        b[48..56].copy_from_slice(&self.last_usable.to_le_bytes());
        b[56..72].copy_from_slice(&self.disk_guid.to_bytes_le());
        b[72..80].copy_from_slice(&self.entries_lba.to_le_bytes());
        b[80..84].copy_from_slice(&self.entry_count.to_le_bytes());
        b[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
        b[88..92].copy_from_slice(&self.entries_crc.to_le_bytes());
        let crc = crc32(&b[..HEADER_SIZE as usize]);
        b[16..20].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn parse(b: &[u8]) -> Result<Self> {
        ensure!(&b[0..8] == SIGNATURE, "no GPT signature");
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let size = u32_at(12);
        ensure!(
            (HEADER_SIZE..=b.len() as u32).contains(&size),
            "bad GPT header size {size}"
        );
        let mut copy = b[..size as usize].to_vec();
        copy[16..20].fill(0);
        let crc = crc32(&copy);
        ensure!(
            crc == u32_at(16),
            "GPT header CRC32 mismatch (stored {:08x}, computed {crc:08x})",
            u32_at(16)
        );
        let h = Header {
            current_lba: u64_at(24),
            backup_lba: u64_at(32),
            first_usable: u64_at(40),
            last_usable: u64_at(48),
            disk_guid: Uuid::from_bytes_le(b[56..72].try_into().unwrap()),
            entries_lba: u64_at(72),
            entry_count: u32_at(80),
            entry_size: u32_at(84),
            entries_crc: u32_at(88),
        };
        ensure!(
            h.entry_size >= 128 && h.entry_size % 8 == 0 && h.entry_size <= 4096,
            "bad GPT entry size {}",
            h.entry_size
        );
        ensure!(
            h.entry_count <= 4096,
            "implausible GPT entry count {}",
            h.entry_count
        );
        Ok(h)
    }
}

fn entry_bytes(p: &ExistingPartition) -> [u8; ENTRY_SIZE as usize] {
    let mut b = [0u8; ENTRY_SIZE as usize];
    b[0..16].copy_from_slice(&p.type_guid.to_bytes_le());
    b[16..32].copy_from_slice(&p.uuid.to_bytes_le());
    b[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
    b[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
    b[48..56].copy_from_slice(&p.attributes.to_le_bytes());
    for (i, unit) in p.label.encode_utf16().take(MAX_LABEL_UNITS).enumerate() {
        b[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
    }
    b
}

fn parse_entry(number: u32, b: &[u8], lba: u64) -> Option<ExistingPartition> {
    let type_guid = Uuid::from_bytes_le(b[0..16].try_into().unwrap());
    if type_guid.is_nil() {
        return None;
    }
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let units: Vec<u16> = b[56..128]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    Some(ExistingPartition {
        number,
        first_lba: u64_at(32),
        last_lba: u64_at(40),
        type_guid,
        uuid: Uuid::from_bytes_le(b[16..32].try_into().unwrap()),
        label: String::from_utf16_lossy(&units),
        attributes: u64_at(48),
        sector_size: lba,
    })
}

fn protective_mbr(total_lbas: u64) -> [u8; 512] {
    let mut m = [0u8; 512];
    let e = &mut m[446..462];
    e[0] = 0x00; // not bootable
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = 0xEE; // GPT protective
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = (total_lbas - 1).min(u32::MAX as u64) as u32;
    e[12..16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

/// A whole table as read from a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptTable {
    pub disk_guid: Uuid,
    pub sector_size: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    pub partitions: Vec<ExistingPartition>,
    /// Whether the primary (resp. backup) header and its entries were intact.
    pub primary_ok: bool,
    pub backup_ok: bool,
}

/// Write a fresh GPT holding `placed` to `device` (a block device or an image file),
/// with a random disk GUID.
pub fn write_gpt(device: &Path, placed: &[PlacedPartition]) -> Result<()> {
    write_gpt_with_guid(device, Uuid::new_v4(), placed)
}

/// Write a fresh GPT with the given disk GUID: protective MBR, backup entries and
/// header, primary entries and header, then fsync.
pub fn write_gpt_with_guid(
    device: &Path,
    disk_guid: Uuid,
    placed: &[PlacedPartition],
) -> Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .with_context(|| format!("opening {} for writing", device.display()))?;
    let lba = file_sector_size(&file, device)?;
    let size = file_size(&file, device)?;
    let geo = Geometry::new(size, lba)?;

    let mut entries = vec![0u8; (geo.entry_lbas * lba) as usize];
    let mut numbers = HashSet::new();
    let mut ranges: Vec<(u64, u64, u32)> = Vec::new();
    for p in placed {
        ensure!(
            p.sector_size == lba,
            "partition {} was planned for {}-byte sectors but {} has {lba}-byte sectors",
            p.id,
            p.sector_size,
            device.display()
        );
        ensure!(
            (1..=ENTRY_COUNT).contains(&p.number) && numbers.insert(p.number),
            "partition {} has an invalid or duplicate number {}",
            p.id,
            p.number
        );
        ensure!(
            p.first_lba >= geo.first_usable
                && p.last_lba <= geo.last_usable
                && p.first_lba <= p.last_lba,
            "partition {} (sectors {}-{}) is outside the usable sectors {}-{} of {}",
            p.id,
            p.first_lba,
            p.last_lba,
            geo.first_usable,
            geo.last_usable,
            device.display()
        );
        ensure!(
            p.label.encode_utf16().count() <= MAX_LABEL_UNITS,
            "label of partition {} is too long",
            p.id
        );
        ranges.push((p.first_lba, p.last_lba, p.number));
        let at = ((p.number - 1) * ENTRY_SIZE) as usize;
        entries[at..at + ENTRY_SIZE as usize].copy_from_slice(&entry_bytes(&p.to_entry()));
    }
    ranges.sort();
    for w in ranges.windows(2) {
        ensure!(
            w[0].1 < w[1].0,
            "partitions {} and {} overlap",
            w[0].2,
            w[1].2
        );
    }
    let entries_crc = crc32(&entries[..(ENTRY_COUNT * ENTRY_SIZE) as usize]);
    let last = geo.total_lbas - 1;
    let primary = Header {
        current_lba: 1,
        backup_lba: last,
        first_usable: geo.first_usable,
        last_usable: geo.last_usable,
        disk_guid,
        entries_lba: 2,
        entry_count: ENTRY_COUNT,
        entry_size: ENTRY_SIZE,
        entries_crc,
    };
    let backup = Header {
        current_lba: last,
        backup_lba: 1,
        entries_lba: last - geo.entry_lbas,
        ..primary.clone()
    };

    let mut write_at = |lba_index: u64, data: &[u8]| -> Result<()> {
        file.seek(SeekFrom::Start(lba_index * lba))?;
        file.write_all(data)
            .with_context(|| format!("writing sector {lba_index} of {}", device.display()))
    };
    write_at(backup.entries_lba, &entries)?;
    write_at(last, &backup.to_bytes(lba))?;
    write_at(2, &entries)?;
    write_at(1, &primary.to_bytes(lba))?;
    let mut mbr = vec![0u8; lba as usize];
    mbr[..512].copy_from_slice(&protective_mbr(geo.total_lbas));
    write_at(0, &mbr)?;
    file.sync_all()
        .with_context(|| format!("flushing {}", device.display()))?;
    tracing::info!(
        device = %device.display(),
        partitions = placed.len(),
        %disk_guid,
        "wrote GPT"
    );
    Ok(())
}

/// Read the partitions of the GPT on `device`.
pub fn read_gpt(device: &Path) -> Result<Vec<ExistingPartition>> {
    Ok(read_gpt_table(device)?.partitions)
}

/// Read the whole GPT on `device`, checking CRCs; falls back to the backup header
/// when the primary one is damaged.
pub fn read_gpt_table(device: &Path) -> Result<GptTable> {
    let file = File::open(device).with_context(|| format!("opening {}", device.display()))?;
    let lba = file_sector_size(&file, device)?;
    let size = file_size(&file, device)?;
    let mut read_at = file_reader(&file);
    read_gpt_table_from(&device.display().to_string(), size, lba, &mut read_at)
}

/// Reads `len` bytes at byte `offset` of a disk or disk image.
pub type ReadAt<'a> = dyn FnMut(u64, usize) -> Result<Vec<u8>> + 'a;

/// A [`ReadAt`] over an open file (positional reads, the file offset is untouched).
pub fn file_reader(file: &File) -> impl FnMut(u64, usize) -> Result<Vec<u8>> + '_ {
    use std::os::unix::fs::FileExt;
    move |offset, len| {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)
            .with_context(|| format!("reading {len} bytes at offset {offset}"))?;
        Ok(buf)
    }
}

/// [`read_gpt_table`] over any byte source: a disk of `size` bytes with
/// `sector_size`-byte sectors, read through `read_at`; `name` names it in errors.
pub fn read_gpt_table_from(
    name: &str,
    size: u64,
    sector_size: u64,
    read_at: &mut ReadAt,
) -> Result<GptTable> {
    Ok(read_table(name, size, sector_size, read_at)?.0)
}

/// The table, and the primary header when it (and its entries) are intact.
fn read_table(
    name: &str,
    size: u64,
    lba: u64,
    read_at: &mut ReadAt,
) -> Result<(GptTable, Option<Header>)> {
    let total = size / lba;
    if total < 3 {
        return Err(TridentError::environment(
            "no-partition-table",
            format!("{name} is too small to hold a GPT"),
        )
        .on_device(name)
        .into());
    }

    let mut read_lba = |lba_index: u64, len: u64| -> Result<Vec<u8>> {
        read_at(lba_index * lba, len as usize)
            .with_context(|| format!("reading sector {lba_index} of {name}"))
    };

    let mut load = |at: u64| -> Result<(Header, Vec<u8>)> {
        let h = Header::parse(&read_lba(at, lba)?)?;
        ensure!(
            h.current_lba == at,
            "header says it is at sector {}",
            h.current_lba
        );
        let len = h.entry_count as u64 * h.entry_size as u64;
        ensure!(
            h.entries_lba + len.div_ceil(lba) <= total,
            "entry array beyond the end of the disk"
        );
        let entries = read_lba(h.entries_lba, len)?;
        let crc = crc32(&entries);
        ensure!(
            crc == h.entries_crc,
            "partition entry array CRC32 mismatch (stored {:08x}, computed {crc:08x})",
            h.entries_crc
        );
        Ok((h, entries))
    };

    let primary = load(1);
    let backup_at = match &primary {
        Ok((h, _)) if h.backup_lba < total => h.backup_lba,
        _ => total - 1,
    };
    let backup = load(backup_at);
    let (h, entries) = match (&primary, &backup) {
        (Ok(p), _) => p.clone(),
        (Err(pe), Ok(b)) => {
            tracing::warn!(device = %name, "primary GPT damaged ({pe:#}); using the backup");
            b.clone()
        }
        (Err(pe), Err(be)) => {
            return Err(anyhow::Error::new(
                TridentError::environment(
                    "no-partition-table",
                    format!("{name} has no valid GPT (primary: {pe:#}; backup: {be:#})"),
                )
                .on_device(name),
            ))
        }
    };
    let partitions = entries
        .chunks_exact(h.entry_size as usize)
        .enumerate()
        .filter_map(|(i, e)| parse_entry(i as u32 + 1, e, lba))
        .collect();
    let table = GptTable {
        disk_guid: h.disk_guid,
        sector_size: lba,
        first_usable: h.first_usable,
        last_usable: h.last_usable,
        partitions,
        primary_ok: primary.is_ok(),
        backup_ok: backup.is_ok(),
    };
    Ok((table, primary.ok().map(|(h, _)| h)))
}

impl GptTable {
    /// Check that the table describes a sane layout on a disk of `disk_size` bytes:
    /// the usable range fits the disk, every partition lies inside it, and no two
    /// partitions overlap.
    pub fn check_layout(&self, disk_size: u64) -> Result<()> {
        let total = disk_size / self.sector_size;
        ensure!(
            self.first_usable <= self.last_usable && self.last_usable < total,
            "GPT usable range {}..={} does not fit a disk of {total} sectors",
            self.first_usable,
            self.last_usable
        );
        for p in &self.partitions {
            ensure!(
                p.first_lba <= p.last_lba
                    && p.first_lba >= self.first_usable
                    && p.last_lba <= self.last_usable,
                "GPT partition {} spans sectors {}..={}, outside the usable range {}..={}",
                p.number,
                p.first_lba,
                p.last_lba,
                self.first_usable,
                self.last_usable
            );
        }
        let mut by_start: Vec<&ExistingPartition> = self.partitions.iter().collect();
        by_start.sort_by_key(|p| p.first_lba);
        for w in by_start.windows(2) {
            ensure!(
                w[1].first_lba > w[0].last_lba,
                "GPT partitions {} and {} overlap",
                w[0].number,
                w[1].number
            );
        }
        Ok(())
    }
}

/// A GPT read from a disk image whose sector size is not known beforehand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptImage {
    pub table: GptTable,
    /// Bytes from the start of the image through the end of the primary partition
    /// entry array (protective MBR, header, entries); `None` when the primary copy is
    /// damaged and the table came from the backup.
    pub primary_len: Option<u64>,
}

/// Sector sizes a disk image's GPT is looked for with, in order.
const IMAGE_SECTOR_SIZES: [u64; 2] = [512, 4096];

/// The logical sector size a disk image's GPT was written for: the first of 512 and
/// 4096 with a GPT signature at sector 1, else in the last sector; 512 when neither.
pub fn detect_sector_size(size: u64, read_at: &mut ReadAt) -> Result<u64> {
    for last in [false, true] {
        for lba in IMAGE_SECTOR_SIZES {
            if size < 3 * lba {
                continue;
            }
            let at = if last { (size / lba - 1) * lba } else { lba };
            if read_at(at, SIGNATURE.len())? == SIGNATURE {
                return Ok(lba);
            }
        }
    }
    Ok(512)
}

/// Read the GPT of a disk image of `size` bytes through `read_at`, detecting its
/// sector size ([`detect_sector_size`]); falls back to the backup like
/// [`read_gpt_table`].
pub fn read_gpt_image(name: &str, size: u64, read_at: &mut ReadAt) -> Result<GptImage> {
    let lba = detect_sector_size(size, read_at)
        .with_context(|| format!("looking for a GPT signature in {name}"))?;
    let (table, primary) = read_table(name, size, lba, read_at)?;
    let primary_len = primary.map(|h| {
        let entry_bytes = u64::from(h.entry_count) * u64::from(h.entry_size);
        (h.entries_lba + entry_bytes.div_ceil(lba)) * lba
    });
    Ok(GptImage { table, primary_len })
}

/// Destroy the GPT on `device` (both headers and the protective MBR), e.g. before a
/// clean install of an unpartitioned layout or in tests.
pub fn wipe_gpt(device: &Path) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(device)
        .with_context(|| format!("opening {} for writing", device.display()))?;
    let lba = file_sector_size(&file, device)?;
    let total = file_size(&file, device)? / lba;
    if total < 3 {
        bail!("{} is too small to hold a GPT", device.display());
    }
    let zero = vec![0u8; lba as usize];
    for at in [0, 1, total - 1] {
        file.seek(SeekFrom::Start(at * lba))?;
        file.write_all(&zero)
            .with_context(|| format!("wiping sector {at} of {}", device.display()))?;
    }
    file.sync_all()
        .with_context(|| format!("flushing {}", device.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::parttypes::PartitionType;

    const MIB: u64 = 1 << 20;

    fn part(id: &str, size: PartSize) -> PartitionPlan {
        PartitionPlan {
            id: id.into(),
            type_guid: PartitionType::LinuxGeneric.guid(),
            size,
            label: None,
            uuid: None,
        }
    }

    fn ab_plan() -> DiskPlan {
        DiskPlan {
            partitions: vec![
                PartitionPlan {
                    type_guid: PartitionType::Esp.guid(),
                    ..part("esp", PartSize::Fixed(64 * MIB))
                },
                PartitionPlan {
                    type_guid: PartitionType::Root.guid(),
                    ..part("root-a", PartSize::Fixed(300 * MIB))
                },
                PartitionPlan {
                    type_guid: PartitionType::Root.guid(),
                    ..part("root-b", PartSize::Fixed(300 * MIB))
                },
                PartitionPlan {
                    type_guid: PartitionType::Var.guid(),
                    ..part("var", PartSize::Grow)
                },
            ],
            adopted: vec![],
        }
    }

    #[test]
    fn crc32_known_vector() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn ab_layout_on_1g_disk() {
        let disk = 1024 * MIB;
        let placed = plan_layout(disk, 512, &ab_plan(), None).unwrap();
        let ids: Vec<_> = placed.iter().map(|p| (p.id.as_str(), p.number)).collect();
        assert_eq!(ids, [("esp", 1), ("root-a", 2), ("root-b", 3), ("var", 4)]);
        assert_eq!(placed[0].offset(), MIB);
        assert_eq!(placed[0].size(), 64 * MIB);
        assert_eq!(placed[1].offset(), 65 * MIB);
        assert_eq!(placed[2].offset(), 365 * MIB);
        assert_eq!(placed[3].offset(), 665 * MIB);
        // Grow ends on the last 1 MiB boundary before the backup GPT (33 sectors).
        assert_eq!(placed[3].offset() + placed[3].size(), 1023 * MIB);
        for p in &placed {
            assert_eq!(p.offset() % MIB, 0, "{} aligned", p.id);
            assert_eq!(p.label, p.id);
        }
        assert_eq!(placed[1].type_guid, PartitionType::Root.guid());
    }

    #[test]
    fn grow_in_the_middle_pushes_later_partitions_to_the_end() {
        let plan = DiskPlan {
            partitions: vec![
                part("a", PartSize::Fixed(10 * MIB)),
                part("data", PartSize::Grow),
                part("z", PartSize::Fixed(5 * MIB)),
            ],
            adopted: vec![],
        };
        let placed = plan_layout(100 * MIB, 512, &plan, None).unwrap();
        assert_eq!(placed[1].offset(), 11 * MIB);
        assert_eq!(placed[2].offset() % MIB, 0);
        assert_eq!(placed[1].offset() + placed[1].size(), placed[2].offset());
        assert_eq!(placed[2].offset(), 94 * MIB); // 99 MiB usable end minus 5 MiB
        assert_eq!(placed[2].size(), 5 * MIB);
    }

    #[test]
    fn odd_sizes_round_to_sectors_and_next_start_aligns() {
        let plan = DiskPlan {
            partitions: vec![
                part("a", PartSize::Fixed(MIB + 1)),
                part("b", PartSize::Fixed(MIB)),
            ],
            adopted: vec![],
        };
        let placed = plan_layout(10 * MIB, 512, &plan, None).unwrap();
        assert_eq!(placed[0].size(), MIB + 512);
        assert_eq!(placed[1].offset(), 3 * MIB);
    }

    #[test]
    fn sector_size_4k() {
        let placed = plan_layout(1024 * MIB, 4096, &ab_plan(), None).unwrap();
        assert_eq!(placed[0].first_lba, 256);
        assert_eq!(placed[0].size(), 64 * MIB);
        assert_eq!(placed[3].offset() + placed[3].size(), 1023 * MIB);
    }

    #[test]
    fn too_small_names_needed_and_available() {
        let e = plan_layout(600 * MIB, 512, &ab_plan(), None).unwrap_err();
        assert_eq!(e.code, "disk-too-small");
        assert_eq!(e.category, crate::error::Category::ExecutionEnvironment);
        // 1 MiB lead + 64 + 300 + 300 + 1 (grow minimum) MiB + backup GPT.
        let needed = 666 * MIB + 33 * 512;
        assert!(e.message.contains(&needed.to_string()), "{}", e.message);
        assert!(
            e.message.contains(&(600 * MIB).to_string()),
            "{}",
            e.message
        );
    }

    #[test]
    fn exact_fit_works_one_mib_less_fails() {
        let plan = DiskPlan {
            partitions: vec![part("a", PartSize::Fixed(10 * MIB))],
            adopted: vec![],
        };
        // 1 MiB lead + 10 MiB + 33 backup sectors.
        let exact = 11 * MIB + 33 * 512;
        let placed = plan_layout(exact, 512, &plan, None).unwrap();
        assert_eq!(placed[0].size(), 10 * MIB);
        let e = plan_layout(exact - 512, 512, &plan, None).unwrap_err();
        assert_eq!(e.code, "disk-too-small");
    }

    fn existing(number: u32, start_mib: u64, size_mib: u64, label: &str) -> ExistingPartition {
        ExistingPartition {
            number,
            first_lba: start_mib * 2048,
            last_lba: (start_mib + size_mib) * 2048 - 1,
            type_guid: PartitionType::LinuxGeneric.guid(),
            uuid: Uuid::new_v4(),
            label: label.into(),
            attributes: 1 << 59,
            sector_size: 512,
        }
    }

    #[test]
    fn adopted_partition_kept_and_new_ones_placed_around() {
        let old = vec![
            existing(1, 1, 50, "old-esp"),
            existing(2, 51, 20, "data"),
            existing(3, 71, 20, "old-root"),
        ];
        let plan = DiskPlan {
            partitions: vec![
                part("esp", PartSize::Fixed(30 * MIB)),
                part("root", PartSize::Fixed(30 * MIB)),
                part("var", PartSize::Grow),
            ],
            adopted: vec![AdoptMatch {
                id: "keep".into(),
                by: AdoptKey::Label("data".into()),
            }],
        };
        let placed = plan_layout(200 * MIB, 512, &plan, Some(&old)).unwrap();
        let keep = placed.iter().find(|p| p.id == "keep").unwrap();
        assert!(keep.adopted);
        assert_eq!(keep.to_entry(), old[1]);
        let by_id = |id: &str| placed.iter().find(|p| p.id == id).unwrap();
        // esp fits before the adopted partition; root does not fit in the 20 MiB
        // left there and goes after it; var grows to the end.
        assert_eq!((by_id("esp").number, by_id("esp").offset()), (1, MIB));
        assert_eq!(
            (by_id("root").number, by_id("root").offset()),
            (3, 71 * MIB)
        );
        assert_eq!(by_id("var").number, 4);
        assert_eq!(by_id("var").offset(), 101 * MIB);
        assert_eq!(by_id("var").offset() + by_id("var").size(), 199 * MIB);
        // By UUID too.
        let plan2 = DiskPlan {
            adopted: vec![AdoptMatch {
                id: "keep".into(),
                by: AdoptKey::Uuid(old[2].uuid),
            }],
            ..plan.clone()
        };
        let placed2 = plan_layout(200 * MIB, 512, &plan2, Some(&old)).unwrap();
        let keep2 = placed2.iter().find(|p| p.id == "keep").unwrap();
        assert_eq!(keep2.number, 3);
        assert_eq!(keep2.offset(), 71 * MIB);
    }

    #[test]
    fn adopted_not_found_or_ambiguous() {
        let old = vec![existing(1, 1, 10, "x"), existing(2, 11, 10, "x")];
        let mut plan = DiskPlan {
            partitions: vec![],
            adopted: vec![AdoptMatch {
                id: "keep".into(),
                by: AdoptKey::Label("missing".into()),
            }],
        };
        let e = plan_layout(100 * MIB, 512, &plan, Some(&old)).unwrap_err();
        assert_eq!(e.code, "adopted-partition-not-found");
        assert!(e.message.contains("\"missing\""), "{}", e.message);
        let e = plan_layout(100 * MIB, 512, &plan, None).unwrap_err();
        assert_eq!(e.code, "adopted-partition-not-found");
        assert!(e.message.contains("no partition table"));
        plan.adopted[0].by = AdoptKey::Label("x".into());
        let e = plan_layout(100 * MIB, 512, &plan, Some(&old)).unwrap_err();
        assert_eq!(e.code, "adopted-partition-ambiguous");
    }

    #[test]
    fn fragmentation_around_adopted_is_disk_too_small() {
        let old = vec![existing(1, 40, 20, "data")];
        let plan = DiskPlan {
            partitions: vec![part("big", PartSize::Fixed(50 * MIB))],
            adopted: vec![AdoptMatch {
                id: "keep".into(),
                by: AdoptKey::Label("data".into()),
            }],
        };
        // 100 MiB disk: 39 MiB free before, ~39 MiB after; 50 MiB fits in neither.
        let e = plan_layout(100 * MIB, 512, &plan, Some(&old)).unwrap_err();
        assert_eq!(e.code, "disk-too-small");
        assert!(e.message.contains("\"big\""), "{}", e.message);
    }

    #[test]
    fn bad_plans_rejected() {
        let dup = DiskPlan {
            partitions: vec![part("a", PartSize::Grow), part("a", PartSize::Fixed(MIB))],
            adopted: vec![],
        };
        assert_eq!(
            plan_layout(100 * MIB, 512, &dup, None).unwrap_err().code,
            "duplicate-partition-id"
        );
        let two_grow = DiskPlan {
            partitions: vec![part("a", PartSize::Grow), part("b", PartSize::Grow)],
            adopted: vec![],
        };
        assert_eq!(
            plan_layout(100 * MIB, 512, &two_grow, None)
                .unwrap_err()
                .code,
            "multiple-grow-partitions"
        );
        let zero = DiskPlan {
            partitions: vec![part("a", PartSize::Fixed(0))],
            adopted: vec![],
        };
        assert_eq!(
            plan_layout(100 * MIB, 512, &zero, None).unwrap_err().code,
            "zero-size-partition"
        );
        let long = DiskPlan {
            partitions: vec![PartitionPlan {
                label: Some("x".repeat(37)),
                ..part("a", PartSize::Grow)
            }],
            adopted: vec![],
        };
        assert_eq!(
            plan_layout(100 * MIB, 512, &long, None).unwrap_err().code,
            "partition-label-too-long"
        );
        assert_eq!(
            plan_layout(100 * MIB, 520, &long, None).unwrap_err().code,
            "bad-sector-size"
        );
        assert_eq!(
            plan_layout(8192, 512, &DiskPlan::default(), None)
                .unwrap_err()
                .code,
            "disk-too-small"
        );
    }

    /// Random plans around random adopted partitions: whatever succeeds is a valid
    /// layout (in range, no overlaps, aligned, adopted untouched, grow fills its gap),
    /// and whatever fails is a typed disk-too-small error.
    #[test]
    fn random_layouts_are_valid() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut ok, mut too_small) = (0, 0);
        for round in 0..2000 {
            let lba = if round % 4 == 0 { 4096 } else { 512 };
            let disk = (64 + rnd(512)) * MIB + rnd(MIB);
            let geo = Geometry::new(disk, lba).unwrap();
            // Up to 3 adopted partitions at arbitrary (unaligned) places.
            let mut existing = Vec::new();
            let mut cursor = geo.first_usable + rnd(4096);
            for n in 1..=rnd(4) as u32 {
                let len = 1 + rnd(40 * MIB / lba);
                if cursor + len > geo.last_usable {
                    break;
                }
                existing.push(ExistingPartition {
                    number: n * 2,
                    first_lba: cursor,
                    last_lba: cursor + len - 1,
                    type_guid: PartitionType::Home.guid(),
                    uuid: Uuid::new_v4(),
                    label: format!("old{n}"),
                    attributes: 0,
                    sector_size: lba,
                });
                cursor += len + rnd(60 * MIB / lba);
            }
            let count = 1 + rnd(6) as usize;
            let grow_at = rnd(count as u64 + 1) as usize; // == count: no grow
            let plan = DiskPlan {
                partitions: (0..count)
                    .map(|i| {
                        let size = if i == grow_at {
                            PartSize::Grow
                        } else {
                            PartSize::Fixed(1 + rnd(80 * MIB))
                        };
                        part(&format!("p{i}"), size)
                    })
                    .collect(),
                adopted: existing
                    .iter()
                    .filter(|_| rnd(3) > 0)
                    .map(|e| AdoptMatch {
                        id: format!("keep-{}", e.label),
                        by: AdoptKey::Label(e.label.clone()),
                    })
                    .collect(),
            };
            let placed = match plan_layout(disk, lba, &plan, Some(&existing)) {
                Ok(p) => p,
                Err(e) => {
                    assert_eq!(e.code, "disk-too-small", "round {round}: {e}");
                    too_small += 1;
                    continue;
                }
            };
            ok += 1;
            assert_eq!(placed.len(), plan.partitions.len() + plan.adopted.len());
            let mut ranges: Vec<_> = placed.iter().map(|p| (p.first_lba, p.last_lba)).collect();
            ranges.sort();
            for w in ranges.windows(2) {
                assert!(w[0].1 < w[1].0, "round {round}: overlap {w:?}");
            }
            let numbers: HashSet<u32> = placed.iter().map(|p| p.number).collect();
            assert_eq!(numbers.len(), placed.len(), "round {round}: numbers");
            for p in &placed {
                assert!(p.first_lba >= geo.first_usable && p.last_lba <= geo.last_usable);
                if p.adopted {
                    let e = existing.iter().find(|e| e.label == p.label).unwrap();
                    assert_eq!(&p.to_entry(), e, "round {round}");
                } else {
                    assert_eq!(p.offset() % ALIGNMENT, 0, "round {round}: {} aligned", p.id);
                    let plan_p = plan.partitions.iter().find(|q| q.id == p.id).unwrap();
                    match plan_p.size {
                        PartSize::Fixed(b) => assert_eq!(p.size(), b.div_ceil(lba) * lba),
                        PartSize::Grow => {
                            assert!(p.size() >= ALIGNMENT);
                            // Nothing but alignment slack after it before the next
                            // partition (or the end of the usable area).
                            let next = ranges
                                .iter()
                                .map(|r| r.0)
                                .filter(|s| *s > p.last_lba)
                                .min()
                                .unwrap_or(geo.last_usable + 1);
                            let slack = (next - p.last_lba - 1) * lba;
                            assert!(slack < ALIGNMENT, "round {round}: grow left {slack} bytes");
                        }
                    }
                }
            }
            // Plan order is disk order for new partitions.
            let new: Vec<_> = placed.iter().filter(|p| !p.adopted).collect();
            let mut by_plan = new.clone();
            by_plan.sort_by_key(|p| p.id[1..].parse::<usize>().unwrap());
            let mut by_disk = new.clone();
            by_disk.sort_by_key(|p| p.first_lba);
            assert_eq!(by_plan, by_disk, "round {round}: order");
        }
        assert!(ok > 500 && too_small > 50, "ok {ok}, too small {too_small}");
    }

    #[test]
    fn write_then_read_roundtrip_and_backup_fallback() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1024 * MIB).unwrap();
        let mut plan = ab_plan();
        plan.partitions[1].label = Some("Root Ä".into());
        plan.partitions[1].uuid = Some(Uuid::from_u128(0x1234));
        let placed = plan_layout(1024 * MIB, 512, &plan, None).unwrap();
        let guid = Uuid::new_v4();
        write_gpt_with_guid(f.path(), guid, &placed).unwrap();
        let table = read_gpt_table(f.path()).unwrap();
        assert!(table.primary_ok && table.backup_ok);
        assert_eq!(table.disk_guid, guid);
        assert_eq!(table.first_usable, 34);
        let want: Vec<_> = placed.iter().map(|p| p.to_entry()).collect();
        assert_eq!(table.partitions, want);
        assert_eq!(table.partitions[1].label, "Root Ä");

        // Damage the primary header: the backup still gives the same table.
        let mut file = OpenOptions::new().write(true).open(f.path()).unwrap();
        file.seek(SeekFrom::Start(512 + 40)).unwrap();
        file.write_all(&[0xff; 4]).unwrap();
        drop(file);
        let table2 = read_gpt_table(f.path()).unwrap();
        assert!(!table2.primary_ok && table2.backup_ok);
        assert_eq!(table2.partitions, want);

        // Wiped: a clear error.
        wipe_gpt(f.path()).unwrap();
        let err = read_gpt(f.path()).unwrap_err();
        let te = crate::error::find_trident_error(&err).unwrap();
        assert_eq!(te.code, "no-partition-table");
    }

    #[test]
    fn write_refuses_overlaps_and_out_of_range() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(100 * MIB).unwrap();
        let plan = DiskPlan {
            partitions: vec![
                part("a", PartSize::Fixed(10 * MIB)),
                part("b", PartSize::Grow),
            ],
            adopted: vec![],
        };
        let mut placed = plan_layout(100 * MIB, 512, &plan, None).unwrap();
        placed[1].first_lba = placed[0].last_lba;
        let e = write_gpt(f.path(), &placed).unwrap_err();
        assert!(format!("{e:#}").contains("overlap"), "{e:#}");
        let mut placed = plan_layout(100 * MIB, 512, &plan, None).unwrap();
        placed[1].last_lba = 100 * 2048;
        let e = write_gpt(f.path(), &placed).unwrap_err();
        assert!(format!("{e:#}").contains("outside the usable"), "{e:#}");
    }

    // --- disk images in memory, encoded independently of the writer above --------

    pub(crate) fn guid_bytes(s: &str) -> [u8; 16] {
        let hexs: String = s.chars().filter(|c| *c != '-').collect();
        let raw: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&hexs[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
        b[4..6].copy_from_slice(&[raw[5], raw[4]]);
        b[6..8].copy_from_slice(&[raw[7], raw[6]]);
        b[8..].copy_from_slice(&raw[8..]);
        b
    }

    /// A disk image in memory with only a primary GPT (no backup):
    /// (type, uuid, name, first, last) per entry.
    pub(crate) fn make_gpt(
        lba: usize,
        lbas: usize,
        parts: &[(&str, &str, &str, u64, u64)],
    ) -> Vec<u8> {
        let mut d = vec![0u8; lba * lbas];
        d[510] = 0x55;
        d[511] = 0xAA;
        let mut arr = vec![0u8; 128 * 128];
        for (i, (t, u, n, f, l)) in parts.iter().enumerate() {
            let e = &mut arr[i * 128..(i + 1) * 128];
            e[..16].copy_from_slice(&guid_bytes(t));
            e[16..32].copy_from_slice(&guid_bytes(u));
            e[32..40].copy_from_slice(&f.to_le_bytes());
            e[40..48].copy_from_slice(&l.to_le_bytes());
            for (k, u) in n.encode_utf16().enumerate() {
                e[56 + 2 * k..58 + 2 * k].copy_from_slice(&u.to_le_bytes());
            }
        }
        let entries_lba = 2u64;
        d[entries_lba as usize * lba..entries_lba as usize * lba + arr.len()].copy_from_slice(&arr);
        let mut h = vec![0u8; 92];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[32..40].copy_from_slice(&(lbas as u64 - 1).to_le_bytes());
        let first_usable = entries_lba + (arr.len() / lba) as u64;
        h[40..48].copy_from_slice(&first_usable.to_le_bytes());
        h[48..56].copy_from_slice(&(lbas as u64 - 34).to_le_bytes());
        h[56..72].copy_from_slice(&guid_bytes("11111111-2222-3333-4444-555555555555"));
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32(&arr).to_le_bytes());
        let c = crc32(&h);
        h[16..20].copy_from_slice(&c.to_le_bytes());
        d[lba..lba + 92].copy_from_slice(&h);
        d
    }

    /// A [`ReadAt`] over bytes in memory.
    pub(crate) fn mem_reader(d: &[u8]) -> impl FnMut(u64, usize) -> Result<Vec<u8>> + '_ {
        |o, l| {
            let o = o as usize;
            ensure!(o + l <= d.len(), "read past the end");
            Ok(d[o..o + l].to_vec())
        }
    }

    fn read_mem(d: &[u8]) -> Result<GptImage> {
        read_gpt_image("mem", d.len() as u64, &mut mem_reader(d))
    }

    pub(crate) const LINUX: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
    pub(crate) const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";

    /// 512-byte sectors: entry 1 `root` at 2048..=3000, entry 2 `esp` at 100..=2047
    /// (so entry order is not disk order), no backup GPT.
    pub(crate) fn root_and_esp_image() -> Vec<u8> {
        make_gpt(
            512,
            4096,
            &[
                (
                    LINUX,
                    "aaaaaaaa-0000-0000-0000-000000000002",
                    "root",
                    2048,
                    3000,
                ),
                (
                    ESP,
                    "AAAAAAAA-0000-0000-0000-000000000001",
                    "esp",
                    100,
                    2047,
                ),
            ],
        )
    }

    #[test]
    fn image_entries_parse_from_independent_encoding() {
        let d = root_and_esp_image();
        let g = read_mem(&d).unwrap();
        let t = &g.table;
        assert_eq!(t.sector_size, 512);
        assert!(t.primary_ok && !t.backup_ok);
        assert_eq!(
            t.disk_guid.to_string(),
            "11111111-2222-3333-4444-555555555555"
        );
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(t.partitions[1].number, 2);
        assert_eq!(t.partitions[1].label, "esp");
        assert_eq!(t.partitions[1].type_guid, PartitionType::Esp.guid());
        assert_eq!(
            t.partitions[1].uuid.to_string(),
            "aaaaaaaa-0000-0000-0000-000000000001"
        );
        assert_eq!(t.partitions[0].number, 1);
        assert_eq!(t.partitions[0].label, "root");
        assert_eq!(t.partitions[0].size(), (3000 - 2048 + 1) * 512);
        assert_eq!(t.partitions[1].offset(), 100 * 512);
        assert_eq!(g.primary_len, Some(34 * 512));
        t.check_layout(d.len() as u64).unwrap();
    }

    #[test]
    fn image_with_4k_sectors() {
        let d = make_gpt(
            4096,
            256,
            &[(LINUX, "aaaaaaaa-0000-0000-0000-000000000002", "r", 10, 20)],
        );
        let g = read_mem(&d).unwrap();
        assert_eq!(g.table.sector_size, 4096);
        assert_eq!(g.primary_len, Some(6 * 4096));
        assert_eq!(g.table.partitions[0].offset(), 10 * 4096);
        assert_eq!(g.table.partitions[0].size(), 11 * 4096);
    }

    #[test]
    fn image_sector_size_from_the_backup_when_the_primary_is_gone() {
        // Written by our writer (512-byte sectors, both copies), primary wiped.
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(64 * MIB).unwrap();
        let plan = DiskPlan {
            partitions: vec![part("a", PartSize::Grow)],
            adopted: vec![],
        };
        let placed = plan_layout(64 * MIB, 512, &plan, None).unwrap();
        write_gpt(f.path(), &placed).unwrap();
        let mut d = std::fs::read(f.path()).unwrap();
        d[512..1024].fill(0);
        assert_eq!(
            detect_sector_size(d.len() as u64, &mut mem_reader(&d)).unwrap(),
            512
        );
        let g = read_mem(&d).unwrap();
        assert_eq!(g.primary_len, None);
        assert!(!g.table.primary_ok && g.table.backup_ok);
        assert_eq!(g.table.partitions, vec![placed[0].to_entry()]);
        // Same table through the file reader.
        let file = File::open(f.path()).unwrap();
        let t = read_gpt_table_from("f", 64 * MIB, 512, &mut file_reader(&file)).unwrap();
        assert_eq!(t.partitions, vec![placed[0].to_entry()]);
    }

    #[test]
    fn image_without_gpt_or_with_corruption_is_refused() {
        let zero = vec![0u8; 1 << 20];
        let e = read_mem(&zero).unwrap_err();
        assert_eq!(
            crate::error::find_trident_error(&e).unwrap().code,
            "no-partition-table"
        );
        assert!(format!("{e:#}").contains("no valid GPT"), "{e:#}");
        let e = read_mem(&[0u8; 1024]).unwrap_err();
        assert!(format!("{e:#}").contains("too small"), "{e:#}");
        let mut d = make_gpt(
            512,
            4096,
            &[(LINUX, "aaaaaaaa-0000-0000-0000-000000000002", "r", 100, 200)],
        );
        d[1024 + 56] ^= 1; // first entry's name: entry array CRC now wrong
        let msg = format!("{:#}", read_mem(&d).unwrap_err());
        assert!(msg.contains("entry array CRC32"), "{msg}");
        let mut d = make_gpt(
            512,
            4096,
            &[(LINUX, "aaaaaaaa-0000-0000-0000-000000000002", "r", 100, 200)],
        );
        d[512 + 40] ^= 1; // header field: header CRC now wrong
        let msg = format!("{:#}", read_mem(&d).unwrap_err());
        assert!(msg.contains("header CRC32"), "{msg}");
        // A failing read is reported, not taken for a missing table.
        let mut failing = |_: u64, _: usize| -> Result<Vec<u8>> { bail!("I/O error") };
        let e = read_gpt_image("x", 1 << 20, &mut failing).unwrap_err();
        assert!(format!("{e:#}").contains("I/O error"), "{e:#}");
    }

    #[test]
    fn check_layout_refuses_overlap_and_out_of_range() {
        let d = make_gpt(
            512,
            4096,
            &[
                (LINUX, "aaaaaaaa-0000-0000-0000-000000000001", "a", 100, 200),
                (LINUX, "aaaaaaaa-0000-0000-0000-000000000002", "b", 200, 300),
            ],
        );
        let t = read_mem(&d).unwrap().table;
        let msg = format!("{:#}", t.check_layout(d.len() as u64).unwrap_err());
        assert!(msg.contains("overlap"), "{msg}");
        let d = make_gpt(
            512,
            4096,
            &[(
                LINUX,
                "aaaaaaaa-0000-0000-0000-000000000001",
                "a",
                100,
                5000,
            )],
        );
        let t = read_mem(&d).unwrap().table;
        let msg = format!("{:#}", t.check_layout(d.len() as u64).unwrap_err());
        assert!(msg.contains("outside"), "{msg}");
        // The usable range must fit the disk.
        let d = make_gpt(512, 4096, &[]);
        let t = read_mem(&d).unwrap().table;
        assert!(t.check_layout(d.len() as u64).is_ok());
        assert!(t.check_layout(2048 * 512).is_err());
    }
}
