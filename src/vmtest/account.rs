//! Where a test boot's time went, from the guest's own systemd: its `Startup finished` line, the
//! critical chain to the default target, the slowest units and those that used the most CPU.
//! One `systemctl show` of the units' timestamps and ordering, read in the guest, turned into the
//! chain and blame here: the figures `systemd-analyze critical-chain` and `blame` print, for a
//! third of their time.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};

/// The journal's message ID of systemd's `Startup finished in ...` (sd-messages.h).
const STARTUP_FINISHED: &str = "b07a249cd024414a82dd00cd181378ff";

/// The guest's side, a shell command: `key=value` blocks separated by blank lines, as
/// `systemctl show` prints them (the manager's, then one per loaded unit of the kinds that start
/// or use CPU: devices, slices, timers and paths are left out, about a third of the units).
pub fn query() -> String {
    format!(
        "printf 'Startup=%s\\n\\n' \"$(journalctl -b -o cat --no-pager MESSAGE_ID={STARTUP_FINISHED} | tail -n 1)\"; \
         systemctl show -p UserspaceTimestampMonotonic; echo; \
         systemctl show '*.service' '*.target' '*.mount' '*.socket' '*.scope' -p Id -p After -p InactiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic -p CPUUsageNSec"
    )
}

/// One unit's start, in microseconds of the monotonic clock (0: not recorded).
#[derive(Debug, Default, PartialEq)]
struct Unit {
    after: Vec<String>,
    /// It left `inactive` (its start job began).
    activating: u64,
    /// It became `active`.
    activated: u64,
    /// CPU time its processes used, in nanoseconds (0: unknown, without CPU accounting).
    cpu: u64,
}

impl Unit {
    fn took(&self) -> u64 {
        if self.activating > 0 { self.activated.saturating_sub(self.activating) } else { 0 }
    }
}

#[derive(Debug, Default)]
pub struct Account {
    /// systemd's `Startup finished in ...` line.
    pub startup: Option<String>,
    userspace: u64,
    units: BTreeMap<String, Unit>,
}

pub fn parse(text: &str) -> Result<Account> {
    let mut a = Account::default();
    for block in text.split("\n\n") {
        let fields: BTreeMap<&str, &str> = block.lines().filter_map(|l| l.split_once('=')).collect();
        let usec = |key: &str| -> Result<u64> {
            fields.get(key).map_or(Ok(0), |v| v.trim().parse().with_context(|| format!("reading {key}={v} of the guest's units")))
        };
        if let Some(line) = fields.get("Startup") {
            a.startup = Some(line.trim().to_string()).filter(|l| !l.is_empty());
        } else if fields.contains_key("UserspaceTimestampMonotonic") {
            a.userspace = usec("UserspaceTimestampMonotonic")?;
        } else if let Some(id) = fields.get("Id") {
            let after = fields.get("After").map(|v| v.split_whitespace().map(str::to_string).collect()).unwrap_or_default();
            // `[not set]` without CPU accounting.
            let cpu = fields.get("CPUUsageNSec").and_then(|v| v.trim().parse().ok()).filter(|n| *n != u64::MAX).unwrap_or(0);
            let unit = Unit { after, activating: usec("InactiveExitTimestampMonotonic")?, activated: usec("ActiveEnterTimestampMonotonic")?, cpu };
            a.units.insert(id.to_string(), unit);
        }
    }
    anyhow::ensure!(a.userspace > 0 && !a.units.is_empty(), "the guest's answer has no manager timestamps or no units");
    Ok(a)
}

impl Account {
    fn secs(&self, usec: u64) -> f64 {
        usec.saturating_sub(self.userspace) as f64 / 1e6
    }

    /// The `n` units with the largest nonzero `value`, largest first, divided by `per_second`.
    fn top(&self, n: usize, per_second: f64, value: impl Fn(&str, &Unit) -> u64) -> Vec<(&str, f64)> {
        let mut v: Vec<_> = self.units.iter().map(|(id, u)| (id.as_str(), value(id, u))).filter(|(_, x)| *x > 0).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v.into_iter().take(n).map(|(id, x)| (id, x as f64 / per_second)).collect()
    }

    /// The units that took longest to start, longest first. Devices are left out: their time
    /// counts from when systemd first waited for them, which for the root's is the initramfs.
    pub fn blame(&self, n: usize) -> Vec<(&str, f64)> {
        self.top(n, 1e6, |id, u| if id.ends_with(".device") { 0 } else { u.took() })
    }

    /// The units that used the most CPU, most first: under emulation a boot is short of CPU, and
    /// this is who took it (`init.scope` is systemd itself). Slices are left out: each is the
    /// sum of the units under it.
    pub fn cpu(&self, n: usize) -> Vec<(&str, f64)> {
        self.top(n, 1e9, |id, u| if id.ends_with(".slice") { 0 } else { u.cpu })
    }

