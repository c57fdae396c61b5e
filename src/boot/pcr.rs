//! PCR 11 as systemd-stub will leave it, predicted at build time, and the TPM2 policy over it
//! signed with the PCR policy key, in the JSON form systemd-cryptsetup reads
//! (`tpm2-pcr-signature.json`: `{"sha256":[{"pcrs":[11],"pkfp":…,"pol":…,"sig":…}]}`).
//!
//! Computed here rather than with `systemd-measure`: Debian 12's systemd-measure 252 needs a
//! TPM to sign (it computes the policy in a trial session), and the host's version must match
//! the stub's measurement rules, which differ between 252 and 255 (Ubuntu 24.04's stub also
//! measures `.sbat`). A unit test checks this against the host's `systemd-measure calculate`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::tool::Tool;

/// The sections systemd-stub measures into PCR 11, in its order (the UKI specification's
/// canonical order). `.pcrsig` is never measured (it carries the signature of the result).
/// Stubs before systemd 254 do not measure `.uname` and `.sbat`.
pub fn measured_sections(stub_major: u32) -> Vec<&'static str> {
    let mut s = vec![".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb"];
    if stub_major >= 254 {
        s.extend([".uname", ".sbat"]);
    }
    s.push(".pcrpkey");
    s
}

/// PCR 11 after the stub measured `sections` (name, contents file), each as two extends: the
/// section name with its trailing NUL, then the contents. Sections the stub does not measure
/// are left out; the order is the stub's, whatever the order given.
pub fn predict_pcr11(stub_major: u32, sections: &[(&str, PathBuf)]) -> Result<[u8; 32]> {
    let mut pcr = [0u8; 32];
    for name in measured_sections(stub_major) {
        let Some((_, file)) = sections.iter().find(|(n, _)| *n == name) else { continue };
        let mut named = name.as_bytes().to_vec();
        named.push(0);
        extend(&mut pcr, &Sha256::digest(&named).into());
        extend(&mut pcr, &hash_file(file)?);
    }
    Ok(pcr)
}

fn extend(pcr: &mut [u8; 32], digest: &[u8; 32]) {
    let mut h = Sha256::new();
    h.update(*pcr);
    h.update(digest);
    *pcr = h.finalize().into();
}

fn hash_file(p: &Path) -> Result<[u8; 32]> {
    let hex = crate::files::sha256_file(p)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(&hex, &mut out).context("sha256 in hex")?;
    Ok(out)
}

/// TPM2_PolicyPCR's digest for PCR 11 of the sha256 bank holding `pcr11`, from an empty policy:
/// H(0…0 ‖ TPM_CC_PolicyPCR ‖ TPML_PCR_SELECTION ‖ H(pcr11)) (TPM 2.0 Part 3, 23.7).
pub fn policy_pcr11(pcr11: &[u8; 32]) -> [u8; 32] {
    const TPM_CC_POLICY_PCR: u32 = 0x0000_017F;
    const TPM_ALG_SHA256: u16 = 0x000B;
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update(TPM_CC_POLICY_PCR.to_be_bytes());
    // One selection: sha256, a 3-byte bitmap with bit 11 set (byte 1, bit 3).
    h.update(1u32.to_be_bytes());
    h.update(TPM_ALG_SHA256.to_be_bytes());
    h.update([3u8, 0x00, 0x08, 0x00]);
    h.update(Sha256::digest(pcr11));
    h.finalize().into()
}

/// The signed policy JSON for `pcr11`: an RSA PKCS#1 v1.5 signature over sha256(policy), which
/// is what TPM2_PolicyAuthorize checks (aHash with an empty policyRef).
pub fn signed_policy(pcr11: &[u8; 32], key: &crate::boot::Keys, work: &Path) -> Result<String> {
    use base64::Engine;
    let pol = policy_pcr11(pcr11);
    let input = work.join("pcr-policy.bin");
    let sig_file = work.join("pcr-policy.sig");
    fs_err::write(&input, pol)?;
    Tool::new("openssl")
        .describe(format!("signing the PCR 11 policy with {}", key.pcr_key.display()))
        .args(["dgst", "-sha256", "-sign"])
        .arg(&key.pcr_key)
        .arg("-out")
        .arg(&sig_file)
        .arg(&input)
        .run()?;
    let sig = fs_err::read(&sig_file)?;
    crate::files::remove_if_exists(&sig_file)?;
    crate::files::remove_if_exists(&input)?;
    let json = serde_json::json!({
        "sha256": [{
            "pcrs": [11],
            "pkfp": key.pcr_fingerprint,
            "pol": hex::encode(pol),
            "sig": base64::engine::general_purpose::STANDARD.encode(sig),
        }]
    });
    Ok(json.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same inputs through the host's systemd-measure (252: the rules of Debian 12's stub).
    #[test]
    fn pcr11_matches_systemd_measure() {
        let measure = Path::new("/usr/lib/systemd/systemd-measure");
        if !measure.exists() {
            eprintln!("no systemd-measure on this host: nothing to compare with");
            return;
        }
        let d = std::env::temp_dir().join(format!("outpost-pcr-{}", std::process::id()));
        fs_err::create_dir_all(&d).unwrap();
        let files: Vec<(&str, PathBuf)> = [(".linux", "kernel bytes"), (".osrel", "ID=debian\n"), (".cmdline", "root=x ro"), (".initrd", "initrd"), (".pcrpkey", "-----BEGIN PUBLIC KEY-----\n")]
            .iter()
            .map(|(n, body)| {
                let p = d.join(n.trim_start_matches('.'));
                fs_err::write(&p, body).unwrap();
                (*n, p)
            })
            .collect();
        let mut cmd = Tool::new(&measure.to_string_lossy()).describe("predicting PCR 11").args(["calculate", "--bank=sha256", "--phase=enter-initrd"]);
        for (n, p) in &files {
            cmd = cmd.arg(format!("--{}={}", n.trim_start_matches('.'), p.display()));
        }
        let out = cmd.output().unwrap();
        // systemd-measure adds the phase word "enter-initrd" after the sections.
        let mut want = predict_pcr11(252, &files).unwrap();
        extend(&mut want, &Sha256::digest(b"enter-initrd").into());
        assert!(out.contains(&format!("11:sha256={}", hex::encode(want))), "systemd-measure printed {out}");
        // Given out of order, the stub's order still applies.
        let mut reversed = files.clone();
        reversed.reverse();
        assert_eq!(predict_pcr11(252, &reversed).unwrap(), predict_pcr11(252, &files).unwrap());
        fs_err::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn later_stubs_also_measure_sbat() {
        assert!(!measured_sections(252).contains(&".sbat"));
        assert_eq!(measured_sections(255).last(), Some(&".pcrpkey"));
        assert!(measured_sections(255).contains(&".sbat"));
    }
}
