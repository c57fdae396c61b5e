//! Reading a stack's compose files as `docker compose -f a -f b` does: each file bounded before
//! it is parsed, interpolated (its environment left for the device), then merged into the one
//! before it.

use std::collections::BTreeMap;
use std::path::Path;

use yaml_serde::{Mapping, Value};

use crate::format::interpolate::{self, Error as InterpError};
use crate::spec::Problems;

/// The largest compose file read (the ones health projects publish are a few KiB).
pub const MAX_COMPOSE_BYTES: usize = 256 << 10;
/// The deepest `[`/`{` nesting read: published files nest a handful of levels.
const MAX_NESTING: usize = 64;

/// Where a variable's value comes from when the build interpolates: the layer's defaults, and
/// which names the device will fill (secrets).
pub struct Vars<'a> {
    pub defaults: &'a BTreeMap<String, String>,
    pub secrets: &'a BTreeMap<String, super::Secret>,
}

/// The deepest bracket nesting of `text`, counted before the YAML parser sees it.
fn nesting(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

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

/// Reads one compose file into a YAML mapping, bounded first.
pub fn parse(file: &Path, p: &mut Problems) -> Option<Mapping> {
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
    let depth = nesting(&text);
    if depth > MAX_NESTING {
        p.push(file, "", format!("brackets nest {depth} deep; outpost reads compose files nested at most {MAX_NESTING} deep"));
        return None;
    }
    match yaml_serde::from_str::<Value>(&text) {
        Ok(Value::Mapping(m)) => Some(m),
        Ok(_) => {
            p.push(file, "", "a compose file is a mapping with `services` (and `volumes`, `networks`)");
            None
        }
        Err(e) => {
            // The parser's location, where it has one (an alias bomb has its line too).
            let at = e.location().map(|l| format!("line {}, column {}: ", l.line(), l.column())).unwrap_or_default();
            let key = e.location().map(|l| yaml_key_at(&text, l.index())).unwrap_or_default();
            p.push(file, &key, format!("{at}{e}"));
            None
        }
    }
}

/// Interpolates every string of one file at build time with the layer's defaults, except
/// services' `environment`, whose variables the device fills (secrets, site variables):
/// those are only checked here.
pub fn interpolate_file(file: &Path, doc: &mut Mapping, vars: &Vars<'_>, p: &mut Problems) {
    let Some(Value::Mapping(services)) = doc.get_mut("services") else { return };
    for (name, svc) in services.iter_mut() {
        let name = name.as_str().unwrap_or("?").to_string();
        let Value::Mapping(svc) = svc else { continue };
        for (k, v) in svc.iter_mut() {
            let k = k.as_str().unwrap_or("?").to_string();
            let path = format!("services.{name}.{k}");
            if k == "environment" {
                check_environment(file, &path, v, vars, p);
            } else {
                walk(file, &path, v, vars, p);
            }
        }
    }
    for top in ["volumes", "networks"] {
        if let Some(v) = doc.get_mut(top) {
            walk(file, top, v, vars, p);
        }
    }
}

fn build_time_lookup<'a>(vars: &'a Vars<'a>, secret_used: &'a mut Option<String>) -> impl FnMut(&str) -> Option<String> + 'a {
    move |n: &str| {
        if vars.secrets.contains_key(n) {
            *secret_used = Some(n.to_string());
        }
        vars.defaults.get(n).cloned()
    }
}

fn walk(file: &Path, path: &str, v: &mut Value, vars: &Vars<'_>, p: &mut Problems) {
    match v {
        Value::String(s) => {
            let mut secret = None;
            let r = interpolate::interpolate(s, &mut build_time_lookup(vars, &mut secret));
            if let Some(n) = secret {
                p.push(file, path, format!("`{n}` is a per-device secret: secrets reach a service through its `environment` only (made on the device, they are unknown when the image is built)"));
                return;
            }
            match r {
                Ok(out) => *s = out,
                Err(InterpError::Required { name, message }) => p.push(
                    file,
                    path,
                    format!("variable `{name}` is required ({}) and neither the layer's env file nor its secrets set it", if message.is_empty() { "`:?`" } else { message.as_str() }),
                ),
                Err(e) => p.push(file, path, e.to_string()),
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(file, &format!("{path}[{i}]"), item, vars, p);
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let k = k.as_str().unwrap_or("?").to_string();
                walk(file, &format!("{path}.{k}"), item, vars, p);
            }
        }
        _ => {}
    }
}

