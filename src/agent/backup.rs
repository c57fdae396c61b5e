//! Backups of the data partition's application state, and their restore onto a replacement box
//! (docs/backup.md). restic (from the distribution) does the work: encrypted on the box before
//! anything leaves it, deduplicated in content-defined chunks, each backup an incremental
//! snapshot, a repository that an interrupted backup leaves valid (what it wrote is unreferenced
//! until the next one completes, and reused by it). A stick labelled OUTPOSTBACKUP (OUTPOSTBKUP
//! on FAT, whose labels hold 11 characters) starts a backup when it is plugged in.
//!
//! What is backed up: the stacks' named volumes and data directories, and for each database a
//! stack declares (`[[backup.dump]]` in its layer) a dump made by its own tool in its container,
//! in place of its volume, which is never copied mid-write. The backup key is made at the first
//! boot and shown with the recovery key, or given by the site (`[backup] key-file`, through the
//! seed); without it a backup is unreadable.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::say;
use crate::format::seed;
use crate::format::stack::{Dump, SEED_BACKUP_KEY, STACKS, StackSpec, VOLUMES, container_name, service_unit, target_unit, volume_name};
use crate::tool::Tool;

/// The backup key (restic's repository password), on the encrypted data partition.
pub const KEY_FILE: &str = "/var/lib/outpost/backup/key";
/// The key this box had before the site gave it one: a repository made with it gets the site's
/// key added at the next backup.
const PREVIOUS_KEY_FILE: &str = "/var/lib/outpost/backup/key.previous";
/// Dumps of the stacks' databases, made before each backup and backed up with it.
const DUMPS: &str = "/var/lib/outpost/backup/dumps";
pub const STICK_LABELS: [&str; 2] = ["OUTPOSTBACKUP", "OUTPOSTBKUP"];
/// On a stick: `outpost-backup/HOST` is one box's repository.
const REPO_DIR: &str = "outpost-backup";
const MOUNT: &str = "/run/outpost/backup-stick";
/// This box's SSH key for the site's backup server, and the server's host key once seen.
pub const SSH_DIR: &str = "/var/lib/outpost/backup/ssh";
/// One backup or restore at a time.
const LOCK: &str = "/run/outpost/backup.lock";
/// A device node podman makes beside the volumes on every box: not data, and not restorable
/// over the one the new box has.
const PODMAN_DEVICE: &str = "backingFsBlockDev";

/// `status.json`'s `last_backup` (`/var/lib/outpost/backup/last.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub ok: bool,
    pub target: String,
    /// Unix seconds.
    pub finished: u64,
    pub seconds: f64,
    pub snapshot: Option<String>,
    pub files: u64,
    pub bytes: u64,
    pub bytes_added: u64,
    pub error: Option<String>,
}

/// A new backup key: 32 random bytes as 8 groups of 8 hex digits, to be written down.
pub fn new_key() -> Result<String> {
    let mut buf = [0u8; 32];
    std::io::Read::read_exact(&mut fs_err::File::open("/dev/urandom")?, &mut buf)?;
    let hex = hex::encode(buf);
    Ok(hex.as_bytes().chunks(8).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("-"))
}

/// The box's backup key, made (and shown once on the console) if the first boot did not make
/// one (a box set up before backups existed).
fn ensure_key() -> Result<PathBuf> {
    let path = Path::new(KEY_FILE);
    if !path.exists() {
        let key = new_key()?;
        write_key(path, &key)?;
        super::console::console_only(&format!(
            "\n==== outpost: BACKUP KEY of this appliance (shown once) ====\n    {key}\nIt reads this box's backups: without it they are unreadable. Keep it with the recovery key.\n\n"
        ))?;
    }
    Ok(path.to_path_buf())
}

/// Whether the seed `dev` holds a site's backup key not taken yet: the first boot then makes
/// and shows no key of its own.
pub fn site_key_in_seed(dev: &Path) -> bool {
    matches!(seed::read_tls(dev, SEED_BACKUP_KEY), Ok(Some(k)) if k.iter().any(|b| *b != 0))
}

