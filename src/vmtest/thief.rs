//! The thief's boots, prepared on the host from the guest's own disk as someone holding the
//! stolen PC would: the appliance's kernel and initrd taken out of its UKI on the (unencrypted)
//! ESP and booted directly, or the UKI booted with a command line added in its loader entry.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::spec::Thief;
use crate::tool::Tool;

/// What appended to the command line marks a thief's boot.
pub const MARK: &str = "outpost.thief=1";

/// How QEMU starts a thief's boot, and what to put back afterwards.
pub struct Prepared {
    /// `-kernel`, `-initrd`, `-append` for a direct kernel boot.
    pub direct: Option<(PathBuf, PathBuf, String)>,
    /// The original ESP and its byte offset, to write back after the boot.
    restore: Option<(PathBuf, u64)>,
    pub what: String,
}

pub fn prepare(dir: &Path, disk: &Path, thief: Thief) -> Result<Prepared> {
    let esp = dir.join("thief-esp.img");
    let (offset, _) = super::disk::read_partition(dir, disk, "esp", &esp)?;
    let uki = dir.join("thief-uki.efi");
    fs_err::write(&uki, crate::disk::read_fat_file(&esp, &crate::format::update::uki_on_esp("a"))?)?;
    let cmdline_file = dir.join("thief-cmdline");
    let (kernel, initrd) = (dir.join("thief-vmlinuz"), dir.join("thief-initrd.img"));
    Tool::new("objcopy")
        .describe("taking the kernel, initrd and command line out of the guest's UKI")
        .arg(format!("--dump-section=.linux={}", kernel.display()))
        .arg(format!("--dump-section=.initrd={}", initrd.display()))
        .arg(format!("--dump-section=.cmdline={}", cmdline_file.display()))
        .arg(&uki)
        .arg(dir.join("thief-uki-copy.efi"))
        .run()?;
    let cmdline = format!("{} {MARK}", fs_err::read_to_string(&cmdline_file)?.trim_end_matches(['\0', '\n']));
    Ok(match thief {
        Thief::OwnKernel => {
            fs_err::remove_file(&esp)?;
            Prepared { direct: Some((kernel, initrd, cmdline)), restore: None, what: "the appliance's own kernel and initrd, taken from its UKI and booted directly with another command line".into() }
        }
        Thief::LoaderOptions => {
            let entry = &format!("loader/entries/{}", crate::format::update::entry("a", "", "", None).0);
            let text = String::from_utf8(crate::disk::read_fat_file(&esp, entry)?).context("the loader entry is not text")?;
            let restore = replace_in_esp(disk, &esp, offset, entry, format!("{text}options {cmdline}\n").as_bytes())?;
            Prepared { direct: None, restore: Some(restore), what: format!("the UKI booted with a command line added in its loader entry ({MARK})") }
        }
        Thief::TamperedUki => {
            fs_err::write(&cmdline_file, &cmdline)?;
            let tampered = dir.join("thief-uki-tampered.efi");
            Tool::new("objcopy").describe("changing the UKI's command line").arg(format!("--update-section=.cmdline={}", cmdline_file.display())).arg(&uki).arg(&tampered).run()?;
            let restore = replace_in_esp(disk, &esp, offset, &crate::format::update::uki_on_esp("a"), &fs_err::read(&tampered)?)?;
            Prepared { direct: None, restore: Some(restore), what: format!("the UKI on the ESP replaced by a copy with a changed command line ({MARK})") }
        }
    })
}

/// Writes `body` as `path` into the ESP image `esp` and the ESP into the disk; returns the
/// original ESP to put back.
fn replace_in_esp(disk: &Path, esp: &Path, offset: u64, path: &str, body: &[u8]) -> Result<(PathBuf, u64)> {
    let original = esp.with_file_name("thief-esp-original.img");
    fs_err::copy(esp, &original)?;
    crate::disk::write_fat_file(esp, path, body)?;
    super::disk::write_at(disk, esp, offset)?;
    fs_err::remove_file(esp)?;
    Ok((original, offset))
}

/// Puts the original ESP back after the thief's boot.
pub fn restore(disk: &Path, p: &Prepared) -> Result<()> {
    if let Some((original, offset)) = &p.restore {
        super::disk::write_at(disk, original, *offset)?;
        fs_err::remove_file(original)?;
    }
    Ok(())
}

