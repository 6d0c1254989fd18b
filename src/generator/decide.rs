//! The generator's decision: a pure function of what it read at boot.

use super::markers::{
    escape_instance, strip_boot_counter, HealthCheckList, PendingMarker, TrialMarker,
    TrialOperation, DEFAULT_INSTALL_CONFIG, MARKER_VERSION,
};

/// A marker file as read: absent, parsed, or unreadable/invalid (with the reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker<T> {
    Absent,
    Present(T),
    Invalid(String),
}

/// Everything the decision depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// Kernel command line.
    pub cmdline: String,
    /// Running in the initrd (the real root, with its markers, is not there yet).
    pub in_initrd: bool,
    /// systemd-boot's `LoaderEntrySelected`; `Ok(None)` when not set or no efivarfs.
    pub loader_entry_selected: Result<Option<String>, String>,
    pub trial: Marker<TrialMarker>,
    pub pending: Marker<PendingMarker>,
    pub health_checks: Marker<HealthCheckList>,
    /// The install marker's first non-empty line (`Some("")` when the file is empty).
    pub install: Marker<String>,
}

/// One `trident-health-check@.service` instance to wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckInstance {
    /// Escaped instance name (`%i`).
    pub instance: String,
    /// `TimeoutStartSec=` for the drop-in, if the check has a timeout.
    pub timeout_start_sec: Option<u64>,
}

/// What the generator wires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A normal boot (or the generator is switched off): wire nothing.
    Nothing { reason: String },
    /// The inputs are inconsistent or unreadable: wire nothing, log an error. The trial
    /// (if any) is then not committed and the next boot returns to the old volume.
    Error { reason: String },
    /// Trial boot of a freshly installed or updated volume: health target + commit.
    Trial {
        operation: TrialOperation,
        update_id: String,
        checks: Vec<CheckInstance>,
        /// False on a clean-install trial: nothing to roll back to, so
        /// `trident-rollback.service` must not reboot.
        reboot_on_failure: bool,
    },
    /// Boot of the old volume while a trial was pending: the trial failed.
    RecordRollback { update_id: String },
    /// Installer boot: `trident-install.service` with this Host Configuration location.
    Install { config: String },
}

/// Grace added to a check's own timeout so the verb can report its timeout first.
pub const CHECK_TIMEOUT_GRACE_SECS: u64 = 15;
/// Longest unit name systemd accepts.
const UNIT_NAME_MAX: usize = 255;

/// Split a kernel command line into `(key, value)` pairs, honoring double quotes like
/// systemd (`key="a b"`). A bare `key` has value `None`.
pub fn parse_cmdline(cmdline: &str) -> Vec<(String, Option<String>)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut has_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_word {
                    words.push(std::mem::take(&mut cur));
                    has_word = false;
                }
            }
            c => {
                cur.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        words.push(cur);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (w, None),
        })
        .collect()
}

fn is_false(v: &str) -> bool {
    matches!(v, "0" | "no" | "false" | "off")
}

fn is_true(v: &str) -> bool {
    matches!(v, "1" | "yes" | "true" | "on")
}

