//! The EFI System Partition, edited in user space.
//!
//! Two kinds of access share the [`EspFs`] trait:
//! - [`FatEsp`]: the FAT filesystem read and written with the `fatfs` crate, on a block
//!   device or on a byte range of an image file ([`Region`]). No mount, no root, works on
//!   kernels without vfat. Use it on an ESP that is **not mounted** (install, images);
//!   writing under a mounted vfat would corrupt it.
//! - [`DirEsp`]: an ESP the running kernel has mounted (`/boot/efi`, `/efi`).
//!
//! Paths are `/`-separated and relative to the ESP root (a leading `/` is accepted);
//! FAT compares names case-insensitively.
//!
//! # Crash safety
//! FAT has no journal and no atomic rename-over, and a rename in `fatfs` briefly leaves
//! two directory entries sharing one cluster chain (deleting either frees the other's
//! data). So [`FatEsp::write_file`] replaces a file without renaming, in steps that
//! leave a complete copy of the old or the new content at every point:
//! 1. write `NAME.trident-new`, fsync;
//! 2. create the marker `NAME.trident-ok` (the new copy is complete), fsync;
//! 3. delete `NAME`, 4. write `NAME` again from the new content, fsync;
//! 5. delete the marker, 6. delete `NAME.trident-new`, fsync after each.
//!
//! [`FatEsp::open`] finishes what was interrupted: with a marker, steps 3-6 are
//! redone from `NAME.trident-new`; without one, `NAME.trident-new` is deleted. The cost
//! is writing each file twice and room for two copies. A unit test cuts the power (fails
//! every write from the N-th on) at every point of a replacement and checks that
//! reopening yields the old or the new content, never anything else. What remains
//! unprotected is the FAT metadata itself: a sector torn by a power cut, or a crash
//! between the steps of one `fatfs` operation, can leave lost or cross-linked clusters
//! that `fsck.vfat` repairs. Boot entries are written after the files they reference, so
//! a torn update leaves at worst an entry missing, never one that points at half a
//! kernel.

use anyhow::{ensure, Context, Result};
use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

/// Full copy of the new content of `NAME`, written first.
const NEW_SUFFIX: &str = ".trident-new";
/// Marker: `NAME.trident-new` is complete and must end up as `NAME`.
const OK_SUFFIX: &str = ".trident-ok";

/// A `Read + Write + Seek` view of `len` bytes of a file starting at `offset`: a
/// partition inside a disk image, or a whole block device.
#[derive(Debug)]
pub struct Region {
    file: File,
    offset: u64,
    len: u64,
    pos: u64,
    /// Read cache: region offset of `cache[0]`. fatfs reads the FAT a few bytes at a
    /// time; without this, counting free clusters costs two syscalls per cluster.
    cache_start: u64,
    cache: Vec<u8>,
    /// Fault injection for tests: writes left before every write fails (a power cut).
    writes_left: Option<u64>,
}

/// Size of the read cache.
const CACHE_LEN: u64 = 64 * 1024;

impl Region {
    /// `len = None` means "to the end of the file or device".
    pub fn new(mut file: File, offset: u64, len: Option<u64>) -> io::Result<Self> {
        let size = file.seek(SeekFrom::End(0))?;
        let len = match len {
            Some(l) => l,
            None => size.saturating_sub(offset),
        };
        if offset.checked_add(len).map_or(true, |end| end > size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("range {offset}+{len} lies outside the {size}-byte file"),
            ));
        }
        Ok(Self {
            file,
            offset,
            len,
            pos: 0,
            cache_start: 0,
            cache: Vec::new(),
            writes_left: None,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn remaining(&self, want: usize) -> usize {
        (self.len.saturating_sub(self.pos)).min(want as u64) as usize
    }
}

impl Read for Region {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.remaining(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let cached =
            self.pos >= self.cache_start && self.pos < self.cache_start + self.cache.len() as u64;
        if !cached {
            let start = self.pos - self.pos % CACHE_LEN;
            let want = (self.len - start).min(CACHE_LEN) as usize;
            self.cache.resize(want, 0);
            self.file.seek(SeekFrom::Start(self.offset + start))?;
            self.file.read_exact(&mut self.cache)?;
            self.cache_start = start;
        }
        let at = (self.pos - self.cache_start) as usize;
        let got = n.min(self.cache.len() - at);
        buf[..got].copy_from_slice(&self.cache[at..at + got]);
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Region {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(left) = self.writes_left.as_mut() {
            if *left == 0 {
                return Err(io::Error::other("injected power cut"));
            }
            *left -= 1;
        }
        let n = self.remaining(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the region",
            ));
        }
        self.file.seek(SeekFrom::Start(self.offset + self.pos))?;
        let put = self.file.write(&buf[..n])?;
        // Keep the read cache coherent: patch the overlapping bytes.
        let (w_start, w_end) = (self.pos, self.pos + put as u64);
        let c_end = self.cache_start + self.cache.len() as u64;
        if w_start < c_end && w_end > self.cache_start {
            let from = w_start.max(self.cache_start);
            let to = w_end.min(c_end);
            let src = &buf[(from - w_start) as usize..(to - w_start) as usize];
            let dst = (from - self.cache_start) as usize;
            self.cache[dst..dst + src.len()].copy_from_slice(src);
        }
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl Seek for Region {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the region",
            )),
        }
    }
}

