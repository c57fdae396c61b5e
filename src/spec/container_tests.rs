//! Containers and compose stacks in layer definitions: what is accepted, and the errors that
//! name the file and key.

use std::path::Path;

use super::compose::{Mount, Restart, parse_duration};
use super::container::Source;
use super::*;

fn write(dir: &Path, rel: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(rel);
    fs_err::create_dir_all(p.parent().unwrap()).unwrap();
    fs_err::write(&p, text).unwrap();
    p
}

const COMPOSE: &str = r#"
services:
  db:
    image: db-image
    environment:
      POSTGRES_PASSWORD: secret
      PORT: 5432
    volumes: ["data:/var/lib/db"]
    healthcheck:
      test: ["CMD", "pg_isready"]
      interval: 5s
      start_period: 1m30s
    restart: always
  web:
    image: registry.example.org/web@sha256:0000000000000000000000000000000000000000000000000000000000000000
    depends_on:
      db:
        condition: service_healthy
    volumes: ["./web.conf:/etc/web.conf:ro"]
    ports: ["8080:8080", 9000]
    command: serve --port 8080
volumes:
  data:
"#;

fn layer_with(dir: &Path, toml_extra: &str, compose: &str) -> Result<Layer, SpecError> {
    write(dir, "l/compose/web.conf", "x\n");
    write(dir, "l/compose/compose.yaml", compose);
    write(dir, "l/layer.toml", &format!("version = 1\ndepends = [\"containers\"]\ncompose = \"compose/compose.yaml\"\n{toml_extra}"));
    Layer::load(&dir.join("l"), "debian")
}

const CONTAINERS: &str = r#"
[containers.db-image]
packages = ["postgresql"]
entrypoint = ["/usr/local/bin/run"]
ports = [5432]
volumes = ["/var/lib/db"]

[containers.web]
ref = "registry.example.org/web@sha256:0000000000000000000000000000000000000000000000000000000000000000"
"#;

#[test]
fn a_layer_with_containers_and_a_stack() {
    let tmp = tempfile::tempdir().unwrap();
    let l = layer_with(tmp.path(), CONTAINERS, COMPOSE).unwrap();
    assert_eq!(l.containers.len(), 2);
    assert!(matches!(&l.containers[0].source, Source::Packages { packages, .. } if packages == &["postgresql"]));
    assert_eq!(l.containers[1].store_name(), "localhost/outpost/web:latest");
    // The compose file and what it mounts are part of the layer's cache key.
    assert!(l.inputs.iter().any(|p| p.ends_with("compose.yaml")) && l.inputs.iter().any(|p| p.ends_with("web.conf")));
    let s = l.stack.unwrap();
    assert_eq!(s.name, "l");
    let db = &s.services[0];
    assert_eq!(db.environment["PORT"], "5432");
    assert_eq!(db.restart, Restart::Always);
    let h = db.health.as_ref().unwrap();
    assert_eq!((h.test.clone(), h.interval_s, h.start_period_s, h.retries), (vec!["pg_isready".to_string()], 5, 90, 3));
    assert_eq!(db.mounts, vec![Mount::Volume { name: "data".into(), target: "/var/lib/db".into(), read_only: false }]);
    let web = &s.services[1];
    assert_eq!(web.depends_on, ["db"]);
    assert_eq!(web.ports, [(8080, 8080), (9000, 9000)]);
    assert_eq!(web.command.as_deref().unwrap(), ["serve", "--port", "8080"]);
    assert_eq!(web.restart, Restart::No);
}

#[test]
fn durations() {
    assert_eq!(parse_duration("10s"), Some(10));
    assert_eq!(parse_duration("1m30s"), Some(90));
    assert_eq!(parse_duration("500ms"), Some(1));
    assert_eq!(parse_duration("2h"), Some(7200));
    assert_eq!(parse_duration("10"), None);
    assert_eq!(parse_duration("5x"), None);
}

