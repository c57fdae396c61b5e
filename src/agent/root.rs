//! `outpost root verify`, on the device: the check of the read-only root against its dm-verity
//! hash, once per boot.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::say as console;

/// `outpost root verify`: reads every block of the verified root once. dm-verity checks each
/// against the hash tree and answers EIO for one that does not match: the root on this disk
/// was changed after the build (a failing disk, or tampering). The console says so, and the
/// unit fails, which the boot's verdict reports.
pub fn verify_root(dev: &Path) -> Result<()> {
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
    Ok(())
}
