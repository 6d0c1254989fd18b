//! The hand-off from the D-Bus interface to whatever runs a servicing operation.
//!
//! The interface validates and authorizes a request, then calls [`Servicer::start`].
//! A servicer accepts (or refuses) the request at once and reports the rest through the
//! [`RunningOp`] channel: any number of [`OpEvent::Progress`], then exactly one
//! [`OpEvent::Finished`]. Cancellation goes the other way, through the [`CancelFlag`]
//! handed to `start`.
//!
//! Implementations: [`crate::dbus::systemd::SystemdServicer`] (starts the matching
//! unit through systemd's D-Bus API; the default when systemd is on the bus) and
//! [`InProcessServicer`] (runs the operation in the daemon's process, through
//! [`run_operation`]).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::config::HostConfiguration;
use crate::error::TridentError;

/// A boxed, sendable future (the trait is used as `dyn Servicer`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A mutating operation of the D-Bus interface. The string forms are part of the
/// contract: they are the `Operation` property, the first argument of the `Progress`
/// and `Completed` signals, and the suffix of the polkit action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Install,
    Stage,
    Finalize,
    Commit,
    Rollback,
}

impl Operation {
    pub const ALL: [Operation; 5] = [
        Operation::Install,
        Operation::Stage,
        Operation::Finalize,
        Operation::Commit,
        Operation::Rollback,
    ];

