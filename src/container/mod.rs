//! Containers: every image a layer declares is resolved at build time into the cache as an OCI
//! layout keyed by its manifest digest, copied into the appliance's read-only image store, and
//! the layer's compose stack becomes systemd units. Nothing is pulled or loaded on the device.

mod build;
pub mod oci;
mod store;
pub mod units;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::Cache;
use crate::files::atomic_write;
use crate::plan::key::{hash_entry, hash_field};
use crate::plan::{BuildPlan, PlannedLayer};
use crate::spec::container::{Container, Source, pinned_digest};
use crate::tool::Tool;
use oci::Layout;

pub use crate::plan::key::CONTAINER_FORMAT as FORMAT;

/// The read-only image store in the root, which podman reads as an additional image store.
pub const STORE: &str = "usr/lib/containers/storage";
/// Where each container's record (source, digest, packages) is kept in the image.
pub const RECORDS: &str = "usr/share/outpost/containers";

/// What the image holds of one container, recorded in the image and the build manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub layer: String,
    /// `built from packages of debian bookworm`, `registry REF`, `archive FILE`.
    pub source: String,
    /// The name podman knows it by in the appliance.
    pub store_name: String,
    /// The manifest digest.
    pub digest: String,
    /// Distribution packages in the image (name, version), when outpost built it or it carries
    /// a dpkg status file.
    pub packages: Vec<(String, String)>,
}

/// What the cache remembers of a resolved source: where its layout is, and what it holds.
#[derive(Debug, Serialize, Deserialize)]
struct Resolved {
    digest: String,
    packages: Vec<(String, String)>,
}

fn sources_dir(cache: &Cache) -> PathBuf {
    cache.root().join("oci").join("sources")
}

fn layout_dir(cache: &Cache, digest: &str) -> PathBuf {
    cache.root().join("oci").join("images").join(digest.replace(':', "-"))
}

