//! The site's settings on the device: `outpost seed apply` renders the seed's site.toml into
//! system configuration at every boot, and `outpost seed check-network` falls back to DHCP
//! when they give no connectivity. (`output::personalize` writes the seed on the build host.)

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::addresses::global;
use super::{say as console, wait_for};
use crate::format::layout::SEED_LABEL;
use crate::format::seed;
use crate::spec::{Cidr, Site};
use crate::tool::{Tool, shell_quote};

/// Where the applied site is kept in the guest, for the network check and the next boot.
pub const APPLIED: &str = "var/lib/outpost/site.toml";

/// The site settings applied on the box under `root`: `None` when no site was applied, an error
/// when what is kept does not parse.
pub fn applied(root: &Path) -> Result<Option<Site>> {
    let path = root.join(APPLIED);
    let Ok(text) = fs_err::read_to_string(&path) else { return Ok(None) };
    Ok(Some(Site::parse(&path, &text)?))
}
/// Where this boot's site came from (`seed:/site.toml`, a NoCloud disk, the metadata service),
/// empty when none.
pub const SOURCE: &str = "/run/outpost/site-source";
const NETWORK_PREFIX: &str = "10-outpost-site-";
/// The daily server backup's timer (its service is the backup layer's).
const BACKUP_TIMER: &str = "outpost-backup-server.timer";
/// The status push's timer (its service is the appliance layer's).
const PUSH_TIMER: &str = "outpost-status-push.timer";
const HEADER: &str = "# Written by outpost from the site seed; edits here are replaced at the next boot.\n";

/// A file the site wants, relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File { mode: u32, text: String },
    Symlink(PathBuf),
}