/// Where an ESP's FAT filesystem lives: a device or image file and a byte range in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatLocation {
    pub path: PathBuf,
    pub offset: u64,
    /// `None`: to the end of the file or device.
    pub len: Option<u64>,
}

impl FatLocation {
    /// A whole device or file.
    pub fn whole(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            offset: 0,
            len: None,
        }
    }

    fn open_region(&self, writable: bool) -> Result<Region> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        Region::new(file, self.offset, self.len).with_context(|| {
            format!(
                "limiting {} to offset {} length {:?}",
                self.path.display(),
                self.offset,
                self.len
            )
        })
    }

    fn describe(&self) -> String {
        if self.offset == 0 && self.len.is_none() {
            self.path.display().to_string()
        } else {
            format!("{}@{}", self.path.display(), self.offset)
        }
    }
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspEntry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
}

/// File operations on an ESP, whichever way it is reached.
pub trait EspFs {
    /// Human-readable location for logs and errors.
    fn describe(&self) -> String;
    fn read_file(&self, path: &str) -> Result<Vec<u8>>;
    /// Create or replace a file (parent directories are created), crash-safely as far
    /// as the filesystem allows.
    fn write_file(&self, path: &str, data: &[u8]) -> Result<()>;
    /// Entries of a directory, sorted by name, without `.` and `..`.
    fn list(&self, dir: &str) -> Result<Vec<EspEntry>>;
    fn exists(&self, path: &str) -> Result<bool>;
    /// Remove a file or an empty directory; a missing path is not an error.
    fn remove(&self, path: &str) -> Result<()>;
    fn create_dir_all(&self, dir: &str) -> Result<()>;
    /// Push everything written so far to stable storage.
    fn sync(&self) -> Result<()>;
}

/// Split an ESP path into components, refusing `..` and empty names.
pub fn components(path: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    for c in &parts {
        ensure!(*c != "..", "ESP path {path:?} must not contain '..'");
        ensure!(
            !c.contains('\\') && !c.contains('\0'),
            "ESP path {path:?} must use '/' separators"
        );
    }
    Ok(parts)
}

fn split_parent(path: &str) -> Result<(String, String)> {
    let mut parts = components(path)?;
    let name = parts
        .pop()
        .with_context(|| format!("ESP path {path:?} names no file"))?;
    Ok((parts.join("/"), name.to_string()))
}

/// An unmounted FAT ESP, edited with `fatfs`.
pub struct FatEsp {
    fs: FileSystem<Region>,
    sync_handle: File,
    location: FatLocation,
    read_only: bool,
}

impl std::fmt::Debug for FatEsp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FatEsp")
            .field("location", &self.location)
            .finish()
    }
}

