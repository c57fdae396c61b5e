//! The disk: each partition's file system made as a plain file (`mkfs.erofs`, `veritysetup
//! format`, mkfs.fat + mtools: no mounts, no loop devices), then the GPT written (the layout is
//! planned in `format::layout`) and the partitions copied into the raw image.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::format::layout::{self, Layout, Role};

use crate::tool::Tool;

/// Formats `img` as FAT (FAT32 from 64 MiB, as the ESP; smaller ones as mkfs.fat sees fit) and
/// copies `src` into it with mtools.
pub fn make_fat(src: &Path, img: &Path, size: u64, serial: u32, epoch: i64) -> Result<()> {
    crate::files::clamp_times(src, epoch)?;
    fs_err::File::create(img)?.set_len(size)?;
    Tool::new("mkfs.fat")
        .describe("formatting the EFI system partition")
        .args(if size >= 64 << 20 { &["-F", "32"][..] } else { &[] })
        .args(["-n", "ESP", "--invariant", "-i"])
        .arg(format!("{serial:08x}"))
        .arg(img)
        .run()?;
    let mut t = Tool::new("mcopy").describe("copying boot files into the EFI system partition").args(["-s", "-m", "-Q", "-i"]).arg(img);
    let mut entries: Vec<PathBuf> = fs_err::read_dir(src)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    entries.sort();
    for e in entries {
        t = t.arg(e);
    }
    t.arg("::/").run()?;
    Ok(())
}

/// Writes `root` as a compressed, read-only EROFS image file for the kernel `release` (e.g.
/// `6.1.0-13-amd64`) to mount. Every inode gets `epoch` as its time and the file system the
/// given UUID, so the same tree gives the same bytes.
pub fn make_erofs(root: &Path, img: &Path, uuid: &uuid::Uuid, epoch: i64, release: &str) -> Result<u64> {
    crate::files::remove_if_exists(img)?;
    Tool::new("mkfs.erofs")
        .describe("writing the root file system (EROFS)")
        .arg("--quiet")
        .args(erofs_compression(release))
        .arg("-x1")
        // The kernel and initramfs boot from the UKI on the ESP (and the installer's copies are
        // taken from the tree): in the root they would be read by nothing, a fifth of its size.
        .arg(r"--exclude-regex=^boot/(vmlinuz|initrd\.img|System\.map|config)-")
        .arg(r"--exclude-regex=^(vmlinuz|initrd\.img)(\.old)?$")
        .arg(format!("-T{epoch}"))
        .arg(format!("-U{uuid}"))
        .arg(img)
        .arg(root)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .run()?;
    Ok(fs_err::metadata(img).with_context(|| format!("reading {}", img.display()))?.len())
}

/// mkfs.erofs's compression for a root that the kernel `release` mounts. lz4hc: the best ratio
/// the Debian 12 erofs-utils (1.5) offers, and decompression cheap enough for the slowest
/// clinic PC. From Linux 5.16 (Debian 12 has 6.1, Ubuntu 24.04 6.8): level 3, physical
/// clusters of 16 KiB (read since 5.13) and each file's tail packed beside its inode (since
/// 5.16). On the Debian test image's root that is 129.0 MB in 3.4-3.6 s where level 5 in 4-KiB
/// clusters without packing wrote 144.9 MB in 3.2-3.5 s (level 5 with 16 KiB: 127.6 MB, but
/// 4.3-4.5 s); later boots under emulation used 1-2 s less CPU (three pairs, with level 5 at
/// 16 KiB: the same decompressor), and a full verification of the root reads 11 % less. After
/// zstd (updates, qcow2) the gain is 2.4 %.
/// Older kernels (Ubuntu 20.04, 22.04) cannot read that: level 5 in 4-KiB clusters, as before
/// (level 9 wrote in 8.2 s for 0.4 % fewer bytes).
fn erofs_compression(release: &str) -> &'static [&'static str] {
    if crate::rootfs::release_numbers(release) >= vec![5, 16] { &["-zlz4hc,3", "-C16384", "-Eztailpacking"] } else { &["-zlz4hc,5"] }
}

