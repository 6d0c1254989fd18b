//! Block devices: the layer the install/update engine calls to lay out disks.
//!
//! It takes plain plan structs (never Host Configuration types) so it can be tested on
//! its own:
//!
//! - [`parttypes`] — Trident partition type names ↔ GPT type GUIDs (x86-64).
//! - [`gpt`]       — layout planning (pure), and reading/writing GPTs natively
//!                   (protective MBR, primary and backup headers, CRC32s).
//! - [`sfdisk`]    — parser of `sfdisk --json` (used to cross-check our tables).
//! - [`lsblk`]     — parser of `lsblk --json -b -O`.
//! - [`blkpg`]     — partition block-device nodes via the `BLKPG` ioctl (this kernel
//!                   does not scan partition tables), resolved from the table itself.
//! - [`loopdev`]   — RAII loop devices (detach on drop, even after a panic).
//! - [`mkfs`]      — mkfs for ext4/xfs/vfat/swap, ext4 growing, superblock probing,
//!                   and an RAII [`mkfs::Mount`].
//! - [`mounts`]    — `/proc/self/mountinfo`, the disk-in-use check, the root device.
//!
//! Device-level helpers shared by those modules live in [`device`].

pub mod blkpg;
pub mod device;
pub mod gpt;
pub mod loopdev;
pub mod lsblk;
pub mod mkfs;
pub mod mounts;
pub mod parttypes;
pub mod sfdisk;

pub use device::DevNum;
