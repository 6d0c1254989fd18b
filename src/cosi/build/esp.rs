//! Bootloader detection from the ESP, read as FAT in user space (no mount) through
//! [`crate::boot::esp::FatEsp::open_read_only`].
//!
//! - systemd-boot: `EFI/systemd/systemd-boot*.efi`; its entries are the Type #1
//!   `loader/entries/*.conf` files (`config`, or `uki-config` when they name a UKI with
//!   `uki`/`efi`) and the Type #2 UKIs in `EFI/Linux/*.efi` (`uki-standalone`, command
//!   line and kernel release read from the PE `.cmdline` and `.uname` sections).
//! - GRUB: `EFI/*/grub*.efi` (or a shim next to it).
//! - The architecture from the removable-media loader name `EFI/BOOT/BOOT<ARCH>.EFI`.

use crate::boot::esp::{EspFs, FatEsp, FatLocation};
use crate::cosi::metadata::{Bootloader, SystemdBootEntry, SystemdBootEntryType};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// What the ESP says about the OS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspFindings {
    pub bootloader: Bootloader,
    /// From `EFI/BOOT/BOOT<ARCH>.EFI`, when present.
    pub arch: Option<String>,
}

/// Entries of `dir` as (name, is directory), sorted; none when `dir` does not exist.
fn list(fs: &FatEsp, dir: &str) -> Result<Vec<(String, bool)>> {
    if !fs.exists(dir)? {
        return Ok(vec![]);
    }
    Ok(fs
        .list(dir)?
        .into_iter()
        .map(|e| (e.name, e.is_dir))
        .collect())
}

fn read(fs: &FatEsp, path: &str) -> Result<Vec<u8>> {
    fs.read_file(path)
}

/// Read the ESP at `[start, start+len)` of the disk image `image` (opened read-only,
/// through [`FatEsp::open_read_only`]) and detect the bootloader.
/// `mount_point` (e.g. `/boot/efi`) prefixes the entry paths.
pub fn inspect(image: &Path, start: u64, len: u64, mount_point: &str) -> Result<EspFindings> {
    let fs = FatEsp::open_read_only(&FatLocation {
        path: image.to_path_buf(),
        offset: start,
        len: Some(len),
    })
    .context("opening the ESP's FAT filesystem")?;
    let efi = list(&fs, "EFI")?;
    let ci = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let find_dir = |name: &str| {
        efi.iter()
            .find(|(n, d)| *d && ci(n, name))
            .map(|(n, _)| n.clone())
    };

    let arch = match find_dir("BOOT") {
        Some(boot) => list(&fs, &format!("EFI/{boot}"))?
            .iter()
            .filter(|(_, d)| !d)
            .find_map(|(n, _)| arch_of_loader(n)),
        None => None,
    };

    let has_sdboot = match find_dir("systemd") {
        Some(d) => list(&fs, &format!("EFI/{d}"))?.iter().any(|(n, dir)| {
            !dir && n.to_ascii_lowercase().starts_with("systemd-boot")
                && n.to_ascii_lowercase().ends_with(".efi")
        }),
        None => false,
    };
    let mut has_grub = false;
    for (d, is_dir) in &efi {
        if !is_dir || ci(d, "BOOT") || ci(d, "Linux") || ci(d, "systemd") {
            continue;
        }
        has_grub |= list(&fs, &format!("EFI/{d}"))?.iter().any(|(n, dir)| {
            let l = n.to_ascii_lowercase();
            !dir && l.starts_with("grub") && l.ends_with(".efi")
        });
    }

    let mp = mount_point.trim_end_matches('/');
    let mut entries = Vec::new();
    if has_sdboot {
        for (n, dir) in list(&fs, "loader/entries")? {
            if dir || !n.to_ascii_lowercase().ends_with(".conf") {
                continue;
            }
            let path = format!("loader/entries/{n}");
            let text = String::from_utf8(read(&fs, &path)?)
                .with_context(|| format!("ESP file {path} is not UTF-8"))?;
            entries.push(parse_entry(&text, &format!("{mp}/{path}")));
        }
        if let Some(linux) = find_dir("Linux") {
            for (n, dir) in list(&fs, &format!("EFI/{linux}"))? {
                if dir || !n.to_ascii_lowercase().ends_with(".efi") {
                    continue;
                }
                let path = format!("EFI/{linux}/{n}");
                let pe = read(&fs, &path)?;
                let sect = |s: &str| {
                    pe_section(&pe, s)
                        .map(|b| {
                            String::from_utf8_lossy(b)
                                .trim_end_matches(['\0', '\n'])
                                .trim()
                                .to_string()
                        })
                        .unwrap_or_default()
                };
                entries.push(SystemdBootEntry {
                    kind: SystemdBootEntryType::UkiStandalone,
                    path: format!("{mp}/{path}"),
                    cmdline: sect(".cmdline"),
                    kernel: sect(".uname"),
                });
            }
        }
    }
    let bootloader = if has_sdboot && !entries.is_empty() {
        Bootloader::SystemdBoot { entries }
    } else if has_grub {
        Bootloader::Grub
    } else if has_sdboot {
        bail!("the ESP has systemd-boot but no boot entries (loader/entries/*.conf or EFI/Linux/*.efi)");
    } else {
        bail!("no supported bootloader on the ESP (looked for EFI/systemd/systemd-boot*.efi and EFI/*/grub*.efi)");
    };
    Ok(EspFindings { bootloader, arch })
}

