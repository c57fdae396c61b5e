//! The TPM as the data partition uses it: which PCRs the key is sealed to at this boot (with
//! the image's signed PCR 11 policy when it has one), whether Secure Boot is on, and the
//! TPM's dictionary-attack (DA) settings, which a power cut must never trip.
//!
//! Why DA protection is turned off (recoveryTime 0, TPM 2.0 Part 1, "Dictionary Attack
//! Protection"): systemd loads the sealed key under a primary key without the noDA attribute,
//! so every boot marks the TPM "DA used", and every power cut after that counts as a failed
//! authorization at the next TPM2_Startup; after maxTries cuts the TPM refuses for hours. DA
//! protection only slows down the guessing of authorization values, and no secret of ours has
//! one: the key is released by the PCR policy alone. Done only while the TPM's lockout
//! authorization is unset (a TPM nobody else owns).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::say as console;
use crate::tool::Tool;

/// The EFI global variable `SecureBoot`: 4 bytes of attributes, then 1 when enforcing.
const SECURE_BOOT_VAR: &str = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// What the data key is sealed to at this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// PCRs whose current values are part of the policy.
    pub pcrs: Vec<u8>,
    /// The image's PCR policy public key: PCR 11 is then authorized by a signature of it (any
    /// UKI signed with the same key unlocks), and the signature file of this boot.
    pub signed: Option<(PathBuf, PathBuf)>,
}

impl Seal {
    pub fn describe(&self) -> String {
        let pcrs: Vec<String> = self.pcrs.iter().map(u8::to_string).collect();
        match &self.signed {
            Some(_) => format!("PCRs {} and the signed PCR 11 policy", pcrs.join("+")),
            None => format!("PCRs {}", pcrs.join("+")),
        }
    }
}

/// The policy for this boot. With the image's signed policy: PCR 11 by signature, plus 7 (the
/// Secure Boot state and the keys that verified the boot chain) and 12 (a kernel command line
/// or credentials given from outside the UKI); with Secure Boot off also 4 (the binaries the
/// firmware ran), since a forged stub could then extend PCR 11 at will. Without it (a build
/// without keys): the literal values of 4, 7, 11 and 12. An image's explicit `tpm2-pcrs`
/// replaces the literal list.
pub fn seal_policy(root: &Path, image_pcrs: &[u8]) -> Seal {
    let key = root.join(crate::format::PCR_PUBLIC_KEY_PATH);
    let sig = PathBuf::from(crate::format::PCR_SIGNATURE_RUN_PATH);
    let signed = (key.is_file() && sig.is_file()).then_some((key, sig));
    let pcrs = if !image_pcrs.is_empty() {
        image_pcrs.to_vec()
    } else {
        let mut p = if secure_boot() { vec![7, 12] } else { vec![4, 7, 12] };
        if signed.is_none() {
            p.push(11);
        }
        p.sort();
        p
    };
    Seal { pcrs, signed }
}

pub fn secure_boot() -> bool {
    fs_err::read(SECURE_BOOT_VAR).is_ok_and(|b| b.get(4) == Some(&1))
}

/// The TPM's DA state (`tpm2_getcap properties-variable`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Da {
    pub counter: u32,
    pub max_tries: u32,
    /// Seconds after which one failure is forgotten; 0: DA protection off.
    pub recovery_time: u32,
    pub lockout_recovery: u32,
    pub lockout_auth_set: bool,
    pub in_lockout: bool,
}

impl Da {
    pub fn describe(&self) -> String {
        if self.recovery_time == 0 {
            format!("TPM lockout counter {} (dictionary-attack protection off)", self.counter)
        } else {
            format!("TPM lockout counter {} of {}, one forgiven every {} s", self.counter, self.max_tries, self.recovery_time)
        }
    }
}

