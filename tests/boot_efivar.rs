//! EFI variables in an efivarfs-format directory, UEFI load options against a fixture
//! made by efibootmgr, and efibootmgr reading what we wrote.

use std::path::Path;
use trident::boot::efivar::{
    decode_utf16le, EfiVars, ATTR_BOOTSERVICE_ACCESS, ATTR_NV_BS_RT, EFI_GLOBAL, SYSTEMD_LOADER,
};
use trident::boot::uefi::{
    LoadOption, UefiBootVars, FALLBACK_LOADER, LOAD_OPTION_ACTIVE, SYSTEMD_BOOT_LOADER,
};
use trident::boot::HardDrive;
use trident::cmd::{have_program, Cmd};
use uuid::uuid;

fn esp_hd() -> HardDrive {
    HardDrive {
        partition_number: 1,
        start_lba: 2048,
        size_lba: 204800,
        partition_uuid: uuid!("11111111-2222-3333-4444-555555555555"),
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/boot")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn set_get_delete_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let vars = EfiVars::new(dir.path());
    assert_eq!(vars.get("BootNext", &EFI_GLOBAL).unwrap(), None);

    vars.set(
        "Test",
        &SYSTEMD_LOADER,
        ATTR_BOOTSERVICE_ACCESS,
        b"\x01\x02\x03",
    )
    .unwrap();
    // On disk: 4-byte LE attributes, then the value, under Name-GUID.
    let raw = std::fs::read(dir.path().join("Test-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f")).unwrap();
    assert_eq!(raw, vec![2, 0, 0, 0, 1, 2, 3]);
    assert_eq!(
        vars.get("Test", &SYSTEMD_LOADER).unwrap(),
        Some((ATTR_BOOTSERVICE_ACCESS, vec![1, 2, 3]))
    );
    // Same name, other vendor: a different variable.
    assert_eq!(vars.get("Test", &EFI_GLOBAL).unwrap(), None);

    // Replace with new attributes and a shorter value.
    vars.set("Test", &SYSTEMD_LOADER, ATTR_NV_BS_RT, b"\x09")
        .unwrap();
    assert_eq!(
        vars.get("Test", &SYSTEMD_LOADER).unwrap(),
        Some((ATTR_NV_BS_RT, vec![9]))
    );
    // No temporary files left behind by the atomic writes.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["Test-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"]);
    assert_eq!(vars.list(&SYSTEMD_LOADER).unwrap(), vec!["Test"]);
    assert!(vars.list(&EFI_GLOBAL).unwrap().is_empty());

    vars.delete("Test", &SYSTEMD_LOADER).unwrap();
    assert_eq!(vars.get("Test", &SYSTEMD_LOADER).unwrap(), None);
    // Deleting again is fine.
    vars.delete("Test", &SYSTEMD_LOADER).unwrap();
}

#[test]
fn utf16_strings_as_systemd_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let vars = EfiVars::new(dir.path());
    vars.set_string(
        "LoaderEntryOneShot",
        &SYSTEMD_LOADER,
        ATTR_NV_BS_RT,
        "trident-b+3.conf",
    )
    .unwrap();
    let raw = std::fs::read(vars.path("LoaderEntryOneShot", &SYSTEMD_LOADER)).unwrap();
    let mut expected = vec![7, 0, 0, 0];
    for c in "trident-b+3.conf".bytes() {
        expected.extend_from_slice(&[c, 0]);
    }
    expected.extend_from_slice(&[0, 0]);
    assert_eq!(raw, expected);
    assert_eq!(
        vars.get_string("LoaderEntryOneShot", &SYSTEMD_LOADER)
            .unwrap()
            .as_deref(),
        Some("trident-b+3.conf")
    );
}

