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
}

#[derive(Debug, Serialize)]
pub struct BuildReport {
    pub image: String,
    pub built_layers: Vec<String>,
    pub reused_layers: Vec<String>,
    pub stages: Vec<(String, f64)>,
    pub outputs: Vec<output::OutputFile>,
    pub out_dir: PathBuf,
    pub warnings: Vec<String>,
}

/// Host tools a build needs.
pub fn build_tools(plan: &BuildPlan) -> Vec<&'static str> {
    let mut t = vec!["mmdebstrap", "unshare", "chroot", "mkfs.erofs", "veritysetup", "mkfs.fat", "mcopy", "qemu-img"];
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

pub fn build(ctx: &Ctx, image_path: &Path, out_dir: &Path) -> Result<BuildReport> {
    let plan = ctx.progress.stage("planning", || load_plan(image_path))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "outpost build must run as root: packages are installed with mmdebstrap and apt-get in a chroot, \
         which need root (a CI job's root, or a container's, is enough; no mounts or loop devices are used)"
    );
    if let Some(key) = &ctx.encrypt_key {
        crate::output::encrypt::check_key_file(key)?;
    }
    tool::preflight(&build_tools(&plan))?;
    check_keyring(&plan)?;
    fs_err::create_dir_all(out_dir).with_context(|| format!("creating the output directory {}", out_dir.display()))?;
    let name = &plan.image;
    let raw = out_dir.join(format!("{name}.raw"));
    let qcow2 = out_dir.join(format!("{name}.qcow2"));
    let mut finals = vec![raw.clone(), qcow2.clone(), out_dir.join(format!("{name}.raw.luks")), crate::format::bmap::path_for(&raw)];
    finals.extend(["vmdk", "vhd", "ec2-import.json", "iso"].map(|ext| out_dir.join(format!("{name}.{ext}"))));
    let partials = crate::files::Partials::new(finals);
    let report = build_into(ctx, &plan, out_dir, &raw, &qcow2)?;
    partials.keep();
    Ok(report)
}

