//! Checks of a powered-off guest disk from the host, as someone holding the stolen disk would
//! make them: LUKS2 headers and tokens, a recovery key that opens, strings that must not be
//! readable anywhere.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::spec::DiskCheck;
use crate::tool::Tool;

/// Checks the powered-off disk from the host, as someone holding the stolen disk would.
pub fn check(dir: &Path, overlay: &Path, d: &DiskCheck, saved: &BTreeMap<String, String>) -> Result<String> {
    let raw = dir.join("disk-check.raw");
    Tool::new("qemu-img").describe("reading the guest's disk").args(["convert", "-O", "raw"]).arg(overlay).arg(&raw).run()?;
    let result = (|| {
        let mut seen = Vec::new();
        if let Some(needle) = &d.absent {
            if crate::files::file_contains(&raw, needle.as_bytes())? {
                bail!("`{needle}` is readable in the disk file");
            }
            seen.push(format!("`{needle}` appears nowhere in the disk"));
        }
        let (offset, size, _) = crate::format::layout::find_partition(&raw, &d.partition)?;
        let part = dir.join("disk-check-partition.img");
        copy_range(&raw, offset, size, &part)?;
        let r = (|| {
            if let Some(token) = &d.luks2_token {
                let dump = Tool::new("cryptsetup").describe("reading the LUKS2 header").arg("luksDump").arg(&part).output()?;
                if !dump.lines().any(|l| l.starts_with("Version:") && l.split_whitespace().last() == Some("2")) {
                    bail!("not LUKS2:\n{dump}");
                }
                if !dump.lines().any(|l| l.trim_start().split_once(": ").is_some_and(|(n, t)| n.chars().all(|c| c.is_ascii_digit()) && t.trim() == token)) {
                    bail!("LUKS2 without a `{token}` token:\n{dump}");
                }
                seen.push(format!("LUKS2 with a {token} token"));
            }
            if let Some(name) = &d.opens_with {
                let key = saved.get(name).with_context(|| format!("nothing was saved as `{name}`"))?;
                let key_file = dir.join("disk-check.key");
                fs_err::write(&key_file, key.as_bytes())?;
                let r = Tool::new("cryptsetup").describe(format!("opening the partition with {name}")).args(["open", "--test-passphrase", "--key-file"]).arg(&key_file).arg(&part).run();
                fs_err::remove_file(&key_file)?;
                r?;
                seen.push(format!("{name} opens it"));
            }
            anyhow::Ok(())
        })();
        fs_err::remove_file(&part)?;
        r?;
        anyhow::Ok(seen)
    })();
    fs_err::remove_file(&raw)?;
    Ok(format!("disk partition `{}`: {}", d.partition, result?.join(", ")))
}


/// Copies `size` bytes at `offset` of `src` into a new file.
fn copy_range(src: &Path, offset: u64, size: u64, dst: &Path) -> Result<()> {
    let mut f = File::open(src).with_context(|| format!("reading {}", src.display()))?;
    f.seek(SeekFrom::Start(offset))?;
    let mut out = File::create(dst).with_context(|| format!("writing {}", dst.display()))?;
    std::io::copy(&mut f.take(size), &mut out)?;
    out.flush()?;
    Ok(())
}

/// Where the partition named `name` is in the qcow2 `disk`: byte offset and length.
pub fn partition_range(dir: &Path, disk: &Path, name: &str) -> Result<(u64, u64)> {
    // The primary GPT: header in LBA 1, 128 entries of 128 bytes from LBA 2.
    let head = dir.join("gpt-head.bin");
    Tool::new("qemu-img")
        .describe("reading the guest disk's partition table")
        .args(["dd", "-f", "qcow2", "-O", "raw", "bs=512", "count=34"])
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", head.display()))
        .run()?;
    let bytes = fs_err::read(&head)?;
    crate::files::remove_if_exists(&head)?;
    let (first, last) = bytes[1024..]
        .chunks_exact(128)
        .find_map(|e| {
            let units: Vec<u16> = e[56..128].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|u| *u != 0).collect();
            let lba = |at: usize| u64::from_le_bytes(e[at..at + 8].try_into().expect("8 bytes"));
            (String::from_utf16_lossy(&units) == name).then(|| (lba(32), lba(40)))
        })
        .with_context(|| format!("{} has no partition named `{name}`", disk.display()))?;
    Ok((first * 512, (last + 1 - first) * 512))
}

/// The file whose data `corrupt-root` changes: the source of udev's PCI database, in every
/// systemd image, which no boot reads (udev reads the compiled `hwdb.bin`), so the system still
/// comes up and the whole-root check is what finds the change. A byte at a fixed place of the
/// partition fell, as the root's size changed, on blocks the initramfs reads to mount it.
pub const CORRUPTED_FILE: &str = "/usr/lib/udev/hwdb.d/20-pci-vendor-model.hwdb";

/// Flips one byte in the middle of [`CORRUPTED_FILE`]'s first extent in the EROFS root
/// partition named `name` of a qcow2 disk, found with `dump.erofs`, through qemu-io (the disk
/// stays a qcow2 overlay; nothing is mounted). Returns the byte's offset in the disk.
pub fn flip_byte(dir: &Path, disk: &Path, name: &str) -> Result<u64> {
    let img = dir.join("root-to-corrupt.img");
    let (start, _) = read_partition(dir, disk, name, &img)?;
    let extents = Tool::new("dump.erofs")
        .describe(format!("finding {CORRUPTED_FILE} in the guest's root"))
        .arg("-e")
        .arg(format!("--path={CORRUPTED_FILE}"))
        .arg(&img)
        .output();
    crate::files::remove_if_exists(&img)?;
    let (at, len) = first_extent(&extents?).with_context(|| format!("the root partition `{name}` holds no data of {CORRUPTED_FILE}, which `corrupt-root` changes"))?;
    let offset = start + at + len / 2;
    flip_byte_at(disk, offset)?;
    Ok(offset)
}

