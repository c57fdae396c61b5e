//! Writes `NAME.iso` on the build host, with no mounts: GRUB images from grub-mkimage (El
//! Torito for BIOS, an EFI system partition image for UEFI, appended as a GPT partition so that
//! the same file boots from a USB stick or a disc), the image's kernel and initrd with the
//! installer's initrd appended, and the payload; xorriso puts it together, its dates taken from
//! SOURCE_DATE_EPOCH.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::cpio;
use crate::format::install::{INDEX_FILE, Index, PAYLOAD_DIR, Piece, VOLUME_ID};
use crate::format::layout::{Layout, Role};
use crate::spec::InstallRules as Rules;
use crate::tool::Tool;

pub const TOOLS: &[&str] = &["xorriso", "grub-mkimage", "/usr/lib/grub/i386-pc/boot_hybrid.img", "/usr/lib/grub/x86_64-efi/linux.mod", "mkfs.fat", "mcopy"];
const GRUB_MODULES: &[&str] = &[
    "part_gpt", "part_msdos", "fat", "iso9660", "normal", "configfile", "linux", "echo", "search", "search_fs_uuid", "search_fs_file",
    "serial", "terminal", "test", "chain", "boot", "sleep",
];
/// Where the installer's own files live inside its initrd.
const INSTALLER_DIR: &str = "usr/lib/outpost-installer";

/// What the ISO is built from.
pub struct Source<'a> {
    pub image: &'a str,
    pub description: &'a str,
    pub hostname: &'a str,
    pub raw: &'a Path,
    pub layout: &'a Layout,
    /// The image's kernel and initrd.
    pub boot_files: (PathBuf, PathBuf),
    pub rules: Rules,
}

/// Stages everything in `stage` and writes the ISO to `out`.
pub fn build(src: &Source<'_>, stage: &Path, out: &Path, epoch: i64) -> Result<()> {
    let boot = stage.join("boot");
    let payload = stage.join(PAYLOAD_DIR);
    fs_err::create_dir_all(boot.join("grub"))?;
    fs_err::create_dir_all(&payload)?;
    fs_err::copy(&src.boot_files.0, boot.join("vmlinuz")).context("copying the kernel into the ISO")?;
    fs_err::copy(&src.boot_files.1, boot.join("initrd.img")).context("copying the initrd into the ISO")?;
    fs_err::write(boot.join("installer.img"), installer_initrd(epoch)?)?;
    let id = &src.layout.disk_guid.simple().to_string()[..12];
    let stamp = format!("/boot/grub/outpost-{id}.id");
    fs_err::write(stage.join(stamp.trim_start_matches('/')), format!("{}\n", src.image))?;
    fs_err::write(boot.join("grub/grub.cfg"), grub_cfg(src))?;
    let efi_serial = u32::from_be_bytes(src.layout.disk_guid.as_bytes()[4..8].try_into().expect("4 bytes"));
    grub_images(stage, &stamp, efi_serial, epoch)?;

    let mut pieces = Vec::new();
    let mut raw = fs::File::open(src.raw).with_context(|| format!("opening {}", src.raw.display()))?;
    for p in &src.layout.partitions {
        let (what, length) = match p.role {
            Role::Esp => ("esp", p.size()),
            Role::Root => ("root", p.size()),
            Role::RootVerity => ("verity", p.size()),
            Role::Seed => ("seed", p.size()),
            // Slot B holds nothing until an update writes it: its start zeroed, as data's.
            Role::RootB => ("rootb", crate::format::bmap::DATA_WIPE.min(p.size())),
            Role::RootVerityB => ("verityb", crate::format::bmap::DATA_WIPE.min(p.size())),
            // Zeros, so that no stale header survives from the disk's past.
            Role::Data => ("data", crate::format::bmap::DATA_WIPE.min(p.size())),
        };
        let file = format!("{what}.zst");
        raw.seek(SeekFrom::Start(p.offset()))?;
        let sha256 = compress(&mut (&mut raw).take(length), &payload.join(&file))?;
        pieces.push(Piece { what: what.into(), offset: p.offset(), length, sha256, file });
    }
    let index = Index {
        image: src.image.into(),
        description: src.description.into(),
        image_size: src.layout.size,
        disk_guid: src.layout.disk_guid,
        partitions: src.layout.partitions.clone(),
        pieces,
        rules: src.rules.clone(),
        unattended: false,
        hostname: src.hostname.into(),
    };
    fs_err::write(payload.join(INDEX_FILE), serde_json::to_vec_pretty(&index)?)?;
    write_iso(stage, out, src.image, epoch)
}

