//! Privileged storage tests on loop devices over sparse files: real partition tables,
//! BLKPG partition nodes, mkfs, mounts, adoption, the disk-in-use check.
//!
//! Needs root and util-linux (sfdisk, blockdev), e2fsprogs. Skips with a message
//! otherwise. Every loop device and mount is an RAII guard, so they are cleaned up
//! even when an assertion fails.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use trident::cmd::{have_program, Cmd};
use trident::error::find_trident_error;
use trident::storage::blkpg::{self, ensure_partition_nodes, partition_path};
use trident::storage::device::{device_size, logical_sector_size, DevNum};
use trident::storage::gpt::{
    plan_layout, read_gpt, read_gpt_table, write_gpt, AdoptKey, AdoptMatch, DiskPlan, PartSize,
    PartitionPlan, PlacedPartition,
};
use trident::storage::loopdev::{LoopDevice, Options};
use trident::storage::mkfs::{fs_uuid, mkfs, FsType, MkfsOptions, Mount};
use trident::storage::mounts::{check_disk_not_in_use, find_root_device};
use trident::storage::parttypes::PartitionType;
use trident::storage::sfdisk;

const MIB: u64 = 1 << 20;

fn privileged() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: needs root");
        return false;
    }
    for tool in ["sfdisk", "blockdev", "mkfs.ext4"] {
        if !have_program(tool) {
            eprintln!(
                "skipping: {tool} not installed (Debian packages fdisk, util-linux, e2fsprogs)"
            );
            return false;
        }
    }
    true
}

/// A sparse file of `size` bytes in a fresh temp directory.
fn sparse(size: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    (dir, path)
}

fn plan_part(id: &str, t: PartitionType, size: PartSize) -> PartitionPlan {
    PartitionPlan {
        id: id.into(),
        type_guid: t.guid(),
        size,
        label: None,
        uuid: None,
    }
}

fn ab_plan() -> DiskPlan {
    DiskPlan {
        partitions: vec![
            plan_part("esp", PartitionType::Esp, PartSize::Fixed(64 * MIB)),
            PartitionPlan {
                uuid: Some(uuid::Uuid::from_u128(
                    0x0a0a_0000_0000_4000_8000_0000_0000_00a1,
                )),
                ..plan_part("root-a", PartitionType::Root, PartSize::Fixed(300 * MIB))
            },
            plan_part("root-b", PartitionType::Root, PartSize::Fixed(300 * MIB)),
            plan_part("var", PartitionType::Var, PartSize::Grow),
        ],
        adopted: vec![],
    }
}

