//! `storage`: disks, partitions, adopted partitions, software RAID, encryption, A/B volume
//! pairs, verity devices, filesystems and swap. Every block device has an `id` that is
//! unique across all kinds; other entries refer to devices by that id.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::{Path, PathBuf};
use uuid::Uuid;

use super::bytes::{ByteCount, ByteCountVisitor};

/// Default ESP mount point; a filesystem mounted here is the ESP unless
/// `overrideEspMount: block`.
pub const ESP_MOUNT_POINT: &str = "/boot/efi";

/// Storage configuration. Only the disks Trident should touch are listed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Storage {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    #[serde(default, skip_serializing_if = "Raid::is_empty")]
    pub raid: Raid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab_update: Option<AbUpdate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filesystems: Vec<FileSystem>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verity: Vec<VerityDevice>,
    /// Swap areas: a list of block-device ids or `{deviceId: ...}` objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub swap: Vec<Swap>,
    /// Take the storage layout from the COSI image (Trident preview feature; rejected by
    /// validation as unsupported).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub raw_cosi: bool,
}

impl Storage {
    /// Whether any storage configuration is declared at all.
    pub fn is_declared(&self) -> bool {
        *self != Storage::default()
    }

    /// All A/B volume pairs (empty when `abUpdate` is absent).
    pub fn ab_volume_pairs(&self) -> &[AbVolumePair] {
        self.ab_update
            .as_ref()
            .map(|ab| ab.volume_pairs.as_slice())
            .unwrap_or(&[])
    }

    /// The A/B volume pair with this id.
    pub fn ab_volume_pair(&self, id: &str) -> Option<&AbVolumePair> {
        self.ab_volume_pairs().iter().find(|p| p.id == id)
    }

    /// Every partition to be created, with its disk.
    pub fn partitions(&self) -> impl Iterator<Item = (&Disk, &Partition)> {
        self.disks
            .iter()
            .flat_map(|d| d.partitions.iter().map(move |p| (d, p)))
    }

    /// The partition (to be created) with this id.
    pub fn partition(&self, id: &str) -> Option<&Partition> {
        self.partitions().map(|(_, p)| p).find(|p| p.id == id)
    }

    /// The disk with this id.
    pub fn disk(&self, id: &str) -> Option<&Disk> {
        self.disks.iter().find(|d| d.id == id)
    }

    /// The software RAID array with this id.
    pub fn raid_array(&self, id: &str) -> Option<&SoftwareRaidArray> {
        self.raid.software.iter().find(|r| r.id == id)
    }

    /// The encrypted volume with this id.
    pub fn encrypted_volume(&self, id: &str) -> Option<&EncryptedVolume> {
        self.encryption
            .as_ref()
            .and_then(|e| e.volumes.iter().find(|v| v.id == id))
    }

    /// The verity device with this id.
    pub fn verity_device(&self, id: &str) -> Option<&VerityDevice> {
        self.verity.iter().find(|v| v.id == id)
    }

    /// The filesystem mounted at exactly this path.
    pub fn filesystem_at(&self, mount_path: impl AsRef<Path>) -> Option<&FileSystem> {
        let p = mount_path.as_ref();
        self.filesystems
            .iter()
            .find(|fs| fs.mount_path() == Some(p))
    }

    /// The filesystem whose mount point holds `path` (longest mount-path prefix, compared
    /// by path components), e.g. `/var/lib/trident/datastore.sqlite` → the `/var` mount
    /// when there is no `/var/lib/trident` mount.
    pub fn filesystem_holding(&self, path: impl AsRef<Path>) -> Option<&FileSystem> {
        let path = path.as_ref();
        self.filesystems
            .iter()
            .filter(|fs| fs.mount_path().is_some_and(|mp| path.starts_with(mp)))
            .max_by_key(|fs| fs.mount_path().map(|mp| mp.components().count()))
    }

    /// The ESP filesystem (see [`FileSystem::is_esp`]).
    pub fn esp_filesystem(&self) -> Option<&FileSystem> {
        self.filesystems.iter().find(|fs| fs.is_esp())
    }

    /// The root (`/`) filesystem.
    pub fn root_filesystem(&self) -> Option<&FileSystem> {
        self.filesystem_at("/")
    }
}