/// At every boot (`seed apply`): a site's backup key in the seed is taken onto the encrypted
/// data partition (the box's own, if it had one, kept as the previous key), then overwritten
/// with zeros in the seed: a thief who takes the box with its backup stick finds no key on the
/// seed's plain FAT. A cut before the zeroing takes it again at the next boot; with the data
/// partition closed it stays in the seed. Returns whether it took one.
pub fn take_key_from_seed(dev: &Path, data_closed: bool) -> Result<bool> {
    take_key(dev, Path::new(KEY_FILE), Path::new(PREVIOUS_KEY_FILE), data_closed)
}

fn take_key(dev: &Path, path: &Path, previous: &Path, data_closed: bool) -> Result<bool> {
    if !site_key_in_seed(dev) {
        return Ok(false);
    }
    if data_closed {
        say("backup: the seed holds the site's backup key; it stays there until the data partition opens");
        return Ok(false);
    }
    let bytes = seed::read_tls(dev, SEED_BACKUP_KEY)?.unwrap_or_default();
    let text = String::from_utf8(bytes).context("the site's backup key in the seed is not text")?;
    let key = text.trim_end_matches('\n');
    match fs_err::read_to_string(path) {
        Ok(own) if own.trim_end() == key => {}
        Ok(own) => {
            write_key(previous, own.trim_end())?;
            write_key(path, key)?;
        }
        Err(_) => write_key(path, key)?,
    }
    seed::zero_tls(dev, SEED_BACKUP_KEY)?;
    say("backup: took the site's backup key from the seed onto the encrypted data partition and erased it from the seed");
    Ok(true)
}

/// A repository made with the box's previous key (before the site gave it one) gets the current
/// key added, so that both read it; nothing when the current key opens it.
fn adopt_key(place: &Place, key: &Path) -> Result<()> {
    let previous = Path::new(PREVIOUS_KEY_FILE);
    if !previous.exists() || place.restic(key).args(["--no-lock", "cat", "config"]).output().is_ok() {
        return Ok(());
    }
    if place.restic(previous).args(["--no-lock", "cat", "config"]).output().is_err() {
        // Neither opens it (or it does not exist yet): the backup says what is wrong.
        return Ok(());
    }
    place.restic(previous).describe("adding the site's backup key to a repository made with this box's earlier key").args(["key", "add", "--new-password-file"]).arg(key).run()?;
    say(&format!("backup: the site's backup key now opens {} too", place.name()));
    Ok(())
}

/// Writes a backup key (mode 0600 in a 0700 directory), durably.
pub fn write_key(path: &Path, key: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().context("the key file has a directory")?;
    fs_err::create_dir_all(dir)?;
    fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    crate::files::atomic_write(path, |f| {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(std::io::Write::write_all(f, format!("{key}\n").as_bytes())?)
    })
}

/// `outpost backup stick DEV` (udev, when a stick labelled OUTPOSTBACKUP is plugged in).
pub fn stick(dev: &Path) -> Result<()> {
    let _one = super::lock(Path::new(LOCK))?;
    say(&format!("backup: started to the USB stick {}; leave it plugged in until this says done", dev.display()));
    reported("usb", "; the stick can be unplugged", || mounted(dev, true, |mnt| to_stick(&mnt.join(REPO_DIR).join(hostname()))))
}

/// `outpost backup server` (the site's daily timer): to the site's backup server.
pub fn server() -> Result<()> {
    let _one = super::lock(Path::new(LOCK))?;
    let place = site_server(&hostname())?;
    reported("server", "", || {
        let key = ensure_key()?;
        adopt_key(&place, &key)?;
        place.ensure_repository(&key)?;
        snapshot(&place, &key)
    })
}

/// Runs a backup, keeps its report for the status and says how it went.
fn reported(target: &str, after: &str, backup: impl FnOnce() -> Result<Summary>) -> Result<()> {
    let started = Instant::now();
    let r = backup();
    let none = Summary::default();
    let s = r.as_ref().unwrap_or(&none);
    let report = Report {
        ok: r.is_ok(),
        target: target.into(),
        finished: crate::files::unix_now(),
        seconds: started.elapsed().as_secs_f64(),
        snapshot: r.as_ref().ok().map(|s| s.snapshot_id.clone()),
        files: s.total_files_processed,
        bytes: s.total_bytes_processed,
        bytes_added: s.data_added,
        error: r.as_ref().err().map(|e| format!("{e:#}")),
    };
    let text = serde_json::to_vec_pretty(&report)?;
    crate::files::atomic_write(Path::new(super::status::LAST_BACKUP_PATH), |f| Ok(std::io::Write::write_all(f, &text)?))?;
    match r {
        Ok(s) => {
            say(&format!(
                "backup: done in {:.0} s: snapshot {} ({} files, {} MB, {} MB new){after}",
                report.seconds,
                &s.snapshot_id[..s.snapshot_id.len().min(8)],
                s.total_files_processed,
                s.total_bytes_processed / 1_000_000,
                s.data_added / 1_000_000
            ));
            Ok(())
        }
        Err(e) => {
            say(&format!("backup: FAILED: {e:#}{after}"));
            Err(e)
        }
    }
}

