//! COSI reader: real archives made by GNU tar (gnu, pax, ustar formats), hand-made
//! malicious archives, every compat metadata sample, and random corruption.
//!
//! No root needed. Needs the `tar` command (GNU tar) for the archives it builds.

use serde_json::{json, Value};
use sha2::{Digest, Sha384};
use std::io::Read;
use std::path::Path;
use trident::cmd::Cmd;
use trident::cosi::metadata::{self as md, CosiMetadata, MetadataVersion};
use trident::cosi::reader::{self as rd, Cosi};
use trident::cosi::source::{FileSource, MemSource};
use trident::cosi::tar as ctar;
use trident::error::{find_trident_error, Category};

const COMPAT: &str = "../shared/compat/cosi-metadata";

// ---------------------------------------------------------------- fixtures

struct Img {
    path: String,
    raw_len: u64,
    data: Vec<u8>,
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha384::digest(b))
}

fn make_img(path: &str, len: usize, seed: u8) -> Img {
    // Compressible but not trivial content.
    let raw: Vec<u8> = (0..len)
        .map(|i| ((i / 7) as u8).wrapping_mul(seed) ^ (i % 13) as u8)
        .collect();
    Img {
        path: path.to_string(),
        raw_len: len as u64,
        data: zstd::encode_all(&raw[..], 3).unwrap(),
    }
}

/// primary GPT, ESP, root, root verity hash. `long` puts root under a >100-char path.
fn sample_images(long: bool) -> Vec<Img> {
    let root = if long {
        // Two 60-character directories: too long for a plain name field, splittable
        // into a USTAR prefix.
        let d = "deep-directory-name-".repeat(3);
        format!("images/{d}/{d}/root.rawzst")
    } else {
        "images/root.rawzst".to_string()
    };
    vec![
        make_img("images/gpt.rawzst", 17408, 3),
        make_img("images/esp.rawzst", 65536, 5),
        make_img(&root, 200_000, 7),
        make_img("images/root-verity.rawzst", 8192, 11),
    ]
}

fn image_file(i: &Img) -> Value {
    json!({"path": i.path, "compressedSize": i.data.len(), "uncompressedSize": i.raw_len,
           "sha384": sha(&i.data)})
}

fn metadata_json(imgs: &[Img], version: &str) -> Vec<u8> {
    let mut m = json!({
        "version": version,
        "osArch": "x86_64",
        "osRelease": "ID=test\nPRETTY_NAME=\"Test OS 1\"\n",
        "id": "0b1c5ad2-5a7e-4a44-9d55-28e0f3b0a1c9",
        "images": [
            {"image": image_file(&imgs[1]), "mountPoint": "/boot/efi", "fsType": "vfat",
             "fsUuid": "A1B2-C3D4", "partType": "esp", "verity": null},
            {"image": image_file(&imgs[2]), "mountPoint": "/", "fsType": "ext4",
             "fsUuid": "88d2fa9b-7a32-450a-a9f8-aa9c3de79298",
             "partType": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
             "verity": {"image": image_file(&imgs[3]), "roothash": "ab12"}}
        ],
        "osPackages": [{"name": "bash", "version": "5", "release": "1", "arch": "x86_64"}],
        "bootloader": {"type": "systemd-boot", "systemdBoot": {"entries": [
            {"type": "uki-standalone", "path": "/boot/efi/EFI/Linux/os.efi",
             "cmdline": "ro", "kernel": "6.6.1"}]}},
        "disk": {"size": 4194304, "type": "gpt", "lbaSize": 512, "gptRegions": [
            {"image": image_file(&imgs[0]), "type": "primary-gpt", "startLba": 0},
            {"image": image_file(&imgs[1]), "type": "partition", "number": 1},
            {"image": image_file(&imgs[2]), "type": "partition", "number": 2},
            {"image": image_file(&imgs[3]), "type": "partition", "number": 3}
        ]},
        "compression": {"maxWindowLog": 29}
    });
    if version == "1.1" {
        m.as_object_mut().unwrap().remove("disk");
        m.as_object_mut().unwrap().remove("compression");
    }
    serde_json::to_vec_pretty(&m).unwrap()
}

fn write_tree(dir: &Path, imgs: &[Img], meta: &[u8]) {
    std::fs::write(dir.join("cosi-marker"), b"").unwrap();
    std::fs::write(dir.join("metadata.json"), meta).unwrap();
    for i in imgs {
        let p = dir.join(&i.path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, &i.data).unwrap();
    }
}

