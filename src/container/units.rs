//! A compose stack as systemd units: one service per container, ordered by depends_on, held
//! back until its health check passes, restarted when it ends, its named volumes on the data
//! partition. A unit starts `outpost stack run`, which fills in the environment on the device
//! (per-device secrets, the site's variables) and becomes `podman run` with the arguments the
//! build fixed here (as `podman generate systemd --new` would write them).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result};

use crate::format::AGENT_PATH;
use crate::format::stack::{BRIDGE_ANNOTATION, GATEWAY_ANNOTATION, HOOKS_DIR, Published, RunSpec, STACK_DATA, StackSpec, TLS_DIR};
use crate::plan::BuildPlan;
use crate::spec::compose::{Mount, Restart, Service, Stack};
use crate::spec::container::Container;

pub use crate::format::stack::STACKS;
const UNIT_DIR: &str = "usr/lib/systemd/system";

pub use crate::spec::compose::{container_name, service_unit, volume_name};

/// The podman network of a stack.
pub fn network_name(stack: &str) -> String {
    format!("outpost-{stack}")
}

pub use crate::spec::compose::stack_subnet;

/// The bridge of a stack's network on the box (`podmanN`, as podman names them).
pub fn bridge_name(stack: &str) -> String {
    format!("podman{}", stack_subnet(stack))
}

/// The box's address on a stack's network: its containers' way out and their DNS.
pub fn gateway(stack: &str) -> String {
    format!("10.89.{}.1", stack_subnet(stack))
}

/// A stack's network (`10.89.N.0/24`).
pub fn subnet(stack: &str) -> String {
    format!("10.89.{}.0/24", stack_subnet(stack))
}

/// A service's address on its stack's network: fixed, so that a restarted container comes back
/// where the others (nginx, a JVM, anything that resolves a name once) still look for it.
pub fn service_address(stack: &Stack, service: &str) -> Ipv4Addr {
    let mut names: Vec<&str> = stack.services.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    let i = names.iter().position(|n| *n == service).expect("a service of the stack");
    // The compose parser refuses a stack of more than MAX_SERVICES (240).
    Ipv4Addr::new(10, 89, stack_subnet(&stack.name), u8::try_from(10 + i).expect("at most MAX_SERVICES services"))
}

pub use crate::format::stack::target_unit;

/// The container a compose `image:` names: by container name or by its reference.
pub fn find_image<'a>(plan: &'a BuildPlan, image: &str) -> Option<&'a Container> {
    plan.layers.iter().flat_map(|l| &l.layer.containers).find(|c| c.is_named_by(image))
}

/// Where the unit keeps the container's ID (systemd's `%t/%N.cid`).
fn cidfile(stack: &str, service: &str) -> String {
    format!("/run/{}.cid", service_unit(stack, service).trim_end_matches(".service"))
}

/// How long podman gives the container to stop (compose's default is 10 s; ours 20 s).
fn stop_time(s: &Service) -> u64 {
    s.stop_grace_s.unwrap_or(20)
}

