//! `systemd-analyze verify` (systemd 252) on every unit in `units/`, inside a temp root
//! holding the host's system units, our units, stand-in `/usr/bin/trident{,d}` (verify
//! checks that ExecStart= binaries exist) and the generator's output for a trial boot.
//! A deliberately broken unit proves the check can fail.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn have_systemd_analyze() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn unit_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("units");
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("trident")
        })
        .collect();
    v.sort();
    v
}

/// A root with the host's units, ours, and a stand-in /usr/bin/trident.
fn make_root() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let sys = tmp.path().join("usr/lib/systemd/system");
    fs::create_dir_all(&sys).unwrap();
    let st = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system/.", sys.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success(), "copying the host's units");
    for u in unit_files() {
        fs::copy(&u, sys.join(u.file_name().unwrap())).unwrap();
    }
    fs::create_dir_all(tmp.path().join("usr/bin")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for name in ["trident", "tridentd"] {
        let bin = tmp.path().join("usr/bin").join(name);
        fs::write(&bin, "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::create_dir_all(tmp.path().join("etc/systemd/system")).unwrap();
    tmp
}

/// Run verify on `units` (names) inside `root`; returns (success, combined output).
fn verify(root: &Path, units: &[String]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .arg(format!("--root={}", root.display()))
        .args(
            units
                .iter()
                .map(|u| root.join("usr/lib/systemd/system").join(u)),
        )
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn all_units_verify_cleanly() {
    if !have_systemd_analyze() {
        eprintln!("skipping: systemd-analyze not installed");
        return;
    }
    let units = unit_files();
    assert!(units.len() >= 11, "units/ has {} units", units.len());
    let root = make_root();
    let names: Vec<String> = units
        .iter()
        .map(|u| u.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let (ok, text) = verify(root.path(), &names);
    // Any output (unknown key, bad value, missing unit or binary) is a failure.
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

#[test]
fn every_unit_has_documentation() {
    for u in unit_files() {
        let s = fs::read_to_string(&u).unwrap();
        assert!(
            s.contains("\nDocumentation=file:/usr/share/doc/trident/"),
            "{}",
            u.display()
        );
    }
}

#[test]
fn generated_trial_wiring_verifies() {
    if !have_systemd_analyze() {
        eprintln!("skipping: systemd-analyze not installed");
        return;
    }
    let root = make_root();
    // Generator output for a trial boot, placed where verify --root looks for units.
    let fake = tempfile::tempdir().unwrap();
    fs::create_dir_all(fake.path().join("etc/trident/boot")).unwrap();
    fs::write(
        fake.path().join("etc/trident/boot/trial"),
        r#"{"version":1,"operation":"clean-install","updateId":"i1","volume":"a"}"#,
    )
    .unwrap();
    fs::write(
        fake.path().join("etc/trident/boot/health-checks"),
        r#"{"version":1,"checks":[{"name":"sample-commit-script","timeoutSeconds":5},{"name":"a b"}]}"#,
    )
    .unwrap();
    let kmsg = fake.path().join("kmsg");
    fs::write(&kmsg, "").unwrap();
    let out = root.path().join("etc/systemd/system");
    let st = Command::new(env!("CARGO_BIN_EXE_trident-generator"))
        .arg(&out)
        .env("TRIDENT_GENERATOR_ROOT", fake.path())
        .env("TRIDENT_GENERATOR_EFIVARS", fake.path().join("none"))
        .env("SYSTEMD_PROC_CMDLINE", "ro")
        .env("TRIDENT_GENERATOR_KMSG", &kmsg)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(out
        .join("trident-health-check@sample\\x2dcommit\\x2dscript.service.d")
        .is_dir());
    // Verify the instances and the units with drop-ins through the symlinked names.
    let units = [
        "trident-health-check@sample\\x2dcommit\\x2dscript.service",
        "trident-health-check@a\\x20b.service",
        "trident-rollback.service",
        "trident-health.target",
        "boot-complete.target",
        "trident-commit.service",
        // The whole boot transaction: catches ordering cycles through the wiring.
        "multi-user.target",
    ];
    let paths = units.iter().map(|u| {
        if u.starts_with("trident-health-check@") {
            out.join("trident-health.target.requires").join(u)
        } else {
            root.path().join("usr/lib/systemd/system").join(u)
        }
    });
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.path().display()))
        .args(paths)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && text.trim().is_empty(),
        "verify of the generated wiring:\n{text}"
    );
}

#[test]
fn verify_catches_a_broken_unit() {
    if !have_systemd_analyze() {
        eprintln!("skipping: systemd-analyze not installed");
        return;
    }
    let root = make_root();
    let sys = root.path().join("usr/lib/systemd/system");
    let good = fs::read_to_string(sys.join("trident-finalize.service")).unwrap();
    // The mistake this suite once caught: SuccessAction= in [Service].
    fs::write(
        sys.join("trident-broken.service"),
        good.replace("[Service]\n", "[Service]\nSuccessAction=reboot\n"),
    )
    .unwrap();
    let (_, text) = verify(root.path(), &["trident-broken.service".into()]);
    assert!(text.contains("Unknown key 'SuccessAction'"), "{text}");
    // And a missing ExecStart= binary.
    fs::remove_file(root.path().join("usr/bin/trident")).unwrap();
    let (ok, text) = verify(root.path(), &["trident-commit.service".into()]);
    assert!(!ok && text.contains("/usr/bin/trident"), "{text}");
}
