//! `qemu-tests/NAME.toml`: which image to boot and what must hold once it is up.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Problems, SpecError, check_version, parse_toml};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ScenarioToml {
    version: u32,
    #[serde(default)]
    description: String,
    image: PathBuf,
    #[serde(default = "default_timeout")]
    timeout: u64,
    #[serde(default = "default_memory")]
    memory: u64,
    verdict: String,
    /// A site to personalize the image with before booting it.
    #[serde(default)]
    site: Option<PathBuf>,
    /// QEMU user-mode network (default 10.0.2.0/24).
    #[serde(default)]
    net: Option<String>,
    /// The guest's address on that network, where forwarded ports go (default: QEMU's first
    /// DHCP lease); set it when the site gives the guest a fixed address.
    #[serde(default)]
    guest_address: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    command: Vec<Command>,
    #[serde(default)]
    ssh: Vec<Ssh>,
    #[serde(default)]
    console: Vec<Console>,
    #[serde(default)]
    http: Vec<Http>,
}

fn default_timeout() -> u64 {
    300
}

fn default_memory() -> u64 {
    1024
}

/// A command run in the guest (through the QEMU guest agent) and what its output must contain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Command {
    pub run: String,
    #[serde(default)]
    pub expect: Option<String>,
    #[serde(default)]
    pub expect_status: i64,
}

/// An SSH login from the host through a forwarded port 22.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Ssh {
    pub user: String,
    /// Private key, relative to the scenario; none means a password login attempt.
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default = "default_ssh_run")]
    pub run: String,
    #[serde(default)]
    pub expect: Option<String>,
    /// The login must be refused.
    #[serde(default)]
    pub refused: bool,
}

fn default_ssh_run() -> String {
    "true".into()
}

/// Text the serial console must show.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Console {
    pub contains: String,
}

/// A guest TCP port forwarded to the host that must answer HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Http {
    pub port: u16,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default)]
    pub contains: Option<String>,
}

fn default_path() -> String {
    "/".into()
}

fn default_status() -> u16 {
    200
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// The image definition, resolved against the scenario's directory.
    pub image: PathBuf,
    /// Seconds from power-on to the verdict line.
    pub timeout: u64,
    /// Guest memory in MiB.
    pub memory: u64,
    /// The line a unit in the guest prints on the serial console when the system is up.
    pub verdict: String,
    pub site: Option<PathBuf>,
    pub net: Option<String>,
    pub guest_address: Option<std::net::Ipv4Addr>,
    pub commands: Vec<Command>,
    pub ssh: Vec<Ssh>,
    pub console: Vec<Console>,
    pub http: Vec<Http>,
}

impl Scenario {
    pub fn load(file: &Path) -> Result<Scenario, SpecError> {
        let (t, _): (ScenarioToml, String) = parse_toml(file)?;
        let mut p = Problems::default();
        check_version(&mut p, file, t.version);
        let base = file.parent().unwrap_or(Path::new("."));
        let image = base.join(&t.image);
        if !image.is_file() {
            p.push(file, "image", format!("{} does not exist", image.display()));
        }
        if t.verdict.trim().is_empty() {
            p.push(file, "verdict", "the verdict line must not be empty");
        }
        if t.timeout == 0 {
            p.push(file, "timeout", "the timeout is in seconds and must be above 0");
        }
        if t.memory < 256 {
            p.push(file, "memory", "give the guest at least 256 (MiB)");
        }
        for (i, h) in t.http.iter().enumerate() {
            if !h.path.starts_with('/') {
                p.push(file, &format!("http[{i}].path"), format!("`{}` must start with `/`", h.path));
            }
        }
        let site = t.site.map(|s| base.join(s));
        if let Some(s) = &site
            && !s.is_file()
        {
            p.push(file, "site", format!("{} does not exist", s.display()));
        }
        if let Some(n) = &t.net
            && super::Cidr::parse(n).map(|c| !c.addr.is_ipv4() || c.prefix > 24).unwrap_or(true)
        {
            p.push(file, "net", format!("`{n}` is not an IPv4 network of /24 or larger, such as 192.168.76.0/24"));
        }
        let mut ssh = t.ssh;
        for (i, s) in ssh.iter_mut().enumerate() {
            if let Some(k) = s.key.take() {
                let path = base.join(k);
                if !path.is_file() {
                    p.push(file, &format!("ssh[{i}].key"), format!("{} does not exist", path.display()));
                }
                s.key = Some(path);
            }
        }
        p.into_result()?;
        Ok(Scenario {
            site,
            net: t.net,
            guest_address: t.guest_address,
            ssh,
            console: t.console,
            name: file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            description: t.description,
            image,
            timeout: t.timeout,
            memory: t.memory,
            verdict: t.verdict,
            commands: t.command,
            http: t.http,
        })
    }
}
