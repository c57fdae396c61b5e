//! `sites/NAME.toml`: one clinic's settings, which travel in the seed partition apart from the
//! image (hostname, network, Wi-Fi, time, administrators, application variables).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Problems, SpecError, check_version, parse_toml_str, valid_hostname, valid_variable_name};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Site {
    pub version: u32,
    pub hostname: String,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub ntp: Vec<String>,
    /// How the data partition unlocks at boot, instead of the image's `data.unlock`.
    #[serde(default)]
    pub unlock: Option<Unlock>,
    /// Where the data partition's recovery key goes at first boot, besides the console.
    #[serde(default)]
    pub recovery_key: RecoveryKey,
    #[serde(default, rename = "interface")]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub wifi: Option<Wifi>,
    #[serde(default, rename = "admin")]
    pub admins: Vec<Admin>,
    /// Variables for the applications (`/etc/outpost/site.env`).
    #[serde(default)]
    pub app: BTreeMap<String, String>,
    /// How the USB installer (`NAME.iso` personalized with this site) behaves.
    #[serde(default)]
    pub install: Install,
    /// The site's own TLS certificate, instead of one the box makes or the deployment CA signs.
    #[serde(default)]
    pub tls: Option<SiteTls>,
    /// Backups to a server over the site's link, besides the USB stick (docs/backup.md).
    #[serde(default)]
    pub backup: Option<SiteBackup>,
    /// Where the box sends its status, when it has a link.
    #[serde(default)]
    pub status: Option<SiteStatus>,
}

/// `[status]`: a URL the box POSTs its status (`status.json`) to, every `every-minutes`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SiteStatus {
    pub push: String,
    #[serde(default = "default_push_minutes")]
    pub every_minutes: u32,
}

fn default_push_minutes() -> u32 {
    15
}

/// `[backup]`: the site's backup server and when to back up to it, and the site's backup key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SiteBackup {
    /// `sftp://USER@HOST[:PORT]/PATH` (PATH relative to the user's home; `//PATH` for an
    /// absolute one, as restic writes it): each box backs up into `PATH/HOSTNAME` there.
    #[serde(default)]
    pub server: Option<String>,
    /// A file (relative to the site file) holding the backup key every box of this site uses
    /// in place of one of its own: `outpost personalize` puts it in the seed, the box takes it
    /// onto its encrypted data partition at its first boot and erases it from the seed.
    #[serde(default)]
    pub key_file: Option<String>,
    /// Local time of the daily backup, `HH:MM`; a box that was off then backs up when it
    /// comes back.
    #[serde(default = "default_backup_at")]
    pub at: String,
    /// The server's SSH host key (`ssh-ed25519 AAAA...`); without it the key the server shows
    /// at the first backup is kept and required from then on.
    #[serde(default)]
    pub host_key: Option<String>,
}

fn default_backup_at() -> String {
    "02:00".into()
}

/// A parsed `backup.server`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupServer {
    pub user: String,
    pub host: String,
    pub port: u16,
    /// Relative to the user's home, or absolute when it starts with `/`.
    pub path: String,
}

impl BackupServer {
    pub fn parse(s: &str) -> Result<BackupServer, String> {
        let bad = || format!("`{s}` is not a backup server such as `sftp://backup@192.168.1.5/outpost` or `sftp://backup@backup.example.org:2222/srv/outpost`");
        let rest = s.strip_prefix("sftp://").ok_or_else(|| format!("{}: only SFTP servers are supported (`sftp://`)", bad()))?;
        let (auth, path) = rest.split_once('/').ok_or_else(bad)?;
        let (user, hostport) = auth.split_once('@').ok_or_else(|| format!("{}: the user name is missing", bad()))?;
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.starts_with('[') => (h.trim_matches(['[', ']']), p.parse::<u16>().map_err(|_| bad())?),
            _ => (hostport, 22),
        };
        let host_ok = host.parse::<IpAddr>().is_ok() || host.split('.').all(valid_hostname);
        let path_ok = !path.is_empty() && !path.split('/').any(|c| c == "..") && path.chars().all(|c| c.is_ascii_alphanumeric() || "/_-.".contains(c));
        if !valid_user(user) || !host_ok || !path_ok || port == 0 {
            return Err(bad());
        }
        Ok(BackupServer { user: user.into(), host: host.into(), port, path: path.trim_end_matches('/').into() })
    }
}