/// `BOOTX64.EFI` → `x86_64`, `BOOTAA64.EFI` → `aarch64`.
pub fn arch_of_loader(name: &str) -> Option<String> {
    let u = name.to_ascii_uppercase();
    let a = u.strip_prefix("BOOT")?.strip_suffix(".EFI")?;
    Some(
        match a {
            "X64" => "x86_64",
            "AA64" => "aarch64",
            _ => return None,
        }
        .to_string(),
    )
}

/// Parse a Boot Loader Specification Type #1 entry.
pub fn parse_entry(text: &str, path: &str) -> SystemdBootEntry {
    let mut options = Vec::new();
    let mut version = None;
    let mut linux = None;
    let mut uki = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once(char::is_whitespace)
            .map(|(k, v)| (k, v.trim()))
            .unwrap_or((line, ""));
        match k {
            "options" => options.push(v.to_string()),
            "version" => version = Some(v.to_string()),
            "linux" => linux = Some(v.to_string()),
            "uki" | "efi" => uki = true,
            _ => {}
        }
    }
    let kernel = version
        .or_else(|| {
            let l = linux?;
            let base = l.rsplit('/').next()?.to_string();
            base.strip_prefix("vmlinuz-")
                .or_else(|| base.strip_prefix("vmlinux-"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    SystemdBootEntry {
        kind: if uki {
            SystemdBootEntryType::UkiConfig
        } else {
            SystemdBootEntryType::Config
        },
        path: path.to_string(),
        cmdline: options.join(" "),
        kernel,
    }
}

/// The raw bytes of a named section of a PE image, if present.
pub fn pe_section<'a>(pe: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let u16at = |o: usize| Some(u16::from_le_bytes(pe.get(o..o + 2)?.try_into().ok()?));
    let u32at = |o: usize| Some(u32::from_le_bytes(pe.get(o..o + 4)?.try_into().ok()?));
    if pe.get(..2)? != b"MZ" {
        return None;
    }
    let peo = u32at(0x3c)? as usize;
    if pe.get(peo..peo + 4)? != b"PE\0\0" {
        return None;
    }
    let nsect = u16at(peo + 6)? as usize;
    let opt = u16at(peo + 20)? as usize;
    let table = peo + 24 + opt;
    for i in 0..nsect {
        let s = table + i * 40;
        let sname = pe.get(s..s + 8)?;
        let end = sname.iter().position(|&b| b == 0).unwrap_or(8);
        if &sname[..end] != name.as_bytes() {
            continue;
        }
        let vsize = u32at(s + 8)? as usize;
        let rsize = u32at(s + 16)? as usize;
        let ptr = u32at(s + 20)? as usize;
        let size = if vsize > 0 { vsize.min(rsize) } else { rsize };
        return pe.get(ptr..ptr + size);
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal PE image with the given sections (name, contents).
    pub(crate) fn make_pe(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let peo = 0x80usize;
        let opt = 0xF0usize;
        let table = peo + 24 + opt;
        let mut data_off = table + 40 * sections.len();
        let mut pe = vec![0u8; data_off];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&(peo as u32).to_le_bytes());
        pe[peo..peo + 4].copy_from_slice(b"PE\0\0");
        pe[peo + 4..peo + 6].copy_from_slice(&0x8664u16.to_le_bytes());
        pe[peo + 6..peo + 8].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        pe[peo + 20..peo + 22].copy_from_slice(&(opt as u16).to_le_bytes());
        for (i, (name, body)) in sections.iter().enumerate() {
            let s = table + i * 40;
            pe[s..s + name.len()].copy_from_slice(name.as_bytes());
            pe[s + 8..s + 12].copy_from_slice(&(body.len() as u32).to_le_bytes());
            pe[s + 16..s + 20]
                .copy_from_slice(&(body.len().next_multiple_of(512) as u32).to_le_bytes());
            pe[s + 20..s + 24].copy_from_slice(&(data_off as u32).to_le_bytes());
            pe.resize(data_off, 0);
            pe.extend_from_slice(body);
            data_off += body.len().next_multiple_of(512);
            pe.resize(data_off, 0);
        }
        pe
    }

    #[test]
    fn pe_sections() {
        let pe = make_pe(&[
            (".osrel", b"ID=x\n"),
            (".cmdline", b"root=/dev/sda2 ro\n\0"),
            (".uname", b"6.6.1\0"),
        ]);
        assert_eq!(pe_section(&pe, ".uname").unwrap(), b"6.6.1\0");
        assert_eq!(
            pe_section(&pe, ".cmdline").unwrap(),
            b"root=/dev/sda2 ro\n\0"
        );
        assert_eq!(pe_section(&pe, ".linux"), None);
        assert_eq!(pe_section(b"not a pe", ".uname"), None);
    }

    #[test]
    fn type1_entries() {
        let e = parse_entry(
            "# comment\ntitle Debian\nversion 6.1.0-18-amd64\nlinux /a/vmlinuz-6.1.0-18-amd64\ninitrd /a/initrd\noptions root=UUID=x ro\noptions quiet\n",
            "/boot/efi/loader/entries/a.conf",
        );
        assert_eq!(
            e,
            SystemdBootEntry {
                kind: SystemdBootEntryType::Config,
                path: "/boot/efi/loader/entries/a.conf".into(),
                cmdline: "root=UUID=x ro quiet".into(),
                kernel: "6.1.0-18-amd64".into()
            }
        );
        let e = parse_entry("linux /vmlinuz-6.6.0\n", "p");
        assert_eq!(e.kernel, "6.6.0");
        let e = parse_entry("uki /EFI/Linux/x.efi\noptions a=b\n", "p");
        assert_eq!(e.kind, SystemdBootEntryType::UkiConfig);
    }

    #[test]
    fn loader_arch() {
        assert_eq!(arch_of_loader("BOOTX64.EFI").as_deref(), Some("x86_64"));
        assert_eq!(arch_of_loader("bootaa64.efi").as_deref(), Some("aarch64"));
        assert_eq!(arch_of_loader("fbx64.efi"), None);
    }

    fn have_tools() -> bool {
        ["mkfs.vfat", "mmd", "mcopy"]
            .iter()
            .all(|t| crate::cmd::have_program(t))
    }

    /// Build a FAT image at offset 1 MiB of a file, with the given files.
    fn esp_with(files: &[(&str, &[u8])]) -> (tempfile::TempDir, std::path::PathBuf, u64, u64) {
        use crate::cmd::Cmd;
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("esp.img");
        std::fs::File::create(&esp)
            .unwrap()
            .set_len(40 << 20)
            .unwrap();
        Cmd::new("mkfs.vfat")
            .args(["-F", "32"])
            .arg(&esp)
            .run()
            .unwrap();
        for (path, body) in files {
            let mut parts: Vec<&str> = path.split('/').collect();
            parts.pop();
            let mut cur = String::new();
            for p in parts {
                cur = format!("{cur}/{p}");
                let _ = Cmd::new("mmd")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .args(["-D", "s", "-i"])
                    .arg(&esp)
                    .arg(format!("::{cur}"))
                    .run();
            }
            let src = dir.path().join("src");
            std::fs::write(&src, body).unwrap();
            Cmd::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(&esp)
                .arg(&src)
                .arg(format!("::/{path}"))
                .run()
                .unwrap();
        }
        let disk = dir.path().join("disk.img");
        let mut data = vec![0u8; 1 << 20];
        data.extend(std::fs::read(&esp).unwrap());
        std::fs::write(&disk, &data).unwrap();
        (dir, disk, 1 << 20, 40 << 20)
    }

    #[test]
    fn detects_systemd_boot_with_type1_and_uki() {
        if !have_tools() {
            eprintln!("skipping: needs dosfstools and mtools");
            return;
        }
        let uki = make_pe(&[
            (".cmdline", b"root=PARTUUID=abc ro\n"),
            (".uname", b"6.6.78.1-3.azl3\n"),
        ]);
        let (_d, f, start, len) = esp_with(&[
            ("EFI/BOOT/BOOTAA64.EFI", b"MZ"),
            ("EFI/systemd/systemd-bootaa64.efi", b"MZ"),
            ("loader/loader.conf", b"timeout 3\n"),
            (
                "loader/entries/b.conf",
                b"version 6.1\nlinux /b/vmlinuz\noptions ro\n",
            ),
            ("EFI/Linux/os.efi", &uki),
        ]);
        let found = inspect(&f, start, len, "/boot/efi/").unwrap();
        assert_eq!(found.arch.as_deref(), Some("aarch64"));
        let Bootloader::SystemdBoot { entries } = found.bootloader else {
            panic!("not systemd-boot: {:?}", found.bootloader);
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].path, "/boot/efi/loader/entries/b.conf");
        assert_eq!(entries[0].kernel, "6.1");
        assert_eq!(
            entries[1],
            SystemdBootEntry {
                kind: SystemdBootEntryType::UkiStandalone,
                path: "/boot/efi/EFI/Linux/os.efi".into(),
                cmdline: "root=PARTUUID=abc ro".into(),
                kernel: "6.6.78.1-3.azl3".into()
            }
        );
    }

    #[test]
    fn detects_grub_and_refuses_unknown() {
        if !have_tools() {
            eprintln!("skipping: needs dosfstools and mtools");
            return;
        }
        let (_d, f, start, len) = esp_with(&[
            ("EFI/BOOT/BOOTX64.EFI", b"MZ"),
            ("EFI/azurelinux/grubx64.efi", b"MZ"),
        ]);
        let found = inspect(&f, start, len, "/boot/efi").unwrap();
        assert_eq!(found.bootloader, Bootloader::Grub);
        assert_eq!(found.arch.as_deref(), Some("x86_64"));

        let (_d, f, start, len) = esp_with(&[("EFI/BOOT/BOOTX64.EFI", b"MZ")]);
        let err = format!("{:#}", inspect(&f, start, len, "/boot/efi").unwrap_err());
        assert!(err.contains("no supported bootloader"), "{err}");

        let (_d, f, start, len) = esp_with(&[("EFI/systemd/systemd-bootx64.efi", b"MZ")]);
        let err = format!("{:#}", inspect(&f, start, len, "/boot/efi").unwrap_err());
        assert!(err.contains("no boot entries"), "{err}");

        // Not FAT at all.
        let err = inspect(&f, 0, 1 << 20, "/boot/efi").unwrap_err();
        assert!(format!("{err:#}").contains("FAT"), "{err:#}");
    }
}
