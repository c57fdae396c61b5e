//! `outpost plan IMAGE`: the layers in order with their cache keys, the containers and stacks;
//! builds nothing.

use std::path::Path;

use anyhow::Result;

use super::print_json;
use crate::cli::Cli;

pub fn run(cli: &Cli, image: &Path) -> Result<i32> {
    let plan = crate::pipeline::load_plan(image)?;
    let cache = super::open_cache(cli)?;
    if cli.json {
        let layers: Vec<_> = plan
            .layers
            .iter()
            .map(|l| serde_json::json!({"name": l.name, "key": l.key, "cached": cache.has(&l.key), "packages": l.packages}))
            .collect();
        let stacks: Vec<_> = plan.layers.iter().filter_map(|l| l.layer.stack.as_ref()).collect();
        print_json(&serde_json::json!({"image": plan.image, "release": plan.spec.release, "base": plan.base, "layers": layers, "containers": crate::container::planned(&plan, &cache), "stacks": stacks}))?;
    } else {
        print!("{}", plan_text(&plan, |k| cache.has(k)));
        let containers = crate::container::planned(&plan, &cache);
        if !containers.is_empty() {
            println!("containers:");
            for c in containers {
                println!("  {:<20} {:<16} {}\n  {:<20} {}", c.name, c.layer, c.source, "", c.digest.as_deref().unwrap_or("digest known once built"));
            }
        }
        for l in &plan.layers {
            if let Some(s) = &l.layer.stack {
                println!("stack {} ({}):", s.name, s.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" + "));
                if !s.secrets.is_empty() {
                    println!("  secrets made on each device: {}", s.secrets.keys().cloned().collect::<Vec<_>>().join(", "));
                }
                for d in &s.backup {
                    println!("  backed up as a dump: {}{}", d.service, d.volume.as_ref().map(|v| format!(" (in place of volume {v})")).unwrap_or_default());
                }
                for svc in &s.services {
                    let deps = if svc.depends_on.is_empty() { String::new() } else { format!(" after {}", svc.depends_on.join(", ")) };
                    let ports: Vec<String> = svc.ports.iter().map(|(h, c)| if h == c { h.to_string() } else { format!("{h}:{c}") }).collect();
                    println!("  {} → {}{}{}", crate::container::units::service_unit(&s.name, &svc.name), svc.image, if ports.is_empty() { String::new() } else { format!(" ports {}", ports.join(",")) }, deps);
                }
            }
        }
    }
    Ok(0)
}

fn plan_text(plan: &crate::plan::BuildPlan, cached: impl Fn(&str) -> bool) -> String {
    let b = &plan.base;
    let mut s = format!(
        "image {} release {}: {}\n  {} {} {} (archive: {})\n",
        plan.image,
        plan.spec.release,
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