/// The key a source is resolved under: for a pinned reference its digest, for anything else a
/// hash of everything that decides the image.
fn source_key(plan: &BuildPlan, c: &Container) -> Result<String> {
    let mut h = Sha256::new();
    hash_field(&mut h, "format", FORMAT.as_bytes());
    match &c.source {
        Source::Registry { reference, .. } => hash_field(&mut h, "ref", reference.as_bytes()),
        Source::Archive { path } => hash_entry(&mut h, "archive", path).map_err(anyhow::Error::msg)?,
        Source::Packages { packages, files, config, remove } => {
            // The archive's state is pinned with the base layer's key, as for layers.
            hash_field(&mut h, "base", plan.layers[0].key.as_bytes());
            hash_field(&mut h, "packages", packages.join(" ").as_bytes());
            hash_field(&mut h, "config", &serde_json::to_vec(config)?);
            hash_field(&mut h, "remove", remove.join("\n").as_bytes());
            hash_field(&mut h, "epoch", std::env::var("SOURCE_DATE_EPOCH").unwrap_or_default().as_bytes());
            if let Some(dir) = files {
                for rel in crate::spec::list_tree(dir) {
                    hash_entry(&mut h, &rel.display().to_string(), &dir.join(&rel)).map_err(anyhow::Error::msg)?;
                }
            }
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Finds the container's image in the cache, or builds or fetches it there.
pub fn resolve(plan: &BuildPlan, layer: &PlannedLayer, cache: &Cache, c: &Container, epoch: i64) -> Result<(Layout, Record)> {
    let key = source_key(plan, c)?;
    let record_path = sources_dir(cache).join(format!("{key}.json"));
    // A missing or unreadable record is a cache miss: the source is resolved again.
    let resolved: Resolved = match fs_err::read(&record_path).ok().and_then(|b| serde_json::from_slice::<Resolved>(&b).ok()) {
        Some(r) if layout_dir(cache, &r.digest).join("index.json").is_file() => r,
        _ => {
            let work = cache.work_dir(&format!("container-{}", c.name))?;
            let layout = work.path().join("layout");
            let packages = fetch(plan, layer, c, work.path(), &layout, cache.root(), epoch)?;
            let digest = Layout(layout.clone()).manifest_digest()?;
            if let Source::Registry { reference, .. } = &c.source
                && let Some(want) = pinned_digest(reference)
                && want != digest
            {
                anyhow::bail!(
                    "layer `{}`, containers.{}.ref: the registry returned an image with digest {digest}, not the {want} the reference pins; \
                     the reference may name a multi-platform index (pin the linux/amd64 manifest's digest, from `skopeo inspect --raw`) or the registry serves other content",
                    layer.name,
                    c.name
                );
            }
            let dest = layout_dir(cache, &digest);
            if !dest.join("index.json").is_file() {
                fs_err::create_dir_all(dest.parent().expect("images dir"))?;
                if dest.exists() {
                    fs_err::remove_dir_all(&dest)?;
                }
                // A directory rename is atomic: the layout is whole or absent.
                fs_err::rename(&layout, &dest).with_context(|| format!("storing {} in the cache", c.name))?;
            }
            let r = Resolved { digest, packages };
            fs_err::create_dir_all(sources_dir(cache))?;
            atomic_write(&record_path, |f| Ok(serde_json::to_writer_pretty(f, &r)?))?;
            r
        }
    };
    let source = match &c.source {
        Source::Packages { .. } => format!("built from packages of {} {}", plan.base.distro, plan.base.suite),
        Source::Registry { reference, .. } => format!("registry {reference}"),
        Source::Archive { path } => format!("archive {}", path.strip_prefix(&layer.layer.dir).unwrap_or(path).display()),
    };
    let record = Record { name: c.name.clone(), layer: layer.name.clone(), source, store_name: c.store_name(), digest: resolved.digest.clone(), packages: resolved.packages };
    Ok((Layout(layout_dir(cache, &resolved.digest)), record))
}

/// Makes the OCI layout for one source in `layout`; returns its packages when known.
fn fetch(plan: &BuildPlan, layer: &PlannedLayer, c: &Container, work: &Path, layout: &Path, cache_root: &Path, epoch: i64) -> Result<Vec<(String, String)>> {
    let dest = format!("oci:{}:{}", layout.display(), oci::REF_NAME);
    match &c.source {
        Source::Packages { packages, files, config, remove } => {
            build::build(plan, &c.name, packages, files.as_deref(), config, remove, work, layout, cache_root, epoch)
        }
        Source::Registry { reference, tls_verify } => {
            let mut t = skopeo(format!("pulling container `{}` of layer `{}` from {reference}", c.name, layer.name))
                .args(["copy", "--quiet", "--preserve-digests", "--retry-times", "3"]);
            if !tls_verify {
                t = t.arg("--src-tls-verify=false");
            }
            t.arg(format!("docker://{reference}")).arg(&dest).run()?;
            packages_in(layout)
        }
        Source::Archive { path } => {
            let transport = archive_transport(path).with_context(|| format!("layer `{}`, containers.{}.archive", layer.name, c.name))?;
            skopeo(format!("reading container `{}` of layer `{}` from {}", c.name, layer.name, path.display()))
                .args(["copy", "--quiet", "--preserve-digests"])
                .arg(format!("{transport}:{}", path.display()))
                .arg(&dest)
                .run()?;
            packages_in(layout)
        }
    }
}

/// The environment variable naming a containers-registries.conf(5) file for the build: its
/// mirrors serve images named by their upstream registry (`[[registry.mirror]]`), the way an
/// air-gapped team's Harbor or a test's loopback registry stands in for a registry the build
/// cannot reach. Without it skopeo reads /etc/containers/registries.conf and the user's own.
pub const REGISTRIES_CONF_ENV: &str = "OUTPOST_REGISTRIES_CONF";

/// skopeo in a private mount namespace: containers/storage's overlay driver bind-mounts its
/// directory onto itself, and that mount must end with the process, not stay on the host.
pub(crate) fn skopeo(why: String) -> Tool {
    let t = Tool::new("unshare").describe(why).args(["--mount", "--propagation", "private", "--fork", "--", "skopeo"]);
    match std::env::var_os(REGISTRIES_CONF_ENV) {
        Some(conf) => t.arg("--registries-conf").arg(conf),
        None => t,
    }
}

/// skopeo's transport for a file: an OCI layout directory, an OCI archive or a `docker save` tar.
fn archive_transport(path: &Path) -> Result<&'static str> {
    if path.is_dir() {
        anyhow::ensure!(path.join("index.json").is_file(), "{} is a directory without index.json: not an OCI image layout", path.display());
        return Ok("oci");
    }
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut ar = tar::Archive::new(f);
    for e in ar.entries().with_context(|| format!("{} is not a tar archive", path.display()))? {
        let e = e.with_context(|| format!("{} is not a tar archive", path.display()))?;
        let name = e.path()?.to_string_lossy().trim_start_matches("./").to_string();
        if name == "oci-layout" || name == "index.json" {
            return Ok("oci-archive");
        }
        if name == "manifest.json" {
            return Ok("docker-archive");
        }
    }
    anyhow::bail!("{} holds neither oci-layout nor manifest.json: not an OCI archive or a `docker save` tar", path.display())
}

/// Packages listed in the dpkg status file of an image's layers, the last layer that has one
/// winning; empty when no layer has one (a distroless or non-Debian image).
fn packages_in(layout: &Path) -> Result<Vec<(String, String)>> {
    let l = Layout(layout.to_path_buf());
    let (_, layers) = l.read()?;
    let mut status: Option<String> = None;
    for d in layers {
        let blob = l.blob(&d);
        let mut magic = [0u8; 4];
        let n = std::io::Read::read(&mut fs_err::File::open(&blob)?, &mut magic).with_context(|| format!("reading {}", blob.display()))?;
        let f = fs_err::File::open(&blob)?;
        let reader: Box<dyn std::io::Read> = match &magic[..n] {
            [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(f)),
            [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::Decoder::new(f)?),
            _ => Box::new(f),
        };
        let mut ar = tar::Archive::new(reader);
        for e in ar.entries()? {
            let mut e = e?;
            if e.path()?.to_string_lossy().trim_start_matches("./") == "var/lib/dpkg/status" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut e, &mut s)?;
                status = Some(s);
            }
        }
    }
    Ok(status.map(|s| crate::rootfs::parse_dpkg_status(&s)).unwrap_or_default())
}

