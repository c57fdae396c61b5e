//! The installer ISO's index (`outpost/install.json`): what the ISO builder (`output::iso`)
//! writes and the installer (`agent::installer`) reads.
//!
//! The USB installer: `NAME.iso`, a hybrid ISO that boots a USB stick or an optical disc on
//! UEFI and legacy BIOS machines (GRUB), starts the image's own kernel with a small initrd
//! appended (`outpost installer run` as the first process), and writes the appliance onto the
//! clinic PC's internal disk.
//!
//! The ISO carries the appliance as one zstd file per piece of the disk (ESP, root, its
//! verity tree, the seed, the first 16 MiB of the data partition), `install.json` (the pieces'
//! sha256, the partition table, the image's rules for choosing a disk, whether the site asks for
//! an unattended install) and the build's manifest. The installer writes the pieces, reads them
//! back against their sha256, and writes the partition table last, its data partition grown to
//! the end of the disk: until then the disk has no partition table, and no firmware takes a half
//! installed disk for a bootable one.

use serde::{Deserialize, Serialize};

/// The ISO's volume ID, which the installer looks for on every disk.
pub const VOLUME_ID: &str = "OUTPOST";
/// Where the payload lives in the ISO.
pub const PAYLOAD_DIR: &str = "outpost";
pub const INDEX_FILE: &str = "install.json";

/// `outpost/install.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub image: String,
    pub description: String,
    /// The raw image's size: the smallest disk that holds the appliance.
    pub image_size: u64,
    pub disk_guid: uuid::Uuid,
    pub partitions: Vec<super::layout::Partition>,
    pub pieces: Vec<Piece>,
    pub rules: crate::spec::InstallRules,
    /// From the site's `[install] unattended`: install without asking.
    pub unattended: bool,
    /// The site's hostname, shown before installing (the image's when no site is seeded).
    pub hostname: String,
}

/// One run of bytes of the disk, stored compressed as `outpost/FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Piece {
    pub what: String,
    pub offset: u64,
    pub length: u64,
    /// Of the uncompressed bytes, as they must read back from the disk.
    pub sha256: String,
    pub file: String,
}

