//! Boots an image under QEMU with OVMF and checks a scenario: the verdict line a unit in the
//! guest prints on the serial console, commands through the QEMU guest agent, HTTP on forwarded
//! ports. The image itself is never written to: the guest runs on a qcow2 overlay.

mod account;
mod agent;
mod disk;
mod install;
mod power_cut;
mod sftp;
mod test_http;
pub use test_http::serve as test_http_server;
pub use sftp::SSHD;
mod thief;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::spec::{Boot, Scenario, TpmState};
use crate::tool::Tool;

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Secure Boot enforced, Debian's test key enrolled (ovmf's README.Debian).
const OVMF_VARS_SECURE_BOOT: &str = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";
/// OVMF's 2 MiB build (Debian 12 still ships it): with a TPM, under TCG, it reaches its boot
/// manager in 4-5 s where the 4 MiB build takes 9-15 s, 8-9 s of that in one hashing loop of
/// its PEI phase, measuring its firmware (3.5 MiB of code against 1.9 MiB; the UKI's
/// measurement after it costs the same in both). Guests without Secure Boot boot it when it is
/// installed; those with Secure Boot need the 4 MiB build's variable store with the test key
/// enrolled.
const OVMF_CODE_2M: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const OVMF_VARS_2M: &str = "/usr/share/OVMF/OVMF_VARS.fd";

/// The firmware a scenario's guest boots: its code and the variable store each machine
/// starts from.
fn firmware(secure_boot: bool) -> (&'static str, &'static str) {
    if secure_boot {
        (OVMF_CODE, OVMF_VARS_SECURE_BOOT)
    } else if Path::new(OVMF_CODE_2M).is_file() && Path::new(OVMF_VARS_2M).is_file() {
        (OVMF_CODE_2M, OVMF_VARS_2M)
    } else {
        (OVMF_CODE, OVMF_VARS)
    }
}
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
    /// Per boot: where its wall-clock time went, and, when it reached its verdict, systemd's
    /// account of the boot: its `Startup finished` line, critical chain and slowest units.
    pub timings: Vec<String>,
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
    if fs_err::copy(OVMF_VARS, &vars).is_err() {
        return Accel::Tcg;
    }
    let out = Tool::new("timeout")
        .args(["8", "qemu-system-x86_64", "-accel", "kvm", "-machine", "q35", "-m", "256", "-nodefaults", "-display", "none", "-serial", "stdio"])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .output();
    if let Err(e) = crate::files::remove_if_exists(&vars) {
        crate::tool::debug(&format!("{e:#}"));
    }
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

/// How the test machine is run.
#[derive(Debug, Clone, Copy)]
pub struct Guest {
    pub cpus: u8,
}

/// What stays the same across the boots of one scenario.
struct Machine<'a> {
    scenario: &'a Scenario,
    dir: &'a Path,
    accel: Accel,
    guest: Guest,
    overlay: PathBuf,
    vars: PathBuf,
    qga: PathBuf,
    forwards: String,
    port_map: std::collections::BTreeMap<u16, u16>,
    /// The USB stick with the update bundle, for boots with `update = true`.
    update_stick: Option<PathBuf>,
}

impl Machine<'_> {
    fn key_disk(&self) -> PathBuf {
        self.dir.join("key-disk.img")
    }

    fn backup_disk(&self) -> PathBuf {
        self.dir.join("backup-disk.img")
    }

    /// QEMU's QMP socket, for boots that plug a stick in while they run.
    fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    fn nocloud_disk(&self) -> PathBuf {
        self.dir.join("nocloud.img")
    }
}