/// The dm-verity hash tree of `data`, written to `hash` (a plain file: no device-mapper),
/// with salt and UUID derived from the build's inputs. Returns the root hash, hex.
pub fn make_verity(data: &Path, hash: &Path, salt: &str, uuid: &uuid::Uuid) -> Result<String> {
    crate::files::remove_if_exists(hash)?;
    crate::format::verity::format(data, hash, None, salt, &uuid.to_string(), "computing the root file system's dm-verity hash tree")
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
    layout::write_table(layout, f).with_context(|| format!("writing the partition table of {}", out.display()))
}

/// Copies a file system image into its partition (zero blocks skipped: the disk stays sparse).
pub fn copy_into(layout: &Layout, role: Role, img: &Path, out: &Path) -> Result<()> {
    let part = layout.get(role);
    let len = fs_err::metadata(img).with_context(|| format!("reading {}", img.display()))?.len();
    anyhow::ensure!(len <= part.size(), "the {role:?} file system ({len} bytes) does not fit its partition ({} bytes)", part.size());
    let mut f = fs::OpenOptions::new().write(true).open(out).with_context(|| format!("opening {}", out.display()))?;
    copy_sparse(img, &mut f, part.offset()).with_context(|| format!("copying {} into {}", img.display(), out.display()))?;
    f.sync_all()?;
    Ok(())
}

