//! What every end-to-end test shares: the run's directory, the `outpost` binary, the images
//! built once per run into one cache, and the two locks that keep a 2-core machine honest (one
//! build at a time, at most two guests at once).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const EPOCH: &str = "1700000000";

pub fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// This run's directory: `target/tmp/e2e-PID`. Directories of earlier runs whose process is
/// gone are removed first (a run that passes leaves its logs for the next one to clean).
pub fn run_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        remove_stale(&base, "e2e-");
        let dir = base.join(format!("e2e-{}", std::process::id()));
        fs_err::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        dir
    })
}

/// Removes the directories `PREFIX<pid>` in `base` whose run (process) is gone.
fn remove_stale(base: &Path, prefix: &str) {
    let Ok(entries) = fs_err::read_dir(base) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(prefix)
            && !Path::new("/proc").join(pid).exists()
        {
            fs_err::remove_dir_all(e.path()).unwrap_or_else(|err| panic!("removing {}: {err}", e.path().display()));
        }
    }
}

/// The run's signing keys, made by `outpost keys init` outside the work tree (where keys may
/// not be made), with the Secure Boot db key replaced by Debian's OVMF test key ("snakeoil",
/// package ovmf), which the firmware of `secure-boot = true` scenarios has enrolled. Every
/// build of the run is signed with them.
pub fn keys_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = init_outside_the_tree("keys");
        // The test key is stored encrypted, with the passphrase `snakeoil` (ovmf's README.Debian).
        let key = Command::new("openssl")
            .args(["pkey", "-in", "/usr/share/ovmf/PkKek-1-snakeoil.key", "-passin", "pass:snakeoil", "-out"])
            .arg(dir.join("secure-boot-db.key"))
            .status()
            .expect("running openssl");
        assert!(key.success(), "decrypting the ovmf package's test key failed");
        use std::os::unix::fs::PermissionsExt;
        fs_err::set_permissions(dir.join("secure-boot-db.key"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        fs_err::copy("/usr/share/ovmf/PkKek-1-snakeoil.pem", dir.join("secure-boot-db.crt")).expect("the ovmf package's test certificate");
        let der = Command::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(dir.join("secure-boot-db.crt")).arg("-out").arg(dir.join("secure-boot-db.cer")).status().expect("running openssl");
        assert!(der.success(), "openssl x509 -outform DER failed");
        dir
    })
}

/// The run's deployment CA (`outpost ca init`), which `deployment-ca = true` scenarios are
/// personalized with and whose certificate their HTTPS checks trust.
pub fn ca_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| init_outside_the_tree("ca"))
}

