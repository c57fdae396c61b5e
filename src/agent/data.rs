//! The data partition on the device, at every boot (`outpost data open`, before /var is
//! mounted): encrypted with LUKS2 on first boot with a volume key made on this machine, then
//! unlocked by the TPM, a USB key or a passphrase. The state lives in the LUKS2 label, so a
//! power cut at any point of the first boot only means starting it again: there is no data yet.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::spec::{DataPolicy, NoTpm, RecoveryKey, Site, Unlock};
use super::console::console_only;
use super::{root_disk_partition, say as console, wait_for};
use crate::tool::Tool;

/// Device-mapper name of the opened partition.
const MAPPING: &str = "outpost-data";
/// For cryptsetup and systemd-cryptsetup: libdevmapper makes the mapping's /dev/mapper node
/// itself instead of waiting for udev to report it made it. At boot that report came behind
/// udev's whole coldplug queue (4-5 s of the unlock under emulation). udev still handles the
/// mapping's event, so its systemd device unit becomes ready as before; only the dm rules'
/// mapper link is left out, the node being there already.
const DM_WITHOUT_UDEV_WAIT: (&str, &str) = ("DM_DISABLE_UDEV", "1");
/// What var.mount mounts: a link to the mapping, or to the partition itself with `unlock = none`.
const VOLUME_LINK: &str = "/run/outpost/data-volume";
/// LUKS2 labels: the state machine of the first boot.
const LABEL_PROVISIONING: &str = "outpost-provisioning";
const LABEL_READY: &str = "outpost-data";
/// ext4 labels of the file system inside (or, with `none`, on the partition).
const FS_NEW: &str = "outpost-new";
const FS_READY: &str = "outpost-var";
/// Where `recovery-key = "file"` leaves the key, on the encrypted file system.
pub const RECOVERY_FILE: &str = "/var/lib/outpost/recovery-key";
/// File-system label of a USB stick carrying key files.
const USB_LABEL: &str = "OUTPOSTKEY";
const WORK: &str = "/run/outpost";
/// Set when the partition could not be opened at this boot: units that need /var and are
/// started later (at shutdown, too) fail at once instead of asking the TPM again.
const CLOSED: &str = "/run/outpost/data-closed";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Exactly what the image wrote there (the blank marker): a new appliance.
    Blank,
    /// A first boot was cut off; its partition holds nothing yet and is formatted again.
    Interrupted,
    /// Ready; whether a key is sealed to a TPM (else it was enrolled for a USB key or a
    /// passphrase).
    Luks { tpm2: bool },
    Plain,
}

/// LUKS2's primary and secondary binary header magics, and the offsets where the secondary
/// header may start (the LUKS2 on-disk format: the primary header's size).
const LUKS_MAGIC: &[u8] = b"LUKS\xba\xbe";
const LUKS_SECONDARY_MAGIC: &[u8] = b"SKUL\xba\xbe";
const LUKS_SECONDARY_OFFSETS: [u64; 9] = [16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20];
/// ext2/3/4: the superblock at 1024, its magic at +56, its volume name (16 bytes) at +120.
const EXT4_MAGIC_AT: usize = 1024 + 56;
const EXT4_LABEL_AT: usize = 1024 + 120;

/// The last MiB of the data partition is never part of its file system: the first boot keeps
/// its provisioning marker there, in the partition's last 4 KiB, from before it formats until
/// just before its commit point. `luksFormat` first wipes the partition's start, so a power cut
/// in it leaves zeros there: the marker at the end is what says "our first boot was here".
const TAIL: u64 = 1 << 20;
const MARKER_SIZE: u64 = 4096;

fn provisioning_marker() -> Vec<u8> {
    let mut b = b"OUTPOST-DATA-PROVISIONING\nversion 1\nA first boot is formatting this partition; it held no data yet.\n".to_vec();
    b.resize(MARKER_SIZE as usize, 0);
    b
}

/// The size of a partition or mapped device.
fn device_size(dev: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    Ok(fs_err::File::open(dev)?.seek(SeekFrom::End(0))?)
}

/// Writes (or, with `false`, clears) the provisioning marker at the partition's end, through to
/// the disk.
fn set_provisioning(dev: &Path, on: bool) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let size = device_size(dev)?;
    anyhow::ensure!(size > TAIL * 2, "the data partition {} is too small ({size} bytes)", dev.display());
    let mut f = fs_err::OpenOptions::new().write(true).open(dev)?;
    f.seek(SeekFrom::Start(size - MARKER_SIZE))?;
    f.write_all(&if on { provisioning_marker() } else { vec![0u8; MARKER_SIZE as usize] })?;
    f.sync_all()?;
    Ok(())
}

/// Whether the partition's last 4 KiB hold the provisioning marker.
fn provisioning_started(dev: &Path) -> Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let size = device_size(dev)?;
    if size < MARKER_SIZE {
        return Ok(false);
    }
    let mut f = fs_err::File::open(dev)?;
    f.seek(SeekFrom::Start(size - MARKER_SIZE))?;
    let mut tail = vec![0u8; MARKER_SIZE as usize];
    f.read_exact(&mut tail)?;
    Ok(tail == provisioning_marker())
}

/// The file system's size on `dev`, leaving the tail alone: `mkfs.ext4`'s size argument.
fn fs_size(dev: &Path) -> Result<String> {
    Ok(format!("{}k", (device_size(dev)? - TAIL) / 1024))
}

