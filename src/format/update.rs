//! Updates, as the build writes them and the device reads them: the bundle's format, how roots
//! are cut into chunks (both sides must cut alike), releases and their order, the boot entries of
//! the two root slots, and the status file.
//!
//! A bundle (`NAME-RELEASE.update`) is a tar archive of three members, in this order:
//! `outpost-update.json` (`Manifest`), `outpost-update.json.sig` (its RSA-SHA256 signature by the
//! project's Secure Boot db key, whose public half every image holds) and `payload`: the zstd
//! frames of the chunks the device does not already have. The signed manifest names every chunk
//! of the new root and UKI by its sha256, so each byte the device writes is checked.

use std::cmp::Ordering;
use std::io::Read;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The public key bundles are checked against (the Secure Boot db certificate's key).
pub const UPDATE_PUBLIC_KEY_PATH: &str = "usr/lib/outpost/update-public-key.pem";
/// Which image and release the root is (`Release`).
pub const RELEASE_PATH: &str = "usr/lib/outpost/release.json";
/// The updater's state, for the console, the status page and tests.
pub const STATUS_RUN_PATH: &str = "/run/outpost/update.json";
/// On the data partition: why a release was given up (read by the release booted after it).
pub const STATE_DIR: &str = "/var/lib/outpost/update";
/// The label of a USB stick holding bundles on FAT and exFAT, whose labels hold 11 characters
/// (OUTPOSTUPDATE on others; the udev rule in layers/appliance takes both).
pub const STICK_LABEL_FAT: &str = "OUTPOSTUPD";
/// Boots a new release gets to become healthy before the previous one boots again.
pub const TRIES: u32 = 3;

pub const MANIFEST_MEMBER: &str = "outpost-update.json";
pub const SIGNATURE_MEMBER: &str = "outpost-update.json.sig";
pub const PAYLOAD_MEMBER: &str = "payload";
pub const FORMAT: u32 = 1;

/// Content-defined chunks: 4 KiB to 64 KiB, 16 KiB on average. A change moves only the chunk
/// boundaries around it, so a root rebuilt with one package changed shares most chunks with the
/// old one even where EROFS laid files out at other offsets. Small, because a file whose
/// compressed size changes shifts the block addresses of the files after it, which EROFS keeps
/// in inodes spread through the image: many small changes, each costing one chunk (measured on
/// the Debian test image, a package added: 12.5% of the full bundle with 64 KiB chunks, 6.3%
/// with 16 KiB).
const CHUNK_MIN: u32 = 4 << 10;
const CHUNK_AVG: u32 = 16 << 10;
const CHUNK_MAX: u32 = 64 << 10;

/// `usr/lib/outpost/release.json` in every image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Release {
    pub image: String,
    pub release: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Manifest {
    pub format: u32,
    pub image: String,
    pub release: String,
    /// For a delta: the release and root it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Base>,
    /// The new root (EROFS), its dm-verity parameters and root hash.
    pub root: Artifact,
    pub root_hash: String,
    pub verity_salt: String,
    pub verity_uuid: String,
    /// The new signed UKI.
    pub uki: Artifact,
    pub payload_size: u64,
    pub payload_sha256: String,
    /// The build's manifest.json of the new release.
    pub build: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Base {
    pub release: String,
    pub root_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Artifact {
    pub size: u64,
    pub sha256: String,
    pub chunks: Vec<ChunkRef>,
}

/// One chunk: its sha256 and length, and where the payload carries it (offset and length of
/// its zstd frame), or nothing when the device's running root or UKI has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef(pub String, pub u32, #[serde(default, skip_serializing_if = "Option::is_none")] pub Option<(u64, u32)>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub len: u32,
    pub sha256: String,
}

/// Cuts `r` into content-defined chunks.
pub fn chunks(r: impl Read) -> Result<Vec<Chunk>> {
    let mut out = Vec::new();
    for c in fastcdc::v2020::StreamCDC::new(r, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) {
        let c = c.context("reading data to cut into chunks")?;
        out.push(Chunk { offset: c.offset, len: c.length as u32, sha256: hex::encode(Sha256::digest(&c.data)) });
    }
    Ok(out)
}

/// A release's numbers: `2026.11.3` -> [2026, 11, 3].
pub fn parse_release(s: &str) -> Option<Vec<u64>> {
    if s.is_empty() || s.len() > 40 {
        return None;
    }
    s.split('.').map(|p| if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) { None } else { p.parse().ok() }).collect()
}

/// Orders releases by their numbers (`1.10` after `1.9`; `2` and `2.0` are equal).
pub fn release_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (parse_release(a).unwrap_or_default(), parse_release(b).unwrap_or_default());
    let n = a.len().max(b.len());
    a.resize(n, 0);
    b.resize(n, 0);
    a.cmp(&b)
}

