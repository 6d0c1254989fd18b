//! systemd-boot: Type #1 boot entries on the ESP and the loader EFI variables.
//!
//! Layout written on the ESP:
//!
//! ```text
//! loader/loader.conf                  timeout, editor no (never a `default` line: it
//!                                     would override an unset LoaderEntryDefault)
//! loader/entries/trident-a.conf       one entry per volume; `trident-b+3.conf` with
//! loader/entries/trident-b+3.conf     boot counting (3 tries left)
//! trident/a/linux, trident/a/initrd   kernel and initrd of each volume
//! EFI/systemd/systemd-bootx64.efi     the loader (copied from the image's ESP)
//! EFI/BOOT/BOOTX64.EFI                the same loader as the UEFI fallback
//! ```
//!
//! The trial boot is `LoaderEntryOneShot`, the committed choice `LoaderEntryDefault`;
//! systemd-boot reports what it booted in `LoaderEntrySelected`. systemd 252 takes a
//! counted entry's id to be its whole file name (`trident-b+3.conf`), so the variables
//! always name the file as it is on the ESP at that moment; committing a volume also
//! blesses its entry (renames it to the uncounted name) so the default keeps matching.

use super::efivar::{EfiVars, ATTR_NV_BS_RT, SYSTEMD_LOADER};
use super::esp::{install_fallback, EspFs, OpenEsp};
use super::uefi::{LoadOption, UefiBootVars, SYSTEMD_BOOT_LOADER};
use super::{BootControl, EspLayout, Volume, VolumeBootInfo};
use crate::error::TridentError;
use anyhow::{Context, Result};
use std::fmt::Write as _;

/// Directory of Type #1 entries on the ESP.
pub const ENTRIES_DIR: &str = "loader/entries";
/// The loader configuration file on the ESP.
pub const LOADER_CONF: &str = "loader/loader.conf";
/// systemd-boot's own path on the ESP.
pub const LOADER_PATH: &str = "EFI/systemd/systemd-bootx64.efi";
/// Prefix of every entry Trident owns.
pub const ENTRY_PREFIX: &str = "trident-";

/// A Type #1 boot entry, ready to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySpec {
    pub title: String,
    pub version: String,
    /// Kernel path on the ESP, `/`-separated, absolute (`/trident/a/linux`).
    pub linux: String,
    pub initrd: Option<String>,
    /// The kernel command line.
    pub options: String,
}

/// Render an entry file (Boot Loader Specification, Type #1).
pub fn render_entry(e: &EntrySpec) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(s, "title {}", e.title);
    let _ = writeln!(s, "version {}", e.version);
    let _ = writeln!(s, "linux {}", e.linux);
    if let Some(initrd) = &e.initrd {
        let _ = writeln!(s, "initrd {initrd}");
    }
    let _ = writeln!(s, "options {}", e.options);
    s
}

/// Render `loader.conf`: a menu timeout and no editor; deliberately no `default` line.
pub fn render_loader_conf(timeout_secs: u32) -> String {
    format!("timeout {timeout_secs}\neditor no\n")
}

