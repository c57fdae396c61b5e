//! The stacks' services on the device. `outpost stack run` is a unit's ExecStart: it makes the
//! stack's per-device secrets on their first start, interpolates the service's environment
//! (secrets, then the site's variables, then the layer's defaults) and becomes `podman run`.
//! `outpost stack wait-healthy` waits in ExecStartPost until the container's health check
//! passes, so that units ordered after it start once it serves (compose's `service_healthy`).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::format::interpolate;
use crate::format::stack::{RunSpec, SECRETS, SITE_APP_JSON, STACK_DATA, Secret, SecretKind, StackSpec, TLS_DIR, TLS_SOURCE_DIR, VOLUMES, run_spec_path, stack_spec_path};
use crate::tool::Tool;

/// Variables podman itself needs from the unit (its readiness notification, its unit name).
const KEEP_ENV: &[&str] = &["NOTIFY_SOCKET", "PODMAN_SYSTEMD_UNIT", "INVOCATION_ID", "JOURNAL_STREAM"];

/// `outpost stack run STACK SERVICE`.
pub fn run(stack: &str, service: &str) -> Result<()> {
    let read = |p: String| -> Result<Vec<u8>> { fs_err::read(&p).with_context(|| format!("reading {p} (is `{stack}` a stack of this image, `{service}` one of its services?)")) };
    let spec: StackSpec = serde_json::from_slice(&read(stack_spec_path(stack))?).context("parsing the stack's specification")?;
    let run: RunSpec = serde_json::from_slice(&read(run_spec_path(stack, service))?).context("parsing the service's specification")?;
    let site: BTreeMap<String, String> = match fs_err::read(SITE_APP_JSON) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("parsing {SITE_APP_JSON}"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e.into()),
    };
    let secrets = ensure_secrets(Path::new(SECRETS), stack, &spec.secrets, &site)?;
    if run.tls {
        ensure_tls()?;
    }
    for d in &run.data_dirs {
        let p = Path::new(STACK_DATA).join(stack).join(d);
        fs_err::create_dir_all(&p)?;
    }
    for v in &run.volumes {
        ensure_volume_dir(Path::new(VOLUMES), v)?;
    }
    let argv = podman_argv(&run, &resolve_environment(&run.environment, &secrets, &site, &spec.defaults).with_context(|| format!("service `{service}` of stack `{stack}`"))?);
    Err(Tool::new("podman").describe(format!("starting service `{service}` of stack `{stack}`")).args(&argv).exec(KEEP_ENV))
}

/// The box's certificate made, renewed or kept (`agent::tls`), said on the console and given
/// to the status page; whether it was made by this call.
fn ensure_tls() -> Result<bool> {
    let host = fs_err::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "outpost".into());
    let _lock = super::lock(Path::new("/run/outpost/tls.lock"))?;
    let c = super::tls::ensure(Path::new(TLS_DIR), Path::new(TLS_SOURCE_DIR), &host)?;
    super::say(&format!("tls: {} certificate for {host} ({}), SHA-256 fingerprint {}, valid until {}", if c.made { "made a" } else { "the" }, c.kind, c.fingerprint, c.not_after));
    let line = format!("SHA-256 {} ({}), valid until {}\n", c.fingerprint, c.kind, c.not_after);
    crate::files::atomic_write(Path::new("/run/outpost/tls.txt"), |f| Ok(std::io::Write::write_all(f, line.as_bytes())?))?;
    Ok(c.made)
}

/// Every service of every stack in the image under `root`: `(stack, service, its run
/// specification)`, in name order.
pub fn services(root: &Path) -> Result<Vec<(String, String, PathBuf)>> {
    let mut found = Vec::new();
    for path in super::files_ending(&root.join(crate::format::stack::STACKS), 2, ".run.json")? {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (Some(service), Some(stack)) = (name.strip_suffix(".run.json"), path.parent().and_then(Path::file_name)) else { continue };
        found.push((stack.to_string_lossy().into_owned(), service.to_string(), path.clone()));
    }
    Ok(found)
}

