//! The block map (`NAME.raw.bmap`, bmaptool's format 2.0): which 4 KiB blocks of the raw disk
//! must be written to a device, each range with its sha256. `outpost flash`, the installer and
//! `bmaptool copy` write only these and verify them.
//!
//! The ranges come from the disk's partition table, not from which blocks happen to be allocated
//! on the build host's file system: everything before the first partition (protective MBR, GPT,
//! the gap where a BIOS loader lives), every partition whole, the first 16 MiB of the data
//! partition (zeros, so that a stick or disk used before carries no stale LUKS or file system
//! header into the first boot) and the backup GPT. Free space inside a FAT is written as zeros,
//! which is what makes the map correct on a device with old contents.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

pub const BLOCK: u64 = 4096;
/// How much of the data partition's start is written (zeros): LUKS2's two headers and keyslot
/// area fit in 16 MiB, as do every file system's superblocks that blkid looks at.
pub const DATA_WIPE: u64 = 16 << 20;

/// A run of blocks `first..=last` and the sha256 of their bytes in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub first: u64,
    pub last: u64,
    pub sha256: Option<String>,
}

impl Range {
    pub fn offset(&self) -> u64 {
        self.first * BLOCK
    }

    /// Byte length, the last block cut at the image's end.
    pub fn len(&self, image_size: u64) -> u64 {
        ((self.last + 1) * BLOCK).min(image_size) - self.offset()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMap {
    pub image_size: u64,
    pub ranges: Vec<Range>,
}

impl BlockMap {
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.len(self.image_size)).sum()
    }

    /// The whole image as one range: what is written when there is no block map (an ISO).
    pub fn whole(image_size: u64) -> BlockMap {
        BlockMap { image_size, ranges: vec![Range { first: 0, last: image_size.div_ceil(BLOCK).saturating_sub(1), sha256: None }] }
    }

    /// The XML bmaptool reads. BmapFileChecksum is the sha256 of the file with that field's
    /// value replaced by 64 zeros.
    pub fn to_xml(&self) -> String {
        let blocks = self.image_size.div_ceil(BLOCK);
        let mapped: u64 = self.ranges.iter().map(|r| r.last + 1 - r.first).sum();
        let mut body = String::new();
        for r in &self.ranges {
            let span = if r.first == r.last { r.first.to_string() } else { format!("{}-{}", r.first, r.last) };
            match &r.sha256 {
                Some(s) => body.push_str(&format!("        <Range chksum=\"{s}\"> {span} </Range>\n")),
                None => body.push_str(&format!("        <Range> {span} </Range>\n")),
            }
        }
        let xml = |sum: &str| {
            format!(
                "<?xml version=\"1.0\" ?>\n\
                 <!-- Block map of an outpost disk image: the blocks a device must receive, with\n     \
                 their sha256. Written by outpost; read by `outpost flash` and `bmaptool copy`. -->\n\
                 <bmap version=\"2.0\">\n    \
                 <ImageSize> {} </ImageSize>\n    \
                 <BlockSize> {BLOCK} </BlockSize>\n    \
                 <BlocksCount> {blocks} </BlocksCount>\n    \
                 <MappedBlocksCount> {mapped} </MappedBlocksCount>\n    \
                 <ChecksumType> sha256 </ChecksumType>\n    \
                 <BmapFileChecksum> {sum} </BmapFileChecksum>\n    \
                 <BlockMap>\n{body}    </BlockMap>\n</bmap>\n",
                self.image_size
            )
        };
        let zeros = "0".repeat(64);
        let sum = hex::encode(Sha256::digest(xml(&zeros).as_bytes()));
        xml(&sum)
    }