/// Checks the variables of one `environment` value the device will interpolate.
pub fn check_value(file: &Path, path: &str, value: &str, vars: &Vars<'_>, p: &mut Problems) {
    match interpolate::references(value) {
        Err(e) => p.push(file, path, e.to_string()),
        Ok(refs) => {
            for (name, required) in refs {
                if required && !vars.defaults.contains_key(&name) && !vars.secrets.contains_key(&name) {
                    p.push(file, path, format!("variable `{name}` is required (`:?`) and neither the layer's env file nor its secrets (`[secrets.{name}]` in layer.toml) set it"));
                }
            }
        }
    }
}

fn check_environment(file: &Path, path: &str, v: &Value, vars: &Vars<'_>, p: &mut Problems) {
    match v {
        Value::Mapping(m) => {
            for (k, val) in m {
                if let (Some(k), Value::String(s)) = (k.as_str(), val) {
                    check_value(file, &format!("{path}.{k}"), s, vars, p);
                }
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(s) = item.as_str() {
                    check_value(file, &format!("{path}[{i}]"), s.split_once('=').map_or("", |(_, v)| v), vars, p);
                }
            }
        }
        _ => {}
    }
}

/// `environment` (either form), `depends_on` (either form), `networks` (either form) and
/// `extra_hosts` as mappings, so that two files merge key by key.
fn normalize_service(svc: &mut Mapping) {
    if let Some(Value::Sequence(items)) = svc.get("environment").cloned() {
        let mut m = Mapping::new();
        for item in items {
            let s = match item {
                Value::String(s) => s,
                other => yaml_serde::to_string(&other).unwrap_or_default().trim().to_string(),
            };
            match s.split_once('=') {
                Some((k, v)) => m.insert(Value::String(k.to_string()), Value::String(v.to_string())),
                // `- NAME` alone: the value of NAME where compose runs; here, on the device.
                None => m.insert(Value::String(s.clone()), Value::String(format!("${{{s}}}"))),
            };
        }
        svc.insert(Value::String("environment".into()), Value::Mapping(m));
    }
    for key in ["depends_on", "networks"] {
        if let Some(Value::Sequence(items)) = svc.get(key).cloned() {
            let m: Mapping = items.into_iter().map(|i| (i, Value::Mapping(Mapping::new()))).collect();
            svc.insert(Value::String(key.into()), Value::Mapping(m));
        }
    }
}

/// Merges `over` into `base` as Compose merges a later file into an earlier one: mappings key
/// by key, `ports`, `expose`, `volumes`, `env_file`, `cap_add`, `cap_drop`, `dns` and
/// `extra_hosts` appended (volumes replaced by target), anything else replaced.
pub fn merge(base: &mut Mapping, over: Mapping) {
    for (k, v) in over {
        let key = k.as_str().unwrap_or("").to_string();
        match (base.get_mut(&k), v) {
            (Some(Value::Mapping(b)), Value::Mapping(o)) if key == "services" => {
                for (name, svc) in o {
                    let Value::Mapping(mut svc) = svc else {
                        b.insert(name, svc);
                        continue;
                    };
                    normalize_service(&mut svc);
                    match b.get_mut(&name) {
                        Some(Value::Mapping(existing)) => {
                            normalize_service(existing);
                            merge_service(existing, svc);
                        }
                        _ => {
                            b.insert(name, Value::Mapping(svc));
                        }
                    }
                }
            }
            (Some(Value::Mapping(b)), Value::Mapping(o)) => merge_mapping(b, o),
            (_, v) => {
                let v = if key == "services" {
                    match v {
                        Value::Mapping(mut m) => {
                            for (_, svc) in m.iter_mut() {
                                if let Value::Mapping(s) = svc {
                                    normalize_service(s);
                                }
                            }
                            Value::Mapping(m)
                        }
                        other => other,
                    }
                } else {
                    v
                };
                base.insert(k, v);
            }
        }
    }
}

