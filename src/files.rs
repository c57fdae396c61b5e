//! Leaf helpers every room may use: partial files that clean up after themselves, atomic
//! writes, hashing, reading a file for a needle, and the build's clock (SOURCE_DATE_EPOCH,
//! clamped times, civil dates). Nothing here imports the rest of outpost.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// `NAME.partial`: where an output is written until it is complete.
pub fn partial(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(".partial");
    PathBuf::from(s)
}

/// Removes a file, or a directory with everything in it, if it is there. Anything but "not
/// there" is an error naming the path.
pub fn remove_if_exists(p: &Path) -> Result<()> {
    let r = match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", p.display())),
        _ => Ok(()),
    }
}

/// A scratch file or directory, removed when dropped unless `keep` was called: what a step
/// leaves behind when it fails, or a work area it no longer needs.
pub struct Scratch(Option<PathBuf>);

impl Scratch {
    pub fn new(p: impl Into<PathBuf>) -> Scratch {
        Scratch(Some(p.into()))
    }

    pub fn path(&self) -> &Path {
        self.0.as_deref().expect("a scratch path until kept")
    }

    /// It became the output: leave it.
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            // Cleanup on the way out of a failed or finished step; it may never have been made.
            let _ = remove_if_exists(p);
        }
    }
}

/// A set of outputs being written: their `.partial` files are removed when this is dropped
/// unless `keep` was called (a failed or interrupted build never leaves something that looks
/// finished, nor a half-written partial).
pub struct Partials(Vec<PathBuf>);

impl Partials {
    pub fn new(finals: Vec<PathBuf>) -> Partials {
        Partials(finals)
    }

    /// The outputs were published: nothing to clean.
    pub fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for Partials {
    fn drop(&mut self) {
        for f in &self.0 {
            // Cleanup on a failure path: the partial may never have been made.
            let _ = fs_err::remove_file(partial(f));
        }
    }
}

/// Writes `path` through `path.partial`, fsyncs and renames: readers see the old file or the
/// whole new one, never a part.
pub fn atomic_write(path: &Path, write: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    let partial = partial(path);
    let guard = Scratch::new(&partial);
    {
        let mut f = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
        write(&mut f)?;
        f.sync_all().with_context(|| format!("syncing {}", partial.display()))?;
        fs_err::rename(&partial, path).with_context(|| format!("renaming {} into place", partial.display()))?;
        if let Some(dir) = path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
        }
    }
    guard.keep();
    Ok(())
}

/// The sha256 of a file. Its holes (a raw disk is mostly holes) are hashed as the zeros they
/// read as, without reading them: reading a hole makes the kernel allocate and zero a page of
/// cache for each 4 KiB of it, which made hashing a fresh 920 MiB disk take 6 s beside
/// qemu-img instead of 0.8 s.
pub fn sha256_file(p: &Path) -> Result<String> {
    let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let len = f.metadata().with_context(|| format!("reading {}", p.display()))?.len();
    sha256_range(&f, 0, len).with_context(|| format!("reading {}", p.display()))
}

/// The sha256 of `len` bytes of `f` from `start` on, its holes hashed without reading them
/// (`sha256_file`); an error if the file ends before.
pub fn sha256_range(f: &File, start: u64, len: u64) -> Result<String> {
    let end = start + len;
    let size = f.metadata()?.len();
    anyhow::ensure!(size >= end, "the file ends at byte {size}, before byte {end}");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = start;
    while at < end {
        let (data, hole) = next_data(f, at, end)?;
        hash_zeros(&mut h, data - at);
        let mut pos = data;
        while pos < hole {
            let want = (hole - pos).min(buf.len() as u64) as usize;
            let n = std::os::unix::fs::FileExt::read_at(f, &mut buf[..want], pos)?;
            anyhow::ensure!(n > 0, "the file ends at byte {pos}, before byte {end}");
            h.update(&buf[..n]);
            pos += n as u64;
        }
        at = hole;
    }
    Ok(hex::encode(h.finalize()))
}

/// Where the next data of `f` from `at` on starts and ends, up to `end` (`lseek`'s SEEK_DATA
/// and SEEK_HOLE): `(end, end)` when only a hole is left, `(at, end)` where the file system
/// cannot tell.
fn next_data(f: &File, at: u64, end: u64) -> std::io::Result<(u64, u64)> {
    let data = match lseek(f, at, libc::SEEK_DATA) {
        Ok(d) => d.min(end),
        // Nothing but a hole after `at`; or a file system that cannot tell.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok((end, end)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok((at, end)),
        Err(e) => return Err(e),
    };
    Ok((data, lseek(f, data, libc::SEEK_HOLE)?.min(end)))
}

fn lseek(f: &File, at: u64, whence: libc::c_int) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let off = unsafe { libc::lseek(f.as_raw_fd(), at as libc::off_t, whence) };
    if off < 0 { Err(std::io::Error::last_os_error()) } else { Ok(off as u64) }
}

fn hash_zeros(h: &mut Sha256, mut n: u64) {
    static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// Copies `r` to its end into `w` (`io::sink()` to hash only); returns the sha256 of the
/// bytes and how many there were.
pub fn hash_copy(r: &mut dyn Read, w: &mut dyn Write) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((hex::encode(h.finalize()), total));
        }
        h.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Whether `needle` occurs anywhere in the file (read in chunks that overlap by its length).
pub fn file_contains(path: &Path, needle: &[u8]) -> Result<bool> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut buf = vec![0u8; 8 << 20];
    let keep = needle.len().saturating_sub(1);
    let mut have = 0;
    loop {
        let n = std::io::Read::read(&mut f, &mut buf[have..])?;
        if n == 0 {
            return Ok(false);
        }
        have += n;
        if buf[..have].windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
        let from = have.saturating_sub(keep);
        buf.copy_within(from..have, 0);
        have -= from;
    }
}

