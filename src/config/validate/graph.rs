//! The block-device graph: every device by id, every reference to it, and the rules on
//! references (existence, allowed kinds, counts, single consumer, homogeneity, allowed
//! partition types) and on unique field values. Follows Trident's storage rules table.

use std::collections::{HashMap, HashSet};

use super::Ctx;
use crate::config::{
    FileSystem, FileSystemSource, FileSystemType, Partition, PartitionSize, PartitionType,
    RaidLevel, Storage,
};

/// Kinds of block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Disk,
    Partition,
    AdoptedPartition,
    RaidArray,
    AbVolume,
    EncryptedVolume,
    VerityDevice,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Disk => "disk",
            Kind::Partition => "partition",
            Kind::AdoptedPartition => "adopted partition",
            Kind::RaidArray => "RAID array",
            Kind::AbVolume => "A/B volume pair",
            Kind::EncryptedVolume => "encrypted volume",
            Kind::VerityDevice => "verity device",
        }
    }
}

/// Kinds of entry that refer to block devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Referrer {
    RaidArray,
    AbVolume,
    EncryptedVolume,
    VerityDevice,
    Swap,
    FsNew,
    FsImage,
    FsEsp,
    FsAdopted,
}

impl Referrer {
    fn as_str(self) -> &'static str {
        match self {
            Referrer::RaidArray => "a RAID array",
            Referrer::AbVolume => "an A/B volume pair",
            Referrer::EncryptedVolume => "an encrypted volume",
            Referrer::VerityDevice => "a verity device",
            Referrer::Swap => "a swap area",
            Referrer::FsNew => "a new filesystem",
            Referrer::FsImage => "an image filesystem",
            Referrer::FsEsp => "the ESP filesystem",
            Referrer::FsAdopted => "an adopted filesystem",
        }
    }

    fn allows(self, kind: Kind) -> bool {
        use Kind::*;
        match self {
            Referrer::RaidArray => kind == Partition,
            Referrer::AbVolume => matches!(kind, Partition | RaidArray | EncryptedVolume),
            Referrer::EncryptedVolume => matches!(kind, Partition | RaidArray),
            Referrer::VerityDevice => matches!(kind, Partition | RaidArray | AbVolume),
            Referrer::Swap => matches!(kind, Partition | EncryptedVolume),
            Referrer::FsNew => matches!(kind, Partition | RaidArray | AbVolume | EncryptedVolume),
            Referrer::FsImage => matches!(
                kind,
                Partition | RaidArray | AbVolume | EncryptedVolume | VerityDevice
            ),
            Referrer::FsEsp => matches!(kind, Partition | AdoptedPartition | RaidArray),
            Referrer::FsAdopted => kind == AdoptedPartition,
        }
    }

    /// Partition types allowed under this referrer; `None` = any.
    fn allowed_partition_type(self, t: PartitionType) -> Result<(), &'static str> {
        use PartitionType::*;
        match self {
            Referrer::EncryptedVolume
                if matches!(t, Esp | Root | RootVerity | UsrVerity | Home) =>
            {
                Err("any type except esp, root, root-verity, usr-verity and home")
            }
            Referrer::Swap if t != Swap => Err("swap"),
            Referrer::FsNew | Referrer::FsAdopted if t == Esp => Err("any type except esp"),
            Referrer::FsEsp if t != Esp => Err("esp"),
            _ => Ok(()),
        }
    }

    fn homogeneous_kinds(self) -> bool {
        matches!(
            self,
            Referrer::RaidArray
                | Referrer::AbVolume
                | Referrer::EncryptedVolume
                | Referrer::VerityDevice
                | Referrer::Swap
        )
    }
}

struct Node<'a> {
    kind: Kind,
    /// YAML path of the `id` field.
    path: String,
    partition: Option<&'a Partition>,
    raid_level: Option<RaidLevel>,
    /// Referenced ids, for resolving down to partitions.
    children: Vec<&'a str>,
    /// For verity devices: only the data device carries the filesystem.
    data_child: Option<&'a str>,
}

/// The block-device graph, kept for the rules outside storage (datastore, extensions).
pub(super) struct Graph<'a> {
    nodes: HashMap<&'a str, Node<'a>>,
}

impl<'a> Graph<'a> {
    pub(super) fn kind(&self, id: &str) -> Option<Kind> {
        self.nodes.get(id).map(|n| n.kind)
    }

