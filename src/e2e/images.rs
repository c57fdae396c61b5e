//! One reproducibility test per image: the shared build against an independent build from a
//! second cache (every layer and container image made again from nothing; for the clinic PC,
//! whose layers are the Debian test image's, its outputs written again), byte for byte; and
//! what each image's outputs promise (manifest, checksums, valid disks, the cache's reuse).

use std::path::Path;

use crate::support::{self, build, names, run, sha};

/// Builds `images/NAME.toml` in the second cache and compares every output with the shared one.
fn same_bytes_from_a_second_cache(name: &str) -> support::Built {
    same_bytes_again(name, &support::second_cache())
}

/// Builds `images/NAME.toml` again through `cache` and compares every output with the shared
/// build's.
fn same_bytes_again(name: &str, cache: &Path) -> support::Built {
    let a = support::shared(name);
    let out = support::run_dir().join(format!("out-{name}-second"));
    let report = build(cache, &support::project().join(format!("images/{name}.toml")), &out);
    if cache == support::shared_cache() {
        assert!(names(&report["built_layers"]).is_empty(), "the second build of {name} rebuilt layers: {report:#}");
    }
    for o in a.report["outputs"].as_array().expect("outputs") {
        let file = o["file"].as_str().expect("a file name");
        assert_eq!(sha(&a.out.join(file)), sha(&out.join(file)), "two builds of {name} differ in {file}");
    }
    a
}

pub fn debian_base() {
    let a = same_bytes_from_a_second_cache("debian-base");
    let mut files: Vec<String> = fs_err::read_dir(&a.out).expect("reading the output").map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, ["SHA256SUMS", "debian-base.qcow2", "debian-base.raw", "debian-base.raw.bmap", "manifest.json"]);
    let raw = a.file("raw");
    let qcow = a.file("qcow2");

    // Fully cached: the root is laid down from the cache, and still the same bytes.
    let c = build(&support::shared_cache(), &support::project().join("images/debian-base.toml"), &support::run_dir().join("out-debian-base-cached"));
    assert!(names(&c["built_layers"]).is_empty(), "{c:#}");
    assert_eq!(sha(&raw), sha(&support::run_dir().join("out-debian-base-cached/debian-base.raw")), "a cached build differs from a cold one");

    // SHA256SUMS and the manifest agree with the files.
    assert_eq!(a.listed_sha("raw"), sha(&raw));
    let manifest = a.manifest();
    assert_eq!(manifest["suite"], "bookworm");
    // The root hash the device checks every block against is the one on the command line.
    let root_hash = manifest["root_hash"].as_str().expect("root_hash");
    assert_eq!(root_hash.len(), 64);
    assert!(manifest["kernel_cmdline"].as_str().expect("kernel_cmdline").contains(&format!(",{root_hash} ")), "{manifest:#}");
    let pkgs = manifest["packages"].as_array().expect("packages");
    for p in ["systemd", "qemu-guest-agent", "openssh-server", "cryptsetup-bin"] {
        assert!(pkgs.iter().any(|x| x["name"] == p), "{p} is not in the manifest");
    }

    // The disk is valid for the tools users check it with.
    support::ensure_tool("sgdisk", "gdisk");
    assert!(run("qemu-img", &["check".as_ref(), qcow.as_os_str()]).contains("No errors were found"));
    assert!(run("sgdisk", &["-v".as_ref(), raw.as_os_str()]).contains("No problems found"));

    // Edit one file of the top layer: only that layer is rebuilt.
    let proj = support::project_copy("edited");
    let page = proj.join("layers/status-page/files/usr/lib/outpost/status-page.html.tera");
    let text = fs_err::read_to_string(&page).expect("reading the status page").replace("<h1>", "<h1 class=\"edited\">");
    fs_err::write(&page, text).expect("writing the status page");
    let d = build(&support::shared_cache(), &proj.join("images/debian-base.toml"), &support::run_dir().join("out-debian-base-edited"));
    assert_eq!(names(&d["built_layers"]), ["status-page"]);
    assert_eq!(names(&d["reused_layers"]), ["base", "appliance", "vm-guest", "site-agent", "record-store"]);
    assert_ne!(sha(&raw), sha(&support::run_dir().join("out-debian-base-edited/debian-base.raw")));
}

