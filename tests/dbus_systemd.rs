//! `SystemdServicer` against a stand-in for systemd's manager on a real `dbus-daemon`
//! (no systemd PID 1 on the build machines). The stand-in (`FakeSystemd`) answers
//! `Subscribe`, `LoadUnit`, `StartUnit`, `StopUnit`, emits `JobRemoved` and the unit's
//! `ActiveState` changes like systemd does for a oneshot service; it is a fake of
//! systemd only — the servicer, the Trident1 interface and the bus are real.
//! Needs `dbus-daemon` and root (mutating calls need a root caller).

mod dbus_support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dbus_support::*;
use futures_util::StreamExt;
use trident::dbus::client::Trident1Proxy;
use trident::dbus::systemd::SystemdServicer;
use trident::dbus::{daemon, Trident1};
use zbus::connection::Builder;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

fn start_bus() -> Option<Bus> {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"<busconfig><type>session</type><auth>EXTERNAL</auth>
<listen>unix:path={}</listen>
<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/></policy>
</busconfig>"#,
        dir.path().join("bus").display()
    );
    let conf = dir.path().join("bus.conf");
    std::fs::write(&conf, config).unwrap();
    let mut child = match Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .args(["--print-address", "--nofork", "--nopidfile"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipping: dbus-daemon not available: {e}");
            return None;
        }
    };
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Some(Bus {
        child,
        address: line.trim().to_string(),
        dir,
    })
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct FakeUnit {
    state: Arc<Mutex<String>>,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl FakeUnit {
    #[zbus(property)]
    fn active_state(&self) -> String {
        self.state.lock().unwrap().clone()
    }
    #[zbus(property)]
    fn condition_result(&self) -> bool {
        true
    }
}

struct FakeService;

#[zbus::interface(name = "org.freedesktop.systemd1.Service")]
impl FakeService {
    #[zbus(property)]
    fn result(&self) -> String {
        "exit-code".into()
    }
    #[zbus(property)]
    fn exec_main_status(&self) -> i32 {
        6
    }
}

struct FakeSystemd {
    log: Log,
    next_job: Arc<Mutex<u32>>,
    /// unit → its running job (id, path)
    jobs: Arc<Mutex<HashMap<String, (u32, OwnedObjectPath)>>>,
}

fn unit_path(unit: &str) -> String {
    format!(
        "/org/freedesktop/systemd1/unit/{}",
        unit.replace(['-', '.'], "_")
    )
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl FakeSystemd {
    fn subscribe(&self) {
        self.log.push("Subscribe".into());
    }

    async fn load_unit(
        &self,
        name: String,
        #[zbus(object_server)] server: &zbus::ObjectServer,
    ) -> OwnedObjectPath {
        let path = unit_path(&name);
        let state = Arc::new(Mutex::new("inactive".to_string()));
        let _ = server.at(path.as_str(), FakeUnit { state }).await;
        let _ = server.at(path.as_str(), FakeService).await;
        OwnedObjectPath::try_from(path).unwrap()
    }

    async fn start_unit(
        &self,
        name: String,
        mode: String,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> OwnedObjectPath {
        self.log.push(format!("StartUnit {name} {mode}"));
        let id = {
            let mut n = self.next_job.lock().unwrap();
            *n += 1;
            *n
        };
        let job = OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{id}")).unwrap();
        self.jobs
            .lock()
            .unwrap()
            .insert(name.clone(), (id, job.clone()));
        let conn = conn.clone();
        let jobs = self.jobs.clone();
        let job2 = job.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            set_state(&conn, &name, "activating").await;
            // trident-finalize runs until stopped; stage succeeds; commit fails.
            let result = match name.as_str() {
                "trident-finalize.service" => return,
                "trident-commit.service" => "failed",
                _ => "done",
            };
            tokio::time::sleep(Duration::from_millis(200)).await;
            set_state(
                &conn,
                &name,
                if result == "done" {
                    "inactive"
                } else {
                    "failed"
                },
            )
            .await;
            // An unrelated job first: the servicer must match its own job.
            job_removed(
                &conn,
                999,
                "/org/freedesktop/systemd1/job/999",
                "other.service",
                "failed",
            )
            .await;
            jobs.lock().unwrap().remove(&name);
            job_removed(&conn, id, job2.as_str(), &name, result).await;
        });
        job
    }

    async fn stop_unit(
        &self,
        name: String,
        mode: String,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> OwnedObjectPath {
        self.log.push(format!("StopUnit {name} {mode}"));
        if let Some((id, job)) = self.jobs.lock().unwrap().remove(&name) {
            let conn = conn.clone();
            tokio::spawn(async move {
                set_state(&conn, &name, "inactive").await;
                job_removed(&conn, id, job.as_str(), &name, "canceled").await;
            });
        }
        OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/1000").unwrap()
    }

    #[zbus(signal)]
    async fn job_removed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

async fn set_state(conn: &zbus::Connection, unit: &str, state: &str) {
    let iface = conn
        .object_server()
        .interface::<_, FakeUnit>(unit_path(unit).as_str())
        .await
        .unwrap();
    *iface.get().await.state.lock().unwrap() = state.to_string();
    iface
        .get()
        .await
        .active_state_changed(iface.signal_emitter())
        .await
        .unwrap();
}

async fn job_removed(conn: &zbus::Connection, id: u32, job: &str, unit: &str, result: &str) {
    let emitter = SignalEmitter::new(conn, "/org/freedesktop/systemd1").unwrap();
    FakeSystemd::job_removed(
        &emitter,
        id,
        ObjectPath::try_from(job).unwrap(),
        unit,
        result,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn systemd_servicer_starts_follows_and_stops_units() {
    let Some(bus) = start_bus() else { return };
    let log = Log::default();
    let _systemd = Builder::address(bus.address.as_str())
        .unwrap()
        .serve_at(
            "/org/freedesktop/systemd1",
            FakeSystemd {
                log: log.clone(),
                next_job: Arc::default(),
                jobs: Arc::default(),
            },
        )
        .unwrap()
        .name("org.freedesktop.systemd1")
        .unwrap()
        .build()
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let servicer_conn = Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    assert!(SystemdServicer::available(&servicer_conn).await);
    let requests = dir.path().join("requests");
    let servicer = SystemdServicer::new(servicer_conn).with_request_dir(&requests);
    // Mutating calls need a root caller (uid 0 per GetConnectionUnixUser).
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: needs root (mutating calls need a root caller)");
        return;
    }
    let datastore = provisioned_datastore(dir.path());
    let _server = daemon::serve(
        Builder::address(bus.address.as_str()).unwrap(),
        Trident1::new(Arc::new(servicer), datastore),
        true,
    )
    .await
    .unwrap();
    let client = Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let t = Trident1Proxy::builder(&client)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let mut completed = t.receive_completed().await.unwrap();
    let mut progress = t.receive_progress_signal().await.unwrap();

    // Stage: request file written, unit started with mode replace, success.
    let yaml = valid_yaml();
    t.stage(&yaml, HashMap::new()).await.unwrap();
    let (op, ok, err) = next_completed(&mut completed).await;
    assert_eq!((op.as_str(), ok, err.as_str()), ("stage", true, ""));
    assert_eq!(
        std::fs::read_to_string(requests.join("stage.yaml")).unwrap(),
        yaml
    );
    let mut messages = Vec::new();
    while let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(200), progress.next()).await
    {
        messages.push(p.args().unwrap().message.clone());
    }
    assert!(
        messages
            .iter()
            .any(|m| m == "trident-stage.service: activating"),
        "{messages:?}"
    );
    assert_eq!(t.progress_percent().await.unwrap(), 100);

    // Commit: the unit fails → Completed with the unit's result and status category.
    t.commit().await.unwrap();
    let (op, ok, err) = next_completed(&mut completed).await;
    assert_eq!(op, "commit");
    assert!(!ok);
    assert!(err.starts_with("servicing [unit-failed]"), "{err}");
    assert!(err.contains("result exit-code, exit status 6"), "{err}");

    // Finalize runs until cancelled: Cancel stops the unit.
    t.finalize(HashMap::new()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.operation().await.unwrap(), "finalize");
    t.cancel().await.unwrap();
    let (op, ok, err) = next_completed(&mut completed).await;
    assert_eq!(op, "finalize");
    assert!(!ok && err.contains("[cancelled]"), "{err}");

    // A runtime rollback runs as trident-runtime-rollback.service, an A/B one as
    // trident-manual-rollback.service.
    let mut runtime = HashMap::new();
    runtime.insert("runtime", zbus::zvariant::Value::from(true));
    t.rollback(runtime).await.unwrap();
    let (op, ok, err) = next_completed(&mut completed).await;
    assert_eq!((op.as_str(), ok, err.as_str()), ("rollback", true, ""));
    t.rollback(HashMap::new()).await.unwrap();
    let (op, ok, err) = next_completed(&mut completed).await;
    assert_eq!((op.as_str(), ok, err.as_str()), ("rollback", true, ""));

    let calls: Vec<String> = log.all().into_iter().filter(|l| l != "Subscribe").collect();
    assert_eq!(
        calls,
        vec![
            "StartUnit trident-stage.service replace",
            "StartUnit trident-commit.service replace",
            "StartUnit trident-finalize.service replace",
            "StopUnit trident-finalize.service replace",
            "StartUnit trident-runtime-rollback.service replace",
            "StartUnit trident-manual-rollback.service replace",
        ]
    );
}

async fn next_completed(c: &mut trident::dbus::client::CompletedStream) -> (String, bool, String) {
    let s = tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .unwrap()
        .unwrap();
    let a = s.args().unwrap();
    (a.operation.clone(), a.success, a.error.clone())
}
