//! Container tier: the units and the generator under a real systemd PID 1
//! (`systemd-nspawn -b` of a cached Debian 12 root, see `tests/container/run.sh`).
//! Runs only with `TRIDENT_CONTAINER_TESTS=1` (`make test-container`); then a missing
//! prerequisite is a failure, not a skip.
//!
//! `/usr/bin/trident` in the container is `tests/container/fake-trident.sh`, a seam
//! standing in for the `trident internal ...` verbs until the engine provides them.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

fn enabled() -> bool {
    if std::env::var("TRIDENT_CONTAINER_TESTS").as_deref() != Ok("1") {
        eprintln!(
            "skipping: container tests run with TRIDENT_CONTAINER_TESTS=1 (make test-container)"
        );
        return false;
    }
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "container tests need root"
    );
    true
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cached, extracted Debian root (built on first use).
fn rootfs() -> PathBuf {
    let out = Command::new(repo().join("scripts/container-rootfs.sh"))
        .arg("--extract")
        .output()
        .expect("running scripts/container-rootfs.sh");
    assert!(
        out.status.success(),
        "container-rootfs.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A scenario: files (path in the container → content) laid over `make install`.
struct Boot {
    _tmp: tempfile::TempDir,
    results: PathBuf,
    exit: i32,
}

impl Boot {
    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.results.join(name)).unwrap_or_default()
    }

    fn calls(&self) -> Vec<String> {
        self.read("calls.log")
            .lines()
            .map(|l| l.split_once(' ').map_or("", |x| x.1).to_string())
            .collect()
    }

    /// Unit → property map from show.txt.
    fn show(&self, unit: &str) -> std::collections::HashMap<String, String> {
        let text = self.read("show.txt");
        for block in text.split("\n\n") {
            let map: std::collections::HashMap<String, String> = block
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if map.get("Id").map(String::as_str) == Some(unit) {
                return map;
            }
        }
        panic!("{unit} not in show.txt:\n{text}");
    }

    /// Job results systemd logged (UNIT, JOB_RESULT) from the persisted journal.
    fn job_results(&self) -> Vec<(String, String)> {
        let out = Command::new("journalctl")
            .arg("-D")
            .arg(self.results.join("journal"))
            .args([
                "-o",
                "json",
                "--no-pager",
                "MESSAGE_ID=39f53479d3a045ac8e11786248231fbf",
            ])
            .output()
            .expect("journalctl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                Some((
                    v.get("UNIT")?.as_str()?.to_string(),
                    v.get("JOB_RESULT")?.as_str()?.to_string(),
                ))
            })
            .collect()
    }

    fn dump(&self) -> String {
        let mut s = String::new();
        for f in [
            "exit-status",
            "system-state",
            "calls.log",
            "boot-complete-deps.txt",
            "show.txt",
            "generator-output.txt",
            "at-rollback.txt",
        ] {
            s += &format!("--- {f}\n{}\n", self.read(f));
        }
        let console = self.read("console.log");
        let tail: Vec<&str> = console.lines().rev().take(40).collect();
        s += &format!(
            "--- console.log (tail)\n{}\n",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        s
    }
}

