//! Parser of `lsblk --json -b -O` output (a tree of block devices with sizes in bytes).
//!
//! Without udev, lsblk probes devices itself (libblkid), which needs root for
//! filesystem details. Trident resolves partitions from the partition table; lsblk is
//! for diagnostics and cross-checks.

use crate::cmd::Cmd;
use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Deserialize)]
struct Document {
    blockdevices: Vec<LsblkDevice>,
}

/// One device of the tree (only the fields Trident reads; others are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LsblkDevice {
    pub name: String,
    pub kname: Option<String>,
    pub path: Option<String>,
    #[serde(rename = "maj:min")]
    pub maj_min: Option<String>,
    /// Bytes (with `-b`).
    pub size: Option<u64>,
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub fstype: Option<String>,
    pub label: Option<String>,
    pub uuid: Option<String>,
    pub pttype: Option<String>,
    pub ptuuid: Option<String>,
    pub parttype: Option<String>,
    pub partlabel: Option<String>,
    pub partuuid: Option<String>,
    #[serde(rename = "log-sec")]
    pub log_sec: Option<u64>,
    /// Partition start in sectors (newer lsblk).
    pub start: Option<u64>,
    #[serde(default)]
    pub mountpoints: Vec<Option<String>>,
    #[serde(default)]
    pub children: Vec<LsblkDevice>,
}

impl LsblkDevice {
    /// Mount points, without the `null` entries lsblk prints for unmounted devices.
    pub fn mounted_at(&self) -> Vec<&str> {
        self.mountpoints
            .iter()
            .flatten()
            .map(String::as_str)
            .collect()
    }

    /// This device and all its descendants, depth first.
    pub fn walk(&self) -> Vec<&LsblkDevice> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.walk());
        }
        out
    }
}

/// Parse `lsblk --json -b -O` output.
pub fn parse(json: &str) -> Result<Vec<LsblkDevice>> {
    let doc: Document = serde_json::from_str(json).context("parsing lsblk --json output")?;
    Ok(doc.blockdevices)
}

/// Run `lsblk --json -b -O DEVICE` and parse its output.
pub fn lsblk(device: &Path) -> Result<LsblkDevice> {
    let out = Cmd::new("lsblk")
        .args(["--json", "-b", "-O"])
        .arg(device)
        .output_string()
        .with_context(|| format!("listing {}", device.display()))?;
    parse(&out)?
        .into_iter()
        .next()
        .with_context(|| format!("lsblk printed nothing for {}", device.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture is real output for a loop device with a GPT (esp 32 MiB, root-a
    /// ext4 mounted) on a host without udev: lsblk then reports sizes, numbers and
    /// mount points but no table/filesystem fields (`pttype`, `fstype`, `partlabel`
    /// are null), which is why Trident reads the GPT and superblocks itself.
    #[test]
    fn parses_fixture() {
        let json = include_str!("../../tests/fixtures/storage/lsblk-loop.json");
        let devs = parse(json).unwrap();
        assert_eq!(devs.len(), 1);
        let disk = &devs[0];
        assert_eq!(disk.name, "loop0");
        assert_eq!(disk.type_.as_deref(), Some("loop"));
        assert_eq!(disk.size, Some(256 << 20));
        assert_eq!(disk.log_sec, Some(512));
        assert_eq!(disk.pttype, None);
        assert_eq!(disk.children.len(), 2);
        let p1 = &disk.children[0];
        assert_eq!(p1.type_.as_deref(), Some("part"));
        assert_eq!(p1.maj_min.as_deref(), Some("259:0"));
        assert_eq!(p1.size, Some(32 << 20));
        assert_eq!(p1.start, Some(2048));
        assert_eq!(p1.partlabel, None);
        let p2 = &disk.children[1];
        assert_eq!(p2.path.as_deref(), Some("/dev/loop0p2"));
        assert_eq!(p2.start, Some(67584));
        assert_eq!(p2.mounted_at(), vec!["/tmp/lsblk-fixture-mnt"]);
        assert!(p1.mounted_at().is_empty());
        assert_eq!(disk.walk().len(), 3);
    }
}
