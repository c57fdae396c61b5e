//! `outpost personalize`: a copy of an image (raw, qcow2 or installer ISO) whose seed partition
//! holds a site's settings. Only the seed is written; the root, ESP and data partitions keep the
//! image's bytes.

use std::path::Path;

use anyhow::{Context, Result};

use crate::format::layout::SEED_LABEL;
use crate::format::seed;
use crate::spec::Site;
use crate::tool::Tool;

/// `outpost personalize`: a copy of `image` whose seed partition holds `site_file`. Only the
/// seed is written; the root, ESP and data partitions are the image's bytes.
/// With `ca`, the seed also carries the box's issuing certificate (`output::ca`); a site with
/// `[tls]` carries its own certificate instead. Either makes the copy differ at every run: it
/// holds a key made for this box.
pub fn personalize(image: &Path, site_file: &Path, out: &Path, epoch: i64, ca: Option<&crate::output::ca::Ca>) -> Result<()> {
    let site = Site::load(site_file)?;
    let text = fs_err::read_to_string(site_file).with_context(|| format!("reading {}", site_file.display()))?;
    let mut tls = match (&site.tls, ca) {
        (Some(_), Some(_)) => anyhow::bail!("{}: the site brings its own certificate (`[tls]`) and --ca was given: choose one", site_file.display()),
        (Some(t), None) => crate::output::ca::site_own(site_file, &t.cert, &t.key)?,
        (None, Some(ca)) => crate::output::ca::issue(ca, &site)?,
        (None, None) => Vec::new(),
    };
    if let Some(k) = site.backup.as_ref().and_then(|b| b.key_file.as_deref()) {
        tls.push((crate::format::stack::SEED_BACKUP_KEY.to_string(), site_backup_key(site_file, k)?));
    }
    let ext = |p: &Path| p.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
    if ext(image) == "iso" || ext(out) == "iso" {
        anyhow::ensure!(ext(image) == ext(out), "{} to {}: an installer ISO is personalized into another NAME.iso", image.display(), out.display());
        return personalize_iso(image, &site, &text, &tls, out, epoch);
    }
    for (p, what) in [(image, "image"), (out, "--out")] {
        anyhow::ensure!(matches!(ext(p).as_str(), "raw" | "qcow2"), "{what} {}: name it NAME.raw, NAME.qcow2 or NAME.iso", p.display());
    }
    anyhow::ensure!(image.is_file(), "{} does not exist", image.display());
    let partial = crate::files::partial(out);
    let raw = if ext(out) == "raw" { partial.clone() } else { out.with_extension("raw.work") };
    // Whatever a failure leaves is removed: the partial copy, its work disk, its block map.
    let leftovers = [crate::files::Scratch::new(&partial), crate::files::Scratch::new(&raw), crate::files::Scratch::new(crate::files::partial(&crate::format::bmap::path_for(out)))];
    {
        if ext(image) == "raw" {
            Tool::new("cp").describe("copying the image").args(["--sparse=auto", "--reflink=auto"]).arg(image).arg(&raw).run()?;
        } else {
            Tool::new("qemu-img").describe("reading the qcow2 image").args(["convert", "-q", "-O", "raw"]).arg(image).arg(&raw).run()?;
        }
        write_seed(&raw, &text, &tls, epoch).with_context(|| format!("writing the seed of {}", raw.display()))?;
        if ext(out) == "qcow2" {
            crate::output::qcow2(&raw, &partial)?;
            fs_err::remove_file(&raw)?;
        } else {
            // Its own block map: the seed's range checksum changed. The image's map, when it
            // lies beside it, gives the others (hashing them again reads the whole disk).
            let bmap = crate::format::bmap::path_for(out);
            let map = match image_bmap(image) {
                Some(before) => {
                    let (offset, size, _) = crate::format::layout::find_partition(&partial, SEED_LABEL)?;
                    crate::format::bmap::rehash(before, &partial, offset, offset + size)?
                }
                None => crate::format::bmap::create(&partial)?,
            };
            fs_err::write(crate::files::partial(&bmap), map.to_xml())?;
            fs_err::rename(crate::files::partial(&bmap), &bmap).with_context(|| format!("renaming {} into place", bmap.display()))?;
        }
        fs_err::rename(&partial, out)?;
    }
    drop(leftovers);
    Ok(())
}

