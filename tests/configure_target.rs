//! `configure_target` end to end on an image-like root built from the fixtures: a clean
//! install, a second run (idempotent), and an A/B update carrying state forward.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use trident::config::{parse, ServicingType};
use trident::configure::{configure_target, ConfigureContext, FstabEntry};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/configure");

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// An image root: the fixture /etc, an fstab, hosts, the fixture units.
fn image_root(root: &Path) {
    copy_dir(&Path::new(FIXTURES).join("etc"), &root.join("etc"));
    copy_dir(
        &Path::new(FIXTURES).join("units"),
        &root.join("usr/lib/systemd/system"),
    );
    fs::write(
        root.join("etc/fstab"),
        "# image fstab\nUUID=image-root / ext4 defaults 0 1\ntmpfs /tmp tmpfs defaults 0 0\n",
    )
    .unwrap();
    fs::write(root.join("etc/hosts"), "127.0.0.1\tlocalhost\n").unwrap();
    fs::write(root.join("etc/hostname"), "image\n").unwrap();
    fs::write(root.join("etc/machine-id"), "").unwrap();
}

const HC: &str = r#"
os:
  hostname: edge-01
  users:
    - name: ops
      sshMode: key-only
      sshPublicKeys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO ops@laptop"]
      secondaryGroups: [sudo]
  additionalFiles:
    - destination: /etc/app/app.conf
      content: "level=debug\n"
      permissions: "0640"
    - destination: /etc/app/banner
      source: banner.txt
  services:
    enable: [web]
  modules:
    - name: br_netfilter
      loadMode: always
  netplan:
    version: 2
    ethernets:
      eth0:
        dhcp4: true
"#;

fn fstab() -> Vec<FstabEntry> {
    vec![
        FstabEntry {
            spec: "UUID=aaaa".into(),
            mount_point: "/".into(),
            fs_type: "ext4".into(),
            options: "defaults".into(),
            dump: 0,
            pass: 1,
        },
        FstabEntry {
            spec: "PARTUUID=bbbb".into(),
            mount_point: "/boot/efi".into(),
            fs_type: "vfat".into(),
            options: "umask=0077".into(),
            dump: 0,
            pass: 2,
        },
    ]
}

fn read(root: &Path, p: &str) -> String {
    fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap()
}

/// Every regular file and symlink under `root` with its content (or link target).
fn snapshot(root: &Path) -> Vec<(PathBuf, String, u32)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, String, u32)>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().to_path_buf();
            if m.file_type().is_symlink() {
                out.push((rel, fs::read_link(&p).unwrap().display().to_string(), 0));
            } else if m.is_dir() {
                walk(base, &p, out);
            } else {
                out.push((rel, fs::read_to_string(&p).unwrap(), m.mode() & 0o7777));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn clean_install_then_idempotent() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let cfg = t.path().join("cfg");
    fs::create_dir_all(&cfg).unwrap();
    fs::write(cfg.join("banner.txt"), "Welcome\n").unwrap();
    image_root(&root);
    let hc = parse(HC).unwrap();
    let ctx = ConfigureContext {
        target_root: root.clone(),
        servicing_type: ServicingType::CleanInstall,
        fstab: fstab(),
        carry_forward_from: None,
        config_dir: Some(cfg.clone()),
    };
    configure_target(&hc, &ctx).unwrap();

    assert_eq!(
        read(&root, "/etc/fstab"),
        "# image fstab\ntmpfs /tmp tmpfs defaults 0 0\n\n# Mount points managed by Trident\n\
         UUID=aaaa\t/\text4\tdefaults\t0\t1\nPARTUUID=bbbb\t/boot/efi\tvfat\tumask=0077\t0\t2\n"
    );
    assert_eq!(read(&root, "/etc/hostname"), "edge-01\n");
    assert_eq!(
        read(&root, "/etc/hosts"),
        "127.0.0.1\tlocalhost\n127.0.1.1\tedge-01\n"
    );
    assert_eq!(read(&root, "/etc/machine-id"), "uninitialized\n");
    assert!(read(&root, "/etc/passwd").ends_with("ops:x:1001:1001::/home/ops:/bin/sh\n"));
    assert!(read(&root, "/etc/group").contains("\nsudo:x:27:builder,ops\n"));
    assert!(read(&root, "/etc/shadow")
        .lines()
        .any(|l| l.starts_with("ops:!:")));
    assert_eq!(
        read(&root, "/home/ops/.ssh/authorized_keys"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO ops@laptop\n"
    );
    assert_eq!(
        read(&root, "/etc/ssh/sshd_config.d/global_user.conf"),
        "# Written by Trident from os.users[].sshMode.\n"
    );
    assert_eq!(read(&root, "/etc/app/app.conf"), "level=debug\n");
    assert_eq!(
        fs::metadata(root.join("etc/app/app.conf")).unwrap().mode() & 0o777,
        0o640
    );
    assert_eq!(read(&root, "/etc/app/banner"), "Welcome\n");
    assert_eq!(
        fs::read_link(root.join("etc/systemd/system/multi-user.target.wants/web.service")).unwrap(),
        Path::new("/usr/lib/systemd/system/web.service")
    );
    assert!(read(&root, "/etc/modules-load.d/trident.conf").ends_with("\nbr_netfilter\n"));
    assert_eq!(
        read(&root, "/etc/netplan/99-trident.yaml"),
        "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n"
    );

    let first = snapshot(&root);
    configure_target(&hc, &ctx).unwrap();
    assert_eq!(snapshot(&root), first, "a second run changes nothing");
}

#[test]
fn ab_update_carries_identity_forward() {
    let t = tempfile::tempdir().unwrap();
    let (running, target) = (t.path().join("running"), t.path().join("target"));
    image_root(&running);
    image_root(&target);
    fs::write(running.join("etc/hostname"), "field-host-9\n").unwrap();
    fs::write(
        running.join("etc/machine-id"),
        "5f0e2c1a9b8d4e7f8a6b5c4d3e2f1a0b\n",
    )
    .unwrap();
    fs::write(running.join("etc/ssh/ssh_host_ed25519_key"), "HOSTKEY\n").unwrap();
    fs::write(
        running.join("etc/ssh/ssh_host_ed25519_key.pub"),
        "ssh-ed25519 PUB\n",
    )
    .unwrap();
    let hc = parse("os:\n  services:\n    disable: [web]\n").unwrap();
    let ctx = ConfigureContext {
        target_root: target.clone(),
        servicing_type: ServicingType::AbUpdate,
        fstab: fstab(),
        carry_forward_from: Some(running.clone()),
        config_dir: None,
    };
    configure_target(&hc, &ctx).unwrap();
    assert_eq!(read(&target, "/etc/hostname"), "field-host-9\n");
    assert_eq!(
        read(&target, "/etc/hosts"),
        "127.0.0.1\tlocalhost\n127.0.1.1\tfield-host-9\n"
    );
    assert_eq!(
        read(&target, "/etc/machine-id"),
        "5f0e2c1a9b8d4e7f8a6b5c4d3e2f1a0b\n"
    );
    assert_eq!(read(&target, "/etc/ssh/ssh_host_ed25519_key"), "HOSTKEY\n");
    assert_eq!(
        read(&target, "/etc/ssh/ssh_host_ed25519_key.pub"),
        "ssh-ed25519 PUB\n"
    );
    // No users in the configuration: account files untouched.
    assert_eq!(read(&target, "/etc/passwd"), read(&running, "/etc/passwd"));
}
