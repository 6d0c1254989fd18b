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

/// What a superblock says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// `ext4` (also for ext2/3 superblocks), `xfs`, `vfat`, `swap`.
    pub fs_type: String,
    /// UUID, or `ABCD-1234` for FAT.
    pub uuid: String,
    pub label: String,
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim_end().to_string()
}

/// Identify the filesystem from the first 64 KiB of a device. Pure.
pub fn probe_bytes(head: &[u8]) -> Option<FsInfo> {
    let at = |o: usize, n: usize| head.get(o..o + n);
    // ext2/3/4: superblock at 1024, magic 0xEF53 at +56.
    if at(1024 + 56, 2) == Some(&[0x53, 0xEF]) {
        let sb = at(1024, 1024)?;
        return Some(FsInfo {
            fs_type: "ext4".into(),
            uuid: Uuid::from_slice(&sb[104..120]).ok()?.to_string(),
            label: cstr(&sb[120..136]),
        });
    }
    // XFS: "XFSB" at 0, uuid at 32, fname[12] at 108.
    if at(0, 4) == Some(b"XFSB") {
        return Some(FsInfo {
            fs_type: "xfs".into(),
            uuid: Uuid::from_slice(at(32, 16)?).ok()?.to_string(),
            label: cstr(at(108, 12)?),
        });
    }
    // Swap: "SWAPSPACE2" at the end of the first page (4 KiB on x86-64).
    if at(4096 - 10, 10) == Some(b"SWAPSPACE2") {
        return Some(FsInfo {
            fs_type: "swap".into(),
            uuid: Uuid::from_slice(at(1024 + 12, 16)?).ok()?.to_string(),
            label: cstr(at(1024 + 28, 16)?),
        });
    }
    // FAT: boot signature, and an extended BPB (0x29) at 38 (FAT12/16) or 66 (FAT32).
    if at(510, 2) == Some(&[0x55, 0xAA]) {
        // Offsets of: extended boot signature, volume id, label (fs type follows it).
        let (sig, id, label) = if at(82, 5) == Some(b"FAT32") {
            (66, 67, 71)
        } else {
            (38, 39, 43)
        };
        if head.get(sig) == Some(&0x29) && at(label + 11, 3) == Some(b"FAT") {
            let v = u32::from_le_bytes(at(id, 4)?.try_into().ok()?);
            let label = cstr(at(label, 11)?);
            return Some(FsInfo {
                fs_type: "vfat".into(),
                uuid: format!("{:04X}-{:04X}", v >> 16, v & 0xffff),
                label: if label == "NO NAME" {
                    String::new()
                } else {
                    label
                },
            });
        }
    }
    None
}

/// Identify the filesystem on `device` by reading its superblock.
pub fn probe(device: &Path) -> Result<Option<FsInfo>> {
    let mut f = File::open(device).with_context(|| format!("opening {}", device.display()))?;
    let mut head = vec![0u8; 64 * 1024];
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
            "no ext4, xfs, vfat or swap signature found on {}",
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
}
