//! The build, top to bottom: one line per step, each step a plain function of the previous
//! step's result.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::Digest;
use serde::Serialize;

use crate::cache::Cache;
use crate::disk;
use crate::format::layout::{self, Role};
use crate::output::{self, Manifest};
use crate::plan::{self, BuildPlan};
use crate::progress::Progress;
use crate::rootfs;
use crate::spec::{Image, OutputFormat};
use crate::tool::{self, Tool};

pub struct Ctx {
    pub cache: Cache,
    pub epoch: i64,
    pub progress: Progress,
    /// Also write the raw disk encrypted with this key (`NAME.raw.luks` and its header).
    pub encrypt_key: Option<PathBuf>,
    /// Sign the boot chain and the PCR policy with these (checked before any work).
    pub keys: Option<crate::boot::Keys>,
    /// Also write an update bundle: full, or a delta against the earlier build in this directory.
    pub bundle: Option<BundleRequest>,
}

pub struct BundleRequest {
    pub from: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct BuildReport {
    pub image: String,
    pub built_layers: Vec<String>,
    pub reused_layers: Vec<String>,
    /// Seconds each built layer took (part of the `layers` stage).
    pub layer_seconds: Vec<(String, f64)>,
    pub stages: Vec<(String, f64)>,
    pub outputs: Vec<output::OutputFile>,
    pub out_dir: PathBuf,
    pub boot: crate::boot::BootRecord,
    pub release: String,
    pub bundle: Option<output::bundle::BundleReport>,
    pub warnings: Vec<String>,
}

/// Host tools a build needs.
pub fn build_tools(plan: &BuildPlan) -> Vec<&'static str> {
    let mut t = vec!["mmdebstrap", "unshare", "chroot", "mkfs.erofs", "veritysetup", "mkfs.fat", "mcopy", "qemu-img", "objcopy"];
    if plan.base.keyring.is_some() {
        t.push("gpg");
    }
    if plan.base.distro == "ubuntu" {
        t.push("/usr/share/distro-info/ubuntu.csv");
    }
    if plan.layers.iter().any(|l| !l.layer.containers.is_empty()) {
        t.push("skopeo");
    }
    if plan.spec.outputs.contains(&OutputFormat::Iso) {
        t.extend(crate::output::iso::TOOLS);
    }
    t
}

pub fn load_plan(image_path: &Path) -> Result<BuildPlan> {
    let image = Image::load(image_path)?;
    Ok(plan::resolve(&image)?)
}

/// The build, one step a line; each step is a no-op when its feature is off.
pub fn build(ctx: &Ctx, image_path: &Path, out_dir: &Path) -> Result<BuildReport> {
    let plan = ctx.progress.stage("planning", || load_plan(image_path))?;
    preflight(ctx, &plan)?;
    let out = Outputs::new(&plan, out_dir)?;
    let old = read_bundle_base(ctx, &plan, &out)?;
    // Until publish: a failed or interrupted build leaves no output that looks finished.
    let partials = crate::files::Partials::new(out.every_final());
    let work = ctx.cache.work_dir("build")?;
    let w = Work::new(work.path());
    resolve_containers(ctx, &plan)?;
    let layers = build_layers(ctx, &plan, &w)?;
    assemble_root(ctx, &plan, &w, layers.tree_complete)?;
    install_public_keys(ctx, &plan, &w)?;
    let root = write_root(ctx, &plan, &w)?;
    let layout = plan_disk(&plan, &root)?;
    let cmdline = kernel_cmdline(&plan, &layout, &root.hash);
    let boot = write_disk(ctx, &plan, &w, &layout, &cmdline, &out.raw_partial())?;
    write_installer_iso(ctx, &plan, &w, &layout, &out)?;
    let contents = read_contents(&w)?;
    let written = write_outputs(ctx, &plan, &layout, &out)?;
    let warnings = warnings(&plan, contents.usb_storage, &boot);
    let outputs = publish(ctx, &plan, &out, &layout, &root, &cmdline, &boot, contents, written, &warnings)?;
    partials.keep();
    let bundle = write_bundle(ctx, &plan, &w, &out, &root, old.as_ref())?;
    ctx.cache.keep_tree(&w.tree)?;
    drop(work);
    Ok(BuildReport {
        image: plan.image.clone(),
        built_layers: layers.built,
        reused_layers: layers.reused,
        layer_seconds: layers.seconds,
        stages: ctx.progress.times(),
        outputs,
        out_dir: out_dir.to_path_buf(),
        boot,
        release: plan.spec.release.clone(),
        bundle,
        warnings,
    })
}

