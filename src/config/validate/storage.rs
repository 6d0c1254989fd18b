//! Storage rules outside the device graph: partition sizes and labels, filesystems and
//! mount points, the ESP and root filesystems, verity, encryption and device names.

use std::collections::HashMap;
use std::path::{Component, Path};

use super::graph::{self, Graph, Kind};
use super::Ctx;
use crate::config::{
    FileSystem, FileSystemSource, FileSystemType, HostConfiguration, PartitionSize, Pcr, Storage,
};

pub(super) fn check<'a>(hc: &'a HostConfiguration, cx: &mut Ctx) -> Graph<'a> {
    let st = &hc.storage;
    let graph = graph::build_nodes(st, cx);
    let entries = graph::referrer_entries(st, cx);
    graph::check_references(&graph, &entries, cx);
    graph::check_unique_fields(st, cx);
    graph::check_mount_types(st, &graph, cx);
    check_partitions(st, cx);
    check_filesystems(st, cx);
    check_required_mounts(hc, cx);
    check_verity(hc, &graph, cx);
    check_encryption(st, cx);
    check_names(st, cx);
    if st.raw_cosi {
        cx.unsupported(
            "raw-cosi-storage",
            "storage.rawCosi",
            "taking the storage layout from the COSI image is not supported; declare disks, \
             partitions and filesystems instead",
        );
    }
    graph
}

fn check_partitions(st: &Storage, cx: &mut Ctx) {
    for (i, d) in st.disks.iter().enumerate() {
        if !d.device.is_absolute() {
            cx.invalid(
                "path-not-absolute",
                format!("storage.disks[{i}].device"),
                format!(
                    "disk device '{}' must be an absolute path such as /dev/disk/by-path/...",
                    d.device.display()
                ),
            );
        }
        let grows: Vec<usize> = d
            .partitions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.size == PartitionSize::Grow)
            .map(|(j, _)| j)
            .collect();
        if grows.len() > 1 {
            cx.unsupported(
                "multiple-grow-partitions",
                format!("storage.disks[{i}].partitions[{}].size", grows[1]),
                format!(
                    "disk '{}' has {} partitions of size grow; at most one partition per disk \
                     may grow",
                    d.id,
                    grows.len()
                ),
            );
        } else if let Some(&j) = grows.first() {
            if j + 1 != d.partitions.len() {
                cx.unsupported(
                    "grow-partition-not-last",
                    format!("storage.disks[{i}].partitions[{j}].size"),
                    format!(
                        "partition '{}' has size grow but is not the last partition of disk \
                         '{}'; move it to the end",
                        d.partitions[j].id, d.id
                    ),
                );
            }
        }
        for (j, p) in d.partitions.iter().enumerate() {
            let base = format!("storage.disks[{i}].partitions[{j}]");
            if let PartitionSize::Fixed(b) = p.size {
                if b.bytes() == 0 || b.bytes() % 4096 != 0 {
                    cx.invalid(
                        "invalid-partition-size",
                        format!("{base}.size"),
                        format!(
                            "partition '{}' has size {} ({} bytes); fixed sizes must be \
                             non-zero multiples of 4096 bytes",
                            p.id,
                            b,
                            b.bytes()
                        ),
                    );
                }
            }
            if let Some(label) = &p.label {
                if label.encode_utf16().count() > 36 {
                    cx.invalid(
                        "partition-label-too-long",
                        format!("{base}.label"),
                        format!(
                            "partition label '{label}' is longer than the 36 characters GPT allows"
                        ),
                    );
                }
            }
        }
        for (j, p) in d.adopted_partitions.iter().enumerate() {
            if p.match_label.is_none() && p.match_uuid.is_none() {
                cx.invalid(
                    "adopted-partition-without-match",
                    format!("storage.disks[{i}].adoptedPartitions[{j}]"),
                    format!(
                        "adopted partition '{}' needs matchLabel or matchUuid to find it",
                        p.id
                    ),
                );
            }
        }
    }
}

