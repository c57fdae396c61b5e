//! `images/NAME.toml`: the distribution, the layers, variables, partitions and outputs of one
//! appliance image.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::site::Unlock;
use super::{Problems, SpecError, check_version, parse_toml, valid_hostname, valid_variable_name};


/// Release code names, to catch an image that names the other distribution's suite.
const DEBIAN_SUITES: &[&str] = &["buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid"];
const UBUNTU_SUITES: &[&str] = &["focal", "jammy", "noble", "oracular", "plucky", "questing", "resolute"];
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Distro {
    Debian,
    Ubuntu,
}

impl Distro {
    pub fn name(self) -> &'static str {
        match self {
            Distro::Debian => "debian",
            Distro::Ubuntu => "ubuntu",
        }
    }

    fn default_suite(self) -> &'static str {
        match self {
            Distro::Debian => "bookworm",
            Distro::Ubuntu => "noble",
        }
    }

    /// Archive components the base is bootstrapped from.
    pub fn components(self) -> &'static str {
        match self {
            Distro::Debian => "main",
            Distro::Ubuntu => "main,universe",
        }
    }
}

impl fmt::Display for Distro {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    Raw,
    Qcow2,
    /// streamOptimized, for VMware and EC2 image import.
    Vmdk,
    /// fixed, for Azure and EC2 image import.
    Vhd,
    /// The USB installer: a hybrid ISO for sticks and discs.
    Iso,
}

/// A size in bytes, written as `512M`, `2G` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Size(pub u64);

impl Size {
    pub const MIB: u64 = 1 << 20;
    pub const GIB: u64 = 1 << 30;

    pub fn parse(s: &str) -> Result<Size, String> {
        let s = s.trim();
        let (num, mul) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            None => (s, 1),
            Some((i, _)) => {
                let mul = match s[i..].trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
                    "K" => 1 << 10,
                    "M" => 1 << 20,
                    "G" => 1 << 30,
                    "T" => 1 << 40,
                    "" => 1,
                    other => return Err(format!("unknown size unit `{other}` in `{s}` (use K, M, G or T)")),
                };
                (&s[..i], mul)
            }
        };
        let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size such as `512M` or `2G`"))?;
        n.checked_mul(mul).map(Size).ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Size::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn first_release() -> String {
    "1".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ImageToml {
    version: u32,
    #[serde(default)]
    description: String,
    distro: Option<Distro>,
    suite: Option<String>,
    mirror: Option<String>,
    #[serde(default = "default_arch")]
    architecture: String,
    layers: Vec<String>,
    /// The image's name, when it is not the file's: a later release kept in another file.
    name: Option<String>,
    /// The image's release, numbers and dots (`2`, `2026.11.3`): updates only go up.
    #[serde(default = "first_release")]
    release: String,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    hostname: String,
    #[serde(default)]
    cmdline: String,
    #[serde(default)]
    partitions: PartitionsToml,
    #[serde(default = "default_outputs")]
    outputs: Vec<OutputFormat>,
    #[serde(default)]
    data: DataToml,
    #[serde(default)]
    power: PowerPolicy,
    #[serde(default)]
    install: InstallToml,
}

/// `[install]`: how the USB installer chooses the target disk.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct InstallToml {
    min_disk_size: Option<Size>,
    disk_model: Option<String>,
}

/// `[power]`: how the appliance gets the machine to power on again after AC loss. Firmware
/// settings through the kernel's firmware-attributes drivers are always tried (profiles in
/// `firmware/`); writing the Intel chipset's register is an explicit opt-in. The agent in the
/// image reads it from `/usr/lib/outpost/power.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PowerPolicy {
    #[serde(default)]
    pub intel_pch_after_g3: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct DataToml {
    unlock: Option<Unlock>,
    no_tpm: Option<NoTpm>,
    tpm2_pcrs: Option<Vec<u8>>,
}

