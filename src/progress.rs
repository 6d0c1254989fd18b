//! Progress display for long operations: a bar on a terminal, plain periodic lines
//! otherwise (journal, pipes), and under systemd (`NOTIFY_SOCKET` set) the unit's
//! `STATUS=` through sd_notify, so `systemctl status trident-stage` shows how far
//! staging is. The library reports `(done, total)` through callbacks; this turns them
//! into output.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A progress reporter for one operation.
pub struct Reporter {
    label: String,
    bar: Option<ProgressBar>,
    last_line: Mutex<(Instant, u64)>,
    /// Under systemd: the last `STATUS=` sent (time, percent, item).
    last_status: Option<Mutex<(Instant, u64, String)>>,
}

impl Reporter {
    /// A bar on stderr when it is a terminal, periodic log lines otherwise.
    pub fn new(label: impl Into<String>) -> Reporter {
        let label = label.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(label.clone());
            bar
        });
        let last_status = std::env::var_os("NOTIFY_SOCKET")
            .is_some()
            .then(|| Mutex::new((Instant::now(), u64::MAX, String::new())));
        Reporter {
            label,
            bar,
            last_line: Mutex::new((Instant::now(), u64::MAX)),
            last_status,
        }
    }

    /// A reporter of percentages with a message (an operation followed over D-Bus).
    pub fn new_percent(label: impl Into<String>) -> Reporter {
        let r = Reporter::new(label);
        if let Some(bar) = &r.bar {
            bar.set_length(100);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:40}] {pos}% {wide_msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(r.label.clone());
            bar.set_message("");
        }
        r
    }

    /// Report `percent` with what is happening (for [`Reporter::new_percent`]).
    pub fn update_percent(&self, message: &str, percent: u32) {
        if let Some(bar) = &self.bar {
            bar.set_position(u64::from(percent.min(100)));
            bar.set_message(message.to_string());
            return;
        }
        self.log_line(u64::from(percent), percent >= 100, || {
            format!("{}: {percent}% {message}", self.label)
        });
    }

    /// Without a bar: log `line()` when the percentage changed, at most every 5 s
    /// (and always at the end).
    fn log_line(&self, percent: u64, finished: bool, line: impl FnOnce() -> String) {
        let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
        if last.1 != percent && (last.0.elapsed() >= Duration::from_secs(5) || finished) {
            tracing::info!("{}", line());
            *last = (Instant::now(), percent);
        }
    }

    /// Report `done` of `total` bytes.
    pub fn update(&self, done: u64, total: u64) {
        self.update_item(&self.label, done, total)
    }

    /// Report `done` of `total` bytes of `item` (e.g. which image onto which device).
    pub fn update_item(&self, item: &str, done: u64, total: u64) {
        let percent = done.saturating_mul(100).checked_div(total).unwrap_or(0);
        if let Some(status) = &self.last_status {
            let mut last = status.lock().unwrap_or_else(|e| e.into_inner());
            // A new item at once; the same one on a new percentage, at most once a second.
            let due = last.0.elapsed() >= Duration::from_secs(1) || done == total;
            if last.2 != item || (last.1 != percent && due) {
                let text = format!("{item}: {percent}% ({done} of {total} bytes)");
                if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&text)]) {
                    tracing::debug!("sd_notify STATUS: {e}");
                }
                *last = (Instant::now(), percent, item.to_string());
            }
        }
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
            return;
        }
        self.log_line(percent, done == total, || {
            format!("{item}: {percent}% ({done}/{total} bytes)")
        });
    }

    /// Finish the display.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