/// `[tls]`: a certificate and its key, paths relative to the site file. `outpost personalize`
/// puts them in the seed; the box takes the key onto its encrypted partition at first boot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SiteTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Install {
    /// Install without asking at the console (never onto a disk that already holds an
    /// outpost appliance).
    #[serde(default)]
    pub unattended: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unlock {
    Tpm2,
    UsbKey,
    Passphrase,
    None,
}

/// The recovery key is always shown once on the console; this says where else it goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoveryKey {
    /// Only the console.
    Console,
    /// `/var/lib/outpost/recovery-key` (root only, on the encrypted partition) until an
    /// administrator fetches it and runs `outpost data forget-recovery-key`.
    #[default]
    File,
    /// A file on a USB stick labelled OUTPOSTKEY, if one is plugged in at first boot (else `file`).
    Usb,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Interface {
    /// An interface name or a systemd.network `Name=` pattern such as `en*`.
    pub name: String,
    #[serde(default)]
    pub dhcp: bool,
    #[serde(default)]
    pub address: Vec<String>,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub gateway6: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Wifi {
    pub ssid: String,
    pub passphrase: String,
    #[serde(default = "default_security")]
    pub security: String,
    #[serde(default)]
    pub dhcp: Option<bool>,
}

fn default_security() -> String {
    "wpa2".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Admin {
    pub name: String,
    pub ssh_keys: Vec<String>,
}

/// An address with its prefix length, as in `192.168.10.20/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| format!("`{s}` needs a prefix length, as in 192.168.1.10/24"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("`{a}` is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = p.parse().ok().filter(|p| *p <= max).ok_or_else(|| format!("`/{p}` is not a prefix length between 0 and {max}"))?;
        Ok(Cidr { addr, prefix })
    }

    fn bits(a: IpAddr) -> u128 {
        match a {
            IpAddr::V4(v) => u32::from(v) as u128,
            IpAddr::V6(v) => u128::from(v),
        }
    }

    fn width(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    fn mask(&self) -> u128 {
        let w = self.width() as u32;
        let host = w - self.prefix as u32;
        let all = if w == 128 { u128::MAX } else { (1u128 << w) - 1 };
        if host >= 128 { 0 } else { all & !((1u128 << host) - 1) }
    }

    pub fn contains(&self, a: IpAddr) -> bool {
        a.is_ipv4() == self.addr.is_ipv4() && Self::bits(a) & self.mask() == Self::bits(self.addr) & self.mask()
    }

    pub fn overlaps(&self, o: &Cidr) -> bool {
        o.addr.is_ipv4() == self.addr.is_ipv4() && (self.contains(o.addr) || o.contains(self.addr))
    }

    /// Whether the address is the subnet's network or (IPv4) broadcast address.
    fn is_reserved_host(&self) -> bool {
        let host = Self::bits(self.addr) & !self.mask() & if self.width() == 32 { u32::MAX as u128 } else { u128::MAX };
        let host_max = !self.mask() & if self.width() == 32 { u32::MAX as u128 } else { u128::MAX };
        self.addr.is_ipv4() && self.prefix < 31 && (host == 0 || host == host_max)
    }
}

fn valid_user(n: &str) -> bool {
    let mut c = n.chars();
    n.len() <= 32
        && matches!(c.next(), Some(f) if f.is_ascii_lowercase() || f == '_')
        && c.all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == '_' || x == '-')
}

const RESERVED_USERS: &[&str] = &["root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy", "www-data", "backup", "list", "irc", "nobody", "systemd-network", "systemd-resolve", "messagebus", "sshd"];

const KEY_TYPES: &[&str] = &["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"];

/// An OpenSSH public key line: `TYPE BASE64 [comment]`.
fn valid_public_key(key: &str) -> bool {
    let mut parts = key.split_whitespace();
    let ty = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("");
    let b64 = !body.is_empty() && body.chars().all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c));
    KEY_TYPES.contains(&ty) && b64 && !key.contains('\n')
}

impl Site {
    pub fn load(file: &Path) -> Result<Site, SpecError> {
        let text = fs_err::read_to_string(file).map_err(|e| {
            SpecError(vec![super::Problem { file: file.into(), key: String::new(), message: format!("cannot read the file: {e}") }])
        })?;
        Site::parse(file, &text)
    }

