//! Valid layouts at the edges of the rules: each must be accepted without errors, so that
//! the negative corpus is not passing by rejecting everything.

use trident::config;

const H: &str = "ec9a9aa23f02b30f4ec6a168b9bc24733b652eeab4f8abc243630666a5e34cea1667c34313a13ec1564ac4871b80112f";

fn accept(name: &str, yaml: &str) -> Vec<config::Warning> {
    let yaml = format!("{yaml}image:\n  url: https://example.com/os.cosi\n  sha384: {H}\n");
    match config::parse_and_validate(&yaml) {
        Ok((hc, w)) => {
            let back = config::parse(&hc.to_yaml().unwrap()).unwrap();
            assert_eq!(hc, back, "{name}: round trip");
            w
        }
        Err(e) => panic!("{name} rejected:\n{e}\n---\n{yaml}"),
    }
}

#[test]
fn usr_verity() {
    accept(
        "usr verity",
        "\
storage:
  disks:
  - id: os
    device: /dev/sda
    partitions:
    - {id: esp, type: esp, size: 64M}
    - {id: root, type: root, size: 4G}
    - {id: usr-data, type: usr, size: 2G}
    - {id: usr-hash, type: usr-verity, size: 128M}
  verity:
  - {id: usr, name: usr, dataDeviceId: usr-data, hashDeviceId: usr-hash, corruptionOption: panic}
  filesystems:
  - {deviceId: esp, mountPoint: /boot/efi}
  - {deviceId: root, mountPoint: /}
  - {deviceId: usr, mountPoint: {path: /usr, options: ro}}
",
    );
}

#[test]
fn encrypted_swap_and_encrypted_raid() {
    accept(
        "encryption",
        "\
storage:
  disks:
  - id: a
    device: /dev/sda
    partitions:
    - {id: esp, type: esp, size: 64M}
    - {id: root, type: root, size: 4G}
    - {id: swap-raw, type: swap, size: 1G}
    - {id: d1, type: srv, size: 1G}
  - id: b
    device: /dev/sdb
    partitions:
    - {id: d2, type: srv, size: 1G}
  raid:
    software:
    - {id: data, name: data, level: raid1, devices: [d1, d2]}
  encryption:
    pcrs: [7]
    volumes:
    - {id: swap-enc, deviceName: swap, deviceId: swap-raw}
    - {id: srv, deviceName: srv, deviceId: data}
  swap: [swap-enc]
  filesystems:
  - {deviceId: esp, mountPoint: /boot/efi}
  - {deviceId: root, mountPoint: /}
  - {deviceId: srv, source: new, type: xfs, mountPoint: /srv}
",
    );
}

#[test]
fn adopted_partitions_and_esp_override() {
    accept(
        "adopted",
        "\
storage:
  disks:
  - id: os
    device: /dev/nvme0n1
    partitions:
    - {id: root, type: root, size: 8G}
    - {id: rest, size: grow}
    adoptedPartitions:
    - {id: old-esp, matchLabel: EFI}
    - {id: old-data, matchUuid: 2d7a3b1c-1f0e-4a2b-9c3d-4e5f6a7b8c9d}
  filesystems:
  - {deviceId: old-esp, mountPoint: /efi, overrideEspMount: override}
  - {deviceId: root, mountPoint: /}
  - {deviceId: old-data, source: adopted, type: ext4, mountPoint: /data}
  - {deviceId: rest, source: new}
  - {source: new, type: tmpfs, mountPoint: /var/tmp}
",
    );
}

#[test]
fn blocked_esp_mount_and_custom_datastore() {
    accept(
        "blocked esp",
        "\
trident:
  datastorePath: /var/lib/agent/ds.sqlite
storage:
  disks:
  - id: os
    device: /dev/sda
    partitions:
    - {id: esp, type: esp, size: 64M}
    - {id: root, type: root, size: 4G}
    - {id: var, type: var, size: 1G}
    - {id: fake, size: 64M}
  filesystems:
  - {deviceId: esp, mountPoint: /efi, overrideEspMount: override}
  - {deviceId: fake, source: new, type: vfat, mountPoint: /boot/efi, overrideEspMount: block}
  - {deviceId: root, mountPoint: {path: /, options: ro}}
  - {deviceId: var, source: new, mountPoint: /var}
",
    );
}

#[test]
fn image_only_and_trident_disabled() {
    // No storage, no OS settings: nothing requires a root filesystem.
    let w = accept("image only", "");
    assert!(w.is_empty());
    // With storage, a datastore on a read-only root is fine when the agent is disabled.
    accept(
        "trident disabled",
        "\
trident:
  disable: true
  datastorePath: /not/checked.db
storage:
  disks:
  - id: os
    device: /dev/sda
    partitions:
    - {id: esp, type: esp, size: 64M}
    - {id: root, type: root, size: 4G}
    - {id: var, type: var, size: 1G}
  filesystems:
  - {deviceId: esp, mountPoint: /boot/efi}
  - {deviceId: root, mountPoint: {path: /, options: ro}}
  - {deviceId: var, source: new, mountPoint: /var}
",
    );
}