/// The earlier build a delta bundle applies to, read before any work so that a wrong one fails
/// at once.
fn read_bundle_base(ctx: &Ctx, plan: &BuildPlan, out: &Outputs) -> Result<Option<output::bundle::Old>> {
    let Some(from) = ctx.bundle.as_ref().and_then(|b| b.from.as_ref()) else { return Ok(None) };
    let old = output::bundle::read_old(from, &plan.image, &out.dir)?;
    anyhow::ensure!(
        crate::format::update::release_cmp(&plan.spec.release, &old.release) == std::cmp::Ordering::Greater,
        "{}: `release` is {}, and the earlier build (--from {}) is release {}: an update must raise the release",
        plan.spec.file.display(),
        plan.spec.release,
        from.display(),
        old.release
    );
    Ok(Some(old))
}

/// `NAME-RELEASE.update` (or `NAME-RELEASE-from-OLD.update`) beside the other outputs.
fn write_bundle(ctx: &Ctx, plan: &BuildPlan, w: &Work, out: &Outputs, root: &Root, old: Option<&output::bundle::Old>) -> Result<Option<output::bundle::BundleReport>> {
    if ctx.bundle.is_none() {
        return Ok(None);
    }
    let keys = ctx.keys.as_ref().context("an update bundle is signed with the project's keys: give --keys DIR (made by `outpost keys init`)")?;
    ctx.progress.stage("writing the update bundle", || {
        let build: serde_json::Value = serde_json::from_slice(&fs_err::read(out.dir.join("manifest.json"))?)?;
        let new = output::bundle::New {
            image: &plan.image,
            release: &plan.spec.release,
            root_img: &w.root_img,
            root_hash: &root.hash,
            verity_salt: &root.salt,
            verity_uuid: root.verity_uuid.to_string(),
            uki: &w.esp_dir.join(crate::format::update::uki_on_esp("a")),
            build,
        };
        output::bundle::write(&new, old, &keys.db_key, &out.dir, &w.dir, ctx.epoch).map(Some)
    })
}

/// Root, every host tool the plan needs, a usable encryption key, the archive's keyring.
fn preflight(ctx: &Ctx, plan: &BuildPlan) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "outpost build must run as root: packages are installed with mmdebstrap and apt-get in a chroot, \
         which need root (a CI job's root, or a container's, is enough; no loop devices or device-mapper are used)"
    );
    if let Some(key) = &ctx.encrypt_key {
        crate::output::encrypt::check_key_file(key)?;
    }
    let mut tools = build_tools(plan);
    if ctx.keys.is_some() {
        tools.extend(crate::boot::keys::TOOLS);
    }
    tool::preflight(&tools)?;
    check_keyring(plan)
}

/// Where every output of the image goes: the one list of final names.
struct Outputs {
    dir: PathBuf,
    name: String,
    formats: Vec<OutputFormat>,
}

impl Outputs {
    fn new(plan: &BuildPlan, dir: &Path) -> Result<Outputs> {
        fs_err::create_dir_all(dir).context("creating the output directory")?;
        Ok(Outputs { dir: dir.to_path_buf(), name: plan.image.clone(), formats: plan.spec.outputs.clone() })
    }

    fn file(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", self.name))
    }