/// Run GNU tar in `dir` with the given format and member list.
fn gnu_tar(dir: &Path, out: &Path, format: &str, members: &[String]) {
    Cmd::new("tar")
        .arg(format!("--format={format}"))
        .arg("-cf")
        .arg(out)
        .arg("-C")
        .arg(dir)
        .args(members)
        .run()
        .unwrap();
}

fn code_path(e: &anyhow::Error) -> (String, Option<String>) {
    let t = find_trident_error(e).unwrap_or_else(|| panic!("no TridentError in {e:#}"));
    assert_eq!(t.category, Category::InvalidInput, "{e:#}");
    (t.code, t.path)
}

fn code(e: &anyhow::Error) -> String {
    code_path(e).0
}

// ---------------------------------------------------------------- hand-made tars

fn header(name: &str, size: u64, typeflag: u8, link: &str, base256: bool) -> Vec<u8> {
    assert!(name.len() <= 100 && link.len() <= 100);
    let mut b = vec![0u8; 512];
    b[..name.len()].copy_from_slice(name.as_bytes());
    b[100..107].copy_from_slice(b"0000644");
    b[108..115].copy_from_slice(b"0000000");
    b[116..123].copy_from_slice(b"0000000");
    if base256 {
        b[124] = 0x80;
        b[128..136].copy_from_slice(&size.to_be_bytes());
    } else {
        b[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    }
    b[136..147].copy_from_slice(b"14712345670");
    b[156] = typeflag;
    b[157..157 + link.len()].copy_from_slice(link.as_bytes());
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    fix_checksum(&mut b);
    b
}

fn fix_checksum(b: &mut [u8]) {
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn pad(out: &mut Vec<u8>) {
    while out.len() % 512 != 0 {
        out.push(0);
    }
}

#[derive(Clone)]
struct Entry {
    name: String,
    data: Vec<u8>,
    typeflag: u8,
    link: String,
    base256: bool,
}

fn file(name: &str, data: &[u8]) -> Entry {
    Entry {
        name: name.into(),
        data: data.to_vec(),
        typeflag: b'0',
        link: String::new(),
        base256: false,
    }
}

fn assemble(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if e.name.len() > 100 {
            out.extend(header(
                "././@LongLink",
                e.name.len() as u64 + 1,
                b'L',
                "",
                false,
            ));
            out.extend_from_slice(e.name.as_bytes());
            out.push(0);
            pad(&mut out);
        }
        let short: String = e.name.chars().take(100).collect();
        out.extend(header(
            &short,
            e.data.len() as u64,
            e.typeflag,
            &e.link,
            e.base256,
        ));
        out.extend_from_slice(&e.data);
        pad(&mut out);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn standard_entries(imgs: &[Img], meta: &[u8]) -> Vec<Entry> {
    let mut v = vec![file("cosi-marker", b""), file("metadata.json", meta)];
    v.extend(imgs.iter().map(|i| file(&i.path, &i.data)));
    v
}

fn open_mem(bytes: Vec<u8>, expected: Option<&str>) -> anyhow::Result<Cosi> {
    Cosi::open(Box::new(MemSource::new("hand.cosi", bytes)), expected)
}

// ---------------------------------------------------------------- real tar archives

fn check_opened(cosi: &Cosi, imgs: &[Img], meta: &[u8]) {
    assert_eq!(cosi.metadata_sha384(), sha(meta));
    assert_eq!(cosi.metadata_bytes(), meta);
    assert_eq!(cosi.metadata().version, MetadataVersion::V1_2);
    assert_eq!(cosi.max_window_log(), 29);
    assert_eq!(cosi.images().len(), 2);
    let esp = cosi.image_for_mount_point("/boot/efi").unwrap();
    assert_eq!(esp.part_type, "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    let root = cosi.image_for_mount_point("/").unwrap();
    assert_eq!(root.part_type, "4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
    assert_eq!(root.image.path, imgs[2].path);
    assert_eq!(cosi.regions().len(), 4);
    // Every located member holds exactly the bytes the metadata hashes.
    let mut located = vec![
        &esp.image,
        &root.image,
        &root.verity.as_ref().unwrap().image,
    ];
    located.extend(cosi.regions().iter().map(|r| &r.image));
    for im in located {
        let want = imgs.iter().find(|i| i.path == im.path).unwrap();
        let mut got = Vec::new();
        cosi.read_image(im).unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got, want.data, "{}", im.path);
        assert_eq!(im.sha384.as_deref(), Some(sha(&got).as_str()));
        assert_eq!(im.data_offset % 512, 0);
    }
}

#[test]
fn gnu_pax_and_ustar_archives_open() {
    for long in [false, true] {
        let imgs = sample_images(long);
        let meta = metadata_json(&imgs, "1.2");
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        write_tree(&tree, &imgs, &meta);
        let mut explicit = vec!["cosi-marker".to_string(), "metadata.json".to_string()];
        explicit.extend(imgs.iter().map(|i| i.path.clone()));
        // `./`-prefixed names and directory members, in readdir order.
        let dotted = vec![
            "./cosi-marker".to_string(),
            "./metadata.json".to_string(),
            "./images".to_string(),
        ];
        for format in ["gnu", "pax", "ustar"] {
            for (label, members) in [("explicit", &explicit), ("dotted", &dotted)] {
                let out = dir.path().join(format!("{format}-{label}-{long}.cosi"));
                gnu_tar(&tree, &out, format, members);
                let expected = sha(&meta).to_ascii_uppercase();
                let cosi = Cosi::open(Box::new(FileSource::new(&out).unwrap()), Some(&expected))
                    .unwrap_or_else(|e| panic!("{format} {label} long={long}: {e:#}"));
                check_opened(&cosi, &imgs, &meta);
                if label == "dotted" {
                    assert!(cosi
                        .members()
                        .iter()
                        .any(|m| m.path == "images" && m.kind == ctar::MemberKind::Directory));
                }
            }
        }
    }
}

#[test]
fn pax_archive_with_forced_extended_headers() {
    // --pax-option forces an `x` header per member and a global `g` header.
    let imgs = sample_images(false);
    let meta = metadata_json(&imgs, "1.2");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    write_tree(&tree, &imgs, &meta);
    let out = dir.path().join("x.cosi");
    let mut args: Vec<String> = vec![
        "--format=pax".into(),
        "--pax-option=globexthdr.name=pax_global,exthdr.name=%d/PaxHeaders/%f,atime:=0".into(),
        "-cf".into(),
        out.display().to_string(),
        "-C".into(),
        tree.display().to_string(),
        "cosi-marker".into(),
        "metadata.json".into(),
    ];
    args.extend(imgs.iter().map(|i| i.path.clone()));
    Cmd::new("tar").args(&args).run().unwrap();
    let raw = std::fs::read(&out).unwrap();
    // The archive really has extended headers (typeflag 'x' somewhere).
    assert!(raw
        .chunks(512)
        .any(|b| b[156] == b'x' && b[257..262] == *b"ustar"));
    // The walker applies each `x` header to the member after it: cosi-marker stays first.
    let e = Cosi::open(Box::new(FileSource::new(&out).unwrap()), None).unwrap();
    check_opened(&e, &imgs, &meta);
}

#[test]
fn trailing_data_after_end_marker_is_ignored() {
    let imgs = sample_images(false);
    let meta = metadata_json(&imgs, "1.2");
    let mut bytes = assemble(&standard_entries(&imgs, &meta));
    let end = bytes.len() as u64;
    let mut footer = vec![0u8; 512];
    footer[..8].copy_from_slice(b"conectix"); // a VHD footer
    bytes.extend_from_slice(&footer);
    let cosi = open_mem(bytes, Some(&sha(&meta))).unwrap();
    check_opened(&cosi, &imgs, &meta);
    let s = cosi.summary();
    assert_eq!(s.trailing_bytes, 512);
    assert_eq!(s.tar_end_offset, end);
}

#[test]
fn summary_serializes_with_sizes() {
    let imgs = sample_images(false);
    let meta = metadata_json(&imgs, "1.2");
    let cosi = open_mem(assemble(&standard_entries(&imgs, &meta)), None).unwrap();
    let s = cosi.summary();
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["metadataVersion"], "1.2");
    assert_eq!(v["metadataSha384"], sha(&meta));
    assert_eq!(v["osArch"], "x86_64");
    assert_eq!(v["osName"], "Test OS 1");
    assert_eq!(v["bootloader"], "systemd-boot");
    assert_eq!(v["maxWindowLog"], 29);
    assert_eq!(v["images"][1]["mountPoint"], "/");
    assert_eq!(
        v["images"][1]["image"]["compressedSize"],
        imgs[2].data.len()
    );
    assert_eq!(v["images"][1]["image"]["uncompressedSize"], 200_000);
    assert!(v["images"][1]["image"]["dataOffset"].as_u64().unwrap() > 0);
    assert_eq!(v["disk"]["regions"][0]["type"], "primary-gpt");
    let total: u64 = imgs.iter().map(|i| i.data.len() as u64).sum();
    assert_eq!(s.total_compressed_size, total);
    assert_eq!(
        s.total_uncompressed_size,
        imgs.iter().map(|i| i.raw_len).sum::<u64>()
    );
    let human = s.render_human();
    assert!(human.contains("Metadata SHA-384: "), "{human}");
    assert!(human.contains("images/root.rawzst"), "{human}");
}

// ---------------------------------------------------------------- malicious / broken

#[test]
fn hand_made_long_names_and_base256_sizes_open() {
    let imgs = sample_images(true);
    let meta = metadata_json(&imgs, "1.2");
    let mut entries = standard_entries(&imgs, &meta);
    for e in entries.iter_mut().skip(2) {
        e.base256 = true;
    }
    let cosi = open_mem(assemble(&entries), Some(&sha(&meta))).unwrap();
    check_opened(&cosi, &imgs, &meta);
}

#[test]
fn unsafe_member_paths_are_refused() {
    let imgs = sample_images(false);
    let meta = metadata_json(&imgs, "1.2");
    for bad in [
        "images/../../etc/shadow",
        "/images/root.rawzst",
        "../x",
        "images/..",
    ] {
        let mut entries = standard_entries(&imgs, &meta);
        entries.push(file(bad, b"evil"));
        let e = open_mem(assemble(&entries), None).unwrap_err();
        assert_eq!(code(&e), rd::E_UNSAFE_PATH, "{bad}: {e:#}");
    }
}

#[test]
fn link_members_are_refused() {
    let imgs = sample_images(false);
    let meta = metadata_json(&imgs, "1.2");
    for typeflag in [b'2', b'1'] {
        let mut entries = standard_entries(&imgs, &meta);
        // Replace the root image by a link to a device.
        entries[4] = Entry {
            data: Vec::new(),
            typeflag,
            link: "/dev/sda".into(),
            ..entries[4].clone()
        };
        let e = open_mem(assemble(&entries), None).unwrap_err();
        assert_eq!(code(&e), rd::E_LINK_MEMBER, "{e:#}");
        assert!(format!("{e:#}").contains("/dev/sda"));
    }
}

#[test]
fn size_field_larger_than_file_is_refused() {
    let imgs = sample_images(false);
    let meta = metadata_json(&imgs, "1.2");
    let mut bytes = assemble(&standard_entries(&imgs, &meta));
    // Rewrite the size of the last image header (find it by name).
    let off = bytes
        .chunks(512)
        .position(|b| b.starts_with(b"images/root-verity.rawzst\0"))
        .unwrap()
        * 512;
    bytes[off + 124..off + 135].copy_from_slice(b"77777777777");
    fix_checksum(&mut bytes[off..off + 512]);
    let e = open_mem(bytes.clone(), None).unwrap_err();
    assert_eq!(code(&e), ctar::E_MEMBER_PAST_END, "{e:#}");
    // Same in base-256, with a size that would overflow an offset addition.
    bytes[off + 124..off + 136].copy_from_slice(&[
        0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf0,
    ]);
    fix_checksum(&mut bytes[off..off + 512]);
    let e = open_mem(bytes, None).unwrap_err();
    assert_eq!(code(&e), ctar::E_MEMBER_PAST_END, "{e:#}");
}

#[test]
fn truncated_archives_are_refused() {
    let imgs = sample_images(false);
    let meta = metadata_json(&imgs, "1.2");
    let bytes = assemble(&standard_entries(&imgs, &meta));
    let n = bytes.len();
    // Without the end marker, inside the end marker, inside a header.
    for cut in [n - 1024, n - 512, n - 1024 - 512 + 100] {
        let e = open_mem(bytes[..cut].to_vec(), None).unwrap_err();
        let c = code(&e);
        assert!(
            c == ctar::E_TRUNCATED || c == ctar::E_MEMBER_PAST_END,
            "cut at {cut}: {e:#}"
        );
    }
    let e = open_mem(bytes[..n - 1024].to_vec(), None).unwrap_err();
    assert_eq!(code(&e), ctar::E_TRUNCATED);
    // Inside image data.
    let e = open_mem(bytes[..3000].to_vec(), None).unwrap_err();
    assert_eq!(code(&e), ctar::E_MEMBER_PAST_END);
    // An empty file.
    let e = open_mem(Vec::new(), None).unwrap_err();
    assert_eq!(code(&e), ctar::E_TRUNCATED);
}

#[test]
fn corrupt_header_checksum_is_refused() {
    let imgs = sample_images(false);
    let meta = metadata_json(&imgs, "1.2");
    let mut bytes = assemble(&standard_entries(&imgs, &meta));
    bytes[512 + 3] ^= 0x20; // "metadata.json" -> "metAdata.json", checksum stale
    let e = open_mem(bytes, None).unwrap_err();
    assert_eq!(code(&e), ctar::E_BAD_CHECKSUM, "{e:#}");
}

#[test]
fn duplicate_member_names_are_refused() {
    let imgs = sample_images(false);
    let meta = metadata_json(&imgs, "1.2");
    for dup in ["metadata.json", "images/root.rawzst"] {
        let mut entries = standard_entries(&imgs, &meta);
        let copy = entries.iter().find(|e| e.name == dup).unwrap().clone();
        entries.push(copy);
        let e = open_mem(assemble(&entries), None).unwrap_err();
        assert_eq!(code(&e), rd::E_DUPLICATE_MEMBER, "{dup}: {e:#}");
    }
    // `./x` and `x` are the same member.
    let mut entries = standard_entries(&imgs, &meta);
    entries.push(file("./images/esp.rawzst", &imgs[1].data));
    let e = open_mem(assemble(&entries), None).unwrap_err();
    assert_eq!(code(&e), rd::E_DUPLICATE_MEMBER);
}

#[test]
fn marker_and_metadata_presence() {
    let imgs = sample_images(false);
    let meta = metadata_json(&imgs, "1.2");
    let entries = standard_entries(&imgs, &meta);

    // Missing metadata.
    let mut v = entries.clone();
    v.remove(1);
    let e = open_mem(assemble(&v), None).unwrap_err();
    assert_eq!(code(&e), rd::E_MISSING_METADATA, "{e:#}");

    // Missing marker with 1.2 metadata.
    let mut v = entries.clone();
    v.remove(0);
    let e = open_mem(assemble(&v), None).unwrap_err();
    assert_eq!(code(&e), rd::E_MISSING_MARKER, "{e:#}");

    // Not a COSI file at all.
    let e = open_mem(assemble(&[file("hello.txt", b"hi")]), None).unwrap_err();
    assert_eq!(code(&e), rd::E_MISSING_MARKER, "{e:#}");

    // Marker not first / not empty / not a regular file.
    let mut v = entries.clone();
    v.swap(0, 1);
    assert_eq!(
        code(&open_mem(assemble(&v), None).unwrap_err()),
        rd::E_BAD_MARKER
    );
    let mut v = entries.clone();
    v[0].data = b"x".to_vec();
    assert_eq!(
        code(&open_mem(assemble(&v), None).unwrap_err()),
        rd::E_BAD_MARKER
    );
    let mut v = entries.clone();
    v[0].typeflag = b'5';
    assert_eq!(
        code(&open_mem(assemble(&v), None).unwrap_err()),
        rd::E_BAD_MARKER
    );

    // metadata.json as a directory.
    let mut v = entries.clone();
    v[1].typeflag = b'5';
    v[1].data.clear();
    assert_eq!(
        code(&open_mem(assemble(&v), None).unwrap_err()),
        rd::E_METADATA_NOT_REGULAR
    );

    // A 1.1 file from before the marker existed opens without one.
    let meta11 = metadata_json(&imgs, "1.1");
    let mut v = standard_entries(&imgs, &meta11);
    v.remove(0);
    let cosi = open_mem(assemble(&v), None).unwrap();
    assert_eq!(cosi.metadata().version, MetadataVersion::V1_1);
    assert!(cosi.regions().is_empty());
}

#[test]
fn metadata_hash_is_checked() {
    let imgs = sample_images(false);
    let meta = metadata_json(&imgs, "1.2");
    let bytes = assemble(&standard_entries(&imgs, &meta));
    let other = sha(b"something else");
    let e = open_mem(bytes.clone(), Some(&other)).unwrap_err();
    assert_eq!(code(&e), rd::E_METADATA_HASH_MISMATCH, "{e:#}");
    assert!(format!("{e:#}").contains(&sha(&meta)));
    let e = open_mem(bytes.clone(), Some("ignored")).unwrap_err();
    assert_eq!(code(&e), rd::E_BAD_EXPECTED_HASH);
    let e = open_mem(bytes.clone(), Some(&sha(&meta)[..95])).unwrap_err();
    assert_eq!(code(&e), rd::E_BAD_EXPECTED_HASH);
    // A one-byte change to metadata.json changes the hash.
    let mut meta2 = meta.clone();
    meta2.push(b'\n');
    let e = open_mem(
        assemble(&standard_entries(&imgs, &meta2)),
        Some(&sha(&meta)),
    )
    .unwrap_err();
    assert_eq!(code(&e), rd::E_METADATA_HASH_MISMATCH);
    assert!(open_mem(bytes, Some(&sha(&meta))).is_ok());
}

#[test]
fn images_must_match_their_members() {
    let imgs = sample_images(false);
    let meta = metadata_json(&imgs, "1.2");

    // Missing image member.
    let mut v = standard_entries(&imgs, &meta);
    v.retain(|e| e.name != "images/root-verity.rawzst");
    let e = open_mem(assemble(&v), None).unwrap_err();
    assert_eq!(
        code_path(&e),
        (
            rd::E_IMAGE_MISSING.to_string(),
            Some("images[1].verity.image.path".to_string())
        )
    );

    // Member size differs from compressedSize.
    let mut v = standard_entries(&imgs, &meta);
    v[3].data.push(0);
    let e = open_mem(assemble(&v), None).unwrap_err();
    assert_eq!(
        code_path(&e),
        (
            rd::E_IMAGE_SIZE_MISMATCH.to_string(),
            Some("images[0].image.compressedSize".to_string())
        )
    );

    // Image path is a directory.
    let mut v = standard_entries(&imgs, &meta);
    v[2].typeflag = b'5';
    v[2].data.clear();
    let e = open_mem(assemble(&v), None).unwrap_err();
    assert_eq!(code(&e), rd::E_IMAGE_NOT_REGULAR);

    // Extra unrelated files after the images are ignored.
    let mut v = standard_entries(&imgs, &meta);
    v.push(file("extensions/notes.txt", b"hello"));
    assert!(open_mem(assemble(&v), None).is_ok());
}

#[test]
fn invalid_metadata_inside_an_archive_names_the_field() {
    let imgs = sample_images(false);
    let mut meta: Value = serde_json::from_slice(&metadata_json(&imgs, "1.2")).unwrap();
    meta["images"][0]["image"]["sha384"] = json!("deadbeef");
    let meta = serde_json::to_vec(&meta).unwrap();
    let e = open_mem(assemble(&standard_entries(&imgs, &meta)), None).unwrap_err();
    let t = find_trident_error(&e).unwrap();
    assert_eq!(t.code, md::E_INVALID_SHA384);
    assert_eq!(t.path.as_deref(), Some("images[0].image.sha384"));
    assert_eq!(t.device.as_deref(), Some("hand.cosi"));

    let v2 = metadata_json(&imgs, "2.0");
    let e = open_mem(assemble(&standard_entries(&imgs, &v2)), None).unwrap_err();
    let t = find_trident_error(&e).unwrap();
    assert_eq!(t.code, md::E_UNSUPPORTED_VERSION);
    assert_eq!(t.category, Category::UnsupportedConfiguration);
}

// ---------------------------------------------------------------- compat samples

fn compat_dir(sub: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(COMPAT).join(sub)
}

#[test]
fn compat_valid_samples_are_accepted() {
    let mut n = 0;
    for entry in std::fs::read_dir(compat_dir("valid")).unwrap() {
        let p = entry.unwrap().path();
        let m = CosiMetadata::parse(&std::fs::read(&p).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(m.version, MetadataVersion::V1_2);
        assert!(m.disk.is_some() && m.compression.is_some());
        n += 1;
    }
    assert_eq!(n, 2);
}

#[test]
fn compat_invalid_samples_are_rejected_naming_the_field() {
    let expected: &[(&str, &str, &str)] = &[
        (
            "gpt-missing-primary-region.json",
            md::E_MISSING_PRIMARY_GPT,
            "disk.gptRegions[0].type",
        ),
        ("invalid-lba-size.json", md::E_INVALID_VALUE, "disk.lbaSize"),
        (
            "invalid-part-type-uuid.json",
            md::E_INVALID_PART_TYPE,
            "images[1].partType",
        ),
        (
            "missing-image-path-prefix.json",
            md::E_INVALID_IMAGE_PATH,
            "images[0].image.path",
        ),
        ("missing-os-arch.json", md::E_MISSING_FIELD, "osArch"),
        (
            "missing-os-packages.json",
            md::E_MISSING_FIELD,
            "osPackages",
        ),
        (
            "os-package-missing-arch.json",
            md::E_MISSING_FIELD,
            "osPackages[0].arch",
        ),
        (
            "partition-region-missing-number.json",
            md::E_MISSING_FIELD,
            "disk.gptRegions[1].number",
        ),
        (
            "short-sha384.json",
            md::E_INVALID_SHA384,
            "images[0].image.sha384",
        ),
        (
            "systemd-boot-missing-config.json",
            md::E_MISSING_FIELD,
            "bootloader.systemdBoot",
        ),
        (
            "unknown-bootloader-type.json",
            md::E_INVALID_VALUE,
            "bootloader.type",
        ),
    ];
    let mut seen = 0;
    for entry in std::fs::read_dir(compat_dir("invalid")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if name == "wrong-version.json" {
            continue; // see wrong_version_sample_is_read_as_1_1
        }
        let (_, code, path) = expected
            .iter()
            .find(|(f, _, _)| *f == name)
            .unwrap_or_else(|| panic!("no expectation for new sample {name}"));
        let errs = CosiMetadata::parse(&std::fs::read(&p).unwrap())
            .err()
            .unwrap_or_else(|| panic!("{name} was accepted"))
            .0;
        let first = &errs[0];
        assert_eq!(
            (first.code.as_str(), first.path.as_deref()),
            (*code, Some(*path)),
            "{name}: {errs:?}"
        );
        assert_eq!(first.category, Category::InvalidInput);
        assert!(first.message.contains(path), "{name}: {}", first.message);
        seen += 1;
    }
    assert_eq!(seen, expected.len());
}

/// Decision (docs/cosi.md): `wrong-version.json` says 1.1, so it is read as a 1.1
/// document; `disk` and `compression` did not exist in 1.1 and are ignored, like any
/// unknown field. Everything 1.1 requires is present and valid, so it is accepted.
#[test]
fn wrong_version_sample_is_read_as_1_1() {
    let raw = std::fs::read(compat_dir("invalid").join("wrong-version.json")).unwrap();
    let m = CosiMetadata::parse(&raw).unwrap();
    assert_eq!(m.version, MetadataVersion::V1_1);
    assert_eq!(m.disk, None);
    assert_eq!(m.compression, None);
    assert_eq!(m.max_window_log(), md::DEFAULT_MAX_WINDOW_LOG);
    assert_eq!(m.images.len(), 2);
}

/// The valid compat samples inside real (sparse) COSI files: member sizes from the
/// metadata, data as holes, opened through `FileSource`.
#[test]
fn compat_valid_samples_open_as_cosi_files() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["grub-simple.json", "verity-uki-systemd-boot.json"] {
        let raw = std::fs::read(compat_dir("valid").join(name)).unwrap();
        let m = CosiMetadata::parse(&raw).unwrap();
        let path = dir.path().join(format!("{name}.cosi"));
        let mut f = std::fs::File::create(&path).unwrap();
        use std::io::{Seek, SeekFrom, Write};
        let put = |f: &mut std::fs::File, name: &str, data: &[u8], size: u64| {
            f.write_all(&header(name, size, b'0', "", false)).unwrap();
            f.write_all(data).unwrap();
            let pos = f.stream_position().unwrap();
            let skip = size - data.len() as u64;
            let end = (pos + skip).div_ceil(512) * 512;
            f.seek(SeekFrom::Start(end)).unwrap();
        };
        put(&mut f, "cosi-marker", b"", 0);
        put(&mut f, "metadata.json", &raw, raw.len() as u64);
        for (_, im) in m.referenced_images() {
            put(&mut f, &im.path, b"", im.compressed_size);
        }
        f.write_all(&[0u8; 1024]).unwrap();
        drop(f);
        let cosi = Cosi::open(Box::new(FileSource::new(&path).unwrap()), Some(&sha(&raw)))
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let root = cosi.image_for_mount_point("/").unwrap();
        assert_eq!(root.image.compressed_size, 192_874_245);
        assert_eq!(cosi.max_window_log(), m.max_window_log());
        if name.starts_with("verity") {
            assert_eq!(
                root.verity.as_ref().unwrap().image.path,
                "images/root-verity.rawzst"
            );
            assert_eq!(cosi.summary().bootloader.as_deref(), Some("systemd-boot"));
        }
    }
}

// ---------------------------------------------------------------- robustness

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Random bit flips in the headers of a real GNU tar COSI never panic: the reader
/// either opens the file (the flip hit an unused field) or returns an error.
#[test]
fn random_header_flips_never_panic() {
    let imgs = sample_images(true);
    let meta = metadata_json(&imgs, "1.2");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    write_tree(&tree, &imgs, &meta);
    let out = dir.path().join("gnu.cosi");
    gnu_tar(
        &tree,
        &out,
        "gnu",
        &[
            "cosi-marker".into(),
            "metadata.json".into(),
            "images".into(),
        ],
    );
    let base = std::fs::read(&out).unwrap();
    let headers: Vec<usize> = {
        let idx = ctar::walk(&MemSource::new("x", base.clone())).unwrap();
        let mut h: Vec<usize> = idx
            .members
            .iter()
            .map(|m| m.header_offset as usize)
            .collect();
        h.push(512); // a GNU long-name header is before the long member
        h.push(idx.end_offset as usize - 1024); // the end marker
        h
    };
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let (mut ok, mut err) = (0, 0);
    for round in 0..1500 {
        let mut m = base.clone();
        let h = headers[(rng.next() as usize) % headers.len()];
        for _ in 0..(1 + rng.next() % 3) {
            let i = h + (rng.next() as usize) % 512;
            m[i] ^= 1 << (rng.next() % 8);
        }
        if round % 2 == 0 {
            fix_checksum(&mut m[h..h + 512]);
        }
        match open_mem(m, Some(&sha(&meta))) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(find_trident_error(&e).is_some(), "uncategorised: {e:#}");
                err += 1;
            }
        }
    }
    assert!(err > 0 && ok + err == 1500);
}

fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let p = format!("{at}/{k}");
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        _ => {}
    }
}