/// zstd of `r` into `out`; returns the sha256 of the uncompressed bytes.
fn compress(r: &mut dyn Read, out: &Path) -> Result<String> {
    let f = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut enc = zstd::Encoder::new(f, 6)?;
    let (sha256, _) = crate::files::hash_copy(r, &mut enc).with_context(|| format!("writing {}", out.display()))?;
    enc.finish()?.sync_all()?;
    Ok(sha256)
}

/// Replaces the seed in a staged ISO tree (from `outpost personalize NAME.iso`).
pub fn set_seed(stage: &Path, seed: &[u8], site: &crate::spec::Site) -> Result<()> {
    let payload = stage.join(PAYLOAD_DIR);
    let index_path = payload.join(INDEX_FILE);
    let mut index: Index = serde_json::from_slice(&fs_err::read(&index_path)?).with_context(|| format!("reading {}", index_path.display()))?;
    let piece = index.pieces.iter_mut().find(|p| p.what == "seed").context("the ISO's install.json has no seed piece")?;
    anyhow::ensure!(seed.len() as u64 == piece.length, "the seed is {} bytes, its partition {}", seed.len(), piece.length);
    let file = payload.join(&piece.file);
    // The extracted copy is read-only, as everything on an ISO is.
    crate::files::remove_if_exists(&file)?;
    piece.sha256 = compress(&mut &seed[..], &file)?;
    index.unattended = site.install.unattended;
    index.hostname = site.hostname.clone();
    crate::files::remove_if_exists(&index_path)?;
    fs_err::write(&index_path, serde_json::to_vec_pretty(&index)?)?;
    Ok(())
}

