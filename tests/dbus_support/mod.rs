//! Shared pieces of the D-Bus tests.
//!
//! [`FakeServicer`] is a test double **only at the `Servicer` seam**: everything in
//! front of it (the interface, errors, authorization, properties, signals, busy and
//! cancel handling, the bus) is the real code. It simulates a long operation: `steps`
//! progress reports `step` apart, checking the cancel flag between steps.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trident::datastore::Datastore;
use trident::dbus::servicer::{cancelled_error, op_channel, BoxFuture};
use trident::dbus::{CancelFlag, Operation, Request, RunningOp, Servicer};
use trident::error::TridentError;
use trident::status::{AbVolume, HostStatus, ServicingState};

pub struct FakeServicer {
    pub steps: u32,
    pub step: Duration,
    /// Every request accepted, in order.
    pub requests: Arc<Mutex<Vec<Request>>>,
    /// Finish with this error instead of success.
    pub fail_with: Option<TridentError>,
}

impl FakeServicer {
    pub fn new(steps: u32, step: Duration) -> FakeServicer {
        FakeServicer {
            steps,
            step,
            requests: Arc::new(Mutex::new(Vec::new())),
            fail_with: None,
        }
    }
}

impl Servicer for FakeServicer {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn start(
        &self,
        request: Request,
        cancel: CancelFlag,
    ) -> BoxFuture<'_, Result<RunningOp, TridentError>> {
        let op: Operation = request.operation;
        self.requests.lock().unwrap().push(request);
        let (steps, step, fail) = (self.steps, self.step, self.fail_with.clone());
        Box::pin(async move {
            let (sender, running) = op_channel();
            tokio::spawn(async move {
                for i in 1..=steps {
                    tokio::select! {
                        _ = tokio::time::sleep(step) => {}
                        _ = cancel.cancelled() => {
                            sender.finish(Err(cancelled_error(op)));
                            return;
                        }
                    }
                    sender.progress(i * 100 / steps, format!("{op} step {i}/{steps}"));
                }
                sender.finish(match fail {
                    Some(e) => Err(e),
                    None => Ok(()),
                });
            });
            Ok(running)
        })
    }
}

/// A datastore at `dir/datastore.sqlite` recording a provisioned host on volume A.
/// A `dbus-daemon` a test started (its config and socket in `dir`); killed by pid on drop.
pub struct Bus {
    pub child: Child,
    pub address: String,
    pub dir: tempfile::TempDir,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn provisioned_datastore(dir: &Path) -> PathBuf {
    let path = dir.join("datastore.sqlite");
    let mut ds = Datastore::open(&path).unwrap();
    let status = HostStatus {
        servicing_state: ServicingState::Provisioned,
        active_volume: Some(AbVolume::VolumeA),
        ..HostStatus::default()
    };
    ds.record("install", &status).unwrap();
    path
}

pub fn valid_yaml() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/compat/host-configs/simple.yaml");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

pub fn invalid_yaml() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/invalid-configs/001-unknown-field-partition.yaml");
    std::fs::read_to_string(p).unwrap()
}

/// The `<interface name="io.trident.Trident1">` element of an introspection document,
/// each line trimmed, blank lines dropped.
pub fn interface_xml(doc: &str) -> String {
    interface_xml_raw(doc)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `<interface name="io.trident.Trident1">` element as it is (first line unindented).
pub fn interface_xml_raw(doc: &str) -> String {
    let start = doc
        .find("<interface name=\"io.trident.Trident1\">")
        .expect("interface in introspection");
    let end =
        start + doc[start..].find("</interface>").expect("end of interface") + "</interface>".len();
    format!("  {}", &doc[start..end])
}

pub fn checked_in_xml_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/io.trident.Trident1.xml")
}

/// (error name, message) of a D-Bus method error.
pub fn method_error(e: &zbus::Error) -> (String, String) {
    match e {
        zbus::Error::MethodError(name, desc, _) => {
            (name.to_string(), desc.clone().unwrap_or_default())
        }
        other => panic!("expected a method error, got {other:?}"),
    }
}
