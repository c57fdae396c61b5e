//! One service of a merged compose document: its keys checked and turned into a [`Service`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use yaml_serde::Value;

use super::read;
use super::*;
use crate::spec::Problems;

/// Parses one port entry: `80`, `80:80`, `8080:80`, `127.0.0.1:80:80`, `80/tcp`, or the long
/// form; (host, container).
fn port(v: &Value) -> Result<(u16, u16), String> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Mapping(m) => {
            let get = |k: &str| m.get(k).map(|v| match v {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                _ => String::new(),
            });
            if get("protocol").is_some_and(|p| p != "tcp") {
                return Err("outpost publishes TCP ports".into());
            }
            let target = get("target").ok_or("the long form needs `target`")?;
            let published = get("published").unwrap_or_else(|| target.clone());
            format!("{published}:{target}")
        }
        _ => return Err("expected `PORT`, `HOST:CONTAINER` or a mapping with target and published".into()),
    };
    let text = text.strip_suffix("/tcp").unwrap_or(&text);
    if text.ends_with("/udp") || text.ends_with("/sctp") {
        return Err(format!("`{text}`: outpost publishes TCP ports"));
    }
    let parts: Vec<&str> = text.split(':').collect();
    let (host, container) = match parts.as_slice() {
        [c] => (*c, *c),
        [h, c] => (*h, *c),
        [_ip, h, c] => (*h, *c),
        _ => return Err(format!("`{text}` is not `PORT`, `HOST:CONTAINER` or `ADDRESS:HOST:CONTAINER`")),
    };
    let num = |s: &str| s.parse::<u16>().map_err(|_| format!("`{text}`: `{s}` is not a port number (ranges are not taken)"));
    let (h, c) = (num(if host.is_empty() { container } else { host })?, num(container)?);
    if h == 0 || c == 0 {
        return Err("port 0 is not a port a service can be reached on".into());
    }
    Ok((h, c))
}

fn words(w: Words, file: &Path, key: &str, p: &mut Problems) -> Vec<String> {
    match w {
        Words::List(l) => l,
        Words::Line(s) => match shlex::split(&s) {
            Some(v) => v,
            None => {
                p.push(file, key, format!("`{s}`: an unclosed quote"));
                Vec::new()
            }
        },
    }
}

/// `500m`, `1g`, `1073741824`: podman's size forms.
fn size(s: &str) -> bool {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let digits = t.trim_end_matches(['k', 'm', 'g', 't']);
    !digits.is_empty() && digits.len() + 1 >= t.len() && digits.parse::<f64>().is_ok()
}

