//! `trident cosi build`: turn a raw GPT disk image into a COSI 1.2 file.
//!
//! One pass over the disk image, bounded memory, no temporary image files:
//!
//! 1. read the primary GPT ([`crate::storage::gpt::read_gpt_image`]), probe each
//!    partition's superblock ([`crate::storage::mkfs::probe_bytes`]);
//! 2. decide the mount points: `--mount` selectors, or the image's own `/etc/fstab`
//!    found on the partition that holds `/etc/os-release` ([`fstab`]);
//! 3. read `os-release` and the package database from the filesystems in the image
//!    without mounting them where possible ([`rootfs`], [`packages`]) and the
//!    bootloader from the ESP in user space ([`esp`]);
//! 4. write the tar ([`tarwrite`]): `cosi-marker`, a reserved `metadata.json`, then the
//!    primary-GPT region and every partition in disk order, each zstd-compressed and
//!    SHA-384-hashed on its way to the file; finally `metadata.json` is filled in.
//!
//! The archive is written to `OUTPUT.partial` next to the output and renamed into
//! place only when complete.

pub mod args;
pub mod esp;
pub mod fstab;
pub mod packages;
pub mod rootfs;
pub mod tarwrite;

use crate::cosi::metadata::{
    Compression, CosiMetadata, Disk, Filesystem, GptRegion, ImageFile, MetadataVersion, OsArch,
    OsPackage, RegionType,
};
use crate::storage::gpt::{self, ExistingPartition, GptTable, ReadAt};
use crate::storage::mkfs::{self, FsInfo};
use crate::storage::parttypes::PartitionType;
use crate::TridentError;
use anyhow::{bail, Context, Result};
use rootfs::FsReader;
use sha2::{Digest, Sha384};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Default zstd level.
pub const DEFAULT_LEVEL: i32 = 3;
/// Bytes read from the disk image per step.
const CHUNK: usize = 4 << 20;
/// Chunks read ahead of the compressor.
const READ_AHEAD: usize = 3;
/// Where the ESP is mounted when nothing says otherwise.
const DEFAULT_ESP_MOUNT: &str = "/boot/efi";

/// Names a partition of the disk image on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartSelector {
    /// 1-based GPT entry index.
    Number(u32),
    /// GPT partition name.
    Label(String),
}

impl FromStr for PartSelector {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.is_empty() {
            bail!("empty partition selector");
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            let n: u32 = s.parse().with_context(|| format!("partition number {s}"))?;
            if n == 0 {
                bail!("partition numbers start at 1");
            }
            return Ok(PartSelector::Number(n));
        }
        Ok(PartSelector::Label(s.to_string()))
    }
}

impl std::fmt::Display for PartSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartSelector::Number(n) => write!(f, "partition {n}"),
            PartSelector::Label(l) => write!(f, "partition labelled {l:?}"),
        }
    }
}

/// Parse a `--mount PARTNUM_OR_LABEL=/path` argument.
pub fn parse_mount_arg(s: &str) -> Result<(PartSelector, String)> {
    let (sel, path) = s
        .split_once('=')
        .with_context(|| format!("--mount {s:?}: expected PARTNUM_OR_LABEL=/path"))?;
    if !path.starts_with('/') {
        bail!("--mount {s:?}: the mount point must be an absolute path");
    }
    Ok((sel.parse()?, normalize_mount(path)))
}

fn normalize_mount(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/".into()
    } else {
        t.to_string()
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The raw GPT disk image.
    pub disk_image: PathBuf,
    /// The COSI file to write.
    pub output: PathBuf,
    /// Mount points by partition; empty: read the image's `/etc/fstab`.
    pub mounts: Vec<(PartSelector, String)>,
    /// zstd level (1..=22, negative for the fast levels).
    pub compression_level: i32,
    /// zstd worker threads; 0: one per CPU.
    pub threads: u32,
    /// `osArch`; `None`: from the ESP's removable-media loader, else `x86_64`.
    pub os_arch: Option<String>,
    /// Replace an existing output file.
    pub force: bool,
}

impl BuildOptions {
    pub fn new(disk_image: impl Into<PathBuf>, output: impl Into<PathBuf>) -> Self {
        Self {
            disk_image: disk_image.into(),
            output: output.into(),
            mounts: Vec::new(),
            compression_level: DEFAULT_LEVEL,
            threads: 0,
            os_arch: None,
            force: false,
        }
    }
}

/// One region written to the COSI file.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegionSummary {
    pub path: String,
    /// GPT entry index; `None` for the primary GPT.
    pub number: Option<u32>,
    pub mount_point: Option<String>,
    pub fs_type: Option<String>,
    pub uncompressed_size: u64,
    pub compressed_size: u64,
}

/// What [`build`] produced.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildSummary {
    pub output: PathBuf,
    /// Size of the COSI file.
    pub size: u64,
    /// `metadata.json`'s `id`.
    pub id: String,
    /// SHA-384 of the raw `metadata.json` bytes: the Host Configuration's `image.sha384`.
    pub metadata_sha384: String,
    pub regions: Vec<RegionSummary>,
}

/// A partition and what its superblock says.
#[derive(Debug, Clone)]
struct Part {
    gpt: ExistingPartition,
    fs: Option<FsInfo>,
    mount: Option<String>,
    image_path: String,
}