/// Every node of every valid sample replaced by every JSON type (and removed): the
/// validator never panics, and a rejection always names at least one error.
#[test]
fn metadata_type_confusion_never_panics() {
    let replacements = [
        Value::Null,
        json!(0),
        json!(-1),
        json!(1.5),
        json!(1e30),
        json!("x"),
        json!(""),
        json!([]),
        json!({}),
        json!(true),
    ];
    let (mut ok, mut rejected) = (0, 0);
    for name in ["grub-simple.json", "verity-uki-systemd-boot.json"] {
        let base: Value =
            serde_json::from_slice(&std::fs::read(compat_dir("valid").join(name)).unwrap())
                .unwrap();
        let mut ps = Vec::new();
        pointers(&base, String::new(), &mut ps);
        for p in &ps {
            for r in replacements.iter().cloned().map(Some).chain([None]) {
                let mut d = base.clone();
                match r {
                    Some(r) => *d.pointer_mut(p).unwrap() = r,
                    None => {
                        let (parent, key) = p.rsplit_once('/').unwrap();
                        let parent = if parent.is_empty() {
                            &mut d
                        } else {
                            d.pointer_mut(parent).unwrap()
                        };
                        match parent {
                            Value::Object(m) => {
                                m.remove(key);
                            }
                            Value::Array(a) => {
                                a.remove(key.parse::<usize>().unwrap());
                            }
                            _ => unreachable!(),
                        }
                    }
                }
                match CosiMetadata::from_value(&d) {
                    Ok(_) => ok += 1,
                    Err(es) => {
                        assert!(!es.0.is_empty());
                        assert!(es.0.iter().all(|e| !e.code.is_empty()));
                        rejected += 1;
                    }
                }
            }
        }
    }
    assert!(ok > 0 && rejected > ok, "ok {ok}, rejected {rejected}");
}

