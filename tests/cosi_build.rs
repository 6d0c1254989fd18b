//! `trident cosi build` end to end, against a realistic raw GPT disk image made by
//! `tests/fixtures/make-disk-image.sh` (no root needed), checked with independent
//! tools: GNU tar, the zstd CLI, sha384sum, blkid and python3-jsonschema.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use trident::cosi::build::{self, BuildOptions, PartSelector};

const TOOLS: &[&str] = &[
    "sfdisk",
    "mkfs.vfat",
    "mcopy",
    "mke2fs",
    "debugfs",
    "zstd",
    "tar",
    "blkid",
    "sha384sum",
    "python3",
];

fn tools_missing() -> bool {
    let missing: Vec<_> = TOOLS
        .iter()
        .filter(|t| !trident::cmd::have_program(t) && !Path::new("/sbin").join(t).exists())
        .collect();
    if !missing.is_empty() {
        eprintln!("skipping: missing tools {missing:?} (apt-get install fdisk dosfstools mtools e2fsprogs zstd python3-jsonschema)");
        return true;
    }
    false
}

fn fixture_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-disk-image.sh")
}

/// Make a fixture disk image; returns its path and the layout the script printed.
fn make_image(
    dir: &Path,
    variant: &str,
    env: &[(&str, &str)],
) -> (PathBuf, HashMap<String, String>) {
    let img = dir.join(format!("disk-{variant}.img"));
    let mut c = Command::new("bash");
    c.arg(fixture_script()).arg(&img).arg(variant);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "fixture failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layout = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (img, layout)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sparse_tempdir() -> tempfile::TempDir {
    // /dev/shm keeps the 600 MiB sparse images and their reads off the shared disk.
    let base = if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    tempfile::Builder::new()
        .prefix("cosi-build-test.")
        .tempdir_in(base)
        .unwrap()
}

fn error_code(e: &anyhow::Error) -> String {
    trident::error::find_trident_error(e)
        .map(|t| t.code)
        .unwrap_or_else(|| panic!("no TridentError in {e:#}"))
}

/// Stream-decompress `member` with the zstd CLI, with the memory limit the metadata's
/// window log allows, and compare with `[offset, offset+len)` of the disk image.
fn assert_member_matches_region(member: &Path, wlog: u64, image: &Path, offset: u64, len: u64) {
    let mut child = Command::new("zstd")
        .args(["-d", "-c", "-q", &format!("--memory={}", 1u64 << wlog)])
        .arg(member)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let img = File::open(image).unwrap();
    let mut a = vec![0u8; 1 << 20];
    let mut b = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = {
            let mut filled = 0;
            while filled < a.len() {
                let k = out.read(&mut a[filled..]).unwrap();
                if k == 0 {
                    break;
                }
                filled += k;
            }
            filled
        };
        if n == 0 {
            break;
        }
        assert!(
            pos + n as u64 <= len,
            "{} decompresses past {len} bytes",
            member.display()
        );
        img.read_exact_at(&mut b[..n], offset + pos).unwrap();
        assert!(
            a[..n] == b[..n],
            "{} differs from the disk near byte {pos}",
            member.display()
        );
        pos += n as u64;
    }
    assert!(
        child.wait().unwrap().success(),
        "zstd -d failed on {}",
        member.display()
    );
    assert_eq!(pos, len, "{} decompressed size", member.display());
}

