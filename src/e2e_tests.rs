//! End to end through the `outpost` binary, as a user would check it: build the Debian test
//! image twice from cold caches and once warm after editing the top layer, compare bytes,
//! validate the disk with qemu-img and sgdisk, personalize it, and boot it under QEMU with the
//! scenarios' assertions. Minutes, not seconds: `cargo test --release -- --ignored` (the
//! README's test command includes them). An integration test, so that the binary under test is
//! the real one: it also ships inside the image as the first-boot agent.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

const EPOCH: &str = "1700000000";

fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs outpost with `args`; returns stdout, failing the test with stderr when it fails.
fn outpost(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .expect("running outpost");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "outpost {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn build(cache: &Path, image: &Path, out: &Path) -> serde_json::Value {
    let s = outpost(&["build".as_ref(), image.as_os_str(), "--out".as_ref(), out.as_os_str(), "--cache".as_ref(), cache.as_os_str(), "--json".as_ref()]);
    serde_json::from_str(&s).expect("build --json prints JSON")
}

fn boot(cache: &Path, scenario: &Path, image: &Path, work: &Path) {
    let r = test_report(cache, scenario, image, work);
    // `verdict ...`, or `boot N: verdict ...` in a scenario with reboots.
    assert!(r["passed"].as_array().unwrap().iter().any(|p| p.as_str().unwrap().contains("verdict `")), "{r:#}");
}

/// `outpost test --json`, which must have passed.
fn test_report(cache: &Path, scenario: &Path, image: &Path, work: &Path) -> serde_json::Value {
    let s = outpost(&[
        "test".as_ref(),
        scenario.as_os_str(),
        "--image".as_ref(),
        image.as_os_str(),
        "--work".as_ref(),
        work.as_os_str(),
        "--cache".as_ref(),
        cache.as_os_str(),
        "--json".as_ref(),
    ]);
    let r: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert!(r["failed"].as_array().unwrap().is_empty(), "{scenario:?}: {r:#}");
    r
}

