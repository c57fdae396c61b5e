//! Cloud-import outputs: `NAME.vmdk` (streamOptimized, what VMware and EC2 import take),
//! `NAME.vhd` (fixed, what Azure and EC2 take) and `NAME.ec2-import.json`, the input of
//! `aws ec2 import-image` with UEFI boot (docs/cloud.md).
//!
//! qemu-img writes both; it also writes a random VMDK content ID and a VHD creation time and
//! unique ID, which are replaced here by values derived from the image, so that the same inputs
//! and SOURCE_DATE_EPOCH give the same bytes.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use crate::tool::Tool;

/// Seconds from 1970 to 2000-01-01, the VHD epoch.
const VHD_EPOCH: i64 = 946_684_800;
const VHD_FOOTER: u64 = 512;

/// Writes `out` (a `.partial` name) as the vmdk that will be named `name`: its descriptor
/// names its own file, so qemu-img writes it under that name in a directory of its own.
pub fn vmdk(raw: &Path, out: &Path, name: &str, id: &uuid::Uuid) -> Result<()> {
    let dir = crate::files::Scratch::new(crate::files::partial(&out.with_extension("dir")));
    fs_err::create_dir_all(dir.path())?;
    let named = dir.path().join(name);
    Tool::new("qemu-img")
        .describe("writing the vmdk image")
        .args(["convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized"])
        .arg(raw)
        .arg(&named)
        .run()?;
    fs_err::rename(&named, out)?;
    drop(dir);
    // The descriptor sits in the first grains, uncompressed, as text: `CID=...`. qemu-img
    // writes the random CID as `%x`, so it has 1 to 8 digits: the whole descriptor is rewritten
    // with the derived one (8 digits), within the descriptor's zero-padded area.
    let mut f = OpenOptions::new().read(true).write(true).open(out).with_context(|| format!("opening {}", out.display()))?;
    let mut head = vec![0u8; 64 << 10];
    let n = crate::files::read_full(&mut f, &mut head)?;
    let cid = format!("{:08x}", u32::from_be_bytes(id.as_bytes()[..4].try_into().expect("4 bytes")));
    let (at, text) = with_cid(&head[..n], &cid).with_context(|| format!("{}: the vmdk descriptor has no `CID=` line within its area", out.display()))?;
    f.seek(SeekFrom::Start(at as u64))?;
    f.write_all(&text)?;
    f.sync_all()?;
    Ok(())
}

/// The descriptor of a streamOptimized vmdk's first bytes with its CID replaced: where it
/// starts and its new text, padded with the zeros it replaces. The header gives the
/// descriptor's place (descriptorOffset and descriptorSize, in sectors, at bytes 28 and 36).
fn with_cid(head: &[u8], cid: &str) -> Option<(usize, Vec<u8>)> {
    let sectors = |at: usize| head.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize * 512);
    let (start, size) = (sectors(28)?, sectors(36)?);
    let area = head.get(start..start + size)?;
    let used = area.iter().position(|b| *b == 0).unwrap_or(area.len());
    let text = std::str::from_utf8(&area[..used]).ok()?;
    let mut out = String::with_capacity(size);
    let mut found = false;
    for line in text.split_inclusive('\n') {
        if line.starts_with("CID=") && !found {
            out.push_str(&format!("CID={cid}\n"));
            found = true;
        } else {
            out.push_str(line);
        }
    }
    if !found || out.len() > size {
        return None;
    }
    let mut bytes = out.into_bytes();
    bytes.resize(used.max(bytes.len()), 0);
    Some((start, bytes))
}

pub fn vhd(raw: &Path, out: &Path, id: &uuid::Uuid, epoch: i64) -> Result<()> {
    Tool::new("qemu-img")
        .describe("writing the vhd image")
        .args(["convert", "-q", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on"])
        .arg(raw)
        .arg(out)
        .run()?;
    let mut f = OpenOptions::new().read(true).write(true).open(out).with_context(|| format!("opening {}", out.display()))?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len - VHD_FOOTER))?;
    let mut footer = [0u8; VHD_FOOTER as usize];
    f.read_exact(&mut footer)?;
    anyhow::ensure!(&footer[..8] == b"conectix", "{}: qemu-img wrote no VHD footer", out.display());
    set_vhd_identity(&mut footer, id, epoch);
    f.seek(SeekFrom::Start(len - VHD_FOOTER))?;
    f.write_all(&footer)?;
    f.sync_all()?;
    Ok(())
}

/// Creation time (offset 24, seconds since 2000), unique ID (68) and the footer checksum (64:
/// the ones' complement of the sum of every other byte).
fn set_vhd_identity(footer: &mut [u8; 512], id: &uuid::Uuid, epoch: i64) {
    let t = u32::try_from((epoch - VHD_EPOCH).max(0)).unwrap_or(u32::MAX);
    footer[24..28].copy_from_slice(&t.to_be_bytes());
    footer[68..84].copy_from_slice(id.as_bytes());
    footer[64..68].fill(0);
    let sum = footer.iter().fold(0u32, |s, b| s.wrapping_add(u32::from(*b)));
    footer[64..68].copy_from_slice(&(!sum).to_be_bytes());
}