#[allow(clippy::too_many_arguments)]
pub(super) fn convert(file: &Path, dir: &Path, name: &str, s: ServiceYaml, names: &BTreeSet<String>, volumes: &BTreeSet<String>, vars: &read::Vars<'_>, p: &mut Problems) -> Option<Service> {
    let key = |k: &str| format!("services.{name}.{k}");
    if !super::valid_service_name(name) {
        p.push(file, &format!("services.{name}"), "service names are letters, digits, `_`, `.` and `-`, starting with a letter or digit, at most 63 (Compose's rule; they name systemd units and containers)");
    }
    let Some(image) = s.image else {
        p.push(file, &key("image"), "every service names its image (a container of the layer)");
        return None;
    };
    let command = s.command.map(|w| words(w, file, &key("command"), p));
    let entrypoint = s.entrypoint.map(|w| words(w, file, &key("entrypoint"), p));
    let mut environment = BTreeMap::new();
    for rel in s.env_file.map(OneOrMany::list).unwrap_or_default() {
        match crate::spec::inside(dir, Path::new(&rel)) {
            Err(e) => p.push(file, &key("env_file"), e),
            Ok(path) => match fs_err::read_to_string(&path).map_err(|e| e.to_string()).and_then(|t| crate::format::interpolate::parse_env_file(&t)) {
                Ok(v) => {
                    for (k, val) in v {
                        read::check_value(&path, &k, &val, vars, p);
                        environment.insert(k, val);
                    }
                }
                Err(e) => p.push(file, &key("env_file"), format!("{}: {e}", path.display())),
            },
        }
    }
    for (k, v) in s.environment {
        if !valid_variable(&k) && !k.chars().all(|c| c.is_ascii_graphic() && c != '=' && c != '$') {
            p.push(file, &key(&format!("environment.{k}")), "not an environment variable name");
            continue;
        }
        environment.insert(k, v.map(|v| v.text()).unwrap_or_default());
    }
    let mut ports = Vec::new();
    if let Ok(Value::Sequence(list)) = yaml_serde::to_value(s.ports.iter().map(Scalar::text).collect::<Vec<_>>()) {
        for (i, v) in list.iter().enumerate() {
            match port(v) {
                Ok(pp) => ports.push(pp),
                Err(e) => p.push(file, &key(&format!("ports[{i}]")), e),
            }
        }
    }
    let mut expose = Vec::new();
    for (i, v) in s.expose.iter().enumerate() {
        let t = v.text();
        match t.trim_end_matches("/tcp").parse::<u16>() {
            Ok(n) if n > 0 => expose.push(n),
            _ => p.push(file, &key(&format!("expose[{i}]")), format!("`{t}` is not a TCP port number")),
        }
    }
    let mut mounts = Vec::new();
    for (i, v) in s.volumes.into_iter().enumerate() {
        let k = key(&format!("volumes[{i}]"));
        let (src, target, ro) = match v {
            VolumeEntry::Short(v) => {
                let parts: Vec<&str> = v.split(':').collect();
                match parts.as_slice() {
                    [t] => {
                        p.push(file, &k, format!("`{t}`: an anonymous volume is lost when the container is replaced; name it under the top-level `volumes`"));
                        continue;
                    }
                    [s, t] => (s.to_string(), t.to_string(), false),
                    [s, t, opts] => (s.to_string(), t.to_string(), opts.split(',').any(|o| o == "ro")),
                    _ => {
                        p.push(file, &k, format!("`{v}` is not SOURCE:TARGET[:ro]"));
                        continue;
                    }
                }
            }
            VolumeEntry::Long(l) => match (l.kind.as_str(), l.source) {
                ("volume" | "bind", Some(src)) => (src, l.target, l.read_only),
                (kind, _) => {
                    p.push(file, &k, format!("type `{kind}`: outpost takes volumes and binds with a source (tmpfs goes under `tmpfs`)"));
                    continue;
                }
            },
        };
        if !target.starts_with('/') {
            p.push(file, &k, format!("`{target}` is not an absolute path in the container"));
        }
        if let Some(rel) = src.strip_prefix("./") {
            let path = PathBuf::from(rel.trim_end_matches('/'));
            match crate::spec::inside(dir, &path) {
                Err(e) => p.push(file, &k, e),
                // Beside the compose file: shipped in the image, read-only.
                Ok(full) if full.exists() => mounts.push(Mount::File { source: path, target, read_only: ro }),
                // Not in the layer: the project's host data directory, on the data partition.
                Ok(_) => {
                    let dir_name = rel.trim_end_matches('/').to_string();
                    if dir_name.is_empty() || dir_name.split('/').any(|c| c.is_empty() || c == "." || c == "..") || !dir_name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c)) {
                        p.push(file, &k, format!("`{src}`: a host data directory is named with letters, digits, `_`, `.`, `-` and `/`"));
                    } else {
                        mounts.push(Mount::Data { dir: dir_name, target, read_only: ro });
                    }
                }
            }
        } else if src.starts_with('/') || src.starts_with('.') || src.starts_with('~') {
            p.push(
                file,
                &k,
                format!("`{src}`: a stack mounts named volumes and directories of its own (kept on the data partition) or files beside its compose file (`./NAME`), never other host paths"),
            );
        } else if !volumes.contains(&src) {
            p.push(file, &k, format!("volume `{src}` is not declared under the top-level `volumes`"));
        } else {
            mounts.push(Mount::Volume { name: src, target, read_only: ro });
        }
    }
    let mut depends_on = Vec::new();
    for (d, e) in s.depends_on {
        if let Some(e) = &e {
            if let Some(c) = &e.condition
                && !["service_started", "service_healthy", "service_completed_successfully"].contains(&c.as_str())
            {
                p.push(file, &key(&format!("depends_on.{d}.condition")), format!("`{c}`: Compose knows service_started, service_healthy and service_completed_successfully"));
            }
            if e.required == Some(false) && !names.contains(&d) {
                continue;
            }
        }
        if !names.contains(&d) {
            p.push(file, &key("depends_on"), format!("`{d}` is not a service of this stack's files"));
        }
        depends_on.push(d);
    }
    let health = match s.healthcheck {
        Some(h) if h.disable => None,
        Some(HealthYaml { test: Some(Words::List(l)), .. }) if l.first().is_some_and(|f| f == "NONE") => None,
        Some(h) => {
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
                None => {
                    p.push(file, &key("healthcheck.test"), "a health check needs a `test` (the image's own HEALTHCHECK is not read)");
                    Vec::new()
                }
                Some(Words::Line(s)) => vec!["/bin/sh".into(), "-c".into(), s],
                Some(Words::List(l)) => match l.split_first() {
                    Some((first, rest)) if first == "CMD" && !rest.is_empty() => rest.to_vec(),
                    Some((first, rest)) if first == "CMD-SHELL" && rest.len() == 1 => vec!["/bin/sh".into(), "-c".into(), rest[0].clone()],
                    _ => {
                        p.push(file, &key("healthcheck.test"), "expected [\"CMD\", program, args...], [\"CMD-SHELL\", \"command\"], [\"NONE\"] or a string");
                        Vec::new()
                    }
                },
            };
            Some(Health { test, interval_s, timeout_s, retries: h.retries.unwrap_or(3), start_period_s })
        }
        None => None,
    };
    let restart = match s.restart.as_deref() {
        None | Some("no") => Restart::No,
        Some("always") | Some("unless-stopped") => Restart::Always,
        Some(r) if r == "on-failure" || r.starts_with("on-failure:") => Restart::OnFailure,
        Some(r) => {
            p.push(file, &key("restart"), format!("`{r}`: expected always, unless-stopped, on-failure[:N] or no"));
            Restart::No
        }
    };
    let mut limits = Limits::default();
    if let Some(d) = s.deploy {
        if d.replicas.is_some_and(|r| r != 1) {
            p.push(file, &key("deploy.replicas"), "one container per service on an appliance");
        }
        if let Some(l) = d.resources.and_then(|r| r.limits) {
            limits.memory = l.memory.map(|m| m.text());
            limits.cpus = l.cpus.map(|c| c.text());
            limits.pids = l.pids;
        }
    }
    if let Some(m) = &limits.memory
        && !size(m)
    {
        p.push(file, &key("deploy.resources.limits.memory"), format!("`{m}` is not a size such as 512m or 1g"));
    }
    if let Some(c) = &limits.cpus
        && !c.parse::<f64>().is_ok_and(|c| c > 0.0)
    {
        p.push(file, &key("deploy.resources.limits.cpus"), format!("`{c}` is not a number of CPUs such as 0.5 or 2"));
    }
    for (n, u) in s.ulimits {
        if !n.chars().all(|c| c.is_ascii_lowercase()) {
            p.push(file, &key(&format!("ulimits.{n}")), "not a limit name");
            continue;
        }
        limits.ulimits.push(match u {
            Ulimit::One(v) => format!("{n}={v}:{v}"),
            Ulimit::Pair { soft, hard } => format!("{n}={soft}:{hard}"),
        });
    }
    limits.shm_size = s.shm_size.map(|v| v.text());
    let stop_grace_s = s.stop_grace_period.as_ref().and_then(|g| {
        let d = parse_duration(g);
        if d.is_none() {
            p.push(file, &key("stop_grace_period"), format!("`{g}` is not a duration such as 10s or 1m30s"));
        }
        d
    });
    let mut aliases = Vec::new();
    for a in [&s.hostname, &s.container_name].into_iter().flatten() {
        if !crate::spec::valid_hostname(a) {
            p.push(file, &key(if Some(a) == s.hostname.as_ref() { "hostname" } else { "container_name" }), format!("`{a}` is not a host name other services could use"));
        } else if a != name && !aliases.contains(a) {
            aliases.push(a.clone());
        }
    }
    let extra_hosts = match s.extra_hosts {
        None => Vec::new(),
        Some(ExtraHosts::List(l)) => l.into_iter().map(|h| h.replacen('=', ":", 1)).collect(),
        Some(ExtraHosts::Map(m)) => m.into_iter().map(|(h, a)| format!("{h}:{a}")).collect(),
    };
    for h in &extra_hosts {
        if h.split_once(':').is_none_or(|(n, a)| n.is_empty() || a.parse::<std::net::IpAddr>().is_err() && a != "host-gateway") {
            p.push(file, &key("extra_hosts"), format!("`{h}` is not NAME:ADDRESS"));
        }
    }
    for (k, caps) in [("cap_add", &s.cap_add), ("cap_drop", &s.cap_drop)] {
        for c in caps {
            let bare = c.strip_prefix("CAP_").unwrap_or(c);
            if !(bare == "ALL" || !bare.is_empty() && bare.chars().all(|c| c.is_ascii_uppercase() || c == '_')) {
                p.push(file, &key(k), format!("`{c}` is not a capability name such as NET_BIND_SERVICE"));
            }
            if k == "cap_add" && ["ALL", "SYS_ADMIN", "SYS_MODULE", "SYS_RAWIO", "SYS_PTRACE", "DAC_READ_SEARCH", "SYS_BOOT"].contains(&bare) {
                p.push(file, &key(k), format!("refused: `{c}` gives the container the box (its disks, its kernel, its TPM)"));
            }
        }
    }
    let tmpfs = s.tmpfs.map(OneOrMany::list).unwrap_or_default();
    for t in &tmpfs {
        if !t.starts_with('/') {
            p.push(file, &key("tmpfs"), format!("`{t}` is not an absolute path in the container"));
        }
    }
    Some(Service {
        name: name.into(),
        image,
        command,
        entrypoint,
        environment,
        ports,
        expose,
        mounts,
        depends_on,
        health,
        restart,
        user: s.user.map(|u| u.text()),
        working_dir: s.working_dir,
        aliases,
        hostname: s.hostname,
        limits,
        stop_grace_s,
        stop_signal: s.stop_signal,
        cap_add: s.cap_add,
        cap_drop: s.cap_drop,
        extra_hosts,
        init: s.init.unwrap_or(false),
        read_only: s.read_only.unwrap_or(false),
        tmpfs,
    })
}

