//! The `io.trident.Trident1` object. Methods stay thin: validate, authorize the caller,
//! hand off to the [`Servicer`], reply. Blocking work (YAML validation, the SQLite
//! datastore) runs on `spawn_blocking`; the executor never waits on disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedValue, Value};
use zbus::Connection;

use super::auth;
use super::error::Error;
use super::servicer::{CancelFlag, OpEvent, OpOptions, Operation, Request, RunningOp, Servicer};
use crate::config::HostConfiguration;
use crate::datastore::Datastore;
use crate::error::TridentError;
use crate::status::{HostStatus, ServicingState};

/// The D-Bus object. Cheap to clone: a handle on shared daemon state.
#[derive(Clone)]
pub struct Trident1 {
    shared: Arc<Shared>,
}

struct Shared {
    servicer: Arc<dyn Servicer>,
    datastore: PathBuf,
    state: Mutex<State>,
    last_activity: Mutex<Instant>,
}

#[derive(Default)]
struct State {
    running: Option<Running>,
    progress: u32,
    /// `None` until an operation ends in this process (then the datastore's says).
    last_error: Option<String>,
}

struct Running {
    operation: Operation,
    cancel: CancelFlag,
    caller: String,
}

impl Trident1 {
    /// An object serving the datastore at `datastore` (which need not exist: a host
    /// without one is `not-provisioned`) and handing operations to `servicer`.
    pub fn new(servicer: Arc<dyn Servicer>, datastore: impl Into<PathBuf>) -> Trident1 {
        Trident1 {
            shared: Arc::new(Shared {
                servicer,
                datastore: datastore.into(),
                state: Mutex::new(State::default()),
                last_activity: Mutex::new(Instant::now()),
            }),
        }
    }

    /// True when no operation runs and no call came in for `timeout`.
    pub fn idle_for(&self, timeout: Duration) -> bool {
        let running = self.state().running.is_some();
        let last = *self
            .shared
            .last_activity
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        !running && last.elapsed() >= timeout
    }

    /// The operation running now, if any.
    pub fn running_operation(&self) -> Option<Operation> {
        self.state().running.as_ref().map(|r| r.operation)
    }

    fn touch(&self) {
        *self
            .shared
            .last_activity
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn host_status(&self) -> Result<HostStatus, Error> {
        let path = self.shared.datastore.clone();
        blocking(move || load_host_status(&path)).await
    }

    fn busy_check(&self) -> Result<(), Error> {
        match &self.state().running {
            Some(r) => Err(Error::busy(r.operation.as_str(), &r.caller)),
            None => Ok(()),
        }
    }

    /// The common path of every mutating method.
    async fn start_operation(
        &self,
        operation: Operation,
        hc_yaml: Option<String>,
        opts: HashMap<String, OwnedValue>,
        header: &Header<'_>,
        conn: &Connection,
        emitter: SignalEmitter<'_>,
    ) -> Result<(), Error> {
        self.touch();
        let caller = header
            .sender()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "peer".to_string());
        auth::authorize(conn, header, operation.as_str()).await?;
        self.busy_check()?;
        let options = parse_options(operation, &opts)?;
        let host_configuration = match &hc_yaml {
            Some(yaml) => Some(validate_yaml(yaml.clone()).await?),
            None => None,
        };
        if operation != Operation::Install {
            let status = self.host_status().await?;
            if status.servicing_state == ServicingState::NotProvisioned {
                return Err(Error::from(TridentError::environment(
                    "not-provisioned",
                    format!("cannot {operation}: this host has not been provisioned by Trident"),
                )));
            }
        }
        let cancel = CancelFlag::new();
        {
            let mut state = self.state();
            if let Some(r) = &state.running {
                return Err(Error::busy(r.operation.as_str(), &r.caller));
            }
            state.running = Some(Running {
                operation,
                cancel: cancel.clone(),
                caller: caller.clone(),
            });
            state.progress = 0;
        }
        let request = Request {
            operation,
            host_configuration,
            host_configuration_yaml: hc_yaml,
            options,
            caller: Some(caller.clone()),
        };
        tracing::info!(%operation, caller, servicer = self.shared.servicer.name(), "starting");
        match self.shared.servicer.start(request, cancel).await {
            Ok(running) => {
                self.emit_state_changed(&emitter).await;
                let this = self.clone();
                tokio::spawn(this.forward(operation, running, emitter.into_owned()));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(%operation, error = %e, "refused by the servicer");
                {
                    let mut state = self.state();
                    state.running = None;
                    state.last_error = Some(e.to_string());
                }
                self.emit_state_changed(&emitter).await;
                Err(Error::from(e))
            }
        }
    }

