//! A Host Configuration using every section and shorthand parses, validates, serializes
//! and parses back to an equal value; shorthands expand as Trident expands them; warnings
//! are reported for accepted-but-suspicious input.

use std::path::Path;

use trident::config::{
    self, ByteCount, Check, FileSystemSource, FileSystemType, HostConfiguration, ImageSha384,
    LoadMode, MountPoint, PartitionSize, PartitionType, Pcr, RaidLevel, ServicingType, SshMode,
    UefiFallbackMode,
};

const H: &str = "ec9a9aa23f02b30f4ec6a168b9bc24733b652eeab4f8abc243630666a5e34cea1667c34313a13ec1564ac4871b80112f";

fn kitchen_sink() -> String {
    format!(
        r#"
trident:
  datastorePath: /var/lib/trident/state/datastore.sqlite
  phonehome: https://orchestrator.example/phonehome
  logstream: https://orchestrator.example/logs
storage:
  disks:
  - id: disk1
    device: /dev/disk/by-path/pci-0000:00:1f.2-ata-2
    partitionTableType: gpt
    partitions:
    - {{id: esp1, type: esp, size: 64M}}
    - {{id: boot-a, type: xbootldr, size: 512M}}
    - {{id: boot-b, type: xbootldr, size: 512M}}
    - {{id: root-a1, type: root, size: 4G, label: ROOT-A, uuid: 6a9a1b4e-7f2c-4c1e-9d63-3f3f0a8b2c11}}
    - {{id: root-b1, type: root, size: 4G}}
    - {{id: swap1, type: swap, size: 1G}}
    - {{id: trident, size: 128M}}
    - {{id: srv-enc, type: srv, size: 1G}}
    - {{id: custom, type: 0fc63daf-8483-4772-8e79-3d69d8477de4, size: 1048576}}
    - {{id: data1, size: grow}}
    adoptedPartitions:
    - {{id: old-home, matchLabel: home}}
  - id: disk2
    device: /dev/disk/by-path/pci-0000:00:1f.2-ata-3
    partitions:
    - {{id: esp2, type: esp, size: 64M}}
    - {{id: root-a2, type: root, size: 4G}}
    - {{id: root-b2, type: root, size: 4G}}
    - {{id: data2, size: grow}}
  raid:
    software:
    - {{id: root-a, name: root-a, level: raid1, devices: [root-a1, root-a2], metadataVersion: '1.2'}}
    - {{id: root-b, name: root-b, level: raid1, devices: [root-b1, root-b2]}}
    - {{id: data, name: data, level: raid0, devices: [data1, data2]}}
    syncTimeout: 180
  encryption:
    recoveryKeyUrl: file:///recovery.key
    pcrs: [secure-boot-policy, 11]
    clearTpmOnInstall: false
    volumes:
    - {{id: srv, deviceName: srv, deviceId: srv-enc}}
  abUpdate:
    volumePairs:
    - {{id: root, volumeAId: root-a, volumeBId: root-b}}
    - {{id: boot, volumeAId: boot-a, volumeBId: boot-b}}
  filesystems:
  - deviceId: esp1
    mountPoint: {{path: /boot/efi, options: umask=0077}}
  - deviceId: esp2
  - deviceId: boot
    mountPoint: /boot
  - deviceId: root
    mountPoint: /
  - deviceId: trident
    source: new
    mountPoint: /var/lib/trident
  - deviceId: srv
    source: new
    type: xfs
    mountPoint: /srv
  - deviceId: data
    source: new
    type: ext4
    mountPoint: {{path: /data, options: 'defaults,noatime'}}
  - deviceId: custom
    source: new
    type: vfat
  - deviceId: old-home
    source: adopted
    mountPoint: /home
  - source: new
    type: tmpfs
    mountPoint: /run/scratch
  swap:
  - swap1
scripts:
  preServicing:
  - name: pre
    runOn: [all]
    content: echo pre
  postProvision:
  - name: provision
    runOn: [clean-install, ab-update]
    interpreter: /bin/bash
    path: /usr/local/bin/provision.sh
    arguments: [--target, $TARGET_ROOT]
  postConfigure:
  - name: configure
    runOn: [runtime-update]
    content: /var/config-script.sh
    environmentVariables:
      SAMPLE_VARIABLE: value
os:
  hostname: node-01.example
  netplan:
    version: 2
    ethernets:
      eth0:
        dhcp4: true
  selinux:
    mode: enforcing
  users:
  - name: ops
    uid: 1500
    homeDirectory: /home/ops
    password: {{type: locked}}
    primaryGroup: ops
    secondaryGroups: [wheel]
    sshMode: key-only
    sshPublicKeys: [ssh-ed25519 AAAA ops@example]
    startupCommand: /bin/bash
  additionalFiles:
  - destination: /etc/motd
    content: hello
    permissions: '0644'
  - destination: /etc/app.conf
    source: /srv/files/app.conf
  modules:
  - name: br_netfilter
    loadMode: always
    options: {{debug: '1'}}
  services:
    enable: [sshd]
    disable: [cups]
  kernelCommandLine:
    extraCommandLine: [console=ttyS0]
  sysexts:
  - url: https://example.com/tools.raw
    sha384: {H}
  confexts:
  - url: oci://registry.example/confs:1
    sha384: {H2}
    path: /usr/lib/confexts/confs.raw
  uefiFallback: optimistic
managementOs:
  netplan:
    version: 2
  users:
  - name: installer
internalParams:
  someFlag: true
  nested: {{a: [1, 2]}}
image:
  url: https://images.example/os.cosi
  sha384: {H}
health:
  checks:
  - name: script-check
    runOn: [ab-update]
    content: systemctl is-system-running
  - name: networkd
    systemdServices: [systemd-networkd]
    timeoutSeconds: 30
    runOn: [all]
"#,
        H2 = H.replace('e', "f")
    )
}

