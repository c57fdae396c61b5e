//! `outpost flash IMAGE DEVICE`: writes an image to a USB stick without the ways `dd` goes wrong
//! — never a mounted, in-use, internal or oversized disk unless told, only the block map's
//! blocks, every block read back and checked. The writer and the read-back are shared with the
//! installer (`crate::install`), which writes the same ranges from the ISO's payload.

pub mod target;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::progress::human;

use crate::output::bmap::BlockMap;

/// Disks larger than this are refused without `--force`: USB sticks are smaller, internal disks
/// usually larger.
#[cfg(test)]
pub const DEFAULT_MAX_SIZE: u64 = 128 << 30; // the CLI default of --max-size
const CHUNK: usize = 4 << 20;

pub struct Options {
    pub bmap: Option<PathBuf>,
    pub no_bmap: bool,
    pub force: bool,
    pub max_size: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub image: PathBuf,
    pub device: PathBuf,
    pub block_map: Option<PathBuf>,
    pub image_bytes: u64,
    pub written_bytes: u64,
    pub write_seconds: f64,
    pub verify_seconds: f64,
    /// Written bytes per second, including the final sync.
    pub write_mb_per_s: f64,
}

pub fn flash(image: &Path, device: &Path, opts: &Options, progress: bool) -> Result<Report> {
    let ext = image.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
    anyhow::ensure!(
        matches!(ext.as_str(), "raw" | "iso" | "img"),
        "{}: flash writes raw disks and ISOs (NAME.raw, NAME.iso); for a qcow2, flash the NAME.raw beside it or convert it with `qemu-img convert -O raw`",
        image.display()
    );
    let image_size = std::fs::metadata(image).with_context(|| format!("reading the image {}", image.display()))?.len();
    let bmap_path = match (&opts.bmap, opts.no_bmap) {
        (Some(p), _) => Some(p.clone()),
        (None, false) if crate::output::bmap::path_for(image).is_file() => Some(crate::output::bmap::path_for(image)),
        _ => None,
    };
    let map = match &bmap_path {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading the block map {}", p.display()))?;
            let map = BlockMap::parse(&text, p)?;
            anyhow::ensure!(
                map.image_size == image_size,
                "{} describes an image of {} bytes, but {} has {image_size}: they do not belong together",
                p.display(),
                map.image_size,
                image.display()
            );
            map
        }
        None => BlockMap::whole(image_size),
    };
    // Without a block map the whole image's checksum is known when SHA256SUMS lists it.
    let expected_whole = if bmap_path.is_none() { listed_checksum(image)? } else { None };

    let target = target::inspect(device)?;
    target.check(image_size, opts.max_size, opts.force)?;
    eprintln!("outpost: writing {} ({}) to {}", image.display(), human(map.mapped_bytes()), target.describe());

    let mut dst = target.open()?;
    let mut src = RangeReader::new(File::open(image).with_context(|| format!("opening {}", image.display()))?, &map);
    let bar = progress.then(|| bar(map.mapped_bytes()));
    let started = Instant::now();
    let sums = write_ranges(&mut src, &map, &mut dst, |n| {
        if let Some(b) = &bar {
            b.inc(n)
        }
    })
    .with_context(|| format!("writing {} to {}", image.display(), device.display()))?;
    if let (Some(want), [got]) = (&expected_whole, sums.as_slice()) {
        anyhow::ensure!(
            want == got,
            "{} does not match its SHA256SUMS ({got} read, {want} listed): the image file is damaged; {} now holds the damaged bytes",
            image.display(),
            device.display()
        );
    }
    dst.sync_all().with_context(|| format!("flushing {}", device.display()))?;
    let write_seconds = started.elapsed().as_secs_f64();
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let started = Instant::now();
    verify_ranges(&mut dst, &map, &sums).with_context(|| format!("reading {} back", device.display()))?;
    let verify_seconds = started.elapsed().as_secs_f64();
    let written = map.mapped_bytes();
    Ok(Report {
        image: image.to_path_buf(),
        device: device.to_path_buf(),
        block_map: bmap_path,
        image_bytes: image_size,
        written_bytes: written,
        write_seconds,
        verify_seconds,
        write_mb_per_s: written as f64 / 1e6 / write_seconds.max(1e-9),
    })
}

