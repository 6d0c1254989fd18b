//! A small reader for the primary GPT of a disk image.
//!
//! Pure parsing over a byte-reading closure: finds the header at LBA 1 for 512- or
//! 4096-byte logical blocks, checks the signature and both CRC32s, and returns the used
//! partition entries sorted by start LBA (disk order) with their 1-based entry index.

use crate::TridentError;
use anyhow::{bail, ensure, Context, Result};

/// The EFI System Partition type GUID.
pub const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";

/// The parsed primary GPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptDisk {
    pub lba_size: u64,
    pub disk_size: u64,
    pub disk_guid: String,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub entries_lba: u64,
    pub num_entries: u32,
    pub entry_size: u32,
    /// Used entries in disk order (increasing start LBA).
    pub partitions: Vec<GptPartition>,
}

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    /// 1-based index of the entry in the partition entry array.
    pub number: u32,
    /// Lower-case type GUID.
    pub type_guid: String,
    /// Lower-case unique partition GUID.
    pub part_uuid: String,
    /// The partition name (GPT label), UTF-16LE decoded.
    pub name: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
}

impl GptPartition {
    pub fn offset(&self, lba_size: u64) -> u64 {
        self.first_lba * lba_size
    }
    pub fn size(&self, lba_size: u64) -> u64 {
        (self.last_lba - self.first_lba + 1) * lba_size
    }
}

impl GptDisk {
    /// Bytes from the start of the disk through the end of the primary partition entry
    /// array: protective MBR, header, entries. This is the COSI `primary-gpt` region.
    pub fn primary_region_len(&self) -> u64 {
        let entry_bytes = u64::from(self.num_entries) * u64::from(self.entry_size);
        (self.entries_lba + entry_bytes.div_ceil(self.lba_size)) * self.lba_size
    }

    /// Look up a partition by its 1-based entry index.
    pub fn by_number(&self, n: u32) -> Option<&GptPartition> {
        self.partitions.iter().find(|p| p.number == n)
    }
}

/// CRC-32 (IEEE 802.3, reflected), as used by GPT.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

/// Format a GUID stored in GPT's mixed-endian layout as a lower-case UUID string.
pub fn guid_to_string(b: &[u8]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15]
    )
}