/// The configuration files a site stands for. Pure, so that tests and `personalize --dry-run`
/// can look at it.
pub fn render(site: &Site) -> BTreeMap<PathBuf, Entry> {
    let file = |text: String| Entry::File { mode: 0o644, text };
    let mut out = BTreeMap::new();
    out.insert(PathBuf::from("etc/hostname"), file(format!("{}\n", site.hostname)));
    out.insert(
        PathBuf::from("etc/hosts"),
        file(format!("127.0.0.1\tlocalhost\n127.0.1.1\t{0}\n::1\tlocalhost ip6-localhost ip6-loopback\n", site.hostname)),
    );
    for (i, ifc) in site.interfaces.iter().enumerate() {
        let mut t = format!("{HEADER}[Match]\nName={}\n\n[Network]\n", ifc.name);
        if ifc.dhcp {
            t.push_str("DHCP=yes\n");
        }
        for a in &ifc.address {
            t.push_str(&format!("Address={a}\n"));
        }
        for g in ifc.gateway.iter().chain(ifc.gateway6.iter()) {
            t.push_str(&format!("Gateway={g}\n"));
        }
        for d in &ifc.dns {
            t.push_str(&format!("DNS={d}\n"));
        }
        out.insert(PathBuf::from(format!("etc/systemd/network/{NETWORK_PREFIX}{i}.network")), file(t));
    }
    if let Some(w) = &site.wifi {
        let key_mgmt = if w.security == "wpa3" { "SAE" } else { "WPA-PSK" };
        let psk = if w.security == "wpa3" { "sae_password" } else { "psk" };
        out.insert(
            PathBuf::from("etc/wpa_supplicant/wpa_supplicant-outpost.conf"),
            Entry::File {
                mode: 0o600,
                text: format!(
                    "{HEADER}ctrl_interface=DIR=/run/wpa_supplicant\nnetwork={{\n\tssid=\"{}\"\n\tkey_mgmt={key_mgmt}\n\t{psk}=\"{}\"\n}}\n",
                    w.ssid.replace('"', ""),
                    w.passphrase.replace('"', "")
                ),
            },
        );
        out.insert(
            PathBuf::from(format!("etc/systemd/network/{NETWORK_PREFIX}wifi.network")),
            file(format!("{HEADER}[Match]\nType=wlan\n\n[Network]\nDHCP=yes\n")),
        );
    }
    if !site.ntp.is_empty() {
        out.insert(PathBuf::from("etc/systemd/timesyncd.conf.d/outpost-site.conf"), file(format!("{HEADER}[Time]\nNTP={}\n", site.ntp.join(" "))));
    }
    if let Some(tz) = &site.timezone {
        out.insert(PathBuf::from("etc/localtime"), Entry::Symlink(PathBuf::from("/usr/share/zoneinfo").join(tz)));
        out.insert(PathBuf::from("etc/timezone"), file(format!("{tz}\n")));
    }
    // The console login screen: what clinic staff read off the screen. agetty fills in \4 and
    // \6 with the current addresses.
    let mut issue = format!("\n  outpost appliance {}\n  IPv4: \\4   IPv6: \\6\n  Status page: http://\\4/\n", site.hostname);
    for (k, v) in &site.app {
        if k.ends_with("url") {
            issue.push_str(&format!("  {}: {v}\n", k.replace('_', " ")));
        }
    }
    issue.push('\n');
    out.insert(PathBuf::from("etc/issue"), file(issue));
    let mut env = format!("{HEADER}OUTPOST_SITE_HOSTNAME={}\n", shell_quote(&site.hostname));
    for (k, v) in &site.app {
        env.push_str(&format!("{}={}\n", k.to_uppercase(), shell_quote(v)));
    }
    out.insert(PathBuf::from("etc/outpost/site.env"), file(env));
    // The same variables for the stacks' environment (`outpost stack run`), which may set a
    // declared secret: readable by root only.
    let app: BTreeMap<String, &String> = site.app.iter().map(|(k, v)| (k.to_uppercase(), v)).collect();
    out.insert(
        PathBuf::from(crate::format::stack::SITE_APP_JSON.trim_start_matches('/')),
        Entry::File { mode: 0o600, text: serde_json::to_string_pretty(&app).expect("strings") + "\n" },
    );
    // Timers the site asks for: written here, not in the image, and started by `apply` (systemd
    // reads a unit it has not loaded yet from the disk, so no reload is needed).
    let mut timer = |name: &str, description: String, timer: String| {
        out.insert(PathBuf::from(format!("etc/systemd/system/{name}")), file(format!("{HEADER}[Unit]\nDescription={description}\n\n[Timer]\n{timer}")));
    };
    if let Some(b) = site.backup.as_ref().filter(|b| b.server.is_some()) {
        timer(
            BACKUP_TIMER,
            format!("Daily backup to the site's server at {}", b.at),
            format!("OnCalendar=*-*-* {}:00\n# A box that was off at that time backs up when it is back on.\nPersistent=true\n", b.at),
        );
    }
    if let Some(st) = &site.status {
        let every = st.every_minutes;
        timer(PUSH_TIMER, format!("Send the status to the site's URL every {every} minutes"), format!("OnActiveSec=2min\nOnUnitActiveSec={every}min\nRandomizedDelaySec=30s\n"));
    }
    for a in &site.admins {
        out.insert(PathBuf::from(format!("home/{}/.ssh/authorized_keys", a.name)), Entry::File { mode: 0o600, text: a.ssh_keys.join("\n") + "\n" });
    }
    out
}

/// Writes what differs; returns the paths it changed.
fn write_entries(root: &Path, entries: &BTreeMap<PathBuf, Entry>) -> Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    for (rel, e) in entries {
        let p = root.join(rel);
        if let Some(dir) = p.parent() {
            fs_err::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        match e {
            Entry::File { mode, text } => {
                let same = !p.is_symlink()
                    && fs_err::read(&p).is_ok_and(|b| b == text.as_bytes())
                    && fs_err::metadata(&p).is_ok_and(|m| m.permissions().mode() & 0o7777 == *mode);
                if same {
                    continue;
                }
                if p.is_symlink() {
                    fs_err::remove_file(&p)?;
                }
                fs_err::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
                fs_err::set_permissions(&p, fs::Permissions::from_mode(*mode))?;
            }
            Entry::Symlink(target) => {
                if fs_err::read_link(&p).is_ok_and(|t| &t == target) {
                    continue;
                }
                if p.exists() || p.is_symlink() {
                    fs_err::remove_file(&p)?;
                }
                std::os::unix::fs::symlink(target, &p).with_context(|| format!("linking {}", p.display()))?;
            }
        }
        changed.push(rel.clone());
    }
    // Interfaces a previous seed configured and this one does not.
    let net = root.join("etc/systemd/network");
    if let Ok(rd) = fs_err::read_dir(&net) {
        for e in rd {
            let e = e?;
            let rel = PathBuf::from("etc/systemd/network").join(e.file_name());
            if e.file_name().to_string_lossy().starts_with(NETWORK_PREFIX) && !entries.contains_key(&rel) {
                fs_err::remove_file(e.path())?;
                changed.push(rel);
            }
        }
    }
    Ok(changed)
}

