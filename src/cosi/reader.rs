//! Opening a COSI file: locate and validate, never extract.
//!
//! [`Cosi::open`] walks the tar over a [`Source`], checks the `cosi-marker`, reads
//! `metadata.json`, verifies its SHA-384 against the Host Configuration's value, parses
//! and validates it, and maps every image the metadata names to its tar member
//! (offset and size). Streaming and hashing the image bytes is `stream.rs`'s job; this
//! module only says where they are and refuses archives that are unsafe or
//! inconsistent.

// `TridentError` is the project's error value (136 bytes); these are cold paths.
#![allow(clippy::result_large_err)]

use crate::cosi::metadata::{
    metadata_sha384, Bootloader, CosiMetadata, ImageFile, OsArch, RegionType,
};
use crate::cosi::source::Source;
use crate::cosi::tar::{self, MemberKind, TarIndex, TarMember};
use crate::error::{TridentError, TridentErrors};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Read;

/// Name of the empty marker member that starts every COSI (>= 1.2) file.
pub const MARKER: &str = "cosi-marker";
/// Name of the metadata member.
pub const METADATA: &str = "metadata.json";
/// Largest `metadata.json` read into memory.
pub const MAX_METADATA_SIZE: u64 = 64 * 1024 * 1024;

pub const E_MISSING_MARKER: &str = "cosi-missing-marker";
pub const E_BAD_MARKER: &str = "cosi-bad-marker";
pub const E_MISSING_METADATA: &str = "cosi-missing-metadata";
pub const E_METADATA_NOT_REGULAR: &str = "cosi-metadata-not-regular-file";
pub const E_METADATA_TOO_LARGE: &str = "cosi-metadata-too-large";
pub const E_METADATA_HASH_MISMATCH: &str = "cosi-metadata-hash-mismatch";
pub const E_BAD_EXPECTED_HASH: &str = "cosi-invalid-expected-sha384";
pub const E_UNSAFE_PATH: &str = "cosi-unsafe-member-path";
pub const E_LINK_MEMBER: &str = "cosi-link-member";
pub const E_DUPLICATE_MEMBER: &str = "cosi-duplicate-member";
pub const E_IMAGE_MISSING: &str = "cosi-image-member-missing";
pub const E_IMAGE_NOT_REGULAR: &str = "cosi-image-not-regular-file";
pub const E_IMAGE_SIZE_MISMATCH: &str = "cosi-image-size-mismatch";

/// An image's bytes inside the COSI file, with what the metadata promises about them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageMember {
    /// Member path (`images/...`).
    pub path: String,
    /// Offset of the first compressed byte in the COSI file.
    pub data_offset: u64,
    /// Compressed length (metadata `compressedSize`, equal to the tar member size).
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    /// SHA-384 of the compressed bytes (lowercase hex); absent only in 1.0 metadata.
    pub sha384: Option<String>,
}

/// A verity hash image and its root hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CosiVerity {
    pub image: ImageMember,
    pub roothash: String,
}

/// A filesystem image of the COSI file, located.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CosiImage {
    pub mount_point: String,
    pub fs_type: String,
    pub fs_uuid: String,
    /// GPT partition type GUID (lowercase).
    pub part_type: String,
    pub image: ImageMember,
    pub verity: Option<CosiVerity>,
}

/// A region of the original disk (COSI >= 1.2), located.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CosiRegion {
    #[serde(rename = "type")]
    pub kind: RegionType,
    pub number: Option<u32>,
    pub start_lba: Option<u64>,
    pub image: ImageMember,
}

/// An opened, validated COSI file.
pub struct Cosi {
    source: Box<dyn Source>,
    index: TarIndex,
    file_size: u64,
    metadata: CosiMetadata,
    metadata_raw: Vec<u8>,
    metadata_sha384: String,
    images: Vec<CosiImage>,
    regions: Vec<CosiRegion>,
}

impl std::fmt::Debug for Cosi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cosi")
            .field("source", &self.source.describe())
            .field("metadata_sha384", &self.metadata_sha384)
            .field("images", &self.images)
            .finish_non_exhaustive()
    }
}