#[test]
fn container_errors_name_the_key() {
    let cases: &[(&str, &str)] = &[
        ("[containers.x]\nref = \"docker.io/library/postgres:16\"\n", "key `containers.x.ref`: `docker.io/library/postgres:16` names a tag"),
        ("[containers.x]\nref = \"example.org/a@sha256:abc\"\n", "is not a sha256 digest"),
        ("[containers.x]\nref = \"example.org/a@sha256:0000000000000000000000000000000000000000000000000000000000000000\"\npackages = [\"a\"]\n", "give exactly one source"),
        ("[containers.x]\narchive = \"missing.tar\"\n", "missing.tar does not exist"),
        ("[containers.x]\nref = \"example.org/a:1\"\nallow-tag = true\nuser = \"nobody\"\n", "describe an image outpost builds"),
        ("[containers.x]\npackages = [\"nginx\"]\n", "key `containers.x.entrypoint`"),
        ("[containers.Bad_Name]\npackages = [\"nginx\"]\ncmd = [\"nginx\"]\n", "key `containers.Bad_Name`"),
        ("[containers.x]\npackages = [\"nginx\"]\ncmd = [\"nginx\"]\ncolour = 1\n", "unknown field `colour`"),
    ];
    for (extra, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "l/layer.toml", &format!("version = 1\n{extra}"));
        let err = Layer::load(&tmp.path().join("l"), "debian").unwrap_err().to_string();
        assert!(err.contains(want), "for {extra:?}: wanted {want:?} in:\n{err}");
        assert!(err.contains("layer.toml"), "{err}");
    }
    // A tag is taken when the definition says so.
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "l/layer.toml", "version = 1\n[containers.x]\nref = \"example.org/a:1\"\nallow-tag = true\n");
    assert!(Layer::load(&tmp.path().join("l"), "debian").is_ok());
}

#[test]
fn compose_errors_name_the_file_and_key() {
    let cases: &[(&str, &str)] = &[
        ("services:\n  a:\n    image: x\n    links: [b]\n", "key `services.a.links`: refused: services of a stack find each other by name"),
        ("services:\n  a:\n    build: .\n", "key `services.a.build`: refused: an appliance is built offline"),
        ("services:\n  a:\n    image: x\n    privileged: true\n", "key `services.a.privileged`: refused"),
        ("services:\n  a:\n    image: x\n    devices: [\"/dev/sda:/dev/sda\"]\n", "key `services.a.devices`: refused"),
        ("services:\n  a:\n    image: x\n    colour: red\n", "key `services.a.colour`: not a Compose key outpost takes"),
        ("services:\n  a:\n    image: x\n    cap_add: [SYS_ADMIN]\n", "key `services.a.cap_add`: refused"),
        ("services:\n  a:\n    image: x\n    volumes: [\"/srv/data:/data\"]\n", "key `services.a.volumes[0]`"),
        ("services:\n  a:\n    image: x\n    volumes: [\"undeclared:/data\"]\n", "volume `undeclared` is not declared"),
        ("services:\n  a:\n    image: x\n    depends_on: [b]\n", "`b` is not a service of this stack's files"),
        ("services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n", "depends_on makes a cycle"),
        ("services:\n  a:\n    image: x\n    restart: sometimes\n", "key `services.a.restart`"),
        ("services:\n  a:\n    image: x\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: soon\n", "key `services.a.healthcheck.interval`"),
        ("services:\n  a:\n    image: x\n    command: sh -c 'echo\n", "an unclosed quote"),
        ("services:\n  a:\n    image: x\n    environment: [\"PW=${DB_PW:?give the database a password}\"]\n", "key `services.a.environment[0]`: variable `DB_PW` is required (`:?`) and neither the layer's env file nor its secrets"),
        ("services:\n  a:\n    image: \"${IMAGE:?which image}\"\n", "key `services.a.image`: variable `IMAGE` is required (which image)"),
        ("services:\n  a:\n    image: x\n    ports: [\"${PORT:-80:80\"]\n", "key `services.a.ports[0]`: `${PORT` is never closed"),
        ("services:\n  a:\n    image: x\n    environment: {A: \"cost: 5$\"}\n", "key `services.a.environment.A`: a `$` at character"),
        ("services:\n  a:\n    image: x\n    ports: [\"80/udp\"]\n", "outpost publishes TCP ports"),
        ("secrets:\n  pw: {file: ./pw}\nservices:\n  a:\n    image: x\n", "key `secrets`: declare secrets in layer.toml"),
    ];
    for (compose, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let err = layer_with(tmp.path(), "", compose).unwrap_err().to_string();
        assert!(err.contains(want), "for {compose:?}: wanted {want:?} in:\n{err}");
        assert!(err.contains("compose.yaml"), "{err}");
    }
}

#[test]
fn service_names_follow_compose_not_systemd() {
    let tmp = tempfile::tempdir().unwrap();
    let l = layer_with(tmp.path(), "", "services:\n  postgres_keycloak:\n    image: x\n  keycloak.clinic.example:\n    image: x\n    depends_on: [postgres_keycloak]\n").unwrap();
    let names: Vec<String> = l.stack.unwrap().services.into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["postgres_keycloak", "keycloak.clinic.example"]);
    let tmp = tempfile::tempdir().unwrap();
    let err = layer_with(tmp.path(), "", "services:\n  -bad:\n    image: x\n").unwrap_err().to_string();
    assert!(err.contains("key `services.-bad`: service names are letters, digits"), "{err}");
}
