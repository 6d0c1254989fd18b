//! The engine end to end on loop devices over sparse files (root): install v1 onto an
//! A/B layout, first-boot commit, stage v2 (active volume byte-identical), finalize,
//! commit on B, manual rollback to A; bad input; SIGKILL at random points of stage.

mod engine_support;
mod support;

use engine_support::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use trident::boot::esp::EspFs;
use trident::datastore::Datastore;
use trident::engine::{self, CommitOutcome, StageOutcome};
use trident::status::{AbVolume, ServicingState, Transition};
use trident::storage::mkfs::Mount;

#[test]
fn install_update_commit_rollback() {
    if skip() {
        return;
    }
    let host = Host::new(256 * MIB, true);
    let hc = host.hc(&images().v1);
    engine::install(&hc, &host.ctx(None)).unwrap();

    // Partition table.
    let json = trident::cmd::Cmd::new("sfdisk")
        .arg("--json")
        .arg(host.device())
        .output_string()
        .unwrap();
    let table: serde_json::Value = serde_json::from_str(&json).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["esp", "root-a", "root-b", "trident", "srv"]);
    assert_eq!(
        parts[0]["type"].as_str().unwrap().to_ascii_lowercase(),
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    );
    assert_eq!(parts[1]["size"].as_u64().unwrap() * 512, 40 * MIB);

    // Volume A: the image, configured.
    assert_eq!(host.read_ext4(2, "etc/os-version").unwrap().trim(), "v1");
    assert_eq!(
        host.read_ext4(2, "etc/hostname").unwrap().trim(),
        "engine-test"
    );
    let fstab = host.read_ext4(2, "etc/fstab").unwrap();
    assert!(
        fstab
            .lines()
            .any(|l| l.starts_with("UUID=") && l.split_whitespace().nth(1) == Some("/")),
        "{fstab}"
    );
    assert!(fstab.contains("/var/lib/trident"), "{fstab}");
    let trial = host.read_ext4(2, "etc/trident/boot/trial").unwrap();
    assert!(trial.contains("clean-install"), "{trial}");
    // Root grown to its partition.
    let df = trident::cmd::Cmd::new("dumpe2fs")
        .args(["-h"])
        .arg(host.part(2))
        .output_string()
        .unwrap();
    let blocks: u64 = df
        .lines()
        .find_map(|l| l.strip_prefix("Block count:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(blocks * 4096, 40 * MIB);
    // Volume B untouched (no filesystem).
    assert!(trident::storage::mkfs::probe(&host.part(3))
        .unwrap()
        .is_none());
    // The datastore persisted on the shared volume.
    let copy = host.dir.path().join("ds-copy.sqlite");
    {
        let mnt = host.dir.path().join("mnt-ds");
        std::fs::create_dir_all(&mnt).unwrap();
        let m = Mount::new(&host.part(4), &mnt, "ext4", Some("ro")).unwrap();
        std::fs::copy(mnt.join("datastore.sqlite"), &copy).unwrap();
        m.unmount().unwrap();
    }
    assert_eq!(
        Datastore::open_existing(&copy)
            .unwrap()
            .host_status()
            .unwrap()
            .servicing_state,
        ServicingState::CleanInstallFinalized
    );

    // ESP and EFI variables.
    {
        let esp = host.esp();
        let entry =
            String::from_utf8(esp.read_file("loader/entries/trident-a.conf").unwrap()).unwrap();
        let uuid = parts[1]["uuid"].as_str().unwrap().to_ascii_lowercase();
        assert!(
            entry
                .to_ascii_lowercase()
                .contains(&format!("root=partuuid={uuid}")),
            "{entry}"
        );
        assert!(entry.contains("console=ttyS0"), "{entry}");
        assert!(
            String::from_utf8_lossy(&esp.read_file("trident/a/linux").unwrap())
                .contains("fake kernel")
        );
        let entries: Vec<String> = esp
            .list("loader/entries")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            entries,
            ["trident-a.conf"],
            "the image's own entry is removed"
        );
        assert!(esp.exists("EFI/systemd/systemd-bootx64.efi").unwrap());
    }
    assert_eq!(
        host.efivar("LoaderEntryDefault").as_deref(),
        Some("trident-a.conf")
    );
    assert_eq!(host.efivar("LoaderEntryOneShot"), None);
    let files: Vec<String> = host
        .efivars_snapshot()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        files.iter().any(|f| f.starts_with("Boot0000-")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.starts_with("BootOrder-")),
        "{files:?}"
    );
    assert_eq!(host.state().0, ServicingState::CleanInstallFinalized);

    // First boot (on A): commit.
    assert_eq!(
        engine::commit(&host.ctx(Some(2))).unwrap(),
        CommitOutcome::Committed(AbVolume::VolumeA)
    );
    assert_eq!(
        host.state(),
        (ServicingState::Provisioned, Some(AbVolume::VolumeA))
    );
    // Nothing to commit any more.
    assert!(matches!(
        engine::commit(&host.ctx(Some(2))).unwrap(),
        CommitOutcome::NothingToCommit(_)
    ));
    // Same configuration: no update.
    assert_eq!(
        engine::stage(&hc, &host.ctx(Some(2))).unwrap(),
        StageOutcome::NothingToDo
    );

    // Stage v2 with A booted: A byte-identical, B holds v2.
    let a_before = sha256_of(&host.part(2));
    let hc2 = host.hc(&images().v2);
    // Booted from B (not the recorded active volume): refused.
    let e = engine::stage(&hc2, &host.ctx(Some(3))).unwrap_err();
    assert_eq!(code(&e), "unexpected-boot-volume");
    assert_eq!(
        engine::stage(&hc2, &host.ctx(Some(2))).unwrap(),
        StageOutcome::Staged(AbVolume::VolumeB)
    );
    assert_eq!(
        sha256_of(&host.part(2)),
        a_before,
        "the active volume was modified"
    );
    assert_eq!(host.read_ext4(3, "etc/os-version").unwrap().trim(), "v2");
    assert_eq!(
        host.read_ext4(3, "etc/machine-id").unwrap().trim(),
        MACHINE_ID
    );
    assert!(host
        .dir
        .path()
        .join("hostroot/var/lib/trident/staged")
        .exists());
    assert_eq!(host.state().0, ServicingState::AbUpdateStaged);
    assert!(host.esp().exists("loader/entries/trident-b.conf").unwrap());
    assert_eq!(
        host.efivar("LoaderEntryDefault").as_deref(),
        Some("trident-a.conf")
    );

    // Finalize: one-shot into B, markers.
    engine::finalize(&host.ctx(Some(2))).unwrap();
    assert_eq!(
        host.efivar("LoaderEntryOneShot").as_deref(),
        Some("trident-b.conf")
    );
    assert_eq!(
        host.efivar("LoaderEntryDefault").as_deref(),
        Some("trident-a.conf")
    );
    assert!(host
        .dir
        .path()
        .join("hostroot/etc/trident/boot/pending")
        .exists());
    assert!(!host
        .dir
        .path()
        .join("hostroot/var/lib/trident/staged")
        .exists());
    assert!(host
        .read_ext4(3, "etc/trident/boot/trial")
        .unwrap()
        .contains("\"volume\":\"b\""));
    assert_eq!(host.state().0, ServicingState::AbUpdateFinalized);

    // Trial boot on B: commit.
    assert_eq!(
        engine::commit(&host.ctx(Some(3))).unwrap(),
        CommitOutcome::Committed(AbVolume::VolumeB)
    );
    assert_eq!(
        host.state(),
        (ServicingState::Provisioned, Some(AbVolume::VolumeB))
    );
    assert_eq!(
        host.efivar("LoaderEntryDefault").as_deref(),
        Some("trident-b.conf")
    );
    assert_eq!(sha256_of(&host.part(2)).len(), 64);

    // Manual rollback to A (no re-imaging).
    let plan = engine::rollback_ab(&host.ctx(Some(3)), true).unwrap();
    assert_eq!(plan.volume, AbVolume::VolumeA);
    assert_eq!(
        host.state().0,
        ServicingState::Provisioned,
        "--check changes nothing"
    );
    engine::rollback_ab(&host.ctx(Some(3)), false).unwrap();
    assert_eq!(host.state().0, ServicingState::ManualRollbackAbFinalized);
    assert_eq!(
        host.efivar("LoaderEntryOneShot").as_deref(),
        Some("trident-a.conf")
    );
    assert_eq!(
        engine::commit(&host.ctx(Some(2))).unwrap(),
        CommitOutcome::Committed(AbVolume::VolumeA)
    );
    assert_eq!(
        host.state(),
        (ServicingState::Provisioned, Some(AbVolume::VolumeA))
    );
    assert_eq!(host.read_ext4(2, "etc/os-version").unwrap().trim(), "v1");
    let hs = host.store().host_status().unwrap();
    assert!(
        hs.spec.image.as_ref().unwrap().url.ends_with("v1.cosi"),
        "spec restored"
    );
}

