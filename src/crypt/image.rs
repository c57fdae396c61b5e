//! Whole-image encryption for disks that travel or are stored outside the clinic:
//! `NAME.raw.luks` (the raw disk encrypted in place, same size) and `NAME.raw.luks-header` (its
//! LUKS2 header, detached). A detached header is what lets both directions run offline on plain
//! files, without device-mapper or loop devices: `cryptsetup reencrypt --encrypt` and
//! `--decrypt --header`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::tool::Tool;

/// The header file that goes with an encrypted image.
pub fn header_path(encrypted: &Path) -> PathBuf {
    let mut s = encrypted.as_os_str().to_os_string();
    s.push("-header");
    PathBuf::from(s)
}

/// Checks a key file before any long work starts.
pub fn check_key_file(key: &Path) -> Result<()> {
    let meta = fs::metadata(key).with_context(|| format!("reading the encryption key file {}", key.display()))?;
    if !meta.is_file() || meta.len() == 0 {
        bail!("the encryption key file {} is empty or not a file; write a passphrase or random bytes into it (for example `head -c 64 /dev/urandom > {}`)", key.display(), key.display());
    }
    Ok(())
}

/// Encrypts `raw` into `out` and `header_path(out)`, both written whole or not at all. The key
/// slot uses argon2id at the cost cryptsetup measures for this machine (about 2 s).
pub fn encrypt(raw: &Path, key: &Path, out: &Path) -> Result<()> {
    encrypt_with(raw, key, out, &["--pbkdf", "argon2id"])
}

fn encrypt_with(raw: &Path, key: &Path, out: &Path, kdf: &[&str]) -> Result<()> {
    let header = header_path(out);
    let (out_tmp, header_tmp) = (crate::output::partial(out), crate::output::partial(&header));
    for p in [&out_tmp, &header_tmp] {
        let _ = fs::remove_file(p);
    }
    let r = (|| {
        Tool::new("cp").describe("copying the disk to encrypt").args(["--sparse=always"]).arg(raw).arg(&out_tmp).run()?;
        Tool::new("cryptsetup")
            .describe(format!("encrypting {}", out.display()))
            .args(["reencrypt", "--encrypt", "--batch-mode", "--type", "luks2", "--cipher", "aes-xts-plain64", "--key-size", "512"])
            .args(["--sector-size", "4096"])
            .args(kdf)
            .args(["--label", "outpost-image", "--header"])
            .arg(&header_tmp)
            .arg("--key-file")
            .arg(key)
            .arg(&out_tmp)
            .run()?;
        fs::File::open(&out_tmp)?.sync_all()?;
        fs::File::open(&header_tmp)?.sync_all()?;
        anyhow::Ok(())
    })();
    if r.is_err() {
        for p in [&out_tmp, &header_tmp] {
            let _ = fs::remove_file(p);
        }
    }
    r
}

/// Renames the encrypted pair into place (after the manifest is written).
pub fn partial_pair(out: &Path) -> [PathBuf; 2] {
    [out.to_path_buf(), header_path(out)]
}

/// `outpost decrypt`: the raw disk back from `encrypted` and its header, without touching them.
pub fn decrypt(encrypted: &Path, key: &Path, out: &Path) -> Result<()> {
    let header = header_path(encrypted);
    if !header.is_file() {
        bail!("{} has no header beside it: expected {}", encrypted.display(), header.display());
    }
    check_key_file(key)?;
    let tmp = crate::output::partial(out);
    let header_copy = crate::output::partial(&header_path(out));
    let r = (|| {
        Tool::new("cp").describe("copying the encrypted disk").args(["--sparse=always"]).arg(encrypted).arg(&tmp).run()?;
        // Decryption consumes the header: work on a copy.
        fs::copy(&header, &header_copy).with_context(|| format!("copying {}", header.display()))?;
        // A plain file cannot be an active mapping, which is all --force-offline-reencrypt
        // waives.
        Tool::new("cryptsetup")
            .describe(format!("decrypting {}", encrypted.display()))
            .args(["reencrypt", "--decrypt", "--batch-mode", "--force-offline-reencrypt", "--header"])
            .arg(&header_copy)
            .arg("--key-file")
            .arg(key)
            .arg(&tmp)
            .run()?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, out).with_context(|| format!("renaming into {}", out.display()))?;
        anyhow::Ok(())
    })();
    let _ = fs::remove_file(&header_copy);
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real cryptsetup on plain files: the plaintext is nowhere in the encrypted image, and
    /// decrypting gives the same bytes back.
    #[test]
    fn round_trip_without_device_mapper() {
        crate::tool::preflight(&["cryptsetup"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let mut data = vec![0u8; 8 << 20];
        data[3 << 20..(3 << 20) + 13].copy_from_slice(b"SECRET-SEED-1");
        fs::write(&raw, &data).unwrap();
        let key = dir.path().join("key");
        fs::write(&key, "correct horse battery staple").unwrap();
        let enc = dir.path().join("disk.raw.luks");
        // A cheap key derivation: the test is about the data path, not the KDF's cost.
        encrypt_with(&raw, &key, &enc, &["--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32768"]).unwrap_or_else(|e| panic!("{e:#}"));
        for p in partial_pair(&enc) {
            fs::rename(crate::output::partial(&p), &p).unwrap();
        }
        assert!(!crate::output::file_contains(&enc, b"SECRET-SEED-1").unwrap());
        let back = dir.path().join("back.raw");
        decrypt(&enc, &key, &back).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(fs::read(&back).unwrap(), data);
        fs::write(&key, "wrong").unwrap();
        let err = format!("{:#}", decrypt(&enc, &key, &dir.path().join("no.raw")).unwrap_err());
        assert!(err.contains("decrypting"), "{err}");
        assert!(!dir.path().join("no.raw").exists() && !crate::output::partial(&dir.path().join("no.raw")).exists());
    }
}