pub async fn run(scenario: &Scenario, image: &Path, update: Option<&Path>, dir: &Path, guest: Guest) -> Result<Report> {
    fs_err::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let accel = detect_accel(dir);
    if accel == Accel::Tcg {
        eprintln!("outpost: KVM does not work on this host; booting under TCG (software emulation, slower)");
    }
    let overlay = dir.join("overlay.qcow2");
    let qga = dir.join("qga.sock");
    crate::files::remove_if_exists(&overlay)?;
    let backing_fmt = if image.extension().is_some_and(|e| e == "qcow2") { "qcow2" } else { "raw" };
    let image_abs = std::path::absolute(image)?;
    match &scenario.install {
        // An empty internal disk, which the installer on `image` (the ISO) writes.
        Some(inst) => Tool::new("qemu-img")
            .describe("creating the empty test disk")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&overlay)
            .arg(inst.disk.0.to_string())
            .run()?,
        None => Tool::new("qemu-img")
            .describe("creating the test overlay")
            .args(["create", "-q", "-f", "qcow2", "-F", backing_fmt, "-b"])
            .arg(&image_abs)
            .arg(&overlay)
            .run()?,
    }

    let mut forwards = String::new();
    let mut port_map = std::collections::BTreeMap::new();
    let guest_ports = scenario.http_ports().chain(scenario.uses_ssh().then_some(22));
    for port in guest_ports {
        if let std::collections::btree_map::Entry::Vacant(e) = port_map.entry(port) {
            let host = free_port()?;
            e.insert(host);
            let guest = scenario.guest_address.map(|a| a.to_string()).unwrap_or_default();
            forwards.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-{guest}:{port}"));
        }
    }
    if scenario.backup_server {
        forwards.push_str(&sftp::prepare(dir, scenario.backup_server_from.as_deref())?);
    }
    if let Some(files) = &scenario.metadata_service {
        forwards.push_str(&test_http::prepare(dir, files)?);
    }
    if scenario.status_receiver {
        forwards.push_str(&test_http::prepare_receiver(dir)?);
    }
    let update_stick = match update {
        Some(bundle) if scenario.boots.iter().any(|b| b.update) => Some(tokio::task::block_in_place(|| disk::update_stick(dir, bundle))?),
        _ => None,
    };
    let m = Machine { scenario, dir, accel, guest, overlay, vars: dir.join("OVMF_VARS.fd"), qga, forwards, port_map, update_stick };
    let mut report = Report {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        accel: format!("{accel:?}").to_lowercase(),
        ..Default::default()
    };
    let mut saved = std::collections::BTreeMap::new();
    let mut tpm_dir = dir.join("tpm");
    crate::files::remove_if_exists(&tpm_dir)?;
    let (_, vars) = firmware(scenario.secure_boot);
    fs_err::copy(vars, &m.vars).with_context(|| format!("copying {vars} (package ovmf)"))?;
    if scenario.key_disk {
        let img = m.key_disk();
        crate::files::remove_if_exists(&img)?;
        fs_err::File::create(&img)?.set_len(32 << 20)?;
        Tool::new("mkfs.fat").describe("formatting the test key disk").args(["-n", "OUTPOSTKEY"]).arg(&img).run()?;
    }
    if scenario.boots.iter().any(|b| b.backup_disk || b.hotplugs_backup_disk()) {
        let img = m.backup_disk();
        crate::files::remove_if_exists(&img)?;
        match &scenario.backup_disk_from {
            Some(from) => {
                fs_err::copy(from, &img)?;
            }
            None => {
                fs_err::File::create(&img)?.set_len(256 << 20)?;
                Tool::new("mkfs.fat").describe("formatting the test backup stick").args(["-F", "32", "-n", "OUTPOSTBKUP"]).arg(&img).run()?;
            }
        }
    }
    if let Some(files) = &scenario.nocloud {
        // ISO 9660 with Joliet and Rock Ridge, labelled cidata, as cloud-localds and Proxmox
        // make it (the FAT form is read by the same code: unit tests).
        let stage = dir.join("nocloud");
        crate::files::remove_if_exists(&stage)?;
        fs_err::create_dir_all(&stage)?;
        for (name, bytes) in files {
            fs_err::write(stage.join(name), bytes)?;
        }
        crate::files::remove_if_exists(&m.nocloud_disk())?;
        Tool::new("xorriso").describe("making the NoCloud seed disk").args(["-as", "mkisofs", "-quiet", "-joliet", "-rock", "-volid", "cidata", "-o"]).arg(m.nocloud_disk()).arg(&stage).run()?;
    }
    if let Some(inst) = &scenario.install {
        let console = dir.join("install.log");
        report.console_log = console.clone();
        let (passed, failed) = install::run(&m, inst, image, &console).await?;
        report.passed.extend(passed);
        if !failed.is_empty() || !inst.installs() {
            report.failed.extend(failed);
            crate::files::remove_if_exists(&m.overlay)?;
            return Ok(report);
        }
        // The installer writes no UEFI boot entry: OVMF, whose variables list only the
        // stick now, would start its shell; fresh variables make it look for the disk's
        // \EFI\BOOT\BOOTX64.EFI, as most PC firmware does by itself.
        fs_err::copy(vars, &m.vars)?;
    }
    let many = scenario.boots.len() > 1;
    for (n, boot) in scenario.boots.iter().enumerate() {
        if boot.tpm == TpmState::Fresh {
            // Another machine: its own TPM and its own firmware variables.
            tpm_dir = dir.join(format!("tpm-{}", n + 1));
            crate::files::remove_if_exists(&tpm_dir)?;
            fs_err::copy(vars, &m.vars)?;
        }
        if boot.update {
            let stick = m.update_stick.as_ref().context("the scenario plugs in an update stick, but no update bundle was built")?;
            report.passed.push(format!("boot {}: the update stick plugged in ({}, {} bytes)", n + 1, update.map(|u| u.display().to_string()).unwrap_or_default(), fs_err::metadata(stick)?.len()));
        }
        let tpm = (scenario.tpm && boot.tpm != TpmState::None).then_some(tpm_dir.as_path());
        let console = dir.join(if n == 0 { "console.log".to_string() } else { format!("console-{}.log", n + 1) });
        report.console_log = console.clone();
        let label = if many { format!("boot {}: ", n + 1) } else { String::new() };
        let mut phases = Phases::default();
        let (passed, failed) = boot_once(&m, boot, tpm, &console, &mut saved, &mut phases, n + 1 == scenario.boots.len() && scenario.power_cuts.is_none()).await?;
        report.boot_seconds = report.boot_seconds.max(phases.verdict);
        report.timings.push(format!("{label}{phases}"));
        if let Some(a) = &phases.account {
            report.timings.extend(a.lines().into_iter().map(|l| format!("{label}{l}")));
        }
        report.passed.extend(passed.into_iter().map(|p| format!("{label}{p}")));
        let stop = !failed.is_empty();
        report.failed.extend(failed.into_iter().map(|f| format!("{label}{f}")));
        if stop {
            break;
        }
    }
    if let Some(cuts) = &scenario.power_cuts
        && report.failed.is_empty()
    {
        let tpm = scenario.tpm.then_some(tpm_dir.as_path());
        power_cut::run(&m, cuts, tpm, &mut report).await?;
    }
    crate::files::remove_if_exists(&m.overlay)?;
    if let Some(s) = &m.update_stick {
        crate::files::remove_if_exists(s)?;
    }
    Ok(report)
}

