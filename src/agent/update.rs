//! `outpost update`, on the device: a signed bundle (`crate::format::update`) written into the
//! inactive root slot, checked, and staged behind a boot counter; at every boot, the release on
//! probation kept once the appliance is healthy, or given up (the previous release boots again
//! after its tries), and a rollback reported.
//!
//! Every step is safe to cut at any moment: the inactive slot's boot entry goes first, so nothing
//! ever boots a half-written slot; the new entry is written last, by a rename; the running slot is
//! never written.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::say;
use crate::format::layout::SLOTS;
use crate::format::update::{self, Manifest, Release, Status};
use crate::tool::Tool;

const ESP_MOUNT: &str = "/run/outpost/esp";
const STICK_MOUNT: &str = "/run/outpost/update-stick";
const CHECK_DIR: &str = "/run/outpost/update-check";
/// How long a release on probation has to reach a healthy state.
const HEALTH_LIMIT: Duration = Duration::from_secs(300);
/// How long failed units may stay failed (a unit restarting by itself gets this long).
const FAILED_GRACE: Duration = Duration::from_secs(30);
/// How long after a unit is first seen waiting to restart it may still be seen so.
const RESTART_GRACE: Duration = Duration::from_secs(45);

/// One root slot on the device.
#[derive(Debug, Clone)]
struct Slot {
    name: &'static str,
    root: PathBuf,
    verity: PathBuf,
}

struct Slots {
    active: Slot,
    inactive: Slot,
    /// The whole disk both live on.
    disk: PathBuf,
}

/// The running root's partition UUID and root hash, from `outpost.verity=` on the command line.
fn booted() -> Result<(String, String)> {
    let cmdline = fs_err::read_to_string("/proc/cmdline")?;
    let spec = cmdline.split_whitespace().find_map(|a| a.strip_prefix("outpost.verity=")).context("the kernel command line has no outpost.verity=: not booted from an outpost root")?;
    let parts: Vec<&str> = spec.split(',').collect();
    anyhow::ensure!(parts.len() == 3, "outpost.verity=`{spec}` is not ROOT,HASH,ROOTHASH");
    Ok((parts[0].to_lowercase(), parts[2].to_string()))
}

/// The running root's dm-verity root hash.
pub fn booted_root_hash() -> Result<String> {
    Ok(booted()?.1)
}

fn running_release() -> Result<Release> {
    let p = Path::new("/").join(update::RELEASE_PATH);
    serde_json::from_slice(&fs_err::read(&p)?).with_context(|| format!("reading {}", p.display()))
}

/// The running root's whole disk (`/sys/class/block/vda`).
fn boot_disk() -> Result<PathBuf> {
    let (root_uuid, _) = booted()?;
    let booted_dev = fs_err::canonicalize(Path::new("/dev/disk/by-partuuid").join(&root_uuid)).context("finding the running root partition")?;
    let part = booted_dev.file_name().context("a partition device has a name")?.to_string_lossy().into_owned();
    let sys = fs_err::canonicalize(Path::new("/sys/class/block").join(&part))?;
    Ok(sys.parent().context("a partition's sysfs directory has a parent")?.to_path_buf())
}

/// The partition of the boot disk with GPT name `name` (from the kernel's uevent, not udev's
/// by-partlabel links: a USB stick with a partition of the same name must never be taken).
fn disk_partition(disk: &Path, name: &str) -> Result<PathBuf> {
    for e in fs_err::read_dir(disk)? {
        let dir = e?.path();
        let uevent = dir.join("uevent");
        if !dir.join("partition").is_file() {
            continue;
        }
        let text = fs_err::read_to_string(&uevent)?;
        if text.lines().any(|l| l.strip_prefix("PARTNAME=") == Some(name)) {
            return Ok(Path::new("/dev").join(dir.file_name().context("a partition has a name")?));
        }
    }
    bail!("the boot disk ({}) has no partition `{name}`: it was written before updates existed; reinstall it once", disk.display())
}

