//! The seed partition's FAT file system, written and read in-process with the `fatfs` crate:
//! no mounts on the build host, no mtools in the guest, fixed timestamps.

use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result};

/// FAT volume label (11 characters at most).
pub const VOLUME_LABEL: &[u8; 11] = b"OUTPOSTSEED";
pub const SITE_FILE: &str = "site.toml";

const README: &str = "This is an outpost appliance's seed.\r\n\r\n\
Put the site's settings in site.toml (see the site.toml.example beside this file, or write\r\n\
it with `outpost personalize`). The appliance reads it at every boot and applies what\r\n\
changed: hostname, network, Wi-Fi, time, administrators, application settings.\r\n";

const EXAMPLE: &str = "version = 1\r\nhostname = \"clinic-01\"\r\ntimezone = \"Africa/Nairobi\"\r\n\r\n\
[[interface]]\r\nname = \"en*\"\r\naddress = [\"192.168.10.20/24\"]\r\ngateway = \"192.168.10.1\"\r\ndns = [\"192.168.10.1\"]\r\n\r\n\
[[admin]]\r\nname = \"amina\"\r\nssh-keys = [\"ssh-ed25519 AAAA... amina@laptop\"]\r\n\r\n\
[app]\r\npublic_url = \"http://clinic-01.local\"\r\n";

#[derive(Debug)]
struct FixedTime(fatfs::DateTime);

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

fn time_provider(epoch: i64) -> &'static FixedTime {
    // FAT dates start in 1980.
    let (y, m, d, hh, mm, ss) = crate::files::civil_time(epoch.max(315_532_800));
    let dt = fatfs::DateTime {
        date: fatfs::Date { year: y as u16, month: m as u16, day: d as u16 },
        time: fatfs::Time { hour: hh as u16, min: mm as u16, sec: ss as u16, millis: 0 },
    };
    Box::leak(Box::new(FixedTime(dt)))
}

/// The seed's folder for the box's TLS material (`output::ca`, `agent::tls`).
pub const TLS_DIR: &str = "tls";

/// A FAT image of `size` bytes holding the README, an example and `site` (when given).
pub fn image(size: u64, serial: u32, epoch: i64, site: Option<&str>) -> Result<Vec<u8>> {
    image_with(size, serial, epoch, site, &[])
}

/// `image`, with `tls` files (name, bytes) in the seed's `tls/` folder.
pub fn image_with(size: u64, serial: u32, epoch: i64, site: Option<&str>, tls: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut disk = Cursor::new(vec![0u8; size as usize]);
    fatfs::format_volume(&mut disk, fatfs::FormatVolumeOptions::new().volume_label(*VOLUME_LABEL).volume_id(serial))
        .context("formatting the seed")?;
    disk.seek(SeekFrom::Start(0))?;
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new().time_provider(time_provider(epoch)))?;
        let root = fs.root_dir();
        let mut files = vec![("README.txt", README), ("site.toml.example", EXAMPLE)];
        if let Some(s) = site {
            files.push((SITE_FILE, s));
        }
        for (name, text) in files {
            let mut f = root.create_file(name).with_context(|| format!("writing {name} into the seed"))?;
            f.truncate()?;
            f.write_all(text.as_bytes())?;
        }
        if !tls.is_empty() {
            let dir = root.create_dir(TLS_DIR).context("making the seed's tls folder")?;
            for (name, bytes) in tls {
                let mut f = dir.create_file(name).with_context(|| format!("writing {TLS_DIR}/{name} into the seed"))?;
                f.truncate()?;
                f.write_all(bytes)?;
            }
        }
        drop(root);
        fs.unmount()?;
    }
    Ok(disk.into_inner())
}

/// A block device or file opened read-only, offered to fatfs (which wants Write too).
struct ReadOnly(std::fs::File);

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Seek for ReadOnly {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.0.seek(pos)
    }
}

impl Write for ReadOnly {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "the seed is read-only here"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `site.toml` from the seed file system on `dev`, if there is one.
pub fn read_site(dev: &Path) -> Result<Option<String>> {
    match read_file(dev, SITE_FILE)? {
        Some(b) => Ok(Some(String::from_utf8(b).with_context(|| format!("{SITE_FILE} on {} is not UTF-8 text", dev.display()))?)),
        None => Ok(None),
    }
}

/// The volume label of a NoCloud seed (cloud-init's data source) in its FAT form: a disk holding
/// `meta-data` (`local-hostname: NAME`) and `user-data` (for outpost: a site file).
#[cfg(test)]
pub const NOCLOUD_LABEL: &[u8; 11] = b"CIDATA     ";

/// A file of the FAT volume on `dev` by its path (`site.toml`, `openstack/latest/meta_data.json`),
/// any case; `None` when there is none.
pub fn read_file(dev: &Path, path: &str) -> Result<Option<Vec<u8>>> {
    let f = std::fs::File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let fs = fatfs::FileSystem::new(ReadOnly(f), fatfs::FsOptions::new()).with_context(|| format!("reading the FAT file system on {}", dev.display()))?;
    let (dir, name) = match path.rsplit_once('/') {
        Some((dir, name)) => match fs.root_dir().open_dir(dir) {
            Ok(d) => (d, name),
            Err(_) => return Ok(None),
        },
        None => (fs.root_dir(), path),
    };
    for e in dir.iter() {
        let e = e?;
        if e.file_name().eq_ignore_ascii_case(name) && e.is_file() {
            let mut bytes = Vec::new();
            e.to_file().read_to_end(&mut bytes).with_context(|| format!("reading {path} from {}", dev.display()))?;
            return Ok(Some(bytes));
        }
    }
    Ok(None)
}

/// A NoCloud seed disk (FAT, labelled CIDATA) holding `files` in its root, as a cloud may give
/// an instance (the boot tests give the ISO 9660 form).
#[cfg(test)]
pub fn nocloud_image(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let mut disk = Cursor::new(vec![0u8; 2 << 20]);
    fatfs::format_volume(&mut disk, fatfs::FormatVolumeOptions::new().volume_label(*NOCLOUD_LABEL)).context("formatting the NoCloud seed")?;
    disk.seek(SeekFrom::Start(0))?;
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())?;
        for (name, bytes) in files {
            let mut f = fs.root_dir().create_file(name).with_context(|| format!("writing {name} into the NoCloud seed"))?;
            f.truncate()?;
            f.write_all(bytes)?;
        }
        fs.unmount()?;
    }
    Ok(disk.into_inner())
}

