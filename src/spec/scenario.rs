//! `qemu-tests/NAME.toml`: which image to boot and what must hold once it is up.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Problems, SpecError, check_version, parse_toml};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ScenarioToml {
    version: u32,
    #[serde(default)]
    description: String,
    image: PathBuf,
    #[serde(default = "default_timeout")]
    timeout: u64,
    #[serde(default = "default_memory")]
    memory: u64,
    #[serde(default)]
    verdict: Option<String>,
    #[serde(default)]
    power_cut_at: Option<String>,
    /// As a reboot's `power-cut-delay`, for the first boot.
    #[serde(default)]
    power_cut_delay: f64,
    /// Before the first boot, flip one byte in the middle of the root partition.
    #[serde(default)]
    corrupt_root: bool,
    /// A site to personalize the image with before booting it.
    #[serde(default)]
    site: Option<PathBuf>,
    /// Personalize with the deployment CA given to `outpost test --ca DIR` (or OUTPOST_CA): the
    /// box gets its issuing certificate, and `[[http]]` checks with `tls-name` trust that CA.
    #[serde(default)]
    deployment_ca: bool,
    /// QEMU user-mode network (default 10.0.2.0/24).
    #[serde(default)]
    net: Option<String>,
    /// The guest's address on that network, where forwarded ports go (default: QEMU's first
    /// DHCP lease); set it when the site gives the guest a fixed address.
    #[serde(default)]
    guest_address: Option<std::net::Ipv4Addr>,
    /// A software TPM 2.0 (swtpm) in the machine, its state kept across the scenario's boots.
    #[serde(default = "yes")]
    tpm: bool,
    /// A second disk with a FAT file system labelled OUTPOSTKEY, kept across boots: the key
    /// stick of `unlock = "usb-key"` (a virtio disk: the test kernel has no USB).
    #[serde(default)]
    key_disk: bool,
    /// A USB stick labelled OUTPOSTBACKUP (FAT, OUTPOSTBKUP) plugged in during the first boot;
    /// reboots say `backup-disk = true` to plug it in again. Blank, or a copy of the image
    /// `backup-disk-from` names (another scenario's stick, to restore from). Kept across boots.
    #[serde(default)]
    backup_disk: bool,
    #[serde(default)]
    backup_disk_from: Option<PathBuf>,
    /// An SFTP server on the test host (OpenSSH's sshd, started for each connection), reached
    /// by the guest at 10.0.2.100 port 22 as `root`, its files under the scenario's work
    /// directory; it accepts the key the box shows on its console for its backup server.
    #[serde(default)]
    backup_server: bool,
    /// The backup server's files start as a copy of this directory (another scenario's
    /// `backup-server/files`: its boxes' backups, to restore from).
    #[serde(default)]
    backup_server_from: Option<PathBuf>,
    /// An HTTP server on the test host at 10.0.2.101 port 80 that keeps what is POSTed to a
    /// path and gives it back to a GET of that path: where a site's `[status] push` goes.
    #[serde(default)]
    status_receiver: bool,
    /// A NoCloud seed disk (FAT, labelled CIDATA) in the machine at every boot, as a cloud
    /// gives an instance its metadata.
    #[serde(default)]
    nocloud: Option<NoCloudToml>,
    /// An EC2-style instance metadata service at 169.254.169.254 (IMDSv2: a session token is
    /// required), started by the test for each request, and firmware that says "Amazon EC2".
    /// The guest's network becomes 169.254.169.0/24.
    #[serde(default)]
    metadata_service: Option<MetadataToml>,
    /// Secure Boot enforced: OVMF's variables with Debian's test key ("snakeoil", from the
    /// ovmf package) enrolled as PK, KEK and db; the image must be signed with that key (the
    /// test suite's key directory uses it as its db key).
    #[serde(default)]
    secure_boot: bool,
    /// A later release of the image (its `release` higher), signed with the same keys: the test
    /// builds it with an update bundle, a delta from the scenario's image, and plugs a USB stick
    /// with that bundle into the boots marked `update = true`.
    #[serde(default)]
    update_image: Option<PathBuf>,
    #[serde(default)]
    command: Vec<Command>,
    #[serde(default)]
    ssh: Vec<Ssh>,
    #[serde(default)]
    console: Vec<Console>,
    #[serde(default)]
    http: Vec<Http>,
    #[serde(default)]
    disk: Vec<DiskCheck>,
    /// Later boots of the same disk, each after a clean power-off.
    #[serde(default)]
    reboot: Vec<RebootToml>,
    /// After the boots: a series of power cuts while the application takes records.
    #[serde(default)]
    power_cuts: Option<PowerCuts>,
    /// Before the boots: install the image's ISO onto an empty disk.
    #[serde(default)]
    install: Option<Install>,
}

