//! Checks of a powered-off guest disk from the host, as someone holding the stolen disk would
//! make them: LUKS2 headers and tokens, a recovery key that opens, strings that must not be
//! readable anywhere.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::spec::DiskCheck;
use crate::tool::Tool;

/// Checks the powered-off disk from the host, as someone holding the stolen disk would.
pub fn check(dir: &Path, overlay: &Path, d: &DiskCheck, saved: &BTreeMap<String, String>) -> Result<String> {
    let raw = dir.join("disk-check.raw");
    Tool::new("qemu-img").describe("reading the guest's disk").args(["convert", "-O", "raw"]).arg(overlay).arg(&raw).run()?;
    let result = (|| {
        let mut seen = Vec::new();
        if let Some(needle) = &d.absent {
            if crate::output::file_contains(&raw, needle.as_bytes())? {
                bail!("`{needle}` is readable in the disk file");
            }
            seen.push(format!("`{needle}` appears nowhere in the disk"));
        }
        let (offset, size, _) = crate::disk::find_partition(&raw, &d.partition)?;
        let part = dir.join("disk-check-partition.img");
        copy_range(&raw, offset, size, &part)?;
        let r = (|| {
            if let Some(token) = &d.luks2_token {
                let dump = Tool::new("cryptsetup").describe("reading the LUKS2 header").arg("luksDump").arg(&part).output()?;
                if !dump.lines().any(|l| l.starts_with("Version:") && l.split_whitespace().last() == Some("2")) {
                    bail!("not LUKS2:\n{dump}");
                }
                if !dump.lines().any(|l| l.trim_start().split_once(": ").is_some_and(|(n, t)| n.chars().all(|c| c.is_ascii_digit()) && t.trim() == token)) {
                    bail!("LUKS2 without a `{token}` token:\n{dump}");
                }
                seen.push(format!("LUKS2 with a {token} token"));
            }
            if let Some(name) = &d.opens_with {
                let key = saved.get(name).with_context(|| format!("nothing was saved as `{name}`"))?;
                let key_file = dir.join("disk-check.key");
                std::fs::write(&key_file, key.as_bytes())?;
                let r = Tool::new("cryptsetup").describe(format!("opening the partition with {name}")).args(["open", "--test-passphrase", "--key-file"]).arg(&key_file).arg(&part).run();
                std::fs::remove_file(&key_file)?;
                r?;
                seen.push(format!("{name} opens it"));
            }
            anyhow::Ok(())
        })();
        std::fs::remove_file(&part)?;
        r?;
        anyhow::Ok(seen)
    })();
    std::fs::remove_file(&raw)?;
    Ok(format!("disk partition `{}`: {}", d.partition, result?.join(", ")))
}


/// Copies `size` bytes at `offset` of `src` into a new file.
fn copy_range(src: &Path, offset: u64, size: u64, dst: &Path) -> Result<()> {
    let mut f = File::open(src).with_context(|| format!("reading {}", src.display()))?;
    f.seek(SeekFrom::Start(offset))?;
    let mut out = File::create(dst).with_context(|| format!("writing {}", dst.display()))?;
    std::io::copy(&mut f.take(size), &mut out)?;
    out.flush()?;
    Ok(())
}
