//! Network topologies for the NAT suite, built from network namespaces the test creates and
//! removes: an "internet" segment (a bridge in its own namespace, 203.0.113.0/24, a
//! documentation range that exists only inside these namespaces), public hosts on it, and
//! private hosts each behind its own NAT router.
//!
//! Router kinds: `Cone` maps a private (address, port) to the same public port for every
//! destination while it can (Linux MASQUERADE keeps the source port) and only lets in packets
//! of connections seen going out (address- and port-dependent filtering, as conntrack does);
//! `Symmetric` takes a random public port for every connection (`--random-fully`), which
//! defeats hole punching. Both drop unsolicited inbound packets on the WAN side, also to the
//! router itself: without that, an early inbound packet of a hole punch claims the port and
//! Linux rewrites the source port of the outbound one (see FACTS.md).

use std::process::Command;

/// A NAT router's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping, address-dependent filtering.
    Cone,
    /// A new random public port per connection.
    Symmetric,
}

/// One host (a network namespace) of a topology.
#[derive(Debug, Clone)]
pub struct Host {
    /// Namespace name.
    pub ns: String,
    /// Its address.
    pub ip: String,
}

impl Host {
    /// `program` run inside this host's network namespace (only the network namespace, so a
    /// FUSE mount made there is visible to the test).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg(program);
        c
    }
}