    fn wants(&self, f: OutputFormat) -> bool {
        self.formats.contains(&f)
    }

    /// The raw disk is always written (every other output is made from it), under its
    /// partial name until publish.
    fn raw_partial(&self) -> PathBuf {
        crate::files::partial(&self.file("raw"))
    }

    /// Every name a build may publish, whether or not this one does.
    fn every_final(&self) -> Vec<PathBuf> {
        ["raw", "raw.bmap", "raw.luks", "qcow2", "vmdk", "vhd", "ec2-import.json", "iso"].iter().map(|e| self.file(e)).collect()
    }
}

/// The build's scratch area: the root tree and the images made from it.
struct Work {
    tree: PathBuf,
    root_img: PathBuf,
    verity_img: PathBuf,
    esp_dir: PathBuf,
    dir: PathBuf,
}

impl Work {
    fn new(dir: &Path) -> Work {
        Work {
            tree: dir.join("root"),
            root_img: dir.join("root.erofs"),
            verity_img: dir.join("root.verity"),
            esp_dir: dir.join("esp"),
            dir: dir.to_path_buf(),
        }
    }
}

/// Every container of the layers still to build, fetched or built before any layer: an
/// unreachable registry fails in seconds, not after the packages.
fn resolve_containers(ctx: &Ctx, plan: &BuildPlan) -> Result<()> {
    if !plan.layers.iter().any(|l| !l.layer.containers.is_empty()) {
        return Ok(());
    }
    let p = &ctx.progress;
    p.stage("containers", || crate::container::resolve_all(plan, &ctx.cache, |m| p.message(m)))
}

fn build_layers(ctx: &Ctx, plan: &BuildPlan, w: &Work) -> Result<rootfs::LayersReport> {
    let p = &ctx.progress;
    let containers = |layer: &plan::PlannedLayer, root: &Path| crate::container::install(plan, layer, &ctx.cache, root);
    p.stage("layers", || rootfs::build_layers(plan, &ctx.cache, &w.tree, &containers, |m| p.message(m)))
}

fn assemble_root(ctx: &Ctx, plan: &BuildPlan, w: &Work, tree_complete: bool) -> Result<()> {
    ctx.progress.stage("assembling the root filesystem", || rootfs::assemble(plan, &ctx.cache, &w.tree, tree_complete, ctx.epoch))
}

/// The PCR policy's public key, which the first boot enrols the data key against. Only the
/// public half: the private keys never enter the tree.
fn install_public_keys(ctx: &Ctx, plan: &BuildPlan, w: &Work) -> Result<()> {
    use crate::format::update;
    let release = update::Release { image: plan.image.clone(), release: plan.spec.release.clone() };
    let to = w.tree.join(update::RELEASE_PATH);
    fs_err::create_dir_all(to.parent().expect("a file in a directory"))?;
    fs_err::write(&to, serde_json::to_vec_pretty(&release)?)?;
    let Some(k) = &ctx.keys else { return Ok(()) };
    fs_err::write(w.tree.join(crate::format::PCR_PUBLIC_KEY_PATH), &k.pcr_public_pem)?;
    // Bundles are signed with the db key: whoever may sign what the firmware boots may sign an
    // update, and nobody else.
    let public = Tool::new("openssl").describe("reading the db certificate's public key").args(["x509", "-noout", "-pubkey", "-in"]).arg(&k.db_cert).output()?;
    fs_err::write(w.tree.join(update::UPDATE_PUBLIC_KEY_PATH), public)?;
    Ok(())
}

/// The read-only root and its dm-verity hash tree, as plain files.
struct Root {
    hash: String,
    size: u64,
    /// dm-verity's salt and superblock UUID: an update's device recomputes the hash tree with
    /// them and must arrive at `hash`.
    salt: String,
    verity_uuid: uuid::Uuid,
}

fn seed_of(plan: &BuildPlan) -> String {
    format!("{}:{}", plan.image, plan.top_key())
}

