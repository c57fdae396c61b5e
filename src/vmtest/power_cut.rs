//! `[power-cuts]`: the appliance against a clinic's mains. Each round powers the machine on,
//! waits for the application, writes records to it, and pulls the plug (SIGKILL on QEMU: no
//! flush, no unmount) at a moment drawn from a seeded generator — during the boot for some
//! rounds, while records are being acknowledged for the others. Every boot must bring the
//! application back unattended within the limit, and every record it ever acknowledged must be
//! there. A last boot must reach the verdict with the data file system clean.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{Machine, Report, Vm, Wait, agent, http_request, power_off, qemu_command, start_swtpm, wait_console};
use crate::spec::PowerCuts;

/// splitmix64: a tiny, well-known generator; the same seed gives the same cuts everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// When one round's power goes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cut {
    /// This many seconds after power-on, whether or not the application answers yet.
    DuringBoot(f64),
    /// This many seconds after the application first answered, while records are written.
    WhileWriting(f64),
}

fn plan_cuts(c: &PowerCuts, count: u32) -> Vec<Cut> {
    let mut rng = Rng(c.seed);
    (0..count)
        .map(|_| {
            let during_boot = rng.unit() * 100.0 < f64::from(c.during_boot_percent);
            let u = rng.unit();
            // During the boot: anywhere from the firmware to about when the application
            // answers on this machine (the first answer time is not known in advance; 60 s
            // under TCG, a few seconds on hardware, scaled by the limit).
            if during_boot { Cut::DuringBoot(1.0 + u * (c.answer_within as f64 / 3.0)) } else { Cut::WhileWriting(u * c.write_for as f64) }
        })
        .collect()
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub cuts: u32,
    pub cuts_during_boot: u32,
    pub cuts_while_writing: u32,
    pub records_acknowledged: usize,
    pub records_lost: usize,
    /// Boots where the application did not answer within the limit: someone would have had to
    /// come and look.
    pub boots_needing_a_human: u32,
    /// Seconds from power-on to the application's first answer, one per boot that got there.
    pub answer_seconds: Vec<f64>,
    pub answer_median: f64,
    pub answer_worst: f64,
    /// Boots whose console says the data file system was repaired.
    pub fsck_repairs: u32,
    /// Boots where the emulator stalled (QEMU 7.2 MTTCG, console silent, as `outpost test`
    /// handles elsewhere) and were power-cycled: one more cut, not the appliance's doing.
    pub emulator_stalls: u32,
}

