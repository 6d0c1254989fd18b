//! What is mounted where: `/proc/self/mountinfo`, the disk-in-use check that guards
//! every destructive operation, and the device the running root comes from.

use super::device::{dev_number, kernel_name, read_sysfs, DevNum, SYSFS};
use crate::error::TridentError;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_id: u32,
    pub parent_id: u32,
    /// `st_dev` of files on this mount (the block device for disk filesystems).
    pub dev: DevNum,
    /// Root of the mount within its filesystem.
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub mount_options: String,
    /// `shared:N`, `master:N`, ...
    pub optional_fields: Vec<String>,
    pub fs_type: String,
    /// Mount source (`/dev/vda1`, `tmpfs`, ...).
    pub source: String,
    pub super_options: String,
}

/// Undo the octal escapes (`\040` for a space) the kernel writes in mountinfo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if v <= 255 {
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse the text of a mountinfo file. Pure.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parse = || -> Result<MountInfo> {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields
                .iter()
                .position(|f| *f == "-")
                .context("no ` - ` separator")?;
            if sep < 6 || fields.len() < sep + 4 {
                bail!("too few fields");
            }
            Ok(MountInfo {
                mount_id: fields[0].parse().context("mount id")?,
                parent_id: fields[1].parse().context("parent id")?,
                dev: fields[2].parse()?,
                root: PathBuf::from(unescape(fields[3])),
                mount_point: PathBuf::from(unescape(fields[4])),
                mount_options: fields[5].to_string(),
                optional_fields: fields[6..sep].iter().map(|s| s.to_string()).collect(),
                fs_type: unescape(fields[sep + 1]),
                source: unescape(fields[sep + 2]),
                super_options: fields[sep + 3..].join(" "),
            })
        };
        out.push(parse().with_context(|| format!("parsing mountinfo line {}: {line:?}", n + 1))?);
    }
    Ok(out)
}

/// Mounts of this process' mount namespace.
pub fn read_mountinfo() -> Result<Vec<MountInfo>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    parse_mountinfo(&text)
}

/// The mount that is `/` now (the last one stacked on `/`). Pure.
pub fn root_mount(mounts: &[MountInfo]) -> Option<&MountInfo> {
    mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == Path::new("/"))
}

/// The block device the running root filesystem is mounted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDevice {
    /// `/dev/<kernel name>`, e.g. `/dev/vda2` or `/dev/dm-0`.
    pub path: PathBuf,
    pub dev: DevNum,
    pub fs_type: String,
    /// The source as mountinfo shows it (may be `/dev/root`).
    pub source: String,
    /// Partitions/disks beneath a stacked device (dm-verity, RAID): the leaves of
    /// `/sys/class/block/<name>/slaves`. Empty for a plain partition.
    pub underlying: Vec<PathBuf>,
}

/// What `/` is mounted from. `Ok(None)` when it is not a block device (tmpfs or
/// overlay root, as in an installer ramdisk).
pub fn find_root_device() -> Result<Option<RootDevice>> {
    let mounts = read_mountinfo()?;
    let root = root_mount(&mounts).context("no mount for / in /proc/self/mountinfo")?;
    let mut dev = root.dev;
    if dev.major == 0 {
        // Filesystems with anonymous device numbers (btrfs): trust a /dev source.
        match Path::new(&root.source) {
            p if p.starts_with("/dev/") && p.exists() => dev = dev_number(p)?,
            _ => return Ok(None),
        }
    }
    let sys = Path::new(SYSFS);
    let name = kernel_name(sys, dev)
        .with_context(|| format!("finding the block device {dev} that / is mounted from"))?;
    let mut underlying = Vec::new();
    leaves(sys, &name, &mut underlying, 0)?;
    Ok(Some(RootDevice {
        path: Path::new("/dev").join(&name),
        dev,
        fs_type: root.fs_type.clone(),
        source: root.source.clone(),
        underlying,
    }))
}

