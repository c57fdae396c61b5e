//! Command-line types only; `main.rs` runs them.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "outpost", version, about = "Build immutable appliance images for health facilities with poor connectivity")]
pub struct Cli {
    /// Layer cache directory [default: $OUTPOST_CACHE, else ~/.cache/outpost]
    #[arg(long, global = true, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Print a machine-readable JSON report on stdout instead of progress
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image definition into raw and qcow2 disks, manifest.json and SHA256SUMS
    Build {
        /// Image definition, e.g. images/demo.toml
        image: PathBuf,
        /// Output directory
        #[arg(long, value_name = "DIR", default_value = "out")]
        out: PathBuf,
        /// Also write NAME.raw.luks: the disk encrypted (LUKS) with the text passphrase in this
        /// file, for images stored or shipped outside the clinic
        #[arg(long, value_name = "FILE", env = "OUTPOST_ENCRYPT_KEY_FILE")]
        encrypt_key_file: Option<PathBuf>,
        /// Sign the boot chain and the data key's PCR policy with the keys in DIR (made by
        /// `outpost keys init`); without them the image is for development only
        #[arg(long, value_name = "DIR", env = "OUTPOST_KEYS")]
        keys: Option<PathBuf>,
    },
    /// Build an image and write an update bundle for the appliances that run an earlier release
    /// of it: NAME-RELEASE.update, signed with the project's keys; with --from, a delta holding
    /// only what that earlier build does not have
    Bundle {
        /// Image definition, e.g. images/demo.toml (its `release` must be above --from's)
        image: PathBuf,
        /// Output directory (the build's outputs and the bundle)
        #[arg(long, value_name = "DIR", default_value = "out")]
        out: PathBuf,
        /// An earlier build's output directory (its manifest.json and NAME.raw): write a delta
        /// that applies to appliances running that release
        #[arg(long, value_name = "DIR")]
        from: Option<PathBuf>,
        /// The keys the image is signed with (`outpost keys init`); bundles are signed with them
        #[arg(long, value_name = "DIR", env = "OUTPOST_KEYS", required = true)]
        keys: Option<PathBuf>,
    },
    /// Signing keys for Secure Boot and the data key's PCR policy
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The deployment's certificate authority, for the boxes' HTTPS certificates
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Decrypt NAME.raw.luks back into a raw disk
    Decrypt {
        /// The encrypted disk, e.g. out/demo/demo.raw.luks
        image: PathBuf,
        /// The key file it was encrypted with
        #[arg(long, value_name = "FILE", env = "OUTPOST_ENCRYPT_KEY_FILE")]
        key_file: PathBuf,
        /// The raw disk to write
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the resolved layers in order with their cache keys; builds nothing
    Plan {
        /// Image definition, e.g. images/demo.toml
        image: PathBuf,
    },
    /// Boot images under QEMU and check scenarios' assertions (each image is built once, through
    /// the cache, for all the scenarios that boot it)
    Test {
        /// Scenarios, e.g. qemu-tests/debian-base.toml qemu-tests/encryption.toml
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Boot this disk instead of building the scenarios' image
        #[arg(long, value_name = "PATH")]
        image: Option<PathBuf>,
        /// Where the console logs, overlays and (if built) images go, one directory per scenario
        /// below it when there are several [default: a new directory under /var/tmp]
        #[arg(long, value_name = "DIR")]
        work: Option<PathBuf>,
        /// Build with the signing keys in DIR (as `outpost build --keys`)
        #[arg(long, value_name = "DIR", env = "OUTPOST_KEYS")]
        keys: Option<PathBuf>,
        /// The deployment CA for scenarios with `deployment-ca = true` (as `personalize --ca`)
        #[arg(long, value_name = "DIR", env = "OUTPOST_CA")]
        ca: Option<PathBuf>,
        /// CPUs of each test machine. Under emulation (TCG) give each guest no more CPUs than
        /// the host has cores to spare for it: a guest CPU that waits for a lock held by its
        /// other CPU, which the host has descheduled, spins (two guests of 2 CPUs on 2 cores took
        /// 395 s where two of 1 CPU took 311 s)
        #[arg(long, value_name = "N", env = "OUTPOST_TEST_CPUS", default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=64))]
        cpus: u8,
    },
    /// Write a site's settings into the seed partition of a copy of an image (the root is untouched)
    Personalize {
        /// A built image: NAME.raw or NAME.qcow2
        image: PathBuf,
        /// The site definition, e.g. sites/clinic.toml
        #[arg(long, value_name = "FILE")]
        site: PathBuf,
        /// The personalized copy: NAME-SITE.raw or NAME-SITE.qcow2
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Give the box an issuing certificate from the deployment CA in DIR (`outpost ca init`):
        /// it signs and renews its own HTTPS certificate, which the deployment's phones trust
        #[arg(long, value_name = "DIR", env = "OUTPOST_CA")]
        ca: Option<PathBuf>,
    },
    /// Write an image to a USB stick: only a removable or USB disk that nothing uses, only the
    /// block map's blocks (NAME.raw.bmap beside the image), every block read back and checked
    Flash {
        /// NAME.raw (with NAME.raw.bmap beside it) or NAME.iso
        image: PathBuf,
        /// The whole stick, e.g. /dev/sdb (see `lsblk`)
        device: PathBuf,
        /// The block map to use [default: IMAGE.bmap beside the image, when there is one]
        #[arg(long, value_name = "FILE", conflicts_with = "no_bmap")]
        bmap: Option<PathBuf>,
        /// Write every byte of the image, even with a block map beside it
        #[arg(long)]
        no_bmap: bool,
        /// Also write a disk that is not removable or larger than --max-size (never one in use)
        #[arg(long)]
        force: bool,
        /// Refuse larger disks without --force, e.g. 256G
        #[arg(long, value_name = "SIZE", default_value = "128G")]
        max_size: String,
    },
    /// The appliance's first-boot agent (runs inside the image)
    #[command(hide = true)]
    Seed {
        #[command(subcommand)]
        command: SeedCommand,
    },
    /// The appliance's data partition (runs inside the image)
    #[command(hide = true)]
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// The appliance's read-only root (runs inside the image)
    #[command(hide = true)]
    Root {
        #[command(subcommand)]
        command: RootCommand,
    },
    /// The appliance's firmware power settings (runs inside the image)
    #[command(hide = true)]
    Power {
        #[command(subcommand)]
        command: PowerCommand,
    },
    /// The appliance's container stacks (runs inside the image)
    #[command(hide = true)]
    Stack {
        #[command(subcommand)]
        command: StackCommand,
    },
    /// The appliance's firewall: only published and declared ports open (runs inside the image)
    #[command(hide = true)]
    Firewall,
    /// The appliance's updates (runs inside the image)
    #[command(hide = true)]
    Update {
        #[command(subcommand)]
        command: UpdateCommand,
    },
    /// Back up the appliance's application state (runs inside the appliance)
    #[command(hide = true)]
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Restore the newest backup on a USB stick labelled OUTPOSTBACKUP (or the site's backup
    /// server) onto this appliance:
    /// its stacks run with that data, under this box's own keys (runs inside the appliance)
    #[command(hide = true)]
    Restore {
        /// A file holding the backup key shown at the first boot of the box that made it
        #[arg(long)]
        key_file: PathBuf,
        /// Which box's backup, when the stick holds several (on the server: this box's name)
        #[arg(long)]
        host: Option<String>,
        /// From the backup server in the site settings, not a USB stick
        #[arg(long)]
        server: bool,
    },
    /// The stand-in HTTP servers of `outpost test` (the instance metadata service, the status
    /// receiver): one request on standard input, its answer on standard output; QEMU starts it
    /// for each connection
    #[command(hide = true)]
    TestHttpServer { dir: PathBuf },
    /// The appliance's state as JSON or Prometheus metrics (runs inside the appliance)
    #[command(hide = true)]
    Status {
        #[command(subcommand)]
        command: StatusCommand,
    },
    /// The USB installer (runs as the first process of the installer ISO's initrd)
    #[command(hide = true)]
    Installer {
        #[command(subcommand)]
        command: InstallerCommand,
    },
    /// Inspect or prune the layer cache
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// List missing host tools and the Debian packages that provide them
    Doctor {
        /// Install every missing one (as root, with apt-get)
        #[arg(long)]
        install: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List cached layers
    Ls,
    /// Remove cached layers no given image uses, leftovers of interrupted builds and the root
    /// tree the last build kept for the next
    Gc {
        /// Image definitions whose layers to keep [default: images/*.toml]
        images: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SeedCommand {
    /// Apply the seed partition's site.toml to this system
    Apply {
        /// Read the seed from this device or file instead of the `seed` partition
        #[arg(long)]
        device: Option<PathBuf>,
    },
    /// Before the data partition is open: the seed's host name, network and time settings
    /// (what lives in /etc), so the network comes up beside the unlock
    Network,
    /// On a cloud instance given no site: the settings of the instance metadata service, once
    /// the network is up
    Cloud,
    /// Check the site's static network settings; fall back to DHCP when they give no connectivity
    CheckNetwork {
        /// Seconds to wait for the addresses to come up
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Encrypt the data partition on first boot, unlock it at every boot (before /var is mounted)
    Open,
    /// Remove the recovery key file once an administrator has fetched it
    ForgetRecoveryKey,
}

#[derive(Debug, Subcommand)]
pub enum RootCommand {
    /// Read every block of the verified root once; fail and say so on the console when one
    /// does not match its dm-verity hash
    Verify {
        #[arg(long, default_value = "/dev/mapper/outpost-root")]
        device: PathBuf,
        /// Only when this root was not read in full on this box within the week (a new
        /// release, a first boot): what the boot and the daily timer run
        #[arg(long)]
        when_due: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PowerCommand {
    /// Set the firmware to power on after AC loss, by the first profile that fits this machine
    AcLoss {
        /// The sysfs tree to read and write
        #[arg(long, default_value = "/sys")]
        sysfs: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// Start one service of a stack: its secrets made if this is the first start, its
    /// environment interpolated, then podman run (a unit's ExecStart)
    Run { stack: String, service: String },
    /// Renew the box's TLS certificate if it expires within 30 days, restarting the services
    /// that serve it (a daily timer)
    RenewTls,
    /// Give a stack's container its default route through the box, and let the box forward to
    /// it and reach its published ports from 127.0.0.1 (podman's OCI hook, at createRuntime:
    /// the container's state on standard input)
    NetworkHook,
    /// Wait until a container's health check passes (a unit's ExecStartPost), then start the
    /// timer of its periodic checks
    WaitHealthy {
        container: String,
        /// Seconds to wait before giving up
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// The timer of its periodic checks, started once it is healthy
        #[arg(long)]
        timer: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up to a USB stick (started by udev when one labelled OUTPOSTBACKUP is plugged in)
    Stick {
        /// The stick's block device
        device: PathBuf,
    },
    /// Back up to the site's backup server (started daily by the site's timer)
    Server,
    /// Check this box's backup repository on a USB stick, or on the site's server (restic check)
    Check {
        /// The stick's block device; without it, the site's server
        device: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum StatusCommand {
    /// Print the status: release, uptime, units, stacks, file systems, data partition, TPM,
    /// Secure Boot, power cuts, last backup
    Show {
        /// As Prometheus metrics instead of JSON
        #[arg(long)]
        prometheus: bool,
    },
    /// Write status.json and metrics into a directory (the status page's) and note that this
    /// boot is alive
    Write { dir: PathBuf },
    /// The status page's service: write the page (TEMPLATE filled in), status.json and the
    /// metrics into DIR, serve DIR over HTTP on PORT (busybox httpd) and write them again
    /// every 30 s
    Serve {
        dir: PathBuf,
        #[arg(long)]
        port: u16,
        /// The page, its values as `@host@`, `@os@`, `@addresses@`, `@state@`, `@tls@`
        #[arg(long)]
        page: PathBuf,
    },
    /// Send the status to the URL of the site settings (`[status] push`)
    Push,
    /// At boot: count a power cut if the previous boot ended without a shutdown
    Boot,
    /// At a clean shutdown: note that this boot ended cleanly
    Shutdown,
}

#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Check a bundle and write it into the inactive root slot; the next boot tries it
    Apply {
        /// The bundle (NAME-RELEASE.update), or an http(s) URL to fetch it from (resumed
        /// where a dropped connection left it)
        bundle: String,
        /// Reboot into it once staged
        #[arg(long)]
        reboot: bool,
    },
    /// Apply the newest applicable bundle on a USB stick labelled OUTPOSTUPDATE (started by
    /// udev when one is plugged in)
    Stick {
        /// The stick's block device
        device: PathBuf,
    },
    /// At every boot: keep a release on probation once the appliance is healthy, give it up
    /// (reboot) when it is not, and say when the previous release took over
    BootCheck,
    /// Print the update status (/run/outpost/update.json)
    Status,
}

#[derive(Debug, Subcommand)]
pub enum InstallerCommand {
    /// Find the installer medium, choose the disk, write and verify the appliance, restart
    Run,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Make a new CA directory (key, certificate in PEM and DER). Keep it outside the
    /// repository; install its certificate on the deployment's phones
    Init {
        /// The directory to create, e.g. ~/outpost-ca
        dir: PathBuf,
        /// The name in the certificate, e.g. the ministry or project
        #[arg(long, default_value = "outpost")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new key directory: the Secure Boot db key and certificate, the PCR policy key pair.
    /// Keep it outside the repository; back it up
    Init {
        /// The directory to create, e.g. ~/outpost-keys
        dir: PathBuf,
        /// The name in the certificate, e.g. the ministry or project
        #[arg(long, default_value = "outpost")]
        name: String,
    },
}
