//! `trident cosi build | inspect | verify` end to end on a fixture disk image.

use std::process::{Command, Output};

fn trident(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trident"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("running trident")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn build_inspect_verify_and_detect_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    let cosi = dir.path().join("v1.cosi");
    let out = Command::new("tests/fixtures/make-disk-image.sh")
        .arg(&disk)
        .arg("v1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // As under systemd: progress also goes to NOTIFY_SOCKET as the unit's STATUS=.
    let notify_path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_trident"))
        .args([
            "cosi",
            "build",
            disk.to_str().unwrap(),
            "-o",
            cosi.to_str().unwrap(),
            "--format",
            "json",
        ])
        .env_remove("RUST_LOG")
        .env("NOTIFY_SOCKET", &notify_path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    notify.set_nonblocking(true).unwrap();
    let mut statuses = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        statuses.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        statuses
            .iter()
            .any(|s| s.starts_with("STATUS=building COSI: 100% (")),
        "{statuses:?}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let meta_sha = summary["metadataSha384"].as_str().unwrap().to_string();
    assert_eq!(meta_sha.len(), 96);

    let c = cosi.to_str().unwrap();
    let o = trident(&[
        "cosi", "inspect", c, "--format", "json", "--sha384", &meta_sha,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let inspect: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let text = inspect.to_string();
    assert!(
        text.contains("/boot/efi") && text.contains("ext4"),
        "{text}"
    );

    let o = trident(&["cosi", "verify", c]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("images verified"));

    // A wrong metadata hash is refused before anything else.
    let wrong = "0".repeat(96);
    let o = trident(&["cosi", "verify", c, "--sha384", &wrong]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));

    // Flip one byte inside the root image member: verify names the image.
    let o = trident(&["cosi", "inspect", c, "--format", "json"]);
    let inspect: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let root = inspect["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["mountPoint"] == "/")
        .expect("root image")
        .clone();
    let offset = root["image"]["dataOffset"]
        .as_u64()
        .or_else(|| root["dataOffset"].as_u64())
        .unwrap_or_else(|| panic!("no data offset in {root}"));
    let mut bytes = std::fs::read(&cosi).unwrap();
    bytes[offset as usize + 100] ^= 0x55;
    std::fs::write(&cosi, &bytes).unwrap();
    let o = trident(&["cosi", "verify", c]);
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(
        err.contains("image-hash-mismatch") || err.contains("image-decode-failed"),
        "{err}"
    );
    assert!(err.contains("root"), "{err}");
}
