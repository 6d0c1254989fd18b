//! `internal health-check NAME`: run one Host Configuration health check.

use crate::cmd::Cmd;
use crate::config::{Check, HostConfiguration};
use crate::error::TridentError;
use crate::logging::message_id;
use anyhow::Result;
use std::time::{Duration, Instant};

/// How often systemd services are polled.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Run check `name` of `hc`: a script must exit 0; the services of a systemd check must
/// all be active within `timeoutSeconds`.
pub fn run_check(hc: &HostConfiguration, name: &str) -> Result<()> {
    let check = hc
        .health
        .checks
        .iter()
        .find(|c| c.name() == name)
        .ok_or_else(|| {
            anyhow::Error::new(TridentError::invalid_input(
                "unknown-health-check",
                format!("the Host Configuration has no health check named '{name}'"),
            ))
        })?;
    let result = match check {
        Check::Script(s) => {
            let mut cmd = match s.source() {
                Some(crate::config::ScriptSource::Content(c)) => Cmd::new(s.interpreter())
                    .arg("-c")
                    .arg(c)
                    .args(&s.arguments),
                Some(crate::config::ScriptSource::Path(p)) => {
                    Cmd::new(s.interpreter()).arg(p).args(&s.arguments)
                }
                None => Cmd::new("true"),
            };
            for (k, v) in &s.environment_variables {
                cmd = cmd.env(k, v);
            }
            cmd.run()
        }
        Check::SystemdCheck(c) => {
            let deadline = Instant::now() + Duration::from_secs(c.timeout_seconds);
            loop {
                let inactive: Vec<&String> = c
                    .systemd_services
                    .iter()
                    .filter(|svc| {
                        Cmd::new("systemctl")
                            .args(["is-active", "--quiet"])
                            .arg(svc)
                            .run()
                            .is_err()
                    })
                    .collect();
                if inactive.is_empty() {
                    break Ok(());
                }
                if Instant::now() >= deadline {
                    break Err(TridentError::servicing(
                        "health-check-timeout",
                        format!(
                            "services not active after {} s: {}",
                            c.timeout_seconds,
                            inactive
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                    .into());
                }
                std::thread::sleep(POLL_INTERVAL);
            }
        }
    };
    if let Err(e) = &result {
        tracing::error!(
            MESSAGE_ID = message_id::HEALTH_CHECK_FAILED,
            check = name,
            "health check failed: {e:#}"
        );
    }
    result
}