/// What the data partition holds, read from its first bytes. A partition is formatted only when
/// it is positively what the image wrote (the blank marker) or what an interrupted first boot
/// left (a LUKS2 header or ext4 file system with the provisioning label). Anything else, and any
/// probe that fails, is an error: the partition stays closed and untouched, never formatted.
fn state(dev: &Path) -> Result<State> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(dev).with_context(|| format!("opening the data partition {}", dev.display()))?;
    let mut head = vec![0u8; crate::format::layout::BLANK_DATA_MARKER_SIZE];
    f.read_exact(&mut head).with_context(|| format!("reading the start of the data partition {}", dev.display()))?;
    let mut luks = head.starts_with(LUKS_MAGIC);
    for at in LUKS_SECONDARY_OFFSETS {
        if luks {
            break;
        }
        let mut magic = [0u8; 6];
        f.seek(SeekFrom::Start(at)).with_context(|| format!("reading {}", dev.display()))?;
        match f.read_exact(&mut magic) {
            Ok(()) => luks = magic == LUKS_SECONDARY_MAGIC,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e).with_context(|| format!("reading {}", dev.display())),
        }
    }
    if luks {
        // A header cryptsetup cannot read is a damaged encrypted partition, not a blank one.
        let dump = match Tool::new("cryptsetup").describe("reading the data partition's LUKS2 header").arg("luksDump").arg(dev).output() {
            Ok(d) => d,
            // A header torn by a power cut while our first boot wrote it.
            Err(_) if provisioning_started(dev)? => return Ok(State::Interrupted),
            Err(e) => return Err(e).context("the data partition has a LUKS header that cannot be read"),
        };
        let label = dump.lines().find_map(|l| l.strip_prefix("Label:")).map(str::trim).unwrap_or("");
        let tpm2 = dump.lines().any(|l| l.trim_end().ends_with(": systemd-tpm2"));
        return match label {
            LABEL_READY => Ok(State::Luks { tpm2 }),
            LABEL_PROVISIONING => Ok(State::Interrupted),
            _ if provisioning_started(dev)? => Ok(State::Interrupted),
            other => bail!("the data partition is a LUKS2 volume labelled `{}` that this appliance did not make", excerpt(other)),
        };
    }
    if head[EXT4_MAGIC_AT..EXT4_MAGIC_AT + 2] == [0x53, 0xef] {
        let raw = &head[EXT4_LABEL_AT..EXT4_LABEL_AT + 16];
        let label = String::from_utf8_lossy(&raw[..raw.iter().position(|b| *b == 0).unwrap_or(16)]).into_owned();
        return match label.as_str() {
            FS_READY => Ok(State::Plain),
            FS_NEW => Ok(State::Interrupted),
            _ if provisioning_started(dev)? => Ok(State::Interrupted),
            other => bail!("the data partition holds an ext4 file system labelled `{}` that this appliance did not make", excerpt(other)),
        };
    }
    if head == crate::format::layout::blank_data_marker() {
        return Ok(State::Blank);
    }
    if provisioning_started(dev)? {
        return Ok(State::Interrupted);
    }
    let shown = head.iter().take(16).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
    bail!("the data partition holds neither the blank marker the image wrote nor a volume this appliance made (it starts with {shown})")
}

/// At most 40 characters of a value read from a disk, for a message.
fn excerpt(s: &str) -> String {
    let mut e: String = s.chars().filter(|c| !c.is_control()).take(40).collect();
    if s.chars().count() > 40 {
        e.push('…');
    }
    e
}

/// Whether this boot left the data partition closed (`/var` is then in memory).
pub fn closed() -> bool {
    Path::new(CLOSED).exists()
}

/// `outpost data open`.
pub fn open(root: &Path) -> Result<()> {
    if let Ok(why) = fs_err::read_to_string(CLOSED) {
        bail!("the data partition stays closed until the next boot: {}", why.trim());
    }
    let r = open_inner(root);
    if let Err(e) = &r {
        fs_err::create_dir_all(WORK)?;
        let first_line = e.to_string().lines().next().unwrap_or_default().chars().take(300).collect::<String>();
        fs_err::write(CLOSED, format!("{first_line}\n"))?;
    }
    r
}