/// What `podman run` is given for one service, but for the environment.
pub fn run_spec(stack: &Stack, s: &Service, image: &str) -> RunSpec {
    let name = container_name(&stack.name, &s.name);
    let mut args: Vec<String> = [
        "run",
        "--cgroups=no-conmon",
        "--sdnotify=conmon",
        "--rm",
        "--replace",
        "--detach",
        "--pull=never",
    ]
    .map(String::from)
    .to_vec();
    args.push(format!("--cidfile={}", cidfile(&stack.name, &s.name)));
    args.push(format!("--name={name}"));
    // The stack's own network: services find each other by their names (aardvark-dns), use
    // the ports their images expect, and only published ports reach the box's network.
    args.push(format!("--network={}", network_name(&stack.name)));
    let address = service_address(stack, &s.name);
    args.push(format!("--ip={address}"));
    // The network is internal (see write_network): outpost's OCI hook gives the container its
    // default route through the box.
    args.push(format!("--annotation={GATEWAY_ANNOTATION}={}", gateway(&stack.name)));
    args.push(format!("--annotation={BRIDGE_ANNOTATION}={}", bridge_name(&stack.name)));
    for n in std::iter::once(&s.name).chain(&s.aliases) {
        args.push(format!("--network-alias={n}"));
    }
    if let Some(h) = &s.hostname {
        args.push(format!("--hostname={h}"));
    }
    // Kept for `podman ps` and the reader of the unit: netavark ignores them on an internal
    // network, and the box's firewall forwards them (`publish` below).
    for (host, container) in &s.ports {
        args.push(format!("--publish={host}:{container}"));
    }
    for h in &s.extra_hosts {
        args.push(format!("--add-host={h}"));
    }
    let (mut data_dirs, mut volumes) = (Vec::new(), Vec::new());
    for m in &s.mounts {
        match m {
            Mount::Volume { name: v, target, read_only } => {
                args.push(format!("--volume={}:{target}{}", volume_name(&stack.name, v), if *read_only { ":ro" } else { "" }));
                volumes.push(volume_name(&stack.name, v));
            }
            Mount::File { source, target, read_only } => {
                let src = Path::new("/").join(STACKS).join(&stack.name).join(source);
                args.push(format!("--mount=type=bind,source={},destination={target}{}", src.display(), if *read_only { ",ro=true" } else { "" }));
            }
            Mount::Data { dir, target, read_only } => {
                args.push(format!("--mount=type=bind,source={STACK_DATA}/{}/{dir},destination={target}{}", stack.name, if *read_only { ",ro=true" } else { "" }));
                data_dirs.push(dir.clone());
            }
        }
    }
    let tls = stack.tls.get(&s.name);
    if let Some(dir) = tls {
        args.push(format!("--mount=type=bind,source={TLS_DIR},destination={dir},ro=true"));
    }
    if let Some(h) = &s.health {
        // As one shell command line: podman 4.3 splits the arguments of a JSON ["CMD", ...]
        // form at spaces again, which breaks any argument with a space in it.
        let shell = match h.test.as_slice() {
            [sh, c, line] if sh == "/bin/sh" && c == "-c" => line.clone(),
            argv => argv.iter().map(|a| crate::tool::shell_quote(a)).collect::<Vec<_>>().join(" "),
        };
        args.push(format!("--health-cmd={shell}"));
        // Podman's own timer would check from the start on: `outpost stack wait-healthy` checks
        // until it passes, then schedules the checks from the end of the boot on.
        args.push("--health-interval=disable".into());
        args.push(format!("--health-timeout={}s", h.timeout_s));
        args.push(format!("--health-retries={}", h.retries));
        args.push(format!("--health-start-period={}s", h.start_period_s));
    }
    if let Some(u) = &s.user {
        args.push(format!("--user={u}"));
    }
    if let Some(w) = &s.working_dir {
        args.push(format!("--workdir={w}"));
    }
    let l = &s.limits;
    args.extend(l.memory.iter().map(|m| format!("--memory={m}")));
    args.extend(l.cpus.iter().map(|c| format!("--cpus={c}")));
    args.extend(l.pids.iter().map(|n| format!("--pids-limit={n}")));
    args.extend(l.ulimits.iter().map(|u| format!("--ulimit={u}")));
    args.extend(l.shm_size.iter().map(|v| format!("--shm-size={v}")));
    args.push(format!("--stop-timeout={}", stop_time(s)));
    args.extend(s.stop_signal.iter().map(|v| format!("--stop-signal={v}")));
    args.extend(s.cap_add.iter().map(|c| format!("--cap-add={c}")));
    args.extend(s.cap_drop.iter().map(|c| format!("--cap-drop={c}")));
    args.extend(s.tmpfs.iter().map(|t| format!("--tmpfs={t}")));
    if s.init {
        args.push("--init".into());
    }
    if s.read_only {
        args.push("--read-only".into());
    }
    if let Some(e) = &s.entrypoint {
        args.push(format!("--entrypoint={}", serde_json::to_string(e).expect("strings")));
    }
    let mut tail = vec![image.to_string()];
    if let Some(c) = &s.command {
        tail.extend(c.iter().cloned());
    }
    let publish = s.ports.iter().map(|&(host, container)| Published { host, container }).collect();
    RunSpec { args, environment: s.environment.clone(), tail, data_dirs, volumes, subnet: subnet(&stack.name), address, publish, tls: tls.is_some() }
}

