//! The root filesystem: bootstrap the base with mmdebstrap, apply one layer at a time (packages
//! in a chroot, files, scripts, units), store each layer's changes in the cache, and assemble the
//! final tree from the cached layers.

mod tarball;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cache::debs::{self, DebPool};
use crate::cache::{Cache, EntryMeta};
use crate::plan::{Base, BuildPlan, PlannedLayer, render};
use crate::tool::Tool;

pub use tarball::{extract, lay_down, snapshot, write_delta, write_diff};

/// dpkg paths left out of every image: documentation and translations nobody reads on an
/// appliance console (copyright files stay, as licences require).
pub const DPKG_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
];

/// dpkg's settings while a build installs packages, in this file of the tree and never in the
/// image: no fsync of every file it unpacks (`force-unsafe-io`, 3.5-4 s of the Debian test
/// image's 25-30 s bootstrap). A build's tree is scratch: were the host to crash, the tree goes
/// and the cache holds only layers written whole and synced.
const DPKG_BUILD_CFG: &str = "etc/dpkg/dpkg.cfg.d/outpost-build";

/// Runs a command chrooted into `root`, in a private mount namespace with /proc, /sys and /dev,
/// so nothing stays mounted when it ends, whatever happens.
fn chroot(root: &Path, why: &str) -> Tool {
    const SETUP: &str = r#"set -e
root="$1"; shift
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/tmp"
mount -t tmpfs tmpfs "$root/run"
# With systemd-resolved installed, resolv.conf points into /run: give apt the host's resolver.
if [ -L "$root/etc/resolv.conf" ]; then
    t=$(readlink "$root/etc/resolv.conf")
    case "$t" in /*) ;; *) t="/etc/$t" ;; esac
    case "$t" in /run/*|/etc/../run/*) mkdir -p "$root$(dirname "$t")" && cat /etc/resolv.conf > "$root$t" ;; esac
fi
exec chroot "$root" "$@""#;
    Tool::new("unshare")
        .describe(why.to_string())
        .args(["--mount", "--propagation", "private", "--fork", "--", "sh", "-c", SETUP, "outpost-chroot"])
        .arg(root)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
}

/// mmdebstrap of `variant` plus `packages` from the base's archive into the directory `root`,
/// without documentation or recommends.
///
/// The packages come from the cache's pool when it holds them (hard-linked into the chroot's
/// apt archive before the download, checked by apt against the signed index); those it
/// downloads are hard-linked to `staging` at the end, for the caller to `DebPool::take`.
#[allow(clippy::too_many_arguments)]
pub fn mmdebstrap(base: &Base, variant: &str, packages: &[String], root: &Path, options: &[&str], pool: &DebPool, staging: &Path, why: String) -> Tool {
    let q = |p: &Path| crate::tool::shell_quote(&p.to_string_lossy());
    let link_debs = |from: &str, to: &str| format!(r#"for f in {from}/*.deb; do [ -e "$f" ] || continue; ln "$f" {to}/ 2>/dev/null || cp "$f" {to}/; done"#);
    let lend = format!(
        r#"mkdir -p "$1/var/cache/apt/archives" "$1/etc/dpkg/dpkg.cfg.d"; printf 'force-unsafe-io\n' > "$1/{DPKG_BUILD_CFG}"; {}"#,
        link_debs(&q(pool.names_dir()), r#""$1/var/cache/apt/archives""#)
    );
    let keep = format!(r#"rm -f "$1/{DPKG_BUILD_CFG}"; mkdir -p {}; {}"#, q(staging), link_debs(r#""$1/var/cache/apt/archives""#, &q(staging)));
    let mut t = Tool::new("mmdebstrap")
        .describe(why)
        .args(["--mode=root", "--format=directory", "--quiet"])
        .args(options)
        // The essential packages' files stay until the customize hook has kept them.
        .arg("--skip=essential/unlink")
        .arg(format!("--setup-hook={lend}"))
        .arg(format!("--customize-hook={keep}"))
        .arg(format!("--variant={variant}"))
        .arg(format!("--architectures={}", base.architecture))
        .arg(format!("--components={}", base.components))
        .arg("--aptopt=Acquire::Retries \"3\"")
        .arg("--aptopt=APT::Install-Recommends \"false\"");
    for d in DPKG_EXCLUDES {
        t = t.arg(format!("--dpkgopt={d}"));
    }
    if !packages.is_empty() {
        t = t.arg(format!("--include={}", packages.join(",")));
    }
    if let Some(k) = &base.keyring {
        t = t.arg(format!("--keyring={}", k.file.display()));
    }
    t = t.arg(&base.suite).arg(root);
    if let Some(m) = &base.mirror {
        t = t.arg(m);
    }
    t
}

/// The bootstrap's packages do not build the initramfs: the kernel's package creates one and
/// the triggers of the packages with initramfs hooks (busybox, dmsetup, kmod, udev...) update
/// it, each time without the bottom layer's hooks and settings, which only come with its files.
/// `update-initramfs` is diverted to a no-op for the bootstrap (after the essential packages,
/// before the rest) and `build_initramfs` makes the one that boots once the layer is in place:
/// two initramfs builds fewer per cold build (~9 s of the Debian test image's).
const HOLD_INITRAMFS: &str = r#"chroot "$1" dpkg-divert --quiet --local --rename --divert /usr/sbin/update-initramfs.outpost-held --add /usr/sbin/update-initramfs && printf '#!/bin/sh\n# outpost: held during the bootstrap\nexit 0\n' > "$1/usr/sbin/update-initramfs" && chmod 755 "$1/usr/sbin/update-initramfs""#;

/// Puts the real `update-initramfs` back (the no-op only if it is still there: a package that
/// shipped the program under another alias of the path has replaced it), leaving dpkg's
/// database as without the hold (dpkg-divert's backup of it goes).
const RELEASE_INITRAMFS: &str = r#"if grep -qs '^# outpost: held' "$1/usr/sbin/update-initramfs"; then rm "$1/usr/sbin/update-initramfs"; fi && chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs && rm -f "$1/var/lib/dpkg/diversions-old""#;

/// Bootstraps the base with mmdebstrap: minbase plus the bottom layer's packages.
pub fn bootstrap(base: &Base, layer: &PlannedLayer, root: &Path, pool: &DebPool) -> Result<()> {
    let why = format!("bootstrapping {} {} with the packages of layer `{}`", base.distro, base.suite, layer.name);
    let staging = root.with_extension("debs");
    // The package lists stay: later layers install from them (see `apply`). apt's binary caches
    // of them (pkgcache.bin, srcpkgcache.bin: 37 MB each on Debian 12) are never written, here
    // or by a later layer's apt-get, which reads this chroot's apt.conf.d: apt builds them in
    // memory from the lists when it runs, and on disk each layer that installs packages
    // carried a new copy of them (31 MB compressed of a 34 MB layer) that finalize deleted.
    let hold = format!("--essential-hook={HOLD_INITRAMFS}");
    let release = format!("--customize-hook={RELEASE_INITRAMFS}");
    let options = ["--skip=cleanup/apt/lists", r#"--aptopt=Dir::Cache::pkgcache """#, r#"--aptopt=Dir::Cache::srcpkgcache """#, &hold, &release];
    let r = mmdebstrap(base, "minbase", &layer.packages, root, &options, pool, &staging, why).run();
    pool.take(&staging)?;
    if staging.exists() {
        fs_err::remove_dir_all(&staging)?;
    }
    r?;
    // Later layers run `apt-get update` in the chroot and need the archive key there too.
    if let Some(k) = &base.keyring {
        let name = k.file.file_name().context("keyring file name")?;
        let dir = root.join("etc/apt/trusted.gpg.d");
        fs_err::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dest = dir.join(name);
        fs_err::copy(&k.file, &dest).with_context(|| format!("copying {} to {}", k.file.display(), dest.display()))?;
    }
    Ok(())
}

/// What a layer adds beyond packages, files and scripts (its containers and stack units), run
/// before its units are enabled; the pipeline hands it over so that this room needs no other.
pub type Extra<'a> = &'a dyn Fn(&PlannedLayer, &Path) -> Result<()>;

/// Applies one layer on top of the tree: packages (unless `bootstrapped`), files, scripts,
/// `extra` (containers) and units.
pub fn apply(plan: &BuildPlan, layer: &PlannedLayer, root: &Path, bootstrapped: bool, pool: &DebPool, extra: Extra<'_>) -> Result<()> {
    let l = &layer.layer;
    // Services must not start inside the build chroot (Debian policy-rc.d protocol).
    let policy = root.join("usr/sbin/policy-rc.d");
    if !bootstrapped && !layer.packages.is_empty() {
        fs_err::write(&policy, "#!/bin/sh\nexit 101\n").with_context(|| format!("writing {}", policy.display()))?;
        fs_err::set_permissions(&policy, fs::Permissions::from_mode(0o755))?;
        let excludes = DPKG_EXCLUDES.iter().map(|d| d.replace('=', " ")).collect::<Vec<_>>().join("\n");
        fs_err::write(root.join(DPKG_BUILD_CFG), format!("force-unsafe-io\n{excludes}\n"))?;
        // The package lists fetched by the bottom layer stay in the layers (finalize removes them
        // from the image), so every layer installs from the same archive state without
        // fetching the lists again. When the archive has moved on and a package is gone, fetch
        // them anew.
        let pkgs = layer.packages.iter().map(|p| crate::tool::shell_quote(p)).collect::<Vec<_>>().join(" ");
        let install = format!("apt-get install -y -q --no-install-recommends {pkgs}");
        let script = format!("set -e\n{install} || {{ apt-get update -q && {install}; }}\n");
        let archives = root.join("var/cache/apt/archives");
        pool.lend(&archives)?;
        let result = chroot(root, &format!("installing the packages of layer `{}` ({})", layer.name, layer.packages.join(" ")))
            .args(["sh", "-c", &script])
            .run();
        pool.take(&archives)?;
        debs::clean(&archives)?;
        fs_err::remove_file(&policy).with_context(|| format!("removing {}", policy.display()))?;
        fs_err::remove_file(root.join(DPKG_BUILD_CFG))?;
        result?;
    }
    copy_files(plan, layer, root)?;
    for s in &l.scripts {
        let name = s.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let inside = format!("/run/outpost-{name}");
        let mut t = chroot(root, &format!("running {} of layer `{}`", s.display(), layer.name));
        for (k, v) in &layer.variables {
            t = t.env(format!("OUTPOST_{}", k.to_uppercase()), v);
        }
        // The script is piped through sh's stdin from the host path, as /run is a fresh tmpfs.
        let body = fs_err::read_to_string(s).with_context(|| format!("reading {}", s.display()))?;
        t.args(["sh", "-euc", &body, &inside]).run()?;
    }
    if bootstrapped {
        build_initramfs(root, layer)?;
    }
    extra(layer, root)?;
    if !l.units.is_empty() {
        chroot(root, &format!("enabling the units of layer `{}`", layer.name))
            .args(["systemctl", "enable"])
            .args(&l.units)
            .run()?;
    }
    Ok(())
}

/// Creates the initramfs of every installed kernel, with the bottom layer's hooks and settings
/// (see `HOLD_INITRAMFS`); nothing without initramfs-tools or a kernel.
fn build_initramfs(root: &Path, layer: &PlannedLayer) -> Result<()> {
    if !root.join("usr/sbin/update-initramfs").exists() {
        return Ok(());
    }
    chroot(root, &format!("building the initramfs with the files of layer `{}`", layer.name)).args(["update-initramfs", "-c", "-k", "all"]).run()?;
    Ok(())
}

/// Copies `files/` onto the tree; `*.tera` files are rendered and lose the suffix.
fn copy_files(plan: &BuildPlan, layer: &PlannedLayer, root: &Path) -> Result<()> {
    let src = layer.layer.dir.join("files");
    let ctx = plan.context(layer);
    for rel in &layer.layer.files {
        let from = src.join(rel);
        let meta = fs_err::symlink_metadata(&from).with_context(|| format!("reading {}", from.display()))?;
        let mut to = root.join(rel);
        if meta.is_dir() {
            fs_err::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
            continue;
        }
        if let Ok(m) = fs_err::symlink_metadata(&to)
            && (m.is_dir() || m.file_type().is_symlink())
            && !meta.is_dir()
        {
            // A file replaces whatever was there (a symlink such as resolv.conf, say).
            if m.is_dir() { fs_err::remove_dir_all(&to)? } else { fs_err::remove_file(&to)? }
        }
        if meta.file_type().is_symlink() {
            let target = fs_err::read_link(&from)?;
            std::os::unix::fs::symlink(&target, &to).with_context(|| format!("creating {}", to.display()))?;
            continue;
        }
        let mode = if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
        if from.extension().is_some_and(|e| e == "tera") {
            to.set_extension("");
            let text = fs_err::read_to_string(&from).with_context(|| format!("reading {}", from.display()))?;
            let out = render(&rel.display().to_string(), &text, &ctx).map_err(|e| anyhow::anyhow!("{}: template error: {e}", from.display()))?;
            if let Ok(m) = fs_err::symlink_metadata(&to)
                && m.file_type().is_symlink()
            {
                fs_err::remove_file(&to)?;
            }
            fs_err::write(&to, out).with_context(|| format!("writing {}", to.display()))?;
        } else {
            fs_err::copy(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
        fs_err::set_permissions(&to, fs::Permissions::from_mode(mode))?;
        std::os::unix::fs::lchown(&to, Some(0), Some(0)).with_context(|| format!("setting the owner of {}", to.display()))?;
    }
    Ok(())
}

/// What building the layers did, per layer.
pub struct LayersReport {
    pub built: Vec<String>,
    /// Seconds each built layer took, from its parent's tree to its entry in the cache.
    pub seconds: Vec<(String, f64)>,
    pub reused: Vec<String>,
    pub tree_complete: bool,
}

/// Builds every layer missing from the cache, each on top of its parent; layers already cached
/// are not touched.
///
/// `tree` is a scratch directory; when the top layer was built, it is left holding the whole
/// root filesystem (`tree_complete`), which spares the assembly extracting it all again.
pub fn build_layers(plan: &BuildPlan, cache: &Cache, tree: &Path, extra: Extra<'_>, mut progress: impl FnMut(&str)) -> Result<LayersReport> {
    let mut report = LayersReport { built: Vec::new(), seconds: Vec::new(), reused: Vec::new(), tree_complete: false };
    // Index of the last layer the tree holds, when it holds any.
    let mut tree_at: Option<usize> = None;
    let pool = DebPool::open(cache.root(), &plan.base.archive())?;
    for (i, layer) in plan.layers.iter().enumerate() {
        if cache.has(&layer.key) {
            report.reused.push(layer.name.clone());
            continue;
        }
        progress(&format!("layer {} ({}/{})", layer.name, i + 1, plan.layers.len()));
        let started = std::time::Instant::now();
        if i > 0 && tree_at != Some(i - 1) {
            extract_all(cache, &plan.layers[..i], tree)?;
        }
        let before = if i == 0 {
            if tree.exists() {
                fs_err::remove_dir_all(tree)?;
            }
            bootstrap(&plan.base, layer, tree, &pool)?;
            None
        } else {
            Some(snapshot(tree)?)
        };
        apply(plan, layer, tree, i == 0, &pool, extra)?;
        let meta = EntryMeta {
            layer: layer.name.clone(),
            image: plan.image.clone(),
            parent: (i > 0).then(|| plan.layers[i - 1].key.clone()),
            created: crate::files::unix_now(),
        };
        cache
            .publish(&layer.key, &meta, |f| write_delta(tree, before.as_ref(), f).map(|_| ()))
            .with_context(|| format!("storing layer `{}` in the cache", layer.name))?;
        tree_at = Some(i);
        report.built.push(layer.name.clone());
        report.seconds.push((layer.name.clone(), started.elapsed().as_secs_f64()));
    }
    report.tree_complete = tree_at == Some(plan.layers.len() - 1);
    Ok(report)
}

/// Lays `layers` down on `root`, over the tree the last build kept when `root` holds nothing
/// (see `tarball::lay_down`).
fn extract_all(cache: &Cache, layers: &[PlannedLayer], root: &Path) -> Result<()> {
    if !root.exists() {
        cache.take_kept_tree(root)?;
    }
    let tarballs: Vec<PathBuf> = layers.iter().map(|l| cache.layer_path(&l.key)).collect();
    let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    lay_down(&tarballs, root).with_context(|| format!("laying down the layers {}", names.join(", ")))
}

/// Makes `root` the image's root filesystem: all layers laid down in order (unless
/// `tree_complete` says it holds them already; mkfs.ext4 -d sorts entries, so how the tree was
/// made does not show in the file system), then hostname, an empty machine-id, no package lists
/// or logs, times clamped.
pub fn assemble(plan: &BuildPlan, cache: &Cache, root: &Path, tree_complete: bool, epoch: i64) -> Result<()> {
    if !tree_complete {
        extract_all(cache, &plan.layers, root)?;
    }
    finalize(plan, root)?;
    crate::files::clamp_times(root, epoch)
}


fn finalize(plan: &BuildPlan, root: &Path) -> Result<()> {
    let agent = root.join(crate::format::AGENT_PATH);
    fs_err::create_dir_all(agent.parent().expect("has a parent"))?;
    let me = std::env::current_exe().context("finding the outpost binary to install as the first-boot agent")?;
    fs_err::copy(&me, &agent).with_context(|| format!("installing {} as {}", me.display(), agent.display()))?;
    fs_err::set_permissions(&agent, fs::Permissions::from_mode(0o755))?;
    let policy = serde_json::to_string_pretty(&plan.spec.data)?;
    write(root, crate::format::DATA_POLICY_PATH, &format!("{policy}\n"))?;
    let power = serde_json::to_string_pretty(&plan.spec.power)?;
    write(root, crate::format::firmware::POLICY_PATH, &format!("{power}\n"))?;
    crate::format::firmware::install_profiles(&plan.spec.project.join("firmware"), &root.join(crate::format::firmware::PROFILES_PATH))?;
    let host = &plan.spec.hostname;
    write(root, "etc/hostname", &format!("{host}\n"))?;
    write(root, "etc/hosts", &format!("127.0.0.1\tlocalhost\n127.0.1.1\t{host}\n::1\tlocalhost ip6-localhost ip6-loopback\n"))?;
    // Empty: systemd generates the machine's own ID on first boot (machine-id(5)); the first
    // boot gives the data partition that ID as its UUID and the initramfs reads it back.
    write(root, "etc/machine-id", "")?;
    // The root is read-only: home directories live on the data partition, as on Fedora CoreOS.
    for (dir, moved) in [("home", "var/home"), ("root", "var/roothome")] {
        move_to_var(root, dir, moved)?;
    }
    // SSH host keys are per machine (the site agent creates them at first boot), and random.
    if let Ok(rd) = fs_err::read_dir(root.join("etc/ssh")) {
        for e in rd {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                fs_err::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
    }
    for gone in ["var/lib/dbus/machine-id", "var/cache/ldconfig/aux-cache"] {
        let p = root.join(gone);
        if p.exists() || p.is_symlink() {
            fs_err::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    check_unread_boot_config(root)?;
    scrub(root)
}

/// The appliance layer turns off systemd's fstab and SysV generators (each a process before
/// systemd starts anything, at every boot: layers/appliance/layer.toml). What they would have
/// read is refused here, naming the file, instead of being ignored on the device.
fn check_unread_boot_config(root: &Path) -> Result<()> {
    let off = |g: &str| fs::read_link(root.join("etc/systemd/system-generators").join(g)).is_ok_and(|t| t == Path::new("/dev/null"));
    if off("systemd-fstab-generator") {
        let fstab = root.join("etc/fstab");
        let text = fs::read_to_string(&fstab).unwrap_or_default();
        if let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')) {
            anyhow::bail!(
                "a layer wrote /etc/fstab (`{line}`), which an outpost appliance does not read: systemd's fstab generator is off, since every mount of the appliance is a unit. Mount it with a .mount unit in the layer's files instead (as the appliance layer's var.mount does)"
            );
        }
    }
    if off("systemd-sysv-generator") {
        let names = |dir: &str| -> Result<Vec<String>> {
            Ok(crate::files::files_ending(&root.join(dir), 1, "")?.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect())
        };
        let mut started = Vec::new();
        for n in 2..=5 {
            started.extend(names(&format!("etc/rc{n}.d"))?.into_iter().filter(|l| l.starts_with('S')));
        }
        let units = ["etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system"];
        for script in names("etc/init.d")? {
            let unit = format!("{script}.service");
            if let Some(link) = started.iter().find(|l| l.get(3..) == Some(script.as_str()))
                && !units.iter().any(|d| root.join(d).join(&unit).symlink_metadata().is_ok())
            {
                anyhow::bail!(
                    "/etc/init.d/{script} is started at boot by its SysV init script (linked as {link} in /etc/rc?.d), which an outpost appliance does not run: systemd's SysV generator is off. Give the layer a unit {unit} in its files (or mask it there as /dev/null if the service is not wanted)"
                );
            }
        }
    }
    Ok(())
}

/// Replaces the directory `dir` of the tree by a link to `moved` (relative, so it resolves the
/// same in the tree and on the device), its contents moved there.
fn move_to_var(root: &Path, dir: &str, moved: &str) -> Result<()> {
    let (from, to) = (root.join(dir), root.join(moved));
    if from.is_symlink() {
        return Ok(());
    }
    fs_err::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
    if from.is_dir() {
        fs_err::set_permissions(&to, fs_err::metadata(&from)?.permissions())?;
        for e in fs_err::read_dir(&from)? {
            let e = e?;
            fs_err::rename(e.path(), to.join(e.file_name())).with_context(|| format!("moving {} to {}", e.path().display(), to.display()))?;
        }
        fs_err::remove_dir(&from).with_context(|| format!("removing {}", from.display()))?;
    }
    std::os::unix::fs::symlink(moved, &from).with_context(|| format!("linking {} to {moved}", from.display()))
}

/// Removes what records when and how a tree was built rather than what it is: logs, caches,
/// package lists, backup files of dpkg and the account databases, /dev nodes, /tmp.
pub fn scrub(root: &Path) -> Result<()> {
    // Build-time logs and caches record when and how the build ran, not what the image is;
    // /dev is devtmpfs at run time.
    for dir in ["dev", "var/log", "var/cache/apt", "var/lib/apt/lists", "var/cache/debconf", "tmp", "var/tmp"] {
        let d = root.join(dir);
        if !d.is_dir() {
            continue;
        }
        for e in fs_err::read_dir(&d)? {
            let p = e?.path();
            let keep_dir = p.is_dir() && !p.is_symlink() && dir == "var/log";
            if keep_dir {
                // Keep /var/log/journal and friends as empty directories.
                for inner in fs_err::read_dir(&p)? {
                    let ip = inner?.path();
                    if ip.is_dir() && !ip.is_symlink() { fs_err::remove_dir_all(&ip)? } else { fs_err::remove_file(&ip)? }
                }
            } else if dir == "var/cache/debconf" && !p.to_string_lossy().ends_with("-old") {
                continue;
            } else if p.is_dir() && !p.is_symlink() {
                fs_err::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            } else {
                fs_err::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
    }
    for f in ["var/lib/dpkg/status-old", "var/lib/dpkg/available-old", "var/lib/dpkg/diversions-old", "etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-", "etc/subuid-", "etc/subgid-"] {
        let p = root.join(f);
        if p.exists() {
            fs_err::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

fn write(root: &Path, rel: &str, text: &str) -> Result<()> {
    let p = root.join(rel);
    if p.is_symlink() {
        fs_err::remove_file(&p)?;
    }
    fs_err::write(&p, text).with_context(|| format!("writing {}", p.display()))
}

/// Packages installed in the tree, from dpkg's status file: (name, version), sorted.
pub fn installed_packages(root: &Path) -> Result<Vec<(String, String)>> {
    let p = root.join("var/lib/dpkg/status");
    let text = fs_err::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(parse_dpkg_status(&text))
}

/// The installed packages of a dpkg status file: (name, version), sorted.
pub fn parse_dpkg_status(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let field = |name: &str| para.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
        if let (Some(n), Some(v), Some(s)) = (field("Package:"), field("Version:"), field("Status:"))
            && s.ends_with(" installed")
        {
            out.push((n, v));
        }
    }
    out.sort();
    out
}

/// The kernel and initrd the tree's packages installed, newest version first.
pub fn boot_files(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let boot = root.join("boot");
    let mut kernels: Vec<PathBuf> = fs_err::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .collect();
    // By version, number by number: 6.10 is newer than 6.9, which a sort by name puts after it.
    kernels.sort_by_cached_key(|p| release_numbers(&p.file_name().unwrap_or_default().to_string_lossy()));
    let kernel = kernels.pop().with_context(|| {
        format!("no kernel in {}: add a kernel package (linux-image-*) to the image's base layer", boot.display())
    })?;
    let version = kernel_release(&kernel);
    let initrd = boot.join(format!("initrd.img-{version}"));
    anyhow::ensure!(initrd.is_file(), "no initrd for kernel {version} in {}: add initramfs-tools to the base layer", boot.display());
    Ok((kernel, initrd))
}

/// The release of the kernel file `kernel` (`boot/vmlinuz-6.1.0-13-amd64`: `6.1.0-13-amd64`).
pub fn kernel_release(kernel: &Path) -> String {
    kernel.file_name().unwrap_or_default().to_string_lossy().trim_start_matches("vmlinuz-").to_string()
}

/// The numbers of a kernel's file name or release, in order (`vmlinuz-6.1.0-13-amd64`: 6, 1,
/// 0, 13), for comparing two releases.
pub fn release_numbers(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter(|n| !n.is_empty()).map(|n| n.parse().unwrap_or(u64::MAX)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn the_newest_kernel_boots_by_version_not_by_name() {
        let t = tempfile::tempdir().unwrap();
        let boot = t.path().join("boot");
        fs::create_dir_all(&boot).unwrap();
        for v in ["6.9.0-1-amd64", "6.10.0-2-amd64", "6.10.0-10-amd64", "6.1.0-13-amd64"] {
            fs::write(boot.join(format!("vmlinuz-{v}")), "k").unwrap();
            fs::write(boot.join(format!("initrd.img-{v}")), "i").unwrap();
        }
        let (kernel, initrd) = boot_files(t.path()).unwrap();
        assert_eq!(kernel, boot.join("vmlinuz-6.10.0-10-amd64"));
        assert_eq!(initrd, boot.join("initrd.img-6.10.0-10-amd64"));
    }

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let g = t.path().join("etc/systemd/system-generators");
        fs::create_dir_all(&g).unwrap();
        for n in ["systemd-fstab-generator", "systemd-sysv-generator"] {
            symlink("/dev/null", g.join(n)).unwrap();
        }
        for d in ["etc/init.d", "etc/rc2.d", "etc/rcS.d", "lib/systemd/system"] {
            fs::create_dir_all(t.path().join(d)).unwrap();
        }
        fs::write(t.path().join("etc/fstab"), "# UNCONFIGURED FSTAB FOR BASE SYSTEM\n\n").unwrap();
        t
    }

    #[test]
    fn what_the_generators_that_are_off_would_read_is_refused() {
        let t = tree();
        let r = t.path();
        // Debian's own: scripts with units, scripts of rcS (not the generator's), an empty fstab.
        for (script, link, unit) in [("ssh", "rc2.d/S01ssh", Some("ssh.service")), ("kmod", "rcS.d/S01kmod", None)] {
            fs::write(r.join("etc/init.d").join(script), "#!/bin/sh\n").unwrap();
            symlink(format!("../init.d/{script}"), r.join("etc").join(link)).unwrap();
            if let Some(u) = unit {
                fs::write(r.join("lib/systemd/system").join(u), "[Service]\n").unwrap();
            }
        }
        check_unread_boot_config(r).unwrap();

        fs::write(r.join("etc/init.d/legacyd"), "#!/bin/sh\n").unwrap();
        symlink("../init.d/legacyd", r.join("etc/rc2.d/S02legacyd")).unwrap();
        let e = format!("{:#}", check_unread_boot_config(r).unwrap_err());
        assert!(e.contains("/etc/init.d/legacyd") && e.contains("S02legacyd") && e.contains("legacyd.service"), "{e}");
        fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
        symlink("/dev/null", r.join("etc/systemd/system/legacyd.service")).unwrap();
        check_unread_boot_config(r).unwrap();

        fs::write(r.join("etc/fstab"), "# comment\nLABEL=backup /mnt/backup ext4 defaults 0 2\n").unwrap();
        let e = format!("{:#}", check_unread_boot_config(r).unwrap_err());
        assert!(e.contains("/etc/fstab") && e.contains("LABEL=backup /mnt/backup"), "{e}");

        // A layer that turns the generator back on may use fstab.
        fs::remove_file(r.join("etc/systemd/system-generators/systemd-fstab-generator")).unwrap();
        check_unread_boot_config(r).unwrap();
    }
}