#[test]
fn bad_variable_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let vars = EfiVars::new(dir.path());
    // Shorter than the attribute word.
    std::fs::write(vars.path("BootNext", &EFI_GLOBAL), [7, 0]).unwrap();
    let err = vars.get("BootNext", &EFI_GLOBAL).unwrap_err();
    assert!(
        format!("{err:#}").contains("shorter than its 4-byte attribute"),
        "{err:#}"
    );
    // A u16 variable of the wrong size.
    std::fs::write(vars.path("BootNext", &EFI_GLOBAL), [7, 0, 0, 0, 1, 2, 3]).unwrap();
    assert!(vars.get_u16("BootNext", &EFI_GLOBAL).is_err());
    // Odd-length UTF-16.
    std::fs::write(
        vars.path("LoaderEntrySelected", &SYSTEMD_LOADER),
        [6, 0, 0, 0, 0x41],
    )
    .unwrap();
    assert!(vars
        .get_string("LoaderEntrySelected", &SYSTEMD_LOADER)
        .is_err());
    // Empty values would mean "delete" on efivarfs: refused.
    assert!(vars.set("X", &EFI_GLOBAL, ATTR_NV_BS_RT, &[]).is_err());
    // A root that does not exist.
    let missing = EfiVars::new(dir.path().join("nope"));
    assert!(missing.set("X", &EFI_GLOBAL, ATTR_NV_BS_RT, &[1]).is_err());
    assert!(missing.list(&EFI_GLOBAL).is_err());
}

#[test]
fn load_option_matches_efibootmgr_byte_for_byte() {
    // Made by `efibootmgr -c -d /dev/loopN -p 1 -L "Linux Boot Manager"
    // -l '\EFI\systemd\systemd-bootx64.efi'` on a GPT image whose partition 1 starts at
    // LBA 2048, is 204800 sectors long, with PARTUUID 11111111-2222-3333-4444-555555555555,
    // into an efivarfs-format directory (EFIVARFS_PATH).
    let file = fixture("Boot0000-efibootmgr.efivar");
    let (attrs, value) = (
        u32::from_le_bytes(file[..4].try_into().unwrap()),
        &file[4..],
    );
    assert_eq!(attrs, ATTR_NV_BS_RT);
    let ours = LoadOption::new("Linux Boot Manager", esp_hd(), SYSTEMD_BOOT_LOADER);
    assert_eq!(ours.encode(), value);
    let theirs = LoadOption::decode(value).unwrap();
    assert_eq!(theirs.attributes, LOAD_OPTION_ACTIVE);
    assert_eq!(theirs.description, "Linux Boot Manager");
    assert_eq!(theirs.device_path.hard_drive, Some(esp_hd()));
    assert_eq!(
        theirs.device_path.file.as_deref(),
        Some(SYSTEMD_BOOT_LOADER)
    );
    assert!(theirs.optional_data.is_empty());
}

#[test]
fn ensure_entry_reuses_updates_and_numbers_around_foreign_entries() {
    let dir = tempfile::tempdir().unwrap();
    let boot = UefiBootVars::new(EfiVars::new(dir.path()));
    let vars = boot.efivars();
    // A firmware entry (decodable) at 0000 and garbage at 0001.
    let fw = LoadOption::new(
        "UEFI Shell",
        HardDrive {
            partition_uuid: uuid!("99999999-2222-3333-4444-555555555555"),
            ..esp_hd()
        },
        r"\shell.efi",
    );
    boot.set_entry(0, &fw).unwrap();
    vars.set("Boot0001", &EFI_GLOBAL, ATTR_NV_BS_RT, &[1, 2, 3])
        .unwrap();
    boot.set_boot_order(&[0, 1]).unwrap();

    let want = LoadOption::new("Linux Boot Manager", esp_hd(), SYSTEMD_BOOT_LOADER);
    let n = boot.ensure_first(&want).unwrap();
    assert_eq!(n, 2, "0000 and 0001 are taken, even the undecodable one");
    assert_eq!(boot.boot_order().unwrap(), vec![2, 0, 1]);
    assert_eq!(boot.get_entry(2).unwrap(), Some(want.clone()));

    // Again: reused, nothing duplicated, order unchanged.
    assert_eq!(boot.ensure_first(&want).unwrap(), 2);
    assert_eq!(boot.boot_order().unwrap(), vec![2, 0, 1]);
    assert_eq!(vars.list(&EFI_GLOBAL).unwrap().len(), 4);

    // Same loader path written in another case, new description and geometry: updated in place.
    let moved = LoadOption::new(
        "Linux Boot Manager (new)",
        HardDrive {
            size_lba: 409600,
            ..esp_hd()
        },
        r"\efi\SYSTEMD\systemd-bootx64.efi",
    );
    assert_eq!(boot.ensure_entry(&moved).unwrap(), 2);
    assert_eq!(boot.get_entry(2).unwrap(), Some(moved));

    // Another loader on the same partition: a new entry, put first.
    let fallback = LoadOption::new("Fallback", esp_hd(), FALLBACK_LOADER);
    assert_eq!(boot.ensure_first(&fallback).unwrap(), 3);
    assert_eq!(boot.boot_order().unwrap(), vec![3, 2, 0, 1]);

    boot.set_boot_next(2).unwrap();
    assert_eq!(boot.boot_next().unwrap(), Some(2));
    boot.clear_boot_next().unwrap();
    assert_eq!(boot.boot_next().unwrap(), None);

    // Undecodable entries are skipped when listing, not fatal.
    let listed: Vec<u16> = boot
        .entries()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(listed, vec![0, 2, 3]);
    assert!(
        boot.get_entry(1).is_err(),
        "asking for the broken one by number reports it"
    );

    // Entries without a partition are refused as ours.
    let mut no_hd = want;
    no_hd.device_path.hard_drive = None;
    assert!(boot.ensure_entry(&no_hd).is_err());
}