    /// Reads a bmap file of version 2 (sha256) — outpost's or one `bmaptool create` wrote.
    pub fn parse(text: &str, file: &Path) -> Result<BlockMap> {
        let bad = |what: &str| anyhow::anyhow!("{}: {what}; is it a block map written by outpost or `bmaptool create`?", file.display());
        let tag = |name: &str| -> Option<&str> {
            let open = format!("<{name}>");
            let start = text.find(&open)? + open.len();
            let end = text[start..].find(&format!("</{name}>"))? + start;
            Some(text[start..end].trim())
        };
        let version = text.find("<bmap version=\"").map(|i| &text[i + 15..]).and_then(|v| v.split('"').next()).ok_or_else(|| bad("no <bmap version>"))?;
        anyhow::ensure!(version.starts_with("2."), "{}: block map version {version}: only version 2 (sha256 checksums) is read", file.display());
        let num = |name: &str| -> Result<u64> { tag(name).and_then(|v| v.parse().ok()).ok_or_else(|| bad(&format!("no number in <{name}>"))) };
        let image_size = num("ImageSize")?;
        let block = num("BlockSize")?;
        anyhow::ensure!(block == BLOCK, "{}: block size {block}; outpost reads block maps of {BLOCK}-byte blocks", file.display());
        if let Some(t) = tag("ChecksumType") {
            anyhow::ensure!(t == "sha256", "{}: checksum type `{t}`; only sha256 is read", file.display());
        }
        if let Some(sum) = tag("BmapFileChecksum") {
            let zeroed = text.replacen(sum, &"0".repeat(sum.len()), 1);
            anyhow::ensure!(
                hex::encode(Sha256::digest(zeroed.as_bytes())) == sum,
                "{}: the block map's own checksum does not match: the file is damaged or was edited",
                file.display()
            );
        }
        let mut ranges = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("<Range") {
            rest = &rest[i + 6..];
            let close = rest.find('>').ok_or_else(|| bad("an unterminated <Range>"))?;
            let attrs = &rest[..close];
            let end = rest.find("</Range>").ok_or_else(|| bad("a <Range> without </Range>"))?;
            let span = rest[close + 1..end].trim();
            let sha256 = attrs.split("chksum=\"").nth(1).and_then(|s| s.split('"').next()).map(str::to_string);
            let (a, b) = span.split_once('-').unwrap_or((span, span));
            let (first, last) = match (a.trim().parse::<u64>(), b.trim().parse::<u64>()) {
                (Ok(a), Ok(b)) if a <= b => (a, b),
                _ => return Err(bad(&format!("the range `{span}`"))),
            };
            anyhow::ensure!(last * BLOCK < image_size, "{}: range `{span}` lies past the image's end ({image_size} bytes)", file.display());
            ranges.push(Range { first, last, sha256 });
            rest = &rest[end..];
        }
        Ok(BlockMap { image_size, ranges })
    }
}

/// The byte ranges a device must receive, from the disk's own partition table (see the module
/// comment), merged and rounded out to whole blocks.
pub fn mapped_ranges(raw: &Path) -> Result<Vec<(u64, u64)>> {
    let size = fs_err::metadata(raw).with_context(|| format!("reading {}", raw.display()))?.len();
    let disk = gpt::GptConfig::new().writable(false).open(raw).with_context(|| format!("reading the partition table of {}", raw.display()))?;
    let lb = u64::from(*disk.logical_block_size());
    let mut parts: Vec<&gpt::partition::Partition> = disk.partitions().values().collect();
    parts.sort_by_key(|p| p.first_lba);
    let mut spans = Vec::new();
    spans.push((0, parts.first().map_or(size, |p| p.first_lba * lb)));
    for p in parts {
        let (start, end) = (p.first_lba * lb, (p.last_lba + 1) * lb);
        let end = if p.name == "data" { end.min(start + DATA_WIPE) } else { end };
        spans.push((start, end));
    }
    spans.push(((disk.header().last_usable + 1) * lb, size));
    // One range per partition, not merged with its neighbours: a personalized copy changes the
    // seed partition alone, and only its range is hashed again (`rehash`).
    let mut blocks: Vec<(u64, u64)> = Vec::new();
    for (start, end) in spans {
        if end <= start {
            continue;
        }
        let (first, last) = (start / BLOCK, end.div_ceil(BLOCK) - 1);
        match blocks.last_mut() {
            Some(prev) if first <= prev.1 => prev.1 = prev.1.max(last),
            _ => blocks.push((first, last)),
        }
    }
    Ok(blocks)
}

/// The block map of a raw disk, each range's sha256 read from it.
pub fn create(raw: &Path) -> Result<BlockMap> {
    let image_size = fs_err::metadata(raw).with_context(|| format!("reading {}", raw.display()))?.len();
    let f = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let mut ranges = Vec::new();
    for (first, last) in mapped_ranges(raw)? {
        let mut r = Range { first, last, sha256: None };
        hash_range(&f, raw, &mut r, image_size)?;
        ranges.push(r);
    }
    Ok(BlockMap { image_size, ranges })
}

/// Sets the range's checksum from the bytes of `f` (the image `raw`) it covers.
fn hash_range(f: &File, raw: &Path, r: &mut Range, image_size: u64) -> Result<()> {
    let sha256 = crate::files::sha256_range(f, r.offset(), r.len(image_size)).with_context(|| format!("reading blocks {}-{} of {}", r.first, r.last, raw.display()))?;
    r.sha256 = Some(sha256);
    Ok(())
}