    /// Parses and validates; `file` names the source in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Site, SpecError> {
        let site: Site = parse_toml_str(file, text)?;
        site.validate(file)?;
        Ok(site)
    }

    fn validate(&self, file: &Path) -> Result<(), SpecError> {
        let mut p = Problems::default();
        check_version(&mut p, file, self.version);
        if !valid_hostname(&self.hostname) {
            p.push(file, "hostname", format!("`{}` is not a valid hostname (letters, digits and `-`, at most 63 characters)", self.hostname));
        }
        if let Some(tz) = &self.timezone {
            let ok = !tz.is_empty() && !tz.contains("..") && !tz.starts_with('/') && tz.chars().all(|c| c.is_ascii_alphanumeric() || "/_-+".contains(c));
            if !ok || (Path::new("/usr/share/zoneinfo").is_dir() && !Path::new("/usr/share/zoneinfo").join(tz).is_file()) {
                p.push(file, "timezone", format!("`{tz}` is not a time zone name such as `Africa/Nairobi`"));
            }
        }
        for (i, n) in self.ntp.iter().enumerate() {
            if n.parse::<IpAddr>().is_err() && !n.split('.').all(valid_hostname) {
                p.push(file, &format!("ntp[{i}]"), format!("`{n}` is neither an address nor a host name"));
            }
        }
        let mut subnets: Vec<(String, Cidr)> = Vec::new();
        for (i, ifc) in self.interfaces.iter().enumerate() {
            let k = |f: &str| format!("interface[{i}].{f}");
            if ifc.name.is_empty() || !ifc.name.chars().all(|c| c.is_ascii_alphanumeric() || "*?-_.:".contains(c)) {
                p.push(file, &k("name"), format!("`{}` is not an interface name or pattern such as `eth0` or `en*`", ifc.name));
            }
            if ifc.dhcp != ifc.address.is_empty() {
                p.push(file, &k("dhcp"), "give either `dhcp = true` or static `address` entries, not both or neither");
            }
            let mut mine = Vec::new();
            for (j, a) in ifc.address.iter().enumerate() {
                match Cidr::parse(a) {
                    Ok(c) if c.is_reserved_host() => p.push(file, &format!("interface[{i}].address[{j}]"), format!("`{a}` is the network or broadcast address of its subnet")),
                    Ok(c) => {
                        for (other, o) in &subnets {
                            if o.overlaps(&c) {
                                p.push(file, &format!("interface[{i}].address[{j}]"), format!("subnet of `{a}` overlaps `{other}`"));
                            }
                        }
                        mine.push((a.clone(), c));
                    }
                    Err(e) => p.push(file, &format!("interface[{i}].address[{j}]"), e),
                }
            }
            for (key, gw, v4) in [("gateway", &ifc.gateway, true), ("gateway6", &ifc.gateway6, false)] {
                let Some(gw) = gw else { continue };
                match gw.parse::<IpAddr>() {
                    Ok(g) if g.is_ipv4() != v4 => p.push(file, &k(key), format!("`{gw}` is not an IPv{} address", if v4 { 4 } else { 6 })),
                    Ok(g) if !mine.iter().any(|(_, c)| c.contains(g)) => {
                        p.push(file, &k(key), format!("`{gw}` is outside the interface's subnets ({})", mine.iter().map(|m| m.0.as_str()).collect::<Vec<_>>().join(", ")))
                    }
                    Ok(_) => {}
                    Err(_) => p.push(file, &k(key), format!("`{gw}` is not an IP address")),
                }
            }
            for (j, d) in ifc.dns.iter().enumerate() {
                if d.parse::<IpAddr>().is_err() {
                    p.push(file, &format!("interface[{i}].dns[{j}]"), format!("`{d}` is not an IP address"));
                }
            }
            subnets.extend(mine);
        }
        if let Some(w) = &self.wifi {
            if w.ssid.is_empty() || w.ssid.len() > 32 {
                p.push(file, "wifi.ssid", "an SSID has 1 to 32 bytes");
            }
            if w.passphrase.len() < 8 || w.passphrase.len() > 63 || !w.passphrase.chars().all(|c| (' '..='~').contains(&c)) {
                p.push(file, "wifi.passphrase", "a WPA passphrase has 8 to 63 printable ASCII characters");
            }
            if w.security != "wpa2" && w.security != "wpa3" {
                p.push(file, "wifi.security", format!("`{}`: use `wpa2` or `wpa3`", w.security));
            }
        }
        for (i, a) in self.admins.iter().enumerate() {
            if !valid_user(&a.name) || RESERVED_USERS.contains(&a.name.as_str()) {
                p.push(file, &format!("admin[{i}].name"), format!("`{}` is not a user name outpost may create (lowercase, not a system account)", a.name));
            }
            if a.ssh_keys.is_empty() {
                p.push(file, &format!("admin[{i}].ssh-keys"), "an administrator needs at least one SSH public key: password login is disabled");
            }
            for (j, key) in a.ssh_keys.iter().enumerate() {
                if !valid_public_key(key) {
                    p.push(file, &format!("admin[{i}].ssh-keys[{j}]"), "not an OpenSSH public key line (`ssh-ed25519 AAAA... comment`)");
                }
            }
        }
        if let Some(b) = &self.backup {
            match &b.server {
                Some(s) => {
                    if let Err(e) = BackupServer::parse(s) {
                        p.push(file, "backup.server", e);
                    }
                }
                None if b.key_file.is_none() => p.push(file, "backup", "name a `server` to back up to, a `key-file` with the site's backup key, or both"),
                None => {}
            }
            if b.key_file.as_deref().is_some_and(|k| k.trim().is_empty()) {
                p.push(file, "backup.key-file", "an empty path: name the file that holds the site's backup key");
            }
            let hm = b.at.split_once(':').and_then(|(h, m)| Some((h.parse::<u8>().ok()?, m.parse::<u8>().ok()?)).filter(|_| h.len() == 2 && m.len() == 2));
            if !hm.is_some_and(|(h, m)| h < 24 && m < 60) {
                p.push(file, "backup.at", format!("`{}` is not a time of day such as `02:30` (local time, 24 hours)", b.at));
            }
            if let Some(k) = &b.host_key
                && !valid_public_key(k)
            {
                p.push(file, "backup.host-key", "not an OpenSSH public key (`ssh-ed25519 AAAA...`, as in the server's /etc/ssh/ssh_host_ed25519_key.pub)");
            }
        }
        if let Some(st) = &self.status {
            let ok = (st.push.starts_with("https://") || st.push.starts_with("http://"))
                && st.push.len() > 8
                && st.push.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' && c != '\'');
            if !ok {
                p.push(file, "status.push", format!("`{}` is not an http:// or https:// URL", st.push));
            }
            if !(1..=1440).contains(&st.every_minutes) {
                p.push(file, "status.every-minutes", format!("{} is not between 1 and 1440 minutes", st.every_minutes));
            }
        }
        for k in self.app.keys() {
            if !valid_variable_name(k) {
                p.push(file, &format!("app.{k}"), "application variable names are lowercase letters, digits and `_`");
            }
        }
        p.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMk3 amina@laptop";

    fn site(extra: &str) -> Result<Site, SpecError> {
        Site::parse(Path::new("sites/x.toml"), &format!("version = 1\nhostname = \"clinic-1\"\n{extra}"))
    }

    #[test]
    fn a_full_site_parses() {
        let s = site(&format!(
            "timezone = \"UTC\"\nntp = [\"10.0.0.1\", \"ntp.example.org\"]\nunlock = \"tpm2\"\n\
             [[interface]]\nname = \"eth0\"\naddress = [\"192.168.10.20/24\", \"fd00::20/64\"]\ngateway = \"192.168.10.1\"\ndns = [\"192.168.10.1\"]\n\
             [[interface]]\nname = \"en*\"\ndhcp = true\n\
             [wifi]\nssid = \"Clinic\"\npassphrase = \"long enough\"\n\
             [[admin]]\nname = \"amina\"\nssh-keys = [\"{KEY}\"]\n[app]\npublic_url = \"https://x\"\n"
        ))
        .unwrap();
        assert_eq!(s.interfaces.len(), 2);
        assert_eq!(s.unlock, Some(Unlock::Tpm2));
        assert_eq!(s.admins[0].ssh_keys[0], KEY);
    }

    #[test]
    fn bad_sites_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("[[interface]]\nname = \"eth0\"\naddress = [\"192.168.10.300/24\"]\n", "interface[0].address[0]`: `192.168.10.300` is not"),
            ("[[interface]]\nname = \"eth0\"\naddress = [\"192.168.10.2/33\"]\n", "`/33` is not a prefix length"),
            ("[[interface]]\nname = \"eth0\"\naddress = [\"192.168.10.2\"]\n", "needs a prefix length"),
            ("[[interface]]\nname = \"eth0\"\naddress = [\"192.168.10.0/24\"]\n", "network or broadcast"),
            ("[[interface]]\nname = \"eth0\"\naddress = [\"192.168.10.2/24\"]\ngateway = \"192.168.11.1\"\n", "interface[0].gateway`: `192.168.11.1` is outside"),
            ("[[interface]]\nname = \"eth0\"\naddress = [\"192.168.10.2/24\"]\ngateway = \"fd00::1\"\n", "is not an IPv4 address"),
            (
                "[[interface]]\nname = \"eth0\"\naddress = [\"10.1.0.2/16\"]\n[[interface]]\nname = \"eth1\"\naddress = [\"10.1.5.2/24\"]\n",
                "interface[1].address[0]`: subnet of `10.1.5.2/24` overlaps `10.1.0.2/16`",
            ),
            ("[[interface]]\nname = \"eth0\"\n", "either `dhcp = true` or static"),
            ("[[interface]]\nname = \"eth0\"\ndhcp = true\ndns = [\"dns.google\"]\n", "interface[0].dns[0]"),
            ("[wifi]\nssid = \"c\"\npassphrase = \"short\"\n", "wifi.passphrase"),
            ("[[admin]]\nname = \"root\"\nssh-keys = [\"ssh-ed25519 AAAA\"]\n", "admin[0].name"),
            ("[[admin]]\nname = \"amina\"\nssh-keys = [\"hunter2\"]\n", "admin[0].ssh-keys[0]"),
            ("[[admin]]\nname = \"amina\"\nssh-keys = []\n", "password login is disabled"),
            ("unlock = \"fingerprint\"\n", "unknown variant `fingerprint`"),
            ("colour = \"red\"\n", "unknown field `colour`"),
            ("timezone = \"../../etc/passwd\"\n", "key `timezone`"),
        ];
        for (extra, want) in cases {
            let err = site(extra).unwrap_err().to_string();
            assert!(err.contains(want), "for {extra:?}: wanted {want:?} in {err}");
            assert!(err.contains("sites/x.toml"), "{err}");
        }
    }

    #[test]
    fn cidr_maths() {
        let a = Cidr::parse("10.0.0.5/8").unwrap();
        assert!(a.contains("10.200.1.1".parse().unwrap()));
        assert!(!a.contains("11.0.0.1".parse().unwrap()));
        assert!(!a.contains("::1".parse().unwrap()));
        let b = Cidr::parse("fd00::1/64").unwrap();
        assert!(b.contains("fd00::ffff".parse().unwrap()));
        assert!(!b.contains("fd01::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("192.168.1.255/24").unwrap().is_reserved_host());
        assert!(!Cidr::parse("192.168.1.1/31").unwrap().is_reserved_host());
    }

    #[test]
    fn backup_servers() {
        let s = BackupServer::parse("sftp://backup@192.168.1.5/outpost").unwrap();
        assert_eq!((s.user.as_str(), s.host.as_str(), s.port, s.path.as_str()), ("backup", "192.168.1.5", 22, "outpost"));
        let s = BackupServer::parse("sftp://backup@backup.example.org:2222//srv/outpost/").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.path.as_str()), ("backup.example.org", 2222, "/srv/outpost"));
        for bad in ["s3://bucket/x", "sftp://192.168.1.5/outpost", "sftp://backup@host", "sftp://backup@host:0/x", "sftp://backup@host/../etc", "sftp://backup@ho st/x", "sftp://backup@host/x;rm"] {
            assert!(BackupServer::parse(bad).is_err(), "{bad}");
        }
        let ok = site("[backup]\nserver = \"sftp://backup@10.1.1.1/clinics\"\n").unwrap();
        assert_eq!(ok.backup.unwrap().at, "02:00");
        for (extra, want) in [
            ("[backup]\nserver = \"ftp://x@y/z\"\n", "backup.server"),
            ("[backup]\nserver = \"sftp://x@y/z\"\nat = \"2:30\"\n", "backup.at"),
            ("[backup]\nserver = \"sftp://x@y/z\"\nat = \"24:00\"\n", "backup.at"),
            ("[backup]\nserver = \"sftp://x@y/z\"\nhost-key = \"AAAA\"\n", "backup.host-key"),
            ("[backup]\nat = \"02:30\"\n", "backup"),
            ("[backup]\nkey-file = \"\"\n", "backup.key-file"),
            ("[status]\npush = \"ftp://x/y\"\n", "status.push"),
            ("[status]\npush = \"https://x/y\"\nevery-minutes = 0\n", "status.every-minutes"),
        ] {
            let err = site(extra).unwrap_err().to_string();
            assert!(err.contains(want), "for {extra:?}: wanted {want:?} in {err}");
        }
    }
}
