//! Layer tarballs: what a layer changed in the tree, as a zstd tar with sorted entries and
//! `.wh.NAME` whiteouts for removals (the OCI convention), and how to lay them back down.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::files::walk;

const WHITEOUT: &str = ".wh.";

/// What identifies an inode's state: any content or metadata change moves its ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
    mode: u32,
}

/// The tree's state before a layer is applied, to tell afterwards what the layer changed.
pub struct Snapshot(HashMap<PathBuf, Stamp>);

pub fn snapshot(root: &Path) -> Result<Snapshot> {
    let mut map = HashMap::new();
    for e in walk(root) {
        let e = e?;
        let m = e.metadata().with_context(|| format!("reading {}", e.path().display()))?;
        let rel = e.path().strip_prefix(root)?.to_path_buf();
        map.insert(rel, Stamp { dev: m.dev(), ino: m.ino(), ctime: m.ctime(), ctime_nsec: m.ctime_nsec(), mode: m.mode() });
    }
    Ok(Snapshot(map))
}

/// Writes every entry of `root` that is new or changed since `before` (all of them when
/// `before` is None) and a whiteout for every removed one, as zstd-compressed tar.
pub fn write_delta(root: &Path, before: Option<&Snapshot>, out: &mut File) -> Result<u64> {
    let unchanged = |rel: &Path, m: &fs::Metadata| -> Result<bool> {
        Ok(before.and_then(|b| b.0.get(rel)).is_some_and(|s| {
            *s == Stamp { dev: m.dev(), ino: m.ino(), ctime: m.ctime(), ctime_nsec: m.ctime_nsec(), mode: m.mode() }
        }))
    };
    let earlier: Vec<&Path> = before.map(|b| b.0.keys().map(PathBuf::as_path).collect()).unwrap_or_default();
    write_tar(root, unchanged, earlier, out)
}

/// Writes what `root` holds beyond the tree `base`, by content: every entry that is not in
/// `base` with the same type, mode, owner, mtime, extended attributes and bytes (or link
/// target), and a whiteout for every entry of `base` that `root` lacks. Laid over `base`'s own
/// archive it gives `root` again: how a container image shares its distribution's base layer.
pub fn write_diff(root: &Path, base: &Path, out: &mut File) -> Result<u64> {
    let mut earlier = Vec::new();
    for e in walk(base) {
        earlier.push(e?.path().strip_prefix(base)?.to_path_buf());
    }
    // A directory where the base has something else (a symlink, as /bin is in a merged /usr)
    // replaces it whole: everything under it is written, whatever the base's path holds.
    let mut replaced: Vec<PathBuf> = Vec::new();
    let unchanged = |rel: &Path, m: &fs::Metadata| -> Result<bool> {
        if replaced.iter().any(|d| rel.starts_with(d)) {
            return Ok(false);
        }
        if m.is_dir() && !fs::symlink_metadata(base.join(rel)).is_ok_and(|b| b.is_dir()) {
            replaced.push(rel.to_path_buf());
            return Ok(false);
        }
        same_entry(&root.join(rel), m, &base.join(rel))
    };
    write_tar(root, unchanged, earlier.iter().map(PathBuf::as_path).collect(), out)
}

/// Whether `b` is the same entry as `a` (whose metadata is `ma`), contents included.
fn same_entry(a: &Path, ma: &fs::Metadata, b: &Path) -> Result<bool> {
    let Ok(mb) = fs::symlink_metadata(b) else { return Ok(false) };
    if ma.file_type() != mb.file_type() || ma.mode() != mb.mode() || ma.uid() != mb.uid() || ma.gid() != mb.gid() || ma.mtime() != mb.mtime() {
        return Ok(false);
    }
    if ma.file_type().is_symlink() {
        return Ok(fs_err::read_link(a)? == fs_err::read_link(b)?);
    }
    if xattrs(a)? != xattrs(b)? {
        return Ok(false);
    }
    if !ma.is_file() {
        return Ok(true);
    }
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let (mut fa, mut fb) = (BufReader::new(File::open(a).with_context(|| format!("reading {}", a.display()))?), BufReader::new(File::open(b).with_context(|| format!("reading {}", b.display()))?));
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa.read(&mut ba).with_context(|| format!("reading {}", a.display()))?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n]).with_context(|| format!("reading {}", b.display()))?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// A file's extended attributes as tar's PAX records name them, sorted.
fn xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut names: Vec<_> = xattr::list(path).with_context(|| format!("listing xattrs of {}", path.display()))?.collect();
    names.sort();
    let mut out = Vec::new();
    for n in names {
        if let Some(v) = xattr::get(path, &n).with_context(|| format!("reading xattrs of {}", path.display()))? {
            out.push((format!("SCHILY.xattr.{}", n.to_string_lossy()), v));
        }
    }
    Ok(out)
}

