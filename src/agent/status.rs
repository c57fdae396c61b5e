//! The appliance's state, for a person at the status page and for a monitoring system
//! (`outpost status`): the release, uptime, the system's and the stacks' units, file system use,
//! how the data partition is protected and opened, the TPM and Secure Boot, power cuts and the
//! last backup. One JSON document and the same figures as Prometheus metrics, both written next
//! to the status page every 30 s; nothing here waits for the network or writes beyond a few bytes.
//!
//! Power cuts are found by what a clean shutdown removes: at every boot `status boot` finds the
//! previous boot's `alive` record still there when that boot ended without a shutdown, counts a
//! cut (once per lost boot, even when the power fails again while it is being counted) and
//! leaves its own record, refreshed with every status write so the cut's time is known to 30 s;
//! `status shutdown` removes it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::files::{atomic_write, unix_now};
use crate::format::stack::service_unit;
use crate::format::update::{RELEASE_PATH, STATUS_RUN_PATH};

/// Kept on the data partition: the running boot's record, and the cuts counted so far.
const POWER_DIR: &str = "/var/lib/outpost/power";
/// How the data partition was opened at this boot (written by `agent::data`).
pub const DATA_RUN_PATH: &str = "/run/outpost/data.json";
/// The last backup's report (written by the backup).
pub const LAST_BACKUP_PATH: &str = "/var/lib/outpost/backup/last.json";
/// Where Debian's and Ubuntu's node exporter read `*.prom` files (its text file collector).
const NODE_EXPORTER_TEXTFILES: &str = "/var/lib/prometheus/node-exporter";
/// The last push of the status to the site's URL (`outpost status push`).
const PUSH_RUN_PATH: &str = "/run/outpost/status-push.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Alive {
    boot_id: String,
    booted: u64,
    last_seen: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerCuts {
    pub count: u64,
    /// The boot that ended without a shutdown, when it was last seen alive (Unix seconds),
    /// and when the next boot noticed.
    pub last: Option<Cut>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    pub boot_id: String,
    pub last_seen: u64,
    pub noticed: u64,
}

/// At boot, once /var is mounted: count the previous boot as cut if its record is still there,
/// then leave this boot's.
pub fn boot() -> Result<()> {
    let dir = Path::new(POWER_DIR);
    fs_err::create_dir_all(dir)?;
    let me = boot_id()?;
    let now = unix_now();
    if let Some(prev) = read_json::<Alive>(&dir.join("alive")).filter(|a| a.boot_id != me) {
        let mut cuts = read_json::<PowerCuts>(&dir.join("cuts.json")).unwrap_or_default();
        // A cut while this was being counted leaves the same record: counted once.
        if cuts.last.as_ref().map(|c| c.boot_id.as_str()) != Some(prev.boot_id.as_str()) {
            cuts.count += 1;
            cuts.last = Some(Cut { boot_id: prev.boot_id.clone(), last_seen: prev.last_seen, noticed: now });
            write_json(&dir.join("cuts.json"), &cuts)?;
            super::say(&format!("status: the previous boot ended without a shutdown (a power cut; last seen {} s before this boot's record)", now.saturating_sub(prev.last_seen)));
        }
    }
    write_json(&dir.join("alive"), &Alive { boot_id: me, booted: now, last_seen: now })
}

/// At a clean shutdown, before /var is unmounted.
pub fn shutdown() -> Result<()> {
    crate::files::remove_if_exists(&Path::new(POWER_DIR).join("alive"))?;
    if let Ok(d) = fs_err::File::open(POWER_DIR) {
        d.sync_all().with_context(|| format!("syncing {POWER_DIR}"))?;
    }
    Ok(())
}