/// A disk Trident partitions (or adopts partitions from).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disk {
    pub id: String,
    /// Stable device path, e.g. `/dev/disk/by-path/pci-0000:00:1f.2-ata-2`.
    pub device: PathBuf,
    #[serde(default)]
    pub partition_table_type: PartitionTableType,
    #[serde(default)]
    pub partitions: Vec<Partition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adopted_partitions: Vec<AdoptedPartition>,
}

/// Partition table type; only GPT exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionTableType {
    #[default]
    Gpt,
}

/// A partition to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Partition {
    pub id: String,
    #[serde(default, rename = "type")]
    pub partition_type: PartitionType,
    pub size: PartitionSize,
    /// Partition UUID; random when unset.
    #[serde(default)]
    pub uuid: Option<Uuid>,
    /// GPT partition name; the block-device id when unset.
    #[serde(default)]
    pub label: Option<String>,
}

impl Partition {
    /// The GPT partition name Trident writes: the label, or the id.
    pub fn gpt_label(&self) -> &str {
        self.label.as_deref().unwrap_or(&self.id)
    }
}

/// A pre-existing partition to adopt; every given criterion must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdoptedPartition {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_uuid: Option<Uuid>,
}

/// Partition type: a Discoverable Partitions Specification name, or any GPT type GUID.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PartitionType {
    Esp,
    Root,
    Swap,
    RootVerity,
    Home,
    Var,
    Usr,
    UsrVerity,
    Tmp,
    #[default]
    LinuxGeneric,
    Srv,
    Xbootldr,
    /// A type GUID not covered by the names above.
    Guid(Uuid),
}

impl PartitionType {
    /// Every named type, in documentation order.
    pub const NAMED: [PartitionType; 12] = [
        PartitionType::Esp,
        PartitionType::Root,
        PartitionType::Swap,
        PartitionType::RootVerity,
        PartitionType::Home,
        PartitionType::Var,
        PartitionType::Usr,
        PartitionType::UsrVerity,
        PartitionType::Tmp,
        PartitionType::LinuxGeneric,
        PartitionType::Srv,
        PartitionType::Xbootldr,
    ];

    /// The name Trident (and systemd-repart) uses, or `None` for a custom GUID.
    pub fn as_name(&self) -> Option<&'static str> {
        Some(match self {
            PartitionType::Esp => "esp",
            PartitionType::Root => "root",
            PartitionType::Swap => "swap",
            PartitionType::RootVerity => "root-verity",
            PartitionType::Home => "home",
            PartitionType::Var => "var",
            PartitionType::Usr => "usr",
            PartitionType::UsrVerity => "usr-verity",
            PartitionType::Tmp => "tmp",
            PartitionType::LinuxGeneric => "linux-generic",
            PartitionType::Srv => "srv",
            PartitionType::Xbootldr => "xbootldr",
            PartitionType::Guid(_) => return None,
        })
    }

    /// The custom type GUID, when the type was given as a GUID.
    pub fn custom_guid(&self) -> Option<Uuid> {
        match self {
            PartitionType::Guid(g) => Some(*g),
            _ => None,
        }
    }

    /// Parse a name or a GUID.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(t) = Self::NAMED.iter().find(|t| t.as_name() == Some(s)) {
            return Ok(*t);
        }
        Uuid::parse_str(s).map(PartitionType::Guid).map_err(|_| {
            let names: Vec<&str> = Self::NAMED.iter().filter_map(|t| t.as_name()).collect();
            format!(
                "unknown partition type '{s}': expected one of {} or a GPT type GUID",
                names.join(", ")
            )
        })
    }

    /// The hash-partition type that goes with this data-partition type for dm-verity.
    pub fn verity_hash_type(&self) -> Option<PartitionType> {
        match self {
            PartitionType::Root => Some(PartitionType::RootVerity),
            PartitionType::Usr => Some(PartitionType::UsrVerity),
            PartitionType::LinuxGeneric => Some(PartitionType::LinuxGeneric),
            _ => None,
        }
    }
}

impl fmt::Display for PartitionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionType::Guid(g) => write!(f, "{g}"),
            named => f.write_str(named.as_name().unwrap_or_default()),
        }
    }
}

impl Serialize for PartitionType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PartitionType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PartitionType::parse(&s).map_err(de::Error::custom)
    }
}