/// The unit file of one service.
pub fn render(stack: &Stack, s: &Service, image: &str) -> String {
    let name = container_name(&stack.name, &s.name);
    let mut u = String::new();
    let _ = writeln!(u, "# Written by outpost from {} (layer `{}`, service `{}`).", stack.files.iter().map(|f| f.file_name().unwrap_or_default().to_string_lossy()).collect::<Vec<_>>().join(" + "), stack.name, s.name);
    let _ = writeln!(u, "[Unit]");
    let _ = writeln!(u, "Description={} {} (container {image})", stack.name, s.name);
    let _ = writeln!(u, "PartOf={}", target_unit(&stack.name));
    // Container state, named volumes, secrets and logs live on the data partition.
    let _ = writeln!(u, "RequiresMountsFor=/var/lib/containers /var/lib/outpost");
    let deps: Vec<String> = s.depends_on.iter().map(|d| service_unit(&stack.name, d)).collect();
    let _ = writeln!(u, "After=network.target outpost-site.service{}", deps.iter().map(|d| format!(" {d}")).collect::<String>());
    if !deps.is_empty() {
        let _ = writeln!(u, "Wants={}", deps.join(" "));
    }
    // Restarting forever, however often: a clinic box has nobody to reset a failed unit.
    let _ = writeln!(u, "StartLimitIntervalSec=0");
    let _ = writeln!(u);
    let _ = writeln!(u, "[Service]");
    let _ = writeln!(u, "Type=notify");
    // The application is what the boot is for: ahead of what starts beside it (status page,
    // firewall, logins) until the boot is done.
    let _ = writeln!(u, "StartupCPUWeight=500");
    let _ = writeln!(u, "NotifyAccess=all");
    let _ = writeln!(u, "Environment=PODMAN_SYSTEMD_UNIT=%n");
    let _ = writeln!(u, "ExecStartPre=/bin/rm -f %t/%N.cid");
    let _ = writeln!(u, "ExecStart=/{AGENT_PATH} stack run {} {}", stack.name, s.name);
    if s.health.is_some() {
        // Dependents start once this one is healthy (compose's service_healthy).
        let _ = writeln!(u, "ExecStartPost=/{AGENT_PATH} stack wait-healthy {name} --timer {}", health_unit(&stack.name, &s.name, "timer"));
    }
    // `-`: a container that ended by itself (`--rm`) is gone already, which is not a failure.
    let _ = writeln!(u, "ExecStop=-/usr/bin/podman stop --ignore --time={} --cidfile=%t/%N.cid", stop_time(s));
    let _ = writeln!(u, "ExecStopPost=-/usr/bin/podman rm --force --ignore --time={} --cidfile=%t/%N.cid", stop_time(s));
    let restart = match s.restart {
        Restart::Always => "always",
        Restart::OnFailure => "on-failure",
        Restart::No => "no",
    };
    let _ = writeln!(u, "Restart={restart}");
    let _ = writeln!(u, "RestartSec=3");
    // First starts on a slow disk initialise databases.
    let _ = writeln!(u, "TimeoutStartSec=900");
    let _ = writeln!(u, "TimeoutStopSec={}", stop_time(s) + 40);
    u
}

/// `outpost-STACK-SERVICE-health.timer` or `.service`.
fn health_unit(stack: &str, service: &str, kind: &str) -> String {
    format!("{}-health.{kind}", service_unit(stack, service).trim_end_matches(".service"))
}