fn blkid(image: &Path, offset: u64, size: u64) -> HashMap<String, String> {
    let blkid = if trident::cmd::have_program("blkid") {
        "blkid"
    } else {
        "/sbin/blkid"
    };
    run(Command::new(blkid)
        .args([
            "-p",
            "-o",
            "export",
            "-O",
            &offset.to_string(),
            "-S",
            &size.to_string(),
        ])
        .arg(image))
    .lines()
    .filter_map(|l| l.split_once('='))
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn validate_schema(metadata: &Path) {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/compat/cosi-metadata/cosi-metadata-v1.2.schema.json");
    assert!(schema.exists(), "schema not found at {}", schema.display());
    let py = "import json,sys,jsonschema\n\
              s=json.load(open(sys.argv[1])); d=json.load(open(sys.argv[2]))\n\
              jsonschema.Draft202012Validator.check_schema(s)\n\
              errs=list(jsonschema.Draft202012Validator(s).iter_errors(d))\n\
              [print(e.json_path, e.message) for e in errs]\n\
              sys.exit(1 if errs else 0)\n";
    let out = Command::new("python3")
        .args(["-c", py])
        .arg(&schema)
        .arg(metadata)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "metadata.json does not validate against the COSI 1.2 schema:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn builds_valid_cosi_from_fixture_disk() {
    if tools_missing() {
        return;
    }
    let dir = sparse_tempdir();
    let (img, layout) = make_image(dir.path(), "b", &[]);
    let cosi = dir.path().join("out.cosi");
    let last = std::cell::Cell::new((0u64, 0u64));
    let summary = build::build(&BuildOptions::new(&img, &cosi), &|d, t| {
        assert!(d >= last.get().0 && d <= t);
        last.set((d, t));
    })
    .unwrap();
    assert_eq!(last.get().0, last.get().1, "progress ends at 100%");
    assert_eq!(std::fs::metadata(&cosi).unwrap().len(), summary.size);
    assert!(!dir.path().join("out.cosi.partial").exists());
    let human = summary.render_human();
    assert!(human.contains(&summary.metadata_sha384), "{human}");
    assert!(
        human.contains("ext4 at /var") && human.contains("primary GPT"),
        "{human}"
    );

    // Member order and format, as GNU tar sees it.
    let listing = run(Command::new("tar").arg("-tvf").arg(&cosi));
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "cosi-marker",
            "metadata.json",
            "images/primary-gpt.rawzst",
            "images/esp.rawzst",
            "images/root.rawzst",
            "images/var.rawzst"
        ]
    );
    // No PAX or GNU long-name header in front of the marker.
    let raw = std::fs::read(&cosi).unwrap();
    assert_eq!(&raw[..11], b"cosi-marker");
    assert_eq!(raw[156], b'0');

    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("tar").arg("-xf").arg(&cosi).arg("-C").arg(&x));
    let md_bytes = std::fs::read(x.join("metadata.json")).unwrap();
    let sha = run(Command::new("sha384sum").arg(x.join("metadata.json")));
    assert_eq!(
        sha.split_whitespace().next().unwrap(),
        summary.metadata_sha384
    );
    validate_schema(&x.join("metadata.json"));
    let md: serde_json::Value = serde_json::from_slice(&md_bytes).unwrap();
    assert_eq!(md["version"], "1.2");
    assert_eq!(md["id"], summary.id.as_str());
    assert!(uuid::Uuid::parse_str(md["id"].as_str().unwrap()).is_ok());
    assert_eq!(md["osArch"], "x86_64");
    assert_eq!(
        md["disk"]["size"],
        layout["DISK_SIZE"].parse::<u64>().unwrap()
    );
    assert_eq!(md["disk"]["lbaSize"], 512);

    // Every region: sizes, hash, bytes.
    let wlog = md["compression"]["maxWindowLog"].as_u64().unwrap();
    assert!((10..=31).contains(&wlog), "maxWindowLog {wlog}");
    let regions = md["disk"]["gptRegions"].as_array().unwrap();
    assert_eq!(regions.len(), 4);
    assert_eq!(regions[0]["type"], "primary-gpt");
    let expect = [
        (0u64, 34 * 512u64, None::<u32>),
        (
            layout["PART_ESP_START"].parse().unwrap(),
            layout["PART_ESP_SIZE"].parse().unwrap(),
            Some(1),
        ),
        (
            layout["PART_ROOT_START"].parse().unwrap(),
            layout["PART_ROOT_SIZE"].parse().unwrap(),
            Some(2),
        ),
        (
            layout["PART_VAR_START"].parse().unwrap(),
            layout["PART_VAR_SIZE"].parse().unwrap(),
            Some(3),
        ),
    ];
    for (r, (offset, len, number)) in regions.iter().zip(expect) {
        let im = &r["image"];
        let path = x.join(im["path"].as_str().unwrap());
        assert_eq!(r["number"].as_u64(), number.map(u64::from));
        assert_eq!(im["uncompressedSize"], len);
        assert_eq!(
            im["compressedSize"],
            std::fs::metadata(&path).unwrap().len(),
            "{}",
            path.display()
        );
        let sha = run(Command::new("sha384sum").arg(&path));
        assert_eq!(
            sha.split_whitespace().next().unwrap(),
            im["sha384"].as_str().unwrap()
        );
        assert_member_matches_region(&path, wlog, &img, offset, len);
    }

    // The project's own reader accepts it: marker, metadata hash, members, sizes.
    let opened = trident::cosi::reader::Cosi::open(
        Box::new(trident::cosi::source::FileSource::new(&cosi).unwrap()),
        Some(&summary.metadata_sha384),
    )
    .unwrap();
    assert_eq!(opened.images().len(), 3);
    assert_eq!(opened.regions().len(), 4);
    assert_eq!(
        u64::from(opened.metadata().compression.unwrap().max_window_log),
        wlog
    );
    let root = opened.image_for_mount_point("/").unwrap();
    assert_eq!(root.fs_type, "ext4");
    let mut z = zstd::stream::read::Decoder::new(opened.read_image(&root.image).unwrap()).unwrap();
    let mut first = vec![0u8; 4096];
    z.read_exact(&mut first).unwrap();
    let mut want = vec![0u8; 4096];
    File::open(&img)
        .unwrap()
        .read_exact_at(&mut want, layout["PART_ROOT_START"].parse().unwrap())
        .unwrap();
    assert_eq!(first, want);

    // Filesystems: what blkid says about the same regions.
    let images = md["images"].as_array().unwrap();
    let by_mount: HashMap<&str, &serde_json::Value> = images
        .iter()
        .map(|i| (i["mountPoint"].as_str().unwrap(), i))
        .collect();
    assert_eq!(by_mount.len(), 3);
    for (mp, key, part_type) in [
        ("/boot/efi", "ESP", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
        ("/", "ROOT", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
        ("/var", "VAR", "4d21b016-b534-45c2-a9fb-5c16e091fd2d"),
    ] {
        let fs = by_mount[mp];
        let b = blkid(
            &img,
            layout[&format!("PART_{key}_START")].parse().unwrap(),
            layout[&format!("PART_{key}_SIZE")].parse().unwrap(),
        );
        assert_eq!(fs["fsType"], b["TYPE"].as_str(), "{mp}");
        assert_eq!(fs["fsUuid"], b["UUID"].as_str(), "{mp}");
        assert_eq!(
            fs["fsUuid"],
            layout[&format!("{key}_UUID")].as_str(),
            "{mp}"
        );
        assert_eq!(fs["partType"], part_type);
        assert_eq!(fs["verity"], serde_json::Value::Null);
    }

    // What the OS is.
    let osr = md["osRelease"].as_str().unwrap();
    assert!(osr.contains("IMAGE_VERSION=b\n"), "{osr}");
    assert!(
        osr.starts_with("PRETTY_NAME=\"Trident Fixture OS (b)\""),
        "{osr}"
    );
    let pkgs = md["osPackages"].as_array().unwrap();
    let libc = pkgs.iter().find(|p| p["name"] == "libc6").unwrap();
    assert_eq!(libc["version"], "2.36");
    assert_eq!(libc["release"], "9+deb12u4");
    assert_eq!(libc["arch"], "x86_64");
    assert!(pkgs
        .iter()
        .any(|p| p["name"] == "tzdata" && p["arch"] == "noarch"));
    assert!(!pkgs.iter().any(|p| p["name"] == "removed-pkg"));
    assert_eq!(pkgs.len(), 6);
    let bl = &md["bootloader"];
    assert_eq!(bl["type"], "systemd-boot");
    let entries = bl["systemdBoot"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["type"], "config");
    assert_eq!(
        entries[0]["path"],
        "/boot/efi/loader/entries/fixture-b.conf"
    );
    assert_eq!(entries[0]["kernel"], "6.1.0-fixture-amd64");
    assert_eq!(
        entries[0]["cmdline"],
        format!(
            "root=UUID={} ro console=ttyS0 trident.variant=b",
            layout["ROOT_UUID"]
        )
    );
}

#[test]
fn explicit_mounts_grub_swap_and_arch() {
    if tools_missing() {
        return;
    }
    let dir = sparse_tempdir();
    let (img, layout) = make_image(
        dir.path(),
        "g",
        &[
            ("BOOTLOADER", "grub"),
            ("SWAP_MB", "8"),
            ("VAR_MB", "0"),
            ("ROOT_MB", "64"),
            ("ESP_MB", "40"),
            ("NO_FSTAB", "1"),
        ],
    );
    let cosi = dir.path().join("g.cosi");
    let mut opts = BuildOptions::new(&img, &cosi);
    opts.mounts = vec![
        (PartSelector::Label("root".into()), "/".into()),
        (PartSelector::Number(1), "/boot/efi".into()),
    ];
    opts.compression_level = 19;
    opts.threads = 1;
    opts.os_arch = Some("arm64".into());
    let s = build::build(&opts, &|_, _| {}).unwrap();
    assert_eq!(s.regions.len(), 4); // primary GPT, esp, root, swap
    assert_eq!(s.regions[3].fs_type.as_deref(), Some("swap"));
    assert_eq!(s.regions[3].mount_point, None);

    let md = run(Command::new("tar")
        .arg("-xOf")
        .arg(&cosi)
        .arg("metadata.json"));
    let p = dir.path().join("metadata.json");
    std::fs::write(&p, &md).unwrap();
    validate_schema(&p);
    let md: serde_json::Value = serde_json::from_str(&md).unwrap();
    assert_eq!(md["osArch"], "aarch64");
    assert_eq!(md["bootloader"]["type"], "grub");
    assert_eq!(
        md["images"].as_array().unwrap().len(),
        2,
        "swap is a region, not a filesystem"
    );
    let regions = md["disk"]["gptRegions"].as_array().unwrap();
    assert_eq!(regions[3]["number"], 3);
    assert_eq!(regions[3]["image"]["path"], "images/swap.rawzst");
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("tar").arg("-xf").arg(&cosi).arg("-C").arg(&x));
    assert_member_matches_region(
        &x.join("images/swap.rawzst"),
        md["compression"]["maxWindowLog"].as_u64().unwrap(),
        &img,
        layout["PART_SWAP_START"].parse().unwrap(),
        layout["PART_SWAP_SIZE"].parse().unwrap(),
    );

    // The output exists now: refused without force, replaced with it.
    let e = build::build(&opts, &|_, _| {}).unwrap_err();
    assert_eq!(error_code(&e), "cosi-build-output-exists");
    opts.force = true;
    let again = build::build(&opts, &|_, _| {}).unwrap();
    assert_ne!(again.id, s.id, "every build gets a fresh id");
}