/// Reads until `buf` is full or the reader ends; returns how many bytes it read.
pub fn read_full(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The files at `depth` below `dir` whose names end with `suffix`, in name order; none when
/// `dir` does not exist (an image without stacks or declared ports, a tree without init scripts).
pub fn files_ending(dir: &Path, depth: usize, suffix: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for e in walkdir::WalkDir::new(dir).min_depth(depth).max_depth(depth).sort_by_file_name() {
        let e = match e {
            Ok(e) => e,
            Err(err) if err.io_error().is_some_and(|i| i.kind() == std::io::ErrorKind::NotFound) => break,
            Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
        };
        if e.file_name().to_string_lossy().ends_with(suffix) {
            found.push(e.into_path());
        }
    }
    Ok(found)
}

/// Every entry below `root` (not `root` itself), sorted by name, on one file system.
pub fn walk(root: &Path) -> impl Iterator<Item = Result<walkdir::DirEntry>> + '_ {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .same_file_system(true)
        .sort_by_file_name()
        .into_iter()
        .map(move |e| e.with_context(|| format!("walking {}", root.display())))
}

/// Sets every mtime later than `epoch` to `epoch`, and every atime to its mtime, so that the
/// file system written from the tree does not depend on when it was built.
pub fn clamp_times(root: &Path, epoch: i64) -> Result<()> {
    let mut dirs = Vec::new();
    for e in walk(root).chain(std::iter::once(Ok(walkdir::WalkDir::new(root).max_depth(0).into_iter().next().context("reading the root")??))) {
        let e = e?;
        let m = e.metadata()?;
        let t = filetime::FileTime::from_unix_time(m.mtime().min(epoch), 0);
        if e.file_type().is_dir() {
            dirs.push((e.path().to_path_buf(), t));
        } else {
            filetime::set_symlink_file_times(e.path(), t, t).with_context(|| format!("setting times of {}", e.path().display()))?;
        }
    }
    for (p, t) in dirs.into_iter().rev() {
        filetime::set_symlink_file_times(&p, t, t).with_context(|| format!("setting times of {}", p.display()))?;
    }
    Ok(())
}

/// Seconds since 1970 by the clock (0 for a clock before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `PID-NANOS`: a name no other process, and no earlier call of this one, is using for scratch.
pub fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// SOURCE_DATE_EPOCH, or now when it is not set (the build is then not reproducible).
pub fn source_date_epoch() -> Result<i64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH=`{v}` is not a number of seconds since 1970")),
        Err(_) => Ok(unix_now() as i64),
    }
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

/// The Unix time of a UTC calendar date and time (the inverse of `civil_time`).
pub fn unix_time(y: i64, m: i64, d: i64, h: i64, mi: i64, sec: i64) -> i64 {
    // Days-from-civil (Howard Hinnant's algorithm).
    let y = y - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146097 + doe - 719468) * 86400 + h * 3600 + mi * 60 + sec
}

/// The git work tree `dir` (or its nearest existing parent) is in, if any: private keys are
/// never made there.
pub fn git_work_tree(dir: &Path) -> Result<Option<PathBuf>> {
    let abs = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    Ok(abs.ancestors().find(|a| a.join(".git").exists()).map(Path::to_path_buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_time_is_the_inverse_of_civil_time() {
        for t in [0, 951_782_400, 1_709_164_800, 1_861_732_264, 4_107_542_399, -86_400] {
            let (y, m, d, h, mi, s) = civil_time(t);
            assert_eq!(unix_time(y, m, d, h, mi, s), t, "{t}");
        }
        assert_eq!(unix_time(2029, 3, 6, 19, 31, 4), 1_867_519_864);
    }

    #[test]
    fn a_sparse_file_hashes_as_the_bytes_it_reads_as() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        // Data, a hole of several MiB, data across a MiB boundary, a trailing hole; then a
        // file that is all hole, one with none, an empty one.
        let f = File::create(&p).unwrap();
        f.set_len(9 << 20).unwrap();
        f.write_all_at(b"GPT header", 512).unwrap();
        f.write_all_at(&[7u8; 10_000], (5 << 20) - 4096).unwrap();
        drop(f);
        let full = fs_err::read(&p).unwrap();
        assert_eq!(sha256_file(&p).unwrap(), hex::encode(Sha256::digest(&full)));
        for (name, len, data) in [("holes", 3 << 20, false), ("dense", (1 << 20) + 3, true), ("empty", 0, true)] {
            let q = dir.path().join(name);
            let f = File::create(&q).unwrap();
            f.set_len(len).unwrap();
            if data {
                f.write_all_at(&vec![1u8; len as usize], 0).unwrap();
            }
            drop(f);
            assert_eq!(sha256_file(&q).unwrap(), hex::encode(Sha256::digest(fs_err::read(&q).unwrap())), "{name}");
        }
        // A range the file does not hold all of is an error, not zeros.
        let e = sha256_range(&File::open(&p).unwrap(), 8 << 20, 2 << 20).unwrap_err();
        assert!(e.to_string().contains("ends at byte 9437184, before byte 10485760"), "{e}");
    }

    #[test]
    fn finds_a_needle_across_chunk_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut data = vec![0u8; (8 << 20) + 100];
        let at = (8 << 20) - 3;
        data[at..at + 6].copy_from_slice(b"MARKER");
        fs_err::write(&p, &data).unwrap();
        assert!(file_contains(&p, b"MARKER").unwrap());
        assert!(!file_contains(&p, b"MARKEX").unwrap());
    }
}