/// Runs the series after the scenario's boots, on the same disk and TPM.
pub async fn run(m: &Machine<'_>, c: &PowerCuts, tpm: Option<&Path>, report: &mut Report) -> Result<()> {
    let count = match std::env::var("OUTPOST_POWER_CUTS") {
        Ok(v) => v.trim().parse().with_context(|| format!("OUTPOST_POWER_CUTS=`{v}` is not a number"))?,
        Err(_) => c.count,
    };
    let port = m.port_map[&c.port];
    let cuts = plan_cuts(c, count);
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut s = Summary::default();
    let boot_args = &m.scenario.boots[0];
    let mut stalled_before = false;
    let rounds: Vec<Cut> = cuts.iter().copied().chain(std::iter::once(Cut::WhileWriting(f64::INFINITY))).collect();
    let mut round = 0;
    while let Some(cut) = rounds.get(round) {
        let last = round == cuts.len();
        let console = m.dir.join(format!("console-cut-{}.log", round + 1));
        crate::files::remove_if_exists(&console)?;
        crate::files::remove_if_exists(&m.qga)?;
        let swtpm = match tpm {
            Some(state) => Some(start_swtpm(state).await?),
            None => None,
        };
        let cmd = qemu_command(m, boot_args, &console, swtpm.as_ref().map(|(_, s)| s.as_path()));
        let started = Instant::now();
        let mut vm = Vm(cmd.spawn(true)?);
        let label = format!("power cut round {}", round + 1);
        // Up to the application's first answer (or the cut, when it falls during the boot).
        let boot_cut = match cut {
            Cut::DuringBoot(secs) => Some(Duration::from_secs_f64(*secs)),
            Cut::WhileWriting(_) => None,
        };
        let answered = wait_answer(port, &c.path, &console, started, Duration::from_secs(c.answer_within), boot_cut).await;
        match answered {
            Answer::Stalled if !stalled_before => {
                kill(&mut vm).await;
                s.emulator_stalls += 1;
                stalled_before = true;
                let kept = console.with_extension("stalled.log");
                fs_err::rename(&console, &kept)?;
                report.passed.push(format!("{label}: (the guest stalled under TCG, console silent for {} s; power-cycled and the round run again, console {})", super::STALL_SECONDS, kept.display()));
                continue;
            }
            Answer::Stalled => {
                kill(&mut vm).await;
                s.boots_needing_a_human += 1;
                report.failed.push(format!("{label}: the guest stalled twice in a row (console silent for {} s); console {}", super::STALL_SECONDS, console.display()));
                break;
            }
            Answer::Cut => {
                kill(&mut vm).await;
                stalled_before = false;
                s.cuts += 1;
                s.cuts_during_boot += 1;
                report.passed.push(format!("{label}: power cut {:.1} s after power-on, during the boot", started.elapsed().as_secs_f64()));
                round += 1;
                continue;
            }
            Answer::Degraded(verdict) => {
                kill(&mut vm).await;
                s.boots_needing_a_human += 1;
                report.failed.push(format!("{label}: the guest came up without its application: `{verdict}`; console {}", console.display()));
                break;
            }
            Answer::Timeout(why) => {
                kill(&mut vm).await;
                s.boots_needing_a_human += 1;
                report.failed.push(format!("{label}: the application did not answer within {} s of power-on ({why}); console {}", c.answer_within, console.display()));
                break;
            }
            Answer::Records(secs, body) => {
                stalled_before = false;
                s.answer_seconds.push(secs);
                let present: BTreeSet<&str> = body.lines().map(str::trim).collect();
                let lost: Vec<&String> = acked.iter().filter(|r| !present.contains(r.as_str())).collect();
                if lost.is_empty() {
                    report.passed.push(format!("{label}: application answered {secs:.0} s after power-on with all {} acknowledged records", acked.len()));
                } else {
                    s.records_lost += lost.len();
                    report.failed.push(format!("{label}: {} acknowledged records are gone, e.g. {:?}", lost.len(), lost.iter().take(3).collect::<Vec<_>>()));
                }
            }
        }
        let text = fs_err::read(&console).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        if text.contains("data file system checked after an unclean shutdown") || text.contains("data file system repaired") {
            s.fsck_repairs += 1;
        }
        if last {
            final_checks(m, &mut vm, &console, (s.cuts_while_writing, s.cuts + s.emulator_stalls), report).await;
            drop(swtpm);
            break;
        }
        // Records are written up to the cut: `write-for` after the first answer, or, for a cut
        // meant for the boot that the application beat, up to that moment after power-on.
        let until = match *cut {
            Cut::WhileWriting(after) => Instant::now() + Duration::from_secs_f64(after),
            Cut::DuringBoot(secs) => started + Duration::from_secs_f64(secs),
        };
        let writing_from = Instant::now();
        let mut n = 0;
        while Instant::now() < until {
            let record = format!("cut{}-rec{n}-seed{}", round + 1, c.seed);
            n += 1;
            let left = until.saturating_duration_since(Instant::now());
            // A request still in flight at the cut is neither acknowledged nor required.
            if let Ok(Ok((201, _))) = tokio::time::timeout(left, http_request(port, &c.path, Some((record.as_bytes(), "text/plain")))).await {
                acked.insert(record);
            }
        }
        kill(&mut vm).await;
        drop(swtpm);
        s.cuts += 1;
        s.cuts_while_writing += 1;
        report.passed.push(format!(
            "{label}: power cut {:.1} s after power-on, {:.1} s into writing ({} acknowledged so far)",
            started.elapsed().as_secs_f64(),
            writing_from.elapsed().as_secs_f64(),
            acked.len()
        ));
        round += 1;
    }
    s.records_acknowledged = acked.len();
    let mut sorted = s.answer_seconds.clone();
    sorted.sort_by(f64::total_cmp);
    s.answer_median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    s.answer_worst = sorted.last().copied().unwrap_or_default();
    report.passed.push(format!(
        "power cuts: {} ({} during boot, {} while writing); records acknowledged {}, lost {}; boots needing a human {}; application answered after median {:.0} s, worst {:.0} s; data file system repaired at {} boots; emulator stalls power-cycled {}",
        s.cuts, s.cuts_during_boot, s.cuts_while_writing, s.records_acknowledged, s.records_lost, s.boots_needing_a_human, s.answer_median, s.answer_worst, s.fsck_repairs, s.emulator_stalls
    ));
    fs_err::write(m.dir.join("power-cuts.json"), serde_json::to_string_pretty(&s)? + "\n")?;
    Ok(())
}

