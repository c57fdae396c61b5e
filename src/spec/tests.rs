use std::path::Path;

use super::*;
use super::image::Size;

fn write(dir: &Path, rel: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(rel);
    fs_err::create_dir_all(p.parent().unwrap()).unwrap();
    fs_err::write(&p, text).unwrap();
    p
}

const GOOD_IMAGE: &str = "version = 1\nlayers = [\"a\"]\nhostname = \"box\"\n";

#[test]
fn image_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(tmp.path(), "images/x.toml", GOOD_IMAGE);
    let i = Image::load(&f).unwrap();
    assert_eq!(i.name, "x");
    assert_eq!(i.distro.name(), "ubuntu");
    assert_eq!(i.suite, "noble");
    assert_eq!(i.partitions.esp.0, 256 << 20);
    assert_eq!(i.partitions.root, None);
    assert_eq!(i.outputs, vec![OutputFormat::Raw, OutputFormat::Qcow2]);
    assert_eq!(i.project, std::path::absolute(tmp.path()).unwrap());
    assert_eq!(i.data, DataPolicy { unlock: Unlock::Tpm2, no_tpm: NoTpm::Refuse, tpm2_pcrs: vec![] });
}

#[test]
fn image_data_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!("{GOOD_IMAGE}[data]\nunlock = \"usb-key\"\nno-tpm = \"usb-key\"\ntpm2-pcrs = [0, 7]\n");
    let i = Image::load(&write(tmp.path(), "images/x.toml", &text)).unwrap();
    assert_eq!(i.data, DataPolicy { unlock: Unlock::UsbKey, no_tpm: NoTpm::UsbKey, tpm2_pcrs: vec![0, 7] });
    for (bad, want) in [("tpm2-pcrs = [24]", "key `data.tpm2-pcrs`: PCR 24 does not exist"), ("unlock = \"fido\"", "unknown variant `fido`"), ("no-tpm = \"none\"", "unknown variant `none`")] {
        let f = write(tmp.path(), "images/y.toml", &format!("{GOOD_IMAGE}[data]\n{bad}\n"));
        let err = Image::load(&f).unwrap_err().to_string();
        assert!(err.contains(want), "for {bad}: wanted {want:?} in {err}");
    }
}

#[test]
fn image_errors_name_file_and_key() {
    // (definition, text the single error must contain)
    let cases: &[(&str, &str)] = &[
        ("version = 1\nlayers = [\"a\"]\nhostname = \"box\"\ncolour = 1\n", "unknown field `colour`"),
        ("version = 1\nlayers = \"a\"\nhostname = \"box\"\n", "line 2"),
        ("version = 2\nlayers = [\"a\"]\nhostname = \"box\"\n", "key `version`: version 2 is not supported"),
        ("version = 1\nlayers = [\"a\"]\nhostname = \"-bad\"\n", "key `hostname`"),
        ("version = 1\nlayers = [\"a\"]\nhostname = \"b\"\ndistro = \"arch\"\n", "unknown variant `arch`"),
        ("version = 1\nlayers = [\"a\"]\nhostname = \"b\"\n[partitions]\nroot = \"2X\"\n", "unknown size unit `X`"),
        ("version = 1\nlayers = [\"a\"]\nhostname = \"b\"\n[partitions]\nesp = \"1M\"\n", "key `partitions.esp`"),
        ("version = 1\nlayers = [\"a\"]\nhostname = \"b\"\nmirror = \"ftp://x\"\n", "key `mirror`"),
        ("version = 1\nlayers = []\nhostname = \"b\"\n", "key `layers`"),
        ("version = 1\nlayers = [\"a\"]\nhostname = \"b\"\n[variables]\nBad-Name = \"x\"\n", "key `variables.Bad-Name`"),
    ];
    for (text, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let f = write(tmp.path(), "images/x.toml", text);
        let err = Image::load(&f).unwrap_err().to_string();
        assert!(err.contains(want), "for {text:?}: wanted {want:?} in {err}");
        assert!(err.contains("x.toml"), "error does not name the file: {err}");
    }
}

#[test]
fn all_image_problems_are_reported_together() {
    let tmp = tempfile::tempdir().unwrap();
    let f = write(tmp.path(), "images/x.toml", "version = 3\nlayers = []\nhostname = \"a b\"\n");
    let err = Image::load(&f).unwrap_err();
    assert_eq!(err.0.len(), 3, "{err}");
}

#[test]
fn sizes() {
    for (s, want) in [("512M", Some(512 << 20)), ("2G", Some(2 << 30)), ("1GiB", Some(1 << 30)), ("4096", Some(4096)), ("1.5G", None), ("G", None)] {
        assert_eq!(Size::parse(s).ok().map(|s| s.0), want, "{s}");
    }
}

#[test]
fn layer_distro_parts_apply_only_to_their_distro() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "l/layer.toml",
        "version = 1\npackages = [\"a\"]\n[variables]\nk = \"x\"\n[distro.debian]\npackages = [\"deb-only\"]\n[distro.debian.variables]\nk = \"d\"\n",
    );
    let deb = Layer::load(&tmp.path().join("l"), "debian").unwrap();
    assert_eq!(deb.packages, vec!["a", "deb-only"]);
    assert_eq!(deb.variables["k"], "d");
    let ubu = Layer::load(&tmp.path().join("l"), "ubuntu").unwrap();
    assert_eq!(ubu.packages, vec!["a"]);
    assert_eq!(ubu.variables["k"], "x");
}