/// The `--cli-input-json` of `aws ec2 import-image`: the vmdk (or the vhd) from an S3 bucket,
/// booted with UEFI (the appliance has no BIOS loader).
pub fn ec2_import(image: &str, description: &str, disk_file: &str, format: &str) -> String {
    let doc = json!({
        "Description": format!("{image}: {description}"),
        "Architecture": "x86_64",
        "Platform": "Linux",
        "BootMode": "uefi",
        "LicenseType": "BYOL",
        "DiskContainers": [{
            "Description": image,
            "Format": format,
            "UserBucket": { "S3Bucket": "REPLACE-WITH-YOUR-BUCKET", "S3Key": disk_file },
        }],
    });
    serde_json::to_string_pretty(&doc).expect("a JSON value serializes") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// qemu-img writes its random CID with 1 to 8 digits; the derived one always has 8, and
    /// the line after it stays whole.
    #[test]
    fn the_cid_is_replaced_whatever_its_length() {
        for random in ["1a2b3c4", "ffffffff", "7"] {
            let mut head = vec![0u8; 2048];
            head[28..36].copy_from_slice(&1u64.to_le_bytes());
            head[36..44].copy_from_slice(&2u64.to_le_bytes());
            let desc = format!("# Disk DescriptorFile\nversion=1\nCID={random}\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n");
            head[512..512 + desc.len()].copy_from_slice(desc.as_bytes());
            let (at, text) = with_cid(&head, "0badc0de").unwrap();
            assert_eq!(at, 512);
            let text = String::from_utf8(text).unwrap();
            assert!(text.starts_with("# Disk DescriptorFile\nversion=1\nCID=0badc0de\nparentCID=ffffffff\ncreateType"), "{text}");
        }
    }

    /// Real qemu-img: two conversions a second apart are byte-identical, and qemu-img reads
    /// both back as the raw disk's size and contents.
    #[test]
    fn vmdk_and_vhd_are_reproducible_and_valid() {
        crate::tool::preflight(&["qemu-img"]).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let raw = tmp.path().join("d.raw");
        let mut data: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        data.resize(16 << 20, 0);
        fs_err::write(&raw, &data).unwrap();
        let id = crate::format::layout::derive_uuid("t", "cloud");
        let mut runs = Vec::new();
        for n in 0..2 {
            let (m, h) = (tmp.path().join(format!("d{n}.vmdk")), tmp.path().join(format!("d{n}.vhd")));
            vmdk(&raw, &m, "d.vmdk", &id).unwrap();
            vhd(&raw, &h, &id, 1_700_000_000).unwrap();
            runs.push((fs_err::read(&m).unwrap(), fs_err::read(&h).unwrap()));
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        let first_difference = |a: &[u8], b: &[u8]| a.iter().zip(b).position(|(x, y)| x != y).map(|i| (i, String::from_utf8_lossy(&a[i.saturating_sub(40)..(i + 40).min(a.len())]).into_owned()));
        assert!(runs[0].0 == runs[1].0, "two vmdk conversions differ ({} and {} bytes; first at {:?})", runs[0].0.len(), runs[1].0.len(), first_difference(&runs[0].0, &runs[1].0));
        assert!(runs[0].1 == runs[1].1, "two vhd conversions differ");
        for (file, fmt) in [("d0.vmdk", "vmdk"), ("d0.vhd", "vpc")] {
            let p = tmp.path().join(file);
            let info = Tool::new("qemu-img").args(["info", "--output=json", "-f", fmt]).arg(&p).output().unwrap();
            let info: serde_json::Value = serde_json::from_str(&info).unwrap();
            assert_eq!(info["virtual-size"], 16 << 20, "{file}: {info}");
            if fmt == "vmdk" {
                assert_eq!(info["format-specific"]["data"]["create-type"], "streamOptimized", "{info}");
                Tool::new("qemu-img").args(["check", "-f", fmt]).arg(&p).run().unwrap();
            }
            let back = tmp.path().join("back.raw");
            Tool::new("qemu-img").args(["convert", "-f", fmt, "-O", "raw"]).arg(&p).arg(&back).run().unwrap();
            assert!(fs_err::read(&back).unwrap() == data, "{file} does not read back as the raw disk");
        }
        // The VHD footer's checksum still holds after the identity was replaced.
        let vhd = &runs[0].1;
        let footer = &vhd[vhd.len() - 512..];
        let sum = footer.iter().enumerate().filter(|(i, _)| !(64..68).contains(i)).fold(0u32, |s, (_, b)| s.wrapping_add(u32::from(*b)));
        assert_eq!(u32::from_be_bytes(footer[64..68].try_into().unwrap()), !sum);
        assert_eq!(&footer[68..84], id.as_bytes());
    }

    #[test]
    fn the_ec2_import_input_boots_with_uefi() {
        let v: serde_json::Value = serde_json::from_str(&ec2_import("demo", "a demo", "demo.vmdk", "vmdk")).unwrap();
        assert_eq!(v["BootMode"], "uefi");
        assert_eq!(v["DiskContainers"][0]["Format"], "vmdk");
        assert_eq!(v["DiskContainers"][0]["UserBucket"]["S3Key"], "demo.vmdk");
    }
}