/// Partition size: fixed bytes, or `grow` to fill the rest of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionSize {
    Grow,
    Fixed(ByteCount),
}

impl PartitionSize {
    pub fn fixed_bytes(&self) -> Option<u64> {
        match self {
            PartitionSize::Fixed(b) => Some(b.bytes()),
            PartitionSize::Grow => None,
        }
    }
}

impl fmt::Display for PartitionSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionSize::Grow => f.write_str("grow"),
            PartitionSize::Fixed(b) => write!(f, "{b}"),
        }
    }
}

impl Serialize for PartitionSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PartitionSize::Grow => s.serialize_str("grow"),
            PartitionSize::Fixed(b) => b.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for PartitionSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = PartitionSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`grow` or a byte count such as 4096, 64M or 4G")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PartitionSize, E> {
                ByteCountVisitor.visit_u64(v).map(PartitionSize::Fixed)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PartitionSize, E> {
                ByteCountVisitor.visit_i64(v).map(PartitionSize::Fixed)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PartitionSize, E> {
                if v.trim() == "grow" {
                    Ok(PartitionSize::Grow)
                } else {
                    ByteCountVisitor.visit_str(v).map(PartitionSize::Fixed)
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Software RAID.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Raid {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub software: Vec<SoftwareRaidArray>,
    /// Seconds to wait for arrays to finish syncing; no wait when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_timeout: Option<u64>,
}

impl Raid {
    pub fn is_empty(&self) -> bool {
        *self == Raid::default()
    }
}

/// One mdadm array, `/dev/md/<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SoftwareRaidArray {
    pub id: String,
    pub name: String,
    pub level: RaidLevel,
    /// Partition ids of the members.
    pub devices: Vec<String>,
    /// mdadm `--metadata` version (e.g. `1.2`); mdadm's default when unset. (Extension:
    /// not in Microsoft Trident's API.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_version: Option<String>,
}

impl SoftwareRaidArray {
    pub fn device_path(&self) -> PathBuf {
        Path::new("/dev/md").join(&self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RaidLevel {
    Raid0,
    Raid1,
    Raid5,
    Raid6,
    Raid10,
}

impl RaidLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            RaidLevel::Raid0 => "raid0",
            RaidLevel::Raid1 => "raid1",
            RaidLevel::Raid5 => "raid5",
            RaidLevel::Raid6 => "raid6",
            RaidLevel::Raid10 => "raid10",
        }
    }
}

/// LUKS2 encryption sealed to the TPM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Encryption {
    /// `file://` URL of a recovery key; only the TPM is enrolled when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_key_url: Option<String>,
    #[serde(default)]
    pub volumes: Vec<EncryptedVolume>,
    #[serde(default)]
    pub pcrs: Vec<Pcr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_tpm_on_install: Option<bool>,
}

/// One encrypted volume, opened as `/dev/mapper/<deviceName>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EncryptedVolume {
    pub id: String,
    pub device_name: String,
    /// The partition or RAID array to encrypt.
    pub device_id: String,
}

impl EncryptedVolume {
    pub fn device_path(&self) -> PathBuf {
        Path::new("/dev/mapper").join(&self.device_name)
    }
}

/// A TPM 2.0 PCR, written as its number (`7`) or its name (`secure-boot-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pcr(pub u8);

const PCR_NAMES: [(u8, &str); 17] = [
    (0, "platform-code"),
    (1, "platform-config"),
    (2, "external-code"),
    (3, "external-config"),
    (4, "boot-loader-code"),
    (5, "boot-loader-config"),
    (6, "host-platform"),
    (7, "secure-boot-policy"),
    (9, "kernel-initrd"),
    (10, "ima"),
    (11, "kernel-boot"),
    (12, "kernel-config"),
    (13, "sysexts"),
    (14, "shim-policy"),
    (15, "system-identity"),
    (16, "debug"),
    (23, "application-support"),
];

impl Pcr {
    pub fn number(self) -> u8 {
        self.0
    }