/// `tls/NAME` from the seed on `dev`, if there is one.
pub fn read_tls(dev: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let f = std::fs::File::open(dev).with_context(|| format!("opening the seed {}", dev.display()))?;
    let fs = fatfs::FileSystem::new(ReadOnly(f), fatfs::FsOptions::new()).with_context(|| format!("reading the FAT file system on {}", dev.display()))?;
    let mut file = match fs.root_dir().open_file(&format!("{TLS_DIR}/{name}")) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {TLS_DIR}/{name} in the seed {}", dev.display())),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).with_context(|| format!("reading {TLS_DIR}/{name} from {}", dev.display()))?;
    Ok(Some(bytes))
}

/// Overwrites `tls/NAME` in the seed on `dev` with zeros, in place: the same clusters, the same
/// length, no change to the FAT or the directory but the file's time, so a power cut in the
/// middle leaves a readable seed (and a key the next boot takes again).
pub fn zero_tls(dev: &Path, name: &str) -> Result<()> {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(dev).with_context(|| format!("opening the seed {} for writing", dev.display()))?;
    let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new().update_accessed_date(false)).with_context(|| format!("reading the FAT file system on {}", dev.display()))?;
    {
        let mut file = fs.root_dir().open_file(&format!("{TLS_DIR}/{name}")).with_context(|| format!("opening {TLS_DIR}/{name} in the seed"))?;
        let len = file.seek(SeekFrom::End(0))?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&vec![0u8; len as usize]).with_context(|| format!("zeroing {TLS_DIR}/{name} in the seed"))?;
        file.flush()?;
    }
    fs.unmount().with_context(|| format!("closing the seed {}", dev.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_round_trips_and_is_reproducible() {
        let a = image(16 << 20, 0x1234, 1_700_000_000, Some("version = 1\n")).unwrap();
        let b = image(16 << 20, 0x1234, 1_700_000_000, Some("version = 1\n")).unwrap();
        assert_eq!(a, b);
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("seed.img");
        fs_err::write(&p, &a).unwrap();
        assert_eq!(read_site(&p).unwrap().as_deref(), Some("version = 1\n"));
        let empty = image(16 << 20, 0x1234, 1_700_000_000, None).unwrap();
        fs_err::write(&p, &empty).unwrap();
        assert_eq!(read_site(&p).unwrap(), None);
        // TLS files: read back, zeroed in place, still a readable seed.
        let with = image_with(16 << 20, 0x1234, 1_700_000_000, Some("version = 1\n"), &[("issuer.key".into(), b"PRIVATE".to_vec())]).unwrap();
        fs_err::write(&p, &with).unwrap();
        assert_eq!(read_tls(&p, "issuer.key").unwrap().as_deref(), Some(&b"PRIVATE"[..]));
        // By its path, any case, as a FAT ConfigDrive's `openstack/latest/...` is read.
        assert_eq!(read_file(&p, "TLS/Issuer.key").unwrap().as_deref(), Some(&b"PRIVATE"[..]));
        assert_eq!(read_file(&p, "nothing/issuer.key").unwrap(), None);
        assert_eq!(read_tls(&p, "site.key").unwrap(), None);
        zero_tls(&p, "issuer.key").unwrap();
        assert_eq!(read_tls(&p, "issuer.key").unwrap().as_deref(), Some(&[0u8; 7][..]));
        assert_eq!(read_site(&p).unwrap().as_deref(), Some("version = 1\n"));
        let raw = fs_err::read(&p).unwrap();
        assert!(!raw.windows(7).any(|w| w == b"PRIVATE"), "the key's bytes are still on the seed");
        // Other tools read it as FAT with our label.
        if crate::tool::which("minfo").is_some() {
            let info = crate::tool::Tool::new("minfo").arg("-i").arg(&p).arg("::").output().unwrap();
            assert!(info.contains("OUTPOSTSEED"), "{info}");
        }
    }
}