/// `outpost backup check [DEV]`: restic's check of this box's repository on a stick, or on the
/// site's server.
pub fn check(dev: Option<&Path>) -> Result<()> {
    let key = ensure_key()?;
    let Some(dev) = dev else {
        let place = site_server(&hostname())?;
        place.restic(&key).describe("checking the backup repository on the server").arg("check").run()?;
        say(&format!("backup: the repository {} is valid", place.name()));
        return Ok(());
    };
    mounted(dev, false, |mnt| {
        let repo = mnt.join(REPO_DIR).join(hostname());
        // Read-only: the stick is mounted so, and restic takes no lock.
        Place::Stick(repo.clone()).restic(&key).describe("checking the backup repository").args(["--no-lock", "check"]).run()?;
        say(&format!("backup: the repository {} on the stick is valid", repo.strip_prefix(mnt).unwrap_or(&repo).display()));
        Ok(())
    })
}

/// Mounts `dev` on MOUNT for `f`, unmounted after (also when `f` fails).
fn mounted<T>(dev: &Path, writable: bool, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let mnt = Path::new(MOUNT);
    fs_err::create_dir_all(mnt)?;
    let _ = Tool::new("umount").arg(mnt).run();
    Tool::new("mount").describe("mounting the backup USB stick").args(["-o", if writable { "rw,nodev,nosuid,noexec" } else { "ro,nodev,nosuid,noexec" }]).arg(dev).arg(mnt).run()?;
    let r = f(mnt);
    let u = Tool::new("umount").describe("unmounting the backup USB stick (everything written is on it once this succeeds)").arg(mnt).run();
    let v = r?;
    u?;
    Ok(v)
}

fn hostname() -> String {
    fs_err::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "outpost".into())
}

/// Where a box's backups are: a repository on a mounted stick, or on the site's server.
enum Place {
    Stick(PathBuf),
    /// restic's `sftp:USER@HOST:PATH` and the ssh command that reaches it.
    Server { repo: String, ssh: String, url: String },
}

impl Place {
    /// restic on this repository with `key`; no cache (the next backup on another stick needs
    /// none, and a server's index is small).
    fn restic(&self, key: &Path) -> Tool {
        let t = Tool::new("restic").arg("--password-file").arg(key).args(["--no-cache", "--quiet", "--repo"]);
        match self {
            Place::Stick(repo) => t.arg(repo),
            Place::Server { repo, ssh, .. } => t.arg(repo).arg("-o").arg(format!("sftp.command={ssh}")),
        }
    }

    fn name(&self) -> String {
        match self {
            Place::Stick(repo) => repo.display().to_string(),
            Place::Server { url, .. } => url.clone(),
        }
    }

    /// A server's repository, made the first time: restic reads its config, or creates it when
    /// there is none (and says both when neither works: a wrong key, a refused login).
    fn ensure_repository(&self, key: &Path) -> Result<()> {
        let Err(read) = self.restic(key).describe("opening the backup repository on the server").args(["cat", "config"]).output() else {
            return Ok(());
        };
        say(&format!("backup: no repository at {} yet; creating it", self.name()));
        self.restic(key).describe("creating the backup repository on the server").arg("init").run().map_err(|e| anyhow::anyhow!("{e}\n(before that, {read})"))?;
        Ok(())
    }
}

