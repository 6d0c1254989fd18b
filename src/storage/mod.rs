//! Block devices: the layer the install/update engine calls to lay out disks.
//!
//! It takes plain plan structs (never Host Configuration types) so it can be tested on
//! its own:
//!
//! - [`parttypes`]: Trident partition type names and GPT type GUIDs (x86-64).
//! - [`gpt`]: layout planning (pure), and reading/writing GPTs natively (protective
//!   MBR, primary and backup headers, CRC32s).
//! - [`sfdisk`]: parser of `sfdisk --json` (used to cross-check our tables).
//! - [`lsblk`]: parser of `lsblk --json -b -O`.
//! - [`blkpg`]: partition block-device nodes via the `BLKPG` ioctl (this kernel does
//!   not scan partition tables), resolved from the table itself.
//! - [`loopdev`]: RAII loop devices (detach on drop, even after a panic).
//! - [`mkfs`]: mkfs for ext4/xfs/vfat/swap, ext4 growing, superblock probing, and an
//!   RAII [`mkfs::Mount`].
//! - [`mounts`]: `/proc/self/mountinfo`, the disk-in-use check, the root device.
//! - [`partition`]: the whole step: read, plan, refuse a disk in use, write, nodes.
//! - [`device`]: sizes, sector sizes and device numbers shared by the others.

// Pure planning functions return the project's `TridentError` directly so callers can
// act on its code; it is deliberately a plain struct, larger than clippy's default.
#![allow(clippy::result_large_err)]

pub mod blkpg;
pub mod device;
pub mod gpt;
pub mod loopdev;
pub mod lsblk;
pub mod mkfs;
pub mod mounts;
pub mod partition;
pub mod parttypes;
pub mod sfdisk;

pub use device::DevNum;