fn invalid(code: &str, msg: String) -> anyhow::Error {
    anyhow::Error::new(TridentError::invalid_input(code, msg))
}

/// Build a COSI file. `progress(done, total)` is called with uncompressed bytes.
pub fn build(opts: &BuildOptions, progress: &dyn Fn(u64, u64)) -> Result<BuildSummary> {
    let img_path = &opts.disk_image;
    if !(-7..=22).contains(&opts.compression_level) || opts.compression_level == 0 {
        return Err(invalid(
            "cosi-build-bad-level",
            format!(
                "zstd level {} is out of range (1..=22, or -7..=-1)",
                opts.compression_level
            ),
        ));
    }
    let forced_arch = opts.os_arch.as_deref().map(check_arch).transpose()?;
    let image = File::open(img_path)
        .with_context(|| format!("opening disk image {}", img_path.display()))?;
    let disk_size = image
        .metadata()
        .with_context(|| format!("reading size of {}", img_path.display()))?
        .len();
    if opts.output.exists() && !opts.force {
        return Err(invalid(
            "cosi-build-output-exists",
            format!(
                "{} exists; pass --force to replace it",
                opts.output.display()
            ),
        ));
    }
    if same_file(img_path, &opts.output) {
        bail!("the output must not be the disk image itself");
    }

    let read_at = |off: u64, len: usize| -> Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        image
            .read_exact_at(&mut b, off)
            .with_context(|| format!("reading {len} bytes at offset {off} of the disk image"))?;
        Ok(b)
    };
    let (disk, primary_len) = read_partition_table(
        &img_path.display().to_string(),
        disk_size,
        &mut |off, len| read_at(off, len),
    )
    .with_context(|| format!("reading the partition table of {}", img_path.display()))?;
    if disk.partitions.is_empty() {
        return Err(invalid(
            "cosi-build-no-partitions",
            "the disk image's GPT has no partitions".into(),
        ));
    }
    let lba = disk.sector_size;
    if primary_len > disk.partitions[0].offset() {
        bail!(
            "partition {} starts inside the primary GPT (which ends at byte {})",
            disk.partitions[0].number,
            primary_len
        );
    }
    let mut parts: Vec<Part> = Vec::new();
    for p in &disk.partitions {
        let size = p.size();
        let head = read_at(p.offset(), (mkfs::PROBE_LEN as u64).min(size) as usize)?;
        let fs = mkfs::probe_bytes(&head);
        tracing::debug!(number = p.number, name = %p.label, fs = ?fs, "probed partition");
        parts.push(Part {
            gpt: p.clone(),
            fs,
            mount: None,
            image_path: String::new(),
        });
    }

    // --- mount points ---------------------------------------------------------------
    if opts.mounts.is_empty() {
        mounts_from_fstab(img_path, &mut parts)?;
    } else {
        for (sel, mp) in &opts.mounts {
            let mp = normalize_mount(mp);
            let idx = find_part(&parts, sel).ok_or_else(|| {
                invalid(
                    "cosi-build-unknown-partition",
                    format!(
                        "--mount names {sel}, which the disk image does not have (it has {})",
                        describe_parts(&parts)
                    ),
                )
            })?;
            if let Some(old) = &parts[idx].mount {
                bail!(
                    "partition {} is given two mount points: {old} and {mp}",
                    parts[idx].gpt.number
                );
            }
            parts[idx].mount = Some(mp);
        }
    }
    check_mounts(&parts)?;

    // --- what the OS is -------------------------------------------------------------
    let readers = Readers::new(img_path, &parts);
    let os_release = match readers.read("/etc/os-release")? {
        Some(b) => b,
        None => readers.read("/usr/lib/os-release")?.ok_or_else(|| {
            invalid(
                "cosi-build-no-os-release",
                "the root filesystem has neither /etc/os-release nor /usr/lib/os-release".into(),
            )
        })?,
    };
    let os_release = String::from_utf8(os_release).context("os-release is not UTF-8")?;
    let os_packages = read_packages(&readers)?;

    let esp_idx = parts
        .iter()
        .position(|p| p.gpt.type_guid == PartitionType::Esp.guid())
        .or_else(|| {
            parts.iter().position(|p| {
                p.fs.as_ref().is_some_and(|f| f.fs_type == "vfat")
                    && matches!(p.mount.as_deref(), Some("/boot/efi" | "/efi" | "/boot"))
            })
        })
        .ok_or_else(|| {
            invalid(
                "cosi-build-no-esp",
                "the disk image has no EFI System Partition to read the bootloader from".into(),
            )
        })?;
    let esp = &parts[esp_idx];
    let esp_mount = esp
        .mount
        .clone()
        .unwrap_or_else(|| DEFAULT_ESP_MOUNT.into());
    let found = esp::inspect(img_path, esp.gpt.offset(), esp.gpt.size(), &esp_mount)
        .with_context(|| format!("detecting the bootloader on partition {}", esp.gpt.number))?;
    let os_arch = forced_arch
        .or_else(|| found.arch.as_deref().and_then(OsArch::parse))
        .unwrap_or(OsArch::X86_64);

    // --- the archive ----------------------------------------------------------------
    name_images(&mut parts);
    let placeholder = |path: &str, size: u64| ImageFile {
        path: path.to_string(),
        compressed_size: 0,
        uncompressed_size: size,
        sha384: Some(String::new()),
    };
    let id = uuid::Uuid::new_v4().to_string();
    let mut md = CosiMetadata {
        version: MetadataVersion::V1_2,
        id: Some(id.clone()),
        os_arch,
        os_release,
        images: parts
            .iter()
            .filter(|p| p.mount.is_some())
            .map(|p| {
                let fs =
                    p.fs.as_ref()
                        .expect("checked: mounted partitions have a filesystem");
                Filesystem {
                    image: placeholder(&p.image_path, p.gpt.size()),
                    mount_point: p.mount.clone().unwrap_or_default(),
                    fs_type: fs.fs_type.clone(),
                    fs_uuid: fs.uuid.clone(),
                    part_type: p.gpt.type_guid.to_string(),
                    verity: None,
                }
            })
            .collect(),
        disk: Some(Disk {
            size: disk_size,
            kind: "gpt".into(),
            lba_size: lba as u32,
            gpt_regions: std::iter::once(GptRegion {
                image: placeholder("images/primary-gpt.rawzst", primary_len),
                kind: RegionType::PrimaryGpt,
                number: None,
                start_lba: None,
            })
            .chain(parts.iter().map(|p| GptRegion {
                image: placeholder(&p.image_path, p.gpt.size()),
                kind: RegionType::Partition,
                number: Some(p.gpt.number),
                start_lba: None,
            }))
            .collect(),
        }),
        os_packages: Some(
            os_packages
                .into_iter()
                .map(|p| OsPackage {
                    name: p.name,
                    version: p.version,
                    release: Some(p.release),
                    arch: Some(p.arch),
                })
                .collect(),
        ),
        bootloader: Some(found.bootloader),
        compression: Some(Compression { max_window_log: 0 }),
    };

    let partial = partial_path(&opts.output);
    let guard = RemoveOnDrop(Some(partial.clone()));
    let out = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut tar = tarwrite::TarWriter::new(out, mtime)?;
    tar.append("cosi-marker", b"")?;
    let md_len = max_json_len(&md);
    let reservation = tar.reserve("metadata.json", md_len as u64)?;

    let total: u64 = primary_len + parts.iter().map(|p| p.gpt.size()).sum::<u64>();
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    } else {
        opts.threads
    };
    let mut done = 0u64;
    let mut regions = Vec::new();
    let mut max_window_log = 0;
    let mut jobs: Vec<(String, u64, u64, Option<&Part>)> =
        vec![("images/primary-gpt.rawzst".into(), 0, primary_len, None)];
    jobs.extend(
        parts
            .iter()
            .map(|p| (p.image_path.clone(), p.gpt.offset(), p.gpt.size(), Some(p))),
    );
    let mut written: Vec<ImageFile> = Vec::new();
    for (path, offset, len, part) in jobs {
        tracing::info!(image = %path, bytes = len, "compressing");
        let (file, wlog) = compress_region(
            &image,
            offset,
            len,
            &mut tar,
            &path,
            opts.compression_level,
            threads,
            &mut |n| {
                done += n;
                progress(done, total);
            },
        )
        .with_context(|| format!("writing {path}"))?;
        max_window_log = max_window_log.max(wlog);
        regions.push(RegionSummary {
            path: path.clone(),
            number: part.map(|p| p.gpt.number),
            mount_point: part.and_then(|p| p.mount.clone()),
            fs_type: part.and_then(|p| p.fs.as_ref().map(|f| f.fs_type.clone())),
            uncompressed_size: len,
            compressed_size: file.compressed_size,
        });
        written.push(file);
    }
    for f in md.image_files_mut() {
        let w = written
            .iter()
            .find(|w| w.path == f.path)
            .expect("every image in the metadata was written");
        *f = w.clone();
    }
    md.compression = Some(Compression { max_window_log });
    let json = to_padded_json(&md, md_len).context("metadata.json outgrew its reserved size")?;
    tar.fill(&reservation, &json)?;
    let size = tar.finish()?;
    std::fs::rename(&partial, &opts.output).with_context(|| {
        format!(
            "renaming {} to {}",
            partial.display(),
            opts.output.display()
        )
    })?;
    std::mem::forget(guard);
    if let Some(dir) = opts.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing directory {}", dir.display()))?;
    }
    Ok(BuildSummary {
        output: opts.output.clone(),
        size,
        id,
        metadata_sha384: hex::encode(Sha384::digest(&json)),
        regions,
    })
}