#[test]
fn kitchen_sink_round_trips_and_validates() {
    let yaml = kitchen_sink();
    let (hc, warnings) =
        config::parse_and_validate(&yaml).unwrap_or_else(|e| panic!("rejected:\n{e}"));
    // Only the expected warning: SELinux together with extension images.
    let codes: Vec<&str> = warnings.iter().map(|w| w.code.as_str()).collect();
    assert_eq!(codes, ["selinux-with-extensions"]);
    assert!(warnings[0].line.is_some());

    let out = hc.to_yaml().unwrap();
    let back = config::parse(&out).unwrap();
    assert_eq!(hc, back, "round trip changed the value:\n{out}");
    config::validate(&back).unwrap();
}

#[test]
fn kitchen_sink_fields_are_typed_as_trident_defines_them() {
    let hc = config::parse(&kitchen_sink()).unwrap();
    let st = &hc.storage;
    assert_eq!(
        hc.trident.datastore_path(),
        Path::new("/var/lib/trident/state/datastore.sqlite")
    );
    let custom = st.partition("custom").unwrap();
    // A GUID stays a GUID even when it is the GUID of a named type.
    assert_ne!(custom.partition_type, PartitionType::LinuxGeneric);
    assert_eq!(
        custom.partition_type.custom_guid().unwrap().to_string(),
        "0fc63daf-8483-4772-8e79-3d69d8477de4"
    );
    assert_eq!(custom.size, PartitionSize::Fixed(ByteCount(1 << 20)));
    assert_eq!(st.partition("data1").unwrap().size, PartitionSize::Grow);
    assert_eq!(st.partition("root-a1").unwrap().gpt_label(), "ROOT-A");
    assert_eq!(st.partition("root-b1").unwrap().gpt_label(), "root-b1");
    assert_eq!(st.raid_array("root-a").unwrap().level, RaidLevel::Raid1);
    assert_eq!(st.raid.sync_timeout, Some(180));
    assert_eq!(st.encryption.as_ref().unwrap().pcrs, vec![Pcr(7), Pcr(11)]);
    assert_eq!(st.ab_volume_pair("boot").unwrap().volume_b_id, "boot-b");
    assert_eq!(
        st.encrypted_volume("srv").unwrap().device_path(),
        Path::new("/dev/mapper/srv")
    );
    // Filesystem shorthands and defaults.
    let boot = st.filesystem_at("/boot").unwrap();
    assert_eq!(boot.mount_point, Some(MountPoint::new("/boot")));
    assert_eq!(boot.source, FileSystemSource::Image);
    let trident = st.filesystem_at("/var/lib/trident").unwrap();
    assert_eq!(trident.effective_type(), Some(FileSystemType::Ext4));
    let home = st.filesystem_at("/home").unwrap();
    assert_eq!(home.effective_type(), Some(FileSystemType::Auto));
    assert_eq!(
        st.esp_filesystem().unwrap().device_id.as_deref(),
        Some("esp1")
    );
    assert_eq!(
        st.filesystem_holding(hc.trident.datastore_path())
            .unwrap()
            .device_id
            .as_deref(),
        Some("trident")
    );
    assert_eq!(st.swap[0].device_id, "swap1");
    // OS.
    let ops = &hc.os.users[0];
    assert_eq!(ops.ssh_mode, SshMode::KeyOnly);
    assert_eq!(ops.uid, Some(1500));
    assert_eq!(hc.os.modules[0].load_mode, LoadMode::Always);
    assert_eq!(hc.os.uefi_fallback, Some(UefiFallbackMode::Optimistic));
    assert_eq!(hc.os.additional_files[0].mode(), Some(0o644));
    assert!(hc.internal_flag("someFlag"));
    assert!(!hc.internal_flag("nested"));
    assert!(matches!(
        hc.image.as_ref().unwrap().sha384,
        ImageSha384::Checksum(_)
    ));
    // Scripts and checks.
    assert!(hc.scripts.post_configure[0].should_run(ServicingType::RuntimeUpdate));
    assert!(!hc.scripts.post_configure[0].should_run(ServicingType::AbUpdate));
    assert!(matches!(hc.health.checks[1], Check::SystemdCheck(ref c) if c.timeout_seconds == 30));
    assert!(!hc.health.checks[0].should_run(ServicingType::CleanInstall));
}