fn build_into(ctx: &Ctx, plan: &BuildPlan, out_dir: &Path, raw: &Path, qcow2: &Path) -> Result<BuildReport> {
    let p = &ctx.progress;
    let work = ctx.cache.work_dir("build")?;
    let tree = work.path().join("root");
    if plan.layers.iter().any(|l| !l.layer.containers.is_empty()) {
        p.stage("containers", || crate::container::resolve_all(plan, &ctx.cache, |m| p.message(m)))?;
    }
    let containers = |layer: &plan::PlannedLayer, root: &Path| crate::container::install(plan, layer, &ctx.cache, root);
    let layers = p.stage("layers", || rootfs::build_layers(plan, &ctx.cache, &tree, &containers, |m| p.message(m)))?;
    p.stage("assembling the root filesystem", || rootfs::assemble(plan, &ctx.cache, &tree, layers.tree_complete, ctx.epoch))?;

    let seed = format!("{}:{}", plan.image, plan.top_key());
    let root_img = work.path().join("root.erofs");
    let verity_img = work.path().join("root.verity");
    let root_hash = p.stage("writing the root filesystem", || {
        disk::make_erofs(&tree, &root_img, &layout::derive_uuid(&seed, "root filesystem"), ctx.epoch)?;
        let salt = hex::encode(sha2::Sha256::digest(format!("{seed}\0verity salt")));
        disk::make_verity(&root_img, &verity_img, &salt, &layout::derive_uuid(&seed, "root verity"))
    })?;
    let root_len = fs_err::metadata(&root_img)?.len();
    let root_size = match plan.spec.partitions.root {
        Some(s) if s.0 < root_len => anyhow::bail!(
            "{}: `[partitions] root` is {} bytes, but the root file system takes {root_len} bytes; raise it or remove the key (the default fits the root exactly)",
            plan.spec.file.display(),
            s.0
        ),
        Some(s) => s.0,
        None => root_len,
    };
    let verity_size = fs_err::metadata(&verity_img)?.len();
    let layout = layout::plan(plan.spec.partitions.esp.0, root_size, verity_size, plan.spec.partitions.data.0, &seed);
    let cmdline = kernel_cmdline(plan, &layout, &root_hash);

    let esp_dir = work.path().join("esp");
    let esp_img = work.path().join("esp.img");
    let disk_file = crate::files::partial(raw);
    p.stage("writing the disk", || {
        disk::create(&layout, &disk_file)?;
        disk::copy_into(&layout, Role::Root, &root_img, &disk_file)?;
        disk::copy_into(&layout, Role::RootVerity, &verity_img, &disk_file)?;
        disk::stage_esp(&tree, &esp_dir, &cmdline, &plan.image)?;
        let serial = u32::from_be_bytes(layout.disk_guid.as_bytes()[..4].try_into().expect("4 bytes"));
        disk::make_fat(&esp_dir, &esp_img, layout.get(Role::Esp).size(), serial, ctx.epoch)?;
        disk::copy_into(&layout, Role::Esp, &esp_img, &disk_file)?;
        // An empty seed (README and an example): the image boots with its own defaults until
        // `outpost personalize`, or someone with a laptop, puts a site.toml there.
        let seed = layout.get(Role::Seed);
        let seed_serial = u32::from_be_bytes(seed.guid.as_bytes()[..4].try_into().expect("4 bytes"));
        let seed_img = crate::format::seed::image(seed.size(), seed_serial, ctx.epoch, None)?;
        fs_err::write(work.path().join("seed.img"), seed_img)?;
        disk::copy_into(&layout, Role::Seed, &work.path().join("seed.img"), &disk_file)?;
        // The data partition's blank marker: what the first boot may format, and nothing else.
        let marker = work.path().join("data-marker.img");
        fs_err::write(&marker, layout::blank_data_marker()).with_context(|| format!("writing {}", marker.display()))?;
        disk::copy_into(&layout, Role::Data, &marker, &disk_file)
    })?;
    let iso = out_dir.join(format!("{}.iso", plan.image));
    if plan.spec.outputs.contains(&OutputFormat::Iso) {
        p.stage("writing the installer ISO", || {
            let src = crate::output::iso::Source {
                image: &plan.image,
                description: &plan.spec.description,
                hostname: &plan.spec.hostname,
                raw: &disk_file,
                layout: &layout,
                esp_dir: &esp_dir,
                rules: plan.spec.install.clone(),
            };
            let stage = work.path().join("iso/stage");
            fs_err::create_dir_all(&stage)?;
            crate::output::iso::build(&src, &stage, &crate::files::partial(&iso), ctx.epoch)
        })?;
    }
    let packages = rootfs::installed_packages(&tree)?;
    let containers = crate::container::records(&tree)?;
    let usb_storage = kernel_has(&tree, "CONFIG_USB_STORAGE")?;
    drop(work);
    let mut finals = Vec::new();
    let mut outputs = Vec::new();
    p.stage("writing qcow2 and checksums", || {
        // Hash the raw disk on the second core while qemu-img compresses it.
        let raw_sum = std::thread::scope(|s| {
            let sum = s.spawn(|| crate::files::sha256_file(&crate::files::partial(raw)));
            if plan.spec.outputs.contains(&OutputFormat::Qcow2) {
                output::qcow2(&crate::files::partial(raw), &crate::files::partial(qcow2))?;
            }
            cloud_outputs(plan, ctx.epoch, &layout, raw, out_dir, &mut finals, &mut outputs)?;
            sum.join().map_err(|_| anyhow::anyhow!("hashing {} panicked", raw.display()))?
        })?;
        if let Some(key) = &ctx.encrypt_key {
            let encrypted = out_dir.join(format!("{}.raw.luks", plan.image));
            // Not reproducible by design (a fresh volume key and salt); the manifest's raw
            // checksum is what the decrypted disk must match.
            crate::output::encrypt::encrypt(&crate::files::partial(raw), key, &encrypted)?;
            outputs.push(output_file(&encrypted, crate::files::sha256_file(&crate::files::partial(&encrypted))?)?);
            finals.push(encrypted);
        }
        if plan.spec.outputs.contains(&OutputFormat::Raw) {
            outputs.insert(0, output_file(raw, raw_sum)?);
            finals.push(raw.to_path_buf());
            // The block map beside it, for `outpost flash` and bmaptool.
            let bmap = crate::format::bmap::path_for(raw);
            crate::format::bmap::write(&crate::files::partial(raw), &crate::files::partial(&bmap))?;
            outputs.insert(1, output_file(&bmap, crate::files::sha256_file(&crate::files::partial(&bmap))?)?);
            finals.push(bmap);
        } else {
            fs_err::remove_file(crate::files::partial(raw))?;
        }
        if plan.spec.outputs.contains(&OutputFormat::Qcow2) {
            outputs.push(output_file(qcow2, crate::files::sha256_file(&crate::files::partial(qcow2))?)?);
            finals.push(qcow2.to_path_buf());
        }
        if plan.spec.outputs.contains(&OutputFormat::Iso) {
            outputs.push(output_file(&iso, crate::files::sha256_file(&crate::files::partial(&iso))?)?);
            finals.push(iso.clone());
        }
        anyhow::Ok(())
    })?;
    let warnings = warnings(plan, usb_storage);
    p.stage("manifest", || {
        let manifest = Manifest {
            outpost_version: env!("CARGO_PKG_VERSION"),
            image: plan.image.clone(),
            distro: plan.base.distro.clone(),
            suite: plan.base.suite.clone(),
            architecture: plan.base.architecture.clone(),
            hostname: plan.spec.hostname.clone(),
            source_date_epoch: ctx.epoch,
            kernel_cmdline: cmdline.clone(),
            root_hash: root_hash.clone(),
            layers: plan.layers.iter().map(|l| output::LayerRecord { name: l.name.clone(), key: l.key.clone() }).collect(),
            partitions: layout.partitions.clone(),
            disk_guid: layout.disk_guid.to_string(),
            packages: packages.iter().map(|(n, v)| output::Package { name: n.clone(), version: v.clone() }).collect(),
            containers: containers.clone(),
            data: plan.spec.data.clone(),
            warnings: warnings.clone(),
            outputs: std::mem::take(&mut outputs),
        };
        output::publish(out_dir, &manifest, &finals)?;
        outputs = manifest.outputs;
        anyhow::Ok(())
    })?;
    Ok(BuildReport {
        image: plan.image.clone(),
        built_layers: layers.built,
        reused_layers: layers.reused,
        stages: p.times(),
        outputs,
        out_dir: out_dir.to_path_buf(),
        warnings,
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
fn warnings(plan: &BuildPlan, usb_storage: bool) -> Vec<String> {
    let mut w = Vec::new();
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
fn cloud_outputs(
    plan: &BuildPlan,
    epoch: i64,
    layout: &layout::Layout,
    raw: &Path,
    out_dir: &Path,
    finals: &mut Vec<PathBuf>,
    outputs: &mut Vec<output::OutputFile>,
) -> Result<()> {
    let id = layout::derive_uuid(&layout.disk_guid.to_string(), "cloud image");
    let mut import = None;
    for (format, ext) in [(OutputFormat::Vmdk, "vmdk"), (OutputFormat::Vhd, "vhd")] {
        if !plan.spec.outputs.contains(&format) {
            continue;
        }
        let name = format!("{}.{ext}", plan.image);
        let file = out_dir.join(&name);
        if format == OutputFormat::Vmdk {
            output::cloud::vmdk(&crate::files::partial(raw), &crate::files::partial(&file), &name, &id)?;
        } else {
            output::cloud::vhd(&crate::files::partial(raw), &crate::files::partial(&file), &id, epoch)?;
        }
        outputs.push(output_file(&file, crate::files::sha256_file(&crate::files::partial(&file))?)?);
        finals.push(file);
        import.get_or_insert((name, ext));
    }
    if let Some((disk_file, ext)) = import {
        let json = out_dir.join(format!("{}.ec2-import.json", plan.image));
        let text = output::cloud::ec2_import(&plan.image, &plan.spec.description, &disk_file, ext);
        fs_err::write(crate::files::partial(&json), &text).with_context(|| format!("writing {}", json.display()))?;
        outputs.push(output_file(&json, hex::encode(sha2::Sha256::digest(text.as_bytes())))?);
        finals.push(json);
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
fn kernel_cmdline(plan: &BuildPlan, layout: &layout::Layout, root_hash: &str) -> String {
    let mut c = format!(
        "root=/dev/mapper/{} rootfstype=erofs ro outpost.verity={},{},{root_hash} console=tty0 console=ttyS0,115200 panic=10 systemd.gpt_auto=0",
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