    /// Whether a filesystem on `id` gets a separate copy per OS instance (A/B volume, or
    /// a verity device over A/B volumes).
    pub(super) fn is_ab(&self, id: &str) -> bool {
        match self.nodes.get(id) {
            Some(n) if n.kind == Kind::AbVolume => true,
            Some(n) if n.kind == Kind::VerityDevice => n.data_child.is_some_and(|c| self.is_ab(c)),
            _ => false,
        }
    }

    /// The partitions under `id` (through RAID, A/B, encryption; verity: data side).
    fn leaves(&self, id: &str) -> Vec<&'a Partition> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        self.collect_leaves(id, &mut out, &mut seen);
        out
    }

    fn collect_leaves(&self, id: &str, out: &mut Vec<&'a Partition>, seen: &mut HashSet<String>) {
        if !seen.insert(id.to_owned()) {
            return;
        }
        let Some(n) = self.nodes.get(id) else { return };
        if let Some(p) = n.partition {
            out.push(p);
            return;
        }
        if let Some(d) = n.data_child {
            self.collect_leaves(d, out, seen);
            return;
        }
        for c in &n.children {
            self.collect_leaves(c, out, seen);
        }
    }
}

pub(super) struct Entry<'a> {
    referrer: Referrer,
    /// YAML path of the referring entry (`storage.raid.software[0]`).
    path: String,
    /// Human name of the entry for messages.
    name: String,
    refs: Vec<(&'a str, String)>,
}

pub(super) fn build_nodes<'a>(st: &'a Storage, cx: &mut Ctx) -> Graph<'a> {
    let mut nodes: HashMap<&'a str, Node<'a>> = HashMap::new();
    let mut add = |cx: &mut Ctx, id: &'a str, node: Node<'a>| {
        if id.trim().is_empty() {
            cx.invalid(
                "empty-block-device-id",
                &node.path,
                format!("the id of this {} is empty", node.kind.as_str()),
            );
            return;
        }
        if let Some(first) = nodes.get(id) {
            cx.invalid(
                "duplicate-block-device-id",
                &node.path,
                format!(
                    "block-device id '{id}' of this {} is already used by the {} at {}; ids \
                     must be unique across disks, partitions, RAID arrays, A/B pairs, \
                     encrypted volumes and verity devices",
                    node.kind.as_str(),
                    first.kind.as_str(),
                    first.path
                ),
            );
            return;
        }
        nodes.insert(id, node);
    };
    let node = |kind, path: String| Node {
        kind,
        path,
        partition: None,
        raid_level: None,
        children: Vec::new(),
        data_child: None,
    };
    for (i, d) in st.disks.iter().enumerate() {
        add(
            cx,
            &d.id,
            node(Kind::Disk, format!("storage.disks[{i}].id")),
        );
        for (j, p) in d.partitions.iter().enumerate() {
            let mut n = node(
                Kind::Partition,
                format!("storage.disks[{i}].partitions[{j}].id"),
            );
            n.partition = Some(p);
            add(cx, &p.id, n);
        }
        for (j, p) in d.adopted_partitions.iter().enumerate() {
            add(
                cx,
                &p.id,
                node(
                    Kind::AdoptedPartition,
                    format!("storage.disks[{i}].adoptedPartitions[{j}].id"),
                ),
            );
        }
    }
    for (i, r) in st.raid.software.iter().enumerate() {
        let mut n = node(Kind::RaidArray, format!("storage.raid.software[{i}].id"));
        n.raid_level = Some(r.level);
        n.children = r.devices.iter().map(String::as_str).collect();
        add(cx, &r.id, n);
    }
    for (i, p) in st.ab_volume_pairs().iter().enumerate() {
        let mut n = node(
            Kind::AbVolume,
            format!("storage.abUpdate.volumePairs[{i}].id"),
        );
        n.children = vec![&p.volume_a_id, &p.volume_b_id];
        add(cx, &p.id, n);
    }
    if let Some(enc) = &st.encryption {
        for (i, v) in enc.volumes.iter().enumerate() {
            let mut n = node(
                Kind::EncryptedVolume,
                format!("storage.encryption.volumes[{i}].id"),
            );
            n.children = vec![&v.device_id];
            add(cx, &v.id, n);
        }
    }
    for (i, v) in st.verity.iter().enumerate() {
        let mut n = node(Kind::VerityDevice, format!("storage.verity[{i}].id"));
        n.children = vec![&v.data_device_id, &v.hash_device_id];
        n.data_child = Some(&v.data_device_id);
        add(cx, &v.id, n);
    }
    Graph { nodes }
}

