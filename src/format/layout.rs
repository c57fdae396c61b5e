//! Partition layout maths, pure: where each partition starts and ends, and its GUIDs, derived
//! from the image's inputs so two builds of the same inputs lay out the same bytes.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries (what every partitioning tool does since 2010).
pub const ALIGN: u64 = 1 << 20;
/// The backup GPT: 32 sectors of entries and the header.
const BACKUP_GPT: u64 = 33 * SECTOR;

/// Discoverable Partitions Specification type GUIDs.
pub mod types {
    pub const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
    pub const ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
    pub const ROOT_X86_64_VERITY: &str = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5";
    pub const VAR: &str = "4d21b016-b534-45c2-a9fb-5c16e091fd2d";
    /// Microsoft basic data: what Windows and macOS open, so the seed can be edited anywhere.
    pub const BASIC_DATA: &str = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7";
}

/// The seed partition: small, FAT, holding `site.toml`.
pub const SEED_SIZE: u64 = 16 << 20;
/// Its GPT partition name, which the first-boot agent looks for.
pub const SEED_LABEL: &str = "seed";

/// What the image writes at the start of its data partition: the only content the appliance's
/// first boot formats (anything else it leaves closed and untouched). One 4 KiB block.
pub const BLANK_DATA_MARKER_SIZE: usize = 4096;

pub fn blank_data_marker() -> Vec<u8> {
    let mut b = b"OUTPOST-BLANK-DATA-PARTITION\nversion 1\nThe appliance encrypts this partition at its first boot.\n".to_vec();
    b.resize(BLANK_DATA_MARKER_SIZE, 0);
    b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Esp,
    /// Root slot A: the image's root as built.
    Root,
    /// The dm-verity hash tree of slot A's root.
    RootVerity,
    Seed,
    /// Root slot B: empty until the first update writes it (`crate::agent::update`).
    RootB,
    RootVerityB,
    Data,
}

/// The two root slots' GPT names (root, hash tree), which the updater finds them by.
pub const SLOTS: [(&str, &str, &str); 2] = [("a", "root-a", "root-a-verity"), ("b", "root-b", "root-b-verity")];

/// The partition GUIDs of a root and its hash tree, from its dm-verity root hash (the first and
/// last 128 bits, as systemd-repart and systemd-gpt-auto-generator do): the kernel command
/// line in a UKI names its root by them, so each UKI finds its own root whichever slot holds it.
pub fn slot_guids(root_hash: &str) -> Option<(Uuid, Uuid)> {
    let bytes = hex::decode(root_hash).ok()?;
    if bytes.len() != 32 {
        return None;
    }
    Some((Uuid::from_slice(&bytes[..16]).ok()?, Uuid::from_slice(&bytes[16..]).ok()?))
}

/// A slot's size for a root of `root` bytes when the image does not set one: half as much
/// again, so that later releases fit, in whole 64 MiB.
pub fn default_slot_size(root: u64) -> u64 {
    (root + root / 2).div_ceil(64 << 20) * (64 << 20)
}

/// The dm-verity hash tree's size for a slot of `slot` bytes (sha256, 4 KiB blocks: 32 bytes
/// per block on the first level, 1/128 of that on each next), with its superblock.
pub fn verity_size_for(slot: u64) -> u64 {
    let mut blocks = slot.div_ceil(4096);
    let mut total = 1; // the superblock
    while blocks > 1 {
        blocks = blocks.div_ceil(128);
        total += blocks;
    }
    align_up((total + 1) * 4096)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub role: Role,
    pub label: String,
    pub type_guid: Uuid,
    pub guid: Uuid,
    pub first_lba: u64,
    pub last_lba: u64,
}

impl Partition {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }

    pub fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub disk_guid: Uuid,
    pub size: u64,
    pub partitions: Vec<Partition>,
}

impl Layout {
    pub fn get(&self, role: Role) -> &Partition {
        self.partitions.iter().find(|p| p.role == role).expect("every layout has all roles")
    }
}