#[test]
fn failed_trial_boot_is_recorded_on_the_old_volume() {
    if skip() {
        return;
    }
    let host = Host::new(256 * MIB, true);
    host.installed();
    engine::stage(&host.hc(&images().v2), &host.ctx(Some(2))).unwrap();
    engine::finalize(&host.ctx(Some(2))).unwrap();
    // The trial did not take: the firmware came back to A.
    assert_eq!(
        engine::commit(&host.ctx(Some(2))).unwrap(),
        CommitOutcome::RolledBack(AbVolume::VolumeA)
    );
    let hs = host.store().host_status().unwrap();
    assert_eq!(hs.servicing_state, ServicingState::Provisioned);
    assert_eq!(hs.active_volume, Some(AbVolume::VolumeA));
    assert!(hs.spec.image.as_ref().unwrap().url.ends_with("v1.cosi"));
    assert!(hs.last_error.is_some());
    assert!(!host
        .dir
        .path()
        .join("hostroot/etc/trident/boot/pending")
        .exists());
}

#[test]
fn bad_input_is_refused_before_the_disk_is_touched() {
    if skip() {
        return;
    }
    let img = images();
    // Disk too small (the disk is a file: attached as a loop device by the engine).
    let host = Host::new(64 * MIB, false);
    let e = engine::install(&host.hc(&img.v1), &host.ctx(None)).unwrap_err();
    assert_eq!(code(&e), "disk-too-small", "{e:#}");
    assert_eq!(
        std::fs::read(&host.disk_file)
            .unwrap()
            .iter()
            .filter(|b| **b != 0)
            .count(),
        0
    );

    let mut host = Host::new(256 * MIB, false);
    // Wrong architecture.
    let e = engine::install(&host.hc(&img.arm), &host.ctx(None)).unwrap_err();
    assert_eq!(code(&e), "image-wrong-architecture", "{e:#}");
    assert!(format!("{e:#}").contains("aarch64"));
    // Unreachable image.
    let e =
        engine::install(&host.hc(Path::new("/nonexistent/x.cosi")), &host.ctx(None)).unwrap_err();
    assert!(format!("{e:#}").contains("/nonexistent/x.cosi"), "{e:#}");
    // Missing mount point in the image.
    let text = host.hc_text(&img.v1, "  - deviceId: srv\n    mountPoint: /srv\n");
    let e = engine::install(&host.hc_from(&text), &host.ctx(None)).unwrap_err();
    assert_eq!(code(&e), "image-mount-point-missing", "{e:#}");
    assert!(format!("{e:#}").contains("/srv"));
    // Image filesystem larger than its partition.
    host.root_size = "16M";
    let e = engine::install(&host.hc(&img.v1), &host.ctx(None)).unwrap_err();
    assert_eq!(code(&e), "image-too-large", "{e:#}");
    // RAID refused, naming the field.
    host.root_size = "40M";
    let text = host.hc_text(&img.v1, "").replace(
        "  abUpdate:",
        "  raid:\n    software:\n    - id: md\n      name: md0\n      level: raid1\n      devices: [srv, trident]\n  abUpdate:",
    );
    if let Ok(hc) = trident::config::parse(&text) {
        let e = engine::install(&hc, &host.ctx(None)).unwrap_err();
        assert_eq!(code(&e), "raid-not-supported");
    }
    // Nothing was ever written to the disk.
    assert_eq!(
        std::fs::read(&host.disk_file)
            .unwrap()
            .iter()
            .filter(|b| **b != 0)
            .count(),
        0
    );
    let hs = host.store().host_status().unwrap();
    assert_eq!(hs.servicing_state, ServicingState::NotProvisioned);
    assert!(hs.last_error.is_some());
}

