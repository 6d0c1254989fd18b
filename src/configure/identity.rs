//! Host identity: hostname, `/etc/hosts`, machine-id and SSH host keys.

use anyhow::{Context, Result};
use std::fs;
use std::path::Path;

use super::fsutil;
use crate::config::ServicingType;
use crate::error::TridentError;

/// Content of `/etc/machine-id` on a clean install: systemd generates an id on first boot
/// and treats the boot as the first one (`ConditionFirstBoot=yes` units run, presets apply).
pub const MACHINE_ID_UNINITIALIZED: &str = "uninitialized\n";

/// Whether `name` is a valid hostname (RFC 1123 labels, at most 64 characters).
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// `/etc/hosts` with the `127.0.1.1` line naming `hostname` (added when missing).
pub fn hosts_with_hostname(existing: &str, hostname: &str) -> String {
    let short = hostname.split('.').next().unwrap_or(hostname);
    let names = if short == hostname {
        hostname.to_string()
    } else {
        format!("{hostname} {short}")
    };
    let line = format!("127.0.1.1\t{names}");
    let mut out = String::new();
    let mut done = false;
    for l in existing.lines() {
        if l.split_whitespace().next() == Some("127.0.1.1") {
            if !done {
                out.push_str(&line);
                out.push('\n');
                done = true;
            }
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    if !done {
        if existing.is_empty() {
            out.push_str("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n");
        }
        // After the 127.0.0.1 line when there is one, else at the end.
        let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
        let pos = lines
            .iter()
            .position(|l| l.split_whitespace().next() == Some("127.0.0.1"))
            .map(|i| i + 1)
            .unwrap_or(lines.len());
        lines.insert(pos, line);
        out = lines.join("\n") + "\n";
    }
    out
}

/// Write `/etc/hostname` and the `127.0.1.1` line of `/etc/hosts`.
pub fn set_hostname(root: &Path, hostname: &str) -> Result<()> {
    if !valid_hostname(hostname) {
        return Err(TridentError::invalid_input(
            "invalid-hostname",
            format!("'{hostname}' is not a valid hostname"),
        )
        .at("os.hostname")
        .into());
    }
    fsutil::write_in_target(
        root,
        "/etc/hostname",
        format!("{hostname}\n").as_bytes(),
        None,
    )?;
    let hosts = fsutil::read_in_target(root, "/etc/hosts")?.unwrap_or_default();
    fsutil::write_in_target(
        root,
        "/etc/hosts",
        hosts_with_hostname(&hosts, hostname).as_bytes(),
        None,
    )?;
    Ok(())
}

/// Hostname step: the Host Configuration's hostname; on an A/B update without one, the
/// running OS's hostname.
pub fn configure_hostname(
    root: &Path,
    hostname: Option<&str>,
    servicing: ServicingType,
    running_root: Option<&Path>,
) -> Result<()> {
    if let Some(h) = hostname {
        return set_hostname(root, h);
    }
    if servicing == ServicingType::AbUpdate {
        if let Some(running) = running_root {
            if let Some(h) = fsutil::read_in_target(running, "/etc/hostname")? {
                let h = h.trim();
                if !h.is_empty() {
                    tracing::info!(hostname = h, "carrying the running hostname forward");
                    return set_hostname(root, h);
                }
            }
        }
    }
    Ok(())
}

/// machine-id step: `uninitialized` on a clean install, the running OS's id on an A/B
/// update (so journals, DHCP client ids and the like stay the same across updates).
pub fn configure_machine_id(
    root: &Path,
    servicing: ServicingType,
    running_root: Option<&Path>,
) -> Result<()> {
    match (servicing, running_root) {
        (ServicingType::AbUpdate, Some(running)) => {
            let id = fsutil::read_in_target(running, "/etc/machine-id")?
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            if id.len() != 32 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(TridentError::environment(
                    "invalid-machine-id",
                    format!(
                        "the running OS's /etc/machine-id under {} is not a 32-digit hex id \
                         ('{id}'); cannot carry it forward",
                        running.display()
                    ),
                )
                .into());
            }
            fsutil::write_in_target(
                root,
                "/etc/machine-id",
                format!("{id}\n").as_bytes(),
                Some(0o444),
            )?;
        }
        (ServicingType::AbUpdate, None) => {
            tracing::warn!(
                "A/B update without the running OS's root; machine-id left as in the image"
            );
        }
        (ServicingType::CleanInstall, _) => {
            fsutil::write_in_target(
                root,
                "/etc/machine-id",
                MACHINE_ID_UNINITIALIZED.as_bytes(),
                Some(0o444),
            )?;
        }
        // A runtime update configures the running OS: its identity stays.
        (ServicingType::RuntimeUpdate, _) => {}
    }
    Ok(())
}

/// Copy `/etc/ssh/ssh_host_*` from the running OS (A/B update), so clients see the same
/// host keys after the update. Modes are kept.
pub fn carry_ssh_host_keys(root: &Path, running_root: &Path) -> Result<usize> {
    let dir = fsutil::target_path(running_root, Path::new("/etc/ssh"))?.join("");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut n = 0;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("ssh_host_") || !entry.file_type()?.is_file() {
            continue;
        }
        let data = fs::read(entry.path())
            .with_context(|| format!("reading {}", entry.path().display()))?;
        let mode = {
            use std::os::unix::fs::MetadataExt;
            entry.metadata()?.mode() & 0o7777
        };
        fsutil::write_in_target(root, &format!("/etc/ssh/{name}"), &data, Some(mode))?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_line_replaced_or_added() {
        assert_eq!(
            hosts_with_hostname("127.0.0.1 localhost\n127.0.1.1 old\n::1 localhost\n", "new"),
            "127.0.0.1 localhost\n127.0.1.1\tnew\n::1 localhost\n"
        );
        assert_eq!(
            hosts_with_hostname("127.0.0.1 localhost\n::1 localhost\n", "h.example.com"),
            "127.0.0.1 localhost\n127.0.1.1\th.example.com h\n::1 localhost\n"
        );
        assert_eq!(
            hosts_with_hostname("", "h"),
            "127.0.0.1\tlocalhost\n127.0.1.1\th\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
        );
    }

    #[test]
    fn hostname_written_and_carried_forward() {
        let t = tempfile::tempdir().unwrap();
        let (target, running) = (t.path().join("t"), t.path().join("r"));
        fs::create_dir_all(running.join("etc")).unwrap();
        fs::write(running.join("etc/hostname"), "edge-7\n").unwrap();
        configure_hostname(&target, None, ServicingType::CleanInstall, Some(&running)).unwrap();
        assert!(
            !target.join("etc/hostname").exists(),
            "clean install keeps image's"
        );
        configure_hostname(&target, None, ServicingType::AbUpdate, Some(&running)).unwrap();
        assert_eq!(
            fs::read_to_string(target.join("etc/hostname")).unwrap(),
            "edge-7\n"
        );
        configure_hostname(
            &target,
            Some("web-1"),
            ServicingType::AbUpdate,
            Some(&running),
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(target.join("etc/hostname")).unwrap(),
            "web-1\n"
        );
        assert!(fs::read_to_string(target.join("etc/hosts"))
            .unwrap()
            .contains("127.0.1.1\tweb-1\n"));
        let err = set_hostname(&target, "bad_name").unwrap_err();
        assert!(format!("{err:#}").contains("invalid-hostname"));
    }

    #[test]
    fn machine_id_policy() {
        let t = tempfile::tempdir().unwrap();
        let (target, running) = (t.path().join("t"), t.path().join("r"));
        fs::create_dir_all(running.join("etc")).unwrap();
        configure_machine_id(&target, ServicingType::RuntimeUpdate, None).unwrap();
        assert!(
            !target.join("etc/machine-id").exists(),
            "runtime update keeps the id"
        );
        configure_machine_id(&target, ServicingType::CleanInstall, None).unwrap();
        assert_eq!(
            fs::read_to_string(target.join("etc/machine-id")).unwrap(),
            "uninitialized\n"
        );
        let id = "0123456789abcdef0123456789abcdef";
        fs::write(running.join("etc/machine-id"), format!("{id}\n")).unwrap();
        configure_machine_id(&target, ServicingType::AbUpdate, Some(&running)).unwrap();
        assert_eq!(
            fs::read_to_string(target.join("etc/machine-id")).unwrap(),
            format!("{id}\n")
        );
        fs::write(running.join("etc/machine-id"), "").unwrap();
        let err =
            configure_machine_id(&target, ServicingType::AbUpdate, Some(&running)).unwrap_err();
        assert!(format!("{err:#}").contains("invalid-machine-id"));
    }

    #[test]
    fn ssh_host_keys_copied() {
        let t = tempfile::tempdir().unwrap();
        let (target, running) = (t.path().join("t"), t.path().join("r"));
        fs::create_dir_all(running.join("etc/ssh")).unwrap();
        fs::write(running.join("etc/ssh/ssh_host_ed25519_key"), "PRIV").unwrap();
        fs::write(running.join("etc/ssh/sshd_config"), "x").unwrap();
        assert_eq!(carry_ssh_host_keys(&target, &running).unwrap(), 1);
        assert_eq!(
            fs::read_to_string(target.join("etc/ssh/ssh_host_ed25519_key")).unwrap(),
            "PRIV"
        );
        assert!(!target.join("etc/ssh/sshd_config").exists());
    }
}