fn leaves(sys: &Path, name: &str, out: &mut Vec<PathBuf>, depth: usize) -> Result<()> {
    if depth > 16 {
        bail!("block device stack under {name} is too deep");
    }
    let dir = sys.join("class/block").join(name).join("slaves");
    let Some(entries) = read_dir_if_exists(&dir)? else {
        return Ok(());
    };
    let mut names: Vec<String> = entries
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    names.sort();
    for s in names {
        let deeper = sys.join("class/block").join(&s).join("slaves");
        if read_dir_if_exists(&deeper)?.is_some_and(|mut d| d.next().is_some()) {
            leaves(sys, &s, out, depth + 1)?;
        } else {
            out.push(Path::new("/dev").join(s));
        }
    }
    Ok(())
}

/// `read_dir`, with `None` for a directory that does not exist.
fn read_dir_if_exists(dir: &Path) -> Result<Option<std::fs::ReadDir>> {
    match std::fs::read_dir(dir) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("listing {}", dir.display())),
    }
}

/// A device that belongs to the disk: the disk, one of its partitions, or a device
/// stacked on one of them (device mapper, md RAID), found through sysfs `holders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub dev: DevNum,
    /// Kernel name, e.g. `loop0p2`, `dm-1`.
    pub name: String,
    /// The disk or partition it is (or is built on), e.g. `loop0p2`.
    pub base: String,
    /// Stacked on `base` (a holder) rather than `base` itself.
    pub holder: bool,
}

/// The disk `disk_name`, its partitions and everything stacked on them, from sysfs.
pub fn disk_members(sys: &Path, disk_name: &str) -> Result<Vec<Member>> {
    let class = sys.join("class/block");
    let dir = class.join(disk_name);
    let mut bases = vec![disk_name.to_string()];
    let mut subs: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("listing {}", dir.display()))?
        .into_iter()
        .filter(|e| e.path().join("partition").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    subs.sort();
    bases.extend(subs);

    let mut out = Vec::new();
    for base in &bases {
        let dev: DevNum = read_sysfs(&class.join(base).join("dev"))?.parse()?;
        out.push(Member {
            dev,
            name: base.clone(),
            base: base.clone(),
            holder: false,
        });
        // Holders, transitively (a filesystem on LVM on LUKS on the partition).
        let mut todo = vec![base.clone()];
        let mut seen = HashSet::new();
        while let Some(n) = todo.pop() {
            let hdir = class.join(&n).join("holders");
            let Some(entries) = read_dir_if_exists(&hdir)? else {
                continue;
            };
            for e in entries {
                let e = e.with_context(|| format!("listing {}", hdir.display()))?;
                let h = e.file_name().to_string_lossy().into_owned();
                if !seen.insert(h.clone()) {
                    continue;
                }
                let hdev: DevNum = read_sysfs(&class.join(&h).join("dev"))?.parse()?;
                out.push(Member {
                    dev: hdev,
                    name: h.clone(),
                    base: base.clone(),
                    holder: true,
                });
                todo.push(h);
            }
        }
    }
    Ok(out)
}

/// Something using a device: a mount, a swap area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceUse {
    pub dev: DevNum,
    /// `mounted at /var`, `active swap`.
    pub what: String,
}

/// The uses of `members` not covered by `allowed` (kernel names of allowed disks or
/// partitions), as sentences. Holders count as uses by themselves. Pure.
pub fn find_uses(
    members: &[Member],
    uses: &[DeviceUse],
    allowed: &HashSet<String>,
    root: Option<DevNum>,
) -> Vec<String> {
    let mut found = Vec::new();
    for m in members {
        if allowed.contains(&m.base) {
            continue;
        }
        let shown = if m.holder {
            format!("/dev/{} (on /dev/{})", m.name, m.base)
        } else {
            format!("/dev/{}", m.name)
        };
        if root == Some(m.dev) {
            found.push(format!("{shown} holds the running root filesystem"));
        }
        for u in uses.iter().filter(|u| u.dev == m.dev) {
            if root == Some(m.dev) && u.what == "mounted at /" {
                continue;
            }
            found.push(format!("{shown} is {}", u.what));
        }
        if m.holder && !uses.iter().any(|u| u.dev == m.dev) && root != Some(m.dev) {
            found.push(format!("/dev/{} is held by /dev/{}", m.base, m.name));
        }
    }
    found.dedup();
    found
}

