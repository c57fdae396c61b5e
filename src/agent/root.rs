//! `outpost root verify`, on the device: the check of the read-only root against its dm-verity
//! hash. dm-verity already refuses every block that does not match as it is read; the full scan
//! finds a changed block the applications have not read yet, before it matters. It reads the
//! whole root (seconds on a clinic PC, more under emulation), so it runs once for each release
//! on its first boot, where the boot's verdict waits for it, and then weekly, when a daily timer
//! finds the last full check older than that.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use crate::files::unix_now as now;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::say as console;

/// On the data partition: which root was last read in full, and when.
const STAMP: &str = "/var/lib/outpost/root-verified.json";
/// How long a full check of the same root holds.
const EVERY_SECS: u64 = 7 * 24 * 3600;

#[derive(Serialize, Deserialize)]
struct Stamp {
    root_hash: String,
    verified_at: u64,
}

/// Whether the running root must be read in full now: it never was on this box (a new
/// release, a first boot, a data partition that is closed), or the last full read is more than
/// a week away from now in either direction (a clock set back far is not trusted to skip it).
fn due(stamp: Option<&Stamp>, root_hash: &str, now: u64) -> bool {
    match stamp {
        Some(s) if s.root_hash == root_hash => now.abs_diff(s.verified_at) > EVERY_SECS,
        _ => true,
    }
}

fn read_stamp(path: &Path) -> Option<Stamp> {
    serde_json::from_slice(&fs_err::read(path).ok()?).ok()
}

/// `outpost root verify`: reads every block of the verified root once, unless `when_due` and
/// this root was read in full within the week. dm-verity checks each block against the hash
/// tree and answers EIO for one that does not match: the root on this disk was changed after
/// the build (a failing disk, or tampering). The console says so, and the unit fails, which
/// the boot's verdict and the status report show.
pub fn verify_root(dev: &Path, when_due: bool) -> Result<()> {
    let root_hash = super::update::booted_root_hash()?;
    let stamp_path = Path::new(STAMP);
    let stamp = read_stamp(stamp_path);
    if when_due && !due(stamp.as_ref(), &root_hash, now()) {
        if let Some(s) = stamp {
            console(&format!(
                "root file system: this release was read in full {} h ago; dm-verity checks every block read meanwhile",
                now().saturating_sub(s.verified_at) / 3600
            ));
        }
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut f = File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at: u64 = 0;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => at += n as u64,
            Err(e) => {
                console(&format!(
                    "ROOT FILE SYSTEM CORRUPTED: the root's block at byte {at} does not match the dm-verity hash it was built with ({e}). \
                     The system refuses to read it; the appliance may misbehave. Write the image to this disk again (docs/power.md)."
                ));
                bail!("{} fails verification at byte {at}", dev.display());
            }
        }
    }
    console(&format!("root file system verified: {} MiB match the image's root hash ({:.1} s)", at >> 20, started.elapsed().as_secs_f64()));
    // Only on the data partition: with it closed, /var is in memory and the next boot reads
    // the root again, which is what it should do anyway.
    if super::data::closed() || !stamp_path.parent().is_some_and(Path::exists) {
        return Ok(());
    }
    let text = serde_json::to_vec(&Stamp { root_hash, verified_at: now() })?;
    crate::files::atomic_write(stamp_path, |f| Ok(std::io::Write::write_all(f, &text)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_read_holds_a_week_for_the_same_root_only() {
        let s = Stamp { root_hash: "aa".into(), verified_at: 1_000_000 };
        assert!(due(None, "aa", 1_000_000), "never read in full on this box");
        assert!(!due(Some(&s), "aa", 1_000_000 + 3600), "read an hour ago");
        assert!(due(Some(&s), "bb", 1_000_000 + 3600), "a new release is read in full at its first boot");
        assert!(due(Some(&s), "aa", 1_000_000 + EVERY_SECS + 1), "a week later");
        assert!(due(Some(&s), "aa", 1_000_000 - EVERY_SECS - 1), "a clock set far back");
        assert!(!due(Some(&s), "aa", 1_000_000 - 60), "a clock a minute back (reset to the build time at each boot)");
    }
}