/// Read the disk image's GPT: the primary copy must be intact (it is stored as is in
/// the COSI file) and the layout sane. Partitions come in disk order; also returns the
/// length of the primary-GPT region (protective MBR, header, entries).
fn read_partition_table(name: &str, size: u64, read_at: &mut ReadAt) -> Result<(GptTable, u64)> {
    let not_gpt = |why: String| invalid("cosi-build-not-gpt", why);
    let image =
        gpt::read_gpt_image(name, size, read_at).map_err(
            |e| match crate::error::find_trident_error(&e) {
                Some(t) if t.code == "no-partition-table" => not_gpt(t.message),
                _ => e,
            },
        )?;
    let mut table = image.table;
    let lba = table.sector_size;
    let Some(primary_len) = image.primary_len else {
        return Err(not_gpt(format!(
            "the primary GPT of {name} is damaged (only the backup copy is valid)"
        )));
    };
    if size % lba != 0 {
        return Err(not_gpt(format!(
            "{name} has no valid GPT: disk size {size} is not a multiple of the {lba}-byte LBA"
        )));
    }
    table.check_layout(size)?;
    table.partitions.sort_by_key(|p| p.first_lba);
    Ok((table, primary_len))
}

/// Serialize `md`, pretty-printed, padded with spaces before the final newline to
/// exactly `len` bytes (JSON allows trailing whitespace). `None` if it does not fit.
fn to_padded_json(md: &CosiMetadata, len: usize) -> Option<Vec<u8>> {
    let mut v = serde_json::to_vec_pretty(md).ok()?;
    if v.len() + 1 > len {
        return None;
    }
    v.resize(len - 1, b' ');
    v.push(b'\n');
    Some(v)
}