/// The block map of `raw` when only the bytes in `start..end` changed since `before` was made
/// of the same disk: the ranges that touch them are hashed again, the others kept. `before`
/// must have the ranges `raw`'s partition table gives (else the whole disk is hashed).
pub fn rehash(before: BlockMap, raw: &Path, start: u64, end: u64) -> Result<BlockMap> {
    let image_size = fs_err::metadata(raw).with_context(|| format!("reading {}", raw.display()))?.len();
    let spans: Vec<(u64, u64)> = before.ranges.iter().map(|r| (r.first, r.last)).collect();
    if before.image_size != image_size || spans != mapped_ranges(raw)? || before.ranges.iter().any(|r| r.sha256.is_none()) {
        return create(raw);
    }
    let f = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let mut ranges = before.ranges;
    for r in ranges.iter_mut().filter(|r| r.offset() < end && r.offset() + r.len(image_size) > start) {
        hash_range(&f, raw, r, image_size)?;
    }
    Ok(BlockMap { image_size, ranges })
}

/// Writes the block map of `raw` to `out`.
pub fn write(raw: &Path, out: &Path) -> Result<()> {
    let map = create(raw)?;
    fs_err::write(out, map.to_xml()).with_context(|| format!("writing {}", out.display()))
}

/// `NAME.raw` → `NAME.raw.bmap`, where bmaptool looks first.
pub fn path_for(raw: &Path) -> std::path::PathBuf {
    let mut s = raw.as_os_str().to_os_string();
    s.push(".bmap");
    s.into()
}

/// How much is read or written at a time.
const CHUNK: usize = 4 << 20;

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
    crate::blockdev::drop_cache(dst)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk;
    use crate::format::layout::{self, Role};

    fn sample_disk(dir: &Path) -> (std::path::PathBuf, layout::Layout) {
        let layout = layout::plan(8 << 20, 8 << 20, 64 << 20, "bmap", "");
        let raw = dir.join("d.raw");
        disk::create(&layout, &raw).unwrap();
        let blob = dir.join("b");
        fs_err::write(&blob, vec![0x5au8; 5000]).unwrap();
        disk::copy_into(&layout, Role::Root, &blob, &raw).unwrap();
        (raw, layout)
    }

    #[test]
    fn ranges_follow_the_partition_table() {
        let tmp = tempfile::tempdir().unwrap();
        let (raw, layout) = sample_disk(tmp.path());
        let ranges = mapped_ranges(&raw).unwrap();
        let data = layout.get(Role::Data);
        // Everything up to 16 MiB into the data partition, one range per partition back to
        // back (the seed's alone, which personalization hashes again), then the backup GPT's
        // blocks.
        let (head, tail) = ranges.split_at(ranges.len() - 1);
        assert_eq!(head[0].0, 0);
        assert!(head.windows(2).all(|w| w[1].0 == w[0].1 + 1), "{ranges:?}");
        assert_eq!(head.last().unwrap().1, (data.offset() + DATA_WIPE) / BLOCK - 1);
        let seed = layout.get(Role::Seed);
        assert!(head.contains(&(seed.offset() / BLOCK, (seed.offset() + seed.size()) / BLOCK - 1)), "{ranges:?}");
        assert_eq!(tail, [((layout.size - 33 * 512) / BLOCK, layout.size / BLOCK - 1)]);
    }

    #[test]
    fn xml_round_trips_and_checks_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let (raw, _) = sample_disk(tmp.path());
        let map = create(&raw).unwrap();
        let xml = map.to_xml();
        let file = tmp.path().join("d.raw.bmap");
        assert_eq!(BlockMap::parse(&xml, &file).unwrap(), map);
        assert_eq!(xml, create(&raw).unwrap().to_xml(), "not reproducible");
        let edited = xml.replacen("<Range chksum=\"", "<Range chksum=\"0", 1).replacen("\"> 0-", "\"> 1-", 1);
        let e = BlockMap::parse(&edited, &file).unwrap_err().to_string();
        assert!(e.contains("d.raw.bmap") && e.contains("damaged"), "{e}");
        let e = BlockMap::parse("<bmap version=\"1.3\">", &file).unwrap_err().to_string();
        assert!(e.contains("version 1.3"), "{e}");
        let e = BlockMap::parse("hello", &file).unwrap_err().to_string();
        assert!(e.contains("no <bmap version>"), "{e}");
    }

    /// bmaptool itself accepts the map (its checksum, and every range's while copying).
    #[test]
    fn bmaptool_copies_with_it() {
        if crate::tool::which("bmaptool").is_none() {
            eprintln!("bmaptool (bmap-tools) not installed; skipping");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (raw, layout) = sample_disk(tmp.path());
        fs_err::write(path_for(&raw), create(&raw).unwrap().to_xml()).unwrap();
        let dest = tmp.path().join("dest");
        crate::tool::Tool::new("bmaptool").args(["copy", "--no-sig-verify"]).arg(&raw).arg(&dest).run().unwrap();
        let (a, b) = (fs_err::read(&raw).unwrap(), fs_err::read(&dest).unwrap());
        let data = layout.get(Role::Data);
        let wiped = (data.offset() + DATA_WIPE) as usize;
        assert_eq!(a[..wiped], b[..wiped]);
    }
}
