//! Everything that runs inside an appliance or its installer: the site seed, the data
//! partition, the root's verification, power-on after AC loss, the stacks' health, the USB
//! installer. It shares with the build only the formats in `crate::format`, and writes to the
//! console through `say` alone.

pub mod addresses;
pub mod backup;
pub mod cloud;
mod console;
pub mod data;
pub mod installer;
pub mod power_on;
pub mod root;
pub mod site;
pub mod firewall;
pub mod stack;
pub mod status;
pub mod tls;
pub mod tpm;
pub mod update;

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub use console::say;

/// The units in a systemd state (`failed`, `auto-restart`...), by name.
pub fn units_in_state(state: &str) -> Vec<String> {
    let out = crate::tool::Tool::new("systemctl").describe("listing units").args(["list-units", "--all", "--no-legend", "--plain"]).arg(format!("--state={state}")).output().unwrap_or_default();
    out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// `systemctl is-system-running`: `running`, `starting`, `degraded`...
pub fn system_state() -> String {
    crate::tool::Tool::new("systemctl").describe("reading the system state").arg("is-system-running").output_with_status().map(|(_, out)| out.trim().to_string()).unwrap_or_default()
}

/// An exclusive lock on `path` (a file in /run), held until the returned file is dropped: one
/// user at a time of the ESP, a stack's network, the TLS certificate.
pub fn lock(path: &Path) -> Result<fs_err::File> {
    let f = fs_err::File::create(path)?;
    // SAFETY: flock on a descriptor we own; released when the file is dropped.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("locking {}", path.display()));
    }
    Ok(f)
}

pub use crate::files::files_ending;

/// The partition with the GPT name `name` on the disk the root file system is on, never one on
/// another disk (a USB stick, or the disk of another appliance plugged in for rescue). Found in
/// /sys and /dev as the kernel makes them, without udev's links: the data partition is opened
/// while udev is still starting.
pub fn root_disk_partition(name: &str, limit: Duration) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let root_dev = fs_err::metadata("/").context("reading /")?.dev();
    let (major, minor) = (libc::major(root_dev), libc::minor(root_dev));
    let mut sys = fs_err::canonicalize(format!("/sys/dev/block/{major}:{minor}")).context("finding the root file system's disk in /sys")?;
    // The root is a dm-verity mapping: its disk is the one under the mapping's data partition.
    if let Some(under) = fs_err::read_dir(sys.join("slaves")).ok().and_then(|rd| rd.filter_map(Result::ok).map(|e| e.file_name()).min()) {
        sys = fs_err::canonicalize(Path::new("/sys/class/block").join(under)).context("finding the disk under the root's dm-verity mapping")?;
    }
    let disk = sys.parent().context("the root file system is not on a partition")?.to_path_buf();
    let wanted = format!("PARTNAME={name}");
    let start = Instant::now();
    loop {
        for e in fs_err::read_dir(&disk).with_context(|| format!("reading {}", disk.display()))? {
            let p = e?.path();
            let Ok(uevent) = fs_err::read_to_string(p.join("uevent")) else { continue };
            if uevent.lines().any(|l| l == wanted) {
                let dev = Path::new("/dev").join(p.file_name().expect("has a name"));
                if wait_for(&dev, Duration::from_secs(10)).is_some() {
                    return Ok(dev);
                }
            }
        }
        if start.elapsed() > limit {
            anyhow::bail!("the disk {} has no partition named `{name}`", disk.display());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

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

