//! The `trident` binary as a user runs it: exit codes, output shape, datastore reads.

use std::path::Path;
use std::process::{Command, Output};

fn trident(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trident"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("running trident")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const VALID: &str = "../shared/compat/host-configs/basic.yaml";

#[test]
fn validate_valid_is_silent_and_exits_zero() {
    let o = trident(&["validate", VALID]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn validate_reports_every_error_one_per_line_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let hc = dir.path().join("bad.yaml");
    std::fs::write(
        &hc,
        r#"
storage:
  disks:
  - id: os
    device: /dev/sda
    partitions:
    - { id: esp, type: esp, size: 64M }
    - { id: root, type: root, size: 1000 }
  filesystems:
  - { deviceId: esp, mountPoint: /boot/efi }
  - { deviceId: root, mountPoint: relative/path }
"#,
    )
    .unwrap();
    let o = trident(&["validate", hc.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert!(lines.len() >= 2, "expected several errors:\n{err}");
    assert!(err.contains("storage.disks[0].partitions[1].size"), "{err}");
    assert!(err.contains("storage.filesystems[1].mountPoint"), "{err}");
    assert!(err.contains("invalid-input ["), "{err}");
}

#[test]
fn validate_missing_file_is_invalid_input() {
    let o = trident(&["validate", "/nonexistent/config.yaml"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("config-unreadable"), "{}", stderr(&o));
}

#[test]
fn usage_error_exits_2() {
    let o = trident(&["get", "no-such-kind"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn version_flag() {
    let o = trident(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn plan_prints_layout_in_every_format() {
    let o = trident(&["plan", "examples/ab-update.yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("A/B pair 'root'"), "{}", stdout(&o));
    let o = trident(&["plan", "examples/ab-update.yaml", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["abVolumePairs"][0]["volumeA"], "root-a");
}

#[test]
fn get_without_datastore_says_not_provisioned() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dir.path().join("datastore.sqlite");
    let o = trident(&["get", "status", "--datastore", ds.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("servicingState: not-provisioned"));
    assert!(stderr(&o).contains("not provisioned"), "{}", stderr(&o));
    assert!(!ds.exists(), "get must not create a datastore");

    let o = trident(&["get", "history", "--datastore", ds.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("not-provisioned"), "{}", stderr(&o));
    assert!(!ds.exists(), "get must not create a datastore");
}

fn provisioned_datastore(path: &Path) {
    use trident::datastore::Datastore;
    use trident::status::{AbVolume, HostStatus, ImageRef};
    let hc = trident::config::parse(&std::fs::read_to_string(VALID).unwrap()).unwrap();
    let mut ds = Datastore::open(path).unwrap();
    let mut hs = HostStatus::default();
    hs.stage_clean_install(
        hc,
        ImageRef {
            url: "file:///img.cosi".into(),
            sha384: "ab".repeat(48),
        },
        Default::default(),
    )
    .unwrap();
    ds.record("stage-clean-install", &hs).unwrap();
    hs.finalize_clean_install().unwrap();
    ds.record("finalize-clean-install", &hs).unwrap();
    hs.commit_clean_install(AbVolume::VolumeA).unwrap();
    ds.record("commit", &hs).unwrap();
}

#[test]
fn get_reads_status_history_and_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dir.path().join("datastore.sqlite");
    provisioned_datastore(&ds);
    let dsp = ds.to_str().unwrap();

    let o = trident(&["get", "status", "--datastore", dsp, "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["servicingState"], "provisioned");
    assert_eq!(v["activeVolume"], "volume-a");

    let o = trident(&["get", "history", "--datastore", dsp, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["operation"], "commit", "newest first: {v}");

    let o = trident(&[
        "get",
        "history",
        "--datastore",
        dsp,
        "--limit",
        "1",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);

    // Summaries: a few lines for people.
    let o = trident(&["get", "status", "--datastore", dsp, "--format", "summary"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("state:          provisioned\n"), "{text}");
    assert!(text.contains("active volume:  volume-a\n"), "{text}");
    assert!(
        text.contains("image:          file:///img.cosi\n"),
        "{text}"
    );
    let o = trident(&["get", "history", "--datastore", dsp, "--format", "summary"]);
    let lines: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("#3 "), "{lines:?}");
    assert!(
        lines[0].contains("commit") && lines[0].contains("clean-install-finalized -> provisioned"),
        "{lines:?}"
    );
    assert!(
        lines[2].contains("not-provisioned -> clean-install-staged"),
        "{lines:?}"
    );

    let o = trident(&["get", "configuration", "--datastore", dsp]);
    assert_eq!(o.status.code(), Some(0));
    let hc = trident::config::parse(&stdout(&o)).unwrap();
    assert_eq!(hc.image.unwrap().url, "file:///path/to/image.cosi");

    let o = trident(&["get", "last-error", "--datastore", dsp]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o).trim(), "null");
}

#[test]
fn get_refuses_foreign_file_and_leaves_it() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dir.path().join("datastore.sqlite");
    std::fs::write(
        &ds,
        b"this is not a database, and it must stay exactly like this",
    )
    .unwrap();
    let before = std::fs::read(&ds).unwrap();
    let o = trident(&["get", "status", "--datastore", ds.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains(ds.to_str().unwrap()), "{}", stderr(&o));
    assert_eq!(std::fs::read(&ds).unwrap(), before);
}