    /// `install`, `stage`, ... (the `Operation` property and the signals' first argument).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Install => "install",
            Operation::Stage => "stage",
            Operation::Finalize => "finalize",
            Operation::Commit => "commit",
            Operation::Rollback => "rollback",
        }
    }

    pub fn parse(s: &str) -> Option<Operation> {
        Self::ALL.into_iter().find(|op| op.as_str() == s)
    }

    /// Whether the operation carries a Host Configuration.
    pub fn takes_host_configuration(self) -> bool {
        matches!(self, Operation::Install | Operation::Stage)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Typed form of the `a{sv}` options of a mutating method (see `docs/dbus.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpOptions {
    /// `Rollback`: `"runtime"` = true reverts the last runtime update instead of
    /// rolling back to the other A/B volume.
    pub runtime: bool,
    /// Free-form string options passed through to the servicer, for options that
    /// are documented per operation (e.g. `"reason"`, logged with the request).
    pub extra: BTreeMap<String, String>,
}

/// What a servicer is asked to do.
#[derive(Debug, Clone)]
pub struct Request {
    pub operation: Operation,
    /// The validated Host Configuration (`Install`, `Stage`).
    pub host_configuration: Option<HostConfiguration>,
    /// The document exactly as the caller sent it (written to request files).
    pub host_configuration_yaml: Option<String>,
    pub options: OpOptions,
    /// The caller's unique bus name (for logs), if known.
    pub caller: Option<String>,
}

/// Reported by a running operation.
#[derive(Debug, Clone, PartialEq)]
pub enum OpEvent {
    /// `percent` in 0..=100; `message` says what is happening.
    Progress { percent: u32, message: String },
    /// The last event of every operation.
    Finished(Result<(), TridentError>),
}

/// The sending half a servicer keeps to report on an operation.
#[derive(Debug, Clone)]
pub struct ProgressSender(mpsc::UnboundedSender<OpEvent>);

impl ProgressSender {
    /// Report progress; a closed receiver (daemon gone) is ignored: the operation goes
    /// on and its outcome is in the datastore.
    pub fn progress(&self, percent: u32, message: impl Into<String>) {
        let _ = self.0.send(OpEvent::Progress {
            percent: percent.min(100),
            message: message.into(),
        });
    }

    /// Report the outcome. Call exactly once.
    pub fn finish(&self, result: Result<(), TridentError>) {
        let _ = self.0.send(OpEvent::Finished(result));
    }
}

/// An accepted operation: its event stream.
#[derive(Debug)]
pub struct RunningOp {
    pub events: mpsc::UnboundedReceiver<OpEvent>,
}

/// A channel pair for one operation.
pub fn op_channel() -> (ProgressSender, RunningOp) {
    let (tx, rx) = mpsc::unbounded_channel();
    (ProgressSender(tx), RunningOp { events: rx })
}

/// Set by `Cancel()`; read by the operation (polling [`CancelFlag::is_cancelled`] from
/// blocking code, or awaiting [`CancelFlag::cancelled`] from async code).
#[derive(Debug, Clone, Default)]
pub struct CancelFlag {
    flag: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl CancelFlag {
    pub fn new() -> CancelFlag {
        CancelFlag::default()
    }

    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Resolves once [`cancel`](Self::cancel) was called (at once if it already was).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// The error an operation finishes with after `Cancel()`.
pub fn cancelled_error(op: Operation) -> TridentError {
    TridentError::servicing("cancelled", format!("{op} was cancelled"))
}

/// Runs servicing operations for the D-Bus interface.
pub trait Servicer: Send + Sync + 'static {
    /// A short name for logs (`systemd`, `in-process`, ...).
    fn name(&self) -> &'static str;

    /// Accept `request` and start it, or refuse it. Must return promptly: the D-Bus
    /// method call waits for it. The operation then reports through the returned
    /// [`RunningOp`] and stops early (finishing with [`cancelled_error`]) once
    /// `cancel` is set.
    fn start(
        &self,
        request: Request,
        cancel: CancelFlag,
    ) -> BoxFuture<'_, Result<RunningOp, TridentError>>;
}

/// Runs the operation inside the daemon (used when systemd is not on the bus).
#[derive(Debug, Default, Clone)]
pub struct InProcessServicer;

impl Servicer for InProcessServicer {
    fn name(&self) -> &'static str {
        "in-process"
    }

    fn start(
        &self,
        request: Request,
        cancel: CancelFlag,
    ) -> BoxFuture<'_, Result<RunningOp, TridentError>> {
        Box::pin(async move {
            let (sender, running) = op_channel();
            // The engine blocks (disk I/O): keep it off the executor.
            tokio::task::spawn_blocking(move || {
                let result = run_operation(
                    request.operation,
                    request.host_configuration.as_ref(),
                    &request.options,
                    &sender,
                    &cancel,
                );
                sender.finish(result);
            });
            Ok(running)
        })
    }
}

/// **Seam to the engine.** Runs one servicing operation in this process, reporting
/// through `progress` and checking `cancel` between steps.
///
/// The install/update engine is not part of this build yet, so every operation fails
/// with `unsupported-configuration` / `engine-not-available`; the integration wires
/// this function to `crate::engine`.
pub fn run_operation(
    op: Operation,
    hc: Option<&HostConfiguration>,
    options: &OpOptions,
    progress: &ProgressSender,
    cancel: &CancelFlag,
) -> Result<(), TridentError> {
    let _ = (hc, options, progress);
    if cancel.is_cancelled() {
        return Err(cancelled_error(op));
    }
    Err(TridentError::unsupported(
        "engine-not-available",
        format!("cannot {op}: engine not available in this build"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_round_trip() {
        for op in Operation::ALL {
            assert_eq!(Operation::parse(op.as_str()), Some(op));
        }
        assert_eq!(Operation::parse("validate"), None);
    }

    #[tokio::test]
    async fn in_process_servicer_reports_engine_unavailable() {
        let request = Request {
            operation: Operation::Commit,
            host_configuration: None,
            host_configuration_yaml: None,
            options: OpOptions::default(),
            caller: None,
        };
        let mut running = InProcessServicer
            .start(request, CancelFlag::new())
            .await
            .unwrap();
        match running.events.recv().await {
            Some(OpEvent::Finished(Err(e))) => {
                assert_eq!(e.code, "engine-not-available");
                assert_eq!(e.category, crate::Category::UnsupportedConfiguration);
                assert!(e.message.contains("engine not available in this build"));
            }
            other => panic!("unexpected event {other:?}"),
        }
    }

    #[tokio::test]
    async fn cancel_flag_wakes_waiters() {
        let flag = CancelFlag::new();
        let waiter = {
            let flag = flag.clone();
            tokio::spawn(async move { flag.cancelled().await })
        };
        tokio::task::yield_now().await;
        flag.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("waiter woke")
            .unwrap();
        assert!(flag.is_cancelled());
    }
}
