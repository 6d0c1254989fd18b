//! [`SystemdServicer`]: runs each operation as its systemd unit, so the work gets its
//! own cgroup and journal stream and survives a restart of `tridentd`.
//!
//! `Stage` and `Install` write the request file `/run/trident/requests/{stage,install}.yaml`
//! (the Host Configuration as sent; the contract of `trident-stage.service` and
//! `trident-install.service` in `docs/units.md`),
//! then every operation starts its unit with `StartUnit(unit, "replace")` and follows
//! it: `ActiveState` changes (PropertiesChanged) become `Progress` signals, the start
//! job's `JobRemoved` result (plus the service's `Result` and exit status) becomes
//! `Completed`. `Cancel()` stops the unit (`StopUnit(unit, "replace")`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use zbus::zvariant::OwnedObjectPath;
use zbus::Connection;

use super::servicer::{
    cancelled_error, op_channel, BoxFuture, CancelFlag, Operation, ProgressSender, Request,
    RunningOp, Servicer,
};
use crate::error::{Category, TridentError};

/// Where `Stage`/`Install` requests are written (volatile; read by their units).
pub const REQUEST_DIR: &str = "/run/trident/requests";

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn condition_result(&self) -> zbus::Result<bool>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn exec_main_status(&self) -> zbus::Result<i32>;
}

/// The unit that runs `request`'s operation.
pub fn unit_for_request(request: &Request) -> &'static str {
    if request.operation == Operation::Rollback && request.options.runtime {
        "trident-runtime-rollback.service"
    } else {
        unit_for(request.operation)
    }
}

/// The unit that runs `op` (a runtime rollback: [`unit_for_request`]).
pub fn unit_for(op: Operation) -> &'static str {
    match op {
        Operation::Stage => "trident-stage.service",
        Operation::Finalize => "trident-finalize.service",
        Operation::Commit => "trident-commit.service",
        Operation::Install => "trident-install.service",
        Operation::Rollback => "trident-manual-rollback.service",
    }
}

/// The category of a `trident` exit status (the contract in `docs/cli.md`).
pub fn category_of_exit_status(status: i32) -> Category {
    match status {
        3 => Category::InvalidInput,
        4 => Category::UnsupportedConfiguration,
        5 => Category::ExecutionEnvironment,
        7 => Category::HealthChecks,
        8 => Category::Internal,
        _ => Category::Servicing,
    }
}

/// Starts units through systemd's D-Bus API (see the module documentation).
#[derive(Debug, Clone)]
pub struct SystemdServicer {
    conn: Connection,
    request_dir: PathBuf,
}

impl SystemdServicer {
    /// `conn` is a connection to the bus systemd is on (the system bus).
    pub fn new(conn: Connection) -> SystemdServicer {
        SystemdServicer {
            conn,
            request_dir: PathBuf::from(REQUEST_DIR),
        }
    }

    /// Write request files under `dir` instead of [`REQUEST_DIR`].
    pub fn with_request_dir(mut self, dir: impl Into<PathBuf>) -> SystemdServicer {
        self.request_dir = dir.into();
        self
    }

    /// Whether systemd's manager is reachable on `conn`.
    pub async fn available(conn: &Connection) -> bool {
        let Ok(dbus) = zbus::fdo::DBusProxy::new(conn).await else {
            return false;
        };
        let Ok(name) = zbus::names::BusName::try_from("org.freedesktop.systemd1") else {
            return false;
        };
        dbus.name_has_owner(name).await.unwrap_or(false)
    }

    async fn start_unit(
        &self,
        request: Request,
        cancel: CancelFlag,
    ) -> Result<RunningOp, TridentError> {
        let op = request.operation;
        let unit = unit_for_request(&request);
        if op.takes_host_configuration() {
            let yaml = request.host_configuration_yaml.clone().ok_or_else(|| {
                TridentError::internal(
                    "missing-request",
                    format!("{op} without a Host Configuration"),
                )
            })?;
            let path = self.request_dir.join(format!("{op}.yaml"));
            tokio::task::spawn_blocking(move || write_request(&path, &yaml))
                .await
                .map_err(|e| TridentError::internal("task-failed", e.to_string()))??;
        }
        let manager = ManagerProxy::new(&self.conn).await.map_err(systemd_error)?;
        if let Err(e) = manager.subscribe().await {
            // Already subscribed on this connection is fine; anything else shows below.
            tracing::debug!(error = %e, "systemd Subscribe");
        }
        let unit_path = manager.load_unit(unit).await.map_err(systemd_error)?;
        let unit_proxy = UnitProxy::builder(&self.conn)
            .path(unit_path.clone())
            .map_err(systemd_error)?
            .build()
            .await
            .map_err(systemd_error)?;
        // Subscribe before starting, so that no change is missed.
        let jobs = manager.receive_job_removed().await.map_err(systemd_error)?;
        let states = unit_proxy.receive_active_state_changed().await;
        let job = manager
            .start_unit(unit, "replace")
            .await
            .map_err(systemd_error)?;
        tracing::info!(unit, job = %job.as_str(), "started unit");
        let (sender, running) = op_channel();
        sender.progress(0, format!("{unit} started"));
        let follower = Follower {
            conn: self.conn.clone(),
            manager,
            unit,
            unit_path,
            job,
            op,
        };
        tokio::spawn(async move {
            let result = follower.follow(jobs, states, &sender, cancel).await;
            if result.is_ok() {
                sender.progress(100, format!("{unit} finished"));
            }
            sender.finish(result);
        });
        Ok(running)
    }
}