    /// Relay one operation's events as signals until it finishes.
    async fn forward(
        self,
        operation: Operation,
        mut running: RunningOp,
        emitter: SignalEmitter<'static>,
    ) {
        let mut outcome = None;
        while let Some(event) = running.events.recv().await {
            match event {
                OpEvent::Progress { percent, message } => {
                    self.touch();
                    self.state().progress = percent.min(100);
                    if let Err(e) =
                        Trident1::progress_signal(&emitter, operation.as_str(), percent, &message)
                            .await
                    {
                        tracing::warn!(error = %e, "emitting Progress");
                    }
                    if let Err(e) = self.progress_changed(&emitter).await {
                        tracing::warn!(error = %e, "emitting PropertiesChanged(Progress)");
                    }
                }
                OpEvent::Finished(result) => {
                    outcome = Some(result);
                    break;
                }
            }
        }
        let result = outcome.unwrap_or_else(|| {
            Err(TridentError::internal(
                "servicer-vanished",
                format!("{operation} stopped reporting before it finished"),
            ))
        });
        let error_text = match &result {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        };
        {
            let mut state = self.state();
            state.running = None;
            if result.is_ok() {
                state.progress = 100;
            }
            state.last_error = Some(error_text.clone());
        }
        self.touch();
        match &result {
            Ok(()) => tracing::info!(%operation, "completed"),
            Err(e) => tracing::warn!(%operation, error = %e, "failed"),
        }
        // Properties first, so that a client reacting to Completed reads fresh values.
        self.emit_state_changed(&emitter).await;
        if let Err(e) =
            Trident1::completed(&emitter, operation.as_str(), result.is_ok(), &error_text).await
        {
            tracing::warn!(error = %e, "emitting Completed");
        }
    }

    async fn emit_state_changed(&self, emitter: &SignalEmitter<'_>) {
        let results = [
            self.operation_changed(emitter).await,
            self.progress_changed(emitter).await,
            self.last_error_changed(emitter).await,
            self.servicing_state_changed(emitter).await,
            self.active_volume_changed(emitter).await,
        ];
        for r in results {
            if let Err(e) = r {
                tracing::warn!(error = %e, "emitting PropertiesChanged");
            }
        }
    }
}

#[zbus::interface(name = "io.trident.Trident1")]
impl Trident1 {
    /// Parse and validate a Host Configuration. Errors: InvalidInput (one line per
    /// error, each with its code and location).
    async fn validate(&self, hc_yaml: String) -> Result<(), Error> {
        self.touch();
        validate_yaml(hc_yaml).await.map(|_| ())
    }

    /// Clean install from a Host Configuration; returns once accepted.
    async fn install(
        &self,
        hc_yaml: String,
        opts: HashMap<String, OwnedValue>,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), Error> {
        self.start_operation(
            Operation::Install,
            Some(hc_yaml),
            opts,
            &header,
            conn,
            emitter,
        )
        .await
    }

    /// Stage an A/B update into the inactive volume; returns once accepted.
    async fn stage(
        &self,
        hc_yaml: String,
        opts: HashMap<String, OwnedValue>,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), Error> {
        self.start_operation(
            Operation::Stage,
            Some(hc_yaml),
            opts,
            &header,
            conn,
            emitter,
        )
        .await
    }

    /// Arm the one-shot trial boot of the staged volume and reboot.
    async fn finalize(
        &self,
        opts: HashMap<String, OwnedValue>,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), Error> {
        self.start_operation(Operation::Finalize, None, opts, &header, conn, emitter)
            .await
    }

    /// Commit the trial boot (make the booted trial volume the default).
    async fn commit(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), Error> {
        self.start_operation(
            Operation::Commit,
            None,
            HashMap::new(),
            &header,
            conn,
            emitter,
        )
        .await
    }

