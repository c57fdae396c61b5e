//! `outpost firewall`, at every boot before the network comes up: an nftables table that lets in
//! only what the image serves. Open are the ports its stacks publish (read from their run
//! specifications), the ports layers declare for the box's own services
//! (`/usr/lib/outpost/firewall.d/*.ports`, one number per line: the status page, SSH), replies,
//! ICMP and the DHCPv6 client. Everything else from outside is dropped, including traffic routed
//! at the stacks' private networks: a container port nobody published stays closed even to a
//! machine on the clinic's network that routes through the box.
//!
//! The same table forwards each published port to its container (whose address is fixed in its
//! run specification) and masquerades the containers' connections out: the stacks' networks
//! are internal to netavark, which so writes no rules of its own (`container::units`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result};

use crate::format::stack::{RunSpec, STACKS};
use crate::tool::Tool;

/// Where layers list the ports of the box's own services.
pub const PORTS_DIR: &str = "usr/lib/outpost/firewall.d";

/// What the firewall opens and forwards.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Openings {
    /// TCP ports open on the box: published by stacks, declared by layers.
    pub ports: BTreeSet<u16>,
    /// Published ports: the box's port, the container's address and port.
    pub forwards: BTreeSet<(u16, Ipv4Addr, u16)>,
    /// The stacks' networks, whose connections out are masqueraded.
    pub subnets: BTreeSet<String>,
}

impl Openings {
    /// The image has stacks: the box forwards for their containers (published ports always
    /// come with a stack's subnet).
    fn has_stacks(&self) -> bool {
        !self.subnets.is_empty()
    }
}

/// The openings of the image under `root`.
pub fn openings(root: &Path) -> Result<Openings> {
    let mut o = Openings::default();
    for path in super::files_ending(&root.join(STACKS), 2, ".run.json")? {
        let run: RunSpec = serde_json::from_slice(&fs_err::read(&path)?).with_context(|| format!("parsing {}", path.display()))?;
        o.subnets.insert(run.subnet.clone());
        for p in &run.publish {
            o.ports.insert(p.host);
            o.forwards.insert((p.host, run.address, p.container));
        }
    }
    for path in super::files_ending(&root.join(PORTS_DIR), 1, ".ports")? {
        for (i, line) in fs_err::read_to_string(&path)?.lines().enumerate() {
            let t = line.split('#').next().unwrap_or("").trim();
            if !t.is_empty() {
                o.ports.insert(t.parse().with_context(|| format!("{} line {}: `{t}` is not a port number", path.display(), i + 1))?);
            }
        }
    }
    Ok(o)
}

/// The ruleset: one table of our own, replaced whole (`nft -f` is atomic).
pub fn ruleset(o: &Openings) -> String {
    let list = |items: Vec<String>| items.join(", ");
    let open = if o.ports.is_empty() { String::new() } else { format!("        tcp dport {{ {} }} accept\n", list(o.ports.iter().map(u16::to_string).collect())) };
    let dnat: String = o.forwards.iter().map(|(host, ip, port)| format!("        fib daddr type local tcp dport {host} dnat ip to {ip}:{port}\n")).collect();
    // No stacks, no NAT chains: their modules would cost an image without containers a second
    // of every boot.
    let nat = if !o.has_stacks() {
        String::new()
    } else {
        let nets = list(o.subnets.iter().cloned().collect());
        let masquerade = format!(
            "        # The containers' own connections out, as the box.\n        \
                 ip saddr {{ {nets} }} ip daddr != {{ {nets} }} masquerade\n        \
                 # A published port reached from the box (127.0.0.1) or from a container: the\n        \
                 # container answers the box, not itself.\n        \
                 oifname \"podman*\" ct status dnat ip saddr {{ 127.0.0.0/8, {nets} }} masquerade\n"
        );
        format!(
            "    # Published ports to their containers, from outside and from the box itself.\n    \
                 chain prerouting {{\n        \
                     type nat hook prerouting priority dstnat; policy accept;\n\
             {dnat}    }}\n    \
                 chain output {{\n        \
                     type nat hook output priority -100; policy accept;\n\
             {dnat}    }}\n    \
                 chain postrouting {{\n        \
                     type nat hook postrouting priority srcnat; policy accept;\n\
             {masquerade}    }}\n"
        )
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
                 # Published ports, forwarded to their containers below.\n        \
                 ct status dnat accept\n        \
                 # Containers' own connections out.\n        \
                 iifname \"podman*\" accept\n    \
             }}\n\
         {nat}\
         }}\n"
    )
}