fn boot(files: &[(&str, &str)]) -> Boot {
    let root = rootfs();
    let tmp = tempfile::tempdir().unwrap();
    let payload = tmp.path().join("payload");
    let results = tmp.path().join("results");
    fs::create_dir_all(&payload).unwrap();
    fs::create_dir_all(&results).unwrap();
    // The project's install, exactly as packaged.
    let st = Command::new("make")
        .args(["-s", "-f", "mk/install.mk", "install", "NO_BUILD=1"])
        .arg(format!("DESTDIR={}", payload.display()))
        .arg(format!("TRIDENT_BIN={}", env!("CARGO_BIN_EXE_trident")))
        .arg(format!(
            "GENERATOR_BIN={}",
            env!("CARGO_BIN_EXE_trident-generator")
        ))
        .current_dir(repo())
        .status()
        .expect("make install");
    assert!(st.success(), "make install DESTDIR=... failed");
    let put = |path: &str, content: &[u8], mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let p = payload.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&p);
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    let ct = repo().join("tests/container");
    // Seam: the fake verbs replace the real binary (which has no internal verbs yet).
    put(
        "/usr/bin/trident",
        &fs::read(ct.join("fake-trident.sh")).unwrap(),
        0o755,
    );
    put(
        "/usr/lib/trident-test/report.sh",
        &fs::read(ct.join("report.sh")).unwrap(),
        0o755,
    );
    put(
        "/etc/systemd/system/trident-test-report.service",
        &fs::read(ct.join("trident-test-report.service")).unwrap(),
        0o644,
    );
    let link = |dir: &str, unit: &str, target: &str| {
        let d = payload.join(dir.trim_start_matches('/'));
        fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::symlink(target, d.join(unit)).unwrap();
    };
    link(
        "/etc/systemd/system/multi-user.target.wants",
        "trident-test-report.service",
        "/etc/systemd/system/trident-test-report.service",
    );
    // Timers enabled as an administrator would (`systemctl enable`).
    for t in ["trident-update.timer", "trident-finalize.timer"] {
        link(
            "/etc/systemd/system/timers.target.wants",
            t,
            &format!("/usr/lib/systemd/system/{t}"),
        );
    }
    for (path, content) in files {
        put(path, content.as_bytes(), 0o644);
    }
    let out = Command::new(ct.join("run.sh"))
        .args([&root, &payload, &results])
        .arg("180")
        .status()
        .expect("tests/container/run.sh");
    Boot {
        _tmp: tmp,
        results,
        exit: out.code().unwrap_or(-1),
    }
}

const TRIAL: &str = r#"{"version":1,"operation":"ab-update","updateId":"u-42","volume":"b"}"#;
const CHECKS: &str =
    r#"{"version":1,"checks":[{"name":"check-a","timeoutSeconds":30},{"name":"check-b"}]}"#;

#[test]
fn normal_boot_wires_nothing_and_units_verify_and_timers_are_scheduled() {
    if !enabled() {
        return;
    }
    let b = boot(&[]);
    let d = b.dump();
    assert_eq!(b.exit, 0, "container did not power off cleanly\n{d}");
    assert_eq!(b.read("report-done").trim(), "done", "{d}");
    // (1) nothing wired: no health target under boot-complete, no commit wanted.
    assert!(!b.read("boot-complete-deps.txt").contains("trident"), "{d}");
    assert!(
        !b.read("multi-user-wants.txt").contains("trident-commit"),
        "{d}"
    );
    assert!(b.read("generator-output.txt").trim().is_empty(), "{d}");
    assert!(
        b.calls().is_empty(),
        "no verb may run on a normal boot: {:?}",
        b.calls()
    );
    // (2) systemd-analyze verify inside the container, on the installed units.
    assert_eq!(
        b.read("verify.rc").trim(),
        "0",
        "verify:\n{}",
        b.read("verify.txt")
    );
    assert!(
        b.read("verify.txt").trim().is_empty(),
        "verify:\n{}",
        b.read("verify.txt")
    );
    // (3) timers enabled, loaded, with a next elapse.
    assert_eq!(
        b.read("timers-enabled.txt").trim(),
        "enabled\nenabled",
        "{d}"
    );
    let timers = b.read("timers.txt");
    for t in ["trident-update.timer", "trident-finalize.timer"] {
        let line = timers
            .lines()
            .find(|l| l.contains(t))
            .unwrap_or_else(|| panic!("{t} not listed:\n{timers}"));
        assert!(
            !line.trim_start().starts_with("n/a"),
            "{t} has no next elapse:\n{timers}"
        );
    }
}