#[test]
fn default_configuration_round_trips() {
    let hc = HostConfiguration::default();
    let out = hc.to_yaml().unwrap();
    assert_eq!(out.trim(), "{}");
    assert_eq!(serde_yaml::from_str::<HostConfiguration>(&out).unwrap(), hc);
}

fn minimal(extra: &str) -> String {
    format!(
        "storage:\n  disks:\n  - id: os\n    device: /dev/sda\n    partitions:\n    - {{id: esp, type: esp, size: 64M}}\n    - {{id: root, type: root, size: 4G}}\n    - {{id: var, type: var, size: 1G}}\n  filesystems:\n  - {{deviceId: esp, mountPoint: /boot/efi}}\n  - {{deviceId: root, mountPoint: /}}\n{extra}"
    )
}

#[test]
fn warnings_for_accepted_but_suspicious_input() {
    let cases = [
        (
            "image:\n  url: file:///os.cosi\n  sha384: ignored\n",
            "image-checksum-ignored",
            "image.sha384",
        ),
        (
            "os:\n  users:\n  - name: alice\n    sshPublicKeys: [ssh-ed25519 AAAA]\n",
            "ssh-keys-with-ssh-blocked",
            "os.users[0].sshMode",
        ),
        (
            "os:\n  users:\n  - name: alice\n    sshMode: key-only\n",
            "ssh-key-only-without-keys",
            "os.users[0].sshPublicKeys",
        ),
        (
            "  - {deviceId: var, source: new, mountPoint: /srv}\n",
            "unexpected-mount-point",
            "storage.filesystems[2].mountPoint",
        ),
        (
            "trident:\n  enableGrpc: true\n",
            "grpc-not-available",
            "trident.enableGrpc",
        ),
        (
            "health:\n  checks:\n  - {name: c, runOn: [runtime-update], content: 'true'}\n",
            "health-check-never-runs",
            "health.checks[0].runOn",
        ),
    ];
    for (extra, code, path) in cases {
        let (_, warnings) = config::parse_and_validate(&minimal(extra))
            .unwrap_or_else(|e| panic!("{code}: rejected: {e}"));
        let w = warnings
            .iter()
            .find(|w| w.code == code)
            .unwrap_or_else(|| panic!("no {code} warning in {warnings:?}"));
        assert_eq!(w.path, path);
        assert!(w.line.is_some(), "{w}");
    }
    let (_, none) = config::parse_and_validate(&minimal("")).unwrap();
    assert!(none.is_empty(), "{none:?}");
}

#[test]
fn old_uefi_fallback_spellings_are_aliases() {
    for (old, new) in [
        ("rollback", UefiFallbackMode::Conservative),
        ("rollforward", UefiFallbackMode::Optimistic),
        ("none", UefiFallbackMode::Disabled),
        ("conservative", UefiFallbackMode::Conservative),
    ] {
        let yaml = minimal(&format!("os:\n  uefiFallback: {old}\n"));
        let (hc, _) = config::parse_and_validate(&yaml).unwrap();
        assert_eq!(hc.os.uefi_fallback, Some(new));
    }
}

#[test]
fn unquoted_octal_permissions_are_kept_as_written() {
    let yaml = minimal(
        "os:\n  additionalFiles:\n  - destination: /etc/x\n    content: x\n    permissions: 0755\n",
    );
    let (hc, _) = config::parse_and_validate(&yaml).unwrap();
    assert_eq!(
        hc.os.additional_files[0].permissions.as_deref(),
        Some("0755")
    );
    assert_eq!(hc.os.additional_files[0].mode(), Some(0o755));
}

#[test]
fn load_and_validate_reports_unreadable_files() {
    let errs = config::load_and_validate(Path::new("/nonexistent/hc.yaml")).unwrap_err();
    assert_eq!(errs.0[0].code, "unreadable-host-configuration");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hc.yaml");
    std::fs::write(&p, minimal("os:\n  hostname: -bad\n")).unwrap();
    let errs = config::load_and_validate(&p).unwrap_err();
    assert_eq!(errs.0[0].code, "invalid-hostname");
    assert_eq!(errs.0[0].device.as_deref(), Some(p.to_str().unwrap()));
    assert_eq!(errs.0[0].line, Some(13));
}