fn find_slots() -> Result<Slots> {
    let (root_uuid, _) = booted()?;
    let booted_dev = fs_err::canonicalize(Path::new("/dev/disk/by-partuuid").join(&root_uuid)).context("finding the running root partition")?;
    let disk_sys = boot_disk()?;
    let mut found = Vec::new();
    for (name, root, verity) in SLOTS {
        found.push(Slot { name, root: disk_partition(&disk_sys, root)?, verity: disk_partition(&disk_sys, verity)? });
    }
    let (active, inactive) = if found[0].root == booted_dev {
        (found[0].clone(), found[1].clone())
    } else if found[1].root == booted_dev {
        (found[1].clone(), found[0].clone())
    } else {
        bail!("the running root ({}) is neither root slot", booted_dev.display());
    };
    let disk = Path::new("/dev").join(disk_sys.file_name().context("the disk has a name")?);
    Ok(Slots { active, inactive, disk })
}

/// The ESP, mounted while `f` runs; one user at a time (the boot check and a stick's update may
/// overlap), through a lock in /run.
fn with_esp<T>(f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let dev = disk_partition(&boot_disk()?, "esp")?;
    let mnt = Path::new(ESP_MOUNT);
    fs_err::create_dir_all(mnt)?;
    let _lock = super::lock(Path::new("/run/outpost/esp.lock"))?;
    Tool::new("mount").describe("mounting the ESP").args(["-t", "vfat", "-o", "rw,nodev,nosuid,noexec"]).arg(&dev).arg(mnt).run()?;
    let r = f(mnt);
    Tool::new("sync").describe("writing the ESP out").run()?;
    Tool::new("umount").describe("unmounting the ESP").arg(mnt).run()?;
    r
}

/// A boot entry on the ESP: its file name, its slot, its boot counter (tries left, done).
type Entry = (String, String, Option<(u32, u32)>);

/// The boot entries on the ESP, by slot.
fn entries(esp: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for e in fs_err::read_dir(esp.join("loader/entries"))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some((slot, counter)) = update::parse_entry_name(&name) {
            out.push((name, slot, counter));
        }
    }
    Ok(out)
}

fn sync_dir(d: &Path) -> Result<()> {
    File::open(d).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", d.display()))
}

/// The status file, written whole each time.
struct Reporter {
    status: Status,
}

impl Reporter {
    fn new(state: &str) -> Reporter {
        let (image, running) = running_release().map(|r| (r.image, r.release)).unwrap_or_default();
        let slot = find_slots().map(|s| s.active.name.to_string()).unwrap_or_default();
        Reporter { status: Status { image, running, slot, state: state.into(), ..Status::default() } }
    }

    fn set(&mut self, state: &str, reason: Option<String>) {
        self.status.state = state.into();
        self.status.reason = reason;
        self.write();
    }

    fn write(&self) {
        let path = Path::new(update::STATUS_RUN_PATH);
        let r = fs_err::create_dir_all(path.parent().expect("a file in /run/outpost"))
            .map_err(anyhow::Error::from)
            .and_then(|_| crate::files::atomic_write(path, |f| Ok(f.write_all(&serde_json::to_vec_pretty(&self.status)?)?)));
        if let Err(e) = r {
            say(&format!("update: could not write {}: {e:#}", path.display()));
        }
    }
}

/// An opened bundle: its manifest (checked against its signature) and where its payload is.
struct Bundle {
    file: File,
    manifest: Manifest,
    payload_at: u64,
}

/// Reads the bundle's three members; with `key`, checks the signature before the manifest is
/// trusted for anything (scratch files in `work`).
fn open_bundle(path: &Path, key: Option<(&Path, &Path)>) -> Result<Bundle> {
    let mut file = fs_err::File::open(path)?.into_parts().0;
    let (mut manifest, mut sig, mut payload) = (None, None, None);
    {
        let mut tar = tar::Archive::new(&mut file);
        for e in tar.entries_with_seek().with_context(|| format!("{} is not an update bundle (a tar archive)", path.display()))? {
            let mut e = e.with_context(|| format!("{} is damaged or truncated", path.display()))?;
            let name = e.path()?.to_string_lossy().into_owned();
            let size = e.size();
            match name.as_str() {
                update::MANIFEST_MEMBER | update::SIGNATURE_MEMBER => {
                    anyhow::ensure!(size < 64 << 20, "{}: {name} is {size} bytes", path.display());
                    let mut b = Vec::new();
                    e.read_to_end(&mut b).with_context(|| format!("{} is truncated", path.display()))?;
                    if name == update::MANIFEST_MEMBER { manifest = Some(b) } else { sig = Some(b) }
                }
                update::PAYLOAD_MEMBER => payload = Some((e.raw_file_position(), size)),
                _ => {}
            }
        }
    }
    let (Some(manifest), Some(sig), Some((payload_at, payload_len))) = (manifest, sig, payload) else {
        bail!("{} is not a complete update bundle (it lacks its manifest, signature or payload): truncated, or not made by `outpost bundle`", path.display());
    };
    if let Some((key, work)) = key {
        verify_signature(&manifest, &sig, key, work).with_context(|| format!("refusing {}", path.display()))?;
    }
    let manifest: Manifest = serde_json::from_slice(&manifest).with_context(|| format!("{}: the manifest does not parse", path.display()))?;
    anyhow::ensure!(manifest.format == update::FORMAT, "{}: bundle format {} (this appliance reads format {})", path.display(), manifest.format, update::FORMAT);
    anyhow::ensure!(
        payload_len == manifest.payload_size && file.metadata()?.len() >= payload_at + payload_len,
        "{} is truncated: its payload should be {} bytes (the file is {} bytes)",
        path.display(),
        manifest.payload_size,
        file.metadata()?.len()
    );
    Ok(Bundle { file, manifest, payload_at })
}

