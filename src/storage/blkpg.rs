//! Partition block-device nodes through the `BLKPG` ioctl (what `partx -a` does).
//!
//! The kernels Trident runs on may not scan partition tables (ours does not), and
//! there may be no udev. So after writing a table we tell the kernel about each
//! partition ourselves, from the table we read back, and make sure `/dev/<name>`
//! exists (devtmpfs normally creates it; we `mknod` it if not). Partitions are never
//! resolved through `/dev/disk/by-*` links.

use super::device::{dev_number, read_sysfs, DevNum, SYSFS};
use super::gpt::ExistingPartition;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

const BLKPG_ADD_PARTITION: libc::c_int = 1;
const BLKPG_DEL_PARTITION: libc::c_int = 2;

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

#[repr(C)]
struct BlkpgPartition {
    /// Bytes.
    start: libc::c_longlong,
    /// Bytes.
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

nix::ioctl_write_ptr_bad!(
    blkpg_ioctl,
    nix::request_code_none!(0x12, 105),
    BlkpgIoctlArg
);

fn blkpg(disk: &File, op: libc::c_int, number: u32, start: u64, length: u64) -> nix::Result<()> {
    let mut part = BlkpgPartition {
        start: start as libc::c_longlong,
        length: length as libc::c_longlong,
        pno: number as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: &mut part as *mut BlkpgPartition as *mut libc::c_void,
    };
    // SAFETY: `arg` points at a live, correctly laid out blkpg_partition.
    unsafe { blkpg_ioctl(disk.as_raw_fd(), &arg) }.map(|_| ())
}

/// Kernel name of partition `number` of the disk named `disk_name`: `sda` → `sda3`,
/// `loop0` / `nvme0n1` → `loop0p3` / `nvme0n1p3` (a `p` after a trailing digit).
pub fn partition_name(disk_name: &str, number: u32) -> String {
    if disk_name.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk_name}p{number}")
    } else {
        format!("{disk_name}{number}")
    }
}

/// `/dev` path of partition `number` of `disk` (symlinks to the disk are resolved
/// first): `/dev/loop3` → `/dev/loop3p2`.
pub fn partition_path(disk: &Path, number: u32) -> PathBuf {
    let real = std::fs::canonicalize(disk).unwrap_or_else(|_| disk.to_path_buf());
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Path::new("/dev").join(partition_name(&name, number))
}

/// A partition the kernel currently knows for a disk (from sysfs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPartition {
    pub number: u32,
    /// Kernel name, e.g. `loop0p2`.
    pub name: String,
    /// Bytes.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    pub dev: DevNum,
}

/// Kernel name of the whole disk `disk` (a block device node).
pub fn disk_kernel_name(disk: &Path) -> Result<String> {
    let dev = dev_number(disk)?;
    let name = super::device::kernel_name(Path::new(SYSFS), dev)?;
    if Path::new(SYSFS)
        .join("class/block")
        .join(&name)
        .join("partition")
        .exists()
    {
        bail!(
            "{} is a partition ({name}), not a whole disk",
            disk.display()
        );
    }
    Ok(name)
}

/// Partitions the kernel knows on `disk`, sorted by number.
pub fn kernel_partitions(disk: &Path) -> Result<Vec<KernelPartition>> {
    let name = disk_kernel_name(disk)?;
    kernel_partitions_in(Path::new(SYSFS), &name)
}

/// Same, with a sysfs root and disk name (for tests on a fake sysfs).
pub fn kernel_partitions_in(sys: &Path, disk_name: &str) -> Result<Vec<KernelPartition>> {
    let dir = sys.join("class/block").join(disk_name);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let p = entry.path();
        if !p.join("partition").is_file() {
            continue;
        }
        let number: u32 = read_sysfs(&p.join("partition"))?
            .parse()
            .with_context(|| format!("parsing {}/partition", p.display()))?;
        // sysfs counts in 512-byte units whatever the logical sector size.
        let start: u64 = read_sysfs(&p.join("start"))?
            .parse()
            .with_context(|| format!("parsing {}/start", p.display()))?;
        let size: u64 = read_sysfs(&p.join("size"))?
            .parse()
            .with_context(|| format!("parsing {}/size", p.display()))?;
        out.push(KernelPartition {
            number,
            name: entry.file_name().to_string_lossy().into_owned(),
            start: start * 512,
            size: size * 512,
            dev: read_sysfs(&p.join("dev"))?.parse()?,
        });
    }
    out.sort_by_key(|p| p.number);
    Ok(out)
}

