//! Everything that runs inside an appliance or its installer: the site seed, the data
//! partition, the root's verification, power-on after AC loss, the stacks' health, the USB
//! installer. It shares with the build only the formats in `crate::format`, and writes to the
//! console through `say` alone.

mod console;
pub mod data;
pub mod installer;
pub mod power_on;
pub mod root;
pub mod site;
pub mod firewall;
pub mod stack;
pub mod tls;
pub mod tpm;
pub mod update;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use console::say;

/// Waits up to `limit` for a path to appear (udev creating a device link).
pub fn wait_for(p: &Path, limit: Duration) -> Option<PathBuf> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if p.exists() {
            return Some(p.to_path_buf());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

