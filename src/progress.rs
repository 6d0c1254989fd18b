//! Progress display for long operations: a bar on a terminal, plain periodic lines
//! otherwise (journal, pipes). The library reports `(done, total)` through callbacks;
//! this turns them into output.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A progress reporter for one operation.
pub struct Reporter {
    label: String,
    bar: Option<ProgressBar>,
    last_line: Mutex<(Instant, u64)>,
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
        Reporter {
            label,
            bar,
            last_line: Mutex::new((Instant::now(), u64::MAX)),
        }
    }

    /// Report `done` of `total` bytes.
    pub fn update(&self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
        let percent = done.saturating_mul(100).checked_div(total).unwrap_or(0);
        if last.1 != percent && (last.0.elapsed() >= Duration::from_secs(5) || done == total) {
            tracing::info!("{}: {percent}% ({done}/{total} bytes)", self.label);
            *last = (Instant::now(), percent);
        }
    }

    /// Finish the display.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
