//! The deployment's certificate authority, on the build host. `outpost ca init DIR` makes it
//! once, kept outside the repository like the signing keys. `outpost personalize --ca DIR` gives
//! each box an issuing certificate of its own, name-constrained to that box's host name (and
//! its static addresses): the box signs its TLS certificate with it and renews it by itself
//! (`agent::tls`), phones that trust the deployment's CA trust every box of the deployment, and
//! one box's issuer can vouch for no other name. Or a site brings its own certificate
//! (`[tls] cert`/`key` in the site file). Either travels in the seed's `tls/` folder, which the
//! box empties of private keys at its first boot.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::spec::Site;
use crate::tool::Tool;

pub const CA_KEY: &str = "ca.key";
pub const CA_CERT: &str = "ca.crt";
/// The CA certificate in DER, the form Android's "install a certificate" menu takes.
pub const CA_CERT_DER: &str = "ca.cer";

/// Names of the files in the seed's `tls/` folder, shared with `agent::tls`.
pub use crate::format::stack::{SEED_CA, SEED_ISSUER_CERT, SEED_ISSUER_KEY, SEED_NAMES, SEED_SITE_CERT, SEED_SITE_KEY};

/// How long a box's issuer is valid: ten years (its leaf certificates are renewed by the box).
const ISSUER_DAYS: u32 = 3650;

/// A checked CA directory.
#[derive(Debug, Clone)]
pub struct Ca {
    pub key: PathBuf,
    pub cert: PathBuf,
    /// SHA-256 of the CA certificate, as phones and browsers show it.
    pub fingerprint: String,
}

fn openssl(why: impl Into<String>) -> Tool {
    Tool::new("openssl").describe(why)
}

/// The SHA-256 fingerprint of a PEM certificate, `AA:BB:...`.
pub fn fingerprint(cert: &Path) -> Result<String> {
    let fp = openssl(format!("reading the fingerprint of {}", cert.display())).args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(cert).output()?;
    Ok(fp.trim().rsplit('=').next().unwrap_or_default().to_string())
}

fn public_of_key(key: &Path) -> Result<String> {
    Ok(openssl(format!("reading the private key {}", key.display())).args(["pkey", "-pubout", "-in"]).arg(key).output()?)
}

fn public_of_cert(cert: &Path) -> Result<String> {
    Ok(openssl(format!("reading the certificate {}", cert.display())).args(["x509", "-noout", "-pubkey", "-in"]).arg(cert).output()?)
}

impl Ca {
    /// Reads and checks `dir`; every problem names the file and what to do.
    pub fn load(dir: &Path) -> Result<Ca> {
        anyhow::ensure!(dir.is_dir(), "the CA directory {} does not exist: make one with `outpost ca init {}`", dir.display(), dir.display());
        let (key, cert) = (dir.join(CA_KEY), dir.join(CA_CERT));
        for f in [&key, &cert] {
            anyhow::ensure!(f.is_file(), "{} is missing: {} is not a CA directory made by `outpost ca init`", f.display(), dir.display());
        }
        crate::tool::preflight(&["openssl"])?;
        let mode = fs_err::metadata(&key)?.permissions().mode() & 0o777;
        anyhow::ensure!(mode & 0o077 == 0, "{} is readable by others (mode {mode:04o}): the deployment CA's key must be readable by its owner only; run `chmod 600 {}`", key.display(), key.display());
        anyhow::ensure!(
            !fs_err::read_to_string(&key)?.contains("ENCRYPTED PRIVATE KEY"),
            "{} is protected by a passphrase: personalize signs unattended, so store it decrypted (`openssl pkey -in KEY -out {}`) in a directory only you can read",
            key.display(),
            key.display()
        );
        anyhow::ensure!(public_of_key(&key)? == public_of_cert(&cert)?, "{} does not certify {}: the CA's certificate and key do not belong together", cert.display(), key.display());
        let text = openssl("reading the CA certificate").args(["x509", "-noout", "-text", "-in"]).arg(&cert).output()?;
        anyhow::ensure!(text.contains("CA:TRUE"), "{} is not a CA certificate (no `CA:TRUE` basic constraint)", cert.display());
        let fingerprint = fingerprint(&cert)?;
        Ok(Ca { key, cert, fingerprint })
    }
}