/// Prints the status as JSON, or as Prometheus metrics.
pub fn show(prometheus: bool) -> Result<()> {
    let s = collect(Path::new("/"));
    let text = if prometheus { metrics(&s) } else { serde_json::to_string_pretty(&s)? + "\n" };
    // A reader that stops early (`| grep -q`, `| head`) is not an error.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Writes `DIR/status.json` and `DIR/metrics.txt` (the status page serves both; `.txt` gives
/// the `text/plain` type Prometheus expects) and refreshes this
/// boot's `alive` record.
pub fn write(dir: &Path) -> Result<()> {
    write_files(dir, &collect(Path::new("/")))
}

fn write_files(dir: &Path, s: &Status) -> Result<()> {
    let text = serde_json::to_string_pretty(s)? + "\n";
    replace(&dir.join("status.json"), text.as_bytes())?;
    let m = metrics(s);
    replace(&dir.join("metrics.txt"), m.as_bytes())?;
    // The node exporter's text file collector (the node-exporter layer) serves them too.
    if Path::new(NODE_EXPORTER_TEXTFILES).is_dir() {
        replace(&Path::new(NODE_EXPORTER_TEXTFILES).join("outpost.prom"), m.as_bytes())?;
    }
    let alive = Path::new(POWER_DIR).join("alive");
    if let Some(mut a) = read_json::<Alive>(&alive) {
        a.last_seen = unix_now();
        write_json(&alive, &a)?;
    }
    Ok(())
}

/// How often the status page's service writes the page and the files beside it again.
const SERVE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// `outpost status serve` (the status page's service): writes the page and the files beside
/// it, serves them with busybox httpd, and writes them again every 30 s; returns (an error:
/// systemd starts the unit again) when the web server stops. One process renders the page:
/// under emulation each process a boot starts costs 50-300 ms, and the shell script this
/// replaces started a dozen before the port first answered.
pub fn serve(dir: &Path, port: u16, page: &Path) -> Result<()> {
    let template = fs_err::read_to_string(page)?;
    let write_all = |dir: &Path, template: &str, ask: Ask| {
        let s = collect_as(Path::new("/"), ask);
        if let Err(e) = write_files(dir, &s).and_then(|()| write_page(dir, template, &s)) {
            eprintln!("outpost: writing the status page into {}: {e:#}", dir.display());
        }
    };
    // The port answers once the page is there. Its first writing leaves out what only systemd
    // can say (the boot's state, failed units): two systemctl processes took 2-3 s while the
    // boot was busy around them. The whole page follows at once, behind the port.
    write_all(dir, &template, Ask::FilesOnly);
    let mut httpd = crate::tool::Tool::new("busybox")
        .describe(format!("serving the status page on port {port}"))
        .args(["httpd", "-f", "-p", &port.to_string(), "-h"])
        .arg(dir)
        .start()?;
    let d = dir.to_path_buf();
    std::thread::spawn(move || {
        loop {
            write_all(&d, &template, Ask::Systemd);
            // Written again every 30 s, and as soon as the addresses change (DHCP comes after
            // the page starts at boot): reading them starts no process.
            let addrs = super::addresses::global();
            let since = std::time::Instant::now();
            while since.elapsed() < SERVE_EVERY && super::addresses::global() == addrs {
                std::thread::sleep(ADDRESSES_EVERY);
            }
        }
    });
    let st = httpd.wait().context("waiting for the status page's web server")?;
    anyhow::bail!("the status page's web server (busybox httpd on port {port}) stopped: {st}")
}

/// How often the status page's writer looks for changed addresses.
const ADDRESSES_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a status asks systemd (processes) or reads only files and the kernel.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ask {
    Systemd,
    FilesOnly,
}

/// `DIR/index.html`: the page's template with its values filled in, and the deployment's CA
/// certificate beside it when the box has one.
fn write_page(dir: &Path, template: &str, s: &Status) -> Result<()> {
    let mut tls = String::new();
    if let Ok(t) = fs_err::read_to_string("/run/outpost/tls.txt") {
        tls = format!("<p>HTTPS certificate: {}</p>", html(t.trim()));
    }
    if let Ok(ca) = std::fs::read(CA_PATH) {
        replace(&dir.join("ca.crt"), &ca)?;
        tls += "<p><a href=\"/ca.crt\">The deployment's CA certificate</a>, for phones and laptops to trust this box.</p>";
    }
    let os = fs_err::read_to_string("/etc/os-release").unwrap_or_default();
    let os = os.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_string()).unwrap_or_default();
    let state = if s.system.is_empty() { "unknown" } else { s.system.as_str() };
    let page = fill(template, &[("host", &s.hostname), ("os", &os), ("addresses", &s.addresses.join("\n")), ("state", state)]).replace("@tls@", &tls);
    replace(&dir.join("index.html"), page.as_bytes())
}

