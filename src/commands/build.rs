//! `outpost build IMAGE --out DIR`: the pipeline, then its summary (or `--json`).

use std::path::Path;

use anyhow::Result;

use super::print_json;
use crate::cli::Cli;
use crate::progress::human;

pub fn run(cli: &Cli, image: &Path, out: &Path, encrypt_key_file: Option<&Path>, keys: Option<&Path>) -> Result<i32> {
    let mut ctx = super::ctx(cli, keys)?;
    ctx.encrypt_key = encrypt_key_file.map(Path::to_path_buf);
    report(cli, &ctx, image, out)
}

fn report(cli: &Cli, ctx: &crate::pipeline::Ctx, image: &Path, out: &Path) -> Result<i32> {
    let report = crate::pipeline::build(ctx, image, out)?;
    if cli.json {
        print_json(&report)?;
    } else {
        print_build_summary(&report);
    }
    Ok(0)
}

/// `outpost bundle IMAGE --out DIR [--from OLD]`: the build, then its update bundle.
pub fn bundle(cli: &Cli, image: &Path, out: &Path, from: Option<&Path>, keys: Option<&Path>) -> Result<i32> {
    let mut ctx = super::ctx(cli, keys)?;
    ctx.bundle = Some(crate::pipeline::BundleRequest { from: from.map(Path::to_path_buf) });
    report(cli, &ctx, image, out)
}

fn print_build_summary(r: &crate::pipeline::BuildReport) {
    println!("built {} into {}", r.image, r.out_dir.display());
    println!("layers: {} built, {} reused from the cache", r.built_layers.len(), r.reused_layers.len());
    for (stage, secs) in &r.stages {
        println!("  {stage:<36} {secs:>7.1} s");
        if stage == "layers" {
            for (layer, secs) in &r.layer_seconds {
                println!("    {layer:<34} {secs:>7.1} s");
            }
        }
    }
    println!("  {:<36} {:>7.1} s", "total", r.stages.iter().map(|s| s.1).sum::<f64>());
    for o in &r.outputs {
        println!("  {:<36} {:>10}  sha256 {}", o.file, human(o.size), &o.sha256[..16]);
    }
    let b = &r.boot;
    println!(
        "boot: {} ({}, systemd-stub {}), {}; predicted PCR 11 {}",
        b.uki,
        human(b.uki_size),
        b.stub,
        if b.signed { "signed for Secure Boot, PCR policy signed" } else { "UNSIGNED" },
        &b.pcr11[..16]
    );
    println!("release: {}", r.release);
    if let Some(b) = &r.bundle {
        println!(
            "update bundle: {} ({}), {}: carries {} of the new root and UKI's {}",
            b.file.display(),
            human(b.size),
            match &b.base {
                Some(base) => format!("a delta for appliances running release {base}"),
                None => "full".into(),
            },
            human(b.carried),
            human(b.total)
        );
    }
    for w in &r.warnings {
        println!("WARNING: {w}");
    }
}