/// The largest `md` can serialize to once every image's sizes and hashes are known:
/// all numbers at their widest, hashes at their fixed width.
fn max_json_len(md: &CosiMetadata) -> usize {
    let mut m = md.clone();
    for f in m.image_files_mut() {
        f.compressed_size = u64::MAX;
        f.uncompressed_size = u64::MAX;
        f.sha384 = Some("f".repeat(96));
    }
    m.compression = Some(Compression {
        max_window_log: u32::MAX,
    });
    serde_json::to_vec_pretty(&m).map(|v| v.len()).unwrap_or(0) + 1
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Deletes a half-written output unless defused with `mem::forget`.
struct RemoveOnDrop(Option<PathBuf>);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn check_arch(a: &str) -> Result<OsArch> {
    OsArch::parse(a).ok_or_else(|| {
        invalid(
            "cosi-build-bad-arch",
            format!("unsupported OS architecture {a:?} (x86_64 or aarch64)"),
        )
    })
}

fn describe_parts(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| {
            if p.gpt.label.is_empty() {
                format!("{}", p.gpt.number)
            } else {
                format!("{} ({})", p.gpt.number, p.gpt.label)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn find_part(parts: &[Part], sel: &PartSelector) -> Option<usize> {
    match sel {
        PartSelector::Number(n) => parts.iter().position(|p| p.gpt.number == *n),
        PartSelector::Label(l) => parts.iter().position(|p| p.gpt.label == *l),
    }
}

/// Every mounted partition has a known filesystem, mount points are unique, `/` is
/// there, filesystem UUIDs are unique.
fn check_mounts(parts: &[Part]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut uuids = std::collections::HashSet::new();
    for p in parts {
        let Some(mp) = &p.mount else { continue };
        if !seen.insert(mp.clone()) {
            return Err(invalid(
                "cosi-build-duplicate-mount",
                format!("two partitions are mounted at {mp}"),
            ));
        }
        let Some(fs) = &p.fs else {
            return Err(invalid(
                "cosi-build-unknown-filesystem",
                format!(
                    "partition {} is mounted at {mp} but holds no filesystem this builder recognises (ext2/3/4, xfs, btrfs, vfat)",
                    p.gpt.number
                ),
            ));
        };
        if fs.fs_type == "swap" {
            return Err(invalid(
                "cosi-build-swap-mounted",
                format!(
                    "partition {} is swap and cannot be mounted at {mp}",
                    p.gpt.number
                ),
            ));
        }
        if !uuids.insert(fs.uuid.to_ascii_lowercase()) {
            return Err(invalid(
                "cosi-build-duplicate-fs-uuid",
                format!(
                    "filesystem UUID {} appears twice in the disk image",
                    fs.uuid
                ),
            ));
        }
    }
    if !seen.contains("/") {
        return Err(invalid(
            "cosi-build-no-root-mount",
            "no partition is mounted at / (pass --mount PARTNUM_OR_LABEL=/)".into(),
        ));
    }
    Ok(())
}

fn reader_for(image: &Path, p: &Part) -> Result<Box<dyn FsReader>> {
    let fs =
        p.fs.as_ref()
            .with_context(|| format!("partition {} has no filesystem", p.gpt.number))?;
    Ok(match fs.fs_type.as_str() {
        "ext2" | "ext3" | "ext4" => Box::new(rootfs::ExtReader::new(image, p.gpt.offset())?),
        t @ ("xfs" | "btrfs") => Box::new(rootfs::LoopMountReader::new(
            image,
            p.gpt.offset(),
            p.gpt.size(),
            t,
        )?),
        t => bail!("cannot read files from a {t} filesystem"),
    })
}

/// The root filesystem's partition types (Discoverable Partitions Specification).
const ROOT_TYPES: &[&str] = &[
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", // root x86-64
    "b921b045-1df0-41c3-af44-4c6f280d3fae", // root arm64
];

/// Find the root filesystem (the one with `/etc/os-release`) and apply its fstab.
fn mounts_from_fstab(image: &Path, parts: &mut [Part]) -> Result<()> {
    let mut order: Vec<usize> = (0..parts.len())
        .filter(|&i| {
            parts[i].fs.as_ref().is_some_and(|f| {
                matches!(
                    f.fs_type.as_str(),
                    "ext2" | "ext3" | "ext4" | "xfs" | "btrfs"
                )
            })
        })
        .collect();
    order.sort_by_key(|&i| !ROOT_TYPES.contains(&parts[i].gpt.type_guid.to_string().as_str()));
    let mut root = None;
    let mut skipped = Vec::new();
    for i in order {
        // A candidate that cannot be read (an XFS data partition without root, say) is
        // skipped: the root may be the next one.
        let probe = |r: &dyn FsReader| -> Result<Option<Option<Vec<u8>>>> {
            let has_os_release = r.read_file("/etc/os-release")?.is_some()
                || r.read_file("/usr/lib/os-release")?.is_some();
            Ok(if has_os_release {
                Some(r.read_file("/etc/fstab")?)
            } else {
                None
            })
        };
        match reader_for(image, &parts[i]).and_then(|r| probe(r.as_ref())) {
            Ok(Some(fstab)) => {
                root = Some((i, fstab));
                break;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(
                    partition = parts[i].gpt.number,
                    "skipping root candidate: {e:#}"
                );
                skipped.push(format!("partition {}: {e:#}", parts[i].gpt.number));
            }
        }
    }
    let Some((root_idx, fstab_text)) = root else {
        let mut msg = "no --mount given and no partition holds /etc/os-release; pass --mount PARTNUM_OR_LABEL=/".to_string();
        if !skipped.is_empty() {
            msg.push_str(&format!(" (could not read: {})", skipped.join("; ")));
        }
        return Err(invalid("cosi-build-no-root-mount", msg));
    };
    parts[root_idx].mount = Some("/".into());
    let Some(text) = fstab_text else {
        tracing::warn!("the root filesystem has no /etc/fstab; only / is mounted");
        return Ok(());
    };
    let text = String::from_utf8_lossy(&text);
    for e in fstab::parse(&text) {
        if !e.mount_point.starts_with('/') || e.fs_type == "swap" {
            continue;
        }
        let Some(dref) = fstab::device_ref(&e.spec) else {
            continue; // tmpfs, proc, network filesystems
        };
        let mp = normalize_mount(&e.mount_point);
        let found = parts.iter().position(|p| {
            let fs = p.fs.as_ref();
            match &dref {
                fstab::DeviceRef::FsUuid(u) => fs.is_some_and(|f| f.uuid.eq_ignore_ascii_case(u)),
                fstab::DeviceRef::FsLabel(l) => fs.is_some_and(|f| f.label == *l),
                fstab::DeviceRef::PartUuid(u) => p.gpt.uuid.to_string().eq_ignore_ascii_case(u),
                fstab::DeviceRef::PartLabel(l) => p.gpt.label == *l,
                fstab::DeviceRef::Path(_) => false,
            }
        });
        match found {
            Some(i) if i == root_idx && mp == "/" => {}
            Some(i) if i == root_idx => {
                bail!("the image's fstab mounts the root filesystem again at {mp}")
            }
            Some(i) if mp == "/" => bail!(
                "the image's fstab mounts partition {} at /, but os-release is on partition {}; pass --mount to choose",
                parts[i].gpt.number,
                parts[root_idx].gpt.number
            ),
            Some(i) => {
                if let Some(old) = &parts[i].mount {
                    bail!(
                        "the image's fstab mounts partition {} at both {old} and {mp}",
                        parts[i].gpt.number
                    );
                }
                parts[i].mount = Some(mp);
            }
            None => tracing::warn!(
                spec = %e.spec,
                mount = %mp,
                "fstab entry matches no partition of the disk image; skipped"
            ),
        }
    }
    Ok(())
}

/// File access to the OS spread over its mounted filesystems.
struct Readers<'a> {
    image: &'a Path,
    mounted: Vec<&'a Part>,
    open: std::cell::RefCell<std::collections::HashMap<u32, std::rc::Rc<dyn FsReader>>>,
}

impl<'a> Readers<'a> {
    fn new(image: &'a Path, parts: &'a [Part]) -> Self {
        let mut mounted: Vec<&Part> = parts.iter().filter(|p| p.mount.is_some()).collect();
        // Longest mount point first: /var wins over / for /var/lib/dpkg/status.
        mounted.sort_by_key(|p| std::cmp::Reverse(p.mount.as_ref().map_or(0, |m| m.len())));
        Self {
            image,
            mounted,
            open: Default::default(),
        }
    }

    /// Read an absolute path of the OS from the filesystem mounted there.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        for p in &self.mounted {
            let mp = p.mount.as_deref().unwrap_or("/");
            let rel = if mp == "/" {
                Some(path)
            } else {
                path.strip_prefix(mp).filter(|r| r.starts_with('/'))
            };
            let Some(rel) = rel else { continue };
            if p.fs.as_ref().is_some_and(|f| f.fs_type == "vfat") {
                return Ok(None);
            }
            let reader = {
                let mut open = self.open.borrow_mut();
                if let Some(r) = open.get(&p.gpt.number) {
                    r.clone()
                } else {
                    let r: std::rc::Rc<dyn FsReader> =
                        std::rc::Rc::from(reader_for(self.image, p)?);
                    open.insert(p.gpt.number, r.clone());
                    r
                }
            };
            return reader
                .read_file(rel)
                .with_context(|| format!("reading {path} from partition {}", p.gpt.number));
        }
        Ok(None)
    }
}

fn read_packages(readers: &Readers) -> Result<Vec<packages::Package>> {
    if let Some(status) = readers.read("/var/lib/dpkg/status")? {
        return packages::parse_dpkg_status(&String::from_utf8_lossy(&status))
            .context("parsing /var/lib/dpkg/status");
    }
    for db in [
        "/var/lib/rpm/rpmdb.sqlite",
        "/usr/lib/sysimage/rpm/rpmdb.sqlite",
    ] {
        if let Some(bytes) = readers.read(db)? {
            let tmp = tempfile::Builder::new()
                .prefix("trident-rpmdb.")
                .tempdir()
                .context("creating a temporary directory")?;
            let p = tmp.path().join("rpmdb.sqlite");
            std::fs::write(&p, bytes).with_context(|| format!("copying {db} out of the image"))?;
            return packages::read_rpmdb_sqlite(&p).with_context(|| format!("reading {db}"));
        }
    }
    tracing::warn!(
        "no package database (dpkg status or rpmdb.sqlite) in the image; osPackages is empty"
    );
    Ok(Vec::new())
}

/// Give every partition a unique `images/<name>.rawzst`.
fn name_images(parts: &mut [Part]) {
    let mut used = std::collections::HashSet::new();
    used.insert("primary-gpt".to_string());
    for p in parts.iter_mut() {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect::<String>()
                .trim_matches('-')
                .to_string()
        };
        let mut base = clean(&p.gpt.label);
        if base.is_empty() {
            base = match p.mount.as_deref() {
                Some("/") => "root".into(),
                Some(m) => clean(m),
                None => String::new(),
            };
        }
        if base.is_empty() {
            base = format!("part{}", p.gpt.number);
        }
        base.truncate(80);
        let mut name = base.clone();
        let mut k = 2;
        while !used.insert(name.clone()) {
            name = format!("{base}-{k}");
            k += 1;
        }
        p.image_path = format!("images/{name}.rawzst");
    }
}