/// Resolves every container of `layer`, copies them into the image store under `root`, writes
/// their records and the layer's stack units.
pub fn install(plan: &BuildPlan, layer: &PlannedLayer, cache: &Cache, root: &Path) -> Result<()> {
    let l = &layer.layer;
    if l.containers.is_empty() && l.stack.is_none() {
        return Ok(());
    }
    let epoch = crate::files::source_date_epoch()?;
    let records_dir = root.join(RECORDS);
    fs_err::create_dir_all(&records_dir)?;
    for c in &l.containers {
        let (layout, record) = resolve(plan, layer, cache, c, epoch)?;
        store::add(&layout, &root.join(STORE), &record.store_name, &format!("container `{}` of layer `{}`", c.name, layer.name))?;
        let p = records_dir.join(format!("{}.json", c.name));
        fs_err::write(&p, serde_json::to_vec_pretty(&record)?).with_context(|| format!("writing {}", p.display()))?;
    }
    if !l.containers.is_empty() {
        store::normalize(&root.join(STORE), epoch)?;
    }
    if let Some(stack) = &l.stack {
        units::install(plan, stack, root)?;
    }
    Ok(())
}

/// What the manifest says of a stack.
#[derive(Debug, Serialize)]
pub struct StackRecord {
    pub layer: String,
    /// The compose files, relative to the layer.
    pub files: Vec<String>,
    pub services: Vec<String>,
    /// Host ports the stack publishes (the firewall opens them).
    pub published: Vec<u16>,
    /// Made on each device at first start; names only.
    pub secrets: Vec<String>,
}

pub fn stack_records(plan: &BuildPlan) -> Vec<StackRecord> {
    plan.layers
        .iter()
        .filter_map(|l| l.layer.stack.as_ref().map(|s| (l, s)))
        .map(|(l, s)| StackRecord {
            layer: l.name.clone(),
            files: s.files.iter().map(|f| f.strip_prefix(&l.layer.dir).unwrap_or(f).display().to_string()).collect(),
            services: s.services.iter().map(|x| x.name.clone()).collect(),
            published: s.services.iter().flat_map(|x| x.ports.iter().map(|(h, _)| *h)).collect(),
            secrets: s.secrets.keys().cloned().collect(),
        })
        .collect()
}