/// The site's backup key from `[backup] key-file` (relative to the site file): one line of 20
/// to 200 printable characters, as restic reads a password file.
fn site_backup_key(site_file: &Path, key_file: &str) -> Result<Vec<u8>> {
    let path = site_file.parent().unwrap_or(Path::new(".")).join(key_file);
    let text = fs_err::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: `backup.key-file` names {}, which cannot be read ({e})", site_file.display(), path.display()))?;
    let key = text.strip_suffix('\n').unwrap_or(&text);
    anyhow::ensure!(
        (20..=200).contains(&key.len()) && key.chars().all(|c| c.is_ascii_graphic() || c == ' ') && key.trim() == key,
        "{}: `backup.key-file` {} does not hold a backup key: one line of 20 to 200 printable characters, no space at either end (make one with `openssl rand -hex 32 > {}`)",
        site_file.display(),
        path.display(),
        key_file
    );
    Ok(format!("{key}\n").into_bytes())
}

/// The block map beside a raw image, when there is one that reads.
fn image_bmap(image: &Path) -> Option<crate::format::bmap::BlockMap> {
    let path = crate::format::bmap::path_for(image);
    let text = fs_err::read_to_string(&path).ok()?;
    crate::format::bmap::BlockMap::parse(&text, &path).ok()
}

/// A copy of the installer ISO whose seed carries the site (and whose installer asks nothing
/// when the site says `[install] unattended`).
fn personalize_iso(image: &Path, site: &Site, text: &str, tls: &[(String, Vec<u8>)], out: &Path, epoch: i64) -> Result<()> {
    anyhow::ensure!(image.is_file(), "{} does not exist", image.display());
    crate::tool::preflight(crate::output::iso::TOOLS)?;
    let partial = crate::files::Scratch::new(crate::files::partial(out));
    let work = crate::files::Scratch::new(crate::files::partial(&out.with_extension("iso.d")));
    crate::files::remove_if_exists(work.path())?;
    {
        let stage = work.path().join("stage");
        fs_err::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
        crate::output::iso::extract(image, &stage)?;
        let index: crate::format::install::Index = serde_json::from_slice(&fs_err::read(stage.join("outpost/install.json")).with_context(|| {
            format!("{} is not an outpost installer ISO (it has no outpost/install.json)", image.display())
        })?)?;
        let part = index.partitions.iter().find(|p| p.label == SEED_LABEL).context("the ISO's image has no seed partition")?;
        let serial = u32::from_be_bytes(part.guid.as_bytes()[..4].try_into().expect("4 bytes"));
        let img = seed::image_with(part.size(), serial, epoch, Some(text), tls)?;
        crate::output::iso::set_seed(&stage, &img, site)?;
        crate::output::iso::write_iso(&stage, partial.path(), &index.image, epoch)?;
        fs_err::rename(partial.path(), out)?;
    }
    Ok(())
}