fn open_inner(root: &Path) -> Result<()> {
    let policy_file = root.join(crate::format::DATA_POLICY_PATH);
    let text = fs_err::read_to_string(&policy_file).with_context(|| format!("reading the image's data policy {}", policy_file.display()))?;
    let policy: DataPolicy = serde_json::from_str(&text).with_context(|| format!("parsing {}", policy_file.display()))?;
    let site = seed_site();
    let (mut unlock, recovery) = match &site {
        Some(s) => (s.unlock.unwrap_or(policy.unlock), s.recovery_key),
        None => (policy.unlock, RecoveryKey::default()),
    };
    let dev = root_disk_partition("data", Duration::from_secs(30))?;
    if unlock == Unlock::Tpm2 && !tpm_present() {
        match policy.no_tpm {
            NoTpm::Refuse => {
                console("this machine has no TPM 2.0, and the image's data policy is `tpm2` with `no-tpm = \"refuse\"`: the data partition stays closed and the applications do not start. Enable the TPM in the firmware setup, or personalize the site with `unlock = \"usb-key\"`.");
                bail!("no TPM 2.0 on this machine");
            }
            NoTpm::UsbKey => {
                console("this machine has no TPM 2.0; the image's `no-tpm = \"usb-key\"` setting applies: the data partition unlocks with a key file on a USB stick labelled OUTPOSTKEY");
                unlock = Unlock::UsbKey;
            }
        }
    }
    let st = state(&dev).inspect_err(|e| {
        console(&format!(
            "the data partition {} is left closed and untouched, nothing was formatted: {e:#}. The applications stay stopped; see docs/encryption.md, \"Recovery\".",
            dev.display()
        ))
    })?;
    if unlock != Unlock::None {
        load_crypto_modules();
    }
    match (st, unlock) {
        (State::Blank | State::Interrupted, _) => {
            if st == State::Interrupted {
                console("the first boot's encryption of the data partition was interrupted; starting it again (the partition held no data yet)");
            }
            let mut laps = Laps::start();
            provision(root, &dev, unlock, recovery, &policy.tpm2_pcrs, &mut laps)?;
            console(&format!("data partition {} prepared in {}", dev.display(), laps.total()));
        }
        (State::Plain, Unlock::None) => {}
        (State::Plain, _) => {
            console("WARNING: the data partition is NOT encrypted (it was set up with `unlock = \"none\"`), although the policy now asks for encryption; it is used as it is. Back up /var and reinstall to encrypt it.");
            unlock = Unlock::None;
        }
        (State::Luks { .. }, Unlock::None) => {
            console("the data partition is encrypted, but the policy now says `unlock = \"none\"`: it stays closed. Set the site's `unlock` back to how it was enrolled.");
            bail!("the data partition is encrypted and the policy gives no way to open it");
        }
        (State::Luks { tpm2: false }, Unlock::Tpm2) if policy.no_tpm == NoTpm::UsbKey => {
            // Enrolled for a USB key while the machine had no TPM; a TPM turned on later does
            // not change how it opens (re-enrolling is an administrator's step).
            unlock = Unlock::UsbKey;
        }
        (State::Luks { .. }, _) => {}
    }
    let started = Instant::now();
    let (volume, tpm) = attach(root, &dev, unlock)?;
    if unlock != Unlock::None {
        let tpm = tpm.map(|d| format!("; {}", d.describe())).unwrap_or_default();
        console(&format!("data partition unlocked ({}) in {:.1} s{tpm}", unlock_name(unlock), started.elapsed().as_secs_f64()));
    }
    check_filesystem(&volume)?;
    fs_err::create_dir_all(WORK)?;
    // For `outpost status`: how the partition is protected and was opened at this boot.
    let opened = serde_json::json!({ "encrypted": unlock != Unlock::None, "unlock": unlock_name(unlock) });
    if let Err(e) = fs_err::write(super::status::DATA_RUN_PATH, format!("{opened}\n")) {
        console(&format!("the data partition's state was not written for the status: {e}"));
    }
    crate::files::remove_if_exists(Path::new(VOLUME_LINK))?;
    std::os::unix::fs::symlink(&volume, VOLUME_LINK).with_context(|| format!("linking {VOLUME_LINK}"))?;
    Ok(())
}

/// The kernel modules that opening (or making) the encrypted partition needs, loaded in one
/// process. Left to the kernel, it asks for them one at a time as dm-crypt sets up (`dm-crypt`,
/// `crypto-xts(aes)` twice, `crypto-xts`, `crypto-aes` twice, `cryptomgr`), each a /sbin/modprobe
/// process: seven on the way to /var at every boot, ~1.5 s under emulation. With AES-NI loaded
/// first, `xts(aes)` is found at once. A CPU without AES-NI refuses that module (it is last):
/// the kernel then asks for what it lacks as before.
fn load_crypto_modules() {
    if let Err(e) = Tool::new("modprobe").describe("loading dm-crypt and the AES-XTS modules").args(["-a", "-q", "dm_crypt", "xts", "aesni_intel"]).run() {
        eprintln!("outpost: {e} (the kernel loads what it lacks when asked)");
    }
}

/// Whether the machine has a TPM 2.0. Its driver is built into the Debian and Ubuntu kernels,
/// so /dev/tpmrm0 is there from the kernel's start; a TPM whose driver is a module (an SPI or
/// I2C TPM) appears once udev's coldplug has loaded it, which is waited for only then.
fn tpm_present() -> bool {
    let tpm = Path::new(super::tpm::DEVICE);
    if tpm.exists() {
        return true;
    }
    udev_coldplugged();
    wait_for(tpm, Duration::from_secs(5)).is_some()
}

/// Starts udev's coldplug if it has not run yet and waits until udev has handled every device
/// it found (drivers loaded, /dev/disk links made). The unit does not wait for it in general:
/// the data partition, the seed and a built-in TPM are found without udev, and under emulation
/// udev's start and coldplug take 8-11 s that the unlock now spends beside them.
fn udev_coldplugged() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        // udev itself too: `settle` waits for the events udev has taken from the kernel.
        let trigger = Tool::new("systemctl").describe("starting udev and its coldplug").args(["start", "systemd-udevd.service", "systemd-udev-trigger.service"]).run();
        let settle = Tool::new("udevadm").describe("waiting for udev").args(["settle", "--timeout=60"]).run();
        if let Err(e) = trigger.and(settle) {
            console(&format!("udev did not finish handling the devices ({e}); going on"));
        }
    });
}

fn unlock_name(u: Unlock) -> &'static str {
    match u {
        Unlock::Tpm2 => "tpm2",
        Unlock::UsbKey => "usb-key",
        Unlock::Passphrase => "passphrase",
        Unlock::None => "none",
    }
}

