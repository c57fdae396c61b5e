//! outpost: parse the command line, run it, print `error: ...` and set the exit code.

mod cache;
mod cli;
mod container;
mod crypt;
mod disk;
mod flash;
mod install;
mod output;
mod pipeline;
mod plan;
mod power;
mod progress;
mod rootfs;
mod site;
mod spec;
mod tool;
mod vmtest;

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;

use cli::{CacheCommand, Cli, Command, DataCommand, PowerCommand, RootCommand, SeedCommand, StackCommand};
use progress::human;

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn ctx(cli: &Cli) -> Result<pipeline::Ctx> {
    let dir = cli.cache.clone().unwrap_or_else(cache::Cache::default_dir);
    Ok(pipeline::Ctx {
        cache: cache::Cache::open(&dir)?,
        epoch: pipeline::source_date_epoch()?,
        progress: progress::Progress::new(cli.json || !std::io::stderr().is_terminal()),
        encrypt_key: None,
    })
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn run(cli: Cli) -> Result<i32> {
    match &cli.command {
        Command::Build { image, out, encrypt_key_file } => {
            let mut ctx = ctx(&cli)?;
            ctx.encrypt_key = encrypt_key_file.clone();
            let report = pipeline::build(&ctx, image, out)?;
            if cli.json {
                print_json(&report)?;
            } else {
                print_build_summary(&report);
            }
            Ok(0)
        }
        Command::Plan { image } => {
            let plan = pipeline::load_plan(image)?;
            let cache = cache::Cache::open(&cli.cache.clone().unwrap_or_else(cache::Cache::default_dir))?;
            if cli.json {
                let layers: Vec<_> = plan
                    .layers
                    .iter()
                    .map(|l| serde_json::json!({"name": l.name, "key": l.key, "cached": cache.has(&l.key), "packages": l.packages}))
                    .collect();
                let stacks: Vec<_> = plan.layers.iter().filter_map(|l| l.layer.stack.as_ref()).collect();
                print_json(&serde_json::json!({"image": plan.image, "base": plan.base, "layers": layers, "containers": container::planned(&plan, &cache), "stacks": stacks}))?;
            } else {
                print!("{}", plan_text(&plan, |k| cache.has(k)));
                let containers = container::planned(&plan, &cache);
                if !containers.is_empty() {
                    println!("containers:");
                    for c in containers {
                        println!("  {:<20} {:<16} {}\n  {:<20} {}", c.name, c.layer, c.source, "", c.digest.as_deref().unwrap_or("digest known once built"));
                    }
                }
                for l in &plan.layers {
                    if let Some(s) = &l.layer.stack {
                        println!("stack {} ({}):", s.name, s.file.display());
                        for svc in &s.services {
                            let deps = if svc.depends_on.is_empty() { String::new() } else { format!(" after {}", svc.depends_on.join(", ")) };
                            let ports: Vec<String> = svc.ports.iter().map(u16::to_string).collect();
                            println!("  {} → {}{}{}", container::units::service_unit(&s.name, &svc.name), svc.image, if ports.is_empty() { String::new() } else { format!(" ports {}", ports.join(",")) }, deps);
                        }
                    }
                }
            }
            Ok(0)
        }
        Command::Test { scenario, image, work } => {
            let ctx = ctx(&cli)?;
            let work_given = work.clone();
            let work = match work {
                Some(w) => w.clone(),
                None => {
                    let name = scenario.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                    PathBuf::from("/var/tmp").join(format!("outpost-test-{name}-{}", std::process::id()))
                }
            };
            let rt = tokio::runtime::Runtime::new()?;
            let work_dir = work.clone();
            let report = rt.block_on(pipeline::test(&ctx, scenario, image.as_deref(), &work))?;
            if !cli.json && !report.description.is_empty() {
                println!("{}: {}", report.scenario, report.description);
            }
            if cli.json {
                print_json(&report)?;
            } else {
                for p in &report.passed {
                    println!("ok    {p}");
                }
                for f in &report.failed {
                    println!("FAIL  {f}");
                }
            }
            if report.failed.is_empty() {
                if work_given.is_none() {
                    // The disks of a passed test are not worth their gigabyte; the log stays.
                    for d in ["image", "personalized.raw", "personalized.iso"] {
                        let p = work_dir.join(d);
                        if p.is_dir() {
                            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
                        } else if p.exists() {
                            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
                        }
                    }
                }
                if !cli.json {
                    println!("{} passed, 0 failed ({}, console log {})", report.passed.len(), report.accel, report.console_log.display());
                }
                Ok(0)
            } else {
                eprintln!("--- last lines of the console ({}) ---\n{}", report.console_log.display(), vmtest::console_tail(&report.console_log, 40));
                println!("{} passed, {} failed", report.passed.len(), report.failed.len());
                Ok(1)
            }
        }
        Command::Personalize { image, site, out } => {
            let started = std::time::Instant::now();
            site::personalize(image, site, out, pipeline::source_date_epoch()?)?;
            let secs = started.elapsed().as_secs_f64();
            if cli.json {
                print_json(&serde_json::json!({"out": out, "sha256": output::sha256_file(out)?, "seconds": secs}))?;
            } else {
                println!("wrote {} with the site {} in {secs:.2} s", out.display(), site.display());
            }
            Ok(0)
        }
        Command::Flash { image, device, bmap, no_bmap, force, max_size } => {
            let max_size = spec::Size::parse(max_size).map_err(|e| anyhow::anyhow!("--max-size: {e}"))?.0;
            let opts = flash::Options { bmap: bmap.clone(), no_bmap: *no_bmap, force: *force, max_size };
            let r = flash::flash(image, device, &opts, !cli.json && std::io::stderr().is_terminal())?;
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
        Command::Installer { command: cli::InstallerCommand::Run } => install::run::run(),
        Command::Seed { command } => {
            match command {
                SeedCommand::Apply { device } => site::apply(Path::new("/"), device.as_deref())?,
                SeedCommand::CheckNetwork { timeout } => site::check_network(Path::new("/"), std::time::Duration::from_secs(*timeout))?,
            }
            Ok(0)
        }
        Command::Decrypt { image, key_file, out } => {
            crypt::image::decrypt(image, key_file, out)?;
            println!("wrote {}", out.display());
            Ok(0)
        }
        Command::Data { command } => {
            match command {
                DataCommand::Open => crypt::data::open(Path::new("/"))?,
                DataCommand::ForgetRecoveryKey => crypt::data::forget_recovery_key()?,
            }
            Ok(0)
        }
        Command::Root { command } => {
            match command {
                RootCommand::Verify { device } => power::verify_root(device)?,
            }
            Ok(0)
        }
        Command::Power { command } => {
            match command {
                PowerCommand::AcLoss { sysfs } => {
                    power::firmware::run(Path::new("/"), sysfs)?;
                }
            }
            Ok(0)
        }
        Command::Stack { command } => {
            match command {
                StackCommand::WaitHealthy { container, timeout } => container::wait_healthy(container, std::time::Duration::from_secs(*timeout))?,
            }
            Ok(0)
        }
        Command::Cache { command } => {
            let dir = cli.cache.clone().unwrap_or_else(cache::Cache::default_dir);
            let cache = cache::Cache::open(&dir)?;
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
                        let plan = pipeline::load_plan(i)?;
                        keep.extend(plan.layers.iter().map(|l| l.key.clone()));
                        keep_sources.extend(container::source_keys(&plan)?);
                    }
                    let report = cache.gc(&keep)?;
                    let (images_removed, images_freed) = container::gc(&cache, &keep_sources)?;
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
        Command::Doctor => {
            let all: Vec<&str> = tool::HOST_TOOLS.iter().map(|t| t.program).collect();
            let missing = tool::missing(&all);
            for t in tool::HOST_TOOLS {
                let ok = !missing.contains(t);
                println!("{} {:<34} {:<16} {}", if ok { "ok     " } else { "MISSING" }, t.program, t.package, t.why);
            }
            if missing.is_empty() {
                println!("all host tools are installed");
                Ok(0)
            } else {
                let mut pkgs: Vec<&str> = missing.iter().map(|t| t.package).collect();
                pkgs.dedup();
                println!("install them with: sudo apt-get install {}", pkgs.join(" "));
                Ok(1)
            }
        }
    }
}

fn default_images() -> Result<Vec<PathBuf>> {
    let dir = Path::new("images");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {} (name the images whose layers to keep)", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    out.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    out.sort();
    Ok(out)
}

fn plan_text(plan: &plan::BuildPlan, cached: impl Fn(&str) -> bool) -> String {
    let b = &plan.base;
    let mut s = format!(
        "image {}: {}\n  {} {} {} (archive: {})\n",
        plan.image,
        plan.spec.description,
        b.distro,
        b.suite,
        b.architecture,
        b.mirror.as_deref().unwrap_or("host apt sources or mmdebstrap default")
    );
    for (i, l) in plan.layers.iter().enumerate() {
        s.push_str(&format!(
            "{:>2}. {:<20} {}  {:<8}  {}\n",
            i + 1,
            l.name,
            &l.key[..16],
            if cached(&l.key) { "cached" } else { "to build" },
            l.layer.description
        ));
        if !l.packages.is_empty() {
            s.push_str(&format!("      packages: {}\n", l.packages.join(" ")));
        }
    }
    s
}

fn print_build_summary(r: &pipeline::BuildReport) {
    println!("built {} into {}", r.image, r.out_dir.display());
    println!("layers: {} built, {} reused from the cache", r.built_layers.len(), r.reused_layers.len());
    for (stage, secs) in &r.stages {
        println!("  {stage:<36} {secs:>7.1} s");
    }
    println!("  {:<36} {:>7.1} s", "total", r.stages.iter().map(|s| s.1).sum::<f64>());
    for o in &r.outputs {
        println!("  {:<36} {:>10}  sha256 {}", o.file, human(o.size), &o.sha256[..16]);
    }
    for w in &r.warnings {
        println!("WARNING: {w}");
    }
}
