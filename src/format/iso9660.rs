//! Finds a file in an ISO 9660 file system on a device, without mounting it (the installer's
//! kernel may lack isofs, and reading the medium is all it needs): the primary volume
//! descriptor at sector 16, then directory records down the path. Files larger than 4 GiB are
//! several extents (multi-extent records, as xorriso writes them at `-iso-level 3`). A name is
//! matched as ISO 9660 spells it (`INSTALL.JSON;1`) or by its Rock Ridge name (`NM`), which
//! carries the real one where ISO 9660 cannot (`user-data` on a cloud's NoCloud disk).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result, bail};

const SECTOR: u64 = 2048;

pub struct Iso {
    file: File,
    root: Vec<(u64, u64)>,
    pub volume_id: String,
}

/// The most `read` and a directory lookup read whole (install.json is a few KiB).
const MAX_READ: u64 = 16 << 20;

impl Iso {
    /// Opens `dev` if it starts with an ISO 9660 volume; `None` when it does not.
    pub fn open(dev: &Path) -> Result<Option<Iso>> {
        let mut file = File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
        let mut pvd = [0u8; SECTOR as usize];
        file.seek(SeekFrom::Start(16 * SECTOR))?;
        if file.read_exact(&mut pvd).is_err() || pvd[0] != 1 || &pvd[1..6] != b"CD001" {
            return Ok(None);
        }
        let volume_id = String::from_utf8_lossy(&pvd[40..72]).trim_end().to_string();
        let root = record_extent(&pvd[156..190]);
        Ok(Some(Iso { file, root: vec![root], volume_id }))
    }

    /// The extents `(byte offset, length)` of the file at `path` (`outpost/install.json`).
    pub fn find(&mut self, path: &str) -> Result<Vec<(u64, u64)>> {
        let mut extents = self.root.clone();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for (i, name) in parts.iter().enumerate() {
            let dir = self.read_extents(&extents)?;
            let found = entries(&dir, name);
            if found.is_empty() {
                bail!("the ISO has no `{}`", parts[..=i].join("/"));
            }
            extents = found;
        }
        Ok(extents)
    }

    pub fn read(&mut self, path: &str) -> Result<Vec<u8>> {
        let extents = self.find(path)?;
        self.read_extents(&extents)
    }

    /// Reads directories and small files whole. A medium whose records claim more than
    /// `MAX_READ`, or extents past its end, is not one outpost wrote: refused before any
    /// allocation (the installer runs in little memory, from any stick that is plugged in).
    fn read_extents(&mut self, extents: &[(u64, u64)]) -> Result<Vec<u8>> {
        let size = self.file.seek(SeekFrom::End(0))?;
        let total: u64 = extents.iter().map(|e| e.1).sum();
        anyhow::ensure!(total <= MAX_READ, "the ISO's directory records claim {total} bytes for one directory or index; this medium is damaged or not an outpost installer");
        anyhow::ensure!(extents.iter().all(|&(at, len)| at.checked_add(len).is_some_and(|end| end <= size)), "the ISO's directory records point past the end of the medium; it is damaged or not an outpost installer");
        let mut out = Vec::new();
        for &(at, len) in extents {
            self.file.seek(SeekFrom::Start(at))?;
            let start = out.len();
            out.resize(start + len as usize, 0);
            self.file.read_exact(&mut out[start..]).context("reading the ISO")?;
        }
        Ok(out)
    }

    /// A reader over the file's bytes, extent after extent.
    pub fn reader(&mut self, path: &str) -> Result<ExtentReader> {
        let extents = self.find(path)?;
        Ok(ExtentReader { file: self.file.try_clone()?, extents, at: 0, index: 0 })
    }
}

