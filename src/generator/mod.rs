//! `trident-generator`: a systemd generator that decides on every boot whether this is
//! a trial boot (wire the health target and the commit service), a boot of the old
//! volume after a failed trial (wire the service that records the rollback), or an
//! installer boot (wire `trident-install.service`) — see `docs/units.md`.
//!
//! - [`markers`] — the marker-file contract with the engine (paths, JSON types).
//! - [`decide`]  — [`decide::decide`], a pure function from [`decide::Inputs`].
//! - [`output`]  — writes a [`decide::Decision`] into the output directory.
//!
//! It never fails the boot: any error is logged to `/dev/kmsg` and nothing is wired.

pub mod decide;
pub mod markers;
pub mod output;

#[cfg(test)]
mod tests;

use anyhow::{Context, Result};
use decide::{Decision, Inputs, Marker};
use serde::de::DeserializeOwned;
use std::io::Write;
use std::path::{Path, PathBuf};

/// systemd's vendor GUID of the Boot Loader Interface variables.
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// Where the generator reads its inputs. Defaults are the real ones; environment
/// variables point them elsewhere for tests (see [`Sources::from_env`]).
#[derive(Debug, Clone)]
pub struct Sources {
    /// Root filesystem holding the markers (`TRIDENT_GENERATOR_ROOT`, default `/`).
    pub root: PathBuf,
    /// efivarfs directory (`TRIDENT_GENERATOR_EFIVARS`, default
    /// `/sys/firmware/efi/efivars`).
    pub efivars: PathBuf,
    /// Kernel command line text: `SYSTEMD_PROC_CMDLINE` if set (systemd's own
    /// convention), else the file `TRIDENT_GENERATOR_CMDLINE` (default `/proc/cmdline`).
    pub cmdline: CmdlineSource,
    /// `SYSTEMD_IN_INITRD=1`.
    pub in_initrd_env: bool,
    /// Log destination (`TRIDENT_GENERATOR_KMSG`, default `/dev/kmsg`).
    pub kmsg: PathBuf,
}

#[derive(Debug, Clone)]
pub enum CmdlineSource {
    Text(String),
    File(PathBuf),
}

impl Sources {
    pub fn from_env() -> Sources {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        Sources {
            root: var("TRIDENT_GENERATOR_ROOT").map_or_else(|| "/".into(), PathBuf::from),
            efivars: var("TRIDENT_GENERATOR_EFIVARS")
                .map_or_else(|| "/sys/firmware/efi/efivars".into(), PathBuf::from),
            cmdline: match std::env::var("SYSTEMD_PROC_CMDLINE") {
                Ok(t) => CmdlineSource::Text(t),
                Err(_) => CmdlineSource::File(
                    var("TRIDENT_GENERATOR_CMDLINE")
                        .map_or_else(|| "/proc/cmdline".into(), PathBuf::from),
                ),
            },
            in_initrd_env: std::env::var("SYSTEMD_IN_INITRD").is_ok_and(|v| v == "1"),
            kmsg: var("TRIDENT_GENERATOR_KMSG").map_or_else(|| "/dev/kmsg".into(), PathBuf::from),
        }
    }
}