fn u32le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64le(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Parse the primary GPT. `read_at(offset, len)` returns exactly `len` bytes.
pub fn parse(disk_size: u64, read_at: &dyn Fn(u64, usize) -> Result<Vec<u8>>) -> Result<GptDisk> {
    let not_gpt = |why: String| {
        anyhow::Error::new(TridentError::invalid_input(
            "cosi-build-not-gpt",
            format!("the disk image has no valid GPT: {why}"),
        ))
    };
    let mut found = None;
    for lba_size in [512u64, 4096] {
        if disk_size < lba_size * 3 {
            continue;
        }
        let hdr = read_at(lba_size, 512).context("reading the GPT header")?;
        if &hdr[..8] == b"EFI PART" {
            found = Some((lba_size, hdr));
            break;
        }
    }
    let Some((lba_size, hdr)) = found else {
        return Err(not_gpt("no \"EFI PART\" signature at LBA 1".into()));
    };
    let hdr_size = u32le(&hdr, 12) as usize;
    if !(92..=512).contains(&hdr_size) {
        return Err(not_gpt(format!("header size {hdr_size} is out of range")));
    }
    let mut h = hdr[..hdr_size].to_vec();
    let stored_crc = u32le(&h, 16);
    h[16..20].fill(0);
    if crc32(&h) != stored_crc {
        return Err(not_gpt("header CRC32 mismatch".into()));
    }
    if disk_size % lba_size != 0 {
        return Err(not_gpt(format!(
            "disk size {disk_size} is not a multiple of the {lba_size}-byte LBA"
        )));
    }
    let first_usable_lba = u64le(&hdr, 40);
    let last_usable_lba = u64le(&hdr, 48);
    let disk_guid = guid_to_string(&hdr[56..72]);
    let entries_lba = u64le(&hdr, 72);
    let num_entries = u32le(&hdr, 80);
    let entry_size = u32le(&hdr, 84);
    let entries_crc = u32le(&hdr, 88);
    if entry_size < 128 || entry_size % 8 != 0 || num_entries == 0 || num_entries > 4096 {
        return Err(not_gpt(format!(
            "implausible partition entry array ({num_entries} entries of {entry_size} bytes)"
        )));
    }
    let array_len = num_entries as usize * entry_size as usize;
    if entries_lba < 2 || (entries_lba * lba_size + array_len as u64) > disk_size {
        return Err(not_gpt(format!(
            "partition entry array at LBA {entries_lba} is outside the disk"
        )));
    }
    let arr = read_at(entries_lba * lba_size, array_len).context("reading GPT entries")?;
    if crc32(&arr) != entries_crc {
        return Err(not_gpt("partition entry array CRC32 mismatch".into()));
    }
    let last_lba = disk_size / lba_size - 1;
    ensure!(
        first_usable_lba <= last_usable_lba && last_usable_lba <= last_lba,
        "GPT usable range {first_usable_lba}..={last_usable_lba} does not fit a disk of {} LBAs",
        last_lba + 1
    );
    let mut partitions = Vec::new();
    for i in 0..num_entries as usize {
        let e = &arr[i * entry_size as usize..(i + 1) * entry_size as usize];
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let p = GptPartition {
            number: i as u32 + 1,
            type_guid: guid_to_string(&e[..16]),
            part_uuid: guid_to_string(&e[16..32]),
            name: String::from_utf16_lossy(&units),
            first_lba: u64le(e, 32),
            last_lba: u64le(e, 40),
            attributes: u64le(e, 48),
        };
        if p.first_lba > p.last_lba
            || p.first_lba < first_usable_lba
            || p.last_lba > last_usable_lba
        {
            bail!(
                "GPT partition {} spans LBA {}..={}, outside the usable range {}..={}",
                p.number,
                p.first_lba,
                p.last_lba,
                first_usable_lba,
                last_usable_lba
            );
        }
        partitions.push(p);
    }
    partitions.sort_by_key(|p| p.first_lba);
    for w in partitions.windows(2) {
        if w[1].first_lba <= w[0].last_lba {
            bail!("GPT partitions {} and {} overlap", w[0].number, w[1].number);
        }
    }
    Ok(GptDisk {
        lba_size,
        disk_size,
        disk_guid,
        first_usable_lba,
        last_usable_lba,
        entries_lba,
        num_entries,
        entry_size,
        partitions,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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

    /// Build a GPT disk image in memory: (type, uuid, name, first, last) per entry.
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

    fn parse_mem(d: &[u8]) -> Result<GptDisk> {
        parse(d.len() as u64, &|o, l| {
            Ok(d[o as usize..o as usize + l].to_vec())
        })
    }

    const LINUX: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn parses_entries_in_disk_order() {
        let d = make_gpt(
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
                    ESP_TYPE,
                    "AAAAAAAA-0000-0000-0000-000000000001",
                    "esp",
                    100,
                    2047,
                ),
            ],
        );
        let g = parse_mem(&d).unwrap();
        assert_eq!(g.lba_size, 512);
        assert_eq!(g.disk_guid, "11111111-2222-3333-4444-555555555555");
        assert_eq!(g.partitions.len(), 2);
        assert_eq!(g.partitions[0].number, 2);
        assert_eq!(g.partitions[0].name, "esp");
        assert_eq!(g.partitions[0].type_guid, ESP_TYPE);
        assert_eq!(
            g.partitions[0].part_uuid,
            "aaaaaaaa-0000-0000-0000-000000000001"
        );
        assert_eq!(g.partitions[1].number, 1);
        assert_eq!(g.partitions[1].size(512), (3000 - 2048 + 1) * 512);
        assert_eq!(g.primary_region_len(), 34 * 512);
        assert_eq!(g.by_number(1).unwrap().name, "root");
    }

    #[test]
    fn parses_4k_lba() {
        let d = make_gpt(
            4096,
            256,
            &[(LINUX, "aaaaaaaa-0000-0000-0000-000000000002", "r", 10, 20)],
        );
        let g = parse_mem(&d).unwrap();
        assert_eq!(g.lba_size, 4096);
        assert_eq!(g.primary_region_len(), 6 * 4096);
    }

    #[test]
    fn rejects_non_gpt_and_corruption() {
        let zero = vec![0u8; 1 << 20];
        let e = parse_mem(&zero).unwrap_err();
        assert_eq!(
            crate::error::find_trident_error(&e).unwrap().code,
            "cosi-build-not-gpt"
        );
        let mut d = make_gpt(
            512,
            4096,
            &[(LINUX, "aaaaaaaa-0000-0000-0000-000000000002", "r", 100, 200)],
        );
        d[1024 + 56] ^= 1; // first entry's name: entry array CRC now wrong
        let msg = format!("{:#}", parse_mem(&d).unwrap_err());
        assert!(msg.contains("entry array CRC32"), "{msg}");
        let mut d = make_gpt(
            512,
            4096,
            &[(LINUX, "aaaaaaaa-0000-0000-0000-000000000002", "r", 100, 200)],
        );
        d[512 + 40] ^= 1; // header field: header CRC now wrong
        let msg = format!("{:#}", parse_mem(&d).unwrap_err());
        assert!(msg.contains("header CRC32"), "{msg}");
    }

    #[test]
    fn rejects_overlap_and_out_of_range() {
        let d = make_gpt(
            512,
            4096,
            &[
                (LINUX, "aaaaaaaa-0000-0000-0000-000000000001", "a", 100, 200),
                (LINUX, "aaaaaaaa-0000-0000-0000-000000000002", "b", 200, 300),
            ],
        );
        assert!(format!("{:#}", parse_mem(&d).unwrap_err()).contains("overlap"));
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
        assert!(format!("{:#}", parse_mem(&d).unwrap_err()).contains("outside"));
    }
}