impl Servicer for SystemdServicer {
    fn name(&self) -> &'static str {
        "systemd"
    }

    fn start(
        &self,
        request: Request,
        cancel: CancelFlag,
    ) -> BoxFuture<'_, Result<RunningOp, TridentError>> {
        Box::pin(self.start_unit(request, cancel))
    }
}

struct Follower {
    conn: Connection,
    manager: ManagerProxy<'static>,
    unit: &'static str,
    unit_path: OwnedObjectPath,
    job: OwnedObjectPath,
    op: Operation,
}

impl Follower {
    async fn follow(
        &self,
        mut jobs: JobRemovedStream,
        mut states: zbus::proxy::PropertyStream<'static, String>,
        progress: &ProgressSender,
        cancel: CancelFlag,
    ) -> Result<(), TridentError> {
        let mut stop_sent = false;
        loop {
            tokio::select! {
                job = jobs.next() => {
                    let Some(signal) = job else {
                        return Err(systemd_error("the JobRemoved stream ended"));
                    };
                    let args = signal.args().map_err(systemd_error)?;
                    if args.job.as_str() != self.job.as_str() {
                        continue;
                    }
                    return self.judge(&args.result, cancel.is_cancelled()).await;
                }
                state = states.next() => {
                    if let Some(change) = state {
                        if let Ok(s) = change.get().await {
                            progress.progress(if s == "active" { 99 } else { 1 }, format!("{}: {s}", self.unit));
                        }
                    }
                }
                _ = cancel.cancelled(), if !stop_sent => {
                    stop_sent = true;
                    tracing::info!(unit = self.unit, "stopping unit (cancel)");
                    if let Err(e) = self.manager.stop_unit(self.unit, "replace").await {
                        tracing::warn!(unit = self.unit, error = %e, "StopUnit failed");
                    }
                }
            }
        }
    }

    /// Turn the start job's result into the operation's outcome.
    async fn judge(&self, job_result: &str, cancelled: bool) -> Result<(), TridentError> {
        if cancelled && job_result != "done" {
            return Err(cancelled_error(self.op));
        }
        let unit_proxy = UnitProxy::builder(&self.conn)
            .path(self.unit_path.clone())
            .map_err(systemd_error)?
            .build()
            .await
            .map_err(systemd_error)?;
        if job_result == "done" {
            // A unit whose conditions failed is "done" without having run.
            if !unit_proxy.condition_result().await.unwrap_or(true) {
                return Err(TridentError::environment(
                    "unit-skipped",
                    format!("{} was skipped: its conditions were not met", self.unit),
                ));
            }
            return Ok(());
        }
        let service = ServiceProxy::builder(&self.conn)
            .path(self.unit_path.clone())
            .map_err(systemd_error)?
            .build()
            .await
            .map_err(systemd_error)?;
        let result = service.result().await.unwrap_or_else(|_| "unknown".into());
        let status = service.exec_main_status().await.unwrap_or(0);
        Err(TridentError::new(
            category_of_exit_status(status),
            "unit-failed",
            format!(
                "{} failed (job {job_result}, result {result}, exit status {status}); \
                 see `journalctl -u {}`",
                self.unit, self.unit
            ),
        ))
    }
}

fn systemd_error(e: impl std::fmt::Display) -> TridentError {
    TridentError::environment("systemd-unavailable", format!("talking to systemd: {e}"))
}

/// Write `text` to `path` crash-consistently (temp file, fsync, rename, fsync the
/// directory), mode 0600 (a Host Configuration may carry secrets).
pub fn write_request(path: &Path, text: &str) -> Result<(), TridentError> {
    let io = |what: &str, e: std::io::Error| {
        TridentError::environment(
            "request-write-failed",
            format!("{what} {}: {e}", path.display()),
        )
        .on_device(path.display().to_string())
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("request")
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("creating", e))?;
    f.write_all(text.as_bytes()).map_err(|e| io("writing", e))?;
    f.sync_all().map_err(|e| io("syncing", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io("renaming into", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing the directory of", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn units_per_operation() {
        assert_eq!(unit_for(Operation::Stage), "trident-stage.service");
        assert_eq!(unit_for(Operation::Finalize), "trident-finalize.service");
        assert_eq!(unit_for(Operation::Commit), "trident-commit.service");
        assert_eq!(unit_for(Operation::Install), "trident-install.service");
        assert_eq!(
            unit_for(Operation::Rollback),
            "trident-manual-rollback.service"
        );
        let mut runtime = Request {
            operation: Operation::Rollback,
            host_configuration: None,
            host_configuration_yaml: None,
            options: Default::default(),
            caller: None,
        };
        assert_eq!(
            unit_for_request(&runtime),
            "trident-manual-rollback.service"
        );
        runtime.options.runtime = true;
        assert_eq!(
            unit_for_request(&runtime),
            "trident-runtime-rollback.service"
        );
        // Every unit named here ships in units/.
        for unit in Operation::ALL
            .map(unit_for)
            .into_iter()
            .chain([unit_for_request(&runtime)])
        {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("units")
                .join(unit);
            assert!(p.exists(), "{} missing", p.display());
        }
    }

    #[test]
    fn exit_status_maps_to_category() {
        assert_eq!(category_of_exit_status(3), Category::InvalidInput);
        assert_eq!(category_of_exit_status(6), Category::Servicing);
        assert_eq!(category_of_exit_status(1), Category::Servicing);
    }

    #[test]
    fn request_file_is_private_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("requests/stage.yaml");
        write_request(&p, "a: 1\n").unwrap();
        write_request(&p, "b: 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "b: 2\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