/// The UKI of root slot `slot` ("a" or "b") on the ESP. Not in /EFI/Linux: systemd-boot would
/// list it twice (found there and named by our entry).
pub fn uki_on_esp(slot: &str) -> String {
    format!("outpost/slot-{slot}.efi")
}

/// Where the initramfs says why it gave root slot `slot` up (its root is corrupted, in blocks
/// needed to start it: layers/base's scripts/local-top/outpost-verity), for the boot that follows.
pub fn corrupted_note_on_esp(slot: &str) -> String {
    format!("outpost/slot-{slot}.corrupted")
}

/// The boot loader entry of a slot, as systemd-boot reads it: entries sort by `sort-key`, then
/// newest `version` first, and an entry whose boot counter ran out sorts last. `tries`: a new
/// release's entry carries a boot counter (`+3`), the image's own does not.
pub fn entry(slot: &str, title: &str, release: &str, tries: Option<u32>) -> (String, String) {
    let name = match tries {
        Some(t) => format!("outpost-{slot}+{t}.conf"),
        None => format!("outpost-{slot}.conf"),
    };
    (name, format!("title {title} {release}\nsort-key outpost\nversion {release}\nefi /{}\n", uki_on_esp(slot)))
}

/// A slot's entry file name as systemd-boot leaves it: `outpost-b+2-1.conf` -> ("b", Some((2, 1))).
pub fn parse_entry_name(name: &str) -> Option<(String, Option<(u32, u32)>)> {
    let stem = name.strip_prefix("outpost-")?.strip_suffix(".conf")?;
    let (slot, counter) = match stem.split_once('+') {
        Some((s, c)) => (s, Some(c)),
        None => (stem, None),
    };
    if !crate::format::layout::SLOTS.iter().any(|(s, _, _)| *s == slot) {
        return None;
    }
    let counter = match counter {
        None => None,
        Some(c) => {
            let (left, done) = c.split_once('-').unwrap_or((c, "0"));
            Some((left.parse().ok()?, done.parse().ok()?))
        }
    };
    Some((slot.to_string(), counter))
}

/// `/run/outpost/update.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Status {
    pub image: String,
    /// The release running now, and its slot.
    pub running: String,
    pub slot: String,
    /// idle, trying (a new release on probation), applying, staged, refused, rolled-back.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The data size dm-verity protects, from the hash tree's superblock (veritysetup's format:
/// "verity\0\0", version, hash type, uuid, algorithm, data block size at 64, hash block size,
/// data blocks at 72).
pub fn verity_data_size(superblock: &[u8]) -> Option<u64> {
    if superblock.len() < 80 || &superblock[..8] != b"verity\0\0" {
        return None;
    }
    let block = u64::from(u32::from_le_bytes(superblock[64..68].try_into().ok()?));
    let blocks = u64::from_le_bytes(superblock[72..80].try_into().ok()?);
    block.checked_mul(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_order_by_number() {
        assert_eq!(release_cmp("1.10", "1.9"), Ordering::Greater);
        assert_eq!(release_cmp("2", "2.0"), Ordering::Equal);
        assert_eq!(release_cmp("2026.1", "2025.12.4"), Ordering::Greater);
        for bad in ["", "1..2", "v2", "1.2-rc1", " 1"] {
            assert_eq!(parse_release(bad), None, "{bad}");
        }
    }

    #[test]
    fn entry_names_round_trip_with_boot_counters() {
        let (name, text) = entry("b", "clinic", "2", Some(TRIES));
        assert_eq!(name, "outpost-b+3.conf");
        assert!(text.contains("version 2\n") && text.contains("efi /outpost/slot-b.efi\n"), "{text}");
        assert_eq!(parse_entry_name(&name), Some(("b".into(), Some((3, 0)))));
        assert_eq!(parse_entry_name("outpost-b+0-3.conf"), Some(("b".into(), Some((0, 3)))));
        assert_eq!(parse_entry_name("outpost-a.conf"), Some(("a".into(), None)));
        assert_eq!(parse_entry_name("outpost-c.conf"), None);
        assert_eq!(parse_entry_name("other.conf"), None);
    }

    #[test]
    fn a_change_moves_few_chunks() {
        let mut data = vec![0u8; 4 << 20];
        let mut x = 1u64;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let before = chunks(&data[..]).unwrap();
        data.splice(1_000_000..1_000_000, b"inserted".iter().copied());
        let after = chunks(&data[..]).unwrap();
        let old: std::collections::HashSet<_> = before.iter().map(|c| &c.sha256).collect();
        let new = after.iter().filter(|c| !old.contains(&c.sha256)).count();
        assert!(new <= 3, "{new} of {} chunks changed", after.len());
        assert_eq!(after.iter().map(|c| u64::from(c.len)).sum::<u64>(), data.len() as u64);
    }
}
