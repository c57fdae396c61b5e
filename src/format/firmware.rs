//! Firmware power-on profiles (`firmware/*.toml`): checked and installed into the image by the
//! build, read by `agent::power_on` at every boot.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// In the image: the image's `[power]` table and the profiles.
pub const POLICY_PATH: &str = "usr/lib/outpost/power.json";
pub const PROFILES_PATH: &str = "usr/lib/outpost/firmware";
/// What the last boot did, for people and the status page.
pub const STATUS_PATH: &str = "/run/outpost/ac-power.json";

/// A BIOS setting behind a firmware-attributes driver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AttributeProfile {
    pub vendor: String,
    /// /sys/class/dmi/id/sys_vendor values this profile is for.
    pub sys_vendor: Vec<String>,
    /// The directory under /sys/class/firmware-attributes.
    pub driver: String,
    /// Names the setting has on this vendor's product lines, tried in order.
    pub attributes: Vec<String>,
    /// Values meaning "power on", tried in order against the attribute's possible values.
    pub values: Vec<String>,
}

/// A bit in the PCI configuration space of a chipset device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PchProfile {
    pub vendor: String,
    pub pci_device: String,
    pub register: u64,
    pub bit: u8,
    /// PCI device IDs (hex, vendor 8086) where the register holds this bit.
    pub device_ids: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum Profile {
    Attribute(AttributeProfile),
    Pch(PchProfile),
}

/// Reads every `*.toml` of `dir`, sorted by name: `driver` makes an attribute profile,
/// `pci-device` a chipset one.
pub fn load_profiles(dir: &Path) -> Result<Vec<(String, Profile)>> {
    let mut files: Vec<PathBuf> = match fs_err::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = fs_err::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let table: toml::Table = crate::spec::parse_toml_str(&f, &text)?;
        let profile = if table.contains_key("pci-device") {
            Profile::Pch(crate::spec::parse_toml_str(&f, &text)?)
        } else if table.contains_key("driver") {
            Profile::Attribute(crate::spec::parse_toml_str(&f, &text)?)
        } else {
            anyhow::bail!("{}: a firmware profile has either `driver` (a firmware-attributes setting) or `pci-device` (a chipset register)", f.display());
        };
        let name = f.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        out.push((name, profile));
    }
    Ok(out)
}

/// Checks the project's profiles and copies them into the image.
pub fn install_profiles(src: &Path, dst: &Path) -> Result<()> {
    let profiles = load_profiles(src)?;
    fs_err::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    for (name, _) in profiles {
        let from = src.join(format!("{name}.toml"));
        fs_err::copy(&from, dst.join(format!("{name}.toml"))).with_context(|| format!("copying {}", from.display()))?;
    }
    Ok(())
}

