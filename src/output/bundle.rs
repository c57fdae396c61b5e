//! `NAME-RELEASE.update`: an update bundle (format in `crate::format::update`). Full, or a delta
//! against an earlier build: only the chunks of the new root and UKI that the earlier build's
//! root and UKI do not have, which the device takes from its running slot instead.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::format::update::{self, Artifact, Base, ChunkRef, Manifest};
use crate::tool::Tool;

/// What a new release brings.
pub struct New<'a> {
    pub image: &'a str,
    pub release: &'a str,
    pub root_img: &'a Path,
    pub root_hash: &'a str,
    pub verity_salt: &'a str,
    pub verity_uuid: String,
    pub uki: &'a Path,
    pub build: serde_json::Value,
}

/// An earlier build a delta applies to: its release, root hash and every chunk it has.
pub struct Old {
    pub release: String,
    pub root_hash: String,
    pub chunks: HashSet<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BundleReport {
    pub file: PathBuf,
    pub size: u64,
    pub release: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Bytes of root and UKI the bundle carries (before compression), and their whole size.
    pub carried: u64,
    pub total: u64,
}

/// Reads an earlier build's output directory (`manifest.json` and `NAME.raw`) for a delta.
pub fn read_old(dir: &Path, image: &str, work: &Path) -> Result<Old> {
    let manifest_file = if dir.is_file() { dir.to_path_buf() } else { dir.join("manifest.json") };
    let dir = manifest_file.parent().unwrap_or(Path::new("."));
    let m: serde_json::Value = serde_json::from_slice(&fs_err::read(&manifest_file).context("reading the earlier build given with --from")?)
        .with_context(|| format!("{} is not a build manifest", manifest_file.display()))?;
    let field = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_string).with_context(|| format!("{}: no `{k}`", manifest_file.display()));
    let old_image = field("image")?;
    anyhow::ensure!(old_image == image, "--from {}: that build is of image `{old_image}`, this one is `{image}`; a delta applies to an earlier release of the same image", manifest_file.display());
    let release = field("release").with_context(|| format!("{} predates releases: build a full bundle (no --from)", manifest_file.display()))?;
    let root_hash = field("root_hash")?;
    let raw = dir.join(format!("{image}.raw"));
    anyhow::ensure!(raw.is_file(), "--from {}: {} is missing; a delta is computed from the earlier build's raw disk (keep `raw` in its outputs)", dir.display(), raw.display());
    let mut chunks = HashSet::new();
    let (root_at, _, _) = crate::format::layout::find_partition(&raw, crate::format::layout::SLOTS[0].1)?;
    let (verity_at, _, _) = crate::format::layout::find_partition(&raw, crate::format::layout::SLOTS[0].2)?;
    let mut f = fs_err::File::open(&raw)?;
    let mut sb = [0u8; 80];
    f.seek(SeekFrom::Start(verity_at))?;
    f.read_exact(&mut sb)?;
    let size = update::verity_data_size(&sb).with_context(|| format!("{}: slot A's hash tree has no dm-verity superblock", raw.display()))?;
    f.seek(SeekFrom::Start(root_at))?;
    chunks.extend(update::chunks((&mut f).take(size))?.into_iter().map(|c| c.sha256));
    let (esp_at, esp_len, _) = crate::format::layout::find_partition(&raw, "esp")?;
    let esp = work.join("old-esp.img");
    f.seek(SeekFrom::Start(esp_at))?;
    std::io::copy(&mut (&mut f).take(esp_len), &mut fs_err::File::create(&esp)?)?;
    let uki = crate::disk::read_fat_file(&esp, &update::uki_on_esp("a"))?;
    fs_err::remove_file(&esp)?;
    chunks.extend(update::chunks(&uki[..])?.into_iter().map(|c| c.sha256));
    Ok(Old { release, root_hash, chunks })
}

