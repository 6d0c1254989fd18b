//! The ESP in user space: FAT32 made and edited with `fatfs`, checked with the real
//! tools (mtools, fsck.vfat), images made by mkfs.vfat + mtools read back.

use std::path::{Path, PathBuf};
use trident::boot::esp::{
    copy_tree, copy_tree_from_fat, format_fat32, install_fallback, EspFs, FatEsp, FatLocation,
};
use trident::cmd::{have_program, Cmd};

const MIB: u64 = 1024 * 1024;

fn tools() -> bool {
    let ok = have_program("mdir") && have_program("mkfs.vfat") && have_program("fsck.vfat");
    if !ok {
        eprintln!("skipping: needs mtools and dosfstools (apt-get install mtools dosfstools)");
    }
    ok
}

fn sparse(path: &Path, size: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
}

/// `img` or `img@@offset` as mtools names an image (with MTOOLS_SKIP_CHECK for sizes
/// mtools finds odd).
fn mtools(tool: &str, image: &str, args: &[&str]) -> String {
    Cmd::new(tool)
        .arg("-i")
        .arg(image)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output_string()
        .unwrap()
}

fn mtype(image: &str, path: &str) -> String {
    mtools("mtype", image, &[&format!("::{path}")])
}

fn fsck_clean(image: &Path) {
    Cmd::new("fsck.vfat").arg("-n").arg(image).run().unwrap();
}

/// A real systemd-boot binary if systemd-boot-efi is installed, else a small PE stand-in.
fn loader_bytes() -> Vec<u8> {
    let real = Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    if real.exists() {
        std::fs::read(real).unwrap()
    } else {
        let mut v = b"MZ".to_vec();
        v.extend((0..100_000u32).map(|i| (i % 251) as u8));
        v
    }
}

#[test]
fn format_write_and_mtools_reads_it() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("esp.img");
    sparse(&img, 64 * MIB);
    let loc = FatLocation::whole(&img);
    format_fat32(&loc, "esp").unwrap();
    fsck_clean(&img);
    let esp = FatEsp::open(&loc).unwrap();
    assert_eq!(esp.fat_type(), fatfs::FatType::Fat32);
    assert_eq!(esp.volume_label(), "ESP");
    esp.write_file("/loader/loader.conf", b"timeout 3\neditor no\n")
        .unwrap();
    esp.write_file("loader/entries/trident-a.conf", b"title A\n")
        .unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    esp.write_file("trident/a/linux", &big).unwrap();
    install_fallback(&esp, &loader_bytes()).unwrap();
    // Replace a file: new content, no leftovers.
    esp.write_file("loader/entries/trident-a.conf", b"title A v2\n")
        .unwrap();
    assert_eq!(
        esp.read_file("LOADER/Entries/trident-a.conf").unwrap(),
        b"title A v2\n"
    );
    let names: Vec<String> = esp
        .list("loader/entries")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["trident-a.conf"]);
    assert!(esp.exists("EFI/BOOT/BOOTX64.EFI").unwrap());
    assert!(!esp.exists("EFI/BOOT/nothing").unwrap());
    assert!(!esp.exists("nothing/at/all").unwrap());
    esp.close().unwrap();

    let image = img.to_str().unwrap();
    let listing = mtools("mdir", image, &["-b", "::/loader/entries"]);
    assert_eq!(listing.trim(), "::/loader/entries/trident-a.conf");
    assert_eq!(
        mtype(image, "/loader/loader.conf"),
        "timeout 3\neditor no\n"
    );
    assert_eq!(
        mtype(image, "/loader/entries/trident-a.conf"),
        "title A v2\n"
    );
    let out = dir.path().join("linux.out");
    Cmd::new("mcopy")
        .args(["-i", image, "::/trident/a/linux"])
        .arg(&out)
        .run()
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), big);
    let label = mtools("mlabel", image, &["-s", "::"]);
    assert!(label.contains("ESP"), "{label}");
    fsck_clean(&img);

    // Open again: everything still there, remove works.
    let esp = FatEsp::open(&loc).unwrap();
    esp.remove("trident/a/linux").unwrap();
    esp.remove("trident/a/linux").unwrap();
    assert!(esp.remove("loader").is_err(), "non-empty directory");
    esp.close().unwrap();
    assert!(!mtools("mdir", image, &["-b", "::/trident/a"]).contains("linux"));
    fsck_clean(&img);
}