#[test]
fn trial_boot_with_passing_checks_commits_after_boot_complete() {
    if !enabled() {
        return;
    }
    let b = boot(&[
        ("/etc/trident/boot/trial", TRIAL),
        ("/etc/trident/boot/health-checks", CHECKS),
    ]);
    let d = b.dump();
    assert_eq!(b.exit, 0, "{d}");
    let deps = b.read("boot-complete-deps.txt");
    for u in [
        "trident-health.target",
        "trident-health-check@check\\x2da.service",
        "trident-health-check@check\\x2db.service",
    ] {
        assert!(deps.contains(u), "{u} not under boot-complete.target:\n{d}");
    }
    assert!(
        b.read("multi-user-wants.txt")
            .contains("trident-commit.service"),
        "{d}"
    );
    let calls = b.calls();
    assert!(
        calls.contains(&"[internal] [health-check] [check-a]".to_string()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"[internal] [health-check] [check-b]".to_string()),
        "{calls:?}"
    );
    assert_eq!(
        calls.last().map(String::as_str),
        Some("[internal] [commit]"),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c.contains("health-check-failed")),
        "{calls:?}"
    );
    let bc = b.show("boot-complete.target");
    let commit = b.show("trident-commit.service");
    assert_eq!(bc["ActiveState"], "active", "{d}");
    assert_eq!(commit["Result"], "success", "{d}");
    let reached: u64 = bc["ActiveEnterTimestampMonotonic"].parse().unwrap();
    let started: u64 = commit["ExecMainStartTimestampMonotonic"].parse().unwrap();
    assert!(
        reached > 0 && started >= reached,
        "commit started before boot-complete.target:\n{d}"
    );
    assert_eq!(
        b.show("trident-rollback.service")["ActiveState"],
        "inactive",
        "{d}"
    );
}

#[test]
fn trial_boot_with_a_failing_check_rolls_back_instead_of_committing() {
    if !enabled() {
        return;
    }
    let b = boot(&[
        ("/etc/trident/boot/trial", TRIAL),
        ("/etc/trident/boot/health-checks", CHECKS),
        ("/etc/trident-test/health-check-b.rc", "1\n"),
    ]);
    let d = b.dump();
    // trident-rollback.service's SuccessAction=reboot: nspawn exits 133 on reboot.
    assert_eq!(
        b.exit, 133,
        "expected the rollback to reboot the container\n{d}"
    );
    let calls = b.calls();
    assert!(
        calls.contains(&"[internal] [health-check-failed]".to_string()),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c == "[internal] [commit]"),
        "commit ran: {calls:?}"
    );
    let jobs = b.job_results();
    let result = |u: &str| {
        jobs.iter()
            .filter(|(x, _)| x == u)
            .map(|(_, r)| r.clone())
            .collect::<Vec<_>>()
    };
    assert!(
        result("trident-health-check@check\\x2db.service").contains(&"failed".to_string()),
        "{jobs:?}"
    );
    assert!(
        result("boot-complete.target").contains(&"dependency".to_string()),
        "{jobs:?}"
    );
    assert!(
        result("trident-commit.service").contains(&"dependency".to_string()),
        "{jobs:?}"
    );
    let snap = b.read("at-rollback.txt");
    assert!(
        snap.contains("Id=boot-complete.target\nActiveState=inactive"),
        "{snap}\n{d}"
    );
}

#[test]
fn fallback_boot_records_the_automatic_rollback() {
    if !enabled() {
        return;
    }
    let pending = r#"{"version":1,"operation":"ab-update","updateId":"u-42","trialVolume":"b"}"#;
    let b = boot(&[("/etc/trident/boot/pending", pending)]);
    let d = b.dump();
    assert_eq!(b.exit, 0, "{d}");
    assert_eq!(
        b.calls(),
        vec!["[internal] [record-rollback]".to_string()],
        "{d}"
    );
    assert!(!b.read("boot-complete-deps.txt").contains("trident"), "{d}");
    assert_eq!(
        b.show("trident-record-rollback.service")["Result"],
        "success",
        "{d}"
    );
}
