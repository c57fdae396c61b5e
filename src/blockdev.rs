//! Block devices, for the host's `outpost flash` and the device's installer alike. What a flash
//! target is, read from sysfs and the mount table: removable or not, on USB or
//! not, its size and model, whether it or a partition of it is mounted, swapped on or held by
//! device-mapper or md. Reading is apart from deciding, so both are tested on fake trees.

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name (`sdb`).
    pub name: String,
    pub size: u64,
    pub model: String,
    pub removable: bool,
    pub usb: bool,
    /// Set for a partition (`sdb1`): flash writes whole disks.
    pub partition: bool,
    /// Why it is in use: `/dev/sdb1 mounted on /media/x`, `swap`, `held by dm-0`.
    pub in_use: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Disk(PathBuf, Disk),
    /// A regular file (an image to write into): no device checks apply.
    File(PathBuf),
}

pub fn inspect(dev: &Path) -> Result<Target> {
    let meta = fs_err::metadata(dev).with_context(|| format!("{} does not exist; give the USB stick's device, e.g. /dev/sdb (see `lsblk`)", dev.display()))?;
    if meta.file_type().is_file() {
        return Ok(Target::File(dev.to_path_buf()));
    }
    anyhow::ensure!(meta.file_type().is_block_device(), "{} is neither a block device nor a file", dev.display());
    let real = fs_err::canonicalize(dev).with_context(|| format!("resolving {}", dev.display()))?;
    let name = real.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let mounts = fs_err::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let swaps = fs_err::read_to_string("/proc/swaps").unwrap_or_default();
    Ok(Target::Disk(dev.to_path_buf(), read_disk(Path::new("/sys"), &name, &mounts, &swaps)?))
}

/// The disk `name` as sysfs under `sys` describes it.
pub fn read_disk(sys: &Path, name: &str, mounts: &str, swaps: &str) -> Result<Disk> {
    let class = sys.join("class/block").join(name);
    let dir = fs_err::canonicalize(&class).with_context(|| format!("{} is not a block device the kernel lists ({})", name, class.display()))?;
    let read = |p: PathBuf| fs_err::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
    let partition = dir.join("partition").exists();
    let size = read(dir.join("size")).parse::<u64>().unwrap_or(0) * 512;
    let vendor = read(dir.join("device/vendor"));
    let model = [vendor, read(dir.join("device/model"))].iter().filter(|s| !s.is_empty()).cloned().collect::<Vec<_>>().join(" ");
    // The disk and each of its partitions (subdirectories named after it).
    let mut names = vec![name.to_string()];
    let mut dirs = vec![dir.clone()];
    if let Ok(rd) = fs_err::read_dir(&dir) {
        let mut parts: Vec<_> = rd.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with(name) && e.path().join("partition").exists()).collect();
        parts.sort_by_key(|e| e.file_name());
        for p in parts {
            names.push(p.file_name().to_string_lossy().into_owned());
            dirs.push(p.path());
        }
    }
    let mut in_use = Vec::new();
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(src), Some(at)) = (f.next(), f.next()) else { continue };
        if let Some(n) = dev_name(src).filter(|n| names.contains(n)) {
            in_use.push(format!("/dev/{n} is mounted on {}", at.replace("\\040", " ")));
        }
    }
    for line in swaps.lines().skip(1) {
        if let Some(n) = line.split_whitespace().next().and_then(dev_name).filter(|n| names.contains(n)) {
            in_use.push(format!("/dev/{n} is in use as swap"));
        }
    }
    for (n, d) in names.iter().zip(&dirs) {
        if let Ok(rd) = fs_err::read_dir(d.join("holders")) {
            let mut holders: Vec<String> = rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            holders.sort();
            for h in holders {
                in_use.push(format!("/dev/{n} is held by {h} (device-mapper, LVM, RAID or an open encrypted volume)"));
            }
        }
    }
    Ok(Disk {
        name: name.to_string(),
        size,
        model,
        removable: read(dir.join("removable")) == "1",
        usb: dir.components().any(|c| c.as_os_str().to_string_lossy().starts_with("usb")),
        partition,
        in_use,
    })
}

