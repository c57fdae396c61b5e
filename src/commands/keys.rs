//! `outpost keys init DIR`: the project's signing keys (see `boot::keys`).

use anyhow::Result;

use crate::cli::KeysCommand;

pub fn run(command: &KeysCommand) -> Result<i32> {
    match command {
        KeysCommand::Init { dir, name } => {
            let k = crate::boot::keys::init(dir, name)?;
            println!("made the signing keys in {}", k.dir.display());
            println!("  Secure Boot db certificate  {}  (sha256 {})", k.db_cert.display(), &k.db_cert_sha256[..16]);
            println!("  PCR policy public key       {}  (sha256 {})", k.pcr_public.display(), &k.pcr_fingerprint[..16]);
            println!("The private keys (*.key) are readable by you only. Keep the directory out of the repository and back it up:");
            println!("an image signed with other keys cannot unlock the data of appliances already in the field.");
            println!("Build with: outpost build IMAGE --keys {}", k.dir.display());
            Ok(0)
        }
    }
}
