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

#[test]
fn customers_behind_cone_nats_reach_suppliers_behind_nats_directly_after_a_hole_punch() {
    require_root_and_fuse();
    require_netns();
    let root = scratch("nat-punch");
    let mut topo = Topology::new("b");
    let public = topo.public_host("pub", 10);
    let h1 = topo.private_host("c1", 1, NatKind::Cone);
    let h2 = topo.private_host("c2", 2, NatKind::Cone);
    let h3 = topo.private_host("s1", 3, NatKind::Cone);
    let h4 = topo.private_host("s2", 4, NatKind::Cone);
    let net = testnet_on(&public, &root, 4);
    let _s1 = supplier_on(&h3, &root, "s1", &net);
    let _s2 = supplier_on(&h4, &root, "s2", &net);
    let private = [peer_of(&root.join("s1")), peer_of(&root.join("s2"))];
    let c1 = customer_on(&h1, &root, "c1", &net);
    let c2 = customer_on(&h2, &root, "c2", &net);
    for (c, h, seed) in [(&c1, &h1, 91u64), (&c2, &h2, 92)] {
        mount_on(h, c);
        c.wait_suppliers(6);
        let data = root.join(format!("data-{seed}.bin"));
        write_random(&data, 8 << 20, seed);
        ok(Command::new("cp").arg(&data).arg(c.mnt.join("data.bin")));
        c.sync();
        c.cache_drop();
        assert_eq!(sha256(&c.mnt.join("data.bin")), sha256(&data));
        let st = c.status();
        // Both private suppliers are reached directly: the relayed connection was upgraded
        // by a hole punch.
        for p in &private {
            assert_eq!(st["peer_paths"][p], "direct", "{st}");
            assert!(
                st["hole_punched_ms"][p].is_u64(),
                "{p} was not hole-punched: {st}"
            );
        }
        eprintln!(
            "hole punches of {}: {} (ms from the first, relayed connection)",
            c.home.display(),
            st["hole_punched_ms"]
        );
    }
    // ...and both hold shards of both customers (one directory per customer).
    for s in ["s1", "s2"] {
        let customers = std::fs::read_dir(root.join(s).join("shards"))
            .expect("shards")
            .flatten()
            .filter(|e| e.file_name() != "tmp" && e.file_name() != "roots")
            .count();
        assert_eq!(
            customers, 2,
            "supplier {s} behind NAT holds shards of {customers} customers"
        );
    }
    c1.umount();
    c2.umount();
}