/// Hashes, counts and remembers the first bytes of what passes through.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha384,
    len: u64,
    head: Vec<u8>,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        if self.head.len() < 32 {
            let take = (32 - self.head.len()).min(n);
            self.head.extend_from_slice(&buf[..take]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Compress `[offset, offset+len)` of `image` into a new tar member `name`.
/// Returns the image file record and the frame's window log.
#[allow(clippy::too_many_arguments)]
fn compress_region(
    image: &File,
    offset: u64,
    len: u64,
    tar: &mut tarwrite::TarWriter,
    name: &str,
    level: i32,
    threads: u32,
    progress: &mut dyn FnMut(u64),
) -> Result<(ImageFile, u32)> {
    let member = tar.begin(name)?;
    let hw = HashingWriter {
        inner: member,
        hasher: Sha384::new(),
        len: 0,
        head: Vec::new(),
    };
    let mut enc =
        zstd::stream::write::Encoder::new(hw, level).context("creating a zstd encoder")?;
    if threads > 1 {
        enc.multithread(threads)
            .context("enabling zstd worker threads")?;
    }
    enc.include_checksum(true).context("configuring zstd")?;
    enc.include_contentsize(true).context("configuring zstd")?;
    enc.set_pledged_src_size(Some(len))
        .context("configuring zstd")?;
    // A reader thread keeps the next chunks coming while this thread feeds the
    // encoder (whose workers compress) and writes; at most READ_AHEAD chunks in flight.
    let (tx, rx) = crossbeam_channel::bounded::<Result<Vec<u8>>>(READ_AHEAD);
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || {
            let mut pos = 0u64;
            while pos < len {
                let n = (len - pos).min(CHUNK as u64) as usize;
                let mut buf = vec![0u8; n];
                let r = image
                    .read_exact_at(&mut buf, offset + pos)
                    .with_context(|| format!("reading the disk image at offset {}", offset + pos))
                    .map(|_| buf);
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    return; // the writer stopped, or there is nothing more to read
                }
                pos += n as u64;
            }
        });
        // Owned by this closure: dropped on an early return, which unblocks the reader
        // before the scope joins it.
        let rx = rx;
        let mut got = 0u64;
        while got < len {
            let buf = rx.recv().context("the disk image reader stopped early")??;
            enc.write_all(&buf).context("compressing")?;
            got += buf.len() as u64;
            progress(buf.len() as u64);
        }
        Ok(())
    })?;
    let hw = enc.finish().context("finishing the zstd frame")?;
    let window_log =
        frame_window_log(&hw.head).context("reading back the zstd frame header just written")?;
    let compressed = hw.inner.finish()?;
    debug_assert_eq!(compressed, hw.len);
    Ok((
        ImageFile {
            path: name.to_string(),
            compressed_size: hw.len,
            uncompressed_size: len,
            sha384: Some(hex::encode(hw.hasher.finalize())),
        },
        window_log,
    ))
}

