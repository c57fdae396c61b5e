//! One test per `qemu-tests/*.toml`: the scenario's image built once per run (shared), booted
//! under QEMU by `outpost test`, every check from inside the guest; then what the scenario's
//! file cannot say itself (a power-cut series' figures, the image left unchanged by the boots).

use std::path::{Path, PathBuf};

use crate::support::{self, Built};

#[derive(Clone)]
pub struct Scenario {
    pub stem: String,
    pub path: PathBuf,
    /// `images/NAME.toml`'s NAME.
    pub image: String,
    pub installs: bool,
    /// Runs only where this variable is set, and why: an archive CI cannot count on (the Ubuntu
    /// archive), or a series too long for CI's budget (a `just` recipe runs it).
    pub needs: Option<(&'static str, String)>,
}

/// Scenarios too long for CI's 2-core TCG budget, and what they cost there: run by
/// `just long-scenarios`. What they check that no CI scenario does is said here.
const LONG: &[(&str, &str)] = &[(
    "update-rollback",
    "19 minutes of boots under TCG (a release that never becomes healthy is tried three times, then rolled back; secure-boot checks the update path and `just update-cuts` cuts during its write)",
)];

/// Every scenario file, in name order.
pub fn all() -> Vec<Scenario> {
    let dir = support::project().join("qemu-tests");
    let mut paths: Vec<PathBuf> = fs_err::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = fs_err::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let v: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
            let image_rel = v["image"].as_str().unwrap_or_else(|| panic!("{}: no `image`", path.display()));
            let image = Path::new(image_rel).file_stem().expect("an image file name").to_string_lossy().into_owned();
            let image_text = fs_err::read_to_string(dir.join(image_rel)).unwrap_or_else(|e| panic!("reading {image_rel}: {e}"));
            let stem = path.file_stem().expect("a file name").to_string_lossy().into_owned();
            let ubuntu = support::is_distro(&image_text, "ubuntu");
            let needs = if ubuntu {
                Some(("OUTPOST_E2E_UBUNTU", "the Ubuntu archive (set OUTPOST_E2E_UBUNTU=1 where it answers)".to_string()))
            } else {
                LONG.iter().find(|(s, _)| *s == stem).map(|(_, why)| ("OUTPOST_E2E_LONG", format!("{why} (OUTPOST_E2E_LONG=1; `just long-scenarios`)")))
            };
            Scenario {
                stem,
                installs: v.get("install").is_some(),
                path,
                image,
                needs,
            }
        })
        .collect()
}

/// Posts `None` for the appliance if its test ends before posting what it made.
struct Unposted(Option<&'static str>);

impl Drop for Unposted {
    fn drop(&mut self) {
        if let Some(name) = self.0 {
            support::post_identity(name, None);
        }
    }
}

/// Boots one scenario on its shared image and checks what lies outside the scenario file.
pub fn run(s: &Scenario) {
    // The PACS clinic's secret and certificate, for the registry test's second appliance to
    // differ from.
    let mut unposted = Unposted((s.stem == "pacs-clinic").then_some("pacs-clinic"));
    let built: Built = support::shared(&s.image);
    let (disk, ext) = if s.installs { (built.file("iso"), "iso") } else { (built.file("raw"), "raw") };
    let work = support::run_dir().join(format!("vm-{}", s.stem));
    let report = support::boot(&s.path, &disk, &work);
    let passed = support::passed(&report);
    if let Some(name) = unposted.0.take() {
        support::post_identity(name, Some(support::identity_in(&report)));
    }
    let install_refusal = fs_err::read_to_string(&s.path).unwrap_or_default().contains("expect = \"OUTPOST-INSTALL: failed");
    if install_refusal {
        assert!(passed.iter().any(|p| p.contains("OUTPOST-INSTALL: failed")), "{report:#}");
    } else {
        // `verdict ...`, or `boot N: verdict ...` in a scenario with reboots.
        assert!(passed.iter().any(|p| p.contains("verdict `")), "{report:#}");
    }
    if s.stem == "power-cut" {
        let cuts = support::read_json(&work.join("vm/power-cuts.json"));
        assert_eq!((cuts["records_lost"].as_u64(), cuts["boots_needing_a_human"].as_u64()), (Some(0), Some(0)), "{cuts:#}");
        assert!(cuts["records_acknowledged"].as_u64().unwrap_or(0) > 0, "no record was acknowledged, so none could be lost: {cuts:#}");
    }
    // The guest ran on an overlay: the built disk is what SHA256SUMS says.
    assert_eq!(support::sha(&disk), built.listed_sha(ext), "booting {} changed {}", s.stem, disk.display());
}