/// The kernel command line of a volume: its root by partition UUID, then the extra
/// arguments in order.
pub fn kernel_cmdline(root_partuuid: &uuid::Uuid, extra_args: &[String]) -> String {
    std::iter::once(format!("root=PARTUUID={}", root_partuuid.hyphenated()))
        .chain(extra_args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Entry id without counter or suffix: `trident-a`.
pub fn entry_stem(volume: Volume) -> String {
    format!("{ENTRY_PREFIX}{}", volume.letter())
}

/// File name of a freshly written entry: `trident-a.conf`, or `trident-a+3.conf` with
/// `tries` boot attempts.
pub fn entry_file_name(volume: Volume, tries: Option<u32>) -> String {
    match tries {
        Some(n) => format!("{}+{n}.conf", entry_stem(volume)),
        None => format!("{}.conf", entry_stem(volume)),
    }
}

/// Boot counter in an entry name: tries left and tries done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub left: u32,
    pub done: Option<u32>,
}

/// Split an entry id or file name into its stem and boot counter:
/// `trident-b+2-1.conf` → (`trident-b`, left 2, done 1). Returns `None` for a
/// malformed counter.
pub fn parse_entry_id(id: &str) -> Option<(&str, Option<Counter>)> {
    let base = id.strip_suffix(".conf").unwrap_or(id);
    let Some((stem, counter)) = base.rsplit_once('+') else {
        return Some((base, None));
    };
    let (left, done) = match counter.split_once('-') {
        Some((l, d)) => (l, Some(d)),
        None => (counter, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(left) || !done.map_or(true, digits) {
        return None;
    }
    Some((
        stem,
        Some(Counter {
            left: left.parse().ok()?,
            done: match done {
                Some(d) => Some(d.parse().ok()?),
                None => None,
            },
        }),
    ))
}

/// Which volume an entry id (from an EFI variable or a file name) belongs to.
pub fn volume_of_entry(id: &str) -> Option<Volume> {
    let lower = id.to_ascii_lowercase();
    let (stem, _) = parse_entry_id(&lower)?;
    [Volume::A, Volume::B]
        .into_iter()
        .find(|v| stem == entry_stem(*v))
}

/// systemd's `Loader*` variables.
#[derive(Debug, Clone)]
pub struct LoaderVars {
    vars: EfiVars,
}

impl LoaderVars {
    pub fn new(vars: EfiVars) -> Self {
        Self { vars }
    }

    /// Boot `entry` once, next boot only (`LoaderEntryOneShot`).
    pub fn set_oneshot(&self, entry: &str) -> Result<()> {
        self.vars
            .set_string("LoaderEntryOneShot", &SYSTEMD_LOADER, ATTR_NV_BS_RT, entry)
            .context("setting LoaderEntryOneShot")
    }

    pub fn oneshot(&self) -> Result<Option<String>> {
        self.vars.get_string("LoaderEntryOneShot", &SYSTEMD_LOADER)
    }

    pub fn clear_oneshot(&self) -> Result<()> {
        self.vars
            .delete("LoaderEntryOneShot", &SYSTEMD_LOADER)
            .context("deleting LoaderEntryOneShot")
    }

    /// Boot `entry` by default (`LoaderEntryDefault`).
    pub fn set_default(&self, entry: &str) -> Result<()> {
        self.vars
            .set_string("LoaderEntryDefault", &SYSTEMD_LOADER, ATTR_NV_BS_RT, entry)
            .context("setting LoaderEntryDefault")
    }

    pub fn default_entry(&self) -> Result<Option<String>> {
        self.vars.get_string("LoaderEntryDefault", &SYSTEMD_LOADER)
    }

    /// The entry systemd-boot booted this time (`LoaderEntrySelected`).
    pub fn selected(&self) -> Result<Option<String>> {
        self.vars.get_string("LoaderEntrySelected", &SYSTEMD_LOADER)
    }
}

/// Settings of the systemd-boot backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdBootSettings {
    /// Menu timeout written to `loader.conf`.
    pub timeout_secs: u32,
    /// Boot counting: tries for a newly installed entry (`None`: off).
    pub boot_tries: Option<u32>,
}

impl Default for SystemdBootSettings {
    fn default() -> Self {
        Self {
            timeout_secs: 3,
            boot_tries: None,
        }
    }
}

/// The systemd-boot [`BootControl`] backend.
#[derive(Debug, Clone)]
pub struct SystemdBoot {
    vars: EfiVars,
    esp: EspLayout,
    settings: SystemdBootSettings,
}

impl SystemdBoot {
    pub fn new(vars: EfiVars, esp: EspLayout, settings: SystemdBootSettings) -> Self {
        Self {
            vars,
            esp,
            settings,
        }
    }

    fn loader_vars(&self) -> LoaderVars {
        LoaderVars::new(self.vars.clone())
    }

    /// Entry files of `volume` present on the ESP (normally at most one).
    fn entry_files(esp: &dyn EspFs, volume: Volume) -> Result<Vec<String>> {
        if !esp.exists(ENTRIES_DIR)? {
            return Ok(Vec::new());
        }
        Ok(esp
            .list(ENTRIES_DIR)?
            .into_iter()
            .filter(|e| !e.is_dir && e.name.to_ascii_lowercase().ends_with(".conf"))
            .map(|e| e.name)
            .filter(|n| volume_of_entry(n) == Some(volume))
            .collect())
    }

    /// The one entry file of `volume`, or a servicing error naming what is wrong.
    fn entry_file(esp: &dyn EspFs, volume: Volume) -> Result<String> {
        let mut files = Self::entry_files(esp, volume)?;
        match files.len() {
            1 => Ok(files.remove(0)),
            0 => Err(TridentError::servicing(
                "boot-entry-missing",
                format!(
                    "no systemd-boot entry for volume {volume} in {ENTRIES_DIR} on {}",
                    esp.describe()
                ),
            )
            .into()),
            _ => Err(TridentError::servicing(
                "boot-entry-ambiguous",
                format!(
                    "several systemd-boot entries for volume {volume} on {}: {}",
                    esp.describe(),
                    files.join(", ")
                ),
            )
            .into()),
        }
    }

    fn install_one(&self, esp: &dyn EspFs, info: &VolumeBootInfo) -> Result<()> {
        let v = info.volume;
        // Nothing bootable for this volume while its files change.
        for old in Self::entry_files(esp, v)? {
            tracing::info!(entry = %old, "removing old boot entry");
            esp.remove(&format!("{ENTRIES_DIR}/{old}"))?;
        }
        esp.sync()?;
        let dir = format!("trident/{}", v.letter());
        let kernel = info.kernel.read().context("reading the kernel")?;
        esp.write_file(&format!("{dir}/linux"), &kernel)?;
        let initrd = match &info.initrd {
            Some(p) => {
                let data = p.read().context("reading the initrd")?;
                esp.write_file(&format!("{dir}/initrd"), &data)?;
                Some(format!("/{dir}/initrd"))
            }
            None => {
                esp.remove(&format!("{dir}/initrd"))?;
                None
            }
        };
        let spec = EntrySpec {
            title: format!("{} (volume {v})", info.title),
            version: info.version.clone(),
            linux: format!("/{dir}/linux"),
            initrd,
            options: kernel_cmdline(&info.root_partuuid, &info.extra_args),
        };
        let name = entry_file_name(v, self.settings.boot_tries);
        tracing::info!(entry = %name, version = %info.version, "writing boot entry");
        esp.write_file(
            &format!("{ENTRIES_DIR}/{name}"),
            render_entry(&spec).as_bytes(),
        )
    }
}

impl BootControl for SystemdBoot {
    fn name(&self) -> &'static str {
        "systemd-boot"
    }

    fn install_entries(&self, volumes: &[VolumeBootInfo]) -> Result<()> {
        let open = OpenEsp::open(&self.esp.access).context("opening the ESP")?;
        let esp = open.fs();
        if !esp.exists(LOADER_PATH)? {
            return Err(TridentError::invalid_input(
                "systemd-boot-missing",
                format!(
                    "{} has no {LOADER_PATH}; the image's ESP must provide systemd-boot",
                    esp.describe()
                ),
            )
            .into());
        }
        let loader = esp.read_file(LOADER_PATH)?;
        let fallback = "EFI/BOOT/BOOTX64.EFI";
        if !esp.exists(fallback)? || esp.read_file(fallback)? != loader {
            install_fallback(esp, &loader).context("installing the UEFI fallback loader")?;
        }
        let conf = render_loader_conf(self.settings.timeout_secs);
        if !esp.exists(LOADER_CONF)? || esp.read_file(LOADER_CONF)? != conf.as_bytes() {
            esp.write_file(LOADER_CONF, conf.as_bytes())?;
        }
        for info in volumes {
            self.install_one(esp, info)
                .with_context(|| format!("installing the boot entry of volume {}", info.volume))?;
        }
        open.close().context("closing the ESP")?;
        if let Some(hd) = self.esp.partition {
            let opt = LoadOption::new("Linux Boot Manager", hd, SYSTEMD_BOOT_LOADER);
            UefiBootVars::new(self.vars.clone())
                .ensure_first(&opt)
                .context("registering systemd-boot with the firmware")?;
        } else {
            tracing::info!("ESP partition unknown: relying on the existing firmware entry or the fallback loader");
        }
        Ok(())
    }

    fn set_trial(&self, volume: Volume) -> Result<()> {
        let open = OpenEsp::open(&self.esp.access).context("opening the ESP")?;
        let entry = Self::entry_file(open.fs(), volume)?;
        open.close()?;
        tracing::info!(%entry, "setting one-shot boot entry");
        self.loader_vars().set_oneshot(&entry)
    }

    fn set_default(&self, volume: Volume) -> Result<()> {
        let open = OpenEsp::open(&self.esp.access).context("opening the ESP")?;
        let esp = open.fs();
        let mut entry = Self::entry_file(esp, volume)?;
        if let Some((_, Some(_))) = parse_entry_id(&entry) {
            // Bless: the volume is being committed, its counter has done its job.
            let blessed = entry_file_name(volume, None);
            tracing::info!(from = %entry, to = %blessed, "blessing boot entry");
            let data = esp.read_file(&format!("{ENTRIES_DIR}/{entry}"))?;
            esp.write_file(&format!("{ENTRIES_DIR}/{blessed}"), &data)?;
            esp.remove(&format!("{ENTRIES_DIR}/{entry}"))?;
            entry = blessed;
        }
        open.close()?;
        tracing::info!(%entry, "setting default boot entry");
        self.loader_vars().set_default(&entry)
    }

    fn booted_volume(&self) -> Result<Option<Volume>> {
        Ok(self
            .loader_vars()
            .selected()?
            .and_then(|id| volume_of_entry(&id)))
    }

    fn clear_trial(&self) -> Result<()> {
        self.loader_vars().clear_oneshot()
    }

    fn pending_trial(&self) -> Result<Option<Volume>> {
        Ok(self
            .loader_vars()
            .oneshot()?
            .and_then(|id| volume_of_entry(&id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::uuid;

    #[test]
    fn entry_text_is_exact() {
        let spec = EntrySpec {
            title: "Azure Linux (volume A)".into(),
            version: "3.0.20240101".into(),
            linux: "/trident/a/linux".into(),
            initrd: Some("/trident/a/initrd".into()),
            options: kernel_cmdline(
                &uuid!("0fc63daf-8483-4772-8e79-3d69d8477de4"),
                &["rw".into(), "console=ttyS0".into()],
            ),
        };
        assert_eq!(
            render_entry(&spec),
            "title Azure Linux (volume A)\n\
             version 3.0.20240101\n\
             linux /trident/a/linux\n\
             initrd /trident/a/initrd\n\
             options root=PARTUUID=0fc63daf-8483-4772-8e79-3d69d8477de4 rw console=ttyS0\n"
        );
        let no_initrd = EntrySpec {
            initrd: None,
            ..spec
        };
        assert!(!render_entry(&no_initrd).contains("initrd"));
    }

    #[test]
    fn loader_conf_has_no_default() {
        assert_eq!(render_loader_conf(5), "timeout 5\neditor no\n");
    }

    #[test]
    fn entry_names_and_counters() {
        assert_eq!(entry_file_name(Volume::A, None), "trident-a.conf");
        assert_eq!(entry_file_name(Volume::B, Some(3)), "trident-b+3.conf");
        assert_eq!(parse_entry_id("trident-b.conf"), Some(("trident-b", None)));
        assert_eq!(
            parse_entry_id("trident-b+2-1.conf"),
            Some((
                "trident-b",
                Some(Counter {
                    left: 2,
                    done: Some(1)
                })
            ))
        );
        assert_eq!(
            parse_entry_id("trident-b+0"),
            Some((
                "trident-b",
                Some(Counter {
                    left: 0,
                    done: None
                })
            ))
        );
        assert_eq!(parse_entry_id("trident-b+x.conf"), None);
        assert_eq!(parse_entry_id("trident-b+1-.conf"), None);
        assert_eq!(volume_of_entry("trident-a.conf"), Some(Volume::A));
        assert_eq!(volume_of_entry("Trident-B+0-3.conf"), Some(Volume::B));
        assert_eq!(volume_of_entry("trident-c.conf"), None);
        assert_eq!(volume_of_entry("debian.conf"), None);
        assert_eq!(volume_of_entry("auto-windows"), None);
    }

    #[test]
    fn cmdline_without_extra_args() {
        assert_eq!(
            kernel_cmdline(&uuid::Uuid::nil(), &[]),
            "root=PARTUUID=00000000-0000-0000-0000-000000000000"
        );
    }
}
