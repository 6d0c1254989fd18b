//! UEFI load options: `Boot####`, `BootOrder`, `BootNext`, `BootCurrent`.
//!
//! A `Boot####` variable holds an `EFI_LOAD_OPTION` (UEFI 2.10 §3.1.3):
//!
//! ```text
//! u32   Attributes            (LOAD_OPTION_ACTIVE = 1)
//! u16   FilePathListLength    (bytes of the device path below)
//! CHAR16 Description[]        (UTF-16LE, NUL-terminated)
//! EFI_DEVICE_PATH FilePathList[FilePathListLength]
//! u8    OptionalData[]        (rest; for an EFI-stub kernel: its UTF-16 command line)
//! ```
//!
//! The device path is the short form firmware and `efibootmgr` use for a file on a GPT
//! partition (UEFI 2.10 §10.3.5.1 and §10.3.5.4): a Hard Drive media node, a File Path
//! media node and the End node. Every node starts with `type u8, subtype u8,
//! length u16 LE` (length includes the 4-byte header).

use super::efivar::{decode_utf16le, encode_utf16le, EfiVars, ATTR_NV_BS_RT, EFI_GLOBAL};
use anyhow::{bail, ensure, Context, Result};
use uuid::Uuid;

/// `LOAD_OPTION_ACTIVE`.
pub const LOAD_OPTION_ACTIVE: u32 = 0x1;

const DP_TYPE_MEDIA: u8 = 0x04;
const DP_SUBTYPE_HARD_DRIVE: u8 = 0x01;
const DP_SUBTYPE_FILE_PATH: u8 = 0x04;
const DP_TYPE_END: u8 = 0x7f;
const DP_SUBTYPE_END_ENTIRE: u8 = 0xff;
const HD_NODE_LEN: u16 = 42;
/// `PartitionFormat` 0x02: GUID Partition Table.
const HD_FORMAT_GPT: u8 = 0x02;
/// `SignatureType` 0x02: GUID signature.
const HD_SIGNATURE_GUID: u8 = 0x02;

/// The UEFI removable-media fallback loader on x86-64.
pub const FALLBACK_LOADER: &str = r"\EFI\BOOT\BOOTX64.EFI";
/// Where systemd-boot installs itself.
pub const SYSTEMD_BOOT_LOADER: &str = r"\EFI\systemd\systemd-bootx64.efi";

/// A GPT partition as firmware names it in a Hard Drive device path node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardDrive {
    /// 1-based partition number.
    pub partition_number: u32,
    /// First LBA (512-byte sectors on the disks we handle).
    pub start_lba: u64,
    /// Size in LBAs.
    pub size_lba: u64,
    /// The partition's unique GUID (GPT `PARTUUID`).
    pub partition_uuid: Uuid,
}

/// A decoded device path: the forms this module writes, plus anything else kept as raw
/// nodes so a foreign entry can be decoded and compared without loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePath {
    pub hard_drive: Option<HardDrive>,
    /// File path on the partition, with backslashes (`\EFI\BOOT\BOOTX64.EFI`).
    pub file: Option<String>,
    /// The encoded bytes, End node included.
    pub raw: Vec<u8>,
}

impl DevicePath {
    /// `HD(...)/File(path)/End`.
    pub fn hd_file(hd: HardDrive, file: &str) -> Self {
        let mut raw = Vec::new();
        push_node_header(&mut raw, DP_TYPE_MEDIA, DP_SUBTYPE_HARD_DRIVE, HD_NODE_LEN);
        raw.extend_from_slice(&hd.partition_number.to_le_bytes());
        raw.extend_from_slice(&hd.start_lba.to_le_bytes());
        raw.extend_from_slice(&hd.size_lba.to_le_bytes());
        raw.extend_from_slice(&hd.partition_uuid.to_bytes_le());
        raw.push(HD_FORMAT_GPT);
        raw.push(HD_SIGNATURE_GUID);
        let path = encode_utf16le(file);
        push_node_header(
            &mut raw,
            DP_TYPE_MEDIA,
            DP_SUBTYPE_FILE_PATH,
            (4 + path.len()) as u16,
        );
        raw.extend_from_slice(&path);
        push_node_header(&mut raw, DP_TYPE_END, DP_SUBTYPE_END_ENTIRE, 4);
        Self {
            hard_drive: Some(hd),
            file: Some(file.to_string()),
            raw,
        }
    }