/// The site's backup server for the box `host`, and this box's SSH key for it (made the first
/// time, shown on the console each time so that the server's administrator can allow it).
fn site_server(host: &str) -> Result<Place> {
    let site = super::site::applied(Path::new("/"))?.context("this box has no site settings, so no backup server")?;
    let (b, server) = site.backup.and_then(|b| b.server.clone().map(|s| (b, s))).context("the site settings name no backup server (`[backup] server = \"sftp://...\"`)")?;
    let srv = crate::spec::BackupServer::parse(&server).map_err(anyhow::Error::msg)?;
    let dir = Path::new(SSH_DIR);
    let id = dir.join("id_ed25519");
    if !id.exists() {
        let partial = crate::files::partial(dir);
        crate::files::remove_if_exists(&partial)?;
        fs_err::create_dir_all(&partial)?;
        Tool::new("ssh-keygen").describe("making this box's SSH key for the backup server").args(["-q", "-t", "ed25519", "-N", "", "-C"]).arg(format!("outpost-backup@{}", hostname())).arg("-f").arg(partial.join("id_ed25519")).run()?;
        crate::files::remove_if_exists(dir)?;
        fs_err::rename(&partial, dir)?;
    }
    let public = fs_err::read_to_string(dir.join("id_ed25519.pub"))?.trim().to_string();
    let known = dir.join("known_hosts");
    let checking = match &b.host_key {
        Some(k) => {
            let name = if srv.port == 22 { srv.host.clone() } else { format!("[{}]:{}", srv.host, srv.port) };
            fs_err::write(dir.join("site_known_hosts"), format!("{name} {k}\n"))?;
            format!("-o UserKnownHostsFile={}/site_known_hosts -o StrictHostKeyChecking=yes", dir.display())
        }
        // The key the server shows the first time is kept, and required from then on.
        None => format!("-o UserKnownHostsFile={} -o StrictHostKeyChecking=accept-new", known.display()),
    };
    let ssh = format!(
        "ssh -i {} {checking} -o BatchMode=yes -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 -p {} {}@{} -s sftp",
        id.display(),
        srv.port,
        srv.user,
        srv.host
    );
    let url = format!("{}/{host}", server.trim_end_matches('/'));
    say(&format!("backup: the server is {url}; this box logs in to it as {public}"));
    Ok(Place::Server { repo: format!("sftp:{}@{}:{}/{host}", srv.user, srv.host, srv.path), ssh, url })
}

/// restic's `backup --json` summary line.
#[derive(Debug, Default, Deserialize)]
struct Summary {
    snapshot_id: String,
    #[serde(default)]
    total_files_processed: u64,
    #[serde(default)]
    total_bytes_processed: u64,
    #[serde(default)]
    data_added: u64,
}

/// A backup to the repository `repo` on a mounted stick.
fn to_stick(repo: &Path) -> Result<Summary> {
    let key = ensure_key()?;
    let parent = repo.parent().context("a repository has a parent")?;
    fs_err::create_dir_all(parent)?;
    // Beside the repository while a backup writes to it: found by the next one after a cut.
    let marker = repo.with_extension("in-progress");
    if marker.exists() {
        say("backup: the last backup to this stick was interrupted (a power cut, or the stick pulled out); this one completes it");
    }
    let place = Place::Stick(repo.to_path_buf());
    match repository_state(repo) {
        Repository::Valid => adopt_key(&place, &key)?,
        Repository::Empty => {
            // A repository whose creation was cut short holds nothing yet: made again.
            if repo.exists() {
                fs_err::remove_dir_all(repo)?;
            }
            place.restic(&key).describe("creating the backup repository on the stick").arg("init").run()?;
        }
        Repository::Damaged => bail!(
            "the repository {} on the stick is damaged (its config file is empty or missing, but it holds snapshots): copy what is on the stick somewhere safe and use another stick for this box",
            repo.display()
        ),
    }
    fs_err::write(&marker, b"")?;
    // The marker and a new repository on the stick before anything relies on them: a cut later
    // in this backup must find both whole (FAT keeps what it was given in memory until told).
    Tool::new("sync").describe("writing the repository's state onto the stick").arg("-f").arg(parent).run()?;
    let summary = snapshot(&place, &key)?;
    fs_err::remove_file(&marker)?;
    fs_err::File::open(parent)?.sync_all()?;
    Ok(summary)
}

