//! The appliance's own TLS certificate, for the stacks that serve HTTPS (`[tls]` in a layer):
//! made on the device the first time a service needs it, never in the image, so that no two
//! appliances share a key. Kept on the encrypted data partition (`/var/lib/outpost/tls`), checked
//! at every start: made again when it is missing, does not match its key (a power cut between
//! the two renames), or expires within 30 days. Its SHA-256 fingerprint goes to the console, for
//! a health worker's phone to compare with what it is shown.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::tool::Tool;

/// Renewed when it would expire within this many seconds (30 days).
const RENEW_BEFORE_S: u64 = 30 * 24 * 3600;
/// How long a device-made certificate is valid: 825 days, what browsers accept for a leaf.
const VALID_DAYS: u32 = 825;

/// What the certificate is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub fingerprint: String,
    pub not_after: String,
    /// Whether it was made by this call.
    pub made: bool,
}

fn openssl(why: &str) -> Tool {
    Tool::new("openssl").describe(why.to_string())
}

/// Whether `dir` holds a certificate that matches its key and is good for 30 more days.
fn usable(dir: &Path) -> bool {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.is_file() || !key.is_file() {
        return false;
    }
    let fresh = openssl("checking the TLS certificate's expiry").args(["x509", "-noout", "-checkend"]).arg(RENEW_BEFORE_S.to_string()).arg("-in").arg(&cert).run().is_ok();
    let from_cert = openssl("reading the TLS certificate's public key").args(["x509", "-noout", "-pubkey", "-in"]).arg(&cert).output();
    let from_key = openssl("reading the TLS key's public half").args(["pkey", "-pubout", "-in"]).arg(&key).output();
    fresh && matches!((from_cert, from_key), (Ok(a), Ok(b)) if a == b)
}

/// Makes sure `dir` holds a usable certificate for `hostname`; returns what it is.
pub fn ensure(dir: &Path, hostname: &str) -> Result<Certificate> {
    fs_err::create_dir_all(dir)?;
    fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let made = !usable(dir);
    if made {
        let (key_new, cert_new) = (dir.join("key.pem.new"), dir.join("cert.pem.new"));
        openssl("making the appliance's TLS certificate")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-sha256"])
            .arg("-days")
            .arg(VALID_DAYS.to_string())
            .arg("-subj")
            .arg(format!("/CN={hostname}"))
            .arg("-addext")
            .arg(format!("subjectAltName=DNS:{hostname},DNS:{hostname}.local"))
            .arg("-keyout")
            .arg(&key_new)
            .arg("-out")
            .arg(&cert_new)
            .run()?;
        for f in [&key_new, &cert_new] {
            fs_err::set_permissions(f, std::fs::Permissions::from_mode(0o600))?;
            fs_err::File::open(f)?.sync_all()?;
        }
        // Key first, certificate last: a cut between the two leaves a pair that does not
        // match, which the next start sees and makes again.
        fs_err::rename(&key_new, dir.join("key.pem"))?;
        fs_err::rename(&cert_new, dir.join("cert.pem"))?;
        fs_err::File::open(dir)?.sync_all().with_context(|| format!("syncing {}", dir.display()))?;
    }
    let cert = dir.join("cert.pem");
    let fp = openssl("reading the TLS certificate's fingerprint").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(&cert).output()?;
    let end = openssl("reading the TLS certificate's expiry").args(["x509", "-noout", "-enddate", "-in"]).arg(&cert).output()?;
    let fingerprint = fp.trim().rsplit('=').next().unwrap_or("").to_string();
    let not_after = end.trim().trim_start_matches("notAfter=").to_string();
    Ok(Certificate { fingerprint, not_after, made })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_made_once_per_device_kept_and_made_again_when_broken() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = ensure(a.path(), "clinic-7").unwrap();
        assert!(first.made && first.fingerprint.len() == 95, "{first:?}");
        let mode = fs_err::metadata(a.path().join("key.pem")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = Tool::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(a.path().join("cert.pem")).output().unwrap();
        assert!(text.contains("DNS:clinic-7, DNS:clinic-7.local"), "{text}");
        // Kept at the next start.
        let again = ensure(a.path(), "clinic-7").unwrap();
        assert_eq!((again.made, &again.fingerprint), (false, &first.fingerprint));
        // Another appliance has its own.
        assert_ne!(ensure(b.path(), "clinic-7").unwrap().fingerprint, first.fingerprint);
        // A key from another pair (a cut between the renames): made again.
        fs_err::copy(b.path().join("key.pem"), a.path().join("key.pem")).unwrap();
        let healed = ensure(a.path(), "clinic-7").unwrap();
        assert!(healed.made && healed.fingerprint != first.fingerprint);
    }
}