/// The manifest's RSA-SHA256 signature against the update key in the running image.
fn verify_signature(manifest: &[u8], sig: &[u8], key: &Path, dir: &Path) -> Result<()> {
    anyhow::ensure!(key.is_file(), "this image was built without signing keys ({} is missing), so it takes no updates", key.display());
    fs_err::create_dir_all(dir)?;
    let (m, s) = (dir.join("manifest"), dir.join("manifest.sig"));
    fs_err::write(&m, manifest)?;
    fs_err::write(&s, sig)?;
    let r = Tool::new("openssl").describe("checking the bundle's signature").args(["dgst", "-sha256", "-verify"]).arg(key).arg("-signature").arg(&s).arg(&m).output();
    fs_err::remove_file(&m)?;
    fs_err::remove_file(&s)?;
    match r {
        Ok(out) if out.contains("Verified OK") => Ok(()),
        _ => bail!("its signature does not verify against this image's update key: it was signed with another project's key, or changed after signing"),
    }
}

/// Whether `m` may replace what runs: same image, a higher release, the base it was made for.
fn check_applies(m: &Manifest, running: &Release, running_root_hash: &str) -> Result<()> {
    anyhow::ensure!(m.image == running.image, "the bundle is for image `{}`; this appliance runs `{}`", m.image, running.image);
    match update::release_cmp(&m.release, &running.release) {
        std::cmp::Ordering::Equal => bail!("this appliance already runs release {}", m.release),
        std::cmp::Ordering::Less => bail!("the bundle is release {}, older than the running {}: downgrades are refused", m.release, running.release),
        std::cmp::Ordering::Greater => {}
    }
    if let Some(b) = &m.base {
        anyhow::ensure!(
            b.root_hash == running_root_hash,
            "the bundle is a delta from release {} (root {}), but this appliance runs release {} (root {}): use a full bundle or a delta from release {}",
            b.release,
            &b.root_hash[..12.min(b.root_hash.len())],
            running.release,
            &running_root_hash[..12.min(running_root_hash.len())],
            running.release
        );
    }
    Ok(())
}

/// The payload's size and sha256, read whole before a byte is written.
fn check_payload(b: &mut Bundle) -> Result<()> {
    b.file.seek(SeekFrom::Start(b.payload_at))?;
    let (sha, n) = crate::files::hash_copy(&mut (&mut b.file).take(b.manifest.payload_size), &mut std::io::sink())?;
    anyhow::ensure!(n == b.manifest.payload_size, "the bundle is truncated: {n} of {} payload bytes", b.manifest.payload_size);
    anyhow::ensure!(sha == b.manifest.payload_sha256, "the bundle's payload does not match its signed manifest: damaged in transit or on the stick");
    Ok(())
}

/// Where the device's own copy of a chunk is: (file, offset).
type Store = HashMap<String, (PathBuf, u64)>;

/// The chunks of the running root (the bytes its hash tree covers) and UKI.
fn own_chunks(active: &Slot, uki: &Path) -> Result<Store> {
    let mut sb = [0u8; 80];
    fs_err::File::open(&active.verity)?.read_exact(&mut sb)?;
    let size = update::verity_data_size(&sb).context("the running slot's hash tree has no dm-verity superblock")?;
    let uki_size = fs_err::metadata(uki)?.len();
    store_of(&[(&active.root, size), (uki, uki_size)])
}

