//! Cloud instances without a seed site: their settings from the disk the cloud attaches (a
//! NoCloud disk labelled CIDATA, FAT or ISO 9660, or an OpenStack ConfigDrive labelled config-2),
//! read at `seed apply`, or else from the
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

/// The site from the disk a cloud attaches, as cloud-init reads it (docs/cloud.md):
/// - NoCloud, labelled CIDATA (FAT or ISO 9660): `user-data` when it is a site file, else a
///   site naming `meta-data`'s `local-hostname`;
/// - OpenStack ConfigDrive, labelled config-2: `openstack/latest/user_data` when it is a site
///   file, else `meta_data.json`'s `hostname` and `public_keys` (for the user `admin`).
///
/// Cloud-config in the user data is not outpost's and is said to be ignored.
pub fn disk_site(by_label: &Path) -> Option<(String, String)> {
    let (dev, config_drive) = [("CIDATA", false), ("cidata", false), ("config-2", true), ("CONFIG-2", true)].iter().map(|(l, c)| (by_label.join(l), *c)).find(|(p, _)| p.exists())?;
    let read = |name: &str| match disk_file(&dev, name) {
        Ok(b) => b.map(|b| String::from_utf8_lossy(&b).into_owned()),
        Err(e) => {
            console(&format!("the cloud's disk {} could not be read: {e:#}", dev.display()));
            None
        }
    };
    let user_file = if config_drive { "openstack/latest/user_data" } else { "user-data" };
    match read(user_file).filter(|t| !t.trim().is_empty()) {
        Some(t) if !t.trim_start().starts_with("#cloud-config") => return Some((t, format!("{}:/{user_file}", dev.display()))),
        Some(_) => console(&format!("the cloud's {user_file} is cloud-config, not an outpost site file: ignored")),
        None => {}
    }
    let (full, keys, from) = if config_drive {
        let meta: serde_json::Value = serde_json::from_str(&read("openstack/latest/meta_data.json")?).ok()?;
        let keys = meta["public_keys"].as_object().map(|m| m.values().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default();
        (meta["hostname"].as_str()?.to_string(), keys, "openstack/latest/meta_data.json")
    } else {
        let meta = read("meta-data")?;
        let full = meta.lines().find_map(|l| l.trim().strip_prefix("local-hostname:")).map(|h| h.trim().trim_matches(|c| c == '"' || c == '\'').to_string())?;
        (full, Vec::new(), "meta-data")
    };
    match hostname_site(&full, &keys) {
        Some(site) => Some((site, format!("{}:/{from}", dev.display()))),
        None => {
            console(&format!("the cloud's host name `{full}` ({from}) is not a host name: ignored"));
            None
        }
    }
}

/// A file of a cloud's disk, ISO 9660 or FAT; `None` when it has no such file.
fn disk_file(dev: &Path, path: &str) -> Result<Option<Vec<u8>>> {
    match crate::format::iso9660::Iso::open(dev)? {
        Some(mut iso) => match iso.find(path) {
            Ok(_) => Ok(Some(iso.read(path)?)),
            Err(_) => Ok(None),
        },
        None => crate::format::seed::read_file(dev, path),
    }
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

    #[test]
    fn nocloud_seed_gives_the_site_or_the_host_name() {
        const SITE: &str = "version = 1\nhostname = \"clinic-7\"\n";
        let t = tempfile::tempdir().unwrap();
        let seed = |files: &[(&str, &[u8])]| fs_err::write(t.path().join("CIDATA"), crate::format::seed::nocloud_image(files).unwrap()).unwrap();
        // No disk: nothing.
        assert!(disk_site(t.path()).is_none());
        // A site file as user-data wins over meta-data.
        seed(&[("meta-data", b"local-hostname: other\n"), ("user-data", SITE.as_bytes())]);
        let (text, source) = disk_site(t.path()).unwrap();
        assert_eq!(text, SITE);
        assert!(source.ends_with("CIDATA:/user-data"), "{source}");
        // Cloud-config user-data is not ours: the host name from meta-data, its first label.
        seed(&[("meta-data", b"instance-id: i-1\nlocal-hostname: ip-10-0-0-5.ec2.internal\n"), ("user-data", b"#cloud-config\nusers: []\n")]);
        let (text, _) = disk_site(t.path()).unwrap();
        assert_eq!(crate::spec::Site::parse(Path::new("x"), &text).unwrap().hostname, "ip-10-0-0-5");
        // A name that is not one is refused, not written into a site file.
        seed(&[("meta-data", b"local-hostname: \"a\\\" b\"\n")]);
        assert!(disk_site(t.path()).is_none());
    }

    /// The ISO 9660 forms (as cloud-localds, Proxmox and OpenStack write them), read without
    /// mounting: NoCloud's `user-data` under its Rock Ridge name, and a ConfigDrive's host name
    /// and keys, or its user data.
    #[test]
    fn iso_nocloud_and_config_drive_disks() {
        crate::tool::preflight(&["xorriso"]).unwrap();
        let t = tempfile::tempdir().unwrap();
        let iso = |label: &str, files: &[(&str, &str)]| {
            let stage = t.path().join("stage");
            let _ = fs_err::remove_dir_all(&stage);
            for (name, text) in files {
                let p = stage.join(name);
                fs_err::create_dir_all(p.parent().unwrap()).unwrap();
                fs_err::write(p, text).unwrap();
            }
            let out = t.path().join(label);
            let _ = fs_err::remove_file(&out);
            crate::tool::Tool::new("xorriso").args(["-as", "mkisofs", "-quiet", "-joliet", "-rock", "-volid", label, "-o"]).arg(&out).arg(&stage).run().unwrap();
        };
        iso("cidata", &[("meta-data", "local-hostname: clinic-iso.local\n"), ("user-data", "#cloud-config\n")]);
        let (text, source) = disk_site(t.path()).unwrap();
        assert!(text.contains("hostname = \"clinic-iso\""), "{text}");
        assert!(source.ends_with("cidata:/meta-data"), "{source}");
        fs_err::remove_file(t.path().join("cidata")).unwrap();
        let meta = r#"{"uuid": "x", "hostname": "ward-3.novalocal", "public_keys": {"mine": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMk3 me"}}"#;
        iso("config-2", &[("openstack/latest/meta_data.json", meta), ("openstack/latest/user_data", "#cloud-config\n")]);
        let (text, source) = disk_site(t.path()).unwrap();
        let site = crate::spec::Site::parse(Path::new("x"), &text).unwrap();
        assert_eq!(site.hostname, "ward-3");
        assert_eq!(site.admins[0].ssh_keys, ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMk3 me"]);
        assert!(source.ends_with("config-2:/openstack/latest/meta_data.json"), "{source}");
        iso("config-2", &[("openstack/latest/meta_data.json", meta), ("openstack/latest/user_data", "version = 1\nhostname = \"given\"\n")]);
        assert_eq!(disk_site(t.path()).unwrap().0, "version = 1\nhostname = \"given\"\n");
    }
}
