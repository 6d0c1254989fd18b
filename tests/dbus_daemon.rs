//! The service against a real `dbus-daemon` with a system-bus-like policy (the
//! distribution's `system.conf` rules plus the project's `dbus/io.trident.Trident1.conf`),
//! listening on a socket in a temp dir; `busctl` as the client, also as `nobody`.
//! Needs root (only root may own the name; `setpriv` to become nobody), `dbus-daemon`
//! and `busctl` (Debian: dbus, systemd). The last test drives the real engine through
//! the `tridentd` binary: a COSI staged onto a loop device, cancelled mid-stream, staged
//! again and finalized, all over the bus.

mod dbus_support;
mod engine_support;
mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbus_support::*;
use engine_support::*;
use futures_util::StreamExt;
use std::collections::HashMap;
use trident::dbus::client::Trident1Proxy;
use trident::dbus::{daemon, Trident1};
use trident::status::{AbVolume, ServicingState};
use zbus::connection::Builder;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn skip() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: needs root");
        return true;
    }
    for tool in ["dbus-daemon", "busctl", "setpriv"] {
        if !have(tool) {
            eprintln!("skipping: {tool} not installed");
            return true;
        }
    }
    false
}

fn start_bus() -> Bus {
    let dir = tempfile::tempdir().unwrap();
    // nobody must reach the socket.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/io.trident.Trident1.conf");
    let config = format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Debug.Stats"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"#,
        socket = dir.path().join("bus").display(),
        policy = policy.display()
    );
    let config_path = dir.path().join("bus.conf");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", config_path.display()))
        .args(["--print-address", "--nofork", "--nopidfile"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting dbus-daemon");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line.trim().to_string();
    assert!(
        address.starts_with("unix:"),
        "dbus-daemon printed {address:?}"
    );
    Bus {
        child,
        address,
        dir,
    }
}

/// `busctl --address=.. ARGS`, as root or (with `nobody`) as the unprivileged user.
async fn busctl(bus: &Bus, nobody: bool, args: &[&str]) -> Output {
    let mut cmd = if nobody {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "busctl",
        ]);
        c
    } else {
        Command::new("busctl")
    };
    cmd.arg(format!("--address={}", bus.address))
        .args(args)
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output().expect("running busctl"))
        .await
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const DEST: &str = "io.trident.Trident1";
const PATH: &str = "/io/trident/Trident1";

