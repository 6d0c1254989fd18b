//! RAII loop devices over files, through the loop ioctls (`LOOP_CTL_GET_FREE`,
//! `LOOP_CONFIGURE`; Linux ≥ 5.8).
//!
//! A [`LoopDevice`] detaches on drop — also while unwinding from a panic — after
//! removing the partitions added to it with BLKPG (the kernel keeps those otherwise).
//! It is attached with `LO_FLAGS_AUTOCLEAR` and holds the device open, so even if the
//! process is killed the kernel detaches it when the last user closes it.

use super::blkpg;
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_PARTSCAN: u32 = 8;
const LO_NAME_SIZE: usize = 64;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);

/// How to attach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Start of the device in the file, in bytes.
    pub offset: u64,
    /// Size of the device in bytes; 0 means up to the end of the file.
    pub sizelimit: u64,
    pub read_only: bool,
    /// Ask the kernel to scan partition tables (a no-op on kernels without the
    /// table parsers; nodes then come from [`blkpg`]).
    pub partscan: bool,
    /// Logical sector size (512 when `None`); 4096 emulates a 4Kn disk.
    pub sector_size: Option<u32>,
}

/// An attached loop device; detached on drop.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    number: u32,
    backing: PathBuf,
    /// Held open for the device's lifetime (autoclear fires when it closes).
    dev: Option<File>,
}

impl LoopDevice {
    /// Attach `file` to a free loop device.
    pub fn attach(file: &Path, opts: Options) -> Result<Self> {
        let backing = OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .open(file)
            .with_context(|| format!("opening {} to attach it", file.display()))?;
        let ctl = File::open("/dev/loop-control").context("opening /dev/loop-control")?;

        let mut info = LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: opts.offset,
            lo_sizelimit: opts.sizelimit,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: LO_FLAGS_AUTOCLEAR,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        };
        if opts.read_only {
            info.lo_flags |= LO_FLAGS_READ_ONLY;
        }
        if opts.partscan {
            info.lo_flags |= LO_FLAGS_PARTSCAN;
        }
        let name = file.as_os_str().as_encoded_bytes();
        let n = name.len().min(LO_NAME_SIZE - 1);
        info.lo_file_name[..n].copy_from_slice(&name[..n]);
        let config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: opts.sector_size.unwrap_or(0),
            info,
            reserved: [0; 8],
        };

        // Another process may grab the same free device between the two calls.
        for attempt in 0..20 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument.
            let number = unsafe { loop_ctl_get_free(ctl.as_raw_fd()) }
                .context("finding a free loop device (LOOP_CTL_GET_FREE)")?
                as u32;
            let path = loop_node(number)?;
            let dev = OpenOptions::new()
                .read(true)
                .write(!opts.read_only)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: `config` is a correctly laid out struct loop_config.
            match unsafe { loop_configure(dev.as_raw_fd(), &config) } {
                Ok(_) => {
                    tracing::debug!(
                        device = %path.display(),
                        file = %file.display(),
                        offset = opts.offset,
                        sizelimit = opts.sizelimit,
                        "attached loop device"
                    );
                    return Ok(Self {
                        path,
                        number,
                        backing: file.to_path_buf(),
                        dev: Some(dev),
                    });
                }
                Err(nix::errno::Errno::EBUSY) => {
                    tracing::debug!(device = %path.display(), attempt, "loop device taken; retrying");
                    continue;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "attaching {} to {} (LOOP_CONFIGURE)",
                            file.display(),
                            path.display()
                        )
                    })
                }
            }
        }
        bail!("no free loop device after 20 attempts (others kept taking them)")
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn number(&self) -> u32 {
        self.number
    }

    /// The file behind the device.
    pub fn backing_file(&self) -> &Path {
        &self.backing
    }

    /// Detach now, reporting errors (drop only logs them).
    pub fn detach(mut self) -> Result<()> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<()> {
        let Some(dev) = self.dev.take() else {
            return Ok(());
        };
        let parts = blkpg::remove_partition_nodes(&self.path)
            .with_context(|| format!("removing the partitions of {}", self.path.display()));
        // SAFETY: LOOP_CLR_FD takes no argument. With other openers left (a mount),
        // the kernel defers the detach until the last one closes (autoclear).
        let clr = unsafe { loop_clr_fd(dev.as_raw_fd()) };
        drop(dev);
        parts?;
        clr.with_context(|| format!("detaching {} (LOOP_CLR_FD)", self.path.display()))?;
        tracing::debug!(device = %self.path.display(), "detached loop device");
        Ok(())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(e) = self.detach_inner() {
            tracing::warn!(device = %self.path.display(), "detaching loop device: {e:#}");
        }
    }
}

/// `/dev/loopN`, created from sysfs' major:minor if devtmpfs has not made it.
fn loop_node(number: u32) -> Result<PathBuf> {
    let path = PathBuf::from(format!("/dev/loop{number}"));
    if !path.exists() {
        let sys = Path::new(super::device::SYSFS).join(format!("class/block/loop{number}/dev"));
        let dev: super::DevNum = super::device::read_sysfs(&sys)?.parse()?;
        nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            dev.as_dev_t() as libc::dev_t,
        )
        .with_context(|| format!("creating {}", path.display()))?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_kernel() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
