//! `outpost cache ls` and `outpost cache gc`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::print_json;
use crate::cli::{CacheCommand, Cli};
use crate::progress::human;

pub fn run(cli: &Cli, command: &CacheCommand) -> Result<i32> {
    let cache = super::open_cache(cli)?;
    let dir = cache.root().to_path_buf();
    match command {
        CacheCommand::Ls => {
            let entries = cache.entries()?;
            if cli.json {
                print_json(&entries)?;
            } else {
                println!("{:<16} {:<20} {:<16} {:>10}", "KEY", "LAYER", "IMAGE", "SIZE");
                for e in &entries {
                    let (layer, image) = e.meta.as_ref().map(|m| (m.layer.as_str(), m.image.as_str())).unwrap_or(("?", "?"));
                    println!("{:<16} {:<20} {:<16} {:>10}", &e.key[..16.min(e.key.len())], layer, image, human(e.size));
                }
                println!("{} entries, {} in {}", entries.len(), human(entries.iter().map(|e| e.size).sum()), dir.display());
            }
        }
        CacheCommand::Gc { images } => {
            let images = if images.is_empty() { default_images()? } else { images.clone() };
            let mut keep = BTreeSet::new();
            let mut keep_sources = BTreeSet::new();
            for i in &images {
                let plan = crate::pipeline::load_plan(i)?;
                keep.extend(plan.layers.iter().map(|l| l.key.clone()));
                keep_sources.extend(crate::container::source_keys(&plan)?);
            }
            let report = cache.gc(&keep)?;
            let (images_removed, images_freed) = crate::container::gc(&cache, &keep_sources)?;
            if cli.json {
                print_json(&serde_json::json!({"layers": report, "container_images_removed": images_removed, "container_bytes_freed": images_freed}))?;
            } else {
                println!("removed {} entries ({}), kept {}", report.removed.len(), human(report.freed), report.kept);
                println!("removed {images_removed} container images ({})", human(images_freed));
            }
        }
    }
    Ok(0)
}

fn default_images() -> Result<Vec<PathBuf>> {
    let dir = Path::new("images");
    let mut out: Vec<PathBuf> = fs_err::read_dir(dir)
        .with_context(|| format!("reading {} (name the images whose layers to keep)", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    out.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    out.sort();
    Ok(out)
}
