//! The progress line of a backup or a restore in a terminal: bytes done, rate, time left. Shown only when
//! stdout and stderr are terminals and `--quiet` was not given; drawn on stderr.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<(ProgressBar, tokio::task::JoinHandle<()>)>,
}

impl Progress {
    /// Starts drawing `done` against `total` if `wanted` and we are in a terminal; `what`
    /// says what the bytes are ("read", "restored").
    pub fn start(wanted: bool, total: u64, done: Arc<AtomicU64>, what: &str) -> Self {
        if !wanted || !std::io::stdout().is_terminal() || !std::io::stderr().is_terminal() {
            return Self { bar: None };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{bar:30}} {{binary_bytes}}/{{binary_total_bytes}} {what}, {{binary_bytes_per_sec}}, {{eta}} left",
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let ticker = {
            let bar = bar.clone();
            tokio::spawn(async move {
                loop {
                    bar.set_position(done.load(Ordering::Relaxed));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        Self {
            bar: Some((bar, ticker)),
        }
    }

    pub fn finish(&self) {
        if let Some((bar, ticker)) = &self.bar {
            ticker.abort();
            bar.finish_and_clear();
        }
    }
}
