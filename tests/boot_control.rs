//! The two BootControl backends end to end on a FAT ESP image and an efivarfs-format
//! directory: what lands on the ESP (read back with mtools), what lands in the EFI
//! variables, and the trial / commit / fallback cycle as the engine drives it.

use std::path::Path;
use trident::boot::efivar::{EfiVars, ATTR_NV_BS_RT, EFI_GLOBAL, SYSTEMD_LOADER};
use trident::boot::esp::{format_fat32, EspFs, FatEsp, FatLocation};
use trident::boot::uefi::{decode_boot_order, LoadOption, UefiBootVars, SYSTEMD_BOOT_LOADER};
use trident::boot::{
    backend_for, BootEnv, EspAccess, EspLayout, HardDrive, Payload, Volume, VolumeBootInfo,
};
use trident::cmd::{have_program, Cmd};
use trident::error::find_trident_error;
use uuid::uuid;

const MIB: u64 = 1024 * 1024;

fn esp_hd() -> HardDrive {
    HardDrive {
        partition_number: 1,
        start_lba: 2048,
        size_lba: 131072,
        partition_uuid: uuid!("11111111-2222-3333-4444-555555555555"),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    img: std::path::PathBuf,
    vars: EfiVars,
    esp: EspLayout,
}

/// A 64 MiB FAT32 ESP holding systemd-boot (real if systemd-boot-efi is installed),
/// and an empty efivarfs-format directory.
fn fixture(with_loader: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("esp.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let loc = FatLocation::whole(&img);
    format_fat32(&loc, "ESP").unwrap();
    if with_loader {
        let esp = FatEsp::open(&loc).unwrap();
        esp.write_file("EFI/systemd/systemd-bootx64.efi", &loader_bytes())
            .unwrap();
        esp.close().unwrap();
    }
    let vars_dir = dir.path().join("efivars");
    std::fs::create_dir(&vars_dir).unwrap();
    Fixture {
        img: img.clone(),
        vars: EfiVars::new(vars_dir),
        esp: EspLayout {
            access: EspAccess::Fat(loc),
            partition: Some(esp_hd()),
        },
        _dir: dir,
    }
}

fn loader_bytes() -> Vec<u8> {
    let real = Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    if real.exists() {
        std::fs::read(real).unwrap()
    } else {
        let mut v = b"MZ".to_vec();
        v.extend_from_slice(&[0x90; 4000]);
        v
    }
}

fn env(f: &Fixture, boot_tries: Option<u32>) -> BootEnv {
    BootEnv {
        efivars: f.vars.clone(),
        esp: f.esp.clone(),
        timeout_secs: 2,
        boot_tries,
    }
}

fn info(volume: Volume, version: &str, with_initrd: bool) -> VolumeBootInfo {
    VolumeBootInfo {
        volume,
        title: "Azure Linux".into(),
        version: version.into(),
        kernel: Payload::Bytes(format!("MZ kernel {volume} {version}").into_bytes()),
        initrd: with_initrd.then(|| Payload::Bytes(format!("initrd {volume}").into_bytes())),
        root_partuuid: match volume {
            Volume::A => uuid!("aaaaaaaa-0000-0000-0000-000000000001"),
            Volume::B => uuid!("bbbbbbbb-0000-0000-0000-000000000002"),
        },
        extra_args: vec!["rw".into(), "console=ttyS0".into()],
    }
}

fn esp_files(f: &Fixture, dir: &str) -> Vec<String> {
    let esp = FatEsp::open(&FatLocation::whole(&f.img)).unwrap();
    let names = esp.list(dir).unwrap().into_iter().map(|e| e.name).collect();
    esp.close().unwrap();
    names
}

fn esp_read(f: &Fixture, path: &str) -> String {
    let esp = FatEsp::open(&FatLocation::whole(&f.img)).unwrap();
    let data = esp.read_file(path).unwrap();
    esp.close().unwrap();
    String::from_utf8(data).unwrap()
}

/// What systemd-boot does at boot with boot counting: consume the one-shot, count a try
/// down by renaming the entry, report the selected entry.
fn simulate_systemd_boot(f: &Fixture, boots: &str) -> String {
    let esp = FatEsp::open(&FatLocation::whole(&f.img)).unwrap();
    f.vars
        .delete("LoaderEntryOneShot", &SYSTEMD_LOADER)
        .unwrap();
    let (stem, counter) = trident::boot::systemd_boot::parse_entry_id(boots).unwrap();
    let id = match counter {
        Some(c) => {
            let next = format!("{stem}+{}-{}.conf", c.left - 1, c.done.unwrap_or(0) + 1);
            let data = esp.read_file(&format!("loader/entries/{boots}")).unwrap();
            esp.write_file(&format!("loader/entries/{next}"), &data)
                .unwrap();
            esp.remove(&format!("loader/entries/{boots}")).unwrap();
            next
        }
        None => boots.to_string(),
    };
    esp.close().unwrap();
    f.vars
        .set_string("LoaderEntrySelected", &SYSTEMD_LOADER, 0x6, &id)
        .unwrap();
    id
}

#[test]
fn systemd_boot_install_trial_commit() {
    let f = fixture(true);
    let boot = backend_for("systemd-boot", env(&f, Some(3))).unwrap();

    // Install: volume A only, then make it the default.
    boot.install_entries(&[info(Volume::A, "3.0.1", true)])
        .unwrap();
    assert_eq!(esp_files(&f, "loader/entries"), vec!["trident-a+3.conf"]);
    assert_eq!(
        esp_read(&f, "loader/entries/trident-a+3.conf"),
        "title Azure Linux (volume A)\n\
         version 3.0.1\n\
         linux /trident/a/linux\n\
         initrd /trident/a/initrd\n\
         options root=PARTUUID=aaaaaaaa-0000-0000-0000-000000000001 rw console=ttyS0\n"
    );
    assert_eq!(esp_read(&f, "loader/loader.conf"), "timeout 2\neditor no\n");
    assert_eq!(esp_read(&f, "trident/a/linux"), "MZ kernel A 3.0.1");
    assert_eq!(esp_read(&f, "trident/a/initrd"), "initrd A");
    // The fallback loader is systemd-boot.
    let esp = FatEsp::open(&FatLocation::whole(&f.img)).unwrap();
    assert_eq!(
        esp.read_file("EFI/BOOT/BOOTX64.EFI").unwrap(),
        loader_bytes()
    );
    esp.close().unwrap();
    // systemd-boot is registered with the firmware, first in BootOrder.
    let uefi = UefiBootVars::new(f.vars.clone());
    let order = uefi.boot_order().unwrap();
    assert_eq!(order.len(), 1);
    let sd = uefi.get_entry(order[0]).unwrap().unwrap();
    assert_eq!(
        sd,
        LoadOption::new("Linux Boot Manager", esp_hd(), SYSTEMD_BOOT_LOADER)
    );

    boot.set_default(Volume::A).unwrap();
    // Committing blessed the entry, and the default names the blessed file.
    assert_eq!(esp_files(&f, "loader/entries"), vec!["trident-a.conf"]);
    assert_eq!(
        f.vars.get("LoaderEntryDefault", &SYSTEMD_LOADER).unwrap(),
        Some((
            ATTR_NV_BS_RT,
            trident::boot::efivar::encode_utf16le("trident-a.conf")
        ))
    );
    assert_eq!(boot.pending_trial().unwrap(), None);

    // Boot A.
    simulate_systemd_boot(&f, "trident-a.conf");
    assert_eq!(boot.booted_volume().unwrap(), Some(Volume::A));

    // Update: stage B, trial boot.
    boot.install_entries(&[info(Volume::B, "3.0.2", false)])
        .unwrap();
    assert_eq!(
        esp_files(&f, "loader/entries"),
        vec!["trident-a.conf", "trident-b+3.conf"]
    );
    assert!(!esp_read(&f, "loader/entries/trident-b+3.conf").contains("initrd"));
    // Reinstalling did not duplicate the firmware entry.
    assert_eq!(uefi.boot_order().unwrap(), order);
    assert_eq!(uefi.entries().unwrap().len(), 1);

    boot.set_trial(Volume::B).unwrap();
    // systemd 252: the one-shot must name the counted file.
    assert_eq!(
        f.vars
            .get_string("LoaderEntryOneShot", &SYSTEMD_LOADER)
            .unwrap()
            .as_deref(),
        Some("trident-b+3.conf")
    );
    assert_eq!(boot.pending_trial().unwrap(), Some(Volume::B));

    // Trial boot of B: counted down, one-shot consumed.
    let id = simulate_systemd_boot(&f, "trident-b+3.conf");
    assert_eq!(id, "trident-b+2-1.conf");
    assert_eq!(boot.booted_volume().unwrap(), Some(Volume::B));
    assert_eq!(boot.pending_trial().unwrap(), None);

    // Commit B: bless and make default.
    boot.set_default(Volume::B).unwrap();
    assert_eq!(
        esp_files(&f, "loader/entries"),
        vec!["trident-a.conf", "trident-b.conf"]
    );
    assert_eq!(
        f.vars
            .get_string("LoaderEntryDefault", &SYSTEMD_LOADER)
            .unwrap()
            .as_deref(),
        Some("trident-b.conf")
    );

    // Next update goes to A again; a cancelled trial leaves no one-shot behind.
    boot.install_entries(&[info(Volume::A, "3.0.3", true)])
        .unwrap();
    assert_eq!(esp_read(&f, "trident/a/linux"), "MZ kernel A 3.0.3");
    boot.set_trial(Volume::A).unwrap();
    boot.clear_trial().unwrap();
    assert_eq!(boot.pending_trial().unwrap(), None);
    assert_eq!(
        f.vars
            .get_string("LoaderEntryOneShot", &SYSTEMD_LOADER)
            .unwrap(),
        None
    );

    if have_program("mtype") {
        // Real tools read the entry we wrote.
        let out = Cmd::new("mtype")
            .args([
                "-i",
                f.img.to_str().unwrap(),
                "::/loader/entries/trident-a+3.conf",
            ])
            .output_string()
            .unwrap();
        assert!(
            out.starts_with("title Azure Linux (volume A)\nversion 3.0.3\n"),
            "{out}"
        );
        Cmd::new("fsck.vfat").arg("-n").arg(&f.img).run().unwrap();
    } else {
        eprintln!("mtools/dosfstools missing: skipped the cross-check with real tools");
    }
}

#[test]
fn systemd_boot_without_counting_and_failure_paths() {
    let f = fixture(true);
    let boot = backend_for("systemd-boot", env(&f, None)).unwrap();
    // Nothing installed for B: a trial is refused with a clear code.
    let err = boot.set_trial(Volume::B).unwrap_err();
    assert_eq!(find_trident_error(&err).unwrap().code, "boot-entry-missing");
    let err = boot.set_default(Volume::A).unwrap_err();
    assert_eq!(find_trident_error(&err).unwrap().code, "boot-entry-missing");

    boot.install_entries(&[info(Volume::A, "1", true), info(Volume::B, "2", true)])
        .unwrap();
    assert_eq!(
        esp_files(&f, "loader/entries"),
        vec!["trident-a.conf", "trident-b.conf"]
    );
    boot.set_trial(Volume::B).unwrap();
    assert_eq!(
        f.vars
            .get_string("LoaderEntryOneShot", &SYSTEMD_LOADER)
            .unwrap()
            .as_deref(),
        Some("trident-b.conf")
    );
    // Two entries for one volume (someone copied a file): refused, not guessed.
    let esp = FatEsp::open(&FatLocation::whole(&f.img)).unwrap();
    esp.write_file("loader/entries/trident-b+1.conf", b"title x\n")
        .unwrap();
    esp.close().unwrap();
    let err = boot.set_trial(Volume::B).unwrap_err();
    assert_eq!(
        find_trident_error(&err).unwrap().code,
        "boot-entry-ambiguous"
    );
    // Reinstalling B cleans that up.
    boot.install_entries(&[info(Volume::B, "3", true)]).unwrap();
    assert_eq!(
        esp_files(&f, "loader/entries"),
        vec!["trident-a.conf", "trident-b.conf"]
    );
    // Selected entries that are not ours.
    f.vars
        .set_string("LoaderEntrySelected", &SYSTEMD_LOADER, 6, "auto-efi-shell")
        .unwrap();
    assert_eq!(boot.booted_volume().unwrap(), None);

    // No systemd-boot on the ESP: refused before anything is written.
    let f2 = fixture(false);
    let boot2 = backend_for("systemd-boot", env(&f2, None)).unwrap();
    let err = boot2
        .install_entries(&[info(Volume::A, "1", true)])
        .unwrap_err();
    assert_eq!(
        find_trident_error(&err).unwrap().code,
        "systemd-boot-missing"
    );
    assert!(esp_files(&f2, "").is_empty());
}

#[test]
fn systemd_boot_on_a_mounted_esp_directory() {
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp");
    std::fs::create_dir_all(esp.join("EFI/systemd")).unwrap();
    std::fs::write(esp.join("EFI/systemd/systemd-bootx64.efi"), loader_bytes()).unwrap();
    let vars = dir.path().join("vars");
    std::fs::create_dir(&vars).unwrap();
    let boot = backend_for(
        "systemd-boot",
        BootEnv {
            efivars: EfiVars::new(&vars),
            esp: EspLayout {
                access: EspAccess::Mounted(esp.clone()),
                partition: None,
            },
            timeout_secs: 0,
            boot_tries: Some(2),
        },
    )
    .unwrap();
    boot.install_entries(&[info(Volume::B, "9", true)]).unwrap();
    assert!(esp.join("loader/entries/trident-b+2.conf").is_file());
    assert_eq!(
        std::fs::read_to_string(esp.join("loader/loader.conf")).unwrap(),
        "timeout 0\neditor no\n"
    );
    // Without the partition, no firmware entry is made.
    assert!(EfiVars::new(&vars).list(&EFI_GLOBAL).unwrap().is_empty());
    boot.set_default(Volume::B).unwrap();
    assert!(esp.join("loader/entries/trident-b.conf").is_file());
    assert!(!esp.join("loader/entries/trident-b+2.conf").exists());
}

#[test]
fn uefi_entries_install_trial_commit() {
    let f = fixture(false);
    let uefi = UefiBootVars::new(f.vars.clone());
    // A firmware entry that must survive everything.
    let shell = LoadOption::new(
        "EFI Shell",
        HardDrive {
            partition_uuid: uuid!("99999999-0000-0000-0000-000000000000"),
            ..esp_hd()
        },
        r"\shell.efi",
    );
    uefi.set_entry(0, &shell).unwrap();
    uefi.set_boot_order(&[0]).unwrap();

    let boot = backend_for("uefi", env(&f, None)).unwrap();
    boot.install_entries(&[info(Volume::A, "1.0", true), info(Volume::B, "1.0", false)])
        .unwrap();
    assert_eq!(esp_read(&f, "EFI/trident/a/linux.efi"), "MZ kernel A 1.0");
    assert_eq!(esp_read(&f, "EFI/trident/a/initrd"), "initrd A");
    assert_eq!(esp_files(&f, "EFI/trident/b"), vec!["linux.efi"]);
    let a = uefi.get_entry(1).unwrap().unwrap();
    assert_eq!(a.description, "Azure Linux 1.0 (Trident A)");
    assert_eq!(
        a.device_path.file.as_deref(),
        Some(r"\EFI\trident\a\linux.efi")
    );
    assert_eq!(
        trident::boot::efivar::decode_utf16le(&a.optional_data).unwrap(),
        r"root=PARTUUID=aaaaaaaa-0000-0000-0000-000000000001 rw console=ttyS0 initrd=\EFI\trident\a\initrd"
    );
    let b = uefi.get_entry(2).unwrap().unwrap();
    assert!(!trident::boot::efivar::decode_utf16le(&b.optional_data)
        .unwrap()
        .contains("initrd="));
    // Installed, not yet bootable by default.
    assert_eq!(uefi.boot_order().unwrap(), vec![0]);

    boot.set_default(Volume::A).unwrap();
    assert_eq!(uefi.boot_order().unwrap(), vec![1, 0]);
    f.vars
        .set("BootCurrent", &EFI_GLOBAL, 6, &1u16.to_le_bytes())
        .unwrap();
    assert_eq!(boot.booted_volume().unwrap(), Some(Volume::A));

    boot.set_trial(Volume::B).unwrap();
    assert_eq!(uefi.boot_next().unwrap(), Some(2));
    assert_eq!(boot.pending_trial().unwrap(), Some(Volume::B));
    // The firmware boots B once (consumes BootNext, sets BootCurrent).
    f.vars.delete("BootNext", &EFI_GLOBAL).unwrap();
    f.vars
        .set("BootCurrent", &EFI_GLOBAL, 6, &2u16.to_le_bytes())
        .unwrap();
    assert_eq!(boot.booted_volume().unwrap(), Some(Volume::B));
    assert_eq!(boot.pending_trial().unwrap(), None);
    boot.set_default(Volume::B).unwrap();
    let order =
        decode_boot_order(&f.vars.get_value("BootOrder", &EFI_GLOBAL).unwrap().unwrap()).unwrap();
    assert_eq!(order, vec![2, 1, 0]);

    // Restage A while it is in BootOrder with a trial pending: its entry disappears
    // first (out of BootOrder, BootNext cleared), then comes back, out of BootOrder.
    boot.set_trial(Volume::A).unwrap();
    boot.install_entries(&[info(Volume::A, "2.0", true)])
        .unwrap();
    assert_eq!(uefi.boot_next().unwrap(), None);
    assert_eq!(uefi.boot_order().unwrap(), vec![2, 0]);
    assert_eq!(esp_read(&f, "EFI/trident/a/linux.efi"), "MZ kernel A 2.0");
    let nums: Vec<u16> = uefi
        .entries()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(nums, vec![0, 1, 2]);
    assert_eq!(
        uefi.get_entry(1).unwrap().unwrap().description,
        "Azure Linux 2.0 (Trident A)"
    );

    // BootNext naming a foreign entry is not ours to clear.
    uefi.set_boot_next(0).unwrap();
    assert_eq!(boot.pending_trial().unwrap(), None);
    boot.clear_trial().unwrap();
    assert_eq!(uefi.boot_next().unwrap(), Some(0));
    boot.set_trial(Volume::A).unwrap();
    boot.clear_trial().unwrap();
    assert_eq!(uefi.boot_next().unwrap(), None);
    assert_eq!(uefi.get_entry(0).unwrap().unwrap(), shell);

    if have_program("efibootmgr") {
        let out = Cmd::new("efibootmgr")
            .arg("-v")
            .env("EFIVARFS_PATH", format!("{}/", f.vars.root().display()))
            .output_string()
            .unwrap();
        assert!(out.contains("BootOrder: 0002,0000"), "{out}");
        assert!(out.contains(r"Boot0002* Azure Linux 1.0 (Trident B)	HD(1,GPT,11111111-2222-3333-4444-555555555555,0x800,0x20000)/File(\EFI\trident\b\linux.efi)"), "{out}");
    }
}

#[test]
fn uefi_entries_need_the_esp_partition() {
    let mut f = fixture(false);
    f.esp.partition = None;
    let boot = backend_for("uefi", env(&f, None)).unwrap();
    let err = boot
        .install_entries(&[info(Volume::A, "1", true)])
        .unwrap_err();
    assert_eq!(
        find_trident_error(&err).unwrap().code,
        "esp-partition-unknown"
    );
    let f = fixture(false);
    let boot = backend_for("uefi", env(&f, None)).unwrap();
    let err = boot.set_trial(Volume::A).unwrap_err();
    assert_eq!(find_trident_error(&err).unwrap().code, "boot-entry-missing");
    // A kernel that cannot be read fails the install with the path in the message.
    let mut bad = info(Volume::A, "1", false);
    bad.kernel = Payload::Path("/nonexistent/vmlinuz".into());
    let err = boot.install_entries(&[bad]).unwrap_err();
    assert!(
        format!("{err:#}").contains("/nonexistent/vmlinuz"),
        "{err:#}"
    );
}

/// Unmounts on drop, even after a panic.
struct BindMount(std::path::PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        if let Err(e) = Cmd::new("umount").arg(&self.0).run() {
            eprintln!("unmounting {}: {e:#}", self.0.display());
        }
    }
}

/// systemd's own parser (`bootctl list`, systemd 252) reads the entries we write.
#[test]
fn bootctl_parses_our_entries() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: needs root (bind mount)");
        return;
    }
    if !have_program("bootctl") {
        eprintln!("skipping: bootctl not installed (apt-get install systemd-boot)");
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let esp = dir.path().join("esp");
    std::fs::create_dir_all(esp.join("EFI/systemd")).unwrap();
    std::fs::write(esp.join("EFI/systemd/systemd-bootx64.efi"), loader_bytes()).unwrap();
    let vars = dir.path().join("vars");
    std::fs::create_dir(&vars).unwrap();
    let boot = backend_for(
        "systemd-boot",
        BootEnv {
            efivars: EfiVars::new(&vars),
            esp: EspLayout {
                access: EspAccess::Mounted(esp.clone()),
                partition: None,
            },
            timeout_secs: 1,
            boot_tries: Some(3),
        },
    )
    .unwrap();
    boot.install_entries(&[info(Volume::A, "1.0", true), info(Volume::B, "2.0", false)])
        .unwrap();
    boot.set_default(Volume::A).unwrap();
    // bootctl wants the ESP to be a mount point.
    Cmd::new("mount")
        .args(["--bind"])
        .arg(&esp)
        .arg(&esp)
        .run()
        .unwrap();
    let _mount = BindMount(esp.clone());
    let out = Cmd::new("bootctl")
        .arg(format!("--esp-path={}", esp.display()))
        .args(["--no-pager", "list"])
        .env("SYSTEMD_RELAX_ESP_CHECKS", "1")
        .output_string()
        .unwrap();
    let source_a = format!("source: {}/loader/entries/trident-a.conf", esp.display());
    let source_b = format!("source: {}/loader/entries/trident-b+3.conf", esp.display());
    for want in [
        "title: Azure Linux (volume A)",
        "title: Azure Linux (volume B)",
        &source_a,
        &source_b,
        "tries: 3 left",
        "version: 1.0",
        "linux: /trident/a/linux",
        "initrd: /trident/a/initrd",
        "options: root=PARTUUID=aaaaaaaa-0000-0000-0000-000000000001 rw console=ttyS0",
        "options: root=PARTUUID=bbbbbbbb-0000-0000-0000-000000000002 rw console=ttyS0",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // Every file an entry references exists (bootctl flags missing ones).
    assert!(!out.contains("No such file"), "{out}");
}