/// Where each chunk of the first `size` bytes of each file is.
fn store_of(sources: &[(&Path, u64)]) -> Result<Store> {
    let mut store = Store::new();
    for (path, size) in sources {
        for c in update::chunks(fs_err::File::open(path)?.take(*size))? {
            store.entry(c.sha256).or_insert((path.to_path_buf(), c.offset));
        }
    }
    Ok(store)
}

/// Writes an artifact's chunks to `out`, each checked against its sha256 in the manifest.
fn write_chunks(b: &mut Bundle, which: &str, store: &Store, out: &mut File, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let art = if which == "root" { b.manifest.root.clone() } else { b.manifest.uki.clone() };
    let mut files: HashMap<PathBuf, File> = HashMap::new();
    let mut whole = sha2::Sha256::default();
    use sha2::Digest;
    for update::ChunkRef(sha, len, place) in &art.chunks {
        let data = match place {
            Some((at, clen)) => {
                let mut frame = vec![0u8; *clen as usize];
                b.file.seek(SeekFrom::Start(b.payload_at + at))?;
                b.file.read_exact(&mut frame)?;
                zstd::bulk::decompress(&frame, *len as usize).with_context(|| format!("unpacking a chunk of the {which}"))?
            }
            None => {
                let (path, at) = store.get(sha).with_context(|| format!("a chunk of the new {which} is neither in the bundle nor in what this appliance runs"))?;
                let f = match files.get_mut(path) {
                    Some(f) => f,
                    None => files.entry(path.clone()).or_insert(fs_err::File::open(path)?.into_parts().0),
                };
                let mut d = vec![0u8; *len as usize];
                f.seek(SeekFrom::Start(*at))?;
                f.read_exact(&mut d)?;
                d
            }
        };
        anyhow::ensure!(hex::encode(sha2::Sha256::digest(&data)) == *sha, "a chunk of the new {which} does not match its signed hash");
        whole.update(&data);
        out.write_all(&data).with_context(|| format!("writing the new {which}"))?;
        progress(u64::from(*len));
    }
    anyhow::ensure!(hex::encode(whole.finalize()) == art.sha256, "the new {which} does not match its signed hash");
    Ok(())
}

/// `outpost update apply BUNDLE`.
pub fn apply(bundle: &str, reboot: bool) -> Result<()> {
    let mut report = Reporter::new("applying");
    let r = apply_inner(bundle, &mut report);
    match &r {
        Ok(release) => {
            report.status.staged = Some(release.clone());
            report.status.progress = Some(100);
            report.set("staged", None);
            say(&format!("update: release {release} staged: it starts at the next boot, and the running release comes back by itself if it does not become healthy"));
            if reboot {
                Tool::new("systemctl").describe("rebooting into the update").arg("reboot").run()?;
            }
        }
        Err(e) => {
            report.set("refused", Some(format!("{e:#}")));
            say(&format!("update: REFUSED {bundle}: {e:#}. The running release is untouched."));
        }
    }
    r.map(|_| ())
}

