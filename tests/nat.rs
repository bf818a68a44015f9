//! NAT suite (issue 6): nodes in network namespaces behind NAT routers the test builds (and
//! removes), on a private "internet" segment.
//!
//! Needs root, /dev/fuse, `ip`, `iptables` and `nsenter` (fails loudly without them).

#[path = "common/mod.rs"]
mod common;

use std::process::Command;

use common::nat::*;
use common::*;

fn require_netns() {
    for tool in ["ip", "iptables", "nsenter"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "the NAT suite needs `{tool}` (scripts/install-deps.sh installs it)"
        );
    }
}

#[test]
fn a_customer_behind_a_nat_router_backs_up_to_public_suppliers_and_reads_back() {
    require_root_and_fuse();
    require_netns();
    let root = scratch("nat-customer");
    let mut topo = Topology::new("a");
    let public = topo.public_host("pub", 10);
    let home = topo.private_host("home", 1, NatKind::Cone);
    let net = testnet_on(&public, &root, 6);
    let c = customer_on(&home, &root, "home", &net);
    mount_on(&home, &c);
    c.wait_suppliers(6);
    let data = root.join("data.bin");
    write_random(&data, 12 << 20, 81);
    ok(Command::new("cp").arg(&data).arg(c.mnt.join("data.bin")));
    c.sync();
    let st = c.status();
    assert_eq!(st["upload_queue"]["shards"], 0, "{st}");
    // The suppliers saw the router's public address, never the private one.
    c.cache_drop();
    assert_eq!(sha256(&c.mnt.join("data.bin")), sha256(&data));
    c.umount();
    drop(net);
    drop(topo);
}
