//! `layers/NAME/layer.toml`: packages, files, scripts, units and variables of one layer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::compose::{self, Stack};
use super::container::{self, Container, ContainerToml};
use super::{Problems, SpecError, check_version, parse_toml, valid_variable_name};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct LayerToml {
    version: u32,
    #[serde(default)]
    description: String,
    #[serde(default)]
    depends: Vec<String>,
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    units: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    distro: BTreeMap<String, DistroToml>,
    #[serde(default)]
    containers: BTreeMap<String, ContainerToml>,
    /// The layer's compose files (one, or several merged in order as `docker compose -f a -f
    /// b` merges them): its stack of containers.
    compose: Option<ComposeFiles>,
    /// Defaults of the compose files' variables; `.env` beside the first compose file when
    /// not given.
    env_file: Option<PathBuf>,
    /// Per-device secrets the stack's environment takes as `${NAME}`.
    #[serde(default)]
    secrets: BTreeMap<String, SecretToml>,
    /// Services that take the appliance's TLS certificate, and where it is mounted in them.
    #[serde(default)]
    tls: BTreeMap<String, String>,
    /// How backups take the stack's state consistently.
    #[serde(default)]
    backup: BackupToml,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupToml {
    #[serde(default)]
    dump: Vec<DumpToml>,
}

/// `[[backup.dump]]`: a database dumped by a command in its container, not copied mid-write.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DumpToml {
    service: String,
    volume: Option<String>,
    dump: Vec<String>,
    restore: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ComposeFiles {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SecretToml {
    /// alnum (default), hex or uuid.
    #[serde(default = "alnum")]
    kind: compose::SecretKind,
    /// Characters; 32 by default.
    length: Option<usize>,
}

fn alnum() -> compose::SecretKind {
    compose::SecretKind::Alnum
}

/// Additions that apply only when the image is of one distribution.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct DistroToml {
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    keyring: Option<KeyringToml>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct KeyringToml {
    file: PathBuf,
    fingerprint: String,
}

/// An archive keyring shipped in a layer, pinned by the fingerprint of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyring {
    pub file: PathBuf,
    pub fingerprint: String,
}

/// A layer with its distro-specific parts already chosen for one image's distribution.
#[derive(Debug, Clone)]
pub struct Layer {
    pub name: String,
    pub dir: PathBuf,
    pub file: PathBuf,
    /// The definition's bytes, part of the cache key.
    pub text: String,
    pub description: String,
    pub depends: Vec<String>,
    /// Package names, possibly templates such as `{{ kernel }}`.
    pub packages: Vec<String>,
    pub units: Vec<String>,
    pub variables: BTreeMap<String, String>,
    pub keyring: Option<Keyring>,
    /// `files/` entries relative to it, sorted; `*.tera` still carry their suffix.
    pub files: Vec<PathBuf>,
    /// `scripts/*.sh`, sorted by name.
    pub scripts: Vec<PathBuf>,
    /// Every other file of the layer's directory (compose files, container files and
    /// archives), relative to it and sorted: part of the cache key.
    pub inputs: Vec<PathBuf>,
    pub containers: Vec<Container>,
    pub stack: Option<Stack>,
}

const KNOWN_DISTROS: &[&str] = &["debian", "ubuntu"];

impl Layer {
    /// Loads `DIR/layer.toml` for an image of `distro`; problems go to `p`.
    pub fn load(dir: &Path, distro: &str) -> Result<Layer, SpecError> {
        let file = dir.join("layer.toml");
        let (t, text): (LayerToml, String) = parse_toml(&file)?;
        let mut p = Problems::default();
        check_version(&mut p, &file, t.version);
        for d in t.distro.keys() {
            if !KNOWN_DISTROS.contains(&d.as_str()) {
                p.push(&file, &format!("distro.{d}"), format!("unknown distribution `{d}`; known: {}", KNOWN_DISTROS.join(", ")));
            }
        }
        let extra = t.distro.get(distro).cloned().unwrap_or_default();
        let mut variables = t.variables.clone();
        variables.extend(extra.variables.clone());
        for name in variables.keys() {
            if !valid_variable_name(name) {
                p.push(&file, &format!("variables.{name}"), "variable names are lowercase letters, digits and `_`, starting with a letter");
            }
        }
        for (i, u) in t.units.iter().enumerate() {
            if super::has_control(u) || u.contains('/') || u.contains(' ') || u.len() > 100 {
                p.push(&file, &format!("units[{i}]"), format!("`{}` is not a unit name", super::excerpt(u, 60)));
            } else if !u.contains('.') {
                p.push(&file, &format!("units[{i}]"), format!("`{u}` is not a unit name (expected e.g. `{u}.service`)"));
            }
        }
        let keyring = extra.keyring.map(|k| {
            let path = dir.join(&k.file);
            if !path.is_file() {
                p.push(&file, &format!("distro.{distro}.keyring.file"), format!("{} does not exist", path.display()));
            }
            let fpr: String = k.fingerprint.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_uppercase();
            if fpr.len() != 40 || !fpr.chars().all(|c| c.is_ascii_hexdigit()) {
                p.push(&file, &format!("distro.{distro}.keyring.fingerprint"), "expected a 40-digit hexadecimal OpenPGP fingerprint");
            }
            Keyring { file: path, fingerprint: fpr }
        });
        // Whatever cannot be read in the layer's directory cannot be in its cache key either.
        for e in walkdir::WalkDir::new(dir).min_depth(1) {
            if let Err(e) = e {
                p.push(e.path().unwrap_or(dir), "", format!("cannot be read, so it cannot be part of the layer's cache key: {e}"));
            }
        }
        let files = list_tree(&dir.join("files"));
        for f in &files {
            let name = f.to_string_lossy();
            if super::has_control(&name) {
                p.push(&dir.join("files").join(f), "", "a file name with a newline or another control character cannot be installed; rename it");
            }
        }
        let scripts_dir = dir.join("scripts");
        let mut scripts: Vec<PathBuf> = fs_err::read_dir(&scripts_dir)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        scripts.retain(|s| {
            let ok = s.extension().is_some_and(|e| e == "sh") && s.is_file();
            if !ok {
                p.push(s, "", "only `*.sh` files belong in a layer's scripts/ directory");
            }
            ok
        });
        scripts.sort();
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !super::valid_name(&name) {
            p.push(&file, "", format!("the layer's directory name `{}` names its units, volumes and cache entries: use lowercase letters, digits and `-`, at most 40", super::excerpt(&name, 60)));
        }
        let containers = t.containers.into_iter().map(|(n, c)| container::convert(&file, dir, &n, c, &mut p)).collect();
        let has_compose = t.compose.is_some();
        let stack = t.compose.and_then(|c| {
            let (listed, one) = match c {
                ComposeFiles::One(f) => (vec![f], true),
                ComposeFiles::Many(l) => (l, false),
            };
            let mut files = Vec::new();
            for (i, f) in listed.iter().enumerate() {
                match super::inside(dir, f) {
                    Ok(path) => files.push(path),
                    Err(e) => p.push(&file, &if one { "compose".to_string() } else { format!("compose[{i}]") }, e),
                }
            }
            if files.len() < listed.len() {
                return None;
            }
            if files.is_empty() {
                p.push(&file, "compose", "names no compose file");
                return None;
            }
            let env_file = match &t.env_file {
                Some(e) => match super::inside(dir, e) {
                    Ok(path) => Some(path),
                    Err(err) => {
                        p.push(&file, "env-file", err);
                        None
                    }
                },
                None => Some(files[0].with_file_name(".env")).filter(|e| e.is_file()),
            };
            let mut secrets = BTreeMap::new();
            for (n, st) in &t.secrets {
                let length = match (st.kind, st.length) {
                    (compose::SecretKind::Uuid, Some(_)) => {
                        p.push(&file, &format!("secrets.{n}.length"), "a UUID has its own length");
                        36
                    }
                    (compose::SecretKind::Uuid, None) => 36,
                    (_, Some(l)) if !(16..=256).contains(&l) => {
                        p.push(&file, &format!("secrets.{n}.length"), format!("{l}: a secret is 16 to 256 characters"));
                        32
                    }
                    (_, l) => l.unwrap_or(32),
                };
                secrets.insert(n.clone(), compose::Secret { kind: st.kind, length });
            }
            let mut stack = compose::load(&name, &file, &files, env_file.as_deref(), secrets, &mut p)?;
            for (svc, dir) in &t.tls {
                if !stack.services.iter().any(|x| &x.name == svc) {
                    p.push(&file, &format!("tls.{svc}"), format!("`{svc}` is not a service of the layer's compose files"));
                }
                if !dir.starts_with('/') || dir.split('/').any(|c| c == "..") || super::has_control(dir) {
                    p.push(&file, &format!("tls.{svc}"), format!("`{}` is not an absolute directory in the container", super::excerpt(dir, 60)));
                }
            }
            stack.tls = t.tls.clone();
            for (i, d) in t.backup.dump.iter().enumerate() {
                let at = |k: &str| format!("backup.dump[{i}].{k}");
                if !stack.services.iter().any(|x| x.name == d.service) {
                    p.push(&file, &at("service"), format!("`{}` is not a service of the layer's compose files", super::excerpt(&d.service, 60)));
                }
                if let Some(v) = &d.volume
                    && !stack.volumes.contains(v)
                {
                    p.push(&file, &at("volume"), format!("`{}` is not a named volume of the layer's compose files", super::excerpt(v, 60)));
                }
                for (k, argv) in [("dump", &d.dump), ("restore", &d.restore)] {
                    if argv.is_empty() || argv.iter().any(|a| super::has_control(a)) {
                        p.push(&file, &at(k), "a command is a non-empty list of arguments without control characters, run in the service's container");
                    }
                }
                stack.backup.push(crate::format::stack::Dump { service: d.service.clone(), volume: d.volume.clone(), dump: d.dump.clone(), restore: d.restore.clone() });
            }
            Some(stack)
        });
        if !has_compose && (!t.secrets.is_empty() || t.env_file.is_some() || !t.tls.is_empty() || !t.backup.dump.is_empty()) {
            p.push(&file, "compose", "secrets, tls, backup and env-file belong to a layer with `compose` files");
        }
        let inputs = list_tree(dir)
            .into_iter()
            .filter(|r| !r.starts_with("files") && !r.starts_with("scripts") && r.as_os_str() != "layer.toml" && dir.join(r).is_file())
            .collect();
        p.into_result()?;
        let mut packages = t.packages;
        packages.extend(extra.packages);
        Ok(Layer {
            name,
            dir: dir.to_path_buf(),
            file,
            text,
            description: t.description,
            depends: t.depends,
            packages,
            units: t.units,
            variables,
            keyring,
            files,
            scripts,
            inputs,
            containers,
            stack,
        })
    }
}

/// Every path below `root`, relative and sorted; empty when `root` does not exist.
pub fn list_tree(root: &Path) -> Vec<PathBuf> {
    if !root.is_dir() {
        return Vec::new();
    }
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.path().strip_prefix(root).ok().map(Path::to_path_buf))
        .collect()
}
