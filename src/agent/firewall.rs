//! `outpost firewall`, at every boot before the network comes up: an nftables table that lets in
//! only what the image serves. Open are the ports its stacks publish (read from their run
//! specifications), the ports layers declare for the box's own services
//! (`/usr/lib/outpost/firewall.d/*.ports`, one number per line: the status page, SSH), replies,
//! ICMP and the DHCPv6 client. Everything else from outside is dropped, including traffic routed
//! at the stacks' private networks: a container port nobody published stays closed even to a
//! machine on the clinic's network that routes through the box.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};

use crate::format::stack::{RunSpec, STACKS};
use crate::tool::Tool;

/// Where layers list the ports of the box's own services.
pub const PORTS_DIR: &str = "usr/lib/outpost/firewall.d";

/// The ports open on the box: published by stacks, declared by layers.
pub fn open_ports(root: &Path) -> Result<BTreeSet<u16>> {
    let mut ports = BTreeSet::new();
    for path in super::files_ending(&root.join(STACKS), 2, ".run.json")? {
        let run: RunSpec = serde_json::from_slice(&fs_err::read(&path)?).with_context(|| format!("parsing {}", path.display()))?;
        for a in &run.args {
            if let Some(host) = a.strip_prefix("--publish=").and_then(|m| m.split(':').next()) {
                ports.insert(host.parse().with_context(|| format!("{}: `{a}` has no host port", path.display()))?);
            }
        }
    }
    for path in super::files_ending(&root.join(PORTS_DIR), 1, ".ports")? {
        for (i, line) in fs_err::read_to_string(&path)?.lines().enumerate() {
            let t = line.split('#').next().unwrap_or("").trim();
            if !t.is_empty() {
                ports.insert(t.parse().with_context(|| format!("{} line {}: `{t}` is not a port number", path.display(), i + 1))?);
            }
        }
    }
    Ok(ports)
}

/// The ruleset: one table of our own, replaced whole (`nft -f` is atomic).
pub fn ruleset(ports: &BTreeSet<u16>) -> String {
    let open = if ports.is_empty() {
        String::new()
    } else {
        format!("        tcp dport {{ {} }} accept\n", ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", "))
    };
    format!(
        "# Written by outpost at boot.\n\
         table inet outpost\n\
         delete table inet outpost\n\
         table inet outpost {{\n    \
             chain input {{\n        \
                 type filter hook input priority filter; policy drop;\n        \
                 iif lo accept\n        \
                 ct state established,related accept\n        \
                 ct state invalid drop\n        \
                 # ICMP and ICMPv6 by number: names need /etc/protocols, which an image may lack.\n        \
                 meta l4proto {{ 1, 58 }} accept\n        \
                 udp dport 546 accept\n        \
                 # The stacks' containers reach the box's DNS for their networks (aardvark-dns).\n        \
                 iifname \"podman*\" accept\n\
         {open}    }}\n    \
             chain forward {{\n        \
                 type filter hook forward priority filter; policy drop;\n        \
                 ct state established,related accept\n        \
                 # Published ports, which netavark forwards to their containers.\n        \
                 ct status dnat accept\n        \
                 # Containers' own connections out.\n        \
                 iifname \"podman*\" accept\n    \
             }}\n\
         }}\n"
    )
}

/// Loads the ruleset for the image's ports.
pub fn apply() -> Result<()> {
    let ports = open_ports(Path::new("/"))?;
    let text = ruleset(&ports);
    let file = Path::new("/run/outpost/firewall.nft");
    fs_err::create_dir_all(file.parent().expect("a parent"))?;
    fs_err::write(file, &text)?;
    Tool::new("nft").describe("loading the firewall").arg("-f").arg(file).run()?;
    super::say(&format!("firewall: open tcp {}", if ports.is_empty() { "none".to_string() } else { ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ") }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_and_declared_ports_are_open_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // An image with neither stacks nor declared ports: everything closed, not an error.
        assert!(open_ports(root).unwrap().is_empty());
        fs_err::create_dir_all(root.join(PORTS_DIR)).unwrap();
        fs_err::write(root.join(PORTS_DIR).join("ssh.ports"), "22\n").unwrap();
        assert_eq!(open_ports(root).unwrap().into_iter().collect::<Vec<_>>(), [22]);
        let stack = root.join(STACKS).join("pacs");
        fs_err::create_dir_all(&stack).unwrap();
        let run = RunSpec {
            args: vec!["run".into(), "--publish=80:8080".into(), "--publish=4242:4242".into(), "--expose=5432".into()],
            environment: Default::default(),
            tail: vec!["img".into()],
            data_dirs: vec![],
            volumes: vec![],
            network: "outpost-pacs".into(),
            subnet: "10.89.1.0/24".into(),
            tls: false,
        };
        fs_err::write(stack.join("nginx.run.json"), serde_json::to_vec(&run).unwrap()).unwrap();
        fs_err::write(stack.join("stack.json"), "{}").unwrap();
        fs_err::create_dir_all(root.join(PORTS_DIR)).unwrap();
        fs_err::write(root.join(PORTS_DIR).join("ssh.ports"), "22 # sshd\n").unwrap();
        fs_err::write(root.join(PORTS_DIR).join("status-page.ports"), "8088\n\n").unwrap();
        let ports = open_ports(root).unwrap();
        assert_eq!(ports.into_iter().collect::<Vec<_>>(), [22, 80, 4242, 8088]);
        let r = ruleset(&open_ports(root).unwrap());
        assert!(r.contains("policy drop;") && r.contains("tcp dport { 22, 80, 4242, 8088 } accept"), "{r}");
        assert!(!r.contains("5432"));
        // Nothing nft would look up in /etc/protocols (netbase is not in every image).
        assert!(r.contains("meta l4proto { 1, 58 } accept") && !r.contains("icmp,"), "{r}");
        fs_err::write(root.join(PORTS_DIR).join("bad.ports"), "http\n").unwrap();
        assert!(format!("{:#}", open_ports(root).unwrap_err()).contains("bad.ports line 1: `http` is not a port number"));
    }

    #[test]
    fn the_ruleset_is_valid_nftables_even_without_etc_protocols() {
        // `nft -c` checks without touching the host's tables (needs nftables); in a mount
        // namespace with /etc/protocols hidden, as in an image without netbase (the first
        // version named `ipv6-icmp` and failed there).
        if crate::tool::which("nft").is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("r.nft");
        fs_err::write(&f, ruleset(&[22, 80].into())).unwrap();
        let script = format!("mount --bind /dev/null /etc/protocols && nft -c -f {}", f.display());
        let out = std::process::Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() || err.contains("Operation not permitted") || err.contains("permission denied"), "{err}");
    }
}