fn write_root(ctx: &Ctx, plan: &BuildPlan, w: &Work) -> Result<Root> {
    let seed = seed_of(plan);
    let salt = hex::encode(sha2::Sha256::digest(format!("{seed}\0verity salt")));
    let verity_uuid = layout::derive_uuid(&seed, "root verity");
    let hash = ctx.progress.stage("writing the root filesystem", || {
        let release = crate::rootfs::kernel_release(&crate::rootfs::boot_files(&w.tree)?.0);
        disk::make_erofs(&w.tree, &w.root_img, &layout::derive_uuid(&seed, "root filesystem"), ctx.epoch, &release)?;
        disk::make_verity(&w.root_img, &w.verity_img, &salt, &verity_uuid)
    })?;
    Ok(Root { hash, size: fs_err::metadata(&w.root_img)?.len(), salt, verity_uuid })
}

/// The partition table: each root slot holds the root and half as much again (for the
/// releases to come) unless the image sets its size.
fn plan_disk(plan: &BuildPlan, root: &Root) -> Result<layout::Layout> {
    let slot = match plan.spec.partitions.root {
        Some(s) if s.0 < root.size => anyhow::bail!(
            "{}: `[partitions] root` is {} bytes, but the root file system takes {} bytes; raise it or remove the key (the default is the root and half as much again)",
            plan.spec.file.display(),
            s.0,
            root.size
        ),
        Some(s) => s.0,
        None => layout::default_slot_size(root.size),
    };
    Ok(layout::plan(plan.spec.partitions.esp.0, slot, plan.spec.partitions.data.0, &seed_of(plan), &root.hash))
}

/// The raw disk: the GPT, then each partition's image copied into place; returns what the boot
/// chain on its ESP is.
fn write_disk(ctx: &Ctx, plan: &BuildPlan, w: &Work, layout: &layout::Layout, cmdline: &str, disk_file: &Path) -> Result<crate::boot::BootRecord> {
    ctx.progress.stage("writing the disk", || {
        disk::create(layout, disk_file)?;
        disk::copy_into(layout, Role::Root, &w.root_img, disk_file)?;
        disk::copy_into(layout, Role::RootVerity, &w.verity_img, disk_file)?;
        let boot = crate::boot::stage_esp(&w.tree, &w.esp_dir, &w.dir, cmdline, &plan.image, &plan.spec.release, ctx.keys.as_ref(), ctx.epoch)?;
        let esp_img = w.dir.join("esp.img");
        let serial = u32::from_be_bytes(layout.disk_guid.as_bytes()[..4].try_into().expect("4 bytes"));
        disk::make_fat(&w.esp_dir, &esp_img, layout.get(Role::Esp).size(), serial, ctx.epoch)?;
        disk::copy_into(layout, Role::Esp, &esp_img, disk_file)?;
        // An empty seed (README and an example): the image boots with its own defaults until
        // `outpost personalize`, or someone with a laptop, puts a site.toml there.
        let seed = layout.get(Role::Seed);
        let seed_serial = u32::from_be_bytes(seed.guid.as_bytes()[..4].try_into().expect("4 bytes"));
        let seed_img = w.dir.join("seed.img");
        fs_err::write(&seed_img, crate::format::seed::image(seed.size(), seed_serial, ctx.epoch, None)?)?;
        disk::copy_into(layout, Role::Seed, &seed_img, disk_file)?;
        // The data partition's blank marker: what the first boot may format, and nothing else.
        let marker = w.dir.join("data-marker.img");
        fs_err::write(&marker, layout::blank_data_marker())?;
        disk::copy_into(layout, Role::Data, &marker, disk_file)?;
        Ok(boot)
    })
}

