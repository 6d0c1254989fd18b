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
use crate::error::{Category, TridentError};

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

impl Outcome {
    /// `Ok` for a successful operation, else the error it reported (see [`error_from_text`]).
    pub fn into_result(self) -> Result<(), TridentError> {
        if self.success {
            Ok(())
        } else {
            Err(error_from_text(&self.error))
        }
    }
}

/// The categorised error in a service message (`Completed`'s error, or a D-Bus error's
/// text): `category [code] ...: message`, first line; further lines (more validation
/// errors) stay in the message. `busy` and `unauthorized` (the service's own refusals)
/// are `execution-environment`; text without that shape is `servicing`
/// `[dbus-operation-failed]`.
pub fn error_from_text(text: &str) -> TridentError {
    let first = text.lines().next().unwrap_or_default();
    let parsed = first.split_once(" [").and_then(|(category, rest)| {
        let (code, message) = rest.split_once(']')?;
        let category = match category {
            "busy" | "unauthorized" => Category::ExecutionEnvironment,
            c => Category::parse(c)?,
        };
        // The rest of the first line (` at PATH: message` or `: message`), then any
        // further lines.
        let mut message = message.trim_start_matches(':').trim().to_string();
        for line in text.lines().skip(1) {
            message.push('\n');
            message.push_str(line);
        }
        Some((category, code.to_string(), message))
    });
    match parsed {
        Some((category, code, message)) => TridentError::new(category, code, message),
        None => TridentError::servicing("dbus-operation-failed", text.to_string()),
    }
}

/// The error of a failed method call: the service's categorised one when it sent one,
/// else `execution-environment [dbus-unavailable]` (no bus, no service).
pub fn call_error(e: zbus::Error) -> TridentError {
    match &e {
        zbus::Error::MethodError(_, Some(text), _) if text.contains(" [") => error_from_text(text),
        _ => TridentError::environment(
            "dbus-unavailable",
            format!("cannot reach io.trident.Trident1 on the bus: {e}"),
        ),
    }
}

/// A blocking proxy on the bus at `address` (tests), or the system bus when `None`.
pub fn proxy_at(address: Option<&str>) -> zbus::Result<Trident1ProxyBlocking<'static>> {
    let conn = match address {
        Some(a) => zbus::blocking::connection::Builder::address(a)?.build()?,
        None => zbus::blocking::Connection::system()?,
    };
    Trident1ProxyBlocking::builder(&conn)
        .destination(BUS_NAME)?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
}

/// A blocking proxy on the system bus. Properties are not cached: each read asks the
/// service (a cache follows `PropertiesChanged` asynchronously and can lag right
/// after a call).
pub fn system_proxy() -> zbus::Result<Trident1ProxyBlocking<'static>> {
    proxy_at(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_messages_become_categorised_errors() {
        let e = error_from_text(
            "invalid-input [duplicate-mount-point] at storage.filesystems[1] (line 9, column 5): / is mounted twice\ninvalid-input [x]: second",
        );
        assert_eq!(e.category, Category::InvalidInput);
        assert_eq!(e.code, "duplicate-mount-point");
        assert_eq!(
            e.message,
            "at storage.filesystems[1] (line 9, column 5): / is mounted twice\ninvalid-input [x]: second"
        );
        let e = error_from_text("busy [servicing-in-progress]: stage is running");
        assert_eq!(
            (e.category, e.code.as_str(), e.message.as_str()),
            (
                Category::ExecutionEnvironment,
                "servicing-in-progress",
                "stage is running"
            )
        );
        let e = error_from_text("servicing [cancelled]: stage was cancelled");
        assert_eq!(
            (e.category, e.code.as_str()),
            (Category::Servicing, "cancelled")
        );
        let e = error_from_text("something odd");
        assert_eq!(
            (e.category, e.code.as_str(), e.message.as_str()),
            (
                Category::Servicing,
                "dbus-operation-failed",
                "something odd"
            )
        );
        assert!(Outcome {
            operation: "commit".into(),
            success: true,
            error: String::new()
        }
        .into_result()
        .is_ok());
    }
}
