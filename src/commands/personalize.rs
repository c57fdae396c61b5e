//! `outpost personalize IMAGE --site S --out X`: one clinic's copy (`output::personalize`).

use std::path::Path;

use anyhow::Result;

use super::print_json;
use crate::cli::Cli;

pub fn run(cli: &Cli, image: &Path, site: &Path, out: &Path) -> Result<i32> {
    let started = std::time::Instant::now();
    crate::output::personalize::personalize(image, site, out, crate::files::source_date_epoch()?)?;
    let secs = started.elapsed().as_secs_f64();
    if cli.json {
        print_json(&serde_json::json!({"out": out, "sha256": crate::files::sha256_file(out)?, "seconds": secs}))?;
    } else {
        println!("wrote {} with the site {} in {secs:.2} s", out.display(), site.display());
    }
    Ok(0)
}