fn apply_inner(source: &str, report: &mut Reporter) -> Result<String> {
    let fetched;
    let path = if source.starts_with("http://") || source.starts_with("https://") {
        fetched = fetch(source, &Path::new(update::STATE_DIR).join("downloads"), 30, Duration::from_secs(10))?;
        fetched.as_path()
    } else {
        Path::new(source)
    };
    let running = running_release()?;
    let (_, root_hash) = booted()?;
    let key = Path::new("/").join(update::UPDATE_PUBLIC_KEY_PATH);
    let mut b = open_bundle(path, Some((&key, Path::new(CHECK_DIR))))?;
    check_applies(&b.manifest, &running, &root_hash)?;
    check_payload(&mut b)?;
    anyhow::ensure!(
        super::tpm::secure_boot() || !Path::new("/").join(crate::format::PCR_PUBLIC_KEY_PATH).is_file(),
        "Secure Boot is off on this machine, so the data key is sealed to this exact boot loader and kernel (PCR 4): a new release could not unlock the data. \
         Enrol the project's db certificate (outpost/secure-boot-db.cer on the ESP) in the firmware and turn Secure Boot on first (docs/encryption.md)"
    );
    let slots = find_slots()?;
    let m = b.manifest.clone();
    let root_room = fs_err::File::open(&slots.inactive.root)?.seek(SeekFrom::End(0))?;
    anyhow::ensure!(m.root.size <= root_room, "release {}'s root is {} bytes, but a root slot holds {}: reinstall with a larger `[partitions] root`", m.release, m.root.size, root_room);
    report.status.staged = Some(m.release.clone());
    say(&format!("update: release {} of {} checked (signature, image, release, payload); writing root slot {}", m.release, m.image, slots.inactive.name));
    with_esp(|esp| {
        let entries = entries(esp)?;
        if let Some((name, _, Some(_))) = entries.iter().find(|(_, s, c)| s == slots.active.name && c.is_some()) {
            bail!("the running release is still on probation ({name}): wait until it is kept (a few minutes after boot)");
        }
        // First, nothing may boot the slot about to be written.
        for (name, slot, _) in &entries {
            if slot == slots.inactive.name {
                fs_err::remove_file(esp.join("loader/entries").join(name))?;
            }
        }
        sync_dir(&esp.join("loader/entries"))?;
        let uki_path = esp.join(update::uki_on_esp(slots.inactive.name));
        crate::files::remove_if_exists(&uki_path)?;
        crate::files::remove_if_exists(&esp.join(update::corrupted_note_on_esp(slots.inactive.name)))?;
        let store = if m.base.is_some() { own_chunks(&slots.active, &esp.join(update::uki_on_esp(slots.active.name)))? } else { Store::new() };
        let total = m.root.size + m.uki.size;
        let mut done = 0u64;
        let mut last = 0u8;
        let started = Instant::now();
        let mut progress = |n: u64| {
            done += n;
            let pct = (done * 100 / total.max(1)) as u8;
            if pct >= last + 10 {
                last = pct;
                report.status.progress = Some(pct);
                report.write();
                say(&format!("update: {pct}% written"));
            }
        };
        let mut root = fs_err::OpenOptions::new().write(true).open(&slots.inactive.root)?.into_parts().0;
        write_chunks(&mut b, "root", &store, &mut root, &mut progress)?;
        crate::blockdev::drop_cache(&root)?;
        drop(root);
        let hash = format_verity(&slots.inactive, &m)?;
        anyhow::ensure!(hash == m.root_hash, "the root written into slot {} has root hash {hash}, not the signed {}: the disk may be failing", slots.inactive.name, m.root_hash);
        set_slot_guids(&slots, &m.root_hash)?;
        let partial = crate::files::partial(&uki_path);
        let mut uki = fs_err::File::create(&partial)?.into_parts().0;
        write_chunks(&mut b, "uki", &store, &mut uki, &mut progress)?;
        uki.sync_all()?;
        drop(uki);
        fs_err::rename(&partial, &uki_path)?;
        sync_dir(uki_path.parent().expect("in outpost/"))?;
        // Last: the entry, with its boot counter.
        let (name, text) = update::entry(slots.inactive.name, &m.image, &m.release, Some(update::TRIES));
        let entry_path = esp.join("loader/entries").join(&name);
        crate::files::atomic_write(&entry_path, |f| Ok(f.write_all(text.as_bytes())?))?;
        say(&format!("update: slot {} written and checked in {:.0} s", slots.inactive.name, started.elapsed().as_secs_f64()));
        Ok(())
    })?;
    Ok(m.release)
}

/// Downloads `url` into `dir` (on the data partition, so that a download survives a power cut),
/// resuming where a dropped connection or a cut left it (HTTP range requests, `curl -C -`):
/// a slow link never starts again from zero. Up to `tries` attempts, `pause` apart.
fn fetch(url: &str, dir: &Path, tries: u32, pause: Duration) -> Result<PathBuf> {
    use sha2::Digest;
    let name = format!("{}.update", &hex::encode(sha2::Sha256::digest(url.as_bytes()))[..16]);
    let done = dir.join(&name);
    if done.is_file() {
        return Ok(done);
    }
    fs_err::create_dir_all(dir)?;
    let partial = crate::files::partial(&done);
    for attempt in 1..=tries {
        let had = fs_err::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let r = Tool::new("curl")
            .describe(format!("downloading {url}"))
            .args(["--fail", "--silent", "--show-error", "--location", "--continue-at", "-", "--connect-timeout", "30", "--speed-limit", "1", "--speed-time", "120", "--output"])
            .arg(&partial)
            .arg(url)
            .output_with_status();
        let now = fs_err::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        match r {
            Ok((0, _)) => {
                fs_err::rename(&partial, &done)?;
                say(&format!("update: downloaded {url} ({now} bytes{})", if attempt > 1 { format!(", in {attempt} attempts") } else { String::new() }));
                return Ok(done);
            }
            // 33: the server cannot resume; the next attempt starts from zero.
            Ok((33, _)) => crate::files::remove_if_exists(&partial)?,
            Ok((code, out)) => say(&format!("update: download of {url} interrupted at {now} bytes (+{} this attempt; curl exit {code}: {}); resuming", now.saturating_sub(had), out.trim())),
            Err(e) => return Err(e.into()),
        }
        std::thread::sleep(pause);
    }
    bail!("{url} could not be downloaded in {tries} attempts; what arrived is kept and the next try resumes from it")
}