/// `[nocloud]`: what the NoCloud seed disk holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct NoCloudToml {
    /// `meta-data`'s `local-hostname`.
    #[serde(default)]
    local_hostname: Option<String>,
    /// A file (relative to the scenario) given as `user-data`.
    #[serde(default)]
    user_data: Option<PathBuf>,
}

/// `[metadata-service]`: what the stand-in metadata service answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct MetadataToml {
    /// `meta-data/local-hostname`.
    local_hostname: String,
    /// `meta-data/public-keys/0/openssh-key`: the key pair the instance was launched with.
    #[serde(default)]
    ssh_key: Option<String>,
    /// A file (relative to the scenario) given as `user-data`.
    #[serde(default)]
    user_data: Option<PathBuf>,
}

/// The network of a scenario with a metadata service: the service's link-local address in it.
pub const METADATA_NET: &str = "169.254.169.0/24";

/// The NoCloud seed's files, read when the scenario is loaded: `(name, bytes)`.
pub type NoCloud = Vec<(String, Vec<u8>)>;

/// `[install]`: the machine first starts the image's installer ISO (personalized with the
/// scenario's site) from a USB stick, with an empty internal disk; the boots that follow start
/// that disk alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Install {
    /// The empty internal disk's size, e.g. `4G`.
    pub disk: super::Size,
    #[serde(default)]
    pub firmware: Firmware,
    /// The `OUTPOST-INSTALL:` line the installer must end with; unless it says `installed`,
    /// the scenario ends there.
    #[serde(default = "installed")]
    pub expect: String,
}

fn installed() -> String {
    "OUTPOST-INSTALL: installed".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    #[default]
    Uefi,
    /// SeaBIOS, QEMU's legacy BIOS.
    Bios,
}

impl Install {
    pub fn installs(&self) -> bool {
        self.expect.starts_with("OUTPOST-INSTALL: installed")
    }
}

/// `[power-cuts]`: power on, wait for the application, write records to it and count those it
/// acknowledges, pull the plug (SIGKILL QEMU) at a random moment; again, `count` times; then a
/// last boot that must reach the verdict with every acknowledged record there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PowerCuts {
    /// How many cuts (`OUTPOST_POWER_CUTS` overrides it: `just power-cuts` runs 100).
    pub count: u32,
    /// Seeds the cut moments: the same seed cuts at the same moments.
    #[serde(default)]
    pub seed: u64,
    /// The application: a guest port and a path that answers GET with every record, one per
    /// line, and POST (one record) with 201 once the record is on disk.
    pub port: u16,
    pub path: String,
    /// Seconds from power-on within which the application must answer at every boot.
    pub answer_within: u64,
    /// A cut falls at most this many seconds after the application first answers.
    #[serde(default = "default_write_for")]
    pub write_for: u64,
    /// Out of 100 cuts, how many fall during the boot instead of while records are written.
    #[serde(default = "default_during_boot")]
    pub during_boot_percent: u32,
}

fn default_write_for() -> u64 {
    20
}

