//! The engine test fixtures: COSI images v1/v2 (built once per test binary) and a
//! simulated host (a sparse disk file on a loop device, a datastore, an efivarfs
//! directory, a running-root directory and a work directory). Used by `engine_flow`
//! and by the D-Bus tests that drive the engine through `tridentd`. Needs the test
//! crate to declare `mod support;` too.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use trident::boot::efivar::SYSTEMD_LOADER;
use trident::boot::esp::FatEsp;
use trident::boot::{EfiVars, FatLocation};
use trident::config::HostConfiguration;
use trident::datastore::Datastore;
use trident::engine::{self, CommitOutcome, EngineContext};
use trident::error::find_trident_error;
use trident::status::{AbVolume, ServicingState};
use trident::storage::blkpg::partition_path;
use trident::storage::loopdev::{LoopDevice, Options};
use trident::storage::mkfs::Mount;

pub const MIB: u64 = 1 << 20;
pub const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";

pub fn skip() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: needs root");
        return true;
    }
    for t in ["sfdisk", "mkfs.vfat", "mcopy", "mke2fs"] {
        if !trident::cmd::have_program(t) {
            eprintln!("skipping: needs {t} (fdisk, dosfstools, mtools, e2fsprogs)");
            return true;
        }
    }
    false
}

pub struct Images {
    pub _dir: tempfile::TempDir,
    pub v1: PathBuf,
    pub v2: PathBuf,
    pub arm: PathBuf,
}

/// v1, v2 and an aarch64-labelled COSI, built once per test binary.
pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("engine-img")
            .tempdir_in("/tmp")
            .unwrap();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-disk-image.sh");
        let mut out = Vec::new();
        for (name, variant, arch) in [
            ("v1", "v1", None),
            ("v2", "v2", None),
            ("arm", "v1", Some("aarch64")),
        ] {
            let raw = dir.path().join(format!("{name}.img"));
            let st = Command::new("bash")
                .arg(&script)
                .arg(&raw)
                .arg(variant)
                .env("ESP_MB", "40")
                .env("ROOT_MB", "24")
                .env("VAR_MB", "0")
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "make-disk-image.sh failed");
            let cosi = dir.path().join(format!("{name}.cosi"));
            let mut opts = trident::cosi::build::BuildOptions::new(&raw, &cosi);
            opts.os_arch = arch.map(str::to_string);
            opts.threads = 1;
            trident::cosi::build::build(&opts, &|_, _| {}).unwrap();
            std::fs::remove_file(&raw).unwrap();
            out.push(cosi);
        }
        Images {
            v2: out[1].clone(),
            arm: out[2].clone(),
            v1: out.remove(0),
            _dir: dir,
        }
    })
}

/// One simulated host: a disk (sparse file + loop device), a datastore, an efivarfs
/// directory, a running-root directory and a work directory.
pub struct Host {
    pub dir: tempfile::TempDir,
    pub disk_file: PathBuf,
    pub lo: Option<LoopDevice>,
    pub root_size: &'static str,
}