    pub fn name(self) -> Option<&'static str> {
        PCR_NAMES
            .iter()
            .find(|(n, _)| *n == self.0)
            .map(|(_, name)| *name)
    }

    pub fn parse(s: &str) -> Result<Pcr, String> {
        let t = s.trim();
        if let Some((n, _)) = PCR_NAMES.iter().find(|(_, name)| *name == t) {
            return Ok(Pcr(*n));
        }
        // `Pcr7` is how Trident's JSON schema spells the variants.
        let digits = t
            .strip_prefix("Pcr")
            .or_else(|| t.strip_prefix("pcr"))
            .unwrap_or(t);
        match digits.parse::<u8>() {
            Ok(n) if n <= 23 => Ok(Pcr(n)),
            _ => Err(format!(
                "unknown PCR '{s}': expected a number 0-23 or a name such as \
                 secure-boot-policy, boot-loader-code, kernel-boot"
            )),
        }
    }
}

impl fmt::Display for Pcr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Pcr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.name() {
            Some(n) => s.serialize_str(n),
            None => s.serialize_u8(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Pcr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Pcr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a PCR number 0-23 or name")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Pcr, E> {
                if v <= 23 {
                    Ok(Pcr(v as u8))
                } else {
                    Err(E::custom(format!("PCR {v} does not exist (0-23)")))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Pcr, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::custom(format!("PCR {v} does not exist (0-23)"))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Pcr, E> {
                Pcr::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A/B update: pairs of volumes, one per OS instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbUpdate {
    pub volume_pairs: Vec<AbVolumePair>,
}

/// An A/B volume pair; filesystems refer to the pair's `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbVolumePair {
    pub id: String,
    pub volume_a_id: String,
    pub volume_b_id: String,
}

/// A dm-verity device built from a data and a hash device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerityDevice {
    pub id: String,
    /// Device-mapper name: `root` for `/`, `usr` for `/usr`.
    pub name: String,
    pub data_device_id: String,
    pub hash_device_id: String,
    #[serde(default)]
    pub corruption_option: VerityCorruptionOption,
}

impl VerityDevice {
    pub fn device_path(&self) -> PathBuf {
        Path::new("/dev/mapper").join(&self.name)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerityCorruptionOption {
    #[default]
    IoError,
    Ignore,
    Panic,
    Restart,
}

/// Where a filesystem's content comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileSystemSource {
    /// Streamed from the COSI image (the image says which filesystem type).
    #[default]
    Image,
    /// Created empty (`mkfs`).
    New,
    /// Kept from an adopted partition.
    Adopted,
}

impl FileSystemSource {
    pub fn as_str(self) -> &'static str {
        match self {
            FileSystemSource::Image => "image",
            FileSystemSource::New => "new",
            FileSystemSource::Adopted => "adopted",
        }
    }

    fn is_image(&self) -> bool {
        *self == FileSystemSource::Image
    }
}

/// Filesystem type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileSystemType {
    Ext4,
    Xfs,
    Vfat,
    Ntfs,
    Tmpfs,
    Auto,
    Iso9660,
}

impl FileSystemType {
    pub fn as_str(self) -> &'static str {
        match self {
            FileSystemType::Ext4 => "ext4",
            FileSystemType::Xfs => "xfs",
            FileSystemType::Vfat => "vfat",
            FileSystemType::Ntfs => "ntfs",
            FileSystemType::Tmpfs => "tmpfs",
            FileSystemType::Auto => "auto",
            FileSystemType::Iso9660 => "iso9660",
        }
    }

    /// Types a `source: new` filesystem may have.
    pub fn valid_for_new(self) -> bool {
        matches!(
            self,
            FileSystemType::Ext4
                | FileSystemType::Xfs
                | FileSystemType::Vfat
                | FileSystemType::Ntfs
                | FileSystemType::Tmpfs
        )
    }

    /// Types a `source: adopted` filesystem may have.
    pub fn valid_for_adopted(self) -> bool {
        !matches!(self, FileSystemType::Tmpfs)
    }
}

/// How `overrideEspMount` changes which filesystem is the ESP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverrideEspMount {
    /// The filesystem mounted at `/boot/efi` is the ESP.
    #[default]
    UseDefault,
    /// This filesystem is the ESP, wherever it is mounted.
    Override,
    /// This filesystem is not the ESP even if mounted at `/boot/efi`.
    Block,
}

impl OverrideEspMount {
    fn is_default(&self) -> bool {
        *self == OverrideEspMount::UseDefault
    }
}