/// `outpost seed apply`, in the guest at boot: the seed's site.toml, if any, becomes system
/// configuration. Idempotent: the same seed twice changes nothing the second time.
pub fn apply(root: &Path, device: Option<&Path>) -> Result<()> {
    // Host keys are per machine, seed or no seed: images ship without them.
    if root == Path::new("/") && crate::tool::which("ssh-keygen").is_some() {
        host_keys(Path::new("/etc/ssh"), Path::new(HOST_KEYS))?;
    }
    let dev = match device {
        Some(d) => Some(d.to_path_buf()),
        None => wait_for(&Path::new("/dev/disk/by-partlabel").join(SEED_LABEL), Duration::from_secs(10)),
    };
    if let Some(dev) = &dev
        && root == Path::new("/")
    {
        // A failure here must not keep the site's network from coming up.
        let source = Path::new(crate::format::stack::TLS_SOURCE_DIR);
        if let Err(e) = super::tls::take_from_seed(dev, source, super::data::closed()) {
            console(&format!("tls: the seed's TLS files were not taken: {e:#}"));
        }
        if let Err(e) = super::backup::take_key_from_seed(dev, super::data::closed()) {
            console(&format!("backup: the site's backup key was not taken from the seed: {e:#}"));
        }
    }
    // A cloud instance's site kept from the metadata service is on /var, open by now (applied
    // again by `outpost seed cloud` when it changed).
    let found = match find_site(dev.as_deref(), root == Path::new("/"))? {
        Some(f) => Some(f),
        None if root == Path::new("/") => super::cloud::kept_site(),
        None => None,
    };
    if root == Path::new("/") {
        let from = found.as_ref().map(|(_, s)| s.as_str()).unwrap_or("");
        fs_err::create_dir_all(Path::new(SOURCE).parent().expect("has a parent"))?;
        fs_err::write(SOURCE, from)?;
    }
    let Some((text, source)) = found else {
        let why = if dev.is_some() { "the seed has no site.toml" } else { "no seed partition" };
        console(&format!("{why} and no cloud metadata; keeping the image's settings (DHCP on every wired interface)"));
        return Ok(());
    };
    apply_site(root, &text, &source)?;
    Ok(())
}

/// A site's text and where it came from: the seed's site.toml or, with `cloud_disk`, a cloud's
/// NoCloud disk (a cloud instance has no personalized seed: its settings come as metadata).
fn find_site(seed_dev: Option<&Path>, cloud_disk: bool) -> Result<Option<(String, String)>> {
    if let Some(dev) = seed_dev
        && let Some(text) = seed::read_site(dev)?
    {
        return Ok(Some((text, "seed:/site.toml".to_string())));
    }
    Ok(if cloud_disk { super::cloud::disk_site(Path::new("/dev/disk/by-label")) } else { None })
}