/// (byte offset, length) of a directory record's extent.
fn record_extent(r: &[u8]) -> (u64, u64) {
    let lba = u32::from_le_bytes(r[2..6].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(r[10..14].try_into().expect("4 bytes"));
    (u64::from(lba) * SECTOR, u64::from(len))
}

/// The extents of `name` in a directory's bytes (more than one for a multi-extent file).
fn entries(dir: &[u8], name: &str) -> Vec<(u64, u64)> {
    let mut found = Vec::new();
    let mut at = 0;
    while at < dir.len() {
        let len = dir[at] as usize;
        if len == 0 {
            // Records never cross a sector: the rest of this one is padding.
            at = (at / SECTOR as usize + 1) * SECTOR as usize;
            continue;
        }
        if at + len > dir.len() || len < 34 {
            break;
        }
        let r = &dir[at..at + len];
        let name_len = r[32] as usize;
        if 33 + name_len <= r.len() && (names_match(&r[33..33 + name_len], name) || rock_ridge_name(r).is_some_and(|n| n == name.as_bytes())) {
            found.push(record_extent(r));
        }
        at += len;
    }
    found
}

/// A directory record's Rock Ridge name: the `NM` entries of its system use area (after the
/// name, padded to an even offset), concatenated; `None` without one.
fn rock_ridge_name(r: &[u8]) -> Option<Vec<u8>> {
    let name_len = r[32] as usize;
    let mut at = 33 + name_len + usize::from(name_len.is_multiple_of(2));
    let mut name: Option<Vec<u8>> = None;
    while at + 4 <= r.len() {
        let len = r[at + 2] as usize;
        if len < 4 || at + len > r.len() {
            break;
        }
        if &r[at..at + 2] == b"NM" && len >= 5 {
            // Flags 2 and 4 mean "." and "..", never a file's name.
            if r[at + 4] & 0b110 == 0 {
                name.get_or_insert_with(Vec::new).extend_from_slice(&r[at + 5..at + len]);
            }
        }
        at += len;
    }
    name
}

/// `INSTALL.JSON;1` matches `install.json`; a directory's `OUTPOST` matches `outpost`.
fn names_match(raw: &[u8], name: &str) -> bool {
    let s = String::from_utf8_lossy(raw);
    let s = s.split(';').next().unwrap_or("").trim_end_matches('.');
    s.eq_ignore_ascii_case(name)
}

pub struct ExtentReader {
    file: File,
    extents: Vec<(u64, u64)>,
    /// Bytes read of the current extent.
    at: u64,
    index: usize,
}

impl Read for ExtentReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(&(start, len)) = self.extents.get(self.index) {
            if self.at == len {
                self.index += 1;
                self.at = 0;
                continue;
            }
            self.file.seek(SeekFrom::Start(start + self.at))?;
            let want = buf.len().min((len - self.at) as usize);
            let n = self.file.read(&mut buf[..want])?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the medium ended inside a file"));
            }
            self.at += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_iso_spellings() {
        assert!(names_match(b"INSTALL.JSON;1", "install.json"));
        assert!(names_match(b"OUTPOST", "outpost"));
        assert!(names_match(b"ROOT.ZST;1", "root.zst"));
        assert!(!names_match(b"ROOT.ZST;1", "seed.zst"));
        assert!(names_match(b"README.;1", "readme"));
    }

    /// A real ISO from xorriso, read back through the directory records, one file made of
    /// several extents.
    #[test]
    fn reads_files_from_a_real_iso() {
        crate::tool::preflight(&["xorriso"]).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let stage = tmp.path().join("stage");
        fs_err::create_dir_all(stage.join("outpost")).unwrap();
        fs_err::write(stage.join("outpost/install.json"), b"{\"a\": 1}").unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        fs_err::write(stage.join("outpost/root.zst"), &big).unwrap();
        let iso = tmp.path().join("t.iso");
        crate::tool::Tool::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-iso-level", "3", "-full-iso9660-filenames", "-rational-rock", "-volid", VOLUME_ID_TEST, "-o"])
            .arg(&iso)
            .arg(&stage)
            .run()
            .unwrap();
        let mut r = Iso::open(&iso).unwrap().unwrap();
        assert_eq!(r.volume_id, VOLUME_ID_TEST);
        assert_eq!(r.read("outpost/install.json").unwrap(), b"{\"a\": 1}");
        let mut back = Vec::new();
        r.reader("/outpost/root.zst").unwrap().read_to_end(&mut back).unwrap();
        assert!(back == big);
        assert!(r.read("outpost/nothing").unwrap_err().to_string().contains("no `outpost/nothing`"));
        assert!(Iso::open(&stage.join("outpost/install.json")).unwrap().is_none());
    }

    const VOLUME_ID_TEST: &str = "OUTPOST";

    /// A NoCloud disk as cloud-localds and Proxmox make it (genisoimage's options: Joliet and
    /// Rock Ridge, ISO 9660 level 1): `user-data` is `USER_DAT.;1` to ISO 9660, found by its
    /// Rock Ridge name; a ConfigDrive's nested path too.
    #[test]
    fn reads_rock_ridge_names() {
        crate::tool::preflight(&["xorriso"]).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let stage = tmp.path().join("stage");
        fs_err::create_dir_all(stage.join("openstack/latest")).unwrap();
        fs_err::write(stage.join("user-data"), b"version = 1\n").unwrap();
        fs_err::write(stage.join("meta-data"), b"local-hostname: a\n").unwrap();
        fs_err::write(stage.join("openstack/latest/meta_data.json"), b"{}").unwrap();
        let iso = tmp.path().join("cidata.iso");
        crate::tool::Tool::new("xorriso").args(["-as", "mkisofs", "-quiet", "-joliet", "-rock", "-volid", "cidata", "-o"]).arg(&iso).arg(&stage).run().unwrap();
        let mut r = Iso::open(&iso).unwrap().unwrap();
        assert_eq!(r.volume_id, "cidata");
        assert_eq!(r.read("user-data").unwrap(), b"version = 1\n");
        assert_eq!(r.read("meta-data").unwrap(), b"local-hostname: a\n");
        assert_eq!(r.read("openstack/latest/meta_data.json").unwrap(), b"{}");
        assert!(r.read("vendor-data").is_err());
    }

    #[test]
    fn multi_extent_records_concatenate() {
        // Two records of the same name: the first flagged "not the final extent".
        let mut dir = vec![0u8; 2 * SECTOR as usize];
        for (i, (lba, len)) in [(100u32, 2048u32), (200, 10)].iter().enumerate() {
            let at = i * 40;
            dir[at] = 40;
            dir[at + 2..at + 6].copy_from_slice(&lba.to_le_bytes());
            dir[at + 10..at + 14].copy_from_slice(&len.to_le_bytes());
            dir[at + 25] = if i == 0 { 0x80 } else { 0 };
            dir[at + 32] = 5;
            dir[at + 33..at + 38].copy_from_slice(b"A.Z;1");
        }
        assert_eq!(entries(&dir, "a.z"), vec![(100 * SECTOR, 2048), (200 * SECTOR, 10)]);
    }
}
