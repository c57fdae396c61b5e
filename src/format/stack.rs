//! What the build writes for a stack's services and the agent reads at each start: the podman
//! arguments fixed at build time, and the environment the device interpolates with its own
//! secrets and the site's variables.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Where a stack's compose files, the files it mounts and its run specifications are kept.
pub const STACKS: &str = "usr/lib/outpost/stacks";
/// Where podman (netavark) keeps network definitions; the stacks' networks come with the image.
pub const NETWORKS: &str = "etc/containers/networks";
/// Where podman looks for OCI hooks: outpost's (`outpost-stack.json`) runs `outpost stack
/// network-hook` for each container that carries the gateway annotation below.
pub const HOOKS_DIR: &str = "usr/share/containers/oci/hooks.d";
/// A stack container's annotations the hook reads: its network's gateway and bridge.
pub const GATEWAY_ANNOTATION: &str = "outpost.gateway";
pub const BRIDGE_ANNOTATION: &str = "outpost.bridge";
/// Per-device secrets, on the encrypted data partition: `SECRETS/LAYER/NAME`, mode 0600.
pub const SECRETS: &str = "/var/lib/outpost/secrets";
/// Host data directories of stacks (`./srv:/data` in a compose file): `STACK_DATA/LAYER/DIR`.
pub const STACK_DATA: &str = "/var/lib/outpost/stacks";
/// Where podman keeps named volumes, each in `VOLUMES/NAME/_data` (on the data partition).
pub const VOLUMES: &str = "/var/lib/containers/storage/volumes";
/// The appliance's TLS certificate and key (`cert.pem`, `key.pem`), on the data partition.
pub const TLS_DIR: &str = "/var/lib/outpost/tls";
/// What the box keeps of the seed's `tls/` folder, outside TLS_DIR (which stacks mount):
/// a deployment-CA issuer (`issuer.key`, `issuer.crt`, `ca.crt`, `names`) or the site's own
/// certificate (`site.crt`, `site.key`).
pub const TLS_SOURCE_DIR: &str = "/var/lib/outpost/tls-source";
/// Files of the seed's `tls/` folder (written by `output::ca`, taken by `agent::tls`).
pub const SEED_ISSUER_KEY: &str = "issuer.key";
pub const SEED_ISSUER_CERT: &str = "issuer.crt";
pub const SEED_CA: &str = "ca.crt";
pub const SEED_NAMES: &str = "names";
pub const SEED_SITE_CERT: &str = "site.crt";
pub const SEED_SITE_KEY: &str = "site.key";
/// The site's backup key (`[backup] key-file`), taken onto the data partition by
/// `agent::backup` and zeroed in the seed, as the TLS keys are.
pub const SEED_BACKUP_KEY: &str = "backup.key";
/// The site's application variables as JSON, written at boot from the seed.
pub const SITE_APP_JSON: &str = "/etc/outpost/site-app.json";

/// The systemd unit of a stack's service.
pub fn service_unit(stack: &str, service: &str) -> String {
    format!("outpost-{stack}-{service}.service")
}

/// The systemd target that starts and stops a whole stack.
pub fn target_unit(stack: &str) -> String {
    format!("outpost-stack-{stack}.target")
}

/// The podman container of a stack's service.
pub fn container_name(stack: &str, service: &str) -> String {
    format!("{stack}-{service}")
}

/// The podman volume of a stack's named volume.
pub fn volume_name(stack: &str, volume: &str) -> String {
    format!("{stack}-{volume}")
}

/// `STACKS/LAYER/stack.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackSpec {
    /// The layer's env file: the last place a variable is looked up.
    pub defaults: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, Secret>,
    /// How the stack's databases are backed up consistently (the layer's `[[backup.dump]]`).
    #[serde(default)]
    pub backup: Vec<Dump>,
}

/// A service whose state is dumped by a command for a backup, and loaded back by another on a
/// restore, instead of its volume being copied mid-write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dump {
    pub service: String,
    /// The volume the dump stands for: left out of the backup, and on a restore the new box's
    /// own (made by its first start, with its own secrets) is kept.
    pub volume: Option<String>,
    /// Run in the service's container; its standard output is the dump.
    pub dump: Vec<String>,
    /// Run in the service's container with the dump on its standard input.
    pub restore: Vec<String>,
}

/// `STACKS/LAYER/SERVICE.run.json`: `podman run ARGS --env=K=V... TAIL`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    pub args: Vec<String>,
    /// Values as the compose files wrote them, interpolated on the device.
    pub environment: BTreeMap<String, String>,
    /// The image and the command after it.
    pub tail: Vec<String>,
    /// Data directories (relative to `STACK_DATA/LAYER`) made before the start.
    pub data_dirs: Vec<String>,
    /// The podman volumes the service mounts, whose directories are made before the start.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// The stack's subnet (its network is defined in the image, `container::units`).
    pub subnet: String,
    /// The container's fixed address on it (`--ip=` in `args`).
    pub address: Ipv4Addr,
    /// The ports it publishes (`--publish=` in `args`): the box's firewall forwards them, the
    /// network being internal to netavark.
    #[serde(default)]
    pub publish: Vec<Published>,
    /// The service mounts the appliance's certificate: it is made (or renewed) before.
    #[serde(default)]
    pub tls: bool,
}

/// A published port: the box's, and the container's it is forwarded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub host: u16,
    pub container: u16,
}

pub fn stack_spec_path(layer: &str) -> String {
    format!("/{STACKS}/{layer}/stack.json")
}

pub fn run_spec_path(layer: &str, service: &str) -> String {
    format!("/{STACKS}/{layer}/{service}.run.json")
}

/// How a per-device secret is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretKind {
    /// Letters and digits (safe in URLs, shells and configuration files).
    Alnum,
    Hex,
    /// A random (version 4) UUID.
    Uuid,
}

/// A secret a layer declares: made on the device at first boot, on the data partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub kind: SecretKind,
    /// Characters (alnum, hex); a UUID has its own.
    pub length: usize,
}

