//! Progress on screen (an indicatif spinner per stage) and each stage's time for the summary.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// A size for people: `512 B`, `1.5 MiB`, `2.0 GiB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

pub struct Progress {
    quiet: bool,
    bar: RefCell<Option<ProgressBar>>,
    times: RefCell<Vec<(String, f64)>>,
}

impl Progress {
    /// `quiet`: no spinners (for `--json` and when stderr is not a terminal).
    pub fn new(quiet: bool) -> Progress {
        Progress { quiet, bar: RefCell::new(None), times: RefCell::new(Vec::new()) }
    }

    fn start(&self, name: &str) -> Instant {
        if !self.quiet {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} {prefix} {wide_msg} {elapsed}").expect("valid template"));
            bar.set_prefix(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            *self.bar.borrow_mut() = Some(bar);
        }
        Instant::now()
    }

    fn finish(&self, name: &str, started: Instant, ok: bool) {
        let secs = started.elapsed().as_secs_f64();
        if let Some(bar) = self.bar.borrow_mut().take() {
            bar.finish_and_clear();
            eprintln!("{} {name} ({secs:.1} s)", if ok { "✓" } else { "✗" });
        }
        self.times.borrow_mut().push((name.to_string(), secs));
    }

    pub fn stage<T, E>(&self, name: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let started = self.start(name);
        let r = f();
        self.finish(name, started, r.is_ok());
        r
    }

    pub async fn stage_async<T, E>(&self, name: &str, f: impl std::future::Future<Output = Result<T, E>>) -> Result<T, E> {
        let started = self.start(name);
        let r = f.await;
        self.finish(name, started, r.is_ok());
        r
    }

    /// A detail of the running stage ("layer base (1/3)").
    pub fn message(&self, msg: &str) {
        if let Some(bar) = self.bar.borrow().as_ref() {
            bar.set_message(msg.to_string());
        } else if !self.quiet {
            eprintln!("  {msg}");
        }
    }

    pub fn times(&self) -> Vec<(String, f64)> {
        self.times.borrow().clone()
    }
}