/// `/dev/sdb1` or `/dev/disk/by-uuid/...` → `sdb1`; anything not under /dev → None.
fn dev_name(src: &str) -> Option<String> {
    if !src.starts_with("/dev/") {
        return None;
    }
    let p = fs_err::canonicalize(src).unwrap_or_else(|_| PathBuf::from(src));
    Some(p.file_name()?.to_string_lossy().into_owned())
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::File(p) => format!("the file {}", p.display()),
            Target::Disk(p, d) => format!(
                "{} ({}, {}{})",
                p.display(),
                if d.model.is_empty() { "no model name" } else { &d.model },
                crate::progress::human(d.size),
                if d.usb { ", USB" } else if d.removable { ", removable" } else { "" }
            ),
        }
    }

    /// Refuses what must never be written (in use, a partition, too small) and, unless
    /// `force`, what is probably not a USB stick (fixed, or larger than `max_size`).
    pub fn check(&self, image_size: u64, max_size: u64, force: bool) -> Result<()> {
        let Target::Disk(path, d) = self else { return Ok(()) };
        let p = path.display();
        anyhow::ensure!(!d.partition, "{p} is a partition ({}); flash writes a whole disk: give the disk it belongs to", d.name);
        anyhow::ensure!(
            d.in_use.is_empty(),
            "{p} is in use: {}. Unmount it (and close what holds it) first; flash never writes a disk in use, even with --force",
            d.in_use.join("; ")
        );
        anyhow::ensure!(
            d.size >= image_size,
            "{} is too small for the image: {} needed, the disk has {}",
            self.describe(),
            crate::progress::human(image_size),
            crate::progress::human(d.size)
        );
        if force {
            return Ok(());
        }
        anyhow::ensure!(
            d.removable || d.usb,
            "{} is neither removable nor on USB: it looks like an internal disk. Refusing to overwrite it; pass --force if you really mean it",
            self.describe()
        );
        anyhow::ensure!(
            d.size <= max_size,
            "{} is larger than {} (--max-size): it may be a backup or system disk rather than a USB stick. Pass --force, or a larger --max-size, if it is the right one",
            self.describe(),
            crate::progress::human(max_size)
        );
        Ok(())
    }

    pub fn open(&self) -> Result<File> {
        match self {
            Target::File(p) => std::fs::OpenOptions::new().read(true).write(true).open(p).with_context(|| format!("opening {} for writing", p.display())),
            Target::Disk(p, _) => open_exclusive(p).map_err(|e| {
                if e.root_cause().to_string().contains("busy") {
                    anyhow::anyhow!("{} is busy: something has it or a partition of it open (a mount, an automounter, a volume); close it and try again", p.display())
                } else {
                    e
                }
            }),
        }
    }
}
/// Makes the next reads come from the device: sync, then drop the file's (or the block
/// device's) cached pages.
pub fn drop_cache(f: &File) -> Result<()> {
    f.sync_all()?;
    let fd = f.as_raw_fd();
    if f.metadata()?.file_type().is_block_device() {
        // BLKFLSBUF: flush and invalidate the block device's buffer cache.
        // SAFETY: a valid open fd and an ioctl without an argument.
        if unsafe { libc::ioctl(fd, 0x1261) } != 0 {
            return Err(std::io::Error::last_os_error()).context("dropping the device's cache (BLKFLSBUF)");
        }
    }
    // SAFETY: a valid open fd; advice only.
    unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
    Ok(())
}

/// Opens a block device for writing, exclusively: the kernel refuses (EBUSY) while anything has
/// it or a partition of it mounted or held.
pub fn open_exclusive(dev: &Path) -> Result<File> {
    let is_block = fs_err::metadata(dev).map(|m| m.file_type().is_block_device()).unwrap_or(false);
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true);
    if is_block {
        o.custom_flags(libc::O_EXCL);
    }
    o.open(dev).with_context(|| format!("opening {} for writing", dev.display()))
}