    /// Decode a device path list; stops at the first End Entire node.
    pub fn decode(raw: &[u8]) -> Result<Self> {
        let mut hard_drive = None;
        let mut file = None;
        let mut pos = 0usize;
        loop {
            ensure!(
                pos + 4 <= raw.len(),
                "device path ends without an End node at byte {pos}"
            );
            let (ty, sub) = (raw[pos], raw[pos + 1]);
            let len = u16::from_le_bytes([raw[pos + 2], raw[pos + 3]]) as usize;
            ensure!(
                len >= 4,
                "device path node at byte {pos} has length {len} < 4"
            );
            ensure!(
                pos + len <= raw.len(),
                "device path node at byte {pos} (length {len}) runs past the end ({} bytes)",
                raw.len()
            );
            let body = &raw[pos + 4..pos + len];
            match (ty, sub) {
                (DP_TYPE_END, DP_SUBTYPE_END_ENTIRE) => {
                    pos += len;
                    break;
                }
                (DP_TYPE_MEDIA, DP_SUBTYPE_HARD_DRIVE) => {
                    ensure!(
                        len == HD_NODE_LEN as usize,
                        "Hard Drive node has length {len}, expected {HD_NODE_LEN}"
                    );
                    let format = body[36];
                    let sig_type = body[37];
                    if format == HD_FORMAT_GPT && sig_type == HD_SIGNATURE_GUID {
                        let mut guid = [0u8; 16];
                        guid.copy_from_slice(&body[20..36]);
                        hard_drive = Some(HardDrive {
                            partition_number: u32::from_le_bytes(body[0..4].try_into()?),
                            start_lba: u64::from_le_bytes(body[4..12].try_into()?),
                            size_lba: u64::from_le_bytes(body[12..20].try_into()?),
                            partition_uuid: Uuid::from_bytes_le(guid),
                        });
                    }
                }
                (DP_TYPE_MEDIA, DP_SUBTYPE_FILE_PATH) => {
                    let part = decode_utf16le(body).context("decoding File Path node")?;
                    // Several File Path nodes concatenate into one path.
                    file = Some(match file {
                        None => part,
                        Some(prev) => format!("{prev}{part}"),
                    });
                }
                _ => {}
            }
            pos += len;
        }
        Ok(Self {
            hard_drive,
            file,
            raw: raw[..pos].to_vec(),
        })
    }

    /// Whether this path names `file` on the partition `partition_uuid` (file names on
    /// FAT are case-insensitive; `/` and `\` are equivalent).
    pub fn points_at(&self, partition_uuid: &Uuid, file: &str) -> bool {
        let same_part = self
            .hard_drive
            .map(|hd| hd.partition_uuid == *partition_uuid)
            .unwrap_or(false);
        let norm = |s: &str| s.replace('/', "\\").to_ascii_lowercase();
        same_part && self.file.as_deref().map(norm) == Some(norm(file))
    }
}

fn push_node_header(out: &mut Vec<u8>, ty: u8, sub: u8, len: u16) {
    out.push(ty);
    out.push(sub);
    out.extend_from_slice(&len.to_le_bytes());
}

/// A decoded `EFI_LOAD_OPTION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOption {
    pub attributes: u32,
    pub description: String,
    pub device_path: DevicePath,
    pub optional_data: Vec<u8>,
}

impl LoadOption {
    /// An active entry for `file` on partition `hd`.
    pub fn new(description: &str, hd: HardDrive, file: &str) -> Self {
        Self {
            attributes: LOAD_OPTION_ACTIVE,
            description: description.to_string(),
            device_path: DevicePath::hd_file(hd, file),
            optional_data: Vec::new(),
        }
    }

