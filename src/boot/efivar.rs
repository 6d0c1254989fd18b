//! EFI variables through efivarfs at a configurable root.
//!
//! Every variable is a file named `Name-GUID` (GUID in lower case) whose content is the
//! 4-byte little-endian attribute word followed by the value. The real filesystem lives
//! at `/sys/firmware/efi/efivars`; tests point [`EfiVars`] at a plain directory holding
//! files in the same format.
//!
//! Writing differs between the two:
//! - on real efivarfs the kernel turns one `write(2)` of attributes + value into one
//!   `SetVariable()` call, which the firmware applies atomically. Newer kernels mark
//!   variables immutable (`chattr +i`), so the flag is cleared with `FS_IOC_SETFLAGS`
//!   before writing or deleting, and restored after a write;
//! - on any other filesystem the file is written to a temporary name, fsynced and
//!   renamed over the old one, then the directory is fsynced.

use anyhow::{bail, Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use uuid::{uuid, Uuid};

/// Where the kernel mounts efivarfs.
pub const DEFAULT_ROOT: &str = "/sys/firmware/efi/efivars";

/// The EFI global variable vendor (`Boot####`, `BootOrder`, `BootNext`, ...).
pub const EFI_GLOBAL: Uuid = uuid!("8be4df61-93ca-11d2-aa0d-00e098032b8c");
/// systemd's loader interface vendor (`LoaderEntryOneShot`, `LoaderEntryDefault`, ...).
pub const SYSTEMD_LOADER: Uuid = uuid!("4a67b082-0a4c-41cf-b6c7-440b29bb8c4f");

/// `EFI_VARIABLE_NON_VOLATILE`.
pub const ATTR_NON_VOLATILE: u32 = 0x1;
/// `EFI_VARIABLE_BOOTSERVICE_ACCESS`.
pub const ATTR_BOOTSERVICE_ACCESS: u32 = 0x2;
/// `EFI_VARIABLE_RUNTIME_ACCESS`.
pub const ATTR_RUNTIME_ACCESS: u32 = 0x4;
/// Non-volatile, boot-service and runtime access: what boot variables use.
pub const ATTR_NV_BS_RT: u32 = ATTR_NON_VOLATILE | ATTR_BOOTSERVICE_ACCESS | ATTR_RUNTIME_ACCESS;

/// `EFIVARFS_MAGIC` from `<linux/magic.h>`.
const EFIVARFS_MAGIC: i64 = 0xde5e_81e4;
/// `FS_IMMUTABLE_FL` from `<linux/fs.h>`.
const FS_IMMUTABLE_FL: libc::c_long = 0x10;

/// Access to the EFI variables below one efivarfs root.
#[derive(Debug, Clone)]
pub struct EfiVars {
    root: PathBuf,
    /// Write as on efivarfs (one write, immutable flag handling) even when `statfs`
    /// says otherwise; `None`: decide by `statfs`.
    efivarfs_semantics: Option<bool>,
}

impl Default for EfiVars {
    fn default() -> Self {
        Self::new(DEFAULT_ROOT)
    }
}

impl EfiVars {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            efivarfs_semantics: None,
        }
    }

    /// Force the efivarfs write path (single in-place write, immutable flag cleared and
    /// restored) or the atomic-rename path, instead of detecting efivarfs with `statfs`.
    /// Lets tests exercise the efivarfs path on a filesystem with `chattr` support.
    pub fn with_efivarfs_semantics(mut self, on: bool) -> Self {
        self.efivarfs_semantics = Some(on);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the file holding `name` of vendor `guid`.
    pub fn path(&self, name: &str, guid: &Uuid) -> PathBuf {
        self.root.join(format!("{name}-{}", guid.hyphenated()))
    }

    /// Read a variable: its attributes and value; `None` when it does not exist.
    pub fn get(&self, name: &str, guid: &Uuid) -> Result<Option<(u32, Vec<u8>)>> {
        check_name(name)?;
        let path = self.path(name, guid);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("opening EFI variable {}", path.display()))
            }
        };
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)
            .with_context(|| format!("reading EFI variable {}", path.display()))?;
        if buf.len() < 4 {
            bail!(
                "EFI variable {} is {} bytes long, shorter than its 4-byte attribute word",
                path.display(),
                buf.len()
            );
        }
        let attrs = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        Ok(Some((attrs, buf.split_off(4))))
    }

    /// Read only the value of a variable.
    pub fn get_value(&self, name: &str, guid: &Uuid) -> Result<Option<Vec<u8>>> {
        Ok(self.get(name, guid)?.map(|(_, v)| v))
    }

    /// Create or replace a variable. An empty value is refused (on efivarfs it would
    /// mean "delete"); use [`EfiVars::delete`].
    pub fn set(&self, name: &str, guid: &Uuid, attrs: u32, value: &[u8]) -> Result<()> {
        check_name(name)?;
        if value.is_empty() {
            bail!("refusing to write EFI variable {name} with an empty value (delete it instead)");
        }
        let path = self.path(name, guid);
        let mut buf = Vec::with_capacity(4 + value.len());
        buf.extend_from_slice(&attrs.to_le_bytes());
        buf.extend_from_slice(value);
        tracing::debug!(variable = %path.display(), len = value.len(), "writing EFI variable");
        if self.is_efivarfs()? {
            let was_immutable = clear_immutable(&path)?;
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("opening EFI variable {} for writing", path.display()))?;
            let n = file
                .write(&buf)
                .with_context(|| format!("writing EFI variable {}", path.display()))?;
            if n != buf.len() {
                bail!(
                    "short write to EFI variable {}: {n} of {} bytes",
                    path.display(),
                    buf.len()
                );
            }
            if was_immutable {
                set_immutable(&file, true)
                    .with_context(|| format!("restoring immutable flag on {}", path.display()))?;
            }
        } else {
            write_atomic(&path, &buf)?;
        }
        Ok(())
    }

    /// Delete a variable; deleting one that does not exist is not an error.
    pub fn delete(&self, name: &str, guid: &Uuid) -> Result<()> {
        check_name(name)?;
        let path = self.path(name, guid);
        if !path.exists() {
            return Ok(());
        }
        tracing::debug!(variable = %path.display(), "deleting EFI variable");
        if self.is_efivarfs()? {
            clear_immutable(&path)?;
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(e).with_context(|| format!("deleting EFI variable {}", path.display()))
            }
        }
        if !self.is_efivarfs()? {
            sync_dir(&self.root)?;
        }
        Ok(())
    }

    /// Names of the variables of vendor `guid`, sorted.
    pub fn list(&self, guid: &Uuid) -> Result<Vec<String>> {
        let suffix = format!("-{}", guid.hyphenated());
        let mut names = Vec::new();
        let entries = fs::read_dir(&self.root)
            .with_context(|| format!("listing EFI variables in {}", self.root.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", self.root.display()))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if let Some(name) = file_name.strip_suffix(&suffix) {
                if !name.is_empty() && !name.starts_with('.') {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Read a NUL-terminated UTF-16LE string variable (systemd's `Loader*` variables).
    pub fn get_string(&self, name: &str, guid: &Uuid) -> Result<Option<String>> {
        match self.get_value(name, guid)? {
            None => Ok(None),
            Some(v) => decode_utf16le(&v)
                .map(Some)
                .with_context(|| format!("decoding EFI variable {name} as UTF-16")),
        }
    }

    /// Write a string as NUL-terminated UTF-16LE with `attrs`.
    pub fn set_string(&self, name: &str, guid: &Uuid, attrs: u32, value: &str) -> Result<()> {
        self.set(name, guid, attrs, &encode_utf16le(value))
    }

    /// Read a little-endian `u16` variable (`BootNext`, `BootCurrent`).
    pub fn get_u16(&self, name: &str, guid: &Uuid) -> Result<Option<u16>> {
        match self.get_value(name, guid)? {
            None => Ok(None),
            Some(v) if v.len() == 2 => Ok(Some(u16::from_le_bytes([v[0], v[1]]))),
            Some(v) => bail!("EFI variable {name} is {} bytes long, expected 2", v.len()),
        }
    }

    fn is_efivarfs(&self) -> Result<bool> {
        if let Some(forced) = self.efivarfs_semantics {
            return Ok(forced);
        }
        let st = nix::sys::statfs::statfs(&self.root)
            .with_context(|| format!("checking the filesystem of {}", self.root.display()))?;
        Ok(st.filesystem_type().0 as i64 == EFIVARFS_MAGIC)
    }
}

/// Variable names are plain: no path separators, not empty.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.contains('\0') || name.starts_with('.') {
        bail!("invalid EFI variable name {name:?}");
    }
    Ok(())
}

/// Encode as UTF-16LE with a terminating NUL.
pub fn encode_utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(|u| u.to_le_bytes())
        .collect()
}

/// Decode UTF-16LE, stopping at the first NUL (which may be absent).
pub fn decode_utf16le(bytes: &[u8]) -> Result<String> {
    if bytes.len() % 2 != 0 {
        bail!("UTF-16 data has an odd length ({} bytes)", bytes.len());
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).context("invalid UTF-16")
}

/// Write `data` to `path` through a temporary file, fsync and rename, then fsync the
/// directory.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", file_name.to_string_lossy()));
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Clear the immutable flag of an existing variable file; returns whether it was set.
fn clear_immutable(path: &Path) -> Result<bool> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let flags = get_flags(&file).with_context(|| format!("reading flags of {}", path.display()))?;
    if flags & FS_IMMUTABLE_FL == 0 {
        return Ok(false);
    }
    set_immutable(&file, false)
        .with_context(|| format!("clearing immutable flag of {}", path.display()))?;
    Ok(true)
}