/// `outpost seed network`, before the data partition is open: the site's settings that live
/// in /etc (host name, network, Wi-Fi's file, time zone, NTP), from the seed or a cloud's disk,
/// so that systemd-networkd brings the network up beside the unlock rather than after it (the
/// first answer from the box waits for its address). `seed apply` follows once /var is there
/// and does the rest, finding these unchanged; a site kept from a cloud's metadata service is
/// on /var and comes with it. Problems are left for `seed apply` to report.
pub fn apply_network(root: &Path) -> Result<()> {
    // The root's disk is there, with its partition table read: one look, no waiting.
    let dev = super::root_disk_partition(SEED_LABEL, Duration::ZERO).ok();
    let Ok(Some((text, source))) = find_site(dev.as_deref(), true) else { return Ok(()) };
    let Ok(site) = Site::parse(Path::new(&source), &text) else { return Ok(()) };
    let in_etc: BTreeMap<PathBuf, Entry> = render(&site).into_iter().filter(|(p, _)| p.starts_with("etc")).collect();
    let changed = write_entries(root, &in_etc)?;
    if root == Path::new("/") {
        set_hostname(&site.hostname)?;
    }
    if !changed.is_empty() {
        console(&format!("site {}: network, host name and time settings written before the network starts", site.hostname));
    }
    Ok(())
}

/// Applies one site's settings under `root`; returns the files it changed (none when the text
/// is invalid: the previous settings stay, and the console says why).
pub fn apply_site(root: &Path, text: &str, source: &str) -> Result<Vec<PathBuf>> {
    let site = match Site::parse(Path::new(source), text) {
        Ok(s) => s,
        Err(e) => {
            // A typo made on a laptop must not stop the clinic's box from booting.
            console(&format!("the site settings from {source} are invalid; keeping the previous settings. {e}"));
            return Ok(Vec::new());
        }
    };
    let mut changed = write_entries(root, &render(&site))?;
    if root == Path::new("/") && changed.iter().any(|p| p.starts_with("etc/systemd/network")) {
        // `seed network` wrote them before systemd-networkd started, unless the site came
        // from elsewhere since (a cloud's metadata kept on /var): networkd, already started
        // or starting, reads them again. Queued, not waited for.
        if let Err(e) = Tool::new("systemctl").args(["try-restart", "--no-block", "systemd-networkd.service"]).run() {
            console(&format!("the site's network settings changed after the network started, and systemd-networkd was not restarted: {e}"));
        }
    }
    for a in &site.admins {
        if ensure_user(root, &a.name)? {
            changed.push(PathBuf::from(format!("user {}", a.name)));
        }
    }
    let applied = root.join(APPLIED);
    fs_err::create_dir_all(applied.parent().expect("has a parent"))?;
    if fs_err::read_to_string(&applied).ok().as_deref() != Some(text) {
        fs_err::write(&applied, text)?;
    }
    if root == Path::new("/") {
        set_hostname(&site.hostname)?;
        for ifc in wireless_interfaces() {
            if site.wifi.is_some() {
                enable_wifi(&ifc)?;
            }
        }
        for (wanted, timer, missing) in [
            (site.backup.as_ref().is_some_and(|b| b.server.is_some()), BACKUP_TIMER, "the site names a backup server, but this image has no backup layer: no backups are made"),
            (site.status.is_some(), PUSH_TIMER, "the site names a status URL, but this image cannot send its status"),
        ] {
            if !wanted {
                continue;
            }
            if Path::new("/etc/systemd/system").join(timer.replace(".timer", ".service")).exists() {
                // Queued, not waited for: the timer comes after sysinit.target, which waits for us.
                Tool::new("systemctl").describe(format!("starting {timer}")).args(["start", "--no-block", timer]).run()?;
            } else {
                console(missing);
            }
        }
    }
    if changed.is_empty() {
        console(&format!("site {} unchanged", site.hostname));
    } else {
        let list: Vec<String> = changed.iter().map(|p| p.display().to_string()).collect();
        console(&format!("site {} applied: {}", site.hostname, list.join(", ")));
    }
    Ok(changed)
}

/// Where SSH host keys outlive the boot: /etc is rebuilt in memory at every boot.
const HOST_KEYS: &str = "/var/lib/outpost/ssh";

/// The host keys a machine makes for itself: key type and file in /etc/ssh.
const HOST_KEY_KINDS: [(&str, &str); 2] = [("ed25519", "ssh_host_ed25519_key"), ("ecdsa", "ssh_host_ecdsa_key")];

