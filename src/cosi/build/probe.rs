//! Filesystem identification from superblocks, in user space.
//!
//! [`probe`] looks at the first [`PROBE_LEN`] bytes of a partition and recognises ext2/3/4,
//! XFS, btrfs, vfat (FAT12/16/32) and Linux swap, returning the type name the kernel
//! (and `blkid`) uses, the UUID formatted as `blkid` prints it, and the label.

/// How many bytes of a partition [`probe`] needs (btrfs' superblock is at 64 KiB).
pub const PROBE_LEN: usize = 0x10000 + 4096;

/// What a superblock says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// Kernel filesystem type: `ext4`, `ext3`, `ext2`, `xfs`, `btrfs`, `vfat`, `swap`.
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

/// Identify the filesystem whose first bytes are `buf` (shorter buffers probe what
/// they can). `None` when nothing is recognised.
pub fn probe(buf: &[u8]) -> Option<FsInfo> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{have_program, Cmd};

    fn head(path: &std::path::Path) -> Vec<u8> {
        let mut b = std::fs::read(path).unwrap();
        b.truncate(PROBE_LEN);
        b
    }

    fn mkfs(prog: &str, args: &[&str], size_mb: u64) -> Option<Vec<u8>> {
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
        let Some(b) = mkfs(
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
            probe(&b).unwrap(),
            FsInfo {
                fs_type: "ext4".into(),
                uuid: "0b3f8ad6-6b8a-4d8e-9d54-1d7c2d6b9c01".into(),
                label: "rootfs".into()
            }
        );
        let b = mkfs("mkfs.ext2", &["-q"], 8).unwrap();
        assert_eq!(probe(&b).unwrap().fs_type, "ext2");
        let b = mkfs("mkfs.ext3", &["-q"], 8).unwrap();
        assert_eq!(probe(&b).unwrap().fs_type, "ext3");
    }

    #[test]
    fn vfat_serial_formats_like_blkid() {
        let Some(b) = mkfs(
            "mkfs.vfat",
            &["-F", "32", "-i", "1a2b3c4d", "-n", "EFI"],
            64,
        ) else {
            return;
        };
        assert_eq!(
            probe(&b).unwrap(),
            FsInfo {
                fs_type: "vfat".into(),
                uuid: "1A2B-3C4D".into(),
                label: "EFI".into()
            }
        );
        let b = mkfs("mkfs.vfat", &["-F", "16", "-i", "00ff0001"], 16).unwrap();
        let i = probe(&b).unwrap();
        assert_eq!((i.fs_type.as_str(), i.uuid.as_str()), ("vfat", "00FF-0001"));
    }

    #[test]
    fn swap() {
        let Some(b) = mkfs(
            "mkswap",
            &["-U", "5d7e2a8c-1111-4222-8333-944455556666", "-L", "sw"],
            4,
        ) else {
            return;
        };
        assert_eq!(
            probe(&b).unwrap(),
            FsInfo {
                fs_type: "swap".into(),
                uuid: "5d7e2a8c-1111-4222-8333-944455556666".into(),
                label: "sw".into()
            }
        );
    }

    #[test]
    fn xfs_when_available() {
        let Some(b) = mkfs(
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
            probe(&b).unwrap(),
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
        let i = probe(&b).unwrap();
        assert_eq!(i.fs_type, "btrfs");
        assert_eq!(i.uuid, "11111111-1111-1111-1111-111111111111");
        assert_eq!(i.label, "home");
    }

    #[test]
    fn unknown_and_short_buffers() {
        assert_eq!(probe(&vec![0u8; PROBE_LEN]), None);
        assert_eq!(probe(&[0u8; 10]), None);
        let mut b = vec![0u8; 4096];
        b[510] = 0x55;
        b[511] = 0xAA; // an MBR, not a FAT boot sector
        assert_eq!(probe(&b), None);
    }
}