fn default_during_boot() -> u32 {
    25
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RebootToml {
    #[serde(default)]
    tpm: TpmState,
    /// Plug the key disk in (default: as the scenario says) or leave it out.
    #[serde(default)]
    key_disk: Option<bool>,
    /// Plug the scenario's backup stick in during this boot.
    #[serde(default)]
    backup_disk: bool,
    #[serde(default)]
    verdict: Option<String>,
    #[serde(default)]
    power_cut_at: Option<String>,
    /// Seconds after `power-cut-at`'s text appears before the plug is pulled (a moment inside a
    /// step rather than at its boundary; `just update-cuts` draws them at random).
    #[serde(default)]
    power_cut_delay: f64,
    /// After this boot's checks, plug the scenario's backup stick into the running machine (a
    /// PCIe hot plug), as a clinic does; with `power-cut-at`, the cut then falls while it writes.
    #[serde(default)]
    plug_backup_disk_after_checks: bool,
    /// Before this boot, flip one byte in the middle of the root partition (on the host, in the
    /// disk file), as a failing disk or a tamperer would.
    #[serde(default)]
    corrupt_root: bool,
    /// Before this boot, change a byte of the first block of the root partition named so
    /// (`root-a`, `root-b`): its file system's superblock, which the boot reads to mount it.
    #[serde(default)]
    corrupt_root_start: Option<String>,
    /// Boot as a thief holding the whole PC would (same TPM): see `Thief`.
    #[serde(default)]
    thief: Option<Thief>,
    /// A USB stick with the update bundle of the scenario's `update-image` is plugged in during
    /// this boot (the appliance applies it by itself; the next boot tries the new release).
    #[serde(default)]
    update: bool,
    #[serde(default)]
    command: Vec<Command>,
    #[serde(default)]
    ssh: Vec<Ssh>,
    #[serde(default)]
    console: Vec<Console>,
    #[serde(default)]
    http: Vec<Http>,
    #[serde(default)]
    disk: Vec<DiskCheck>,
}

/// A thief's boot of the appliance's own disk on the same machine (vmtest/thief.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Thief {
    /// The kernel and initrd taken out of the UKI on the ESP, booted directly by the firmware
    /// with the UKI's command line and one option more.
    OwnKernel,
    /// The UKI itself, with a command line added in its loader entry (`options`).
    LoaderOptions,
    /// The UKI with its `.cmdline` section changed on the ESP (its signature no longer
    /// matches): with Secure Boot on, the firmware refuses to run it.
    TamperedUki,
}

/// The TPM a later boot gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TpmState {
    /// The one of the boot before: the same machine.
    #[default]
    Same,
    /// A new, empty TPM: the disk moved to another machine.
    Fresh,
    /// No TPM at all.
    None,
}

/// What must hold in the disk file once the guest has powered off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DiskCheck {
    /// The GPT partition name to look at.
    pub partition: String,
    /// The partition is LUKS2 with a token of this type (`cryptsetup luksDump`).
    #[serde(default)]
    pub luks2_token: Option<String>,
    /// A value saved by a command (`save-as`) that opens the partition as a passphrase.
    #[serde(default)]
    pub opens_with: Option<String>,
    /// A string that must appear nowhere in the whole disk.
    #[serde(default)]
    pub absent: Option<String>,
}

fn default_timeout() -> u64 {
    300
}

fn default_memory() -> u64 {
    1024
}

/// A command run in the guest (through the QEMU guest agent) and what its output must contain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Command {
    pub run: String,
    #[serde(default)]
    pub expect: Option<String>,
    #[serde(default)]
    pub expect_status: i64,
    /// Keep the trimmed output under this name, for a later disk check.
    #[serde(default)]
    pub save_as: Option<String>,
    /// Seconds this command may take from when it starts (default 120; a restore takes more).
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Before `run`: the scenario's backup stick is plugged into the running machine (a PCIe
    /// hot plug through QEMU's monitor), as a clinic plugs one in.
    #[serde(default)]
    pub plug_backup_disk: bool,
}

/// An SSH login from the host through a forwarded port 22.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Ssh {
    pub user: String,
    /// Private key, relative to the scenario; none means a password login attempt.
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default = "default_ssh_run")]
    pub run: String,
    #[serde(default)]
    pub expect: Option<String>,
    /// The login must be refused.
    #[serde(default)]
    pub refused: bool,
}

fn default_ssh_run() -> String {
    "true".into()
}

/// Text the serial console must show.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Console {
    pub contains: String,
}

/// A guest TCP port forwarded to the host that must answer HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Http {
    pub port: u16,
    /// GET, or POST with `body` (text) or `body-file` (bytes of a file beside the scenario).
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub body_file: Option<PathBuf>,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default)]
    pub contains: Option<String>,
    /// HTTPS: the name the client asks for (SNI, and the name the certificate must carry), the
    /// certificate checked against the deployment CA (`deployment-ca = true`) as a phone that
    /// trusts it would.
    #[serde(default)]
    pub tls_name: Option<String>,
}

fn default_path() -> String {
    "/".into()
}

