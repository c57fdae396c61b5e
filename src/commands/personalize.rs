//! `outpost personalize IMAGE --site S --out X`: one clinic's copy (`output::personalize`).

use std::path::Path;

use anyhow::Result;

use super::print_json;
use crate::cli::Cli;

pub fn run(cli: &Cli, image: &Path, site: &Path, out: &Path, ca: Option<&Path>) -> Result<i32> {
    let started = std::time::Instant::now();
    let ca = ca.map(crate::output::ca::Ca::load).transpose()?;
    crate::output::personalize::personalize(image, site, out, crate::files::source_date_epoch()?, ca.as_ref())?;
    let secs = started.elapsed().as_secs_f64();
    if cli.json {
        print_json(&serde_json::json!({"out": out, "sha256": crate::files::sha256_file(out)?, "seconds": secs}))?;
    } else {
        println!("wrote {} with the site {} in {secs:.2} s", out.display(), site.display());
        if let Some(ca) = &ca {
            println!("its seed holds the box's issuing certificate from the CA {} (SHA-256 {}): keep the copy like a key until the box has booted once", ca.cert.display(), ca.fingerprint);
        }
    }
    Ok(0)
}