    /// Set the optional data to a UTF-16LE string (an EFI-stub kernel's command line,
    /// as `efibootmgr --unicode` writes it).
    pub fn with_unicode_args(mut self, args: &str) -> Self {
        self.optional_data = encode_utf16le(args);
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.attributes.to_le_bytes());
        out.extend_from_slice(&(self.device_path.raw.len() as u16).to_le_bytes());
        out.extend_from_slice(&encode_utf16le(&self.description));
        out.extend_from_slice(&self.device_path.raw);
        out.extend_from_slice(&self.optional_data);
        out
    }

    pub fn decode(data: &[u8]) -> Result<Self> {
        ensure!(
            data.len() >= 6,
            "load option is {} bytes, too short for its header",
            data.len()
        );
        let attributes = u32::from_le_bytes(data[0..4].try_into()?);
        let dp_len = u16::from_le_bytes([data[4], data[5]]) as usize;
        // Description: UTF-16 code units up to and including the NUL.
        let mut pos = 6;
        let mut units = Vec::new();
        loop {
            ensure!(
                pos + 2 <= data.len(),
                "load option description is not terminated"
            );
            let u = u16::from_le_bytes([data[pos], data[pos + 1]]);
            pos += 2;
            if u == 0 {
                break;
            }
            units.push(u);
        }
        let description =
            String::from_utf16(&units).context("load option description is not UTF-16")?;
        ensure!(
            pos + dp_len <= data.len(),
            "load option device path ({dp_len} bytes at {pos}) runs past the end ({} bytes)",
            data.len()
        );
        let device_path = DevicePath::decode(&data[pos..pos + dp_len])?;
        ensure!(
            device_path.raw.len() == dp_len,
            "load option device path ends at byte {} but FilePathListLength says {dp_len}",
            device_path.raw.len()
        );
        Ok(Self {
            attributes,
            description,
            device_path,
            optional_data: data[pos + dp_len..].to_vec(),
        })
    }
}

/// Name of the `Boot####` variable for `num` (upper-case hex, as the spec requires).
pub fn boot_var_name(num: u16) -> String {
    format!("Boot{num:04X}")
}