/// Decide what to wire. Precedence: switched off → initrd → installer → markers.
pub fn decide(inputs: &Inputs) -> Decision {
    let args = parse_cmdline(&inputs.cmdline);
    let last = |key: &str| {
        args.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    if let Some(Some(v)) = last("trident.generator") {
        if is_false(&v) {
            return Decision::Nothing {
                reason: "switched off by trident.generator= on the kernel command line".into(),
            };
        }
    }
    if inputs.in_initrd {
        return Decision::Nothing {
            reason: "running in the initrd".into(),
        };
    }

    // Installer boot: the command line wins over the marker.
    match last("trident.install") {
        Some(Some(v)) if is_false(&v) => {}
        Some(Some(v)) if !is_true(&v) && !v.is_empty() => {
            return Decision::Install { config: v };
        }
        Some(_) => {
            return Decision::Install {
                config: install_marker_config(&inputs.install),
            };
        }
        None => match &inputs.install {
            Marker::Absent => {}
            Marker::Invalid(e) => {
                return Decision::Error {
                    reason: format!("reading the install marker: {e}"),
                }
            }
            Marker::Present(_) => {
                return Decision::Install {
                    config: install_marker_config(&inputs.install),
                }
            }
        },
    }

    match (&inputs.trial, &inputs.pending) {
        (Marker::Invalid(e), _) => Decision::Error {
            reason: format!("reading the trial marker: {e}"),
        },
        (_, Marker::Invalid(e)) => Decision::Error {
            reason: format!("reading the pending marker: {e}"),
        },
        (Marker::Present(_), Marker::Present(_)) => Decision::Error {
            reason: "both the trial and the pending marker are on this root; refusing to guess"
                .into(),
        },
        (Marker::Present(trial), Marker::Absent) => decide_trial(inputs, trial),
        (Marker::Absent, Marker::Present(pending)) => {
            if pending.version > MARKER_VERSION {
                return Decision::Error {
                    reason: format!("pending marker version {} is newer than this build understands ({MARKER_VERSION})", pending.version),
                };
            }
            Decision::RecordRollback {
                update_id: pending.update_id.clone(),
            }
        }
        (Marker::Absent, Marker::Absent) => Decision::Nothing {
            reason: "no trial pending".into(),
        },
    }
}

fn install_marker_config(m: &Marker<String>) -> String {
    match m {
        Marker::Present(s) if !s.is_empty() => s.clone(),
        _ => DEFAULT_INSTALL_CONFIG.to_string(),
    }
}

fn decide_trial(inputs: &Inputs, trial: &TrialMarker) -> Decision {
    if trial.version > MARKER_VERSION {
        return Decision::Error {
            reason: format!(
                "trial marker version {} is newer than this build understands ({MARKER_VERSION})",
                trial.version
            ),
        };
    }
    if let Some(expected) = &trial.loader_entry {
        match &inputs.loader_entry_selected {
            Err(e) => {
                return Decision::Error {
                    reason: format!("reading LoaderEntrySelected: {e}"),
                }
            }
            Ok(Some(selected)) if strip_boot_counter(selected) != strip_boot_counter(expected) => {
                return Decision::Error {
                    reason: format!(
                        "trial marker names boot entry {expected:?} but the firmware booted {selected:?}; not a trial boot"
                    ),
                }
            }
            Ok(_) => {}
        }
    }
    let list = match &inputs.health_checks {
        Marker::Absent => HealthCheckList::default(),
        Marker::Invalid(e) => {
            return Decision::Error {
                reason: format!("reading the health check list: {e}"),
            }
        }
        Marker::Present(l) if l.version > MARKER_VERSION => {
            return Decision::Error {
                reason: format!(
                    "health check list version {} is newer than this build understands ({MARKER_VERSION})",
                    l.version
                ),
            }
        }
        Marker::Present(l) => l.clone(),
    };
    let mut checks: Vec<CheckInstance> = Vec::new();
    for c in &list.checks {
        if c.name.is_empty() {
            return Decision::Error {
                reason: "a health check has an empty name".into(),
            };
        }
        let instance = escape_instance(&c.name);
        let unit_len = "trident-health-check@".len() + instance.len() + ".service".len();
        if unit_len > UNIT_NAME_MAX {
            return Decision::Error {
                reason: format!("health check name {:?} is too long for a unit name", c.name),
            };
        }
        if checks.iter().any(|x| x.instance == instance) {
            return Decision::Error {
                reason: format!("health check {:?} is listed twice", c.name),
            };
        }
        checks.push(CheckInstance {
            instance,
            timeout_start_sec: c
                .timeout_seconds
                .map(|t| t.saturating_add(CHECK_TIMEOUT_GRACE_SECS)),
        });
    }
    Decision::Trial {
        operation: trial.operation,
        update_id: trial.update_id.clone(),
        checks,
        reboot_on_failure: trial.operation != TrialOperation::CleanInstall,
    }
}
