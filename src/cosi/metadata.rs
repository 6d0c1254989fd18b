//! `metadata.json` of a COSI file: types, version-gated validation, hashing.
//!
//! Accepted versions: 1.0, 1.1, 1.2 and any higher 1.x minor (validated by the 1.2
//! rules; unknown fields are ignored as the spec requires). 2.x and later are refused.
//! Requirements follow the COSI spec's "Required (since ...)" columns:
//!
//! - 1.0: `version`, `osArch`, `osRelease`, `images`; `sha384`, `osPackages`,
//!   `release`/`arch` of packages optional; `bootloader`, `disk`, `compression` are
//!   not part of 1.0 and are ignored.
//! - 1.1: adds required `osPackages` (with `release` and `arch`), `sha384` and
//!   `bootloader`; `disk` and `compression` (1.2 fields) are ignored.
//! - 1.2+: adds required `disk` (GPT regions, primary GPT first) and `compression`, and
//!   every filesystem image must appear exactly once, identically, in `disk.gptRegions`.
//!
//! Validation walks the JSON tree by hand so every error names its field
//! (`images[0].image.sha384`) and carries a stable code; all errors of a document are
//! collected into one [`TridentErrors`].

// `TridentError` is the project's error value (136 bytes); these are cold paths.
#![allow(clippy::result_large_err)]

use crate::error::{TridentError, TridentErrors};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha384};
use std::collections::HashMap;

/// zstd's default decoder window limit (`ZSTD_WINDOWLOG_LIMIT_DEFAULT`).
pub const DEFAULT_MAX_WINDOW_LOG: u32 = 27;
/// Largest window log zstd supports on 64-bit targets (`ZSTD_WINDOWLOG_MAX_64`).
pub const ZSTD_WINDOWLOG_MAX: u32 = 31;

pub const E_NOT_JSON: &str = "cosi-metadata-not-json";
pub const E_NOT_OBJECT: &str = "cosi-metadata-not-object";
pub const E_BAD_VERSION: &str = "cosi-metadata-bad-version";
pub const E_UNSUPPORTED_VERSION: &str = "cosi-metadata-unsupported-version";
pub const E_MISSING_FIELD: &str = "cosi-metadata-missing-field";
pub const E_WRONG_TYPE: &str = "cosi-metadata-wrong-type";
pub const E_INVALID_VALUE: &str = "cosi-metadata-invalid-value";
pub const E_INVALID_OS_ARCH: &str = "cosi-metadata-invalid-os-arch";
pub const E_INVALID_IMAGE_PATH: &str = "cosi-metadata-invalid-image-path";
pub const E_INVALID_SHA384: &str = "cosi-metadata-invalid-sha384";
pub const E_INVALID_PART_TYPE: &str = "cosi-metadata-invalid-part-type";
pub const E_INVALID_UUID: &str = "cosi-metadata-invalid-uuid";
pub const E_MISSING_PRIMARY_GPT: &str = "cosi-metadata-missing-primary-gpt";
pub const E_DUPLICATE_FS_UUID: &str = "cosi-metadata-duplicate-fs-uuid";
pub const E_DUPLICATE_IMAGE_PATH: &str = "cosi-metadata-duplicate-image-path";
pub const E_REGION_MISMATCH: &str = "cosi-metadata-region-mismatch";
pub const E_INVALID_DISK_SIZE: &str = "cosi-metadata-invalid-disk-size";
pub const E_INVALID_WINDOW_LOG: &str = "cosi-metadata-invalid-window-log";

/// SHA-384 (lowercase hex) of the raw `metadata.json` bytes, as the Host
/// Configuration's `image.sha384` states it.
pub fn metadata_sha384(bytes: &[u8]) -> String {
    hex::encode(Sha384::digest(bytes))
}