/// `outpost personalize`: the original stays as it was, the copy differs only in the seed.
pub fn personalize_raw() {
    let a = support::shared("debian-base");
    let raw = a.file("raw");
    let copy = support::run_dir().join("clinic-kisumu.raw");
    let site = support::project().join("sites/example-static.toml");
    support::outpost(&["personalize".as_ref(), raw.as_os_str(), "--site".as_ref(), site.as_os_str(), "--out".as_ref(), copy.as_os_str()]);
    assert_eq!(sha(&raw), a.listed_sha("raw"), "personalize changed the original image");
    let manifest = a.manifest();
    let seed = manifest["partitions"].as_array().expect("partitions").iter().find(|p| p["label"] == "seed").expect("a seed partition").clone();
    let (start, end) = (seed["first_lba"].as_u64().expect("first_lba") * 512, (seed["last_lba"].as_u64().expect("last_lba") + 1) * 512);
    let (x, y) = (fs_err::read(&raw).expect("reading the image"), fs_err::read(&copy).expect("reading the copy"));
    assert_eq!(x.len(), y.len());
    let differ: Vec<usize> = (0..x.len()).step_by(4096).filter(|&i| x[i..(i + 4096).min(x.len())] != y[i..(i + 4096).min(y.len())]).collect();
    assert!(!differ.is_empty(), "the personalized copy is the same as the image");
    for i in differ {
        assert!((start as usize..end as usize).contains(&i), "the personalized copy differs outside the seed partition, at byte {i}");
    }
}

pub fn pacs_clinic() {
    let a = same_bytes_from_a_second_cache("pacs-clinic");
    // Filling the container store mounted nothing that outlived the build.
    let mounts = run("findmnt", &["-rn".as_ref(), "-o".as_ref(), "TARGET".as_ref()]);
    assert!(!mounts.lines().any(|m| Path::new(m).starts_with(support::run_dir())), "mounts left under {}:\n{mounts}", support::run_dir().display());
    // The SBOM: every container with its source, digest and packages.
    let manifest = a.manifest();
    let containers = manifest["containers"].as_array().expect("containers");
    let by_name = |n: &str| containers.iter().find(|c| c["name"] == n).unwrap_or_else(|| panic!("{n} is not in the manifest")).clone();
    for (name, package) in [("pacs-orthanc", "orthanc"), ("pacs-postgres", "postgresql-15"), ("pacs-nginx", "nginx")] {
        let c = by_name(name);
        assert_eq!(c["source"], "built from packages of debian bookworm");
        assert!(c["digest"].as_str().expect("a digest").starts_with("sha256:"));
        assert!(c["packages"].as_array().expect("packages").iter().any(|p| p[0] == package), "{name} does not list {package}");
    }
    // `outpost plan` now knows each digest, from the cache.
    let image = support::project().join("images/pacs-clinic.toml");
    let plan = support::outpost(&["plan".as_ref(), image.as_os_str(), "--cache".as_ref(), support::shared_cache().as_os_str()]);
    let nginx_digest = by_name("pacs-nginx")["digest"].as_str().expect("a digest").to_string();
    assert!(plan.contains(&nginx_digest) && plan.contains("outpost-orthanc-pacs-orthanc.service → pacs-orthanc ports 4242 after postgres"), "{plan}");
}

/// The installer ISO with both boot records; the cloud images valid for qemu-img.
pub fn clinic_pc() {
    // Its layers are the Debian test image's with the generic kernel: those are shown
    // reproducible from nothing by `debian_base` (and the container images by `pacs_clinic`).
    // What is this image's own, its outputs (the root, the disk, the ISO, vmdk, vhd), is written
    // again from the shared cache and compared; a whole second cold build cost 5-6 minutes of
    // a CI run that has 60.
    let a = same_bytes_again("clinic-pc", &support::shared_cache());
    let iso = a.file("iso");
    let report = run("xorriso", &["-indev".as_ref(), iso.as_os_str(), "-report_el_torito".as_ref(), "plain".as_ref()]);
    assert!(report.contains("BIOS") && report.contains("UEFI"), "{report}");
    for (ext, fmt) in [("vmdk", "vmdk"), ("vhd", "vpc")] {
        let p = a.file(ext);
        let info = run("qemu-img", &["info".as_ref(), "-f".as_ref(), fmt.as_ref(), p.as_os_str()]);
        assert!(info.contains("virtual size:"), "{info}");
        if fmt == "vmdk" {
            assert!(run("qemu-img", &["check".as_ref(), "-f".as_ref(), fmt.as_ref(), p.as_os_str()]).contains("No errors"), "{ext}");
        }
    }
    let import = support::read_json(&a.file("ec2-import.json"));
    assert_eq!(import["BootMode"], "uefi", "{import:#}");
}