/// The tar both deltas write: every entry of `root` but those `unchanged` says to leave out,
/// then a whiteout for each of the `earlier` paths that is gone.
fn write_tar(root: &Path, mut unchanged: impl FnMut(&Path, &fs::Metadata) -> Result<bool>, mut earlier: Vec<&Path>, out: &mut File) -> Result<u64> {
    let enc = zstd::Encoder::new(BufWriter::new(out), 3)?;
    let mut tar = tar::Builder::new(enc);
    let mut seen_links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut present: BTreeMap<PathBuf, ()> = BTreeMap::new();
    let mut count = 0u64;
    for e in walk(root) {
        let e = e?;
        let rel = e.path().strip_prefix(root)?.to_path_buf();
        let m = e.metadata().with_context(|| format!("reading {}", e.path().display()))?;
        present.insert(rel.clone(), ());
        if unchanged(&rel, &m)? {
            continue;
        }
        append(&mut tar, e.path(), &rel, &m, &mut seen_links)?;
        count += 1;
    }
    earlier.retain(|p| !present.contains_key(*p));
    earlier.sort();
    for p in earlier {
        // A removed directory's whiteout covers its children.
        if p.parent().is_some_and(|parent| !parent.as_os_str().is_empty() && !present.contains_key(parent)) {
            continue;
        }
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let wh = p.with_file_name(format!("{WHITEOUT}{name}"));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_mtime(0);
        tar.append_data(&mut h, &wh, io::empty())?;
        count += 1;
    }
    let enc = tar.into_inner()?;
    let mut buf = enc.finish()?;
    buf.flush()?;
    Ok(count)
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    rel: &Path,
    m: &fs::Metadata,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let ft = m.file_type();
    let mut h = tar::Header::new_gnu();
    h.set_mode(m.mode() & 0o7777);
    h.set_uid(m.uid() as u64);
    h.set_gid(m.gid() as u64);
    h.set_mtime(m.mtime().max(0) as u64);
    h.set_size(0);
    // Extended attributes carry file capabilities (ping's cap_net_raw, for one).
    let pax = if ft.is_symlink() { Vec::new() } else { xattrs(path)? };
    if !pax.is_empty() {
        tar.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    let what = || format!("archiving {}", path.display());
    if ft.is_dir() {
        h.set_entry_type(tar::EntryType::Directory);
        tar.append_data(&mut h, rel, io::empty()).with_context(what)?;
    } else if ft.is_symlink() {
        h.set_entry_type(tar::EntryType::Symlink);
        let target = fs_err::read_link(path).with_context(what)?;
        tar.append_link(&mut h, rel, &target).with_context(what)?;
    } else if ft.is_file() {
        if m.nlink() > 1 {
            if let Some(first) = links.get(&(m.dev(), m.ino())) {
                h.set_entry_type(tar::EntryType::Link);
                tar.append_link(&mut h, rel, first).with_context(what)?;
                return Ok(());
            }
            links.insert((m.dev(), m.ino()), rel.to_path_buf());
        }
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(m.len());
        let f = File::open(path).with_context(what)?;
        tar.append_data(&mut h, rel, BufReader::new(f).take(m.len())).with_context(what)?;
    } else if ft.is_fifo() {
        h.set_entry_type(tar::EntryType::Fifo);
        tar.append_data(&mut h, rel, io::empty()).with_context(what)?;
    }
    // Device nodes (mmdebstrap's /dev) and sockets are not archived: the booted system mounts
    // devtmpfs on /dev, and sockets are runtime state.
    Ok(())
}

/// Lays one layer tarball down on `root`, applying its whiteouts.
pub fn extract(tarball: &Path, root: &Path) -> Result<()> {
    let f = File::open(tarball).with_context(|| format!("opening {}", tarball.display()))?;
    let dec = zstd::Decoder::new(f)?;
    let mut ar = tar::Archive::new(dec);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(true);
    let mut dirs: Vec<(PathBuf, u64)> = Vec::new();
    for entry in ar.entries().with_context(|| format!("reading {}", tarball.display()))? {
        let mut entry = entry.with_context(|| format!("reading {}", tarball.display()))?;
        let rel = entry.path()?.into_owned();
        let name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(gone) = name.strip_prefix(WHITEOUT) {
            remove_any(&root.join(rel.with_file_name(gone)))?;
            continue;
        }
        let dest = root.join(&rel);
        let is_dir = entry.header().entry_type().is_dir();
        if let Ok(existing) = fs_err::symlink_metadata(&dest)
            && (existing.is_dir() != is_dir || existing.file_type().is_symlink())
        {
            remove_any(&dest)?;
        }
        if is_dir {
            dirs.push((rel.clone(), entry.header().mtime()?));
        }
        if entry.header().entry_type() == tar::EntryType::Link {
            // Link targets are relative to the archive root, which `Entry::unpack` does not know.
            let target = entry.link_name()?.context("hard link without a target")?.into_owned();
            remove_any(&dest)?;
            fs_err::hard_link(root.join(&target), &dest)
                .with_context(|| format!("linking {} to {} from {}", rel.display(), target.display(), tarball.display()))?;
            continue;
        }
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions()? {
            for ext in exts {
                let ext = ext?;
                if let Some(name) = ext.key()?.strip_prefix("SCHILY.xattr.") {
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        entry.unpack(&dest).with_context(|| format!("extracting {} from {}", rel.display(), tarball.display()))?;
        // tar's own xattr support skips some namespaces (POSIX ACLs among them): set them here.
        for (name, value) in xattrs {
            xattr::set(&dest, &name, &value).with_context(|| format!("setting xattr {name} on {}", dest.display()))?;
        }
    }
    // Entries written into a directory move its mtime: set directories' mtimes last.
    for (rel, mtime) in dirs.into_iter().rev() {
        let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
        filetime::set_symlink_file_times(root.join(rel), t, t)?;
    }
    Ok(())
}

fn remove_any(p: &Path) -> Result<()> {
    match fs_err::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs_err::remove_dir_all(p).with_context(|| format!("removing {}", p.display())),
        Ok(_) => fs_err::remove_file(p).with_context(|| format!("removing {}", p.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree_listing(root: &Path) -> Vec<String> {
        walkdir::WalkDir::new(root)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .map(|e| {
                let e = e.unwrap();
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                if e.file_type().is_symlink() {
                    format!("{rel} -> {}", fs_err::read_link(e.path()).unwrap().display())
                } else if e.file_type().is_file() {
                    format!("{rel} = {}", fs_err::read_to_string(e.path()).unwrap())
                } else {
                    format!("{rel}/")
                }
            })
            .collect()
    }

    #[test]
    fn a_layer_of_several_mib_is_laid_down_and_a_cut_one_is_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        fs_err::create_dir_all(a.join("usr/lib")).unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        fs_err::write(a.join("usr/lib/big"), &big).unwrap();
        fs_err::write(a.join("usr/lib/small"), "x").unwrap();
        let layer = tmp.path().join("layer.tar.zst");
        write_delta(&a, None, &mut File::create(&layer).unwrap()).unwrap();
        let b = tmp.path().join("b");
        fs_err::create_dir_all(&b).unwrap();
        extract(&layer, &b).unwrap();
        assert_eq!(fs_err::read(b.join("usr/lib/big")).unwrap(), big);
        assert_eq!(fs_err::read_to_string(b.join("usr/lib/small")).unwrap(), "x");
        // Cut in the middle (a cache file damaged on disk): an error naming the layer.
        let bytes = fs_err::read(&layer).unwrap();
        let cut = tmp.path().join("cut.tar.zst");
        fs_err::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let c = tmp.path().join("c");
        fs_err::create_dir_all(&c).unwrap();
        let e = format!("{:#}", extract(&cut, &c).unwrap_err());
        assert!(e.contains("cut.tar.zst"), "{e}");
    }

    #[test]
    fn delta_round_trip_applies_changes_and_removals() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        fs_err::create_dir_all(a.join("etc/old")).unwrap();
        fs_err::write(a.join("etc/keep"), "1").unwrap();
        fs_err::write(a.join("etc/change"), "1").unwrap();
        fs_err::write(a.join("etc/gone"), "1").unwrap();
        fs_err::write(a.join("etc/old/inner"), "1").unwrap();
        let base_tar = tmp.path().join("base.tar.zst");
        write_delta(&a, None, &mut File::create(&base_tar).unwrap()).unwrap();

        let before = snapshot(&a).unwrap();
        fs_err::write(a.join("etc/change"), "2").unwrap();
        fs_err::remove_file(a.join("etc/gone")).unwrap();
        fs_err::remove_dir_all(a.join("etc/old")).unwrap();
        fs_err::create_dir(a.join("new")).unwrap();
        symlink("../etc/keep", a.join("new/link")).unwrap();
        let delta_tar = tmp.path().join("delta.tar.zst");
        let n = write_delta(&a, Some(&before), &mut File::create(&delta_tar).unwrap()).unwrap();
        // etc/ (its entries changed), etc/change, new/, new/link, and two whiteouts.
        assert_eq!(n, 6);

        let b = tmp.path().join("b");
        fs_err::create_dir(&b).unwrap();
        extract(&base_tar, &b).unwrap();
        extract(&delta_tar, &b).unwrap();
        assert_eq!(tree_listing(&a), tree_listing(&b));
    }

    #[test]
    fn diff_by_content_over_a_base_gives_the_tree_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (base, root) = (tmp.path().join("base"), tmp.path().join("root"));
        for t in [&base, &root] {
            fs_err::create_dir_all(t.join("usr/bin")).unwrap();
            fs_err::create_dir_all(t.join("etc/gone.d")).unwrap();
            fs_err::write(t.join("usr/bin/same"), "same bytes").unwrap();
            fs_err::write(t.join("etc/conf"), "a").unwrap();
            fs_err::write(t.join("etc/gone"), "x").unwrap();
            fs_err::write(t.join("etc/gone.d/inner"), "x").unwrap();
            symlink("same", t.join("usr/bin/link")).unwrap();
        }
        // Same length, other bytes; a new file hard-linked to an unchanged one; removals.
        fs_err::write(root.join("etc/conf"), "b").unwrap();
        fs_err::hard_link(root.join("usr/bin/same"), root.join("usr/bin/also")).unwrap();
        fs_err::remove_file(root.join("etc/gone")).unwrap();
        fs_err::remove_dir_all(root.join("etc/gone.d")).unwrap();
        fs_err::write(root.join("usr/bin/new"), "new").unwrap();
        // Where the base has a symlink to a directory, the image has a directory: its files are
        // written even though the same path through the base's link holds the same bytes.
        symlink("usr/bin", base.join("bin")).unwrap();
        fs_err::create_dir(root.join("bin")).unwrap();
        fs_err::write(root.join("bin/same"), "same bytes").unwrap();
        for t in [&base, &root] {
            crate::files::clamp_times(t, 1_700_000_000).unwrap();
        }
        let base_tar = tmp.path().join("base.tar.zst");
        write_delta(&base, None, &mut File::create(&base_tar).unwrap()).unwrap();
        let diff_tar = tmp.path().join("diff.tar.zst");
        let n = write_diff(&root, &base, &mut File::create(&diff_tar).unwrap()).unwrap();
        // bin/, bin/same, etc/conf, usr/bin/also, usr/bin/new and two whiteouts; the unchanged
        // file, the link and the directories (same metadata) are left to the base.
        assert_eq!(n, 7);
        let back = tmp.path().join("back");
        fs_err::create_dir(&back).unwrap();
        extract(&base_tar, &back).unwrap();
        extract(&diff_tar, &back).unwrap();
        assert_eq!(tree_listing(&root), tree_listing(&back));
    }

    #[test]
    fn same_tree_gives_same_tarball() {
        let tmp = tempfile::tempdir().unwrap();
        let mut outs = Vec::new();
        for name in ["x", "y"] {
            let root = tmp.path().join(name);
            // Created in different orders: the archive must not care.
            let files = if name == "x" { ["b", "a", "c"] } else { ["c", "b", "a"] };
            fs_err::create_dir(&root).unwrap();
            for f in files {
                fs_err::write(root.join(f), f).unwrap();
            }
            crate::files::clamp_times(&root, 1_700_000_000).unwrap();
            let out = tmp.path().join(format!("{name}.tar.zst"));
            write_delta(&root, None, &mut File::create(&out).unwrap()).unwrap();
            outs.push(fs_err::read(out).unwrap());
        }
        assert_eq!(outs[0], outs[1]);
    }
}
