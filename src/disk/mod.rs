//! The disk: plan the partition table (pure, in `layout`), make each partition's file system as
//! a plain file (`mkfs.* -d`, mtools: no mounts, no loop devices), then write the GPT and copy
//! the partitions into the raw image.

pub mod layout;

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use layout::{Layout, Role, derive_uuid, plan};

use crate::tool::Tool;

/// Bytes and inodes a tree takes, as the file system will count them.
pub fn measure(root: &Path) -> Result<(u64, u64)> {
    let (mut bytes, mut inodes) = (0u64, 0u64);
    for e in walkdir::WalkDir::new(root).same_file_system(true) {
        let e = e.with_context(|| format!("walking {}", root.display()))?;
        let m = e.metadata()?;
        inodes += 1;
        bytes += m.len().div_ceil(4096) * 4096;
    }
    Ok((bytes, inodes))
}

/// The ESP's files: systemd-boot as the default loader, one entry with the kernel and initrd,
/// and a loader.conf that never waits at a menu.
pub fn stage_esp(root: &Path, esp: &Path, cmdline: &str, title: &str) -> Result<()> {
    let (kernel, initrd) = crate::rootfs::boot_files(root)?;
    let sdboot = root.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    anyhow::ensure!(
        sdboot.is_file(),
        "{} is missing: add the package `systemd-boot-efi` to the image's base layer",
        sdboot.display()
    );
    for d in ["EFI/BOOT", "EFI/systemd", "loader/entries", "outpost"] {
        fs::create_dir_all(esp.join(d))?;
    }
    fs::copy(&sdboot, esp.join("EFI/BOOT/BOOTX64.EFI"))?;
    fs::copy(&sdboot, esp.join("EFI/systemd/systemd-bootx64.efi"))?;
    fs::copy(&kernel, esp.join("outpost/vmlinuz"))?;
    fs::copy(&initrd, esp.join("outpost/initrd.img"))?;
    // timeout 0: boot the default entry at once; the menu only shows while a key is held.
    fs::write(esp.join("loader/loader.conf"), "timeout 0\neditor no\nauto-entries no\nauto-firmware no\ndefault outpost.conf\n")?;
    fs::write(
        esp.join("loader/entries/outpost.conf"),
        format!("title {title}\nlinux /outpost/vmlinuz\ninitrd /outpost/initrd.img\noptions {cmdline}\n"),
    )?;
    Ok(())
}

/// Formats `img` as FAT32 and copies `src` into it with mtools.
pub fn make_fat(src: &Path, img: &Path, size: u64, serial: u32, epoch: i64) -> Result<()> {
    crate::rootfs::clamp_times(src, epoch)?;
    File::create(img)?.set_len(size)?;
    Tool::new("mkfs.fat")
        .describe("formatting the EFI system partition")
        .args(["-F", "32", "-n", "ESP", "--invariant", "-i"])
        .arg(format!("{serial:08x}"))
        .arg(img)
        .run()?;
    let mut t = Tool::new("mcopy").describe("copying boot files into the EFI system partition").args(["-s", "-m", "-Q", "-i"]).arg(img);
    let mut entries: Vec<PathBuf> = fs::read_dir(src)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    entries.sort();
    for e in entries {
        t = t.arg(e);
    }
    t.arg("::/").run()?;
    Ok(())
}

/// Writes `root` as ext4 into partition `part` of the disk file `disk`, in place (no copy),
/// with UUID and hash seed given, and every inode time set to `epoch` (mkfs.ext4 -d copies
/// ctime and atime from the build host; debugfs sets them), and the superblocks' lifetime write
/// counter at zero (it counts bytes mkfs happened to write).
pub fn make_ext4(root: &Path, disk: &Path, part: &layout::Partition, label: &str, uuid: &uuid::Uuid, epoch: i64) -> Result<()> {
    let uuid = uuid.to_string();
    let offset = part.offset();
    // e2fsprogs opens `FILE?offset=N` as the file system N bytes into FILE.
    let in_disk = format!("{}?offset={offset}", disk.display());
    anyhow::ensure!(!disk.to_string_lossy().contains('?'), "{}: the output path must not contain `?`", disk.display());
    Tool::new("mkfs.ext4")
        .describe(format!("writing the {label} file system"))
        .args(["-q", "-F", "-L", label, "-U", &uuid, "-m", "1", "-b", "4096", "-I", "256"])
        .arg("-E")
        .arg(format!("offset={offset},hash_seed={uuid},root_owner=0:0,nodiscard"))
        .arg("-d")
        .arg(root)
        .arg(disk)
        .arg(format!("{}k", part.size() / 1024))
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .run()?;
    let stamp = ext4_time(epoch);
    let mut script = String::new();
    // mkfs and debugfs count the bytes they wrote in the superblock; zero stays zero.
    script.push_str("ssv kbytes_written 0\n");
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e?;
        let rel = e.path().strip_prefix(root)?;
        let p = format!("/{}", rel.display());
        anyhow::ensure!(
            !p.contains('"') && !p.contains('\n'),
            "{}: file names with `\"` or a newline cannot be written reproducibly; rename it",
            e.path().display()
        );
        for field in ["atime", "ctime"] {
            script.push_str(&format!("sif \"{p}\" {field} {stamp}\n"));
        }
    }
    // -a: write the superblock to the backup groups too, so they carry the same values.
    script.push_str("close -a\n");
    let script_path = root.with_file_name("ext4-times.debugfs");
    fs::write(&script_path, script)?;
    Tool::new("debugfs")
        .describe(format!("setting inode times of the {label} file system"))
        .args(["-w", "-f"])
        .arg(&script_path)
        .arg(&in_disk)
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .run()?;
    fs::remove_file(&script_path)?;
    Ok(())
}

