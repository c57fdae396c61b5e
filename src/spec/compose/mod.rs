//! A layer's compose files: the part of the Compose specification outpost turns into systemd
//! units, read as the project publishes them (several files merged as `docker compose -f a -f b`
//! merges them, `${VAR:-default}` interpolation, `.env` defaults). Keys that map onto podman and
//! systemd are honoured; keys that cannot work offline or safely are refused by name with the
//! reason; `x-*` extensions are ignored, as Compose ignores them.

mod read;
mod service;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use yaml_serde::{Mapping, Value};

use super::Problems;
pub use crate::format::stack::{Secret, SecretKind};

#[derive(Debug, Deserialize)]
struct ServiceYaml {
    image: Option<String>,
    command: Option<Words>,
    entrypoint: Option<Words>,
    #[serde(default)]
    environment: BTreeMap<String, Option<Scalar>>,
    #[serde(default)]
    env_file: Option<OneOrMany>,
    #[serde(default)]
    ports: Vec<Scalar>,
    #[serde(default)]
    expose: Vec<Scalar>,
    #[serde(default)]
    volumes: Vec<VolumeEntry>,
    #[serde(default)]
    depends_on: BTreeMap<String, Option<DependsOnEntry>>,
    healthcheck: Option<HealthYaml>,
    restart: Option<String>,
    user: Option<Scalar>,
    working_dir: Option<String>,
    hostname: Option<String>,
    container_name: Option<String>,
    #[allow(dead_code)]
    logging: Option<Value>,
    /// Every service of a stack is on the stack's one network, whatever the file calls it.
    #[serde(default)]
    #[allow(dead_code)]
    networks: BTreeMap<String, Option<Value>>,
    deploy: Option<DeployYaml>,
    stop_grace_period: Option<String>,
    stop_signal: Option<String>,
    #[serde(default)]
    ulimits: BTreeMap<String, Ulimit>,
    #[serde(default)]
    cap_add: Vec<String>,
    #[serde(default)]
    cap_drop: Vec<String>,
    #[serde(default)]
    extra_hosts: Option<ExtraHosts>,
    #[serde(default)]
    #[allow(dead_code)]
    labels: Option<Value>,
    init: Option<bool>,
    read_only: Option<bool>,
    #[serde(default)]
    tmpfs: Option<OneOrMany>,
    shm_size: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    S(String),
    N(i64),
    F(f64),
    B(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::S(s) => s.clone(),
            Scalar::N(n) => n.to_string(),
            Scalar::F(f) => f.to_string(),
            Scalar::B(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(l) => l,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ExtraHosts {
    List(Vec<String>),
    Map(BTreeMap<String, String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Ulimit {
    One(i64),
    Pair { soft: i64, hard: i64 },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum VolumeEntry {
    Short(String),
    Long(VolumeLong),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeLong {
    #[serde(rename = "type")]
    kind: String,
    source: Option<String>,
    target: String,
    #[serde(default)]
    read_only: bool,
    #[allow(dead_code)]
    volume: Option<Value>,
    #[allow(dead_code)]
    bind: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct DeployYaml {
    resources: Option<ResourcesYaml>,
    replicas: Option<u32>,
    #[allow(dead_code)]
    restart_policy: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ResourcesYaml {
    limits: Option<LimitsYaml>,
    /// Reservations guide a scheduler among machines; one box has nothing to schedule.
    #[allow(dead_code)]
    reservations: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsYaml {
    cpus: Option<Scalar>,
    memory: Option<Scalar>,
    pids: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Words {
    Line(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DependsOnEntry {
    #[serde(default)]
    condition: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    restart: Option<bool>,
    #[serde(default)]
    required: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthYaml {
    test: Option<Words>,
    interval: Option<String>,
    timeout: Option<String>,
    retries: Option<u32>,
    start_period: Option<String>,
    #[allow(dead_code)]
    start_interval: Option<String>,
    #[serde(default)]
    disable: bool,
}

/// Service keys outpost takes, and (below) those it refuses with the reason.
const SERVICE_KEYS: &[&str] = &[
    "image", "command", "entrypoint", "environment", "env_file", "ports", "expose", "volumes", "depends_on", "healthcheck", "restart", "user", "working_dir",
    "hostname", "container_name", "logging", "networks", "deploy", "stop_grace_period", "stop_signal", "ulimits", "cap_add", "cap_drop", "extra_hosts", "labels",
    "init", "read_only", "tmpfs", "shm_size",
];

const REFUSED_KEYS: &[(&str, &str)] = &[
    ("build", "an appliance is built offline from images fixed at build time: build the image elsewhere and name it with `image:` (a container of the layer, from packages, an archive or a registry by digest)"),
    ("devices", "host devices differ from box to box and give a container the hardware; outpost does not pass them"),
    ("privileged", "a privileged container owns the whole box, its TPM and its encrypted data"),
    ("pid", "sharing the host's process namespace lets a container see and signal every process of the box"),
    ("ipc", "sharing the host's IPC namespace is not isolated"),
    ("network_mode", "a stack's services share the stack's network; outpost sets it"),
    ("userns_mode", "outpost runs containers in the system's user namespace"),
    ("cgroup_parent", "each service's unit is its cgroup"),
    ("volumes_from", "name the volumes the services share instead"),
    ("links", "services of a stack find each other by name already"),
    ("profiles", "every service of an appliance's stack starts at boot; split optional services into another layer"),
    ("secrets", "declare secrets in layer.toml (`[secrets.NAME]`): the device makes them and services take them in `environment` as `${NAME}`"),
    ("configs", "mount a file beside the compose file instead (`./FILE:/path:ro`)"),
    ("scale", "one container per service"),
];

const TOP_KEYS: &[&str] = &["version", "name", "services", "volumes", "networks"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    Always,
    OnFailure,
    No,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Mount {
    /// A named volume, kept on the data partition.
    Volume { name: String, target: String, read_only: bool },
    /// A file or directory beside the compose file, read-only from the image's root.
    File { source: PathBuf, target: String, read_only: bool },
    /// A host data directory of the compose file (`./srv:/data` where `./srv` is not in the
    /// layer): a directory of the stack's on the data partition, never the root.
    Data { dir: String, target: String, read_only: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The command podman runs inside the container (`CMD-SHELL` becomes `/bin/sh -c`).
    pub test: Vec<String>,
    pub interval_s: u64,
    pub timeout_s: u64,
    pub retries: u32,
    pub start_period_s: u64,
}

/// What a service may use of the box (`deploy.resources.limits`, `ulimits`, `shm_size`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// podman's `--memory` (bytes, or with a b/k/m/g suffix).
    pub memory: Option<String>,
    pub cpus: Option<String>,
    pub pids: Option<i64>,
    /// `NAME=SOFT:HARD`, as podman's `--ulimit`.
    pub ulimits: Vec<String>,
    pub shm_size: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    /// As written: a container of the layer (or a layer it depends on), by name or reference.
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// Values as written: the device interpolates them at each start (secrets, the site's
    /// variables, the layer's defaults).
    pub environment: BTreeMap<String, String>,
    /// Published ports (TCP): the host's port and the container's.
    pub ports: Vec<(u16, u16)>,
    /// Ports served inside the stack only.
    pub expose: Vec<u16>,
    pub mounts: Vec<Mount>,
    pub depends_on: Vec<String>,
    pub health: Option<Health>,
    pub restart: Restart,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    /// Names other services reach it by besides its service name (`hostname`, `container_name`).
    pub aliases: Vec<String>,
    pub hostname: Option<String>,
    pub limits: Limits,
    pub stop_grace_s: Option<u64>,
    pub stop_signal: Option<String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// `NAME:ADDRESS`.
    pub extra_hosts: Vec<String>,
    pub init: bool,
    pub read_only: bool,
    pub tmpfs: Vec<String>,
}

/// One layer's stack: its compose files, merged and checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stack {
    /// The layer's name.
    pub name: String,
    /// The first compose file (what messages name when no one file is to blame).
    pub file: PathBuf,
    pub files: Vec<PathBuf>,
    /// The directory of the first compose file: what bind mounts are relative to.
    pub dir: PathBuf,
    pub services: Vec<Service>,
    pub volumes: BTreeSet<String>,
    /// The layer's defaults (its env file), the last source a variable is looked up in.
    pub defaults: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, Secret>,
    /// Services that take the appliance's TLS certificate → the directory it is mounted on
    /// (`cert.pem`, `key.pem`), from the layer's `[tls]`.
    pub tls: BTreeMap<String, String>,
    /// The layer's `[[backup.dump]]`.
    pub backup: Vec<crate::format::stack::Dump>,
}

/// "10s", "1m30s", "500ms", "2h" → whole seconds (at least 1 for a non-zero duration).
pub fn parse_duration(s: &str) -> Option<u64> {
    let mut total_ms: u64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return None,
        };
        total_ms = total_ms.checked_add(n.checked_mul(factor)?)?;
        rest = &rest[unit_len..];
    }
    Some(total_ms.div_ceil(1000))
}

/// The systemd unit of a stack's service (the agent restarts them by this name too). Stack
/// (layer) and service names are checked names, and the plan refuses two that give the same
/// unit, container or volume name.
pub use crate::format::stack::{container_name, service_unit, volume_name};

/// The third number of a stack's network, 10.89.N.0/24: from its name, so that the layer's
/// build does not depend on which other stacks an image has (the plan refuses two that meet).
pub fn stack_subnet(stack: &str) -> u8 {
    use sha2::Digest;
    1 + sha2::Sha256::digest(stack.as_bytes())[0] % 250
}

/// The most services a stack has (one address each, from .10 on its network).
pub const MAX_SERVICES: usize = 240;

/// A service name as Compose allows it (`postgres_keycloak`, `keycloak.example.org`): also a
/// valid systemd unit name part and podman container name.
pub fn valid_service_name(n: &str) -> bool {
    n.len() <= 63 && n.starts_with(|c: char| c.is_ascii_alphanumeric()) && n.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// A variable name as Compose writes them (`COUCHDB_PASSWORD`).
pub fn valid_variable(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && n.len() <= 128
}

/// The env file of the layer: its variables are the defaults of every value.
fn read_env_file(path: &Path, file: &Path, p: &mut Problems) -> BTreeMap<String, String> {
    match fs_err::read_to_string(path) {
        Err(e) => {
            p.push(file, "env-file", format!("cannot read {}: {e}", path.display()));
            BTreeMap::new()
        }
        Ok(t) => match crate::format::interpolate::parse_env_file(&t) {
            Ok(v) => v.into_iter().collect(),
            Err(e) => {
                p.push(path, "", e);
                BTreeMap::new()
            }
        },
    }
}

/// Reads, interpolates, merges and checks a layer's compose `files` (in order), with the
/// defaults of `env_file` and the layer's declared `secrets`. `layer_file` is the layer.toml.
pub fn load(layer: &str, layer_file: &Path, files: &[PathBuf], env_file: Option<&Path>, secrets: BTreeMap<String, Secret>, p: &mut Problems) -> Option<Stack> {
    let first = files.first()?.clone();
    let dir = first.parent().map(Path::to_path_buf).unwrap_or_default();
    let defaults = match env_file {
        Some(e) => read_env_file(e, layer_file, p),
        None => BTreeMap::new(),
    };
    for name in secrets.keys() {
        if !valid_variable(name) {
            p.push(layer_file, &format!("secrets.{name}"), "a secret is named as a Compose variable: letters, digits and `_`, not starting with a digit");
        }
    }
    let vars = read::Vars { defaults: &defaults, secrets: &secrets };
    let before = p.0.len();
    let mut merged = Mapping::new();
    // The file that defines each service last: the one a problem with it names.
    let mut defined_in: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in files {
        let Some(mut doc) = read::parse(file, p) else { continue };
        if let Some(Value::Mapping(svcs)) = doc.get("services") {
            for k in svcs.keys().filter_map(Value::as_str) {
                defined_in.insert(k.to_string(), file.clone());
            }
        }
        for k in doc.keys() {
            let k = k.as_str().unwrap_or("");
            if !TOP_KEYS.contains(&k) && !k.starts_with("x-") {
                let why = if k == "secrets" || k == "configs" { REFUSED_KEYS.iter().find(|(r, _)| *r == k).map(|(_, w)| *w).unwrap_or("") } else { "" };
                p.push(file, k, if why.is_empty() { format!("not a top-level Compose key outpost takes (it takes {})", TOP_KEYS.join(", ")) } else { why.to_string() });
            }
        }
        doc.retain(|k, _| k.as_str().is_some_and(|k| TOP_KEYS.contains(&k)));
        check_service_keys(file, &mut doc, p);
        read::interpolate_file(file, &mut doc, &vars, p);
        read::merge(&mut merged, doc);
    }
    if p.0.len() > before {
        return None;
    }
    let volumes: BTreeSet<String> = match merged.get("volumes") {
        Some(Value::Mapping(m)) => m.keys().filter_map(|k| k.as_str().map(str::to_string)).collect(),
        _ => BTreeSet::new(),
    };
    for v in &volumes {
        // podman's rule for volume names, at most 63 characters.
        let ok = v.len() <= 63 && v.starts_with(|c: char| c.is_ascii_alphanumeric()) && v.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            p.push(&first, &format!("volumes.{}", super::excerpt(v, 60)), "volume names are letters, digits, `_`, `.` and `-`, starting with a letter or digit (they name podman volumes on the data partition)");
        }
    }
    let services_map = match merged.remove("services") {
        Some(Value::Mapping(m)) if !m.is_empty() => m,
        _ => {
            p.push(&first, "services", "a stack needs at least one service");
            return None;
        }
    };
    let names: BTreeSet<String> = services_map.keys().filter_map(|k| k.as_str().map(str::to_string)).collect();
    let mut services = Vec::new();
    for (name, v) in services_map {
        let name = name.as_str().unwrap_or("").to_string();
        let file = defined_in.get(&name).cloned().unwrap_or_else(|| first.clone());
        match yaml_serde::from_value::<ServiceYaml>(v) {
            Ok(s) => {
                if let Some(svc) = service::convert(&file, &dir, &name, s, &names, &volumes, &vars, p) {
                    services.push(svc);
                }
            }
            Err(e) => p.push(&file, &format!("services.{name}"), e.to_string()),
        }
    }
    if services.len() > MAX_SERVICES {
        p.push(&first, "services", format!("{} services; a stack has at most {MAX_SERVICES}", services.len()));
    }
    if let Some(cycle) = dependency_cycle(&services) {
        p.push(&first, "services", format!("depends_on makes a cycle: {}", cycle.join(" → ")));
    }
    Some(Stack { name: layer.into(), file: first, files: files.to_vec(), dir, services, volumes, defaults, secrets, tls: BTreeMap::new(), backup: Vec::new() })
}

/// Unknown and refused keys of each service, and `x-*` extensions dropped.
fn check_service_keys(file: &Path, doc: &mut Mapping, p: &mut Problems) {
    let Some(Value::Mapping(services)) = doc.get_mut("services") else {
        if doc.get("services").is_some() {
            p.push(file, "services", "expected a mapping of service names");
        }
        return;
    };
    for (name, svc) in services.iter_mut() {
        let name = name.as_str().unwrap_or("?").to_string();
        let Value::Mapping(svc) = svc else {
            p.push(file, &format!("services.{name}"), "expected a mapping");
            continue;
        };
        svc.retain(|k, _| !k.as_str().is_some_and(|k| k.starts_with("x-")));
        for k in svc.keys() {
            let k = k.as_str().unwrap_or("?");
            if SERVICE_KEYS.contains(&k) {
                continue;
            }
            let key = format!("services.{name}.{k}");
            match REFUSED_KEYS.iter().find(|(r, _)| *r == k) {
                Some((_, why)) => p.push(file, &key, format!("refused: {why}")),
                None => p.push(file, &key, format!("not a Compose key outpost takes; it takes {}", SERVICE_KEYS.join(", "))),
            }
        }
    }
}

/// A cycle in depends_on, if there is one, as the services along it.
fn dependency_cycle(services: &[Service]) -> Option<Vec<String>> {
    let deps: BTreeMap<&str, &[String]> = services.iter().map(|s| (s.name.as_str(), s.depends_on.as_slice())).collect();
    fn visit<'a>(n: &'a str, deps: &BTreeMap<&'a str, &'a [String]>, path: &mut Vec<&'a str>, done: &mut BTreeSet<&'a str>) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut c: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
            c.push(n.to_string());
            return Some(c);
        }
        if !done.insert(n) {
            return None;
        }
        path.push(n);
        for d in deps.get(n).copied().unwrap_or_default() {
            if let Some(c) = visit(d, deps, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for n in deps.keys() {
        if let Some(c) = visit(n, &deps, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}