fn get_flags(file: &File) -> std::io::Result<libc::c_long> {
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes at most a `long` through the pointer, which points
    // to a live local of that size.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(flags)
}

fn set_immutable(file: &File, immutable: bool) -> std::io::Result<()> {
    let mut flags = get_flags(file)?;
    if immutable {
        flags |= FS_IMMUTABLE_FL;
    } else {
        flags &= !FS_IMMUTABLE_FL;
    }
    // SAFETY: FS_IOC_SETFLAGS reads a `long` through the pointer, a live local.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_round_trip_with_nul() {
        let b = encode_utf16le("trident-b+3.conf");
        assert_eq!(&b[..4], &[b't', 0, b'r', 0]);
        assert_eq!(&b[b.len() - 2..], &[0, 0]);
        assert_eq!(decode_utf16le(&b).unwrap(), "trident-b+3.conf");
        // Non-ASCII survives, and a missing terminator is accepted.
        let s = "Trident Ω";
        let mut b = encode_utf16le(s);
        b.truncate(b.len() - 2);
        assert_eq!(decode_utf16le(&b).unwrap(), s);
    }

    #[test]
    fn utf16_bad_input_is_refused() {
        assert!(decode_utf16le(&[0x41]).is_err());
        // An unpaired high surrogate.
        assert!(decode_utf16le(&[0x00, 0xd8, 0x41, 0x00]).is_err());
    }

    #[test]
    fn file_name_is_name_dash_guid() {
        let v = EfiVars::new("/x");
        assert_eq!(
            v.path("BootOrder", &EFI_GLOBAL),
            Path::new("/x/BootOrder-8be4df61-93ca-11d2-aa0d-00e098032b8c")
        );
    }

    #[test]
    fn bad_names_are_refused() {
        let v = EfiVars::new("/nonexistent");
        assert!(v.get("../etc/passwd", &EFI_GLOBAL).is_err());
        assert!(v.get("", &EFI_GLOBAL).is_err());
    }
}
