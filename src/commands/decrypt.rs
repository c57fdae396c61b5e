//! `outpost decrypt`: NAME.raw.luks back into a raw disk.

use std::path::Path;

use anyhow::Result;

pub fn run(image: &Path, key_file: &Path, out: &Path) -> Result<i32> {
    crate::output::encrypt::decrypt(image, key_file, out)?;
    println!("wrote {}", out.display());
    Ok(0)
}