/// Parses `tpm2_getcap properties-variable`.
pub fn parse_da(text: &str) -> Result<Da> {
    let mut da = Da::default();
    let mut seen = 0;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim();
        let num = || -> Result<u32> {
            match v.strip_prefix("0x") {
                Some(h) => u32::from_str_radix(h, 16),
                None => v.parse(),
            }
            .with_context(|| format!("tpm2_getcap printed `{line}`"))
        };
        match k.trim() {
            "TPM2_PT_LOCKOUT_COUNTER" => (da.counter, seen) = (num()?, seen + 1),
            "TPM2_PT_MAX_AUTH_FAIL" => (da.max_tries, seen) = (num()?, seen + 1),
            "TPM2_PT_LOCKOUT_INTERVAL" => (da.recovery_time, seen) = (num()?, seen + 1),
            "TPM2_PT_LOCKOUT_RECOVERY" => (da.lockout_recovery, seen) = (num()?, seen + 1),
            "lockoutAuthSet" => da.lockout_auth_set = num()? == 1,
            "inLockout" => da.in_lockout = num()? == 1,
            _ => {}
        }
    }
    anyhow::ensure!(seen == 4, "tpm2_getcap printed no dictionary-attack properties:\n{text}");
    Ok(da)
}

/// The kernel's TPM resource manager. Named to systemd-cryptsetup and systemd-cryptenroll
/// instead of `auto`: auto enumerates the TPMs udev has initialized, so at boot it waited (as
/// long as 15 s under emulation) for udev's coldplug to reach the TPM, though the device node
/// was there from the kernel's start.
pub const DEVICE: &str = "/dev/tpmrm0";

fn tpm2(program: &str) -> Tool {
    // The kernel's resource manager directly: no tpm2-abrmd on an appliance.
    Tool::new(program).env("TPM2TOOLS_TCTI", format!("device:{DEVICE}"))
}

pub fn da_state() -> Result<Da> {
    parse_da(&tpm2("tpm2_getcap").describe("reading the TPM's dictionary-attack state").arg("properties-variable").output()?)
}

/// Before the TPM is asked for the key: DA protection off when the TPM is ours to set (see the
/// module comment), a lockout lifted; a lockout we cannot lift is waited out, saying so.
pub fn prepare() -> Result<Da> {
    let mut da = da_state()?;
    if !da.lockout_auth_set {
        // Read again only when something was changed: every later boot finds it as it was left.
        let changed = da.in_lockout || da.recovery_time != 0;
        if da.in_lockout {
            tpm2("tpm2_dictionarylockout").describe("lifting the TPM's dictionary-attack lockout").arg("--clear-lockout").run()?;
            console(&format!("the TPM was in dictionary-attack lockout ({} failures): lifted", da.counter));
        }
        if da.recovery_time != 0 {
            tpm2("tpm2_dictionarylockout")
                .describe("turning the TPM's dictionary-attack protection off")
                .args(["--setup-parameters", &format!("--max-tries={}", da.max_tries.max(1)), "--recovery-time=0", &format!("--lockout-recovery-time={}", da.lockout_recovery)])
                .run()?;
            console("TPM dictionary-attack protection turned off: power cuts can no longer lock the TPM (the data key has no password to guess; docs/encryption.md)");
        }
        return if changed { da_state() } else { Ok(da) };
    }
    while da.in_lockout {
        let wait = da.recovery_time.clamp(10, 600);
        console(&format!(
            "the TPM is in dictionary-attack lockout ({} of {} failures) and its lockout password is set by someone else, so outpost cannot lift it: the data partition waits; trying again in {wait} s (the TPM forgives one failure every {} s; or clear the TPM in the firmware setup and unlock once with the recovery key)",
            da.counter, da.max_tries, da.recovery_time
        ));
        std::thread::sleep(Duration::from_secs(wait.into()));
        da = da_state()?;
    }
    Ok(da)
}

/// `prepare`, whose failure (a TPM that tpm2-tools cannot talk to) is said on the console but
/// does not stop the unlock from being tried: the key may still be released.
pub fn prepare_or_say() -> Option<Da> {
    prepare().inspect_err(|e| console(&format!("the TPM's dictionary-attack settings could not be read or set ({e:#}); unlocking anyway"))).ok()
}