/// Make `/dev/<name>` a block device node with the device number sysfs gives.
fn ensure_node(name: &str) -> Result<PathBuf> {
    let dev: DevNum =
        read_sysfs(&Path::new(SYSFS).join("class/block").join(name).join("dev"))?.parse()?;
    let path = Path::new("/dev").join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_block_device() && DevNum::from_dev_t(m.rdev()) == dev => {
            return Ok(path)
        }
        Ok(_) => {
            tracing::warn!(path = %path.display(), %dev, "replacing stale device node");
            std::fs::remove_file(&path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
    tracing::debug!(path = %path.display(), %dev, "creating device node");
    nix::sys::stat::mknod(
        &path,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        dev.as_dev_t() as libc::dev_t,
    )
    .with_context(|| format!("creating device node {} ({dev})", path.display()))?;
    Ok(path)
}

fn open_disk(disk: &Path) -> Result<File> {
    File::open(disk).with_context(|| format!("opening {}", disk.display()))
}

fn delete(file: &File, disk: &Path, kp: &KernelPartition) -> Result<()> {
    blkpg(file, BLKPG_DEL_PARTITION, kp.number, 0, 0).with_context(|| {
        format!(
            "removing partition {} ({}) of {} from the kernel (is it mounted or in use?)",
            kp.number,
            kp.name,
            disk.display()
        )
    })?;
    // devtmpfs removes the node; a node we made ourselves must go too.
    let node = Path::new("/dev").join(&kp.name);
    if let Ok(m) = std::fs::symlink_metadata(&node) {
        if m.file_type().is_block_device() && DevNum::from_dev_t(m.rdev()) == kp.dev {
            std::fs::remove_file(&node).with_context(|| format!("removing {}", node.display()))?;
        }
    }
    Ok(())
}

/// Make the kernel's partitions of `disk` exactly `parts` (normally what
/// [`super::gpt::read_gpt`] returned) and return their `/dev` paths, in the order of
/// `parts`. Kernel partitions that match (number, start, size) are kept; others are
/// deleted first (fails if one is in use); missing ones are added.
pub fn ensure_partition_nodes(disk: &Path, parts: &[ExistingPartition]) -> Result<Vec<PathBuf>> {
    let name = disk_kernel_name(disk)?;
    let file = open_disk(disk)?;
    let current = kernel_partitions_in(Path::new(SYSFS), &name)?;
    for kp in &current {
        let wanted = parts
            .iter()
            .any(|p| p.number == kp.number && p.offset() == kp.start && p.size() == kp.size);
        if !wanted {
            tracing::debug!(partition = %kp.name, "removing kernel partition not in the table");
            delete(&file, disk, kp)?;
        }
    }
    let mut paths = Vec::with_capacity(parts.len());
    for p in parts {
        let present = current
            .iter()
            .any(|kp| p.number == kp.number && p.offset() == kp.start && p.size() == kp.size);
        if !present {
            blkpg(&file, BLKPG_ADD_PARTITION, p.number, p.offset(), p.size()).with_context(
                || {
                    format!(
                        "adding partition {} ({} bytes at {}) of {} to the kernel",
                        p.number,
                        p.size(),
                        p.offset(),
                        disk.display()
                    )
                },
            )?;
        }
        paths.push(
            ensure_node(&partition_name(&name, p.number)).with_context(|| {
                format!(
                    "making the node of partition {} of {}",
                    p.number,
                    disk.display()
                )
            })?,
        );
    }
    tracing::info!(disk = %disk.display(), partitions = parts.len(), "partition nodes ready");
    Ok(paths)
}

/// Read the GPT of `disk` and make its partition nodes; returns (number, path) pairs.
pub fn sync_partition_nodes(disk: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let parts = super::gpt::read_gpt(disk)
        .with_context(|| format!("reading the partition table of {}", disk.display()))?;
    let paths = ensure_partition_nodes(disk, &parts)?;
    Ok(parts.iter().map(|p| p.number).zip(paths).collect())
}

/// Remove every partition the kernel knows on `disk` (fails if one is in use).
pub fn remove_partition_nodes(disk: &Path) -> Result<()> {
    let file = open_disk(disk)?;
    for kp in kernel_partitions(disk)? {
        delete(&file, disk, &kp)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(partition_name("sda", 3), "sda3");
        assert_eq!(partition_name("vdb", 12), "vdb12");
        assert_eq!(partition_name("loop0", 2), "loop0p2");
        assert_eq!(partition_name("nvme0n1", 1), "nvme0n1p1");
        assert_eq!(partition_name("mmcblk0", 1), "mmcblk0p1");
        assert_eq!(
            partition_path(Path::new("/dev/nonexistent-loop7"), 1),
            Path::new("/dev/nonexistent-loop7p1")
        );
    }

    #[test]
    fn blkpg_struct_layout_matches_kernel() {
        // struct blkpg_partition: 2 × long long, int, 2 × char[64] (152 with padding);
        // struct blkpg_ioctl_arg: 3 × int and a pointer (24 on 64-bit).
        assert_eq!(std::mem::size_of::<BlkpgPartition>(), 152);
        assert_eq!(std::mem::size_of::<BlkpgIoctlArg>(), 24);
    }

    #[test]
    fn kernel_partitions_from_fake_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        let disk = sys.path().join("class/block/loop9");
        for (n, start, size, dev) in [(2, 133120, 614400, "259:7"), (1, 2048, 131072, "259:6")] {
            let p = disk.join(format!("loop9p{n}"));
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("partition"), format!("{n}\n")).unwrap();
            std::fs::write(p.join("start"), format!("{start}\n")).unwrap();
            std::fs::write(p.join("size"), format!("{size}\n")).unwrap();
            std::fs::write(p.join("dev"), format!("{dev}\n")).unwrap();
        }
        std::fs::create_dir_all(disk.join("holders")).unwrap();
        let parts = kernel_partitions_in(sys.path(), "loop9").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].number, 1);
        assert_eq!(parts[0].name, "loop9p1");
        assert_eq!(parts[0].start, 1 << 20);
        assert_eq!(parts[0].size, 64 << 20);
        assert_eq!(parts[1].dev, DevNum::new(259, 7));
        assert!(kernel_partitions_in(sys.path(), "loop8").is_err());
    }
}
