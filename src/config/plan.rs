//! The servicing plan: what a clean install of a Host Configuration would do, in the
//! order it would do it. A pure function of the configuration (`trident plan` prints
//! it; nothing is touched).

use super::{Check, FileSystemSource, HostConfiguration, ServicingType};
use serde::Serialize;
use std::fmt;

/// What servicing would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub image: Option<PlanImage>,
    pub disks: Vec<PlanDisk>,
    pub ab_volume_pairs: Vec<PlanPair>,
    pub filesystems: Vec<PlanFilesystem>,
    pub os: Vec<String>,
    pub hooks: Vec<PlanHook>,
    pub health_checks: Vec<PlanHook>,
    pub datastore: String,
    /// Parts that are valid but that this build refuses to execute.
    pub unsupported: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanImage {
    pub url: String,
    pub sha384: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDisk {
    pub id: String,
    pub device: String,
    pub partitions: Vec<PlanPartition>,
    pub adopted: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanPartition {
    pub id: String,
    pub partition_type: String,
    pub size: String,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanPair {
    pub id: String,
    pub volume_a: String,
    pub volume_b: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanFilesystem {
    pub mount_point: Option<String>,
    pub device_id: Option<String>,
    pub action: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanHook {
    pub phase: String,
    pub name: String,
    pub runs_on_clean_install: bool,
    pub runs_on_ab_update: bool,
}

impl Plan {
    /// The plan for a (validated) Host Configuration.
    pub fn from_config(hc: &HostConfiguration) -> Plan {
        let storage = &hc.storage;
        let disks = storage
            .disks
            .iter()
            .map(|d| PlanDisk {
                id: d.id.clone(),
                device: d.device.display().to_string(),
                partitions: d
                    .partitions
                    .iter()
                    .map(|p| PlanPartition {
                        id: p.id.clone(),
                        partition_type: p.partition_type.to_string(),
                        size: p.size.to_string(),
                        label: p.gpt_label().to_string(),
                    })
                    .collect(),
                adopted: d.adopted_partitions.iter().map(|a| a.id.clone()).collect(),
            })
            .collect();
        let ab_volume_pairs = storage
            .ab_volume_pairs()
            .iter()
            .map(|p| PlanPair {
                id: p.id.clone(),
                volume_a: p.volume_a_id.clone(),
                volume_b: p.volume_b_id.clone(),
            })
            .collect();
        let filesystems = storage
            .filesystems
            .iter()
            .map(|fs| {
                let dev = fs.device_id.clone();
                let target = match dev.as_deref().and_then(|d| storage.ab_volume_pair(d)) {
                    Some(pair) => format!(
                        "A/B pair '{}': install writes volume A '{}', updates alternate",
                        pair.id, pair.volume_a_id
                    ),
                    None => match &dev {
                        Some(d) => format!("'{d}'"),
                        None => "no block device".to_string(),
                    },
                };
                let action = match fs.source {
                    FileSystemSource::Image => format!("stream from the image into {target}"),
                    FileSystemSource::New => format!(
                        "create {} on {target}",
                        fs.effective_type()
                            .map(|t| t.as_str().to_string())
                            .unwrap_or_else(|| "a filesystem".into())
                    ),
                    FileSystemSource::Adopted => {
                        format!("keep the existing filesystem on {target}")
                    }
                };
                PlanFilesystem {
                    mount_point: fs.mount_path().map(|p| p.display().to_string()),
                    device_id: dev,
                    action,
                }
            })
            .collect();

        let os = &hc.os;
        let mut os_steps = Vec::new();
        if let Some(h) = &os.hostname {
            os_steps.push(format!("set hostname to {h}"));
        }
        for u in &os.users {
            os_steps.push(format!(
                "create user {} ({} SSH key(s))",
                u.name,
                u.ssh_public_keys.len()
            ));
        }
        for f in &os.additional_files {
            os_steps.push(format!("write {}", f.destination.display()));
        }
        for s in &os.services.enable {
            os_steps.push(format!("enable service {s}"));
        }
        for s in &os.services.disable {
            os_steps.push(format!("disable service {s}"));
        }
        if !os.kernel_command_line.extra_command_line.is_empty() {
            os_steps.push(format!(
                "kernel command line += {}",
                os.kernel_command_line.extra_command_line.join(" ")
            ));
        }
        if os.netplan.is_some() {
            os_steps.push("write the netplan configuration".into());
        }
        for e in &os.sysexts {
            os_steps.push(format!("add sysext {}", e.url));
        }
        for e in &os.confexts {
            os_steps.push(format!("add confext {}", e.url));
        }

        let hook = |phase: &str, s: &super::Script| PlanHook {
            phase: phase.to_string(),
            name: s.name.clone(),
            runs_on_clean_install: s.should_run(ServicingType::CleanInstall),
            runs_on_ab_update: s.should_run(ServicingType::AbUpdate),
        };
        let mut hooks = Vec::new();
        hooks.extend(
            hc.scripts
                .pre_servicing
                .iter()
                .map(|s| hook("preServicing", s)),
        );
        hooks.extend(
            hc.scripts
                .post_provision
                .iter()
                .map(|s| hook("postProvision", s)),
        );
        hooks.extend(
            hc.scripts
                .post_configure
                .iter()
                .map(|s| hook("postConfigure", s)),
        );
        let health_checks = hc
            .health
            .checks
            .iter()
            .map(|c| PlanHook {
                phase: match c {
                    Check::Script(_) => "script".into(),
                    Check::SystemdCheck(s) => format!(
                        "systemd services {} within {}s",
                        s.systemd_services.join(", "),
                        s.timeout_seconds
                    ),
                },
                name: c.name().to_string(),
                runs_on_clean_install: c.should_run(ServicingType::CleanInstall),
                runs_on_ab_update: c.should_run(ServicingType::AbUpdate),
            })
            .collect();

        let mut unsupported = Vec::new();
        if !storage.raid.is_empty() {
            unsupported.push("storage.raid: software RAID is not executed by this build".into());
        }
        if storage.encryption.is_some() {
            unsupported.push("storage.encryption: LUKS is not executed by this build".into());
        }
        if !storage.verity.is_empty() {
            unsupported.push("storage.verity: dm-verity is not executed by this build".into());
        }

        Plan {
            image: hc.image.as_ref().map(|i| PlanImage {
                url: i.url.clone(),
                sha384: i.sha384.to_string(),
            }),
            disks,
            ab_volume_pairs,
            filesystems,
            os: os_steps,
            hooks,
            health_checks,
            datastore: hc.trident.datastore_path().display().to_string(),
            unsupported,
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.image {
            Some(i) => writeln!(f, "image: {} (metadata sha384: {})", i.url, i.sha384)?,
            None => writeln!(f, "image: none")?,
        }
        for d in &self.disks {
            writeln!(f, "disk '{}' ({}): new GPT", d.id, d.device)?;
            for p in &d.partitions {
                writeln!(
                    f,
                    "  partition {:<16} {:<14} {:>8}  label {}",
                    p.id, p.partition_type, p.size, p.label
                )?;
            }
            for a in &d.adopted {
                writeln!(f, "  adopt     {a}")?;
            }
        }
        for p in &self.ab_volume_pairs {
            writeln!(
                f,
                "A/B pair '{}': A = '{}', B = '{}'",
                p.id, p.volume_a, p.volume_b
            )?;
        }
        for fs in &self.filesystems {
            writeln!(
                f,
                "filesystem {:<18} {}",
                fs.mount_point.as_deref().unwrap_or("(not mounted)"),
                fs.action
            )?;
        }
        for s in &self.os {
            writeln!(f, "os: {s}")?;
        }
        for h in self.hooks.iter() {
            writeln!(f, "hook {} '{}'{}", h.phase, h.name, runs(h))?;
        }
        for h in &self.health_checks {
            writeln!(f, "health check '{}': {}{}", h.name, h.phase, runs(h))?;
        }
        writeln!(f, "datastore: {}", self.datastore)?;
        for u in &self.unsupported {
            writeln!(f, "unsupported: {u}")?;
        }
        Ok(())
    }
}

fn runs(h: &PlanHook) -> &'static str {
    match (h.runs_on_clean_install, h.runs_on_ab_update) {
        (true, true) => " (install, A/B update)",
        (true, false) => " (install)",
        (false, true) => " (A/B update)",
        (false, false) => " (runtime update only)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_of_ab_layout() {
        let hc = crate::config::parse(
            r#"
image: { url: "file:///x.cosi", sha384: ignored }
storage:
  disks:
  - id: os
    device: /dev/sda
    partitions:
    - { id: esp, type: esp, size: 64M }
    - { id: root-a, type: root, size: 1G }
    - { id: root-b, type: root, size: 1G }
    - { id: data, type: linux-generic, size: grow }
  abUpdate:
    volumePairs: [{ id: root, volumeAId: root-a, volumeBId: root-b }]
  filesystems:
  - { deviceId: esp, mountPoint: /boot/efi }
  - { deviceId: root, mountPoint: / }
  - { deviceId: data, source: new, type: ext4, mountPoint: /var/lib/trident }
"#,
        )
        .unwrap();
        let plan = Plan::from_config(&hc);
        assert_eq!(plan.disks[0].partitions.len(), 4);
        assert_eq!(plan.ab_volume_pairs[0].volume_b, "root-b");
        let text = plan.to_string();
        assert!(
            text.contains("A/B pair 'root': A = 'root-a', B = 'root-b'"),
            "{text}"
        );
        assert!(
            text.contains("stream from the image into A/B pair 'root'"),
            "{text}"
        );
        assert!(text.contains("create ext4 on 'data'"), "{text}");
        assert!(
            text.contains("datastore: /var/lib/trident/datastore.sqlite"),
            "{text}"
        );
    }
}