/// The units of the services that serve the box's certificate, from the run specifications
/// under `root`.
pub fn tls_units(root: &Path) -> Result<Vec<String>> {
    let mut units = Vec::new();
    for (stack, service, path) in services(root)? {
        let run: RunSpec = serde_json::from_slice(&fs_err::read(&path)?).with_context(|| format!("parsing {}", path.display()))?;
        if run.tls {
            units.push(crate::format::stack::service_unit(&stack, &service));
        }
    }
    Ok(units)
}

/// `outpost stack renew-tls`, from a daily timer: a box that runs for years without a restart
/// still renews its certificate 30 days before it expires; the services that serve it are
/// restarted to load the new one.
pub fn renew_tls() -> Result<()> {
    let units = tls_units(Path::new("/"))?;
    if units.is_empty() || !ensure_tls()? {
        return Ok(());
    }
    super::say(&format!("tls: the certificate was renewed; restarting {}", units.join(", ")));
    Tool::new("systemctl").describe("restarting the services that serve the certificate").args(["try-restart", "--no-block"]).args(&units).run()?;
    Ok(())
}

/// Makes a podman volume's directories (`VOLUMES/NAME/_data`) and puts them on disk before
/// podman records the volume. Podman makes them and then writes its database with fdatasync,
/// which on ext4 does not commit the journal: a power cut a moment after a volume's first
/// `podman run` (measured: 1 s after its container joined the network) left the volume in the
/// database and not its directory, and every later start failed ("error stat'ing file
/// .../_data"), forever. Made here first, a directory podman finds is used as it is (its
/// image's content still copied into it while it is empty); a volume a cut already left so is
/// mended the same way.
fn ensure_volume_dir(volumes: &Path, name: &str) -> Result<()> {
    let data = volumes.join(name).join("_data");
    if data.is_dir() {
        return Ok(());
    }
    if let Some(storage) = volumes.parent() {
        fs_err::create_dir_all(storage)?;
    }
    // As podman makes them: the volume's own directory private, its data directory not.
    for (dir, mode) in [(volumes, 0o700), (&*volumes.join(name), 0o700), (&*data, 0o755)] {
        match fs_err::create_dir(dir) {
            Ok(()) => fs_err::set_permissions(dir, std::fs::Permissions::from_mode(mode))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
    }
    for dir in [&*data, &*volumes.join(name), volumes] {
        fs_err::File::open(dir)?.sync_all().with_context(|| format!("putting {} on disk", dir.display()))?;
    }
    Ok(())
}

/// The part of an OCI container state (runtime spec, `state`) the network hook reads.
#[derive(serde::Deserialize)]
struct HookState {
    pid: u32,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// What the hook does for one container: the bridge on which the box forwards 127.0.0.1, and
/// the container's default route, from its annotations (checked: they go into a path and a
/// command line).
fn hook_plan(state: &HookState) -> Result<(String, std::net::Ipv4Addr)> {
    use crate::format::stack::{BRIDGE_ANNOTATION, GATEWAY_ANNOTATION};
    let get = |k: &str| state.annotations.get(k).with_context(|| format!("the container has no annotation `{k}`"));
    let bridge = get(BRIDGE_ANNOTATION)?;
    anyhow::ensure!(
        bridge.starts_with("podman") && bridge.len() <= 15 && bridge.bytes().all(|b| b.is_ascii_alphanumeric()),
        "annotation `{BRIDGE_ANNOTATION}`: `{bridge}` is not a stack's bridge (podmanN)"
    );
    let gateway = get(GATEWAY_ANNOTATION)?;
    let gateway = gateway.parse().with_context(|| format!("annotation `{GATEWAY_ANNOTATION}`: `{gateway}` is not an IPv4 address"))?;
    Ok((bridge.clone(), gateway))
}

/// `outpost stack network-hook`: podman's OCI hook for a stack's container (HOOKS_DIR), run
/// once netavark has set up its network namespace on the stack's internal network, before its
/// process starts. Internal, netavark gave it no default route and wrote no firewall rules
/// (`container::units::write_network`), and turned forwarding off on its bridge: the route is
/// added here and forwarding turned on, and the box's firewall forwards the published ports. A
/// DNAT from 127.0.0.1 to a container leaves the box by the bridge with that source, which the
/// kernel drops unless the bridge has route_localnet.
pub fn network_hook(input: &mut impl Read) -> Result<()> {
    let mut text = String::new();
    input.read_to_string(&mut text).context("reading the container's state from podman")?;
    let state: HookState = serde_json::from_str(&text).context("parsing the container's state from podman")?;
    let (bridge, gateway) = hook_plan(&state)?;
    // netavark turns forwarding off on an internal network's bridge (at each container's
    // setup): on, the box routes the published ports in and the containers' connections out.
    for (setting, why) in [("forwarding", "letting the box forward to and from its stacks' containers"), ("route_localnet", "letting the box reach its published ports from 127.0.0.1")] {
        let path = format!("/proc/sys/net/ipv4/conf/{bridge}/{setting}");
        fs_err::write(&path, "1").with_context(|| format!("{why} ({path})"))?;
    }
    Tool::new("nsenter")
        .describe(format!("adding the container's default route via {gateway}"))
        .args(["--target", &state.pid.to_string(), "--net", "ip", "-4", "route", "replace", "default", "via", &gateway.to_string()])
        .run()?;
    Ok(())
}

/// The environment with every value interpolated: secrets first, then the site's variables,
/// then the layer's defaults.
pub fn resolve_environment(env: &BTreeMap<String, String>, secrets: &BTreeMap<String, String>, site: &BTreeMap<String, String>, defaults: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    let mut lookup = |n: &str| secrets.get(n).or_else(|| site.get(n)).or_else(|| defaults.get(n)).cloned();
    env.iter()
        .map(|(k, v)| interpolate::interpolate(v, &mut lookup).map(|v| (k.clone(), v)).map_err(|e| anyhow::anyhow!("environment `{k}`: {e}")))
        .collect()
}

/// `podman run` with the environment as `--env=K=V` (exec'd directly: values may span lines).
pub fn podman_argv(run: &RunSpec, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut argv = run.args.clone();
    argv.extend(env.iter().map(|(k, v)| format!("--env={k}={v}")));
    argv.extend(run.tail.iter().cloned());
    argv
}

/// The stack's secrets, made the first time (one lock per stack: its services start together).
/// A site variable of the same name is the secret (a site may set one); it is not stored.
pub fn ensure_secrets(root: &Path, stack: &str, declared: &BTreeMap<String, Secret>, site: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if declared.is_empty() {
        return Ok(out);
    }
    let dir = root.join(stack);
    fs_err::create_dir_all(&dir)?;
    fs_err::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
    fs_err::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let _lock = super::lock(&dir.join(".lock"))?;
    for (name, s) in declared {
        if let Some(v) = site.get(name) {
            out.insert(name.clone(), v.clone());
            continue;
        }
        let path: PathBuf = dir.join(name);
        let value = match fs_err::read_to_string(&path) {
            Ok(v) if !v.is_empty() => v,
            // Missing, or empty: a power cut between create and write cannot happen with the
            // atomic write below, but an empty file is made again all the same.
            Ok(_) => make_secret(&path, s)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => make_secret(&path, s)?,
            Err(e) => return Err(e.into()),
        };
        out.insert(name.clone(), value);
    }
    Ok(out)
}

fn make_secret(path: &Path, s: &Secret) -> Result<String> {
    let value = generate(s)?;
    crate::files::atomic_write(path, |f| {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        std::io::Write::write_all(f, value.as_bytes())?;
        Ok(())
    })?;
    super::say(&format!("made secret {} for this device", path.display()));
    Ok(value)
}

/// A new random value of the secret's kind, from the kernel's generator.
pub fn generate(s: &Secret) -> Result<String> {
    let mut random = fs_err::File::open("/dev/urandom")?;
    let mut bytes = |n: usize| -> Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        random.read_exact(&mut b).context("reading /dev/urandom")?;
        Ok(b)
    };
    Ok(match s.kind {
        SecretKind::Hex => hex::encode(bytes(s.length.div_ceil(2))?)[..s.length].to_string(),
        SecretKind::Uuid => {
            let mut b: [u8; 16] = bytes(16)?.try_into().expect("16 bytes");
            b[6] = (b[6] & 0x0f) | 0x40;
            b[8] = (b[8] & 0x3f) | 0x80;
            uuid::Uuid::from_bytes(b).to_string()
        }
        SecretKind::Alnum => {
            const SET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
            let mut out = String::new();
            while out.len() < s.length {
                // 248 = 4 × 62: bytes above it are dropped so that every character is as likely.
                for b in bytes(s.length)? {
                    if b < 248 && out.len() < s.length {
                        out.push(SET[(b % 62) as usize] as char);
                    }
                }
            }
            out
        }
    })
}

/// Waits until `podman healthcheck run NAME` passes.
pub fn wait_healthy(name: &str, timeout: std::time::Duration) -> Result<()> {
    let started = std::time::Instant::now();
    let mut last = String::new();
    while started.elapsed() < timeout {
        match Tool::new("podman").describe(format!("checking the health of container {name}")).args(["healthcheck", "run", name]).output() {
            Ok(_) => {
                super::say(&format!("container {name} is healthy after {:.1} s", started.elapsed().as_secs_f64()));
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
        // Each check is a process in the container; dependents wait for the first that passes.
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    anyhow::bail!("container {name} was not healthy within {} s; last check: {last}", timeout.as_secs())
}

/// Starts the timer of the container's periodic health checks (`container::units`: it waits
/// for the end of the boot). A box whose timer does not start still runs; it is said.
pub fn schedule_health_checks(name: &str, timer: &str) {
    let started = Tool::new("systemctl").describe(format!("starting the health checks of container {name}")).args(["start", "--no-block", timer]).run();
    if let Err(e) = started {
        super::say(&format!("container {name}: its health is not checked after its start: {e:#}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_hook_reads_the_bridge_and_gateway_from_the_container_and_refuses_anything_else() {
        let state = |bridge: &str, gw: &str| -> HookState {
            serde_json::from_str(&format!(r#"{{"ociVersion":"1.0","id":"c","pid":4470,"status":"created","annotations":{{"outpost.gateway":"{gw}","outpost.bridge":"{bridge}","io.podman.annotations.autoremove":"TRUE"}}}}"#)).unwrap()
        };
        let s = state("podman154", "10.89.154.1");
        assert_eq!(s.pid, 4470);
        assert_eq!(hook_plan(&s).unwrap(), ("podman154".to_string(), "10.89.154.1".parse().unwrap()));
        assert!(format!("{:#}", hook_plan(&state("../all", "10.89.154.1")).unwrap_err()).contains("`../all` is not a stack's bridge"));
        assert!(format!("{:#}", hook_plan(&state("podman1", "10.89.1.1; reboot")).unwrap_err()).contains("is not an IPv4 address"));
        let bare: HookState = serde_json::from_str(r#"{"pid":1}"#).unwrap();
        assert!(format!("{:#}", hook_plan(&bare).unwrap_err()).contains("no annotation `outpost.bridge`"));
    }

    #[test]
    fn the_services_that_serve_the_certificate_are_found_by_their_run_specifications() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(crate::format::stack::STACKS).join("orthanc-pacs");
        fs_err::create_dir_all(&dir).unwrap();
        for (service, tls) in [("nginx", true), ("orthanc", false)] {
            let run = RunSpec { args: vec![], environment: BTreeMap::new(), tail: vec![], data_dirs: vec![], volumes: vec![], subnet: "10.89.1.0/24".into(), address: [10, 89, 1, 10].into(), publish: vec![], tls };
            fs_err::write(dir.join(format!("{service}.run.json")), serde_json::to_vec(&run).unwrap()).unwrap();
        }
        fs_err::write(dir.join("stack.json"), "{}").unwrap();
        assert_eq!(tls_units(root.path()).unwrap(), ["outpost-orthanc-pacs-nginx.service"]);
        assert!(tls_units(tempfile::tempdir().unwrap().path()).unwrap().is_empty(), "an image without stacks");
    }

    #[test]
    fn a_volume_directory_is_made_before_podman_records_the_volume_and_mended_after_a_cut() {
        let root = tempfile::tempdir().unwrap();
        let volumes = root.path().join("storage/volumes");
        let mode = |p: &Path| fs_err::metadata(p).unwrap().permissions().mode() & 0o777;
        // A first start: nothing yet, not even podman's storage.
        ensure_volume_dir(&volumes, "pacs-db").unwrap();
        assert_eq!((mode(&volumes.join("pacs-db")), mode(&volumes.join("pacs-db/_data"))), (0o700, 0o755));
        // A volume with data is left as it is.
        fs_err::write(volumes.join("pacs-db/_data/PG_VERSION"), "15").unwrap();
        fs_err::set_permissions(volumes.join("pacs-db/_data"), std::fs::Permissions::from_mode(0o700)).unwrap();
        ensure_volume_dir(&volumes, "pacs-db").unwrap();
        assert_eq!(fs_err::read_to_string(volumes.join("pacs-db/_data/PG_VERSION")).unwrap(), "15");
        assert_eq!(mode(&volumes.join("pacs-db/_data")), 0o700);
        // What a power cut left: the volume's directory without its data directory.
        fs_err::create_dir(volumes.join("pacs-files")).unwrap();
        ensure_volume_dir(&volumes, "pacs-files").unwrap();
        assert!(volumes.join("pacs-files/_data").is_dir());
    }

    #[test]
    fn secrets_are_made_once_kept_and_differ_between_devices() {
        let declared: BTreeMap<String, Secret> = [
            ("DB_PASSWORD".to_string(), Secret { kind: SecretKind::Alnum, length: 32 }),
            ("TOKEN".to_string(), Secret { kind: SecretKind::Hex, length: 17 }),
            ("NODE".to_string(), Secret { kind: SecretKind::Uuid, length: 36 }),
        ]
        .into();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = ensure_secrets(a.path(), "pacs", &declared, &BTreeMap::new()).unwrap();
        assert_eq!(first["DB_PASSWORD"].len(), 32);
        assert!(first["DB_PASSWORD"].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(first["TOKEN"].len(), 17);
        assert!(first["TOKEN"].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(uuid::Uuid::parse_str(&first["NODE"]).unwrap().get_version_num(), 4);
        // Kept across starts, stored root-only.
        assert_eq!(ensure_secrets(a.path(), "pacs", &declared, &BTreeMap::new()).unwrap(), first);
        let mode = fs_err::metadata(a.path().join("pacs/DB_PASSWORD")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Another device (another data partition) has its own.
        let other = ensure_secrets(b.path(), "pacs", &declared, &BTreeMap::new()).unwrap();
        for k in declared.keys() {
            assert_ne!(first[k], other[k], "{k}");
        }
        // A site may set one.
        let site: BTreeMap<String, String> = [("TOKEN".to_string(), "from-the-site".to_string())].into();
        assert_eq!(ensure_secrets(a.path(), "pacs", &declared, &site).unwrap()["TOKEN"], "from-the-site");
    }

    #[test]
    fn the_environment_takes_secrets_then_site_then_defaults_and_keeps_lines() {
        let env: BTreeMap<String, String> = [
            ("URL".to_string(), "http://${USER:-admin}:${PW:?no password}@db:${PORT:-5984}/x".to_string()),
            ("JSON".to_string(), "{\n  \"Password\": \"${PW}\",\n  \"Name\": \"${NAME}\"\n}".to_string()),
        ]
        .into();
        let m = |kv: &[(&str, &str)]| -> BTreeMap<String, String> { kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
        let out = resolve_environment(&env, &m(&[("PW", "s3cret")]), &m(&[("PW", "site"), ("NAME", "clinic")]), &m(&[("NAME", "default"), ("PORT", "1")])).unwrap();
        assert_eq!(out["URL"], "http://admin:s3cret@db:1/x");
        assert_eq!(out["JSON"], "{\n  \"Password\": \"s3cret\",\n  \"Name\": \"clinic\"\n}");
        let err = resolve_environment(&env, &m(&[]), &m(&[]), &m(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("environment `URL`: variable `PW` is required and not set: no password"), "{err:#}");
        let run = RunSpec { args: vec!["run".into(), "--rm".into()], environment: env, tail: vec!["img".into(), "serve".into()], data_dirs: vec![], volumes: vec![], subnet: "10.89.1.0/24".into(), address: [10, 89, 1, 10].into(), publish: vec![], tls: false };
        let argv = podman_argv(&run, &out);
        assert_eq!(argv[2], "--env=JSON={\n  \"Password\": \"s3cret\",\n  \"Name\": \"clinic\"\n}");
        assert_eq!(&argv[argv.len() - 2..], ["img", "serve"]);
    }
}