/// Why a TPM unlock failed, for the console: the key set the disk was sealed under against the
/// image's, and whether this boot came through a signed UKI at all.
pub fn diagnose(root: &Path, token_pubkey: Option<&[u8]>) -> String {
    let image_key = fs_err::read_to_string(root.join(crate::format::PCR_PUBLIC_KEY_PATH)).ok();
    let signature = Path::new(crate::format::PCR_SIGNATURE_RUN_PATH).is_file();
    match (token_pubkey, image_key) {
        (Some(sealed), Some(ours)) if der_of(sealed) != der_of(ours.as_bytes()) => {
            "the data partition was sealed under ANOTHER PCR policy key than the one this image is signed with (an image from another key set was installed over it): it does not unlock with this image. Boot an image signed with the original keys, or open it with the recovery key (docs/encryption.md, \"Recovery procedure\")".into()
        }
        (Some(_), _) if !signature => "this boot did not come through the image's signed kernel image (no PCR 11 signature reached the system): the TPM does not release the key".into(),
        _ => "the disk was moved to another machine, the TPM was cleared, the boot chain is not this image's, or the firmware's Secure Boot settings changed".into(),
    }
}

/// A public key as PEM or DER, as DER.
fn der_of(b: &[u8]) -> Option<Vec<u8>> {
    match std::str::from_utf8(b).ok().filter(|t| t.contains("-----BEGIN")) {
        Some(t) => crate::format::pem_der(t),
        None => Some(b.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GETCAP: &str = "TPM2_PT_PERMANENT:\n  ownerAuthSet:              0\n  endorsementAuthSet:        0\n  lockoutAuthSet:            0\n  reserved1:                 0\n  disableClear:              0\n  inLockout:                 1\n  tpmGeneratedEPS:           0\n  reserved2:                 0\nTPM2_PT_STARTUP_CLEAR:\n  phEnable:                  1\nTPM2_PT_HR_NV_INDEX: 0x0\nTPM2_PT_LOCKOUT_COUNTER: 0x3\nTPM2_PT_MAX_AUTH_FAIL: 0x3\nTPM2_PT_LOCKOUT_INTERVAL: 0x3E8\nTPM2_PT_LOCKOUT_RECOVERY: 0x3E8\nTPM2_PT_NV_WRITE_RECOVERY: 0x0\n";

    #[test]
    fn da_state_is_read_from_getcap() {
        let da = parse_da(GETCAP).unwrap();
        assert_eq!(da, Da { counter: 3, max_tries: 3, recovery_time: 1000, lockout_recovery: 1000, lockout_auth_set: false, in_lockout: true });
        assert!(parse_da("TPM2_PT_HR_NV_INDEX: 0x0\n").is_err());
        assert!(parse_da(&GETCAP.replace("0x3E8", "0xZZ")).is_err());
    }

    #[test]
    fn a_disk_sealed_under_another_key_set_is_named() {
        let root = std::env::temp_dir().join(format!("outpost-tpm-diagnose-{}", std::process::id()));
        let key = root.join(crate::format::PCR_PUBLIC_KEY_PATH);
        fs_err::create_dir_all(key.parent().unwrap()).unwrap();
        fs_err::write(&key, "-----BEGIN PUBLIC KEY-----\nAAEC\n-----END PUBLIC KEY-----\n").unwrap();
        let other = diagnose(&root, Some(b"-----BEGIN PUBLIC KEY-----\nAAED\n-----END PUBLIC KEY-----\n"));
        assert!(other.contains("ANOTHER PCR policy key") && other.contains("Recovery procedure"), "{other}");
        // The same key (as systemd stores it, DER or PEM): not the key set's fault.
        let same = diagnose(&root, Some(&[0, 1, 2]));
        assert!(!same.contains("ANOTHER"), "{same}");
        fs_err::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn keys_compare_as_pem_or_der() {
        let pem = "-----BEGIN PUBLIC KEY-----\nAAEC\n-----END PUBLIC KEY-----\n";
        assert_eq!(der_of(pem.as_bytes()), Some(vec![0, 1, 2]));
        assert_eq!(der_of(&[0, 1, 2]), Some(vec![0, 1, 2]));
    }
}