#[test]
fn efibootmgr_reads_what_we_write() {
    if !have_program("efibootmgr") {
        eprintln!("skipping: efibootmgr not installed (apt-get install efibootmgr)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let boot = UefiBootVars::new(EfiVars::new(dir.path()));
    let sd = boot
        .ensure_first(&LoadOption::new(
            "Linux Boot Manager",
            esp_hd(),
            SYSTEMD_BOOT_LOADER,
        ))
        .unwrap();
    let a = boot
        .ensure_entry(
            &LoadOption::new("Trident A", esp_hd(), r"\EFI\trident\a\linux.efi")
                .with_unicode_args("root=PARTUUID=abc rw"),
        )
        .unwrap();
    boot.set_boot_order(&[a, sd]).unwrap();
    boot.set_boot_next(sd).unwrap();
    let root = format!("{}/", dir.path().display());
    let out = Cmd::new("efibootmgr")
        .arg("-v")
        .env("EFIVARFS_PATH", &root)
        .output_string()
        .unwrap();
    assert!(out.contains("BootNext: 0000"), "{out}");
    assert!(out.contains("BootOrder: 0001,0000"), "{out}");
    assert!(
        out.contains(
            r"Boot0000* Linux Boot Manager	HD(1,GPT,11111111-2222-3333-4444-555555555555,0x800,0x32000)/File(\EFI\systemd\systemd-bootx64.efi)"
        ),
        "{out}"
    );
    assert!(
        out.contains(r"Boot0001* Trident A	HD(1,GPT,11111111-2222-3333-4444-555555555555,0x800,0x32000)/File(\EFI\trident\a\linux.efi)"),
        "{out}"
    );
    // efibootmgr -u shows unicode optional data as text.
    let out = Cmd::new("efibootmgr")
        .args(["-v", "-u"])
        .env("EFIVARFS_PATH", &root)
        .output_string()
        .unwrap();
    assert!(out.contains("root=PARTUUID=abc rw"), "{out}");
    // And it can change our variables: we read its BootOrder back.
    Cmd::new("efibootmgr")
        .args(["-o", "0000,0001"])
        .env("EFIVARFS_PATH", &root)
        .run()
        .unwrap();
    assert_eq!(boot.boot_order().unwrap(), vec![0, 1]);
    let opt = boot.get_entry(1).unwrap().unwrap();
    assert_eq!(
        decode_utf16le(&opt.optional_data).unwrap(),
        "root=PARTUUID=abc rw"
    );
}

/// Clears the immutable flag on drop so the temporary directory can be removed even if
/// the test fails.
struct Mutable(std::path::PathBuf);

impl Drop for Mutable {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = Cmd::new("chattr").arg("-i").arg(&self.0).run();
        }
    }
}

