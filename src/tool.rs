//! The only place that spawns processes: a cleared environment, stdin from /dev/null, and errors
//! that tell "not installed" (with the Debian package) from "killed" and "exited N".

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::Result;

/// Environment variables passed through to tools; everything else is dropped.
const ENV_ALLOWLIST: &[&str] = &["PATH", "HOME", "TMPDIR", "TERM", "http_proxy", "https_proxy", "no_proxy"];

/// How many bytes of stderr an error carries.
const STDERR_TAIL: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{program} is not installed (needed for {why}); install the Debian package `{package}`: apt-get install {package}")]
    NotFound { program: String, package: String, why: String },
    #[error("{why}: `{cmdline}` was killed by signal {signal}{tail}")]
    Signal { why: String, cmdline: String, signal: i32, tail: String },
    #[error("{why}: `{cmdline}` exited with status {code}{tail}")]
    Exit { why: String, cmdline: String, code: i32, tail: String },
}

/// A host program outpost needs, with the reason and the package that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostTool {
    pub program: &'static str,
    pub package: &'static str,
    pub why: &'static str,
}

/// Every host program outpost may run, by program name.
pub const HOST_TOOLS: &[HostTool] = &[
    HostTool { program: "mmdebstrap", package: "mmdebstrap", why: "bootstrapping the base root filesystem" },
    HostTool { program: "unshare", package: "util-linux", why: "running layer steps in a private mount namespace" },
    HostTool { program: "chroot", package: "coreutils", why: "running package installs and scripts inside the root filesystem" },
    HostTool { program: "/usr/share/distro-info/ubuntu.csv", package: "distro-info-data", why: "letting mmdebstrap recognise Ubuntu suites and choose their archive" },
    HostTool { program: "gpg", package: "gpg", why: "checking archive keyring fingerprints" },
    HostTool { program: "skopeo", package: "skopeo", why: "fetching container images and filling the image's container store" },
    HostTool { program: "mkfs.erofs", package: "erofs-utils", why: "writing the read-only root filesystem" },
    HostTool { program: "veritysetup", package: "cryptsetup-bin", why: "computing the root filesystem's dm-verity hash tree" },
    HostTool { program: "mkfs.ext4", package: "e2fsprogs", why: "formatting data partitions in the test suite" },
    HostTool { program: "mkfs.fat", package: "dosfstools", why: "formatting the EFI system partition" },
    HostTool { program: "mcopy", package: "mtools", why: "filling the EFI system partition without mounting it" },
    HostTool { program: "objcopy", package: "binutils", why: "assembling the unified kernel image" },
    HostTool { program: "openssl", package: "openssl", why: "making and checking signing keys, signing the PCR policy" },
    HostTool { program: "osslsigncode", package: "osslsigncode", why: "signing the boot loader and kernel image for Secure Boot, reproducibly" },
    HostTool { program: "qemu-img", package: "qemu-utils", why: "writing the qcow2 output" },
    HostTool { program: "xorriso", package: "xorriso", why: "writing the installer ISO without mounting it" },
    HostTool { program: "grub-mkimage", package: "grub-common", why: "making the installer ISO's boot loader" },
    HostTool { program: "/usr/lib/grub/i386-pc/boot_hybrid.img", package: "grub-pc-bin", why: "booting the installer ISO on legacy BIOS machines" },
    HostTool { program: "/usr/lib/grub/x86_64-efi/linux.mod", package: "grub-efi-amd64-bin", why: "booting the installer ISO on UEFI machines" },
    HostTool { program: "curl", package: "curl", why: "HTTPS checks of `outpost test` (`tls-name`), trusting only the deployment CA" },
    HostTool { program: "qemu-io", package: "qemu-utils", why: "changing a byte of a test guest's disk in `outpost test`" },
    HostTool { program: "ssh", package: "openssh-client", why: "logging in to test guests in `outpost test`" },
    HostTool { program: "/usr/sbin/sshd", package: "openssh-server", why: "the SFTP backup server of `outpost test` scenarios with `backup-server`" },
    HostTool { program: "sgdisk", package: "gdisk", why: "checking partition tables in the test suite" },
    HostTool { program: "qemu-system-x86_64", package: "qemu-system-x86", why: "booting images in `outpost test`" },
    HostTool { program: "swtpm", package: "swtpm", why: "a software TPM 2.0 for test guests in `outpost test`" },
    HostTool { program: "cryptsetup", package: "cryptsetup-bin", why: "checking encrypted partitions of test guests" },
    HostTool { program: "/usr/share/OVMF/OVMF_CODE_4M.fd", package: "ovmf", why: "UEFI firmware for `outpost test`" },
    HostTool { program: "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd", package: "ovmf", why: "UEFI variables with Secure Boot enforced for `outpost test`" },
];