fn write_installer_iso(ctx: &Ctx, plan: &BuildPlan, w: &Work, layout: &layout::Layout, out: &Outputs) -> Result<()> {
    if !out.wants(OutputFormat::Iso) {
        return Ok(());
    }
    ctx.progress.stage("writing the installer ISO", || {
        let src = crate::output::iso::Source {
            image: &plan.image,
            description: &plan.spec.description,
            hostname: &plan.spec.hostname,
            raw: &out.raw_partial(),
            layout,
            boot_files: crate::rootfs::boot_files(&w.tree)?,
            rules: plan.spec.install.clone(),
        };
        let stage = w.dir.join("iso/stage");
        fs_err::create_dir_all(&stage)?;
        crate::output::iso::build(&src, &stage, &crate::files::partial(&out.file("iso")), ctx.epoch)
    })
}

/// What the manifest and the summary say about the root's contents.
struct Contents {
    packages: Vec<(String, String)>,
    containers: Vec<crate::container::Record>,
    usb_storage: bool,
}

fn read_contents(w: &Work) -> Result<Contents> {
    Ok(Contents {
        packages: rootfs::installed_packages(&w.tree)?,
        containers: crate::container::records(&w.tree)?,
        usb_storage: kernel_has(&w.tree, "CONFIG_USB_STORAGE")?,
    })
}

/// Every output the image asks for, from the raw disk, each with its checksum (still under
/// their partial names).
fn write_outputs(ctx: &Ctx, plan: &BuildPlan, layout: &layout::Layout, out: &Outputs) -> Result<Vec<(PathBuf, String)>> {
    ctx.progress.stage("writing qcow2 and checksums", || {
        let raw = out.file("raw");
        let mut written = Vec::new();
        // The raw disk's checksum and block map on the second core while qemu-img compresses
        // it (0.8 s and 0.5 s against 1.4-1.8 s for the Debian test image).
        let (raw_sum, bmap) = std::thread::scope(|s| {
            let sums = s.spawn(|| -> Result<(String, Option<(PathBuf, String)>)> {
                let raw_sum = crate::files::sha256_file(&out.raw_partial())?;
                if !out.wants(OutputFormat::Raw) {
                    return Ok((raw_sum, None));
                }
                // The block map beside it, for `outpost flash` and bmaptool.
                let bmap = out.file("raw.bmap");
                crate::format::bmap::write(&out.raw_partial(), &crate::files::partial(&bmap))?;
                let bmap_sum = crate::files::sha256_file(&crate::files::partial(&bmap))?;
                Ok((raw_sum, Some((bmap, bmap_sum))))
            });
            if out.wants(OutputFormat::Qcow2) {
                output::qcow2(&out.raw_partial(), &crate::files::partial(&out.file("qcow2")))?;
            }
            cloud_outputs(plan, ctx.epoch, layout, out, &mut written)?;
            sums.join().map_err(|_| anyhow::anyhow!("hashing {} panicked", raw.display()))?
        })?;
        if let Some(key) = &ctx.encrypt_key {
            let encrypted = out.file("raw.luks");
            // Not reproducible by design (a fresh volume key and salt); the manifest's raw
            // checksum is what the decrypted disk must match.
            crate::output::encrypt::encrypt(&out.raw_partial(), key, &encrypted)?;
            written.push((encrypted.clone(), crate::files::sha256_file(&crate::files::partial(&encrypted))?));
        }
        if let Some(bmap) = bmap {
            written.splice(0..0, [(raw.clone(), raw_sum), bmap]);
        } else {
            fs_err::remove_file(out.raw_partial())?;
        }
        for (f, ext) in [(OutputFormat::Qcow2, "qcow2"), (OutputFormat::Iso, "iso")] {
            if out.wants(f) {
                let file = out.file(ext);
                let sum = crate::files::sha256_file(&crate::files::partial(&file))?;
                written.push((file, sum));
            }
        }
        Ok(written)
    })
}