    /// Manual rollback (A/B, or `runtime` = true).
    async fn rollback(
        &self,
        opts: HashMap<String, OwnedValue>,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), Error> {
        self.start_operation(Operation::Rollback, None, opts, &header, conn, emitter)
            .await
    }

    /// Cancel the running operation; its Completed signal follows.
    async fn cancel(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        self.touch();
        auth::authorize(conn, &header, "cancel").await?;
        let state = self.state();
        match &state.running {
            Some(r) => {
                tracing::info!(operation = %r.operation, "cancel requested");
                r.cancel.cancel();
                Ok(())
            }
            None => Err(Error::Failed(
                "servicing [nothing-running]: no operation is running".into(),
            )),
        }
    }

    /// The Host Status as JSON.
    async fn get_host_status(&self) -> Result<String, Error> {
        self.touch();
        Ok(self.host_status().await?.to_json())
    }

    /// The newest `limit` history rows as a JSON array, newest first (0 = all).
    async fn get_history(&self, limit: u32) -> Result<String, Error> {
        self.touch();
        let path = self.shared.datastore.clone();
        blocking(move || load_history(&path, limit)).await
    }

    /// The servicing state from the datastore (`not-provisioned`, `provisioned`, ...).
    #[zbus(property)]
    async fn servicing_state(&self) -> zbus::fdo::Result<String> {
        let status = self.host_status().await.map_err(property_error)?;
        Ok(status.servicing_state.as_str().to_string())
    }

    /// `volume-a`, `volume-b`, or empty before the first commit.
    #[zbus(property)]
    async fn active_volume(&self) -> zbus::fdo::Result<String> {
        let status = self.host_status().await.map_err(property_error)?;
        Ok(status
            .active_volume
            .map(|v| v.as_str().to_string())
            .unwrap_or_default())
    }

    /// The running operation (`stage`, ...); empty when idle.
    #[zbus(property)]
    async fn operation(&self) -> String {
        self.running_operation()
            .map(|o| o.as_str().to_string())
            .unwrap_or_default()
    }

    /// Percent done of the running (or last) operation.
    #[zbus(property, name = "Progress")]
    async fn progress_percent(&self) -> u32 {
        self.state().progress
    }

    /// The last failure (`category [code]: message`) of an operation run through this
    /// daemon (empty after a success); before any, the datastore's `lastError`.
    #[zbus(property)]
    async fn last_error(&self) -> zbus::fdo::Result<String> {
        let local = self.state().last_error.clone();
        match local {
            Some(text) => Ok(text),
            None => {
                let status = self.host_status().await.map_err(property_error)?;
                Ok(status.last_error.map(|e| e.to_string()).unwrap_or_default())
            }
        }
    }

    /// The agent version.
    #[zbus(property)]
    async fn version(&self) -> String {
        crate::VERSION.to_string()
    }

    /// Progress of the running operation.
    #[zbus(signal, name = "Progress")]
    async fn progress_signal(
        emitter: &SignalEmitter<'_>,
        operation: &str,
        percent: u32,
        message: &str,
    ) -> zbus::Result<()>;

    /// The end of an operation; `error` is empty on success.
    #[zbus(signal)]
    async fn completed(
        emitter: &SignalEmitter<'_>,
        operation: &str,
        success: bool,
        error: &str,
    ) -> zbus::Result<()>;
}

fn property_error(e: Error) -> zbus::fdo::Error {
    let text = match &e {
        Error::ZBus(z) => z.to_string(),
        Error::InvalidInput(m)
        | Error::Busy(m)
        | Error::NotProvisioned(m)
        | Error::Unauthorized(m)
        | Error::Failed(m) => m.clone(),
    };
    zbus::fdo::Error::Failed(text)
}

/// Run blocking work off the executor.
async fn blocking<T, F>(f: F) -> Result<T, Error>
where
    F: FnOnce() -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Failed(format!("internal [task-failed]: {e}")))?
}

async fn validate_yaml(yaml: String) -> Result<HostConfiguration, Error> {
    blocking(move || {
        crate::config::parse_and_validate(&yaml)
            .map(|(hc, warnings)| {
                for w in warnings {
                    tracing::info!(warning = ?w, "Host Configuration warning");
                }
                hc
            })
            .map_err(Error::from)
    })
    .await
}

