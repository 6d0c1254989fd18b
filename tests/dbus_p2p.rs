//! The `io.trident.Trident1` interface over a peer-to-peer connection (no bus, no
//! root needed... except that mutating methods require a root peer, which the test
//! process is when run as root; non-root runs check the refusal instead).

mod dbus_support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dbus_support::*;
use futures_util::StreamExt;
use trident::dbus::client::{self, Trident1Proxy, Trident1ProxyBlocking};
use trident::dbus::{daemon, InProcessServicer, Servicer, Trident1};
use zbus::connection::Builder;
use zbus::Connection;

struct Peer {
    client: Connection,
    _server: Connection,
    _dir: tempfile::TempDir,
}

async fn peer(servicer: Arc<dyn Servicer>, provisioned: bool) -> (Peer, PathBuf) {
    peer_with(|_| servicer, provisioned).await
}

/// A peer whose servicer is made knowing the datastore path.
async fn peer_with(
    make: impl FnOnce(PathBuf) -> Arc<dyn Servicer>,
    provisioned: bool,
) -> (Peer, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let datastore = if provisioned {
        provisioned_datastore(dir.path())
    } else {
        dir.path().join("missing.sqlite")
    };
    let servicer = make(datastore.clone());
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let guid = zbus::Guid::generate();
    let object = Trident1::new(servicer, datastore.clone());
    let server = daemon::serve(
        Builder::unix_stream(a).server(guid).unwrap().p2p(),
        object,
        false,
    );
    let client = Builder::unix_stream(b).p2p().build();
    let (server, client) = tokio::try_join!(server, client).unwrap();
    (
        Peer {
            client,
            _server: server,
            _dir: dir,
        },
        datastore,
    )
}

