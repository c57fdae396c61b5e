//! Whole-image encryption for disks that travel or are stored outside the clinic:
//! `NAME.raw.luks`, the raw disk inside a LUKS container, written and read back by qemu-img on
//! plain files (no device-mapper, no loop devices). cryptsetup opens it on any Linux machine and
//! QEMU boots it as it is (`-drive driver=luks,...`).
//!
//! qemu-img writes LUKS1 (PBKDF2-SHA256, aes-xts-plain64). cryptsetup 2.6's `reencrypt
//! --encrypt`, the LUKS2 route, refuses a file that carries a GPT signature (its
//! `--disable-blkid` comes with 2.7), and a disk image always does. With a random key file, as
//! the docs ask for, PBKDF2 against argon2id makes no difference.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::tool::Tool;

/// Checks a key file before any long work starts. QEMU takes the passphrase as UTF-8 text.
pub fn check_key_file(key: &Path) -> Result<()> {
    let bytes = fs_err::read(key).with_context(|| format!("reading the encryption key file {}", key.display()))?;
    if bytes.is_empty() || std::str::from_utf8(&bytes).is_err() {
        bail!(
            "the encryption key file {} must hold a non-empty text passphrase (UTF-8); make one with `openssl rand -hex 32 > {}` and keep it apart from the image",
            key.display(),
            key.display()
        );
    }
    Ok(())
}

fn secret(key: &Path) -> String {
    format!("secret,id=outpost-key,file={}", key.display())
}

/// Encrypts `raw` into `out`'s `.partial` (renamed into place with the other outputs). The
/// key slot's PBKDF2 runs about 2 s on this machine, QEMU's default.
pub fn encrypt(raw: &Path, key: &Path, out: &Path) -> Result<()> {
    encrypt_with(raw, key, out, 2000)
}

fn encrypt_with(raw: &Path, key: &Path, out: &Path, iter_time_ms: u32) -> Result<()> {
    check_key_file(key)?;
    let tmp = crate::files::partial(out);
    crate::files::remove_if_exists(&tmp)?;
    // The caller publishes it; removed here only when encrypting fails.
    let guard = crate::files::Scratch::new(&tmp);
    {
        let convert = Tool::new("qemu-img")
            .describe(format!("encrypting {}", out.display()))
            .args(["convert", "-f", "raw", "-O", "luks", "--object"])
            .arg(secret(key))
            .arg("-o")
            .arg(format!("key-secret=outpost-key,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,hash-alg=sha256,iter-time={iter_time_ms}"))
            .arg(raw)
            .arg(&tmp);
        // QEMU times PBKDF2 on the thread's CPU clock and gives up when a loaded machine shows
        // it no progress ("Unable to get accurate CPU usage"): a busy CI runner, not a fault.
        // Four tries in a row failed once while the unit tests ran beside a build: up to eight,
        // a little longer apart each time.
        let mut tries = 0;
        loop {
            match convert.run() {
                Err(e) if tries < 8 && e.to_string().contains("Unable to get accurate CPU usage") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(250 * tries));
                }
                r => break r?,
            }
        }
        fs_err::File::open(&tmp)?.sync_all()?;
    }
    guard.keep();
    Ok(())
}

/// `outpost decrypt`: the raw disk back from `encrypted`, written whole or not at all.
pub fn decrypt(encrypted: &Path, key: &Path, out: &Path) -> Result<()> {
    check_key_file(key)?;
    let tmp = crate::files::Scratch::new(crate::files::partial(out));
    crate::files::remove_if_exists(tmp.path())?;
    {
        Tool::new("qemu-img")
            .describe(format!("decrypting {}", encrypted.display()))
            .args(["convert", "--object"])
            .arg(secret(key))
            .arg("--image-opts")
            .arg(format!("driver=luks,key-secret=outpost-key,file.filename={}", encrypted.display()))
            .args(["-O", "raw"])
            .arg(tmp.path())
            .run()?;
        fs_err::File::open(tmp.path())?.sync_all()?;
        fs_err::rename(tmp.path(), out)?;
    }
    tmp.keep();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real qemu-img and cryptsetup on plain files: the plaintext is nowhere in the encrypted
    /// image, cryptsetup accepts the key, and decrypting gives the same bytes back.
    #[test]
    fn round_trip_without_device_mapper() {
        crate::tool::preflight(&["qemu-img", "cryptsetup"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let mut data = vec![0u8; 8 << 20];
        data[3 << 20..(3 << 20) + 13].copy_from_slice(b"SECRET-SEED-1");
        fs_err::write(&raw, &data).unwrap();
        let key = dir.path().join("key");
        fs_err::write(&key, "correct horse battery staple").unwrap();
        let enc = dir.path().join("disk.raw.luks");
        // A cheap key derivation: the test is about the data path, not the KDF's cost.
        encrypt_with(&raw, &key, &enc, 100).unwrap_or_else(|e| panic!("{e:#}"));
        fs_err::rename(crate::files::partial(&enc), &enc).unwrap();
        assert!(!crate::files::file_contains(&enc, b"SECRET-SEED-1").unwrap());
        Tool::new("cryptsetup").args(["open", "--test-passphrase", "--key-file"]).arg(&key).arg(&enc).run().unwrap();
        let back = dir.path().join("back.raw");
        decrypt(&enc, &key, &back).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(fs_err::read(&back).unwrap(), data);

        fs_err::write(&key, "wrong").unwrap();
        let err = format!("{:#}", decrypt(&enc, &key, &dir.path().join("no.raw")).unwrap_err());
        assert!(err.contains("decrypting"), "{err}");
        assert!(!dir.path().join("no.raw").exists() && !crate::files::partial(&dir.path().join("no.raw")).exists());
        fs_err::write(&key, [0xffu8, 0xfe]).unwrap();
        let err = format!("{:#}", encrypt(&raw, &key, &enc).unwrap_err());
        assert!(err.contains("text passphrase"), "{err}");
    }
}
