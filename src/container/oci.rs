//! OCI images on disk: the cache's image layouts (one directory per manifest digest), and images
//! outpost writes itself from a root filesystem.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::spec::container::ImageConfig;

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// What skopeo names the single image of a layout directory.
pub const REF_NAME: &str = "image";

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn sha256_reader(mut r: impl Read) -> Result<String> {
    Ok(crate::files::hash_copy(&mut r, &mut std::io::sink())?.0)
}

/// An OCI image layout with one image: `oci-layout`, `index.json`, `blobs/sha256/*`.
pub struct Layout(pub PathBuf);

impl Layout {
    pub fn blob(&self, digest: &str) -> PathBuf {
        self.0.join("blobs").join(digest.replace(':', "/"))
    }

    /// The digest of the image's manifest, from `index.json`.
    pub fn manifest_digest(&self) -> Result<String> {
        let p = self.0.join("index.json");
        let index: serde_json::Value = serde_json::from_slice(&fs_err::read(&p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("parsing {}", p.display()))?;
        let m = index["manifests"].as_array().and_then(|m| m.first()).with_context(|| format!("{} lists no image", p.display()))?;
        m["digest"].as_str().map(str::to_string).with_context(|| format!("{} has no digest", p.display()))
    }

    /// The manifest's config: (config JSON, layer digests).
    pub fn read(&self) -> Result<(serde_json::Value, Vec<String>)> {
        let digest = self.manifest_digest()?;
        let manifest: serde_json::Value = serde_json::from_slice(&fs_err::read(self.blob(&digest))?).context("parsing the image manifest")?;
        let config_digest = manifest["config"]["digest"].as_str().context("the manifest names no config")?;
        let config: serde_json::Value = serde_json::from_slice(&fs_err::read(self.blob(config_digest))?).context("parsing the image config")?;
        let layers = manifest["layers"].as_array().map(|l| l.iter().filter_map(|x| x["digest"].as_str().map(str::to_string)).collect()).unwrap_or_default();
        Ok((config, layers))
    }

    fn write_blob(&self, bytes: &[u8]) -> Result<(String, u64)> {
        let digest = format!("sha256:{}", sha256_hex(bytes));
        let p = self.blob(&digest);
        fs_err::create_dir_all(p.parent().expect("blobs/sha256"))?;
        fs_err::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        Ok((digest, bytes.len() as u64))
    }
}

/// Writes an OCI layout for the image made of `layers` (zstd tars, bottom first, each moved
/// into the layout, with the history line that says what it holds), with a config made from
/// `config`; returns the manifest digest. Every byte is a function of the inputs: the JSON is
/// written with sorted keys, `created` is `epoch`.
pub fn write_image(dir: &Path, layers: &[(PathBuf, String)], config: &ImageConfig, architecture: &str, epoch: i64) -> Result<String> {
    let layout = Layout(dir.to_path_buf());
    fs_err::create_dir_all(dir.join("blobs/sha256"))?;
    let (mut descriptors, mut diff_ids) = (Vec::new(), Vec::new());
    for (zst, _) in layers {
        let digest = format!("sha256:{}", sha256_reader(fs_err::File::open(zst)?)?);
        diff_ids.push(format!("sha256:{}", sha256_reader(zstd::Decoder::new(fs_err::File::open(zst)?)?)?));
        let size = fs_err::metadata(zst)?.len();
        fs_err::rename(zst, layout.blob(&digest)).with_context(|| format!("moving {} into {}", zst.display(), dir.display()))?;
        descriptors.push(json!({ "mediaType": LAYER_ZSTD, "digest": digest, "size": size }));
    }
    let created = rfc3339(epoch);
    let mut env: Vec<String> = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()];
    env.extend(config.env.iter().filter(|(k, _)| k.as_str() != "PATH").map(|(k, v)| format!("{k}={v}")));
    if let Some(path) = config.env.get("PATH") {
        env[0] = format!("PATH={path}");
    }
    let mut c = serde_json::Map::new();
    c.insert("Env".into(), json!(env));
    if !config.entrypoint.is_empty() {
        c.insert("Entrypoint".into(), json!(config.entrypoint));
    }
    if !config.cmd.is_empty() {
        c.insert("Cmd".into(), json!(config.cmd));
    }
    if let Some(u) = &config.user {
        c.insert("User".into(), json!(u));
    }
    c.insert("WorkingDir".into(), json!(config.workdir.as_deref().unwrap_or("/")));
    if !config.ports.is_empty() {
        c.insert("ExposedPorts".into(), serde_json::Value::Object(config.ports.iter().map(|p| (format!("{p}/tcp"), json!({}))).collect()));
    }
    if !config.volumes.is_empty() {
        c.insert("Volumes".into(), serde_json::Value::Object(config.volumes.iter().map(|v| (v.clone(), json!({}))).collect()));
    }
    let arch = match architecture {
        "i386" => "386",
        "armhf" => "arm",
        other => other,
    };
    let image_config = json!({
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": c,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": layers.iter().map(|(_, h)| json!({ "created": created, "created_by": h })).collect::<Vec<_>>(),
    });
    let (config_digest, config_size) = layout.write_blob(&serde_json::to_vec(&image_config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": { "mediaType": CONFIG, "digest": config_digest, "size": config_size },
        "layers": descriptors,
    });
    let (manifest_digest, manifest_size) = layout.write_blob(&serde_json::to_vec(&manifest)?)?;
    write_index(dir, &manifest_digest, manifest_size)?;
    Ok(manifest_digest)
}

/// `oci-layout` and an `index.json` naming one manifest as `image`.
pub fn write_index(dir: &Path, manifest_digest: &str, manifest_size: u64) -> Result<()> {
    fs_err::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MANIFEST,
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": { "org.opencontainers.image.ref.name": REF_NAME },
        }],
    });
    let mut f = fs::File::create(dir.join("index.json"))?;
    f.write_all(&serde_json::to_vec(&index)?)?;
    Ok(())
}

/// Seconds since 1970 as RFC 3339 UTC, as OCI's `created` wants it.
pub fn rfc3339(epoch: i64) -> String {
    let (y, m, d, hh, mm, ss) = crate::files::civil_time(epoch);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
