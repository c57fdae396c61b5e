//! `[containers.NAME]` in a layer.toml: one container image, from a file in the layer, from a
//! registry pinned by digest, or built by outpost from the distribution's packages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Problems;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct ContainerToml {
    /// An OCI archive, an OCI layout directory or a `docker save` tar, relative to the layer.
    archive: Option<PathBuf>,
    /// `registry/name@sha256:...`.
    #[serde(rename = "ref")]
    reference: Option<String>,
    #[serde(default)]
    allow_tag: bool,
    /// Talk plain HTTP to the registry (one the test started on loopback).
    #[serde(default = "yes")]
    tls_verify: bool,
    /// Build from these packages of the base's archive.
    #[serde(default)]
    packages: Vec<String>,
    /// A directory of the layer copied onto the built image's root.
    files: Option<PathBuf>,
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    cmd: Vec<String>,
    user: Option<String>,
    workdir: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    ports: Vec<u16>,
    #[serde(default)]
    volumes: Vec<String>,
    /// Paths removed from the built tree (`*` matches within a path component).
    #[serde(default)]
    remove: Vec<String>,
}

fn yes() -> bool {
    true
}

/// What a built image runs: the OCI image config's fields outpost sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<u16>,
    pub volumes: Vec<String>,
}

// A handful per build: the size of the package variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Source {
    Archive { path: PathBuf },
    Registry { reference: String, tls_verify: bool },
    Packages { packages: Vec<String>, files: Option<PathBuf>, config: ImageConfig, remove: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    pub name: String,
    pub source: Source,
}

impl Container {
    /// The name the image has in the appliance's container store.
    pub fn store_name(&self) -> String {
        format!("localhost/outpost/{}:latest", self.name)
    }

    /// Whether a compose `image:` names this container: by its name, or by its reference.
    pub fn is_named_by(&self, image: &str) -> bool {
        self.name == image || matches!(&self.source, Source::Registry { reference, .. } if reference == image)
    }
}

/// The digest a registry reference is pinned to, if any.
pub fn pinned_digest(reference: &str) -> Option<&str> {
    reference.split_once('@').map(|(_, d)| d)
}

fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()))
}

/// A container name: what compose files and unit names use.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && n.starts_with(|c: char| c.is_ascii_lowercase())
}

pub(super) fn convert(file: &Path, dir: &Path, name: &str, t: ContainerToml, p: &mut Problems) -> Container {
    let key = |k: &str| if k.is_empty() { format!("containers.{name}") } else { format!("containers.{name}.{k}") };
    if !valid_name(name) {
        p.push(file, &key(""), "container names are lowercase letters, digits and `-`, starting with a letter");
    }
    let sources = [t.archive.is_some(), t.reference.is_some(), !t.packages.is_empty()];
    if sources.iter().filter(|s| **s).count() != 1 {
        p.push(file, &key(""), "give exactly one source: `archive` (a file in the layer), `ref` (a registry reference pinned by digest) or `packages` (built by outpost)");
    }
    let built_only = !t.entrypoint.is_empty()
        || !t.cmd.is_empty()
        || t.user.is_some()
        || t.workdir.is_some()
        || !t.env.is_empty()
        || !t.ports.is_empty()
        || !t.volumes.is_empty()
        || !t.remove.is_empty()
        || t.files.is_some();
    if t.packages.is_empty() && built_only {
        p.push(file, &key(""), "entrypoint, cmd, user, workdir, env, ports, volumes, remove and files describe an image outpost builds from `packages`; an archive or registry image carries its own");
    }
    if let Some(path) = &t.archive {
        let full = super::inside(dir, path).unwrap_or_else(|e| {
            p.push(file, &key("archive"), e);
            dir.join(path)
        });
        if !full.exists() {
            p.push(file, &key("archive"), format!("{} does not exist", full.display()));
        }
        return Container { name: name.into(), source: Source::Archive { path: full } };
    }
    if let Some(r) = &t.reference {
        if super::has_control(r) || r.len() > 512 {
            p.push(file, &key("ref"), "an image reference is one line of at most 512 characters");
            return Container { name: name.into(), source: Source::Registry { reference: String::new(), tls_verify: t.tls_verify } };
        }
        match pinned_digest(r) {
            Some(d) if !valid_digest(d) => p.push(file, &key("ref"), format!("`{r}`: `{d}` is not a sha256 digest (sha256: and 64 lowercase hex digits)")),
            None if !t.allow_tag => p.push(
                file,
                &key("ref"),
                format!("`{r}` names a tag, which the registry can move: pin it by digest (`{r}@sha256:...`, from `skopeo inspect docker://{r}`), or set `allow-tag = true` to take what the tag names at build time (its digest goes into the manifest)"),
            ),
            _ => {}
        }
        if r.contains("://") || r.is_empty() {
            p.push(file, &key("ref"), format!("`{r}` is not an image reference (expected e.g. `registry.example.org/team/app@sha256:...`)"));
        }
        return Container { name: name.into(), source: Source::Registry { reference: r.clone(), tls_verify: t.tls_verify } };
    }
    if t.entrypoint.is_empty() && t.cmd.is_empty() {
        p.push(file, &key("entrypoint"), "an image built from packages needs an `entrypoint` or a `cmd`: what it runs");
    }
    let files = t.files.map(|f| {
        let full = super::inside(dir, &f).unwrap_or_else(|e| {
            p.push(file, &key("files"), e);
            dir.join(&f)
        });
        if !full.is_dir() {
            p.push(file, &key("files"), format!("{} is not a directory", full.display()));
        }
        full
    });
    for (i, v) in t.volumes.iter().enumerate() {
        if !v.starts_with('/') {
            p.push(file, &key(&format!("volumes[{i}]")), format!("`{v}` is not an absolute path in the container"));
        }
    }
    for (i, r) in t.remove.iter().enumerate() {
        if !r.starts_with('/') || r.split('/').any(|c| c == "..") {
            p.push(file, &key(&format!("remove[{i}]")), format!("`{r}` is not an absolute path without `..`"));
        }
    }
    Container {
        name: name.into(),
        source: Source::Packages {
            packages: t.packages,
            files,
            config: ImageConfig { entrypoint: t.entrypoint, cmd: t.cmd, user: t.user, workdir: t.workdir, env: t.env, ports: t.ports, volumes: t.volumes },
            remove: t.remove,
        },
    }
}