/// The site in the seed partition, if any and valid (`outpost seed apply` reports problems).
fn seed_site() -> Option<Site> {
    let dev = root_disk_partition(crate::format::layout::SEED_LABEL, Duration::from_secs(10)).ok()?;
    let text = crate::format::seed::read_site(&dev).ok()??;
    Site::parse(Path::new("seed:/site.toml"), &text).ok()
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    use std::io::Read;
    fs_err::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex::encode(buf))
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

use std::os::unix::fs::OpenOptionsExt;

/// First boot: LUKS2 with a fresh volume key, the unlock method and a recovery key enrolled,
/// an ext4 file system inside holding a copy of the image's /var; the label is set to
/// `outpost-data` last, so only a finished partition is ever taken as ready.
fn provision(root: &Path, dev: &Path, unlock: Unlock, recovery: RecoveryKey, pcrs: &[u8], laps: &mut Laps) -> Result<()> {
    fs_err::create_dir_all(WORK)?;
    let newvar = Path::new(WORK).join("newvar");
    fs_err::create_dir_all(&newvar)?;
    // The partition's UUID is this boot's machine ID, which the initramfs gives the system at
    // every later boot (/etc is rebuilt in memory at each boot).
    let uuid = machine_uuid(&fs_err::read_to_string("/etc/machine-id").unwrap_or_default())?;
    set_provisioning(dev, true)?;
    if unlock == Unlock::None {
        console("WARNING: the data partition is NOT encrypted (the policy is `unlock = \"none\"`): anyone holding this disk can read the patient data");
        Tool::new("mkfs.ext4").describe("formatting the data partition").args(["-q", "-F", "-L", FS_NEW, "-U", &uuid]).arg(dev).arg(fs_size(dev)?).run()?;
        laps.lap("format");
        fill(dev, &newvar, None, None)?;
        laps.lap("copy");
        set_provisioning(dev, false)?;
        Tool::new("e2label").describe("marking the data partition ready").arg(dev).arg(FS_READY).run()?;
        return Ok(());
    }
    console(&format!("encrypting the data partition {} (LUKS2, aes-xts-plain64, unlock by {})", dev.display(), unlock_name(unlock)));
    let tmp = Path::new(WORK).join("provision.key");
    let passphrase = random_hex(32)?;
    write_secret(&tmp, &passphrase)?;
    // The first key slot only lives until the real ones are enrolled; its key is 256 random
    // bits that never leave /run, so key derivation adds nothing but time: the minimal PBKDF2,
    // as systemd-cryptenroll gives its TPM and recovery slots. It is opened three times below
    // (argon2id's 64 MiB cost 2-4 s each under emulation, 0.2 s on hardware).
    Tool::new("cryptsetup")
        .describe("creating the LUKS2 header of the data partition")
        .args(["luksFormat", "--batch-mode", "--type", "luks2", "--cipher", "aes-xts-plain64", "--key-size", "512"])
        .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--label", LABEL_PROVISIONING, "--uuid", &uuid, "--key-file"])
        .arg(&tmp)
        .arg(dev)
        .run()?;
    laps.lap("header");
    console("LUKS2 header written; enrolling a recovery key");
    let out = Tool::new("systemd-cryptenroll").describe("enrolling a recovery key").env("PASSWORD", &passphrase).arg("--recovery-key").arg(dev).output()?;
    let recovery_key = out.lines().map(str::trim).find(|l| l.len() == 71 && l.split('-').count() == 8).context("systemd-cryptenroll printed no recovery key")?.to_string();
    laps.lap("recovery key");
    match unlock {
        Unlock::Tpm2 => {
            let seal = super::tpm::seal_policy(root, pcrs);
            let da = super::tpm::prepare_or_say();
            console(&format!("sealing the key to the TPM: {}{}", seal.describe(), da.map(|d| format!("; {}", d.describe())).unwrap_or_default()));
            let list: Vec<String> = seal.pcrs.iter().map(u8::to_string).collect();
            let mut enroll = Tool::new("systemd-cryptenroll")
                .describe("sealing the data partition's key to the TPM")
                .env("PASSWORD", &passphrase)
                .arg(format!("--tpm2-device={}", super::tpm::DEVICE))
                .arg(format!("--tpm2-pcrs={}", list.join("+")));
            if let Some((key, sig)) = &seal.signed {
                enroll = enroll.arg(format!("--tpm2-public-key={}", key.display())).arg("--tpm2-public-key-pcrs=11").arg(format!("--tpm2-signature={}", sig.display()));
            }
            run_through_pcr_changes(&enroll.arg(dev))?;
        }
        Unlock::UsbKey => enroll_usb_key(dev, &tmp)?,
        Unlock::Passphrase => {
            let pass = ask_new_passphrase()?;
            let new = Path::new(WORK).join("new-passphrase");
            write_secret(&new, &pass)?;
            let r = Tool::new("cryptsetup").describe("adding the passphrase").args(["luksAddKey", "--batch-mode", "--pbkdf", "argon2id", "--key-file"]).arg(&tmp).arg(dev).arg(&new).run();
            fs_err::remove_file(&new)?;
            r?;
        }
        Unlock::None => unreachable!("handled above"),
    }
    laps.lap(unlock_name(unlock));
    console("copying the image's /var onto the encrypted partition");
    Tool::new("cryptsetup")
        .describe("opening the new data partition")
        .env(DM_WITHOUT_UDEV_WAIT.0, DM_WITHOUT_UDEV_WAIT.1)
        .args(["open", "--key-file"])
        .arg(&tmp)
        .arg(dev)
        .arg(MAPPING)
        .run()?;
    let mapped = Path::new("/dev/mapper").join(MAPPING);
    // The journal is not zeroed (`lazy_journal_init`): what its blocks held before reads, under
    // this new volume key, as noise, which no journal replay takes for a transaction (mkfs
    // writes the journal's superblock as empty, and each block must carry the journal's magic,
    // sequence and checksum). Zeroing it wrote up to 1 GiB through dm-crypt at the first boot
    // (32 MiB for a 2 GiB partition: mkfs 1.4-1.7 s -> 0.6-1.2 s under emulation).
    Tool::new("mkfs.ext4")
        .describe("formatting the encrypted data partition")
        .args(["-q", "-F", "-E", "lazy_journal_init=1", "-L", FS_READY])
        .arg(&mapped)
        .arg(fs_size(&mapped)?)
        .run()?;
    laps.lap("format");
    // A site that gives its boxes a backup key (in the seed, taken at `seed apply`): no key of
    // the box's own is made, or shown.
    let seed = root_disk_partition(crate::format::layout::SEED_LABEL, Duration::from_secs(10));
    let backup_key = if seed.is_ok_and(|seed| super::backup::site_key_in_seed(&seed)) { None } else { Some(super::backup::new_key()?) };
    fill(&mapped, &newvar, (recovery == RecoveryKey::File).then_some(recovery_key.as_str()), backup_key.as_deref())?;
    laps.lap("copy");
    Tool::new("cryptsetup").describe("removing the first-boot key slot").args(["luksKillSlot", "--batch-mode"]).arg(dev).arg("0").run()?;
    fs_err::remove_file(&tmp)?;
    let where_ = match recovery {
        RecoveryKey::Console => "nowhere else: write it down now".to_string(),
        RecoveryKey::File => format!("in {RECOVERY_FILE} until an administrator fetches it and runs `outpost data forget-recovery-key`"),
        RecoveryKey::Usb => match with_usb_stick(Duration::from_secs(10), true, |stick| {
            let f = stick.join(format!("recovery-key-{}.txt", luks_uuid(dev)?));
            write_secret(&f, &format!("{recovery_key}\n"))?;
            Ok(f)
        }) {
            Ok(f) => format!("on the USB stick as {}", f.file_name().unwrap_or_default().to_string_lossy()),
            Err(e) => format!("nowhere else ({e:#}): write it down now"),
        },
    };
    let backup = match &backup_key {
        Some(k) => format!("==== outpost: BACKUP KEY of this appliance (shown once) ====\n    {k}\nIt reads this box's backups (USB stick or server): without it they are unreadable. Keep it with the recovery key."),
        None => "==== outpost: this appliance's backups are read with the SITE's backup key (given at personalization) ====".to_string(),
    };
    console_only(&format!(
        "\n==== outpost: RECOVERY KEY of this appliance's data partition (shown once) ====\n    {recovery_key}\nIt opens the patient data if the TPM or the USB key is lost; it is stored {where_}.\nA key shown by an earlier, interrupted first boot no longer works.\n\n{backup}\n\n"
    ))?;
    // Then the commit point: from here on the partition is taken as ready, and only a readable
    // header of ours is ever formatted again.
    set_provisioning(dev, false)?;
    Tool::new("cryptsetup").describe("marking the data partition ready").args(["config", "--label", LABEL_READY]).arg(dev).run()?;
    laps.lap("commit");
    Ok(())
}