#[test]
fn corrupt_image_mid_stage_leaves_the_host_as_it_was() {
    if skip() {
        return;
    }
    let host = Host::new(256 * MIB, true);
    host.installed();
    // Flip a byte in the middle of v2's root image.
    let bad = host.dir.path().join("bad.cosi");
    std::fs::copy(&images().v2, &bad).unwrap();
    let cosi = trident::cosi::reader::Cosi::open(
        Box::new(trident::cosi::source::FileSource::new(bad.to_str().unwrap()).unwrap()),
        None,
    )
    .unwrap();
    let root = cosi
        .images()
        .iter()
        .find(|i| i.mount_point == "/")
        .unwrap()
        .image
        .clone();
    drop(cosi);
    let at = root.data_offset + root.compressed_size / 2;
    let mut data = std::fs::read(&bad).unwrap();
    data[at as usize] ^= 0x5a;
    std::fs::write(&bad, data).unwrap();

    let a_before = sha256_of(&host.part(2));
    let vars_before = host.efivars_snapshot();
    let e = engine::stage(&host.hc(&bad), &host.ctx(Some(2))).unwrap_err();
    assert!(format!("{e:#}").to_lowercase().contains("sha"), "{e:#}");
    assert_eq!(sha256_of(&host.part(2)), a_before);
    assert_eq!(host.efivars_snapshot(), vars_before);
    let hs = host.store().host_status().unwrap();
    assert_eq!(hs.servicing_state, ServicingState::Provisioned);
    assert!(hs.last_error.is_some());
    // The half-written volume has no filesystem and no boot entry.
    assert!(trident::storage::mkfs::probe(&host.part(3))
        .unwrap()
        .is_none());
    assert!(!host.esp().exists("loader/entries/trident-b.conf").unwrap());
    // A good image stages fine afterwards.
    engine::stage(&host.hc(&images().v2), &host.ctx(Some(2))).unwrap();
    assert_eq!(host.read_ext4(3, "etc/os-version").unwrap().trim(), "v2");
}