    /// From the default target down, each step the unit it was ordered after that became active
    /// last before it started, as `systemd-analyze critical-chain` walks it (which also takes
    /// units that came later, such as a container's mounts after local-fs.target: they held
    /// nothing up; and so the chain stays within the boot, which ended after the target was
    /// reached): each line is `unit @start +took` in seconds since systemd started (`@`
    /// alone when it took no time).
    pub fn critical_chain(&self) -> Vec<String> {
        let target = ["graphical.target", "multi-user.target"].into_iter().find(|t| self.units.get(*t).is_some_and(|u| u.activated > 0));
        let mut chain = Vec::new();
        let mut seen = BTreeSet::new();
        let mut next = target;
        while let Some(id) = next.filter(|id| seen.insert(*id)) {
            let u = &self.units[id];
            let start = if u.activating > 0 { u.activating } else { u.activated };
            chain.push(match u.took() {
                0 => format!("{id} @{:.1}s", self.secs(u.activated)),
                t => format!("{id} @{:.1}s +{:.1}s", self.secs(u.activating), t as f64 / 1e6),
            });
            next = u
                .after
                .iter()
                .filter_map(|d| self.units.get_key_value(d.as_str()))
                .filter(|(_, d)| d.activated > 0 && d.activated <= start)
                .max_by_key(|(_, d)| d.activated)
                .map(|(d, _)| d.as_str());
        }
        chain
    }

    /// The report's lines: the critical chain, the slowest units, the most CPU.
    pub fn lines(&self) -> Vec<String> {
        let list = |v: Vec<(&str, f64)>| v.into_iter().map(|(id, s)| format!("{id} {s:.1}s")).collect::<Vec<_>>().join(", ");
        let mut lines = vec![format!("critical chain: {}", self.critical_chain().join(" < ")), format!("slowest units: {}", list(self.blame(8)))];
        let cpu = self.cpu(6);
        if !cpu.is_empty() {
            lines.push(format!("most CPU: {}", list(cpu)));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    /// The shape `systemctl show` prints (systemd 252), trimmed from a Debian test boot.
    const SHOWN: &str = "Startup=Startup finished in 16.1s (kernel) + 37.0s (userspace) = 53.1s.

UserspaceTimestampMonotonic=17000000

Id=graphical.target
After=multi-user.target outpost-absent.service
InactiveExitTimestampMonotonic=0
ActiveEnterTimestampMonotonic=71869000

Id=multi-user.target
After=basic.target outpost-status-page.service systemd-logind.service var-lib-containers-overlay.mount
InactiveExitTimestampMonotonic=0
ActiveEnterTimestampMonotonic=71856000

Id=outpost-status-page.service
After=basic.target outpost-data.service
InactiveExitTimestampMonotonic=65447000
ActiveEnterTimestampMonotonic=71827000

Id=systemd-logind.service
After=basic.target
InactiveExitTimestampMonotonic=60000000
ActiveEnterTimestampMonotonic=64683000
CPUUsageNSec=1250000000

Id=system.slice
After=-.slice
InactiveExitTimestampMonotonic=0
ActiveEnterTimestampMonotonic=4700000
CPUUsageNSec=86200000000

Id=outpost-data.service
After=basic.target
InactiveExitTimestampMonotonic=30000000
ActiveEnterTimestampMonotonic=53765000
CPUUsageNSec=[not set]

Id=basic.target
After=sysinit.target
InactiveExitTimestampMonotonic=0
ActiveEnterTimestampMonotonic=65158000

Id=sysinit.target
After=basic.target
InactiveExitTimestampMonotonic=0
ActiveEnterTimestampMonotonic=64426000

Id=var-lib-containers-overlay.mount
After=var.mount
InactiveExitTimestampMonotonic=90000000
ActiveEnterTimestampMonotonic=90100000

Id=dev-vda1.device
After=
InactiveExitTimestampMonotonic=10000000
ActiveEnterTimestampMonotonic=60000000
";

    #[test]
    fn the_chain_follows_the_dependency_that_came_last() {
        let a = parse(SHOWN).unwrap();
        assert_eq!(a.startup.as_deref(), Some("Startup finished in 16.1s (kernel) + 37.0s (userspace) = 53.1s."));
        // basic.target came after outpost-data.service; a mount made after the boot (a
        // container's) held nothing up; the ordering loop back to basic.target (sysinit.target
        // is After= it here) ends the chain instead of going round.
        assert_eq!(
            a.critical_chain(),
            [
                "graphical.target @54.9s",
                "multi-user.target @54.9s",
                "outpost-status-page.service @48.4s +6.4s",
                "basic.target @48.2s",
                "sysinit.target @47.4s",
            ]
        );
    }

    #[test]
    fn blame_lists_the_slowest_units_and_no_devices() {
        let a = parse(SHOWN).unwrap();
        let names: Vec<_> = a.blame(3).into_iter().map(|(id, s)| format!("{id} {s:.1}")).collect();
        assert_eq!(names, ["outpost-data.service 23.8", "outpost-status-page.service 6.4", "systemd-logind.service 4.7"]);
        assert!(a.lines()[1].starts_with("slowest units: outpost-data.service 23.8s, "), "{:?}", a.lines());
        // Not known without accounting; a slice is the sum of its units.
        assert_eq!(a.lines()[2], "most CPU: systemd-logind.service 1.2s");
    }

    #[test]
    fn an_answer_without_units_is_an_error() {
        assert!(parse("Startup=\n\nUserspaceTimestampMonotonic=5\n").is_err());
        assert!(parse("UserspaceTimestampMonotonic=x\n\nId=a.service\n").is_err());
    }
}
