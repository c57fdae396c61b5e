//! A cpio archive in the kernel's `newc` format, for the installer's initrd, which the kernel
//! unpacks over the image's own initrd. Written here rather than by GNU cpio: every field is
//! fixed (owner root, mtime SOURCE_DATE_EPOCH, inode numbers in order), which makes the archive
//! reproducible without a file tree to stage and touch.

/// Appends entries; `finish` adds the trailer.
#[derive(Default)]
pub struct Archive {
    out: Vec<u8>,
    ino: u32,
}

impl Archive {
    pub fn dir(&mut self, path: &str, epoch: i64) {
        self.entry(path, 0o040755, epoch, &[]);
    }

    pub fn file(&mut self, path: &str, mode: u32, epoch: i64, data: &[u8]) {
        self.entry(path, 0o100000 | mode, epoch, data);
    }

    fn entry(&mut self, path: &str, mode: u32, epoch: i64, data: &[u8]) {
        self.ino += 1;
        let name = path.trim_start_matches('/');
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let mtime = u32::try_from(epoch.max(0)).unwrap_or(u32::MAX);
        let header = format!(
            "070701{:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{mtime:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino,
            0,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, 0, &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GNU cpio lists and extracts what was written.
    #[test]
    fn gnu_cpio_reads_it() {
        if crate::tool::which("cpio").is_none() {
            eprintln!("cpio not installed; skipping");
            return;
        }
        let mut a = Archive::default();
        a.dir("usr", 1_700_000_000);
        a.file("usr/x", 0o755, 1_700_000_000, b"hello");
        let bytes = a.finish();
        let tmp = tempfile::tempdir().unwrap();
        fs_err::write(tmp.path().join("a.cpio"), &bytes).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("cpio -idm --quiet < a.cpio && cat usr/x && echo && stat -c %Y usr/x")
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n1700000000\n", "{}", String::from_utf8_lossy(&out.stderr));
    }
}
