//! Kernel modules, netplan and the SELinux mode.

use anyhow::Result;
use std::path::Path;

use super::fsutil;
use crate::config::{LoadMode, Module, SelinuxMode};
use crate::error::TridentError;

pub const MODULES_LOAD_FILE: &str = "/etc/modules-load.d/trident.conf";
pub const MODPROBE_FILE: &str = "/etc/modprobe.d/trident.conf";
pub const NETPLAN_FILE: &str = "/etc/netplan/99-trident.yaml";
pub const SELINUX_CONFIG: &str = "/etc/selinux/config";

/// `(modules-load.d text, modprobe.d text)`; either is `None` when it would be empty.
pub fn render_modules(modules: &[Module]) -> (Option<String>, Option<String>) {
    let header = "# Written by Trident from the Host Configuration (os.modules).\n";
    let mut load = String::new();
    let mut probe = String::new();
    for m in modules {
        match m.load_mode {
            LoadMode::Always => load.push_str(&format!("{}\n", m.name)),
            LoadMode::Disable => probe.push_str(&format!("blacklist {}\n", m.name)),
            LoadMode::Auto | LoadMode::Inherit => {}
        }
        if !m.options.is_empty() {
            let opts: Vec<String> = m.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
            probe.push_str(&format!("options {} {}\n", m.name, opts.join(" ")));
        }
    }
    let wrap = |s: String| (!s.is_empty()).then(|| format!("{header}{s}"));
    (wrap(load), wrap(probe))
}

pub fn write_modules(root: &Path, modules: &[Module]) -> Result<()> {
    let (load, probe) = render_modules(modules);
    if let Some(t) = load {
        fsutil::write_in_target(root, MODULES_LOAD_FILE, t.as_bytes(), Some(0o644))?;
    }
    if let Some(t) = probe {
        fsutil::write_in_target(root, MODPROBE_FILE, t.as_bytes(), Some(0o644))?;
    }
    Ok(())
}

/// The netplan document: the Host Configuration's value under `network:`.
pub fn render_netplan(netplan: &serde_yaml::Value) -> Result<String> {
    let mut doc = serde_yaml::Mapping::new();
    doc.insert("network".into(), netplan.clone());
    Ok(serde_yaml::to_string(&doc)?)
}

pub fn write_netplan(root: &Path, netplan: &serde_yaml::Value) -> Result<()> {
    fsutil::write_in_target(
        root,
        NETPLAN_FILE,
        render_netplan(netplan)?.as_bytes(),
        Some(0o600),
    )?;
    Ok(())
}

/// `/etc/selinux/config` with `SELINUX=` set to `mode` (added when missing).
pub fn selinux_config_with_mode(existing: &str, mode: SelinuxMode) -> String {
    let value = match mode {
        SelinuxMode::Disabled => "disabled",
        SelinuxMode::Permissive => "permissive",
        SelinuxMode::Enforcing => "enforcing",
    };
    let mut out = String::new();
    let mut done = false;
    for l in existing.lines() {
        if l.trim_start().starts_with("SELINUX=") {
            if !done {
                out.push_str(&format!("SELINUX={value}\n"));
                done = true;
            }
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    if !done {
        out.push_str(&format!("SELINUX={value}\n"));
    }
    out
}

/// Set the SELinux mode in the image's `/etc/selinux/config`. An image without that file
/// has no SELinux policy: `disabled` is then a no-op, anything else an error.
pub fn write_selinux(root: &Path, mode: SelinuxMode) -> Result<()> {
    match fsutil::read_in_target(root, SELINUX_CONFIG)? {
        Some(existing) => {
            fsutil::write_in_target(
                root,
                SELINUX_CONFIG,
                selinux_config_with_mode(&existing, mode).as_bytes(),
                None,
            )?;
        }
        None if mode == SelinuxMode::Disabled => {
            tracing::debug!("no /etc/selinux/config in the image; SELinux is already off");
        }
        None => {
            return Err(TridentError::invalid_input(
                "selinux-not-in-image",
                format!(
                    "os.selinux.mode is {mode:?} but the image has no {SELINUX_CONFIG} \
                     (no SELinux policy installed)"
                )
                .to_lowercase(),
            )
            .at("os.selinux.mode")
            .into())
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn modules_rendered() {
        let m = |name: &str, mode, opts: &[(&str, &str)]| Module {
            name: name.into(),
            load_mode: mode,
            options: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        };
        let t = tempfile::tempdir().unwrap();
        write_modules(
            t.path(),
            &[
                m("br_netfilter", LoadMode::Always, &[]),
                m("nouveau", LoadMode::Disable, &[]),
                m(
                    "kvm_intel",
                    LoadMode::Inherit,
                    &[("nested", "1"), ("ept", "0")],
                ),
                m("loop", LoadMode::Auto, &[]),
            ],
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(t.path().join("etc/modules-load.d/trident.conf")).unwrap(),
            "# Written by Trident from the Host Configuration (os.modules).\nbr_netfilter\n"
        );
        assert_eq!(
            fs::read_to_string(t.path().join("etc/modprobe.d/trident.conf")).unwrap(),
            "# Written by Trident from the Host Configuration (os.modules).\n\
             blacklist nouveau\noptions kvm_intel ept=0 nested=1\n"
        );
        let t2 = tempfile::tempdir().unwrap();
        write_modules(t2.path(), &[m("loop", LoadMode::Auto, &[])]).unwrap();
        assert!(!t2.path().join("etc").exists(), "nothing to write");
    }

    #[test]
    fn netplan_written_0600() {
        let t = tempfile::tempdir().unwrap();
        let v: serde_yaml::Value =
            serde_yaml::from_str("version: 2\nethernets:\n  eth0:\n    dhcp4: true\n").unwrap();
        write_netplan(t.path(), &v).unwrap();
        let p = t.path().join("etc/netplan/99-trident.yaml");
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n"
        );
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn selinux_only_when_present() {
        let t = tempfile::tempdir().unwrap();
        write_selinux(t.path(), SelinuxMode::Disabled).unwrap();
        assert!(!t.path().join("etc/selinux/config").exists());
        let err = write_selinux(t.path(), SelinuxMode::Enforcing).unwrap_err();
        assert!(format!("{err:#}").contains("selinux-not-in-image"));
        fs::create_dir_all(t.path().join("etc/selinux")).unwrap();
        fs::write(
            t.path().join("etc/selinux/config"),
            "# comment\nSELINUX=enforcing\nSELINUXTYPE=targeted\n",
        )
        .unwrap();
        write_selinux(t.path(), SelinuxMode::Permissive).unwrap();
        assert_eq!(
            fs::read_to_string(t.path().join("etc/selinux/config")).unwrap(),
            "# comment\nSELINUX=permissive\nSELINUXTYPE=targeted\n"
        );
    }
}
