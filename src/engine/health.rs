//! `internal health-check NAME`: run one Host Configuration health check.

use crate::cmd::Cmd;
use crate::config::{Check, HostConfiguration};
use crate::error::{Category, TridentError};
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
            cmd.run().map_err(|e| {
                TridentError::new(
                    Category::HealthChecks,
                    "health-check-failed",
                    format!("health check '{name}' failed: {e:#}"),
                )
                .into()
            })
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
                    break Err(TridentError::new(
                        Category::HealthChecks,
                        "health-check-timeout",
                        format!(
                            "health check '{name}': services not active after {} s: {}",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::find_trident_error;

    fn hc(checks: &str) -> HostConfiguration {
        crate::config::parse(&format!("health:\n  checks:\n{checks}")).unwrap()
    }

    #[test]
    fn a_failing_script_is_a_health_check_error_naming_the_check() {
        let h = hc("  - name: ok\n    content: exit 0\n    runOn: [ab-update]\n  - name: bad\n    content: echo broken >&2; exit 3\n    runOn: [ab-update]\n");
        run_check(&h, "ok").unwrap();
        let e = find_trident_error(&run_check(&h, "bad").unwrap_err()).unwrap();
        assert_eq!(e.category, Category::HealthChecks);
        assert_eq!(e.code, "health-check-failed");
        assert!(e.message.contains("'bad'"), "{}", e.message);
        let e = find_trident_error(&run_check(&h, "nope").unwrap_err()).unwrap();
        assert_eq!(e.code, "unknown-health-check");
    }
}