/// `outpost VERB init DIR` for this run, in the system's temporary directory: outside the work
/// tree, where private keys may not be made.
fn init_outside_the_tree(verb: &str) -> PathBuf {
    let base = std::env::temp_dir();
    let prefix = format!("outpost-e2e-{verb}-");
    remove_stale(&base, &prefix);
    let dir = base.join(format!("{prefix}{}", std::process::id()));
    let _ = fs_err::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_outpost")).args([verb, "init"]).arg(&dir).args(["--name", "outpost e2e"]).output().unwrap_or_else(|e| panic!("running outpost {verb} init: {e}"));
    assert!(out.status.success(), "outpost {verb} init: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// What one appliance made for itself (its secret's hash, its certificate's fingerprint),
/// posted by the test that booted it for another appliance's test to compare with: `None`
/// when that test failed first, absent until it ends.
static IDENTITIES: Mutex<Vec<(String, Option<String>)>> = Mutex::new(Vec::new());
static POSTED: std::sync::Condvar = std::sync::Condvar::new();
/// The appliances whose tests are in this run (set by main from the filters).
static EXPECTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub fn expect_identity(name: &str) {
    EXPECTED.lock().unwrap_or_else(|e| e.into_inner()).push(name.to_string());
}

pub fn post_identity(name: &str, identity: Option<String>) {
    IDENTITIES.lock().unwrap_or_else(|e| e.into_inner()).push((name.to_string(), identity));
    POSTED.notify_all();
}

/// The identity `name`'s test posted, waiting for it; `None` when that test is not in this run.
pub fn identity_of(name: &str) -> Option<Option<String>> {
    if !EXPECTED.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|n| n == name) {
        return None;
    }
    let started = Instant::now();
    let mut ids = IDENTITIES.lock().unwrap_or_else(|e| e.into_inner());
    let found = loop {
        if let Some((_, id)) = ids.iter().find(|(n, _)| n == name) {
            break id.clone();
        }
        ids = POSTED.wait_timeout(ids, Duration::from_secs(60)).unwrap_or_else(|e| e.into_inner()).0;
    };
    WAITED.with(|w| w.set(w.get() + started.elapsed().as_secs_f64()));
    Some(found)
}

/// The output of the scenario command that printed `identity ...`, from a boot's report.
pub fn identity_in(report: &serde_json::Value) -> String {
    passed(report).iter().find_map(|p| p.split_once("-> identity ").map(|(_, id)| id.trim().to_string())).unwrap_or_else(|| panic!("no command printed `identity ...`: {report:#}"))
}

/// The cache every shared build goes through.
pub fn shared_cache() -> PathBuf {
    run_dir().join("cache")
}

/// A second cache, for the reproducibility tests' independent builds.
pub fn second_cache() -> PathBuf {
    run_dir().join("cache-second")
}

thread_local! {
    /// Seconds this thread spent waiting for a lock or a shared build: what a test's time holds
    /// that is not its own work.
    static WAITED: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

pub fn waited() -> f64 {
    WAITED.with(|w| w.get())
}

pub fn reset_waited() {
    WAITED.with(|w| w.set(0.0));
}

fn lock(m: &'static Mutex<()>) -> MutexGuard<'static, ()> {
    let started = Instant::now();
    // A test that panicked while holding the lock failed on its own; the others go on.
    let g = m.lock().unwrap_or_else(|e| e.into_inner());
    WAITED.with(|w| w.set(w.get() + started.elapsed().as_secs_f64()));
    g
}

/// One build at a time: two cores, and builds into one cache are serialized anyway.
pub fn build_slot() -> MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    lock(&L)
}

/// Guests at once. A TCG guest leaves part of this 2-core machine idle while it waits on its
/// disk, its timers and the checks' sleeps (vmstat: 29% idle over a debian-base scenario); with
/// the three test threads a build runs beside two guests.
const GUESTS: usize = 2;

/// CPUs of each guest: the host's cores shared among the guests at once, at least one. Two
/// guests of two CPUs each on two cores spin on each other's locks (a guest CPU waits for one
/// the host has descheduled; TCG has no paravirtual spinlocks): the same two debian-base boots
/// at once took 395 s with two CPUs each (the first boots 169-183 s) and 311 s with one
/// (123-133 s), where one after the other with two CPUs took 400 s.
pub fn guest_cpus() -> String {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores / GUESTS).max(1).to_string()
}

/// A place among the `GUESTS` guests that may run at once, held until dropped.
pub struct VmSlot;

static RUNNING: Mutex<usize> = Mutex::new(0);
static FREED: std::sync::Condvar = std::sync::Condvar::new();

pub fn vm_slot() -> VmSlot {
    let started = Instant::now();
    let mut n = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    while *n >= GUESTS {
        n = FREED.wait(n).unwrap_or_else(|e| e.into_inner());
    }
    *n += 1;
    WAITED.with(|w| w.set(w.get() + started.elapsed().as_secs_f64()));
    VmSlot
}

impl Drop for VmSlot {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        FREED.notify_one();
    }
}

/// Runs outpost with `args`; returns stdout, failing the test with stderr when it fails.
pub fn outpost<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    outpost_env(args, &[])
}

/// Runs outpost with these environment variables too, expecting it to succeed.
pub fn outpost_env<S: AsRef<std::ffi::OsStr>>(args: &[S], envs: &[(&str, &std::ffi::OsStr)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost")).args(args).env("SOURCE_DATE_EPOCH", EPOCH).env("OUTPOST_KEYS", keys_dir()).envs(envs.iter().copied()).output().expect("running outpost");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let argv: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    assert!(out.status.success(), "outpost {argv:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Runs outpost expecting it to fail; returns what it printed.
pub fn outpost_fails<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost")).args(args).env("SOURCE_DATE_EPOCH", EPOCH).env("OUTPOST_KEYS", keys_dir()).output().expect("running outpost");
    let argv: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    assert!(!out.status.success(), "outpost {argv:?} succeeded but must fail");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `outpost build --json` into `out` through `cache` (holding the build slot).
pub fn build(cache: &Path, image: &Path, out: &Path) -> serde_json::Value {
    build_env(cache, image, out, &[])
}

/// `build` with these environment variables too.
pub fn build_env(cache: &Path, image: &Path, out: &Path, envs: &[(&str, &std::ffi::OsStr)]) -> serde_json::Value {
    let _slot = build_slot();
    let started = Instant::now();
    let s = outpost_env(&["build".as_ref(), image.as_os_str(), "--out".as_ref(), out.as_os_str(), "--cache".as_ref(), cache.as_os_str(), "--json".as_ref()], envs);
    eprintln!("e2e: built {} into {} in {:.0} s", image.display(), out.display(), started.elapsed().as_secs_f64());
    serde_json::from_str(&s).expect("build --json prints JSON")
}

#[derive(Clone, Debug)]
pub struct Built {
    pub out: PathBuf,
    pub name: String,
    pub report: serde_json::Value,
}

impl Built {
    pub fn file(&self, ext: &str) -> PathBuf {
        self.out.join(format!("{}.{ext}", self.name))
    }

    pub fn manifest(&self) -> serde_json::Value {
        read_json(&self.out.join("manifest.json"))
    }

    /// The sha256 SHA256SUMS gives for one output.
    pub fn listed_sha(&self, ext: &str) -> String {
        let sums = fs_err::read_to_string(self.out.join("SHA256SUMS")).expect("reading SHA256SUMS");
        let file = format!("{}.{ext}", self.name);
        sums.lines()
            .find_map(|l| l.strip_suffix(file.as_str()).and_then(|h| h.strip_suffix("  ")))
            .unwrap_or_else(|| panic!("SHA256SUMS does not list {file}:\n{sums}"))
            .to_string()
    }
}

/// Whether an image file's text sets `distro = "DISTRO"`.
pub fn is_distro(image_text: &str, distro: &str) -> bool {
    image_text.lines().any(|l| l.replace(' ', "") == format!("distro=\"{distro}\""))
}

/// `images/NAME.toml` built once per run into the shared cache; every test that needs it waits
/// for the same build, and a failed build fails each of them with its message.
pub fn shared(name: &str) -> Built {
    // The other Debian images build on the Debian test image's layers: it is built first, so
    // that the scenarios that need only it boot while the others build.
    let debian = is_distro(&fs_err::read_to_string(project().join(format!("images/{name}.toml"))).unwrap_or_default(), "debian");
    if name != "debian-base" && debian {
        shared("debian-base");
    }
    type Cell = Arc<OnceLock<Result<Built, String>>>;
    static BUILDS: OnceLock<Mutex<HashMap<String, Cell>>> = OnceLock::new();
    let cell: Cell = {
        let mut map = BUILDS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string()).or_default().clone()
    };
    let started = Instant::now();
    let r = cell.get_or_init(|| {
        std::panic::catch_unwind(|| {
            let out = run_dir().join(format!("out-{name}"));
            let report = build(&shared_cache(), &project().join(format!("images/{name}.toml")), &out);
            Built { out, name: name.to_string(), report }
        })
        .map_err(|e| panic_text(&e))
    });
    WAITED.with(|w| w.set(w.get() + started.elapsed().as_secs_f64()));
    r.clone().unwrap_or_else(|e| panic!("the shared build of images/{name}.toml failed: {e}"))
}

pub fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "(panic)".into())
}