/// A topology; every namespace it made is deleted when it is dropped.
pub struct Topology {
    prefix: String,
    namespaces: Vec<String>,
    wan: String,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Topology {
    /// An empty internet segment. `tag` keeps concurrent tests apart.
    pub fn new(tag: &str) -> Self {
        let prefix = format!("dfs{}{tag}", std::process::id() % 100_000);
        let wan = format!("{prefix}-wan");
        let mut t = Topology {
            prefix,
            namespaces: Vec::new(),
            wan: wan.clone(),
        };
        t.add_ns(&wan);
        sh(&["ip", "-n", &wan, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &wan, "link", "set", "br0", "up"]);
        t
    }

    fn add_ns(&mut self, ns: &str) {
        // A leftover of a crashed earlier run with the same name goes first.
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
        sh(&["ip", "netns", "add", ns]);
        self.namespaces.push(ns.to_string());
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }

    /// Connects namespace `ns` (interface `ifname`, address `cidr`) to the internet bridge.
    fn attach_to_wan(&self, port: &str, ns: &str, ifname: &str, cidr: &str) {
        sh(&[
            "ip", "-n", &self.wan, "link", "add", port, "type", "veth", "peer", "name", ifname,
            "netns", ns,
        ]);
        sh(&[
            "ip", "-n", &self.wan, "link", "set", port, "master", "br0", "up",
        ]);
        sh(&["ip", "-n", ns, "addr", "add", cidr, "dev", ifname]);
        sh(&["ip", "-n", ns, "link", "set", ifname, "up"]);
    }

    /// A host on the internet segment with address 203.0.113.`n`.
    pub fn public_host(&mut self, name: &str, n: u8) -> Host {
        let ns = format!("{}-{name}", self.prefix);
        self.add_ns(&ns);
        let ip = format!("203.0.113.{n}");
        self.attach_to_wan(&format!("p{n}"), &ns, "eth0", &format!("{ip}/24"));
        Host { ns, ip }
    }

    /// A host at 10.`n`.0.2 behind its own router (public address 203.0.113.`100+n`).
    pub fn private_host(&mut self, name: &str, n: u8, kind: NatKind) -> Host {
        let router = format!("{}-r{n}", self.prefix);
        let ns = format!("{}-{name}", self.prefix);
        self.add_ns(&router);
        self.add_ns(&ns);
        let public = format!("203.0.113.{}", 100 + u16::from(n));
        self.attach_to_wan(&format!("r{n}"), &router, "wan", &format!("{public}/24"));
        sh(&[
            "ip", "-n", &router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        let gw = format!("10.{n}.0.1");
        let ip = format!("10.{n}.0.2");
        sh(&[
            "ip",
            "-n",
            &router,
            "addr",
            "add",
            &format!("{gw}/24"),
            "dev",
            "lan",
        ]);
        sh(&["ip", "-n", &router, "link", "set", "lan", "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "route", "add", "default", "via", &gw]);
        let in_router = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", router.as_str()];
            v.extend_from_slice(args);
            sh(&v);
        };
        in_router(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let mut masq = vec![
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "wan",
            "-j",
            "MASQUERADE",
        ];
        if kind == NatKind::Symmetric {
            masq.push("--random-fully");
        }
        in_router(&masq);
        for chain in ["FORWARD", "INPUT"] {
            in_router(&[
                "iptables",
                "-A",
                chain,
                "-i",
                "wan",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ]);
            in_router(&["iptables", "-A", chain, "-i", "wan", "-j", "DROP"]);
        }
        Host { ns, ip }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A testnet whose nodes run inside `host` and listen on its address.
pub fn testnet_on(
    host: &Host,
    root: &std::path::Path,
    nodes: usize,
    t: Transport,
) -> super::Testnet {
    let dir = root.join("net");
    super::ok(
        host.cmd(super::BIN)
            .args([
                "testnet",
                "up",
                "--nodes",
                &nodes.to_string(),
                "--ip",
                &host.ip,
            ])
            .args(["--transport", t.name(), "--dir"])
            .arg(&dir),
    );
    super::Testnet { dir, nodes }
}

/// Which transports the nodes of a test use (everyone listens on the same ones, so every
/// address in the network is of those kinds and every connection uses them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP and QUIC.
    Both,
    /// TCP only.
    Tcp,
    /// QUIC only.
    Quic,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Both => "both",
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }

    /// `--listen` arguments on all addresses of a host.
    pub fn listen_args(self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self != Transport::Quic {
            v.extend(["--listen", "/ip4/0.0.0.0/tcp/0"]);
        }
        if self != Transport::Tcp {
            v.extend(["--listen", "/ip4/0.0.0.0/udp/0/quic-v1"]);
        }
        v
    }
}

/// `dustfs init` of a home inside `host`, joined to `net`.
fn init_on(host: &Host, home: &std::path::Path, net: &super::Testnet, t: Transport) {
    super::ok(
        host.cmd(super::BIN)
            .arg("--home")
            .arg(home)
            .arg("init")
            .args(t.listen_args())
            .arg("--bootstrap")
            .arg(net.bootstrap()),
    );
}

/// A customer home inside `host` (listening on all its addresses), joined to `net`.
pub fn customer_on(
    host: &Host,
    root: &std::path::Path,
    name: &str,
    net: &super::Testnet,
    t: Transport,
) -> super::Customer {
    let home = root.join(name);
    let mnt = root.join(format!("{name}-mnt"));
    std::fs::create_dir_all(&mnt).expect("mkdir");
    init_on(host, &home, net, t);
    super::Customer { home, mnt }
}

/// Mounts a customer from inside `host` (its node lives in that network namespace).
pub fn mount_on(host: &Host, c: &super::Customer) {
    super::ok(
        host.cmd(super::BIN)
            .arg("--home")
            .arg(&c.home)
            .arg("mount")
            .arg(&c.mnt),
    );
}

/// A supplier node (init + serve) inside `host`, joined to `net`; killed when dropped.
pub fn supplier_on(
    host: &Host,
    root: &std::path::Path,
    name: &str,
    net: &super::Testnet,
    t: Transport,
) -> super::KillOnDrop {
    let home = root.join(name);
    init_on(host, &home, net, t);
    super::KillOnDrop(
        host.cmd(super::BIN)
            .arg("--home")
            .arg(&home)
            .arg("serve")
            .env("RUST_LOG", "info,libp2p=warn")
            .stderr(std::fs::File::create(home.with_extension("log")).expect("log"))
            .spawn()
            .expect("serve"),
    )
}

/// Peer id of a home (from its `addrs` file).
pub fn peer_of(home: &std::path::Path) -> String {
    let start = std::time::Instant::now();
    loop {
        if let Some(p) = std::fs::read_to_string(home.join("addrs"))
            .ok()
            .and_then(|a| {
                a.lines()
                    .next()
                    .and_then(|l| l.rsplit("/p2p/").next())
                    .map(str::to_string)
            })
        {
            return p;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{} never listened",
            home.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
