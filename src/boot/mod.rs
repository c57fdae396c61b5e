//! The boot artifact: one unified kernel image (UKI) made from the image's own systemd-stub,
//! kernel, initrd, os-release and command line (with the dm-verity root hash), so that none of
//! them can change without changing what the stub measures into PCR 11; its PCR 11 predicted
//! and the policy signed (`pcr`); the UKI and systemd-boot signed for Secure Boot with the
//! project's keys (`keys`). Then the ESP's files around it.

pub mod keys;
pub mod pcr;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub use keys::Keys;

use crate::tool::Tool;

use crate::format::DB_CERT_ON_ESP;
use crate::format::update::{entry, uki_on_esp};

/// What the manifest records of the boot chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct BootRecord {
    /// The UKI's path on the ESP and its sha256.
    pub uki: String,
    pub uki_sha256: String,
    pub uki_size: u64,
    /// The systemd-stub version the UKI was made with.
    pub stub: String,
    /// PCR 11 (sha256 bank) as the stub leaves it, before any boot phase is measured.
    pub pcr11: String,
    /// Signed for Secure Boot and with a signed PCR policy (built with keys).
    pub signed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot_db_cert_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr_policy_key_sha256: Option<String>,
}

/// Makes the UKI (signed when `keys` are given) and stages the ESP: systemd-boot as the default
/// loader, the UKI as root slot A's, its entry, a loader.conf that never waits at a menu. An
/// update adds slot B's UKI and entry beside them (`crate::agent::update`).
#[allow(clippy::too_many_arguments)]
pub fn stage_esp(tree: &Path, esp: &Path, work: &Path, cmdline: &str, title: &str, release: &str, keys: Option<&Keys>, epoch: i64) -> Result<BootRecord> {
    let efi = tree.join("usr/lib/systemd/boot/efi");
    let (stub, sdboot) = (efi.join("linuxx64.efi.stub"), efi.join("systemd-bootx64.efi"));
    for f in [&stub, &sdboot] {
        anyhow::ensure!(f.is_file(), "{} is missing: add the package `systemd-boot-efi` to the image's base layer", f.display());
    }
    for d in ["EFI/BOOT", "EFI/systemd", "loader/entries", "outpost"] {
        fs_err::create_dir_all(esp.join(d))?;
    }
    let uki = esp.join(uki_on_esp("a"));
    let record = make_uki(tree, &stub, work, cmdline, keys, epoch, &uki)?;
    for to in ["EFI/BOOT/BOOTX64.EFI", "EFI/systemd/systemd-bootx64.efi"] {
        match keys {
            Some(k) => sign(&sdboot, &esp.join(to), k, epoch)?,
            None => {
                fs_err::copy(&sdboot, esp.join(to))?;
            }
        }
    }
    if let Some(k) = keys {
        fs_err::copy(&k.db_cert_der, esp.join(DB_CERT_ON_ESP))?;
    }
    // timeout 0: boot the default entry at once; the menu only shows while a key is held. No
    // `default`: the first entry in systemd-boot's order boots, the newest release whose boot
    // counter has not run out.
    fs_err::write(esp.join("loader/loader.conf"), "timeout 0\neditor no\nauto-entries no\nauto-firmware no\n")?;
    let (name, text) = entry("a", title, release, None);
    fs_err::write(esp.join("loader/entries").join(name), text)?;
    Ok(record)
}