#[test]
fn fat_inside_a_disk_image_at_an_offset() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    sparse(&img, 100 * MIB);
    // Sentinels around the partition must survive.
    std::fs::write(&img, vec![0xAB; 4096]).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(100 * MIB).unwrap();
    let loc = FatLocation {
        path: img.clone(),
        offset: MIB,
        len: Some(64 * MIB),
    };
    format_fat32(&loc, "ESP").unwrap();
    let esp = FatEsp::open(&loc).unwrap();
    esp.write_file("EFI/trident/hello.txt", b"hi").unwrap();
    esp.close().unwrap();
    let data = std::fs::read(&img).unwrap();
    assert!(
        data[..4096].iter().all(|&b| b == 0xAB),
        "bytes before the partition changed"
    );
    assert!(
        data[(65 * MIB) as usize..].iter().all(|&b| b == 0),
        "bytes after the partition changed"
    );
    let image = format!("{}@@{}", img.display(), MIB);
    assert_eq!(mtype(&image, "/EFI/trident/hello.txt"), "hi");
}

#[test]
fn copy_tree_from_an_image_made_by_mtools() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Source: the image's ESP, made by the reference tools.
    let src = dir.path().join("src.img");
    sparse(&src, 40 * MIB);
    Cmd::new("mkfs.vfat")
        .args(["-F", "32", "-n", "IMGESP"])
        .arg(&src)
        .run()
        .unwrap();
    let s = src.to_str().unwrap();
    mtools(
        "mmd",
        s,
        &["::/EFI", "::/EFI/systemd", "::/EFI/BOOT", "::/loader"],
    );
    let loader = dir.path().join("systemd-bootx64.efi");
    std::fs::write(&loader, loader_bytes()).unwrap();
    let conf = dir.path().join("loader.conf");
    std::fs::write(&conf, "timeout 0\n").unwrap();
    let l = loader.to_str().unwrap();
    mtools("mcopy", s, &[l, "::/EFI/systemd/systemd-bootx64.efi"]);
    mtools("mcopy", s, &[l, "::/EFI/BOOT/BOOTX64.EFI"]);
    mtools(
        "mcopy",
        s,
        &[conf.to_str().unwrap(), "::/loader/loader.conf"],
    );

    // Destination: our own FAT32, already holding a stale loader.conf.
    let dst = dir.path().join("dst.img");
    sparse(&dst, 64 * MIB);
    let dst_loc = FatLocation::whole(&dst);
    format_fat32(&dst_loc, "ESP").unwrap();
    let d = FatEsp::open(&dst_loc).unwrap();
    d.write_file("loader/loader.conf", b"old\n").unwrap();
    d.close().unwrap();
    let before = std::fs::read(&src).unwrap();
    let stats = copy_tree_from_fat(&FatLocation::whole(&src), &dst_loc).unwrap();
    assert_eq!(stats.files, 3);
    assert_eq!(stats.dirs, 4);
    assert_eq!(stats.bytes, 2 * loader_bytes().len() as u64 + 10);
    assert!(
        std::fs::read(&src).unwrap() == before,
        "the source image was modified"
    );
    // A read-only ESP refuses writes.
    let ro = FatEsp::open_read_only(&FatLocation::whole(&src)).unwrap();
    assert!(ro.write_file("x", b"y").is_err());
    assert!(ro.remove("loader/loader.conf").is_err());
    // copy_tree into a subdirectory works the same.
    let d = FatEsp::open(&dst_loc).unwrap();
    let again = copy_tree(&ro, "EFI", &d, "backup/EFI").unwrap();
    assert_eq!(again.files, 2);
    d.close().unwrap();
    ro.close().unwrap();
    assert!(
        std::fs::read(&src).unwrap() == before,
        "the source image was modified"
    );

    let out = dir.path().join("copied.efi");
    Cmd::new("mcopy")
        .args(["-i", dst.to_str().unwrap(), "::/EFI/BOOT/BOOTX64.EFI"])
        .arg(&out)
        .run()
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), loader_bytes());
    assert_eq!(
        mtype(dst.to_str().unwrap(), "/loader/loader.conf"),
        "timeout 0\n"
    );
    fsck_clean(&dst);
}