/// Flips one byte of the first block of the root partition named `name` (`root-a`, `root-b`)
/// of a qcow2 disk: in EROFS's superblock (at 1024), which mounting the root reads first.
/// Returns the byte's offset in the disk.
pub fn flip_root_superblock(dir: &Path, disk: &Path, name: &str) -> Result<u64> {
    let (start, _) = partition_range(dir, disk, name)?;
    let offset = start + 1024 + 8;
    flip_byte_at(disk, offset)?;
    Ok(offset)
}

/// Inverts the byte at `offset` of the qcow2 `disk`, through qemu-io.
fn flip_byte_at(disk: &Path, offset: u64) -> Result<()> {
    let io = |cmd: String| Tool::new("qemu-io").describe("changing a byte of the guest's disk").args(["-f", "qcow2", "-c"]).arg(cmd).arg(disk).output();
    let shown = io(format!("read -v {offset} 1"))?;
    let byte = shown
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|h| u8::from_str_radix(h, 16).ok())
        .with_context(|| format!("qemu-io printed `{shown}`"))?;
    io(format!("write -P {:#04x} {offset} 1", byte ^ 0xff))?;
    Ok(())
}

/// The physical byte range (start, length) of the first extent `dump.erofs -e` lists, from its
/// lines `N:  LOGICAL.. END |  LENGTH :  PHYSICAL.. END |  LENGTH`.
fn first_extent(dump: &str) -> Option<(u64, u64)> {
    dump.lines().find_map(|l| {
        let mut cols = l.split('|');
        let (_, physical, length) = (cols.next()?, cols.next()?, cols.next()?);
        let (from, to) = physical.split(':').nth(1)?.split_once("..")?;
        let (from, to, length) = (from.trim().parse::<u64>().ok()?, to.trim().parse::<u64>().ok()?, length.trim().parse::<u64>().ok()?);
        (to == from + length && length > 0).then_some((from, length))
    })
}

/// A USB stick holding `bundle`, as a clinic gets it: FAT, labelled with the 11-character form
/// of the update label (FAT labels hold no more). Written without mounting (mtools).
pub fn update_stick(dir: &Path, bundle: &Path) -> Result<std::path::PathBuf> {
    let img = dir.join("update-stick.img");
    crate::files::remove_if_exists(&img)?;
    let size = (fs_err::metadata(bundle)?.len() + (48 << 20)).div_ceil(1 << 20) << 20;
    fs_err::File::create(&img)?.set_len(size)?;
    Tool::new("mkfs.fat").describe("formatting the test update stick").args(["-n", crate::format::update::STICK_LABEL_FAT]).arg(&img).run()?;
    let name = bundle.file_name().context("a bundle file has a name")?.to_string_lossy().into_owned();
    Tool::new("mcopy").describe("copying the bundle onto the test update stick").arg("-i").arg(&img).arg(bundle).arg(format!("::{name}")).run()?;
    Ok(img)
}

/// Copies the partition named `name` of the qcow2 `disk` into the file `out`; returns where it
/// is in the disk (byte offset and length).
pub fn read_partition(dir: &Path, disk: &Path, name: &str, out: &Path) -> Result<(u64, u64)> {
    let (at, len) = partition_range(dir, disk, name)?;
    // QEMU 7.2's `qemu-img dd` counts `count` from the start of the input, skipped blocks
    // included; later versions count after `skip`. Asking for the partition's end either way
    // and cutting the file to the partition's length gives the partition under both.
    Tool::new("qemu-img")
        .describe(format!("reading the guest's {name} partition"))
        .args(["dd", "-f", "qcow2", "-O", "raw", "bs=512"])
        .arg(format!("skip={}", at / 512))
        .arg(format!("count={}", (at + len) / 512))
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", out.display()))
        .run()?;
    let f = fs_err::OpenOptions::new().write(true).open(out)?;
    anyhow::ensure!(f.metadata()?.len() >= len, "qemu-img dd read {} bytes of the {len}-byte {name} partition", f.metadata()?.len());
    f.set_len(len)?;
    Ok((at, len))
}

/// Writes the whole file `img` into the qcow2 `disk` at byte `offset`.
pub fn write_at(disk: &Path, img: &Path, offset: u64) -> Result<()> {
    let len = fs_err::metadata(img)?.len();
    Tool::new("qemu-io")
        .describe("writing into the guest's disk")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -s {} {offset} {len}", img.display()))
        .arg(disk)
        .run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dump.erofs -e` as erofs-utils 1.5 prints it.
    #[test]
    fn the_first_extent_is_read_from_dump_erofs() {
        let dump = "File : /usr/share/zoneinfo/zone.tab\nSize: 18809  On-disk size: 12288  regular file\n\n Ext:   logical offset   |  length :     physical offset    |  length\n   0:        0..   18809 |   18809 :  132726784.. 132739072 |   12288\n   1:    18809..   20000 |    1191 :  132739072.. 132743168 |    4096\n/usr/share/zoneinfo/zone.tab: 2 extents found\n";
        assert_eq!(first_extent(dump), Some((132_726_784, 12_288)));
        assert_eq!(first_extent("File : /x\nSize: 0\n/x: 0 extents found\n"), None);
    }
}