/// A filesystem on a block device (or a tmpfs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSystem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "FileSystemSource::is_image")]
    pub source: FileSystemSource,
    /// Must be absent for `source: image`; defaults to `ext4` for `new` and `auto` for
    /// `adopted` (see [`FileSystem::effective_type`]).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<FileSystemType>,
    /// A path string, or `{path, options}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_point: Option<MountPoint>,
    #[serde(default, skip_serializing_if = "OverrideEspMount::is_default")]
    pub override_esp_mount: OverrideEspMount,
}

impl FileSystem {
    pub fn mount_path(&self) -> Option<&Path> {
        self.mount_point.as_ref().map(|m| m.path.as_path())
    }

    /// Whether this filesystem is the ESP: mounted at `/boot/efi` (unless
    /// `overrideEspMount: block`) or marked `overrideEspMount: override`.
    pub fn is_esp(&self) -> bool {
        match self.override_esp_mount {
            OverrideEspMount::UseDefault => self.mount_path() == Some(Path::new(ESP_MOUNT_POINT)),
            OverrideEspMount::Override => self.mount_point.is_some(),
            OverrideEspMount::Block => false,
        }
    }

    pub fn is_root(&self) -> bool {
        self.mount_path() == Some(Path::new("/"))
    }

    pub fn is_read_only(&self) -> bool {
        self.mount_point
            .as_ref()
            .is_some_and(|m| m.has_option("ro"))
    }

    /// The filesystem type to create or mount: the explicit type, or the default for the
    /// source (`new` → ext4, `adopted` → auto). `None` for image filesystems, whose type
    /// comes from the image.
    pub fn effective_type(&self) -> Option<FileSystemType> {
        match self.source {
            FileSystemSource::Image => self.fs_type,
            FileSystemSource::New => Some(self.fs_type.unwrap_or(FileSystemType::Ext4)),
            FileSystemSource::Adopted => Some(self.fs_type.unwrap_or(FileSystemType::Auto)),
        }
    }

    /// One-line description for messages (filesystems have no id).
    pub fn describe(&self) -> String {
        let mut s = format!("{} filesystem", self.source.as_str());
        if let Some(d) = &self.device_id {
            s.push_str(&format!(" on '{d}'"));
        }
        if let Some(p) = self.mount_path() {
            s.push_str(&format!(" at {}", p.display()));
        }
        s
    }
}

/// Where and how a filesystem is mounted. Accepts a bare path string (options `defaults`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MountPoint {
    pub path: PathBuf,
    pub options: String,
}