/// The UKI: the stub with `.osrel`, `.cmdline`, `.pcrpkey` and `.pcrsig` (with keys),
/// `.initrd` and `.linux` added after its own sections, then signed.
fn make_uki(tree: &Path, stub: &Path, work: &Path, cmdline: &str, keys: Option<&Keys>, epoch: i64, out: &Path) -> Result<BootRecord> {
    let dir = work.join("uki");
    crate::files::remove_if_exists(&dir)?;
    fs_err::create_dir_all(&dir)?;
    let (kernel, initrd) = crate::rootfs::boot_files(tree)?;
    let stub_bytes = fs_err::read(stub)?;
    let version = stub_version(&stub_bytes).with_context(|| format!("{} carries no systemd-stub version: is it systemd's stub?", stub.display()))?;
    let major: u32 = version.split(['.', '~', '-']).next().and_then(|m| m.parse().ok()).with_context(|| format!("odd systemd-stub version `{version}`"))?;
    anyhow::ensure!(major >= 252, "the image's systemd-stub is version {version}: signed PCR policies need systemd 252 or later");
    let os_release = ["usr/lib/os-release", "etc/os-release"].iter().map(|p| tree.join(p)).find(|p| p.is_file()).context("the image has no os-release")?;
    let cmdline_file = dir.join("cmdline");
    fs_err::write(&cmdline_file, cmdline)?;
    let mut sections: Vec<(&str, PathBuf)> = vec![(".osrel", os_release), (".cmdline", cmdline_file)];
    if let Some(k) = keys {
        sections.push((".pcrpkey", k.pcr_public.clone()));
    }
    sections.extend([(".initrd", initrd), (".linux", kernel)]);
    // Stubs from 254 on also measure their own .sbat.
    let mut measured = sections.clone();
    if major >= 254 && has_section(&stub_bytes, ".sbat")? {
        let sbat = dir.join("sbat");
        Tool::new("objcopy").describe("reading the stub's .sbat section").arg(format!("--dump-section=.sbat={}", sbat.display())).arg(stub).arg(dir.join("stub-copy")).run()?;
        measured.push((".sbat", sbat));
    }
    let pcr11 = pcr::predict_pcr11(major, &measured)?;
    if let Some(k) = keys {
        let sig = dir.join("pcrsig.json");
        fs_err::write(&sig, pcr::signed_policy(&pcr11, k, &dir)?)?;
        sections.insert(sections.len() - 2, (".pcrsig", sig));
    }
    let unsigned = dir.join("outpost-unsigned.efi");
    assemble(stub, &stub_bytes, &sections, &unsigned)?;
    match keys {
        Some(k) => sign(&unsigned, out, k, epoch)?,
        None => {
            fs_err::copy(&unsigned, out)?;
        }
    }
    let record = BootRecord {
        uki: format!("/{}", uki_on_esp("a")),
        uki_sha256: crate::files::sha256_file(out)?,
        uki_size: fs_err::metadata(out)?.len(),
        stub: version,
        pcr11: hex::encode(pcr11),
        signed: keys.is_some(),
        secure_boot_db_cert_sha256: keys.map(|k| k.db_cert_sha256.clone()),
        pcr_policy_key_sha256: keys.map(|k| k.pcr_fingerprint.clone()),
    };
    fs_err::remove_dir_all(&dir)?;
    Ok(record)
}

/// `#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####` in the stub's `.sdmagic`.
fn stub_version(bytes: &[u8]) -> Option<String> {
    let needle = b"LoaderInfo: systemd-stub ";
    let at = bytes.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let v: Vec<u8> = bytes[at..].iter().take_while(|b| !b.is_ascii_whitespace() && **b != 0).copied().collect();
    String::from_utf8(v).ok().filter(|v| !v.is_empty())
}

/// The few PE header fields placing sections needs.
struct PeHeader {
    /// Offset of the COFF header's TimeDateStamp.
    timestamp_at: usize,
    /// Offset of the optional header's CheckSum.
    checksum_at: usize,
    image_base: u64,
    size_of_image: u64,
    sections: Vec<String>,
}

