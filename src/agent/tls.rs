//! The appliance's own TLS certificate, for the stacks that serve HTTPS (`[tls]` in a layer),
//! never in the image, so that no two appliances share a key. Three kinds, by what the seed
//! brought (`take_from_seed`, at every boot):
//! - the site's own certificate (`[tls]` in the site file): installed as it is;
//! - an issuing certificate from the deployment CA (`personalize --ca`), name-constrained to
//!   this box: the box makes its key and certificate and signs them with it, so the
//!   deployment's phones trust it, and renews it by itself;
//! - nothing: the box makes a self-signed certificate.
//!
//! Kept on the encrypted data partition (`/var/lib/outpost/tls`, which stacks mount; the
//! seed's material in `tls-source`, which they do not), checked at every start: made again
//! when missing, not matching its key (a power cut between the two renames), not signed by the
//! current issuer, or expiring within 30 days (a start that finds the files of the last
//! passed check before its renewal date checks nothing: `Checked`). Its SHA-256 fingerprint
//! goes to the console, for a health worker's phone to compare with what it is shown.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::format::seed;
use crate::format::stack::{SEED_CA, SEED_ISSUER_CERT, SEED_ISSUER_KEY, SEED_NAMES, SEED_SITE_CERT, SEED_SITE_KEY};
use crate::tool::Tool;

/// Renewed when it would expire within this many seconds (30 days).
const RENEW_BEFORE_S: u64 = 30 * 24 * 3600;
/// How long a certificate the box makes is valid: 825 days, what browsers accept for a leaf.
const VALID_DAYS: u32 = 825;

/// What the certificate is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub fingerprint: String,
    pub not_after: String,
    /// Whether it was made (or installed) by this call.
    pub made: bool,
    /// "self-signed", "signed by the deployment CA's issuer for this box", "the site's own".
    pub kind: &'static str,
}

fn openssl(why: &str) -> Tool {
    Tool::new("openssl").describe(why.to_string())
}

/// The seed's TLS sets: (kind, its files, the private key among them).
const SEED_SETS: [(&str, &[&str], &str); 2] = [
    ("the site's own certificate", &[SEED_SITE_KEY, SEED_SITE_CERT], SEED_SITE_KEY),
    ("the issuing certificate from the deployment CA", &[SEED_ISSUER_KEY, SEED_ISSUER_CERT, SEED_CA, SEED_NAMES], SEED_ISSUER_KEY),
];

/// At every boot (`seed apply`): a TLS set in the seed whose key is still there is taken onto
/// the data partition (`source`, replacing what an earlier seed brought), then its key is
/// overwritten with zeros in the seed. A cut before the zeroing takes it again next boot; with
/// the data partition closed it stays in the seed. Returns what was taken.
pub fn take_from_seed(dev: &Path, source: &Path, data_closed: bool) -> Result<Option<&'static str>> {
    for (kind, files, key) in SEED_SETS {
        match seed::read_tls(dev, key)? {
            Some(k) if k.iter().any(|b| *b != 0) => {}
            _ => continue,
        }
        if data_closed {
            super::say(&format!("tls: the seed holds {kind}; it stays there until the data partition opens"));
            return Ok(None);
        }
        let parent = source.parent().context("the TLS source directory has a parent")?;
        let (new, old) = (source.with_extension("new"), source.with_extension("old"));
        for d in [&new, &old] {
            crate::files::remove_if_exists(d)?;
        }
        fs_err::create_dir_all(&new)?;
        fs_err::set_permissions(&new, std::fs::Permissions::from_mode(0o700))?;
        for f in files {
            let bytes = seed::read_tls(dev, f)?.with_context(|| format!("the seed's tls folder has {key} but not {f}"))?;
            let p = new.join(f);
            fs_err::write(&p, &bytes)?;
            fs_err::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
            fs_err::File::open(&p)?.sync_all()?;
        }
        fs_err::File::open(&new)?.sync_all()?;
        if source.exists() {
            fs_err::rename(source, &old)?;
        }
        fs_err::rename(&new, source)?;
        fs_err::File::open(parent)?.sync_all().with_context(|| format!("syncing {}", parent.display()))?;
        crate::files::remove_if_exists(&old)?;
        seed::zero_tls(dev, key)?;
        super::say(&format!("tls: took {kind} from the seed onto the encrypted data partition and erased its key from the seed"));
        return Ok(Some(kind));
    }
    Ok(None)
}