/// SSH host keys: those kept on the data partition go back into /etc/ssh, `ssh-keygen` makes
/// any missing (the first boot: all), and new ones are kept. With the data partition closed the
/// keys last for this boot only, and the console says so.
fn host_keys(etc_ssh: &Path, store: &Path) -> Result<()> {
    let is_key = |e: &fs_err::DirEntry| e.file_name().to_string_lossy().starts_with("ssh_host_");
    if let Ok(rd) = fs_err::read_dir(store) {
        for e in rd.filter_map(Result::ok).filter(is_key) {
            fs_err::copy(e.path(), etc_ssh.join(e.file_name())).with_context(|| format!("restoring {}", e.path().display()))?;
        }
    }
    // Ed25519 and ECDSA, as every SSH client since 2017 accepts; not RSA, whose key generation
    // is most of a first boot's site step under emulation (and seconds on a slow clinic PC).
    // sshd skips the default key files that do not exist; kept RSA keys are still restored.
    for (kind, file) in HOST_KEY_KINDS {
        let key = etc_ssh.join(file);
        if !key.exists() {
            Tool::new("ssh-keygen").describe(format!("creating this machine's {kind} SSH host key")).args(["-q", "-t", kind, "-N", "", "-C", "", "-f"]).arg(&key).run()?;
        }
    }
    let kept = fs_err::create_dir_all(store).and_then(|()| {
        fs_err::set_permissions(store, fs::Permissions::from_mode(0o700))?;
        for e in fs_err::read_dir(etc_ssh)?.filter_map(Result::ok).filter(is_key) {
            let kept = store.join(e.file_name());
            if !kept.exists() {
                // Whole or not at all, whenever the power goes.
                let tmp = store.join(".new");
                fs_err::copy(e.path(), &tmp)?;
                fs_err::File::open(&tmp)?.sync_all()?;
                fs_err::rename(&tmp, &kept)?;
            }
        }
        Ok(())
    });
    if let Err(e) = kept {
        console(&format!("the SSH host keys cannot be kept in {} ({e}); they change at the next boot", store.display()));
    }
    Ok(())
}