/// Validate the HC's hash string (96 hex digits) and lowercase it.
fn parse_expected(hash: &str) -> std::result::Result<String, TridentError> {
    if crate::cosi::metadata::is_sha384_hex(hash) {
        Ok(hash.to_ascii_lowercase())
    } else {
        Err(TridentError::invalid_input(
            E_BAD_EXPECTED_HASH,
            format!("{hash:?} is not a SHA-384 hash (96 hex digits)"),
        ))
    }
}

/// Refuse members that could escape an extraction directory or alias another member.
/// Pure; `walk` output in, first problem out.
pub fn check_members(members: &[TarMember]) -> std::result::Result<(), TridentError> {
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for m in members {
        let p = m.path.as_str();
        if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == "..") {
            return Err(TridentError::invalid_input(
                E_UNSAFE_PATH,
                format!(
                    "member {p:?} (header at offset {}) is absolute, empty or climbs out \
                     with '..'",
                    m.header_offset
                ),
            ));
        }
        if matches!(m.kind, MemberKind::Symlink | MemberKind::Hardlink) {
            let what = if m.kind == MemberKind::Symlink {
                "symbolic"
            } else {
                "hard"
            };
            return Err(TridentError::invalid_input(
                E_LINK_MEMBER,
                format!(
                    "member {p:?} is a {what} link to {:?}; COSI files must not contain links",
                    m.link_target.as_deref().unwrap_or("")
                ),
            ));
        }
        if let Some(first) = seen.insert(p, m.header_offset) {
            return Err(TridentError::invalid_input(
                E_DUPLICATE_MEMBER,
                format!(
                    "member {p:?} appears twice (headers at offsets {first} and {})",
                    m.header_offset
                ),
            ));
        }
    }
    Ok(())
}

/// Find the member for a metadata image and check it matches.
fn locate(
    index: &TarIndex,
    json_path: &str,
    f: &ImageFile,
) -> std::result::Result<ImageMember, TridentError> {
    let Some(m) = index.get(&f.path) else {
        return Err(TridentError::invalid_input(
            E_IMAGE_MISSING,
            format!(
                "image {} named by the metadata is not in the archive",
                f.path
            ),
        )
        .at(format!("{json_path}.path")));
    };
    if m.kind != MemberKind::Regular {
        return Err(TridentError::invalid_input(
            E_IMAGE_NOT_REGULAR,
            format!(
                "image {} is a {:?} member, not a regular file",
                f.path, m.kind
            ),
        )
        .at(format!("{json_path}.path")));
    }
    if m.size != f.compressed_size {
        return Err(TridentError::invalid_input(
            E_IMAGE_SIZE_MISMATCH,
            format!(
                "image {}: the metadata says {} compressed bytes, the archive holds {}",
                f.path, f.compressed_size, m.size
            ),
        )
        .at(format!("{json_path}.compressedSize")));
    }
    Ok(ImageMember {
        path: f.path.clone(),
        data_offset: m.data_offset,
        compressed_size: m.size,
        uncompressed_size: f.uncompressed_size,
        sha384: f.sha384.clone(),
    })
}

impl Cosi {
    /// Open and validate a COSI file.
    ///
    /// `expected_metadata_sha384` is the Host Configuration's `image.sha384` (hex, any
    /// case) or `None` when it says `ignored`.
    pub fn open(source: Box<dyn Source>, expected_metadata_sha384: Option<&str>) -> Result<Self> {
        let name = source.describe();
        Self::open_inner(source, expected_metadata_sha384)
            .with_context(|| format!("opening COSI file {name}"))
    }

