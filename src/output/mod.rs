//! Outputs: the raw disk turned into qcow2 (cloud formats in cloud.rs), the manifest, SHA256SUMS. Everything is written as
//! `NAME.partial` and renamed only once all outputs are complete.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub mod bmap;
pub mod cloud;

use crate::tool::Tool;

pub fn partial(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(".partial");
    PathBuf::from(s)
}

pub fn qcow2(raw: &Path, out: &Path) -> Result<()> {
    // zstd-compressed clusters: several times faster to write than zlib at a similar size,
    // and read by QEMU 5.1 and later.
    Tool::new("qemu-img")
        .describe("writing the qcow2 image")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2", "-c", "-o", "compression_type=zstd"])
        .arg(raw)
        .arg(out)
        .run()?;
    Ok(())
}

pub fn sha256_file(p: &Path) -> Result<String> {
    let mut f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
    Ok(hash_copy(&mut f, &mut std::io::sink()).with_context(|| format!("reading {}", p.display()))?.0)
}

/// Copies `r` to its end into `w` (`io::sink()` to hash only); returns the sha256 of the
/// bytes and how many there were.
pub fn hash_copy(r: &mut dyn Read, w: &mut dyn Write) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((hex::encode(h.finalize()), total));
        }
        h.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[derive(Debug, Serialize)]
pub struct OutputFile {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct Package {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Serialize)]
pub struct LayerRecord {
    pub name: String,
    pub key: String,
}

#[derive(Debug, Serialize)]
pub struct Manifest {
    pub outpost_version: &'static str,
    pub image: String,
    pub distro: String,
    pub suite: String,
    pub architecture: String,
    pub hostname: String,
    pub source_date_epoch: i64,
    pub kernel_cmdline: String,
    /// The dm-verity root hash of the root file system: what the device checks every block
    /// it reads against.
    pub root_hash: String,
    pub layers: Vec<LayerRecord>,
    pub partitions: Vec<crate::disk::layout::Partition>,
    pub disk_guid: String,
    pub packages: Vec<Package>,
    /// Every container image in the image: source, digest and its own packages.
    pub containers: Vec<crate::container::Record>,
    /// How the data partition is encrypted and unlocked on the device.
    pub data: crate::spec::DataPolicy,
    /// What a reviewer must know before shipping the image (an unencrypted data partition).
    pub warnings: Vec<String>,
    pub outputs: Vec<OutputFile>,
}

/// Writes manifest.json and SHA256SUMS for `outputs` (which are still at their `.partial`
/// names), then renames every output into place, the checksums last.
pub fn publish(out_dir: &Path, manifest: &Manifest, finals: &[PathBuf]) -> Result<()> {
    let manifest_path = out_dir.join("manifest.json");
    let json = serde_json::to_vec_pretty(manifest)?;
    write_partial(&manifest_path, &json)?;
    let mut sums = String::new();
    for o in &manifest.outputs {
        sums.push_str(&format!("{}  {}\n", o.sha256, o.file));
    }
    sums.push_str(&format!("{}  manifest.json\n", hex::encode(Sha256::digest(&json))));
    let sums_path = out_dir.join("SHA256SUMS");
    write_partial(&sums_path, sums.as_bytes())?;
    for f in finals.iter().chain([&manifest_path, &sums_path]) {
        fs::rename(partial(f), f).with_context(|| format!("renaming {} into place", partial(f).display()))?;
    }
    File::open(out_dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", out_dir.display()))?;
    Ok(())
}

fn write_partial(p: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = partial(p);
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Removes what a failed build left at `.partial` names.
pub fn remove_partials(finals: &[PathBuf]) {
    for f in finals {
        let _ = fs::remove_file(partial(f));
    }
}

/// Whether `needle` occurs anywhere in the file (read in chunks that overlap by its length).
pub fn file_contains(path: &Path, needle: &[u8]) -> Result<bool> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut buf = vec![0u8; 8 << 20];
    let keep = needle.len().saturating_sub(1);
    let mut have = 0;
    loop {
        let n = std::io::Read::read(&mut f, &mut buf[have..])?;
        if n == 0 {
            return Ok(false);
        }
        have += n;
        if buf[..have].windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
        let from = have.saturating_sub(keep);
        buf.copy_within(from..have, 0);
        have -= from;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_needle_across_chunk_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut data = vec![0u8; (8 << 20) + 100];
        let at = (8 << 20) - 3;
        data[at..at + 6].copy_from_slice(b"MARKER");
        std::fs::write(&p, &data).unwrap();
        assert!(file_contains(&p, b"MARKER").unwrap());
        assert!(!file_contains(&p, b"MARKEX").unwrap());
    }
}