/// The manifest, SHA256SUMS, and every output renamed into place.
#[allow(clippy::too_many_arguments)]
fn publish(
    ctx: &Ctx,
    plan: &BuildPlan,
    out: &Outputs,
    layout: &layout::Layout,
    root: &Root,
    cmdline: &str,
    boot: &crate::boot::BootRecord,
    contents: Contents,
    written: Vec<(PathBuf, String)>,
    warnings: &[String],
) -> Result<Vec<output::OutputFile>> {
    ctx.progress.stage("manifest", || {
        let outputs = written.iter().map(|(f, sum)| output_file(f, sum.clone())).collect::<Result<Vec<_>>>()?;
        let finals: Vec<PathBuf> = written.iter().map(|(f, _)| f.clone()).collect();
        let manifest = Manifest {
            outpost_version: env!("CARGO_PKG_VERSION"),
            image: plan.image.clone(),
            release: plan.spec.release.clone(),
            distro: plan.base.distro.clone(),
            suite: plan.base.suite.clone(),
            architecture: plan.base.architecture.clone(),
            hostname: plan.spec.hostname.clone(),
            source_date_epoch: ctx.epoch,
            kernel_cmdline: cmdline.to_string(),
            root_hash: root.hash.clone(),
            boot: boot.clone(),
            layers: plan.layers.iter().map(|l| output::LayerRecord { name: l.name.clone(), key: l.key.clone() }).collect(),
            partitions: layout.partitions.clone(),
            disk_guid: layout.disk_guid.to_string(),
            packages: contents.packages.iter().map(|(n, v)| output::Package { name: n.clone(), version: v.clone() }).collect(),
            containers: contents.containers,
            stacks: crate::container::stack_records(plan),
            data: plan.spec.data.clone(),
            warnings: warnings.to_vec(),
            outputs,
        };
        output::publish(&out.dir, &manifest, &finals)?;
        Ok(manifest.outputs)
    })
}

/// Whether the image's kernel was built with `option` (built in or as a module).
fn kernel_has(tree: &Path, option: &str) -> Result<bool> {
    let boot = tree.join("boot");
    for e in fs_err::read_dir(&boot).with_context(|| format!("reading {}", boot.display()))? {
        let p = e?.path();
        if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("config-")) {
            let text = fs_err::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            return Ok(text.lines().any(|l| l == format!("{option}=y") || l == format!("{option}=m")));
        }
    }
    Ok(false)
}

/// What the build summary and the manifest must say about an image before it ships.
fn warnings(plan: &BuildPlan, usb_storage: bool, boot: &crate::boot::BootRecord) -> Vec<String> {
    let mut w = Vec::new();
    if !boot.signed {
        w.push(
            "built without signing keys (--keys): the boot chain is unsigned, so Secure Boot must be off, and the data key is sealed to this exact build (PCRs 4, 7, 11, 12): \
             no other build, not even an update, unlocks it. For development only; make keys with `outpost keys init DIR`"
                .into(),
        );
    }
    let data = &plan.spec.data;
    if (data.unlock == crate::spec::Unlock::UsbKey || data.no_tpm == crate::spec::NoTpm::UsbKey) && !usb_storage {
        w.push(format!(
            "{}: the data partition may unlock with a USB key, but the image's kernel has no USB storage driver; use a kernel for PCs (Debian: `kernel = \"linux-image-amd64\"`, Ubuntu: `linux-image-generic`)",
            plan.spec.file.display()
        ));
    }
    if !plan.layers.iter().any(|l| l.name == "appliance") {
        w.push("the image has no `appliance` layer: its data partition is never formatted or mounted, and /var stays on the root".into());
    } else if plan.spec.data.unlock == crate::spec::Unlock::None {
        w.push(format!("{}: `[data] unlock = \"none\"`: the data partition (patient data) is NOT encrypted on the device", plan.spec.file.display()));
    }
    w
}