fn check_filesystems(st: &Storage, cx: &mut Ctx) {
    let mut mounts: HashMap<&Path, usize> = HashMap::new();
    for (i, fs) in st.filesystems.iter().enumerate() {
        let base = format!("storage.filesystems[{i}]");
        match (fs.source, fs.fs_type) {
            (FileSystemSource::Image, Some(t)) => cx.invalid(
                "filesystem-type-with-image-source",
                format!("{base}.type"),
                format!(
                    "type {} cannot be set on an image filesystem; the image decides its type",
                    t.as_str()
                ),
            ),
            (FileSystemSource::New, Some(t)) if !t.valid_for_new() => cx.invalid(
                "invalid-filesystem-type",
                format!("{base}.type"),
                format!(
                    "a new filesystem cannot be of type {}; use ext4, xfs, vfat, ntfs or tmpfs",
                    t.as_str()
                ),
            ),
            (FileSystemSource::Adopted, Some(t)) if !t.valid_for_adopted() => cx.invalid(
                "invalid-filesystem-type",
                format!("{base}.type"),
                format!("an adopted filesystem cannot be of type {}", t.as_str()),
            ),
            _ => {}
        }
        if fs.override_esp_mount == crate::config::OverrideEspMount::Override
            && fs.mount_point.is_none()
        {
            cx.invalid(
                "esp-override-without-mount-point",
                format!("{base}.overrideEspMount"),
                "overrideEspMount: override needs a mountPoint",
            );
        }
        let Some(mp) = &fs.mount_point else {
            if fs.effective_type() == Some(FileSystemType::Tmpfs) {
                cx.invalid(
                    "missing-mount-point",
                    base,
                    "a tmpfs filesystem needs a mountPoint",
                );
            }
            continue;
        };
        let path = format!("{base}.mountPoint");
        if !mp.path.is_absolute()
            || mp
                .path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            cx.invalid(
                "mount-point-not-absolute",
                &path,
                format!(
                    "mount point '{}' must be an absolute path without . or .. components",
                    mp.path.display()
                ),
            );
            continue;
        }
        if mp.options.trim().is_empty() {
            cx.invalid(
                "empty-mount-options",
                format!("{path}.options"),
                "mount options must not be empty; use 'defaults'",
            );
        }
        if let Some(first) = mounts.get(mp.path.as_path()) {
            cx.invalid(
                "duplicate-mount-point",
                &path,
                format!(
                    "mount point {} is already used by storage.filesystems[{first}]",
                    mp.path.display()
                ),
            );
        } else {
            mounts.insert(&mp.path, i);
        }
    }
}

/// ESP and root: required when storage is declared (root also when other sections need a
/// target OS, as in Trident), /var/tmp writable.
fn check_required_mounts(hc: &HostConfiguration, cx: &mut Ctx) {
    let st = &hc.storage;
    let declared = st.is_declared();
    if declared {
        let esps: Vec<usize> = st
            .filesystems
            .iter()
            .enumerate()
            .filter(|(_, fs)| fs.is_esp())
            .map(|(i, _)| i)
            .collect();
        match esps.as_slice() {
            [] => cx.invalid(
                "missing-esp",
                "storage.filesystems",
                "no ESP filesystem: mount an esp partition (or a raid1 of esp partitions) at \
                 /boot/efi, or mark one filesystem with overrideEspMount: override",
            ),
            [_] => {}
            [_, second, ..] => cx.invalid(
                "multiple-esp",
                format!("storage.filesystems[{second}].mountPoint"),
                format!(
                    "{} filesystems claim to be the ESP; exactly one may",
                    esps.len()
                ),
            ),
        }
    }
    let needs_root = declared
        || hc.trident != Default::default()
        || hc.scripts != Default::default()
        || hc.os != Default::default();
    match st.root_filesystem() {
        None if needs_root => cx.invalid(
            "missing-root-filesystem",
            "storage.filesystems",
            "no filesystem is mounted at /; the target OS needs a root filesystem",
        ),
        Some(root) if root.source == FileSystemSource::New => {
            let i = st
                .filesystems
                .iter()
                .position(|f| std::ptr::eq(f, root))
                .unwrap_or(0);
            cx.invalid(
                "root-not-from-image",
                format!("storage.filesystems[{i}].source"),
                "the root filesystem must come from the image (source: image) or an adopted \
                 partition; a new, empty filesystem at / has no OS",
            );
        }
        _ => {}
    }
    if declared {
        if let Some(fs) = st.filesystem_holding("/var/tmp") {
            if fs.is_read_only() {
                let i = st
                    .filesystems
                    .iter()
                    .position(|f| std::ptr::eq(f, fs))
                    .unwrap_or(0);
                cx.invalid(
                    "read-only-var-tmp",
                    format!("storage.filesystems[{i}].mountPoint"),
                    format!(
                        "/var/tmp would be on the read-only mount {}; mount a writable \
                         filesystem at /var or /var/tmp",
                        fs.mount_path()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    ),
                );
            }
        }
    }
}