/// Make a FAT32 filesystem labelled `label` (at most 11 characters) at `loc`.
/// FAT32 needs at least 65525 clusters: about 33 MiB with 512-byte clusters.
pub fn format_fat32(loc: &FatLocation, label: &str) -> Result<()> {
    ensure!(
        label.len() <= 11 && label.is_ascii(),
        "FAT label {label:?} must be at most 11 ASCII characters"
    );
    let mut label11 = [b' '; 11];
    for (dst, src) in label11.iter_mut().zip(label.to_ascii_uppercase().bytes()) {
        *dst = src;
    }
    let region = loc.open_region(true)?;
    ensure!(
        region.len() >= 34 * 1024 * 1024,
        "{} is {} bytes; a FAT32 ESP needs at least 34 MiB",
        loc.describe(),
        region.len()
    );
    tracing::info!(location = %loc.describe(), label, "formatting FAT32");
    let mut region = region;
    fatfs::format_volume(
        &mut region,
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .volume_label(label11),
    )
    .with_context(|| format!("formatting {} as FAT32", loc.describe()))?;
    region
        .flush()
        .with_context(|| format!("syncing {}", loc.describe()))?;
    // Mount once to record the free cluster count in FSInfo (fsck.fat expects it).
    FatEsp::open(loc)?.close()
}

impl FatEsp {
    /// Open the FAT filesystem at `loc` and finish any interrupted file replacement.
    pub fn open(loc: &FatLocation) -> Result<Self> {
        Self::open_mode(loc, false)
    }

    /// Open without ever writing to `loc` (the device or file is opened read-only):
    /// for the image's ESP that [`copy_tree`] reads from. Writes are refused.
    pub fn open_read_only(loc: &FatLocation) -> Result<Self> {
        Self::open_mode(loc, true)
    }

    fn open_mode(loc: &FatLocation, read_only: bool) -> Result<Self> {
        Self::from_region(loc.open_region(!read_only)?, loc, read_only)
    }

    fn from_region(region: Region, loc: &FatLocation, read_only: bool) -> Result<Self> {
        let sync_handle = region
            .file
            .try_clone()
            .with_context(|| format!("duplicating handle of {}", loc.path.display()))?;
        let fs = FileSystem::new(region, FsOptions::new())
            .with_context(|| format!("reading the FAT filesystem on {}", loc.describe()))?;
        let esp = Self {
            fs,
            sync_handle,
            location: loc.clone(),
            read_only,
        };
        if !read_only {
            // Count free clusters now if FSInfo does not know (fatfs and some mkfs leave
            // it unset), so the count is kept and written back correctly on close.
            esp.fs
                .stats()
                .with_context(|| format!("counting free clusters on {}", loc.describe()))?;
            esp.recover("")
                .with_context(|| format!("recovering interrupted writes on {}", loc.describe()))?;
        }
        Ok(esp)
    }

    fn ensure_writable(&self, path: &str) -> Result<()> {
        ensure!(
            !self.read_only,
            "refusing to change {path:?}: {} is open read-only",
            self.describe()
        );
        Ok(())
    }

    pub fn location(&self) -> &FatLocation {
        &self.location
    }

    pub fn fat_type(&self) -> FatType {
        self.fs.fat_type()
    }

    pub fn volume_label(&self) -> String {
        self.fs.volume_label()
    }

    /// Unmount cleanly (FSInfo, clean flag) and fsync the device.
    pub fn close(self) -> Result<()> {
        let Self {
            fs,
            sync_handle,
            location,
            read_only,
        } = self;
        fs.unmount()
            .with_context(|| format!("unmounting FAT on {}", location.describe()))?;
        if read_only {
            return Ok(());
        }
        sync_handle
            .sync_all()
            .with_context(|| format!("syncing {}", location.describe()))
    }