/// What happens to the data partition when the policy is `tpm2` and the machine has no TPM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoTpm {
    /// Leave the data partition closed and say so: the applications do not start.
    Refuse,
    /// Use a key file on a USB stick instead.
    UsbKey,
}

/// How the data partition is encrypted and unlocked; the agent in the image reads it from
/// `/usr/lib/outpost/data.json` at every boot (a site may override `unlock`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DataPolicy {
    pub unlock: Unlock,
    pub no_tpm: NoTpm,
    /// PCRs whose literal values the TPM2 key is sealed to; empty: chosen at first boot from
    /// the boot chain (docs/encryption.md, "Which PCRs").
    pub tpm2_pcrs: Vec<u8>,
}

fn default_arch() -> String {
    "amd64".into()
}

fn default_outputs() -> Vec<OutputFormat> {
    vec![OutputFormat::Raw, OutputFormat::Qcow2]
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PartitionsToml {
    esp: Option<Size>,
    root: Option<Size>,
    data: Option<Size>,
}

/// Partition sizes; `root: None` means "the tree's size plus headroom".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Partitions {
    pub esp: Size,
    pub root: Option<Size>,
    pub data: Size,
}

#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub file: PathBuf,
    pub project: PathBuf,
    pub description: String,
    pub distro: Distro,
    pub suite: String,
    pub mirror: Option<String>,
    pub architecture: String,
    pub layers: Vec<String>,
    pub release: String,
    pub variables: BTreeMap<String, String>,
    pub hostname: String,
    pub cmdline: String,
    pub partitions: Partitions,
    pub outputs: Vec<OutputFormat>,
    pub data: DataPolicy,
    pub power: PowerPolicy,
    pub install: InstallRules,
}