/// Where a first boot's preparation spent its time, for the console line that ends it: under
/// emulation it is most of a first boot (#19).
struct Laps {
    started: Instant,
    last: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Laps {
    fn start() -> Laps {
        let now = Instant::now();
        Laps { started: now, last: now, laps: Vec::new() }
    }

    fn lap(&mut self, what: &'static str) {
        let now = Instant::now();
        self.laps.push((what, now - self.last));
        self.last = now;
    }

    /// "28.2 s (header 1.3, recovery key 3.8, ...)".
    fn total(&self) -> String {
        let laps: Vec<String> = self.laps.iter().map(|(what, d)| format!("{what} {:.1}", d.as_secs_f64())).collect();
        format!("{:.1} s ({})", self.started.elapsed().as_secs_f64(), laps.join(", "))
    }
}

/// Before every mount, unattended: `e2fsck -p` replays the journal and fixes what is safe to fix;
/// what it will not fix alone is fixed with `-y` (nobody at the clinic can answer its
/// questions). The console and the journal get e2fsck's own words whenever it changed anything.
fn check_filesystem(dev: &Path) -> Result<()> {
    let e2fsck = |mode: &str| -> Result<(i32, String)> {
        let (code, text) = Tool::new("e2fsck").describe("checking the data file system").arg(mode).arg(dev).output_with_status()?;
        Ok((code, text.trim().replace('\n', "; ")))
    };
    let (code, text) = e2fsck("-p")?;
    match code {
        0 => Ok(()),
        1..=3 => {
            console(&format!("data file system checked after an unclean shutdown and repaired (e2fsck exit {code}): {text}"));
            Ok(())
        }
        _ => {
            console(&format!("data file system has errors e2fsck -p does not fix alone (exit {code}: {text}); repairing with e2fsck -y"));
            let (code, text) = e2fsck("-y")?;
            if code >= 4 {
                console(&format!("data file system could NOT be repaired (e2fsck exit {code}): {text}. The applications stay stopped; see docs/power.md"));
                bail!("the data file system could not be repaired (e2fsck exit {code})");
            }
            console(&format!("data file system repaired (e2fsck exit {code}): {text}"));
            Ok(())
        }
    }
}

/// A machine ID (32 hex digits) as a UUID.
fn machine_uuid(id: &str) -> Result<String> {
    let id = id.trim();
    anyhow::ensure!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "/etc/machine-id holds `{id}`, not a machine ID");
    Ok(format!("{}-{}-{}-{}-{}", &id[..8], &id[8..12], &id[12..16], &id[16..20], &id[20..]))
}