fn sha(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn run(cmd: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
#[ignore = "builds Debian images with mmdebstrap and boots them under QEMU: minutes"]
fn debian_base_is_reproducible_cached_personalized_and_boots() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let t = tmp.path();
    let image = project().join("images/debian-base.toml");

    // Two cold builds, separate caches and output directories.
    let a = build(&t.join("cache-a"), &image, &t.join("out-a"));
    assert_eq!(names(&a["built_layers"]), ["base", "appliance", "vm-guest", "site-agent", "record-store", "status-page"]);
    let mut files: Vec<String> = std::fs::read_dir(t.join("out-a")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, ["SHA256SUMS", "debian-base.qcow2", "debian-base.raw", "debian-base.raw.bmap", "manifest.json"]);
    let b = build(&t.join("cache-b"), &image, &t.join("out-b"));
    assert_eq!(names(&b["built_layers"]).len(), 6);
    let raw_a = t.join("out-a/debian-base.raw");
    let qcow_a = t.join("out-a/debian-base.qcow2");
    assert_eq!(sha(&raw_a), sha(&t.join("out-b/debian-base.raw")), "two cold builds differ");
    assert_eq!(sha(&qcow_a), sha(&t.join("out-b/debian-base.qcow2")));

    // Fully cached: the root is laid down from the cache, and still the same bytes.
    let c = build(&t.join("cache-a"), &image, &t.join("out-c"));
    assert!(names(&c["built_layers"]).is_empty());
    assert_eq!(sha(&raw_a), sha(&t.join("out-c/debian-base.raw")), "a cached build differs from a cold one");

    // SHA256SUMS and the manifest agree with the files.
    let sums = std::fs::read_to_string(t.join("out-a/SHA256SUMS")).unwrap();
    assert!(sums.contains(&format!("{}  debian-base.raw", sha(&raw_a))), "{sums}");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(t.join("out-a/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["suite"], "bookworm");
    // The root hash the device checks every block against is the one on the command line.
    let root_hash = manifest["root_hash"].as_str().unwrap();
    assert_eq!(root_hash.len(), 64);
    assert!(manifest["kernel_cmdline"].as_str().unwrap().contains(&format!(",{root_hash} ")), "{manifest:#}");
    let pkgs = manifest["packages"].as_array().unwrap();
    for p in ["systemd", "qemu-guest-agent", "openssh-server", "cryptsetup-bin"] {
        assert!(pkgs.iter().any(|x| x["name"] == p), "{p} is not in the manifest");
    }

    // The disk is valid for the tools users check it with (outpost itself installed
    // qemu-utils; gdisk is only needed here).
    if Command::new("sgdisk").arg("--version").output().is_err() {
        run("apt-get", &["install".as_ref(), "-y".as_ref(), "-q".as_ref(), "gdisk".as_ref()]);
    }
    assert!(run("qemu-img", &["check".as_ref(), qcow_a.as_os_str()]).contains("No errors were found"));
    assert!(run("sgdisk", &["-v".as_ref(), raw_a.as_os_str()]).contains("No problems found"));

    // Edit one file of the top layer: only that layer is rebuilt.
    let proj = t.join("project");
    std::fs::create_dir(&proj).unwrap();
    for dir in ["layers", "images", "qemu-tests", "sites"] {
        run("cp", &["-a".as_ref(), project().join(dir).as_os_str(), proj.as_os_str()]);
    }
    let page = proj.join("layers/status-page/files/usr/lib/outpost/status-page.tera");
    let text = std::fs::read_to_string(&page).unwrap().replace("<h1>", "<h1 class=\"edited\">");
    std::fs::write(&page, text).unwrap();
    let d = build(&t.join("cache-a"), &proj.join("images/debian-base.toml"), &t.join("out-d"));
    assert_eq!(names(&d["built_layers"]), ["status-page"]);
    assert_eq!(names(&d["reused_layers"]), ["base", "appliance", "vm-guest", "site-agent", "record-store"]);
    assert_ne!(sha(&raw_a), sha(&t.join("out-d/debian-base.raw")));

    let raw_before_boots = sha(&raw_a);
    // Boot the edited image: verdict, guest commands, the status page.
    let qcow_d = t.join("out-d/debian-base.qcow2");
    let qcow_d_sum = sha(&qcow_d);
    boot(&t.join("cache-a"), &proj.join("qemu-tests/debian-base.toml"), &qcow_d, &t.join("vm-base"));
    assert_eq!(sha(&qcow_d), qcow_d_sum, "booting changed the image");

    // Patient data: encrypted at first boot (even after a power cut during it), sealed to the
    // TPM, unlocked unattended on the same machine, closed in another; the image stays unchanged.
    boot(&t.join("cache-a"), &proj.join("qemu-tests/encryption.toml"), &raw_a, &t.join("vm-encryption"));
    assert_eq!(sha(&raw_a), raw_before_boots, "the encryption test changed the image");
    // A PC without a TPM (a site's `unlock = "usb-key"`): the key stick unlocks it; without the
    // stick the box waits and says so.
    boot(&t.join("cache-a"), &proj.join("qemu-tests/usb-key.toml"), &raw_a, &t.join("vm-usb-key"));
    // Power: plugs pulled at seeded random moments lose no acknowledged record and need nobody;
    // a root changed on the disk after the build is caught at boot.
    boot(&t.join("cache-a"), &proj.join("qemu-tests/power-cut.toml"), &raw_a, &t.join("vm-power-cut"));
    let cuts: serde_json::Value = serde_json::from_slice(&std::fs::read(t.join("vm-power-cut/vm/power-cuts.json")).unwrap()).unwrap();
    assert_eq!((cuts["records_lost"].as_u64(), cuts["boots_needing_a_human"].as_u64()), (Some(0), Some(0)), "{cuts:#}");
    boot(&t.join("cache-a"), &proj.join("qemu-tests/corrupt-root.toml"), &raw_a, &t.join("vm-corrupt-root"));
    assert_eq!(sha(&raw_a), raw_before_boots, "the power tests changed the image");

    // Personalize a copy: the original stays as it was, the copy differs only in the seed.
    let site = proj.join("sites/example-static.toml");
    let copy = t.join("clinic-kisumu.raw");
    let raw_before = sha(&raw_a);
    outpost(&["personalize".as_ref(), raw_a.as_os_str(), "--site".as_ref(), site.as_os_str(), "--out".as_ref(), copy.as_os_str()]);
    assert_eq!(sha(&raw_a), raw_before, "personalize changed the original image");
    assert_ne!(sha(&copy), raw_before);

    // The personalized copy boots with the site's address, hostname, administrator; a broken
    // site falls back to DHCP.
    boot(&t.join("cache-a"), &proj.join("qemu-tests/site-static.toml"), &raw_a, &t.join("vm-static"));
    boot(&t.join("cache-a"), &proj.join("qemu-tests/site-broken.toml"), &raw_a, &t.join("vm-broken"));
    assert_eq!(sha(&raw_a), raw_before, "a site test changed the original image");

    clinic_pc_installs(t, &proj);
    pacs_clinic(t, &proj);
}

/// The clinic PC image's delivery outputs: the installer ISO (reproducible, both boot records)
/// installs unattended onto an empty disk, which then boots alone with the site's hostname; on
/// a BIOS machine and onto a too-small disk it refuses and writes nothing. The cloud images
/// are valid for qemu-img.
fn clinic_pc_installs(t: &Path, proj: &Path) {
    let image = proj.join("images/clinic-pc.toml");
    build(&t.join("cache-a"), &image, &t.join("pc-a"));
    let c = build(&t.join("cache-a"), &image, &t.join("pc-c"));
    assert!(names(&c["built_layers"]).is_empty());
    let iso = t.join("pc-a/clinic-pc.iso");
    assert_eq!(sha(&iso), sha(&t.join("pc-c/clinic-pc.iso")), "two builds of the installer ISO differ");
    let report = run("xorriso", &["-indev".as_ref(), iso.as_os_str(), "-report_el_torito".as_ref(), "plain".as_ref()]);
    assert!(report.contains("BIOS") && report.contains("UEFI"), "{report}");
    for (file, fmt) in [("clinic-pc.vmdk", "vmdk"), ("clinic-pc.vhd", "vpc")] {
        let p = t.join("pc-a").join(file);
        let info = run("qemu-img", &["info".as_ref(), "-f".as_ref(), fmt.as_ref(), p.as_os_str()]);
        assert!(info.contains("virtual size:"), "{info}");
        if fmt == "vmdk" {
            assert!(run("qemu-img", &["check".as_ref(), "-f".as_ref(), fmt.as_ref(), p.as_os_str()]).contains("No errors"), "{file}");
        }
    }
    assert!(t.join("pc-a/clinic-pc.ec2-import.json").is_file());
    boot(&t.join("cache-a"), &proj.join("qemu-tests/install.toml"), &iso, &t.join("vm-install"));
    for s in ["install-bios", "install-small-disk"] {
        let r = test_report(&t.join("cache-a"), &proj.join(format!("qemu-tests/{s}.toml")), &iso, &t.join(format!("vm-{s}")));
        assert!(r["passed"].as_array().unwrap().iter().any(|p| p.as_str().unwrap().contains("OUTPOST-INSTALL: failed")), "{r:#}");
    }
}

/// Runs outpost expecting it to fail; returns what it printed.
fn outpost_fails(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost")).args(args).env("SOURCE_DATE_EPOCH", EPOCH).output().expect("running outpost");
    assert!(!out.status.success(), "outpost {args:?} succeeded but must fail");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A registry on loopback (Debian's docker-registry), stopped when dropped.
struct Registry(std::process::Child, u16);

impl Registry {
    fn start(dir: &Path) -> Registry {
        if Command::new("docker-registry").arg("--version").output().is_err() {
            run("apt-get", &["install".as_ref(), "-y".as_ref(), "-q".as_ref(), "docker-registry".as_ref()]);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.join("registry.yml");
        std::fs::write(&config, format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n", dir.join("registry").display())).unwrap();
        let child = Command::new("docker-registry").arg("serve").arg(&config).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Registry(child, port);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("docker-registry did not listen on port {port}");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The PACS clinic: three container images built from packages, reproducibly; the stack comes
/// up offline, survives a killed container and a reboot; and an image outpost built, pushed to a
/// registry on loopback, is pulled by digest into an appliance.
fn pacs_clinic(t: &Path, proj: &Path) {
    let image = proj.join("images/pacs-clinic.toml");
    // The debian-base caches hold the layers up to site-agent: only the containers and the
    // layers above them are built, in each cache, from cold.
    let a = build(&t.join("cache-a"), &image, &t.join("pacs-a"));
    assert_eq!(names(&a["built_layers"]), ["status-page", "containers", "orthanc-pacs"]);
    build(&t.join("cache-b"), &image, &t.join("pacs-b"));
    let raw = t.join("pacs-a/pacs-clinic.raw");
    // Filling the container store mounted nothing that outlived the build.
    let mounts = run("findmnt", &["-rn".as_ref(), "-o".as_ref(), "TARGET".as_ref()]);
    assert!(!mounts.lines().any(|m| Path::new(m).starts_with(t)), "mounts left under {}:\n{mounts}", t.display());
    assert_eq!(sha(&raw), sha(&t.join("pacs-b/pacs-clinic.raw")), "two cold builds of the PACS appliance (its container images and store) differ");

    // The SBOM: every container with its source, digest and packages.
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(t.join("pacs-a/manifest.json")).unwrap()).unwrap();
    let containers = manifest["containers"].as_array().unwrap();
    let by_name = |n: &str| containers.iter().find(|c| c["name"] == n).unwrap_or_else(|| panic!("{n} is not in the manifest"));
    for (name, package) in [("pacs-orthanc", "orthanc"), ("pacs-postgres", "postgresql-15"), ("pacs-nginx", "nginx")] {
        let c = by_name(name);
        assert_eq!(c["source"], "built from packages of debian bookworm");
        assert!(c["digest"].as_str().unwrap().starts_with("sha256:"));
        assert!(c["packages"].as_array().unwrap().iter().any(|p| p[0] == package), "{name} does not list {package}");
    }
    // `outpost plan` now knows each digest, from the cache.
    let plan = outpost(&["plan".as_ref(), image.as_os_str(), "--cache".as_ref(), t.join("cache-a").as_os_str()]);
    let nginx_digest = by_name("pacs-nginx")["digest"].as_str().unwrap().to_string();
    assert!(plan.contains(&nginx_digest) && plan.contains("outpost-orthanc-pacs-orthanc.service → pacs-orthanc ports 8042,4242 after postgres"), "{plan}");

    boot(&t.join("cache-a"), &proj.join("qemu-tests/pacs-clinic.toml"), &raw, &t.join("vm-pacs"));

    // A registry on loopback: push the nginx image outpost built, pull it back by digest.
    let registry = Registry::start(t);
    let layout = t.join("cache-a/oci/images").join(nginx_digest.replace(':', "-"));
    let repo = format!("127.0.0.1:{}/outpost/pacs-nginx", registry.1);
    run("skopeo", &["copy".as_ref(), "--quiet".as_ref(), "--preserve-digests".as_ref(), "--dest-tls-verify=false".as_ref(), format!("oci:{}:image", layout.display()).as_ref(), format!("docker://{repo}:built").as_ref()]);
    let layer_toml = proj.join("layers/orthanc-pacs/layer.toml");
    let original = std::fs::read_to_string(&layer_toml).unwrap();
    let nginx_block = &original[original.find("[containers.pacs-nginx]").unwrap()..];
    let with_ref = |r: &str| original.replace(nginx_block, &format!("[containers.pacs-nginx]\nref = \"{r}\"\ntls-verify = false\n"));

    // Bad references fail in seconds, naming the layer and container.
    std::fs::write(&layer_toml, with_ref(&format!("{repo}:built"))).unwrap();
    let err = outpost_fails(&["plan".as_ref(), image.as_os_str()]);
    assert!(err.contains("containers.pacs-nginx.ref") && err.contains("names a tag"), "{err}");
    let unknown = format!("{repo}@sha256:{}", "0".repeat(64));
    for (reference, why) in [(unknown.as_str(), "unknown digest"), (&format!("127.0.0.1:1/outpost/pacs-nginx@{nginx_digest}"), "unreachable registry")] {
        std::fs::write(&layer_toml, with_ref(reference)).unwrap();
        let started = std::time::Instant::now();
        let err = outpost_fails(&["build".as_ref(), image.as_os_str(), "--out".as_ref(), t.join("pacs-bad").as_os_str(), "--cache".as_ref(), t.join("cache-a").as_os_str()]);
        assert!(err.contains("container `pacs-nginx` of layer `orthanc-pacs`"), "{why}: {err}");
        assert!(started.elapsed().as_secs() < 60, "{why}: the build failed only after {:?}", started.elapsed());
        assert!(!t.join("pacs-bad/pacs-clinic.raw").exists(), "{why}: a failed build left an output");
    }

    // Pinned by digest: the appliance holds the same image, recorded as pulled.
    std::fs::write(&layer_toml, with_ref(&format!("{repo}@{nginx_digest}"))).unwrap();
    let pulled = build(&t.join("cache-a"), &image, &t.join("pacs-pulled"));
    assert_eq!(names(&pulled["built_layers"]), ["orthanc-pacs"]);
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(t.join("pacs-pulled/manifest.json")).unwrap()).unwrap();
    let nginx = manifest["containers"].as_array().unwrap().iter().find(|c| c["name"] == "pacs-nginx").unwrap().clone();
    assert_eq!(nginx["digest"], nginx_digest.as_str());
    assert_eq!(nginx["source"], format!("registry {repo}@{nginx_digest}"));
    assert!(nginx["packages"].as_array().unwrap().iter().any(|p| p[0] == "nginx"), "the pulled image's packages are read from its dpkg status");
    // It runs: the appliance serves Orthanc through the pulled nginx, with the registry gone.
    drop(registry);
    let scenario = proj.join("qemu-tests/pacs-pulled.toml");
    std::fs::write(
        &scenario,
        format!(
            "version = 1\nimage = \"../images/pacs-clinic.toml\"\ntimeout = 900\nmemory = 1536\nverdict = \"OUTPOST-VERDICT: running\"\n\
             [[command]]\nrun = \"podman inspect --format '{{{{.ImageDigest}}}}' orthanc-pacs-nginx\"\nexpect = \"{nginx_digest}\"\n\
             [[http]]\nport = 80\npath = \"/system\"\ncontains = \"outpost PACS\"\n"
        ),
    )
    .unwrap();
    boot(&t.join("cache-a"), &scenario, &t.join("pacs-pulled/pacs-clinic.raw"), &t.join("vm-pacs-pulled"));
    std::fs::write(&layer_toml, original).unwrap();
}

#[path = "dicom_fixture.rs"]
mod dicom_fixture;

#[test]
fn dicom_fixture_is_the_generated_file() {
    let path = project().join("qemu-tests/files/outpost-test.dcm");
    let made = dicom_fixture::dicom();
    if std::env::var_os("OUTPOST_REGENERATE").is_some() {
        std::fs::write(&path, &made).unwrap();
    }
    assert_eq!(std::fs::read(&path).unwrap(), made, "{} is not what src/dicom_fixture.rs makes (OUTPOST_REGENERATE=1 rewrites it)", path.display());
    assert_eq!(&made[128..132], b"DICM");
    // Every element of the data set is padded to an even length.
    assert_eq!(made.len() % 2, 0);
    let _ = (dicom_fixture::STUDY_UID, dicom_fixture::SERIES_UID, dicom_fixture::PATIENT_ID);
}
