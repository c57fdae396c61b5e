//! `outpost stack wait-healthy`, on the device: a compose service's unit waits in
//! ExecStartPost until its container's health check passes, so that units ordered after it
//! start once it serves (compose's `service_healthy`).

use anyhow::Result;

use crate::tool::Tool;

/// Waits until `podman healthcheck run NAME` passes.
pub fn wait_healthy(name: &str, timeout: std::time::Duration) -> Result<()> {
    let started = std::time::Instant::now();
    let mut last = String::new();
    while started.elapsed() < timeout {
        match Tool::new("podman").describe(format!("checking the health of container {name}")).args(["healthcheck", "run", name]).output() {
            Ok(_) => {
                super::say(&format!("container {name} is healthy after {:.1} s", started.elapsed().as_secs_f64()));
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    anyhow::bail!("container {name} was not healthy within {} s; last check: {last}", timeout.as_secs())
}