/// NAME.vmdk and NAME.vhd as the image asks, and the EC2 import input for the first of them.
fn cloud_outputs(plan: &BuildPlan, epoch: i64, layout: &layout::Layout, out: &Outputs, written: &mut Vec<(PathBuf, String)>) -> Result<()> {
    let id = layout::derive_uuid(&layout.disk_guid.to_string(), "cloud image");
    let mut import = None;
    for (format, ext) in [(OutputFormat::Vmdk, "vmdk"), (OutputFormat::Vhd, "vhd")] {
        if !out.wants(format) {
            continue;
        }
        let file = out.file(ext);
        let name = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if format == OutputFormat::Vmdk {
            output::cloud::vmdk(&out.raw_partial(), &crate::files::partial(&file), &name, &id)?;
        } else {
            output::cloud::vhd(&out.raw_partial(), &crate::files::partial(&file), &id, epoch)?;
        }
        written.push((file.clone(), crate::files::sha256_file(&crate::files::partial(&file))?));
        import.get_or_insert((name, ext));
    }
    if let Some((disk_file, ext)) = import {
        let json = out.file("ec2-import.json");
        let text = output::cloud::ec2_import(&plan.image, &plan.spec.description, &disk_file, ext);
        fs_err::write(crate::files::partial(&json), &text)?;
        written.push((json, hex::encode(sha2::Sha256::digest(text.as_bytes()))));
    }
    Ok(())
}

fn output_file(f: &Path, sha256: String) -> Result<output::OutputFile> {
    Ok(output::OutputFile {
        file: f.file_name().unwrap_or_default().to_string_lossy().into_owned(),
        size: fs_err::metadata(crate::files::partial(f))?.len(),
        sha256,
    })
}

/// The kernel command line: the read-only root through dm-verity (the initramfs opens it from
/// `outpost.verity=DATA-PARTUUID,HASH-PARTUUID,ROOT-HASH`), the serial console last so that
/// /dev/console (and the verdict line) goes to it, then the image's own options.
/// `cryptomgr.notests=1`: no self-test of each crypto algorithm as the kernel registers it (the
/// upstream kernel's default; Debian's and Ubuntu's builds run them). Loading AES-NI for the data
/// partition's unlock tested a dozen modes, and each test asked /sbin/modprobe twice for a module
/// that does not exist: 2-3 s of a boot's one CPU under emulation, on the way to /var.
fn kernel_cmdline(plan: &BuildPlan, layout: &layout::Layout, root_hash: &str) -> String {
    let mut c = format!(
        "root=/dev/mapper/{} rootfstype=erofs ro outpost.verity={},{},{root_hash} console=tty0 console=ttyS0,115200 panic=10 systemd.gpt_auto=0 cryptomgr.notests=1",
        crate::format::VERITY_MAPPING,
        layout.get(Role::Root).guid,
        layout.get(Role::RootVerity).guid,
    );
    if !plan.spec.cmdline.trim().is_empty() {
        c.push(' ');
        c.push_str(plan.spec.cmdline.trim());
    }
    c
}

/// The bottom layer's archive keyring must hold the key with the pinned fingerprint.
fn check_keyring(plan: &BuildPlan) -> Result<()> {
    let Some(k) = &plan.base.keyring else { return Ok(()) };
    let out = Tool::new("gpg")
        .describe(format!("reading the keyring {}", k.file.display()))
        .args(["--batch", "--no-default-keyring", "--with-colons", "--show-keys"])
        .arg(&k.file)
        .env("GNUPGHOME", std::env::temp_dir())
        .output()?;
    let fprs: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("fpr:")).map(|l| l.trim_matches(':')).collect();
    anyhow::ensure!(
        fprs.iter().any(|f| f.eq_ignore_ascii_case(&k.fingerprint)),
        "{}: the keyring holds {} but the layer pins fingerprint {}; refusing to trust it",
        k.file.display(),
        if fprs.is_empty() { "no key".to_string() } else { fprs.join(", ") },
        k.fingerprint
    );
    Ok(())
}