fn getsize64(dev: &Path) -> u64 {
    Cmd::new("blockdev")
        .arg("--getsize64")
        .arg(dev)
        .output_string()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// util-linux must read exactly the placed partitions back.
fn assert_sfdisk_agrees(disk: &Path, placed: &[PlacedPartition]) {
    let t = sfdisk::dump(disk).unwrap();
    assert_eq!(t.label, "gpt");
    let lba = t.sectorsize.unwrap();
    assert_eq!(t.partitions.len(), placed.len());
    for p in placed {
        let s = t
            .partitions
            .iter()
            .find(|s| s.number() == Some(p.number))
            .unwrap_or_else(|| panic!("sfdisk lacks partition {}", p.number));
        assert_eq!(s.start * lba, p.offset(), "{} start", p.id);
        assert_eq!(s.size * lba, p.size(), "{} size", p.id);
        assert_eq!(
            s.type_.to_lowercase(),
            p.type_guid.to_string(),
            "{} type",
            p.id
        );
        assert_eq!(
            s.uuid.as_deref().unwrap().to_lowercase(),
            p.uuid.to_string(),
            "{} uuid",
            p.id
        );
        assert_eq!(s.name.as_deref().unwrap_or(""), p.label, "{} label", p.id);
        assert_eq!((s.start * lba) % MIB, 0, "{} 1 MiB aligned", p.id);
    }
}

/// After detaching loop `number` (backed by `img`), its partition node must be gone —
/// unless another user re-attached that loop number meanwhile (tests run in parallel).
fn assert_detached(number: u32, img: &Path, node: &Path) {
    let backing = PathBuf::from(format!("/sys/block/loop{number}/loop/backing_file"));
    for _ in 0..50 {
        if !backing.exists() && !node.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    match std::fs::read_to_string(&backing) {
        Ok(b) => assert_ne!(
            b.trim(),
            img.display().to_string(),
            "loop{number} still attached"
        ),
        Err(_) => assert!(
            !node.exists(),
            "partition node {} left behind",
            node.display()
        ),
    }
}

fn in_use_error(disk: &Path, allowed: &[PathBuf]) -> String {
    let err = check_disk_not_in_use(disk, allowed).unwrap_err();
    let te = find_trident_error(&err).unwrap_or_else(|| panic!("untyped error: {err:#}"));
    assert_eq!(te.code, "disk-in-use");
    assert_eq!(te.category.as_str(), "execution-environment");
    assert_eq!(te.device.as_deref(), Some(disk.to_str().unwrap()));
    eprintln!("refused as expected: {te}");
    te.message
}

#[test]
fn full_layout_mkfs_adopt_and_in_use() {
    if !privileged() {
        return;
    }
    let (dir, img) = sparse(1024 * MIB);
    let lo = LoopDevice::attach(&img, Options::default()).unwrap();
    let disk = lo.path().to_path_buf();

    // Plan and write the A/B layout.
    let size = device_size(&disk).unwrap();
    let lba = logical_sector_size(&disk).unwrap();
    assert_eq!(size, 1024 * MIB);
    check_disk_not_in_use(&disk, &[]).unwrap();
    let placed = plan_layout(size, lba, &ab_plan(), None).unwrap();
    write_gpt(&disk, &placed).unwrap();
    assert_sfdisk_agrees(&disk, &placed);
    let var = placed.iter().find(|p| p.id == "var").unwrap();
    assert_eq!(var.offset(), 665 * MIB);
    assert_eq!(var.offset() + var.size(), 1023 * MIB);

    // Partition nodes from the table, with the right sizes.
    let table = read_gpt(&disk).unwrap();
    assert_eq!(
        table,
        placed.iter().map(|p| p.to_entry()).collect::<Vec<_>>()
    );
    let nodes = ensure_partition_nodes(&disk, &table).unwrap();
    assert_eq!(nodes.len(), 4);
    for (p, node) in placed.iter().zip(&nodes) {
        assert_eq!(node, &partition_path(&disk, p.number));
        assert_eq!(getsize64(node), p.size(), "{}", node.display());
        assert_eq!(device_size(node).unwrap(), p.size());
    }
    // Idempotent: a second call keeps the same nodes (same device numbers).
    let devs = |ns: &[PathBuf]| -> Vec<u64> {
        ns.iter()
            .map(|n| std::fs::metadata(n).unwrap().rdev())
            .collect()
    };
    let before = devs(&nodes);
    let again = ensure_partition_nodes(&disk, &table).unwrap();
    assert_eq!(devs(&again), before);
    // A missing node (no devtmpfs, or deleted) is made with mknod; a wrong one (here a
    // regular file) is replaced.
    std::fs::remove_file(&nodes[0]).unwrap();
    std::fs::remove_file(&nodes[2]).unwrap();
    std::fs::write(&nodes[2], b"not a device").unwrap();
    let again = ensure_partition_nodes(&disk, &table).unwrap();
    assert_eq!(devs(&again), before);
    assert_eq!(getsize64(&again[0]), placed[0].size());
    assert_eq!(getsize64(&again[2]), placed[2].size());

    // A filesystem on root-a, with a file in it.
    let root_a = &nodes[1];
    let fs_id = "3f0b2a51-6c1e-4d7a-9b8e-2f4c5d6e7a8b";
    mkfs(
        root_a,
        FsType::Ext4,
        &MkfsOptions {
            label: Some("root-a".into()),
            uuid: Some(fs_id.into()),
        },
    )
    .unwrap();
    assert_eq!(fs_uuid(root_a).unwrap(), fs_id);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    {
        let m = Mount::new(root_a, &mnt, "ext4", None).unwrap();
        std::fs::write(m.path().join("keep.txt"), "precious data\n").unwrap();

        // In use while mounted: named device and mount point.
        let msg = in_use_error(&disk, &[]);
        assert!(msg.contains(&root_a.display().to_string()), "{msg}");
        assert!(msg.contains(&mnt.display().to_string()), "{msg}");
        // ... unless that partition is allowed (adopted).
        check_disk_not_in_use(&disk, std::slice::from_ref(root_a)).unwrap();
        // Removing a mounted partition's node fails clearly.
        let err = blkpg::remove_partition_nodes(&disk).unwrap_err();
        assert!(format!("{err:#}").contains("in use"), "{err:#}");
        m.unmount().unwrap();
    }
    check_disk_not_in_use(&disk, &[]).unwrap();

    // Rewrite the table adopting root-a (by label); the rest is new.
    let existing = read_gpt(&disk).unwrap();
    let plan2 = DiskPlan {
        partitions: vec![
            plan_part("esp2", PartitionType::Esp, PartSize::Fixed(32 * MIB)),
            plan_part(
                "data",
                PartitionType::LinuxGeneric,
                PartSize::Fixed(100 * MIB),
            ),
            plan_part("var2", PartitionType::Var, PartSize::Grow),
        ],
        adopted: vec![AdoptMatch {
            id: "kept".into(),
            by: AdoptKey::Label("root-a".into()),
        }],
    };
    let placed2 = plan_layout(size, lba, &plan2, Some(&existing)).unwrap();
    let kept = placed2.iter().find(|p| p.id == "kept").unwrap();
    assert!(kept.adopted);
    assert_eq!(kept.to_entry(), placed[1].to_entry());
    let data = placed2.iter().find(|p| p.id == "data").unwrap();
    assert_eq!(
        data.offset(),
        365 * MIB,
        "data goes after the adopted partition"
    );
    write_gpt(&disk, &placed2).unwrap();
    assert_sfdisk_agrees(&disk, &placed2);
    let table2 = read_gpt(&disk).unwrap();
    let nodes2 = ensure_partition_nodes(&disk, &table2).unwrap();
    for (p, node) in table2.iter().zip(&nodes2) {
        assert_eq!(getsize64(node), p.size(), "{}", node.display());
    }
    let kept_node = partition_path(&disk, kept.number);
    assert_eq!(
        std::fs::metadata(&kept_node).unwrap().rdev(),
        before[1],
        "the adopted partition's node was kept, not recreated"
    );
    // Kernel partitions are exactly the new table (stale p4 gone or replaced).
    let kparts = blkpg::kernel_partitions(&disk).unwrap();
    let want: HashSet<(u32, u64, u64)> = table2
        .iter()
        .map(|p| (p.number, p.offset(), p.size()))
        .collect();
    let got: HashSet<(u32, u64, u64)> =
        kparts.iter().map(|k| (k.number, k.start, k.size)).collect();
    assert_eq!(got, want);

    // The adopted filesystem survived.
    assert_eq!(fs_uuid(&kept_node).unwrap(), fs_id);
    {
        let m = Mount::new(&kept_node, &mnt, "ext4", Some("ro")).unwrap();
        assert_eq!(
            std::fs::read_to_string(m.path().join("keep.txt")).unwrap(),
            "precious data\n"
        );
        // Mounted adopted partition: allowed, and the other partitions are free.
        check_disk_not_in_use(&disk, std::slice::from_ref(&kept_node)).unwrap();
        in_use_error(&disk, &[]);
    }
    let number = lo.number();
    lo.detach().unwrap();
    assert_detached(number, &img, &kept_node);
}

#[test]
fn too_small_disk_is_a_clear_error() {
    if !privileged() {
        return;
    }
    let (_dir, img) = sparse(600 * MIB);
    let lo = LoopDevice::attach(&img, Options::default()).unwrap();
    let size = device_size(lo.path()).unwrap();
    let e = plan_layout(
        size,
        logical_sector_size(lo.path()).unwrap(),
        &ab_plan(),
        None,
    )
    .unwrap_err();
    assert_eq!(e.code, "disk-too-small");
    assert!(
        e.message.contains(&(600 * MIB).to_string()),
        "{}",
        e.message
    );
    assert!(
        e.message.contains(&(666 * MIB + 33 * 512).to_string()),
        "{}",
        e.message
    );
}

#[test]
fn sector_size_4k_loop() {
    if !privileged() {
        return;
    }
    let (_dir, img) = sparse(1024 * MIB);
    let lo = LoopDevice::attach(
        &img,
        Options {
            sector_size: Some(4096),
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(logical_sector_size(lo.path()).unwrap(), 4096);
    let placed = plan_layout(1024 * MIB, 4096, &ab_plan(), None).unwrap();
    write_gpt(lo.path(), &placed).unwrap();
    let t = sfdisk::dump(lo.path()).unwrap();
    assert_eq!(t.sectorsize, Some(4096));
    assert_eq!(t.firstlba, Some(6));
    assert_sfdisk_agrees(lo.path(), &placed);
    let table = read_gpt_table(lo.path()).unwrap();
    assert!(table.primary_ok && table.backup_ok);
    let nodes = ensure_partition_nodes(lo.path(), &table.partitions).unwrap();
    for (p, n) in placed.iter().zip(&nodes) {
        assert_eq!(getsize64(n), p.size());
    }
}

#[test]
fn loop_options_offset_sizelimit_readonly() {
    if !privileged() {
        return;
    }
    let (_dir, img) = sparse(64 * MIB);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::options().write(true).open(&img).unwrap();
        f.seek(SeekFrom::Start(8 * MIB)).unwrap();
        f.write_all(b"MARK").unwrap();
    }
    let lo = LoopDevice::attach(
        &img,
        Options {
            offset: 8 * MIB,
            sizelimit: 16 * MIB,
            read_only: true,
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(getsize64(lo.path()), 16 * MIB);
    let mut head = [0u8; 4];
    use std::io::Read;
    std::fs::File::open(lo.path())
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(&head, b"MARK");
    let ro = Cmd::new("blockdev")
        .arg("--getro")
        .arg(lo.path())
        .output_string()
        .unwrap();
    assert_eq!(ro.trim(), "1", "read-only");
    use std::io::Write;
    let write = std::fs::File::options()
        .write(true)
        .open(lo.path())
        .and_then(|mut f| f.write_all(b"x").and_then(|_| f.sync_all()));
    assert!(write.is_err(), "writing a read-only loop device must fail");
    let sysfs = PathBuf::from(format!("/sys/block/loop{}/loop/backing_file", lo.number()));
    assert_eq!(
        std::fs::read_to_string(&sysfs).unwrap().trim(),
        img.display().to_string()
    );
}

#[test]
fn loop_detached_and_partitions_removed_after_panic() {
    if !privileged() {
        return;
    }
    let (_dir, img) = sparse(256 * MIB);
    let img2 = img.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let lo = LoopDevice::attach(&img2, Options::default()).unwrap();
        let plan = DiskPlan {
            partitions: vec![plan_part("a", PartitionType::LinuxGeneric, PartSize::Grow)],
            adopted: vec![],
        };
        let placed = plan_layout(256 * MIB, 512, &plan, None).unwrap();
        write_gpt(lo.path(), &placed).unwrap();
        let nodes = blkpg::sync_partition_nodes(lo.path()).unwrap();
        assert_eq!(nodes[0].0, 1);
        tx.send((lo.number(), nodes[0].1.clone())).unwrap();
        panic!("simulated failure mid-install");
    })
    .join();
    assert!(result.is_err(), "the thread panicked");
    let (number, node) = rx.recv().unwrap();
    assert_detached(number, &img, &node);
}

#[test]
fn root_disk_is_refused_and_root_device_found() {
    if !privileged() {
        return;
    }
    let Some(root) = find_root_device().unwrap() else {
        eprintln!("skipping: / is not on a block device here");
        return;
    };
    let st_dev = std::fs::metadata("/").unwrap().dev();
    if DevNum::from_dev_t(st_dev).major != 0 {
        assert_eq!(root.dev, DevNum::from_dev_t(st_dev));
    }
    assert!(root.path.exists(), "{}", root.path.display());
    // The whole disk under the root (the root device itself, or its parent disk).
    let name = root.path.file_name().unwrap().to_str().unwrap().to_string();
    let sys = PathBuf::from("/sys/class/block").join(&name);
    let disk = if sys.join("partition").exists() {
        let parent = std::fs::canonicalize(&sys).unwrap();
        PathBuf::from("/dev").join(parent.parent().unwrap().file_name().unwrap())
    } else {
        root.path.clone()
    };
    if !root.underlying.is_empty() || !disk.exists() {
        eprintln!("skipping the refusal part: root is on a stacked device");
        return;
    }
    let msg = in_use_error(&disk, &[]);
    assert!(msg.contains("running root filesystem"), "{msg}");
}

#[test]
fn partition_is_not_a_disk() {
    if !privileged() {
        return;
    }
    let (_dir, img) = sparse(64 * MIB);
    let lo = LoopDevice::attach(&img, Options::default()).unwrap();
    let plan = DiskPlan {
        partitions: vec![plan_part("a", PartitionType::LinuxGeneric, PartSize::Grow)],
        adopted: vec![],
    };
    write_gpt(lo.path(), &plan_layout(64 * MIB, 512, &plan, None).unwrap()).unwrap();
    let nodes = ensure_partition_nodes(lo.path(), &read_gpt(lo.path()).unwrap()).unwrap();
    let err = check_disk_not_in_use(&nodes[0], &[]).unwrap_err();
    assert!(format!("{err:#}").contains("not a whole disk"), "{err:#}");
    let err = ensure_partition_nodes(&nodes[0], &[]).unwrap_err();
    assert!(format!("{err:#}").contains("not a whole disk"), "{err:#}");
}

#[test]
fn partscan_loop_still_gets_blkpg_nodes_and_cleans_up() {
    if !privileged() {
        return;
    }
    let (_dir, img) = sparse(128 * MIB);
    let lo = LoopDevice::attach(
        &img,
        Options {
            partscan: true,
            ..Options::default()
        },
    )
    .unwrap();
    let plan = DiskPlan {
        partitions: vec![
            plan_part("a", PartitionType::Swap, PartSize::Fixed(16 * MIB)),
            plan_part("b", PartitionType::Home, PartSize::Grow),
        ],
        adopted: vec![],
    };
    let placed = plan_layout(128 * MIB, 512, &plan, None).unwrap();
    write_gpt(lo.path(), &placed).unwrap();
    let nodes = blkpg::sync_partition_nodes(lo.path()).unwrap();
    assert_eq!(nodes.len(), 2);
    mkfs(&nodes[0].1, FsType::Swap, &MkfsOptions::default()).unwrap();
    assert_eq!(
        trident::storage::mkfs::probe(&nodes[0].1)
            .unwrap()
            .unwrap()
            .fs_type,
        "swap"
    );
    let number = lo.number();
    drop(lo);
    assert_detached(number, &img, &nodes[1].1);
}

#[test]
fn partition_disk_end_to_end_and_refusal_leaves_disk_untouched() {
    use trident::storage::partition::partition_disk;
    if !privileged() {
        return;
    }
    let (dir, img) = sparse(1024 * MIB);
    let lo = LoopDevice::attach(&img, Options::default()).unwrap();
    let disk = lo.path();

    // Fresh disk (no table yet).
    let applied = partition_disk(disk, &ab_plan()).unwrap();
    let ids: Vec<&str> = applied.iter().map(|a| a.placed.id.as_str()).collect();
    assert_eq!(ids, ["esp", "root-a", "root-b", "var"]);
    for a in &applied {
        assert_eq!(a.path, partition_path(disk, a.placed.number));
        assert_eq!(getsize64(&a.path), a.placed.size());
    }
    assert_sfdisk_agrees(
        disk,
        &applied.iter().map(|a| a.placed.clone()).collect::<Vec<_>>(),
    );
    let guid = read_gpt_table(disk).unwrap().disk_guid;

    // Data on root-b (ext4), then mount it.
    let root_b = applied[2].path.clone();
    mkfs(&root_b, FsType::Ext4, &MkfsOptions::default()).unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = Mount::new(&root_b, &mnt, "ext4", None).unwrap();
    std::fs::write(mnt.join("f"), "kept").unwrap();

    // Re-partitioning without adopting the mounted partition is refused before any
    // write: the table is exactly as before.
    let before = read_gpt_table(disk).unwrap();
    let err = partition_disk(disk, &ab_plan()).unwrap_err();
    assert_eq!(find_trident_error(&err).unwrap().code, "disk-in-use");
    assert_eq!(read_gpt_table(disk).unwrap(), before);

    // Adopting it (by UUID) while it stays mounted works; the disk keeps its GUID.
    let plan = DiskPlan {
        partitions: vec![
            plan_part("esp", PartitionType::Esp, PartSize::Fixed(64 * MIB)),
            plan_part("home", PartitionType::Home, PartSize::Grow),
        ],
        adopted: vec![AdoptMatch {
            id: "old-b".into(),
            by: AdoptKey::Uuid(applied[2].placed.uuid),
        }],
    };
    let applied2 = partition_disk(disk, &plan).unwrap();
    let kept = applied2.iter().find(|a| a.placed.id == "old-b").unwrap();
    assert_eq!(kept.path, root_b);
    assert_eq!(kept.placed.to_entry(), applied[2].placed.to_entry());
    assert_eq!(read_gpt_table(disk).unwrap().disk_guid, guid);
    assert_eq!(std::fs::read_to_string(mnt.join("f")).unwrap(), "kept");
    m.unmount().unwrap();

    // Planning errors carry the disk.
    let too_big = DiskPlan {
        partitions: vec![plan_part(
            "x",
            PartitionType::Var,
            PartSize::Fixed(2048 * MIB),
        )],
        adopted: vec![],
    };
    let err = partition_disk(disk, &too_big).unwrap_err();
    let te = find_trident_error(&err).unwrap();
    assert_eq!(te.code, "disk-too-small");
    assert_eq!(te.device.as_deref(), Some(disk.to_str().unwrap()));
}