/// SIGKILL `trident stage` at random points: the host stays provisioned on A with its
/// boot configuration, and a later stage succeeds.
#[test]
fn stage_killed_at_random_points() {
    if skip() {
        return;
    }
    let host = Host::new(256 * MIB, true);
    host.installed();
    let hc_path = host.dir.path().join("hc2.yaml");
    std::fs::write(&hc_path, host.hc_text(&images().v2, "")).unwrap();
    let d = host.dir.path();
    let stage_cmd = || {
        // TRIDENT_BIN: a private copy of the binary (a shared target directory may be
        // rebuilt by another checkout while the test runs).
        let bin =
            std::env::var("TRIDENT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_trident").into());
        let mut c = Command::new(bin);
        c.arg("stage")
            .arg(&hc_path)
            .arg("--datastore")
            .arg(d.join("ds/datastore.sqlite"))
            .arg("--efivars")
            .arg(d.join("efivars"))
            .arg("--host-root")
            .arg(d.join("hostroot"))
            .arg("--work-dir")
            .arg(d.join("work"))
            .arg("--booted-root")
            .arg(host.part(2))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        c
    };
    let cancel = |host: &Host| {
        let mut s = host.store();
        s.transition(Transition::Cancel).unwrap();
    };
    // How long a whole stage takes.
    let t0 = Instant::now();
    let out = stage_cmd().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = t0.elapsed();
    cancel(&host);

    let a_before = sha256_of(&host.part(2));
    let vars_before = host.efivars_snapshot();
    let entry_a = host
        .esp()
        .read_file("loader/entries/trident-a.conf")
        .unwrap();
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut killed = 0;
    let mut runs = 0;
    // The kill point is drawn from [0, full). A stage that finished before its kill
    // narrows `full` to the shortest whole stage seen, so a slow first measurement (a
    // busy machine) cannot make most kills land after the end.
    let mut full = full;
    while killed < 30 && runs < 150 {
        runs += 1;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_micros(seed % (full.as_micros() as u64).max(1));
        let started = Instant::now();
        let mut child = stage_cmd().spawn().unwrap();
        std::thread::sleep(delay);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let status = child.wait().unwrap();
        if status.success() {
            full = full.min(started.elapsed());
            cancel(&host);
            continue;
        }
        killed += 1;
        assert_eq!(
            host.state(),
            (ServicingState::Provisioned, Some(AbVolume::VolumeA)),
            "after a kill at {delay:?}"
        );
        assert_eq!(
            host.efivars_snapshot(),
            vars_before,
            "EFI variables changed (kill at {delay:?})"
        );
        assert_eq!(
            host.esp()
                .read_file("loader/entries/trident-a.conf")
                .unwrap(),
            entry_a
        );
        assert_eq!(
            sha256_of(&host.part(2)),
            a_before,
            "active volume modified (kill at {delay:?})"
        );
    }
    assert!(
        killed >= 30,
        "only {killed} of {runs} runs were killed before finishing"
    );
    // Stage succeeds after all that.
    let out = stage_cmd().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(host.state().0, ServicingState::AbUpdateStaged);
    assert_eq!(host.read_ext4(3, "etc/os-version").unwrap().trim(), "v2");
}