/// `@name@` in `template` replaced by each value, HTML-escaped.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values.iter().fold(template.to_string(), |t, (k, v)| t.replace(&format!("@{k}@"), &html(v)))
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The deployment's CA certificate, for phones and laptops to install.
const CA_PATH: &str = "/var/lib/outpost/tls-source/ca.crt";

/// `outpost status push` (the site's timer): this status, POSTed as JSON to the site's URL,
/// retried a few times; the result is kept for the next status, and a failure (no link, the
/// server down) never fails the unit: it would mark the box degraded for want of a link.
pub fn push() -> Result<()> {
    let Some(url) = super::site::applied(Path::new("/")).ok().flatten().and_then(|s| s.status).map(|s| s.push) else {
        return Ok(());
    };
    let body = Path::new("/run/outpost/status-push-body.json");
    write_json(body, &collect(Path::new("/")))?;
    let size = fs_err::metadata(body)?.len();
    let r = crate::tool::Tool::new("curl")
        .describe(format!("sending the status to {url}"))
        .args(["-sS", "-f", "-o", "/dev/null", "--max-time", "30", "--retry", "3", "--retry-delay", "10", "--retry-all-errors", "-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(&url)
        .run();
    let report = serde_json::json!({"ok": r.is_ok(), "at": unix_now(), "url": url, "error": r.as_ref().err().map(|e| e.to_string())});
    write_json(Path::new(PUSH_RUN_PATH), &report)?;
    match r {
        Ok(()) => super::say(&format!("status: sent to {url} ({size} bytes)")),
        Err(e) => super::say(&format!("status: not sent to {url}: {e}; tried again at the next push")),
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub hostname: String,
    /// Each interface's global addresses (`enp0s1 10.0.2.15/24`).
    pub addresses: Vec<String>,
    /// `usr/lib/outpost/release.json`: image, release, root hash.
    pub release: Value,
    pub uptime_seconds: u64,
    /// `systemctl is-system-running`.
    pub system: String,
    pub failed_units: Vec<String>,
    pub stacks: Vec<Service>,
    pub filesystems: Vec<Filesystem>,
    /// How the data partition was opened at this boot (`unlock`, `encrypted`), if it was.
    pub data: Value,
    pub tpm: bool,
    pub secure_boot: Option<bool>,
    pub power_cuts: PowerCuts,
    pub last_backup: Value,
    /// The key this box logs in to the site's backup server with, once it has one: what the
    /// server's administrator allows.
    pub backup_server_key: Option<String>,
    /// The last push of this status to the site's URL, at this boot (`ok`, `at`, `error`).
    pub status_push: Value,
    /// The update state (`outpost update status`), if an update ran at this boot.
    pub update: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Service {
    pub stack: String,
    pub service: String,
    pub unit: String,
    pub state: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Filesystem {
    pub mount: String,
    pub size_bytes: u64,
    pub used_bytes: u64,
}

/// Everything under `root` (tests pass a tree); what cannot be read is reported empty, never
/// an error: a status must come out when the box is at its worst.
pub fn collect(root: &Path) -> Status {
    collect_as(root, Ask::Systemd)
}

/// The status; with `Ask::FilesOnly` without the boot's state, failed units and the stacks'
/// unit states (`unknown`), which only systemd can say.
fn collect_as(root: &Path, ask: Ask) -> Status {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let text = |p: &str| fs_err::read_to_string(at(p)).map(|t| t.trim().to_string()).unwrap_or_default();
    let json = |p: &str| fs_err::read(at(p)).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()).unwrap_or(Value::Null);
    let uptime = text("/proc/uptime").split('.').next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let secure_boot = fs_err::read(at("/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c")).ok().and_then(|b| b.get(4).map(|v| *v == 1));
    let units: Vec<(String, String, String)> = super::stack::services(root).unwrap_or_default().into_iter().map(|(stack, service, _)| (service_unit(&stack, &service), stack, service)).collect();
    let systemd = ask == Ask::Systemd;
    let states = if systemd { unit_states(&units.iter().map(|(unit, _, _)| unit.clone()).collect::<Vec<_>>()) } else { vec!["unknown".to_string(); units.len()] };
    Status {
        hostname: text("/proc/sys/kernel/hostname"),
        // The running system's: a tree has none of its own.
        addresses: if root == Path::new("/") { super::addresses::global().iter().map(ToString::to_string).collect() } else { Vec::new() },
        release: json(RELEASE_PATH),
        uptime_seconds: uptime,
        system: if systemd { super::system_state() } else { String::new() },
        failed_units: if systemd { super::units_in_state("failed") } else { Vec::new() },
        stacks: units.into_iter().zip(states).map(|((unit, stack, service), state)| Service { stack, service, unit, state }).collect(),
        filesystems: ["/", "/var"].iter().filter_map(|m| filesystem(&at(m), m)).collect(),
        data: json(DATA_RUN_PATH),
        tpm: at("/sys/class/tpm/tpm0").exists(),
        secure_boot,
        power_cuts: read_json(&at(POWER_DIR).join("cuts.json")).unwrap_or_default(),
        last_backup: json(LAST_BACKUP_PATH),
        status_push: json(PUSH_RUN_PATH),
        backup_server_key: Some(text(&format!("{}/id_ed25519.pub", super::backup::SSH_DIR))).filter(|k| !k.is_empty()),
        update: json(STATUS_RUN_PATH),
    }
}

/// The same figures as Prometheus metrics (text format 0.0.4).
pub fn metrics(s: &Status) -> String {
    let mut m = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, samples: &[(String, f64)]| {
        m += &format!("# HELP outpost_{name} {help}\n# TYPE outpost_{name} {kind}\n");
        for (labels, v) in samples {
            m += &format!("outpost_{name}{labels} {v}\n");
        }
    };
    let label = |pairs: &[(&str, &str)]| {
        let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))).collect();
        format!("{{{}}}", inner.join(","))
    };
    let field = |k: &str| s.release.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    metric("info", "The appliance's image and release.", "gauge", &[(label(&[("hostname", &s.hostname), ("image", &field("image")), ("release", &field("release"))]), 1.0)]);
    metric("uptime_seconds", "Seconds since this boot.", "gauge", &[(String::new(), s.uptime_seconds as f64)]);
    metric("system_running", "1 when systemd reports the system `running`.", "gauge", &[(String::new(), flag(s.system == "running"))]);
    metric("failed_units", "Units in the failed state.", "gauge", &[(String::new(), s.failed_units.len() as f64)]);
    let services: Vec<(String, f64)> = s.stacks.iter().map(|x| (label(&[("stack", &x.stack), ("service", &x.service)]), flag(x.state == "active"))).collect();
    metric("stack_service_active", "1 when a stack's service is active.", "gauge", &services);
    let size: Vec<(String, f64)> = s.filesystems.iter().map(|f| (label(&[("mount", &f.mount)]), f.size_bytes as f64)).collect();
    metric("filesystem_size_bytes", "Size of the appliance's file systems.", "gauge", &size);
    let used: Vec<(String, f64)> = s.filesystems.iter().map(|f| (label(&[("mount", &f.mount)]), f.used_bytes as f64)).collect();
    metric("filesystem_used_bytes", "Bytes used on the appliance's file systems.", "gauge", &used);
    metric("data_encrypted", "1 when the data partition is encrypted.", "gauge", &[(String::new(), flag(s.data.get("encrypted") == Some(&Value::Bool(true))))]);
    metric("tpm_present", "1 when the machine has a TPM 2.0.", "gauge", &[(String::new(), flag(s.tpm))]);
    metric("secure_boot_enabled", "1 when the firmware enforces Secure Boot.", "gauge", &[(String::new(), flag(s.secure_boot == Some(true)))]);
    metric("power_cuts_total", "Boots that ended without a shutdown.", "counter", &[(String::new(), s.power_cuts.count as f64)]);
    if let Some(c) = &s.power_cuts.last {
        metric("last_power_cut_timestamp_seconds", "When the last cut boot was last seen alive.", "gauge", &[(String::new(), c.last_seen as f64)]);
    }
    if let Some(t) = s.last_backup.get("finished").and_then(Value::as_u64) {
        metric("last_backup_timestamp_seconds", "When the last backup finished.", "gauge", &[(String::new(), t as f64)]);
    }
    m
}

/// `ActiveState` of each unit, in order ("unknown" where systemctl does not answer).
fn unit_states(units: &[String]) -> Vec<String> {
    if units.is_empty() {
        return Vec::new();
    }
    let out = crate::tool::Tool::new("systemctl").describe("reading the stacks' states").args(["show", "--property=ActiveState", "--value"]).args(units).output().unwrap_or_default();
    let mut states: Vec<String> = out.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    states.resize(units.len(), "unknown".into());
    states
}

fn filesystem(path: &Path, mount: &str) -> Option<Filesystem> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we own from a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some(Filesystem { mount: mount.to_string(), size_bytes: st.f_blocks as u64 * frsize, used_bytes: (st.f_blocks as u64).saturating_sub(st.f_bfree as u64) * frsize })
}

