//! Small facts about a block device (or a disk image file): its size, logical sector
//! size, device number and sysfs name.

use anyhow::{bail, Context, Result};
use std::fmt;
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where sysfs is mounted (block devices live under `class/block` and `dev/block`).
pub const SYSFS: &str = "/sys";

/// A device number (`major:minor`), as in `/sys/class/block/*/dev` and mountinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    pub fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    pub fn from_dev_t(dev: u64) -> Self {
        Self {
            major: libc::major(dev as libc::dev_t),
            minor: libc::minor(dev as libc::dev_t),
        }
    }

    pub fn as_dev_t(self) -> u64 {
        libc::makedev(self.major, self.minor) as u64
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl FromStr for DevNum {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let (maj, min) = s
            .split_once(':')
            .with_context(|| format!("device number {s:?} is not major:minor"))?;
        Ok(Self {
            major: maj
                .parse()
                .with_context(|| format!("parsing major of {s:?}"))?,
            minor: min
                .parse()
                .with_context(|| format!("parsing minor of {s:?}"))?,
        })
    }
}

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc::c_int);

/// Whether `path` is a block device (following symlinks).
pub fn is_block_device(path: &Path) -> Result<bool> {
    let meta = std::fs::metadata(path).with_context(|| format!("inspecting {}", path.display()))?;
    Ok(meta.file_type().is_block_device())
}

/// Size in bytes of a block device or regular file.
pub fn device_size(path: &Path) -> Result<u64> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    file_size(&file, path)
}

pub(crate) fn file_size(file: &File, path: &Path) -> Result<u64> {
    let meta = file
        .metadata()
        .with_context(|| format!("inspecting {}", path.display()))?;
    if meta.file_type().is_block_device() {
        let mut size = 0u64;
        // SAFETY: BLKGETSIZE64 writes one u64 into `size`; the fd is open.
        unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }
            .with_context(|| format!("reading the size of {} (BLKGETSIZE64)", path.display()))?;
        Ok(size)
    } else if meta.is_file() {
        Ok(meta.len())
    } else {
        bail!(
            "{} is neither a block device nor a regular file",
            path.display()
        )
    }
}

/// Logical sector size of a block device; 512 for a regular file (disk image).
pub fn logical_sector_size(path: &Path) -> Result<u64> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    file_sector_size(&file, path)
}

pub(crate) fn file_sector_size(file: &File, path: &Path) -> Result<u64> {
    let meta = file
        .metadata()
        .with_context(|| format!("inspecting {}", path.display()))?;
    if !meta.file_type().is_block_device() {
        return Ok(512);
    }
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int into `size`; the fd is open.
    unsafe { blksszget(file.as_raw_fd(), &mut size) }
        .with_context(|| format!("reading the sector size of {} (BLKSSZGET)", path.display()))?;
    match size {
        512 | 1024 | 2048 | 4096 => Ok(size as u64),
        other => bail!(
            "{} reports an unsupported sector size {other}",
            path.display()
        ),
    }
}

/// The device number of a block device node.
pub fn dev_number(path: &Path) -> Result<DevNum> {
    let meta = std::fs::metadata(path).with_context(|| format!("inspecting {}", path.display()))?;
    if !meta.file_type().is_block_device() {
        bail!("{} is not a block device", path.display());
    }
    Ok(DevNum::from_dev_t(meta.rdev()))
}

/// The kernel name (`loop0p2`, `vda`) of a device number, from `/sys/dev/block`.
pub fn kernel_name(sys: &Path, dev: DevNum) -> Result<String> {
    let link = sys.join("dev/block").join(dev.to_string());
    let target = std::fs::read_link(&link)
        .with_context(|| format!("resolving {} (no such block device?)", link.display()))?;
    target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{} points nowhere", link.display()))
}

/// The `/dev` path of a device number (`/dev/<kernel name>`).
pub fn dev_path(dev: DevNum) -> Result<PathBuf> {
    Ok(Path::new("/dev").join(kernel_name(Path::new(SYSFS), dev)?))
}

/// Read a sysfs attribute, trimmed.
pub(crate) fn read_sysfs(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devnum_parse_and_roundtrip() {
        let d: DevNum = "259:3\n".parse().unwrap();
        assert_eq!(d, DevNum::new(259, 3));
        assert_eq!(d.to_string(), "259:3");
        assert_eq!(DevNum::from_dev_t(d.as_dev_t()), d);
        assert!("259".parse::<DevNum>().is_err());
        assert!("a:1".parse::<DevNum>().is_err());
    }

    #[test]
    fn file_sizes() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(3 << 20).unwrap();
        assert_eq!(device_size(f.path()).unwrap(), 3 << 20);
        assert_eq!(logical_sector_size(f.path()).unwrap(), 512);
        assert!(dev_number(f.path()).is_err());
        assert!(!is_block_device(f.path()).unwrap());
    }
}
