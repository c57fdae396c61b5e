//! `outpost test SCENARIO...`: builds each scenario's image once through the cache (unless
//! `--image` is given), personalizes a copy where the scenario names a site, boots it under QEMU
//! (`vmtest`) and prints every check. Several scenarios share each image's build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::print_json;
use crate::cli::Cli;
use crate::spec::Scenario;
use crate::tool;

pub fn run(cli: &Cli, paths: &[PathBuf], image: Option<&Path>, work: Option<&Path>, keys: Option<&Path>, ca: Option<&Path>, guest: crate::vmtest::Guest) -> Result<i32> {
    let mut ctx = super::ctx(cli, keys)?;
    let mut scenarios = paths.iter().map(|p| Scenario::load(p)).collect::<Result<Vec<_>, _>>()?;
    let ca = match ca {
        Some(dir) => Some(crate::output::ca::Ca::load(dir)?),
        None => None,
    };
    for (s, path) in scenarios.iter_mut().zip(paths) {
        if s.deployment_ca {
            let ca = ca.as_ref().with_context(|| format!("{}: `deployment-ca = true` needs the deployment CA: give --ca DIR or OUTPOST_CA (make one with `outpost ca init DIR`)", path.display()))?;
            s.ca_cert = Some(ca.cert.clone());
        }
    }
    preflight(&scenarios)?;
    let several = scenarios.len() > 1;
    let base = match work {
        Some(w) => w.to_path_buf(),
        None => {
            let name = if several { "several".to_string() } else { stem(&paths[0]) };
            PathBuf::from("/var/tmp").join(format!("outpost-test-{name}-{}", std::process::id()))
        }
    };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    // Each image definition is built once, into `image-NAME` beside the scenarios' directories.
    let mut built: BTreeMap<PathBuf, (PathBuf, crate::pipeline::BuildReport)> = BTreeMap::new();
    let mut reports = Vec::new();
    for (path, scenario) in paths.iter().zip(&scenarios) {
        let dir = if several { base.join(stem(path)) } else { base.clone() };
        let disk = match image {
            Some(p) => p.to_path_buf(),
            None => {
                let key = scenario.image.canonicalize().with_context(|| format!("reading {}", scenario.image.display()))?;
                if !built.contains_key(&key) {
                    let name = stem(&scenario.image);
                    let out = if several { base.join(format!("image-{name}")) } else { base.join("image") };
                    let report = crate::pipeline::build(&ctx, &scenario.image, &out)?;
                    built.insert(key.clone(), (out, report));
                }
                let (out, report) = &built[&key];
                out.join(bootable(scenario, report)?)
            }
        };
        let disk = match &scenario.site {
            Some(site) => {
                let out = dir.join(if scenario.install.is_some() { "personalized.iso" } else { "personalized.raw" });
                fs_err::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                ctx.progress.stage("personalizing", || crate::output::personalize::personalize(&disk, site, &out, ctx.epoch, ca.as_ref().filter(|_| scenario.deployment_ca)))?;
                out
            }
            None => disk,
        };
        // The update a scenario plugs in: built through the same cache and keys, as a delta
        // from the build the scenario boots (with --image, the build whose output directory
        // holds that disk; a full bundle when there is none).
        let update = match &scenario.update_image {
            Some(u) => {
                let out = dir.join("update-image");
                let from = match image {
                    Some(p) => p.parent().filter(|d| d.join("manifest.json").is_file()).map(Path::to_path_buf),
                    None => scenario.image.canonicalize().ok().and_then(|k| built.get(&k).map(|(o, _)| o.clone())),
                };
                ctx.bundle = Some(crate::pipeline::BundleRequest { from });
                let report = crate::pipeline::build(&ctx, u, &out);
                ctx.bundle = None;
                let bundle = report?.bundle.context("the update build wrote no bundle")?;
                Some(bundle.file)
            }
            None => None,
        };
        let report = rt.block_on(ctx.progress.stage_async("booting and checking", crate::vmtest::run(scenario, &disk, update.as_deref(), &dir.join("vm"), guest)))?;
        if !cli.json {
            print_report(&report);
        }
        if report.failed.is_empty() && work.is_none() {
            // The disks of a passed test are not worth their gigabyte; the log stays.
            for d in ["personalized.raw", "personalized.iso", "update-image"] {
                remove(&dir.join(d))?;
            }
        }
        reports.push(report);
    }
    let failed = reports.iter().filter(|r| !r.failed.is_empty()).count();
    if failed == 0 && work.is_none() {
        for (out, _) in built.values() {
            remove(out)?;
        }
    }
    if cli.json {
        if several {
            print_json(&serde_json::json!({ "scenarios": reports }))?;
        } else {
            print_json(&reports[0])?;
        }
    } else if several {
        println!("{} scenarios passed, {failed} failed", reports.len() - failed);
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap_or_default().to_string_lossy().into_owned()
}

/// Every host tool the scenarios need, checked (or installed) before anything is built.
fn preflight(scenarios: &[Scenario]) -> Result<()> {
    let mut need = vec!["qemu-system-x86_64", "qemu-img", "/usr/share/OVMF/OVMF_CODE_4M.fd"];
    for s in scenarios {
        if s.uses_ssh() {
            need.push("ssh");
        }
        if s.backup_server {
            need.push(crate::vmtest::SSHD);
        }
        if s.tpm {
            need.push("swtpm");
        }
        if s.boots.iter().any(|b| !b.disk.is_empty()) {
            need.push("cryptsetup");
        }
        if s.boots.iter().any(|b| b.corrupt_root || b.corrupt_root_start.is_some() || b.thief.is_some()) {
            need.push("qemu-io");
        }
        if s.boots.iter().any(|b| b.update) {
            need.extend(["mkfs.fat", "mcopy"]);
        }
        if s.boots.iter().any(|b| b.thief.is_some()) {
            need.push("objcopy");
        }
        if s.secure_boot {
            need.push("/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd");
        }
        if s.boots.iter().any(|b| b.http.iter().any(|h| h.tls_name.is_some())) {
            need.extend(["curl", "openssl"]);
        }
    }
    tool::preflight(&need)
}

/// The output a scenario boots: the installer ISO for an install, else the disk.
fn bootable(scenario: &Scenario, report: &crate::pipeline::BuildReport) -> Result<String> {
    let file = if scenario.install.is_some() {
        report.outputs.iter().find(|o| o.file.ends_with(".iso")).context("the scenario installs from the ISO, but the image has no `iso` output")?
    } else {
        report.outputs.iter().find(|o| o.file.ends_with(".qcow2") || o.file.ends_with(".raw")).context("the image has no raw or qcow2 output to boot")?
    };
    Ok(file.file.clone())
}

fn print_report(report: &crate::vmtest::Report) {
    if !report.description.is_empty() {
        println!("{}: {}", report.scenario, report.description);
    }
    for p in &report.passed {
        println!("ok    {p}");
    }
    for f in &report.failed {
        println!("FAIL  {f}");
    }
    for t in &report.timings {
        println!("time  {t}");
    }
    if report.failed.is_empty() {
        println!("{} passed, 0 failed ({}, console log {})", report.passed.len(), report.accel, report.console_log.display());
    } else {
        eprintln!("--- last lines of the console ({}) ---\n{}", report.console_log.display(), crate::vmtest::console_tail(&report.console_log, 40));
        println!("{} passed, {} failed", report.passed.len(), report.failed.len());
    }
}

fn remove(p: &Path) -> Result<()> {
    if p.is_dir() {
        fs_err::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))
    } else if p.exists() {
        fs_err::remove_file(p).with_context(|| format!("removing {}", p.display()))
    } else {
        Ok(())
    }
}
