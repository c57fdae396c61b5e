//! An image outpost built, pushed to a registry on loopback (Debian's docker-registry), pulled
//! back by digest into the PACS appliance through a mirror setting (the reference names an
//! upstream registry the build cannot reach; containers-registries.conf points it at the
//! loopback one), which then serves through it with the registry gone; and references a build
//! must refuse, in seconds, naming the layer and container.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, build_env, names, outpost_fails, run};

/// A registry on loopback, stopped when dropped.
struct Registry(Child, u16);

impl Registry {
    fn start(dir: &Path) -> Registry {
        support::ensure_tool("docker-registry", "docker-registry");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port();
        let config = dir.join("registry.yml");
        fs_err::write(&config, format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n", dir.join("registry").display())).expect("writing the registry's configuration");
        let child = Command::new("docker-registry").arg("serve").arg(&config).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("starting docker-registry");
        let up = support::wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
        assert!(up.is_some(), "docker-registry did not listen on port {port}");
        Registry(child, port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn pacs_pulled_by_digest() {
    let a = support::shared("pacs-clinic");
    let manifest = a.manifest();
    let nginx_digest = manifest["containers"].as_array().expect("containers").iter().find(|c| c["name"] == "pacs-nginx").expect("pacs-nginx")["digest"]
        .as_str()
        .expect("a digest")
        .to_string();
    let t = support::run_dir().join("registry");
    fs_err::create_dir_all(&t).expect("creating the registry's directory");
    let registry = Registry::start(&t);
    let layout = support::shared_cache().join("oci/images").join(nginx_digest.replace(':', "-"));
    let repo = format!("127.0.0.1:{}/outpost/pacs-nginx", registry.1);
    run("skopeo", &["copy".as_ref(), "--quiet".as_ref(), "--preserve-digests".as_ref(), "--dest-tls-verify=false".as_ref(), format!("oci:{}:image", layout.display()).as_ref(), format!("docker://{repo}:built").as_ref()]);

    let proj = support::project_copy("pulled");
    let image = proj.join("images/pacs-clinic.toml");
    let layer_toml = proj.join("layers/orthanc-pacs/layer.toml");
    let original = fs_err::read_to_string(&layer_toml).expect("reading the layer");
    let nginx_block = &original[original.find("[containers.pacs-nginx]").expect("the nginx container")..];
    let with_ref = |r: &str| original.replace(nginx_block, &format!("[containers.pacs-nginx]\nref = \"{r}\"\ntls-verify = false\n"));

    // Bad references fail in seconds, naming the layer and container.
    fs_err::write(&layer_toml, with_ref(&format!("{repo}:built"))).expect("writing the layer");
    let err = outpost_fails(&["plan".as_ref(), image.as_os_str()]);
    assert!(err.contains("containers.pacs-nginx.ref") && err.contains("names a tag"), "{err}");
    let unknown = format!("{repo}@sha256:{}", "0".repeat(64));
    let bad = t.join("out-bad");
    for (reference, why) in [(unknown.as_str(), "unknown digest"), (&format!("127.0.0.1:1/outpost/pacs-nginx@{nginx_digest}"), "unreachable registry")] {
        fs_err::write(&layer_toml, with_ref(reference)).expect("writing the layer");
        let _slot = support::build_slot();
        let started = Instant::now();
        let err = outpost_fails(&["build".as_ref(), image.as_os_str(), "--out".as_ref(), bad.as_os_str(), "--cache".as_ref(), support::shared_cache().as_os_str()]);
        assert!(err.contains("container `pacs-nginx` of layer `orthanc-pacs`"), "{why}: {err}");
        assert!(started.elapsed().as_secs() < 60, "{why}: the build failed only after {:?}", started.elapsed());
        assert!(!bad.join("pacs-clinic.raw").exists(), "{why}: a failed build left an output");
    }

    // Pinned by digest, named by its upstream registry, taken through the mirror: the appliance
    // holds the same image, recorded as pulled from the name the layer gives.
    let upstream = format!("registry.example/outpost/pacs-nginx@{nginx_digest}");
    let conf = t.join("registries.conf");
    fs_err::write(&conf, format!("[[registry]]\nprefix = \"registry.example\"\nlocation = \"registry.example\"\n[[registry.mirror]]\nlocation = \"127.0.0.1:{}\"\ninsecure = true\n", registry.1)).expect("writing registries.conf");
    let nginx_tail = &original[original.find("[containers.pacs-nginx]").expect("the nginx container")..];
    fs_err::write(&layer_toml, original.replace(nginx_tail, &format!("[containers.pacs-nginx]\nref = \"{upstream}\"\n"))).expect("writing the layer");
    let out = t.join("out-pulled");
    let pulled = build_env(&support::shared_cache(), &image, &out, &[("OUTPOST_REGISTRIES_CONF", conf.as_os_str())]);
    // The layer with the container, and the one above it (backup).
    assert_eq!(names(&pulled["built_layers"]), ["orthanc-pacs", "backup"]);
    let manifest = support::read_json(&out.join("manifest.json"));
    let nginx = manifest["containers"].as_array().expect("containers").iter().find(|c| c["name"] == "pacs-nginx").expect("pacs-nginx").clone();
    assert_eq!(nginx["digest"], nginx_digest.as_str());
    assert_eq!(nginx["source"], format!("registry {upstream}"));
    assert!(nginx["packages"].as_array().expect("packages").iter().any(|p| p[0] == "nginx"), "the pulled image's packages are read from its dpkg status");
    // It runs: the appliance serves Orthanc through the pulled nginx, with the registry gone.
    drop(registry);
    // A second appliance of the image, personalized for another clinic with the same
    // deployment CA: its own secret and certificate, trusted through the CA by its own name.
    // A replacement box of the same site: it restores the PACS clinic's backup, from its stick
    // and then from the site's server, with the site's backup key (the PACS clinic showed none
    // of its own), and serves the same study, byte for byte, each time. Before the server
    // restore the box's SSH key goes to the console, as an engineer reads it off the screen to
    // allow it on the server (the stand-in server allows what the console shows).
    let theirs = support::identity_of("pacs-clinic");
    let restore = match &theirs {
        Some(Some(_)) => {
            let vm = support::run_dir().join("vm-pacs-clinic/vm");
            // Its first boot's console, with what an attempt that stalled under TCG showed.
            let mut console = String::from_utf8_lossy(&fs_err::read(vm.join("console.log")).expect("the PACS clinic's first console")).into_owned();
            for n in 1..=2 {
                console += &String::from_utf8_lossy(&fs_err::read(vm.join(format!("console.stalled-{n}.log"))).unwrap_or_default());
            }
            assert!(
                !console.contains("BACKUP KEY of this appliance") && console.contains("backups are read with the SITE's backup key"),
                "the PACS clinic's first boot showed a backup key of its own, though its site gives one"
            );
            let key = fs_err::read_to_string(support::project().join("qemu-tests/keys/district.backup-key")).expect("the site's backup key");
            let study = format!(
                "[[command]]\nrun = \"rm -f /run/study.dcm; for i in $(seq 1 120); do curl -sf -o /run/study.dcm http://127.0.0.1/instances/{}/file && break; sleep 1; done; sha256sum < /run/study.dcm\"\nexpect = \"{}\"\ntimeout = 300\n",
                crate::dicom_fixture::INSTANCE_ID,
                support::sha(&support::project().join("qemu-tests/files/outpost-test.dcm")),
            );
            format!(
                "backup-disk = true\nbackup-disk-from = \"{}\"\nbackup-server-from = \"{}\"\n\
                 [[command]]\nrun = \"printf '%s\\\\n' '{}' > /run/backup-key && /usr/lib/outpost/outpost restore --key-file /run/backup-key --host pacs-clinic\"\nexpect = \"restore: done\"\ntimeout = 900\n\
                 {study}\
                 [[command]]\nrun = \"/usr/lib/outpost/outpost backup check > /dev/null 2>&1; printf 'outpost: backup: this box logs in to it as %s\\\\n' \\\"$(cut -d' ' -f1,2 /var/lib/outpost/backup/ssh/id_ed25519.pub)\\\" > /dev/console; echo shown\"\nexpect = \"shown\"\n\
                 [[command]]\nrun = \"/usr/lib/outpost/outpost restore --key-file /var/lib/outpost/backup/key --server --host pacs-clinic\"\nexpect = \"restore: done\"\ntimeout = 600\n\
                 {study}",
                vm.join("backup-disk.img").display(),
                vm.join("backup-server/files").display(),
                key.trim(),
            )
        }
        _ => String::new(),
    };
    fs_err::write(
        proj.join("sites/pacs-annex.toml"),
        "version = 1\nhostname = \"pacs-annex\"\n[backup]\nserver = \"sftp://root@10.0.2.100/clinics\"\nkey-file = \"../qemu-tests/keys/district.backup-key\"\n",
    )
    .expect("writing the site");
    let scenario = proj.join("qemu-tests/pacs-pulled.toml");
    fs_err::write(
        &scenario,
        format!(
            "version = 1\nimage = \"../images/pacs-clinic.toml\"\nsite = \"../sites/pacs-annex.toml\"\ndeployment-ca = true\ntimeout = 900\nmemory = 1536\nverdict = \"OUTPOST-VERDICT: running\"\n{restore}\
             [[command]]\nrun = \"podman inspect --format '{{{{.ImageDigest}}}}' orthanc-pacs-nginx\"\nexpect = \"{nginx_digest}\"\n\
             [[command]]\nrun = \"echo identity secret=$(sha256sum < /var/lib/outpost/secrets/orthanc-pacs/ORTHANC_DB_PASSWORD | cut -c1-16) cert=$(openssl x509 -noout -fingerprint -sha256 -in /var/lib/outpost/tls/cert.pem | cut -d= -f2)\"\nexpect = \"identity secret=\"\n\
             [[http]]\nport = 80\npath = \"/system\"\ncontains = \"outpost PACS\"\n\
             [[http]]\nport = 443\npath = \"/system\"\ntls-name = \"pacs-annex\"\ncontains = \"outpost PACS\"\n"
        ),
    )
    .expect("writing the scenario");
    let report = support::boot(&scenario, &out.join("pacs-clinic.raw"), &t.join("vm"));
    let mine = support::identity_in(&report);
    match theirs {
        None => eprintln!("registry: the secret and certificate were not compared with the PACS clinic's (scenario::pacs-clinic is not in this run)"),
        Some(None) => panic!("scenario::pacs-clinic failed before it reported its secret and certificate, so two appliances could not be compared"),
        Some(Some(theirs)) => {
            let field = |id: &str, k: &str| id.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap_or_else(|| panic!("no `{k}` in `{id}`")).to_string();
            for k in ["secret=", "cert="] {
                assert!(!field(&mine, k).is_empty() && field(&mine, k) != field(&theirs, k), "two appliances of one image share their {k} ({mine} / {theirs})");
            }
        }
    }
}