/// True for 96 hex digits (any case).
pub fn is_sha384_hex(s: &str) -> bool {
    s.len() == 96 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// True for the 8-4-4-4-12 hex UUID form (any case).
pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `MAJOR.MINOR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MetadataVersion {
    pub major: u32,
    pub minor: u32,
}

impl MetadataVersion {
    pub const V1_1: Self = Self { major: 1, minor: 1 };
    pub const V1_2: Self = Self { major: 1, minor: 2 };

    pub fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.split_once('.')?;
        let num = |x: &str| -> Option<u32> {
            if x.is_empty() || !x.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            x.parse().ok()
        };
        Some(Self {
            major: num(a)?,
            minor: num(b)?,
        })
    }
}

impl std::fmt::Display for MetadataVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl Serialize for MetadataVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// OS architecture (`uname -m` names; aliases accepted case-insensitively).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum OsArch {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "aarch64")]
    Aarch64,
}

impl OsArch {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "x86_64" | "x64" | "amd64" => Some(Self::X86_64),
            "arm64" | "aarch64" => Some(Self::Aarch64),
            _ => None,
        }
    }
}

/// An image member of the tar, as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageFile {
    pub path: String,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    /// Lowercase hex; optional only in version 1.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha384: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerityConfig {
    pub image: ImageFile,
    pub roothash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Filesystem {
    pub image: ImageFile,
    pub mount_point: String,
    pub fs_type: String,
    pub fs_uuid: String,
    /// GPT partition type GUID, lowercase (names such as `root` are resolved).
    pub part_type: String,
    pub verity: Option<VerityConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OsPackage {
    pub name: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SystemdBootEntryType {
    UkiStandalone,
    UkiConfig,
    Config,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemdBootEntry {
    #[serde(rename = "type")]
    pub kind: SystemdBootEntryType,
    pub path: String,
    pub cmdline: String,
    pub kernel: String,
}

/// Serializes as the file format has it: `{"type": "grub"}`, or
/// `{"type": "systemd-boot", "systemdBoot": {"entries": [...]}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootloader {
    Grub,
    SystemdBoot { entries: Vec<SystemdBootEntry> },
}

impl Serialize for Bootloader {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        #[derive(Serialize)]
        struct SystemdBoot<'a> {
            entries: &'a [SystemdBootEntry],
        }
        match self {
            Bootloader::Grub => {
                let mut st = s.serialize_struct("Bootloader", 1)?;
                st.serialize_field("type", "grub")?;
                st.end()
            }
            Bootloader::SystemdBoot { entries } => {
                let mut st = s.serialize_struct("Bootloader", 2)?;
                st.serialize_field("type", "systemd-boot")?;
                st.serialize_field("systemdBoot", &SystemdBoot { entries })?;
                st.end()
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegionType {
    PrimaryGpt,
    Partition,
    BackupGpt,
    Unallocated,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GptRegion {
    pub image: ImageFile,
    #[serde(rename = "type")]
    pub kind: RegionType,
    /// 1-based GPT entry index; present for partitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_lba: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub size: u64,
    /// Always `gpt` (the only type the spec defines).
    #[serde(rename = "type")]
    pub kind: String,
    pub lba_size: u32,
    pub gpt_regions: Vec<GptRegion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Compression {
    pub max_window_log: u32,
}

/// A validated `metadata.json`. Serializing it produces the file format (absent
/// optional fields are omitted, not written as `null`); `trident cosi build` writes its
/// `metadata.json` through this type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CosiMetadata {
    pub version: MetadataVersion,
    pub os_arch: OsArch,
    pub os_release: String,
    pub images: Vec<Filesystem>,
    /// Required since 1.1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_packages: Option<Vec<OsPackage>>,
    /// Since 1.1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<Bootloader>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Since 1.2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<Disk>,
    /// Since 1.2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
}

impl CosiMetadata {
    /// Parse and validate raw `metadata.json` bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, TridentErrors> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            TridentErrors(vec![TridentError::invalid_input(
                E_NOT_JSON,
                format!("metadata.json is not valid JSON: {e}"),
            )
            .at_location(e.line(), e.column())])
        })?;
        Self::from_value(&value)
    }

    /// Validate an already parsed JSON document.
    pub fn from_value(value: &Value) -> Result<Self, TridentErrors> {
        let mut c = Checker::default();
        let parsed = c.root(value);
        match parsed {
            Some(m) if c.errors.is_empty() => Ok(m),
            _ => {
                if c.errors.is_empty() {
                    c.errors.push(TridentError::internal(
                        "cosi-metadata-unvalidated",
                        "metadata.json failed validation without a reported error",
                    ));
                }
                Err(TridentErrors(c.errors))
            }
        }
    }

    /// The window log the zstd decoder must allow: the metadata's `maxWindowLog`, but
    /// never below zstd's default limit (27).
    pub fn max_window_log(&self) -> u32 {
        self.compression
            .map(|c| c.max_window_log)
            .unwrap_or(DEFAULT_MAX_WINDOW_LOG)
            .max(DEFAULT_MAX_WINDOW_LOG)
    }

    /// `PRETTY_NAME` from `osRelease`, if present.
    pub fn pretty_name(&self) -> Option<String> {
        self.os_release.lines().find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim().trim_matches('"').to_string())
        })
    }

    /// Every [`ImageFile`] of the document (filesystems, verity hash images, GPT
    /// regions; one image may appear more than once), mutably.
    pub fn image_files_mut(&mut self) -> impl Iterator<Item = &mut ImageFile> {
        let disk = self.disk.iter_mut().flat_map(|d| d.gpt_regions.iter_mut());
        self.images
            .iter_mut()
            .flat_map(|f| {
                std::iter::once(&mut f.image).chain(f.verity.as_mut().map(|v| &mut v.image))
            })
            .chain(disk.map(|r| &mut r.image))
    }

    /// Every image member the metadata references (filesystems, verity hash images,
    /// GPT regions), with the JSON path of its first mention. Deduplicated by path.
    pub fn referenced_images(&self) -> Vec<(String, &ImageFile)> {
        let mut all: Vec<(String, &ImageFile)> = Vec::new();
        for (i, fs) in self.images.iter().enumerate() {
            all.push((format!("images[{i}].image"), &fs.image));
            if let Some(v) = &fs.verity {
                all.push((format!("images[{i}].verity.image"), &v.image));
            }
        }
        if let Some(d) = &self.disk {
            for (i, r) in d.gpt_regions.iter().enumerate() {
                all.push((format!("disk.gptRegions[{i}].image"), &r.image));
            }
        }
        let mut out: Vec<(String, &ImageFile)> = Vec::new();
        for (p, f) in all {
            if !out.iter().any(|(_, g)| g.path == f.path) {
                out.push((p, f));
            }
        }
        out
    }
}