    fn open_inner(source: Box<dyn Source>, expected: Option<&str>) -> Result<Self> {
        let dev = source.describe();
        let fail = |e: TridentError| -> anyhow::Error { e.on_device(dev.clone()).into() };
        let expected = expected.map(parse_expected).transpose().map_err(fail)?;

        let file_size = source
            .size()
            .with_context(|| format!("reading the size of {dev}"))?;
        let index = tar::walk(source.as_ref()).context("walking the tar headers")?;
        check_members(&index.members).map_err(fail)?;
        if index.trailing_bytes > 0 {
            tracing::debug!(
                source = %dev,
                bytes = index.trailing_bytes,
                "ignoring data after the end-of-archive marker"
            );
        }

        let marker_pos = index.members.iter().position(|m| m.path == MARKER);
        match marker_pos {
            Some(0) => {
                let m = &index.members[0];
                if m.kind != MemberKind::Regular || m.size != 0 {
                    return Err(fail(TridentError::invalid_input(
                        E_BAD_MARKER,
                        format!(
                            "{MARKER} must be an empty regular file, found a {:?} of {} bytes",
                            m.kind, m.size
                        ),
                    )));
                }
            }
            Some(i) => {
                return Err(fail(TridentError::invalid_input(
                    E_BAD_MARKER,
                    format!("{MARKER} must be the first member of the archive, found it at #{i}"),
                )))
            }
            None => {}
        }

        let Some(meta_member) = index.get(METADATA) else {
            let e = if marker_pos.is_none() {
                TridentError::invalid_input(
                    E_MISSING_MARKER,
                    format!("not a COSI file: neither {MARKER} nor {METADATA} is in the archive"),
                )
            } else {
                TridentError::invalid_input(
                    E_MISSING_METADATA,
                    format!("the archive has no {METADATA} at its root"),
                )
            };
            return Err(fail(e));
        };
        if meta_member.kind != MemberKind::Regular {
            return Err(fail(TridentError::invalid_input(
                E_METADATA_NOT_REGULAR,
                format!(
                    "{METADATA} is a {:?} member, not a regular file",
                    meta_member.kind
                ),
            )));
        }
        if meta_member.size > MAX_METADATA_SIZE {
            return Err(fail(TridentError::invalid_input(
                E_METADATA_TOO_LARGE,
                format!(
                    "{METADATA} is {} bytes, more than the {MAX_METADATA_SIZE} allowed",
                    meta_member.size
                ),
            )));
        }
        let expected_pos = if marker_pos.is_some() { 1 } else { 0 };
        if index.members.get(expected_pos).map(|m| m.path.as_str()) != Some(METADATA) {
            tracing::warn!(source = %dev, "{METADATA} is not right after {MARKER}");
        }
        let raw = source
            .read_exact_at(meta_member.data_offset, meta_member.size)
            .with_context(|| format!("reading {METADATA}"))?;
        let actual = metadata_sha384(&raw);
        if let Some(want) = &expected {
            if *want != actual {
                return Err(fail(TridentError::invalid_input(
                    E_METADATA_HASH_MISMATCH,
                    format!(
                        "the SHA-384 of {METADATA} is {actual}, the Host Configuration \
                         expects {want}"
                    ),
                )));
            }
        }

        let metadata = CosiMetadata::parse(&raw).map_err(|es| -> anyhow::Error {
            TridentErrors(es.0.into_iter().map(|e| e.on_device(dev.clone())).collect()).into()
        })?;
        if marker_pos.is_none() {
            if metadata.version >= crate::cosi::metadata::MetadataVersion::V1_2 {
                return Err(fail(TridentError::invalid_input(
                    E_MISSING_MARKER,
                    format!(
                        "COSI {} files must start with an empty {MARKER} member",
                        metadata.version
                    ),
                )));
            }
            tracing::info!(source = %dev, version = %metadata.version,
                "COSI file without {MARKER} (allowed before version 1.2)");
        }

        let mut images = Vec::new();
        for (i, fs) in metadata.images.iter().enumerate() {
            let image = locate(&index, &format!("images[{i}].image"), &fs.image).map_err(fail)?;
            let verity = match &fs.verity {
                Some(v) => Some(CosiVerity {
                    image: locate(&index, &format!("images[{i}].verity.image"), &v.image)
                        .map_err(fail)?,
                    roothash: v.roothash.clone(),
                }),
                None => None,
            };
            images.push(CosiImage {
                mount_point: fs.mount_point.clone(),
                fs_type: fs.fs_type.clone(),
                fs_uuid: fs.fs_uuid.clone(),
                part_type: fs.part_type.clone(),
                image,
                verity,
            });
        }
        let mut regions = Vec::new();
        if let Some(disk) = &metadata.disk {
            for (i, r) in disk.gpt_regions.iter().enumerate() {
                regions.push(CosiRegion {
                    kind: r.kind,
                    number: r.number,
                    start_lba: r.start_lba,
                    image: locate(&index, &format!("disk.gptRegions[{i}].image"), &r.image)
                        .map_err(fail)?,
                });
            }
        }

        tracing::info!(
            source = %dev,
            version = %metadata.version,
            images = images.len(),
            metadata_sha384 = %actual,
            "opened COSI file"
        );
        Ok(Self {
            source,
            index,
            file_size,
            metadata,
            metadata_raw: raw,
            metadata_sha384: actual,
            images,
            regions,
        })
    }