/// Serve a Trident1 with `servicer` on the bus (in this process, as root).
async fn serve(bus: &Bus, servicer: Arc<FakeServicer>, datastore: PathBuf) -> zbus::Connection {
    daemon::serve(
        Builder::address(bus.address.as_str()).unwrap(),
        Trident1::new(servicer, datastore),
        true,
    )
    .await
    .expect("serving on the test bus")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn busctl_reads_validate_and_unprivileged_refusal() {
    if skip() {
        return;
    }
    let bus = start_bus();
    let datastore = provisioned_datastore(bus.dir.path());
    let servicer = Arc::new(FakeServicer::new(2, Duration::from_millis(10)));
    let requests = servicer.requests.clone();
    let _server = serve(&bus, servicer, datastore).await;

    for nobody in [false, true] {
        let who = if nobody { "nobody" } else { "root" };
        let o = busctl(&bus, nobody, &["introspect", DEST, PATH]).await;
        let (out, err) = text(&o);
        assert!(o.status.success(), "{who}: introspect: {err}");
        for member in [
            ".Validate",
            ".Stage",
            ".GetHostStatus",
            ".ServicingState",
            ".Completed",
        ] {
            assert!(out.contains(member), "{who}: {member} missing in\n{out}");
        }
        let o = busctl(&bus, nobody, &["get-property", DEST, PATH, DEST, "Version"]).await;
        assert_eq!(
            text(&o).0.trim(),
            format!("s \"{}\"", trident::VERSION),
            "{who}"
        );
        let o = busctl(
            &bus,
            nobody,
            &[
                "get-property",
                DEST,
                PATH,
                DEST,
                "ServicingState",
                "ActiveVolume",
                "Operation",
                "Progress",
            ],
        )
        .await;
        assert_eq!(
            text(&o).0,
            "s \"provisioned\"\ns \"volume-a\"\ns \"\"\nu 0\n",
            "{who}: {}",
            text(&o).1
        );

        let o = busctl(
            &bus,
            nobody,
            &["call", DEST, PATH, DEST, "Validate", "s", &valid_yaml()],
        )
        .await;
        assert!(o.status.success(), "{who}: Validate good: {}", text(&o).1);
        let o = busctl(
            &bus,
            nobody,
            &["call", DEST, PATH, DEST, "Validate", "s", &invalid_yaml()],
        )
        .await;
        assert!(!o.status.success(), "{who}: bad YAML accepted");
        assert!(
            text(&o).1.contains("[unknown-field]"),
            "{who}: {}",
            text(&o).1
        );

        let o = busctl(&bus, nobody, &["call", DEST, PATH, DEST, "GetHostStatus"]).await;
        assert!(
            o.status.success() && text(&o).0.contains("provisioned"),
            "{who}: {:?}",
            text(&o)
        );
        let o = busctl(
            &bus,
            nobody,
            &["call", DEST, PATH, DEST, "GetHistory", "u", "5"],
        )
        .await;
        assert!(
            o.status.success() && text(&o).0.contains("install"),
            "{who}: {:?}",
            text(&o)
        );
    }

    // Every mutating method is refused for nobody (no polkit on this bus), with the
    // daemon's Unauthorized error; nothing reaches the servicer.
    let yaml = valid_yaml();
    let calls: Vec<Vec<&str>> = vec![
        vec!["Install", "sa{sv}", &yaml, "0"],
        vec!["Stage", "sa{sv}", &yaml, "0"],
        vec!["Finalize", "a{sv}", "0"],
        vec!["Commit"],
        vec!["Rollback", "a{sv}", "1", "runtime", "b", "true"],
        vec!["Cancel"],
    ];
    for call in &calls {
        let mut args = vec!["call", DEST, PATH, DEST];
        args.extend(call.iter().copied());
        let o = busctl(&bus, true, &args).await;
        let (_, err) = text(&o);
        assert!(!o.status.success(), "nobody may not call {}", call[0]);
        assert!(err.contains("[not-authorized]"), "{}: {err}", call[0]);
    }
    assert!(requests.lock().unwrap().is_empty());

    // Error names as a zbus client sees them (busctl prints only the message).
    let conn = setpriv_free_client(&bus).await;
    let t = Trident1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let (name, _) = method_error(&t.validate(&invalid_yaml()).await.unwrap_err());
    assert_eq!(name, "io.trident.Trident1.Error.InvalidInput");

    // The live interface equals the checked-in XML.
    let o = busctl(&bus, false, &["introspect", "--xml-interface", DEST, PATH]).await;
    let checked_in = std::fs::read_to_string(checked_in_xml_path()).unwrap();
    assert_eq!(interface_xml(&text(&o).0), interface_xml(&checked_in));
}

async fn setpriv_free_client(bus: &Bus) -> zbus::Connection {
    Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stage_progress_busy_and_cancel_over_the_bus() {
    if skip() {
        return;
    }
    let bus = start_bus();
    let datastore = provisioned_datastore(bus.dir.path());
    let servicer = Arc::new(FakeServicer::new(50, Duration::from_millis(100)));
    let _server = serve(&bus, servicer, datastore).await;
    let client = setpriv_free_client(&bus).await;
    let t = Trident1Proxy::builder(&client)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let mut progress = t.receive_progress_signal().await.unwrap();
    let mut completed = t.receive_completed().await.unwrap();

    let yaml = valid_yaml();
    let o = busctl(
        &bus,
        false,
        &[
            "call", DEST, PATH, DEST, "Stage", "sa{sv}", &yaml, "1", "reason", "s", "test",
        ],
    )
    .await;
    assert!(o.status.success(), "Stage: {}", text(&o).1);
    let p = tokio::time::timeout(Duration::from_secs(10), progress.next())
        .await
        .unwrap()
        .unwrap();
    let a = p.args().unwrap();
    assert_eq!((a.operation.as_str(), a.percent), ("stage", 2));
    let o = busctl(
        &bus,
        false,
        &["get-property", DEST, PATH, DEST, "Operation"],
    )
    .await;
    assert_eq!(text(&o).0.trim(), "s \"stage\"");

    // Busy: by busctl (message) and by zbus (name).
    let o = busctl(
        &bus,
        false,
        &["call", DEST, PATH, DEST, "Stage", "sa{sv}", &yaml, "0"],
    )
    .await;
    assert!(!o.status.success());
    assert!(text(&o).1.contains("stage is running"), "{}", text(&o).1);
    let (name, _) = method_error(&t.commit().await.unwrap_err());
    assert_eq!(name, "io.trident.Trident1.Error.Busy");
    // nobody is refused before being told it is busy.
    let o = busctl(&bus, true, &["call", DEST, PATH, DEST, "Cancel"]).await;
    assert!(text(&o).1.contains("[not-authorized]"), "{}", text(&o).1);

    let o = busctl(&bus, false, &["call", DEST, PATH, DEST, "Cancel"]).await;
    assert!(o.status.success(), "Cancel: {}", text(&o).1);
    let c = tokio::time::timeout(Duration::from_secs(10), completed.next())
        .await
        .unwrap()
        .unwrap();
    let a = c.args().unwrap();
    assert_eq!(a.operation, "stage");
    assert!(!a.success && a.error.contains("[cancelled]"), "{}", a.error);
    let o = busctl(
        &bus,
        false,
        &[
            "get-property",
            DEST,
            PATH,
            DEST,
            "Operation",
            "ServicingState",
        ],
    )
    .await;
    assert_eq!(text(&o).0, "s \"\"\ns \"provisioned\"\n");
}

/// `trident VERB ARGS --via-dbus` against `bus` (off the async runtime's threads).
async fn cli_via_dbus(bus: &Bus, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trident"));
    cmd.args(args)
        .args(["--via-dbus", "--bus-address", &bus.address])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// The `tridentd` binary on `bus` with the in-process servicer; killed (by pid) on drop.
struct Tridentd(Child);

impl Drop for Tridentd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `tridentd` and wait until it answers `GetHostStatus` (a provisioned host).
async fn spawn_tridentd(bus: &Bus, datastore: &Path, idle: &str, extra: &[&str]) -> Tridentd {
    let child = Command::new(env!("CARGO_BIN_EXE_tridentd"))
        .args([
            "--address",
            &bus.address,
            "--idle-timeout",
            idle,
            "--servicer",
            "in-process",
        ])
        .arg("--datastore")
        .arg(datastore)
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Tridentd(child);
    let started = Instant::now();
    loop {
        let o = busctl(bus, false, &["call", DEST, PATH, DEST, "GetHostStatus"]).await;
        if o.status.success() {
            assert!(text(&o).0.contains("provisioned"));
            return guard;
        }
        if let Some(s) = guard.0.try_wait().unwrap() {
            panic!("tridentd exited early: {s:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "tridentd did not come up: {}",
            text(&o).1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tridentd_binary_serves_and_exits_when_idle() {
    if skip() {
        return;
    }
    let bus = start_bus();
    let datastore = provisioned_datastore(bus.dir.path());
    let mut guard = spawn_tridentd(&bus, &datastore, "3s", &[]).await;
    // In-process servicer: the engine commits nothing on a provisioned host.
    let client = setpriv_free_client(&bus).await;
    let t = Trident1Proxy::builder(&client)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let mut completed = t.receive_completed().await.unwrap();
    t.commit().await.unwrap();
    let c = tokio::time::timeout(Duration::from_secs(10), completed.next())
        .await
        .unwrap()
        .unwrap();
    let a = c.args().unwrap();
    assert!(a.success, "{}", a.error);
    assert_eq!(a.operation, "commit");

    // No calls for 3 s: it exits by itself with status 0 and gives the name up.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = guard.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "tridentd did not exit when idle");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}");
    let o = busctl(&bus, false, &["status", DEST]).await;
    assert!(!o.status.success(), "name still owned");
}

/// The real engine behind the bus: install v1 (engine API), then through `tridentd`:
/// `Stage` of v2 served slowly over HTTP with `Progress` signals, `Busy` for a second
/// call, `Cancel` mid-stream (the host stays provisioned on A, A's bytes unchanged),
/// `Stage` again from a file (staged into B), `Finalize` (one-shot boot entry for B).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tridentd_stages_a_real_cosi_with_the_engine() {
    if skip() || engine_support::skip() {
        return;
    }
    let host = Host::new(256 * MIB, true);
    host.installed();
    let active_sum = sha256_of(&host.part(2));
    let bus = start_bus();

    let file_yaml = host.hc_text(&images().v2, "");
    let slow_yaml = host.slow_v2_yaml();
    let dir = host.dir.path();
    let (efivars, hostroot, work, booted) = (
        dir.join("efivars"),
        dir.join("hostroot"),
        dir.join("work"),
        host.part(2),
    );
    let _daemon = spawn_tridentd(
        &bus,
        &dir.join("ds/datastore.sqlite"),
        "0",
        &[
            "--efivars",
            efivars.to_str().unwrap(),
            "--host-root",
            hostroot.to_str().unwrap(),
            "--work-dir",
            work.to_str().unwrap(),
            "--booted-root",
            booted.to_str().unwrap(),
        ],
    )
    .await;
    let client = setpriv_free_client(&bus).await;
    let t = Trident1Proxy::builder(&client)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let mut progress = t.receive_progress_signal().await.unwrap();
    let mut completed = t.receive_completed().await.unwrap();

    let o = busctl(
        &bus,
        false,
        &["call", DEST, PATH, DEST, "Stage", "sa{sv}", &slow_yaml, "0"],
    )
    .await;
    assert!(o.status.success(), "Stage: {}", text(&o).1);
    // Streaming has begun once the engine reports bytes.
    let p = tokio::time::timeout(Duration::from_secs(60), progress.next())
        .await
        .expect("a Progress signal while streaming")
        .unwrap();
    let a = p.args().unwrap();
    assert_eq!(a.operation, "stage");
    assert!(a.message.contains(" bytes"), "{}", a.message);
    let (name, msg) = method_error(&t.stage(&file_yaml, HashMap::new()).await.unwrap_err());
    assert_eq!(name, "io.trident.Trident1.Error.Busy", "{msg}");

    let o = busctl(&bus, false, &["call", DEST, PATH, DEST, "Cancel"]).await;
    assert!(o.status.success(), "Cancel: {}", text(&o).1);
    let c = tokio::time::timeout(Duration::from_secs(60), completed.next())
        .await
        .unwrap()
        .unwrap();
    let a = c.args().unwrap();
    assert_eq!(a.operation, "stage");
    assert!(!a.success && a.error.contains("[cancelled]"), "{}", a.error);
    assert_eq!(t.servicing_state().await.unwrap(), "provisioned");
    assert_eq!(
        host.state(),
        (ServicingState::Provisioned, Some(AbVolume::VolumeA))
    );
    assert_eq!(
        sha256_of(&host.part(2)),
        active_sum,
        "the active volume was written"
    );

    // The CLI as a client: bad input comes back with its category's exit code.
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, invalid_yaml()).unwrap();
    let o = cli_via_dbus(&bus, &["stage", bad.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o).1);
    assert!(text(&o).1.contains("invalid-input ["), "{}", text(&o).1);
    assert_eq!(
        t.operation().await.unwrap(),
        "",
        "refused before anything started"
    );

    // Again, from the file, with `trident stage --via-dbus`: staged into B, progress
    // up to 100 %, the CLI exits 0 when the service's operation completed.
    let hc_file = dir.join("v2.yaml");
    std::fs::write(&hc_file, &file_yaml).unwrap();
    let o = cli_via_dbus(&bus, &["stage", hc_file.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert!(
        text(&o).1.contains("stage completed (through tridentd)"),
        "{}",
        text(&o).1
    );
    let c = tokio::time::timeout(Duration::from_secs(10), completed.next())
        .await
        .unwrap()
        .unwrap();
    let a = c.args().unwrap();
    assert!(a.success, "{}", a.error);
    let mut last = None;
    while let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(300), progress.next()).await
    {
        last = Some(p.args().unwrap().message.clone());
    }
    assert_eq!(last.as_deref(), Some("staged into volume-b"));
    assert_eq!(t.servicing_state().await.unwrap(), "ab-update-staged");
    assert_eq!(
        host.read_ext4(3, "etc/os-version")
            .as_deref()
            .map(str::trim),
        Some("v2")
    );

    let o = cli_via_dbus(&bus, &["finalize"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let c = tokio::time::timeout(Duration::from_secs(60), completed.next())
        .await
        .unwrap()
        .unwrap();
    let a = c.args().unwrap();
    assert!(a.success, "{}", a.error);
    assert_eq!(t.servicing_state().await.unwrap(), "ab-update-finalized");
    assert!(host.efivar("LoaderEntryOneShot").is_some());
    assert_eq!(
        sha256_of(&host.part(2)),
        active_sum,
        "the active volume was written"
    );
}
