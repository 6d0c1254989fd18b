//! Container tier: the units and the generator under a real systemd PID 1
//! (`systemd-nspawn -b` of a cached Debian 12 root, see `tests/container/run.sh`).
//! Runs only with `TRIDENT_CONTAINER_TESTS=1` (`make test-container`); then a missing
//! prerequisite is a failure, not a skip.
//!
//! `/usr/bin/trident` in the container is `tests/container/fake-trident.sh`, a seam
//! standing in for the `trident internal ...` verbs until the engine provides them.

mod engine_support;
mod support;

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
        self.show_in("show.txt", unit)
    }

    /// Unit → property map from a file of `systemctl show` blocks.
    fn show_in(&self, file: &str, unit: &str) -> std::collections::HashMap<String, String> {
        let text = self.read(file);
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

    /// Job results systemd logged (UNIT, JOB_RESULT) from the persisted journal
    /// (structured fields of its "Finished"/"Failed"/"Dependency failed" messages).
    fn job_results(&self) -> Vec<(String, String)> {
        let out = Command::new("journalctl")
            .arg("-D")
            .arg(self.results.join("journal"))
            .args(["-o", "json", "--no-pager"])
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

/// Boot once with `files` laid over the install. With `TRIDENT_CONTAINER_RESULTS=DIR`
/// the results are also copied to `DIR/NAME` for inspection.
fn boot(name: &str, files: &[(&str, &str)]) -> Boot {
    boot_with(name, files, &[], &[])
}

/// [`boot`] with binary files too (path in the container → bytes, mode) and more
/// `systemd-nspawn` options.
fn boot_with(
    name: &str,
    files: &[(&str, &str)],
    binary: &[(&str, Vec<u8>, u32)],
    nspawn: &[String],
) -> Boot {
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
    // The D-Bus service, its unit, bus policy, activation and polkit files.
    let st = Command::new("make")
        .args(["-s", "-f", "mk/dbus.mk", "install-dbus-files"])
        .arg(format!("DESTDIR={}", payload.display()))
        .arg(format!("TRIDENTD_BIN={}", env!("CARGO_BIN_EXE_tridentd")))
        .current_dir(repo())
        .status()
        .expect("make install-dbus-files");
    assert!(st.success(), "make -f mk/dbus.mk install-dbus-files failed");
    let put = |path: &str, content: &[u8], mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let p = payload.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&p);
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    let ct = repo().join("tests/container");
    // Seam: recording verbs replace the real binary (which runs in the VM suite).
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
    for (path, content, mode) in binary {
        put(path, content, *mode);
    }
    let out = Command::new(ct.join("run.sh"))
        .args([&root, &payload, &results])
        .arg("180")
        .env("TRIDENT_NSPAWN_EXTRA", nspawn.join(" "))
        .status()
        .expect("tests/container/run.sh");
    if let Ok(keep) = std::env::var("TRIDENT_CONTAINER_RESULTS") {
        let dest = PathBuf::from(keep).join(name);
        let _ = fs::remove_dir_all(&dest);
        fs::create_dir_all(&dest).unwrap();
        let st = Command::new("cp")
            .arg("-a")
            .arg(results.join("."))
            .arg(&dest)
            .status()
            .unwrap();
        assert!(st.success());
    }
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
    let b = boot("normal", &[]);
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
    // Servicing writes block devices, /boot and efivarfs: no sandboxing that would
    // stop it, but the cheap protections are in force.
    for u in [
        "trident-stage.service",
        "trident-finalize.service",
        "trident-commit.service",
        "trident-health-check@probe.service",
        "trident-rollback.service",
        "trident-record-rollback.service",
        "trident-install.service",
    ] {
        let p = b.show_in("sandbox.txt", u);
        assert_eq!(p["DevicePolicy"], "auto", "{u}: {p:?}");
        // An empty list is not printed at all.
        assert_eq!(
            p.get("DeviceAllow").map_or("", String::as_str),
            "",
            "{u}: {p:?}"
        );
        assert_eq!(p["ProtectSystem"], "no", "{u}: {p:?}");
        assert_eq!(p["PrivateDevices"], "no", "{u}: {p:?}");
        assert_eq!(p["ProtectKernelTunables"], "no", "{u}: {p:?}");
        assert_eq!(p["ProtectKernelModules"], "no", "{u}: {p:?}");
        assert_eq!(p["PrivateTmp"], "yes", "{u}: {p:?}");
    }
    let stage = b.show_in("sandbox.txt", "trident-stage.service");
    assert_eq!(
        (
            stage["CPUWeight"].as_str(),
            stage["IOWeight"].as_str(),
            stage["Nice"].as_str()
        ),
        ("20", "20", "10"),
        "{stage:?}"
    );
    assert_eq!(stage["ProtectHome"], "read-only", "{stage:?}");
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
    let b = boot(
        "trial-pass",
        &[
            ("/etc/trident/boot/trial", TRIAL),
            ("/etc/trident/boot/health-checks", CHECKS),
        ],
    );
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
    let b = boot(
        "trial-fail",
        &[
            ("/etc/trident/boot/trial", TRIAL),
            ("/etc/trident/boot/health-checks", CHECKS),
            ("/etc/trident-test/health-check-b.rc", "1\n"),
        ],
    );
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
    assert!(
        result("trident-rollback.service").contains(&"done".to_string()),
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
    let b = boot("fallback", &[("/etc/trident/boot/pending", pending)]);
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

#[test]
fn clean_install_trial_failure_does_not_reboot() {
    if !enabled() {
        return;
    }
    let trial = r#"{"version":1,"operation":"clean-install","updateId":"i-1","volume":"a"}"#;
    let b = boot(
        "clean-install-fail",
        &[
            ("/etc/trident/boot/trial", trial),
            ("/etc/trident/boot/health-checks", CHECKS),
            ("/etc/trident-test/health-check-a.rc", "3\n"),
        ],
    );
    let d = b.dump();
    // The generator's drop-in (SuccessAction=none) keeps the host up: the report unit
    // powers it off instead of the rollback rebooting it.
    assert_eq!(b.exit, 0, "{d}");
    let calls = b.calls();
    assert!(
        calls.contains(&"[internal] [health-check-failed]".to_string()),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c == "[internal] [commit]"),
        "{calls:?}"
    );
    assert_eq!(
        b.show("trident-rollback.service")["Result"],
        "success",
        "{d}"
    );
    assert_eq!(
        b.show("boot-complete.target")["ActiveState"],
        "inactive",
        "{d}"
    );
}

#[test]
fn installer_boot_runs_the_install_and_reboots() {
    if !enabled() {
        return;
    }
    let b = boot(
        "installer",
        &[(
            "/etc/trident/boot/install",
            "/etc/trident/install-hc.yaml\n",
        )],
    );
    let d = b.dump();
    assert_eq!(
        b.exit, 133,
        "trident-install.service's SuccessAction=reboot\n{d}"
    );
    assert_eq!(
        b.calls(),
        vec!["[internal] [install] [--request] [/run/trident/requests/install.yaml] [--config] [/etc/trident/install-hc.yaml]".to_string()],
        "{d}"
    );
}

#[test]
fn corrupt_trial_marker_boots_normally_without_wiring() {
    if !enabled() {
        return;
    }
    let b = boot(
        "corrupt-marker",
        &[
            ("/etc/trident/boot/trial", "{\"version\":1,\"operation\":"),
            ("/etc/trident/boot/health-checks", CHECKS),
        ],
    );
    let d = b.dump();
    // The generator refuses the marker, the boot completes, nothing is checked or
    // committed (the trial would fall back to the old volume on the next reboot).
    assert_eq!(b.exit, 0, "{d}");
    assert_eq!(b.read("report-done").trim(), "done", "{d}");
    assert!(b.read("generator-output.txt").trim().is_empty(), "{d}");
    assert!(!b.read("boot-complete-deps.txt").contains("trident"), "{d}");
    assert!(b.calls().is_empty(), "{:?}", b.calls());
}

/// A provisioned datastore (volume A active) as bytes, made with the real datastore code.
fn provisioned_datastore() -> Vec<u8> {
    use trident::status::{AbVolume, HostStatus, ServicingState};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("datastore.sqlite");
    let mut ds = trident::datastore::Datastore::open(&path).unwrap();
    let status = HostStatus {
        servicing_state: ServicingState::Provisioned,
        active_volume: Some(AbVolume::VolumeA),
        ..HostStatus::default()
    };
    ds.record("install", &status).unwrap();
    drop(ds);
    fs::read(&path).unwrap()
}

const DBUS_PROBE: &str = r#"#!/bin/sh
# Runs after the boot settled: the first call bus-activates tridentd; Stage makes it
# start trident-stage.service through systemd.
D="io.trident.Trident1 /io/trident/Trident1 io.trident.Trident1"
systemctl show -p ActiveState --value tridentd.service > /results/tridentd-before.txt
busctl call $D GetHostStatus > /results/dbus-status.txt 2>&1; echo $? > /results/dbus-status.rc
systemctl show -p ActiveState --value tridentd.service > /results/tridentd-after.txt
busctl call $D Stage 'sa{sv}' "$(cat /etc/trident-test/stage.yaml)" 0 > /results/dbus-stage.txt 2>&1
echo $? > /results/dbus-stage.rc
i=0
while [ $i -lt 150 ] && ! grep -q '\[stage\]' /results/calls.log 2>/dev/null; do sleep 0.2; i=$((i+1)); done
i=0
while [ $i -lt 150 ] && [ "$(busctl get-property $D Operation)" != 's ""' ]; do sleep 0.2; i=$((i+1)); done
busctl get-property $D Operation ServicingState LastError > /results/dbus-after.txt 2>&1
systemctl show -p Id -p ActiveState -p Result trident-stage.service > /results/dbus-stage-unit.txt
# (what busctl sent: the file without its trailing newline, as "$(cat)" gives it)
printf '%s' "$(cat /etc/trident-test/stage.yaml)" | cmp /run/trident/requests/stage.yaml - > /results/dbus-requests.txt 2>&1 && echo same >> /results/dbus-requests.txt
"#;

const DBUS_PROBE_UNIT: &str = "[Unit]
Description=Test probe: drive Trident over the system bus
Before=trident-test-report.service

[Service]
Type=oneshot
ExecStart=/bin/sh /usr/lib/trident-test/dbus-probe.sh
";

#[test]
fn bus_activation_and_stage_start_the_stage_unit() {
    if !enabled() {
        return;
    }
    let yaml =
        std::fs::read_to_string(repo().join("../shared/compat/host-configs/simple.yaml")).unwrap();
    let b = boot_with(
        "dbus",
        &[
            ("/usr/lib/trident-test/dbus-probe.sh", DBUS_PROBE),
            (
                "/etc/systemd/system/trident-test-dbus.service",
                DBUS_PROBE_UNIT,
            ),
            (
                "/etc/systemd/system/trident-test-report.service.d/dbus.conf",
                "[Unit]\nWants=trident-test-dbus.service\nAfter=trident-test-dbus.service\n",
            ),
            ("/etc/trident-test/stage.yaml", &yaml),
        ],
        &[(
            "/var/lib/trident/datastore.sqlite",
            provisioned_datastore(),
            0o644,
        )],
        &[],
    );
    let d = format!(
        "{}--- dbus\n{}\n{}\n{}\n{}\n{}\n",
        b.dump(),
        b.read("dbus-status.txt"),
        b.read("dbus-stage.txt"),
        b.read("dbus-after.txt"),
        b.read("dbus-stage-unit.txt"),
        b.read("dbus-requests.txt")
    );
    assert_eq!(b.exit, 0, "{d}");
    // Not running before the first call; activated by it (tridentd.service, Type=dbus).
    assert_eq!(b.read("tridentd-before.txt").trim(), "inactive", "{d}");
    assert_eq!(b.read("dbus-status.rc").trim(), "0", "{d}");
    assert!(b.read("dbus-status.txt").contains("provisioned"), "{d}");
    assert_eq!(b.read("tridentd-after.txt").trim(), "active", "{d}");
    // Stage accepted, run as trident-stage.service with tridentd's request file.
    assert_eq!(b.read("dbus-stage.rc").trim(), "0", "{d}");
    let stage_calls: Vec<String> = b
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("[internal] [stage]"))
        .collect();
    assert_eq!(stage_calls.len(), 1, "{d}");
    assert!(
        stage_calls[0].contains("[--request] [/run/trident/requests/stage.yaml]"),
        "{d}"
    );
    // The request file tridentd wrote is the document the caller sent, byte for byte.
    assert_eq!(b.read("dbus-requests.txt").trim(), "same", "{d}");
    let unit = b.read("dbus-stage-unit.txt");
    assert!(unit.contains("Result=success"), "{d}");
    // Completed: idle again, no error.
    assert_eq!(
        b.read("dbus-after.txt"),
        "s \"\"\ns \"provisioned\"\ns \"\"\n",
        "{d}"
    );
}

const STAGE_PROBE: &str = r#"#!/bin/sh
# Start the real stage unit and watch what `systemctl status` shows while it streams.
systemctl start --no-block trident-stage.service
i=0
while [ $i -lt 600 ]; do
    st=$(systemctl show -p StatusText --value trident-stage.service)
    case "$st" in
        "writing / onto "*)
            systemctl status --no-pager --full trident-stage.service > /results/stage-systemctl-status.txt 2>&1
            break ;;
    esac
    sleep 0.1; i=$((i+1))