/// The window log a decoder needs for the zstd frame starting with `head`
/// (`log2` of the window size, rounded up; at least 10).
pub fn frame_window_log(head: &[u8]) -> Result<u32> {
    if head.len() < 6 || head[..4] != [0x28, 0xB5, 0x2F, 0xFD] {
        bail!("not a zstd frame");
    }
    let fhd = head[4];
    let single_segment = fhd & 0x20 != 0;
    if !single_segment {
        let wd = head[5];
        let exp = u32::from(wd >> 3);
        let mantissa = wd & 7;
        return Ok(10 + exp + u32::from(mantissa > 0));
    }
    let dict_len = [0usize, 1, 2, 4][(fhd & 3) as usize];
    let fcs_len = [1usize, 2, 4, 8][(fhd >> 6) as usize];
    let at = 5 + dict_len;
    let b = head
        .get(at..at + fcs_len)
        .context("zstd frame header truncated")?;
    let mut fcs = 0u64;
    for (i, &x) in b.iter().enumerate() {
        fcs |= u64::from(x) << (8 * i);
    }
    if fcs_len == 2 {
        fcs += 256;
    }
    let log = if fcs <= 1 {
        0
    } else {
        64 - (fcs - 1).leading_zeros()
    };
    Ok(log.max(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_image_read_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        std::fs::write(&img, vec![5u8; 10 << 20]).unwrap();
        let image = File::open(&img).unwrap();
        let mut tar =
            tarwrite::TarWriter::new(File::create(dir.path().join("t")).unwrap(), 0).unwrap();
        // Ask for more than the file has: the reader thread fails after two chunks.
        let err = compress_region(&image, 0, 40 << 20, &mut tar, "images/x", 3, 2, &mut |_| {})
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("reading the disk image at offset 8388608"),
            "{err:#}"
        );
        // A region that fits compresses to a frame that decodes to the same bytes.
        let mut tar =
            tarwrite::TarWriter::new(File::create(dir.path().join("u")).unwrap(), 0).unwrap();
        let mut seen = 0;
        let (f, _) = compress_region(
            &image,
            1 << 20,
            9 << 20,
            &mut tar,
            "images/y",
            3,
            1,
            &mut |n| seen += n,
        )
        .unwrap();
        assert_eq!(seen, 9 << 20);
        assert_eq!(f.uncompressed_size, 9 << 20);
        tar.finish().unwrap();
        let raw = std::fs::read(dir.path().join("u")).unwrap();
        let data = &raw[512..512 + f.compressed_size as usize];
        assert_eq!(Some(hex::encode(Sha384::digest(data))), f.sha384);
        assert_eq!(zstd::decode_all(data).unwrap(), vec![5u8; 9 << 20]);
    }

    #[test]
    fn selectors_and_mount_args() {
        assert_eq!(
            parse_mount_arg("2=/").unwrap(),
            (PartSelector::Number(2), "/".into())
        );
        assert_eq!(
            parse_mount_arg("esp=/boot/efi/").unwrap(),
            (PartSelector::Label("esp".into()), "/boot/efi".into())
        );
        assert!(parse_mount_arg("2").is_err());
        assert!(parse_mount_arg("2=boot").is_err());
        assert!(parse_mount_arg("0=/").is_err());
        assert!(parse_mount_arg("=/").is_err());
    }

    #[test]
    fn window_log_from_real_frames() {
        for (size, level, mt) in [
            (100usize, 3, 0u32),
            (5000, 3, 0),
            (3 << 20, 3, 0),
            (3 << 20, 19, 0),
            (20 << 20, 3, 2),
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let mut enc = zstd::stream::write::Encoder::new(Vec::new(), level).unwrap();
            if mt > 0 {
                enc.multithread(mt).unwrap();
            }
            enc.include_contentsize(true).unwrap();
            enc.set_pledged_src_size(Some(size as u64)).unwrap();
            enc.write_all(&data).unwrap();
            let out = enc.finish().unwrap();
            let wlog = frame_window_log(&out).unwrap();
            // The decoder must accept the frame with exactly this window log limit,
            // and a smaller limit must be too small (the bound is tight) unless at
            // the minimum.
            let dec = |max: u32| {
                let mut d = zstd::stream::read::Decoder::new(&out[..]).unwrap();
                d.window_log_max(max).unwrap();
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut d, &mut v).map(|_| v)
            };
            assert_eq!(dec(wlog).unwrap(), data, "size {size} level {level}");
            if wlog > 10 {
                assert!(
                    dec(wlog - 1).is_err(),
                    "size {size}: window log {wlog} not tight"
                );
            }
        }
        assert!(frame_window_log(b"not zstd").is_err());
    }

    fn part(n: u32, name: &str, mount: Option<&str>) -> Part {
        Part {
            gpt: ExistingPartition {
                number: n,
                type_guid: PartitionType::Esp.guid(),
                uuid: uuid::Uuid::nil(),
                label: name.into(),
                first_lba: 0,
                last_lba: 0,
                attributes: 0,
                sector_size: 512,
            },
            fs: Some(FsInfo {
                fs_type: "ext4".into(),
                uuid: format!("uuid-{n}"),
                label: String::new(),
            }),
            mount: mount.map(str::to_string),
            image_path: String::new(),
        }
    }

    #[test]
    fn partition_table_in_disk_order_with_typed_errors() {
        use crate::storage::gpt::tests::{make_gpt, mem_reader, root_and_esp_image, LINUX};
        let read = |d: &[u8]| read_partition_table("img", d.len() as u64, &mut mem_reader(d));
        let code = |e: &anyhow::Error| crate::error::find_trident_error(e).unwrap().code;

        let d = root_and_esp_image();
        let (t, primary_len) = read(&d).unwrap();
        assert_eq!(primary_len, 34 * 512);
        let order: Vec<_> = t.partitions.iter().map(|p| p.number).collect();
        assert_eq!(order, [2, 1]);

        let d4k = make_gpt(
            4096,
            256,
            &[(LINUX, "aaaaaaaa-0000-0000-0000-000000000002", "r", 10, 20)],
        );
        let (t, primary_len) = read(&d4k).unwrap();
        assert_eq!((t.sector_size, primary_len), (4096, 6 * 4096));

        let e = read(&vec![0u8; 1 << 20]).unwrap_err();
        assert_eq!(code(&e), "cosi-build-not-gpt");
        assert!(format!("{e:#}").contains("no valid GPT"), "{e:#}");

        let mut bad = d.clone();
        bad[512 + 40] ^= 1;
        let e = read(&bad).unwrap_err();
        assert_eq!(code(&e), "cosi-build-not-gpt");
        assert!(format!("{e:#}").contains("header CRC32"), "{e:#}");

        let mut odd = d.clone();
        odd.extend_from_slice(&[0u8; 100]);
        let e = read(&odd).unwrap_err();
        assert_eq!(code(&e), "cosi-build-not-gpt");
        assert!(format!("{e:#}").contains("not a multiple"), "{e:#}");

        let overlap = make_gpt(
            512,
            4096,
            &[
                (LINUX, "aaaaaaaa-0000-0000-0000-000000000001", "a", 100, 200),
                (LINUX, "aaaaaaaa-0000-0000-0000-000000000002", "b", 200, 300),
            ],
        );
        assert!(format!("{:#}", read(&overlap).unwrap_err()).contains("overlap"));
    }

    #[test]
    fn image_names_are_unique_and_clean() {
        let mut parts = vec![
            part(1, "EFI System", Some("/boot/efi")),
            part(2, "", Some("/")),
            part(3, "", None),
            part(4, "root", None),
            part(5, "", Some("/var/lib")),
            part(6, "root", None),
        ];
        name_images(&mut parts);
        let names: Vec<_> = parts.iter().map(|p| p.image_path.as_str()).collect();
        assert_eq!(
            names,
            [
                "images/EFI-System.rawzst",
                "images/root.rawzst",
                "images/part3.rawzst",
                "images/root-2.rawzst",
                "images/var-lib.rawzst",
                "images/root-3.rawzst"
            ]
        );
    }

    #[test]
    fn mount_checks() {
        let code = |parts: &[Part]| {
            crate::error::find_trident_error(&check_mounts(parts).unwrap_err())
                .unwrap()
                .code
        };
        assert!(check_mounts(&[part(1, "", Some("/")), part(2, "", Some("/var"))]).is_ok());
        assert_eq!(
            code(&[part(1, "", Some("/var"))]),
            "cosi-build-no-root-mount"
        );
        assert_eq!(
            code(&[part(1, "", Some("/")), part(2, "", Some("/"))]),
            "cosi-build-duplicate-mount"
        );
        let mut dup = part(2, "", Some("/var"));
        dup.fs.as_mut().unwrap().uuid = "UUID-1".into();
        assert_eq!(
            code(&[part(1, "", Some("/")), dup]),
            "cosi-build-duplicate-fs-uuid"
        );
        let mut nofs = part(2, "", Some("/var"));
        nofs.fs = None;
        assert_eq!(
            code(&[part(1, "", Some("/")), nofs]),
            "cosi-build-unknown-filesystem"
        );
    }

    #[test]
    fn padded_metadata_fits_reservation() {
        let md = CosiMetadata {
            version: MetadataVersion::V1_2,
            id: Some("x".into()),
            os_arch: OsArch::X86_64,
            os_release: "ID=x\n".into(),
            images: vec![],
            disk: Some(Disk {
                size: 1,
                kind: "gpt".into(),
                lba_size: 512,
                gpt_regions: vec![GptRegion {
                    image: ImageFile {
                        path: "images/primary-gpt.rawzst".into(),
                        compressed_size: 0,
                        uncompressed_size: 0,
                        sha384: Some(String::new()),
                    },
                    kind: RegionType::PrimaryGpt,
                    number: None,
                    start_lba: None,
                }],
            }),
            os_packages: Some(vec![]),
            bootloader: Some(crate::cosi::metadata::Bootloader::Grub),
            compression: Some(Compression { max_window_log: 0 }),
        };
        let cap = max_json_len(&md);
        let mut real = md.clone();
        for f in real.image_files_mut() {
            f.compressed_size = 123;
            f.sha384 = Some("a".repeat(96));
        }
        let json = to_padded_json(&real, cap).unwrap();
        assert_eq!(json.len(), cap);
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["disk"]["gptRegions"][0]["image"]["compressedSize"], 123);
        assert_eq!(v["bootloader"]["systemdBoot"], serde_json::Value::Null);
        assert!(to_padded_json(&real, 10).is_none());
    }
}
