//! The `metadata.json` the builder writes (COSI 1.2), as serializable types.

use super::esp::Bootloader;
use super::packages::Package;
use serde::Serialize;

/// COSI metadata version written by the builder.
pub const COSI_VERSION: &str = "1.2";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageFile {
    pub path: String,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub sha384: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Filesystem {
    pub image: ImageFile,
    pub mount_point: String,
    pub fs_type: String,
    pub fs_uuid: String,
    pub part_type: String,
    /// Always `null`: the builder does not produce verity images.
    pub verity: Option<()>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GptRegion {
    pub image: ImageFile,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub size: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub lba_size: u64,
    pub gpt_regions: Vec<GptRegion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Compression {
    pub max_window_log: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CosiMetadata {
    pub version: String,
    pub id: String,
    pub os_arch: String,
    pub os_release: String,
    pub images: Vec<Filesystem>,
    pub disk: Disk,
    pub os_packages: Vec<Package>,
    pub bootloader: Bootloader,
    pub compression: Compression,
}

impl CosiMetadata {
    /// Every [`ImageFile`] (filesystems and GPT regions), mutably.
    pub fn image_files_mut(&mut self) -> impl Iterator<Item = &mut ImageFile> {
        self.images
            .iter_mut()
            .map(|f| &mut f.image)
            .chain(self.disk.gpt_regions.iter_mut().map(|r| &mut r.image))
    }

    /// Serialize, pretty-printed, padded with spaces before the final newline to
    /// exactly `len` bytes (JSON allows trailing whitespace). `None` if it does not fit.
    pub fn to_padded_json(&self, len: usize) -> Option<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self).ok()?;
        if v.len() + 1 > len {
            return None;
        }
        v.resize(len - 1, b' ');
        v.push(b'\n');
        Some(v)
    }

    /// The largest this metadata can serialize to once every image's sizes and hashes
    /// are known: all numbers at their widest, hashes at their fixed width.
    pub fn max_json_len(&self) -> usize {
        let mut m = self.clone();
        for f in m.image_files_mut() {
            f.compressed_size = u64::MAX;
            f.uncompressed_size = u64::MAX;
            f.sha384 = "f".repeat(96);
        }
        m.compression.max_window_log = u32::MAX;
        serde_json::to_vec_pretty(&m).map(|v| v.len()).unwrap_or(0) + 1
    }
}