/// Whether `dir` holds a certificate that matches its key and is good for 30 more days.
fn usable(dir: &Path) -> bool {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.is_file() || !key.is_file() {
        return false;
    }
    // The expiry check (exit status) and the public key in one process.
    let checked = openssl("checking the TLS certificate's expiry and public key")
        .args(["x509", "-noout", "-pubkey", "-checkend"])
        .arg(RENEW_BEFORE_S.to_string())
        .arg("-in")
        .arg(&cert)
        .output_with_status();
    let from_key = openssl("reading the TLS key's public half").args(["pkey", "-pubout", "-in"]).arg(&key).output();
    matches!((checked, from_key), (Ok((0, a)), Ok(b)) if !b.trim().is_empty() && a.contains(b.trim()))
}

/// Whether the certificate in `dir` was signed by the issuer in `source` (within its names).
fn issued_by(dir: &Path, source: &Path) -> bool {
    openssl("checking the TLS certificate against the box's issuer")
        .args(["verify", "-partial_chain", "-CAfile"])
        .arg(source.join(SEED_ISSUER_CERT))
        .arg(dir.join("cert.pem"))
        .run()
        .is_ok()
}

/// Writes `key` then `cert` into `dir` (each whole, synced): a cut between the two renames
/// leaves a pair that does not match, which the next start sees and makes again.
fn install(dir: &Path, key: &[u8], cert: &[u8]) -> Result<()> {
    for (name, bytes) in [("key.pem", key), ("cert.pem", cert)] {
        let new = dir.join(format!("{name}.new"));
        fs_err::write(&new, bytes)?;
        fs_err::set_permissions(&new, std::fs::Permissions::from_mode(0o600))?;
        fs_err::File::open(&new)?.sync_all()?;
        fs_err::rename(&new, dir.join(name))?;
    }
    fs_err::File::open(dir)?.sync_all().with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// A new key and certificate for `names` (`DNS:x`, `IP:y`): self-signed, or signed by the
/// issuer in `source` and chained to it (the certificate file holds both, as servers send them).
fn make(dir: &Path, hostname: &str, names: &[String], issuer: Option<&Path>) -> Result<()> {
    let (key_new, csr, leaf) = (dir.join("key.pem.made"), dir.join("cert.csr"), dir.join("cert.pem.made"));
    let san = format!("subjectAltName={}", names.join(","));
    let mut req = openssl("making the appliance's TLS key").args(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-sha256", "-subj"]).arg(format!("/CN={hostname}")).arg("-addext").arg(&san);
    req = match issuer {
        None => req.args(["-x509", "-days"]).arg(VALID_DAYS.to_string()).arg("-out").arg(&leaf),
        Some(_) => req.args(["-new", "-addext", "extendedKeyUsage=serverAuth", "-out"]).arg(&csr),
    };
    req.arg("-keyout").arg(&key_new).run()?;
    let mut cert = Vec::new();
    if let Some(source) = issuer {
        let serial = openssl("making a serial number").args(["rand", "-hex", "16"]).output()?;
        openssl("signing the appliance's TLS certificate with the box's issuer")
            .args(["x509", "-req", "-sha256", "-copy_extensions", "copy", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(source.join(SEED_ISSUER_CERT))
            .arg("-CAkey")
            .arg(source.join(SEED_ISSUER_KEY))
            .arg("-set_serial")
            .arg(format!("0x{}", serial.trim()))
            .arg("-days")
            .arg(VALID_DAYS.to_string())
            .arg("-out")
            .arg(&leaf)
            .run()?;
        cert = fs_err::read(&leaf)?;
        cert.extend(fs_err::read(source.join(SEED_ISSUER_CERT))?);
    } else {
        cert.extend(fs_err::read(&leaf)?);
    }
    let key = fs_err::read(&key_new)?;
    for f in [&key_new, &csr, &leaf] {
        crate::files::remove_if_exists(f)?;
    }
    install(dir, &key, &cert)
}

/// A check the certificate passed, kept beside it: a later start that finds the same files
/// before `good_until` runs no openssl (the four runs of a full check took 1.9-2.1 s with cold
/// caches in the PACS box under emulation, on the critical chain of every boot). Another
/// key, certificate or issuer, a record that does not parse, or the clock past `good_until`
/// (30 days before the certificate ends) and the files are checked again.
#[derive(Debug, Serialize, Deserialize)]
struct Checked {
    kind: String,
    /// `files_digest`.
    files: String,
    good_until: i64,
    fingerprint: String,
    not_after: String,
}

/// Where the record of the last passed check is kept, in the certificate's directory.
const CHECKED: &str = "checked.json";

/// What a record covers: the SHA-256 of the key, the certificate and, when the box's issuer
/// signs, the issuer's certificate (None when one is missing).
fn files_digest(dir: &Path, issuer: Option<&Path>) -> Option<String> {
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let digests: Option<Vec<String>> = [key.as_path(), cert.as_path()].into_iter().chain(issuer).map(|p| crate::files::sha256_file(p).ok()).collect();
    digests.map(|d| d.join(" "))
}

/// The record of an earlier passed check of these same files, before its renewal date.
fn checked_before(dir: &Path, kind: &str, issuer: Option<&Path>) -> Option<Checked> {
    let c: Checked = serde_json::from_slice(&fs_err::read(dir.join(CHECKED)).ok()?).ok()?;
    let now = i64::try_from(crate::files::unix_now()).ok()?;
    (c.kind == kind && Some(&c.files) == files_digest(dir, issuer).as_ref() && now < c.good_until).then_some(c)
}

/// The Unix time of a date as openssl prints one (`Mar  6 19:31:04 2029 GMT`).
fn openssl_date(text: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let f: Vec<&str> = text.split_whitespace().collect();
    let [month, day, time, year, "GMT"] = f.as_slice() else { return None };
    let m = MONTHS.iter().position(|n| n == month)? as i64 + 1;
    let t: Vec<i64> = time.split('.').next()?.split(':').map(|v| v.parse().ok()).collect::<Option<_>>()?;
    let [h, mi, sec] = t.as_slice() else { return None };
    Some(crate::files::unix_time(year.parse().ok()?, m, day.parse().ok()?, *h, *mi, *sec))
}

/// Makes sure `dir` holds a usable certificate for `hostname`, from what `source` holds (see
/// the module's head); returns what it is.
pub fn ensure(dir: &Path, source: &Path, hostname: &str) -> Result<Certificate> {
    fs_err::create_dir_all(dir)?;
    fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let (site_cert, site_key) = (source.join(SEED_SITE_CERT), source.join(SEED_SITE_KEY));
    let site = site_cert.is_file() && site_key.is_file();
    let signed = !site && source.join(SEED_ISSUER_KEY).is_file();
    let kind = if site {
        "the site's own"
    } else if signed {
        "signed by this box's issuer from the deployment CA"
    } else {
        "self-signed"
    };
    let issuer = signed.then(|| source.join(SEED_ISSUER_CERT));
    let mut made = false;
    if site {
        let (key, cert) = (fs_err::read(&site_key)?, fs_err::read(&site_cert)?);
        if fs_err::read(dir.join("key.pem")).ok().as_ref() != Some(&key) || fs_err::read(dir.join("cert.pem")).ok().as_ref() != Some(&cert) {
            install(dir, &key, &cert)?;
            made = true;
        }
    }
    if let Some(c) = checked_before(dir, kind, issuer.as_deref()) {
        return Ok(Certificate { fingerprint: c.fingerprint, not_after: c.not_after, made, kind });
    }
    // Whether the pair in `dir` now passes: the site's own is said, not replaced, when not.
    let passed = if site {
        let ok = usable(dir);
        if !ok {
            super::say("tls: the site's certificate expires within 30 days (or does not match its key): give the site a new one (`[tls]` in its site file, then personalize)");
        }
        ok
    } else {
        if !(usable(dir) && (!signed || issued_by(dir, source))) {
            let names = match signed {
                true => fs_err::read_to_string(source.join(SEED_NAMES))?.lines().filter(|l| !l.is_empty()).map(str::to_string).collect(),
                false => vec![format!("DNS:{hostname}"), format!("DNS:{hostname}.local")],
            };
            make(dir, hostname, &names, signed.then_some(source))?;
            made = true;
        }
        true
    };
    let cert = dir.join("cert.pem");
    // One process for both (each costs a second on a slow box, on the service's start).
    let out = openssl("reading the TLS certificate's fingerprint and expiry").args(["x509", "-noout", "-fingerprint", "-sha256", "-enddate", "-in"]).arg(&cert).output()?;
    let line = |p: &str| out.lines().find(|l| l.to_ascii_lowercase().starts_with(p)).and_then(|l| l.split_once('=')).map(|(_, v)| v.trim().to_string()).unwrap_or_default();
    let (fingerprint, not_after) = (line("sha256 fingerprint="), line("notafter="));
    if let (true, Some(end), Some(files)) = (passed, openssl_date(&not_after), files_digest(dir, issuer.as_deref())) {
        let c = Checked { kind: kind.to_string(), files, good_until: end - RENEW_BEFORE_S as i64, fingerprint: fingerprint.clone(), not_after: not_after.clone() };
        // Lost to a power cut, it is only checked again.
        crate::files::atomic_write(&dir.join(CHECKED), |f| Ok(serde_json::to_writer(f, &c)?))?;
    }
    Ok(Certificate { fingerprint, not_after, made, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_made_once_per_device_kept_and_made_again_when_broken() {
        let (a, b, none) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = ensure(a.path(), none.path(), "clinic-7").unwrap();
        assert!(first.made && first.fingerprint.len() == 95 && first.kind == "self-signed", "{first:?}");
        let mode = fs_err::metadata(a.path().join("key.pem")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = Tool::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(a.path().join("cert.pem")).output().unwrap();
        assert!(text.contains("DNS:clinic-7, DNS:clinic-7.local"), "{text}");
        // Kept at the next start.
        let again = ensure(a.path(), none.path(), "clinic-7").unwrap();
        assert_eq!((again.made, &again.fingerprint, &again.not_after), (false, &first.fingerprint, &first.not_after));
        // From the record of the first check, without openssl: a record saying otherwise is
        // believed while the files are the same and its date has not passed.
        let record = a.path().join(CHECKED);
        let mut c: Checked = serde_json::from_slice(&fs_err::read(&record).unwrap()).unwrap();
        assert_eq!(c.good_until, openssl_date(&first.not_after).unwrap() - RENEW_BEFORE_S as i64);
        c.fingerprint = "from the record".into();
        fs_err::write(&record, serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(ensure(a.path(), none.path(), "clinic-7").unwrap().fingerprint, "from the record");
        c.good_until = crate::files::unix_now() as i64 - 1;
        fs_err::write(&record, serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(ensure(a.path(), none.path(), "clinic-7").unwrap().fingerprint, first.fingerprint, "checked again once the date passed");
        fs_err::write(&record, "{").unwrap();
        assert_eq!(ensure(a.path(), none.path(), "clinic-7").unwrap().fingerprint, first.fingerprint, "a broken record");
        assert_eq!(openssl_date("Mar  6 19:31:04 2029 GMT"), Some(1_867_519_864));
        assert_eq!(openssl_date("Mar 6 19:31:04 2029"), None);
        // Another appliance has its own.
        assert_ne!(ensure(b.path(), none.path(), "clinic-7").unwrap().fingerprint, first.fingerprint);
        // A key from another pair (a cut between the renames): made again.
        fs_err::copy(b.path().join("key.pem"), a.path().join("key.pem")).unwrap();
        let healed = ensure(a.path(), none.path(), "clinic-7").unwrap();
        assert!(healed.made && healed.fingerprint != first.fingerprint);
    }

    #[test]
    fn the_seed_issuer_is_taken_erased_from_the_seed_and_signs_a_certificate_that_chains_to_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = crate::output::ca::init(&tmp.path().join("ca"), "Test").unwrap();
        let site = crate::spec::Site::parse(Path::new("s.toml"), "version = 1\nhostname = \"clinic-7\"\n").unwrap();
        let files = crate::output::ca::issue(&ca, &site).unwrap();
        let dev = tmp.path().join("seed.img");
        fs_err::write(&dev, seed::image_with(16 << 20, 1, 1_700_000_000, Some("version = 1\n"), &files).unwrap()).unwrap();
        let (source, dir) = (tmp.path().join("tls-source"), tmp.path().join("tls"));
        // With the data partition closed, the key stays in the seed.
        assert_eq!(take_from_seed(&dev, &source, true).unwrap(), None);
        assert!(!source.exists());
        assert!(take_from_seed(&dev, &source, false).unwrap().is_some());
        let key = fs_err::read(source.join(SEED_ISSUER_KEY)).unwrap();
        assert!(!fs_err::read(&dev).unwrap().windows(key.len()).any(|w| w == key), "the issuer's key is still on the seed");
        assert_eq!(take_from_seed(&dev, &source, false).unwrap(), None, "taken twice");
        let c = ensure(&dir, &source, "clinic-7").unwrap();
        assert!(c.made && c.kind.contains("deployment CA"), "{c:?}");
        let cert = dir.join("cert.pem");
        Tool::new("openssl").args(["verify", "-CAfile"]).arg(&ca.cert).arg("-untrusted").arg(&cert).arg(&cert).run().unwrap();
        assert!(!ensure(&dir, &source, "clinic-7").unwrap().made, "kept at the next start");
        // A new seed from the CA (the box personalized again): a new issuer, a new certificate.
        let dev2 = tmp.path().join("seed2.img");
        fs_err::write(&dev2, seed::image_with(16 << 20, 1, 1_700_000_000, Some("version = 1\n"), &crate::output::ca::issue(&ca, &site).unwrap()).unwrap()).unwrap();
        take_from_seed(&dev2, &source, false).unwrap();
        let renewed = ensure(&dir, &source, "clinic-7").unwrap();
        assert!(renewed.made && renewed.fingerprint != c.fingerprint);
        // The site's own certificate wins and is installed as it is.
        let own = tmp.path().join("own");
        ensure(&own, tmp.path().join("nothing").as_path(), "x").unwrap();
        let site_files = vec![(SEED_SITE_KEY.to_string(), fs_err::read(own.join("key.pem")).unwrap()), (SEED_SITE_CERT.to_string(), fs_err::read(own.join("cert.pem")).unwrap())];
        let dev3 = tmp.path().join("seed3.img");
        fs_err::write(&dev3, seed::image_with(16 << 20, 1, 1_700_000_000, None, &site_files).unwrap()).unwrap();
        take_from_seed(&dev3, &source, false).unwrap();
        let s = ensure(&dir, &source, "clinic-7").unwrap();
        assert_eq!(s.kind, "the site's own");
        assert_eq!(fs_err::read(dir.join("cert.pem")).unwrap(), fs_err::read(own.join("cert.pem")).unwrap());
    }
}
