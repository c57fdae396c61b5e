//! The appliance's read-only container image store (`/usr/lib/containers/storage`, which podman
//! reads as an additional image store): filled by skopeo at build time, then made a function of
//! its inputs: containers/storage records creation times, random short link names for overlay
//! layers and random tokens in its lock files.

use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::oci::{self, Layout};

/// Copies the image of `layout` into the overlay store at `store` as `name`.
pub fn add(layout: &Layout, store: &Path, name: &str, what: &str) -> Result<()> {
    fs_err::create_dir_all(store)?;
    let run = run_root()?;
    let result = super::skopeo(format!("copying {what} into the image's container store"))
        .args(["copy", "--quiet", "--preserve-digests"])
        .arg(format!("oci:{}:{}", layout.0.display(), oci::REF_NAME))
        .arg(format!("containers-storage:[overlay@{}+{}]{name}", store.display(), run.display()))
        .run();
    fs_err::remove_dir_all(&run).with_context(|| format!("removing {}", run.display()))?;
    Ok(result?)
}

/// A run root for containers/storage (lock and mount state of this one copy), outside the image.
fn run_root() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("outpost-runroot-{}", crate::files::unique_suffix()));
    fs_err::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

/// A short link name derived from the layer ID, in the alphabet containers/storage uses.
fn link_name(layer_id: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    Sha256::digest(layer_id.as_bytes()).iter().take(26).map(|b| ALPHABET[(*b % 32) as usize] as char).collect()
}

/// Rewrites what containers/storage made random or time-dependent.
pub fn normalize(store: &Path, epoch: i64) -> Result<()> {
    let overlay = store.join("overlay");
    let links = overlay.join("l");
    let mut renamed: Vec<(String, String)> = Vec::new();
    for e in fs_err::read_dir(&overlay).with_context(|| format!("reading {}", overlay.display()))? {
        let dir = e?.path();
        let link_file = dir.join("link");
        if !link_file.is_file() {
            continue;
        }
        let id = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let old = fs_err::read_to_string(&link_file)?.trim().to_string();
        let new = link_name(&id);
        if old != new {
            let old_link = links.join(&old);
            if old_link.is_symlink() {
                fs_err::remove_file(&old_link)?;
            }
            let new_link = links.join(&new);
            if new_link.is_symlink() {
                fs_err::remove_file(&new_link)?;
            }
            std::os::unix::fs::symlink(format!("../{id}/diff"), &new_link)?;
            fs_err::write(&link_file, &new)?;
            renamed.push((old, new));
        }
    }
    // `lower` lists the parents' links: l/AAA:l/BBB.
    for e in fs_err::read_dir(&overlay)? {
        let lower = e?.path().join("lower");
        if lower.is_file() {
            let mut text = fs_err::read_to_string(&lower)?;
            for (old, new) in &renamed {
                text = text.replace(&format!("l/{old}"), &format!("l/{new}"));
            }
            fs_err::write(&lower, text)?;
        }
    }
    let created = oci::rfc3339(epoch);
    for f in ["overlay-layers/layers.json", "overlay-images/images.json"] {
        let p = store.join(f);
        if !p.is_file() {
            continue;
        }
        let mut v: serde_json::Value = serde_json::from_slice(&fs_err::read(&p)?).with_context(|| format!("parsing {}", p.display()))?;
        if let Some(items) = v.as_array_mut() {
            for item in items {
                if let Some(o) = item.as_object_mut()
                    && o.contains_key("created")
                {
                    o.insert("created".into(), serde_json::Value::String(created.clone()));
                }
            }
        }
        fs_err::write(&p, serde_json::to_vec(&v)?).with_context(|| format!("writing {}", p.display()))?;
    }
    // Lock files hold a token of the last writer; an empty one is "never written", which a
    // read-only store is.
    for e in walkdir::WalkDir::new(store).max_depth(2) {
        let e = e?;
        if e.file_type().is_file() && e.file_name().to_string_lossy().ends_with(".lock") {
            fs_err::write(e.path(), b"")?;
        }
    }
    for d in ["tmp", "mounts"] {
        let p = store.join(d);
        if p.is_dir() {
            fs_err::remove_dir_all(&p)?;
            fs_err::create_dir(&p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_are_stable_and_in_the_alphabet() {
        let a = link_name("5d3ce919e80478feb9383232de48d35bcab756577f105c8eca94fb0923aa7710");
        assert_eq!(a.len(), 26);
        assert!(a.chars().all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c)));
        assert_eq!(a, link_name("5d3ce919e80478feb9383232de48d35bcab756577f105c8eca94fb0923aa7710"));
        assert_ne!(a, link_name("other"));
    }
}