/// A version-4-shaped UUID from sha256(seed, what): stable for the same inputs, distinct per use.
pub fn derive_uuid(seed: &str, what: &str) -> Uuid {
    let mut h = Sha256::new();
    h.update(seed.as_bytes());
    h.update([0]);
    h.update(what.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// Lays out ESP, root slot A and its verity hash tree, seed, root slot B and its hash tree, and
/// data, in that order, each aligned to 1 MiB. The seed keeps its place (partition 4) from the
/// days of one slot; data comes last so that it can grow into a larger disk. Slot A's GUIDs come
/// from `root_hash` (`slot_guids`); slot B's, empty, from the seed.
pub fn plan(esp: u64, slot: u64, data: u64, seed: &str, root_hash: &str) -> Layout {
    let verity = verity_size_for(slot);
    let a = slot_guids(root_hash);
    let mut partitions = Vec::new();
    let mut at = ALIGN;
    for (role, label, ty, size) in [
        (Role::Esp, "esp", types::ESP, esp),
        (Role::Root, SLOTS[0].1, types::ROOT_X86_64, slot),
        (Role::RootVerity, SLOTS[0].2, types::ROOT_X86_64_VERITY, verity),
        (Role::Seed, SEED_LABEL, types::BASIC_DATA, SEED_SIZE),
        (Role::RootB, SLOTS[1].1, types::ROOT_X86_64, slot),
        (Role::RootVerityB, SLOTS[1].2, types::ROOT_X86_64_VERITY, verity),
        (Role::Data, "data", types::VAR, data),
    ] {
        let size = align_up(size);
        let guid = match (role, a) {
            (Role::Root, Some((r, _))) => r,
            (Role::RootVerity, Some((_, v))) => v,
            _ => derive_uuid(seed, &format!("partition {label}")),
        };
        partitions.push(Partition {
            role,
            label: label.to_string(),
            type_guid: Uuid::parse_str(ty).expect("constant GUIDs parse"),
            guid,
            first_lba: at / SECTOR,
            last_lba: (at + size) / SECTOR - 1,
        });
        at += size;
    }
    // Room for the backup GPT, rounded so the disk is a whole number of MiB (qemu-img and
    // cloud importers like that).
    let size = align_up(at + BACKUP_GPT);
    Layout { disk_guid: derive_uuid(seed, "disk"), size, partitions }
}

/// Writes the protective MBR and both GPTs of `layout` to `f` (a disk file or a whole disk, of
/// `layout.size` bytes).
pub fn write_table(layout: &Layout, mut f: File) -> Result<()> {
    let total_lba = layout.size / SECTOR;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(total_lba - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(&mut f)?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(f, Some(layout.disk_guid))?;
    let mut parts = std::collections::BTreeMap::new();
    for (i, p) in layout.partitions.iter().enumerate() {
        parts.insert(
            i as u32 + 1,
            gpt::partition::Partition {
                part_type_guid: gpt::partition_types::Type { guid: p.type_guid, os: gpt::partition_types::OperatingSystem::None },
                part_guid: p.guid,
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                flags: 0,
                name: p.label.clone(),
            },
        );
    }
    disk.update_partitions(parts)?;
    let f = disk.write()?;
    f.sync_all()?;
    Ok(())
}

/// A partition of a disk file found by its GPT name: (byte offset, byte size, partition GUID).
pub fn find_partition(raw: &Path, name: &str) -> Result<(u64, u64, uuid::Uuid)> {
    let disk = gpt::GptConfig::new().writable(false).open(raw).with_context(|| format!("reading the partition table of {}", raw.display()))?;
    let lb = u64::from(*disk.logical_block_size());
    let part = disk
        .partitions()
        .values()
        .find(|p| p.name == name)
        .with_context(|| format!("{} has no partition named `{name}`", raw.display()))?;
    Ok((part.first_lba * lb, (part.last_lba + 1 - part.first_lba) * lb, part.part_guid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_aligned_ordered_and_fit() {
        let l = plan(256 << 20, 1000 << 20, 1 << 30, "seed", HASH);
        assert_eq!(l.partitions.len(), 7);
        let mut prev_end = 0;
        for p in &l.partitions {
            assert_eq!(p.offset() % ALIGN, 0, "{p:?}");
            assert_eq!(p.size() % ALIGN, 0, "{p:?}");
            assert!(p.first_lba > prev_end, "{p:?}");
            prev_end = p.last_lba;
        }
        assert_eq!(l.partitions[0].offset(), 1 << 20);
        assert_eq!(l.get(Role::Root).size(), 1000 << 20);
        // The backup GPT fits after the last partition.
        assert!(l.size >= (prev_end + 1) * SECTOR + 33 * SECTOR);
        assert_eq!(l.size % ALIGN, 0);
    }

    #[test]
    fn types_follow_the_discoverable_partitions_spec() {
        let l = plan(256 << 20, 512 << 20, 64 << 20, "seed", HASH);
        assert_eq!(l.get(Role::Esp).type_guid.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(l.get(Role::Root).type_guid.to_string(), "4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
        assert_eq!(l.get(Role::RootVerity).type_guid.to_string(), "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5");
        assert_eq!(l.get(Role::Data).type_guid.to_string(), "4d21b016-b534-45c2-a9fb-5c16e091fd2d");
    }

    #[test]
    fn guids_are_stable_and_distinct() {
        let a = plan(256 << 20, 512 << 20, 64 << 20, "seed", HASH);
        let b = plan(256 << 20, 512 << 20, 64 << 20, "seed", HASH);
        let c = plan(256 << 20, 512 << 20, 64 << 20, "other", HASH);
        assert_eq!(a, b);
        assert_ne!(a.disk_guid, c.disk_guid);
        let mut guids: Vec<Uuid> = a.partitions.iter().map(|p| p.guid).collect();
        guids.push(a.disk_guid);
        guids.sort();
        guids.dedup();
        assert_eq!(guids.len(), 8);
        assert_eq!(a.disk_guid.get_version_num(), 4);
    }

    #[test]
    fn unaligned_sizes_round_up() {
        let l = plan(100 << 20, (300 << 20) + 1, 64 << 20, "s", HASH);
        assert_eq!(l.get(Role::Root).size(), 301 << 20);
        assert_eq!(l.get(Role::RootB).size(), 301 << 20);
    }

    const HASH: &str = "3dd9a3fe0e89705589b6953fc8a48b2f9d2249856e8cf18854a22169fc49565f";

    #[test]
    fn slot_a_is_named_by_its_root_hash() {
        let l = plan(100 << 20, 300 << 20, 64 << 20, "s", HASH);
        assert_eq!(l.get(Role::Root).guid.to_string(), "3dd9a3fe-0e89-7055-89b6-953fc8a48b2f");
        assert_eq!(l.get(Role::RootVerity).guid.to_string(), "9d224985-6e8c-f188-54a2-2169fc49565f");
        assert_eq!(l.get(Role::Seed).label, "seed");
        assert_eq!(l.partitions.iter().position(|p| p.role == Role::Seed), Some(3), "the seed stays partition 4");
    }

    #[test]
    fn verity_fits_a_whole_slot() {
        // 1 GiB of 4 KiB blocks: 2048 + 16 + 1 hash blocks and the superblock.
        let v = verity_size_for(1 << 30);
        assert!(v >= (2048 + 16 + 1 + 1) * 4096, "{v}");
        assert!(v <= 10 << 20, "{v}");
        assert_eq!(default_slot_size(169 << 20), 256 << 20);
    }
}