/// Parse `Boot####` (exactly four upper-case hex digits) into its number.
pub fn parse_boot_var_name(name: &str) -> Option<u16> {
    let hex = name.strip_prefix("Boot")?;
    if hex.len() != 4
        || !hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c))
    {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

/// Encode a `BootOrder` value.
pub fn encode_boot_order(order: &[u16]) -> Vec<u8> {
    order.iter().flat_map(|n| n.to_le_bytes()).collect()
}

/// Decode a `BootOrder` value.
pub fn decode_boot_order(data: &[u8]) -> Result<Vec<u16>> {
    ensure!(
        data.len() % 2 == 0,
        "BootOrder has an odd length ({} bytes)",
        data.len()
    );
    Ok(data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect())
}

/// `order` with `num` moved (or added) to the front, without duplicates.
pub fn order_with_first(order: &[u16], num: u16) -> Vec<u16> {
    std::iter::once(num)
        .chain(order.iter().copied().filter(|&n| n != num))
        .collect()
}

/// The firmware's boot variables in one efivarfs root.
#[derive(Debug, Clone)]
pub struct UefiBootVars {
    vars: EfiVars,
}

impl UefiBootVars {
    pub fn new(vars: EfiVars) -> Self {
        Self { vars }
    }

    pub fn efivars(&self) -> &EfiVars {
        &self.vars
    }

    /// All `Boot####` entries, by number. Entries that fail to decode are skipped with a
    /// warning: they belong to the firmware or another OS and are not ours to judge.
    pub fn entries(&self) -> Result<Vec<(u16, LoadOption)>> {
        let mut out = Vec::new();
        for name in self.vars.list(&EFI_GLOBAL)? {
            let Some(num) = parse_boot_var_name(&name) else {
                continue;
            };
            let Some(value) = self.vars.get_value(&name, &EFI_GLOBAL)? else {
                continue;
            };
            match LoadOption::decode(&value) {
                Ok(opt) => out.push((num, opt)),
                Err(e) => {
                    tracing::warn!(variable = %name, error = %format!("{e:#}"), "skipping undecodable boot entry")
                }
            }
        }
        Ok(out)
    }

    pub fn get_entry(&self, num: u16) -> Result<Option<LoadOption>> {
        let name = boot_var_name(num);
        match self.vars.get_value(&name, &EFI_GLOBAL)? {
            None => Ok(None),
            Some(v) => LoadOption::decode(&v)
                .map(Some)
                .with_context(|| format!("decoding {name}")),
        }
    }

    pub fn set_entry(&self, num: u16, opt: &LoadOption) -> Result<()> {
        self.vars
            .set(
                &boot_var_name(num),
                &EFI_GLOBAL,
                ATTR_NV_BS_RT,
                &opt.encode(),
            )
            .with_context(|| format!("writing {}", boot_var_name(num)))
    }

    pub fn delete_entry(&self, num: u16) -> Result<()> {
        self.vars.delete(&boot_var_name(num), &EFI_GLOBAL)
    }

    pub fn boot_order(&self) -> Result<Vec<u16>> {
        match self.vars.get_value("BootOrder", &EFI_GLOBAL)? {
            None => Ok(Vec::new()),
            Some(v) => decode_boot_order(&v),
        }
    }

    pub fn set_boot_order(&self, order: &[u16]) -> Result<()> {
        if order.is_empty() {
            return self.vars.delete("BootOrder", &EFI_GLOBAL);
        }
        self.vars.set(
            "BootOrder",
            &EFI_GLOBAL,
            ATTR_NV_BS_RT,
            &encode_boot_order(order),
        )
    }

    pub fn boot_next(&self) -> Result<Option<u16>> {
        self.vars.get_u16("BootNext", &EFI_GLOBAL)
    }

    pub fn set_boot_next(&self, num: u16) -> Result<()> {
        self.vars
            .set("BootNext", &EFI_GLOBAL, ATTR_NV_BS_RT, &num.to_le_bytes())
    }

    pub fn clear_boot_next(&self) -> Result<()> {
        self.vars.delete("BootNext", &EFI_GLOBAL)
    }

    /// The entry the firmware booted this time (volatile; set by firmware).
    pub fn boot_current(&self) -> Result<Option<u16>> {
        self.vars.get_u16("BootCurrent", &EFI_GLOBAL)
    }

    /// Find an entry pointing at `file` on partition `hd` and update it to `want`
    /// (description, optional data, partition geometry), or create one at the lowest
    /// free number. Returns the entry number. BootOrder is not touched.
    pub fn ensure_entry(&self, want: &LoadOption) -> Result<u16> {
        let hd = want
            .device_path
            .hard_drive
            .context("a Trident boot entry must name a GPT partition")?;
        let file = want
            .device_path
            .file
            .as_deref()
            .context("a Trident boot entry must name a file")?;
        validate_loader_path(file)?;
        let entries = self.entries()?;
        if let Some((num, existing)) = entries
            .iter()
            .find(|(_, o)| o.device_path.points_at(&hd.partition_uuid, file))
        {
            if existing != want {
                tracing::info!(entry = %boot_var_name(*num), "updating UEFI boot entry");
                self.set_entry(*num, want)?;
            } else {
                tracing::debug!(entry = %boot_var_name(*num), "reusing UEFI boot entry");
            }
            return Ok(*num);
        }
        // Numbers in use: decodable entries, but also anything named Boot#### at all.
        let used: Vec<u16> = self
            .vars
            .list(&EFI_GLOBAL)?
            .iter()
            .filter_map(|n| parse_boot_var_name(n))
            .collect();
        let num = (0..=u16::MAX)
            .find(|n| !used.contains(n))
            .context("all 65536 Boot#### numbers are in use")?;
        tracing::info!(entry = %boot_var_name(num), description = %want.description, "creating UEFI boot entry");
        self.set_entry(num, want)?;
        Ok(num)
    }

    /// [`UefiBootVars::ensure_entry`], then put the entry first in `BootOrder`.
    pub fn ensure_first(&self, want: &LoadOption) -> Result<u16> {
        let num = self.ensure_entry(want)?;
        let order = self.boot_order()?;
        let new_order = order_with_first(&order, num);
        if new_order != order {
            self.set_boot_order(&new_order)?;
        }
        Ok(num)
    }
}

/// Check a loader path is in the form firmware expects (`\EFI\...`, backslashes).
pub fn validate_loader_path(file: &str) -> Result<()> {
    if !file.starts_with('\\') {
        bail!("EFI loader path {file:?} must be absolute with backslashes, like \\EFI\\BOOT\\BOOTX64.EFI");
    }
    if file.contains('/') {
        bail!("EFI loader path {file:?} must use backslashes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::uuid;

    fn hd() -> HardDrive {
        HardDrive {
            partition_number: 1,
            start_lba: 2048,
            size_lba: 204800,
            partition_uuid: uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
        }
    }

    #[test]
    fn boot_var_names() {
        assert_eq!(boot_var_name(0x1a), "Boot001A");
        assert_eq!(parse_boot_var_name("Boot001A"), Some(0x1a));
        assert_eq!(parse_boot_var_name("Boot001a"), None);
        assert_eq!(parse_boot_var_name("BootOrder"), None);
        assert_eq!(parse_boot_var_name("BootNext"), None);
        assert_eq!(parse_boot_var_name("Boot00001"), None);
    }

    #[test]
    fn boot_order_manipulation() {
        assert_eq!(encode_boot_order(&[1, 0x100]), vec![1, 0, 0, 1]);
        assert_eq!(decode_boot_order(&[1, 0, 0, 1]).unwrap(), vec![1, 0x100]);
        assert!(decode_boot_order(&[1, 0, 0]).is_err());
        assert_eq!(order_with_first(&[3, 1, 2], 2), vec![2, 3, 1]);
        assert_eq!(order_with_first(&[3, 1], 7), vec![7, 3, 1]);
        assert_eq!(order_with_first(&[], 7), vec![7]);
        assert_eq!(order_with_first(&[7, 7, 1], 7), vec![7, 1]);
    }

    #[test]
    fn load_option_round_trip() {
        let opt = LoadOption::new("Trident A", hd(), r"\EFI\trident\a\linux.efi")
            .with_unicode_args("root=PARTUUID=x ro");
        let enc = opt.encode();
        let dec = LoadOption::decode(&enc).unwrap();
        assert_eq!(dec, opt);
        assert_eq!(
            decode_utf16le(&dec.optional_data).unwrap(),
            "root=PARTUUID=x ro"
        );
    }

    #[test]
    fn load_option_byte_exact() {
        // Hand-computed from UEFI 2.10 §3.1.3, §10.3.5.1, §10.3.5.4 for
        // "A", HD(1, GPT, c12a7328-f81f-11d2-ba4b-00a0c93ec93b, 0x800, 0x32000), File(\a).
        let opt = LoadOption::new("A", hd(), r"\a");
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            0x01, 0x00, 0x00, 0x00,             // Attributes: ACTIVE
            0x38, 0x00,                         // FilePathListLength = 42 + 10 + 4 = 56
            0x41, 0x00, 0x00, 0x00,             // "A\0"
            0x04, 0x01, 0x2a, 0x00,             // HD node, length 42
            0x01, 0x00, 0x00, 0x00,             // partition 1
            0x00, 0x08, 0, 0, 0, 0, 0, 0,       // start LBA 2048
            0x00, 0x20, 0x03, 0, 0, 0, 0, 0,    // size 204800
            0x28, 0x73, 0x2a, 0xc1,             // GUID, mixed endian
            0x1f, 0xf8, 0xd2, 0x11,
            0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
            0x02, 0x02,                         // GPT, GUID signature
            0x04, 0x04, 0x0a, 0x00,             // File path node, length 4 + 6
            0x5c, 0x00, 0x61, 0x00, 0x00, 0x00, // "\a\0"
            0x7f, 0xff, 0x04, 0x00,             // End entire
        ];
        assert_eq!(opt.encode(), expected);
        assert_eq!(LoadOption::decode(&expected).unwrap(), opt);
    }

    #[test]
    fn truncated_or_inconsistent_options_are_refused() {
        let enc = LoadOption::new("Trident", hd(), FALLBACK_LOADER).encode();
        for cut in [0, 5, 8, 20, enc.len() - 1] {
            assert!(LoadOption::decode(&enc[..cut]).is_err(), "cut at {cut}");
        }
        // FilePathListLength one short of the real path.
        let mut bad = enc.clone();
        let len = u16::from_le_bytes([bad[4], bad[5]]) - 2;
        bad[4..6].copy_from_slice(&len.to_le_bytes());
        assert!(LoadOption::decode(&bad).is_err());
        // A node claiming length 2.
        let mut bad = enc;
        let dp = 6 + encode_utf16le("Trident").len();
        bad[dp + 2] = 2;
        assert!(LoadOption::decode(&bad).is_err());
    }

    #[test]
    fn points_at_is_case_and_slash_insensitive() {
        let dp = DevicePath::hd_file(hd(), r"\EFI\BOOT\BOOTX64.EFI");
        assert!(dp.points_at(&hd().partition_uuid, "/efi/boot/bootx64.efi"));
        assert!(!dp.points_at(&Uuid::nil(), r"\EFI\BOOT\BOOTX64.EFI"));
        assert!(!dp.points_at(&hd().partition_uuid, r"\EFI\BOOT\other.EFI"));
    }

    #[test]
    fn loader_path_validation() {
        assert!(validate_loader_path(SYSTEMD_BOOT_LOADER).is_ok());
        assert!(validate_loader_path("EFI/BOOT/BOOTX64.EFI").is_err());
        assert!(validate_loader_path(r"\EFI/BOOT").is_err());
    }
}
