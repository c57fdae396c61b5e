//! Container images built from distribution packages: an `essential` root from the base's
//! archive plus the packages, the layer's files on top, one zstd tar layer, a config with the
//! entrypoint, user, ports and volumes. Rootless of any daemon, and byte-for-byte reproducible
//! with SOURCE_DATE_EPOCH, like apko or distroless do for their ecosystems.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

use super::oci;
use crate::cache::debs::DebPool;
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
    let root = work.join("root");
    let why = format!("building container `{name}` from {} {} packages ({})", plan.base.distro, plan.base.suite, packages.join(" "));
    // `essential`: dpkg's Essential set (a shell, coreutils) and the packages with their
    // dependencies; no apt, no init.
    let pool = DebPool::open(cache_root, &plan.base.archive())?;
    let staging = work.join("debs");
    let r = rootfs::mmdebstrap(&plan.base, "essential", packages, &root, &[], &pool, &staging, why).run();
    pool.take(&staging)?;
    r?;
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
    rootfs::scrub(&root)?;
    for f in ["etc/machine-id", "var/lib/dbus/machine-id", "var/cache/ldconfig/aux-cache"] {
        let p = root.join(f);
        if p.exists() {
            fs_err::remove_file(&p)?;
        }
    }
    let installed = rootfs::installed_packages(&root)?;
    crate::files::clamp_times(&root, epoch)?;
    let layer = work.join("layer.tar.zst");
    let mut f = fs::File::create(&layer).with_context(|| format!("creating {}", layer.display()))?;
    rootfs::write_delta(&root, None, &mut f)?;
    drop(f);
    fs_err::remove_dir_all(&root)?;
    let history = format!("outpost: {} {} packages {}", plan.base.distro, plan.base.suite, packages.join(" "));
    oci::write_image(layout, &layer, config, &plan.base.architecture, epoch, &history)?;
    Ok(installed)
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
