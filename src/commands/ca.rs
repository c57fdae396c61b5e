//! `outpost ca init DIR`: the deployment's certificate authority (see `output::ca`).

use anyhow::Result;

use crate::cli::CaCommand;

pub fn run(command: &CaCommand) -> Result<i32> {
    match command {
        CaCommand::Init { dir, name } => {
            let ca = crate::output::ca::init(dir, name)?;
            println!("made the deployment CA in {}", dir.display());
            println!("  certificate  {}  (SHA-256 {})", ca.cert.display(), ca.fingerprint);
            println!("The key ({}) is readable by you only. Keep the directory out of the repository and back it up.", ca.key.display());
            println!("Install {} (or ca.cer) on the deployment's phones and laptops, then give each box its certificate with:", ca.cert.display());
            println!("  outpost personalize IMAGE --site SITE --out COPY --ca {}", dir.display());
            Ok(0)
        }
    }
}