/// Starts swtpm on a state directory (created empty for a new TPM); returns the process and
/// its control socket.
async fn start_swtpm(state: &Path) -> Result<(tokio::process::Child, PathBuf)> {
    fs_err::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
    let sock = state.join("swtpm.sock");
    crate::files::remove_if_exists(&sock)?;
    let child = Tool::new("swtpm")
        .describe("starting the test guest's software TPM")
        .args(["socket", "--tpm2", "--tpmstate"])
        .arg(format!("dir={}", state.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", sock.display()))
        .spawn(false)?;
    let until = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if Instant::now() > until {
            bail!("swtpm did not create {}", sock.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((child, sock))
}

/// The CPU a guest gets under TCG: everything TCG emulates, but for the fast-string feature.
const TCG_CPU: &str = "max,erms=off";

/// The machine itself: CPU, memory, the serial console to a file, OVMF (or, with `uefi`
/// false, QEMU's SeaBIOS) and the scenario's disk; QEMU is killed with the command.
fn machine_command(m: &Machine<'_>, console: &Path, uefi: bool) -> Tool {
    let mut cmd = Tool::new("qemu-system-x86_64").describe("starting the test machine");
    cmd = match m.accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        // Without ERMS: the guest kernel then zeroes and copies pages with plain stores (or
        // `rep stosq`) instead of `rep stosb`, which TCG runs one byte per step. With it,
        // zeroing pages (`clear_page_erms`) was 45 % of a later boot's CPU samples between
        // systemd's start and the data partition's unlock, and PID1 used 17 s of CPU where it
        // now uses 6 s. Real hardware is not emulated: this changes nothing of the appliance.
        Accel::Tcg => cmd.args(["-accel", "tcg,thread=multi", "-cpu", TCG_CPU]),
    };
    cmd = cmd
        .args(["-machine", "q35", "-smp", &m.guest.cpus.to_string(), "-m", &m.scenario.memory.to_string(), "-nodefaults", "-display", "none", "-no-user-config"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()));
    if uefi {
        let (code, _) = firmware(m.scenario.secure_boot);
        cmd = cmd.arg("-drive").arg(format!("if=pflash,format=raw,readonly=on,file={code}"));
        cmd = cmd.arg("-drive").arg(format!("if=pflash,format=raw,file={}", m.vars.display()));
    }
    cmd.arg("-drive").arg(format!("if=virtio,format=qcow2,file={}", m.overlay.display()))
}

/// The QEMU command line of one boot.
fn qemu_command(m: &Machine<'_>, boot: &Boot, console: &Path, tpm_sock: Option<&Path>) -> Tool {
    let mut cmd = machine_command(m, console, true);
    // restrict=on: the guest reaches nothing outside, as in a clinic without internet.
    cmd = cmd
        .arg("-netdev")
        .arg(format!("user,id=n0,restrict=on{}{}", m.scenario.net.as_ref().map(|n| format!(",net={n}")).unwrap_or_default(), m.forwards))
        .args(["-device", "virtio-net-pci,netdev=n0", "-device", "virtio-serial-pci"])
        .arg("-chardev")
        .arg(format!("socket,path={},server=on,wait=off,id=qga0", m.qga.display()))
        .args(["-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"])
        .args(["-device", "virtio-rng-pci"])
        // The Intel 6300ESB watchdog: what systemd's RuntimeWatchdogSec drives when the
        // guest's kernel has its driver (the appliance falls back to softdog otherwise).
        .args(["-device", "i6300esb"]);
    if m.scenario.metadata_service.is_some() {
        // What EC2's firmware says, and the appliance checks before it asks the service.
        cmd = cmd.args(["-smbios", "type=1,manufacturer=Amazon EC2,product=t3.small"]);
    }
    if m.scenario.nocloud.is_some() {
        cmd = cmd.arg("-drive").arg(format!("if=virtio,format=raw,readonly=on,file={}", m.nocloud_disk().display()));
    }
    if boot.backup_disk {
        cmd = cmd.arg("-drive").arg(format!("if=virtio,format=raw,file={}", m.backup_disk().display()));
    }
    if boot.hotplugs_backup_disk() {
        // The stick's drive, with no device until a command plugs it into this free PCIe port.
        cmd = cmd
            // At a fixed high slot: a device added in the middle would move the disk to another
            // PCI address, and the firmware's boot entry with it.
            .args(["-device", &format!("pcie-root-port,id={HOTPLUG_PORT},chassis=9,bus=pcie.0,addr=0x1c")])
            .arg("-drive")
            .arg(format!("if=none,id={HOTPLUG_DRIVE},format=raw,file={}", m.backup_disk().display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", m.qmp().display()));
    }
    if boot.key_disk {
        cmd = cmd.arg("-drive").arg(format!("if=virtio,format=raw,file={}", m.key_disk().display()));
    }
    if let (true, Some(stick)) = (boot.update, &m.update_stick) {
        cmd = cmd.arg("-drive").arg(format!("if=virtio,format=raw,readonly=on,file={}", stick.display()));
    }
    if let Some(sock) = tpm_sock {
        cmd = cmd.arg("-chardev").arg(format!("socket,id=chrtpm,path={}", sock.display()));
        // CRB, the command-buffer interface of the firmware TPMs in today's PCs (Intel PTT, AMD
        // fTPM): the firmware reaches the kernel's EFI stub in 11.8-14.8 s under TCG where TIS's
        // byte-at-a-time FIFO took 19.3-19.7 s.
        cmd = cmd.args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0"]);
    }
    cmd
}

/// Where one boot of a scenario spent its wall-clock time, for the report: which part of a
/// scenario's minutes are the guest's boot and which the harness's checks around it (#19).
#[derive(Default)]
struct Phases {
    /// The power cut's moment, for a boot the scenario cuts before its verdict.
    cut: Option<f64>,
    /// For a boot cut after its checks: the seconds from their end to the cut.
    cut_after_checks: Option<f64>,
    verdict: f64,
    /// The boot's first plain GET check, asked from power-on: when it first answered.
    answered: Option<(String, f64)>,
    checks: f64,
    /// Waiting, after the checks, for the guest's account of its boot.
    accounting: f64,
    power_off: f64,
    account: Option<account::Account>,
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(cut) = self.cut {
            return write!(f, "wall clock: power cut after {cut:.0} s");
        }
        write!(f, "wall clock: verdict after {:.0} s, ", self.verdict)?;
        if let Some((get, secs)) = &self.answered {
            write!(f, "{get} answered after {secs:.1} s, ")?;
        }
        write!(f, "checks {:.0} s, ", self.checks)?;
        if self.accounting >= 0.5 {
            write!(f, "boot account {:.0} s, ", self.accounting)?;
        }
        match self.cut_after_checks {
            Some(s) => write!(f, "power cut {s:.0} s later")?,
            None => write!(f, "power-off {:.0} s", self.power_off)?,
        }
        if let Some(line) = self.account.as_ref().and_then(|a| a.startup.as_ref()) {
            write!(f, "; systemd: {line}")?;
        }
        Ok(())
    }
}

/// One power-on: verdict, guest checks, then (when disk checks follow or another boot does) a
/// clean power-off, then the disk checks.
async fn boot_once(
    m: &Machine<'_>,
    boot: &Boot,
    tpm: Option<&Path>,
    console: &Path,
    saved: &mut std::collections::BTreeMap<String, String>,
    phases: &mut Phases,
    last: bool,
) -> Result<(Vec<String>, Vec<String>)> {
    let (mut passed, mut failed) = (Vec::new(), Vec::new());
    for p in [console, m.qga.as_path()] {
        crate::files::remove_if_exists(p)?;
    }
    if boot.corrupt_root {
        let at = tokio::task::block_in_place(|| disk::flip_byte(m.dir, &m.overlay, crate::format::layout::SLOTS[0].1))?;
        passed.push(format!("flipped the byte at offset {at} of the disk, in the root partition (data of {})", disk::CORRUPTED_FILE));
    }
    if let Some(name) = &boot.corrupt_root_start {
        let at = tokio::task::block_in_place(|| disk::flip_root_superblock(m.dir, &m.overlay, name))?;
        passed.push(format!("flipped the byte at offset {at} of the disk, in the superblock of the root partition {name}"));
    }
    let thief = match boot.thief {
        Some(t) => {
            let p = tokio::task::block_in_place(|| thief::prepare(m.dir, &m.overlay, t))?;
            passed.push(format!("a thief's boot: {}", p.what));
            Some(p)
        }
        None => None,
    };
    let swtpm = match tpm {
        Some(state) => Some(start_swtpm(state).await?),
        None => None,
    };
    // MTTCG on QEMU 7.2 now and then livelocks a guest early in the kernel (seen once in ~30
    // boots: console silent, both host cores busy). Such a boot is power-cycled once, which
    // the appliance must survive anyway, and the report says so.
    let mut vm;
    let mut started;
    let mut attempt = 0;
    // A boot with a verdict is cut, if at all, after its checks.
    let cut_before_verdict = boot.power_cut_at.as_deref().filter(|_| boot.verdict.is_empty());
    let needle = cut_before_verdict.unwrap_or(VERDICT_PREFIX);
    // When the application first answers (the boot's first plain GET check, asked from
    // power-on every quarter second): what a clinic waits for after a power cut, often before
    // the boot's verdict, which waits for every unit. Information, not a check.
    let probe = boot.http.iter().find(|h| h.tls_name.is_none() && h.body.is_none() && h.body_file.is_none()).filter(|_| cut_before_verdict.is_none());
    let mut answered: Option<tokio::task::JoinHandle<Option<f64>>> = None;
    let found = loop {
        let mut cmd = qemu_command(m, boot, console, swtpm.as_ref().map(|(_, s)| s.as_path()));
        if let Some((kernel, initrd, cmdline)) = thief.as_ref().and_then(|t| t.direct.as_ref()) {
            cmd = cmd.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd).arg("-append").arg(cmdline);
        }
        started = Instant::now();
        vm = Vm(cmd.spawn(true)?);
        if let Some(a) = answered.take() {
            a.abort();
        }
        answered = probe.map(|h| {
            let (port, path, status, t0, limit) = (m.port_map[&h.port], h.path.clone(), h.status, started, Duration::from_secs(m.scenario.timeout));
            // Bounded by the boot's time limit, should an early return leave it running.
            tokio::spawn(async move {
                while t0.elapsed() < limit {
                    // Briefly: before the guest's network is up, a forwarded connection hangs.
                    if matches!(tokio::time::timeout(Duration::from_secs(2), http_request(port, &path, None)).await, Ok(Ok((s, _))) if s == status) {
                        return Some(t0.elapsed().as_secs_f64());
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                None
            })
        });
        let deadline = started + Duration::from_secs(m.scenario.timeout);
        match wait_console(&mut vm, console, needle, deadline, Some(&m.qga)).await {
            // Twice: a scenario whose guest restarts itself (an update's tries) passes through
            // the firmware several times in one boot of the scenario; a stall right after a
            // guest's reset was seen once in such a run.
            Ok(Wait::Stalled(secs)) if attempt < 2 => {
                let _ = vm.0.start_kill();
                let _ = vm.0.wait().await;
                let kept = console.with_extension(format!("stalled-{}.log", attempt + 1));
                fs_err::rename(console, &kept)?;
                passed.push(format!("(the guest stalled under TCG: console silent for {secs} s; power-cycled once, log {})", kept.display()));
                attempt += 1;
            }
            Ok(Wait::Stalled(secs)) => break Err(anyhow::anyhow!("the guest stalled three times (console silent for {secs} s)")),
            Ok(Wait::Found(line)) => break Ok(line),
            Err(e) => break Err(e),
        }
    };
    if let Some(text) = cut_before_verdict {
        match found {
            Ok(_) => {
                let (at, what) = cut_power(&mut vm, boot, text, started).await;
                phases.cut = Some(at);
                passed.push(what);
            }
            Err(e) => failed.push(format!("{e:#}")),
        }
        // What the console showed before the cut (a first boot's one-time lines).
        let text = boot_console(console);
        for c in &boot.console {
            match text.contains(&c.contains) {
                true => passed.push(format!("console shows `{}`", c.contains)),
                false => failed.push(format!("the console never showed `{}` before the cut", c.contains)),
            }
        }
        if let Some(t) = &thief {
            tokio::task::block_in_place(|| thief::restore(&m.overlay, t))?;
        }
        return Ok((passed, failed));
    }
    let verdict = found;
    let secs = started.elapsed().as_secs_f64();
    phases.verdict = secs;
    match verdict {
        Ok(line) if line.trim().starts_with(boot.verdict.trim()) => passed.push(format!("verdict `{line}` after {secs:.0} s")),
        Ok(line) => {
            failed.push(format!("the guest reported `{line}`, expected `{}`", boot.verdict));
            failed.extend(failed_units_journal(&m.qga, &line).await);
        }
        Err(e) => failed.push(format!("{e:#}")),
    }
    // Where the boot's time went (#19): the guest reads its units' timestamps in the background
    // while the checks run (3-5 s of a guest under emulation, where systemd-analyze's
    // critical-chain and blame took 8-30 s), and it is collected after them. At the normal
    // priority: at the lowest, the checks starved it and it was waited for after them (16 s of
    // a CI run's debian-base boot). Not a check, never a failure.
    let reached = passed.iter().any(|p| p.starts_with("verdict `"));
    let mut accounting = false;
    if reached {
        let cmd = format!("{{ {}; }} > /run/outpost-account.part 2>/dev/null && mv /run/outpost-account.part /run/outpost-account.txt", account::query());
        let start = format!("rm -f /run/outpost-account.txt; nohup sh -c {} > /dev/null 2>&1 < /dev/null &", crate::tool::shell_quote(&cmd));
        // Not started (the guest agent did not answer): nothing to collect later either.
        accounting = agent::exec(&m.qga, &start, Instant::now() + Duration::from_secs(10)).await.is_ok();
    }
    let lap = Instant::now();
    if failed.is_empty() {
        guest_checks(m, boot, console, saved, &mut passed, &mut failed).await;
    }
    phases.checks = lap.elapsed().as_secs_f64();
    if let Some(mut a) = answered {
        match tokio::time::timeout(Duration::from_secs(3), &mut a).await {
            Ok(r) => phases.answered = r.ok().flatten().zip(probe).map(|(secs, h)| (format!("GET :{}{}", h.port, h.path), secs)),
            Err(_) => a.abort(),
        }
    }
    if accounting {
        let lap = Instant::now();
        let wait = "for i in $(seq 60); do [ -e /run/outpost-account.txt ] && exec cat /run/outpost-account.txt; sleep 0.5; done; exit 1";
        if let Ok((0, out)) = agent::exec(&m.qga, wait, Instant::now() + Duration::from_secs(35)).await {
            match account::parse(&out) {
                Ok(a) => phases.account = Some(a),
                Err(e) => crate::tool::debug(&format!("the boot's account: {e:#}")),
            }
        }
        phases.accounting = lap.elapsed().as_secs_f64();
    }
    let lap = Instant::now();
    if failed.is_empty() && boot.plug_backup_disk_after_checks {
        match plug_backup_stick(m).await {
            Ok(()) => passed.push("after the checks, the backup stick plugged in while the machine runs".into()),
            Err(e) => failed.push(format!("plugging the backup stick in after the checks: {e:#}")),
        }
    }
    match boot.power_cut_at.as_deref() {
        // After the checks, for as long as a boot may take: the text is looked for in the whole
        // boot's console, so one it showed before the checks cuts at once.
        Some(text) if failed.is_empty() => match wait_console(&mut vm, console, text, Instant::now() + Duration::from_secs(m.scenario.timeout), Some(&m.qga)).await {
            Ok(Wait::Found(_)) => {
                let (_, what) = cut_power(&mut vm, boot, text, started).await;
                phases.cut_after_checks = Some(lap.elapsed().as_secs_f64());
                passed.push(what);
            }
            Ok(Wait::Stalled(secs)) => failed.push(format!("after the checks, the console was silent for {secs} s and never showed `{text}`")),
            Err(e) => failed.push(format!("after the checks, waiting for `{text}` to cut the power: {e:#}")),
        },
        _ if failed.is_empty() && (!last || !boot.disk.is_empty()) => {
            if let Err(e) = power_off(&mut vm, &m.qga).await {
                failed.push(format!("powering off: {e:#}"));
            }
        }
        _ => {}
    }
    let _ = vm.0.start_kill();
    let _ = vm.0.wait().await;
    phases.power_off = lap.elapsed().as_secs_f64();
    drop(swtpm);
    if let Some(t) = &thief {
        tokio::task::block_in_place(|| thief::restore(&m.overlay, t))?;
    }
    if failed.is_empty() {
        for d in &boot.disk {
            match tokio::task::block_in_place(|| disk::check(m.dir, &m.overlay, d, saved)) {
                Ok(msg) => passed.push(msg),
                Err(e) => failed.push(format!("disk partition `{}`: {e:#}", d.partition)),
            }
        }
    }
    Ok((passed, failed))
}

async fn guest_checks(
    m: &Machine<'_>,
    boot: &Boot,
    console: &Path,
    saved: &mut std::collections::BTreeMap<String, String>,
    passed: &mut Vec<String>,
    failed: &mut Vec<String>,
) {
    // What the console must show may come after the verdict (an update applied once the boot has
    // finished): each line is waited for, up to five minutes in all, before the commands run.
    let console_deadline = Instant::now() + Duration::from_secs(300);
    for c in &boot.console {
        loop {
            if boot_console(console).contains(&c.contains) {
                passed.push(format!("console shows `{}`", c.contains));
                break;
            }
            if Instant::now() > console_deadline {
                failed.push(format!("the console never showed `{}`", c.contains));
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let cmd_deadline = Instant::now() + Duration::from_secs(120);
    for c in &boot.commands {
        // Each command has its own time (`timeout`, else 120 s) from when it starts: one that
        // follows a long one is not cut off by the time that one used.
        let deadline = cmd_deadline.max(Instant::now() + Duration::from_secs(c.timeout.unwrap_or(120)));
        if c.plug_backup_disk {
            match plug_backup_stick(m).await {
                Ok(()) => passed.push("the backup stick plugged in while the machine runs".into()),
                Err(e) => {
                    failed.push(format!("plugging the backup stick in: {e:#}"));
                    continue;
                }
            }
        }
        match agent::exec(&m.qga, &c.run, deadline).await {
            Ok((status, out)) => {
                let out_ok = c.expect.as_ref().is_none_or(|e| out.contains(e.as_str()));
                if status == c.expect_status && out_ok {
                    if let Some(name) = &c.save_as {
                        saved.insert(name.clone(), out.trim().to_string());
                        passed.push(format!("`{}` -> (saved as {name})", c.run));
                    } else {
                        passed.push(format!("`{}` -> {}", c.run, out.trim()));
                    }
                } else {
                    failed.push(format!(
                        "`{}` exited {status} with output `{}`; expected status {}{}",
                        c.run,
                        out.trim(),
                        c.expect_status,
                        c.expect.as_ref().map(|e| format!(" and output containing `{e}`")).unwrap_or_default()
                    ));
                }
            }
            Err(e) => failed.push(format!("`{}`: {e:#}", c.run)),
        }
    }
    for s in &boot.ssh {
        let port = m.port_map[&22];
        match ssh_check(port, s, m.dir, Instant::now() + Duration::from_secs(90)).await {
            Ok(msg) => passed.push(msg),
            Err(e) => failed.push(format!("ssh {}@guest: {e:#}{}", s.user, guest_network(&m.qga).await)),
        }
    }
    for h in &boot.http {
        let port = m.port_map[&h.port];
        // 150 s: on a loaded host (CI's two guests and a build on two cores) udev renamed a
        // guest's NIC, after which networkd configures it, up to 10 s after the verdict, and
        // checks that allowed 60 s timed out (#19).
        match http_check(port, h, m.scenario.ca_cert.as_deref(), Instant::now() + Duration::from_secs(150)).await {
            Ok(msg) => passed.push(msg),
            Err(e) => failed.push(format!("http guest port {} {}: {e:#}{}", h.port, h.path, guest_network(&m.qga).await)),
        }
    }
}

/// The last journal lines of each unit a verdict names as failed (at most four units): a run on
/// another machine keeps only its report, and "outpost-site.service failed" alone says nothing
/// of why. Each unit's lines are one report entry.
async fn failed_units_journal(qga: &Path, verdict: &str) -> Vec<String> {
    let mut out = Vec::new();
    for u in verdict_units(verdict) {
        let cmd = format!("journalctl -b -o short-monotonic --no-pager -u {} 2>&1 | tail -n 15", crate::tool::shell_quote(u));
        match agent::exec(qga, &cmd, Instant::now() + Duration::from_secs(30)).await {
            Ok((_, text)) => out.push(format!("the journal of {u} (its last lines): {}", text.trim().replace('\n', " | "))),
            Err(e) => out.push(format!("the journal of {u} could not be read: {e:#}")),
        }
    }
    out
}

/// The units a verdict line names as failed or restarting again and again, at most four.
fn verdict_units(verdict: &str) -> Vec<&str> {
    let Some(at) = [" failed: ", " again and again: "].iter().filter_map(|k| verdict.find(k).map(|i| i + k.len())).min() else { return Vec::new() };
    let units = &verdict[at..];
    let unit = |u: &&str| u.contains('.') && u.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@:\\".contains(c));
    units.split_whitespace().take_while(|u| !u.starts_with('(')).filter(unit).take(4).collect()
}

/// What the guest says of its network, for a check from outside that got no answer.
async fn guest_network(qga: &Path) -> String {
    let cmd = "cut -d' ' -f1 /proc/uptime; ip -brief address 2>&1; networkctl --no-pager --no-legend list 2>&1; journalctl -b -o short-monotonic --no-pager -u systemd-networkd 2>&1 | tail -n 8";
    match agent::exec(qga, cmd, Instant::now() + Duration::from_secs(30)).await {
        Ok((_, out)) => format!("; the guest's uptime and network then: {}", out.trim().replace('\n', " | ")),
        Err(e) => format!("; the guest's network could not be read: {e:#}"),
    }
}

/// The PCIe port and the drive of a stick plugged in while the machine runs.
const HOTPLUG_PORT: &str = "hotplug0";
const HOTPLUG_DRIVE: &str = "backup-stick-drive";

/// Plugs the scenario's backup stick into the running machine's free PCIe port.
async fn plug_backup_stick(m: &Machine<'_>) -> Result<()> {
    qmp(&m.qmp(), serde_json::json!({"execute": "device_add", "arguments": {"driver": "virtio-blk-pci", "bus": HOTPLUG_PORT, "drive": HOTPLUG_DRIVE, "id": "backup-stick"}})).await
}

/// Pulls the plug once the console has shown `text` (and the boot's `power-cut-delay` has
/// passed): SIGKILL, so the guest gets no chance to flush or unmount. Returns the moment (from
/// power-on) and what the report says of it.
async fn cut_power(vm: &mut Vm, boot: &Boot, text: &str, started: Instant) -> (f64, String) {
    if boot.power_cut_delay > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(boot.power_cut_delay)).await;
    }
    let _ = vm.0.start_kill();
    let _ = vm.0.wait().await;
    let delay = if boot.power_cut_delay > 0.0 { format!(" and {:.1} s more", boot.power_cut_delay) } else { String::new() };
    let at = started.elapsed().as_secs_f64();
    (at, format!("power cut {at:.0} s after power-on, when the console showed `{text}`{delay}"))
}

/// One command to QEMU's machine protocol (QMP): an error when QEMU answers with one.
async fn qmp(sock: &Path, command: serde_json::Value) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let talk = async {
        let s = tokio::net::UnixStream::connect(sock).await.with_context(|| format!("connecting to QEMU's QMP socket {}", sock.display()))?;
        let (r, mut w) = s.into_split();
        let mut lines = tokio::io::BufReader::new(r).lines();
        // The greeting, then each command's answer (events may come between: skipped).
        lines.next_line().await?.context("QMP closed before its greeting")?;
        for c in [serde_json::json!({"execute": "qmp_capabilities"}), command] {
            w.write_all(format!("{c}\n").as_bytes()).await?;
            loop {
                let line = lines.next_line().await?.context("QMP closed")?;
                let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("QMP said `{line}`"))?;
                if let Some(e) = v.get("error") {
                    bail!("QEMU refused `{c}`: {}", e["desc"].as_str().unwrap_or(&line));
                }
                if v.get("return").is_some() {
                    break;
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(30), talk).await.context("QEMU's QMP socket did not answer in 30 s")?
}

/// A clean power-off through the guest agent, as a person pressing the power button would.
async fn power_off(vm: &mut Vm, qga: &Path) -> Result<()> {
    agent::shutdown(qga, Instant::now() + Duration::from_secs(30)).await?;
    match tokio::time::timeout(Duration::from_secs(120), vm.0.wait()).await {
        Ok(status) => {
            status?;
            Ok(())
        }
        Err(_) => bail!("the guest did not power off within 120 s"),
    }
}

/// This boot's console, with what attempts that stalled and were power-cycled showed (a first
/// boot's one-time lines are not shown again).
fn boot_console(console: &Path) -> String {
    let mut text = String::new();
    for n in 1..=2 {
        text += &fs_err::read(console.with_extension(format!("stalled-{n}.log"))).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    }
    text + &fs_err::read(console).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

enum Wait {
    /// The line, from the needle on.
    Found(String),
    /// The console has been silent this many seconds.
    Stalled(u64),
}

/// Seconds of console silence before the verdict that mean the guest is stuck, not slow:
/// systemd prints a progress line every few seconds while any job is slow.
const STALL_SECONDS: u64 = 150;

/// Waits for a line with `needle` on the serial console, or QEMU's end, or the deadline, or a
/// silent console. With the guest agent's socket, a silent guest whose agent still answers is
/// busy (a container's first start, under TCG on a loaded host), not stuck: it is waited for
/// until the deadline rather than power-cycled, which would be a power cut the scenario did
/// not ask for.
async fn wait_console(vm: &mut Vm, console: &Path, needle: &str, deadline: Instant, qga: Option<&Path>) -> Result<Wait> {
    let (mut size, mut changed) = (0, Instant::now());
    loop {
        if let Ok(text) = tokio::fs::read(console).await {
            if text.len() != size {
                (size, changed) = (text.len(), Instant::now());
            }
            let text = String::from_utf8_lossy(&text);
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                let at = line.find(needle).unwrap_or(0);
                return Ok(Wait::Found(line[at..].trim().to_string()));
            }
        }
        if changed.elapsed() > Duration::from_secs(STALL_SECONDS) {
            match qga {
                Some(sock) if agent::answers(sock, Duration::from_secs(20)).await => changed = Instant::now(),
                _ => return Ok(Wait::Stalled(STALL_SECONDS)),
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
            bail!("no `{needle}` on the console within the time limit");
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
            fs_err::copy(k, &copy).with_context(|| format!("copying {}", k.display()))?;
            fs_err::set_permissions(&copy, std::fs::Permissions::from_mode(0o600))?;
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

async fn http_check(port: u16, h: &crate::spec::Http, ca: Option<&Path>, deadline: Instant) -> Result<String> {
    if let Some(name) = &h.tls_name {
        let ca = ca.context("an HTTPS check (`tls-name`) needs the deployment CA: set `deployment-ca = true` and give --ca DIR")?;
        return https_check(port, h, name, ca, deadline).await;
    }
    let mut last = String::from("no answer");
    let body: Option<(Vec<u8>, &str)> = match (&h.body, &h.body_file) {
        (Some(b), _) => Some((b.clone().into_bytes(), "text/plain")),
        (None, Some(f)) => Some((fs_err::read(f).with_context(|| format!("reading {}", f.display()))?, "application/octet-stream")),
        (None, None) => None,
    };
    while Instant::now() < deadline {
        match http_request(port, &h.path, body.as_ref().map(|(b, t)| (b.as_slice(), *t))).await {
            Ok((status, answer)) => {
                let body_ok = h.contains.as_ref().is_none_or(|c| answer.contains(c.as_str()));
                if status == h.status && body_ok {
                    return Ok(format!("{} :{}{} -> {status}", if body.is_some() { "POST" } else { "GET" }, h.port, h.path));
                }
                last = format!("answered {status} with `{}`", answer.chars().take(200).collect::<String>());
            }
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("{last}; expected status {}{}", h.status, h.contains.as_ref().map(|c| format!(" and a body containing `{c}`")).unwrap_or_default())
}

/// A GET over HTTPS as a phone that trusts the deployment CA makes it: curl with only that CA,
/// asking for `name` (which the box's certificate must carry).
async fn https_check(port: u16, h: &crate::spec::Http, name: &str, ca: &Path, deadline: Instant) -> Result<String> {
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        let t = Tool::new("curl")
            .describe(format!("asking https://{name}:{}{} with only the deployment CA trusted", h.port, h.path))
            .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
            .arg(ca)
            .arg("--resolve")
            .arg(format!("{name}:{port}:127.0.0.1"))
            .arg(format!("https://{name}:{port}{}", h.path));
        match tokio::task::spawn_blocking(move || t.output()).await? {
            Ok(out) => {
                let (body, status) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
                let body_ok = h.contains.as_ref().is_none_or(|c| body.contains(c.as_str()));
                if status == h.status.to_string() && body_ok {
                    return Ok(format!("GET https://{name}:{}{} -> {status}, certificate trusted through the deployment CA", h.port, h.path));
                }
                last = format!("answered {status} with `{}`", body.chars().take(200).collect::<String>());
            }
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("{last}; expected status {}{}", h.status, h.contains.as_ref().map(|c| format!(" and a body containing `{c}`")).unwrap_or_default())
}

/// GET, or POST when there is a body (bytes, content type).
async fn http_request(port: u16, path: &str, body: Option<(&[u8], &str)>) -> Result<(u16, String)> {
    let request: Vec<u8> = match body {
        None => format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n").into_bytes(),
        Some((b, content_type)) => {
            let mut r = format!("POST {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n", b.len()).into_bytes();
            r.extend_from_slice(b);
            r
        }
    };
    let io = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(&request).await?;
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
    let text = fs_err::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::Phases;

    #[test]
    fn a_boots_account_names_its_parts() {
        let cut = Phases { cut: Some(64.4), ..Default::default() };
        assert_eq!(cut.to_string(), "wall clock: power cut after 64 s");
        let boot = Phases { verdict: 119.2, answered: Some(("GET :8080/cgi-bin/records".into(), 121.04)), checks: 4.6, power_off: 7.0, ..Default::default() };
        assert_eq!(boot.to_string(), "wall clock: verdict after 119 s, GET :8080/cgi-bin/records answered after 121.0 s, checks 5 s, power-off 7 s");
        let waited = Phases { verdict: 80.0, accounting: 2.6, ..Default::default() };
        assert_eq!(waited.to_string(), "wall clock: verdict after 80 s, checks 0 s, boot account 3 s, power-off 0 s");
        let cut_later = Phases { verdict: 170.0, checks: 238.0, cut_after_checks: Some(41.3), ..Default::default() };
        assert_eq!(cut_later.to_string(), "wall clock: verdict after 170 s, checks 238 s, power cut 41 s later");
        let account = super::account::parse("Startup=Startup finished in 15.378s (kernel) + 51.591s (userspace) = 1min 6.969s.\n\nUserspaceTimestampMonotonic=1\n\nId=a.service\n").unwrap();
        let told = Phases { verdict: 80.0, account: Some(account), ..Default::default() };
        assert!(told.to_string().ends_with("power-off 0 s; systemd: Startup finished in 15.378s (kernel) + 51.591s (userspace) = 1min 6.969s."), "{told}");
    }

    #[test]
    fn a_verdict_names_the_units_whose_journal_the_report_carries() {
        assert_eq!(super::verdict_units("OUTPOST-VERDICT: degraded failed: outpost-site.service "), ["outpost-site.service"]);
        let looping = "OUTPOST-VERDICT: degraded failed: a.service b@x.service restarting again and again: c.service (failed and restarted on the way: d.service)";
        assert_eq!(super::verdict_units(looping), ["a.service", "b@x.service", "c.service"]);
        assert_eq!(super::verdict_units("OUTPOST-VERDICT: degraded restarting again and again: c.service"), ["c.service"]);
        assert!(super::verdict_units("OUTPOST-VERDICT: running").is_empty());
        assert!(super::verdict_units("OUTPOST-VERDICT: degraded failed: $(reboot).service").is_empty());
    }
}