/// The databases dumped, then one snapshot of the application state into `place`'s repository.
fn snapshot(place: &Place, key: &Path) -> Result<Summary> {
    let excluded = make_dumps(Path::new("/"))?;
    // Locks a cut backup left: only this box writes to its repository, and one backup at a time.
    place.restic(key).describe("removing the locks of an interrupted backup").args(["unlock", "--remove-all"]).run()?;
    let sources: Vec<&str> = [VOLUMES, crate::format::stack::STACK_DATA, DUMPS].into_iter().filter(|p| Path::new(p).exists()).collect();
    if sources.is_empty() {
        bail!("this appliance has no application state to back up ({VOLUMES}, {}, {DUMPS})", crate::format::stack::STACK_DATA);
    }
    say("backup: writing the snapshot");
    let mut t = place.restic(key).describe("writing the backup").args(["backup", "--json", "--tag", "outpost", "--host"]).arg(hostname());
    // Podman's device node beside the volumes: made by podman on every box, not data.
    t = t.arg("--exclude").arg(Path::new(VOLUMES).join(PODMAN_DEVICE));
    for e in &excluded {
        t = t.arg("--exclude").arg(e);
    }
    let out = t.args(&sources).output()?;
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message_type"] == "summary")
        .and_then(|v| serde_json::from_value::<Summary>(v).ok())
        .context("restic backup printed no summary")
}

#[derive(Debug, PartialEq, Eq)]
enum Repository {
    Valid,
    /// None, or one whose creation was cut before its config reached the stick, with no
    /// snapshot: safe to make again.
    Empty,
    /// No usable config, but snapshots: not touched.
    Damaged,
}

fn repository_state(repo: &Path) -> Repository {
    let config = fs_err::metadata(repo.join("config")).map(|m| m.len() > 0).unwrap_or(false);
    let snapshots = fs_err::read_dir(repo.join("snapshots")).map(|mut d| d.next().is_some()).unwrap_or(false);
    match (config, snapshots) {
        (true, _) => Repository::Valid,
        (false, false) => Repository::Empty,
        (false, true) => Repository::Damaged,
    }
}

/// Every stack's `[[backup.dump]]` under `root`: `(stack, dump)`.
fn dumps(root: &Path) -> Result<Vec<(String, Dump)>> {
    let mut found = Vec::new();
    for f in super::files_ending(&root.join(STACKS), 2, "stack.json")? {
        let stack = f.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let spec: StackSpec = serde_json::from_slice(&fs_err::read(&f)?).with_context(|| format!("parsing {}", f.display()))?;
        found.extend(spec.backup.into_iter().map(|d| (stack.clone(), d)));
    }
    Ok(found)
}

fn dump_file(stack: &str, service: &str) -> PathBuf {
    Path::new(DUMPS).join(format!("{stack}-{service}.dump"))
}

/// Dumps each declared database with its own tool, in its running container; returns the
/// volumes the dumps stand for (left out of the backup).
fn make_dumps(root: &Path) -> Result<Vec<PathBuf>> {
    let mut excluded = Vec::new();
    for (stack, d) in dumps(root)? {
        let file = dump_file(&stack, &d.service);
        fs_err::create_dir_all(Path::new(DUMPS))?;
        let container = container_name(&stack, &d.service);
        let started = Instant::now();
        let partial = crate::files::partial(&file);
        let out = fs_err::File::create(&partial)?;
        Tool::new("podman").describe(format!("dumping service `{}` of stack `{stack}` for the backup", d.service)).arg("exec").arg(&container).args(&d.dump).run_with_files(None, Some(out.into()))?;
        fs_err::File::open(&partial)?.sync_all()?;
        fs_err::rename(&partial, &file)?;
        say(&format!("backup: {stack}/{} dumped ({} KB) in {:.1} s", d.service, fs_err::metadata(&file)?.len() / 1000, started.elapsed().as_secs_f64()));
        if let Some(v) = &d.volume {
            excluded.push(Path::new(VOLUMES).join(volume_name(&stack, v)));
        }
    }
    Ok(excluded)
}

