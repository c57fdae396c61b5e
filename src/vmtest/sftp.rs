//! The test's backup server (`backup-server = true`): OpenSSH's sshd from the host's packages,
//! started by QEMU for each connection the guest opens to 10.0.2.100:22 (a `guestfwd`), so no
//! port is opened on the host. SFTP only, as `root`, into `DIR/backup-server/files` (what the
//! guest's `sftp://root@10.0.2.100/PATH` names `PATH`); the key it
//! accepts is the one the box printed on its console for its backup server, as the server's
//! administrator would allow it.

use std::path::Path;

use anyhow::Result;

use crate::tool::Tool;

/// OpenSSH's server (package openssh-server).
pub const SSHD: &str = "/usr/sbin/sshd";

/// Where the guest finds the server.
pub const ADDRESS: &str = "10.0.2.100";

/// Makes the server's host key and configuration, its files empty or a copy of `from`; returns
/// the netdev option that starts it.
pub fn prepare(dir: &Path, from: Option<&Path>) -> Result<String> {
    let sshd = Path::new(SSHD);
    let srv = std::path::absolute(dir.join("backup-server"))?;
    crate::files::remove_if_exists(&srv)?;
    fs_err::create_dir_all(&srv)?;
    match from {
        Some(f) => Tool::new("cp").describe("copying the backup server's files").args(["-a", "--reflink=auto"]).arg(f).arg(srv.join("files")).run()?,
        None => fs_err::create_dir_all(srv.join("files"))?,
    }
    Tool::new("ssh-keygen").describe("making the test backup server's host key").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(srv.join("host_key")).run()?;
    // sshd's privilege separation directory, which a host without a running sshd lacks.
    fs_err::create_dir_all("/run/sshd")?;
    let logs = std::path::absolute(dir)?;
    // No spaces in the pattern: sshd splits the command line on them.
    let config = format!(
        "HostKey {host_key}\nUsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         AuthorizedKeysFile none\nAuthorizedKeysCommand /usr/bin/grep -rhoP --include=console*.log logs\\sin\\sto\\sit\\sas\\s\\Kssh-ed25519\\s\\S+ {logs}\n\
         AuthorizedKeysCommandUser root\nStrictModes no\nSubsystem sftp internal-sftp\nForceCommand internal-sftp -d {files}\n",
        host_key = srv.join("host_key").display(),
        logs = logs.display(),
        files = srv.join("files").display(),
    );
    let conf = srv.join("sshd_config");
    fs_err::write(&conf, config)?;
    Tool::new(&sshd.to_string_lossy()).describe("checking the test backup server's configuration").arg("-t").arg("-f").arg(&conf).run()?;
    // QEMU's option parser splits on commas: the command has none.
    Ok(format!(",guestfwd=tcp:{ADDRESS}:22-cmd:{} -i -f {} -E {}", sshd.display(), conf.display(), srv.join("sshd.log").display()))
}