    fn dir(&self, path: &str) -> Result<fatfs::Dir<'_, Region>> {
        let parts = components(path)?;
        let root = self.fs.root_dir();
        if parts.is_empty() {
            return Ok(root);
        }
        root.open_dir(&parts.join("/"))
            .with_context(|| format!("opening directory {path:?} on {}", self.describe()))
    }

    fn find(&self, dir: &str, name: &str) -> Result<Option<EspEntry>> {
        Ok(self
            .list(dir)?
            .into_iter()
            .find(|e| e.name.eq_ignore_ascii_case(name)))
    }

    /// Walk the tree and finish or undo interrupted replacements: with a
    /// `NAME.trident-ok` marker, `NAME.trident-new` is complete and is copied to `NAME`;
    /// without one it is incomplete and deleted.
    fn recover(&self, dir: &str) -> Result<()> {
        let entries = self.list(dir)?;
        for e in &entries {
            if e.is_dir {
                self.recover(&join(dir, &e.name))?;
            } else if let Some(target) = e.name.strip_suffix(OK_SUFFIX) {
                self.finish_replacement(dir, target, None)?;
            }
        }
        for e in self.list(dir)? {
            if !e.is_dir && e.name.ends_with(NEW_SUFFIX) {
                tracing::warn!(file = %join(dir, &e.name), "removing a partial file left by an interrupted write");
                self.dir(dir)?.remove(&e.name)?;
                self.sync()?;
            }
        }
        Ok(())
    }

    /// Steps 3-6 of a replacement (see the module documentation); also what recovery
    /// runs when it finds the marker.
    /// `data` is the content of `NAME.trident-new` when the caller has it at hand.
    fn finish_replacement(&self, dir_path: &str, name: &str, data: Option<&[u8]>) -> Result<()> {
        let dir = self.dir(dir_path)?;
        let new = format!("{name}{NEW_SUFFIX}");
        let ok = format!("{name}{OK_SUFFIX}");
        if self.find(dir_path, &new)?.is_some() {
            let read;
            let data = match data {
                Some(d) => d,
                None => {
                    read = self.read_file(&join(dir_path, &new))?;
                    &read
                }
            };
            if let Some(old) = self.find(dir_path, name)? {
                ensure!(
                    !old.is_dir,
                    "{:?} on {} is a directory",
                    join(dir_path, name),
                    self.describe()
                );
                dir.remove(&old.name)?;
                self.sync()?;
            }
            self.write_new(&dir, name, data)?;
            self.sync()?;
        }
        dir.remove(&ok)?;
        self.sync()?;
        if self.find(dir_path, &new)?.is_some() {
            dir.remove(&new)?;
            self.sync()?;
        }
        Ok(())
    }

    fn write_new(&self, dir: &fatfs::Dir<'_, Region>, name: &str, data: &[u8]) -> io::Result<()> {
        let mut f = dir.create_file(name)?;
        f.truncate()?;
        f.write_all(data)?;
        f.flush()
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

impl EspFs for FatEsp {
    fn describe(&self) -> String {
        format!("FAT ESP {}", self.location.describe())
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let (dir, name) = split_parent(path)?;
        let mut f = self
            .dir(&dir)?
            .open_file(&name)
            .with_context(|| format!("opening {path:?} on {}", self.describe()))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)
            .with_context(|| format!("reading {path:?} on {}", self.describe()))?;
        Ok(buf)
    }

    fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        self.ensure_writable(path)?;
        let (dir_path, name) = split_parent(path)?;
        ensure!(
            !name.ends_with(NEW_SUFFIX) && !name.ends_with(OK_SUFFIX),
            "{path:?}: names ending in {NEW_SUFFIX} or {OK_SUFFIX} are reserved"
        );
        let ctx = || format!("writing {path:?} on {}", self.describe());
        self.create_dir_all(&dir_path).with_context(ctx)?;
        if let Some(existing) = self.find(&dir_path, &name)? {
            ensure!(
                !existing.is_dir,
                "{path:?} on {} is a directory",
                self.describe()
            );
        }
        let dir = self.dir(&dir_path)?;
        let new = format!("{name}{NEW_SUFFIX}");
        let ok = format!("{name}{OK_SUFFIX}");
        if self.find(&dir_path, &ok)?.is_some() {
            // A replacement interrupted since open (an earlier failed call): finish it.
            self.finish_replacement(&dir_path, &name, None)
                .with_context(ctx)?;
        }
        if self.find(&dir_path, &new)?.is_some() {
            dir.remove(&new).with_context(ctx)?;
        }
        // 1. The new content, complete and synced, under a temporary name.
        self.write_new(&dir, &new, data).with_context(ctx)?;
        self.sync().with_context(ctx)?;
        // 2. The marker saying so.
        self.write_new(&dir, &ok, b"").with_context(ctx)?;
        self.sync().with_context(ctx)?;
        // 3-6. Replace NAME by a copy, drop the marker, drop the temporary copy.
        self.finish_replacement(&dir_path, &name, Some(data))
            .with_context(ctx)
    }

    fn list(&self, dir: &str) -> Result<Vec<EspEntry>> {
        let d = self.dir(dir)?;
        let mut out = Vec::new();
        for e in d.iter() {
            let e = e.with_context(|| format!("listing {dir:?} on {}", self.describe()))?;
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            out.push(EspEntry {
                name,
                is_dir: e.is_dir(),
                size: e.len(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn exists(&self, path: &str) -> Result<bool> {
        let parts = components(path)?;
        let Some((name, parents)) = parts.split_last() else {
            return Ok(true);
        };
        let mut dir = String::new();
        for p in parents {
            match self.find(&dir, p)? {
                Some(e) if e.is_dir => dir = join(&dir, &e.name),
                _ => return Ok(false),
            }
        }
        Ok(self.find(&dir, name)?.is_some())
    }

    fn remove(&self, path: &str) -> Result<()> {
        self.ensure_writable(path)?;
        if !self.exists(path)? {
            return Ok(());
        }
        let (dir, name) = split_parent(path)?;
        self.dir(&dir)?
            .remove(&name)
            .with_context(|| format!("removing {path:?} on {}", self.describe()))?;
        self.sync()
    }

    fn create_dir_all(&self, dir: &str) -> Result<()> {
        self.ensure_writable(dir)?;
        let mut d = self.fs.root_dir();
        for c in components(dir)? {
            d = d
                .create_dir(c)
                .with_context(|| format!("creating directory {dir:?} on {}", self.describe()))?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.sync_handle
            .sync_data()
            .with_context(|| format!("syncing {}", self.location.describe()))
    }
}

/// An ESP mounted by the running kernel.
#[derive(Debug, Clone)]
pub struct DirEsp {
    root: PathBuf,
}

impl DirEsp {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, p: &str) -> Result<PathBuf> {
        Ok(components(p)?
            .iter()
            .fold(self.root.clone(), |acc, c| acc.join(c)))
    }
}

impl EspFs for DirEsp {
    fn describe(&self) -> String {
        format!("ESP {}", self.root.display())
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let p = self.path(path)?;
        fs::read(&p).with_context(|| format!("reading {}", p.display()))
    }

    fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let p = self.path(path)?;
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        super::efivar::write_atomic(&p, data)
    }

    fn list(&self, dir: &str) -> Result<Vec<EspEntry>> {
        let p = self.path(dir)?;
        let mut out = Vec::new();
        for e in fs::read_dir(&p).with_context(|| format!("listing {}", p.display()))? {
            let e = e.with_context(|| format!("listing {}", p.display()))?;
            let md = e
                .metadata()
                .with_context(|| format!("inspecting {}", e.path().display()))?;
            out.push(EspEntry {
                name: e.file_name().to_string_lossy().into_owned(),
                is_dir: md.is_dir(),
                size: md.len(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.path(path)?.exists())
    }

    fn remove(&self, path: &str) -> Result<()> {
        let p = self.path(path)?;
        let res = if p.is_dir() {
            fs::remove_dir(&p)
        } else {
            fs::remove_file(&p)
        };
        match res {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }

    fn create_dir_all(&self, dir: &str) -> Result<()> {
        let p = self.path(dir)?;
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))
    }

    fn sync(&self) -> Result<()> {
        nix::unistd::sync();
        Ok(())
    }
}

/// How an ESP is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EspAccess {
    /// Unmounted FAT on a device or image range (install, offline).
    Fat(FatLocation),
    /// Mounted by the running kernel at this directory (updates on a running host).
    Mounted(PathBuf),
}

/// An open ESP; [`OpenEsp::close`] unmounts a FAT one cleanly.
pub enum OpenEsp {
    Fat(Box<FatEsp>),
    Dir(DirEsp),
}

impl OpenEsp {
    pub fn open(access: &EspAccess) -> Result<Self> {
        match access {
            EspAccess::Fat(loc) => Ok(Self::Fat(Box::new(FatEsp::open(loc)?))),
            EspAccess::Mounted(dir) => {
                ensure!(
                    dir.is_dir(),
                    "ESP mount point {} is not a directory",
                    dir.display()
                );
                Ok(Self::Dir(DirEsp::new(dir)))
            }
        }
    }

    pub fn fs(&self) -> &dyn EspFs {
        match self {
            Self::Fat(f) => f.as_ref(),
            Self::Dir(d) => d,
        }
    }

    pub fn close(self) -> Result<()> {
        match self {
            Self::Fat(f) => f.close(),
            Self::Dir(d) => d.sync(),
        }
    }
}

/// What [`copy_tree`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    pub files: usize,
    pub dirs: usize,
    pub bytes: u64,
}

/// Copy the tree under `src_dir` of `src` into `dst_dir` of `dst`, replacing files that
/// exist. Used to populate a new ESP from the image's ESP.
pub fn copy_tree(
    src: &dyn EspFs,
    src_dir: &str,
    dst: &dyn EspFs,
    dst_dir: &str,
) -> Result<CopyStats> {
    let mut stats = CopyStats::default();
    dst.create_dir_all(dst_dir)?;
    copy_rec(src, src_dir, dst, dst_dir, &mut stats)
        .with_context(|| format!("copying {} to {}", src.describe(), dst.describe()))?;
    Ok(stats)
}

fn copy_rec(
    src: &dyn EspFs,
    src_dir: &str,
    dst: &dyn EspFs,
    dst_dir: &str,
    stats: &mut CopyStats,
) -> Result<()> {
    for e in src.list(src_dir)? {
        let s = join(src_dir, &e.name);
        let d = join(dst_dir, &e.name);
        if e.is_dir {
            dst.create_dir_all(&d)?;
            stats.dirs += 1;
            copy_rec(src, &s, dst, &d, stats)?;
        } else {
            let data = src.read_file(&s)?;
            dst.write_file(&d, &data)?;
            stats.files += 1;
            stats.bytes += data.len() as u64;
        }
    }
    Ok(())
}

/// Populate the ESP at `dst` with everything in the FAT filesystem at `src` (the
/// image's ESP, opened read-only), then close both.
pub fn copy_tree_from_fat(src: &FatLocation, dst: &FatLocation) -> Result<CopyStats> {
    let s = FatEsp::open_read_only(src).context("opening the source ESP")?;
    let d = FatEsp::open(dst).context("opening the target ESP")?;
    let stats = copy_tree(&s, "", &d, "")?;
    d.close()?;
    s.close()?;
    tracing::info!(
        files = stats.files,
        bytes = stats.bytes,
        "populated the ESP"
    );
    Ok(stats)
}

/// Install `loader` (systemd-boot) as the UEFI removable-media fallback,
/// `EFI/BOOT/BOOTX64.EFI`, so a firmware with no boot entry still finds it.
pub fn install_fallback(esp: &dyn EspFs, loader: &[u8]) -> Result<()> {
    ensure!(
        loader.len() >= 2 && &loader[..2] == b"MZ",
        "the boot loader to install as EFI/BOOT/BOOTX64.EFI is not a PE image"
    );
    esp.write_file("EFI/BOOT/BOOTX64.EFI", loader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_refuse_dotdot_and_backslash() {
        assert_eq!(
            components("/loader//entries/./a.conf").unwrap(),
            vec!["loader", "entries", "a.conf"]
        );
        assert!(components("loader/../x").is_err());
        assert!(components(r"EFI\BOOT").is_err());
        assert!(split_parent("/").is_err());
    }

    #[test]
    fn region_limits_reads_writes_and_seeks() {
        let mut tmp = tempfile::tempfile().unwrap();
        tmp.write_all(b"0123456789").unwrap();
        let mut r = Region::new(tmp, 2, Some(5)).unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "23456");
        r.seek(SeekFrom::Start(3)).unwrap();
        assert!(r.write_all(b"abc").is_err(), "write past the end must fail");
        r.seek(SeekFrom::End(-1)).unwrap();
        let mut b = [0u8; 4];
        assert_eq!(r.read(&mut b).unwrap(), 1);
        assert!(r.seek(SeekFrom::Current(-10)).is_err());
        let f = tempfile::tempfile().unwrap();
        assert!(Region::new(f, 1, Some(1)).is_err(), "range past the end");
    }

    /// Replace (or create) `loader/entries/a.conf`, cutting the power after every
    /// possible number of device writes; reopening must show the old or the new content.
    fn power_cut_everywhere(old: Option<&[u8]>) {
        // tmpfs when available: hundreds of fsyncs per run.
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm").unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let img = dir.path().join("fat.img");
        // Small FAT12 keeps each of the hundreds of runs cheap; the protocol is the same.
        File::create(&img).unwrap().set_len(1 << 20).unwrap();
        let loc = FatLocation::whole(&img);
        let mut region = loc.open_region(true).unwrap();
        fatfs::format_volume(
            &mut region,
            FormatVolumeOptions::new().fat_type(FatType::Fat12),
        )
        .unwrap();
        let esp = FatEsp::open(&loc).unwrap();
        esp.write_file("loader/entries/b.conf", b"unrelated")
            .unwrap();
        if let Some(old) = old {
            esp.write_file("loader/entries/a.conf", old).unwrap();
        }
        esp.close().unwrap();
        let baseline = fs::read(&img).unwrap();
        let new: Vec<u8> = (0..3000u32).map(|i| (i % 7) as u8 + 100).collect();
        let mut cut = 0u64;
        let mut stray_cuts = 0;
        loop {
            fs::write(&img, &baseline).unwrap();
            let mut region = loc.open_region(true).unwrap();
            region.writes_left = Some(cut);
            let esp = FatEsp::from_region(region, &loc, false).unwrap();
            let res = esp.write_file("loader/entries/a.conf", &new);
            drop(esp); // the power is off: nothing more reaches the device

            let esp = FatEsp::open(&loc).unwrap();
            let got = if esp.exists("loader/entries/a.conf").unwrap() {
                Some(esp.read_file("loader/entries/a.conf").unwrap())
            } else {
                None
            };
            assert!(
                got.as_deref() == old || got.as_deref() == Some(&new[..]),
                "power cut after {cut} writes: a.conf is {:?} bytes",
                got.map(|g| g.len())
            );
            let names: Vec<String> = esp
                .list("loader/entries")
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect();
            // A cut inside one directory-entry update can leave a stray entry (long name
            // slots without their short entry, or the reverse): fsck.vfat territory. It
            // must never look like a boot entry, and ours must be there exactly once.
            let strays: Vec<&String> = names
                .iter()
                .filter(|n| *n != "a.conf" && *n != "b.conf")
                .collect();
            if !strays.is_empty() {
                stray_cuts += 1;
            }
            for n in &strays {
                assert!(
                    !n.to_ascii_lowercase().ends_with(".conf"),
                    "power cut after {cut} writes left {n:?}, which looks like a boot entry"
                );
            }
            assert_eq!(
                names.iter().filter(|n| *n == "a.conf").count(),
                usize::from(got.is_some()),
                "power cut after {cut} writes: {names:?}"
            );
            assert_eq!(
                esp.read_file("loader/entries/b.conf").unwrap(),
                b"unrelated"
            );
            // Still writable (checked at every 8th cut: each check is a full replacement).
            if cut % 8 == 0 {
                esp.write_file("loader/entries/a.conf", b"again").unwrap();
                assert_eq!(esp.read_file("loader/entries/a.conf").unwrap(), b"again");
            }
            esp.close().unwrap();
            if res.is_ok() {
                assert_eq!(got.as_deref(), Some(&new[..]));
                break;
            }
            cut += 1;
            assert!(cut < 100_000, "write_file never completed");
        }
        assert!(cut > 10, "a replacement took only {cut} device writes?");
        eprintln!("{cut} power cuts tried, {stray_cuts} left stray directory entries");
    }

    #[test]
    fn power_cut_while_replacing_a_file() {
        power_cut_everywhere(Some(&[1u8; 2000]));
    }

    #[test]
    fn power_cut_while_creating_a_file() {
        power_cut_everywhere(None);
    }

    #[test]
    fn region_cache_stays_coherent_with_writes() {
        let mut tmp = tempfile::tempfile().unwrap();
        tmp.write_all(&vec![0u8; 300_000]).unwrap();
        let mut r = Region::new(tmp, 1000, Some(200_000)).unwrap();
        let mut b = [0u8; 8];
        r.seek(SeekFrom::Start(65_530)).unwrap();
        r.read_exact(&mut b).unwrap(); // fills the cache across a boundary
                                       // A write straddling the cached block's start and end.
        r.seek(SeekFrom::Start(65_532)).unwrap();
        r.write_all(&[7u8; 70_000]).unwrap();
        r.seek(SeekFrom::Start(65_530)).unwrap();
        let mut got = vec![0u8; 70_010];
        r.read_exact(&mut got).unwrap();
        assert_eq!(&got[..2], &[0, 0]);
        assert!(got[2..70_002].iter().all(|&x| x == 7));
        assert_eq!(&got[70_002..], &[0u8; 8]);
        // And the file itself has them, at offset + position.
        let mut f = r.file.try_clone().unwrap();
        f.seek(SeekFrom::Start(1000 + 65_532)).unwrap();
        let mut one = [0u8; 1];
        f.read_exact(&mut one).unwrap();
        assert_eq!(one, [7]);
    }
}
