//! Container images built from distribution packages: an `essential` root from the base's
//! archive plus the packages, the layer's files on top, as two zstd tar layers (the Essential
//! set every such image shares, then what this image adds to it), a config with the
//! entrypoint, user, ports and volumes. Rootless of any daemon, and byte-for-byte reproducible
//! with SOURCE_DATE_EPOCH, like apko or distroless do for their ecosystems.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::oci;
use crate::cache::debs::DebPool;
use crate::files::atomic_write;
use crate::plan::key::hash_field;
use crate::plan::BuildPlan;
use crate::rootfs;
use crate::spec::container::ImageConfig;

#[allow(clippy::too_many_arguments)]
pub fn build(
    plan: &BuildPlan,
    name: &str,
    packages: &[String],
    files: Option<&Path>,
    config: &ImageConfig,
    remove: &[String],
    work: &Path,
    layout: &Path,
    cache_root: &Path,
    epoch: i64,
) -> Result<Vec<(String, String)>> {
    let base_layer = base(plan, work, cache_root, epoch)?;
    let root = work.join("root");
    let why = format!("building container `{name}` from {} {} packages ({})", plan.base.distro, plan.base.suite, packages.join(" "));
    bootstrap(plan, packages, &root, cache_root, why)?;
    if let Some(dir) = files {
        copy_tree(dir, &root)?;
    }
    for r in remove {
        for p in expand(&root, r)? {
            if p.is_dir() && !p.is_symlink() {
                fs_err::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            } else {
                fs_err::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
    }
    prepare(&root, epoch)?;
    let installed = rootfs::installed_packages(&root)?;
    // Layer 2: what the packages, files and removals made of the base, by content.
    let base_root = work.join("base");
    fs_err::create_dir_all(&base_root)?;
    rootfs::extract(&base_layer, &base_root)?;
    let layer = work.join("layer.tar.zst");
    let mut f = fs::File::create(&layer).with_context(|| format!("creating {}", layer.display()))?;
    rootfs::write_diff(&root, &base_root, &mut f)?;
    drop(f);
    fs_err::remove_dir_all(&root)?;
    fs_err::remove_dir_all(&base_root)?;
    // The cache keeps the base; the layout gets its own link to it (or copy, across devices).
    let base_copy = work.join("base.tar.zst");
    if fs::hard_link(&base_layer, &base_copy).is_err() {
        fs_err::copy(&base_layer, &base_copy)?;
    }
    let (distro, suite) = (&plan.base.distro, &plan.base.suite);
    let layers = [
        (base_copy, format!("outpost: {distro} {suite} essential")),
        (layer, format!("outpost: {distro} {suite} packages {}", packages.join(" "))),
    ];
    oci::write_image(layout, &layers, config, &plan.base.architecture, epoch)?;
    Ok(installed)
}

/// The layer every image built from the base's archive starts with: dpkg's Essential set alone
/// (a shell, coreutils), built once per archive state and kept in the cache, so that the image
/// store in the root holds it once however many images share it.
fn base(plan: &BuildPlan, work: &Path, cache_root: &Path, epoch: i64) -> Result<PathBuf> {
    let mut h = Sha256::new();
    hash_field(&mut h, "format", super::FORMAT.as_bytes());
    // The archive's state is pinned with the base layer's key, as for the images' own keys.
    hash_field(&mut h, "base", plan.layers[0].key.as_bytes());
    hash_field(&mut h, "epoch", epoch.to_string().as_bytes());
    let dest = cache_root.join("oci").join("bases").join(format!("{}.tar.zst", hex::encode(h.finalize())));
    if dest.is_file() {
        return Ok(dest);
    }
    let root = work.join("base-root");
    let why = format!("building the {} {} essential base of the containers", plan.base.distro, plan.base.suite);
    bootstrap(plan, &[], &root, cache_root, why)?;
    prepare(&root, epoch)?;
    fs_err::create_dir_all(dest.parent().expect("bases dir"))?;
    // Written whole or not at all: builds running side by side may both write it, the same bytes.
    atomic_write(&dest, |f| rootfs::write_delta(&root, None, f).map(|_| ()))?;
    fs_err::remove_dir_all(&root)?;
    Ok(dest)
}

/// `essential`: dpkg's Essential set (a shell, coreutils) and the packages with their
/// dependencies; no apt, no init.
fn bootstrap(plan: &BuildPlan, packages: &[String], root: &Path, cache_root: &Path, why: String) -> Result<()> {
    let pool = DebPool::open(cache_root, &plan.base.archive())?;
    // The packages this run downloaded, for the pool; one directory per run.
    let staging = root.with_extension("debs");
    let r = rootfs::mmdebstrap(&plan.base, "essential", packages, root, &[], &pool, &staging, why).run();
    pool.take(&staging)?;
    r?;
    if staging.exists() {
        fs_err::remove_dir_all(&staging)?;
    }
    Ok(())
}

/// What no image keeps: build logs and caches, the build host's machine ID, ldconfig's cache of
/// the build; times clamped to `epoch`.
fn prepare(root: &Path, epoch: i64) -> Result<()> {
    rootfs::scrub(root)?;
    for f in ["etc/machine-id", "var/lib/dbus/machine-id", "var/cache/ldconfig/aux-cache"] {
        let p = root.join(f);
        if p.exists() {
            fs_err::remove_file(&p)?;
        }
    }
    crate::files::clamp_times(root, epoch)
}

/// The paths under `root` that `pattern` (absolute; `*` matches within one path component)
/// names, sorted; none when nothing matches.
fn expand(root: &Path, pattern: &str) -> Result<Vec<std::path::PathBuf>> {
    let mut found = vec![root.to_path_buf()];
    for part in pattern.trim_start_matches('/').split('/').filter(|p| !p.is_empty()) {
        let mut next = Vec::new();
        for dir in &found {
            if !part.contains('*') {
                let p = dir.join(part);
                if p.exists() || p.is_symlink() {
                    next.push(p);
                }
                continue;
            }
            let Ok(rd) = fs_err::read_dir(dir) else { continue };
            for e in rd {
                let e = e?;
                if wildcard(part, &e.file_name().to_string_lossy()) {
                    next.push(e.path());
                }
            }
        }
        next.sort();
        found = next;
    }
    Ok(found.into_iter().filter(|p| p != root).collect())
}

/// `*` matches any run of characters; everything else matches itself.
fn wildcard(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else { return false };
            (0..=tail.len()).filter(|i| tail.is_char_boundary(*i)).any(|i| wildcard(rest, &tail[i..]))
        }
    }
}

