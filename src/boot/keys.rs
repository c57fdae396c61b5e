//! The project's signing keys: the Secure Boot db key that signs the loader and the UKI, and the
//! PCR policy key that signs the predicted PCR 11 values. Made once by `outpost keys init DIR`,
//! kept outside the repository; a build reads them from `--keys DIR` (or `OUTPOST_KEYS`). Only
//! the public halves ever enter an image or a manifest.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::Digest;

use crate::tool::Tool;

pub const DB_KEY: &str = "secure-boot-db.key";
pub const DB_CERT: &str = "secure-boot-db.crt";
/// The db certificate in DER, for firmware setup menus that enrol a key from a file.
pub const DB_CERT_DER: &str = "secure-boot-db.cer";
pub const PCR_KEY: &str = "pcr-policy.key";
pub const PCR_PUBLIC: &str = "pcr-policy.pem";

/// Host programs key handling and signing need.
pub const TOOLS: &[&str] = &["openssl", "osslsigncode", "objcopy"];

/// A checked key directory: every file present, private keys readable by their owner only,
/// each public half matching its private key.
#[derive(Debug, Clone)]
pub struct Keys {
    pub dir: PathBuf,
    pub db_key: PathBuf,
    pub db_cert: PathBuf,
    pub db_cert_der: PathBuf,
    pub pcr_key: PathBuf,
    pub pcr_public: PathBuf,
    /// The PCR policy public key, PEM: what the image carries and the LUKS2 token records.
    pub pcr_public_pem: String,
    /// sha256 of the PCR policy public key as a PKCS#1 RSAPublicKey (DER), hex: the `pkfp`
    /// systemd matches a signature to its key by.
    pub pcr_fingerprint: String,
    /// sha256 of the db certificate (DER), hex.
    pub db_cert_sha256: String,
}

impl Keys {
    /// Reads and checks `dir`; every problem names the file and what to do.
    pub fn load(dir: &Path) -> Result<Keys> {
        anyhow::ensure!(dir.is_dir(), "the key directory {} does not exist: make one with `outpost keys init {}`", dir.display(), dir.display());
        let file = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            anyhow::ensure!(p.is_file(), "{} is missing: the key directory {} is incomplete (make a new one with `outpost keys init`)", p.display(), dir.display());
            Ok(p)
        };
        let keys = Keys {
            db_key: file(DB_KEY)?,
            db_cert: file(DB_CERT)?,
            db_cert_der: file(DB_CERT_DER)?,
            pcr_key: file(PCR_KEY)?,
            pcr_public: file(PCR_PUBLIC)?,
            dir: dir.to_path_buf(),
            pcr_public_pem: String::new(),
            pcr_fingerprint: String::new(),
            db_cert_sha256: String::new(),
        };
        crate::tool::preflight(TOOLS)?;
        for private in [&keys.db_key, &keys.pcr_key] {
            anyhow::ensure!(
                !fs_err::read_to_string(private)?.contains("ENCRYPTED PRIVATE KEY"),
                "{} is protected by a passphrase: builds sign unattended, so the key must be stored decrypted (`openssl pkey -in KEY -out {}`), in a directory only the build can read",
                private.display(),
                private.display()
            );
            let mode = fs_err::metadata(private)?.permissions().mode() & 0o777;
            anyhow::ensure!(
                mode & 0o077 == 0,
                "{} is readable by others (mode {mode:04o}): a private signing key must be readable by its owner only; run `chmod 600 {}`",
                private.display(),
                private.display()
            );
        }
        let pcr_public_pem = fs_err::read_to_string(&keys.pcr_public)?;
        let derived = public_of(&keys.pcr_key)?;
        anyhow::ensure!(
            crate::format::pem_body(&derived) == crate::format::pem_body(&pcr_public_pem),
            "{} is not the public half of {}: the key directory was mixed up; use the pair `outpost keys init` made",
            keys.pcr_public.display(),
            keys.pcr_key.display()
        );
        let cert_key = Tool::new("openssl").describe(format!("reading the certificate {}", keys.db_cert.display())).args(["x509", "-noout", "-pubkey", "-in"]).arg(&keys.db_cert).output()?;
        anyhow::ensure!(
            crate::format::pem_body(&cert_key) == crate::format::pem_body(&public_of(&keys.db_key)?),
            "{} does not certify {}: the Secure Boot certificate and key do not belong together",
            keys.db_cert.display(),
            keys.db_key.display()
        );
        let der = fs_err::read(&keys.db_cert_der)?;
        let pem_as_der = crate::format::pem_der(&fs_err::read_to_string(&keys.db_cert)?).with_context(|| format!("{} holds no PEM certificate", keys.db_cert.display()))?;
        anyhow::ensure!(der == pem_as_der, "{} is not {} in DER form", keys.db_cert_der.display(), keys.db_cert.display());
        let pkcs1 = Tool::new("openssl")
            .describe(format!("reading the public key {}", keys.pcr_public.display()))
            .args(["rsa", "-pubin", "-RSAPublicKey_out", "-outform", "DER", "-in"])
            .arg(&keys.pcr_public)
            .output_bytes()?;
        Ok(Keys {
            pcr_fingerprint: hex::encode(sha2::Sha256::digest(&pkcs1)),
            db_cert_sha256: hex::encode(sha2::Sha256::digest(&der)),
            pcr_public_pem,
            ..keys
        })
    }
}