fn default_status() -> u16 {
    200
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// The image definition, resolved against the scenario's directory.
    pub image: PathBuf,
    /// Seconds from power-on to the verdict line.
    pub timeout: u64,
    /// Guest memory in MiB.
    pub memory: u64,
    /// The line a unit in the guest prints on the serial console when the system is up.
    pub site: Option<PathBuf>,
    pub deployment_ca: bool,
    /// The deployment CA's certificate, set by `outpost test --ca` (not from the file).
    pub ca_cert: Option<PathBuf>,
    pub net: Option<String>,
    pub guest_address: Option<std::net::Ipv4Addr>,
    pub tpm: bool,
    pub key_disk: bool,
    /// Where the backup stick starts from (None: blank), when the scenario has one.
    pub backup_disk_from: Option<PathBuf>,
    pub backup_server: bool,
    pub backup_server_from: Option<PathBuf>,
    pub status_receiver: bool,
    pub nocloud: Option<NoCloud>,
    /// The metadata service's files, `(path under latest/, bytes)`.
    pub metadata_service: Option<NoCloud>,
    pub secure_boot: bool,
    pub update_image: Option<PathBuf>,
    /// The first boot, then each reboot.
    pub boots: Vec<Boot>,
    pub power_cuts: Option<PowerCuts>,
    pub install: Option<Install>,
}

impl Boot {
    /// Whether a command of this boot plugs the backup stick in while the machine runs.
    pub fn hotplugs_backup_disk(&self) -> bool {
        self.plug_backup_disk_after_checks || self.commands.iter().any(|c| c.plug_backup_disk)
    }
}

/// One power-on of the scenario's disk and what must hold then.
#[derive(Debug, Clone)]
pub struct Boot {
    pub tpm: TpmState,
    pub key_disk: bool,
    pub backup_disk: bool,
    /// The line a unit in the guest prints on the serial console when the system is up; the
    /// reported line must start with it. Empty for a boot cut off by `power_cut_at` before it.
    pub verdict: String,
    /// Pull the plug (SIGKILL QEMU) as soon as the console shows this text: without a verdict,
    /// nothing else is checked in that boot; with one, the cut waits for the checks (and the
    /// stick plugged in after them), then for the text anywhere in the boot's console, and
    /// replaces the clean power-off.
    pub power_cut_at: Option<String>,
    pub power_cut_delay: f64,
    pub plug_backup_disk_after_checks: bool,
    pub corrupt_root: bool,
    pub corrupt_root_start: Option<String>,
    pub thief: Option<Thief>,
    pub update: bool,
    pub commands: Vec<Command>,
    pub ssh: Vec<Ssh>,
    pub console: Vec<Console>,
    pub http: Vec<Http>,
    pub disk: Vec<DiskCheck>,
}

impl Scenario {
    pub fn uses_ssh(&self) -> bool {
        self.boots.iter().any(|b| !b.ssh.is_empty())
    }

    pub fn http_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.boots.iter().flat_map(|b| b.http.iter().map(|h| h.port)).chain(self.power_cuts.as_ref().map(|c| c.port))
    }
}