/// Copies a layer's directory onto the image's root: owned by root, executable bits kept.
fn copy_tree(from: &Path, root: &Path) -> Result<()> {
    for rel in crate::spec::list_tree(from) {
        let src = from.join(&rel);
        let dst = root.join(&rel);
        let m = fs_err::symlink_metadata(&src)?;
        if m.is_dir() {
            fs_err::create_dir_all(&dst)?;
        } else if m.file_type().is_symlink() {
            if dst.exists() || dst.is_symlink() {
                fs_err::remove_file(&dst)?;
            }
            std::os::unix::fs::symlink(fs_err::read_link(&src)?, &dst)?;
        } else {
            if dst.is_symlink() {
                fs_err::remove_file(&dst)?;
            }
            fs_err::copy(&src, &dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
            let mode = if m.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
            fs_err::set_permissions(&dst, fs::Permissions::from_mode(mode))?;
            std::os::unix::fs::lchown(&dst, Some(0), Some(0))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_patterns() {
        assert!(wildcard("libLLVM-*.so*", "libLLVM-14.so.1"));
        assert!(wildcard("*", "x"));
        assert!(!wildcard("libLLVM-*.so*", "libz3.so.4"));
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        for f in ["usr/lib/x86_64-linux-gnu/libLLVM-14.so.1", "usr/lib/x86_64-linux-gnu/libc.so.6", "usr/lib/postgresql/15/lib/llvmjit.so"] {
            fs_err::create_dir_all(r.join(f).parent().unwrap()).unwrap();
            fs_err::write(r.join(f), b"").unwrap();
        }
        assert_eq!(expand(r, "/usr/lib/*/libLLVM-*").unwrap(), [r.join("usr/lib/x86_64-linux-gnu/libLLVM-14.so.1")]);
        assert_eq!(expand(r, "/usr/lib/postgresql/*/lib/llvmjit*").unwrap(), [r.join("usr/lib/postgresql/15/lib/llvmjit.so")]);
        assert!(expand(r, "/etc/nothing").unwrap().is_empty());
        assert!(expand(r, "/").unwrap().is_empty());
    }
}