impl MountPoint {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        MountPoint {
            path: path.into(),
            options: "defaults".to_owned(),
        }
    }

    /// The comma-separated options as a list, empty entries dropped.
    pub fn option_list(&self) -> Vec<&str> {
        self.options
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect()
    }

    pub fn has_option(&self, opt: &str) -> bool {
        self.option_list().contains(&opt)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MountPointFull {
    path: PathBuf,
    #[serde(default = "default_mount_options")]
    options: String,
}

fn default_mount_options() -> String {
    "defaults".to_owned()
}

impl<'de> Deserialize<'de> for MountPoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = MountPoint;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mount path string or a mapping with `path` and `options`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MountPoint, E> {
                Ok(MountPoint::new(v))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<MountPoint, A::Error> {
                let full = MountPointFull::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(MountPoint {
                    path: full.path,
                    options: full.options,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A swap area. Accepts a bare block-device id string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Swap {
    pub device_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SwapFull {
    device_id: String,
}

impl<'de> Deserialize<'de> for Swap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Swap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a block-device id string or a mapping with `deviceId`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Swap, E> {
                Ok(Swap {
                    device_id: v.to_owned(),
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Swap, A::Error> {
                let full = SwapFull::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Swap {
                    device_id: full.device_id,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_type_names_and_guids() {
        for t in PartitionType::NAMED {
            let name = t.as_name().unwrap();
            assert_eq!(PartitionType::parse(name).unwrap(), t);
            let y = serde_yaml::to_string(&t).unwrap();
            assert_eq!(serde_yaml::from_str::<PartitionType>(&y).unwrap(), t);
        }
        let g = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
        let t = PartitionType::parse(g).unwrap();
        assert_eq!(t.as_name(), None);
        assert_eq!(t.custom_guid().unwrap().to_string(), g);
        assert_eq!(t.to_string(), g);
        let err = PartitionType::parse("rooot").unwrap_err();
        assert!(err.contains("unknown partition type 'rooot'"), "{err}");
        assert_eq!(PartitionType::default(), PartitionType::LinuxGeneric);
    }

    #[test]
    fn partition_size_grow_and_fixed() {
        let s: PartitionSize = serde_yaml::from_str("grow").unwrap();
        assert_eq!(s, PartitionSize::Grow);
        let s: PartitionSize = serde_yaml::from_str("8G").unwrap();
        assert_eq!(s.fixed_bytes(), Some(8 << 30));
        let s: PartitionSize = serde_yaml::from_str("4096").unwrap();
        assert_eq!(s.fixed_bytes(), Some(4096));
        assert!(serde_yaml::from_str::<PartitionSize>("big").is_err());
        assert_eq!(
            serde_yaml::to_string(&PartitionSize::Grow).unwrap().trim(),
            "grow"
        );
    }

    #[test]
    fn mount_point_shorthand_and_full() {
        let m: MountPoint = serde_yaml::from_str("/var").unwrap();
        assert_eq!(m, MountPoint::new("/var"));
        assert_eq!(m.options, "defaults");
        let m: MountPoint = serde_yaml::from_str("{path: /, options: 'ro,noatime'}").unwrap();
        assert!(m.has_option("ro") && m.has_option("noatime") && !m.has_option("rw"));
        let m: MountPoint = serde_yaml::from_str("path: /srv").unwrap();
        assert_eq!(m.options, "defaults");
        let err = serde_yaml::from_str::<MountPoint>("{path: /, opts: ro}").unwrap_err();
        assert!(err.to_string().contains("unknown field `opts`"), "{err}");
    }

    #[test]
    fn swap_shorthand_and_full() {
        let v: Vec<Swap> = serde_yaml::from_str("[swap1, {deviceId: swap2}]").unwrap();
        assert_eq!(v[0].device_id, "swap1");
        assert_eq!(v[1].device_id, "swap2");
        assert!(serde_yaml::from_str::<Vec<Swap>>("[{device: x}]").is_err());
    }

    #[test]
    fn pcr_numbers_and_names() {
        let v: Vec<Pcr> =
            serde_yaml::from_str("[7, secure-boot-policy, boot-loader-code, Pcr11, 8]").unwrap();
        assert_eq!(v, vec![Pcr(7), Pcr(7), Pcr(4), Pcr(11), Pcr(8)]);
        assert_eq!(
            serde_yaml::to_string(&Pcr(7)).unwrap().trim(),
            "secure-boot-policy"
        );
        assert_eq!(serde_yaml::to_string(&Pcr(8)).unwrap().trim(), "8");
        assert!(serde_yaml::from_str::<Pcr>("24").is_err());
        assert!(serde_yaml::from_str::<Pcr>("pcr").is_err());
        assert!(serde_yaml::from_str::<Pcr>("secure-boot").is_err());
    }

    #[test]
    fn filesystem_esp_detection() {
        let mut fs = FileSystem {
            mount_point: Some(MountPoint::new(ESP_MOUNT_POINT)),
            ..Default::default()
        };
        assert!(fs.is_esp());
        fs.override_esp_mount = OverrideEspMount::Block;
        assert!(!fs.is_esp());
        fs.mount_point = Some(MountPoint::new("/efi"));
        fs.override_esp_mount = OverrideEspMount::Override;
        assert!(fs.is_esp());
        fs.mount_point = None;
        assert!(!fs.is_esp());
    }

    #[test]
    fn filesystem_holding_uses_components() {
        let st = Storage {
            filesystems: vec![
                FileSystem {
                    device_id: Some("root".into()),
                    mount_point: Some(MountPoint::new("/")),
                    ..Default::default()
                },
                FileSystem {
                    device_id: Some("var".into()),
                    mount_point: Some(MountPoint::new("/var")),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let held = |p: &str| st.filesystem_holding(p).unwrap().device_id.clone().unwrap();
        assert_eq!(held("/var/lib/x"), "var");
        assert_eq!(held("/variable"), "root");
        assert_eq!(held("/"), "root");
    }
}