/// Partition type names accepted in `partType`, resolved to DPS GUIDs.
fn part_type_by_name(name: &str, arch: Option<OsArch>) -> Option<&'static str> {
    let arch_specific = |x86: &'static str, arm: &'static str| match arch {
        Some(OsArch::X86_64) => Some(x86),
        Some(OsArch::Aarch64) => Some(arm),
        None => None,
    };
    match name {
        "esp" => Some("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
        "xbootldr" => Some("bc13c2ff-59e6-4262-a352-b275fd6f7172"),
        "swap" => Some("0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"),
        "home" => Some("933ac7e1-2eb4-4f13-b844-0e14e2aef915"),
        "srv" => Some("3b8f8425-20e0-4f3b-907f-1a25a76f98e8"),
        "var" => Some("4d21b016-b534-45c2-a9fb-5c16e091fd2d"),
        "tmp" => Some("7ec6f557-3bc5-4aca-b293-16ef5df639d1"),
        "linux-generic" => Some("0fc63daf-8483-4772-8e79-3d69d8477de4"),
        "root" => arch_specific(
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
            "b921b045-1df0-41c3-af44-4c6f280d3fae",
        ),
        "root-verity" => arch_specific(
            "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
            "df3300ce-d69f-4c92-978c-9bfb0f38d820",
        ),
        "usr" => arch_specific(
            "8484680c-9521-48c6-9c11-b0720656f69e",
            "b0e01050-ee5f-4390-949a-9101b17104e9",
        ),
        "usr-verity" => arch_specific(
            "77ff5f63-e7b6-4633-acf4-1565b864c0e6",
            "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e",
        ),
        _ => None,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[derive(Default)]
struct Checker {
    errors: Vec<TridentError>,
    version: Option<MetadataVersion>,
    arch: Option<OsArch>,
}

impl Checker {
    fn err(&mut self, code: &str, path: &str, msg: impl Into<String>) {
        let msg = msg.into();
        let msg = if path.is_empty() {
            msg
        } else {
            format!("{path}: {msg}")
        };
        self.errors
            .push(TridentError::invalid_input(code, msg).at(path.to_string()));
    }

    fn since(&self, v: MetadataVersion) -> bool {
        self.version.is_some_and(|have| have >= v)
    }

    /// A field; `null` counts as absent. Reports a missing required field.
    fn field<'a>(
        &mut self,
        obj: &'a Map<String, Value>,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<&'a Value> {
        match obj.get(key) {
            Some(Value::Null) | None => {
                if required {
                    self.err(
                        E_MISSING_FIELD,
                        &join(path, key),
                        "required field is missing",
                    );
                }
                None
            }
            Some(v) => Some(v),
        }
    }

    fn string(
        &mut self,
        obj: &Map<String, Value>,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<String> {
        let v = self.field(obj, path, key, required)?;
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                let t = type_name(other);
                self.err(
                    E_WRONG_TYPE,
                    &join(path, key),
                    format!("expected a string, found {t}"),
                );
                None
            }
        }
    }

    fn uint(
        &mut self,
        obj: &Map<String, Value>,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<u64> {
        let v = self.field(obj, path, key, required)?;
        match v.as_u64() {
            Some(n) => Some(n),
            None => {
                let t = type_name(v);
                self.err(
                    E_WRONG_TYPE,
                    &join(path, key),
                    format!("expected a non-negative integer, found {t} ({v})"),
                );
                None
            }
        }
    }

    fn object<'a>(&mut self, v: &'a Value, path: &str) -> Option<&'a Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            other => {
                let t = type_name(other);
                self.err(E_WRONG_TYPE, path, format!("expected an object, found {t}"));
                None
            }
        }
    }

    fn array<'a>(
        &mut self,
        obj: &'a Map<String, Value>,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<&'a Vec<Value>> {
        let v = self.field(obj, path, key, required)?;
        match v {
            Value::Array(a) => Some(a),
            other => {
                let t = type_name(other);
                self.err(
                    E_WRONG_TYPE,
                    &join(path, key),
                    format!("expected an array, found {t}"),
                );
                None
            }
        }
    }

    fn root(&mut self, v: &Value) -> Option<CosiMetadata> {
        let Value::Object(obj) = v else {
            let t = type_name(v);
            self.errors.push(TridentError::invalid_input(
                E_NOT_OBJECT,
                format!("metadata.json must hold a JSON object, found {t}"),
            ));
            return None;
        };
        let version_str = self.string(obj, "", "version", true)?;
        let Some(version) = MetadataVersion::parse(&version_str) else {
            self.err(
                E_BAD_VERSION,
                "version",
                format!("{version_str:?} is not a MAJOR.MINOR version"),
            );
            return None;
        };
        if version.major != 1 {
            self.errors.push(
                TridentError::unsupported(
                    E_UNSUPPORTED_VERSION,
                    format!(
                        "COSI metadata version {version} is not supported; this Trident \
                         reads versions 1.x"
                    ),
                )
                .at("version"),
            );
            return None;
        }
        self.version = Some(version);

        let os_arch = self.string(obj, "", "osArch", true).and_then(|s| {
            let a = OsArch::parse(&s);
            if a.is_none() {
                self.err(
                    E_INVALID_OS_ARCH,
                    "osArch",
                    format!("{s:?} is not a known architecture (x86_64, arm64)"),
                );
            }
            a
        });
        self.arch = os_arch;
        let os_release = self.string(obj, "", "osRelease", true);

        let mut images = Vec::new();
        if let Some(arr) = self.array(obj, "", "images", true) {
            for (i, item) in arr.iter().enumerate() {
                if let Some(fs) = self.filesystem(item, &format!("images[{i}]")) {
                    images.push(fs);
                }
            }
        }

        let os_packages = self
            .array(obj, "", "osPackages", self.since(MetadataVersion::V1_1))
            .map(|arr| {
                arr.iter()
                    .enumerate()
                    .filter_map(|(i, p)| self.package(p, &format!("osPackages[{i}]")))
                    .collect()
            });

        let bootloader = if self.since(MetadataVersion::V1_1) {
            self.field(obj, "", "bootloader", true)
                .and_then(|b| self.bootloader(b, "bootloader"))
        } else {
            None
        };

        let id = self.string(obj, "", "id", false).filter(|s| {
            let ok = is_uuid(s);
            if !ok {
                self.err(E_INVALID_UUID, "id", format!("{s:?} is not a UUID"));
            }
            ok
        });

        let (disk, compression) = if self.since(MetadataVersion::V1_2) {
            let disk = self
                .field(obj, "", "disk", true)
                .and_then(|d| self.disk(d, "disk"));
            let compression = self
                .field(obj, "", "compression", true)
                .and_then(|c| self.compression(c, "compression"));
            (disk, compression)
        } else {
            (None, None)
        };

        let m = CosiMetadata {
            version,
            os_arch: os_arch?,
            os_release: os_release?,
            images,
            os_packages,
            bootloader,
            id,
            disk,
            compression,
        };
        self.cross_checks(&m);
        Some(m)
    }

    fn image_file(&mut self, v: &Value, path: &str) -> Option<ImageFile> {
        let obj = self.object(v, path)?;
        let p = self.string(obj, path, "path", true);
        if let Some(p) = &p {
            let rest = p.strip_prefix("images/").unwrap_or("");
            let bad_component = rest
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..");
            if rest.is_empty() || bad_component {
                self.err(
                    E_INVALID_IMAGE_PATH,
                    &join(path, "path"),
                    format!(
                        "{p:?} must be a relative path under images/ without empty, '.' or \
                         '..' components"
                    ),
                );
            }
        }
        let compressed = self.uint(obj, path, "compressedSize", true);
        let uncompressed = self.uint(obj, path, "uncompressedSize", true);
        let sha = self
            .string(obj, path, "sha384", self.since(MetadataVersion::V1_1))
            .filter(|s| {
                let ok = is_sha384_hex(s);
                if !ok {
                    self.err(
                        E_INVALID_SHA384,
                        &join(path, "sha384"),
                        format!("{s:?} is not a SHA-384 hash (96 hex digits)"),
                    );
                }
                ok
            })
            .map(|s| s.to_ascii_lowercase());
        Some(ImageFile {
            path: p?,
            compressed_size: compressed?,
            uncompressed_size: uncompressed?,
            sha384: sha,
        })
    }

    fn filesystem(&mut self, v: &Value, path: &str) -> Option<Filesystem> {
        let obj = self.object(v, path)?;
        let image = self
            .field(obj, path, "image", true)
            .and_then(|i| self.image_file(i, &join(path, "image")));
        let mount_point = self.string(obj, path, "mountPoint", true);
        let fs_type = self.string(obj, path, "fsType", true).filter(|s| {
            if s.is_empty() {
                self.err(E_INVALID_VALUE, &join(path, "fsType"), "must not be empty");
            }
            !s.is_empty()
        });
        let fs_uuid = self.string(obj, path, "fsUuid", true).filter(|s| {
            if s.is_empty() {
                self.err(E_INVALID_VALUE, &join(path, "fsUuid"), "must not be empty");
            }
            !s.is_empty()
        });
        let part_type = self
            .string(obj, path, "partType", true)
            .and_then(|s| self.part_type(&s, &join(path, "partType")));
        let verity = match self.field(obj, path, "verity", false) {
            Some(vv) => {
                let vpath = join(path, "verity");
                let vobj = self.object(vv, &vpath)?;
                let vimage = self
                    .field(vobj, &vpath, "image", true)
                    .and_then(|i| self.image_file(i, &join(&vpath, "image")));
                let roothash = self.string(vobj, &vpath, "roothash", true).filter(|s| {
                    if s.is_empty() {
                        self.err(
                            E_INVALID_VALUE,
                            &join(&vpath, "roothash"),
                            "must not be empty",
                        );
                    }
                    !s.is_empty()
                });
                Some(VerityConfig {
                    image: vimage?,
                    roothash: roothash?,
                })
            }
            None => None,
        };
        Some(Filesystem {
            image: image?,
            mount_point: mount_point?,
            fs_type: fs_type?,
            fs_uuid: fs_uuid?,
            part_type: part_type?,
            verity,
        })
    }

    fn part_type(&mut self, s: &str, path: &str) -> Option<String> {
        if is_uuid(s) {
            return Some(s.to_ascii_lowercase());
        }
        if let Some(guid) = part_type_by_name(s, self.arch) {
            return Some(guid.to_string());
        }
        if self.arch.is_none() && part_type_by_name(s, Some(OsArch::X86_64)).is_some() {
            // The name is architecture-specific and osArch is already reported invalid.
            return None;
        }
        self.err(
            E_INVALID_PART_TYPE,
            path,
            format!("{s:?} is neither a partition type GUID nor a known partition type name"),
        );
        None
    }

    fn package(&mut self, v: &Value, path: &str) -> Option<OsPackage> {
        let obj = self.object(v, path)?;
        let req = self.since(MetadataVersion::V1_1);
        let name = self.string(obj, path, "name", true);
        let version = self.string(obj, path, "version", true);
        let release = self.string(obj, path, "release", req);
        let arch = self.string(obj, path, "arch", req);
        if req && (release.is_none() || arch.is_none()) {
            return None;
        }
        Some(OsPackage {
            name: name?,
            version: version?,
            release,
            arch,
        })
    }

    fn bootloader(&mut self, v: &Value, path: &str) -> Option<Bootloader> {
        let obj = self.object(v, path)?;
        let kind = self.string(obj, path, "type", true)?;
        let sd = self.field(obj, path, "systemdBoot", false);
        match kind.as_str() {
            "grub" => {
                if sd.is_some() {
                    self.err(
                        E_INVALID_VALUE,
                        &join(path, "systemdBoot"),
                        "must be omitted or null when the bootloader type is grub",
                    );
                    return None;
                }
                Some(Bootloader::Grub)
            }
            "systemd-boot" => {
                let sdpath = join(path, "systemdBoot");
                let Some(sd) = sd else {
                    self.err(
                        E_MISSING_FIELD,
                        &sdpath,
                        "required when the bootloader type is systemd-boot",
                    );
                    return None;
                };
                let sdobj = self.object(sd, &sdpath)?;
                let arr = self.array(sdobj, &sdpath, "entries", true)?;
                if arr.is_empty() {
                    self.err(
                        E_INVALID_VALUE,
                        &join(&sdpath, "entries"),
                        "must list at least one entry",
                    );
                    return None;
                }
                let mut entries = Vec::new();
                for (i, e) in arr.iter().enumerate() {
                    let epath = format!("{sdpath}.entries[{i}]");
                    if let Some(e) = self.sd_entry(e, &epath) {
                        entries.push(e);
                    }
                }
                (entries.len() == arr.len()).then_some(Bootloader::SystemdBoot { entries })
            }
            other => {
                self.err(
                    E_INVALID_VALUE,
                    &join(path, "type"),
                    format!("unknown bootloader type {other:?} (expected grub or systemd-boot)"),
                );
                None
            }
        }
    }

    fn sd_entry(&mut self, v: &Value, path: &str) -> Option<SystemdBootEntry> {
        let obj = self.object(v, path)?;
        let kind = self.string(obj, path, "type", true).and_then(|t| {
            let k = match t.as_str() {
                "uki-standalone" => Some(SystemdBootEntryType::UkiStandalone),
                "uki-config" => Some(SystemdBootEntryType::UkiConfig),
                "config" => Some(SystemdBootEntryType::Config),
                _ => None,
            };
            if k.is_none() {
                self.err(
                    E_INVALID_VALUE,
                    &join(path, "type"),
                    format!(
                        "unknown entry type {t:?} (expected uki-standalone, uki-config or config)"
                    ),
                );
            }
            k
        });
        let p = self.string(obj, path, "path", true);
        let cmdline = self.string(obj, path, "cmdline", true);
        let kernel = self.string(obj, path, "kernel", true);
        Some(SystemdBootEntry {
            kind: kind?,
            path: p?,
            cmdline: cmdline?,
            kernel: kernel?,
        })
    }

    fn disk(&mut self, v: &Value, path: &str) -> Option<Disk> {
        let obj = self.object(v, path)?;
        let size = self.uint(obj, path, "size", true);
        let kind = self.string(obj, path, "type", true).filter(|t| {
            if t != "gpt" {
                self.err(
                    E_INVALID_VALUE,
                    &join(path, "type"),
                    format!("unknown disk type {t:?} (only gpt is defined)"),
                );
            }
            t == "gpt"
        });
        let lba = self.uint(obj, path, "lbaSize", true).filter(|&l| {
            let ok = l == 512 || l == 4096;
            if !ok {
                self.err(
                    E_INVALID_VALUE,
                    &join(path, "lbaSize"),
                    format!("LBA size {l} is not 512 or 4096"),
                );
            }
            ok
        });
        if let (Some(size), Some(lba)) = (size, lba) {
            if size % lba != 0 {
                self.err(
                    E_INVALID_DISK_SIZE,
                    &join(path, "size"),
                    format!("disk size {size} is not a multiple of the LBA size {lba}"),
                );
            }
        }
        let rpath = join(path, "gptRegions");
        let arr = self.array(obj, path, "gptRegions", kind.is_some())?;
        let mut regions = Vec::new();
        let mut all_ok = true;
        for (i, r) in arr.iter().enumerate() {
            match self.region(r, &format!("{rpath}[{i}]")) {
                Some(r) => regions.push(r),
                None => all_ok = false,
            }
        }
        if all_ok {
            let primaries = regions
                .iter()
                .filter(|r| r.kind == RegionType::PrimaryGpt)
                .count();
            if regions.first().map(|r| r.kind) != Some(RegionType::PrimaryGpt) {
                let p = if regions.is_empty() {
                    rpath.clone()
                } else {
                    format!("{rpath}[0].type")
                };
                self.err(
                    E_MISSING_PRIMARY_GPT,
                    &p,
                    "the first GPT region must be of type primary-gpt",
                );
            } else if primaries != 1 {
                self.err(
                    E_INVALID_VALUE,
                    &rpath,
                    format!("exactly one primary-gpt region is allowed, found {primaries}"),
                );
            }
            let mut numbers: HashMap<u32, usize> = HashMap::new();
            for (i, r) in regions.iter().enumerate() {
                if let Some(n) = r.number {
                    if let Some(j) = numbers.insert(n, i) {
                        self.err(
                            E_INVALID_VALUE,
                            &format!("{rpath}[{i}].number"),
                            format!("partition number {n} is also used by {rpath}[{j}]"),
                        );
                    }
                }
            }
        }
        Some(Disk {
            size: size?,
            kind: kind?,
            lba_size: lba? as u32,
            gpt_regions: all_ok.then_some(regions)?,
        })
    }

    fn region(&mut self, v: &Value, path: &str) -> Option<GptRegion> {
        let obj = self.object(v, path)?;
        let image = self
            .field(obj, path, "image", true)
            .and_then(|i| self.image_file(i, &join(path, "image")));
        let kind = self.string(obj, path, "type", true).and_then(|t| {
            let k = match t.as_str() {
                "primary-gpt" => Some(RegionType::PrimaryGpt),
                "partition" => Some(RegionType::Partition),
                "backup-gpt" => Some(RegionType::BackupGpt),
                "unallocated" => Some(RegionType::Unallocated),
                "unknown" => Some(RegionType::Unknown),
                _ => None,
            };
            if k.is_none() {
                self.err(
                    E_INVALID_VALUE,
                    &join(path, "type"),
                    format!("unknown region type {t:?}"),
                );
            }
            k
        });
        let number = self.uint(obj, path, "number", kind == Some(RegionType::Partition));
        let number = match number {
            Some(n) if n == 0 || n > u64::from(u32::MAX) => {
                self.err(
                    E_INVALID_VALUE,
                    &join(path, "number"),
                    format!("partition number {n} is not a 1-based GPT entry index"),
                );
                return None;
            }
            Some(n) => Some(n as u32),
            None if kind == Some(RegionType::Partition) => return None,
            None => None,
        };
        let start_lba = self.uint(obj, path, "startLba", false);
        Some(GptRegion {
            image: image?,
            kind: kind?,
            number,
            start_lba,
        })
    }

    fn compression(&mut self, v: &Value, path: &str) -> Option<Compression> {
        let obj = self.object(v, path)?;
        let w = self.uint(obj, path, "maxWindowLog", true)?;
        if w > u64::from(ZSTD_WINDOWLOG_MAX) {
            self.err(
                E_INVALID_WINDOW_LOG,
                &join(path, "maxWindowLog"),
                format!("window log {w} is larger than zstd's maximum {ZSTD_WINDOWLOG_MAX}"),
            );
            return None;
        }
        Some(Compression {
            max_window_log: w as u32,
        })
    }

    /// Rules across fields, run on a document whose parts parsed.
    fn cross_checks(&mut self, m: &CosiMetadata) {
        let mut uuids: HashMap<String, usize> = HashMap::new();
        for (i, fs) in m.images.iter().enumerate() {
            if let Some(j) = uuids.insert(fs.fs_uuid.to_ascii_lowercase(), i) {
                self.err(
                    E_DUPLICATE_FS_UUID,
                    &format!("images[{i}].fsUuid"),
                    format!("filesystem UUID {} is also used by images[{j}]", fs.fs_uuid),
                );
            }
        }
        // Each tar member backs one filesystem or one verity hash image.
        let mut paths: HashMap<&str, String> = HashMap::new();
        for (i, fs) in m.images.iter().enumerate() {
            let mut files = vec![(format!("images[{i}].image.path"), &fs.image)];
            if let Some(v) = &fs.verity {
                files.push((format!("images[{i}].verity.image.path"), &v.image));
            }
            for (p, f) in files {
                if let Some(first) = paths.insert(&f.path, p.clone()) {
                    self.err(
                        E_DUPLICATE_IMAGE_PATH,
                        &p,
                        format!("image {} is also referenced by {first}", f.path),
                    );
                }
            }
        }
        if let Some(disk) = &m.disk {
            for (i, fs) in m.images.iter().enumerate() {
                let matches: Vec<&GptRegion> = disk
                    .gpt_regions
                    .iter()
                    .filter(|r| r.image.path == fs.image.path)
                    .collect();
                let p = format!("images[{i}].image");
                match matches.as_slice() {
                    [r] if r.image == fs.image => {}
                    [_] => self.err(
                        E_REGION_MISMATCH,
                        &p,
                        format!(
                            "the entry for {} in disk.gptRegions differs from this one",
                            fs.image.path
                        ),
                    ),
                    [] => self.err(
                        E_REGION_MISMATCH,
                        &p,
                        format!("{} has no entry in disk.gptRegions", fs.image.path),
                    ),
                    _ => self.err(
                        E_REGION_MISMATCH,
                        &p,
                        format!(
                            "{} appears {} times in disk.gptRegions",
                            fs.image.path,
                            matches.len()
                        ),
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHA: &str = "2decc64a828dbbb76779731cd4afd3b86cc4ad0af06f4afe594e72e62e33e520a6649719fe43f09f11d518e485eae0db";

    fn image(path: &str) -> Value {
        json!({"path": path, "compressedSize": 10, "uncompressedSize": 20, "sha384": SHA})
    }

    fn doc_1_2() -> Value {
        json!({
            "version": "1.2",
            "osArch": "X86_64",
            "osRelease": "ID=test\nPRETTY_NAME=\"Test OS\"\n",
            "images": [
                {"image": image("images/esp.rawzst"), "mountPoint": "/boot/efi", "fsType": "vfat",
                 "fsUuid": "C3D4-250D", "partType": "esp"},
                {"image": image("images/root.rawzst"), "mountPoint": "/", "fsType": "ext4",
                 "fsUuid": "88d2fa9b-7a32-450a-a9f8-aa9c3de79298", "partType": "root",
                 "verity": null, "someFutureField": {"x": 1}}
            ],
            "osPackages": [{"name": "bash", "version": "5", "release": "1", "arch": "x86_64"}],
            "bootloader": {"type": "grub", "systemdBoot": null},
            "id": "88D2FA9B-7A32-450A-A9F8-AA9C3DE79298",
            "disk": {"size": 1048576, "type": "gpt", "lbaSize": 512, "gptRegions": [
                {"image": image("images/gpt.rawzst"), "type": "primary-gpt", "startLba": 0},
                {"image": image("images/esp.rawzst"), "type": "partition", "number": 1},
                {"image": image("images/root.rawzst"), "type": "partition", "number": 2}
            ]},
            "compression": {"maxWindowLog": 30}
        })
    }

    fn errs(v: &Value) -> Vec<(String, String)> {
        CosiMetadata::from_value(v)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| (e.code, e.path.unwrap_or_default()))
            .collect()
    }

    fn first_err(v: &Value) -> (String, String) {
        errs(v).into_iter().next().unwrap()
    }

    #[test]
    fn full_1_2_document() {
        let m = CosiMetadata::from_value(&doc_1_2()).unwrap();
        assert_eq!(m.version, MetadataVersion::V1_2);
        assert_eq!(m.os_arch, OsArch::X86_64);
        assert_eq!(
            m.images[0].part_type,
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        );
        assert_eq!(
            m.images[1].part_type,
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
        );
        assert_eq!(m.bootloader, Some(Bootloader::Grub));
        assert_eq!(m.disk.as_ref().unwrap().gpt_regions.len(), 3);
        assert_eq!(m.max_window_log(), 30);
        assert_eq!(m.pretty_name().as_deref(), Some("Test OS"));
        assert_eq!(m.referenced_images().len(), 3);
    }

    #[test]
    fn root_name_resolves_per_arch() {
        let mut d = doc_1_2();
        d["osArch"] = json!("aarch64");
        let m = CosiMetadata::from_value(&d).unwrap();
        assert_eq!(
            m.images[1].part_type,
            "b921b045-1df0-41c3-af44-4c6f280d3fae"
        );
    }

    #[test]
    fn version_handling() {
        let mut d = doc_1_2();
        d["version"] = json!("1.7");
        assert_eq!(
            CosiMetadata::from_value(&d).unwrap().version,
            MetadataVersion { major: 1, minor: 7 }
        );
        d["version"] = json!("2.0");
        let e = CosiMetadata::from_value(&d).unwrap_err().0.remove(0);
        assert_eq!(e.code, E_UNSUPPORTED_VERSION);
        assert_eq!(e.category, crate::error::Category::UnsupportedConfiguration);
        for bad in ["1", "1.x", "v1.2", "1.2.3", "", " 1.2"] {
            d["version"] = json!(bad);
            assert_eq!(
                first_err(&d),
                (E_BAD_VERSION.into(), "version".into()),
                "{bad}"
            );
        }
        d["version"] = json!(1.2);
        assert_eq!(first_err(&d), (E_WRONG_TYPE.into(), "version".into()));
    }

    #[test]
    fn version_1_0_is_lenient_and_ignores_later_fields() {
        let d = json!({
            "version": "1.0", "osArch": "amd64", "osRelease": "",
            "images": [{"image": {"path": "images/root.raw.zst", "compressedSize": 1,
                                  "uncompressedSize": 2},
                        "mountPoint": "/", "fsType": "ext4", "fsUuid": "u",
                        "partType": "0fc63daf-8483-4772-8e79-3d69d8477de4"}],
            "osPackages": [{"name": "a", "version": "1"}],
            "bootloader": {"type": "lilo"},
            "disk": "garbage", "compression": 12
        });
        let m = CosiMetadata::from_value(&d).unwrap();
        assert_eq!(m.images[0].image.sha384, None);
        assert_eq!(m.bootloader, None);
        assert_eq!(m.disk, None);
        assert_eq!(m.max_window_log(), DEFAULT_MAX_WINDOW_LOG);
    }

    #[test]
    fn version_1_1_requirements() {
        let mut d = doc_1_2();
        d["version"] = json!("1.1");
        d.as_object_mut().unwrap().remove("disk");
        d.as_object_mut().unwrap().remove("compression");
        assert!(CosiMetadata::from_value(&d).is_ok());
        let mut no_sha = d.clone();
        no_sha["images"][1]["image"]
            .as_object_mut()
            .unwrap()
            .remove("sha384");
        assert_eq!(
            first_err(&no_sha),
            (E_MISSING_FIELD.into(), "images[1].image.sha384".into())
        );
        let mut no_boot = d.clone();
        no_boot.as_object_mut().unwrap().remove("bootloader");
        assert_eq!(
            first_err(&no_boot),
            (E_MISSING_FIELD.into(), "bootloader".into())
        );
        let mut no_release = d.clone();
        no_release["osPackages"][0]
            .as_object_mut()
            .unwrap()
            .remove("release");
        assert_eq!(
            first_err(&no_release),
            (E_MISSING_FIELD.into(), "osPackages[0].release".into())
        );
    }

    #[test]
    fn version_1_2_requires_disk_and_compression() {
        for key in ["disk", "compression"] {
            let mut d = doc_1_2();
            d.as_object_mut().unwrap().remove(key);
            assert_eq!(first_err(&d), (E_MISSING_FIELD.into(), key.into()));
        }
    }

    #[test]
    fn field_errors_name_their_path() {
        type Case = (Box<dyn Fn(&mut Value)>, &'static str, &'static str);
        let cases: Vec<Case> = vec![
            (
                Box::new(|d| d["osArch"] = json!("riscv64")),
                E_INVALID_OS_ARCH,
                "osArch",
            ),
            (
                Box::new(|d| d["images"][0]["image"]["path"] = json!("images/../etc/shadow")),
                E_INVALID_IMAGE_PATH,
                "images[0].image.path",
            ),
            (
                Box::new(|d| d["images"][0]["image"]["path"] = json!("images/")),
                E_INVALID_IMAGE_PATH,
                "images[0].image.path",
            ),
            (
                Box::new(|d| d["images"][1]["image"]["compressedSize"] = json!(-1)),
                E_WRONG_TYPE,
                "images[1].image.compressedSize",
            ),
            (
                Box::new(|d| d["images"][1]["image"]["sha384"] = json!("zz")),
                E_INVALID_SHA384,
                "images[1].image.sha384",
            ),
            (
                Box::new(|d| d["images"][1]["fsUuid"] = json!("c3d4-250d")),
                E_DUPLICATE_FS_UUID,
                "images[1].fsUuid",
            ),
            (
                Box::new(|d| d["images"][1]["partType"] = json!("rootfs")),
                E_INVALID_PART_TYPE,
                "images[1].partType",
            ),
            (Box::new(|d| d["id"] = json!("nope")), E_INVALID_UUID, "id"),
            (
                Box::new(|d| d["bootloader"]["systemdBoot"] = json!({"entries": []})),
                E_INVALID_VALUE,
                "bootloader.systemdBoot",
            ),
            (
                Box::new(|d| {
                    d["bootloader"] =
                        json!({"type": "systemd-boot", "systemdBoot": {"entries": []}})
                }),
                E_INVALID_VALUE,
                "bootloader.systemdBoot.entries",
            ),
            (
                Box::new(|d| {
                    d["bootloader"] = json!({"type": "systemd-boot", "systemdBoot": {"entries": [
                        {"type": "uki-fancy", "path": "/x", "cmdline": "", "kernel": "6"}]}})
                }),
                E_INVALID_VALUE,
                "bootloader.systemdBoot.entries[0].type",
            ),
            (
                Box::new(|d| d["disk"]["size"] = json!(1000)),
                E_INVALID_DISK_SIZE,
                "disk.size",
            ),
            (
                Box::new(|d| d["disk"]["type"] = json!("mbr")),
                E_INVALID_VALUE,
                "disk.type",
            ),
            (
                Box::new(|d| d["disk"]["gptRegions"][2]["number"] = json!(1)),
                E_INVALID_VALUE,
                "disk.gptRegions[2].number",
            ),
            (
                Box::new(|d| d["disk"]["gptRegions"][2]["type"] = json!("primary-gpt")),
                E_INVALID_VALUE,
                "disk.gptRegions",
            ),
            (
                Box::new(|d| d["disk"]["gptRegions"][2]["image"]["compressedSize"] = json!(11)),
                E_REGION_MISMATCH,
                "images[1].image",
            ),
            (
                Box::new(|d| {
                    d["disk"]["gptRegions"].as_array_mut().unwrap().remove(2);
                }),
                E_REGION_MISMATCH,
                "images[1].image",
            ),
            (
                Box::new(|d| {
                    d["images"][1]["verity"] =
                        json!({"image": image("images/esp.rawzst"), "roothash": "ab"})
                }),
                E_DUPLICATE_IMAGE_PATH,
                "images[1].verity.image.path",
            ),
            (
                Box::new(|d| d["compression"]["maxWindowLog"] = json!(32)),
                E_INVALID_WINDOW_LOG,
                "compression.maxWindowLog",
            ),
            (
                Box::new(|d| d["images"] = json!({})),
                E_WRONG_TYPE,
                "images",
            ),
            (
                Box::new(|d| d["osRelease"] = Value::Null),
                E_MISSING_FIELD,
                "osRelease",
            ),
        ];
        for (mutate, code, path) in cases {
            let mut d = doc_1_2();
            mutate(&mut d);
            let all = errs(&d);
            assert!(
                all.contains(&(code.to_string(), path.to_string())),
                "expected {code} at {path}, got {all:?}"
            );
        }
    }

    #[test]
    fn not_json_and_not_object() {
        let e = CosiMetadata::parse(b"{\"version\": ")
            .unwrap_err()
            .0
            .remove(0);
        assert_eq!(e.code, E_NOT_JSON);
        assert!(e.line.is_some());
        let e = CosiMetadata::parse(b"[1]").unwrap_err().0.remove(0);
        assert_eq!(e.code, E_NOT_OBJECT);
    }

    #[test]
    fn errors_are_all_collected() {
        let mut d = doc_1_2();
        d["osArch"] = json!("sparc");
        d["images"][0]["image"]["sha384"] = json!("00");
        d["disk"]["lbaSize"] = json!(1024);
        assert!(errs(&d).len() >= 3);
    }

    /// Validate `doc` against the COSI 1.2 JSON schema with python3-jsonschema; `false`
    /// (with a message) when that is not installed.
    fn schema_valid(doc: &Value) -> bool {
        use crate::cmd::Cmd;
        let schema = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/compat/cosi-metadata/cosi-metadata-v1.2.schema.json");
        if Cmd::new("python3")
            .args(["-c", "import jsonschema"])
            .run()
            .is_err()
        {
            eprintln!("skipping the schema check: python3-jsonschema is not installed");
            return false;
        }
        let dir = tempfile::tempdir().unwrap();
        let doc_path = dir.path().join("metadata.json");
        std::fs::write(&doc_path, serde_json::to_vec(doc).unwrap()).unwrap();
        let py = "import json,sys,jsonschema\n\
                  s=json.load(open(sys.argv[1])); d=json.load(open(sys.argv[2]))\n\
                  errs=list(jsonschema.Draft202012Validator(s).iter_errors(d))\n\
                  [print(e.json_path, e.message) for e in errs]\n\
                  sys.exit(1 if errs else 0)\n";
        let out = Cmd::new("sh")
            .args(["-c", "python3 -c \"$0\" \"$1\" \"$2\" 2>&1 || true", py])
            .arg(&schema)
            .arg(&doc_path)
            .output_string()
            .unwrap();
        assert!(out.trim().is_empty(), "schema errors:\n{out}\n{doc:#}");
        true
    }

    #[test]
    fn serializes_to_the_file_format() {
        let m = CosiMetadata::from_value(&doc_1_2()).unwrap();
        let v = serde_json::to_value(&m).unwrap();
        // Absent optional fields are omitted, not null.
        let regions = &v["disk"]["gptRegions"];
        assert_eq!(regions[0].get("number"), None);
        assert_eq!(regions[0]["startLba"], 0);
        assert_eq!(regions[1]["number"], 1);
        assert_eq!(regions[1].get("startLba"), None);
        assert_eq!(v["bootloader"], json!({"type": "grub"}));
        assert_eq!(v["osArch"], "x86_64");
        assert_eq!(v["version"], "1.2");
        // What it writes reads back as the same metadata.
        assert_eq!(CosiMetadata::from_value(&v).unwrap(), m);
        schema_valid(&v);

        let mut sd = doc_1_2();
        sd["bootloader"] = json!({"type": "systemd-boot", "systemdBoot": {"entries": [
            {"type": "uki-config", "path": "/boot/efi/loader/entries/a.conf",
             "cmdline": "ro", "kernel": "6.6"}]}});
        let m = CosiMetadata::from_value(&sd).unwrap();
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["bootloader"], sd["bootloader"]);
        assert_eq!(v["bootloader"].get("entries"), None);
        assert_eq!(CosiMetadata::from_value(&v).unwrap(), m);
        schema_valid(&v);

        // 1.0: no sha384, no package release/arch: omitted when written.
        let old = json!({"version": "1.0", "osArch": "x86_64", "osRelease": "",
            "images": [{"image": {"path": "images/r.rawzst", "compressedSize": 1,
                "uncompressedSize": 2}, "mountPoint": "/", "fsType": "ext4",
                "fsUuid": "88d2fa9b-7a32-450a-a9f8-aa9c3de79298", "partType": "linux-generic"}],
            "osPackages": [{"name": "a", "version": "1"}]});
        let m = CosiMetadata::from_value(&old).unwrap();
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["images"][0]["image"].get("sha384"), None);
        assert_eq!(v["osPackages"][0], json!({"name": "a", "version": "1"}));
        for absent in ["bootloader", "id", "disk", "compression"] {
            assert_eq!(v.get(absent), None, "{absent}");
        }
        assert_eq!(CosiMetadata::from_value(&v).unwrap(), m);
    }

    #[test]
    fn compat_samples_round_trip_through_serialization() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/compat/cosi-metadata/valid");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let m = CosiMetadata::parse(&std::fs::read(&path).unwrap()).unwrap();
            let v = serde_json::to_value(&m).unwrap();
            assert_eq!(
                CosiMetadata::from_value(&v).unwrap(),
                m,
                "{}",
                path.display()
            );
            schema_valid(&v);
            n += 1;
        }
        assert!(n >= 2, "compat samples missing in {}", dir.display());
    }

    #[test]
    fn image_files_mut_visits_every_image() {
        let mut sd = doc_1_2();
        sd["images"][1]["verity"] =
            json!({"image": image("images/root-verity.rawzst"), "roothash": "ab"});
        let mut m = CosiMetadata::from_value(&sd).unwrap();
        let paths: Vec<String> = m.image_files_mut().map(|f| f.path.clone()).collect();
        assert_eq!(
            paths,
            [
                "images/esp.rawzst",
                "images/root.rawzst",
                "images/root-verity.rawzst",
                "images/gpt.rawzst",
                "images/esp.rawzst",
                "images/root.rawzst"
            ]
        );
    }

    #[test]
    fn sha384_of_bytes() {
        assert_eq!(
            metadata_sha384(b""),
            "38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898b95b"
        );
    }
}