/// The periodic health checks of a service with one: a timer and the `podman healthcheck run`
/// it starts. Podman's own timer (`--health-interval`, which the run specification turns off)
/// runs them from the container's start on: in a later boot of the PACS box under emulation
/// PostgreSQL's (every 5 s) took 1-3 s of CPU each, once 20 s, beside the start of the rest of
/// the stack; and a check that failed left its transient unit failed, the whole system
/// `degraded` (the console's verdict, an update's probation) until the next one passed. This
/// timer is started by `outpost stack wait-healthy` once the container is healthy and waits for
/// the end of the boot (multi-user.target); it stops and restarts with the container's unit;
/// an unhealthy check (exit 1) is recorded by podman (`podman ps`), not a failed unit; nor is a
/// check that finds no container (exit 125): PartOf= stops the timer with a stop or restart job
/// of the container's unit, not during systemd's own restart after a crash (Restart=always).
fn render_health(stack: &Stack, s: &Service) -> Option<[(String, String); 2]> {
    let h = s.health.as_ref()?;
    let name = container_name(&stack.name, &s.name);
    let every = h.interval_s.max(1);
    let timer = format!(
        "# Written by outpost: the health checks of container {name} (layer `{stack}`, service `{service}`) from the end of the boot on, every {every} s.\n[Unit]\nDescription=health checks of container {name}\nPartOf={unit}\nAfter=multi-user.target\n\n[Timer]\n# The first check {every} s after the start, then {every} s after each ended.\nOnActiveSec={every}s\nOnUnitInactiveSec={every}s\nAccuracySec=1s\n",
        stack = stack.name,
        service = s.name,
        unit = service_unit(&stack.name, &s.name),
    );
    let service = format!(
        "# Written by outpost: one health check of container {name}.\n[Unit]\nDescription=health check of container {name}\n\n[Service]\nType=oneshot\nExecStart=/usr/bin/podman healthcheck run {name}\n# 1: unhealthy, which podman records; 125: no container to check, while systemd restarts it\n# after a crash (its own unit says so): neither a failure of the system.\nSuccessExitStatus=1 125\n# A line every few seconds for years, on the data partition.\nLogLevelMax=notice\n"
    );
    Some([(health_unit(&stack.name, &s.name, "timer"), timer), (health_unit(&stack.name, &s.name, "service"), service)])
}