pub fn write_iso(stage: &Path, out: &Path, image: &str, epoch: i64) -> Result<()> {
    crate::files::remove_if_exists(out)?;
    // xorriso takes every file's and directory's time from the tree.
    crate::files::clamp_times(stage, epoch)?;
    Tool::new("xorriso")
        .describe("writing the installer ISO")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args(["-as", "mkisofs", "-quiet", "-iso-level", "3", "-full-iso9660-filenames", "-joliet", "-joliet-long", "-rational-rock"])
        .args(["-volid", VOLUME_ID, "-appid", &format!("outpost installer for {image}"), "-publisher", "outpost"])
        .args(["-partition_offset", "16", "--mbr-force-bootable"])
        .args(["-append_partition", "2", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"])
        .arg(stage.join("boot/efiboot.img"))
        .args(["-appended_part_as_gpt", "-c", "/boot/boot.cat"])
        .args(["-b", "/boot/grub/bios.img", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", "--grub2-boot-info"])
        .args(["--grub2-mbr", "/usr/lib/grub/i386-pc/boot_hybrid.img"])
        .args(["-eltorito-alt-boot", "-e", "--interval:appended_partition_2:all::", "-no-emul-boot"])
        .arg("-o")
        .arg(out)
        .arg(stage)
        .run()?;
    Ok(())
}

/// Extracts an ISO's files into `stage` (xorriso reads it as a file: no mount).
pub fn extract(iso: &Path, stage: &Path) -> Result<()> {
    Tool::new("xorriso")
        .describe("reading the installer ISO")
        .args(["-osirrox", "on", "-indev"])
        .arg(iso)
        .args(["-extract", "/"])
        .arg(stage)
        .output()?;
    // xorriso keeps the ISO's read-only modes; the stage is rewritten in place.
    Tool::new("chmod").args(["-R", "u+w"]).arg(stage).run()?;
    Ok(())
}

/// Both GRUB images. Each starts from a small built-in configuration that finds the ISO by its
/// stamp file (on a stick the firmware starts GRUB from the EFI partition, not the ISO) and
/// reads `/boot/grub/grub.cfg` from it.
fn grub_images(stage: &Path, stamp: &str, efi_serial: u32, epoch: i64) -> Result<()> {
    let early = stage.join("../grub-early.cfg");
    fs_err::write(&early, format!("search --no-floppy --file --set=root {stamp}\nset prefix=($root)/boot/grub\nconfigfile $prefix/grub.cfg\n"))?;
    let mkimage = |format: &str, out: &Path, extra: &[&str]| -> Result<()> {
        Tool::new("grub-mkimage")
            .describe("making the installer's boot loader")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .args(["-O", format, "-p", "/boot/grub", "-c"])
            .arg(&early)
            .arg("-o")
            .arg(out)
            .args(GRUB_MODULES)
            .args(extra)
            .run()?;
        Ok(())
    };
    mkimage("i386-pc-eltorito", &stage.join("boot/grub/bios.img"), &["biosdisk"])?;
    let efi_dir = stage.join("../efiboot");
    fs_err::create_dir_all(efi_dir.join("EFI/BOOT"))?;
    mkimage("x86_64-efi", &efi_dir.join("EFI/BOOT/BOOTX64.EFI"), &["efi_gop", "all_video"])?;
    crate::disk::make_fat(&efi_dir, &stage.join("boot/efiboot.img"), 4 << 20, efi_serial, epoch)?;
    Ok(())
}

fn grub_cfg(src: &Source<'_>) -> String {
    let serial = u32::from_be_bytes(src.layout.disk_guid.as_bytes()[..4].try_into().expect("4 bytes"));
    let esp_uuid = format!("{:04X}-{:04X}", serial >> 16, serial & 0xffff);
    let name = src.image;
    format!(
        r#"# The outpost installer for {name}. When this PC already runs {name} from its internal disk
# (the installer rebooted into it, or the stick was left in), that starts by default.
set timeout=5
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set default=install
search --no-floppy --fs-uuid --set=installed {esp_uuid}
if [ "$grub_platform" = "efi" ]; then
  insmod all_video
  if [ -n "$installed" ]; then
    set default=installed
    menuentry "Start {name}, installed on this PC" --id installed {{
      chainloader ($installed)/EFI/BOOT/BOOTX64.EFI
    }}
  fi
fi
menuentry "Install {name} (erases this PC's disk)" --id install {{
  echo "Loading the outpost installer..."
  linux /boot/vmlinuz rdinit=/outpost-installer console=ttyS0,115200 console=tty0 loglevel=3 panic=0
  initrd /boot/initrd.img /boot/installer.img
}}
"#
    )
}

/// The initrd appended to the image's own: a first process that brings up /proc, /sys, /dev
/// and udev (from the image's initrd, which loads the disk and USB drivers), then runs this
/// outpost binary with the C library it was linked against, copied from the build host.
fn installer_initrd(epoch: i64) -> Result<Vec<u8>> {
    let exe = std::env::current_exe().context("finding the outpost binary")?;
    let mut a = cpio::Archive::default();
    for d in ["usr", "usr/lib", INSTALLER_DIR, &format!("{INSTALLER_DIR}/lib")] {
        a.dir(d, epoch);
    }
    let read = |p: &Path| fs_err::read(p).with_context(|| format!("reading {}", p.display()));
    a.file(&format!("{INSTALLER_DIR}/outpost"), 0o755, epoch, &read(&exe)?);
    let mut loader = None;
    for (name, lib) in shared_libraries(&exe)? {
        if name.starts_with("ld-linux") {
            loader = Some(name.clone());
        }
        a.file(&format!("{INSTALLER_DIR}/lib/{name}"), 0o755, epoch, &read(&lib)?);
    }
    let loader = loader.context("the outpost binary has no ELF interpreter (ld-linux) in `ldd` output")?;
    let script = format!(
        r#"#!/bin/sh
# The outpost installer's first process (rdinit): no systemd, the image's initrd tools.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /proc /sys /dev /run /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for u in /lib/systemd/systemd-udevd /usr/lib/systemd/systemd-udevd; do
  [ -x "$u" ] && {{ "$u" --daemon --resolve-names=never; break; }}
done
udevadm trigger --type=subsystems --action=add
udevadm trigger --type=devices --action=add
udevadm settle --timeout=30
L=/{INSTALLER_DIR}
exec "$L/lib/{loader}" --library-path "$L/lib" "$L/outpost" installer run
"#
    );
    a.file("outpost-installer", 0o755, epoch, script.as_bytes());
    Ok(zstd::encode_all(&a.finish()[..], 12)?)
}

/// The shared libraries `exe` loads, from `ldd`: (the name it loads them by, the file).
fn shared_libraries(exe: &Path) -> Result<Vec<(String, PathBuf)>> {
    let out = Tool::new("ldd").describe("listing the libraries of the outpost binary").arg(exe).output()?;
    let mut libs = Vec::new();
    for line in out.lines() {
        let (name, path) = match line.split_once("=>") {
            Some((name, rest)) => (name.trim().to_string(), rest.split_whitespace().next()),
            None => {
                let p = line.split_whitespace().next().filter(|p| p.starts_with('/'));
                (p.map(|p| Path::new(p).file_name().unwrap_or_default().to_string_lossy().into_owned()).unwrap_or_default(), p)
            }
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push((name, fs_err::canonicalize(p).with_context(|| format!("resolving {p}"))?));
        }
    }
    Ok(libs)
}
