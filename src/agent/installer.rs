//! `outpost installer run`: the installer, as the first process of the installer's initrd.
//! Finds the medium it booted from (an ISO 9660 volume named OUTPOST with `outpost/install.json`
//! on it), chooses the target disk, asks (unless the site says unattended), writes and verifies
//! the appliance, and reboots into it. Every outcome ends in one `OUTPOST-INSTALL:` line on the
//! console; a failure leaves the message on the screen and the disk without a partition table.

use std::fs::File;
use std::io::{BufRead, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::console::Console;
use crate::format::install::{INDEX_FILE, Index, PAYLOAD_DIR, VOLUME_ID};
use crate::format::iso9660::Iso;
use crate::format::layout::{Layout, Role};
use crate::blockdev::{Disk, read_disk};
use crate::format::bmap::{BLOCK, BlockMap, Range};

/// How long USB sticks and discs get to appear after udev settled.
const MEDIUM_WAIT: Duration = Duration::from_secs(60);

pub fn run() -> ! {
    let mut con = Console::open();
    match install(&mut con) {
        Ok(Some(summary)) => {
            con.say(&format!("OUTPOST-INSTALL: installed {summary}; restarting into it"));
            // SAFETY: sync has no preconditions.
            unsafe { libc::sync() };
            std::thread::sleep(Duration::from_secs(3));
            // SAFETY: we are the first process; restarting is what is asked.
            unsafe { libc::reboot(libc::RB_AUTOBOOT) };
            stop(&mut con, false)
        }
        Ok(None) => {
            con.say("OUTPOST-INSTALL: cancelled; nothing was written");
            stop(&mut con, true)
        }
        Err(e) => {
            con.say(&format!("OUTPOST-INSTALL: failed: {e:#}"));
            stop(&mut con, true)
        }
    }
}

/// Waits for someone: Enter powers the machine off. With no keyboard the message stays.
fn stop(con: &mut Console, ask: bool) -> ! {
    if ask {
        con.say("Remove the USB stick and press Enter to power off.");
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line).is_ok_and(|n| n > 0) {
            // SAFETY: sync has no preconditions; powering off is what was asked.
            unsafe {
                libc::sync();
                libc::reboot(libc::RB_POWER_OFF);
            }
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Returns what was installed where, or None when the person at the console said no.
fn install(con: &mut Console) -> Result<Option<String>> {
    let (medium, mut iso) = find_medium()?;
    let index: Index = serde_json::from_slice(&iso.read(&format!("{PAYLOAD_DIR}/{INDEX_FILE}"))?)
        .with_context(|| format!("reading {PAYLOAD_DIR}/{INDEX_FILE} on /dev/{medium}"))?;
    con.say(&format!("outpost installer: {} ({}), site hostname {}, from /dev/{medium}", index.image, index.description, index.hostname));
    anyhow::ensure!(
        Path::new("/sys/firmware/efi").exists(),
        "this PC started the installer in legacy BIOS mode, and {} boots with UEFI only; switch the firmware setup to UEFI \
         (sometimes \"UEFI only\" or \"CSM off\") and start from the USB stick again. Nothing was written.",
        index.image
    );
    let mounts = fs_err::read_to_string("/proc/self/mounts").unwrap_or_default();
    let disks = list_disks(Path::new("/sys"), &mounts)?;
    let target = choose_disk(&disks, &medium, &index)?;
    let dev = PathBuf::from(format!("/dev/{}", target.name));
    let existing = holds_outpost(&dev);
    let what = format!("/dev/{} ({}, {})", target.name, if target.model.is_empty() { "no model name" } else { &target.model }, crate::progress::human(target.size));
    if index.unattended {
        anyhow::ensure!(
            !existing,
            "{what} already holds an outpost appliance, whose data partition may hold patient data; an unattended install \
             never erases it. Remove the USB stick to start the installed system, or reinstall from a stick whose site does \
             not say `unattended`, and confirm at the console. Nothing was written."
        );
        con.say(&format!("Installing onto {what}: unattended, as the site asks."));
    } else {
        con.say(&format!("This erases everything on {what} and installs {}.", index.image));
        if existing {
            con.say("That disk already holds an outpost appliance: its data (patient records) will be LOST.");
        }
        con.say("Type ERASE and press Enter to go on; anything else cancels.");
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "ERASE" {
            return Ok(None);
        }
    }
    let started = Instant::now();
    let mut disk = crate::blockdev::open_exclusive(&dev)?;
    write_image(con, &mut iso, &index, &mut disk).with_context(|| format!("installing onto {what}; the disk has no partition table now and does not boot: start the installer again"))?;
    Ok(Some(format!("{} on {what}, every piece read back and its sha256 checked, in {:.0} s", index.image, started.elapsed().as_secs_f64())))
}

/// The disk the ISO is on: every whole disk is probed for the OUTPOST volume with the index.
fn find_medium() -> Result<(String, Iso)> {
    let deadline = Instant::now() + MEDIUM_WAIT;
    loop {
        let mut names: Vec<String> = fs_err::read_dir("/sys/block")
            .context("reading /sys/block")?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !ignored(n))
            .collect();
        names.sort();
        for name in names {
            if let Ok(Some(mut iso)) = Iso::open(Path::new(&format!("/dev/{name}")))
                && iso.volume_id == VOLUME_ID
                && iso.find(&format!("{PAYLOAD_DIR}/{INDEX_FILE}")).is_ok()
            {
                return Ok((name, iso));
            }
        }
        if Instant::now() > deadline {
            bail!("found no outpost installer medium (an ISO named {VOLUME_ID} with {PAYLOAD_DIR}/{INDEX_FILE}) on any disk: was the USB stick pulled out?");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Devices that are never installer media nor targets.
fn ignored(name: &str) -> bool {
    ["loop", "ram", "zram", "dm-", "md", "fd", "nbd"].iter().any(|p| name.starts_with(p)) || name.contains("boot") || name.contains("rpmb")
}

fn list_disks(sys: &Path, mounts: &str) -> Result<Vec<Disk>> {
    let mut disks = Vec::new();
    for e in fs_err::read_dir(sys.join("block")).with_context(|| format!("reading {}", sys.join("block").display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if !ignored(&name) {
            disks.push(read_disk(sys, &name, mounts, "")?);
        }
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(disks)
}

/// The largest fixed disk that fits the image and the image's rules; never the medium, a
/// removable or USB disk, an optical drive, or one in use. The error lists every disk and why
/// it was passed over.
pub fn choose_disk<'a>(disks: &'a [Disk], medium: &str, index: &Index) -> Result<&'a Disk> {
    let min = index.rules.min_disk_size.unwrap_or(0).max(index.image_size);
    let mut why = Vec::new();
    let mut best: Option<&Disk> = None;
    for d in disks {
        let reason = if d.name == medium {
            Some("the installer's own medium".to_string())
        } else if d.name.starts_with("sr") {
            Some("an optical drive".into())
        } else if d.usb || d.removable {
            Some("removable or USB".into())
        } else if !d.in_use.is_empty() {
            Some(d.in_use.join("; "))
        } else if d.size < min {
            Some(format!("{} is smaller than the {} the image needs", crate::progress::human(d.size), crate::progress::human(min)))
        } else {
            let other_model = index.rules.disk_model.as_ref().filter(|m| !d.model.to_lowercase().contains(&m.to_lowercase()));
            other_model.map(|m| format!("its model `{}` is not the image's `disk-model = \"{m}\"`", d.model))
        };
        match reason {
            Some(r) => why.push(format!("/dev/{}: {r}", d.name)),
            None if best.is_none_or(|b| d.size > b.size) => best = Some(d),
            None => {}
        }
    }
    best.with_context(|| {
        format!(
            "no disk to install {} onto (it needs a fixed disk of at least {}); {}. Nothing was written.",
            index.image,
            crate::progress::human(min),
            if why.is_empty() { "this PC shows no disks at all (is the disk controller in RAID mode? set it to AHCI)".to_string() } else { why.join(", ") }
        )
    })
}

/// Whether the disk's partition table has an outpost data partition.
fn holds_outpost(dev: &Path) -> bool {
    File::open(dev).is_ok_and(has_data_partition)
}

fn has_data_partition(disk: File) -> bool {
    gpt::GptConfig::new()
        .writable(false)
        .open_from_device(disk)
        .is_ok_and(|d| d.partitions().values().any(|p| p.name == "data" && p.part_type_guid.guid.to_string() == crate::format::layout::types::VAR))
}

/// Erases the partition tables, writes every piece, reads them back, then writes the partition
/// table with the data partition grown to the end of the disk.
pub fn write_image(con: &mut Console, iso: &mut Iso, index: &Index, disk: &mut File) -> Result<()> {
    let size = disk.seek(SeekFrom::End(0))?;
    anyhow::ensure!(size >= index.image_size, "the disk ({size} bytes) is smaller than the image ({} bytes)", index.image_size);
    let zeros = vec![0u8; 1 << 20];
    for at in [0, size - (1 << 20)] {
        disk.seek(SeekFrom::Start(at))?;
        disk.write_all(&zeros).context("erasing the old partition tables")?;
    }
    // The pieces as a block map: written and read back as `outpost flash` does.
    let map = piece_map(index)?;
    let total = map.mapped_bytes();
    let (mut done, mut shown) = (0, 0);
    for (p, range) in index.pieces.iter().zip(&map.ranges) {
        let src = iso.reader(&format!("{PAYLOAD_DIR}/{}", p.file))?;
        let mut dec = zstd::Decoder::new(src).with_context(|| format!("reading {} on the installer medium", p.file))?;
        // Unchecked here: a mismatch is the medium's fault, and said so below.
        let one = BlockMap { image_size: map.image_size, ranges: vec![Range { sha256: None, ..range.clone() }] };
        let progress = |n: u64| {
            done += n;
            let pct = done * 100 / total.max(1);
            if pct >= shown + 10 {
                shown = pct - pct % 10;
                con.say(&format!("outpost installer: writing {shown}%"));
            }
        };
        let got = crate::format::bmap::write_ranges(&mut dec, &one, disk, progress)
            .with_context(|| format!("writing the {} piece from the installer medium (was the USB stick pulled out, or is it damaged?)", p.what))?
            .remove(0);
        anyhow::ensure!(got == p.sha256, "the installer medium's {} piece is damaged (sha256 {got}, install.json says {}): write the stick again", p.what, p.sha256);
    }
    con.say("outpost installer: reading back what was written");
    let sums: Vec<String> = index.pieces.iter().map(|p| p.sha256.clone()).collect();
    crate::format::bmap::verify_ranges(disk, &map, &sums)?;
    // The commit point: with the partition table the disk boots.
    let layout = grown_layout(index, size);
    crate::format::layout::write_table(&layout, disk.try_clone()?).context("writing the partition table")?;
    crate::blockdev::drop_cache(disk)?;
    anyhow::ensure!(has_data_partition(disk.try_clone()?), "the partition table does not read back");
    Ok(())
}

/// The pieces as block ranges with their sha256 (every piece starts and ends on a 4 KiB block:
/// partitions are MiB-aligned).
fn piece_map(index: &Index) -> Result<BlockMap> {
    let mut ranges = Vec::new();
    for p in &index.pieces {
        anyhow::ensure!(p.offset % BLOCK == 0 && p.length % BLOCK == 0 && p.length > 0, "install.json: the {} piece is not whole 4 KiB blocks", p.what);
        ranges.push(Range { first: p.offset / BLOCK, last: (p.offset + p.length) / BLOCK - 1, sha256: Some(p.sha256.clone()) });
    }
    Ok(BlockMap { image_size: index.image_size, ranges })
}

/// The image's partitions on a disk of `size` bytes: the data partition runs to the last whole
/// MiB before the backup GPT.
pub fn grown_layout(index: &Index, size: u64) -> Layout {
    let mut partitions = index.partitions.clone();
    let sector = crate::format::layout::SECTOR;
    let align = crate::format::layout::ALIGN / sector;
    let last_usable = size / sector - 34;
    if let Some(data) = partitions.iter_mut().find(|p| p.role == Role::Data) {
        let end = (last_usable + 1) / align * align;
        data.last_lba = data.last_lba.max(end - 1);
    }
    Layout { disk_guid: index.disk_guid, size, partitions }
}

#[cfg(test)]
#[path = "installer_tests.rs"]
mod tests;
