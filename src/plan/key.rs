//! Cache keys: sha256 over everything that decides a layer's result, never over mtimes.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;

use sha2::{Digest, Sha256};

use super::Base;
use crate::spec::Layer;

/// Bumped whenever the way outpost builds or stores a container image changes; part of the
/// cache key of every source and of every layer with containers.
pub const CONTAINER_FORMAT: &str = "outpost-container-4";

/// Bumped whenever the units and run specifications written for a compose stack change; part of
/// the cache key of every layer with a stack.
pub const STACK_FORMAT: &str = "outpost-stack-12";

/// Bumped whenever the way outpost applies or stores a layer changes.
pub const FORMAT_VERSION: u32 = 3;

fn field(h: &mut Sha256, name: &str, value: &[u8]) {
    h.update(name.as_bytes());
    h.update((value.len() as u64).to_le_bytes());
    h.update(value);
}

pub fn base_key(base: &Base) -> Result<String, String> {
    let mut h = Sha256::new();
    field(&mut h, "format", &FORMAT_VERSION.to_le_bytes());
    field(&mut h, "distro", base.distro.as_bytes());
    field(&mut h, "suite", base.suite.as_bytes());
    field(&mut h, "mirror", base.mirror.as_deref().unwrap_or("default").as_bytes());
    field(&mut h, "components", base.components.as_bytes());
    field(&mut h, "architecture", base.architecture.as_bytes());
    if let Some(k) = &base.keyring {
        let bytes = fs_err::read(&k.file).map_err(|e| format!("reading {}: {e}", k.file.display()))?;
        field(&mut h, "keyring", &bytes);
    }
    Ok(hex::encode(h.finalize()))
}

pub fn layer_key(parent: &str, layer: &Layer, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut h = Sha256::new();
    field(&mut h, "format", &FORMAT_VERSION.to_le_bytes());
    field(&mut h, "parent", parent.as_bytes());
    field(&mut h, "name", layer.name.as_bytes());
    field(&mut h, "definition", layer.text.as_bytes());
    if !layer.containers.is_empty() {
        field(&mut h, "containers", CONTAINER_FORMAT.as_bytes());
    }
    if layer.stack.is_some() {
        field(&mut h, "stack", STACK_FORMAT.as_bytes());
    }
    for (k, v) in vars {
        field(&mut h, "variable", k.as_bytes());
        field(&mut h, "value", v.as_bytes());
    }
    let mut entries: Vec<(String, std::path::PathBuf)> = Vec::new();
    for rel in &layer.files {
        entries.push((format!("files/{}", rel.display()), layer.dir.join("files").join(rel)));
    }
    for s in &layer.scripts {
        let name = s.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        entries.push((format!("scripts/{name}"), s.clone()));
    }
    for rel in &layer.inputs {
        entries.push((rel.display().to_string(), layer.dir.join(rel)));
    }
    for (rel, path) in entries {
        hash_entry(&mut h, &rel, &path)?;
    }
    Ok(hex::encode(h.finalize()))
}

/// Adds one file, directory or symlink to a key: its path, and its target, executable bit and
/// bytes (never its mtime or owner, which a checkout does not keep).
pub fn hash_entry(h: &mut Sha256, rel: &str, path: &std::path::Path) -> Result<(), String> {
    let read = |e: std::io::Error| format!("reading {}: {e}", path.display());
    let meta = fs_err::symlink_metadata(path).map_err(read)?;
    field(h, "path", rel.as_bytes());
    if meta.file_type().is_symlink() {
        let target = fs_err::read_link(path).map_err(read)?;
        field(h, "symlink", target.as_os_str().as_encoded_bytes());
    } else if meta.is_dir() {
        field(h, "dir", b"");
    } else {
        // Git keeps only the executable bit, so that is all the key may depend on.
        let exec = meta.permissions().mode() & 0o111 != 0;
        field(h, "exec", &[exec as u8]);
        let mut f = std::fs::File::open(path).map_err(read)?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(read)?;
        field(h, "bytes", &buf);
    }
    Ok(())
}

/// A named value in a key.
pub fn hash_field(h: &mut Sha256, name: &str, value: &[u8]) {
    field(h, name, value);
}
