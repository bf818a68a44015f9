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
    let net = testnet_on(&public, &root, 6, Transport::Both);
    let c = customer_on(&home, &root, "home", &net, Transport::Both);
    mount_on(&home, &c);
    c.wait_suppliers(6);
    let data = root.join("data.bin");
    c.copy_in(&data, "data.bin", 12 << 20, 81);
    let st = c.status();
    assert_eq!(st["upload_queue"]["shards"], 0, "{st}");
    // The suppliers saw the router's public address, never the private one.
    c.reads_back(&data, "data.bin");
    c.umount();
    drop(net);
    drop(topo);
}

/// Two customers behind cone NATs back up to four public suppliers and two suppliers behind
/// cone NATs; connections to the NATed suppliers start relayed and are upgraded by hole
/// punching. Every byte must read back either way; returns (connections hole-punched,
/// connections to NATed suppliers), and with `all_direct` asserts that every one was.
fn hole_punching(tag: &str, t: Transport, all_direct: bool) -> (usize, usize) {
    require_root_and_fuse();
    require_netns();
    let root = scratch(&format!("nat-punch-{tag}"));
    let mut topo = Topology::new(tag);
    let public = topo.public_host("pub", 10);
    let h1 = topo.private_host("c1", 1, NatKind::Cone);
    let h2 = topo.private_host("c2", 2, NatKind::Cone);
    let h3 = topo.private_host("s1", 3, NatKind::Cone);
    let h4 = topo.private_host("s2", 4, NatKind::Cone);
    let net = testnet_on(&public, &root, 4, t);
    let _s1 = supplier_on(&h3, &root, "s1", &net, t);
    let _s2 = supplier_on(&h4, &root, "s2", &net, t);
    let private = [peer_of(&root.join("s1")), peer_of(&root.join("s2"))];
    let c1 = customer_on(&h1, &root, "c1", &net, t);
    let c2 = customer_on(&h2, &root, "c2", &net, t);
    let (mut punched, mut total) = (0, 0);
    for (c, h, seed) in [(&c1, &h1, 91u64), (&c2, &h2, 92)] {
        mount_on(h, c);
        c.wait_suppliers(6);
        let data = root.join(format!("data-{seed}.bin"));
        write_random(&data, 8 << 20, seed);
        ok(Command::new("cp").arg(&data).arg(c.mnt.join("data.bin")));
        c.sync();
        // DCUtR retries, so the upgrade can come a moment after the first relayed bytes.
        let start = std::time::Instant::now();
        let st = loop {
            let st = c.status();
            if private.iter().all(|p| st["hole_punched_ms"][p].is_u64())
                || start.elapsed() > std::time::Duration::from_secs(45)
            {
                break st;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        for p in &private {
            total += 1;
            if st["hole_punched_ms"][p].is_u64() {
                punched += 1;
                assert_eq!(st["peer_paths"][p], "direct", "{st}");
            } else {
                assert!(!all_direct, "{p} was not hole-punched: {st}");
                assert_eq!(st["peer_paths"][p], "relayed", "{st}");
            }
        }
        eprintln!(
            "{tag}: hole punches of {}: {} (ms from the first, relayed connection)",
            c.home.display(),
            st["hole_punched_ms"]
        );
        // Read back through whatever path each supplier has now.
        c.reads_back(&data, "data.bin");
    }
    // Both NATed suppliers hold shards of both customers (one directory per customer).
    for s in ["s1", "s2"] {
        let customers = customer_dirs_in(&root.join(s).join("shards")).len();
        assert_eq!(
            customers, 2,
            "supplier {s} behind NAT holds shards of {customers} customers"
        );
    }
    c1.umount();
    c2.umount();
    eprintln!("{tag}: {punched} of {total} connections to NATed suppliers hole-punched");
    (punched, total)
}

/// TCP only: every connection to a NATed supplier is hole-punched (this needs the bootstrap
/// dials to wait for the TCP listener, so that they reuse its port; see `host.rs`).
#[test]
fn behind_cone_nats_tcp_connections_are_all_hole_punched() {
    let (punched, total) = hole_punching("t", Transport::Tcp, true);
    assert_eq!(punched, total);
}

/// QUIC only: every connection to a NATed supplier is hole-punched.
#[test]
fn behind_cone_nats_quic_connections_are_all_hole_punched() {
    hole_punching("q", Transport::Quic, true);
}

#[test]
fn behind_symmetric_nats_data_flows_through_a_relay() {
    require_root_and_fuse();
    require_netns();
    let root = scratch("nat-symmetric");
    let mut topo = Topology::new("s");
    let public = topo.public_host("pub", 10);
    let h1 = topo.private_host("c1", 1, NatKind::Symmetric);
    let h2 = topo.private_host("s1", 2, NatKind::Symmetric);
    let net = testnet_on(&public, &root, 5, Transport::Both);
    let _s1 = supplier_on(&h2, &root, "s1", &net, Transport::Both);
    let private = peer_of(&root.join("s1"));
    let c = customer_on(&h1, &root, "c1", &net, Transport::Both);
    mount_on(&h1, &c);
    c.wait_suppliers(6);
    let data = root.join("data.bin");
    c.copy_in(&data, "data.bin", 8 << 20, 93);
    c.reads_back(&data, "data.bin");
    let st = c.status();
    // Hole punching cannot work through symmetric NATs: the supplier is reached, and holds
    // shards, through a relay, and the status says so.
    assert_eq!(st["peer_paths"][&private], "relayed", "{st}");
    assert_eq!(st["connectivity"], "relayed", "{st}");
    let held = shard_files_in(&root.join("s1").join("shards"));
    assert!(
        !held.is_empty(),
        "the supplier behind a symmetric NAT holds no shards"
    );
    let held_bytes: u64 = held
        .iter()
        .map(|f| f.metadata().map_or(0, |m| m.len()))
        .sum();
    // The status accounts for the bytes that went through the relay (frames, both ways).
    let relayed = st["relayed_bytes"]["per_peer"][&private]
        .as_u64()
        .unwrap_or(0);
    assert!(relayed >= held_bytes, "{relayed} < {held_bytes}: {st}");
    assert!(
        st["relayed_bytes"]["total"].as_u64().unwrap_or(0) >= relayed,
        "{st}"
    );

    // With a seventh supplier, a public one, there is a better choice than the relay: new
    // data no longer goes to the supplier reached only through it.
    let _s7 = supplier_on(&public, &root, "s7", &net, Transport::Both);
    c.wait_suppliers(7);
    c.copy_in(&data, "more.bin", 8 << 20, 94);
    assert_eq!(
        shard_files_in(&root.join("s1").join("shards")),
        held,
        "new shards went through the relay although 6 direct suppliers were there"
    );
    assert!(!shard_files_in(&root.join("s7").join("shards")).is_empty());
    c.reads_back(&data, "more.bin");
    c.umount();
}

/// One cell of the NAT matrix: a customer behind `a` reaching a supplier behind `b` over `t`.
/// Returns whether the connection became direct (hole-punched); asserts it is up either way.
fn matrix_cell(tag: &str, a: NatKind, b: NatKind, t: Transport) -> (bool, Option<u64>) {
    let root = scratch(&format!("nat-matrix-{tag}"));
    let mut topo = Topology::new(tag);
    let public = topo.public_host("pub", 10);
    let hc = topo.private_host("c", 1, a);
    let hs = topo.private_host("s", 2, b);
    let net = testnet_on(&public, &root, 2, t);
    let _s = supplier_on(&hs, &root, "s", &net, t);
    let supplier = peer_of(&root.join("s"));
    let c = customer_on(&hc, &root, "c", &net, t);
    // Liveness checks every second: they are what connects the customer to its suppliers.
    c.edit_config(&[("check_interval_secs = 30", "check_interval_secs = 1")]);
    mount_on(&hc, &c);
    c.wait_suppliers(3);
    let start = std::time::Instant::now();
    let st = loop {
        let st = c.status();
        let punched = st["hole_punched_ms"][&supplier].is_u64();
        // DCUtR gives up after three attempts about ten seconds apart.
        if punched || start.elapsed() > std::time::Duration::from_secs(40) {
            break st;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    let path = st["peer_paths"][&supplier].as_str().map(str::to_string);
    assert!(
        path.is_some(),
        "{tag}: the supplier behind {b:?} NAT is not connected at all: {st}"
    );
    let punched = st["hole_punched_ms"][&supplier].as_u64();
    c.umount();
    (path.as_deref() == Some("direct"), punched)
}

/// Every pair of NAT kinds over each transport, side by side: every supplier is reachable
/// (directly or through a relay); cone↔cone must be direct; the direct-connection rate of the
/// whole matrix is reported.
#[test]
fn nat_matrix_reports_the_direct_connection_rate() {
    require_root_and_fuse();
    require_netns();
    use NatKind::{Cone, Symmetric};
    let cells = [
        ("mcct", Cone, Cone, Transport::Tcp),
        ("mcst", Cone, Symmetric, Transport::Tcp),
        ("msct", Symmetric, Cone, Transport::Tcp),
        ("msst", Symmetric, Symmetric, Transport::Tcp),
        ("mccq", Cone, Cone, Transport::Quic),
        ("mcsq", Cone, Symmetric, Transport::Quic),
        ("mscq", Symmetric, Cone, Transport::Quic),
        ("mssq", Symmetric, Symmetric, Transport::Quic),
    ];
    let results: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = cells
            .iter()
            .map(|&(tag, a, b, t)| sc.spawn(move || (tag, a, b, t, matrix_cell(tag, a, b, t))))
            .collect();
        hs.into_iter().map(|h| h.join().expect("cell")).collect()
    });
    let mut direct = 0;
    for (tag, a, b, t, (is_direct, ms)) in &results {
        eprintln!(
            "NAT matrix {tag}: customer {a:?} -> supplier {b:?} over {t:?}: {}{}",
            if *is_direct { "direct" } else { "relayed" },
            ms.map(|m| format!(" (hole punch {m} ms after the relayed connection)"))
                .unwrap_or_default()
        );
        if *is_direct {
            direct += 1;
        }
        if *a == Cone && *b == Cone {
            assert!(is_direct, "{tag}: cone to cone must be hole-punched");
        }
    }
    eprintln!(
        "NAT matrix: {direct} of {} connections direct ({}%)",
        results.len(),
        direct * 100 / results.len()
    );
}