/// The Host Status at `path`; a missing datastore is a `not-provisioned` host.
pub fn load_host_status(path: &Path) -> Result<HostStatus, Error> {
    if !datastore_exists(path)? {
        return Ok(HostStatus::default());
    }
    let ds = Datastore::open_existing(path)?;
    Ok(ds.host_status()?)
}

fn load_history(path: &Path, limit: u32) -> Result<String, Error> {
    if !datastore_exists(path)? {
        return Ok("[]".into());
    }
    let ds = Datastore::open_existing(path)?;
    let limit = if limit == 0 {
        None
    } else {
        Some(limit as usize)
    };
    let rows = ds.history(limit)?;
    serde_json::to_string(&rows)
        .map_err(|e| Error::Failed(format!("internal [serialize-history]: {e}")))
}

fn datastore_exists(path: &Path) -> Result<bool, Error> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Failed(format!(
            "execution-environment [datastore-unreadable]: {}: {e}",
            path.display()
        ))),
    }
}

/// The `a{sv}` options: `runtime` (b, Rollback only) and `reason` (s, any operation,
/// logged). Anything else is refused so that a typo is not silently ignored.
pub fn parse_options(
    operation: Operation,
    opts: &HashMap<String, OwnedValue>,
) -> Result<OpOptions, Error> {
    let mut out = OpOptions::default();
    let mut keys: Vec<&String> = opts.keys().collect();
    keys.sort();
    for key in keys {
        let value: &Value<'_> = &opts[key];
        match (key.as_str(), value) {
            ("runtime", Value::Bool(b)) if operation == Operation::Rollback => out.runtime = *b,
            ("reason", Value::Str(s)) => {
                out.extra.insert("reason".into(), s.as_str().to_string());
            }
            ("runtime", _) | ("reason", _) if known_option(operation, key) => {
                return Err(Error::from(TridentError::invalid_input(
                    "bad-option-type",
                    format!(
                        "option {key:?} of {operation} has type {}, expected {}",
                        value.value_signature(),
                        if key == "runtime" { "b" } else { "s" }
                    ),
                )));
            }
            _ => {
                return Err(Error::from(TridentError::invalid_input(
                    "unknown-option",
                    format!("{operation} has no option {key:?}"),
                )));
            }
        }
    }
    Ok(out)
}

fn known_option(operation: Operation, key: &str) -> bool {
    match key {
        "reason" => true,
        "runtime" => operation == Operation::Rollback,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: Vec<(&str, Value<'static>)>) -> HashMap<String, OwnedValue> {
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), OwnedValue::try_from(v).unwrap()))
            .collect()
    }

    #[test]
    fn options_are_typed_and_unknown_ones_refused() {
        let o = parse_options(
            Operation::Rollback,
            &opts(vec![
                ("runtime", Value::Bool(true)),
                ("reason", Value::from("ops")),
            ]),
        )
        .unwrap();
        assert!(o.runtime);
        assert_eq!(o.extra["reason"], "ops");

        let e = parse_options(
            Operation::Stage,
            &opts(vec![("runtime", Value::Bool(true))]),
        )
        .unwrap_err();
        assert_eq!(e.short_name(), "InvalidInput");
        let e = parse_options(
            Operation::Rollback,
            &opts(vec![("runtime", Value::from("yes"))]),
        )
        .unwrap_err();
        assert!(matches!(&e, Error::InvalidInput(m) if m.contains("[bad-option-type]")));
        let e = parse_options(
            Operation::Finalize,
            &opts(vec![("rebot", Value::Bool(true))]),
        )
        .unwrap_err();
        assert!(matches!(&e, Error::InvalidInput(m) if m.contains("[unknown-option]")));
    }

    #[test]
    fn missing_datastore_is_not_provisioned() {
        let dir = tempfile::tempdir().unwrap();
        let status = load_host_status(&dir.path().join("none.sqlite")).unwrap();
        assert_eq!(status.servicing_state, ServicingState::NotProvisioned);
        assert_eq!(
            load_history(&dir.path().join("none.sqlite"), 5).unwrap(),
            "[]"
        );
    }
}