/// `outpost restore`: the newest backup of `host` (or of the only box on the stick; of this
/// box's name on the server) from a stick labelled OUTPOSTBACKUP or from the site's backup
/// server, read with `key_file`, in place of this box's application state: the stacks are
/// stopped, the files put back, each declared database loaded from its dump into this box's
/// own database (its own secrets stay), and the stacks started again.
pub fn restore(key_file: &Path, host: Option<&str>, from_server: bool) -> Result<()> {
    let _one = super::lock(Path::new(LOCK))?;
    let key = fs_err::read_to_string(key_file).with_context(|| format!("reading the backup key from {}", key_file.display()))?;
    if key.trim().is_empty() {
        bail!("{} is empty: give the backup key shown at the first boot of the box whose backup this is", key_file.display());
    }
    let started = Instant::now();
    if from_server {
        let from = host.map(str::to_string).unwrap_or_else(hostname);
        return restore_from(&site_server(&from)?, key_file, &from, started);
    }
    let dev = STICK_LABELS
        .iter()
        .find_map(|l| super::wait_for(&Path::new("/dev/disk/by-label").join(l), Duration::from_secs(10)))
        .with_context(|| format!("no USB stick labelled {} (or {} on FAT) is plugged in", STICK_LABELS[0], STICK_LABELS[1]))?;
    mounted(&dev, false, |mnt| {
        let repos = mnt.join(REPO_DIR);
        let boxes: Vec<String> = fs_err::read_dir(&repos)
            .with_context(|| format!("the stick has no {REPO_DIR} folder: it holds no outpost backup"))?
            .filter_map(Result::ok)
            .filter(|e| repository_state(&e.path()) == Repository::Valid)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let from = match (host, boxes.as_slice()) {
            (Some(h), _) if boxes.iter().any(|b| b == h) => h.to_string(),
            (Some(h), _) => bail!("the stick holds no backup of `{h}`; it holds: {}", boxes.join(", ")),
            (None, [one]) => one.clone(),
            (None, []) => bail!("the stick holds no backup"),
            (None, many) => bail!("the stick holds backups of several boxes ({}): name one with --host", many.join(", ")),
        };
        restore_from(&Place::Stick(repos.join(&from)), key_file, &from, started)
    })
}

/// The restore of `from`'s newest snapshot in `place`, with the applications stopped.
fn restore_from(place: &Place, key_file: &Path, from: &str, started_at: Instant) -> Result<()> {
    let snaps = place.restic(key_file).describe("reading the backup's snapshots (is the key the one of that box?)").args(["--no-lock", "snapshots", "--json", "--latest", "1"]).output()?;
    let latest: Vec<serde_json::Value> = serde_json::from_str(&snaps).context("parsing restic's list of snapshots")?;
    let snap = latest.last().with_context(|| format!("the backup of `{from}` has no snapshot"))?;
    let id = snap["short_id"].as_str().unwrap_or_default().to_string();
    say(&format!("restore: snapshot {id} of {from} taken {}; stopping the applications", snap["time"].as_str().unwrap_or("?")));
    let services = super::stack::services(Path::new("/"))?;
    let mut targets: Vec<String> = services.iter().map(|(stack, _, _)| target_unit(stack)).collect();
    targets.dedup();
    let units: Vec<String> = services.iter().map(|(stack, service, _)| service_unit(stack, service)).collect();
    Tool::new("systemctl").describe("stopping the applications").arg("stop").args(&targets).args(&units).run()?;
    let restored = put_back(place, key_file, from);
    // The applications come back whatever happened: with the backup's data, or with their
    // own when the restore failed (and says why).
    let started = Tool::new("systemctl").describe("starting the applications").arg("start").args(&targets).run();
    restored?;
    started?;
    say(&format!("restore: done in {:.0} s: snapshot {id} of {from}; the applications run with its data", started_at.elapsed().as_secs_f64()));
    Ok(())
}

