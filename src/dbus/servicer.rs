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
//! [`run_operation`], which calls [`crate::engine`]).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::config::HostConfiguration;
use crate::engine::{self, EngineContext};
use crate::error::{find_trident_error, TridentError};

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

/// Runs the operation inside the daemon (used when systemd is not on the bus, and by
/// tests): the same engine entry points the units' `internal` verbs call.
#[derive(Debug, Clone)]
pub struct InProcessServicer {
    engine: EngineContext,
}

impl InProcessServicer {
    /// `engine`: the context every operation starts from (datastore, efivarfs, host
    /// root, work directory). Its progress callback and cancel flag are replaced per
    /// operation; it never reboots (a finalize in-process leaves the reboot to the
    /// caller: in production finalize runs as `trident-finalize.service`, which does).
    pub fn new(engine: EngineContext) -> InProcessServicer {
        InProcessServicer { engine }
    }
}

impl Servicer for InProcessServicer {
    fn name(&self) -> &'static str {
        "in-process"
    }

    fn start(
        &self,
        request: Request,
        cancel: CancelFlag,
    ) -> BoxFuture<'_, Result<RunningOp, TridentError>> {
        let engine = self.engine.clone();
        Box::pin(async move {
            let (sender, running) = op_channel();
            // The engine blocks (disk I/O): keep it off the executor.
            tokio::task::spawn_blocking(move || {
                let result = run_operation(
                    request.operation,
                    request.host_configuration.as_ref(),
                    &request.options,
                    &engine,
                    &sender,
                    &cancel,
                );
                sender.finish(result);
            });
            Ok(running)
        })
    }
}

/// Runs one servicing operation in this process through the engine, reporting
/// progress (whole percents, each change once) through `progress` and stopping early
/// once `cancel` is set. The error is the engine's categorised one when it has one.
pub fn run_operation(
    op: Operation,
    hc: Option<&HostConfiguration>,
    options: &OpOptions,
    engine: &EngineContext,
    progress: &ProgressSender,
    cancel: &CancelFlag,
) -> Result<(), TridentError> {
    if cancel.is_cancelled() {
        return Err(cancelled_error(op));
    }
    let mut ctx = engine.clone();
    ctx.allow_reboot = false;
    ctx.cancel = cancel.flag.clone();
    let sender = progress.clone();
    let last = Arc::new(std::sync::Mutex::new((String::new(), u32::MAX)));
    ctx.progress = Arc::new(move |what: &str, done: u64, total: u64| {
        let percent = (done.saturating_mul(100) / total.max(1)).min(100) as u32;
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if last.0 != what || last.1 != percent {
            *last = (what.to_string(), percent);
            sender.progress(percent, format!("{what}: {done} of {total} bytes"));
        }
    });
    let need_hc = || {
        hc.ok_or_else(|| {
            TridentError::invalid_input(
                "missing-host-configuration",
                format!("{op} needs a Host Configuration"),
            )
        })
    };
    let result = match op {
        Operation::Install => engine::install(need_hc()?, &ctx),
        Operation::Stage => engine::stage(need_hc()?, &ctx).map(|outcome| match outcome {
            engine::StageOutcome::NothingToDo => progress.progress(
                100,
                "no update required: the Host Configuration is already applied",
            ),
            engine::StageOutcome::Staged(v) => progress.progress(100, format!("staged into {v}")),
            engine::StageOutcome::RuntimeUpdated(c) => {
                progress.progress(100, format!("runtime update applied: {c}"))
            }
        }),
        Operation::Finalize => engine::finalize(&ctx),
        Operation::Commit => engine::commit(&ctx).map(|outcome| {
            progress.progress(100, outcome.to_string());
        }),
        Operation::Rollback if options.runtime => {
            engine::rollback_runtime(&ctx, false).map(|plan| {
                progress.progress(100, plan.to_string());
            })
        }
        Operation::Rollback => engine::rollback_ab(&ctx, false).map(|plan| {
            progress.progress(100, plan.to_string());
        }),
    };
    result.map_err(|e| {
        if cancel.is_cancelled() {
            return cancelled_error(op);
        }
        find_trident_error(&e).unwrap_or_else(|| {
            TridentError::servicing("operation-failed", format!("{op} failed: {e:#}"))
        })
    })
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

    fn request(operation: Operation) -> Request {
        Request {
            operation,
            host_configuration: None,
            host_configuration_yaml: None,
            options: OpOptions::default(),
            caller: None,
        }
    }

    async fn finished(servicer: &InProcessServicer, op: Operation) -> TridentError {
        let mut running = servicer
            .start(request(op), CancelFlag::new())
            .await
            .unwrap();
        loop {
            match running.events.recv().await {
                Some(OpEvent::Finished(Err(e))) => return e,
                Some(OpEvent::Progress { .. }) => continue,
                other => panic!("unexpected event {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn in_process_servicer_runs_the_engine() {
        // No datastore: the engine's own categorised error comes back.
        let dir = tempfile::tempdir().unwrap();
        let servicer =
            InProcessServicer::new(EngineContext::new(dir.path().join("datastore.sqlite")));
        let e = finished(&servicer, Operation::Commit).await;
        assert_eq!(e.code, "not-provisioned", "{e}");
        assert_eq!(e.category, crate::Category::ExecutionEnvironment);
        // Stage without a Host Configuration is refused before the engine runs.
        let e = finished(&servicer, Operation::Stage).await;
        assert_eq!(e.code, "missing-host-configuration", "{e}");
        // Runtime rollback runs the engine's runtime rollback (no datastore here).
        let mut r = request(Operation::Rollback);
        r.options.runtime = true;
        let mut running = servicer.start(r, CancelFlag::new()).await.unwrap();
        match running.events.recv().await {
            Some(OpEvent::Finished(Err(e))) => {
                assert_eq!(e.code, "not-provisioned", "{e}")
            }
            other => panic!("unexpected event {other:?}"),
        }
        // Already cancelled: nothing runs.
        let cancel = CancelFlag::new();
        cancel.cancel();
        let mut running = servicer
            .start(request(Operation::Commit), cancel)
            .await
            .unwrap();
        match running.events.recv().await {
            Some(OpEvent::Finished(Err(e))) => assert_eq!(e.code, "cancelled"),
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
