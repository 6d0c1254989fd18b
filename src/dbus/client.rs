//! The client side, for `trident --via-dbus` and scripts: a proxy for
//! `io.trident.Trident1` (async [`Trident1Proxy`] and blocking
//! [`Trident1ProxyBlocking`]) and [`start_and_follow`] / [`follow`], which wait for an
//! operation's `Completed` signal while reporting its `Progress` signals.

use std::collections::HashMap;

use zbus::blocking::MessageIterator;
use zbus::message::Type;
use zbus::zvariant::Value;
use zbus::MatchRule;

use super::{BUS_NAME, INTERFACE, OBJECT_PATH};

#[zbus::proxy(
    interface = "io.trident.Trident1",
    default_service = "io.trident.Trident1",
    default_path = "/io/trident/Trident1",
    gen_blocking = true,
    gen_async = true
)]
pub trait Trident1 {
    fn validate(&self, hc_yaml: &str) -> zbus::Result<()>;
    fn install(&self, hc_yaml: &str, opts: HashMap<&str, Value<'_>>) -> zbus::Result<()>;
    fn stage(&self, hc_yaml: &str, opts: HashMap<&str, Value<'_>>) -> zbus::Result<()>;
    fn finalize(&self, opts: HashMap<&str, Value<'_>>) -> zbus::Result<()>;
    fn commit(&self) -> zbus::Result<()>;
    fn rollback(&self, opts: HashMap<&str, Value<'_>>) -> zbus::Result<()>;
    fn cancel(&self) -> zbus::Result<()>;
    fn get_host_status(&self) -> zbus::Result<String>;
    fn get_history(&self, limit: u32) -> zbus::Result<String>;

    #[zbus(property)]
    fn servicing_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active_volume(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;
    #[zbus(property, name = "Progress")]
    fn progress_percent(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    #[zbus(signal, name = "Progress")]
    fn progress_signal(&self, operation: String, percent: u32, message: String)
        -> zbus::Result<()>;
    #[zbus(signal)]
    fn completed(&self, operation: String, success: bool, error: String) -> zbus::Result<()>;
}

/// How an operation ended (the `Completed` signal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub operation: String,
    pub success: bool,
    /// Empty on success; `category [code]: message` otherwise.
    pub error: String,
}

/// A subscription to the service's signals, made *before* starting an operation so
/// that no signal is missed.
pub struct Subscription {
    messages: MessageIterator,
}

/// Subscribe to `Progress` and `Completed` of the service behind `proxy`.
pub fn subscribe(proxy: &Trident1ProxyBlocking<'_>) -> zbus::Result<Subscription> {
    let conn = proxy.inner().connection();
    let mut rule = MatchRule::builder()
        .msg_type(Type::Signal)
        .interface(INTERFACE)?
        .path(OBJECT_PATH)?;
    if conn.is_bus() {
        rule = rule.sender(proxy.inner().destination().to_owned())?;
    }
    let messages = MessageIterator::for_match_rule(rule.build(), conn, None)?;
    Ok(Subscription { messages })
}

impl Subscription {
    /// Wait for `Completed` of `operation`, calling `on_progress(percent, message)` for
    /// each of its `Progress` signals.
    pub fn wait(
        mut self,
        operation: &str,
        mut on_progress: impl FnMut(u32, &str),
    ) -> zbus::Result<Outcome> {
        for msg in &mut self.messages {
            let msg = msg?;
            let header = msg.header();
            let member = header.member().map(|m| m.as_str().to_string());
            match member.as_deref() {
                Some("Progress") => {
                    let (op, percent, message): (String, u32, String) = msg.body().deserialize()?;
                    if op == operation {
                        on_progress(percent, &message);
                    }
                }
                Some("Completed") => {
                    let (op, success, error): (String, bool, String) = msg.body().deserialize()?;
                    if op == operation {
                        return Ok(Outcome {
                            operation: op,
                            success,
                            error,
                        });
                    }
                }
                _ => {}
            }
        }
        Err(zbus::Error::Failure(format!(
            "the connection closed before {operation} completed"
        )))
    }
}

/// Subscribe, call `start` (e.g. `|p| p.stage(yaml, HashMap::new())`), then wait for
/// `operation` to complete. An error of `start` (Busy, Unauthorized, ...) is returned
/// as is.
pub fn start_and_follow(
    proxy: &Trident1ProxyBlocking<'_>,
    operation: &str,
    start: impl FnOnce(&Trident1ProxyBlocking<'_>) -> zbus::Result<()>,
    on_progress: impl FnMut(u32, &str),
) -> zbus::Result<Outcome> {
    let subscription = subscribe(proxy)?;
    start(proxy)?;
    subscription.wait(operation, on_progress)
}

/// Attach to `operation` when it is already running (started elsewhere) and wait for
/// it; an error when it is not running.
pub fn follow(
    proxy: &Trident1ProxyBlocking<'_>,
    operation: &str,
    on_progress: impl FnMut(u32, &str),
) -> zbus::Result<Outcome> {
    let subscription = subscribe(proxy)?;
    let running = proxy.operation()?;
    if running != operation {
        return Err(zbus::Error::Failure(format!(
            "{operation} is not running (running: {:?})",
            running
        )));
    }
    subscription.wait(operation, on_progress)
}

/// A blocking proxy on the system bus. Properties are not cached: each read asks the
/// service (a cache follows `PropertiesChanged` asynchronously and can lag right
/// after a call).
pub fn system_proxy() -> zbus::Result<Trident1ProxyBlocking<'static>> {
    let conn = zbus::blocking::Connection::system()?;
    Trident1ProxyBlocking::builder(&conn)
        .destination(BUS_NAME)?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
}
