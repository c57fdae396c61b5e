//! The corpus of broken definitions: each is refused before anything is built, with one
//! paragraph naming the file and the key, quoting at most a short excerpt of the value, and no
//! panic. A small good project is broken one way at a time.

use std::path::{Path, PathBuf};

use super::*;

fn write(dir: &Path, rel: &str, text: &[u8]) -> PathBuf {
    let p = dir.join(rel);
    fs_err::create_dir_all(p.parent().unwrap()).unwrap();
    fs_err::write(&p, text).unwrap();
    p
}

const RUNTIME: &str = "version = 1\n";
const IMAGE: &str = "version = 1\ndistro = \"debian\"\nlayers = [\"web\"]\nhostname = \"box\"\n";
const WEB: &str = "version = 1\ndepends = [\"containers\"]\ncompose = \"compose.yml\"\n[containers.app]\npackages = [\"nginx\"]\ncmd = [\"nginx\"]\n";
const COMPOSE: &str = "services:\n  web:\n    image: app\n    ports: [\"80\"]\n";

/// The good project; `edit` breaks it.
fn plan_with(edit: impl FnOnce(&Path)) -> Result<BuildPlan, String> {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "layers/containers/layer.toml", RUNTIME.as_bytes());
    write(d, "layers/web/layer.toml", WEB.as_bytes());
    write(d, "layers/web/compose.yml", COMPOSE.as_bytes());
    write(d, "images/x.toml", IMAGE.as_bytes());
    edit(d);
    let image = Image::load(&d.join("images/x.toml")).map_err(|e| e.to_string())?;
    resolve(&image).map_err(|e| e.to_string())
}

#[test]
fn the_good_project_plans() {
    plan_with(|_| {}).unwrap();
}