/// The public key of a private key file, PEM.
fn public_of(private: &Path) -> Result<String> {
    Ok(Tool::new("openssl").describe(format!("reading the private key {}", private.display())).args(["pkey", "-pubout", "-in"]).arg(private).output()?)
}


/// `outpost keys init DIR`: a new key directory, owner-only, outside any git work tree.
pub fn init(dir: &Path, name: &str) -> Result<Keys> {
    if let Some(repo) = crate::files::git_work_tree(dir)? {
        bail!(
            "{} is inside the git work tree {}: private signing keys must never be committed; choose a directory outside it (e.g. ~/outpost-keys, or a secrets volume of the CI runner)",
            dir.display(),
            repo.display()
        );
    }
    if dir.exists() && fs_err::read_dir(dir)?.next().is_some() {
        bail!("{} already exists and is not empty: refusing to overwrite signing keys (images signed with them would no longer update)", dir.display());
    }
    anyhow::ensure!(!name.is_empty() && !name.contains(['/', '\n', '=', ',']), "the key name `{name}` may not be empty or hold `/`, `=`, `,` or a newline");
    crate::tool::preflight(TOOLS)?;
    fs_err::create_dir_all(dir)?;
    fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let p = |f: &str| dir.join(f);
    // RSA 2048: what every UEFI firmware verifies and what TPM 2.0 PolicyAuthorize accepts
    // (systemd-cryptenroll loads the key into the TPM).
    Tool::new("openssl")
        .describe("making the Secure Boot db key and certificate")
        .args(["req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "7300", "-subj"])
        .arg(format!("/CN={name} Secure Boot db/"))
        .arg("-keyout")
        .arg(p(DB_KEY))
        .arg("-out")
        .arg(p(DB_CERT))
        .run()?;
    Tool::new("openssl").describe("writing the db certificate in DER").args(["x509", "-outform", "DER", "-in"]).arg(p(DB_CERT)).arg("-out").arg(p(DB_CERT_DER)).run()?;
    Tool::new("openssl").describe("making the PCR policy key").args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"]).arg(p(PCR_KEY)).run()?;
    Tool::new("openssl").describe("writing the PCR policy public key").args(["pkey", "-pubout", "-in"]).arg(p(PCR_KEY)).arg("-out").arg(p(PCR_PUBLIC)).run()?;
    for f in [DB_KEY, PCR_KEY] {
        fs_err::set_permissions(p(f), std::fs::Permissions::from_mode(0o600))?;
    }
    fs_err::write(p("README.txt"), README)?;
    Keys::load(dir)
}

const README: &str = "outpost signing keys (made by `outpost keys init`)

secure-boot-db.key  PRIVATE: signs the boot loader and the unified kernel image (Secure Boot db)
secure-boot-db.crt  its certificate (PEM); secure-boot-db.cer the same in DER, for firmware menus
pcr-policy.key      PRIVATE: signs the PCR 11 values of each image; the data key is sealed to it
pcr-policy.pem      its public half: every image carries it

Keep this directory off the repository and off shared disks; back it up like a root password.
Losing it means the next image cannot unlock the data of appliances already in the field
(their recovery keys still can). Build with `outpost build --keys DIR` or OUTPOST_KEYS=DIR.
";


#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("outpost-keys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn init_then_load_and_every_bad_directory_is_named() {
        // `init` installs openssl and osslsigncode when they are missing (as root), else fails.
        let d = scratch("good");
        let k = init(&d, "test").unwrap();
        assert_eq!(k.pcr_fingerprint.len(), 64);
        let err = format!("{:#}", init(&d, "test").unwrap_err());
        assert!(err.contains("already exists"), "{err}");
        // A private key readable by others.
        std::fs::set_permissions(d.join(PCR_KEY), std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", Keys::load(&d).unwrap_err());
        assert!(err.contains("pcr-policy.key is readable by others") && err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(d.join(PCR_KEY), std::fs::Permissions::from_mode(0o600)).unwrap();
        // Public halves from another key set.
        let other = scratch("other");
        init(&other, "other").unwrap();
        let mine = std::fs::read(d.join(PCR_PUBLIC)).unwrap();
        std::fs::copy(other.join(PCR_PUBLIC), d.join(PCR_PUBLIC)).unwrap();
        let err = format!("{:#}", Keys::load(&d).unwrap_err());
        assert!(err.contains("is not the public half"), "{err}");
        std::fs::write(d.join(PCR_PUBLIC), mine).unwrap();
        std::fs::copy(other.join(DB_CERT), d.join(DB_CERT)).unwrap();
        let err = format!("{:#}", Keys::load(&d).unwrap_err());
        assert!(err.contains("does not certify"), "{err}");
        std::fs::remove_file(d.join(DB_KEY)).unwrap();
        let err = format!("{:#}", Keys::load(&d).unwrap_err());
        assert!(err.contains("secure-boot-db.key is missing"), "{err}");
        for x in [&d, &other] {
            std::fs::remove_dir_all(x).unwrap();
        }
    }

    #[test]
    fn keys_are_never_made_inside_a_git_work_tree() {
        let repo = scratch("repo");
        std::fs::create_dir_all(repo.join(".git")).unwrap();
        let err = format!("{:#}", init(&repo.join("keys"), "x").unwrap_err());
        assert!(err.contains("inside the git work tree"), "{err}");
        std::fs::remove_dir_all(&repo).unwrap();
    }
}
