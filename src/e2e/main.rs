//! End to end through the `outpost` binary, as a user would check it: every image built once
//! per run into one cache, one test per QEMU scenario (`qemu-tests/*.toml`), one
//! reproducibility test per image, and the registry round trip. Minutes, not seconds, so they
//! are ignored by a plain `cargo test` and run by the README's `cargo test --release --
//! --include-ignored`; one alone with `cargo test --release --test e2e -- --include-ignored
//! scenario::encryption`. At the end a table gives each test's time, and how much of it was
//! spent waiting for a shared build or for a guest slot.

mod dicom_fixture;
mod images;
mod registry;
mod scenarios;
mod support;

use std::sync::Mutex;
use std::time::Instant;

use libtest_mimic::{Arguments, Failed, Trial};

struct Timing {
    name: String,
    seconds: f64,
    waited: f64,
    ok: bool,
}

static TIMES: Mutex<Vec<Timing>> = Mutex::new(Vec::new());

/// A test that panics on failure, timed; ignored unless asked for (`--include-ignored`).
fn slow(name: &str, f: impl FnOnce() + Send + std::panic::UnwindSafe + 'static) -> Trial {
    let owned = name.to_string();
    Trial::test(name, move || {
        support::reset_waited();
        let started = Instant::now();
        let r = std::panic::catch_unwind(f);
        let t = Timing { name: owned, seconds: started.elapsed().as_secs_f64(), waited: support::waited(), ok: r.is_ok() };
        TIMES.lock().unwrap_or_else(|e| e.into_inner()).push(t);
        r.map_err(|e| Failed::from(support::panic_text(&e)))
    })
    .with_ignored_flag(true)
}

fn dicom_fixture_is_the_generated_file() -> Result<(), Failed> {
    let path = support::project().join("qemu-tests/files/outpost-test.dcm");
    let made = dicom_fixture::dicom();
    if std::env::var_os("OUTPOST_REGENERATE").is_some() {
        fs_err::write(&path, &made).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let on_disk = fs_err::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    if on_disk != made {
        return Err(format!("{} is not what src/e2e/dicom_fixture.rs makes (OUTPOST_REGENERATE=1 rewrites it)", path.display()).into());
    }
    // The preamble's magic, and every element of the data set padded to an even length.
    if &made[128..132] != b"DICM" || !made.len().is_multiple_of(2) {
        return Err("the DICOM fixture is malformed".into());
    }
    let _ = (dicom_fixture::STUDY_UID, dicom_fixture::SERIES_UID, dicom_fixture::PATIENT_ID, dicom_fixture::INSTANCE_ID);
    Ok(())
}

fn main() {
    let mut args = Arguments::from_args();
    // One build at a time, two guests at most (support.rs); three threads keep a build beside
    // two guests busy, in the order below: a guest always has its image ready. (With two
    // threads a build held one of them for minutes, and one guest ran alone beside it: a run
    // took longer than with one guest at a time.)
    args.test_threads.get_or_insert(3);
    let scenarios = scenarios::all();
    let mut not_run = Vec::new();
    let scenario = |stem: &str| -> Option<Trial> {
        let s = scenarios.iter().find(|s| s.stem == stem)?.clone();
        Some(slow(&format!("scenario::{stem}"), move || scenarios::run(&s)))
    };
    // The order the threads take them in: builds beside boots, and the longest chain (the PACS
    // build, its 3-boot scenario, then the registry test's boot, which needs what that scenario
    // left) started early, so that short scenarios fill the end of the run, two at a time. The
    // PACS build comes right after the Debian one it builds on, before the Debian image's
    // second builds (2 minutes sooner on that chain).
    let order = [
        "scenario::debian-base",
        "scenario::pacs-clinic",
        "scenario::encryption",
        "images::debian-base",
        "images::pacs-clinic",
        "images::clinic-pc",
        "scenario::power-cut",
        "registry::pacs-pulled-by-digest",
        "scenario::secure-boot",
        "scenario::usb-key",
        "scenario::corrupt-root",
        "personalize::raw",
        "scenario::site-static",
        "scenario::site-broken",
        "scenario::install",
        "scenario::install-bios",
        "scenario::install-small-disk",
    ];
    let mut trials = Vec::new();
    for name in order {
        let t = match name {
            "images::debian-base" => slow(name, images::debian_base),
            "images::pacs-clinic" => slow(name, images::pacs_clinic),
            "images::clinic-pc" => slow(name, images::clinic_pc),
            "personalize::raw" => slow(name, images::personalize_raw),
            "registry::pacs-pulled-by-digest" => slow(name, registry::pacs_pulled_by_digest),
            _ => scenario(name.trim_start_matches("scenario::")).unwrap_or_else(|| panic!("{name}: no such scenario file in qemu-tests/")),
        };
        trials.push(t);
    }
    // Every scenario file has its test: those not in the order above run last.
    for s in &scenarios {
        let name = format!("scenario::{}", s.stem);
        if order.contains(&name.as_str()) {
            continue;
        }
        match &s.needs {
            Some((var, why)) if std::env::var_os(var).is_none() => not_run.push(format!("{name}: needs {why}")),
            _ => trials.push(scenario(&s.stem).expect("listed")),
        }
    }
    trials.push(Trial::test("dicom_fixture_is_the_generated_file", dicom_fixture_is_the_generated_file));
    // The registry test compares its appliance with the PACS clinic's when that test runs too.
    if trials.iter().any(|t| t.name() == "scenario::pacs-clinic" && !args.is_filtered_out(t)) {
        support::expect_identity("pacs-clinic");
    }
    for n in &not_run {
        eprintln!("not run: {n}");
    }
    // Every host tool first, in one install: installing QEMU's system emulator can replace
    // another package a build is using at that moment (a backported qemu-utils on Debian 12).
    if (args.ignored || args.include_ignored) && !args.list {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost")).args(["doctor", "--install"]).output().expect("running outpost doctor");
        if !out.status.success() {
            eprintln!("outpost doctor --install failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
    }
    let started = Instant::now();
    let conclusion = libtest_mimic::run(&args, trials);
    let times = TIMES.lock().unwrap_or_else(|e| e.into_inner());
    if !times.is_empty() {
        println!("\ne2e times (wall-clock seconds; of which waiting for a shared build or the guest slot):");
        for t in times.iter() {
            println!("  {:<40} {:>7.1} s  (waited {:>6.1} s)  {}", t.name, t.seconds, t.waited, if t.ok { "ok" } else { "FAILED" });
        }
        for n in &not_run {
            println!("  {n}: not run");
        }
        println!("  {:<40} {:>7.1} s  (run directory {})", "all", started.elapsed().as_secs_f64(), support::run_dir().display());
    }
    conclusion.exit();
}