    pub fn source(&self) -> &dyn Source {
        self.source.as_ref()
    }
    pub fn metadata(&self) -> &CosiMetadata {
        &self.metadata
    }
    /// The raw `metadata.json` bytes (what the hash is over).
    pub fn metadata_bytes(&self) -> &[u8] {
        &self.metadata_raw
    }
    /// SHA-384 (lowercase hex) of `metadata.json`.
    pub fn metadata_sha384(&self) -> &str {
        &self.metadata_sha384
    }
    pub fn images(&self) -> &[CosiImage] {
        &self.images
    }
    /// Disk regions (COSI >= 1.2), primary GPT first; empty before 1.2.
    pub fn regions(&self) -> &[CosiRegion] {
        &self.regions
    }
    pub fn image_for_mount_point(&self, mount_point: &str) -> Option<&CosiImage> {
        self.images.iter().find(|i| i.mount_point == mount_point)
    }
    /// Every tar member, in archive order.
    pub fn members(&self) -> &[TarMember] {
        &self.index.members
    }
    /// Window log the zstd decoder must allow.
    pub fn max_window_log(&self) -> u32 {
        self.metadata.max_window_log()
    }
    /// The compressed bytes of one image (exactly `compressed_size` of them).
    pub fn read_image(&self, image: &ImageMember) -> Result<Box<dyn Read + Send>> {
        self.source
            .read_range(image.data_offset, image.compressed_size)
            .with_context(|| format!("reading {} from {}", image.path, self.source.describe()))
    }

    /// What `trident cosi inspect` prints.
    pub fn summary(&self) -> CosiSummary {
        let m = &self.metadata;
        let all = self
            .images
            .iter()
            .flat_map(|i| std::iter::once(&i.image).chain(i.verity.as_ref().map(|v| &v.image)))
            .chain(self.regions.iter().map(|r| &r.image));
        let mut seen = std::collections::HashSet::new();
        let (mut comp, mut uncomp) = (0u64, 0u64);
        for im in all {
            if seen.insert(&im.path) {
                comp += im.compressed_size;
                uncomp += im.uncompressed_size;
            }
        }
        CosiSummary {
            source: self.source.describe(),
            file_size: self.file_size,
            metadata_version: m.version.to_string(),
            metadata_sha384: self.metadata_sha384.clone(),
            metadata_size: self.metadata_raw.len() as u64,
            id: m.id.clone(),
            os_arch: m.os_arch,
            os_name: m.pretty_name(),
            bootloader: m.bootloader.as_ref().map(|b| match b {
                Bootloader::Grub => "grub".to_string(),
                Bootloader::SystemdBoot { .. } => "systemd-boot".to_string(),
            }),
            os_package_count: m.os_packages.as_ref().map(Vec::len),
            max_window_log: m.max_window_log(),
            disk: m.disk.as_ref().map(|d| DiskSummary {
                size: d.size,
                lba_size: d.lba_size,
                regions: self.regions.clone(),
            }),
            images: self.images.clone(),
            total_compressed_size: comp,
            total_uncompressed_size: uncomp,
            tar_end_offset: self.index.end_offset,
            trailing_bytes: self.index.trailing_bytes,
        }
    }
}

/// Summary of a COSI file for `trident cosi inspect` (JSON/YAML via serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CosiSummary {
    pub source: String,
    pub file_size: u64,
    pub metadata_version: String,
    pub metadata_sha384: String,
    pub metadata_size: u64,
    pub id: Option<String>,
    pub os_arch: OsArch,
    /// `PRETTY_NAME` from os-release.
    pub os_name: Option<String>,
    pub bootloader: Option<String>,
    pub os_package_count: Option<usize>,
    pub max_window_log: u32,
    pub disk: Option<DiskSummary>,
    pub images: Vec<CosiImage>,
    /// Sums over distinct image members.
    pub total_compressed_size: u64,
    pub total_uncompressed_size: u64,
    pub tar_end_offset: u64,
    pub trailing_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskSummary {
    pub size: u64,
    pub lba_size: u32,
    pub regions: Vec<CosiRegion>,
}