#[test]
fn refuses_bad_inputs_with_clear_errors() {
    if tools_missing() {
        return;
    }
    let dir = sparse_tempdir();
    let out = dir.path().join("o.cosi");

    // Not a GPT image: an ext4 filesystem image.
    let plain = dir.path().join("plain.img");
    File::create(&plain).unwrap().set_len(8 << 20).unwrap();
    run(Command::new("mke2fs")
        .args(["-q", "-t", "ext4"])
        .arg(&plain));
    let e = build::build(&BuildOptions::new(&plain, &out), &|_, _| {}).unwrap_err();
    assert_eq!(error_code(&e), "cosi-build-not-gpt", "{e:#}");
    assert!(format!("{e:#}").contains("no valid GPT"));

    let (img, _) = make_image(
        dir.path(),
        "e",
        &[("VAR_MB", "0"), ("ROOT_MB", "32"), ("ESP_MB", "40")],
    );

    // Mounts given but none at /.
    let mut o = BuildOptions::new(&img, &out);
    o.mounts = vec![(PartSelector::Number(1), "/boot/efi".into())];
    let e = build::build(&o, &|_, _| {}).unwrap_err();
    assert_eq!(error_code(&e), "cosi-build-no-root-mount", "{e:#}");

    // A mount for a partition the image does not have, by number and by label.
    for sel in [PartSelector::Number(9), PartSelector::Label("nope".into())] {
        let mut o = BuildOptions::new(&img, &out);
        o.mounts = vec![(sel, "/".into())];
        let e = build::build(&o, &|_, _| {}).unwrap_err();
        assert_eq!(error_code(&e), "cosi-build-unknown-partition", "{e:#}");
        assert!(format!("{e:#}").contains("1 (esp), 2 (root)"), "{e:#}");
    }

    // The ESP mounted at / has no os-release (and vfat cannot be read as a root).
    let mut o = BuildOptions::new(&img, &out);
    o.mounts = vec![(PartSelector::Number(1), "/".into())];
    let e = build::build(&o, &|_, _| {}).unwrap_err();
    assert_eq!(error_code(&e), "cosi-build-no-os-release", "{e:#}");

    // A bad level and a bad arch.
    let mut o = BuildOptions::new(&img, &out);
    o.compression_level = 40;
    assert_eq!(
        error_code(&build::build(&o, &|_, _| {}).unwrap_err()),
        "cosi-build-bad-level"
    );
    let mut o = BuildOptions::new(&img, &out);
    o.os_arch = Some("riscv64".into());
    assert_eq!(
        error_code(&build::build(&o, &|_, _| {}).unwrap_err()),
        "cosi-build-bad-arch"
    );

    // A disk whose root has no os-release anywhere: auto-detection finds no root.
    let empty_root = dir.path().join("no-os");
    std::fs::create_dir(&empty_root).unwrap();
    let bare = dir.path().join("bare.img");
    File::create(&bare).unwrap().set_len(64 << 20).unwrap();
    let mut sf = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&bare)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        sf.stdin.as_mut().unwrap(),
        b"label: gpt\nstart=2048, size=100000, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
    )
    .unwrap();
    drop(sf.stdin.take());
    assert!(sf.wait().unwrap().success());
    run(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-E", "offset=1048576", "-d"])
        .arg(&empty_root)
        .arg(&bare)
        .arg("40M"));
    let e = build::build(&BuildOptions::new(&bare, &out), &|_, _| {}).unwrap_err();
    assert_eq!(error_code(&e), "cosi-build-no-root-mount", "{e:#}");

    assert!(!out.exists());
    assert!(
        !dir.path().join("o.cosi.partial").exists(),
        "no half-written output left"
    );
}