fn merge_mapping(base: &mut Mapping, over: Mapping) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Mapping(b)), Value::Mapping(o)) => merge_mapping(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn volume_target(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => s.split(':').nth(1).map(str::to_string),
        Value::Mapping(m) => m.get("target").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn merge_service(base: &mut Mapping, over: Mapping) {
    const APPENDED: &[&str] = &["ports", "expose", "env_file", "cap_add", "cap_drop", "dns", "extra_hosts", "tmpfs"];
    for (k, v) in over {
        let key = k.as_str().unwrap_or("").to_string();
        match (base.get_mut(&k), v) {
            (Some(Value::Sequence(b)), Value::Sequence(o)) if key == "volumes" => {
                for item in o {
                    let t = volume_target(&item);
                    b.retain(|e| t.is_none() || volume_target(e) != t);
                    b.push(item);
                }
            }
            (Some(Value::Sequence(b)), Value::Sequence(o)) if APPENDED.contains(&key.as_str()) => {
                for item in o {
                    if !b.contains(&item) {
                        b.push(item);
                    }
                }
            }
            (Some(Value::Mapping(b)), Value::Mapping(o)) if key != "healthcheck" || !o.contains_key("test") => merge_mapping(b, o),
            (Some(Value::Mapping(b)), Value::Mapping(o)) => {
                // A new health check test replaces the old one; its other keys still merge.
                merge_mapping(b, o);
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Mapping {
        match yaml_serde::from_str(s).unwrap() {
            Value::Mapping(m) => m,
            _ => panic!(),
        }
    }

    #[test]
    fn a_second_file_merges_as_compose_merges_it() {
        let mut a = Mapping::new();
        merge(
            &mut a,
            yaml("services:\n  api:\n    image: api\n    command: [serve]\n    environment: [\"A=1\", \"B=2\", LOOSE]\n    ports: [\"80:80\"]\n    volumes: [\"data:/data\", \"logs:/logs\"]\n    depends_on: [db]\nvolumes:\n  data: {}\n"),
        );
        merge(
            &mut a,
            yaml("services:\n  api:\n    command: [serve, --debug]\n    environment: {B: \"3\", C: \"4\"}\n    ports: [\"443:443\"]\n    volumes: [\"other:/data\"]\n    depends_on: {cache: {condition: service_started}}\n  db:\n    image: db\nvolumes:\n  other: {}\n"),
        );
        let api = &a["services"]["api"];
        assert_eq!(api["command"], yaml_serde::from_str::<Value>("[serve, --debug]").unwrap());
        assert_eq!(api["environment"], yaml_serde::from_str::<Value>("{A: \"1\", B: \"3\", LOOSE: \"${LOOSE}\", C: \"4\"}").unwrap());
        assert_eq!(api["ports"], yaml_serde::from_str::<Value>("[\"80:80\", \"443:443\"]").unwrap());
        assert_eq!(api["volumes"], yaml_serde::from_str::<Value>("[\"logs:/logs\", \"other:/data\"]").unwrap());
        assert_eq!(api["depends_on"], yaml_serde::from_str::<Value>("{db: {}, cache: {condition: service_started}}").unwrap());
        assert_eq!(a["services"]["db"]["image"], Value::String("db".into()));
        assert_eq!(a["volumes"], yaml_serde::from_str::<Value>("{data: {}, other: {}}").unwrap());
    }

    #[test]
    fn nested_brackets_are_refused_before_parsing() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("c.yml");
        fs_err::write(&f, "services: ".to_string() + &"[".repeat(100_000)).unwrap();
        let mut p = Problems::default();
        let t = std::time::Instant::now();
        assert!(parse(&f, &mut p).is_none());
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        assert!(p.0[0].message.contains("nest 100000 deep"), "{:?}", p.0);
    }
}
