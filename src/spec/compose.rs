//! A layer's `compose` file: the subset of the Compose specification outpost turns into systemd
//! units. Keys outside the subset are refused by name, never ignored: a stack that silently
//! loses a setting is worse than one that does not build.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Problems;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComposeFile {
    /// Obsolete in the Compose specification; accepted and ignored as Compose does.
    #[serde(default)]
    #[allow(dead_code)]
    version: Option<yaml_serde::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    services: BTreeMap<String, ServiceYaml>,
    #[serde(default)]
    volumes: BTreeMap<String, Option<VolumeYaml>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeYaml {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceYaml {
    image: String,
    command: Option<Words>,
    entrypoint: Option<Words>,
    #[serde(default)]
    environment: Option<Environment>,
    #[serde(default)]
    ports: Vec<yaml_serde::Value>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    depends_on: Option<DependsOn>,
    healthcheck: Option<HealthYaml>,
    restart: Option<String>,
    user: Option<String>,
    working_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Words {
    Line(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Environment {
    Map(BTreeMap<String, yaml_serde::Value>),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DependsOn {
    List(Vec<String>),
    Map(BTreeMap<String, DependsOnEntry>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DependsOnEntry {
    #[serde(default)]
    condition: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthYaml {
    test: Words,
    interval: Option<String>,
    timeout: Option<String>,
    retries: Option<u32>,
    start_period: Option<String>,
}

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    /// As written: a container of the layer (or a layer it depends on), by name or reference.
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub environment: BTreeMap<String, String>,
    pub ports: Vec<u16>,
    pub mounts: Vec<Mount>,
    pub depends_on: Vec<String>,
    pub health: Option<Health>,
    pub restart: Restart,
    pub user: Option<String>,
    pub working_dir: Option<String>,
}

/// One layer's stack: its compose file, parsed and checked on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stack {
    /// The layer's name.
    pub name: String,
    pub file: PathBuf,
    /// The directory of the compose file: what bind mounts are relative to.
    pub dir: PathBuf,
    pub services: Vec<Service>,
    pub volumes: BTreeSet<String>,
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

fn words(w: Words, file: &Path, key: &str, p: &mut Problems) -> Vec<String> {
    match w {
        Words::List(l) => l,
        Words::Line(s) => {
            if s.contains(['"', '\'', '\\', '$']) {
                p.push(file, key, format!("`{s}`: quotes, backslashes and `$` in a one-line command are not interpreted here; write it as a list"));
            }
            s.split_whitespace().map(str::to_string).collect()
        }
    }
}

/// Reads and checks `file` (the layer `layer`'s compose file).
/// The systemd unit of a stack's service. Stack (layer) and service names are checked names,
/// and the plan refuses two that give the same unit, container or volume name.
pub fn service_unit(stack: &str, service: &str) -> String {
    format!("outpost-{stack}-{service}.service")
}

/// The podman container of a stack's service.
pub fn container_name(stack: &str, service: &str) -> String {
    format!("{stack}-{service}")
}

/// The podman volume of a stack's named volume.
pub fn volume_name(stack: &str, volume: &str) -> String {
    format!("{stack}-{volume}")
}

/// The largest compose file read (the ones health projects publish are a few KiB).
const MAX_COMPOSE_BYTES: usize = 1 << 20;

/// The YAML mapping keys leading to byte `at`, read from the indentation of the lines above
/// (`services.couchdb.ports`): enough to point at the place in a compose file.
fn yaml_key_at(text: &str, at: usize) -> String {
    let at = at.min(text.len());
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut keys = Vec::new();
    let mut level = indent(line);
    if let Some((k, _)) = line.trim_start().trim_start_matches("- ").split_once(':') {
        keys.push(k.trim().to_string());
    }
    for l in text[..line_start].lines().rev() {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') || indent(l) >= level {
            continue;
        }
        if let Some((k, _)) = t.trim_start_matches("- ").split_once(':') {
            keys.push(k.trim().to_string());
            level = indent(l);
        }
        if level == 0 {
            break;
        }
    }
    keys.reverse();
    keys.join(".")
}

pub fn load(layer: &str, file: &Path, p: &mut Problems) -> Option<Stack> {
    let text = match fs_err::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            p.push(file, "", format!("cannot read the compose file: {e}"));
            return None;
        }
    };
    if text.len() > MAX_COMPOSE_BYTES {
        p.push(file, "", format!("the compose file is {} bytes; outpost reads compose files of at most {MAX_COMPOSE_BYTES}", text.len()));
        return None;
    }
    let c: ComposeFile = match yaml_serde::from_str(&text) {
        Ok(c) => c,
        Err(e) => {
            // The parser's location, where it has one (an alias bomb or a type error deep in a
            // service has its line too).
            let at = e.location().map(|l| format!("line {}, column {}: ", l.line(), l.column())).unwrap_or_default();
            let key = e.location().map(|l| yaml_key_at(&text, l.index())).unwrap_or_default();
            p.push(
                file,
                &key,
                format!("{at}{e} (outpost takes services with image, command, entrypoint, environment, ports, volumes, depends_on, healthcheck, restart, user and working_dir, and named volumes)"),
            );
            return None;
        }
    };
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let volumes: BTreeSet<String> = c.volumes.keys().cloned().collect();
    for v in &volumes {
        // podman's rule for volume names, at most 63 characters.
        let ok = v.len() <= 63 && v.starts_with(|c: char| c.is_ascii_alphanumeric()) && v.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            p.push(file, &format!("volumes.{}", super::excerpt(v, 60)), "volume names are letters, digits, `_`, `.` and `-`, starting with a letter or digit (they name podman volumes on the data partition)");
        }
    }
    let names: BTreeSet<String> = c.services.keys().cloned().collect();
    let mut services = Vec::new();
    for (name, s) in c.services {
        let key = |k: &str| format!("services.{name}.{k}");
        if !super::container::valid_name(&name) {
            p.push(file, &format!("services.{name}"), "service names are lowercase letters, digits and `-`, starting with a letter (they name systemd units)");
        }
        let command = s.command.map(|w| words(w, file, &key("command"), p));
        let entrypoint = s.entrypoint.map(|w| words(w, file, &key("entrypoint"), p));
        let mut environment = BTreeMap::new();
        match s.environment {
            Some(Environment::Map(m)) => {
                for (k, v) in m {
                    let v = match v {
                        yaml_serde::Value::String(s) => s,
                        yaml_serde::Value::Number(n) => n.to_string(),
                        yaml_serde::Value::Bool(b) => b.to_string(),
                        yaml_serde::Value::Null => String::new(),
                        _ => {
                            p.push(file, &key(&format!("environment.{k}")), "expected a string, number or boolean");
                            continue;
                        }
                    };
                    environment.insert(k, v);
                }
            }
            Some(Environment::List(l)) => {
                for (i, kv) in l.iter().enumerate() {
                    match kv.split_once('=') {
                        Some((k, v)) => {
                            environment.insert(k.to_string(), v.to_string());
                        }
                        None => p.push(file, &key(&format!("environment[{i}]")), format!("`{kv}` is not NAME=VALUE")),
                    }
                }
            }
            None => {}
        }
        let mut ports = Vec::new();
        for (i, v) in s.ports.iter().enumerate() {
            let text = match v {
                yaml_serde::Value::Number(n) => n.to_string(),
                yaml_serde::Value::String(s) => s.clone(),
                _ => String::from("?"),
            };
            let (host, container) = text.rsplit_once(':').map(|(h, c)| (h.rsplit(':').next().unwrap_or(h), c)).unwrap_or((&text, &text));
            let container = container.trim_end_matches("/tcp");
            match (host.parse::<u16>(), container.parse::<u16>()) {
                (Ok(0), _) | (_, Ok(0)) => p.push(file, &key(&format!("ports[{i}]")), "port 0 is not a port a service can be reached on"),
                (Ok(h), Ok(c)) if h == c => ports.push(c),
                (Ok(h), Ok(c)) => p.push(
                    file,
                    &key(&format!("ports[{i}]")),
                    format!("`{text}` maps host port {h} to container port {c}: outpost runs stacks on the host's network, so a service listens on the port it serves; configure the application to listen on {h}"),
                ),
                _ => p.push(file, &key(&format!("ports[{i}]")), format!("`{text}` is not `PORT` or `PORT:PORT` (TCP)")),
            }
        }
        let mut mounts = Vec::new();
        for (i, v) in s.volumes.iter().enumerate() {
            let parts: Vec<&str> = v.split(':').collect();
            let (src, target, ro) = match parts.as_slice() {
                [s, t] => (*s, *t, false),
                [s, t, "ro"] => (*s, *t, true),
                [s, t, "rw"] => (*s, *t, false),
                _ => {
                    p.push(file, &key(&format!("volumes[{i}]")), format!("`{v}` is not SOURCE:TARGET[:ro]"));
                    continue;
                }
            };
            if !target.starts_with('/') {
                p.push(file, &key(&format!("volumes[{i}]")), format!("`{target}` is not an absolute path in the container"));
            }
            if let Some(rel) = src.strip_prefix("./") {
                let path = PathBuf::from(rel);
                match super::inside(&dir, &path) {
                    Err(e) => p.push(file, &key(&format!("volumes[{i}]")), e),
                    Ok(full) if !full.exists() => p.push(file, &key(&format!("volumes[{i}]")), format!("`{src}` is not a file or directory beside {}", file.display())),
                    Ok(_) => {}
                }
                mounts.push(Mount::File { source: path, target: target.into(), read_only: ro });
            } else if src.starts_with('/') || src.starts_with('.') || src.starts_with('~') {
                p.push(
                    file,
                    &key(&format!("volumes[{i}]")),
                    format!("`{src}`: a stack mounts named volumes (kept on the data partition) or files beside its compose file (`./NAME`), never other host paths"),
                );
            } else if !volumes.contains(src) {
                p.push(file, &key(&format!("volumes[{i}]")), format!("volume `{src}` is not declared under the top-level `volumes`"));
            } else {
                mounts.push(Mount::Volume { name: src.into(), target: target.into(), read_only: ro });
            }
        }
        let depends_on: Vec<String> = match s.depends_on {
            None => Vec::new(),
            Some(DependsOn::List(l)) => l,
            Some(DependsOn::Map(m)) => {
                for (d, e) in &m {
                    if let Some(c) = &e.condition
                        && !["service_started", "service_healthy"].contains(&c.as_str())
                    {
                        p.push(file, &key(&format!("depends_on.{d}.condition")), format!("`{c}`: outpost supports service_started and service_healthy"));
                    }
                }
                m.into_keys().collect()
            }
        };
        for d in &depends_on {
            if !names.contains(d) {
                p.push(file, &key("depends_on"), format!("`{d}` is not a service of this file"));
            }
        }
        let health = s.healthcheck.map(|h| {
            let dur = |v: &Option<String>, k: &str, default: u64, p: &mut Problems| match v {
                None => default,
                Some(s) => parse_duration(s).unwrap_or_else(|| {
                    p.push(file, &key(&format!("healthcheck.{k}")), format!("`{s}` is not a duration such as 10s, 1m30s or 500ms"));
                    default
                }),
            };
            let interval_s = dur(&h.interval, "interval", 30, p);
            let timeout_s = dur(&h.timeout, "timeout", 30, p);
            let start_period_s = dur(&h.start_period, "start_period", 0, p);
            let test = match h.test {
                Words::Line(s) => vec!["/bin/sh".into(), "-c".into(), s],
                Words::List(l) => match l.split_first() {
                    Some((first, rest)) if first == "CMD" && !rest.is_empty() => rest.to_vec(),
                    Some((first, rest)) if first == "CMD-SHELL" && rest.len() == 1 => vec!["/bin/sh".into(), "-c".into(), rest[0].clone()],
                    _ => {
                        p.push(file, &key("healthcheck.test"), "expected [\"CMD\", program, args...], [\"CMD-SHELL\", \"command\"] or a string");
                        Vec::new()
                    }
                },
            };
            Health { test, interval_s, timeout_s, retries: h.retries.unwrap_or(3), start_period_s }
        });
        let restart = match s.restart.as_deref() {
            None | Some("no") => Restart::No,
            Some("always") | Some("unless-stopped") => Restart::Always,
            Some("on-failure") => Restart::OnFailure,
            Some(r) => {
                p.push(file, &key("restart"), format!("`{r}`: expected always, unless-stopped, on-failure or no"));
                Restart::No
            }
        };
        services.push(Service {
            name,
            image: s.image,
            command,
            entrypoint,
            environment,
            ports,
            mounts,
            depends_on,
            health,
            restart,
            user: s.user,
            working_dir: s.working_dir,
        });
    }
    if let Some(cycle) = dependency_cycle(&services) {
        p.push(file, "services", format!("depends_on makes a cycle: {}", cycle.join(" → ")));
    }
    Some(Stack { name: layer.into(), file: file.to_path_buf(), dir, services, volumes })
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