/// Properties uncached: each read is a real `Get` (the cache follows
/// PropertiesChanged asynchronously and may lag just after a call returns).
async fn proxy(p: &Peer) -> Trident1Proxy<'static> {
    Trident1Proxy::builder(&p.client)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap()
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn fake(steps: u32, ms: u64) -> Arc<FakeServicer> {
    Arc::new(FakeServicer::new(steps, Duration::from_millis(ms)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_good_and_bad_yaml() {
    let (p, _) = peer(fake(1, 1), false).await;
    let t = proxy(&p).await;
    t.validate(&valid_yaml())
        .await
        .expect("valid sample validates");

    let e = t.validate(&invalid_yaml()).await.unwrap_err();
    let (name, msg) = method_error(&e);
    assert_eq!(name, "io.trident.Trident1.Error.InvalidInput");
    assert!(msg.contains("[unknown-field]"), "{msg}");
    assert!(
        msg.contains("storage.disks[0].partitions[1].sizee"),
        "{msg}"
    );

    // Several errors: one line each, each with its code.
    let two = "storage:\n  disks: []\n  bogus: 1\nnope: 2\n";
    let e = t.validate(two).await.unwrap_err();
    let (name, msg) = method_error(&e);
    assert_eq!(name, "io.trident.Trident1.Error.InvalidInput");
    assert!(
        msg.lines().all(|l| l.starts_with("invalid-input [")),
        "{msg}"
    );

    let e = t.validate("storage: [unclosed").await.unwrap_err();
    assert_eq!(method_error(&e).0, "io.trident.Trident1.Error.InvalidInput");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_status_and_history_from_the_datastore() {
    let (p, _) = peer(fake(1, 1), false).await;
    let t = proxy(&p).await;
    let hs: serde_json::Value = serde_json::from_str(&t.get_host_status().await.unwrap()).unwrap();
    assert_eq!(hs["servicingState"], "not-provisioned");
    assert_eq!(t.get_history(10).await.unwrap(), "[]");
    assert_eq!(t.servicing_state().await.unwrap(), "not-provisioned");
    assert_eq!(t.active_volume().await.unwrap(), "");

    let (p, path) = peer(fake(1, 1), true).await;
    let t = proxy(&p).await;
    let hs: serde_json::Value = serde_json::from_str(&t.get_host_status().await.unwrap()).unwrap();
    assert_eq!(hs["servicingState"], "provisioned");
    assert_eq!(hs["activeVolume"], "volume-a");
    let h: serde_json::Value = serde_json::from_str(&t.get_history(0).await.unwrap()).unwrap();
    assert_eq!(h.as_array().unwrap().len(), 1);
    assert_eq!(h[0]["operation"], "install");
    assert_eq!(t.servicing_state().await.unwrap(), "provisioned");
    assert_eq!(t.active_volume().await.unwrap(), "volume-a");

    // A corrupt datastore is an error, not a silent "not-provisioned".
    std::fs::write(&path, b"this is not sqlite").unwrap();
    let _ = std::fs::remove_file(path.with_extension("sqlite-wal"));
    let e = t.get_host_status().await.unwrap_err();
    let (name, msg) = method_error(&e);
    assert!(name.starts_with("io.trident.Trident1.Error."), "{name}");
    assert!(!msg.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_properties() {
    let (p, _) = peer(fake(1, 1), true).await;
    let t = proxy(&p).await;
    assert_eq!(t.version().await.unwrap(), trident::VERSION);
    assert_eq!(t.operation().await.unwrap(), "");
    assert_eq!(t.progress_percent().await.unwrap(), 0);
    assert_eq!(t.last_error().await.unwrap(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_reports_progress_and_completion() {
    if !is_root() {
        eprintln!("skipping: needs root (mutating calls need a root peer)");
        return;
    }
    let servicer = fake(4, 150);
    let requests = servicer.requests.clone();
    let (p, _) = peer(servicer, true).await;
    let t = proxy(&p).await;
    let mut progress = t.receive_progress_signal().await.unwrap();
    let mut completed = t.receive_completed().await.unwrap();
    let props = zbus::fdo::PropertiesProxy::builder(&p.client)
        .destination(trident::dbus::BUS_NAME)
        .unwrap()
        .path(trident::dbus::OBJECT_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    let mut changes = props.receive_properties_changed().await.unwrap();

    let yaml = valid_yaml();
    t.stage(&yaml, HashMap::new()).await.unwrap();
    assert_eq!(t.operation().await.unwrap(), "stage");

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let s = tokio::time::timeout(Duration::from_secs(10), progress.next())
            .await
            .unwrap()
            .unwrap();
        let a = s.args().unwrap();
        assert_eq!(a.operation, "stage");
        seen.push((a.percent, a.message.clone()));
    }
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![25, 50, 75, 100]
    );
    let c = tokio::time::timeout(Duration::from_secs(10), completed.next())
        .await
        .unwrap()
        .unwrap();
    let a = c.args().unwrap();
    assert_eq!(
        (a.operation.as_str(), a.success, a.error.as_str()),
        ("stage", true, "")
    );
    assert_eq!(t.operation().await.unwrap(), "");
    assert_eq!(t.progress_percent().await.unwrap(), 100);
    // PropertiesChanged carried Operation "stage", then "" (idle), and Progress.
    let mut operations = Vec::new();
    let mut saw_progress = false;
    while let Ok(Some(c)) = tokio::time::timeout(Duration::from_millis(300), changes.next()).await {
        let args = c.args().unwrap();
        assert_eq!(args.interface_name().as_str(), "io.trident.Trident1");
        if let Some(v) = args.changed_properties().get("Operation") {
            operations.push(String::try_from(v.try_clone().unwrap()).unwrap());
        }
        saw_progress |= args.changed_properties().contains_key("Progress");
    }
    assert_eq!(
        operations.first().map(String::as_str),
        Some("stage"),
        "{operations:?}"
    );
    assert_eq!(
        operations.last().map(String::as_str),
        Some(""),
        "{operations:?}"
    );
    assert!(saw_progress);

    let reqs = requests.lock().unwrap();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].host_configuration_yaml.as_deref(),
        Some(yaml.as_str())
    );
    assert!(reqs[0].host_configuration.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_call_is_busy_and_cancel_stops() {
    if !is_root() {
        eprintln!("skipping: needs root (mutating calls need a root peer)");
        return;
    }
    let (p, _) = peer(fake(100, 100), true).await;
    let t = proxy(&p).await;
    let mut completed = t.receive_completed().await.unwrap();
    let mut progress = t.receive_progress_signal().await.unwrap();

    // Cancel with nothing running.
    let (name, msg) = method_error(&t.cancel().await.unwrap_err());
    assert_eq!(name, "io.trident.Trident1.Error.Failed");
    assert!(msg.contains("[nothing-running]"), "{msg}");

    t.stage(&valid_yaml(), HashMap::new()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), progress.next())
        .await
        .unwrap()
        .unwrap();
    for e in [
        t.stage(&valid_yaml(), HashMap::new()).await.unwrap_err(),
        t.finalize(HashMap::new()).await.unwrap_err(),
        t.commit().await.unwrap_err(),
    ] {
        let (name, msg) = method_error(&e);
        assert_eq!(name, "io.trident.Trident1.Error.Busy");
        assert!(msg.contains("stage is running"), "{msg}");
    }
    // Reads still work while busy.
    assert_eq!(t.servicing_state().await.unwrap(), "provisioned");
    assert!(t.progress_percent().await.unwrap() >= 1);

    t.cancel().await.unwrap();
    let c = tokio::time::timeout(Duration::from_secs(10), completed.next())
        .await
        .unwrap()
        .unwrap();
    let a = c.args().unwrap();
    assert_eq!(a.operation, "stage");
    assert!(!a.success);
    assert!(a.error.contains("[cancelled]"), "{}", a.error);
    assert_eq!(t.operation().await.unwrap(), "");
    assert!(t.last_error().await.unwrap().contains("[cancelled]"));
    assert_eq!(t.servicing_state().await.unwrap(), "provisioned");

    // Free again: the next operation is accepted.
    t.commit().await.unwrap();
    t.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_anything_starts() {
    if !is_root() {
        eprintln!("skipping: needs root (mutating calls need a root peer)");
        return;
    }
    let servicer = fake(1, 1);
    let requests = servicer.requests.clone();
    let (p, _) = peer(servicer.clone(), false).await;
    let t = proxy(&p).await;
    let (name, msg) = method_error(&t.stage(&valid_yaml(), HashMap::new()).await.unwrap_err());
    assert_eq!(name, "io.trident.Trident1.Error.NotProvisioned");
    assert!(msg.contains("[not-provisioned]"), "{msg}");
    let (name, _) = method_error(&t.stage(&invalid_yaml(), HashMap::new()).await.unwrap_err());
    assert_eq!(name, "io.trident.Trident1.Error.InvalidInput");
    let mut bad = HashMap::new();
    bad.insert("rebot", zbus::zvariant::Value::from(true));
    let (name, msg) = method_error(&t.finalize(bad).await.unwrap_err());
    assert_eq!(name, "io.trident.Trident1.Error.InvalidInput");
    assert!(msg.contains("[unknown-option]"), "{msg}");
    assert!(requests.lock().unwrap().is_empty());
    assert_eq!(t.operation().await.unwrap(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_servicer_runs_the_engine() {
    if !is_root() {
        eprintln!("skipping: needs root (mutating calls need a root peer)");
        return;
    }
    let (p, _) = peer_with(
        |datastore| {
            Arc::new(InProcessServicer::new(trident::engine::EngineContext::new(
                datastore,
            )))
        },
        true,
    )
    .await;
    let t = proxy(&p).await;
    let mut progress = t.receive_progress_signal().await.unwrap();
    let mut completed = t.receive_completed().await.unwrap();
    let mut next_completed = async || {
        let c = tokio::time::timeout(Duration::from_secs(30), completed.next())
            .await
            .unwrap()
            .unwrap();
        let a = c.args().unwrap();
        (a.operation.clone(), a.success, a.error.clone())
    };

    // A provisioned host with nothing in flight: the engine's commit says so.
    t.commit().await.unwrap();
    assert_eq!(
        next_completed().await,
        ("commit".into(), true, String::new())
    );
    let s = tokio::time::timeout(Duration::from_secs(10), progress.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        s.args().unwrap().message,
        "nothing to commit (host is provisioned)"
    );

    // The installed spec has no storage; an update declaring disks is refused by the
    // engine's classification, with its code, and becomes LastError.
    t.stage(&valid_yaml(), HashMap::new()).await.unwrap();
    let (op, success, error) = next_completed().await;
    assert_eq!((op.as_str(), success), ("stage", false));
    assert!(
        error.starts_with("unsupported-configuration [storage-layout-changed]"),
        "{error}"
    );
    assert_eq!(t.last_error().await.unwrap(), error);
    assert_eq!(t.servicing_state().await.unwrap(), "provisioned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_client_follows_an_operation() {
    if !is_root() {
        eprintln!("skipping: needs root (mutating calls need a root peer)");
        return;
    }
    let (p, _) = peer(fake(5, 20), true).await;
    let conn = zbus::blocking::Connection::from(p.client.clone());
    let yaml = valid_yaml();
    let (outcome, seen) = tokio::task::spawn_blocking(move || {
        let proxy = Trident1ProxyBlocking::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .unwrap();
        let mut seen = Vec::new();
        let outcome = client::start_and_follow(
            &proxy,
            "stage",
            |p| p.stage(&yaml, HashMap::new()),
            |pct, msg| seen.push((pct, msg.to_string())),
        )
        .unwrap();
        // A start error comes back as is.
        let e = client::start_and_follow(&proxy, "rollback", |p| p.validate("nope: 1"), |_, _| {})
            .unwrap_err();
        assert_eq!(method_error(&e).0, "io.trident.Trident1.Error.InvalidInput");
        // Nothing to follow when idle.
        assert!(client::follow(&proxy, "stage", |_, _| {}).is_err());
        (outcome, seen)
    })
    .await
    .unwrap();
    assert!(outcome.success, "{outcome:?}");
    assert_eq!(outcome.operation, "stage");
    assert_eq!(seen.last().unwrap().0, 100);
    assert_eq!(seen.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_matches_the_checked_in_xml() {
    let (p, _) = peer(fake(1, 1), false).await;
    let intro = zbus::fdo::IntrospectableProxy::builder(&p.client)
        .destination(trident::dbus::BUS_NAME)
        .unwrap()
        .path(trident::dbus::OBJECT_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    let doc = intro.introspect().await.unwrap();
    let live = interface_xml(&doc);
    let path = checked_in_xml_path();
    if std::env::var_os("TRIDENT_BLESS").is_some() {
        std::fs::write(
            &path,
            format!(
                "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \
                 \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n\
                 <!-- The stable contract of io.trident.Trident1 (docs/dbus.md). Regenerate with\n     \
                 TRIDENT_BLESS=1 cargo test --test dbus_p2p introspection -->\n<node>\n{}\n</node>\n",
                interface_xml_raw(&doc)
            ),
        )
        .unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).expect("dbus/io.trident.Trident1.xml");
    assert_eq!(
        interface_xml(&checked_in),
        live,
        "the live interface differs from {}; if the change is intended, regenerate it \
         with TRIDENT_BLESS=1 and document it in docs/dbus.md",
        path.display()
    );
}

#[test]
fn os_integration_files_agree() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let policy = read("dbus/io.trident.Trident1.policy");
    let mut verbs: Vec<&str> = trident::dbus::Operation::ALL
        .iter()
        .map(|o| o.as_str())
        .collect();
    verbs.push("cancel");
    for verb in &verbs {
        let id = trident::dbus::auth::action_id(verb);
        assert!(
            policy.contains(&format!("<action id=\"{id}\">")),
            "no polkit action {id}"
        );
    }
    assert_eq!(policy.matches("<action id=").count(), verbs.len());
    let activation = read("dbus/io.trident.Trident1.service");
    assert!(activation.contains("Name=io.trident.Trident1\n"));
    assert!(activation.contains("SystemdService=tridentd.service\n"));
    let unit = read("units/tridentd.service");
    assert!(unit.contains("Type=dbus\n"));
    assert!(unit.contains("BusName=io.trident.Trident1\n"));
    let bus_policy = read("dbus/io.trident.Trident1.conf");
    assert!(bus_policy.contains("<allow own=\"io.trident.Trident1\"/>"));
}