/// The stack's podman network, defined in the image (netavark's format, as `podman network
/// create --subnet --internal` writes it, without a creation date; its bridge named `podmanN` as
/// podman names them, which the firewall lets through): podman finds it at every boot, where
/// making it would cost each boot two podman runs on the stack's critical path (/etc is rebuilt
/// in memory at every boot).
///
/// Internal, so that netavark writes no firewall rules: netavark 1.4 (Debian 12, Ubuntu 24.04)
/// runs `iptables` some 18 times per container start to set up the network's masquerading and
/// 17 more per published port, and as many again to take them down (measured in a booted PACS
/// box under TCG, a `podman run --rm` of `true` with one published port: 10.5-11.7 s on this
/// network as it was, 3.1-4.6 s internal, 2.4-2.7 s with no network). What those rules did is
/// done once per boot instead: the firewall
/// (`agent::firewall`) forwards the published ports and masquerades the containers' traffic out
/// in one nftables table made from the run specifications, and the OCI hook written here gives
/// each container its default route (`outpost stack network-hook`).
fn write_network(stack: &Stack, root: &Path) -> Result<()> {
    use sha2::Digest;
    let name = network_name(&stack.name);
    let config = serde_json::json!({
        "name": name,
        "id": hex::encode(sha2::Sha256::digest(name.as_bytes())),
        "driver": "bridge",
        "network_interface": bridge_name(&stack.name),
        "subnets": [{"subnet": subnet(&stack.name), "gateway": gateway(&stack.name)}],
        "ipv6_enabled": false,
        "internal": true,
        "dns_enabled": true,
        "ipam_options": {"driver": "host-local"},
    });
    let dir = root.join(crate::format::stack::NETWORKS);
    fs_err::create_dir_all(&dir)?;
    fs_err::write(dir.join(format!("{name}.json")), serde_json::to_vec_pretty(&config)?)?;
    // The hook, for containers annotated with their gateway (the stacks' own, not any other
    // container someone runs on the box). It runs once the container's network namespace is
    // set up, before its process starts.
    let hook = serde_json::json!({
        "version": "1.0.0",
        "hook": {
            "path": format!("/{AGENT_PATH}"),
            "args": ["outpost", "stack", "network-hook"],
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "when": {"annotations": {format!("^{}$", GATEWAY_ANNOTATION.replace('.', "\\.")): ".+"}},
        "stages": ["createRuntime"],
    });
    let dir = root.join(HOOKS_DIR);
    fs_err::create_dir_all(&dir)?;
    fs_err::write(dir.join("outpost-stack.json"), serde_json::to_vec_pretty(&hook)?)?;
    Ok(())
}

/// Writes the stack's units, target and files into the tree, and enables the target.
pub fn install(plan: &BuildPlan, stack: &Stack, root: &Path) -> Result<()> {
    let unit_dir = root.join(UNIT_DIR);
    fs_err::create_dir_all(&unit_dir)?;
    let files = root.join(STACKS).join(&stack.name);
    fs_err::create_dir_all(&files)?;
    for f in &stack.files {
        let name = f.file_name().context("a compose file has a name")?;
        fs_err::copy(f, files.join(name)).with_context(|| format!("copying {}", f.display()))?;
    }
    let spec = StackSpec { defaults: stack.defaults.clone(), secrets: stack.secrets.clone(), backup: stack.backup.clone() };
    fs_err::write(files.join("stack.json"), serde_json::to_vec_pretty(&spec)?)?;
    let mut wants = Vec::new();
    for s in &stack.services {
        let c = find_image(plan, &s.image).with_context(|| format!("{}: services.{}.image: `{}` is no container of the image", stack.file.display(), s.name, s.image))?;
        let unit = service_unit(&stack.name, &s.name);
        let p = unit_dir.join(&unit);
        fs_err::write(&p, render(stack, s, &c.store_name())).with_context(|| format!("writing {}", p.display()))?;
        for (unit, text) in render_health(stack, s).into_iter().flatten() {
            fs_err::write(unit_dir.join(&unit), text).with_context(|| format!("writing {unit}"))?;
        }
        let run = files.join(format!("{}.run.json", s.name));
        fs_err::write(&run, serde_json::to_vec_pretty(&run_spec(stack, s, &c.store_name()))?).with_context(|| format!("writing {}", run.display()))?;
        wants.push(unit);
        for m in &s.mounts {
            if let Mount::File { source, .. } = m {
                let from = stack.dir.join(source);
                let to = files.join(source);
                if let Some(parent) = to.parent() {
                    fs_err::create_dir_all(parent)?;
                }
                if from.is_dir() {
                    for rel in crate::spec::list_tree(&from) {
                        let (f, t) = (from.join(&rel), to.join(&rel));
                        if f.is_dir() {
                            fs_err::create_dir_all(&t)?;
                        } else {
                            fs_err::copy(&f, &t).with_context(|| format!("copying {}", f.display()))?;
                        }
                    }
                } else {
                    fs_err::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
                }
            }
        }
    }
    write_network(stack, root)?;
    let target = target_unit(&stack.name);
    let text = format!(
        "# Written by outpost: the stack of layer `{name}`.\n[Unit]\nDescription=container stack {name}\nWants={wants}\n\n[Install]\nWantedBy=multi-user.target\n",
        name = stack.name,
        wants = wants.join(" ")
    );
    fs_err::write(unit_dir.join(&target), text)?;
    let wants_dir = unit_dir.join("multi-user.target.wants");
    fs_err::create_dir_all(&wants_dir)?;
    let link = wants_dir.join(&target);
    if !link.is_symlink() {
        std::os::unix::fs::symlink(format!("../{target}"), &link)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The network comes with the image in the form podman reads, and the same at every build.
    #[test]
    fn the_stack_network_is_defined_in_the_image() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs_err::write(d.join("compose.yaml"), "services:\n  db:\n    image: db\n").unwrap();
        let mut p = crate::spec::Problems::default();
        let stack = crate::spec::compose::load("pacs", &d.join("layer.toml"), &[d.join("compose.yaml")], None, Default::default(), &mut p).unwrap();
        let root = d.join("root");
        write_network(&stack, &root).unwrap();
        let file = root.join("etc/containers/networks/outpost-pacs.json");
        let first = fs_err::read(&file).unwrap();
        let n: serde_json::Value = serde_json::from_slice(&first).unwrap();
        let sub = stack_subnet("pacs");
        assert_eq!(n["name"], "outpost-pacs");
        assert_eq!(n["driver"], "bridge");
        assert_eq!(n["dns_enabled"], true);
        assert_eq!(n["id"].as_str().unwrap().len(), 64);
        assert_eq!(n["subnets"][0]["subnet"], format!("10.89.{sub}.0/24"));
        assert_eq!(n["subnets"][0]["gateway"], format!("10.89.{sub}.1"));
        // Internal: netavark writes no firewall rules (agent::firewall forwards and masquerades).
        assert_eq!(n["internal"], true);
        assert_eq!(n["network_interface"], format!("podman{sub}"));
        // The hook that gives the stacks' containers, and only them, their default route.
        let hook: serde_json::Value = serde_json::from_slice(&fs_err::read(root.join(HOOKS_DIR).join("outpost-stack.json")).unwrap()).unwrap();
        assert_eq!(hook["hook"]["path"], "/usr/lib/outpost/outpost");
        assert_eq!(hook["hook"]["args"], serde_json::json!(["outpost", "stack", "network-hook"]));
        assert_eq!(hook["when"]["annotations"], serde_json::json!({"^outpost\\.gateway$": ".+"}));
        assert_eq!(hook["stages"], serde_json::json!(["createRuntime"]));
        write_network(&stack, &root).unwrap();
        assert_eq!(fs_err::read(&file).unwrap(), first, "not reproducible");
    }

    #[test]
    fn a_service_becomes_an_ordered_restarting_unit() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs_err::write(d.join("compose.yaml"), "services:\n  db:\n    image: db\n    environment: {PGPASSWORD: \"${DB_PW}\", JSON: \"{\\n  \\\"a\\\": 1\\n}\"}\n    volumes: [\"data:/var/lib/db\", \"./srv:/srv/data\"]\n    healthcheck:\n      test: [\"CMD-SHELL\", \"pg_isready -h 127.0.0.1\"]\n      interval: 5s\n    restart: always\n    stop_grace_period: 1m\n    deploy: {resources: {limits: {memory: 512m, cpus: \"0.5\"}}}\n  web:\n    image: web\n    hostname: www\n    ports: [\"8443:8080\"]\n    depends_on: {db: {condition: service_healthy}}\n    volumes: [\"./web.conf:/etc/web.conf:ro\"]\n    command: serve --port \"8080\"\n    restart: on-failure\nvolumes:\n  data:\n").unwrap();
        fs_err::write(d.join("web.conf"), "").unwrap();
        let mut p = crate::spec::Problems::default();
        let secrets = [("DB_PW".to_string(), crate::spec::compose::Secret { kind: crate::spec::compose::SecretKind::Alnum, length: 32 })].into();
        let stack = crate::spec::compose::load("pacs", &d.join("layer.toml"), &[d.join("compose.yaml")], None, secrets, &mut p).unwrap();
        assert!(p.0.is_empty(), "{:?}", p.0);
        let db = render(&stack, &stack.services[0], "localhost/outpost/db:latest");
        for line in [
            "PartOf=outpost-stack-pacs.target",
            "RequiresMountsFor=/var/lib/containers /var/lib/outpost",
            "StartLimitIntervalSec=0",
            "Restart=always",
            "Type=notify",
            "ExecStart=/usr/lib/outpost/outpost stack run pacs db",
            "ExecStartPost=/usr/lib/outpost/outpost stack wait-healthy pacs-db --timer outpost-pacs-db-health.timer",
            "ExecStop=-/usr/bin/podman stop --ignore --time=60 --cidfile=%t/%N.cid",
            "TimeoutStopSec=100",
        ] {
            assert!(db.lines().any(|l| l == line), "no `{line}` in\n{db}");
        }
        let run = run_spec(&stack, &stack.services[0], "localhost/outpost/db:latest");
        for arg in [
            "--cidfile=/run/outpost-pacs-db.cid",
            "--name=pacs-db",
            "--network=outpost-pacs",
            "--network-alias=db",
            &format!("--ip=10.89.{}.10", stack_subnet("pacs")),
            "--volume=pacs-data:/var/lib/db",
            "--mount=type=bind,source=/var/lib/outpost/stacks/pacs/srv,destination=/srv/data",
            "--health-cmd=pg_isready -h 127.0.0.1",
            "--health-interval=disable",
            "--memory=512m",
            "--cpus=0.5",
            "--stop-timeout=60",
        ] {
            assert!(run.args.iter().any(|a| a == arg), "no {arg} in {:?}", run.args);
        }
        // The environment as written: the device fills in the secret; lines stay lines.
        assert_eq!(run.environment["PGPASSWORD"], "${DB_PW}");
        assert_eq!(run.environment["JSON"], "{\n  \"a\": 1\n}");
        assert_eq!(run.data_dirs, ["srv"]);
        assert_eq!(run.tail, ["localhost/outpost/db:latest"]);
        let [(timer_name, timer), (check_name, check)] = render_health(&stack, &stack.services[0]).unwrap();
        assert_eq!((timer_name.as_str(), check_name.as_str()), ("outpost-pacs-db-health.timer", "outpost-pacs-db-health.service"));
        for want in ["\nPartOf=outpost-pacs-db.service\n", "\nAfter=multi-user.target\n", "\nOnActiveSec=5s\n", "\nOnUnitInactiveSec=5s\n"] {
            assert!(timer.contains(want), "{want} not in {timer}");
        }
        assert!(check.contains("\nExecStart=/usr/bin/podman healthcheck run pacs-db\n") && check.contains("\nSuccessExitStatus=1 125\n"), "{check}");
        assert!(render_health(&stack, &stack.services[1]).is_none());
        let web = render(&stack, &stack.services[1], "localhost/outpost/web:latest");
        assert!(web.contains("\nAfter=network.target outpost-site.service outpost-pacs-db.service\nWants=outpost-pacs-db.service\n"), "{web}");
        assert!(web.contains("\nRestart=on-failure\n") && !web.contains("wait-healthy"), "{web}");
        let run = run_spec(&stack, &stack.services[1], "localhost/outpost/web:latest");
        // The firewall's forwards, as numbers; the arguments say the same to podman.
        assert_eq!((run.address, run.publish.as_slice()), (Ipv4Addr::new(10, 89, stack_subnet("pacs"), 11), &[Published { host: 8443, container: 8080 }][..]));
        for arg in ["--network-alias=web", "--network-alias=www", "--hostname=www", &format!("--ip=10.89.{}.11", stack_subnet("pacs")), "--publish=8443:8080"] {
            assert!(run.args.iter().any(|a| a == arg), "no {arg} in {:?}", run.args);
        }
        assert!(run.args.contains(&"--mount=type=bind,source=/usr/lib/outpost/stacks/pacs/web.conf,destination=/etc/web.conf,ro=true".to_string()), "{:?}", run.args);
        // A one-line command is split as a shell would, quotes removed.
        assert_eq!(run.tail, ["localhost/outpost/web:latest", "serve", "--port", "8080"]);
    }
}
