//! End to end, as a user would check it: build the Debian test image twice from cold caches and
//! once warm after editing the top layer, compare bytes, validate the disk with qemu-img and
//! sgdisk, and boot it under QEMU with the scenario's assertions. Minutes, not seconds: run with
//! `cargo test --release -- --ignored` (the README's test command includes them).

use std::path::{Path, PathBuf};

use crate::pipeline::{self, BuildReport, Ctx};
use crate::tool::Tool;

const EPOCH: &str = "1700000000";

fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ctx(cache: &Path) -> Ctx {
    Ctx {
        cache: crate::cache::Cache::open(cache).unwrap(),
        epoch: EPOCH.parse().unwrap(),
        progress: crate::progress::Progress::new(true),
    }
}

fn build(cache: &Path, image: &Path, out: &Path) -> BuildReport {
    match pipeline::build(&ctx(cache), image, out) {
        Ok(r) => r,
        Err(e) => panic!("building {}: {e:#}", image.display()),
    }
}

fn sha(p: &Path) -> String {
    crate::output::sha256_file(p).unwrap()
}

/// A copy of the project's definitions, to edit without touching the checkout.
fn copy_project(to: &Path) {
    for dir in ["layers", "images", "qemu-tests"] {
        Tool::new("cp").args(["-a"]).arg(project_root().join(dir)).arg(to).run().unwrap();
    }
}

#[test]
#[ignore = "builds Debian images with mmdebstrap and boots one under QEMU: minutes"]
fn debian_base_is_reproducible_cached_and_boots() {
    // SAFETY: the only test that reads SOURCE_DATE_EPOCH sets it first; tools inherit it.
    unsafe { std::env::set_var("SOURCE_DATE_EPOCH", EPOCH) };
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let t = tmp.path();
    let image = project_root().join("images/debian-base.toml");

    // Two cold builds, separate caches and output directories.
    let a = build(&t.join("cache-a"), &image, &t.join("out-a"));
    assert_eq!(a.built_layers, ["base", "appliance", "vm-guest", "status-page"]);
    for f in ["debian-base.raw", "debian-base.qcow2", "manifest.json", "SHA256SUMS"] {
        assert!(t.join("out-a").join(f).is_file(), "{f} missing");
    }
    let leftovers: Vec<_> = std::fs::read_dir(t.join("out-a")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 4, "unexpected files in the output: {leftovers:?}");
    let b = build(&t.join("cache-b"), &image, &t.join("out-b"));
    assert_eq!(b.built_layers.len(), 4);
    let raw_a = t.join("out-a/debian-base.raw");
    assert_eq!(sha(&raw_a), sha(&t.join("out-b/debian-base.raw")), "two cold builds differ");
    assert_eq!(sha(&t.join("out-a/debian-base.qcow2")), sha(&t.join("out-b/debian-base.qcow2")));

    // Fully cached: the root is laid down from the cache, and still the same bytes.
    let c = build(&t.join("cache-a"), &image, &t.join("out-c"));
    assert!(c.built_layers.is_empty(), "{:?}", c.built_layers);
    assert_eq!(sha(&raw_a), sha(&t.join("out-c/debian-base.raw")), "a cached build differs from a cold one");

    // SHA256SUMS and the manifest agree with the files.
    let sums = std::fs::read_to_string(t.join("out-a/SHA256SUMS")).unwrap();
    assert!(sums.contains(&format!("{}  debian-base.raw", sha(&raw_a))), "{sums}");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(t.join("out-a/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["suite"], "bookworm");
    let pkgs = manifest["packages"].as_array().unwrap();
    assert!(pkgs.iter().any(|p| p["name"] == "systemd"), "systemd not in the manifest");
    assert!(pkgs.iter().any(|p| p["name"] == "qemu-guest-agent"), "a later layer's package is missing");

    // The disk is valid for the tools users check it with.
    let check = Tool::new("qemu-img").args(["check"]).arg(t.join("out-a/debian-base.qcow2")).output().unwrap();
    assert!(check.contains("No errors were found"), "{check}");
    crate::tool::preflight(&["sgdisk"]).ok();
    if crate::tool::which("sgdisk").is_some() {
        let v = Tool::new("sgdisk").arg("-v").arg(&raw_a).output().unwrap();
        assert!(v.contains("No problems found"), "{v}");
    }

    // Edit one file of the top layer: only that layer is rebuilt.
    let proj = t.join("project");
    std::fs::create_dir(&proj).unwrap();
    copy_project(&proj);
    let page = proj.join("layers/status-page/files/usr/lib/outpost/status-page.tera");
    let text = std::fs::read_to_string(&page).unwrap().replace("<h1>", "<h1 class=\"edited\">");
    std::fs::write(&page, text).unwrap();
    let d = build(&t.join("cache-a"), &proj.join("images/debian-base.toml"), &t.join("out-d"));
    assert_eq!(d.built_layers, ["status-page"]);
    assert_eq!(d.reused_layers, ["base", "appliance", "vm-guest"]);
    assert_ne!(sha(&raw_a), sha(&t.join("out-d/debian-base.raw")));

    // Boot the edited image: the verdict, guest commands and the status page (edited) answer.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let scenario = proj.join("qemu-tests/debian-base.toml");
    let qcow = t.join("out-d/debian-base.qcow2");
    let report = rt.block_on(pipeline::test(&ctx(&t.join("cache-a")), &scenario, Some(&qcow), &t.join("vm"))).unwrap();
    if !report.failed.is_empty() {
        panic!(
            "boot test failed: {:#?}\nconsole ({}):\n{}",
            report.failed,
            report.console_log.display(),
            crate::vmtest::console_tail(&report.console_log, 60)
        );
    }
    assert!(report.passed.iter().any(|p| p.starts_with("verdict")), "{:?}", report.passed);
    assert!(report.passed.iter().any(|p| p.starts_with("GET :80/")), "{:?}", report.passed);
    // The image was booted through an overlay and is unchanged.
    assert_eq!(sha(&qcow), d.outputs.iter().find(|o| o.file.ends_with(".qcow2")).unwrap().sha256);
}