/// `outpost ca init DIR`: a new CA directory, owner-only, outside any git work tree.
pub fn init(dir: &Path, name: &str) -> Result<Ca> {
    if let Some(repo) = crate::files::git_work_tree(dir)? {
        bail!("{} is inside the git work tree {}: the deployment CA's key must never be committed; choose a directory outside it", dir.display(), repo.display());
    }
    if dir.exists() && fs_err::read_dir(dir)?.next().is_some() {
        bail!("{} already exists and is not empty: refusing to replace a CA (the phones of the deployment trust the one there)", dir.display());
    }
    anyhow::ensure!(!name.is_empty() && !name.contains(['/', '\n', '=', ',']), "the CA name `{name}` may not be empty or hold `/`, `=`, `,` or a newline");
    crate::tool::preflight(&["openssl"])?;
    fs_err::create_dir_all(dir)?;
    fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let p = |f: &str| dir.join(f);
    openssl("making the deployment CA")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-sha256", "-days", "7300", "-subj"])
        .arg(format!("/CN={name} appliances CA/"))
        .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout"])
        .arg(p(CA_KEY))
        .arg("-out")
        .arg(p(CA_CERT))
        .run()?;
    fs_err::set_permissions(p(CA_KEY), std::fs::Permissions::from_mode(0o600))?;
    openssl("writing the CA certificate in DER").args(["x509", "-outform", "DER", "-in"]).arg(p(CA_CERT)).arg("-out").arg(p(CA_CERT_DER)).run()?;
    fs_err::write(p("README.txt"), README)?;
    Ca::load(dir)
}

const README: &str = "outpost deployment CA (made by `outpost ca init`)

ca.key  PRIVATE: signs each box's issuing certificate at `outpost personalize --ca DIR`
ca.crt  the CA certificate (PEM): install it on the deployment's phones and laptops
ca.cer  the same in DER, for Android's \"install a certificate\" menu

Keep this directory off the repository and off shared disks; back it up. A phone that trusts
ca.crt trusts every box personalized with it, for that box's own names only.
";

/// The names a box's certificate may carry: its host name, `NAME.local`, its static addresses.
pub fn box_names(site: &Site) -> Vec<String> {
    let mut names = vec![format!("DNS:{}", site.hostname), format!("DNS:{}.local", site.hostname)];
    for i in &site.interfaces {
        for a in &i.address {
            if let Ok(c) = crate::spec::Cidr::parse(a) {
                names.push(format!("IP:{}", c.addr));
            }
        }
    }
    names
}

/// The name constraints of a box's issuer: exactly its names. With no static address a
/// single unusable IPv4 address is permitted, which forbids every other address (a permitted
/// subtree of a type excludes all names of that type outside it).
fn name_constraints(names: &[String]) -> String {
    let mut permitted: Vec<String> = names
        .iter()
        .map(|n| match n.strip_prefix("IP:") {
            Some(ip) if ip.contains(':') => format!("permitted;IP:{ip}/ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            Some(ip) => format!("permitted;IP:{ip}/255.255.255.255"),
            None => format!("permitted;{n}"),
        })
        .collect();
    if !names.iter().any(|n| n.starts_with("IP:")) {
        permitted.push("permitted;IP:0.0.0.0/255.255.255.255".into());
    }
    format!("critical,{}", permitted.join(","))
}

/// The files of the seed's `tls/` folder for a box of `site`: its issuer (key, certificate
/// chained to the CA), the CA certificate and the names, made in a private scratch directory
/// that is removed afterwards.
pub fn issue(ca: &Ca, site: &Site) -> Result<Vec<(String, Vec<u8>)>> {
    let scratch = crate::files::Scratch::new(std::env::temp_dir().join(format!("outpost-issuer-{}", crate::files::unique_suffix())));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(scratch.path()).with_context(|| format!("making the private scratch directory {}", scratch.path().display()))?;
    }
    let p = |f: &str| scratch.path().join(f);
    let names = box_names(site);
    openssl(format!("making the issuing key of {}", site.hostname)).args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"]).arg(p("issuer.key")).run()?;
    openssl("making the issuer's request").args(["req", "-new", "-sha256", "-key"]).arg(p("issuer.key")).arg("-subj").arg(format!("/CN={} issuer/", site.hostname)).arg("-out").arg(p("issuer.csr")).run()?;
    fs_err::write(
        p("ext.cnf"),
        format!(
            "[ext]\nbasicConstraints = critical,CA:TRUE,pathlen:0\nkeyUsage = critical,keyCertSign,cRLSign\nnameConstraints = {}\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n",
            name_constraints(&names)
        ),
    )?;
    let serial = openssl("making a serial number").args(["rand", "-hex", "16"]).output()?;
    openssl(format!("signing the issuer of {} with the deployment CA", site.hostname))
        .args(["x509", "-req", "-sha256", "-in"])
        .arg(p("issuer.csr"))
        .arg("-CA")
        .arg(&ca.cert)
        .arg("-CAkey")
        .arg(&ca.key)
        .arg("-set_serial")
        .arg(format!("0x{}", serial.trim()))
        .arg("-days")
        .arg(ISSUER_DAYS.to_string())
        .arg("-extfile")
        .arg(p("ext.cnf"))
        .args(["-extensions", "ext", "-out"])
        .arg(p("issuer.crt"))
        .run()?;
    Ok(vec![
        (SEED_ISSUER_KEY.to_string(), fs_err::read(p("issuer.key"))?),
        (SEED_ISSUER_CERT.to_string(), fs_err::read(p("issuer.crt"))?),
        (SEED_CA.to_string(), fs_err::read(&ca.cert)?),
        (SEED_NAMES.to_string(), (names.join("\n") + "\n").into_bytes()),
    ])
}

