//! Cloud instances without a seed site and without a NoCloud disk: their settings from the
//! EC2-style instance metadata service (docs/cloud.md), read once the network is up by
//! `outpost seed cloud` (outpost-cloud.service). The host name and the instance's SSH key, or
//! the whole site file given as user data. Kept on the data partition, so that the next boot
//! applies them before the network starts.
//!
//! Only on a machine whose firmware says it is an EC2 instance (as cloud-init's ds-identify
//! decides): on a clinic's network anybody could answer at 169.254.169.254 and hand an
//! unpersonalized box an administrator's key.

use std::path::Path;

use anyhow::Result;

use super::say as console;
use crate::tool::Tool;

/// The metadata service's address (link-local, the same on every EC2-style cloud).
const SERVICE: &str = "http://169.254.169.254";
/// The site the metadata gave, kept for the next boot.
pub const KEPT: &str = "/var/lib/outpost/cloud-site.toml";
/// The user the instance's SSH key (the key pair given at launch) logs in as.
const ADMIN: &str = "admin";

/// The site kept from the metadata service at an earlier boot.
pub fn kept_site() -> Option<(String, String)> {
    let text = fs_err::read_to_string(KEPT).ok()?;
    Some((text, format!("{SERVICE} (kept in {KEPT})")))
}

/// A site from a cloud's host name (its first label: clouds give `ip-10-0-0-5.ec2.internal`)
/// and SSH keys (for the `admin` user); None when the name is not a host name.
pub fn hostname_site(full: &str, keys: &[String]) -> Option<String> {
    let host = full.trim().split('.').next().unwrap_or_default().to_ascii_lowercase();
    if host.is_empty() || host.len() > 63 || !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return None;
    }
    let mut site = format!("version = 1\nhostname = \"{host}\"\n");
    let keys: Vec<String> = keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty() && !k.contains('"') && !k.contains('\\')).map(|k| format!("\"{k}\"")).collect();
    if !keys.is_empty() {
        site.push_str(&format!("\n[[admin]]\nname = \"{ADMIN}\"\nssh-keys = [{}]\n", keys.join(", ")));
    }
    Some(site)
}

/// Whether the firmware says this is an EC2 instance (or a stand-in that says so).
fn is_ec2(dmi: &Path) -> bool {
    let read = |f: &str| fs_err::read_to_string(dmi.join(f)).map(|t| t.trim().to_string()).unwrap_or_default();
    read("sys_vendor") == "Amazon EC2" || read("product_uuid").to_ascii_lowercase().starts_with("ec2") || read("board_asset_tag").starts_with("i-")
}

/// `outpost seed cloud`: when this boot's site came from no seed and no NoCloud disk, on an EC2
/// instance, the metadata service's settings are read, kept, and applied when they changed.
pub fn run() -> Result<()> {
    let source = fs_err::read_to_string(super::site::SOURCE).unwrap_or_default();
    if !source.is_empty() && !source.starts_with(SERVICE) {
        return Ok(());
    }
    if !is_ec2(Path::new("/sys/class/dmi/id")) {
        return Ok(());
    }
    // Nothing orders this after the network: it asks until the network is up, for two minutes.
    let started = std::time::Instant::now();
    let answer = loop {
        match fetch() {
            Some(site) => break site,
            None if started.elapsed() > std::time::Duration::from_secs(120) => {
                console("cloud: the instance metadata service did not answer; keeping the settings there are");
                return Ok(());
            }
            None => std::thread::sleep(std::time::Duration::from_secs(2)),
        }
    };
    // It answered, but with nothing usable (it said why).
    let Some(text) = answer else { return Ok(()) };
    if fs_err::read_to_string(KEPT).ok().as_deref() == Some(text.as_str()) {
        console("cloud: the instance metadata is unchanged");
        return Ok(());
    }
    let changed = super::site::apply_site(Path::new("/"), &text, SERVICE)?;
    crate::files::atomic_write(Path::new(KEPT), |f| Ok(std::io::Write::write_all(f, text.as_bytes())?))?;
    if changed.iter().any(|p| p.starts_with("etc/systemd/network")) {
        Tool::new("networkctl").describe("applying the metadata's network settings").arg("reload").run()?;
    }
    // sshd reads authorized_keys at each login, and the host name is set: nothing to restart.
    Ok(())
}

/// The site the metadata service gives: the user data when it is a site file, else one made of
/// the host name and the instance's SSH key. IMDSv2 (a session token) first, IMDSv1 if the
/// service does not give tokens. None: no answer; Some(None): nothing usable.
fn fetch() -> Option<Option<String>> {
    let token = curl(&["-X", "PUT", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 300"], "/latest/api/token");
    let header = token.map(|t| format!("X-aws-ec2-metadata-token: {}", t.trim()));
    let get = |path: &str| match &header {
        Some(h) => curl(&["-H", h], path),
        None => curl(&[], path),
    };
    let hostname = get("/latest/meta-data/local-hostname")?;
    match get("/latest/user-data").filter(|t| !t.trim().is_empty()) {
        Some(t) if !t.trim_start().starts_with("#cloud-config") => return Some(Some(t)),
        Some(_) => console("cloud: the user data is cloud-config, not an outpost site file: ignored"),
        None => {}
    }
    let keys: Vec<String> = get("/latest/meta-data/public-keys/0/openssh-key").map(|k| k.lines().map(str::to_string).collect()).unwrap_or_default();
    let site = hostname_site(&hostname, &keys);
    if site.is_none() {
        console(&format!("cloud: the metadata's host name `{}` is not a host name: ignored", hostname.trim()));
    }
    Some(site)
}

/// One request to the metadata service: its body, or None (no answer, or not 2xx).
fn curl(args: &[&str], path: &str) -> Option<String> {
    Tool::new("curl").args(["-sf", "--connect-timeout", "2", "--max-time", "10", "--retry", "2"]).args(args).arg(format!("{SERVICE}{path}")).output().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloud_host_name_and_key_make_a_site() {
        let s = hostname_site("ip-10-0-0-5.ec2.internal", &["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMk3 my-key".into()]).unwrap();
        let site = crate::spec::Site::parse(Path::new("metadata"), &s).unwrap();
        assert_eq!(site.hostname, "ip-10-0-0-5");
        assert_eq!(site.admins[0].name, "admin");
        assert_eq!(site.admins[0].ssh_keys, ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMk3 my-key"]);
        assert_eq!(hostname_site("cloud-1", &[]).unwrap(), "version = 1\nhostname = \"cloud-1\"\n");
        assert!(hostname_site("bad_name.x", &[]).is_none());
        assert!(hostname_site("", &[]).is_none());
    }

    #[test]
    fn only_an_ec2_machine_asks_the_metadata_service() {
        let t = tempfile::tempdir().unwrap();
        assert!(!is_ec2(t.path()));
        fs_err::write(t.path().join("sys_vendor"), "QEMU\n").unwrap();
        assert!(!is_ec2(t.path()));
        fs_err::write(t.path().join("sys_vendor"), "Amazon EC2\n").unwrap();
        assert!(is_ec2(t.path()));
    }
}
