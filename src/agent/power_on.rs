//! Power on after AC loss, from Linux at boot (`outpost power ac-loss`): the BIOS setting through
//! the kernel's firmware-attributes class (Dell, Lenovo, HP drivers), or, when the image opts in,
//! the Intel chipset's AFTERG3_EN bit. Profiles (`crate::format::firmware`) are TOML files in the
//! project's `firmware/`, installed into the image; every path is read under a sysfs root, so tests run against fake
//! trees.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::format::firmware::{AttributeProfile, POLICY_PATH, PROFILES_PATH, PchProfile, Profile, STATUS_PATH, load_profiles};

use crate::spec::PowerPolicy;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Outcome {
    /// The setting was changed (firmware settings take effect at the next reboot).
    Set { profile: String, setting: String, from: String, to: String },
    AlreadySet { profile: String, setting: String, value: String },
    /// A profile matched but the setting could not be written (a BIOS password, a value the
    /// firmware does not offer).
    Failed { profile: String, setting: String, reason: String },
    /// Nothing matched this machine: the BIOS must be set by hand.
    NoProfile { machine: String },
}

impl Outcome {
    pub fn message(&self) -> String {
        match self {
            Outcome::Set { profile, setting, from, to } => {
                format!("power on after AC loss: set by profile {profile}: {setting} `{from}` -> `{to}` (takes effect from the next boot)")
            }
            Outcome::AlreadySet { profile, setting, value } => format!("power on after AC loss: on (profile {profile}: {setting} = `{value}`)"),
            Outcome::Failed { profile, setting, reason } => {
                format!("power on after AC loss: NOT set: profile {profile} found {setting} but {reason}; set it in the BIOS setup (docs/power.md)")
            }
            Outcome::NoProfile { machine } => format!(
                "power on after AC loss: no firmware profile for this machine ({machine}); set it in the BIOS setup, see the checklist in docs/power.md"
            ),
        }
    }
}

fn read_trim(p: &Path) -> Option<String> {
    fs_err::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// Tries the profiles in order against the machine under `sysfs` (`/sys` on the device) and
/// returns what was done: the first profile that applies decides.
pub fn apply(sysfs: &Path, profiles: &[(String, Profile)], policy: &PowerPolicy) -> Outcome {
    let dmi = sysfs.join("class/dmi/id");
    let sys_vendor = read_trim(&dmi.join("sys_vendor")).unwrap_or_default();
    for (name, profile) in profiles {
        let outcome = match profile {
            Profile::Attribute(a) if a.sys_vendor.iter().any(|v| v == &sys_vendor) => apply_attribute(sysfs, &format!("{name} ({})", a.vendor), a),
            Profile::Pch(p) if policy.intel_pch_after_g3 => apply_pch(sysfs, &format!("{name} ({})", p.vendor), p),
            _ => None,
        };
        if let Some(o) = outcome {
            return o;
        }
    }
    let product = read_trim(&dmi.join("product_name")).unwrap_or_default();
    let machine = format!("{} {}", if sys_vendor.is_empty() { "unknown vendor" } else { &sys_vendor }, product).trim().to_string();
    Outcome::NoProfile { machine }
}

fn apply_attribute(sysfs: &Path, name: &str, a: &AttributeProfile) -> Option<Outcome> {
    let attrs = sysfs.join("class/firmware-attributes").join(&a.driver).join("attributes");
    let (setting, dir) = a.attributes.iter().map(|n| (n.clone(), attrs.join(n))).find(|(_, d)| d.join("current_value").exists())?;
    let current = read_trim(&dir.join("current_value")).unwrap_or_default();
    let possible: Vec<String> = read_trim(&dir.join("possible_values")).unwrap_or_default().split(';').map(|v| v.trim().to_string()).collect();
    let profile = name.to_string();
    if a.values.iter().any(|v| v == &current) {
        return Some(Outcome::AlreadySet { profile, setting, value: current });
    }
    let Some(to) = a.values.iter().find(|v| possible.contains(v)) else {
        let reason = format!("the firmware offers none of {:?} (it offers {:?})", a.values, possible);
        return Some(Outcome::Failed { profile, setting, reason });
    };
    match fs_err::write(dir.join("current_value"), format!("{to}\n")) {
        Ok(()) => Some(Outcome::Set { profile, setting, from: current, to: to.clone() }),
        Err(e) => Some(Outcome::Failed { profile, setting, reason: format!("writing it failed ({e}; a BIOS administrator password blocks changes)") }),
    }
}

fn apply_pch(sysfs: &Path, name: &str, p: &PchProfile) -> Option<Outcome> {
    let dev = sysfs.join("bus/pci/devices").join(&p.pci_device);
    let vendor = read_trim(&dev.join("vendor"))?;
    let device = read_trim(&dev.join("device"))?;
    let device = device.trim_start_matches("0x").to_lowercase();
    if vendor != "0x8086" || !p.device_ids.iter().any(|d| d.to_lowercase() == device) {
        return None;
    }
    let setting = format!("{} {}:{device} register {:#x} bit {}", p.pci_device, vendor.trim_start_matches("0x"), p.register, p.bit);
    let profile = name.to_string();
    let result = (|| -> std::io::Result<Option<(u8, u8)>> {
        let mut f = fs::OpenOptions::new().read(true).write(true).open(dev.join("config"))?;
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(p.register))?;
        f.read_exact(&mut b)?;
        if b[0] & (1 << p.bit) == 0 {
            return Ok(None);
        }
        let new = b[0] & !(1 << p.bit);
        f.seek(SeekFrom::Start(p.register))?;
        f.write_all(&[new])?;
        Ok(Some((b[0], new)))
    })();
    Some(match result {
        Ok(None) => Outcome::AlreadySet { profile, setting, value: "AFTERG3_EN = 0".into() },
        Ok(Some((from, to))) => Outcome::Set { profile, setting, from: format!("{from:#04x}"), to: format!("{to:#04x}") },
        Err(e) => Outcome::Failed { profile, setting, reason: format!("the register could not be changed ({e})") },
    })
}

