//! A compose stack as systemd units: one service per container (podman run, the way
//! `podman generate systemd --new` writes it), ordered by depends_on, held back until its health
//! check passes, restarted when it ends, its named volumes on the data partition.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::plan::BuildPlan;
use crate::format::AGENT_PATH;
use crate::spec::compose::{Mount, Restart, Service, Stack};
use crate::spec::container::Container;

/// Where a stack's compose file and the files it mounts are kept in the image.
pub const STACKS: &str = "usr/lib/outpost/stacks";
const UNIT_DIR: &str = "usr/lib/systemd/system";

pub use crate::spec::compose::{container_name, service_unit, volume_name};

pub fn target_unit(stack: &str) -> String {
    format!("outpost-stack-{stack}.target")
}


/// The container a compose `image:` names: by container name or by its reference.
pub fn find_image<'a>(plan: &'a BuildPlan, image: &str) -> Option<&'a Container> {
    plan.layers.iter().flat_map(|l| &l.layer.containers).find(|c| c.is_named_by(image))
}

/// One argument of an Exec line, quoted for systemd (which also expands % and $).
fn quote(arg: &str) -> String {
    let escaped = arg.replace('\\', "\\\\").replace('"', "\\\"").replace('%', "%%").replace('$', "$$");
    if escaped.is_empty() || escaped.contains(|c: char| c.is_whitespace() || c == ';' || c == '\'') || escaped != arg {
        format!("\"{escaped}\"")
    } else {
        escaped
    }
}

