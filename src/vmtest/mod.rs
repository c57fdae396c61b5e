//! Boots an image under QEMU with OVMF and checks a scenario: the verdict line a unit in the
//! guest prints on the serial console, commands through the QEMU guest agent, HTTP on forwarded
//! ports. The image itself is never written to: the guest runs on a qcow2 overlay.

mod agent;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::spec::Scenario;
use crate::tool::Tool;

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Every guest unit that reports the system's state starts its line with this.
const VERDICT_PREFIX: &str = "OUTPOST-VERDICT:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub accel: String,
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    pub boot_seconds: f64,
    pub console_log: PathBuf,
}

/// KVM when it really runs a guest, TCG otherwise. `/dev/kvm` can exist and still fail (nested
/// or sandboxed hosts), so this boots the firmware for a few seconds and looks for its output.
/// `OUTPOST_ACCEL=kvm|tcg` skips the probe.
pub fn detect_accel(dir: &Path) -> Accel {
    match std::env::var("OUTPOST_ACCEL").as_deref() {
        Ok("kvm") => return Accel::Kvm,
        Ok("tcg") => return Accel::Tcg,
        _ => {}
    }
    if !Path::new("/dev/kvm").exists() {
        return Accel::Tcg;
    }
    let vars = dir.join("probe-vars.fd");
    if std::fs::copy(OVMF_VARS, &vars).is_err() {
        return Accel::Tcg;
    }
    let out = Tool::new("timeout")
        .args(["8", "qemu-system-x86_64", "-accel", "kvm", "-machine", "q35", "-m", "256", "-nodefaults", "-display", "none", "-serial", "stdio"])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .output();
    let _ = std::fs::remove_file(&vars);
    match out {
        Ok(s) if s.contains("BdsDxe") => Accel::Kvm,
        Err(crate::tool::ToolError::Exit { tail, .. }) if tail.contains("BdsDxe") => Accel::Kvm,
        _ => Accel::Tcg,
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// Kills QEMU when the test ends, however it ends.
struct Vm(tokio::process::Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

pub async fn run(scenario: &Scenario, image: &Path, dir: &Path) -> Result<Report> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let accel = detect_accel(dir);
    if accel == Accel::Tcg {
        eprintln!("outpost: KVM does not work on this host; booting under TCG (software emulation, slower)");
    }
    let overlay = dir.join("overlay.qcow2");
    let vars = dir.join("OVMF_VARS.fd");
    let console = dir.join("console.log");
    let qga = dir.join("qga.sock");
    for p in [&overlay, &console, &qga] {
        let _ = std::fs::remove_file(p);
    }
    std::fs::copy(OVMF_VARS, &vars).with_context(|| format!("copying {OVMF_VARS} (package ovmf)"))?;
    let backing_fmt = if image.extension().is_some_and(|e| e == "qcow2") { "qcow2" } else { "raw" };
    let image_abs = std::path::absolute(image)?;
    Tool::new("qemu-img")
        .describe("creating the test overlay")
        .args(["create", "-q", "-f", "qcow2", "-F", backing_fmt, "-b"])
        .arg(&image_abs)
        .arg(&overlay)
        .run()?;

    let mut forwards = Vec::new();
    let mut port_map = std::collections::BTreeMap::new();
    let guest_ports = scenario.http.iter().map(|h| h.port).chain((!scenario.ssh.is_empty()).then_some(22));
    for port in guest_ports {
        if let std::collections::btree_map::Entry::Vacant(e) = port_map.entry(port) {
            let host = free_port()?;
            e.insert(host);
            let guest = scenario.guest_address.map(|a| a.to_string()).unwrap_or_default();
            forwards.push(format!(",hostfwd=tcp:127.0.0.1:{host}-{guest}:{port}"));
        }
    }
    let accel_args: Vec<&str> = match accel {
        Accel::Kvm => vec!["-accel", "kvm", "-cpu", "host"],
        Accel::Tcg => vec!["-accel", "tcg,thread=multi", "-cpu", "max"],
    };
    let qemu = crate::tool::which("qemu-system-x86_64").context("qemu-system-x86_64 is not installed; apt-get install qemu-system-x86")?;
    let mut cmd = tokio::process::Command::new(qemu);
    cmd.args(&accel_args)
        .args(["-machine", "q35", "-smp", "2", "-m", &scenario.memory.to_string(), "-nodefaults", "-display", "none", "-no-user-config"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-drive")
        .arg(format!("if=virtio,format=qcow2,file={}", overlay.display()))
        // restrict=on: the guest reaches nothing outside, as in a clinic without internet.
        .arg("-netdev")
        .arg(format!(
            "user,id=n0,restrict=on{}{}",
            scenario.net.as_ref().map(|n| format!(",net={n}")).unwrap_or_default(),
            forwards.concat()
        ))
        .args(["-device", "virtio-net-pci,netdev=n0", "-device", "virtio-serial-pci"])
        .arg("-chardev")
        .arg(format!("socket,path={},server=on,wait=off,id=qga0", qga.display()))
        .args(["-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"])
        .args(["-device", "virtio-rng-pci"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let mut vm = Vm(child);
    let mut report = Report {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        accel: format!("{accel:?}").to_lowercase(),
        console_log: console.clone(),
        ..Default::default()
    };

    let deadline = started + Duration::from_secs(scenario.timeout);
    let verdict = wait_verdict(&mut vm, &console, deadline).await;
    report.boot_seconds = started.elapsed().as_secs_f64();
    match verdict {
        Ok(line) if line.trim() == scenario.verdict.trim() => {
            report.passed.push(format!("verdict `{line}` after {:.0} s", report.boot_seconds))
        }
        Ok(line) => report.failed.push(format!("the guest reported `{line}`, expected `{}`", scenario.verdict)),
        Err(e) => report.failed.push(format!("{e:#}")),
    }
    if report.failed.is_empty() {
        let cmd_deadline = Instant::now() + Duration::from_secs(120);
        for c in &scenario.commands {
            match agent::exec(&qga, &c.run, cmd_deadline).await {
                Ok((status, out)) => {
                    let out_ok = c.expect.as_ref().is_none_or(|e| out.contains(e.as_str()));
                    if status == c.expect_status && out_ok {
                        report.passed.push(format!("`{}` -> {}", c.run, out.trim()));
                    } else {
                        report.failed.push(format!(
                            "`{}` exited {status} with output `{}`; expected status {}{}",
                            c.run,
                            out.trim(),
                            c.expect_status,
                            c.expect.as_ref().map(|e| format!(" and output containing `{e}`")).unwrap_or_default()
                        ));
                    }
                }
                Err(e) => report.failed.push(format!("`{}`: {e:#}", c.run)),
            }
        }
        let text = std::fs::read(&console).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        for c in &scenario.console {
            if text.contains(&c.contains) {
                report.passed.push(format!("console shows `{}`", c.contains));
            } else {
                report.failed.push(format!("the console never showed `{}`", c.contains));
            }
        }
        for s in &scenario.ssh {
            let port = port_map[&22];
            match ssh_check(port, s, dir, Instant::now() + Duration::from_secs(90)).await {
                Ok(msg) => report.passed.push(msg),
                Err(e) => report.failed.push(format!("ssh {}@guest: {e:#}", s.user)),
            }
        }
        for h in &scenario.http {
            let port = port_map[&h.port];
            match http_check(port, h, Instant::now() + Duration::from_secs(60)).await {
                Ok(msg) => report.passed.push(msg),
                Err(e) => report.failed.push(format!("http guest port {} {}: {e:#}", h.port, h.path)),
            }
        }
    }
    let _ = vm.0.start_kill();
    let _ = vm.0.wait().await;
    let _ = std::fs::remove_file(&overlay);
    Ok(report)
}

/// Waits for the verdict line on the serial console, or QEMU's end, or the deadline.
async fn wait_verdict(vm: &mut Vm, console: &Path, deadline: Instant) -> Result<String> {
    loop {
        if let Ok(text) = tokio::fs::read(console).await {
            let text = String::from_utf8_lossy(&text);
            if let Some(line) = text.lines().find(|l| l.contains(VERDICT_PREFIX)) {
                let at = line.find(VERDICT_PREFIX).unwrap_or(0);
                return Ok(line[at..].trim().to_string());
            }
        }
        if let Some(status) = vm.0.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = vm.0.stderr.take() {
                let _ = e.read_to_string(&mut err).await;
            }
            bail!("QEMU exited ({status}) before the guest reported: {}", err.trim());
        }
        if Instant::now() > deadline {
            bail!("no `{VERDICT_PREFIX}` line on the console within the time limit");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn ssh_check(port: u16, s: &crate::spec::Ssh, dir: &Path, deadline: Instant) -> Result<String> {
    let mut t = Tool::new("ssh").args([
        "-p",
        &port.to_string(),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
    ]);
    match &s.key {
        Some(k) => {
            // ssh refuses keys others can read, and git does not keep modes.
            use std::os::unix::fs::PermissionsExt;
            let copy = dir.join(format!("ssh-key-{}", s.user));
            std::fs::copy(k, &copy).with_context(|| format!("copying {}", k.display()))?;
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600))?;
            t = t.arg("-i").arg(copy).args(["-o", "IdentitiesOnly=yes"]);
        }
        None => t = t.args(["-o", "PubkeyAuthentication=no"]),
    }
    let t = t.arg(format!("{}@127.0.0.1", s.user)).arg(&s.run);
    let mut last = String::new();
    while Instant::now() < deadline {
        let result = tokio::task::block_in_place(|| t.output());
        match (result, s.refused) {
            (Ok(out), false) => {
                if s.expect.as_ref().is_none_or(|e| out.contains(e.as_str())) {
                    return Ok(format!("ssh {}@guest `{}` -> {}", s.user, s.run, out.trim()));
                }
                bail!("`{}` printed `{}`, expected `{}`", s.run, out.trim(), s.expect.as_deref().unwrap_or(""));
            }
            (Err(e), true) if e.to_string().contains("Permission denied") => {
                return Ok(format!("ssh {}@guest without a key is refused", s.user));
            }
            (Ok(_), true) => bail!("the login succeeded but must be refused"),
            (Err(e), _) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    bail!("{last}")
}

async fn http_check(port: u16, h: &crate::spec::Http, deadline: Instant) -> Result<String> {
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match http_get(port, &h.path).await {
            Ok((status, body)) => {
                let body_ok = h.contains.as_ref().is_none_or(|c| body.contains(c.as_str()));
                if status == h.status && body_ok {
                    return Ok(format!("GET :{}{} -> {status}", h.port, h.path));
                }
                last = format!("answered {status} with `{}`", body.chars().take(200).collect::<String>());
            }
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("{last}; expected status {}{}", h.status, h.contains.as_ref().map(|c| format!(" and a body containing `{c}`")).unwrap_or_default())
}

async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), io).await.context("timed out")??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer: `{}`", text.chars().take(80).collect::<String>()))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// The last lines of the console log, for failure reports.
pub fn console_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