/// `outpost power ac-loss` at every boot (a BIOS reset, or a flat CMOS battery, loses the
/// setting): apply, say it on the console, keep it in the status file.
pub fn run(root: &Path, sysfs: &Path) -> Result<Outcome> {
    let policy_file = root.join(POLICY_PATH);
    let policy: PowerPolicy = match fs_err::read_to_string(&policy_file) {
        Ok(t) => serde_json::from_str(&t).with_context(|| format!("parsing {}", policy_file.display()))?,
        Err(_) => PowerPolicy::default(),
    };
    let profiles = load_profiles(&root.join(PROFILES_PATH))?;
    let outcome = apply(sysfs, &profiles, &policy);
    super::say(&outcome.message());
    let status = Path::new(STATUS_PATH);
    if let Some(dir) = status.parent() {
        fs_err::create_dir_all(dir)?;
    }
    fs_err::write(status, serde_json::to_string_pretty(&outcome)? + "\n").with_context(|| format!("writing {}", status.display()))?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiles() -> Vec<(String, Profile)> {
        load_profiles(&Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware")).unwrap()
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs_err::create_dir_all(p.parent().unwrap()).unwrap();
        fs_err::write(p, text).unwrap();
    }

    fn dell(sysfs: &Path, current: &str) {
        write(sysfs, "class/dmi/id/sys_vendor", "Dell Inc.\n");
        write(sysfs, "class/dmi/id/product_name", "OptiPlex 3080\n");
        let a = "class/firmware-attributes/dell-wmi-sysman/attributes/AcPwrRcvry";
        write(sysfs, &format!("{a}/current_value"), &format!("{current}\n"));
        write(sysfs, &format!("{a}/possible_values"), "Off;On;Last\n");
    }

    #[test]
    fn the_committed_profiles_load() {
        let p = profiles();
        let names: Vec<&str> = p.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["dell", "hp", "intel-pch", "lenovo"]);
    }

    #[test]
    fn dell_setting_is_switched_on_once() {
        let t = tempfile::tempdir().unwrap();
        dell(t.path(), "Off");
        let o = apply(t.path(), &profiles(), &PowerPolicy::default());
        assert_eq!(o, Outcome::Set { profile: "dell (Dell)".into(), setting: "AcPwrRcvry".into(), from: "Off".into(), to: "On".into() });
        let v = fs_err::read_to_string(t.path().join("class/firmware-attributes/dell-wmi-sysman/attributes/AcPwrRcvry/current_value")).unwrap();
        assert_eq!(v.trim(), "On");
        // The next boot finds it on and writes nothing.
        assert!(matches!(apply(t.path(), &profiles(), &PowerPolicy::default()), Outcome::AlreadySet { .. }));
    }

    #[test]
    fn lenovo_setting_found_by_its_other_name() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "class/dmi/id/sys_vendor", "LENOVO\n");
        let a = "class/firmware-attributes/thinklmi/attributes/After Power Loss";
        write(t.path(), &format!("{a}/current_value"), "Power Off\n");
        write(t.path(), &format!("{a}/possible_values"), "Power On;Power Off;Last State\n");
        let o = apply(t.path(), &profiles(), &PowerPolicy::default());
        assert!(matches!(o, Outcome::Set { .. }), "{o:?}");
        assert_eq!(fs_err::read_to_string(t.path().join(a).join("current_value")).unwrap().trim(), "Power On");
    }

    #[test]
    fn a_value_the_firmware_does_not_offer_is_reported_not_forced() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "class/dmi/id/sys_vendor", "HP\n");
        let a = "class/firmware-attributes/hp-bioscfg/attributes/After Power Loss";
        write(t.path(), &format!("{a}/current_value"), "Power Off\n");
        write(t.path(), &format!("{a}/possible_values"), "Power Off;Previous State\n");
        let o = apply(t.path(), &profiles(), &PowerPolicy::default());
        assert!(matches!(&o, Outcome::Failed { reason, .. } if reason.contains("Previous State")), "{o:?}");
        assert_eq!(fs_err::read_to_string(t.path().join(a).join("current_value")).unwrap().trim(), "Power Off");
        assert!(o.message().contains("BIOS setup"));
    }

    /// A fake ICH9 (QEMU's q35 LPC bridge) with AFTERG3_EN set.
    fn ich9(sysfs: &Path, device: &str) -> std::path::PathBuf {
        write(sysfs, "class/dmi/id/sys_vendor", "QEMU\n");
        let dev = sysfs.join("bus/pci/devices/0000:00:1f.0");
        write(sysfs, "bus/pci/devices/0000:00:1f.0/vendor", "0x8086\n");
        write(sysfs, "bus/pci/devices/0000:00:1f.0/device", &format!("0x{device}\n"));
        let mut config = vec![0u8; 256];
        config[0xa4] = 0x41;
        fs_err::write(dev.join("config"), config).unwrap();
        dev.join("config")
    }

    #[test]
    fn intel_register_only_with_the_opt_in_and_a_listed_chipset() {
        let t = tempfile::tempdir().unwrap();
        let config = ich9(t.path(), "2918");
        let o = apply(t.path(), &profiles(), &PowerPolicy::default());
        assert!(matches!(&o, Outcome::NoProfile { machine } if machine == "QEMU"), "{o:?}");
        assert_eq!(fs_err::read(&config).unwrap()[0xa4], 0x41);
        let opt_in = PowerPolicy { intel_pch_after_g3: true };
        let o = apply(t.path(), &profiles(), &opt_in);
        assert!(matches!(o, Outcome::Set { .. }), "{o:?}");
        let bytes = fs_err::read(&config).unwrap();
        assert_eq!(bytes[0xa4], 0x40, "only bit 0 cleared");
        assert_eq!(bytes.iter().filter(|b| **b != 0).count(), 1, "nothing else written");
        assert!(matches!(apply(t.path(), &profiles(), &opt_in), Outcome::AlreadySet { .. }));

        let t = tempfile::tempdir().unwrap();
        let config = ich9(t.path(), "a382");
        assert!(matches!(apply(t.path(), &profiles(), &opt_in), Outcome::NoProfile { .. }));
        assert_eq!(fs_err::read(&config).unwrap()[0xa4], 0x41, "an unlisted chipset is never written");
    }

    #[test]
    fn a_profile_with_neither_kind_is_refused_naming_the_file() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "acme.toml", "vendor = \"Acme\"\n");
        let e = load_profiles(t.path()).unwrap_err().to_string();
        assert!(e.contains("acme.toml") && e.contains("pci-device"), "{e}");
    }
}