fn check_verity(hc: &HostConfiguration, graph: &Graph, cx: &mut Ctx) {
    let st = &hc.storage;
    if st.verity.is_empty() {
        return;
    }
    if st.verity.len() > 1 {
        cx.unsupported(
            "multiple-verity-devices",
            "storage.verity[1]",
            "at most one verity device (for / or /usr) is supported",
        );
        return;
    }
    let v = &st.verity[0];
    let on_verity: Vec<(usize, &FileSystem)> = st
        .filesystems
        .iter()
        .enumerate()
        .filter(|(_, fs)| fs.device_id.as_deref() == Some(v.id.as_str()))
        .collect();
    let Some(&(i, fs)) = on_verity.first() else {
        cx.unsupported(
            "verity-without-filesystem",
            "storage.verity[0]",
            format!("no filesystem uses verity device '{}'", v.id),
        );
        return;
    };
    let base = format!("storage.filesystems[{i}]");
    if fs.source != FileSystemSource::Image {
        cx.invalid(
            "verity-filesystem-not-from-image",
            format!("{base}.source"),
            "a verity-protected filesystem must come from the image",
        );
    }
    let Some(mp) = &fs.mount_point else {
        cx.invalid(
            "verity-filesystem-without-mount-point",
            base,
            format!(
                "the filesystem on verity device '{}' needs a mountPoint",
                v.id
            ),
        );
        return;
    };
    if !mp.has_option("ro") {
        cx.invalid(
            "verity-filesystem-not-read-only",
            format!("{base}.mountPoint"),
            format!(
                "the verity filesystem at {} must be mounted read-only (add 'ro' to its options)",
                mp.path.display()
            ),
        );
    }
    let expected_name = if mp.path == Path::new("/") {
        check_root_verity(hc, graph, cx);
        "root"
    } else if mp.path == Path::new("/usr") {
        "usr"
    } else {
        cx.unsupported(
            "unsupported-verity-mount-point",
            format!("{base}.mountPoint"),
            format!(
                "verity is supported for / and /usr only, not {}",
                mp.path.display()
            ),
        );
        return;
    };
    if v.name != expected_name {
        cx.invalid(
            "invalid-verity-name",
            "storage.verity[0].name",
            format!(
                "the verity device for {} must be named '{expected_name}', not '{}'",
                mp.path.display(),
                v.name
            ),
        );
    }
}

const TRIDENT_OVERLAY_PATH: &str = "/var/lib/trident-overlay";