#[test]
fn interrupted_replacements_are_finished_on_open() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("esp.img");
    sparse(&img, 40 * MIB);
    Cmd::new("mkfs.vfat")
        .args(["-F", "32"])
        .arg(&img)
        .run()
        .unwrap();
    let image = img.to_str().unwrap();
    mtools("mmd", image, &["::/loader", "::/loader/entries"]);
    let put = |name: &str, content: &str| {
        let p: PathBuf = dir.path().join("tmpfile");
        std::fs::write(&p, content).unwrap();
        mtools(
            "mcopy",
            image,
            &[
                "-o",
                p.to_str().unwrap(),
                &format!("::/loader/entries/{name}"),
            ],
        );
    };
    // Cut after the marker, old file still there: the new content wins.
    put("a.conf", "old a\n");
    put("a.conf.trident-new", "new a\n");
    put("a.conf.trident-ok", "");
    // Cut after deleting the old file: the new one is put in place.
    put("b.conf.trident-new", "new b\n");
    put("b.conf.trident-ok", "");
    // Cut while writing the new copy (no marker yet): it goes, the old one stays.
    put("c.conf", "old c\n");
    put("c.conf.trident-new", "half");
    // Cut while rewriting the file from the complete copy: rewritten again.
    put("d.conf", "new");
    put("d.conf.trident-new", "new d\n");
    put("d.conf.trident-ok", "");
    // Cut after the marker was removed: only the leftover copy goes.
    put("e.conf", "new e\n");
    put("e.conf.trident-new", "new e\n");

    let esp = FatEsp::open(&FatLocation::whole(&img)).unwrap();
    let names: Vec<String> = esp
        .list("loader/entries")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        vec!["a.conf", "b.conf", "c.conf", "d.conf", "e.conf"]
    );
    assert!(
        esp.write_file("x.trident-ok", b"").is_err(),
        "reserved suffix"
    );
    esp.close().unwrap();
    assert_eq!(mtype(image, "/loader/entries/a.conf"), "new a\n");
    assert_eq!(mtype(image, "/loader/entries/b.conf"), "new b\n");
    assert_eq!(mtype(image, "/loader/entries/c.conf"), "old c\n");
    assert_eq!(mtype(image, "/loader/entries/d.conf"), "new d\n");
    assert_eq!(mtype(image, "/loader/entries/e.conf"), "new e\n");
    fsck_clean(&img);
}

#[test]
fn bad_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("small.img");
    sparse(&img, 8 * MIB);
    let err = format_fat32(&FatLocation::whole(&img), "ESP").unwrap_err();
    assert!(format!("{err:#}").contains("at least 34 MiB"), "{err:#}");
    assert!(format_fat32(&FatLocation::whole(&img), "MUCH TOO LONG LABEL").is_err());
    // Not a FAT filesystem.
    let err = FatEsp::open(&FatLocation::whole(&img)).unwrap_err();
    assert!(
        format!("{err:#}").contains("reading the FAT filesystem"),
        "{err:#}"
    );
    // A range outside the file.
    let loc = FatLocation {
        path: img.clone(),
        offset: 4 * MIB,
        len: Some(8 * MIB),
    };
    assert!(FatEsp::open(&loc).is_err());
    assert!(FatEsp::open(&FatLocation::whole(dir.path().join("missing"))).is_err());

    let big = dir.path().join("esp.img");
    sparse(&big, 40 * MIB);
    let loc = FatLocation::whole(&big);
    format_fat32(&loc, "ESP").unwrap();
    let esp = FatEsp::open(&loc).unwrap();
    assert!(esp.write_file("../escape", b"x").is_err());
    assert!(esp.read_file("does/not/exist").is_err());
    esp.write_file("dir/file", b"x").unwrap();
    assert!(
        esp.write_file("dir", b"x").is_err(),
        "a directory is not replaced by a file"
    );
    assert!(install_fallback(&esp, b"not a PE image").is_err());
    esp.close().unwrap();
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

#[test]
fn esp_on_a_block_device() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    if !tools() || !have_program("losetup") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("trident-esp")
        .tempdir_in("/tmp")
        .unwrap();
    let img = dir.path().join("disk.img");
    sparse(&img, 100 * MIB);
    // The partition as its own loop device (this kernel does no partition scanning).
    let dev = Cmd::new("losetup")
        .args(["-f", "--show", "--offset", &MIB.to_string(), "--sizelimit"])
        .arg((64 * MIB).to_string())
        .arg(&img)
        .output_string()
        .unwrap()
        .trim()
        .to_string();
    assert!(dev.starts_with("/dev/loop"), "{dev}");
    let lo = Loop(dev);
    let loc = FatLocation::whole(&lo.0);
    format_fat32(&loc, "ESP").unwrap();
    let esp = FatEsp::open(&loc).unwrap();
    esp.write_file("loader/entries/trident-a.conf", b"title A\n")
        .unwrap();
    esp.close().unwrap();
    // The whole device was used: 64 MiB, not less.
    let esp = FatEsp::open(&loc).unwrap();
    assert_eq!(
        esp.read_file("loader/entries/trident-a.conf").unwrap(),
        b"title A\n"
    );
    esp.close().unwrap();
    Cmd::new("fsck.vfat").arg("-n").arg(&lo.0).run().unwrap();
    drop(lo);
    let image = format!("{}@@{}", img.display(), MIB);
    assert_eq!(mtype(&image, "/loader/entries/trident-a.conf"), "title A\n");
    let info = mtools("minfo", &image, &[]);
    assert!(info.contains("big size: 131072 sectors"), "{info}");
}