/// Mounts and active swap areas, as device numbers.
fn current_uses() -> Result<Vec<DeviceUse>> {
    let mut uses = Vec::new();
    for m in read_mountinfo()? {
        let what = format!("mounted at {}", m.mount_point.display());
        if m.dev.major != 0 {
            uses.push(DeviceUse {
                dev: m.dev,
                what: what.clone(),
            });
        }
        // The source too: anonymous-device filesystems (btrfs) and bind mounts.
        let src = Path::new(&m.source);
        if src.starts_with("/dev/") {
            if let Ok(dev) = dev_number(src) {
                if dev != m.dev {
                    uses.push(DeviceUse { dev, what });
                }
            }
        }
    }
    let swaps = match std::fs::read_to_string("/proc/swaps") {
        Ok(s) => s,
        // A kernel without swap support has no /proc/swaps.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).context("reading /proc/swaps"),
    };
    for line in swaps.lines().skip(1) {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let path = PathBuf::from(unescape(name));
        if let Ok(dev) = dev_number(&path) {
            uses.push(DeviceUse {
                dev,
                what: "an active swap area".into(),
            });
        }
    }
    Ok(uses)
}

/// Refuse `disk` if it holds the running root, a mounted filesystem, an active swap
/// area, or a partition something is stacked on — except for the partitions listed in
/// `allowed_partitions` (adopted partitions the operation leaves alone; paths that do
/// not exist are ignored).
///
/// The error is `disk-in-use` (execution-environment) and names each device and mount
/// point.
pub fn check_disk_not_in_use(disk: &Path, allowed_partitions: &[PathBuf]) -> Result<()> {
    let sys = Path::new(SYSFS);
    let dev = dev_number(disk)
        .with_context(|| format!("checking whether {} is in use", disk.display()))?;
    let name = kernel_name(sys, dev)?;
    if sys
        .join("class/block")
        .join(&name)
        .join("partition")
        .exists()
    {
        bail!(
            "{} is a partition ({name}), not a whole disk",
            disk.display()
        );
    }
    let members = disk_members(sys, &name)?;
    let mut allowed = HashSet::new();
    for p in allowed_partitions {
        // A partition without a node cannot be in use; skipping it only makes the
        // check stricter.
        if !p.exists() {
            continue;
        }
        let pdev = dev_number(p)
            .with_context(|| format!("resolving allowed partition {}", p.display()))?;
        allowed.insert(kernel_name(sys, pdev)?);
    }
    if allowed.contains(&name) {
        bail!(
            "the whole disk {} cannot be an allowed partition",
            disk.display()
        );
    }
    let root = find_root_device()?.map(|r| r.dev);
    let found = find_uses(&members, &current_uses()?, &allowed, root);
    if found.is_empty() {
        return Ok(());
    }
    Err(TridentError::environment(
        "disk-in-use",
        format!("disk {} is in use: {}", disk.display(), found.join("; ")),
    )
    .on_device(disk.display().to_string())
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/storage/mountinfo.txt");

    #[test]
    fn parses_fixture() {
        let m = parse_mountinfo(FIXTURE).unwrap();
        assert_eq!(m.len(), 9);
        let root = root_mount(&m).unwrap();
        assert_eq!(root.dev, DevNum::new(254, 0));
        assert_eq!(root.source, "/dev/vda");
        assert_eq!(root.fs_type, "ext4");
        assert_eq!(root.mount_id, 27);
        assert_eq!(root.parent_id, 1);
        assert_eq!(root.super_options, "rw,discard");
        let dev = m
            .iter()
            .find(|x| x.mount_point == Path::new("/dev"))
            .unwrap();
        assert_eq!(dev.fs_type, "devtmpfs");
        assert_eq!(dev.optional_fields, vec!["shared:2".to_string()]);
        // Escaped space in the mount point, two optional fields.
        let spaced = m
            .iter()
            .find(|x| x.mount_point == Path::new("/tmp/my mnt"))
            .unwrap();
        assert_eq!(spaced.dev, DevNum::new(259, 1));
        assert_eq!(spaced.source, "/dev/loop0p2");
        assert_eq!(spaced.optional_fields, vec!["shared:7", "master:1"]);
        assert_eq!(spaced.root, Path::new("/"));
        let bind = m.iter().find(|x| x.root == Path::new("/sub\\dir")).unwrap();
        assert_eq!(bind.mount_point, Path::new("/srv/bind"));
    }

    #[test]
    fn root_is_last_mount_on_slash() {
        let text = "1 0 0:2 / / rw - rootfs rootfs rw\n\
                    27 1 8:3 / / rw,relatime - xfs /dev/sda3 rw\n";
        let m = parse_mountinfo(text).unwrap();
        assert_eq!(root_mount(&m).unwrap().dev, DevNum::new(8, 3));
    }

    #[test]
    fn bad_lines_are_errors_with_line_numbers() {
        let e = parse_mountinfo("27 1 254:0 / / rw\n").unwrap_err();
        assert!(format!("{e:#}").contains("line 1"), "{e:#}");
        let e = parse_mountinfo("x 1 254:0 / / rw - ext4 /dev/vda rw\n").unwrap_err();
        assert!(format!("{e:#}").contains("mount id"), "{e:#}");
    }

    fn member(dev: (u32, u32), name: &str, base: &str) -> Member {
        Member {
            dev: DevNum::new(dev.0, dev.1),
            name: name.into(),
            base: base.into(),
            holder: name != base,
        }
    }

    #[test]
    fn find_uses_reports_mounts_swap_holders_and_root() {
        let members = vec![
            member((7, 0), "loop0", "loop0"),
            member((259, 0), "loop0p1", "loop0p1"),
            member((259, 1), "loop0p2", "loop0p2"),
            member((259, 2), "loop0p3", "loop0p3"),
            member((253, 0), "dm-0", "loop0p3"),
            member((259, 3), "loop0p4", "loop0p4"),
        ];
        let uses = vec![
            DeviceUse {
                dev: DevNum::new(259, 1),
                what: "mounted at /var".into(),
            },
            DeviceUse {
                dev: DevNum::new(253, 0),
                what: "mounted at /data".into(),
            },
            DeviceUse {
                dev: DevNum::new(259, 3),
                what: "an active swap area".into(),
            },
            DeviceUse {
                dev: DevNum::new(8, 1),
                what: "mounted at /elsewhere".into(),
            },
        ];
        let none = HashSet::new();
        let found = find_uses(&members, &uses, &none, Some(DevNum::new(259, 0)));
        assert_eq!(
            found,
            vec![
                "/dev/loop0p1 holds the running root filesystem",
                "/dev/loop0p2 is mounted at /var",
                "/dev/dm-0 (on /dev/loop0p3) is mounted at /data",
                "/dev/loop0p4 is an active swap area",
            ]
        );
        // Allowing p2 and p3 (adopted) leaves the others.
        let allowed: HashSet<String> = ["loop0p2", "loop0p3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let found = find_uses(&members, &uses, &allowed, None);
        assert_eq!(found, vec!["/dev/loop0p4 is an active swap area"]);
        // A holder without a mount still counts (e.g. an assembled RAID).
        let found = find_uses(&members, &[], &none, None);
        assert_eq!(found, vec!["/dev/loop0p3 is held by /dev/dm-0"]);
        // Nothing of the disk in use.
        assert!(find_uses(&members[..3], &uses[3..], &none, None).is_empty());
    }

    #[test]
    fn members_from_fake_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        let class = sys.path().join("class/block");
        let mk = |name: &str, dev: &str, part: Option<&str>| {
            let d = match part {
                Some(disk) => class.join(disk).join(name),
                None => class.join(name),
            };
            std::fs::create_dir_all(d.join("holders")).unwrap();
            std::fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
            if part.is_some() {
                std::fs::write(d.join("partition"), "1\n").unwrap();
                // sysfs also links the partition at class/block/<name>.
                std::os::unix::fs::symlink(&d, class.join(name)).unwrap();
            }
        };
        mk("loop5", "7:5", None);
        mk("loop5p1", "259:4", Some("loop5"));
        mk("dm-2", "253:2", None);
        std::fs::create_dir_all(class.join("loop5/loop5p1/holders/dm-2")).unwrap();
        let members = disk_members(sys.path(), "loop5").unwrap();
        assert_eq!(
            members,
            vec![
                member((7, 5), "loop5", "loop5"),
                member((259, 4), "loop5p1", "loop5p1"),
                member((253, 2), "dm-2", "loop5p1"),
            ]
        );
    }

    #[test]
    fn unescape_octal() {
        assert_eq!(unescape("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn this_machine_has_a_root() {
        // Whatever this runs on, / is mounted from something; the call must not fail.
        let _ = find_root_device().unwrap();
    }
}
