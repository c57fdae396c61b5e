//! What the build writes and the device reads: the one place the build host and the agent
//! (`crate::agent`) share. The partition layout and its GPT, the seed partition, block maps,
//! the installer ISO's index and its ISO 9660 reader, firmware profiles, and the paths of the
//! policy files in the image.

pub mod bmap;
pub mod firmware;
pub mod install;
pub mod interpolate;
pub mod iso9660;
pub mod layout;
pub mod seed;
pub mod stack;
pub mod update;
pub mod verity;

/// The agent: the same outpost binary, in every image.
pub const AGENT_PATH: &str = "usr/lib/outpost/outpost";
/// The image's `[data]` policy, written by the build, read by `outpost data open`.
pub const DATA_POLICY_PATH: &str = "usr/lib/outpost/data.json";
/// The PCR policy's public key in the image (absent when built without keys).
pub const PCR_PUBLIC_KEY_PATH: &str = "usr/lib/outpost/tpm2-pcr-public-key.pem";
/// The signed PCR 11 policy of the booted UKI, which systemd-stub hands the initramfs as
/// /.extra/tpm2-pcr-signature.json and the initramfs keeps here for the agent.
pub const PCR_SIGNATURE_RUN_PATH: &str = "/run/outpost/tpm2-pcr-signature.json";
/// The db certificate on the ESP, for firmware menus that enrol a key from a file.
pub const DB_CERT_ON_ESP: &str = "outpost/secure-boot-db.cer";
/// Device-mapper name of the verified root, opened by the initramfs.
pub const VERITY_MAPPING: &str = "outpost-root";

/// The base64 body of a PEM text, its lines joined (to compare two keys whatever their line
/// lengths).
pub fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect()
}

/// The DER bytes of the first PEM block.
pub fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let body = pem_body(pem.split("-----END").next()?);
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}
