//! `outpost doctor`: every host tool, whether it is installed, and the package that provides it;
//! `--install` installs the missing ones in one go (what a CI job runs first).

use anyhow::Result;

pub fn run(install: bool) -> Result<i32> {
    let all: Vec<&str> = crate::tool::HOST_TOOLS.iter().map(|t| t.program).collect();
    if install {
        crate::tool::preflight(&all)?;
    }
    let missing = crate::tool::missing(&all);
    for t in crate::tool::HOST_TOOLS {
        let ok = !missing.contains(t);
        println!("{} {:<34} {:<16} {}", if ok { "ok     " } else { "MISSING" }, t.program, t.package, t.why);
    }
    if missing.is_empty() {
        println!("all host tools are installed");
        Ok(0)
    } else {
        let mut pkgs: Vec<&str> = missing.iter().map(|t| t.package).collect();
        pkgs.dedup();
        println!("install them with: sudo apt-get install {}", pkgs.join(" "));
        Ok(1)
    }
}