/// Writes the seed FAT (with `site` and the `tls` files) into the raw disk's seed partition.
pub fn write_seed(raw: &Path, site: &str, tls: &[(String, Vec<u8>)], epoch: i64) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let (offset, size, guid) = crate::format::layout::find_partition(raw, SEED_LABEL).context("rebuild the image with this outpost")?;
    let serial = u32::from_be_bytes(guid.as_bytes()[..4].try_into().expect("4 bytes"));
    let img = seed::image_with(size, serial, epoch, Some(site), tls)?;
    let mut f = fs_err::OpenOptions::new().write(true).open(raw)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(&img)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personalize_writes_only_the_seed_partition() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = crate::format::layout::plan(64 << 20, 64 << 20, 16 << 20, "t", "");
        let raw = tmp.path().join("img.raw");
        crate::disk::create(&layout, &raw).unwrap();
        let blob = tmp.path().join("root.img");
        fs_err::write(&blob, vec![7u8; 1 << 20]).unwrap();
        crate::disk::copy_into(&layout, crate::format::layout::Role::Root, &blob, &raw).unwrap();
        let before = fs_err::read(&raw).unwrap();
        crate::format::bmap::write(&raw, &crate::format::bmap::path_for(&raw)).unwrap();
        let site = tmp.path().join("s.toml");
        fs_err::write(&site, "version = 1\nhostname = \"clinic-9\"\n").unwrap();
        let out = tmp.path().join("clinic-9.raw");
        personalize(&raw, &site, &out, 1_700_000_000, None).unwrap();
        assert_eq!(fs_err::read(&raw).unwrap(), before, "the original image changed");
        let after = fs_err::read(&out).unwrap();
        let seed = layout.get(crate::format::layout::Role::Seed);
        let (a, b) = (seed.offset() as usize, (seed.offset() + seed.size()) as usize);
        assert_eq!(before[..a], after[..a]);
        assert_eq!(before[b..], after[b..]);
        let part = tmp.path().join("seed.img");
        fs_err::write(&part, &after[a..b]).unwrap();
        assert_eq!(seed::read_site(&part).unwrap().as_deref(), Some("version = 1\nhostname = \"clinic-9\"\n"));
        // The copy's block map, made from the image's with the seed's range hashed again, is the
        // one hashing the whole copy gives; the seed's range changed, no other.
        let map = |p: &Path| crate::format::bmap::BlockMap::parse(&fs_err::read_to_string(crate::format::bmap::path_for(p)).unwrap(), p).unwrap();
        let (old, new) = (map(&raw), map(&out));
        assert_eq!(new, crate::format::bmap::create(&out).unwrap());
        let changed: Vec<_> = old.ranges.iter().zip(&new.ranges).filter(|(a, b)| a != b).map(|(a, _)| a.offset()).collect();
        assert_eq!(changed, [seed.offset()], "only the seed's range: {:?}", new.ranges);

        let bad = tmp.path().join("bad.toml");
        fs_err::write(&bad, "version = 1\nhostname = \"clinic 9\"\n").unwrap();
        let err = personalize(&raw, &bad, &tmp.path().join("x.raw"), 0, None).unwrap_err();
        assert!(format!("{err:#}").contains("bad.toml: key `hostname`"), "{err:#}");
        assert!(!tmp.path().join("x.raw").exists() && !tmp.path().join("x.raw.partial").exists());

        // The site's backup key goes into the seed's tls folder, not into its text.
        let key = "3f1c9a0b7d2e4f6a8b0c1d2e3f4a5b6c";
        fs_err::write(tmp.path().join("district.key"), format!("{key}\n")).unwrap();
        let keyed = tmp.path().join("keyed.toml");
        fs_err::write(&keyed, "version = 1\nhostname = \"clinic-9\"\n[backup]\nkey-file = \"district.key\"\n").unwrap();
        personalize(&raw, &keyed, &out, 1_700_000_000, None).unwrap();
        fs_err::write(&part, &fs_err::read(&out).unwrap()[a..b]).unwrap();
        assert_eq!(seed::read_tls(&part, crate::format::stack::SEED_BACKUP_KEY).unwrap(), Some(format!("{key}\n").into_bytes()));
        for (text, want) in [("short\n", "does not hold a backup key"), (" 3f1c9a0b7d2e4f6a8b0c1d2e3f4a5b6c\n", "does not hold a backup key")] {
            fs_err::write(tmp.path().join("district.key"), text).unwrap();
            let err = personalize(&raw, &keyed, &tmp.path().join("y.raw"), 0, None).unwrap_err();
            assert!(format!("{err:#}").contains(want) && format!("{err:#}").contains("keyed.toml"), "{err:#}");
        }
        fs_err::remove_file(tmp.path().join("district.key")).unwrap();
        let err = personalize(&raw, &keyed, &tmp.path().join("y.raw"), 0, None).unwrap_err();
        assert!(format!("{err:#}").contains("`backup.key-file` names"), "{err:#}");
        assert!(!tmp.path().join("y.raw").exists());
    }
}
