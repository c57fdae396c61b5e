//! The content-addressed layer store: `layers/KEY.tar.zst` plus `layers/KEY.json` describing it.
//! An entry exists only once its tarball has been renamed into place, so an interrupted build
//! leaves at most `*.partial` files, which the next build ignores and `cache gc` removes.

pub mod debs;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::files::atomic_write;
use serde::{Deserialize, Serialize};

pub struct Cache {
    root: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EntryMeta {
    pub layer: String,
    pub image: String,
    pub parent: Option<String>,
    pub created: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub key: String,
    pub meta: Option<EntryMeta>,
    pub size: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub removed: Vec<String>,
    pub kept: usize,
    pub freed: u64,
}

/// A scratch directory inside the cache (same file system as the entries, so renames are
/// atomic); removed when dropped.
pub struct WorkDir(PathBuf);

impl WorkDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("OUTPOST_KEEP_WORK").is_none() {
            let _ = fs_err::remove_dir_all(&self.0);
        }
    }
}

impl Cache {
    /// `--cache`, else `$OUTPOST_CACHE`, else `$XDG_CACHE_HOME/outpost`, else `~/.cache/outpost`.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("OUTPOST_CACHE") {
            return d.into();
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(d).join("outpost");
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp"));
        home.join(".cache").join("outpost")
    }

    pub fn open(dir: &Path) -> Result<Cache> {
        for sub in ["layers", "work"] {
            fs_err::create_dir_all(dir.join(sub)).with_context(|| format!("creating the cache directory {}", dir.join(sub).display()))?;
        }
        Ok(Cache { root: dir.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn layer_path(&self, key: &str) -> PathBuf {
        self.root.join("layers").join(format!("{key}.tar.zst"))
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.root.join("layers").join(format!("{key}.json"))
    }

    pub fn has(&self, key: &str) -> bool {
        self.layer_path(key).is_file()
    }

    pub fn work_dir(&self, what: &str) -> Result<WorkDir> {
        let dir = self.root.join("work").join(format!("{what}-{}", crate::files::unique_suffix()));
        fs_err::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(WorkDir(dir))
    }

    /// The root tree of the last build, kept for the next one to lay its layers down over
    /// (`rootfs::lay_down` reuses what is the same and fixes the rest); scratch like the rest
    /// of `work/`, which `cache gc` removes.
    fn kept_tree(&self) -> PathBuf {
        self.root.join("work").join("kept-tree")
    }

    /// Moves the kept tree to `to` (which must not exist), if there is one: of two builds
    /// asking at once, one gets it.
    pub fn take_kept_tree(&self, to: &Path) -> Result<bool> {
        match std::fs::rename(self.kept_tree(), to) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("moving {} to {}", self.kept_tree().display(), to.display())),
        }
    }

    /// Keeps `tree` for the next build, unless another build has kept one already (then
    /// `tree` goes with its work directory).
    pub fn keep_tree(&self, tree: &Path) -> Result<()> {
        if !tree.is_dir() {
            return Ok(());
        }
        match std::fs::rename(tree, self.kept_tree()) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("moving {} to {}", tree.display(), self.kept_tree().display())),
        }
    }

    /// Stores an entry: `write` fills a `.partial` file, which is synced and renamed into place.
    pub fn publish(&self, key: &str, meta: &EntryMeta, write: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
        let meta_json = serde_json::to_vec_pretty(meta)?;
        atomic_write(&self.meta_path(key), |f| Ok(f.write_all(&meta_json)?))?;
        atomic_write(&self.layer_path(key), write)
    }

    pub fn entries(&self) -> Result<Vec<Entry>> {
        let dir = self.root.join("layers");
        let mut out = Vec::new();
        for e in fs_err::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".tar.zst") else { continue };
            let meta = fs_err::read(self.meta_path(key)).ok().and_then(|b| serde_json::from_slice(&b).ok());
            out.push(Entry { key: key.to_string(), meta, size: e.metadata()?.len() });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Removes every entry whose key is not in `keep`, every leftover `.partial` file, every
    /// scratch directory of a build that is no longer running and the tree the last build kept.
    pub fn gc(&self, keep: &BTreeSet<String>) -> Result<GcReport> {
        let mut report = GcReport::default();
        let dir = self.root.join("layers");
        for e in fs_err::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let key = name.split('.').next().unwrap_or("").to_string();
            let partial = name.contains(".partial");
            if partial || !keep.contains(&key) {
                report.freed += e.metadata()?.len();
                fs_err::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
                if name.ends_with(".tar.zst") {
                    report.removed.push(key);
                }
            } else if name.ends_with(".tar.zst") {
                report.kept += 1;
            }
        }
        let work = self.root.join("work");
        for e in fs_err::read_dir(&work).with_context(|| format!("reading {}", work.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            // WHAT-PID-NANOS, where WHAT may hold dashes itself.
            let pid: Option<u32> = name.rsplit('-').nth(1).and_then(|p| p.parse().ok());
            if pid.is_none_or(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                fs_err::remove_dir_all(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
        report.removed.sort();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_no_entry_and_no_partial() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let meta = EntryMeta { layer: "l".into(), image: "i".into(), parent: None, created: 0 };
        let err = cache.publish("abc", &meta, |f| {
            f.write_all(b"half")?;
            anyhow::bail!("interrupted")
        });
        assert!(err.is_err());
        assert!(!cache.has("abc"));
        assert!(cache.entries().unwrap().is_empty());
        let leftovers: Vec<_> = fs_err::read_dir(tmp.path().join("layers")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(leftovers.iter().all(|n| !n.to_string_lossy().contains("partial")), "{leftovers:?}");
    }

    #[test]
    fn one_build_gets_the_kept_tree_and_gc_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let tree = |name: &str| {
            let t = tmp.path().join(name);
            fs_err::create_dir_all(t.join("etc")).unwrap();
            fs_err::write(t.join("etc/hostname"), name).unwrap();
            t
        };
        let (a, b) = (tree("a"), tree("b"));
        cache.keep_tree(&a).unwrap();
        assert!(!a.exists());
        // Another build had kept one already: its own stays in its work directory.
        cache.keep_tree(&b).unwrap();
        assert!(b.exists());
        let to = tmp.path().join("build-1/root");
        fs_err::create_dir_all(to.parent().unwrap()).unwrap();
        assert!(cache.take_kept_tree(&to).unwrap());
        assert_eq!(fs_err::read_to_string(to.join("etc/hostname")).unwrap(), "a");
        assert!(!cache.take_kept_tree(&tmp.path().join("build-2-root")).unwrap());
        cache.keep_tree(&b).unwrap();
        cache.gc(&BTreeSet::new()).unwrap();
        assert!(!cache.take_kept_tree(&tmp.path().join("build-3-root")).unwrap());
    }

    #[test]
    fn gc_keeps_listed_keys_and_removes_partials() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let meta = EntryMeta { layer: "l".into(), image: "i".into(), parent: None, created: 0 };
        for k in ["aaa", "bbb"] {
            cache.publish(k, &meta, |f| Ok(f.write_all(b"data")?)).unwrap();
        }
        // What a build killed mid-write leaves behind.
        fs_err::write(tmp.path().join("layers/ccc.tar.zst.partial"), b"x").unwrap();
        let report = cache.gc(&BTreeSet::from(["aaa".to_string()])).unwrap();
        assert_eq!(report.removed, vec!["bbb".to_string()]);
        assert_eq!(report.kept, 1);
        let keys: Vec<String> = cache.entries().unwrap().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, vec!["aaa".to_string()]);
        assert!(!tmp.path().join("layers/ccc.tar.zst.partial").exists());
    }
}