/// Every container record in an assembled tree, sorted by name.
pub fn records(root: &Path) -> Result<Vec<Record>> {
    let dir = root.join(RECORDS);
    let mut out = Vec::new();
    if let Ok(rd) = fs_err::read_dir(&dir) {
        for e in rd {
            let p = e?.path();
            let r: Record = serde_json::from_slice(&fs_err::read(&p)?).with_context(|| format!("parsing {}", p.display()))?;
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A container as `outpost plan` shows it: before the build, the digest is known for a pinned
/// reference or an image the cache holds.
#[derive(Debug, Serialize)]
pub struct Planned {
    pub name: String,
    pub layer: String,
    pub source: String,
    pub digest: Option<String>,
}

pub fn planned(plan: &BuildPlan, cache: &Cache) -> Vec<Planned> {
    let mut out = Vec::new();
    for l in &plan.layers {
        for c in &l.layer.containers {
            let cached = source_key(plan, c)
                .ok()
                .and_then(|k| fs_err::read(sources_dir(cache).join(format!("{k}.json"))).ok())
                .and_then(|b| serde_json::from_slice::<Resolved>(&b).ok())
                .map(|r| r.digest);
            let (source, digest) = match &c.source {
                Source::Packages { packages, .. } => (format!("packages: {}", packages.join(" ")), cached),
                Source::Registry { reference, .. } => (format!("registry: {reference}"), pinned_digest(reference).map(str::to_string).or(cached)),
                Source::Archive { path } => (format!("archive: {}", path.strip_prefix(&l.layer.dir).unwrap_or(path).display()), cached),
            };
            out.push(Planned { name: c.name.clone(), layer: l.name.clone(), source, digest });
        }
    }
    out
}

/// Resolves the containers of every layer the cache does not hold yet, before any layer is
/// built: an unreachable registry or a wrong digest fails the build in its first seconds.
pub fn resolve_all(plan: &BuildPlan, cache: &Cache, mut progress: impl FnMut(&str)) -> Result<()> {
    let epoch = crate::files::source_date_epoch()?;
    if let Some(conf) = std::env::var_os(REGISTRIES_CONF_ENV) {
        anyhow::ensure!(Path::new(&conf).is_file(), "{REGISTRIES_CONF_ENV}={}: no such file (a containers-registries.conf naming the registries' mirrors)", Path::new(&conf).display());
    }
    for l in plan.layers.iter().filter(|l| !cache.has(&l.key)) {
        for c in &l.layer.containers {
            progress(&format!("container {} (layer {})", c.name, l.name));
            resolve(plan, l, cache, c, epoch)?;
        }
    }
    Ok(())
}

/// The cache keys of every container source of `plan`.
pub fn source_keys(plan: &BuildPlan) -> Result<Vec<String>> {
    plan.layers.iter().flat_map(|l| l.layer.containers.iter().map(move |c| source_key(plan, c))).collect()
}

/// Removes resolved sources whose key is not in `keep`, and image layouts no kept source names;
/// returns (images removed, bytes freed).
pub fn gc(cache: &Cache, keep: &std::collections::BTreeSet<String>) -> Result<(usize, u64)> {
    let sources = sources_dir(cache);
    let mut digests = std::collections::BTreeSet::new();
    if let Ok(rd) = fs_err::read_dir(&sources) {
        for e in rd {
            let p = e?.path();
            let key = p.file_name().unwrap_or_default().to_string_lossy().split('.').next().unwrap_or("").to_string();
            let resolved = fs_err::read(&p).ok().and_then(|b| serde_json::from_slice::<Resolved>(&b).ok());
            match resolved {
                Some(r) if keep.contains(&key) && !p.to_string_lossy().ends_with(".partial") => {
                    digests.insert(r.digest.replace(':', "-"));
                }
                _ => fs_err::remove_file(&p).with_context(|| format!("removing {}", p.display()))?,
            }
        }
    }
    let (mut removed, mut freed) = (0, 0);
    let images = cache.root().join("oci").join("images");
    if let Ok(rd) = fs_err::read_dir(&images) {
        for e in rd {
            let p = e?.path();
            if !digests.contains(&*p.file_name().unwrap_or_default().to_string_lossy()) {
                freed += walkdir::WalkDir::new(&p).into_iter().filter_map(|e| e.ok()).filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum::<u64>();
                fs_err::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
                removed += 1;
            }
        }
    }
    Ok((removed, freed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An OCI layout whose layers are these (file name, contents) tars, gzip-compressed.
    fn gzip_layout(dir: &Path, layers: &[&[(&str, &str)]]) {
        use std::io::Write;
        fs_err::create_dir_all(dir.join("blobs/sha256")).unwrap();
        let mut descriptors = Vec::new();
        for files in layers {
            let mut tar = tar::Builder::new(Vec::new());
            for (name, text) in *files {
                let mut h = tar::Header::new_gnu();
                h.set_size(text.len() as u64);
                h.set_mode(0o644);
                tar.append_data(&mut h, name, text.as_bytes()).unwrap();
            }
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar.into_inner().unwrap()).unwrap();
            let blob = gz.finish().unwrap();
            let digest = format!("sha256:{}", oci::sha256_hex(&blob));
            fs_err::write(dir.join("blobs").join(digest.replace(':', "/")), &blob).unwrap();
            descriptors.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": blob.len()}));
        }
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let config_digest = format!("sha256:{}", oci::sha256_hex(config));
        fs_err::write(dir.join("blobs").join(config_digest.replace(':', "/")), config).unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "config": {"digest": config_digest, "size": config.len()}, "layers": descriptors})).unwrap();
        let digest = format!("sha256:{}", oci::sha256_hex(&manifest));
        fs_err::write(dir.join("blobs").join(digest.replace(':', "/")), &manifest).unwrap();
        oci::write_index(dir, &digest, manifest.len() as u64).unwrap();
    }

    #[test]
    fn packages_of_a_registry_image_come_from_its_last_dpkg_status() {
        let tmp = tempfile::tempdir().unwrap();
        let status = |pkgs: &[&str]| pkgs.iter().map(|p| format!("Package: {p}\nStatus: install ok installed\nVersion: 1.0\n")).collect::<Vec<_>>().join("\n");
        let (old, new) = (status(&["libc6", "nginx"]), status(&["libc6", "nginx", "curl"]));
        gzip_layout(tmp.path(), &[&[("var/lib/dpkg/status", &old)], &[("etc/motd", "hi"), ("./var/lib/dpkg/status", &new)]]);
        let pkgs = packages_in(tmp.path()).unwrap();
        assert_eq!(pkgs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["curl", "libc6", "nginx"]);
        // No dpkg at all (a distroless or Alpine image): no packages, not an error.
        let other = tmp.path().join("other");
        gzip_layout(&other, &[&[("etc/alpine-release", "3.20")]]);
        assert!(packages_in(&other).unwrap().is_empty());
    }

    #[test]
    fn gc_keeps_the_images_of_kept_sources_only() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        fs_err::create_dir_all(sources_dir(&cache)).unwrap();
        for (key, digest) in [("kept", "sha256:aaaa"), ("stale", "sha256:bbbb"), ("also-kept", "sha256:aaaa")] {
            let r = Resolved { digest: digest.into(), packages: vec![] };
            fs_err::write(sources_dir(&cache).join(format!("{key}.json")), serde_json::to_vec(&r).unwrap()).unwrap();
            fs_err::create_dir_all(layout_dir(&cache, digest).join("blobs")).unwrap();
            fs_err::write(layout_dir(&cache, digest).join("blobs/x"), vec![0u8; 100]).unwrap();
        }
        let keep = ["kept".to_string(), "also-kept".to_string()].into_iter().collect();
        assert_eq!(gc(&cache, &keep).unwrap(), (1, 100));
        assert!(layout_dir(&cache, "sha256:aaaa").is_dir());
        assert!(!layout_dir(&cache, "sha256:bbbb").exists());
        assert!(!sources_dir(&cache).join("stale.json").exists());
        assert!(sources_dir(&cache).join("kept.json").exists());
    }
}