/// Loads the ruleset for the image's openings; with stacks, the box forwards for them.
pub fn apply() -> Result<()> {
    let o = openings(Path::new("/"))?;
    let text = ruleset(&o);
    let file = Path::new("/run/outpost/firewall.nft");
    fs_err::create_dir_all(file.parent().expect("a parent"))?;
    fs_err::write(file, &text)?;
    if o.has_stacks() {
        // The forwarding's modules in one modprobe, ahead of nft: loaded on demand, each one
        // aborted and replayed nft's transaction, and at boot the firewall (which the network
        // and so every stack waits for) took 7.3 s instead of 1.8 s. Any failure here is nft's
        // to report, with its own message.
        let _ = Tool::new("modprobe").args(["-a", "-q", "nft_chain_nat", "nft_nat", "nft_masq", "nft_fib_inet"]).run();
    }
    Tool::new("nft").describe("loading the firewall").arg("-f").arg(file).run()?;
    if o.has_stacks() {
        // What netavark did for a network that is not internal.
        fs_err::write("/proc/sys/net/ipv4/ip_forward", "1").context("letting the box forward to its stacks' containers")?;
    }
    super::say(&format!("firewall: open tcp {}", if o.ports.is_empty() { "none".to_string() } else { o.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ") }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_and_declared_ports_are_open_and_forwarded_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // An image with neither stacks nor declared ports: everything closed, not an error.
        assert_eq!(openings(root).unwrap(), Openings::default());
        fs_err::create_dir_all(root.join(PORTS_DIR)).unwrap();
        fs_err::write(root.join(PORTS_DIR).join("ssh.ports"), "22\n").unwrap();
        assert_eq!(openings(root).unwrap().ports.into_iter().collect::<Vec<_>>(), [22]);
        let stack = root.join(STACKS).join("pacs");
        fs_err::create_dir_all(&stack).unwrap();
        fs_err::write(stack.join("nginx.run.json"), serde_json::to_vec(&run([10, 89, 1, 12], &[(80, 8080), (4242, 4242)])).unwrap()).unwrap();
        fs_err::write(stack.join("db.run.json"), serde_json::to_vec(&run([10, 89, 1, 10], &[])).unwrap()).unwrap();
        fs_err::write(stack.join("stack.json"), "{}").unwrap();
        fs_err::write(root.join(PORTS_DIR).join("ssh.ports"), "22 # sshd\n").unwrap();
        fs_err::write(root.join(PORTS_DIR).join("status-page.ports"), "8088\n\n").unwrap();
        let o = openings(root).unwrap();
        assert_eq!(o.ports.iter().copied().collect::<Vec<_>>(), [22, 80, 4242, 8088]);
        assert_eq!(o.forwards.iter().cloned().collect::<Vec<_>>(), [(80, Ipv4Addr::new(10, 89, 1, 12), 8080), (4242, Ipv4Addr::new(10, 89, 1, 12), 4242)]);
        assert_eq!(o.subnets.iter().cloned().collect::<Vec<_>>(), ["10.89.1.0/24"]);
        let r = ruleset(&o);
        assert!(r.contains("policy drop;") && r.contains("tcp dport { 22, 80, 4242, 8088 } accept"), "{r}");
        // Each published port forwarded twice: from outside (prerouting) and from the box (output).
        assert_eq!(r.matches("fib daddr type local tcp dport 80 dnat ip to 10.89.1.12:8080\n").count(), 2, "{r}");
        assert!(r.contains("ip saddr { 10.89.1.0/24 } ip daddr != { 10.89.1.0/24 } masquerade"), "{r}");
        // Nothing nft would look up in /etc/protocols (netbase is not in every image).
        assert!(r.contains("meta l4proto { 1, 58 } accept") && !r.contains("icmp,"), "{r}");
        fs_err::write(root.join(PORTS_DIR).join("bad.ports"), "http\n").unwrap();
        assert!(format!("{:#}", openings(root).unwrap_err()).contains("bad.ports line 1: `http` is not a port number"));
    }

    fn run(address: [u8; 4], publish: &[(u16, u16)]) -> RunSpec {
        RunSpec {
            args: vec!["run".into()],
            environment: Default::default(),
            tail: vec!["img".into()],
            data_dirs: vec![],
            volumes: vec![],
            subnet: "10.89.1.0/24".into(),
            address: address.into(),
            publish: publish.iter().map(|&(host, container)| crate::format::stack::Published { host, container }).collect(),
            tls: false,
        }
    }

    #[test]
    fn the_ruleset_is_valid_nftables_even_without_etc_protocols() {
        // `nft -c` checks without touching the host's tables (needs nftables); in a mount
        // namespace with /etc/protocols hidden, as in an image without netbase (the first
        // version named `ipv6-icmp` and failed there). With and without stacks.
        if crate::tool::which("nft").is_none() {
            return;
        }
        let stacks = Openings {
            ports: [22, 80].into(),
            forwards: [(80, Ipv4Addr::new(10, 89, 1, 12), 8080)].into(),
            subnets: ["10.89.1.0/24".to_string(), "10.89.7.0/24".to_string()].into(),
        };
        assert!(!ruleset(&Openings { ports: [22].into(), ..Default::default() }).contains("type nat"), "an image without stacks loads no NAT chains");
        for o in [Openings { ports: [22].into(), ..Default::default() }, stacks] {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("r.nft");
            fs_err::write(&f, ruleset(&o)).unwrap();
            let script = format!("mount --bind /dev/null /etc/protocols && nft -c -f {}", f.display());
            let out = std::process::Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() || err.contains("Operation not permitted") || err.contains("permission denied"), "{err}\n{}", ruleset(&o));
        }
    }
}
