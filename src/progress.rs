//! Progress on screen (an indicatif spinner per stage), or, when stderr is a log (CI, a file,
//! `--json`), one line per stage and a line a minute while a long one runs; and each stage's
//! time for the summary.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Lines for a log instead of spinners.
    lines: bool,
    bar: RefCell<Option<ProgressBar>>,
    /// Stops the running stage's once-a-minute line.
    ticker: RefCell<Option<Arc<AtomicBool>>>,
    times: RefCell<Vec<(String, f64)>>,
}

impl Progress {
    /// `lines`: plain lines for a log (for `--json` and when stderr is not a terminal).
    pub fn new(lines: bool) -> Progress {
        Progress { lines, bar: RefCell::new(None), ticker: RefCell::new(None), times: RefCell::new(Vec::new()) }
    }

    fn start(&self, name: &str) -> Instant {
        if self.lines {
            eprintln!("outpost: {name} ...");
            let stop = Arc::new(AtomicBool::new(false));
            let (flag, name) = (stop.clone(), name.to_string());
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut minutes = 0;
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(250));
                    let m = started.elapsed().as_secs() / 60;
                    if m > minutes && !flag.load(Ordering::Relaxed) {
                        minutes = m;
                        eprintln!("outpost: {name}: still running after {m} min");
                    }
                }
            });
            *self.ticker.borrow_mut() = Some(stop);
        } else {
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
        if let Some(stop) = self.ticker.borrow_mut().take() {
            stop.store(true, Ordering::Relaxed);
            eprintln!("outpost: {name} {} ({secs:.1} s)", if ok { "done" } else { "FAILED" });
        }
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
        } else if self.lines {
            eprintln!("outpost:   {msg}");
        }
    }

    pub fn times(&self) -> Vec<(String, f64)> {
        self.times.borrow().clone()
    }
}