/// debugfs's time format, YYYYMMDDHHMMSS in UTC.
fn ext4_time(epoch: i64) -> String {
    let (y, m, d, hh, mm, ss) = civil_time(epoch);
    format!("{y:04}{m:02}{d:02}{hh:02}{mm:02}{ss:02}")
}

/// UTC calendar date and time of a Unix time: (year, month, day, hour, minute, second).
pub fn civil_time(epoch: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = epoch.div_euclid(86400);
    let secs = epoch.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, secs / 3600, secs / 60 % 60, secs % 60)
}

/// Creates the raw disk: protective MBR, primary and backup GPT; partitions are written into
/// it afterwards, in place.
pub fn create(layout: &Layout, out: &Path) -> Result<()> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    f.set_len(layout.size)?;
    write_gpt(layout, f).with_context(|| format!("writing the partition table of {}", out.display()))
}

/// Copies a file system image into its partition (zero blocks skipped: the disk stays sparse).
pub fn copy_into(layout: &Layout, role: Role, img: &Path, out: &Path) -> Result<()> {
    let part = layout.get(role);
    let len = fs::metadata(img).with_context(|| format!("reading {}", img.display()))?.len();
    anyhow::ensure!(len <= part.size(), "the {role:?} file system ({len} bytes) does not fit its partition ({} bytes)", part.size());
    let mut f = fs::OpenOptions::new().write(true).open(out).with_context(|| format!("opening {}", out.display()))?;
    copy_sparse(img, &mut f, part.offset()).with_context(|| format!("copying {} into {}", img.display(), out.display()))?;
    f.sync_all()?;
    Ok(())
}

fn copy_sparse(src: &Path, dst: &mut File, offset: u64) -> Result<()> {
    let mut s = File::open(src)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = offset;
    loop {
        let n = read_full(&mut s, &mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            dst.seek(SeekFrom::Start(at))?;
            dst.write_all(&buf[..n])?;
        }
        at += n as u64;
    }
    Ok(())
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn write_gpt(layout: &Layout, mut f: File) -> Result<()> {
    let total_lba = layout.size / layout::SECTOR;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debugfs_time_format() {
        assert_eq!(ext4_time(0), "19700101000000");
        assert_eq!(ext4_time(1_700_000_000), "20231114221320");
        assert_eq!(ext4_time(951_782_400), "20000229000000");
    }

    #[test]
    fn gpt_is_valid_for_sgdisk() {
        if crate::tool::which("sgdisk").is_none() {
            eprintln!("sgdisk (gdisk) not installed; skipping");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let layout = plan(64 << 20, 64 << 20, 16 << 20, "t");
        let blob = tmp.path().join("p.img");
        fs::write(&blob, vec![7u8; 4096]).unwrap();
        let out = tmp.path().join("disk.raw");
        create(&layout, &out).unwrap();
        copy_into(&layout, Role::Root, &blob, &out).unwrap();
        let v = Tool::new("sgdisk").arg("-v").arg(&out).output().unwrap();
        assert!(v.contains("No problems found"), "{v}");
        let info = Tool::new("sgdisk").args(["-i", "2"]).arg(&out).output().unwrap();
        assert!(info.to_uppercase().contains("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"), "{info}");
        assert!(info.to_uppercase().contains(&layout.get(Role::Root).guid.to_string().to_uppercase()), "{info}");
        let bytes = fs::read(&out).unwrap();
        let off = layout.get(Role::Root).offset() as usize;
        assert_eq!(&bytes[off..off + 4096], &[7u8; 4096][..]);
    }
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
