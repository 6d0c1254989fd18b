//! Filesystems: create (ext4, xfs, vfat, swap) with a label and UUID, grow ext4,
//! identify a device by reading its superblock, and mount with an RAII guard.

use crate::cmd::Cmd;
use crate::error::TridentError;
use anyhow::{bail, Context, Result};
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use uuid::Uuid;

/// Filesystems Trident can create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsType {
    Ext4,
    Xfs,
    /// FAT, size chosen by mkfs.vfat.
    Vfat,
    /// FAT32 forced (what an ESP wants).
    Fat32,
    Swap,
}

impl FsType {
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
            FsType::Vfat => "vfat",
            FsType::Fat32 => "fat32",
            FsType::Swap => "swap",
        }
    }

    /// Longest label the filesystem stores (bytes).
    pub fn max_label_len(self) -> usize {
        match self {
            FsType::Ext4 | FsType::Swap => 16,
            FsType::Xfs => 12,
            FsType::Vfat | FsType::Fat32 => 11,
        }
    }

    fn is_fat(self) -> bool {
        matches!(self, FsType::Vfat | FsType::Fat32)
    }
}

impl FromStr for FsType {
    type Err = TridentError;

    fn from_str(s: &str) -> Result<Self, TridentError> {
        Ok(match s {
            "ext4" => FsType::Ext4,
            "xfs" => FsType::Xfs,
            "vfat" => FsType::Vfat,
            "fat32" => FsType::Fat32,
            "swap" => FsType::Swap,
            other => {
                return Err(TridentError::unsupported(
                    "unsupported-filesystem",
                    format!(
                        "cannot create filesystem type {other:?}: expected ext4, xfs, vfat, \
                         fat32 or swap"
                    ),
                ))
            }
        })
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity to give a new filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MkfsOptions {
    pub label: Option<String>,
    /// A UUID for ext4/xfs/swap; a FAT volume id (`ABCD-1234`) for vfat/fat32.
    pub uuid: Option<String>,
}

/// A FAT volume id from `ABCD-1234` or `abcd1234`.
fn parse_fat_id(s: &str) -> Option<u32> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 8 || (s.len() == 9 && s.as_bytes()[4] != b'-') || s.len() > 9 {
        return None;
    }
    u32::from_str_radix(&hex, 16).ok()
}

/// Check the label and UUID fit the filesystem; returns the normalized UUID string.
fn validate(fs: FsType, opts: &MkfsOptions) -> Result<Option<String>, TridentError> {
    if let Some(label) = &opts.label {
        if label.len() > fs.max_label_len() {
            return Err(TridentError::invalid_input(
                "filesystem-label-too-long",
                format!(
                    "label {label:?} is longer than the {} bytes {fs} allows",
                    fs.max_label_len()
                ),
            ));
        }
    }
    let Some(id) = &opts.uuid else {
        return Ok(None);
    };
    if fs.is_fat() {
        parse_fat_id(id)
            .map(|v| Some(format!("{v:08X}")))
            .ok_or_else(|| {
                TridentError::invalid_input(
                    "bad-filesystem-uuid",
                    format!("{id:?} is not a FAT volume id like ABCD-1234"),
                )
            })
    } else {
        Uuid::try_parse(id)
            .map(|u| Some(u.to_string()))
            .map_err(|_| {
                TridentError::invalid_input("bad-filesystem-uuid", format!("{id:?} is not a UUID"))
            })
    }
}

/// The mkfs command for `fs` on `device` (exposed for logs and dry runs).
pub fn mkfs_command(device: &Path, fs: FsType, opts: &MkfsOptions) -> Result<Cmd, TridentError> {
    let uuid = validate(fs, opts)?;
    let label = opts.label.as_deref();
    let mut cmd = match fs {
        FsType::Ext4 => {
            let mut c = Cmd::new("mkfs.ext4").args(["-F", "-q"]);
            if let Some(l) = label {
                c = c.args(["-L", l]);
            }
            if let Some(u) = &uuid {
                c = c.args(["-U", u]);
            }
            c
        }
        FsType::Xfs => {
            let mut c = Cmd::new("mkfs.xfs").args(["-f", "-q"]);
            if let Some(l) = label {
                c = c.args(["-L", l]);
            }
            if let Some(u) = &uuid {
                c = c.args(["-m".to_string(), format!("uuid={u}")]);
            }
            c
        }
        FsType::Vfat | FsType::Fat32 => {
            let mut c = Cmd::new("mkfs.vfat");
            if fs == FsType::Fat32 {
                c = c.args(["-F", "32"]);
            }
            if let Some(l) = label {
                c = c.args(["-n", l]);
            }
            if let Some(u) = &uuid {
                c = c.args(["-i", u]);
            }
            c
        }
        FsType::Swap => {
            let mut c = Cmd::new("mkswap").arg("-f");
            if let Some(l) = label {
                c = c.args(["-L", l]);
            }
            if let Some(u) = &uuid {
                c = c.args(["-U", u]);
            }
            c
        }
    };
    cmd = cmd.arg(device);
    Ok(cmd)
}

/// Create a filesystem (or swap area) on `device`.
pub fn mkfs(device: &Path, fs: FsType, opts: &MkfsOptions) -> Result<()> {
    let cmd = mkfs_command(device, fs, opts)?;
    tracing::info!(device = %device.display(), %fs, command = %cmd.render(), "creating filesystem");
    cmd.run()
        .with_context(|| format!("creating {fs} on {}", device.display()))
}

/// Check and grow the ext4 filesystem on `device` to fill it (`e2fsck -f -y`, then
/// `resize2fs`). e2fsck exit status 1 ("errors corrected") counts as success.
pub fn grow_ext4(device: &Path) -> Result<()> {
    // Cmd treats any non-zero status as failure; e2fsck's 1 is not one.
    Cmd::new("sh")
        .args([
            "-c",
            "e2fsck -f -y \"$1\"; rc=$?; if [ $rc -gt 1 ]; then exit $rc; fi",
            "e2fsck",
        ])
        .arg(device)
        .run()
        .with_context(|| format!("checking ext4 on {}", device.display()))?;
    Cmd::new("resize2fs")
        .arg(device)
        .run()
        .with_context(|| format!("growing ext4 on {}", device.display()))
}

/// How many bytes of a device [`probe_bytes`] needs (btrfs' superblock is at 64 KiB).
pub const PROBE_LEN: usize = 0x10000 + 4096;

/// What a superblock says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// Kernel filesystem type, as `blkid` names it: `ext4`, `ext3`, `ext2`, `xfs`,
    /// `btrfs`, `vfat`, `swap`.
    pub fs_type: String,
    /// UUID as `blkid` prints it (`xxxxxxxx-...` lower case; `ABCD-1234` for FAT).
    pub uuid: String,
    pub label: String,
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

/// Format 16 bytes in the plain (big-endian, RFC 4122 byte order) UUID layout.
fn uuid_be(b: &[u8]) -> String {
    let h = hex::encode(&b[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn label(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim_end().to_string()
}

/// Identify the filesystem from the first [`PROBE_LEN`] bytes of a device or partition
/// (shorter buffers probe what they can): ext2/3/4 (told apart by feature flags, like
/// blkid), XFS, btrfs, Linux swap, vfat (FAT12/16/32). `None` when nothing is
/// recognised. Pure.
pub fn probe_bytes(buf: &[u8]) -> Option<FsInfo> {
    probe_ext(buf)
        .or_else(|| probe_xfs(buf))
        .or_else(|| probe_btrfs(buf))
        .or_else(|| probe_swap(buf))
        .or_else(|| probe_vfat(buf))
}

fn probe_ext(buf: &[u8]) -> Option<FsInfo> {
    let sb = buf.get(1024..2048)?;
    if le16(sb, 0x38) != 0xEF53 {
        return None;
    }
    let compat = le32(sb, 0x5C);
    let incompat = le32(sb, 0x60);
    let ro_compat = le32(sb, 0x64);
    const COMPAT_HAS_JOURNAL: u32 = 0x4;
    const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
    // Features ext3 does not have (what blkid checks): extents, 64bit, flex_bg, mmp,
    // ... and ro_compat beyond sparse_super/large_file/btree_dir.
    const EXT3_INCOMPAT_SUPP: u32 = 0x0002 | 0x0004 | 0x0010;
    const EXT3_RO_COMPAT_SUPP: u32 = 0x0001 | 0x0002 | 0x0004;
    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return None; // an external journal, not a mountable filesystem
    }
    let fs_type = if incompat & !EXT3_INCOMPAT_SUPP != 0 || ro_compat & !EXT3_RO_COMPAT_SUPP != 0 {
        "ext4"
    } else if compat & COMPAT_HAS_JOURNAL != 0 {
        "ext3"
    } else {
        "ext2"
    };
    Some(FsInfo {
        fs_type: fs_type.into(),
        uuid: uuid_be(&sb[0x68..0x78]),
        label: label(&sb[0x78..0x88]),
    })
}

fn probe_xfs(buf: &[u8]) -> Option<FsInfo> {
    let sb = buf.get(..512)?;
    if &sb[..4] != b"XFSB" {
        return None;
    }
    Some(FsInfo {
        fs_type: "xfs".into(),
        uuid: uuid_be(&sb[32..48]),
        label: label(&sb[108..120]),
    })
}

fn probe_btrfs(buf: &[u8]) -> Option<FsInfo> {
    let sb = buf.get(0x10000..0x10000 + 0x1000)?;
    if &sb[0x40..0x48] != b"_BHRfS_M" {
        return None;
    }
    Some(FsInfo {
        fs_type: "btrfs".into(),
        uuid: uuid_be(&sb[0x20..0x30]),
        label: label(&sb[0x12b..0x12b + 256]),
    })
}

fn probe_swap(buf: &[u8]) -> Option<FsInfo> {
    // The signature sits at the end of the first page; try common page sizes.
    for page in [4096usize, 8192, 16384, 65536] {
        let Some(sig) = buf.get(page - 10..page) else {
            continue;
        };
        if sig == b"SWAPSPACE2" {
            let h = buf.get(1024..1024 + 12 + 32)?;
            return Some(FsInfo {
                fs_type: "swap".into(),
                uuid: uuid_be(&h[12..28]),
                label: label(&h[28..44]),
            });
        }
    }
    None
}

fn probe_vfat(buf: &[u8]) -> Option<FsInfo> {
    let bs = buf.get(..512)?;
    if bs[510] != 0x55 || bs[511] != 0xAA {
        return None;
    }
    let bytes_per_sector = le16(bs, 11);
    if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) || bs[13] == 0 || bs[16] == 0 {
        return None;
    }
    let (serial_off, label_off, type_off) = if &bs[0x52..0x57] == b"FAT32" {
        (0x43, 0x47, 0x52)
    } else if &bs[0x36..0x39] == b"FAT" || le16(bs, 22) != 0 {
        (0x27, 0x2B, 0x36)
    } else {
        return None;
    };
    let _ = type_off;
    let serial = le32(bs, serial_off);
    let lbl = label(&bs[label_off..label_off + 11]);
    Some(FsInfo {
        fs_type: "vfat".into(),
        uuid: format!("{:04X}-{:04X}", serial >> 16, serial & 0xffff),
        label: if lbl == "NO NAME" { String::new() } else { lbl },
    })
}

/// Identify the filesystem on `device` by reading its superblock.
pub fn probe(device: &Path) -> Result<Option<FsInfo>> {
    let mut f = File::open(device).with_context(|| format!("opening {}", device.display()))?;
    let mut head = vec![0u8; PROBE_LEN];
    f.seek(SeekFrom::Start(0))?;
    let mut n = 0;
    while n < head.len() {
        let r = f
            .read(&mut head[n..])
            .with_context(|| format!("reading {}", device.display()))?;
        if r == 0 {
            break;
        }
        n += r;
    }
    head.truncate(n);
    Ok(probe_bytes(&head))
}

/// The filesystem UUID on `device` (FAT: `ABCD-1234`); an error if none is found.
pub fn fs_uuid(device: &Path) -> Result<String> {
    match probe(device)? {
        Some(info) => Ok(info.uuid),
        None => bail!(
            "no ext2/3/4, xfs, btrfs, vfat or swap signature found on {}",
            device.display()
        ),
    }
}

/// A mounted filesystem, unmounted on drop (lazily if it is busy then).
#[derive(Debug)]
pub struct Mount {
    target: PathBuf,
    mounted: bool,
}

impl Mount {
    /// Mount `device` (type `fstype`, comma-separated `options`) at `target`.
    pub fn new(device: &Path, target: &Path, fstype: &str, options: Option<&str>) -> Result<Self> {
        use nix::mount::{mount, MsFlags};
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        for opt in options.unwrap_or("").split(',').filter(|o| !o.is_empty()) {
            match opt {
                "ro" => flags |= MsFlags::MS_RDONLY,
                "rw" | "defaults" => {}
                "nosuid" => flags |= MsFlags::MS_NOSUID,
                "nodev" => flags |= MsFlags::MS_NODEV,
                "noexec" => flags |= MsFlags::MS_NOEXEC,
                "noatime" => flags |= MsFlags::MS_NOATIME,
                "relatime" => flags |= MsFlags::MS_RELATIME,
                other => data.push(other),
            }
        }
        let data = data.join(",");
        mount(
            Some(device),
            target,
            Some(fstype),
            flags,
            (!data.is_empty()).then_some(data.as_str()),
        )
        .with_context(|| {
            format!(
                "mounting {} ({fstype}) at {}",
                device.display(),
                target.display()
            )
        })?;
        tracing::debug!(device = %device.display(), target = %target.display(), "mounted");
        Ok(Self {
            target: target.to_path_buf(),
            mounted: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmount now, reporting errors.
    pub fn unmount(mut self) -> Result<()> {
        self.mounted = false;
        nix::mount::umount(&self.target)
            .with_context(|| format!("unmounting {}", self.target.display()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        if let Err(e) = nix::mount::umount(&self.target) {
            tracing::warn!(target = %self.target.display(), "unmount failed ({e}); detaching lazily");
            if let Err(e) = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(target = %self.target.display(), "lazy unmount failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::have_program;

    fn image(size: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(size).unwrap();
        f
    }

    /// What `blkid -p` (libblkid, low-level probing) says, to cross-check our parser.
    fn blkid(path: &Path) -> (String, String, String) {
        let out = Cmd::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(path)
            .output_string()
            .unwrap();
        let get = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or("")
                .to_string()
        };
        (get("TYPE"), get("UUID"), get("LABEL"))
    }

    fn check(fs: FsType, size: u64, label: &str, uuid: &str, tools: &[&str]) {
        if let Some(t) = tools.iter().find(|t| !have_program(t)) {
            eprintln!("skipping {fs}: {t} not installed");
            return;
        }
        let img = image(size);
        let opts = MkfsOptions {
            label: Some(label.into()),
            uuid: Some(uuid.into()),
        };
        mkfs(img.path(), fs, &opts).unwrap();
        let info = probe(img.path()).unwrap().expect("a filesystem");
        assert_eq!(info.label, label, "{fs}");
        assert_eq!(info.uuid.to_lowercase(), uuid.to_lowercase(), "{fs}");
        assert_eq!(fs_uuid(img.path()).unwrap(), info.uuid);
        let (t, u, l) = blkid(img.path());
        let want_type = if fs == FsType::Fat32 {
            "vfat"
        } else {
            info.fs_type.as_str()
        };
        assert_eq!(t, want_type, "{fs}");
        assert_eq!(u.to_lowercase(), info.uuid.to_lowercase(), "{fs}");
        assert_eq!(l, info.label, "{fs}");
    }

    #[test]
    fn mkfs_and_probe_ext4() {
        check(
            FsType::Ext4,
            32 << 20,
            "rootfs-a",
            "0e3f1d7c-2b4a-4f3e-9c1d-8a7b6c5d4e3f",
            &["mkfs.ext4", "blkid"],
        );
    }

    #[test]
    fn mkfs_and_probe_xfs() {
        check(
            FsType::Xfs,
            320 << 20,
            "var",
            "5a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
            &["mkfs.xfs", "blkid"],
        );
    }

    #[test]
    fn mkfs_and_probe_fat32() {
        check(
            FsType::Fat32,
            64 << 20,
            "ESP",
            "1A2B-3C4D",
            &["mkfs.vfat", "blkid"],
        );
    }

    #[test]
    fn mkfs_and_probe_vfat_small() {
        check(
            FsType::Vfat,
            8 << 20,
            "BOOT",
            "DEAD-BEEF",
            &["mkfs.vfat", "blkid"],
        );
    }

    #[test]
    fn mkfs_and_probe_swap() {
        check(
            FsType::Swap,
            16 << 20,
            "swap0",
            "7c9e6679-7425-40de-944b-e07fc1f90ae7",
            &["mkswap", "blkid"],
        );
    }

    #[test]
    fn grow_ext4_fills_the_device() {
        if !have_program("resize2fs") {
            eprintln!("skipping: e2fsprogs not installed");
            return;
        }
        let img = image(16 << 20);
        mkfs(img.path(), FsType::Ext4, &MkfsOptions::default()).unwrap();
        img.as_file().set_len(64 << 20).unwrap();
        grow_ext4(img.path()).unwrap();
        let out = Cmd::new("dumpe2fs")
            .arg("-h")
            .arg(img.path())
            .output_string()
            .unwrap();
        let field = |k: &str| -> u64 {
            out.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        assert_eq!(field("Block count:") * field("Block size:"), 64 << 20);
    }

    #[test]
    fn grow_ext4_fails_on_garbage() {
        let img = image(4 << 20);
        let e = grow_ext4(img.path()).unwrap_err();
        assert!(format!("{e:#}").contains("checking ext4"), "{e:#}");
    }

    #[test]
    fn bad_identity_rejected_before_running_anything() {
        let dev = Path::new("/nonexistent");
        let long = MkfsOptions {
            label: Some("a-label-longer-than-12".into()),
            uuid: None,
        };
        let e = mkfs_command(dev, FsType::Xfs, &long).unwrap_err();
        assert_eq!(e.code, "filesystem-label-too-long");
        let bad = MkfsOptions {
            label: None,
            uuid: Some("not-a-uuid".into()),
        };
        assert_eq!(
            mkfs_command(dev, FsType::Ext4, &bad).unwrap_err().code,
            "bad-filesystem-uuid"
        );
        let fat_with_uuid = MkfsOptions {
            label: None,
            uuid: Some("0e3f1d7c-2b4a-4f3e-9c1d-8a7b6c5d4e3f".into()),
        };
        assert_eq!(
            mkfs_command(dev, FsType::Fat32, &fat_with_uuid)
                .unwrap_err()
                .code,
            "bad-filesystem-uuid"
        );
        assert_eq!(
            "btrfs".parse::<FsType>().unwrap_err().code,
            "unsupported-filesystem"
        );
        let cmd = mkfs_command(
            Path::new("/dev/loop0p1"),
            FsType::Fat32,
            &MkfsOptions {
                label: Some("ESP".into()),
                uuid: Some("1a2b-3c4d".into()),
            },
        )
        .unwrap();
        assert_eq!(
            cmd.render(),
            "mkfs.vfat -F 32 -n ESP -i 1A2B3C4D /dev/loop0p1"
        );
    }

    #[test]
    fn probe_unknown_and_empty() {
        assert_eq!(probe_bytes(&[0u8; 65536]), None);
        assert_eq!(probe_bytes(&[]), None);
        let img = image(1 << 20);
        assert!(fs_uuid(img.path()).is_err());
    }

    // --- superblock parsing on what the mkfs tools write ---------------------------

    fn head(path: &std::path::Path) -> Vec<u8> {
        let mut b = std::fs::read(path).unwrap();
        b.truncate(PROBE_LEN);
        b
    }

    fn mkfs_head(prog: &str, args: &[&str], size_mb: u64) -> Option<Vec<u8>> {
        if !have_program(prog) {
            eprintln!("skipping {prog}: not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fs.img");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(size_mb << 20).unwrap();
        Cmd::new(prog).args(args).arg(&p).run().unwrap();
        Some(head(&p))
    }

    #[test]
    fn ext4_and_ext2() {
        let Some(b) = mkfs_head(
            "mkfs.ext4",
            &[
                "-q",
                "-U",
                "0b3f8ad6-6b8a-4d8e-9d54-1d7c2d6b9c01",
                "-L",
                "rootfs",
            ],
            16,
        ) else {
            return;
        };
        assert_eq!(
            probe_bytes(&b).unwrap(),
            FsInfo {
                fs_type: "ext4".into(),
                uuid: "0b3f8ad6-6b8a-4d8e-9d54-1d7c2d6b9c01".into(),
                label: "rootfs".into()
            }
        );
        let b = mkfs_head("mkfs.ext2", &["-q"], 8).unwrap();
        assert_eq!(probe_bytes(&b).unwrap().fs_type, "ext2");
        let b = mkfs_head("mkfs.ext3", &["-q"], 8).unwrap();
        assert_eq!(probe_bytes(&b).unwrap().fs_type, "ext3");
    }

    #[test]
    fn vfat_serial_formats_like_blkid() {
        let Some(b) = mkfs_head(
            "mkfs.vfat",
            &["-F", "32", "-i", "1a2b3c4d", "-n", "EFI"],
            64,
        ) else {
            return;
        };
        assert_eq!(
            probe_bytes(&b).unwrap(),
            FsInfo {
                fs_type: "vfat".into(),
                uuid: "1A2B-3C4D".into(),
                label: "EFI".into()
            }
        );
        let b = mkfs_head("mkfs.vfat", &["-F", "16", "-i", "00ff0001"], 16).unwrap();
        let i = probe_bytes(&b).unwrap();
        assert_eq!((i.fs_type.as_str(), i.uuid.as_str()), ("vfat", "00FF-0001"));
    }

    #[test]
    fn swap() {
        let Some(b) = mkfs_head(
            "mkswap",
            &["-U", "5d7e2a8c-1111-4222-8333-944455556666", "-L", "sw"],
            4,
        ) else {
            return;
        };
        assert_eq!(
            probe_bytes(&b).unwrap(),
            FsInfo {
                fs_type: "swap".into(),
                uuid: "5d7e2a8c-1111-4222-8333-944455556666".into(),
                label: "sw".into()
            }
        );
    }

    #[test]
    fn xfs_when_available() {
        let Some(b) = mkfs_head(
            "mkfs.xfs",
            &[
                "-q",
                "-m",
                "uuid=2f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b",
                "-L",
                "data",
            ],
            300,
        ) else {
            return;
        };
        assert_eq!(
            probe_bytes(&b).unwrap(),
            FsInfo {
                fs_type: "xfs".into(),
                uuid: "2f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b".into(),
                label: "data".into()
            }
        );
    }

    #[test]
    fn btrfs_synthetic_superblock() {
        let mut b = vec![0u8; PROBE_LEN];
        let sb = 0x10000;
        b[sb + 0x40..sb + 0x48].copy_from_slice(b"_BHRfS_M");
        b[sb + 0x20..sb + 0x30].copy_from_slice(&[0x11; 16]);
        b[sb + 0x12b..sb + 0x12b + 4].copy_from_slice(b"home");
        let i = probe_bytes(&b).unwrap();
        assert_eq!(i.fs_type, "btrfs");
        assert_eq!(i.uuid, "11111111-1111-1111-1111-111111111111");
        assert_eq!(i.label, "home");
    }

    #[test]
    fn unknown_and_short_buffers() {
        assert_eq!(probe_bytes(&vec![0u8; PROBE_LEN]), None);
        assert_eq!(probe_bytes(&[0u8; 10]), None);
        let mut b = vec![0u8; 4096];
        b[510] = 0x55;
        b[511] = 0xAA; // an MBR, not a FAT boot sector
        assert_eq!(probe_bytes(&b), None);
    }

    #[test]
    fn probe_reads_far_enough_for_btrfs() {
        let img = image(1 << 20);
        let mut b = vec![0u8; PROBE_LEN];
        let sb = 0x10000;
        b[sb + 0x40..sb + 0x48].copy_from_slice(b"_BHRfS_M");
        b[sb + 0x20..sb + 0x30].copy_from_slice(&[0x22; 16]);
        std::fs::write(img.path(), &b).unwrap();
        let info = probe(img.path()).unwrap().unwrap();
        assert_eq!(info.fs_type, "btrfs");
        assert_eq!(
            fs_uuid(img.path()).unwrap(),
            "22222222-2222-2222-2222-222222222222"
        );
    }
}