#[test]
fn every_broken_definition_is_refused_naming_file_and_key() {
    let big = "x".repeat(1 << 20);
    type Edit = Box<dyn Fn(&Path)>;
    let image = |text: String| -> Edit { Box::new(move |d: &Path| drop(write(d, "images/x.toml", text.as_bytes()))) };
    let web = |text: String| -> Edit { Box::new(move |d: &Path| drop(write(d, "layers/web/layer.toml", text.as_bytes()))) };
    let compose = |text: String| -> Edit { Box::new(move |d: &Path| drop(write(d, "layers/web/compose.yml", text.as_bytes()))) };
    // (what, the edit, the file named, what the message must contain)
    let cases: Vec<(&str, Edit, &str, &str)> = vec![
        ("a layer outside layers/", image(IMAGE.replace("[\"web\"]", "[\"..\"]")), "images/x.toml", "key `layers[0]`"),
        ("a suite that is a path", image(format!("{IMAGE}suite = \"../../etc\"\n")), "images/x.toml", "key `suite`"),
        ("an Ubuntu suite for Debian", image(format!("{IMAGE}suite = \"noble\"\n")), "images/x.toml", "is an Ubuntu release"),
        ("a newline in the command line", image(format!("{IMAGE}cmdline = \"quiet\\ninit=/bin/sh\"\n")), "images/x.toml", "key `cmdline`"),
        ("a NUL in the command line", image(format!("{IMAGE}cmdline = \"quiet\\u0000\"\n")), "images/x.toml", "key `cmdline`"),
        ("a root partition of 0", image(format!("{IMAGE}[partitions]\nroot = \"0\"\n")), "images/x.toml", "key `partitions.root`"),
        ("a data partition of 16000000T", image(format!("{IMAGE}[partitions]\ndata = \"16000000T\"\n")), "images/x.toml", "key `partitions.data`"),
        ("a size that overflows", image(format!("{IMAGE}[partitions]\ndata = \"99999999999999999999T\"\n")), "images/x.toml", "partitions.data"),
        ("a wrong type, with its key", image(format!("{IMAGE}[partitions]\nesp = 5\n")), "images/x.toml", "key `partitions.esp`"),
        ("not UTF-8", Box::new(|d: &Path| drop(write(d, "images/x.toml", b"version = 1\nhostname = \"b\xffx\"\n"))), "images/x.toml", "line 2: the file is not UTF-8"),
        ("a 1 MB value is not echoed", image(format!("{IMAGE}mirror = \"{big}\"\n")), "images/x.toml", "key `mirror`"),
        ("a compose file outside the layer", web(WEB.replace("compose.yml", "../../../etc/hostname")), "layers/web/layer.toml", "key `compose`: `../../../etc/hostname` leaves the layer's directory"),
        ("an absolute compose path", web(WEB.replace("compose.yml", "/etc/hostname")), "layers/web/layer.toml", "leaves the layer's directory"),
        (
            "a compose file linked from outside",
            Box::new(|d: &Path| {
                write(d, "outside.yml", COMPOSE.as_bytes());
                fs_err::remove_file(d.join("layers/web/compose.yml")).unwrap();
                std::os::unix::fs::symlink(d.join("outside.yml"), d.join("layers/web/compose.yml")).unwrap();
            }),
            "layers/web/layer.toml",
            "outside the layer's directory",
        ),
        ("a container archive outside the layer", web(format!("{}[containers.other]\narchive = \"../x.tar\"\n", WEB)), "layers/web/layer.toml", "key `containers.other.archive`"),
        ("a newline in a container ref", web(format!("{}[containers.other]\nref = \"r.example/a@sha256:{}\\nx\"\n", WEB, "0".repeat(64))), "layers/web/layer.toml", "key `containers.other.ref`"),
        ("a unit name with a space", web(WEB.replace("compose = \"compose.yml\"\n", "compose = \"compose.yml\"\nunits = [\"a b.service\"]\n")), "layers/web/layer.toml", "key `units[0]`"),
        (
            "a layer name with a space",
            Box::new(|d: &Path| {
                write(d, "layers/clinic stack/layer.toml", RUNTIME.as_bytes());
                write(d, "images/x.toml", IMAGE.replace("[\"web\"]", "[\"clinic stack\"]").as_bytes());
            }),
            "images/x.toml",
            "key `layers[0]`",
        ),
        (
            "a file name with a newline",
            Box::new(|d: &Path| drop(write(d, "layers/web/files/etc/a\nb", b"x"))),
            "layers/web/files/etc/a",
            "control character",
        ),
        ("port 0", compose(COMPOSE.replace("[\"80\"]", "[\"0\"]")), "layers/web/compose.yml", "key `services.web.ports[0]`"),
        ("a YAML alias bomb", compose(format!("x-a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\nx-b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nx-c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nx-d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\nx-e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nx-f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\nx-g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nx-h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n{COMPOSE}")), "layers/web/compose.yml", "repetition limit exceeded"),
        ("a huge compose file", compose(format!("{COMPOSE}# {}\n", "y".repeat(2 << 20))), "layers/web/compose.yml", "at most 262144"),
        (
            "two layers whose service names meet",
            Box::new(|d: &Path| {
                write(d, "layers/web/compose.yml", b"services:\n  b-web:\n    image: app\n");
                write(d, "layers/web-b/layer.toml", b"version = 1\ndepends = [\"web\"]\ncompose = \"compose.yml\"\n");
                write(d, "layers/web-b/compose.yml", b"services:\n  web:\n    image: app\n");
                write(d, "images/x.toml", IMAGE.replace("[\"web\"]", "[\"web-b\"]").as_bytes());
            }),
            "compose.yml",
            "gives the container and unit name `web-b-web`",
        ),
    ];
    for (what, edit, file, want) in cases {
        let err = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plan_with(edit))) {
            Ok(Ok(_)) => panic!("{what}: accepted"),
            Ok(Err(e)) => e,
            Err(_) => panic!("{what}: panicked"),
        };
        assert!(err.contains(file) && err.contains(want), "{what}: wanted {file} and {want:?} in:\n{err}");
        assert!(err.len() < 4000, "{what}: a message of {} bytes", err.len());
    }
}
