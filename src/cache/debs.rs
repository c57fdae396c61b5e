//! The package pool: every `.deb` a build downloaded, kept once by its SHA-256
//! (`debs/sha256/HEX.deb`) and found again by its name in one archive
//! (`debs/names/DISTRO-SUITE-ARCH/NAME_VERSION_ARCH.deb`, a hard link to the same file: Ubuntu
//! and Debian publish different files under the same name).
//!
//! Before a bootstrap or a layer's `apt-get install`, the archive's names are hard-linked into
//! the chroot's /var/cache/apt/archives. apt checks each file it needs against the archive's
//! signed index, as it checks a download, and fetches only what is missing or does not match.
//! Afterwards what it fetched is taken in. Entries appear by rename only, so concurrent builds
//! and an interrupted one leave the pool consistent (at worst a `.partial` file, which
//! `cache gc` removes); nothing in the pool decides what a build contains, so it does not
//! enter any cache key.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The pool of one archive (distribution, suite, architecture).
pub struct DebPool {
    sha256: PathBuf,
    names: PathBuf,
}

/// What one `take` added.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    pub packages: usize,
    pub bytes: u64,
}

impl DebPool {
    /// `cache_root/debs`, for the archive `archive` (`debian-bookworm-amd64`).
    pub fn open(cache_root: &Path, archive: &str) -> Result<DebPool> {
        let dir = cache_root.join("debs");
        let pool = DebPool { sha256: dir.join("sha256"), names: dir.join("names").join(archive) };
        for d in [&pool.sha256, &pool.names] {
            fs_err::create_dir_all(d).with_context(|| format!("creating the package pool {}", d.display()))?;
        }
        Ok(pool)
    }

    /// The directory of this archive's names, for a shell hook to link from.
    pub fn names_dir(&self) -> &Path {
        &self.names
    }

    /// Hard-links every package of this archive the pool holds into `archives`; how many.
    pub fn lend(&self, archives: &Path) -> Result<usize> {
        fs_err::create_dir_all(archives)?;
        let mut n = 0;
        for e in fs_err::read_dir(&self.names)? {
            let e = e?;
            let name = e.file_name();
            if !name.to_string_lossy().ends_with(".deb") {
                continue;
            }
            let to = archives.join(&name);
            if to.exists() {
                continue;
            }
            link_or_copy(&e.path(), &to)?;
            n += 1;
        }
        Ok(n)
    }

    /// Takes in the packages in `archives` that the pool does not hold under their name yet.
    pub fn take(&self, archives: &Path) -> Result<Taken> {
        let mut taken = Taken::default();
        let Ok(rd) = fs_err::read_dir(archives) else { return Ok(taken) };
        for e in rd {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = e.metadata()?;
            if !name.ends_with(".deb") || !meta.is_file() || name.starts_with('.') || name.contains('/') {
                continue;
            }
            let known = self.names.join(&name);
            if fs_err::metadata(&known).is_ok_and(|k| k.ino() == meta.ino() && k.dev() == meta.dev()) {
                continue;
            }
            let hex = crate::files::sha256_file(&e.path())?;
            let stored = self.sha256.join(format!("{hex}.deb"));
            if !stored.exists() {
                publish_link(&e.path(), &stored)?;
            }
            publish_link(&stored, &known)?;
            taken.packages += 1;
            taken.bytes += meta.len();
        }
        Ok(taken)
    }
}

/// Removes the `.deb` files (and apt's `partial/` downloads) from a chroot's archive directory,
/// as `apt-get clean` does: the image keeps none.
pub fn clean(archives: &Path) -> Result<()> {
    let Ok(rd) = fs_err::read_dir(archives) else { return Ok(()) };
    for e in rd {
        let e = e?;
        if e.file_name().to_string_lossy().ends_with(".deb") {
            fs_err::remove_file(e.path())?;
        }
    }
    let partial = archives.join("partial");
    if partial.is_dir() {
        for e in fs_err::read_dir(&partial)? {
            let p = e?.path();
            if p.is_file() {
                fs_err::remove_file(&p)?;
            }
        }
    }
    Ok(())
}

/// `to` appears whole, as a hard link to `from` (a copy across file systems), by rename.
fn publish_link(from: &Path, to: &Path) -> Result<()> {
    let partial = crate::files::partial(to);
    crate::files::remove_if_exists(&partial)?;
    link_or_copy(from, &partial)?;
    fs_err::rename(&partial, to).with_context(|| format!("storing {} in the package pool", to.display()))
}

fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if std::fs::hard_link(from, to).is_err() {
        fs_err::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_are_kept_once_by_content_and_lent_by_name_per_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let debian = DebPool::open(tmp.path(), "debian-bookworm-amd64").unwrap();
        let ubuntu = DebPool::open(tmp.path(), "ubuntu-noble-amd64").unwrap();
        let chroot = tmp.path().join("a");
        fs_err::create_dir_all(&chroot).unwrap();
        fs_err::write(chroot.join("zstd_1.5_amd64.deb"), b"debian's zstd").unwrap();
        fs_err::write(chroot.join("lock"), b"").unwrap();
        assert_eq!(debian.take(&chroot).unwrap(), Taken { packages: 1, bytes: 13 });
        // Taken again from a chroot it was lent to: nothing new.
        let b = tmp.path().join("b");
        assert_eq!(debian.lend(&b).unwrap(), 1);
        assert_eq!(fs_err::read(b.join("zstd_1.5_amd64.deb")).unwrap(), b"debian's zstd");
        assert_eq!(debian.take(&b).unwrap(), Taken::default());
        // The same name in another archive is another file; the same content is stored once.
        let c = tmp.path().join("c");
        fs_err::create_dir_all(&c).unwrap();
        fs_err::write(c.join("zstd_1.5_amd64.deb"), b"ubuntu's zstd").unwrap();
        fs_err::write(c.join("tzdata_1_all.deb"), b"debian's zstd").unwrap();
        assert_eq!(ubuntu.take(&c).unwrap().packages, 2);
        assert_eq!(fs_err::read_dir(tmp.path().join("debs/sha256")).unwrap().count(), 2);
        let d = tmp.path().join("d");
        ubuntu.lend(&d).unwrap();
        assert_eq!(fs_err::read(d.join("zstd_1.5_amd64.deb")).unwrap(), b"ubuntu's zstd");
        // apt replaced a lent file that did not match its index (by rename, as it does): the
        // pool's copy is untouched, and the new file is taken under the name.
        fs_err::write(b.join("new.partial"), b"debian's zstd, fixed").unwrap();
        fs_err::rename(b.join("new.partial"), b.join("zstd_1.5_amd64.deb")).unwrap();
        assert_eq!(debian.take(&b).unwrap().packages, 1);
        assert_eq!(fs_err::read(debian.names_dir().join("zstd_1.5_amd64.deb")).unwrap(), b"debian's zstd, fixed");
        clean(&b).unwrap();
        assert_eq!(fs_err::read_dir(&b).unwrap().count(), 0);
        assert!(debian.names_dir().join("zstd_1.5_amd64.deb").exists(), "clean removes the chroot's links only");
    }
}