/// `outpost test --json` of a scenario on a built disk, holding the guest slot. Returns the
/// report; fails the test if any check failed, with the console's tail.
pub fn boot(scenario: &Path, image: &Path, work: &Path) -> serde_json::Value {
    let _slot = vm_slot();
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("test")
        .arg(scenario)
        .arg("--image")
        .arg(image)
        .arg("--work")
        .arg(work)
        .arg("--cache")
        .arg(shared_cache())
        .arg("--json")
        .arg("--cpus")
        .arg(guest_cpus())
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env("OUTPOST_KEYS", keys_dir())
        .env("OUTPOST_CA", ca_dir())
        .output()
        .expect("running outpost test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("outpost test {} printed no report:\n{stdout}\n{stderr}", scenario.display()));
    let failed = r["failed"].as_array().expect("a report has `failed`");
    // Where each boot's minutes went, for the run's log: the budget's account and the boot's
    // critical chain and slowest units (#19).
    let name = scenario.file_stem().unwrap_or_default().to_string_lossy();
    for t in r["timings"].as_array().into_iter().flatten().filter_map(|t| t.as_str()) {
        eprintln!("e2e: {name}: {t}");
    }
    assert!(failed.is_empty() && out.status.success(), "{}: {r:#}\n{stderr}", scenario.display());
    r
}

pub fn passed(r: &serde_json::Value) -> Vec<String> {
    r["passed"].as_array().expect("a report has `passed`").iter().map(|p| p.as_str().unwrap_or_default().to_string()).collect()
}

pub fn sha(p: &Path) -> String {
    use std::io::Read;
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("opening {}: {e}", p.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs_err::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))).unwrap_or_else(|e| panic!("parsing {}: {e}", p.display()))
}

pub fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array().expect("a list").iter().map(|s| s.as_str().unwrap_or_default().to_string()).collect()
}

/// A host command's stdout and stderr together (for tools whose verdict is in their text).
pub fn run(cmd: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Installs a Debian package for a test-only tool when it is missing.
pub fn ensure_tool(program: &str, package: &str) {
    if Command::new(program).arg("--version").output().is_err() {
        let out = Command::new("apt-get").args(["install", "-y", "-q", "-o", "DPkg::Lock::Timeout=600", package]).output().expect("running apt-get");
        assert!(out.status.success(), "installing {package}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A copy of the project's definitions a test may edit.
pub fn project_copy(name: &str) -> PathBuf {
    let proj = run_dir().join(format!("project-{name}"));
    fs_err::create_dir_all(&proj).expect("creating the project copy");
    for dir in ["layers", "images", "qemu-tests", "sites", "firmware"] {
        run("cp", &["-a".as_ref(), project().join(dir).as_os_str(), proj.as_os_str()]);
    }
    proj
}

/// Waits up to `limit` for `f` to give a value.
pub fn wait_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}