impl Image {
    pub fn load(file: &Path) -> Result<Image, SpecError> {
        let (t, _): (ImageToml, String) = parse_toml(file)?;
        let mut p = Problems::default();
        check_version(&mut p, file, t.version);
        let distro = t.distro.unwrap_or(Distro::Ubuntu);
        if t.architecture != "amd64" {
            p.push(file, "architecture", format!("`{}` is not supported yet; only amd64 is", t.architecture));
        }
        if t.layers.is_empty() {
            p.push(file, "layers", "an image needs at least one layer");
        }
        for (i, l) in t.layers.iter().enumerate() {
            if !super::valid_name(l) {
                p.push(file, &format!("layers[{i}]"), format!("`{}` is not a layer name (a directory of layers/: lowercase letters, digits and `-`, at most 40)", super::excerpt(l, 60)));
            }
        }
        if let Some(suite) = &t.suite {
            let other = match distro {
                Distro::Debian => UBUNTU_SUITES.contains(&suite.as_str()).then_some("Ubuntu"),
                Distro::Ubuntu => DEBIAN_SUITES.contains(&suite.as_str()).then_some("Debian"),
            };
            if suite.is_empty() || suite.len() > 40 || !suite.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
                p.push(file, "suite", format!("`{}` is not a suite name such as `bookworm` or `noble`", super::excerpt(suite, 60)));
            } else if let Some(other) = other {
                p.push(file, "suite", format!("`{suite}` is an {other} release, but the image's distro is {distro:?}; set `distro` or choose a suite of it"));
            }
        }
        if let Some(n) = &t.name
            && !super::valid_name(n)
        {
            p.push(file, "name", format!("`{}` is not an image name (lowercase letters, digits and `-`, at most 40)", super::excerpt(n, 60)));
        }
        if crate::format::update::parse_release(&t.release).is_none() {
            p.push(file, "release", format!("`{}` is not a release: numbers separated by dots, such as `2` or `2026.11.3`", super::excerpt(&t.release, 60)));
        }
        if super::has_control(&t.cmdline) || t.cmdline.len() > 1024 {
            p.push(file, "cmdline", "the kernel command line is one line of at most 1024 characters");
        }
        if !valid_hostname(&t.hostname) {
            p.push(file, "hostname", format!("`{}` is not a valid hostname (letters, digits and `-`, at most 63 characters)", t.hostname));
        }
        for name in t.variables.keys() {
            if !valid_variable_name(name) {
                p.push(file, &format!("variables.{name}"), "variable names are lowercase letters, digits and `_`, starting with a letter");
            }
        }
        if let Some(m) = &t.mirror
            && !(m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file:/"))
        {
            p.push(file, "mirror", format!("`{m}` is not an http(s):// or file:/ URL"));
        }
        let parts = Partitions {
            esp: t.partitions.esp.unwrap_or(Size(256 * Size::MIB)),
            root: t.partitions.root,
            data: t.partitions.data.unwrap_or(Size(1024 * Size::MIB)),
        };
        if parts.esp.0 < 64 * Size::MIB {
            p.push(file, "partitions.esp", "the EFI system partition must be at least 64M (FAT32 and room for a kernel)");
        }
        if parts.data.0 < 16 * Size::MIB {
            p.push(file, "partitions.data", "the data partition must be at least 16M");
        }
        // The image is written whole before it is compressed: a data partition this large is a
        // typo, and the installer grows it to the disk anyway.
        if parts.data.0 > 64 * Size::GIB {
            p.push(file, "partitions.data", "the data partition in the image may be at most 64G (the installer grows it to the clinic PC's disk)");
        }
        if parts.esp.0 > 4 * Size::GIB {
            p.push(file, "partitions.esp", "the EFI system partition may be at most 4G");
        }
        if let Some(r) = parts.root
            && !(Size::MIB..=64 * Size::GIB).contains(&r.0)
        {
            p.push(file, "partitions.root", "the root partition is between 1M and 64G (leave it out: the default fits the root exactly)");
        }
        if t.outputs.is_empty() {
            p.push(file, "outputs", "list at least one output: \"raw\", \"qcow2\", \"vmdk\", \"vhd\" or \"iso\"");
        }
        let data = DataPolicy {
            unlock: t.data.unlock.unwrap_or(Unlock::Tpm2),
            no_tpm: t.data.no_tpm.unwrap_or(NoTpm::Refuse),
            // PCR 7 (Secure Boot state and keys): stays the same across kernel and initrd
            // updates, which PCRs 4, 8, 9 and 11 do not. docs/encryption.md says why.
            tpm2_pcrs: t.data.tpm2_pcrs.unwrap_or_default(),
        };
        if let Some(bad) = data.tpm2_pcrs.iter().find(|n| **n > 23) {
            p.push(file, "data.tpm2-pcrs", format!("PCR {bad} does not exist; a TPM 2.0 has PCRs 0 to 23"));
        }
        p.into_result()?;
        let mut outputs = t.outputs;
        outputs.sort();
        outputs.dedup();
        Ok(Image {
            name: t.name.clone().unwrap_or_else(|| file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()),
            file: file.to_path_buf(),
            project: super::project_root(file),
            description: t.description,
            distro,
            suite: t.suite.unwrap_or_else(|| distro.default_suite().into()),
            mirror: t.mirror,
            architecture: t.architecture,
            layers: t.layers,
            release: t.release,
            variables: t.variables,
            hostname: t.hostname,
            cmdline: t.cmdline,
            partitions: parts,
            outputs,
            data,
            power: t.power,
            install: InstallRules { min_disk_size: t.install.min_disk_size.map(|s| s.0), disk_model: t.install.disk_model },
        })
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.project.join("layers")
    }
}

/// The image's `[install]` rules for choosing the target disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InstallRules {
    /// Disks smaller than this are not candidates (the image's size always applies).
    #[serde(default)]
    pub min_disk_size: Option<u64>,
    /// Only disks whose model contains this text (case-insensitive), e.g. `Samsung`.
    #[serde(default)]
    pub disk_model: Option<String>,
}