impl Host {
    pub fn new(size: u64, attach: bool) -> Host {
        let dir = tempfile::Builder::new()
            .prefix("engine-host")
            .tempdir_in("/tmp")
            .unwrap();
        let disk_file = dir.path().join("disk.img");
        std::fs::File::create(&disk_file)
            .unwrap()
            .set_len(size)
            .unwrap();
        for d in ["efivars", "hostroot", "work"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        // The running OS's identity, carried forward into staged volumes.
        std::fs::create_dir_all(dir.path().join("hostroot/etc")).unwrap();
        std::fs::write(
            dir.path().join("hostroot/etc/machine-id"),
            format!("{MACHINE_ID}\n"),
        )
        .unwrap();
        let lo = attach.then(|| LoopDevice::attach(&disk_file, Options::default()).unwrap());
        Host {
            dir,
            disk_file,
            lo,
            root_size: "40M",
        }
    }
    pub fn device(&self) -> PathBuf {
        match &self.lo {
            Some(l) => l.path().to_path_buf(),
            None => self.disk_file.clone(),
        }
    }
    pub fn part(&self, n: u32) -> PathBuf {
        partition_path(self.lo.as_ref().unwrap().path(), n)
    }
    pub fn hc_text(&self, cosi: &Path, extra_fs: &str) -> String {
        format!(
            "storage:
  disks:
  - id: os
    device: {dev}
    partitions:
    - id: esp
      type: esp
      size: 40M
    - id: root-a
      type: root
      size: {rs}
    - id: root-b
      type: root
      size: {rs}
    - id: trident
      type: linux-generic
      size: 16M
    - id: srv
      type: srv
      size: 8M
  abUpdate:
    volumePairs:
    - id: root
      volumeAId: root-a
      volumeBId: root-b
  filesystems:
  - deviceId: esp
    mountPoint:
      path: /boot/efi
      options: umask=0077
  - deviceId: root
    mountPoint: /
  - deviceId: trident
    source: new
    mountPoint: /var/lib/trident
{extra_fs}image:
  url: file://{cosi}
  sha384: ignored
os:
  hostname: engine-test
  kernelCommandLine:
    extraCommandLine:
    - console=ttyS0
",
            dev = self.device().display(),
            rs = self.root_size,
            cosi = cosi.display()
        )
    }
    /// The v2 Host Configuration with its image served over HTTP on loopback at about a
    /// tenth of its size per second (a stage streams for ~10 s: time to cancel it).
    /// The server lives until the test process ends.
    pub fn slow_v2_yaml(&self) -> String {
        let v2 = std::fs::read(&images().v2).unwrap();
        let rate = (v2.len() / 10).max(64 * 1024);
        let data = std::sync::Arc::new(v2);
        let (port, _) = crate::support::tiny_server(move |req, _| {
            let mut r = crate::support::range_reply(req, &data);
            r.rate = Some(rate);
            r
        });
        let yaml = self.hc_text(&images().v2, "").replace(
            &format!("file://{}", images().v2.display()),
            &format!("http://127.0.0.1:{port}/v2.cosi"),
        );
        assert!(yaml.contains("http://127.0.0.1"));
        yaml
    }
    pub fn hc(&self, cosi: &Path) -> HostConfiguration {
        self.hc_from(&self.hc_text(cosi, ""))
    }
    pub fn hc_from(&self, text: &str) -> HostConfiguration {
        let path = self.dir.path().join("hc.yaml");
        std::fs::write(&path, text).unwrap();
        trident::config::load_and_validate(&path).unwrap().0
    }
    pub fn ctx(&self, booted: Option<u32>) -> EngineContext {
        let mut c = EngineContext::new(self.dir.path().join("ds/datastore.sqlite"));
        c.efivars_root = self.dir.path().join("efivars");
        c.host_root = self.dir.path().join("hostroot");
        c.work_dir = self.dir.path().join("work");
        c.booted_root_override = booted.map(|n| self.part(n));
        c
    }
    pub fn store(&self) -> Datastore {
        Datastore::open_existing(&self.dir.path().join("ds/datastore.sqlite")).unwrap()
    }
    pub fn state(&self) -> (ServicingState, Option<AbVolume>) {
        let hs = self.store().host_status().unwrap();
        (hs.servicing_state, hs.active_volume)
    }
    pub fn efivar(&self, name: &str) -> Option<String> {
        EfiVars::new(self.dir.path().join("efivars"))
            .get_string(name, &SYSTEMD_LOADER)
            .unwrap()
    }
    /// Read a file from a partition's ext4 filesystem.
    pub fn read_ext4(&self, n: u32, rel: &str) -> Option<String> {
        let mnt = self.dir.path().join(format!("mnt{n}"));
        std::fs::create_dir_all(&mnt).unwrap();
        let m = Mount::new(&self.part(n), &mnt, "ext4", Some("ro")).unwrap();
        let r = std::fs::read_to_string(mnt.join(rel)).ok();
        m.unmount().unwrap();
        r
    }
    pub fn esp(&self) -> FatEsp {
        FatEsp::open_read_only(&FatLocation::whole(self.part(1))).unwrap()
    }
    pub fn efivars_snapshot(&self) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(self.dir.path().join("efivars"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }
    /// Install v1 and commit its first boot on A.
    pub fn installed(&self) -> HostConfiguration {
        let hc = self.hc(&images().v1);
        engine::install(&hc, &self.ctx(None)).unwrap();
        assert_eq!(
            engine::commit(&self.ctx(Some(2))).unwrap(),
            CommitOutcome::Committed(AbVolume::VolumeA)
        );
        hc
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = trident::engine::target::clean_stale_mounts(&self.dir.path().join("work"));
    }
}

pub fn sha256_of(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

pub fn code(e: &anyhow::Error) -> String {
    find_trident_error(e)
        .map(|t| t.code)
        .unwrap_or_else(|| format!("untyped: {e:#}"))
}