/// The snapshot's files, then each declared database loaded from its dump (its service started
/// alone: its unit waits until it is healthy).
fn put_back(place: &Place, key_file: &Path, from: &str) -> Result<()> {
    place.restic(key_file).describe("restoring the backup's files").args(["--no-lock", "restore", "latest", "--target", "/", "--exclude"]).arg(Path::new(VOLUMES).join(PODMAN_DEVICE)).arg("--host").arg(from).run()?;
    for (stack, d) in dumps(Path::new("/"))? {
        let file = dump_file(&stack, &d.service);
        if !file.exists() {
            say(&format!("restore: the backup has no dump of {stack}/{}; its volume is this box's own", d.service));
            continue;
        }
        // The database's service alone (its unit waits until it is healthy), then its dump.
        Tool::new("systemctl").describe(format!("starting service `{}` of stack `{stack}`", d.service)).arg("start").arg(service_unit(&stack, &d.service)).run()?;
        let loading = Instant::now();
        Tool::new("podman")
            .describe(format!("loading the dump of service `{}` of stack `{stack}`", d.service))
            .args(["exec", "-i"])
            .arg(container_name(&stack, &d.service))
            .args(&d.restore)
            .run_with_files(Some(fs_err::File::open(&file)?.into()), None)?;
        say(&format!("restore: {stack}/{} loaded from its dump in {:.1} s", d.service, loading.elapsed().as_secs_f64()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_key_is_taken_from_the_seed_erased_there_and_the_own_key_kept_as_the_previous() {
        let tmp = tempfile::tempdir().unwrap();
        let dev = tmp.path().join("seed.img");
        let site_key = b"0123456789abcdef0123456789abcdef\n";
        let write_seed = || fs_err::write(&dev, seed::image_with(16 << 20, 1, 1_700_000_000, Some("version = 1\n"), &[(SEED_BACKUP_KEY.to_string(), site_key.to_vec())]).unwrap()).unwrap();
        write_seed();
        let (key, previous) = (tmp.path().join("backup/key"), tmp.path().join("backup/key.previous"));
        assert!(site_key_in_seed(&dev));
        // The data partition closed: it stays in the seed.
        assert!(!take_key(&dev, &key, &previous, true).unwrap());
        assert!(site_key_in_seed(&dev) && !key.exists());
        write_key(&key, "own-key-of-the-box").unwrap();
        assert!(take_key(&dev, &key, &previous, false).unwrap());
        assert_eq!(fs_err::read(&key).unwrap(), site_key);
        assert_eq!(fs_err::read_to_string(&previous).unwrap(), "own-key-of-the-box\n");
        assert!(!site_key_in_seed(&dev), "the key is still in the seed");
        assert!(!fs_err::read(&dev).unwrap().windows(site_key.len()).any(|w| w == site_key), "the key's bytes are still on the seed");
        // Nothing more to take; the same key given again keeps the previous one.
        assert!(!take_key(&dev, &key, &previous, false).unwrap());
        write_seed();
        assert!(take_key(&dev, &key, &previous, false).unwrap());
        assert_eq!(fs_err::read_to_string(&previous).unwrap(), "own-key-of-the-box\n");
    }

    #[test]
    fn keys_are_eight_groups_of_hex() {
        let k = new_key().unwrap();
        assert_eq!(k.len(), 71);
        assert!(k.split('-').all(|g| g.len() == 8 && g.chars().all(|c| c.is_ascii_hexdigit())));
        assert_ne!(k, new_key().unwrap());
    }

    #[test]
    fn a_repository_cut_at_its_creation_is_made_again_and_one_with_snapshots_never() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("clinic");
        assert_eq!(repository_state(&repo), Repository::Empty);
        fs_err::create_dir_all(repo.join("snapshots")).unwrap();
        fs_err::write(repo.join("config"), b"").unwrap();
        assert_eq!(repository_state(&repo), Repository::Empty);
        fs_err::write(repo.join("snapshots/0123"), b"x").unwrap();
        assert_eq!(repository_state(&repo), Repository::Damaged);
        fs_err::write(repo.join("config"), b"encrypted config").unwrap();
        assert_eq!(repository_state(&repo), Repository::Valid);
    }

    #[test]
    fn declared_dumps_are_found_in_the_stacks() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join(STACKS).join("orthanc-pacs");
        fs_err::create_dir_all(&dir).unwrap();
        let d = Dump { service: "postgres".into(), volume: Some("pgdata".into()), dump: vec!["pg_dump".into()], restore: vec!["pg_restore".into()] };
        let spec = StackSpec { defaults: Default::default(), secrets: Default::default(), backup: vec![d.clone()] };
        fs_err::write(dir.join("stack.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
        assert_eq!(dumps(t.path()).unwrap(), [("orthanc-pacs".to_string(), d)]);
        assert_eq!(dump_file("orthanc-pacs", "postgres"), Path::new("/var/lib/outpost/backup/dumps/orthanc-pacs-postgres.dump"));
    }
}