done
i=0
while [ $i -lt 600 ] && [ "$(systemctl show -p ActiveState --value trident-stage.service)" = activating ]; do
    sleep 0.2; i=$((i+1))
done
systemctl show -p Result -p ExecMainStatus trident-stage.service > /results/stage-result.txt
systemctl show -P ActiveState network-online.target > /results/network-online.txt
trident get status --format summary > /results/stage-get-status.txt 2>&1
journalctl -u trident-stage.service -o cat --no-pager > /results/stage-journal.txt 2>&1
journalctl MESSAGE_ID=4f6e0c1a8b2d4c3e9a7f1b2c3d4e5f60 -o cat --no-pager > /results/staged-milestone.txt 2>&1
"#;

/// The real binary behind the real unit: `systemctl start trident-stage.service` inside
/// the container stages v2 (served slowly over HTTP on loopback) into volume B of a
/// loop device the host test installed v1 onto; `systemctl status` shows the progress
/// line while it streams; the datastore says `ab-update-staged`; on the host afterwards
/// B holds v2 and A is byte-identical. Test rig only: a drop-in adds the hidden
/// `--booted-root` (the container's root is an overlay, not volume A) and `--efivars`
/// (a directory: no firmware in a container) to the unit's command line.
#[test]
fn systemctl_start_stage_streams_into_the_inactive_volume() {
    if !enabled() || engine_support::skip() {
        return;
    }
    use engine_support::*;
    let host = Host::new(256 * MIB, true);
    host.installed();
    let active_sum = sha256_of(&host.part(2));
    let yaml = host.slow_v2_yaml();
    let dev = host.device();
    let mut nspawn = vec![format!("--bind={}", dev.display())];
    for n in 1..=5 {
        let p = host.part(n);
        if p.exists() {
            nspawn.push(format!("--bind={}", p.display()));
        }
    }
    let datastore = std::fs::read(host.dir.path().join("ds/datastore.sqlite")).unwrap();
    let mut binary = vec![
        (
            "/usr/bin/trident",
            std::fs::read(env!("CARGO_BIN_EXE_trident")).unwrap(),
            0o755,
        ),
        ("/var/lib/trident/datastore.sqlite", datastore, 0o600),
    ];
    let efivars: Vec<(String, Vec<u8>)> = std::fs::read_dir(host.dir.path().join("efivars"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                format!(
                    "/var/lib/trident-test/efivars/{}",
                    e.file_name().to_string_lossy()
                ),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    for (p, b) in &efivars {
        binary.push((p.as_str(), b.clone(), 0o644));
    }
    let dropin = format!(
        "[Service]\nExecStart=\nExecStart=/usr/bin/trident internal stage --request /run/trident/requests/stage.yaml --config /etc/trident/config.yaml --booted-root {} --efivars /var/lib/trident-test/efivars\n",
        host.part(2).display()
    );
    let b = boot_with(
        "stage",
        &[
            ("/etc/trident/config.yaml", &yaml),
            (
                "/etc/systemd/system/trident-stage.service.d/test-rig.conf",
                &dropin,
            ),
            ("/usr/lib/trident-test/stage-probe.sh", STAGE_PROBE),
            (
                "/etc/systemd/system/trident-test-stage.service",
                "[Unit]\nDescription=Test probe: systemctl start trident-stage.service\nBefore=trident-test-report.service\n\n[Service]\nType=oneshot\nTimeoutStartSec=170\nExecStart=/bin/sh /usr/lib/trident-test/stage-probe.sh\n",
            ),
            (
                "/etc/systemd/system/trident-test-report.service.d/stage.conf",
                "[Unit]\nWants=trident-test-stage.service\nAfter=trident-test-stage.service\n",
            ),
        ],
        &binary,
        &nspawn,
    );
    let d = format!(
        "{}--- stage\n{}\n{}\n{}\n{}\n",
        b.dump(),
        b.read("stage-systemctl-status.txt"),
        b.read("stage-result.txt"),
        b.read("stage-get-status.txt"),
        b.read("stage-journal.txt"),
    );
    assert_eq!(b.exit, 0, "{d}");
    // The configured image comes over HTTP: the verb started network-online.target and
    // waited for it (a local image does not; the VM suite checks that side).
    let journal = b.read("stage-journal.txt");
    assert!(
        journal.contains("waiting for network-online.target")
            && journal.contains("network-online.target reached"),
        "{d}"
    );
    assert_eq!(b.read("network-online.txt").trim(), "active", "{d}");
    // The progress line, as an operator sees it.
    let status = b.read("stage-systemctl-status.txt");
    assert!(
        status.contains(&format!(
            "Status: \"writing / onto {}: ",
            host.part(3).display()
        )),
        "{d}"
    );
    assert!(b.read("stage-result.txt").contains("Result=success"), "{d}");
    assert!(
        b.read("stage-get-status.txt")
            .starts_with("state:          ab-update-staged\n"),
        "{d}"
    );
    assert!(
        b.read("staged-milestone.txt").contains("update staged"),
        "{d}"
    );
    // What the container wrote, read back on the host.
    assert_eq!(
        host.read_ext4(3, "etc/os-version").unwrap().trim(),
        "v2",
        "{d}"
    );
    assert_eq!(sha256_of(&host.part(2)), active_sum, "volume A was written");
}

/// A real trial boot in the container: the host installs v1, stages and finalizes v2
/// (the engine, on a loop device), then the container boots with the trial markers
/// finalize wrote into volume B, the host's datastore and efivarfs directory bound in,
/// and the real binary behind the generator-wired units. The health check is a script
/// exiting `check_rc`. Test rig only: drop-ins add the hidden `--booted-root` (volume B)
/// and `--efivars DIR` to the verbs' command lines. `checks`: the `health.checks`
/// list items (YAML, indented by two spaces).
fn real_trial_boot(name: &str, checks: &str) -> (Boot, engine_support::Host) {
    use engine_support::*;
    use trident::engine;
    let host = Host::new(256 * MIB, true);
    host.installed();
    let text = format!(
        "{}health:\n  checks:\n{checks}",
        host.hc_text(&images().v2, "")
    );
    let hc = host.hc_from(&text);
    engine::stage(&hc, &host.ctx(Some(2))).unwrap();
    engine::finalize(&host.ctx(Some(2))).unwrap();
    // The markers finalize wrote into volume B become the booted root's.
    let mnt = host.dir.path().join("mnt-b");
    fs::create_dir_all(&mnt).unwrap();
    let m = trident::storage::mkfs::Mount::new(&host.part(3), &mnt, "ext4", Some("ro")).unwrap();
    let mut markers = Vec::new();
    for e in fs::read_dir(mnt.join("etc/trident/boot")).unwrap() {
        let e = e.unwrap();
        markers.push((
            format!("/etc/trident/boot/{}", e.file_name().to_string_lossy()),
            fs::read(e.path()).unwrap(),
            0o644,
        ));
    }
    m.unmount().unwrap();
    assert!(
        markers.iter().any(|(p, _, _)| p.ends_with("/trial")),
        "finalize wrote no trial marker into B: {:?}",
        markers.iter().map(|m| &m.0).collect::<Vec<_>>()
    );
    let mut binary = vec![(
        "/usr/bin/trident".to_string(),
        fs::read(env!("CARGO_BIN_EXE_trident")).unwrap(),
        0o755,
    )];
    binary.extend(markers);
    let binary: Vec<(&str, Vec<u8>, u32)> = binary
        .iter()
        .map(|(p, b, m)| (p.as_str(), b.clone(), *m))
        .collect();
    let mut nspawn = vec![
        format!("--bind={}", host.device().display()),
        format!(
            "--bind={}:/var/lib/trident",
            host.dir.path().join("ds").display()
        ),
        format!(
            "--bind={}:/var/lib/trident-test/efivars",
            host.dir.path().join("efivars").display()
        ),
    ];
    for n in 1..=5 {
        let p = host.part(n);
        if p.exists() {
            nspawn.push(format!("--bind={}", p.display()));
        }
    }
    let rig = format!(
        "--booted-root {} --efivars /var/lib/trident-test/efivars",
        host.part(3).display()
    );
    let dropin = |verb: &str| {
        format!("[Service]\nExecStart=\nExecStart=/usr/bin/trident internal {verb} {rig}\n")
    };
    let (commit, check, failed) = (
        dropin("commit"),
        dropin("health-check %I"),
        dropin("health-check-failed"),
    );
    let b = boot_with(
        name,
        &[
            (
                "/etc/systemd/system/trident-commit.service.d/test-rig.conf",
                &commit,
            ),
            (
                "/etc/systemd/system/trident-health-check@.service.d/test-rig.conf",
                &check,
            ),
            (
                "/etc/systemd/system/trident-rollback.service.d/test-rig.conf",
                &failed,
            ),
        ],
        &binary,
        &nspawn,
    );
    (b, host)
}

#[test]
fn real_trial_boot_with_a_passing_check_commits_volume_b() {
    if !enabled() || engine_support::skip() {
        return;
    }
    use trident::status::{AbVolume, ServicingState};
    let (b, host) = real_trial_boot(
        "real-trial-pass",
        "  - name: probe\n    content: exit 0\n    runOn: [ab-update]\n  - name: journal\n    systemdServices: [systemd-journald.service]\n    timeoutSeconds: 20\n    runOn: [ab-update]\n",
    );
    let d = b.dump();
    assert_eq!(b.exit, 0, "{d}");
    assert_eq!(
        b.show("trident-commit.service")
            .get("Result")
            .map(String::as_str),
        Some("success"),
        "{d}"
    );
    // The datastore (bound from the host) says provisioned on B, and B is the default.
    assert_eq!(
        host.state(),
        (ServicingState::Provisioned, Some(AbVolume::VolumeB)),
        "{d}"
    );
    assert!(
        host.efivar("LoaderEntryDefault")
            .is_some_and(|e| e.contains("-b")),
        "{:?}\n{d}",
        host.efivar("LoaderEntryDefault")
    );
}

/// A failed real trial boot: the rollback service recorded the check's failure and
/// rebooted the container.
fn assert_recorded_failure(b: &Boot, host: &engine_support::Host, reason: &str) {
    use trident::status::ServicingState;
    let d = b.dump();
    assert_eq!(b.exit, 133, "{d}");
    let hs = host.store().host_status().unwrap();
    assert_eq!(
        hs.servicing_state,
        ServicingState::AbUpdateHealthCheckFailed,
        "{d}"
    );
    let e = hs.last_error.expect("lastError");
    assert_eq!(e.code, "health-check-failed", "{d}");
    assert_eq!(e.category, trident::Category::HealthChecks);
    let log = Command::new("journalctl")
        .arg("-D")
        .arg(b.results.join("journal"))
        .args(["-u", "trident-health-check@*", "-o", "cat", "--no-pager"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains(reason), "{log}\n{d}");
}

#[test]
fn real_trial_boot_with_a_failing_script_records_the_failure() {
    if !enabled() || engine_support::skip() {
        return;
    }
    let (b, host) = real_trial_boot(
        "real-trial-script",
        "  - name: probe\n    content: echo probe-broken >&2; exit 1\n    runOn: [ab-update]\n",
    );
    assert_recorded_failure(&b, &host, "health check 'probe' failed");
}

#[test]
fn real_trial_boot_with_a_service_not_running_records_the_failure() {
    if !enabled() || engine_support::skip() {
        return;
    }
    let (b, host) = real_trial_boot(
        "real-trial-service",
        "  - name: needs-web\n    systemdServices: [trident-test-never.service]\n    timeoutSeconds: 3\n    runOn: [ab-update]\n",
    );
    assert_recorded_failure(
        &b,
        &host,
        "health check 'needs-web': services not active after 3 s: trident-test-never.service",
    );
}

/// A provisioned datastore whose spec is `hc` (volume A active), made with the real
/// datastore code, as bytes.
fn provisioned_datastore_with(hc: &trident::config::HostConfiguration) -> Vec<u8> {
    use trident::status::{AbVolume, ImageRef, Transition};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("datastore.sqlite");
    let mut ds = trident::datastore::Datastore::open(&path).unwrap();
    ds.transition(Transition::StageCleanInstall {
        spec: hc.clone(),
        image: ImageRef {
            url: "file:///img.cosi".into(),
            sha384: "ab".repeat(48),
        },
        block_devices: Default::default(),
    })
    .unwrap();
    ds.transition(Transition::FinalizeCleanInstall).unwrap();
    ds.transition(Transition::CommitCleanInstall {
        booted: AbVolume::VolumeA,
    })
    .unwrap();
    drop(ds);
    fs::read(&path).unwrap()
}

/// A squashfs sysext image named `name` (extension-release `ID=_any`) that adds
/// `/usr/share/trident-test/NAME`.
fn squashfs_sysext(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let tree = dir.join(format!("tree-{name}"));
    let rel = tree.join("usr/lib/extension-release.d");
    fs::create_dir_all(&rel).unwrap();
    fs::write(rel.join(format!("extension-release.{name}")), "ID=_any\n").unwrap();
    fs::create_dir_all(tree.join("usr/share/trident-test")).unwrap();
    fs::write(tree.join("usr/share/trident-test").join(name), name).unwrap();
    let out = dir.join(format!("{name}.raw"));
    let st = Command::new("mksquashfs")
        .arg(&tree)
        .arg(&out)
        .args(["-noappend", "-quiet", "-no-progress", "-all-root"])
        .status()
        .expect("mksquashfs (package squashfs-tools)");
    assert!(st.success(), "mksquashfs failed");
    fs::read(&out).unwrap()
}

/// `--bind=` options giving the container `/dev/loop-control` and the host's loop
/// device nodes, so systemd-sysext can attach a `.raw` image (a loop device it gets
/// from `LOOP_CTL_GET_FREE` must exist as a node in the container's `/dev`).
fn loop_device_binds() -> Vec<String> {
    let mut binds = vec!["--bind=/dev/loop-control".to_string()];
    for e in fs::read_dir("/dev").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name
            .strip_prefix("loop")
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        {
            binds.push(format!("--bind=/dev/{name}"));
        }
    }
    binds
}

const RUNTIME_PROBE: &str = r#"#!/bin/sh
# Runs the real trident (not the fake seam at /usr/bin/trident) against real
# systemd-sysext under systemd as PID 1.
T=/run/trident-test/trident
mkdir -p /run/trident-test
cp /usr/lib/trident-test/trident.bin $T && chmod 755 $T
D="--datastore /var/lib/trident/datastore.sqlite"
step() {
    n=$1; shift
    "$@" > /results/rt-$n.out 2>&1; echo $? > /results/rt-$n.rc
    ls /usr/share/trident-test/ > /results/rt-$n.usr 2>&1
    # What PID 1 (the host outside this unit's private namespace) sees.
    nsenter --mount=/proc/1/ns/mnt ls /usr/share/trident-test/ > /results/rt-$n.host 2>&1
    ls -A /var/lib/extensions/ > /results/rt-$n.dir 2>&1
    systemd-sysext status --json=short > /results/rt-$n.status 2>&1
}
step 0 true
step 1 $T update /etc/trident-test/v1.yaml $D
step 2 $T update /etc/trident-test/bad.yaml $D
step 3 $T update /etc/trident-test/v2.yaml $D
step 4 $T rollback --runtime --check $D
step 5 $T rollback --runtime $D
$T get status $D --format json > /results/rt-status.json 2>&1
$T get history $D --format json > /results/rt-history.json 2>&1
"#;

const RUNTIME_PROBE_UNIT: &str = "[Unit]
Description=Test probe: runtime update with the real trident and systemd-sysext
Before=trident-test-report.service
After=local-fs.target

[Service]
Type=oneshot
# Sandboxed like trident-stage.service: its own mount namespace.
PrivateTmp=yes
ExecStart=/bin/sh /usr/lib/trident-test/runtime-probe.sh
";

#[test]
fn runtime_update_really_merges_and_reverts_a_sysext() {
    if !enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let one = squashfs_sysext(tmp.path(), "rtone");
    let two = squashfs_sysext(tmp.path(), "rttwo");
    let sha = |b: &[u8]| {
        use sha2::Digest;
        hex::encode(sha2::Sha384::digest(b))
    };
    let base_yaml =
        fs::read_to_string(repo().join("../shared/compat/host-configs/basic.yaml")).unwrap();
    let base = trident::config::parse(&base_yaml).unwrap();
    let with = |exts: &[(&str, String)]| {
        let mut y = format!("{base_yaml}os:\n  sysexts:\n");
        for (name, digest) in exts {
            y += &format!("  - url: file:///srv/ext/{name}.raw\n    sha384: {digest}\n");
        }
        trident::config::parse(&y).expect("runtime HC parses");
        y
    };
    let v1 = with(&[("rtone", sha(&one))]);
    // rttwo served with rtone's bytes: the digest does not match.
    let bad = with(&[("rtone", sha(&one)), ("rtbad", sha(&two))]);
    let v2 = with(&[("rttwo", sha(&two))]);
    let b = boot_with(
        "runtime",
        &[
            ("/usr/lib/trident-test/runtime-probe.sh", RUNTIME_PROBE),
            (
                "/etc/systemd/system/trident-test-runtime.service",
                RUNTIME_PROBE_UNIT,
            ),
            (
                "/etc/systemd/system/trident-test-report.service.d/runtime.conf",
                "[Unit]\nWants=trident-test-runtime.service\nAfter=trident-test-runtime.service\n",
            ),
            ("/etc/trident-test/v1.yaml", &v1),
            ("/etc/trident-test/bad.yaml", &bad),
            ("/etc/trident-test/v2.yaml", &v2),
        ],
        &[
            (
                "/usr/lib/trident-test/trident.bin",
                fs::read(env!("CARGO_BIN_EXE_trident")).unwrap(),
                0o755,
            ),
            ("/srv/ext/rtone.raw", one.clone(), 0o644),
            ("/srv/ext/rttwo.raw", two.clone(), 0o644),
            ("/srv/ext/rtbad.raw", one.clone(), 0o644),
            (
                "/var/lib/trident/datastore.sqlite",
                provisioned_datastore_with(&base),
                0o644,
            ),
        ],
        &loop_device_binds(),
    );
    let mut d = b.dump();
    for n in 0..6 {
        for ext in ["rc", "out", "usr", "host", "dir", "status"] {
            d += &format!("--- rt-{n}.{ext}\n{}\n", b.read(&format!("rt-{n}.{ext}")));
        }
    }
    assert_eq!(b.exit, 0, "{d}");
    // Before: nothing merged.
    assert!(!b.read("rt-0.usr").contains("rtone"), "{d}");
    let st: serde_json::Value = serde_json::from_str(&b.read("rt-status.json")).expect(&d);
    assert_eq!(st["servicingState"], "provisioned", "{d}");
    let history = b.read("rt-history.json");
    let has_op = |op: &str| history.contains(&format!("\"{op}\""));
    // The bad spec is refused on its digest before anything changes.
    assert_ne!(b.read("rt-2.rc").trim(), "0", "{d}");
    assert!(
        b.read("rt-2.out").contains("extension-hash-mismatch"),
        "{d}"
    );
    // Really merged into /usr (the container has loop devices: loop_device_binds),
    // replaced, and rolled back.
    assert_eq!(b.read("rt-1.rc").trim(), "0", "{d}");
    assert_eq!(b.read("rt-1.usr").trim(), "rtone", "{d}");
    // The probe runs with PrivateTmp= (its own mount namespace), like the stage unit:
    // the merge must reach PID 1's namespace, not only the unit's.
    for (n, want) in [(1, "rtone"), (2, "rtone"), (3, "rttwo"), (5, "rtone")] {
        assert_eq!(
            b.read(&format!("rt-{n}.host")).trim(),
            want,
            "step {n}\n{d}"
        );
    }
    assert!(b.read("rt-1.status").contains("rtone"), "{d}");
    assert!(b.read("rt-1.out").contains("needs no reboot"), "{d}");
    assert_eq!(b.read("rt-2.usr").trim(), "rtone", "{d}");
    assert_eq!(b.read("rt-2.dir").trim(), "rtone.raw", "{d}");
    assert_eq!(b.read("rt-3.rc").trim(), "0", "{d}");
    assert_eq!(b.read("rt-3.usr").trim(), "rttwo", "{d}");
    assert_eq!(b.read("rt-3.dir").trim(), "rttwo.raw", "{d}");
    assert!(!b.read("rt-3.status").contains("rtone"), "{d}");
    assert_eq!(b.read("rt-4.rc").trim(), "0", "{d}");
    assert!(b.read("rt-4.out").contains("would revert"), "{d}");
    assert_eq!(b.read("rt-4.usr").trim(), "rttwo", "{d}");
    assert_eq!(b.read("rt-5.rc").trim(), "0", "{d}");
    assert_eq!(b.read("rt-5.usr").trim(), "rtone", "{d}");
    assert_eq!(b.read("rt-5.dir").trim(), "rtone.raw", "{d}");
    for op in [
        "commit-runtime-update",
        "revert-runtime",
        "commit-manual-rollback-runtime",
    ] {
        assert!(has_op(op), "{op} missing\n{history}\n{d}");
    }
}