fn pe_header(b: &[u8]) -> Result<PeHeader> {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| b.get(o..o + 4).map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")));
    let u64_at = |o: usize| b.get(o..o + 8).map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")));
    let pe = u32_at(0x3c).context("not a PE file")? as usize;
    if b.get(pe..pe + 4) != Some(b"PE\0\0") || u16_at(pe + 24) != Some(0x20b) {
        bail!("not a PE32+ file");
    }
    let opt = pe + 24;
    let count = u16_at(pe + 6).context("truncated PE header")? as usize;
    let table = opt + u16_at(pe + 20).context("truncated PE header")? as usize;
    let sections = (0..count)
        .map(|i| b.get(table + i * 40..table + i * 40 + 8).map(|n| String::from_utf8_lossy(n).trim_end_matches('\0').to_string()))
        .collect::<Option<Vec<_>>>()
        .context("truncated PE section table")?;
    Ok(PeHeader {
        timestamp_at: pe + 8,
        checksum_at: opt + 64,
        image_base: u64_at(opt + 24).context("truncated PE header")?,
        size_of_image: u32_at(opt + 56).context("truncated PE header")? as u64,
        sections,
    })
}

fn has_section(b: &[u8], name: &str) -> Result<bool> {
    Ok(pe_header(b)?.sections.iter().any(|s| s == name))
}

/// objcopy adds the sections at page-aligned addresses after the stub's image; the time stamp
/// objcopy writes (the current time: it ignores SOURCE_DATE_EPOCH for PE) is set back to the
/// stub's, and the PE checksum (over that time) cleared, so the same inputs give the same bytes.
fn assemble(stub: &Path, stub_bytes: &[u8], sections: &[(&str, PathBuf)], out: &Path) -> Result<()> {
    const PAGE: u64 = 4096;
    let head = pe_header(stub_bytes).with_context(|| format!("reading {}", stub.display()))?;
    let mut at = (head.image_base + head.size_of_image).next_multiple_of(PAGE);
    let mut cmd = Tool::new("objcopy").describe("assembling the unified kernel image");
    for (name, file) in sections {
        let size = fs_err::metadata(file)?.len();
        cmd = cmd.arg("--add-section").arg(format!("{name}={}", file.display()));
        cmd = cmd.arg("--change-section-vma").arg(format!("{name}={at:#x}"));
        at = (at + size).next_multiple_of(PAGE);
    }
    crate::files::remove_if_exists(out)?;
    cmd.arg(stub).arg(out).run()?;
    let mut bytes = fs_err::read(out)?;
    let h = pe_header(&bytes).with_context(|| format!("reading {}", out.display()))?;
    bytes[h.timestamp_at..h.timestamp_at + 4].copy_from_slice(&stub_bytes[head.timestamp_at..head.timestamp_at + 4]);
    bytes[h.checksum_at..h.checksum_at + 4].fill(0);
    fs_err::write(out, bytes)?;
    Ok(())
}

/// Signs a PE file for Secure Boot with the db key. osslsigncode rather than sbsign: it takes
/// the signing time (`-time`), so the same inputs and SOURCE_DATE_EPOCH give the same bytes.
fn sign(input: &Path, out: &Path, keys: &Keys, epoch: i64) -> Result<()> {
    crate::files::remove_if_exists(out)?;
    Tool::new("osslsigncode")
        .describe(format!("signing {} for Secure Boot", input.file_name().unwrap_or_default().to_string_lossy()))
        .args(["sign", "-h", "sha256", "-certs"])
        .arg(&keys.db_cert)
        .arg("-key")
        .arg(&keys.db_key)
        .arg("-time")
        .arg(epoch.to_string())
        .arg("-in")
        .arg(input)
        .arg("-out")
        .arg(out)
        .run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_version_is_read_from_sdmagic() {
        let b = b"xx#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####\0yy";
        assert_eq!(stub_version(b).as_deref(), Some("252.39-1~deb12u2"));
        assert_eq!(stub_version(b"nothing here"), None);
    }

    #[test]
    fn a_non_pe_file_is_refused() {
        assert!(pe_header(b"MZ not really").is_err());
        assert!(pe_header(&[0u8; 512]).is_err());
    }
}