/// Copies the image's /var (the initial application state) into the new file system.
fn fill(dev: &Path, mnt: &Path, recovery_key: Option<&str>, backup_key: Option<&str>) -> Result<()> {
    Tool::new("mount").describe("mounting the new data file system").args(["-t", "ext4"]).arg(dev).arg(mnt).run()?;
    let copied = Tool::new("cp").describe("copying the image's /var to the data partition").args(["-a", "--sparse=always", "/var/."]).arg(mnt).run();
    let key = match (copied.is_ok(), recovery_key) {
        (true, Some(k)) => {
            let f = mnt.join(RECOVERY_FILE.trim_start_matches("/var/"));
            fs_err::create_dir_all(f.parent().expect("has a parent"))?;
            fs_err::set_permissions(f.parent().expect("has a parent"), fs::Permissions::from_mode(0o700))?;
            write_secret(&f, &format!("{k}\n"))
        }
        _ => Ok(()),
    };
    // Unencrypted boxes get theirs at their first backup, shown then.
    let key = key.and_then(|()| match (copied.is_ok(), backup_key) {
        (true, Some(k)) => super::backup::write_key(&mnt.join(super::backup::KEY_FILE.trim_start_matches("/var/")), k),
        _ => Ok(()),
    });
    let synced = Tool::new("sync").arg("-f").arg(mnt).run();
    Tool::new("umount").describe("unmounting the new data file system").arg(mnt).run()?;
    copied?;
    key?;
    synced?;
    Ok(())
}

fn luks_uuid(dev: &Path) -> Result<String> {
    Ok(Tool::new("cryptsetup").describe("reading the LUKS2 UUID").arg("luksUUID").arg(dev).output()?.trim().to_string())
}

/// Mounts the USB stick labelled OUTPOSTKEY (waiting for it up to `limit`) and runs `f` on it.
fn with_usb_stick<T>(limit: Duration, writable: bool, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    // The stick's label link and its USB drivers come from udev's coldplug, which this unit
    // does not wait for otherwise.
    udev_coldplugged();
    let dev = Path::new("/dev/disk/by-label").join(USB_LABEL);
    if wait_for(&dev, limit).is_none() {
        bail!("no USB stick labelled {USB_LABEL} is plugged in");
    }
    let mnt = Path::new(WORK).join("usb");
    fs_err::create_dir_all(&mnt)?;
    Tool::new("mount").describe("mounting the key USB stick").args(["-o", if writable { "rw,sync" } else { "ro" }]).arg(&dev).arg(&mnt).run()?;
    let r = f(&mnt);
    Tool::new("umount").describe("unmounting the key USB stick").arg(&mnt).run()?;
    r
}

fn usb_key_name(dev: &Path) -> Result<String> {
    Ok(format!("outpost-data-{}.key", luks_uuid(dev)?))
}

fn enroll_usb_key(dev: &Path, tmp: &Path) -> Result<()> {
    let name = usb_key_name(dev)?;
    let key = random_hex(64)?;
    loop {
        let r = with_usb_stick(Duration::from_secs(30), true, |stick| write_secret(&stick.join(&name), &key));
        match r {
            Ok(()) => break,
            Err(e) => console(&format!("waiting for the key USB stick to write the data partition's key file on it: {e:#}; plug in a FAT-formatted stick labelled {USB_LABEL}")),
        }
    }
    let local = Path::new(WORK).join("usb.key");
    write_secret(&local, &key)?;
    // A 512-bit random key: key derivation adds nothing, so the slot opens at once.
    let r = Tool::new("cryptsetup")
        .describe("enrolling the USB key")
        .args(["luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file"])
        .arg(tmp)
        .arg(dev)
        .arg(&local)
        .run();
    fs_err::remove_file(&local)?;
    r?;
    console(&format!("the data partition's key is on the USB stick as {name}; keep the stick with the machine"));
    Ok(())
}

fn ask_new_passphrase() -> Result<String> {
    loop {
        let ask = |prompt: &str| -> Result<String> {
            Ok(Tool::new("systemd-ask-password").describe("asking for the data partition's passphrase").args(["--timeout=0", prompt]).output()?.trim_end_matches('\n').to_string())
        };
        let a = ask("New passphrase for the patient data partition:")?;
        let b = ask("The same passphrase again:")?;
        if a != b {
            console("the two passphrases differ; again");
        } else if a.chars().count() < 12 {
            console("use at least 12 characters");
        } else {
            return Ok(a);
        }
    }
}

