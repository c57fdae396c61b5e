//! Everything made from the raw disk: qcow2 (here), vmdk/vhd and the EC2 import input
//! (cloud.rs), the installer ISO (iso.rs, cpio.rs), a personalized copy (personalize.rs), an
//! encrypted copy (encrypt.rs), a USB stick (flash.rs); the manifest and SHA256SUMS. Everything
//! is written as `NAME.partial` and renamed only once all outputs are complete.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub mod bundle;
pub mod ca;
pub mod cloud;
pub mod cpio;
pub mod encrypt;
pub mod flash;
pub mod iso;
pub mod personalize;

use crate::files::partial;
use crate::tool::Tool;

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
    pub release: String,
    pub distro: String,
    pub suite: String,
    pub architecture: String,
    pub hostname: String,
    pub source_date_epoch: i64,
    pub kernel_cmdline: String,
    /// The dm-verity root hash of the root file system: what the device checks every block
    /// it reads against.
    pub root_hash: String,
    /// The boot chain: the UKI, its predicted PCR 11, whether it and its policy are signed.
    pub boot: crate::boot::BootRecord,
    pub layers: Vec<LayerRecord>,
    pub partitions: Vec<crate::format::layout::Partition>,
    pub disk_guid: String,
    pub packages: Vec<Package>,
    /// Every container image in the image: source, digest and its own packages.
    pub containers: Vec<crate::container::Record>,
    /// Every stack: its compose files, services, published ports and the names of the secrets
    /// each device makes (never a value).
    pub stacks: Vec<crate::container::StackRecord>,
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
        fs_err::rename(partial(f), f).with_context(|| format!("renaming {} into place", partial(f).display()))?;
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