#[test]
fn layer_errors() {
    let cases: &[(&str, &str)] = &[
        ("version = 1\npackage = [\"a\"]\n", "unknown field `package`"),
        ("version = 1\nunits = [\"nginx\"]\n", "key `units[0]`"),
        ("version = 1\n[distro.arch]\npackages = []\n", "key `distro.arch`"),
        ("version = 1\n[distro.ubuntu.keyring]\nfile = \"nope.gpg\"\nfingerprint = \"12\"\n", "nope.gpg does not exist"),
        ("version = 1\n[distro.ubuntu.keyring]\nfile = \"nope.gpg\"\nfingerprint = \"12\"\n", "40-digit"),
    ];
    for (text, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "l/layer.toml", text);
        let err = Layer::load(&tmp.path().join("l"), "ubuntu").unwrap_err().to_string();
        assert!(err.contains(want), "for {text:?}: wanted {want:?} in {err}");
        assert!(err.contains("layer.toml"), "{err}");
    }
}

#[test]
fn scenario_resolves_image_relative_to_itself() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "images/x.toml", GOOD_IMAGE);
    let f = write(
        tmp.path(),
        "qemu-tests/x.toml",
        "version = 1\nimage = \"../images/x.toml\"\nverdict = \"OK\"\n[[command]]\nrun = \"true\"\n[[http]]\nport = 80\n",
    );
    let s = Scenario::load(&f).unwrap();
    assert!(s.image.ends_with("qemu-tests/../images/x.toml"));
    assert_eq!(s.timeout, 300);
    assert_eq!(s.boots[0].http[0].status, 200);
    assert!(s.tpm, "a TPM unless the scenario says otherwise");
    let bad = write(tmp.path(), "qemu-tests/y.toml", "version = 1\nimage = \"../images/none.toml\"\nverdict = \"\"\n");
    let err = Scenario::load(&bad).unwrap_err();
    assert_eq!(err.0.len(), 2, "{err}");
}

#[test]
fn scenario_reboots_and_power_cuts() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "images/x.toml", GOOD_IMAGE);
    let f = write(
        tmp.path(),
        "qemu-tests/x.toml",
        "version = 1\nimage = \"../images/x.toml\"\npower-cut-at = \"encrypting\"\n\
         [[reboot]]\nverdict = \"OK\"\n[[reboot.command]]\nrun = \"cat key\"\nsave-as = \"k\"\n\
         [[reboot.disk]]\npartition = \"data\"\nopens-with = \"k\"\n\
         [[reboot]]\ntpm = \"fresh\"\nverdict = \"DEGRADED\"\n\
         [[reboot]]\nverdict = \"OK\"\nplug-backup-disk-after-checks = true\npower-cut-at = \"writing\"\n[[reboot.command]]\nrun = \"true\"\n",
    );
    let s = Scenario::load(&f).unwrap();
    assert_eq!(s.boots.len(), 4);
    assert_eq!(s.boots[0].power_cut_at.as_deref(), Some("encrypting"));
    assert_eq!(s.boots[2].tpm, TpmState::Fresh);
    // A boot with a verdict and checks, cut once the stick plugged in after them writes.
    assert!(s.boots[3].hotplugs_backup_disk() && s.boots[3].power_cut_at.is_some() && !s.boots[3].verdict.is_empty());
    // (scenario body, the one problem it must report)
    let cases: &[(&str, &str)] = &[
        ("", "give the verdict line"),
        ("power-cut-at = \"x\"\n[[command]]\nrun = \"true\"\n", "key `power-cut-at`: a boot cut off before its verdict has no checks"),
        (
            "verdict = \"OK\"\n[[reboot]]\nverdict = \"OK\"\nplug-backup-disk-after-checks = true\n[[reboot.command]]\nrun = \"true\"\nplug-backup-disk = true\n",
            "key `reboot[0].plug-backup-disk-after-checks`: a command of this boot plugs the backup stick in already",
        ),
        ("verdict = \"OK\"\n[[disk]]\npartition = \"data\"\nopens-with = \"nothing\"\n", "key `disk[0].opens-with`: no command"),
        ("verdict = \"OK\"\ntpm = false\n[[reboot]]\ntpm = \"fresh\"\nverdict = \"OK\"\n", "key `reboot[0].tpm`"),
        ("verdict = \"OK\"\n[[reboot]]\nkey-disk = true\nverdict = \"OK\"\n", "key `reboot[0].key-disk`"),
        ("verdict = \"OK\"\n[[reboot]]\nupdate = true\nverdict = \"OK\"\n", "key `reboot[0].update`: the scenario has no `update-image`"),
        ("verdict = \"OK\"\nupdate-image = \"../images/none.toml\"\n", "key `update-image`"),
        ("verdict = \"OK\"\n[[reboot]]\nthief = \"usb-stick\"\nverdict = \"OK\"\n", "unknown variant `usb-stick`"),
    ];
    for (body, want) in cases {
        let f = write(tmp.path(), "qemu-tests/y.toml", &format!("version = 1\nimage = \"../images/x.toml\"\n{body}"));
        let err = Scenario::load(&f).unwrap_err();
        assert_eq!(err.0.len(), 1, "{body}: {err}");
        assert!(err.to_string().contains(want), "for {body:?}: wanted {want:?} in {err}");
    }
}