fn systemd_cryptsetup() -> Result<PathBuf> {
    ["/usr/lib/systemd/systemd-cryptsetup", "/lib/systemd/systemd-cryptsetup"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("systemd-cryptsetup is not installed in the image (package systemd or systemd-cryptsetup)")
}

/// Runs a systemd TPM tool (the unlock, the enrollment) again while it fails with
/// TPM_RC_PCR_CHANGED: a PCR extended by anyone between the policy session's PCR checks (the
/// kernel measuring a module it loads while udev is busy) fails it, and systemd 252 does not
/// retry (later versions do). A first boot's enrollment that gave up left the data partition
/// closed for the whole boot (seen in CI's secure-boot scenario).
fn run_through_pcr_changes(tool: &Tool) -> Result<(), crate::tool::ToolError> {
    let mut r = tool.run();
    for _ in 0..5 {
        match &r {
            Err(e) if e.to_string().contains("PCR have changed since checked") => {
                console("the TPM saw a PCR change while it checked the policy (a measurement elsewhere in the boot); trying again");
                std::thread::sleep(Duration::from_millis(500));
                r = tool.run();
            }
            _ => break,
        }
    }
    r
}

/// Opens the partition and returns the device to mount (and, unlocked by the TPM, its
/// dictionary-attack state).
fn attach(root: &Path, dev: &Path, unlock: Unlock) -> Result<(PathBuf, Option<super::tpm::Da>)> {
    let mapped = Path::new("/dev/mapper").join(MAPPING);
    if unlock == Unlock::None || mapped.exists() {
        return Ok((if unlock == Unlock::None { dev.to_path_buf() } else { mapped }, None));
    }
    let mut tpm = None;
    match unlock {
        Unlock::Tpm2 => {
            let da = super::tpm::prepare_or_say();
            let mut options = format!("tpm2-device={},headless=true", super::tpm::DEVICE);
            if Path::new(crate::format::PCR_SIGNATURE_RUN_PATH).is_file() {
                options.push_str(&format!(",tpm2-signature={}", crate::format::PCR_SIGNATURE_RUN_PATH));
            }
            let attach = Tool::new(&systemd_cryptsetup()?.to_string_lossy())
                .describe("unlocking the data partition with the TPM")
                .env(DM_WITHOUT_UDEV_WAIT.0, DM_WITHOUT_UDEV_WAIT.1)
                .args(["attach", MAPPING])
                .arg(dev)
                .args(["-", &options]);
            if let Err(e) = run_through_pcr_changes(&attach) {
                let why = super::tpm::diagnose(root, tpm2_token_pubkey(dev).as_deref());
                console(&format!("the data partition does NOT unlock with this machine's TPM: {why}. The applications stay stopped. Open it with the recovery key (docs/encryption.md, \"Recovery\")."));
                return Err(e.into());
            }
            tpm = da;
        }
        Unlock::UsbKey => {
            let name = usb_key_name(dev)?;
            loop {
                let r = with_usb_stick(Duration::from_secs(10), false, |stick| {
                    let key = stick.join(&name);
                    if !key.exists() {
                        bail!("the stick has no {name}");
                    }
                    Tool::new("cryptsetup").describe("unlocking the data partition with the USB key").args(["open", "--key-file"]).arg(&key).arg(dev).arg(MAPPING).run().map_err(anyhow::Error::from)
                });
                match r {
                    Ok(()) => break,
                    Err(e) => console(&format!("the data partition waits for its USB key ({e:#}); nothing was changed. Plug in the key stick; trying again in 5 s")),
                }
                std::thread::sleep(Duration::from_secs(5));
            }
        }
        Unlock::Passphrase => {
            // Asks on the console through systemd's password agents; unattended restart is not
            // possible with this policy (docs/encryption.md).
            Tool::new(&systemd_cryptsetup()?.to_string_lossy())
                .describe("unlocking the data partition with its passphrase")
                .args(["attach", MAPPING])
                .arg(dev)
                .args(["-", "tries=0"])
                .run()?;
        }
        Unlock::None => unreachable!("returned above"),
    }
    Ok((mapped, tpm))
}

/// The PCR policy public key recorded in the partition's systemd-tpm2 token, if any.
fn tpm2_token_pubkey(dev: &Path) -> Option<Vec<u8>> {
    use base64::Engine;
    // Only for the message of a failed unlock: an unreadable header just gives the general one.
    let json = Tool::new("cryptsetup").describe("reading the LUKS2 tokens").args(["luksDump", "--dump-json-metadata"]).arg(dev).output().ok()?;
    let v: serde_json::Value = serde_json::from_str(&json).ok()?;
    let key = v["tokens"].as_object()?.values().find(|t| t["type"] == "systemd-tpm2")?["tpm2_pubkey"].as_str()?.to_string();
    base64::engine::general_purpose::STANDARD.decode(key).ok()
}

/// `outpost data forget-recovery-key`: the administrator has the key; remove the copy.
pub fn forget_recovery_key() -> Result<()> {
    match fs_err::remove_file(RECOVERY_FILE) {
        Ok(()) => {
            console(&format!("removed {RECOVERY_FILE}"));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            console(&format!("{RECOVERY_FILE} was already removed"));
            Ok(())
        }
        Err(e) => Err(e).context(format!("removing {RECOVERY_FILE}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A LUKS2 header on a plain file, fast (the test's key derivation is cheap on purpose).
    fn luks_format(key: &Path, dev: &Path, label: &str) {
        Tool::new("cryptsetup")
            .args(["luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32768", "--label", label, "--key-file"])
            .arg(key)
            .arg(dev)
            .run()
            .unwrap();
    }

    /// A TPM tool that fails with TPM_RC_PCR_CHANGED (what systemd 252's tools print for it) is
    /// run again until it passes; any other failure is returned at once, not retried.
    #[test]
    fn a_pcr_change_during_the_policy_check_is_retried_and_nothing_else_is() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("runs");
        let script = |fail_with: &str| {
            format!(
                r#"n=$(cat {c} 2>/dev/null || echo 0); echo $((n + 1)) > {c}; if [ "$n" -lt 2 ]; then echo "{fail_with}" >&2; exit 1; fi"#,
                c = count.display()
            )
        };
        let changed = "Failed to add PCR policy to TPM: tpm:error(2.0): PCR have changed since checked";
        run_through_pcr_changes(&Tool::new("sh").args(["-c", &script(changed)])).unwrap();
        assert_eq!(fs_err::read_to_string(&count).unwrap().trim(), "3", "two PCR changes, then the run that passed");
        fs_err::remove_file(&count).unwrap();
        let e = run_through_pcr_changes(&Tool::new("sh").args(["-c", &script("Failed to unseal secret using TPM2: No such device")])).unwrap_err();
        assert!(e.to_string().contains("No such device"), "{e}");
        assert_eq!(fs_err::read_to_string(&count).unwrap().trim(), "1", "another failure is not retried");
    }

    /// Real cryptsetup and mkfs on plain files: every state the first boot can leave behind is
    /// told apart, so a power cut at any point leads to a fresh start or to an unlock.
    #[test]
    fn first_boot_states_from_real_headers() {
        crate::tool::preflight(&["cryptsetup", "mkfs.ext4"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("data.img");
        let key = dir.path().join("key");
        fs_err::write(&key, "0123456789abcdef").unwrap();
        let fresh = |dev: &Path| {
            let f = std::fs::File::create(dev).unwrap();
            f.set_len(32 << 20).unwrap();
        };
        fresh(&dev);
        // A never-written (all-zero) partition is not what the image wrote: not formatted.
        assert!(state(&dev).is_err());
        let blank = |dev: &Path| {
            fresh(dev);
            use std::io::Write;
            std::fs::OpenOptions::new().write(true).open(dev).unwrap().write_all(&crate::format::layout::blank_data_marker()).unwrap();
        };
        blank(&dev);
        assert_eq!(state(&dev).unwrap(), State::Blank);
        luks_format(&key, &dev, LABEL_PROVISIONING);
        assert_eq!(state(&dev).unwrap(), State::Interrupted);
        Tool::new("cryptsetup").args(["config", "--label", LABEL_READY]).arg(&dev).run().unwrap();
        assert_eq!(state(&dev).unwrap(), State::Luks { tpm2: false });
        for (label, want) in [(FS_NEW, State::Interrupted), (FS_READY, State::Plain)] {
            blank(&dev);
            Tool::new("mkfs.ext4").args(["-q", "-F", "-L", label]).arg(&dev).run().unwrap();
            assert_eq!(state(&dev).unwrap(), want, "ext4 labelled {label}");
        }
    }

    /// A probe that fails never reads as "blank": a LUKS2 volume whose headers cryptsetup cannot
    /// read, a partition that cannot be read at all, another system's data, an ext4 file system
    /// this appliance did not make. Each is an error, and the partition keeps its bytes.
    #[test]
    fn a_failed_probe_keeps_the_partition_closed() {
        crate::tool::preflight(&["cryptsetup", "mkfs.ext4"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("data.img");
        let key = dir.path().join("key");
        fs_err::write(&key, "0123456789abcdef").unwrap();
        std::fs::File::create(&dev).unwrap().set_len(32 << 20).unwrap();
        luks_format(&key, &dev, LABEL_READY);
        assert_eq!(state(&dev).unwrap(), State::Luks { tpm2: false });
        // Both binary headers' checksums broken: cryptsetup no longer reads it as LUKS at all
        // (the old probe then said "blank" and the first-boot path would have formatted it).
        let mut bytes = fs_err::read(&dev).unwrap();
        let hdr_size = u64::from_be_bytes(bytes[8..16].try_into().unwrap()) as usize;
        for at in [0, hdr_size] {
            bytes[at + 0x1c0] ^= 0xff;
        }
        fs_err::write(&dev, &bytes).unwrap();
        assert!(Tool::new("cryptsetup").args(["isLuks"]).arg(&dev).run().is_err(), "the test header must be unreadable");
        let err = state(&dev).unwrap_err();
        assert!(format!("{err:#}").contains("LUKS header that cannot be read"), "{err:#}");
        assert_eq!(fs_err::read(&dev).unwrap(), bytes, "probing changed the partition");
        // Unreadable: a directory where the partition should be, or no device at all.
        assert!(state(dir.path()).is_err());
        assert!(state(&dir.path().join("missing")).is_err());
        // Another system's data (random bytes), and an ext4 file system of someone else's.
        let mut other = vec![0u8; 32 << 20];
        for (i, b) in other.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        fs_err::write(&dev, &other).unwrap();
        assert!(format!("{:#}", state(&dev).unwrap_err()).contains("neither the blank marker"));
        std::fs::File::create(&dev).unwrap().set_len(32 << 20).unwrap();
        Tool::new("mkfs.ext4").args(["-q", "-F", "-L", "home-backup"]).arg(&dev).run().unwrap();
        assert!(format!("{:#}", state(&dev).unwrap_err()).contains("labelled `home-backup`"));
    }
}