fn filesystem_referrer(fs: &FileSystem) -> Referrer {
    if fs.is_esp() {
        return Referrer::FsEsp;
    }
    match fs.source {
        FileSystemSource::Image => Referrer::FsImage,
        FileSystemSource::New => Referrer::FsNew,
        FileSystemSource::Adopted => Referrer::FsAdopted,
    }
}

pub(super) fn referrer_entries<'a>(st: &'a Storage, cx: &mut Ctx) -> Vec<Entry<'a>> {
    let mut out = Vec::new();
    for (i, r) in st.raid.software.iter().enumerate() {
        out.push(Entry {
            referrer: Referrer::RaidArray,
            path: format!("storage.raid.software[{i}].devices"),
            name: format!("RAID array '{}'", r.id),
            refs: r
                .devices
                .iter()
                .enumerate()
                .map(|(j, d)| {
                    (
                        d.as_str(),
                        format!("storage.raid.software[{i}].devices[{j}]"),
                    )
                })
                .collect(),
        });
    }
    for (i, p) in st.ab_volume_pairs().iter().enumerate() {
        let base = format!("storage.abUpdate.volumePairs[{i}]");
        out.push(Entry {
            referrer: Referrer::AbVolume,
            path: base.clone(),
            name: format!("A/B volume pair '{}'", p.id),
            refs: vec![
                (p.volume_a_id.as_str(), format!("{base}.volumeAId")),
                (p.volume_b_id.as_str(), format!("{base}.volumeBId")),
            ],
        });
    }
    if let Some(enc) = &st.encryption {
        for (i, v) in enc.volumes.iter().enumerate() {
            let base = format!("storage.encryption.volumes[{i}]");
            out.push(Entry {
                referrer: Referrer::EncryptedVolume,
                path: base.clone(),
                name: format!("encrypted volume '{}'", v.id),
                refs: vec![(v.device_id.as_str(), format!("{base}.deviceId"))],
            });
        }
    }
    for (i, v) in st.verity.iter().enumerate() {
        let base = format!("storage.verity[{i}]");
        out.push(Entry {
            referrer: Referrer::VerityDevice,
            path: base.clone(),
            name: format!("verity device '{}'", v.id),
            refs: vec![
                (v.data_device_id.as_str(), format!("{base}.dataDeviceId")),
                (v.hash_device_id.as_str(), format!("{base}.hashDeviceId")),
            ],
        });
    }
    for (i, s) in st.swap.iter().enumerate() {
        out.push(Entry {
            referrer: Referrer::Swap,
            path: format!("storage.swap[{i}]"),
            name: format!("swap area on '{}'", s.device_id),
            refs: vec![(s.device_id.as_str(), format!("storage.swap[{i}].deviceId"))],
        });
    }
    for (i, fs) in st.filesystems.iter().enumerate() {
        let base = format!("storage.filesystems[{i}]");
        let referrer = filesystem_referrer(fs);
        let is_tmpfs = fs.effective_type() == Some(FileSystemType::Tmpfs);
        match (&fs.device_id, is_tmpfs) {
            (Some(_), true) => cx.invalid(
                "tmpfs-with-device-id",
                format!("{base}.deviceId"),
                "a tmpfs filesystem lives in memory and must not have a deviceId",
            ),
            (None, false) => cx.invalid(
                "missing-device-id",
                base.clone(),
                format!(
                    "{} needs a deviceId naming the block device it lives on",
                    fs.describe()
                ),
            ),
            _ => {}
        }
        out.push(Entry {
            referrer,
            path: base.clone(),
            name: fs.describe(),
            refs: fs
                .device_id
                .iter()
                .map(|d| (d.as_str(), format!("{base}.deviceId")))
                .collect(),
        });
    }
    out
}