impl CosiSummary {
    /// A few aligned lines for a terminal.
    pub fn render_human(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "COSI file:        {} ({} bytes)",
            self.source, self.file_size
        );
        let _ = writeln!(s, "Metadata version: {}", self.metadata_version);
        let _ = writeln!(s, "Metadata SHA-384: {}", self.metadata_sha384);
        if let Some(id) = &self.id {
            let _ = writeln!(s, "Id:               {id}");
        }
        let _ = writeln!(
            s,
            "OS:               {} ({})",
            self.os_name.as_deref().unwrap_or("unknown"),
            serde_json::to_value(self.os_arch)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        );
        if let Some(b) = &self.bootloader {
            let _ = writeln!(s, "Bootloader:       {b}");
        }
        if let Some(n) = self.os_package_count {
            let _ = writeln!(s, "Packages:         {n}");
        }
        let _ = writeln!(s, "Max window log:   {}", self.max_window_log);
        if let Some(d) = &self.disk {
            let _ = writeln!(s, "Disk:             {} bytes, LBA {}", d.size, d.lba_size);
            for r in &d.regions {
                let kind = serde_json::to_value(r.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default();
                let num = r.number.map(|n| format!(" #{n}")).unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  {kind}{num:<5} {:<40} {:>14} -> {:>14} bytes",
                    r.image.path, r.image.compressed_size, r.image.uncompressed_size
                );
            }
        }
        let _ = writeln!(s, "Images:");
        for i in &self.images {
            let _ = writeln!(
                s,
                "  {:<12} {:<6} {:<38} {:<40} {:>14} -> {:>14} bytes",
                i.mount_point,
                i.fs_type,
                i.fs_uuid,
                i.image.path,
                i.image.compressed_size,
                i.image.uncompressed_size
            );
            if let Some(v) = &i.verity {
                let _ = writeln!(s, "    verity {} (root hash {})", v.image.path, v.roothash);
            }
        }
        let _ = writeln!(
            s,
            "Total:            {} compressed, {} uncompressed bytes",
            self.total_compressed_size, self.total_uncompressed_size
        );
        if self.trailing_bytes > 0 {
            let _ = writeln!(
                s,
                "Trailing data:    {} bytes after the tar end (ignored)",
                self.trailing_bytes
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(path: &str, kind: MemberKind) -> TarMember {
        TarMember {
            path: path.into(),
            header_offset: 0,
            data_offset: 512,
            size: 0,
            kind,
            link_target: None,
        }
    }

    #[test]
    fn member_checks() {
        let ok = [
            member("cosi-marker", MemberKind::Regular),
            member("images", MemberKind::Directory),
            member("images/a..b", MemberKind::Regular),
        ];
        assert!(check_members(&ok).is_ok());
        for (m, code) in [
            (member("/etc/passwd", MemberKind::Regular), E_UNSAFE_PATH),
            (member("images/../../x", MemberKind::Regular), E_UNSAFE_PATH),
            (member("..", MemberKind::Directory), E_UNSAFE_PATH),
            (member("", MemberKind::Regular), E_UNSAFE_PATH),
            (member("images/r", MemberKind::Symlink), E_LINK_MEMBER),
            (member("images/r", MemberKind::Hardlink), E_LINK_MEMBER),
            (
                member("cosi-marker", MemberKind::Regular),
                E_DUPLICATE_MEMBER,
            ),
        ] {
            let mut v = ok.to_vec();
            v.push(m);
            assert_eq!(check_members(&v).unwrap_err().code, code);
        }
    }

    #[test]
    fn expected_hash_format() {
        assert!(parse_expected(&"A".repeat(96)).is_ok());
        assert_eq!(parse_expected(&"a".repeat(96)).unwrap(), "a".repeat(96));
        assert_eq!(
            parse_expected("ignored").unwrap_err().code,
            E_BAD_EXPECTED_HASH
        );
        assert!(parse_expected(&"g".repeat(96)).is_err());
    }
}
