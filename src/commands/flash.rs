//! `outpost flash IMAGE DEVICE`: a USB stick written safely (`output::flash`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::print_json;
use crate::cli::Cli;
use crate::progress::human;

pub fn run(cli: &Cli, image: &Path, device: &Path, bmap: Option<PathBuf>, no_bmap: bool, force: bool, max_size: &str) -> Result<i32> {
    let max_size = crate::spec::Size::parse(max_size).map_err(|e| anyhow::anyhow!("--max-size: {e}"))?.0;
    let opts = crate::output::flash::Options { bmap, no_bmap, force, max_size };
    let r = crate::output::flash::flash(image, device, &opts, !cli.json && std::io::stderr().is_terminal())?;
    if cli.json {
        print_json(&r)?;
    } else {
        println!(
            "wrote {} of {} to {} in {:.1} s ({:.1} MB/s{}), read back and verified in {:.1} s",
            human(r.written_bytes),
            human(r.image_bytes),
            device.display(),
            r.write_seconds,
            r.write_mb_per_s,
            if r.block_map.is_some() { ", mapped blocks only" } else { "" },
            r.verify_seconds
        );
    }
    Ok(0)
}