/// Writes the bundle into `out_dir`, signed with the db key. The release order is checked
/// before the build (`pipeline::read_bundle_base`).
pub fn write(new: &New<'_>, old: Option<&Old>, db_key: &Path, out_dir: &Path, work: &Path, epoch: i64) -> Result<BundleReport> {
    let have: HashSet<String> = old.map(|o| o.chunks.clone()).unwrap_or_default();
    let payload_path = work.join("bundle-payload");
    let mut payload = fs_err::File::create(&payload_path)?;
    let mut carried_at: HashMap<String, (u64, u32)> = HashMap::new();
    let mut at = 0u64;
    let (mut carried, mut total) = (0u64, 0u64);
    let mut artifact = |path: &Path| -> Result<Artifact> {
        let bytes = fs_err::read(path)?;
        let mut refs = Vec::new();
        for c in update::chunks(&bytes[..])? {
            total += u64::from(c.len);
            let place = if have.contains(&c.sha256) {
                None
            } else if let Some(p) = carried_at.get(&c.sha256) {
                Some(*p)
            } else {
                let data = &bytes[c.offset as usize..c.offset as usize + c.len as usize];
                let frame = zstd::bulk::compress(data, 9).context("compressing a chunk")?;
                payload.write_all(&frame)?;
                let p = (at, frame.len() as u32);
                at += frame.len() as u64;
                carried += u64::from(c.len);
                carried_at.insert(c.sha256.clone(), p);
                Some(p)
            };
            refs.push(ChunkRef(c.sha256, c.len, place));
        }
        Ok(Artifact { size: bytes.len() as u64, sha256: crate::files::sha256_file(path)?, chunks: refs })
    };
    let root = artifact(new.root_img)?;
    let uki = artifact(new.uki)?;
    payload.sync_all()?;
    drop(payload);
    let manifest = Manifest {
        format: update::FORMAT,
        image: new.image.into(),
        release: new.release.into(),
        base: old.map(|o| Base { release: o.release.clone(), root_hash: o.root_hash.clone() }),
        root,
        root_hash: new.root_hash.into(),
        verity_salt: new.verity_salt.into(),
        verity_uuid: new.verity_uuid.clone(),
        uki,
        payload_size: at,
        payload_sha256: crate::files::sha256_file(&payload_path)?,
        build: new.build.clone(),
    };
    let manifest_path = work.join(update::MANIFEST_MEMBER);
    fs_err::write(&manifest_path, serde_json::to_vec(&manifest)?)?;
    let sig_path = work.join(update::SIGNATURE_MEMBER);
    // RSA PKCS#1 v1.5 signatures are deterministic: the same manifest, the same bytes.
    Tool::new("openssl")
        .describe("signing the update bundle with the db key")
        .args(["dgst", "-sha256", "-sign"])
        .arg(db_key)
        .arg("-out")
        .arg(&sig_path)
        .arg(&manifest_path)
        .run()?;
    let name = match old {
        Some(o) => format!("{}-{}-from-{}.update", new.image, new.release, o.release),
        None => format!("{}-{}.update", new.image, new.release),
    };
    let file = out_dir.join(name);
    crate::files::atomic_write(&file, |f| {
        let mut tar = tar::Builder::new(f);
        for (member, path) in [(update::MANIFEST_MEMBER, &manifest_path), (update::SIGNATURE_MEMBER, &sig_path), (update::PAYLOAD_MEMBER, &payload_path)] {
            let mut h = tar::Header::new_ustar();
            h.set_size(fs_err::metadata(path)?.len());
            h.set_mode(0o644);
            h.set_mtime(u64::try_from(epoch).unwrap_or(0));
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, member, fs_err::File::open(path)?).with_context(|| format!("writing {member} into the bundle"))?;
        }
        tar.into_inner()?.flush()?;
        Ok(())
    })?;
    for p in [&payload_path, &manifest_path, &sig_path] {
        fs_err::remove_file(p)?;
    }
    Ok(BundleReport { size: fs_err::metadata(&file)?.len(), file, release: new.release.into(), base: old.map(|o| o.release.clone()), carried, total })
}
