//! The `[install]` step of a scenario: the machine starts the installer ISO from a USB stick
//! (xHCI, usb-storage) with an empty internal disk and no network, under UEFI or SeaBIOS, and
//! the installer must end with the expected `OUTPOST-INSTALL:` line. After an install QEMU
//! exits at the installer's restart (`-no-reboot`), as if someone powered the PC off then.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{Machine, Vm, Wait, machine_command, wait_console};
use crate::spec::{Firmware, Install};

const PREFIX: &str = "OUTPOST-INSTALL:";

pub(super) async fn run(m: &Machine<'_>, inst: &Install, iso: &Path, console: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let (mut passed, mut failed) = (Vec::new(), Vec::new());
    crate::files::remove_if_exists(console)?;
    let cmd = machine_command(m, console, inst.firmware == Firmware::Uefi)
        .arg("-no-reboot")
        .args(["-device", "qemu-xhci,id=xhci"])
        .arg("-drive")
        .arg(format!("if=none,id=stick,format=raw,readonly=on,file={}", std::path::absolute(iso)?.display()))
        .args(["-device", "usb-storage,bus=xhci.0,drive=stick,removable=on,bootindex=0"]);
    let started = Instant::now();
    let mut vm = Vm(cmd.spawn(true)?);
    let deadline = started + Duration::from_secs(m.scenario.timeout);
    let firmware = format!("{:?}", inst.firmware).to_uppercase();
    match wait_console(&mut vm, console, PREFIX, deadline, None).await {
        Ok(Wait::Found(line)) if line.starts_with(inst.expect.trim()) => {
            passed.push(format!("{firmware} install from the USB stick: `{line}` after {:.0} s", started.elapsed().as_secs_f64()));
            if inst.installs() {
                // The installer restarts the machine; with -no-reboot QEMU exits then.
                match tokio::time::timeout(Duration::from_secs(60), vm.0.wait()).await {
                    Ok(_) => passed.push("the installer restarted the machine".into()),
                    Err(_) => failed.push("the installer said it installed but did not restart the machine within 60 s".into()),
                }
            }
        }
        Ok(Wait::Found(line)) => failed.push(format!("the installer reported `{line}`, expected `{}`", inst.expect)),
        Ok(Wait::Stalled(secs)) => failed.push(format!("the installer's console was silent for {secs} s")),
        Err(e) => failed.push(format!("{e:#}")),
    }
    let _ = vm.0.start_kill();
    let _ = vm.0.wait().await;
    Ok((passed, failed))
}
