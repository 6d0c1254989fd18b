//! The installed `trident-generator` binary: environment overrides, kernel-log output,
//! exit status 0 on every failure, no partial output.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

const TRIAL: &str = r#"{"version":1,"operation":"ab-update","updateId":"u1","volume":"b"}"#;

fn generator(out: &Path, root: &Path, cmdline: &Path, kmsg: &Path) -> std::process::ExitStatus {
    // Like /dev/kmsg, the log must exist; the generator never creates it.
    fs::write(kmsg, "").unwrap();
    Command::new(env!("CARGO_BIN_EXE_trident-generator"))
        .args([out, out, out])
        .env("TRIDENT_GENERATOR_ROOT", root)
        .env("TRIDENT_GENERATOR_EFIVARS", root.join("no-efivars"))
        .env("TRIDENT_GENERATOR_CMDLINE", cmdline)
        .env("TRIDENT_GENERATOR_KMSG", kmsg)
        .env_remove("SYSTEMD_PROC_CMDLINE")
        .env_remove("SYSTEMD_IN_INITRD")
        .status()
        .expect("running trident-generator")
}

fn names(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in walk(dir) {
        out.insert(e.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v
}

#[test]
fn trial_boot_is_wired_and_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir_all(root.join("etc/trident/boot")).unwrap();
    fs::write(root.join("etc/trident/boot/trial"), TRIAL).unwrap();
    let cmdline = tmp.path().join("cmdline");
    fs::write(&cmdline, "root=/dev/vda3 ro\n").unwrap();
    let kmsg = tmp.path().join("kmsg");
    let out = tmp.path().join("out");
    fs::create_dir_all(&out).unwrap();
    assert!(generator(&out, &root, &cmdline, &kmsg).success());
    assert_eq!(
        names(&out),
        BTreeSet::from([
            "boot-complete.target.requires/trident-health.target".to_string(),
            "multi-user.target.wants/trident-commit.service".to_string(),
        ])
    );
    let log = fs::read_to_string(&kmsg).unwrap();
    assert!(
        log.starts_with("<6>trident-generator: trial boot of AbUpdate u1"),
        "{log}"
    );
}

#[test]
fn unreadable_cmdline_logs_and_wires_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir_all(root.join("etc/trident/boot")).unwrap();
    fs::write(root.join("etc/trident/boot/trial"), TRIAL).unwrap();
    let kmsg = tmp.path().join("kmsg");
    let out = tmp.path().join("out");
    fs::create_dir_all(&out).unwrap();
    assert!(generator(&out, &root, &tmp.path().join("missing-cmdline"), &kmsg).success());
    assert!(names(&out).is_empty());
    let log = fs::read_to_string(&kmsg).unwrap();
    assert!(
        log.contains("<3>trident-generator: wiring nothing: reading"),
        "{log}"
    );
}

#[test]
fn failed_write_removes_partial_output_and_exits_zero() {
    // A file sits where a .wants directory must go: the write fails half-way (after
    // the health target link); the generator must leave no trident link and exit 0.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir_all(root.join("etc/trident/boot")).unwrap();
    fs::write(root.join("etc/trident/boot/trial"), TRIAL).unwrap();
    let out = tmp.path().join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("multi-user.target.wants"), "in the way").unwrap();
    let cmdline = tmp.path().join("cmdline");
    fs::write(&cmdline, "quiet\n").unwrap();
    let kmsg = tmp.path().join("kmsg");
    assert!(generator(&out, &root, &cmdline, &kmsg).success());
    let log = fs::read_to_string(&kmsg).unwrap();
    assert!(
        log.contains("<3>trident-generator: writing units into"),
        "{log}"
    );
    assert_eq!(
        names(&out),
        BTreeSet::from(["multi-user.target.wants".to_string()])
    );
}

#[test]
fn usage_error_is_not_silent() {
    let st = Command::new(env!("CARGO_BIN_EXE_trident-generator"))
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(2));
}
