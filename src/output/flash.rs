//! `outpost flash IMAGE DEVICE`: writes an image to a USB stick without the ways `dd` goes wrong
//! — never a mounted, in-use, internal or oversized disk unless told, only the block map's
//! blocks, every block read back and checked. The writer and the read-back are shared with the
//! installer (`crate::install`), which writes the same ranges from the ISO's payload.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::progress::human;

use crate::format::bmap::{BlockMap, RangeReader, verify_ranges, write_ranges};

/// Disks larger than this are refused without `--force`: USB sticks are smaller, internal disks
/// usually larger.
#[cfg(test)]
pub const DEFAULT_MAX_SIZE: u64 = 128 << 30; // the CLI default of --max-size

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
    let image_size = fs_err::metadata(image).with_context(|| format!("reading the image {}", image.display()))?.len();
    let bmap_path = match (&opts.bmap, opts.no_bmap) {
        (Some(p), _) => Some(p.clone()),
        (None, false) if crate::format::bmap::path_for(image).is_file() => Some(crate::format::bmap::path_for(image)),
        _ => None,
    };
    let map = match &bmap_path {
        Some(p) => {
            let text = fs_err::read_to_string(p).with_context(|| format!("reading the block map {}", p.display()))?;
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

    let target = crate::blockdev::inspect(device)?;
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
    let Ok(text) = fs_err::read_to_string(&sums) else { return Ok(None) };
    let name = image.file_name().unwrap_or_default().to_string_lossy();
    Ok(text.lines().find_map(|l| l.split_once("  ").filter(|(_, f)| *f == name).map(|(s, _)| s.to_string())))
}

#[cfg(test)]
#[path = "flash_tests.rs"]
mod tests;
