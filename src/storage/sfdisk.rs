//! Parser of `sfdisk --json` output, used to cross-check the tables we write against
//! an independent implementation (util-linux).

use crate::cmd::Cmd;
use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Deserialize)]
struct Document {
    partitiontable: SfdiskTable,
}

/// A partition table as `sfdisk --json` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SfdiskTable {
    /// `gpt` or `dos`.
    pub label: String,
    /// Disk GUID (GPT) or disk identifier (MBR).
    pub id: Option<String>,
    pub device: String,
    pub unit: String,
    pub firstlba: Option<u64>,
    pub lastlba: Option<u64>,
    pub sectorsize: Option<u64>,
    #[serde(default)]
    pub partitions: Vec<SfdiskPartition>,
}

/// One partition; `start` and `size` in sectors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SfdiskPartition {
    pub node: String,
    pub start: u64,
    pub size: u64,
    /// Type GUID (upper case) for GPT, hex code for MBR.
    #[serde(rename = "type")]
    pub type_: String,
    pub uuid: Option<String>,
    pub name: Option<String>,
    pub attrs: Option<String>,
}

impl SfdiskPartition {
    /// The partition number, from the trailing digits of `node`.
    pub fn number(&self) -> Option<u32> {
        let digits: String = self
            .node
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_digit())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        digits.parse().ok()
    }
}

/// Parse the JSON printed by `sfdisk --json`.
pub fn parse(json: &str) -> Result<SfdiskTable> {
    let doc: Document = serde_json::from_str(json).context("parsing sfdisk --json output")?;
    Ok(doc.partitiontable)
}

/// Run `sfdisk --json DEVICE` and parse its output.
pub fn dump(device: &Path) -> Result<SfdiskTable> {
    let out = Cmd::new("sfdisk")
        .arg("--json")
        .arg(device)
        .output_string()
        .with_context(|| format!("dumping the partition table of {}", device.display()))?;
    parse(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fixture() {
        let json = include_str!("../../tests/fixtures/storage/sfdisk-gpt.json");
        let t = parse(json).unwrap();
        assert_eq!(t.label, "gpt");
        assert_eq!(
            t.id.as_deref(),
            Some("6E1F3A59-1B2C-4D5E-8F90-A1B2C3D4E5F6")
        );
        assert_eq!(t.sectorsize, Some(512));
        assert_eq!((t.firstlba, t.lastlba), (Some(2048), Some(204766)));
        assert_eq!(t.partitions.len(), 3);
        let p = &t.partitions[0];
        assert_eq!(p.number(), Some(1));
        assert_eq!((p.start, p.size), (2048, 20480));
        assert_eq!(p.type_, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(
            p.uuid.as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
        assert_eq!(p.name.as_deref(), Some("esp"));
        assert_eq!(p.attrs, None);
        let v = &t.partitions[2];
        assert_eq!(v.number(), Some(3));
        assert_eq!(v.name.as_deref(), Some("var data"));
        assert_eq!(v.attrs.as_deref(), Some("GUID:59"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("{}").is_err());
        assert!(parse("not json").is_err());
    }

    /// Our writer against util-linux's reader, on a sparse file (no root needed).
    #[test]
    fn sfdisk_reads_our_table() {
        use crate::storage::gpt::*;
        use crate::storage::parttypes::PartitionType;
        if !crate::cmd::have_program("sfdisk") {
            eprintln!("skipping: sfdisk not installed (Debian package fdisk)");
            return;
        }
        const MIB: u64 = 1 << 20;
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(512 * MIB).unwrap();
        let plan = DiskPlan {
            partitions: vec![
                PartitionPlan {
                    id: "esp".into(),
                    type_guid: PartitionType::Esp.guid(),
                    size: PartSize::Fixed(64 * MIB),
                    label: Some("EFI system".into()),
                    uuid: Some(uuid::Uuid::from_u128(0xabcdef)),
                },
                PartitionPlan {
                    id: "root".into(),
                    type_guid: PartitionType::Root.guid(),
                    size: PartSize::Grow,
                    label: None,
                    uuid: None,
                },
            ],
            adopted: vec![],
        };
        let placed = plan_layout(512 * MIB, 512, &plan, None).unwrap();
        let guid = uuid::Uuid::new_v4();
        write_gpt_with_guid(f.path(), guid, &placed).unwrap();
        let t = dump(f.path()).unwrap();
        assert_eq!(t.label, "gpt");
        assert_eq!(t.id.unwrap().to_lowercase(), guid.to_string());
        assert_eq!(t.firstlba, Some(34));
        assert_eq!(t.lastlba, Some(512 * 2048 - 34));
        assert_eq!(t.partitions.len(), 2);
        for (s, p) in t.partitions.iter().zip(&placed) {
            assert_eq!(s.number(), Some(p.number));
            assert_eq!(s.start, p.first_lba);
            assert_eq!(s.size, p.last_lba + 1 - p.first_lba);
            assert_eq!(s.type_.to_lowercase(), p.type_guid.to_string());
            assert_eq!(
                s.uuid.as_deref().unwrap().to_lowercase(),
                p.uuid.to_string()
            );
            assert_eq!(s.name.as_deref(), Some(p.label.as_str()));
        }
        // sfdisk's consistency check, with stderr: it falls back to the backup GPT
        // with only a warning there when the primary is corrupt (exit status 0).
        let out = Cmd::new("sh")
            .args(["-c", "sfdisk --verify \"$1\" 2>&1", "sh"])
            .arg(f.path())
            .output_string()
            .unwrap();
        assert!(out.contains("No errors detected"), "{out}");
        assert!(!out.to_lowercase().contains("corrupt"), "{out}");

        // Our backup GPT alone, as util-linux reads it, gives the same partitions.
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(f.path())
            .unwrap();
        file.seek(SeekFrom::Start(512)).unwrap();
        file.write_all(&[0u8; 512]).unwrap();
        drop(file);
        let from_backup = dump(f.path()).unwrap();
        assert_eq!(from_backup.partitions, t.partitions);
    }
}