/// The files of the seed's `tls/` folder for a site that brings its own certificate and key
/// (`[tls] cert`, `key`, relative to the site file): checked to belong together and to be
/// valid for 30 more days.
pub fn site_own(site_file: &Path, cert: &Path, key: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let base = site_file.parent().unwrap_or(Path::new("."));
    let (cert, key) = (base.join(cert), base.join(key));
    for (f, k) in [(&cert, "tls.cert"), (&key, "tls.key")] {
        anyhow::ensure!(f.is_file(), "{}: `{k}` names {}, which does not exist", site_file.display(), f.display());
    }
    crate::tool::preflight(&["openssl"])?;
    anyhow::ensure!(
        public_of_key(&key).with_context(|| format!("{}: `tls.key`", site_file.display()))? == public_of_cert(&cert).with_context(|| format!("{}: `tls.cert`", site_file.display()))?,
        "{}: the certificate {} is not for the key {}",
        site_file.display(),
        cert.display(),
        key.display()
    );
    let fresh = openssl("checking the site certificate's expiry").args(["x509", "-noout", "-checkend", "2592000", "-in"]).arg(&cert).run();
    anyhow::ensure!(fresh.is_ok(), "{}: the certificate {} expires within 30 days (or has expired): give the site a new one", site_file.display(), cert.display());
    Ok(vec![(SEED_SITE_CERT.to_string(), fs_err::read(&cert)?), (SEED_SITE_KEY.to_string(), fs_err::read(&key)?)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_issuer_chains_to_the_ca_and_is_held_to_the_box_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let ca = init(&dir, "Test ministry").unwrap();
        assert_eq!(ca.fingerprint.len(), 95);
        assert!(format!("{:#}", init(&dir, "again").unwrap_err()).contains("already exists"));
        let site = Site::parse(Path::new("clinic.toml"), "version = 1\nhostname = \"clinic-7\"\n[[interface]]\nname = \"en*\"\naddress = [\"192.168.10.20/24\"]\n").unwrap();
        let files = issue(&ca, &site).unwrap();
        let get = |n: &str| files.iter().find(|(f, _)| f == n).map(|(_, b)| b.clone()).unwrap();
        assert_eq!(String::from_utf8(get(SEED_NAMES)).unwrap(), "DNS:clinic-7\nDNS:clinic-7.local\nIP:192.168.10.20\n");
        for (n, b) in &files {
            fs_err::write(tmp.path().join(n), b).unwrap();
        }
        let w = |f: &str| tmp.path().join(f);
        // A leaf the box would make: valid for its names, refused for any other.
        let leaf = |name: &str, san: &str| {
            let (key, crt) = (w(&format!("{name}.key")), w(&format!("{name}.crt")));
            Tool::new("openssl")
                .args(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=x", "-addext"])
                .arg(format!("subjectAltName={san}"))
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(w("leaf.csr"))
                .run()
                .unwrap();
            Tool::new("openssl").args(["x509", "-req", "-days", "400", "-copy_extensions", "copy", "-in"]).arg(w("leaf.csr")).arg("-CA").arg(w(SEED_ISSUER_CERT)).arg("-CAkey").arg(w(SEED_ISSUER_KEY)).arg("-out").arg(&crt).run().unwrap();
            Tool::new("openssl").args(["verify", "-CAfile"]).arg(&ca.cert).arg("-untrusted").arg(w(SEED_ISSUER_CERT)).arg(&crt).run()
        };
        leaf("good", "DNS:clinic-7,DNS:clinic-7.local,IP:192.168.10.20").unwrap();
        let other = format!("{:#}", leaf("other", "DNS:hospital-1").unwrap_err());
        assert!(other.contains("permitted subtree violation"), "{other}");
        assert!(leaf("addr", "DNS:clinic-7,IP:10.0.0.1").is_err(), "an address the site does not give was accepted");
        // A site's own certificate: taken when the pair belongs together, refused otherwise.
        let site_file = tmp.path().join("clinic.toml");
        let own = site_own(&site_file, Path::new("good.crt"), Path::new("good.key")).unwrap();
        assert_eq!(own.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), [SEED_SITE_CERT, SEED_SITE_KEY]);
        let err = format!("{:#}", site_own(&site_file, Path::new("good.crt"), Path::new("other.key")).unwrap_err());
        assert!(err.contains("clinic.toml") && err.contains("is not for the key"), "{err}");
        let err = format!("{:#}", site_own(&site_file, Path::new("missing.crt"), Path::new("good.key")).unwrap_err());
        assert!(err.contains("`tls.cert`") && err.contains("does not exist"), "{err}");
        // Bad directories are named.
        fs_err::set_permissions(dir.join(CA_KEY), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(format!("{:#}", Ca::load(&dir).unwrap_err()).contains("chmod 600"));
        let git = tmp.path().join("repo");
        fs_err::create_dir_all(git.join(".git")).unwrap();
        assert!(format!("{:#}", init(&git.join("ca"), "x").unwrap_err()).contains("git work tree"));
    }
}