/// Read every input. Unreadable inputs become `Marker::Invalid` / `Err` for
/// [`decide::decide`] to turn into a logged no-op; only the command line is fatal here.
pub fn read_inputs(src: &Sources) -> Result<Inputs> {
    let cmdline = match &src.cmdline {
        CmdlineSource::Text(t) => t.clone(),
        CmdlineSource::File(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
    };
    Ok(Inputs {
        cmdline,
        in_initrd: src.in_initrd_env || src.root.join("etc/initrd-release").exists(),
        loader_entry_selected: read_efi_string(&src.efivars, "LoaderEntrySelected", LOADER_GUID),
        trial: read_json(&src.root.join(markers::TRIAL_MARKER)),
        pending: read_json(&src.root.join(markers::PENDING_MARKER)),
        health_checks: read_json(&src.root.join(markers::HEALTH_CHECKS)),
        install: match std::fs::read_to_string(src.root.join(markers::INSTALL_MARKER)) {
            Ok(s) => Marker::Present(
                s.lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or("")
                    .to_string(),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Marker::Absent,
            Err(e) => Marker::Invalid(e.to_string()),
        },
    })
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Marker<T> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(v) => Marker::Present(v),
            Err(e) => Marker::Invalid(format!("{}: {e}", path.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Marker::Absent,
        Err(e) => Marker::Invalid(format!("{}: {e}", path.display())),
    }
}

/// Read a UTF-16LE string EFI variable from an efivarfs directory (4-byte
/// little-endian attributes, then the value). `Ok(None)` when the directory or the
/// variable does not exist.
pub fn read_efi_string(efivars: &Path, name: &str, guid: &str) -> Result<Option<String>, String> {
    let path = efivars.join(format!("{name}-{guid}"));
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if bytes.len() < 4 || (bytes.len() - 4) % 2 != 0 {
        return Err(format!(
            "{}: {} bytes is not attributes + UTF-16LE",
            path.display(),
            bytes.len()
        ));
    }
    let units: Vec<u16> = bytes[4..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Append one line to the kernel log (`<prio>trident-generator: msg`); falls back to
/// stderr when the log cannot be opened.
pub fn kmsg(path: &Path, prio: u8, msg: &str) {
    let line = format!("<{prio}>trident-generator: {msg}\n");
    let written = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if written.is_err() {
        eprint!("{}", &line[3..]);
    }
}

/// Generator main: `trident-generator NORMAL_DIR [EARLY_DIR LATE_DIR]`. Returns the
/// exit code: always 0 when called by systemd, 2 on a usage error.
pub fn main(args: &[String]) -> i32 {
    let src = Sources::from_env();
    if args.len() != 1 && args.len() != 3 {
        eprintln!("usage: trident-generator NORMAL_DIR [EARLY_DIR LATE_DIR]");
        return 2;
    }
    let normal = Path::new(&args[0]);
    let decision = match read_inputs(&src) {
        Ok(inputs) => decide::decide(&inputs),
        Err(e) => Decision::Error {
            reason: format!("{e:#}"),
        },
    };
    let (prio, summary) = describe(&decision);
    kmsg(&src.kmsg, prio, &summary);
    if let Err(e) = output::write_output(&decision, normal) {
        kmsg(
            &src.kmsg,
            3,
            &format!(
                "writing units into {}: {e:#}; removing partial output",
                normal.display()
            ),
        );
        remove_partial_output(normal, &src.kmsg);
    }
    0
}

fn describe(d: &Decision) -> (u8, String) {
    match d {
        Decision::Nothing { reason } => (7, format!("nothing to wire: {reason}")),
        Decision::Error { reason } => (3, format!("wiring nothing: {reason}")),
        Decision::Trial { operation, update_id, checks, .. } => (
            6,
            format!(
                "trial boot of {operation:?} {update_id}: wiring trident-health.target with {} check(s) and trident-commit.service",
                checks.len()
            ),
        ),
        Decision::RecordRollback { update_id } => (
            4,
            format!("booted the old volume while trial {update_id} was pending: wiring trident-record-rollback.service"),
        ),
        Decision::Install { config } => (6, format!("installer boot ({config}): wiring trident-install.service")),
    }
}

/// After a failed write, remove what we may have written so a half-wired trial (e.g. a
/// commit without its checks) cannot happen.
fn remove_partial_output(normal: &Path, log: &Path) {
    let Ok(entries) = std::fs::read_dir(normal) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("trident-")
            || name == "boot-complete.target.requires"
            || name == "multi-user.target.wants";
        if !ours {
            continue;
        }
        let p = e.path();
        if name.ends_with(".wants") || name.ends_with(".requires") {
            if let Ok(links) = std::fs::read_dir(&p) {
                for l in links.flatten() {
                    if l.file_name().to_string_lossy().starts_with("trident-") {
                        if let Err(err) = std::fs::remove_file(l.path()) {
                            kmsg(log, 3, &format!("removing {}: {err}", l.path().display()));
                        }
                    }
                }
            }
        } else if let Err(err) = std::fs::remove_dir_all(&p) {
            kmsg(log, 3, &format!("removing {}: {err}", p.display()));
        }
    }
}