/// Recomputes the hash tree of the written root with the release's parameters; returns its
/// root hash.
fn format_verity(slot: &Slot, m: &Manifest) -> Result<String> {
    crate::format::verity::format(&slot.root, &slot.verity, Some(m.root.size / 4096), &m.verity_salt, &m.verity_uuid, "computing the new root's dm-verity hash tree")
}

/// Names the inactive slot's partitions after the new root hash, which the new UKI's command
/// line looks for.
fn set_slot_guids(slots: &Slots, root_hash: &str) -> Result<()> {
    let (root_guid, verity_guid) = crate::format::layout::slot_guids(root_hash).context("the root hash is not 64 hex digits")?;
    let names = SLOTS.iter().find(|(n, _, _)| *n == slots.inactive.name).expect("a slot of SLOTS");
    let mut disk = gpt::GptConfig::new().writable(true).open(&slots.disk).with_context(|| format!("reading the partition table of {}", slots.disk.display()))?;
    let mut parts = disk.partitions().clone();
    for p in parts.values_mut() {
        if p.name == names.1 {
            p.part_guid = root_guid;
        } else if p.name == names.2 {
            p.part_guid = verity_guid;
        }
    }
    disk.update_partitions(parts)?;
    let f = disk.write().with_context(|| format!("writing the partition table of {}", slots.disk.display()))?;
    f.sync_all()?;
    Ok(())
}

/// `outpost update stick DEVICE`: the newest bundle on the stick that applies to this appliance.
pub fn stick(dev: &Path) -> Result<()> {
    let mnt = Path::new(STICK_MOUNT);
    fs_err::create_dir_all(mnt)?;
    Tool::new("mount").describe("mounting the update USB stick").args(["-o", "ro,nodev,nosuid,noexec"]).arg(dev).arg(mnt).run()?;
    say(&format!("update: USB stick {} plugged in", dev.display()));
    let r = stick_inner(mnt);
    Tool::new("umount").describe("unmounting the update USB stick").arg(mnt).run()?;
    r
}

fn stick_inner(mnt: &Path) -> Result<()> {
    let running = running_release()?;
    let (_, root_hash) = booted()?;
    let mut candidates = Vec::new();
    for e in fs_err::read_dir(mnt)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "update") {
            // Chosen by the unsigned manifest; `apply` checks the signature before trusting it.
            match open_bundle(&p, None) {
                Ok(b) if check_applies(&b.manifest, &running, &root_hash).is_ok() => candidates.push((b.manifest.release.clone(), b.manifest.base.is_some(), p)),
                Ok(b) => say(&format!("update: {} does not apply here: {:#}", p.display(), check_applies(&b.manifest, &running, &root_hash).unwrap_err())),
                Err(e) => say(&format!("update: {} skipped: {e:#}", p.display())),
            }
        }
    }
    // The newest release; of two bundles of it, the delta (less to read).
    candidates.sort_by(|a, b| update::release_cmp(&a.0, &b.0).then(a.1.cmp(&b.1)));
    let Some((_, _, best)) = candidates.pop() else {
        // Said only: the status file keeps what the boot check or an earlier update wrote.
        say(&format!("update: nothing on the stick for {} release {}", running.image, running.release));
        return Ok(());
    };
    apply(&best.to_string_lossy(), false)
}