pub(super) fn check_references(graph: &Graph, entries: &[Entry], cx: &mut Ctx) {
    let mut used_by: HashMap<&str, (String, String)> = HashMap::new();
    for e in entries {
        let (min, max) = match e.referrer {
            Referrer::RaidArray => (2, usize::MAX),
            Referrer::AbVolume | Referrer::VerityDevice => (2, 2),
            Referrer::FsNew => (0, 1),
            _ => (1, 1),
        };
        let n = e.refs.len();
        if e.referrer == Referrer::RaidArray && n < min {
            cx.invalid(
                "invalid-reference-count",
                &e.path,
                format!("{} needs at least {min} member devices, got {n}", e.name),
            );
        }
        debug_assert!(n <= max);

        let mut kinds = Vec::new();
        for (target, path) in &e.refs {
            if target.trim().is_empty() {
                cx.invalid(
                    "empty-block-device-id",
                    path,
                    format!("{} refers to an empty block-device id", e.name),
                );
                continue;
            }
            let Some(node) = graph.nodes.get(target) else {
                cx.invalid(
                    "unknown-block-device-id",
                    path,
                    format!(
                        "{} refers to '{target}', which is not a declared block device",
                        e.name
                    ),
                );
                continue;
            };
            if !e.referrer.allows(node.kind) {
                cx.invalid(
                    "invalid-reference-kind",
                    path,
                    format!(
                        "{} cannot be placed on '{target}', a {}: {} cannot use a {}",
                        e.name,
                        node.kind.as_str(),
                        e.referrer.as_str(),
                        node.kind.as_str()
                    ),
                );
                continue;
            }
            if let Some((first_path, first_name)) = used_by.get(target) {
                cx.invalid(
                    "block-device-used-twice",
                    path,
                    format!(
                        "'{target}' is already used by {first_name} at {first_path}; a block \
                         device can have only one consumer"
                    ),
                );
            } else {
                used_by.insert(target, (path.clone(), e.name.clone()));
            }
            kinds.push(node.kind);
            if e.referrer == Referrer::FsEsp && node.kind == Kind::RaidArray {
                if let Some(level) = node.raid_level.filter(|l| *l != RaidLevel::Raid1) {
                    cx.invalid(
                        "invalid-esp-raid-level",
                        path,
                        format!(
                            "the ESP can only be mirrored (raid1), but '{target}' is {}",
                            level.as_str()
                        ),
                    );
                }
            }
            if e.referrer == Referrer::VerityDevice || e.referrer == Referrer::EncryptedVolume {
                continue;
            }
            for leaf in graph.leaves(target) {
                if let Err(allowed) = e.referrer.allowed_partition_type(leaf.partition_type) {
                    cx.invalid(
                        "invalid-partition-type",
                        path,
                        format!(
                            "{} cannot use partition '{}' of type {}; allowed: {allowed}",
                            e.name, leaf.id, leaf.partition_type
                        ),
                    );
                }
            }
        }
        if e.referrer.homogeneous_kinds() && kinds.windows(2).any(|w| w[0] != w[1]) {
            cx.invalid(
                "heterogeneous-references",
                &e.path,
                format!(
                    "{} must refer to devices of one kind, got {}",
                    e.name,
                    kinds
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            );
        }
        let valid_targets: Vec<&str> = e
            .refs
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| {
                graph
                    .nodes
                    .get(t)
                    .is_some_and(|n| e.referrer.allows(n.kind))
            })
            .collect();
        match e.referrer {
            Referrer::VerityDevice => check_verity_types(graph, e, cx),
            Referrer::EncryptedVolume => {
                for t in &valid_targets {
                    // A RAID array counts by its first member's type (as Trident does).
                    if let Some(leaf) = graph.leaves(t).first() {
                        if let Err(allowed) = e.referrer.allowed_partition_type(leaf.partition_type)
                        {
                            cx.invalid(
                                "invalid-partition-type",
                                &e.refs[0].1,
                                format!(
                                    "{} cannot encrypt partition '{}' of type {}; allowed: \
                                     {allowed}",
                                    e.name, leaf.id, leaf.partition_type
                                ),
                            );
                        }
                    }
                }
            }
            _ => {}
        }
        if e.referrer == Referrer::VerityDevice {
            continue;
        }
        let leaves: Vec<&Partition> = valid_targets.iter().flat_map(|t| graph.leaves(t)).collect();
        // Single-target referrers inherit homogeneity from the device they use, which is
        // checked on its own entry; checking them again would repeat the same error.
        let mut types: Vec<PartitionType> = leaves.iter().map(|p| p.partition_type).collect();
        types.dedup();
        if e.refs.len() > 1 && types.len() > 1 {
            cx.invalid(
                "mixed-partition-types",
                &e.path,
                format!(
                    "{} spans partitions of different types ({}); they must all have one type",
                    e.name,
                    leaves
                        .iter()
                        .map(|p| format!("{}: {}", p.id, p.partition_type))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if matches!(e.referrer, Referrer::RaidArray | Referrer::AbVolume) {
            let sizes: HashSet<String> = leaves.iter().map(|p| p.size.to_string()).collect();
            if sizes.len() > 1 {
                cx.invalid(
                    "mismatched-partition-sizes",
                    &e.path,
                    format!(
                        "{} spans partitions of different sizes ({}); they must all have one \
                         size",
                        e.name,
                        leaves
                            .iter()
                            .map(|p| format!("{}: {}", p.id, p.size))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            if e.referrer == Referrer::AbVolume {
                if let Some(p) = leaves.iter().find(|p| p.size == PartitionSize::Grow) {
                    cx.unsupported(
                        "ab-volume-grow-partition",
                        &e.path,
                        format!(
                            "{} uses partition '{}' with size grow; A/B volumes need fixed, \
                             equal sizes so that both OS instances fit the same image",
                            e.name, p.id
                        ),
                    );
                }
            }
        }
    }
}

fn check_verity_types(graph: &Graph, e: &Entry, cx: &mut Ctx) {
    let [(data, data_path), (hash, hash_path)] = [&e.refs[0], &e.refs[1]];
    let data_leaves = graph.leaves(data);
    let hash_leaves = graph.leaves(hash);
    for d in &data_leaves {
        let Some(expected_hash) = d.partition_type.verity_hash_type() else {
            cx.invalid(
                "invalid-partition-type",
                data_path,
                format!(
                    "{} cannot use data partition '{}' of type {}; allowed: root, usr, \
                     linux-generic",
                    e.name, d.id, d.partition_type
                ),
            );
            continue;
        };
        for h in &hash_leaves {
            if h.partition_type != expected_hash {
                cx.invalid(
                    "invalid-partition-type",
                    hash_path,
                    format!(
                        "{}: hash partition '{}' has type {}, but data of type {} needs a hash \
                         partition of type {expected_hash}",
                        e.name, h.id, h.partition_type, d.partition_type
                    ),
                );
            }
        }
    }
}

pub(super) fn check_unique_fields(st: &Storage, cx: &mut Ctx) {
    let mut seen = HashMap::new();
    for (i, d) in st.disks.iter().enumerate() {
        let path = format!("storage.disks[{i}].device");
        unique(
            cx,
            &mut seen,
            "disk device",
            d.device.display().to_string(),
            path,
            "duplicate-disk-device",
        );
    }
    for (i, d) in st.disks.iter().enumerate() {
        for (j, p) in d.partitions.iter().enumerate() {
            if let Some(u) = p.uuid {
                let path = format!("storage.disks[{i}].partitions[{j}].uuid");
                unique(
                    cx,
                    &mut seen,
                    "partition UUID",
                    u.to_string(),
                    path,
                    "duplicate-partition-uuid",
                );
            }
        }
        for (j, p) in d.adopted_partitions.iter().enumerate() {
            let base = format!("storage.disks[{i}].adoptedPartitions[{j}]");
            if let Some(l) = &p.match_label {
                unique(
                    cx,
                    &mut seen,
                    "adopted partition label",
                    l.clone(),
                    format!("{base}.matchLabel"),
                    "duplicate-adopted-match",
                );
            }
            if let Some(u) = p.match_uuid {
                unique(
                    cx,
                    &mut seen,
                    "adopted partition UUID",
                    u.to_string(),
                    format!("{base}.matchUuid"),
                    "duplicate-adopted-match",
                );
            }
        }
    }
    for (i, r) in st.raid.software.iter().enumerate() {
        unique(
            cx,
            &mut seen,
            "RAID array name",
            r.name.clone(),
            format!("storage.raid.software[{i}].name"),
            "duplicate-raid-name",
        );
    }
    if let Some(enc) = &st.encryption {
        for (i, v) in enc.volumes.iter().enumerate() {
            unique(
                cx,
                &mut seen,
                "encrypted volume deviceName",
                v.device_name.clone(),
                format!("storage.encryption.volumes[{i}].deviceName"),
                "duplicate-device-name",
            );
        }
    }
    for (i, v) in st.verity.iter().enumerate() {
        unique(
            cx,
            &mut seen,
            "verity device name",
            v.name.clone(),
            format!("storage.verity[{i}].name"),
            "duplicate-device-name",
        );
    }
}

fn unique(
    cx: &mut Ctx,
    seen: &mut HashMap<(&'static str, String), String>,
    what: &'static str,
    value: String,
    path: String,
    code: &str,
) {
    if let Some(first) = seen.get(&(what, value.clone())) {
        cx.invalid(
            code,
            &path,
            format!("{what} '{value}' is already used at {first}; it must be unique"),
        );
    } else {
        seen.insert((what, value), path);
    }
}

/// Mount paths the Discoverable Partitions Specification expects for a partition type;
/// `None` = any path, `Some(&[])` = never mounted.
fn expected_mount_paths(t: PartitionType) -> Option<&'static [&'static str]> {
    use PartitionType::*;
    Some(match t {
        Esp => &["/boot", "/efi", "/boot/efi"],
        Root => &["/"],
        Home => &["/home"],
        Var => &["/var"],
        Usr => &["/usr"],
        Tmp => &["/var/tmp"],
        Srv => &["/srv"],
        Xbootldr => &["/boot"],
        Swap | RootVerity | UsrVerity => &[],
        LinuxGeneric | Guid(_) => return None,
    })
}

/// Warn when a filesystem is mounted somewhere its partition type does not belong (a
/// warning, as in Trident: systemd's auto-mounting by type is the only thing at stake).
pub(super) fn check_mount_types(st: &Storage, graph: &Graph, cx: &mut Ctx) {
    for (i, fs) in st.filesystems.iter().enumerate() {
        let (Some(dev), Some(mp)) = (&fs.device_id, fs.mount_path()) else {
            continue;
        };
        for leaf in graph.leaves(dev) {
            let Some(expected) = expected_mount_paths(leaf.partition_type) else {
                continue;
            };
            if !expected.iter().any(|e| mp == std::path::Path::new(e)) {
                cx.warn(
                    "unexpected-mount-point",
                    format!("storage.filesystems[{i}].mountPoint"),
                    format!(
                        "partition '{}' of type {} is mounted at {}; that type belongs at {}",
                        leaf.id,
                        leaf.partition_type,
                        mp.display(),
                        if expected.is_empty() {
                            "no mount point".to_owned()
                        } else {
                            expected.join(" or ")
                        }
                    ),
                );
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
storage:
  disks:
  - id: d
    device: /dev/sda
    partitions:
    - {id: a1, type: root, size: 1G}
    - {id: a2, type: root, size: 1G}
    - {id: b1, type: root, size: 1G}
    - {id: b2, type: root, size: 1G}
    - {id: ha, type: root-verity, size: 64M}
    - {id: hb, type: root-verity, size: 64M}
  raid:
    software:
    - {id: ra, name: ra, level: raid1, devices: [a1, a2]}
    - {id: rb, name: rb, level: raid1, devices: [b1, b2]}
  abUpdate:
    volumePairs:
    - {id: data, volumeAId: ra, volumeBId: rb}
    - {id: hash, volumeAId: ha, volumeBId: hb}
  verity:
  - {id: root, name: root, dataDeviceId: data, hashDeviceId: hash}
";

    #[test]
    fn leaves_follow_raid_ab_and_verity_data_only() {
        let hc = crate::config::parse(DOC).unwrap();
        let mut cx = Ctx::default();
        let g = build_nodes(&hc.storage, &mut cx);
        assert!(cx.errors.is_empty());
        let ids = |id: &str| -> Vec<String> { g.leaves(id).iter().map(|p| p.id.clone()).collect() };
        assert_eq!(ids("ra"), ["a1", "a2"]);
        assert_eq!(ids("data"), ["a1", "a2", "b1", "b2"]);
        // Verity resolves to its data side only: the hash partitions have another type.
        assert_eq!(ids("root"), ["a1", "a2", "b1", "b2"]);
        assert!(g.is_ab("data") && g.is_ab("root") && !g.is_ab("ra") && !g.is_ab("a1"));
        assert_eq!(g.kind("hash"), Some(Kind::AbVolume));
        assert_eq!(g.kind("nope"), None);
    }

    #[test]
    fn referrer_table_matches_trident() {
        use Kind::*;
        assert!(Referrer::FsImage.allows(VerityDevice));
        assert!(!Referrer::FsNew.allows(VerityDevice));
        assert!(Referrer::FsEsp.allows(AdoptedPartition));
        assert!(!Referrer::FsEsp.allows(AbVolume));
        assert!(!Referrer::RaidArray.allows(RaidArray));
        assert!(Referrer::Swap.allows(EncryptedVolume));
        assert!(!Referrer::Swap.allows(RaidArray));
        assert!(Referrer::AbVolume.allows(EncryptedVolume));
        assert!(!Referrer::VerityDevice.allows(EncryptedVolume));
        assert!(Referrer::EncryptedVolume
            .allowed_partition_type(PartitionType::Home)
            .is_err());
        assert!(Referrer::EncryptedVolume
            .allowed_partition_type(PartitionType::Srv)
            .is_ok());
        assert!(expected_mount_paths(PartitionType::LinuxGeneric).is_none());
    }
}