fn check_root_verity(hc: &HostConfiguration, graph: &Graph, cx: &mut Ctx) {
    let st = &hc.storage;
    if st.filesystem_at("/boot").is_none() {
        cx.invalid(
            "missing-boot-filesystem",
            "storage.filesystems",
            "root verity needs a separate /boot filesystem (kernel command line and boot \
             configuration cannot live on the read-only root)",
        );
    }
    let overlay = st
        .filesystems
        .iter()
        .enumerate()
        .filter(|(_, fs)| {
            fs.mount_path()
                .is_some_and(|mp| Path::new(TRIDENT_OVERLAY_PATH).starts_with(mp))
        })
        .max_by_key(|(_, fs)| fs.mount_path().map(|p| p.components().count()));
    let Some((i, fs)) = overlay else { return };
    let path = format!("storage.filesystems[{i}]");
    if fs.is_root() {
        cx.invalid(
            "missing-trident-overlay-filesystem",
            "storage.filesystems",
            format!(
                "root verity needs a writable filesystem at {TRIDENT_OVERLAY_PATH} for the /etc \
                 overlay"
            ),
        );
        return;
    }
    if fs.is_read_only() {
        cx.invalid(
            "read-only-trident-overlay",
            format!("{path}.mountPoint"),
            format!("{TRIDENT_OVERLAY_PATH} must be on a writable filesystem"),
        );
    }
    if let Some(dev) = &fs.device_id {
        if graph.kind(dev) == Some(Kind::VerityDevice) {
            cx.invalid(
                "trident-overlay-on-verity",
                format!("{path}.deviceId"),
                format!("{TRIDENT_OVERLAY_PATH} must not be on a verity device"),
            );
        } else if st.ab_update.is_some() && !graph.is_ab(dev) {
            cx.invalid(
                "trident-overlay-not-ab",
                format!("{path}.deviceId"),
                format!(
                    "with A/B updates, {TRIDENT_OVERLAY_PATH} must be on an A/B volume pair so \
                     that each OS instance has its own /etc overlay"
                ),
            );
        }
    } else {
        cx.invalid(
            "trident-overlay-not-on-block-device",
            path,
            format!("{TRIDENT_OVERLAY_PATH} must be on a block device"),
        );
    }
}

fn check_encryption(st: &Storage, cx: &mut Ctx) {
    let Some(enc) = &st.encryption else { return };
    if let Some(url) = &enc.recovery_key_url {
        match crate::config::url_scheme(url) {
            Some("file") => {}
            other => cx.unsupported(
                "unsupported-recovery-key-url",
                "storage.encryption.recoveryKeyUrl",
                format!(
                    "recovery key URL '{url}' has scheme {}; only file:// is supported",
                    other.unwrap_or("(none)")
                ),
            ),
        }
    }
    if enc.volumes.is_empty() {
        cx.invalid(
            "encryption-without-volumes",
            "storage.encryption.volumes",
            "encryption is configured but lists no volumes",
        );
    }
    if enc.pcrs.is_empty() {
        cx.invalid(
            "encryption-without-pcrs",
            "storage.encryption.pcrs",
            "encryption needs at least one PCR to seal to (e.g. secure-boot-policy)",
        );
    }
    for (i, pcr) in enc.pcrs.iter().enumerate() {
        if ![Pcr(4), Pcr(7), Pcr(11)].contains(pcr) {
            cx.unsupported(
                "unsupported-pcr",
                format!("storage.encryption.pcrs[{i}]"),
                format!(
                    "PCR {} ({pcr}) is not supported; use boot-loader-code (4), \
                     secure-boot-policy (7) or kernel-boot (11)",
                    pcr.number()
                ),
            );
        }
    }
}

/// Names that become device nodes (`/dev/md/<name>`, `/dev/mapper/<name>`).
fn check_names(st: &Storage, cx: &mut Ctx) {
    let bad = |s: &str| {
        s.is_empty()
            || s == "."
            || s == ".."
            || s.len() > 127
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
    };
    let report = |cx: &mut Ctx, name: &str, path: String| {
        if bad(name) {
            cx.invalid(
                "invalid-device-name",
                path,
                format!(
                    "device name '{name}' must be 1-127 characters of letters, digits, '-', \
                     '_', '.', '+'"
                ),
            );
        }
    };
    for (i, r) in st.raid.software.iter().enumerate() {
        report(cx, &r.name, format!("storage.raid.software[{i}].name"));
    }
    if let Some(enc) = &st.encryption {
        for (i, v) in enc.volumes.iter().enumerate() {
            report(
                cx,
                &v.device_name,
                format!("storage.encryption.volumes[{i}].deviceName"),
            );
        }
    }
    for (i, v) in st.verity.iter().enumerate() {
        report(cx, &v.name, format!("storage.verity[{i}].name"));
    }
}