/// The appliance's health: Ok once the system is `running` with no unit restarting, for 10 s
/// on end; the units that stayed failed past the grace time, or kept restarting (a service that
/// never starts is restarted by `Restart=` and never shows as failed), or the state at the limit.
fn wait_healthy(limit: Duration) -> Result<(), String> {
    let started = Instant::now();
    let mut failing_since: Option<Instant> = None;
    let mut healthy_since: Option<Instant> = None;
    let mut restarting: HashMap<String, Instant> = HashMap::new();
    loop {
        let state = super::system_state();
        let failed = super::units_in_state("failed");
        let looping = super::units_in_state("auto-restart");
        for u in &looping {
            let first = *restarting.entry(u.clone()).or_insert_with(Instant::now);
            if first.elapsed() > RESTART_GRACE {
                return Err(format!("units keep restarting: {}", looping.join(" ")));
            }
        }
        if state == "running" && looping.is_empty() {
            if healthy_since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_secs(10) {
                return Ok(());
            }
        } else {
            healthy_since = None;
        }
        if failed.is_empty() {
            failing_since = None;
        } else if failing_since.get_or_insert_with(Instant::now).elapsed() > FAILED_GRACE {
            return Err(format!("units failed: {}", failed.join(" ")));
        }
        if started.elapsed() > limit {
            return Err(format!("the system was still `{state}` after {} s", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// What a release that was given up leaves for the one that boots after it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Failure {
    release: String,
    reason: String,
}

/// `outpost update boot-check`, at every boot once the boot has finished.
pub fn boot_check() -> Result<()> {
    let mut report = Reporter::new("idle");
    let slots = find_slots()?;
    let running = running_release()?;
    let state = Path::new(update::STATE_DIR);
    let (entries, corrupted) = with_esp(|esp| Ok((entries(esp)?, fs_err::read_to_string(esp.join(update::corrupted_note_on_esp(slots.inactive.name))).ok())))?;
    let mine = entries.iter().find(|(_, s, _)| s == slots.active.name).cloned();
    match mine {
        Some((name, _, Some((left, _)))) => {
            report.set("trying", None);
            say(&format!("update: release {} is on probation ({left} tries left after this one); waiting until the appliance is healthy", running.release));
            match wait_healthy(HEALTH_LIMIT) {
                Ok(()) => {
                    let (kept, _) = update::entry(slots.active.name, "", "", None);
                    with_esp(|esp| {
                        let dir = esp.join("loader/entries");
                        fs_err::rename(dir.join(&name), dir.join(&kept))?;
                        sync_dir(&dir)
                    })?;
                    report.set("idle", None);
                    say(&format!("update: release {} is healthy: kept", running.release));
                }
                Err(reason) => {
                    // Kept for the release that boots next; the restart happens even when /var
                    // could not be written (the data partition may be what failed).
                    let f = Failure { release: running.release.clone(), reason: reason.clone() };
                    let kept = fs_err::create_dir_all(state)
                        .map_err(anyhow::Error::from)
                        .and_then(|_| crate::files::atomic_write(&state.join("last-failure.json"), |w| Ok(w.write_all(&serde_json::to_vec_pretty(&f)?)?)));
                    if let Err(e) = kept {
                        say(&format!("update: could not record why release {} failed: {e:#}", running.release));
                    }
                    report.set("failing", Some(reason.clone()));
                    say(&format!(
                        "update: release {} is NOT healthy ({reason}); restarting: {}",
                        running.release,
                        if left == 0 { "the previous release boots next" } else { "it gets another try" }
                    ));
                    Tool::new("systemctl").describe("rebooting").arg("reboot").run()?;
                }
            }
        }
        _ => {
            let given_up = entries.iter().find(|(_, s, c)| s == slots.inactive.name && matches!(c, Some((0, _))));
            if let Some((name, _, _)) = given_up {
                let failure: Option<Failure> = fs_err::read(state.join("last-failure.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
                let why = match (corrupted, failure) {
                    (Some(note), _) => format!("the release in slot {} was given up at boot: {}", slots.inactive.name, note.trim()),
                    (None, Some(f)) => format!("release {} did not become healthy: {}", f.release, f.reason),
                    (None, None) => format!("the release in slot {} ({name}) did not come up", slots.inactive.name),
                };
                report.set("rolled-back", Some(why.clone()));
                say(&format!("update: ROLLED BACK to release {}: {why}", running.release));
            } else {
                report.set("idle", None);
            }
        }
    }
    Ok(())
}

/// `outpost update status`.
pub fn status() -> Result<()> {
    let s: Status = match fs_err::read(update::STATUS_RUN_PATH) {
        Ok(b) => serde_json::from_slice(&b)?,
        Err(_) => Reporter::new("idle").status,
    };
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(())
}

#[cfg(test)]
#[path = "update_tests.rs"]
mod tests;