fn copy_sparse(src: &Path, dst: &mut File, offset: u64) -> Result<()> {
    let mut s = fs_err::File::open(src)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = offset;
    loop {
        let n = crate::files::read_full(&mut s, &mut buf)?;
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


/// One file of the FAT file system in `img` (an ESP image).
pub fn read_fat_file(img: &Path, path: &str) -> Result<Vec<u8>> {
    let f = fs_err::File::open(img)?;
    let fs = fatfs::FileSystem::new(f.into_parts().0, fatfs::FsOptions::new()).with_context(|| format!("reading the FAT file system in {}", img.display()))?;
    let mut file = fs.root_dir().open_file(path).with_context(|| format!("opening {path} in the ESP"))?;
    let mut out = Vec::new();
    file.read_to_end(&mut out).with_context(|| format!("reading {path} in the ESP"))?;
    Ok(out)
}

/// Writes `body` as `path` into the FAT file system in `img`.
pub fn write_fat_file(img: &Path, path: &str, body: &[u8]) -> Result<()> {
    let f = fs_err::OpenOptions::new().read(true).write(true).open(img)?;
    let fs = fatfs::FileSystem::new(f.into_parts().0, fatfs::FsOptions::new()).with_context(|| format!("reading the FAT file system in {}", img.display()))?;
    let mut file = fs.root_dir().create_file(path).with_context(|| format!("opening {path} in the ESP"))?;
    file.seek(SeekFrom::Start(0))?;
    file.truncate()?;
    file.write_all(body).with_context(|| format!("writing {path} in the ESP"))?;
    file.flush()?;
    drop(file);
    fs.unmount().context("closing the ESP")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time_of_known_dates() {
        assert_eq!(crate::files::civil_time(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(crate::files::civil_time(1_700_000_000), (2023, 11, 14, 22, 13, 20));
        assert_eq!(crate::files::civil_time(951_782_400), (2000, 2, 29, 0, 0, 0));
    }

    /// Real mkfs.erofs and veritysetup on plain files: the same tree gives the same bytes and
    /// root hash; a flipped byte in the data fails `veritysetup verify`.
    #[test]
    fn erofs_and_verity_are_reproducible_and_detect_a_flipped_byte() {
        crate::tool::preflight(&["mkfs.erofs", "veritysetup"]).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        fs_err::create_dir_all(tree.join("etc")).unwrap();
        fs_err::write(tree.join("etc/os-release"), "ID=test\n".repeat(2000)).unwrap();
        fs_err::write(tree.join("big"), (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        fs_err::create_dir_all(tree.join("boot")).unwrap();
        fs_err::write(tree.join("boot/vmlinuz-6.1.0-1-amd64"), "kernel").unwrap();
        fs_err::write(tree.join("boot/grub.cfg"), "kept").unwrap();
        std::os::unix::fs::symlink("boot/vmlinuz-6.1.0-1-amd64", tree.join("vmlinuz")).unwrap();
        let uuid = layout::derive_uuid("t", "root");
        let mut hashes = Vec::new();
        for n in 0..2 {
            let (img, hash) = (tmp.path().join(format!("root{n}.erofs")), tmp.path().join(format!("root{n}.verity")));
            make_erofs(&tree, &img, &uuid, 1_700_000_000, "6.1.0-1-amd64").unwrap();
            hashes.push((fs_err::read(&img).unwrap(), make_verity(&img, &hash, "00ff", &uuid).unwrap(), fs_err::read(&hash).unwrap()));
        }
        assert!(hashes[0] == hashes[1], "two runs differ");
        let (img, hash) = (tmp.path().join("root0.erofs"), tmp.path().join("root0.verity"));
        // The kernel's files stay out of the root (they boot from the UKI); the rest of /boot
        // is kept.
        let out = tmp.path().join("extracted");
        Tool::new("fsck.erofs").arg(format!("--extract={}", out.display())).arg(&img).run().unwrap();
        assert!(out.join("boot/grub.cfg").is_file() && out.join("etc/os-release").is_file());
        assert!(!out.join("boot/vmlinuz-6.1.0-1-amd64").exists() && !out.join("vmlinuz").is_symlink());
        let root_hash = &hashes[0].1;
        Tool::new("veritysetup").arg("verify").arg(&img).arg(&hash).arg(root_hash).run().unwrap();
        let mut bytes = fs_err::read(&img).unwrap();
        bytes[5000] ^= 1;
        fs_err::write(&img, bytes).unwrap();
        assert!(Tool::new("veritysetup").arg("verify").arg(&img).arg(&hash).arg(root_hash).run().is_err());
    }

    #[test]
    fn erofs_compression_follows_what_the_kernel_reads() {
        for new in ["6.1.0-13-amd64", "6.8.0-31-generic", "5.16.0-1-amd64", "10.0.0"] {
            assert!(erofs_compression(new).contains(&"-Eztailpacking"), "{new}");
        }
        for old in ["5.15.0-91-generic", "5.4.0-42-generic", "4.19.0-6-amd64", "", "unknown"] {
            assert_eq!(erofs_compression(old), ["-zlz4hc,5"], "{old}");
        }
    }

    #[test]
    fn gpt_is_valid_for_sgdisk() {
        if crate::tool::which("sgdisk").is_none() {
            eprintln!("sgdisk (gdisk) not installed; skipping");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let layout = layout::plan(64 << 20, 64 << 20, 16 << 20, "t", "");
        let blob = tmp.path().join("p.img");
        fs_err::write(&blob, vec![7u8; 4096]).unwrap();
        let out = tmp.path().join("disk.raw");
        create(&layout, &out).unwrap();
        copy_into(&layout, Role::Root, &blob, &out).unwrap();
        let v = Tool::new("sgdisk").arg("-v").arg(&out).output().unwrap();
        assert!(v.contains("No problems found"), "{v}");
        let info = Tool::new("sgdisk").args(["-i", "2"]).arg(&out).output().unwrap();
        assert!(info.to_uppercase().contains("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"), "{info}");
        assert!(info.to_uppercase().contains(&layout.get(Role::Root).guid.to_string().to_uppercase()), "{info}");
        let bytes = fs_err::read(&out).unwrap();
        let off = layout.get(Role::Root).offset() as usize;
        assert_eq!(&bytes[off..off + 4096], &[7u8; 4096][..]);
    }
}