fn bar(total: u64) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(total);
    b.set_style(indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}").expect("valid template"));
    b
}

/// The sha256 that SHA256SUMS beside the image lists for it, if it does.
fn listed_checksum(image: &Path) -> Result<Option<String>> {
    let sums = image.with_file_name("SHA256SUMS");
    let Ok(text) = std::fs::read_to_string(&sums) else { return Ok(None) };
    let name = image.file_name().unwrap_or_default().to_string_lossy();
    Ok(text.lines().find_map(|l| l.split_once("  ").filter(|(_, f)| *f == name).map(|(s, _)| s.to_string())))
}

/// Reads the image's mapped ranges one after the other, as one stream.
pub struct RangeReader<'a> {
    file: File,
    map: &'a BlockMap,
    next: usize,
    left: u64,
}

impl<'a> RangeReader<'a> {
    pub fn new(file: File, map: &'a BlockMap) -> RangeReader<'a> {
        RangeReader { file, map, next: 0, left: 0 }
    }
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.left == 0 {
            let Some(r) = self.map.ranges.get(self.next) else { return Ok(0) };
            self.file.seek(SeekFrom::Start(r.offset()))?;
            self.left = r.len(self.map.image_size);
            self.next += 1;
        }
        let n = buf.len().min(self.left as usize);
        let n = self.file.read(&mut buf[..n])?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the image ends before its block map does"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Writes each range of `map`, its bytes taken in order from `src`, at its place in `dst`.
/// Returns each range's sha256 as written; a range whose bytes do not match the map's checksum
/// stops the write (the source is damaged).
pub fn write_ranges(src: &mut dyn Read, map: &BlockMap, dst: &mut File, mut progress: impl FnMut(u64)) -> Result<Vec<String>> {
    let mut buf = vec![0u8; CHUNK];
    let mut sums = Vec::with_capacity(map.ranges.len());
    for (i, r) in map.ranges.iter().enumerate() {
        dst.seek(SeekFrom::Start(r.offset()))?;
        let mut h = Sha256::new();
        let mut left = r.len(map.image_size);
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            src.read_exact(&mut buf[..n]).with_context(|| format!("reading the image's block range {} of {}", i + 1, map.ranges.len()))?;
            h.update(&buf[..n]);
            dst.write_all(&buf[..n]).with_context(|| format!("writing at byte {}", r.offset() + r.len(map.image_size) - left))?;
            left -= n as u64;
            progress(n as u64);
        }
        let got = hex::encode(h.finalize());
        if let Some(want) = &r.sha256 {
            anyhow::ensure!(
                *want == got,
                "blocks {}-{} of the image do not match the block map's checksum: the image (or the installation medium) is damaged",
                r.first,
                r.last
            );
        }
        sums.push(got);
    }
    Ok(sums)
}

/// Reads every range back from the device, past its page cache, and compares it with what was
/// written.
pub fn verify_ranges(dst: &mut File, map: &BlockMap, sums: &[String]) -> Result<()> {
    drop_cache(dst)?;
    let mut buf = vec![0u8; CHUNK];
    for (r, want) in map.ranges.iter().zip(sums) {
        dst.seek(SeekFrom::Start(r.offset()))?;
        let mut h = Sha256::new();
        let mut left = r.len(map.image_size);
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            dst.read_exact(&mut buf[..n])?;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        let got = hex::encode(h.finalize());
        anyhow::ensure!(
            got == *want,
            "blocks {}-{} read back differ from what was written (sha256 {got}, wrote {want}): the device is failing or was removed; do not use it",
            r.first,
            r.last
        );
    }
    Ok(())
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
    let is_block = std::fs::metadata(dev).map(|m| m.file_type().is_block_device()).unwrap_or(false);
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true);
    if is_block {
        o.custom_flags(libc::O_EXCL);
    }
    o.open(dev).with_context(|| format!("opening {} for writing", dev.display()))
}

#[cfg(test)]
mod tests;