impl Scenario {
    pub fn load(file: &Path) -> Result<Scenario, SpecError> {
        let (t, _): (ScenarioToml, String) = parse_toml(file)?;
        let mut p = Problems::default();
        check_version(&mut p, file, t.version);
        let base = file.parent().unwrap_or(Path::new("."));
        let image = base.join(&t.image);
        if !image.is_file() {
            p.push(file, "image", format!("{} does not exist", image.display()));
        }
        if let Some(u) = &t.update_image
            && !base.join(u).is_file()
        {
            p.push(file, "update-image", format!("{} does not exist", base.join(u).display()));
        }
        let mut boots = vec![Boot {
            tpm: TpmState::Same,
            key_disk: t.key_disk,
            backup_disk: t.backup_disk,
            verdict: t.verdict.unwrap_or_default(),
            power_cut_at: t.power_cut_at,
            power_cut_delay: t.power_cut_delay,
            plug_backup_disk_after_checks: false,
            corrupt_root: t.corrupt_root,
            corrupt_root_start: None,
            thief: None,
            update: false,
            commands: t.command,
            ssh: t.ssh,
            console: t.console,
            http: t.http,
            disk: t.disk,
        }];
        boots.extend(t.reboot.into_iter().map(|r| Boot {
            tpm: r.tpm,
            key_disk: r.key_disk.unwrap_or(t.key_disk),
            backup_disk: r.backup_disk,
            verdict: r.verdict.unwrap_or_default(),
            power_cut_at: r.power_cut_at,
            power_cut_delay: r.power_cut_delay,
            plug_backup_disk_after_checks: r.plug_backup_disk_after_checks,
            corrupt_root: r.corrupt_root,
            corrupt_root_start: r.corrupt_root_start,
            thief: r.thief,
            update: r.update,
            commands: r.command,
            ssh: r.ssh,
            console: r.console,
            http: r.http,
            disk: r.disk,
        }));
        let mut saved = std::collections::BTreeSet::new();
        for (n, b) in boots.iter_mut().enumerate() {
            let at = |key: &str| if n == 0 { key.to_string() } else { format!("reboot[{}].{key}", n - 1) };
            match &b.power_cut_at {
                None if b.verdict.trim().is_empty() => p.push(file, &at("verdict"), "give the verdict line the guest must print (or `power-cut-at`)"),
                Some(_) if b.verdict.is_empty() && !(b.commands.is_empty() && b.ssh.is_empty() && b.http.is_empty()) => p.push(
                    file,
                    &at("power-cut-at"),
                    "a boot cut off before its verdict has no checks but what its console showed (`console`); give it a `verdict` (the cut then comes after the checks) or put them in the next boot",
                ),
                Some(t) if t.trim().is_empty() => p.push(file, &at("power-cut-at"), "give the console text at which the power is cut"),
                _ => {}
            }
            if let Some(name) = &b.corrupt_root_start
                && !crate::format::layout::SLOTS.iter().any(|(_, root, _)| root == name)
            {
                p.push(file, &at("corrupt-root-start"), format!("`{name}` is no root partition: give root-a or root-b"));
            }
            if !(0.0..=600.0).contains(&b.power_cut_delay) || (b.power_cut_delay > 0.0 && b.power_cut_at.is_none()) {
                p.push(file, &at("power-cut-delay"), "seconds (0 to 600) after `power-cut-at`'s text, on a boot that has one");
            }
            if b.update && t.update_image.is_none() {
                p.push(file, &at("update"), "the scenario has no `update-image` to update to");
            }
            if b.plug_backup_disk_after_checks && b.commands.iter().any(|c| c.plug_backup_disk) {
                p.push(file, &at("plug-backup-disk-after-checks"), "a command of this boot plugs the backup stick in already: plug it in once");
            }
            if b.backup_disk && b.hotplugs_backup_disk() {
                let key = if b.plug_backup_disk_after_checks { "plug-backup-disk-after-checks" } else { "command.plug-backup-disk" };
                p.push(file, &at(key), "the backup stick is already in at power-on (`backup-disk = true`): plug it in once");
            }
            if b.commands.iter().filter(|c| c.plug_backup_disk).count() > 1 {
                p.push(file, &at("command.plug-backup-disk"), "the backup stick is plugged in once per boot");
            }
            if b.key_disk && !t.key_disk {
                p.push(file, &at("key-disk"), "the scenario has no key disk (`key-disk = true` at the top)");
            }
            if b.tpm != TpmState::Same && !t.tpm {
                p.push(file, &at("tpm"), "the scenario has no TPM (`tpm = false`)");
            }
            for (i, h) in b.http.iter_mut().enumerate() {
                if !h.path.starts_with('/') {
                    p.push(file, &at(&format!("http[{i}].path")), format!("`{}` must start with `/`", h.path));
                }
                if let Some(f) = h.body_file.take() {
                    let path = base.join(f);
                    if !path.is_file() {
                        p.push(file, &at(&format!("http[{i}].body-file")), format!("{} does not exist", path.display()));
                    }
                    if h.body.is_some() {
                        p.push(file, &at(&format!("http[{i}]")), "give `body` or `body-file`, not both");
                    }
                    h.body_file = Some(path);
                }
            }
            for (i, s) in b.ssh.iter_mut().enumerate() {
                if let Some(k) = s.key.take() {
                    let path = base.join(k);
                    if !path.is_file() {
                        p.push(file, &at(&format!("ssh[{i}].key")), format!("{} does not exist", path.display()));
                    }
                    s.key = Some(path);
                }
            }
            saved.extend(b.commands.iter().filter_map(|c| c.save_as.clone()));
            for (i, d) in b.disk.iter().enumerate() {
                if let Some(v) = &d.opens_with
                    && !saved.contains(v)
                {
                    p.push(file, &at(&format!("disk[{i}].opens-with")), format!("no command of this or an earlier boot saves `{v}` (`save-as`)"));
                }
            }
        }
        if let Some(c) = &t.power_cuts {
            if !c.path.starts_with('/') {
                p.push(file, "power-cuts.path", format!("`{}` must start with `/`", c.path));
            }
            if c.answer_within == 0 || c.write_for == 0 {
                p.push(file, "power-cuts", "`answer-within` and `write-for` are seconds and must be above 0");
            }
            if c.during_boot_percent > 100 {
                p.push(file, "power-cuts.during-boot-percent", "a percentage: 0 to 100");
            }
        }
        if t.timeout == 0 {
            p.push(file, "timeout", "the timeout is in seconds and must be above 0");
        }
        if t.memory < 256 {
            p.push(file, "memory", "give the guest at least 256 (MiB)");
        }
        if t.deployment_ca && t.site.is_none() {
            p.push(file, "deployment-ca", "the CA signs at personalization: give the scenario a `site`");
        }
        let site = t.site.map(|s| base.join(s));
        if let Some(s) = &site
            && !s.is_file()
        {
            p.push(file, "site", format!("{} does not exist", s.display()));
        }
        if let Some(n) = &t.net
            && super::Cidr::parse(n).map(|c| !c.addr.is_ipv4() || c.prefix > 24).unwrap_or(true)
        {
            p.push(file, "net", format!("`{n}` is not an IPv4 network of /24 or larger, such as 192.168.76.0/24"));
        }
        for (on, key, at) in [(t.backup_server || t.backup_server_from.is_some(), "backup-server", "10.0.2.100"), (t.status_receiver, "status-receiver", "10.0.2.101")] {
            if on && (t.net.is_some() || t.metadata_service.is_some()) {
                p.push(file, key, format!("the test's server is at {at}, in QEMU's default network: leave `net` and `metadata-service` out"));
            }
        }
        let backup_disk_from = t.backup_disk_from.map(|f| base.join(f));
        let backup_server_from = t.backup_server_from.as_ref().map(|f| base.join(f));
        if let Some(f) = &backup_server_from
            && !f.is_dir()
        {
            p.push(file, "backup-server-from", format!("{} is not a directory", f.display()));
        }
        if let Some(f) = &backup_disk_from
            && !f.is_file()
        {
            p.push(file, "backup-disk-from", format!("{} does not exist", f.display()));
        }
        let nocloud = t.nocloud.map(|n| {
            let mut files = Vec::new();
            if let Some(h) = &n.local_hostname {
                files.push(("meta-data".to_string(), format!("instance-id: outpost-test\nlocal-hostname: {h}\n").into_bytes()));
            }
            if let Some(u) = &n.user_data {
                match fs_err::read(base.join(u)) {
                    Ok(b) => files.push(("user-data".to_string(), b)),
                    Err(e) => p.push(file, "nocloud.user-data", format!("{}: {e}", base.join(u).display())),
                }
            }
            files
        });
        let metadata_service = t.metadata_service.map(|m| {
            let mut files = vec![("meta-data/local-hostname".to_string(), m.local_hostname.into_bytes())];
            if let Some(k) = m.ssh_key {
                files.push(("meta-data/public-keys/0/openssh-key".to_string(), k.into_bytes()));
            }
            if let Some(u) = &m.user_data {
                match fs_err::read(base.join(u)) {
                    Ok(b) => files.push(("user-data".to_string(), b)),
                    Err(e) => p.push(file, "metadata-service.user-data", format!("{}: {e}", base.join(u).display())),
                }
            }
            files
        });
        if metadata_service.is_some() && t.net.is_some() {
            p.push(file, "metadata-service", format!("the metadata service's network is {METADATA_NET}: leave `net` out"));
        }
        let net = if metadata_service.is_some() { Some(METADATA_NET.to_string()) } else { t.net };
        p.into_result()?;
        Ok(Scenario {
            metadata_service,
            backup_disk_from,
            backup_server: t.backup_server || t.backup_server_from.is_some(),
            backup_server_from,
            status_receiver: t.status_receiver,
            nocloud,
            site,
            deployment_ca: t.deployment_ca,
            ca_cert: None,
            net,
            guest_address: t.guest_address,
            tpm: t.tpm,
            key_disk: t.key_disk,
            secure_boot: t.secure_boot,
            update_image: t.update_image.map(|u| base.join(u)),
            boots,
            power_cuts: t.power_cuts,
            install: t.install,
            name: file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            description: t.description,
            image,
            timeout: t.timeout,
            memory: t.memory,
        })
    }
}