fn boot_id() -> Result<String> {
    Ok(fs_err::read_to_string("/proc/sys/kernel/random/boot_id")?.trim().to_string())
}

fn read_json<T: for<'de> Deserialize<'de>>(p: &Path) -> Option<T> {
    fs_err::read(p).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

fn write_json<T: Serialize>(p: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_vec_pretty(v)?;
    atomic_write(p, |f| Ok(std::io::Write::write_all(f, &text)?))
}

/// Replaces a file the status page serves (in /run: no fsync needed, only never a half file).
fn replace(p: &Path, bytes: &[u8]) -> Result<()> {
    let tmp: PathBuf = crate::files::partial(p);
    fs_err::write(&tmp, bytes)?;
    fs_err::rename(&tmp, p)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_of_a_tree_and_its_metrics() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let put = |p: &str, text: &str| {
            let f = r.join(p);
            fs_err::create_dir_all(f.parent().unwrap()).unwrap();
            fs_err::write(f, text).unwrap();
        };
        put("usr/lib/outpost/release.json", r#"{"image": "pacs-clinic", "release": "3"}"#);
        put("usr/lib/outpost/stacks/orthanc-pacs/orthanc.run.json", "{}");
        put("usr/lib/outpost/stacks/orthanc-pacs/postgres.run.json", "{}");
        put("proc/uptime", "1234.56 99.0\n");
        put("proc/sys/kernel/hostname", "clinic-\"x\"\n");
        put("run/outpost/data.json", r#"{"unlock": "tpm2", "encrypted": true}"#);
        put("var/lib/outpost/power/cuts.json", r#"{"count": 4, "last": {"boot_id": "b", "last_seen": 1700000000, "noticed": 1700000100}}"#);
        put("var/lib/outpost/backup/last.json", r#"{"finished": 1700000200, "target": "usb"}"#);
        let s = collect(r);
        assert_eq!(s.uptime_seconds, 1234);
        assert_eq!(s.release["release"], "3");
        assert_eq!(s.stacks.iter().map(|x| x.unit.as_str()).collect::<Vec<_>>(), ["outpost-orthanc-pacs-orthanc.service", "outpost-orthanc-pacs-postgres.service"]);
        assert_eq!(s.power_cuts.count, 4);
        assert!(!s.tpm);
        assert_eq!(s.filesystems.len(), 2);
        let m = metrics(&s);
        assert!(m.contains("outpost_info{hostname=\"clinic-\\\"x\\\"\",image=\"pacs-clinic\",release=\"3\"} 1\n"), "{m}");
        assert!(m.contains("outpost_power_cuts_total 4\n"), "{m}");
        assert!(m.contains("outpost_data_encrypted 1\n"), "{m}");
        assert!(m.contains("outpost_last_backup_timestamp_seconds 1700000200\n"), "{m}");
        assert!(m.contains("# TYPE outpost_stack_service_active gauge\n"), "{m}");
        assert!(s.addresses.is_empty(), "a tree has no addresses of its own: {:?}", s.addresses);
        // The page's values are escaped; a name that is not a value stays as written.
        let page = fill("<b>@host@</b> @state@ @other@", &[("host", &s.hostname), ("state", "running")]);
        assert_eq!(page, "<b>clinic-&quot;x&quot;</b> running @other@");
        // Every sample line is `name{labels} value` or `name value`.
        for l in m.lines().filter(|l| !l.starts_with('#')) {
            let v = l.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }
}