/// A source that counts the bytes handed out.
struct Counting {
    inner: MemSource,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl trident::cosi::source::Source for Counting {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn size(&self) -> anyhow::Result<u64> {
        self.inner.size()
    }
    fn read_range(&self, offset: u64, len: u64) -> anyhow::Result<Box<dyn Read + Send>> {
        self.read
            .fetch_add(len, std::sync::atomic::Ordering::SeqCst);
        self.inner.read_range(offset, len)
    }
}

/// Opening reads headers and metadata.json only, never image data.
#[test]
fn open_reads_only_headers_and_metadata() {
    use trident::cosi::source::Source;
    let imgs = sample_images(true);
    let meta = metadata_json(&imgs, "1.2");
    let bytes = assemble(&standard_entries(&imgs, &meta));
    let total = bytes.len() as u64;
    let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let src = Counting {
        inner: MemSource::new("counted", bytes),
        read: read.clone(),
    };
    assert_eq!(src.size().unwrap(), total);
    let cosi = Cosi::open(Box::new(src), None).unwrap();
    let n = read.load(std::sync::atomic::Ordering::SeqCst);
    // 6 member headers, 1 long-name header, 2 end blocks; the long name (with its
    // NUL) and metadata.json.
    let expected = 9 * 512 + (imgs[2].path.len() as u64 + 1) + meta.len() as u64;
    assert_eq!(n, expected, "read {n} of {total} bytes");
    let image_bytes: u64 = imgs.iter().map(|i| i.data.len() as u64).sum();
    assert!(
        n <= total - image_bytes,
        "read {n}, non-image bytes {}",
        total - image_bytes
    );
    drop(cosi);
}