enum Answer {
    /// The cut came first.
    Cut,
    /// The console has been silent for `STALL_SECONDS` before any answer.
    Stalled,
    /// The guest finished booting without the application (its verdict line, and why, e.g. a
    /// TPM in dictionary-attack lockout): a box someone must come to.
    Degraded(String),
    Timeout(String),
    /// Seconds from power-on, and the body of the first answer.
    Records(f64, String),
}

async fn wait_answer(port: u16, path: &str, console: &Path, started: Instant, limit: Duration, cut: Option<Duration>) -> Answer {
    let mut last = String::from("no answer");
    let (mut size, mut changed) = (0, Instant::now());
    loop {
        let now_size = fs_err::metadata(console).map(|m| m.len()).unwrap_or(0);
        if now_size != size {
            (size, changed) = (now_size, Instant::now());
        }
        if now_size != size || changed.elapsed() > Duration::from_secs(super::STALL_SECONDS) {
            // A verdict other than `running` ends the wait: a quiet console after it is not a
            // stalled emulator.
            let text = fs_err::read(console).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with(super::VERDICT_PREFIX) && !l.contains("running")) {
                let why = if text.contains("dictionary attack lockout") { " (the TPM is in dictionary-attack lockout)" } else { "" };
                return Answer::Degraded(format!("{}{why}", line.trim()));
            }
        }
        if changed.elapsed() > Duration::from_secs(super::STALL_SECONDS) {
            return Answer::Stalled;
        }
        let elapsed = started.elapsed();
        if cut.is_some_and(|c| elapsed >= c) {
            return Answer::Cut;
        }
        if elapsed > limit {
            return Answer::Timeout(last);
        }
        match http_request(port, path, None).await {
            Ok((200, body)) => return Answer::Records(started.elapsed().as_secs_f64(), body),
            Ok((status, _)) => last = format!("answered {status}"),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// SIGKILL: the guest gets no chance to flush or unmount.
async fn kill(vm: &mut Vm) {
    let _ = vm.0.start_kill();
    let _ = vm.0.wait().await;
}

/// The last boot: the verdict as the scenario's first boot expects it, the data file system not
/// marked with errors, the cuts counted by the appliance between `counted` (the boots cut after
/// the application answered were all on record; one cut during the boot may come before this
/// boot's record is made) and a clean power-off.
async fn final_checks(m: &Machine<'_>, vm: &mut Vm, console: &Path, counted: (u32, u32), report: &mut Report) {
    let verdict = &m.scenario.boots[0].verdict;
    let deadline = Instant::now() + Duration::from_secs(m.scenario.timeout);
    match wait_console(vm, console, super::VERDICT_PREFIX, deadline, Some(&m.qga)).await {
        Ok(Wait::Found(line)) if line.starts_with(verdict.trim()) => report.passed.push(format!("after the cuts: verdict `{line}`")),
        Ok(Wait::Found(line)) => report.failed.push(format!("after the cuts: the guest reported `{line}`, expected `{verdict}`")),
        Ok(Wait::Stalled(secs)) => report.failed.push(format!("after the cuts: console silent for {secs} s")),
        Err(e) => report.failed.push(format!("after the cuts: {e:#}")),
    }
    let check = "dumpe2fs -h \"$(readlink -f /run/outpost/data-volume)\" 2>/dev/null | grep '^Filesystem state:'";
    match agent::exec(&m.qga, check, Instant::now() + Duration::from_secs(60)).await {
        Ok((0, out)) if out.split(':').nth(1).map(str::trim) == Some("clean") => report.passed.push("after the cuts: data file system state clean".into()),
        Ok((_, out)) => report.failed.push(format!("after the cuts: data file system `{}`", out.trim())),
        Err(e) => report.failed.push(format!("after the cuts: {e:#}")),
    }
    let cuts = "/usr/lib/outpost/outpost status show --prometheus | grep '^outpost_power_cuts_total '";
    match agent::exec(&m.qga, cuts, Instant::now() + Duration::from_secs(60)).await {
        Ok((0, out)) => match out.split_whitespace().nth(1).and_then(|v| v.parse::<u32>().ok()) {
            Some(n) if n >= counted.0 && n <= counted.1 => report.passed.push(format!("after the cuts: the appliance counted {n} power cuts (between {} and {})", counted.0, counted.1)),
            _ => report.failed.push(format!("after the cuts: the appliance reports `{}`, expected between {} and {} power cuts", out.trim(), counted.0, counted.1)),
        },
        Ok((code, out)) => report.failed.push(format!("after the cuts: outpost status: exit {code}: {}", out.trim())),
        Err(e) => report.failed.push(format!("after the cuts: outpost status: {e:#}")),
    }
    // Every cut after the data key was unsealed would count as a failed authorization if the
    // TPM's dictionary-attack protection were on (agent/tpm.rs): none may have counted.
    if m.scenario.tpm {
        let da = "TPM2TOOLS_TCTI=device:/dev/tpmrm0 tpm2_getcap properties-variable | grep -E '^TPM2_PT_(LOCKOUT_COUNTER|MAX_AUTH_FAIL|LOCKOUT_INTERVAL):'";
        match agent::exec(&m.qga, da, Instant::now() + Duration::from_secs(60)).await {
            Ok((0, out)) => {
                let value = |k: &str| out.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| u32::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok());
                match (value("TPM2_PT_LOCKOUT_COUNTER:"), value("TPM2_PT_LOCKOUT_INTERVAL:")) {
                    (Some(0), Some(interval)) => report.passed.push(format!("after the cuts: TPM dictionary-attack counter 0 (recovery time {interval} s)")),
                    (Some(n), _) => report.failed.push(format!("after the cuts: the TPM counted {n} power cuts as failed authorizations: `{}`", out.trim())),
                    _ => report.failed.push(format!("after the cuts: tpm2_getcap printed `{}`", out.trim())),
                }
            }
            Ok((code, out)) => report.failed.push(format!("after the cuts: reading the TPM's dictionary-attack counter: exit {code}: {}", out.trim())),
            Err(e) => report.failed.push(format!("after the cuts: reading the TPM's dictionary-attack counter: {e:#}")),
        }
    }
    if let Err(e) = power_off(vm, &m.qga).await {
        report.failed.push(format!("after the cuts: powering off: {e:#}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cuts(seed: u64) -> PowerCuts {
        PowerCuts { count: 100, seed, port: 8080, path: "/r".into(), answer_within: 240, write_for: 20, during_boot_percent: 25 }
    }

    #[test]
    fn the_same_seed_cuts_at_the_same_moments() {
        assert_eq!(plan_cuts(&cuts(7), 100), plan_cuts(&cuts(7), 100));
        assert_ne!(plan_cuts(&cuts(7), 100), plan_cuts(&cuts(8), 100));
    }

    #[test]
    fn cuts_fall_in_both_phases_within_their_windows() {
        let plan = plan_cuts(&cuts(1), 400);
        let boot = plan.iter().filter(|c| matches!(c, Cut::DuringBoot(_))).count();
        assert!((60..140).contains(&boot), "{boot} of 400 during boot, expected about 100");
        for c in plan {
            match c {
                Cut::DuringBoot(s) => assert!((1.0..81.0).contains(&s), "{s}"),
                Cut::WhileWriting(s) => assert!((0.0..20.0).contains(&s), "{s}"),
            }
        }
    }
}