/// `systemctl stop` / D-Bus `Cancel` through systemd deliver SIGTERM to `trident stage`:
/// the engine stops streaming, records the cancellation (`provisioned`, lastError
/// `image-stream-cancelled`), volume A is untouched, and staging again succeeds. Progress
/// reaches NOTIFY_SOCKET as STATUS= (what `systemctl status` shows).
#[test]
fn sigterm_mid_stage_cancels_cleanly() {
    if skip() {
        return;
    }
    let host = Host::new(256 * MIB, true);
    host.installed();
    let active_sum = sha256_of(&host.part(2));
    let dir = host.dir.path();
    let yaml = host.slow_v2_yaml();
    let hc_file = dir.join("slow.yaml");
    std::fs::write(&hc_file, yaml).unwrap();
    let notify_path = dir.join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let engine_args = |cmd: &mut Command| {
        cmd.arg("--datastore")
            .arg(dir.join("ds/datastore.sqlite"))
            .arg("--efivars")
            .arg(dir.join("efivars"))
            .arg("--host-root")
            .arg(dir.join("hostroot"))
            .arg("--work-dir")
            .arg(dir.join("work"))
            .arg("--booted-root")
            .arg(host.part(2))
            .env_remove("RUST_LOG");
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trident"));
    cmd.arg("stage")
        .arg(&hc_file)
        .env("NOTIFY_SOCKET", &notify_path);
    engine_args(&mut cmd);
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the image is streaming (its first STATUS=), then SIGTERM by pid.
    let mut buf = [0u8; 4096];
    loop {
        let n = notify.recv(&mut buf).expect("a STATUS= while streaming");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.starts_with("STATUS=writing / onto ") {
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(6),
        "servicing error expected:\n{stderr}"
    );
    assert!(stderr.contains("[image-stream-cancelled]"), "{stderr}");
    assert_eq!(
        host.state(),
        (ServicingState::Provisioned, Some(AbVolume::VolumeA))
    );
    let hs = host.store().host_status().unwrap();
    assert_eq!(
        hs.last_error.map(|e| e.code).as_deref(),
        Some("image-stream-cancelled")
    );
    assert_eq!(sha256_of(&host.part(2)), active_sum, "volume A was written");

    // Staging again (from the file) completes.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trident"));
    let file_hc = dir.join("v2.yaml");
    std::fs::write(&file_hc, host.hc_text(&images().v2, "")).unwrap();
    cmd.arg("stage").arg(&file_hc);
    engine_args(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(host.state().0, ServicingState::AbUpdateStaged);
    assert_eq!(sha256_of(&host.part(2)), active_sum, "volume A was written");
}
