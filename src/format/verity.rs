//! The root's dm-verity hash tree: made by the build, made again by the updater for a new
//! release's slot. Both must use the same parameters or the signed root hash will not match.

use std::path::Path;

use anyhow::{Context, Result};

use crate::tool::Tool;

/// Runs `veritysetup format` over the first `data_blocks` 4 KiB blocks of `data` (all of it when
/// `None`), writing the tree to `hash`; returns the root hash.
pub fn format(data: &Path, hash: &Path, data_blocks: Option<u64>, salt: &str, uuid: &str, what: &str) -> Result<String> {
    let mut tool = Tool::new("veritysetup")
        .describe(what)
        .args(["format", "--hash=sha256", "--data-block-size=4096", "--hash-block-size=4096"])
        .arg(format!("--salt={salt}"))
        .arg(format!("--uuid={uuid}"));
    if let Some(n) = data_blocks {
        tool = tool.arg(format!("--data-blocks={n}"));
    }
    let out = tool.arg(data).arg(hash).output()?;
    let root_hash = out
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .with_context(|| format!("veritysetup printed no root hash: {out}"))?;
    anyhow::ensure!(root_hash.len() == 64 && root_hash.bytes().all(|b| b.is_ascii_hexdigit()), "veritysetup printed an odd root hash `{root_hash}`");
    Ok(root_hash)
}