#[test]
fn immutable_variables_are_written_and_deleted_as_on_efivarfs() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: needs root (chattr +i)");
        return;
    }
    if !have_program("chattr") || !have_program("lsattr") {
        eprintln!("skipping: needs chattr/lsattr (e2fsprogs)");
        return;
    }
    // /var/tmp: a disk filesystem with inode flags (tmpfs has none).
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let vars = EfiVars::new(dir.path()).with_efivarfs_semantics(true);
    vars.set_string(
        "LoaderEntryOneShot",
        &SYSTEMD_LOADER,
        ATTR_NV_BS_RT,
        "trident-a.conf",
    )
    .unwrap();
    let path = vars.path("LoaderEntryOneShot", &SYSTEMD_LOADER);
    if Cmd::new("chattr").arg("+i").arg(&path).run().is_err() {
        eprintln!(
            "skipping: {} does not support the immutable flag",
            dir.path().display()
        );
        return;
    }
    let _guard = Mutable(path.clone());
    // What the kernel does to an immutable variable: writing is refused...
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    // ...but we clear the flag, write in place, and put the flag back.
    vars.set_string(
        "LoaderEntryOneShot",
        &SYSTEMD_LOADER,
        ATTR_NV_BS_RT,
        "trident-b.conf",
    )
    .unwrap();
    assert_eq!(
        vars.get_string("LoaderEntryOneShot", &SYSTEMD_LOADER)
            .unwrap()
            .as_deref(),
        Some("trident-b.conf")
    );
    let attrs = Cmd::new("lsattr").arg(&path).output_string().unwrap();
    let flags = attrs.split_whitespace().next().unwrap();
    assert!(flags.contains('i'), "immutable flag not restored: {attrs}");
    // Deleting clears the flag first.
    vars.delete("LoaderEntryOneShot", &SYSTEMD_LOADER).unwrap();
    assert!(!path.exists());
}

/// A loop device detached on drop, even after a panic.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        if let Err(e) = Cmd::new("losetup").args(["-d", &self.0]).run() {
            eprintln!("detaching {}: {e:#}", self.0);
        }
    }
}

/// Regenerates the fixture's situation live: efibootmgr creates the entry for a real
/// GPT partition on a loop device, and it equals ours.
#[test]
fn efibootmgr_creates_the_same_entry_live() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: needs root (loop device)");
        return;
    }
    if !have_program("efibootmgr") || !have_program("sfdisk") || !have_program("losetup") {
        eprintln!("skipping: needs efibootmgr, sfdisk (fdisk) and losetup");
        return;
    }
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(200 * 1024 * 1024)
        .unwrap();
    let table = dir.path().join("table.sfdisk");
    std::fs::write(
        &table,
        "label: gpt\nstart=2048, size=204800, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, \
         uuid=11111111-2222-3333-4444-555555555555\n",
    )
    .unwrap();
    Cmd::new("sh")
        .arg("-c")
        .arg("sfdisk -q \"$1\" < \"$2\"")
        .arg("sh")
        .arg(&img)
        .arg(&table)
        .run()
        .unwrap();
    let dev = Cmd::new("losetup")
        .args(["-f", "--show"])
        .arg(&img)
        .output_string()
        .unwrap()
        .trim()
        .to_string();
    let lo = Loop(dev);
    let vars_dir = dir.path().join("vars");
    std::fs::create_dir(&vars_dir).unwrap();
    Cmd::new("efibootmgr")
        .args([
            "-c",
            "-d",
            &lo.0,
            "-p",
            "1",
            "-L",
            "Linux Boot Manager",
            "-l",
        ])
        .arg(SYSTEMD_BOOT_LOADER)
        .env("EFIVARFS_PATH", format!("{}/", vars_dir.display()))
        .run()
        .unwrap();
    drop(lo);
    let boot = UefiBootVars::new(EfiVars::new(&vars_dir));
    let theirs = boot.get_entry(0).unwrap().unwrap();
    let ours = LoadOption::new("Linux Boot Manager", esp_hd(), SYSTEMD_BOOT_LOADER);
    assert_eq!(theirs, ours);
    assert_eq!(boot.boot_order().unwrap(), vec![0]);
    let (_, value) = EfiVars::new(&vars_dir)
        .get("Boot0000", &EFI_GLOBAL)
        .unwrap()
        .unwrap();
    assert_eq!(value, ours.encode());
}