fn set_hostname(name: &str) -> Result<()> {
    // SAFETY: the pointer and length describe a live byte slice.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    anyhow::ensure!(rc == 0, "setting the hostname to {name}: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Creates an administrator with a locked password (SSH keys only), in the sudo group when
/// there is one. Returns whether it did anything.
fn ensure_user(root: &Path, name: &str) -> Result<bool> {
    let passwd = fs_err::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let exists = passwd.lines().any(|l| l.split(':').next() == Some(name));
    let home = root.join("home").join(name);
    if !exists {
        let group = fs_err::read_to_string(root.join("etc/group")).unwrap_or_default();
        let mut t = Tool::new("useradd").describe(format!("creating the administrator {name}"));
        if root != Path::new("/") {
            t = t.arg("--root").arg(root);
        }
        t = t.args(["--create-home", "--shell", "/bin/bash"]);
        if group.lines().any(|l| l.starts_with("sudo:")) {
            t = t.args(["--groups", "sudo"]);
        }
        t.arg(name).run()?;
    }
    // authorized_keys was written as root before the user existed: hand the tree over.
    let ids = fs_err::read_to_string(root.join("etc/passwd"))?
        .lines()
        .find(|l| l.split(':').next() == Some(name))
        .and_then(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.get(2)?.parse::<u32>().ok()?, f.get(3)?.parse::<u32>().ok()?))
        });
    if let Some((uid, gid)) = ids {
        for p in [home.clone(), home.join(".ssh"), home.join(".ssh/authorized_keys")] {
            if p.exists() {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).with_context(|| format!("setting the owner of {}", p.display()))?;
            }
        }
        if home.join(".ssh").exists() {
            fs_err::set_permissions(home.join(".ssh"), fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(!exists)
}

fn wireless_interfaces() -> Vec<String> {
    let mut out: Vec<String> = fs_err::read_dir("/sys/class/net")
        .map(|rd| rd.filter_map(|e| e.ok()).filter(|e| e.path().join("wireless").exists()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn enable_wifi(ifc: &str) -> Result<()> {
    if crate::tool::which("wpa_supplicant").is_none() {
        console(&format!("{ifc} is a Wi-Fi interface but the image has no wpa_supplicant (package wpasupplicant); Wi-Fi settings not applied"));
        return Ok(());
    }
    let conf = format!("/etc/wpa_supplicant/wpa_supplicant-{ifc}.conf");
    if !Path::new(&conf).exists() {
        std::os::unix::fs::symlink("wpa_supplicant-outpost.conf", &conf)?;
    }
    Tool::new("systemctl").args(["enable", "--now", "--no-block"]).arg(format!("wpa_supplicant@{ifc}.service")).run()?;
    Ok(())
}

/// `outpost seed check-network`, in the guest once networkd runs: every static address of the
/// applied site must come up and its gateway answer; otherwise the site's network files go and
/// DHCP takes over, and the console says why.
pub fn check_network(root: &Path, limit: Duration) -> Result<()> {
    let Some(site) = applied(root)? else { return Ok(()) };
    let mut wanted: Vec<(String, Cidr, Option<String>)> = Vec::new();
    for ifc in &site.interfaces {
        for a in &ifc.address {
            wanted.push((ifc.name.clone(), Cidr::parse(a).map_err(anyhow::Error::msg)?, ifc.gateway.clone()));
        }
    }
    if wanted.is_empty() {
        report_addresses();
        return Ok(());
    }
    let start = Instant::now();
    let mut problem = String::new();
    'wait: while start.elapsed() < limit {
        problem.clear();
        let up = global();
        for (ifc, cidr, _) in &wanted {
            if !up.iter().any(|a| a.addr == cidr.addr) {
                problem = format!("{ifc}: address {} is not up (no link, or no such interface)", cidr.addr);
                std::thread::sleep(Duration::from_secs(1));
                continue 'wait;
            }
        }
        break;
    }
    if problem.is_empty() {
        for (ifc, _, gw) in &wanted {
            if let Some(gw) = gw
                && !(0..5).any(|_| gateway_present(gw))
            {
                problem = format!("{ifc}: the gateway {gw} does not answer");
            }
        }
    }
    if problem.is_empty() {
        console(&format!("site network settings are up ({:.0} s)", start.elapsed().as_secs_f64()));
    } else {
        console(&format!("site network settings give no connectivity ({problem}); falling back to DHCP"));
        let net = root.join("etc/systemd/network");
        for e in fs_err::read_dir(&net)? {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with(NETWORK_PREFIX) {
                fs_err::remove_file(e.path())?;
            }
        }
        fs_err::create_dir_all(root.join("run/outpost"))?;
        fs_err::write(root.join("run/outpost/network-fallback"), format!("{problem}\n"))?;
        Tool::new("networkctl").arg("reload").run()?;
        let links = fs_err::read_dir("/sys/class/net")?.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n != "lo");
        for l in links {
            Tool::new("networkctl").args(["reconfigure", &l]).run()?;
        }
        let start = Instant::now();
        while start.elapsed() < limit && global().is_empty() {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    report_addresses();
    Ok(())
}

/// Whether the gateway is on the link: it answers ping, or at least ARP/NDP (routers that drop
/// ICMP still resolve).
fn gateway_present(gw: &str) -> bool {
    if Tool::new("busybox").args(["ping", "-c", "1", "-W", "2", gw]).run().is_ok() {
        return true;
    }
    let out = Tool::new("ip").args(["-j", "neigh", "show", gw]).output().unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .is_some_and(|n| n.iter().any(|e| e.get("lladdr").is_some()))
}

fn report_addresses() {
    let addrs = global();
    let host = fs_err::read_to_string("/etc/hostname").unwrap_or_default();
    let shown: Vec<String> = addrs.iter().map(|a| a.addr.to_string()).collect();
    let urls: Vec<String> = addrs.iter().filter(|a| a.addr.is_ipv4()).map(|a| format!("http://{}/", a.addr)).collect();
    console(&format!("{} is at {} {}", host.trim(), shown.join(" "), urls.join(" ")));
}

#[cfg(test)]
#[path = "site_tests.rs"]
mod tests;
