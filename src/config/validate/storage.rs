//! Storage rules: the block-device graph (ids, references, sharing, homogeneity, allowed
//! kinds and partition types), partition sizes, filesystems and mount points, the ESP, the
//! root filesystem, verity and encryption. Follows Trident's storage rules table.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path};

use super::Ctx;
use crate::config::{
    FileSystem, FileSystemSource, FileSystemType, HostConfiguration, Partition, PartitionSize,
    PartitionType, Pcr, RaidLevel, Storage,
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

struct Entry<'a> {
    referrer: Referrer,
    /// YAML path of the referring entry (`storage.raid.software[0]`).
    path: String,
    /// Human name of the entry for messages.
    name: String,
    refs: Vec<(&'a str, String)>,
}

pub(super) fn check<'a>(hc: &'a HostConfiguration, cx: &mut Ctx) -> Graph<'a> {
    let st = &hc.storage;
    let graph = build_nodes(st, cx);
    let entries = referrer_entries(st, cx);
    check_references(&graph, &entries, cx);
    check_unique_fields(st, cx);
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

fn build_nodes<'a>(st: &'a Storage, cx: &mut Ctx) -> Graph<'a> {
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

fn referrer_entries<'a>(st: &'a Storage, cx: &mut Ctx) -> Vec<Entry<'a>> {
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

fn check_references(graph: &Graph, entries: &[Entry], cx: &mut Ctx) {
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

fn check_unique_fields(st: &Storage, cx: &mut Ctx) {
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