/// The unit file of one service.
pub fn render(stack: &Stack, s: &Service, image: &str) -> String {
    let name = container_name(&stack.name, &s.name);
    // Quoted below; the fixed start keeps its systemd specifiers (%t, %N).
    const PODMAN_RUN: &str = "/usr/bin/podman run --cidfile=%t/%N.cid --cgroups=no-conmon --sdnotify=conmon --rm --replace --detach --pull=never --network=host";
    let mut args: Vec<String> = vec![format!("--name={name}")];
    // Services find each other by name, as on a compose network; here they share the host's.
    for other in &stack.services {
        args.push(format!("--add-host={}:127.0.0.1", other.name));
    }
    for (k, v) in &s.environment {
        args.push(format!("--env={k}={v}"));
    }
    for m in &s.mounts {
        match m {
            Mount::Volume { name: v, target, read_only } => {
                args.push(format!("--volume={}:{target}{}", volume_name(&stack.name, v), if *read_only { ":ro" } else { "" }));
            }
            Mount::File { source, target, read_only } => {
                let src = Path::new("/").join(STACKS).join(&stack.name).join(source);
                args.push(format!("--mount=type=bind,source={},destination={target}{}", src.display(), if *read_only { ",ro=true" } else { "" }));
            }
        }
    }
    if let Some(h) = &s.health {
        // As one shell command line: podman 4.3 splits the arguments of a JSON ["CMD", ...]
        // form at spaces again, which breaks any argument with a space in it.
        let shell = match h.test.as_slice() {
            [sh, c, line] if sh == "/bin/sh" && c == "-c" => line.clone(),
            argv => argv.iter().map(|a| crate::tool::shell_quote(a)).collect::<Vec<_>>().join(" "),
        };
        args.push(format!("--health-cmd={shell}"));
        args.push(format!("--health-interval={}s", h.interval_s));
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
    let mut tail: Vec<String> = Vec::new();
    if let Some(e) = &s.entrypoint {
        args.push(format!("--entrypoint={}", serde_json::to_string(e).expect("strings")));
    }
    tail.push(image.to_string());
    if let Some(c) = &s.command {
        tail.extend(c.iter().cloned());
    }
    args.extend(tail);

    let mut u = String::new();
    let _ = writeln!(u, "# Written by outpost from {} (layer `{}`, service `{}`).", stack.file.file_name().unwrap_or_default().to_string_lossy(), stack.name, s.name);
    let _ = writeln!(u, "[Unit]");
    let _ = writeln!(u, "Description={} {} (container {image})", stack.name, s.name);
    let _ = writeln!(u, "PartOf={}", target_unit(&stack.name));
    // Container state, named volumes and logs live on the data partition.
    let _ = writeln!(u, "RequiresMountsFor=/var/lib/containers");
    let deps: Vec<String> = s.depends_on.iter().map(|d| service_unit(&stack.name, d)).collect();
    let _ = writeln!(u, "After=network.target{}", deps.iter().map(|d| format!(" {d}")).collect::<String>());
    if !deps.is_empty() {
        let _ = writeln!(u, "Wants={}", deps.join(" "));
    }
    // Restarting forever, however often: a clinic box has nobody to reset a failed unit.
    let _ = writeln!(u, "StartLimitIntervalSec=0");
    let _ = writeln!(u);
    let _ = writeln!(u, "[Service]");
    let _ = writeln!(u, "Type=notify");
    let _ = writeln!(u, "NotifyAccess=all");
    let _ = writeln!(u, "Environment=PODMAN_SYSTEMD_UNIT=%n");
    let _ = writeln!(u, "ExecStartPre=/bin/rm -f %t/%N.cid");
    let _ = writeln!(u, "ExecStart={PODMAN_RUN} {}", args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "));
    if s.health.is_some() {
        // Dependents start once this one is healthy (compose's service_healthy).
        let _ = writeln!(u, "ExecStartPost=/{AGENT_PATH} stack wait-healthy {name}");
    }
    // `-`: a container that ended by itself (`--rm`) is gone already, which is not a failure.
    let _ = writeln!(u, "ExecStop=-/usr/bin/podman stop --ignore --time=20 --cidfile=%t/%N.cid");
    let _ = writeln!(u, "ExecStopPost=-/usr/bin/podman rm --force --ignore --time=20 --cidfile=%t/%N.cid");
    let restart = match s.restart {
        Restart::Always => "always",
        Restart::OnFailure => "on-failure",
        Restart::No => "no",
    };
    let _ = writeln!(u, "Restart={restart}");
    let _ = writeln!(u, "RestartSec=3");
    // First starts on a slow disk initialise databases.
    let _ = writeln!(u, "TimeoutStartSec=900");
    let _ = writeln!(u, "TimeoutStopSec=60");
    u
}

/// Writes the stack's units, target and files into the tree, and enables the target.
pub fn install(plan: &BuildPlan, stack: &Stack, root: &Path) -> Result<()> {
    let unit_dir = root.join(UNIT_DIR);
    fs_err::create_dir_all(&unit_dir)?;
    let files = root.join(STACKS).join(&stack.name);
    fs_err::create_dir_all(&files)?;
    fs_err::copy(&stack.file, files.join("compose.yaml")).with_context(|| format!("copying {}", stack.file.display()))?;
    let mut wants = Vec::new();
    for s in &stack.services {
        let c = find_image(plan, &s.image).with_context(|| format!("{}: services.{}.image: `{}` is no container of the image", stack.file.display(), s.name, s.image))?;
        let unit = service_unit(&stack.name, &s.name);
        let p = unit_dir.join(&unit);
        fs_err::write(&p, render(stack, s, &c.store_name())).with_context(|| format!("writing {}", p.display()))?;
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

    #[test]
    fn a_service_becomes_an_ordered_restarting_unit() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs_err::write(d.join("compose.yaml"), "services:\n  db:\n    image: db\n    environment: {PGPASSWORD: \"a b%\"}\n    volumes: [\"data:/var/lib/db\"]\n    healthcheck:\n      test: [\"CMD-SHELL\", \"pg_isready -h 127.0.0.1\"]\n      interval: 5s\n    restart: always\n  web:\n    image: web\n    depends_on: {db: {condition: service_healthy}}\n    volumes: [\"./web.conf:/etc/web.conf:ro\"]\n    command: [serve, --port, \"8080\"]\n    restart: on-failure\nvolumes:\n  data:\n").unwrap();
        fs_err::write(d.join("web.conf"), "").unwrap();
        let mut p = crate::spec::Problems::default();
        let stack = crate::spec::compose::load("pacs", &d.join("compose.yaml"), &mut p).unwrap();
        assert!(p.0.is_empty(), "{:?}", p.0);
        let db = render(&stack, &stack.services[0], "localhost/outpost/db:latest");
        for line in [
            "PartOf=outpost-stack-pacs.target",
            "RequiresMountsFor=/var/lib/containers",
            "StartLimitIntervalSec=0",
            "Restart=always",
            "Type=notify",
            "ExecStartPost=/usr/lib/outpost/outpost stack wait-healthy pacs-db",
        ] {
            assert!(db.lines().any(|l| l == line), "no `{line}` in\n{db}");
        }
        let exec = db.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert!(exec.starts_with("ExecStart=/usr/bin/podman run --cidfile=%t/%N.cid "), "{exec}");
        for arg in ["--name=pacs-db", "--add-host=web:127.0.0.1", "\"--env=PGPASSWORD=a b%%\"", "--volume=pacs-data:/var/lib/db", "\"--health-cmd=pg_isready -h 127.0.0.1\"", "--health-interval=5s"] {
            assert!(exec.contains(arg), "no {arg} in {exec}");
        }
        assert!(exec.ends_with(" localhost/outpost/db:latest"), "{exec}");
        let web = render(&stack, &stack.services[1], "localhost/outpost/web:latest");
        assert!(web.contains("\nAfter=network.target outpost-pacs-db.service\nWants=outpost-pacs-db.service\n"), "{web}");
        assert!(web.contains("\nRestart=on-failure\n") && !web.contains("wait-healthy"), "{web}");
        assert!(web.contains("--mount=type=bind,source=/usr/lib/outpost/stacks/pacs/web.conf,destination=/etc/web.conf,ro=true localhost/outpost/web:latest serve --port 8080"), "{web}");
    }

    #[test]
    fn exec_arguments_are_quoted_for_systemd() {
        assert_eq!(quote("--name=pacs-db"), "--name=pacs-db");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("100%"), "\"100%%\"");
        assert_eq!(quote("$HOME"), "\"$$HOME\"");
        assert_eq!(quote(r#"["CMD","x"]"#), r#""[\"CMD\",\"x\"]""#);
    }
}