/// Unmounts on drop, even when the test panics.
struct Mounted(PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount(args: &[&str], src: &Path, at: &Path) -> Mounted {
    std::fs::create_dir_all(at).unwrap();
    run(Command::new("mount").args(args).arg(src).arg(at));
    Mounted(at.to_path_buf())
}

#[test]
fn xfs_root_is_read_through_a_loop_mount() {
    if tools_missing() {
        return;
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: needs root (loop mounts)");
        return;
    }
    if !trident::cmd::have_program("mkfs.xfs") {
        eprintln!("skipping: needs xfsprogs");
        return;
    }
    let dir = sparse_tempdir();
    let (img, layout) = make_image(
        dir.path(),
        "x",
        &[("VAR_MB", "0"), ("ROOT_MB", "320"), ("ESP_MB", "40")],
    );
    let root_start: u64 = layout["PART_ROOT_START"].parse().unwrap();
    let root_size: u64 = layout["PART_ROOT_SIZE"].parse().unwrap();

    // Rebuild the fixture's root tree as XFS and put it in the root partition.
    let xfs = dir.path().join("root.xfs");
    File::create(&xfs).unwrap().set_len(root_size).unwrap();
    let xfs_uuid = "6a1f3c2e-8d4b-4e7a-9c0d-2b3e4f5a6b7c";
    run(Command::new("mkfs.xfs")
        .args(["-q", "-m", &format!("uuid={xfs_uuid}"), "-L", "xroot"])
        .arg(&xfs));
    {
        let from = mount(
            &[
                "-o",
                &format!("ro,loop,offset={root_start},sizelimit={root_size}"),
            ],
            &img,
            &dir.path().join("from"),
        );
        let to = mount(&["-o", "loop"], &xfs, &dir.path().join("to"));
        run(Command::new("cp")
            .arg("-a")
            .arg(from.0.join("."))
            .arg(&to.0));
    }
    let data = std::fs::read(&xfs).unwrap();
    File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .write_all_at(&data, root_start)
        .unwrap();

    let cosi = dir.path().join("x.cosi");
    let mut opts = BuildOptions::new(&img, &cosi);
    opts.mounts = vec![
        (PartSelector::Number(2), "/".into()),
        (PartSelector::Label("esp".into()), "/boot/efi".into()),
    ];
    build::build(&opts, &|_, _| {}).unwrap();
    let md = run(Command::new("tar")
        .arg("-xOf")
        .arg(&cosi)
        .arg("metadata.json"));
    let md: serde_json::Value = serde_json::from_str(&md).unwrap();
    let root = md["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["mountPoint"] == "/")
        .unwrap();
    assert_eq!(root["fsType"], "xfs");
    assert_eq!(root["fsUuid"], xfs_uuid);
    assert!(md["osRelease"]
        .as_str()
        .unwrap()
        .contains("IMAGE_VERSION=x\n"));
    assert_eq!(md["osPackages"].as_array().unwrap().len(), 6);
    // The builder's own read-only mount is gone.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains("trident-cosi-build."), "{mounts}");
}

#[test]
fn fstab_by_device_path_and_partlabel() {
    if tools_missing() {
        return;
    }
    let dir = sparse_tempdir();
    let small = [("VAR_MB", "0"), ("ROOT_MB", "32"), ("ESP_MB", "40")];
    let with_fstab = |name: &str, fstab: &str| {
        let extra = dir.path().join(format!("extra-{name}"));
        std::fs::create_dir_all(extra.join("etc")).unwrap();
        std::fs::write(extra.join("etc/fstab"), fstab).unwrap();
        let mut env = small.to_vec();
        let extra_s = extra.to_str().unwrap().to_string();
        env.push(("ROOT_EXTRA_DIR", &extra_s));
        make_image(dir.path(), name, &env).0
    };

    // `/dev/sda2` cannot be mapped: the root is the partition with os-release anyway;
    // PARTLABEL= maps the ESP.
    let img = with_fstab(
        "p",
        "/dev/sda2 / ext4 defaults 0 1\nPARTLABEL=esp /boot/efi/ vfat defaults 0 2\nUUID=0000-0000 /mnt/usb vfat noauto 0 0\n",
    );
    let out = dir.path().join("p.cosi");
    let s = build::build(&BuildOptions::new(&img, &out), &|_, _| {}).unwrap();
    let mounts: Vec<_> = s
        .regions
        .iter()
        .map(|r| (r.number, r.mount_point.clone()))
        .collect();
    assert_eq!(
        mounts,
        [
            (None, None),
            (Some(1), Some("/boot/efi".to_string())),
            (Some(2), Some("/".to_string()))
        ]
    );

    // fstab puts another partition at /: refused, naming both.
    let img = with_fstab("q", "PARTLABEL=esp / vfat defaults 0 1\n");
    let e = build::build(
        &BuildOptions::new(&img, dir.path().join("q.cosi")),
        &|_, _| {},
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("partition 1 at /") && msg.contains("os-release is on partition 2"),
        "{msg}"
    );
}

/// Throughput against the zstd CLI on the same bytes, same machine, same run.
/// `cargo test --release --test cosi_build -- --ignored --nocapture bench`
/// (`COSI_BENCH_DATA=DIR` chooses what fills the root; default `/usr/lib/x86_64-linux-gnu`).
#[test]
#[ignore]
fn bench_build_against_zstd_cli() {
    if tools_missing() {
        return;
    }
    let data = std::env::var("COSI_BENCH_DATA").unwrap_or("/usr/lib/x86_64-linux-gnu".into());
    let dir = sparse_tempdir();
    let extra = dir.path().join("extra");
    std::fs::create_dir_all(extra.join("opt")).unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg(&data)
        .arg(extra.join("opt/data")));
    let extra_s = extra.to_str().unwrap().to_string();
    let (img, _) = make_image(
        dir.path(),
        "bench",
        &[("ROOT_MB", "2048"), ("ROOT_EXTRA_DIR", &extra_s)],
    );
    let _ = std::fs::remove_dir_all(&extra);
    let total = std::fs::metadata(&img).unwrap().len();

    let t = std::time::Instant::now();
    let shell = format!(
        "zstd -3 -T0 --no-progress -q -c {} | sha384sum >/dev/null",
        img.display()
    );
    run(Command::new("sh").args(["-c", &shell]));
    let baseline = t.elapsed().as_secs_f64();

    let t = std::time::Instant::now();
    let s = build::build(
        &BuildOptions::new(&img, dir.path().join("b.cosi")),
        &|_, _| {},
    )
    .unwrap();
    let ours = t.elapsed().as_secs_f64();
    let mib = total as f64 / (1 << 20) as f64;
    eprintln!(
        "disk {mib:.0} MiB -> cosi {:.0} MiB; zstd CLI + sha384sum: {baseline:.2}s ({:.0} MiB/s); cosi build: {ours:.2}s ({:.0} MiB/s)",
        s.size as f64 / (1 << 20) as f64,
        mib / baseline,
        mib / ours
    );
}

#[test]
fn four_k_sector_disk() {
    if tools_missing() {
        return;
    }
    let dir = sparse_tempdir();
    let (img, layout) = make_image(
        dir.path(),
        "k",
        &[
            ("SECTOR_SIZE", "4096"),
            ("ROOT_MB", "48"),
            ("ESP_MB", "40"),
            ("VAR_MB", "16"),
        ],
    );
    let cosi = dir.path().join("k.cosi");
    build::build(&BuildOptions::new(&img, &cosi), &|_, _| {}).unwrap();
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("tar").arg("-xf").arg(&cosi).arg("-C").arg(&x));
    validate_schema(&x.join("metadata.json"));
    let md: serde_json::Value =
        serde_json::from_slice(&std::fs::read(x.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(md["disk"]["lbaSize"], 4096);
    let regions = md["disk"]["gptRegions"].as_array().unwrap();
    // Protective MBR + header + 16 KiB of entries = 6 blocks of 4 KiB.
    assert_eq!(regions[0]["image"]["uncompressedSize"], 6 * 4096);
    let wlog = md["compression"]["maxWindowLog"].as_u64().unwrap();
    assert_member_matches_region(
        &x.join("images/primary-gpt.rawzst"),
        wlog,
        &img,
        0,
        6 * 4096,
    );
    for (i, key) in ["ESP", "ROOT", "VAR"].iter().enumerate() {
        let r = &regions[i + 1];
        assert_eq!(r["number"], i as u64 + 1);
        let start: u64 = layout[&format!("PART_{key}_START")].parse().unwrap();
        let size: u64 = layout[&format!("PART_{key}_SIZE")].parse().unwrap();
        assert_member_matches_region(
            &x.join(r["image"]["path"].as_str().unwrap()),
            wlog,
            &img,
            start,
            size,
        );
    }
    assert_eq!(md["images"].as_array().unwrap().len(), 3);
}