pub fn host_tool(program: &str) -> HostTool {
    HOST_TOOLS.iter().copied().find(|t| t.program == program).unwrap_or(HostTool {
        program: "",
        package: "",
        why: "",
    })
}

/// Finds a program on PATH (or an absolute path that exists).
pub fn which(program: &str) -> Option<PathBuf> {
    let p = Path::new(program);
    if p.is_absolute() {
        return p.exists().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    // Debian keeps mkfs.* in /usr/sbin, which is not on a normal user's PATH.
    let extra = OsString::from(":/usr/sbin:/sbin");
    let mut all = path;
    all.push(&extra);
    std::env::split_paths(&all).map(|d| d.join(program)).find(|c| c.is_file())
}

pub struct Tool {
    program: String,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    why: String,
}

impl Tool {
    pub fn new(program: &str) -> Self {
        Tool { program: program.to_string(), args: Vec::new(), envs: Vec::new(), why: String::new() }
    }

    /// What the command is for, in the words of an error message ("formatting the root partition").
    pub fn describe(mut self, why: impl Into<String>) -> Self {
        self.why = why.into();
        self
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs.push((k.as_ref().to_os_string(), v.as_ref().to_os_string()));
        self
    }

    pub fn cmdline(&self) -> String {
        let mut s = shell_quote(&self.program);
        for a in &self.args {
            s.push(' ');
            s.push_str(&shell_quote(&a.to_string_lossy()));
        }
        s
    }

    fn command(&self) -> Result<Command, ToolError> {
        let Some(path) = which(&self.program) else {
            let t = host_tool(&self.program);
            return Err(ToolError::NotFound {
                program: self.program.clone(),
                package: if t.package.is_empty() { self.program.clone() } else { t.package.into() },
                why: if self.why.is_empty() { t.why.into() } else { self.why.clone() },
            });
        };
        let mut cmd = Command::new(path);
        cmd.args(&self.args).env_clear().stdin(Stdio::null());
        for k in ENV_ALLOWLIST {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        cmd.env("LC_ALL", "C.UTF-8");
        if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH") {
            cmd.env("SOURCE_DATE_EPOCH", v);
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        Ok(cmd)
    }

    fn check(&self, status: ExitStatus, stderr: &[u8]) -> Result<(), ToolError> {
        use std::os::unix::process::ExitStatusExt;
        if status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(stderr);
        let text = text.trim();
        let tail = if text.is_empty() {
            String::new()
        } else {
            let start = text.len().saturating_sub(STDERR_TAIL);
            let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            format!("; its output ends with:\n{}", &text[start..])
        };
        let why = if self.why.is_empty() { format!("running {}", self.program) } else { self.why.clone() };
        Err(match status.signal() {
            Some(signal) => ToolError::Signal { why, cmdline: self.cmdline(), signal, tail },
            None => ToolError::Exit { why, cmdline: self.cmdline(), code: status.code().unwrap_or(-1), tail },
        })
    }

    /// Runs to completion; stdout and stderr are captured and only shown on failure.
    pub fn run(&self) -> Result<(), ToolError> {
        self.output().map(|_| ())
    }

    /// Runs to completion and returns stdout.
    pub fn output(&self) -> Result<String, ToolError> {
        Ok(String::from_utf8_lossy(&self.output_bytes()?).into_owned())
    }

    /// Runs to completion and returns stdout as bytes (binary output: DER, signatures).
    pub fn output_bytes(&self) -> Result<Vec<u8>, ToolError> {
        debug(&format!("+ {}", self.cmdline()));
        let out = self.command()?.stdout(Stdio::piped()).stderr(Stdio::piped()).output().map_err(|e| self.start_error(&e))?;
        // Tools such as mmdebstrap report on stdout what went wrong; keep both for the error.
        let mut both = out.stdout.clone();
        both.extend_from_slice(&out.stderr);
        self.check(out.status, &both)?;
        Ok(out.stdout)
    }
}

impl Tool {
    /// Runs to completion; returns the exit code and stdout with stderr, for tools whose
    /// non-zero codes carry meaning (e2fsck: 1 means "repaired"). Not installed and killed by a
    /// signal are still errors.
    pub fn output_with_status(&self) -> Result<(i32, String), ToolError> {
        use std::os::unix::process::ExitStatusExt;
        debug(&format!("+ {}", self.cmdline()));
        let out = self.command()?.stdout(Stdio::piped()).stderr(Stdio::piped()).output().map_err(|e| self.start_error(&e))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        match (out.status.code(), out.status.signal()) {
            (Some(code), _) => Ok((code, text)),
            _ => self.check(out.status, text.as_bytes()).map(|_| (-1, text)),
        }
    }

    /// Runs to completion with stdin from `input` and stdout into `output` (a database dump
    /// streamed to a file, or loaded back from one); stderr is captured for the error.
    pub fn run_with_files(&self, input: Option<std::fs::File>, output: Option<std::fs::File>) -> Result<(), ToolError> {
        debug(&format!("+ {}", self.cmdline()));
        let mut cmd = self.command()?;
        if let Some(f) = input {
            cmd.stdin(Stdio::from(f));
        }
        cmd.stdout(output.map(Stdio::from).unwrap_or_else(Stdio::null)).stderr(Stdio::piped());
        let out = cmd.output().map_err(|e| self.start_error(&e))?;
        self.check(out.status, &out.stderr)
    }

    /// Replaces this process with the tool (a unit's ExecStart that prepares, then becomes
    /// podman), keeping the variables in `keep` too (NOTIFY_SOCKET and the like). Returns only
    /// when the exec failed.
    pub fn exec(&self, keep: &[&str]) -> anyhow::Error {
        use std::os::unix::process::CommandExt;
        let mut cmd = match self.command() {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        for k in keep {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        let e = cmd.exec();
        anyhow::Error::new(e).context(format!("starting {}", self.program))
    }

    /// Starts a long-lived process (QEMU, swtpm) the way every tool runs: cleared environment,
    /// stdin from /dev/null, stdout discarded; stderr piped when `keep_stderr` (read when the
    /// process ends early), else discarded. The process is killed when the child is dropped.
    pub fn spawn(&self, keep_stderr: bool) -> Result<tokio::process::Child, ToolError> {
        debug(&format!("+ {} &", self.cmdline()));
        let mut cmd = tokio::process::Command::from(self.command()?);
        cmd.stdout(Stdio::null()).stderr(if keep_stderr { Stdio::piped() } else { Stdio::null() }).kill_on_drop(true);
        cmd.spawn().map_err(|e| self.start_error(&e))
    }

    /// Starts a long-lived process beside a synchronous one (the agent's web server), with
    /// stdout and stderr inherited (in a unit, the journal); the caller waits for it.
    pub fn start(&self) -> Result<std::process::Child, ToolError> {
        debug(&format!("+ {} &", self.cmdline()));
        let mut cmd = self.command()?;
        cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        cmd.spawn().map_err(|e| self.start_error(&e))
    }

    fn start_error(&self, e: &std::io::Error) -> ToolError {
        let why = if self.why.is_empty() { format!("running {}", self.program) } else { self.why.clone() };
        ToolError::Exit { why, cmdline: self.cmdline(), code: -1, tail: format!(": it could not be started: {e}") }
    }
}

pub fn debug(msg: &str) {
    if std::env::var_os("OUTPOST_DEBUG").is_some() {
        eprintln!("{msg}");
    }
}

pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Host tools from `needed` that are missing.
pub fn missing(needed: &[&str]) -> Vec<HostTool> {
    let mut out: Vec<HostTool> = needed.iter().filter(|p| which(p).is_none()).map(|p| host_tool(p)).collect();
    out.sort();
    out.dedup();
    out
}

/// Makes sure every tool in `needed` is there: as root on Debian/Ubuntu, installs the missing
/// packages (saying so); otherwise returns one error listing them with the apt-get line.
pub fn preflight(needed: &[&str]) -> Result<()> {
    let miss = missing(needed);
    if miss.is_empty() {
        return Ok(());
    }
    let mut pkgs: Vec<&str> = miss.iter().map(|t| t.package).collect();
    pkgs.sort();
    pkgs.dedup();
    let list: Vec<String> = miss.iter().map(|t| format!("{} ({}, for {})", t.program, t.package, t.why)).collect();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    if is_root && Path::new("/usr/bin/apt-get").exists() {
        // One install at a time from this process; another apt (unattended-upgrades, a second
        // build) is waited for below.
        static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
        if missing(needed).is_empty() {
            return Ok(());
        }
        eprintln!("outpost: installing missing host packages: {}", pkgs.join(" "));
        apt_get(Tool::new("apt-get").describe("updating the host's package lists").arg("update"))?;
        // Twice at most: installing one package can remove another that conflicts with its
        // version (Debian 12's qemu-system-x86 removes a backported qemu-utils, and qemu-img
        // with it); the second round puts back what the first took away.
        let mut round = pkgs.clone();
        for _ in 0..2 {
            apt_get(
                Tool::new("apt-get")
                    .describe(format!("installing the host packages {}", round.join(" ")))
                    .args(["install", "-y", "--no-install-recommends"])
                    .args(&round)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
            let still = missing(needed);
            if still.is_empty() {
                return Ok(());
            }
            round = still.iter().map(|t| t.package).collect();
            round.sort();
            round.dedup();
        }
        let still = missing(needed);
        let list: Vec<String> = still.iter().map(|t| format!("{} ({}, for {})", t.program, t.package, t.why)).collect();
        anyhow::bail!("apt-get installed the host packages, but these tools are still missing: {}", list.join(", "));
    }
    anyhow::bail!(
        "missing host tools: {}. Install them with: sudo apt-get install {}",
        list.join(", "),
        pkgs.join(" ")
    )
}

/// apt-get, waiting (up to ten minutes, saying so once) while another apt or dpkg holds its
/// lock; any other failure is apt's own message, not "missing tools".
fn apt_get(tool: Tool) -> Result<()> {
    let tool = tool.args(["-o", "DPkg::Lock::Timeout=600"]);
    let started = std::time::Instant::now();
    let mut said = false;
    loop {
        match tool.run() {
            Ok(()) => return Ok(()),
            Err(e @ ToolError::Exit { .. }) if is_lock_error(&e.to_string()) && started.elapsed() < std::time::Duration::from_secs(600) => {
                if !said {
                    eprintln!("outpost: another apt or dpkg holds the package lock; waiting for it (up to 10 minutes)");
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_secs(3));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn is_lock_error(text: &str) -> bool {
    text.contains("Could not get lock") || text.contains("Unable to acquire the dpkg frontend lock") || text.contains("Unable to lock directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_lock_messages_are_told_apart() {
        assert!(is_lock_error("E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 812 (apt-get)"));
        assert!(is_lock_error("E: Unable to lock directory /var/lib/apt/lists/"));
        assert!(!is_lock_error("E: Unable to locate package erofs-utils"));
    }

    #[test]
    fn missing_program_names_the_package() {
        let err = Tool::new("mkfs.nonexistent-outpost").describe("formatting x").run().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("mkfs.nonexistent-outpost is not installed"), "{msg}");
        assert!(msg.contains("formatting x"), "{msg}");
    }

    #[test]
    fn exit_status_and_stderr_tail_are_reported() {
        let err = Tool::new("sh").describe("testing").args(["-c", "echo boom >&2; exit 3"]).run().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exited with status 3"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
        assert!(msg.contains("`sh -c 'echo boom >&2; exit 3'`"), "{msg}");
    }

    #[test]
    fn signal_is_told_apart() {
        let err = Tool::new("sh").args(["-c", "kill -9 $$"]).run().unwrap_err();
        assert!(err.to_string().contains("killed by signal 9"), "{err}");
    }

    #[test]
    fn environment_is_cleared() {
        // SAFETY: test sets a variable only it reads.
        unsafe { std::env::set_var("OUTPOST_TEST_SECRET", "x") };
        let out = Tool::new("sh").args(["-c", "echo ${OUTPOST_TEST_SECRET:-unset} $LC_ALL"]).output().unwrap();
        assert_eq!(out.trim(), "unset C.UTF-8");
    }
}
