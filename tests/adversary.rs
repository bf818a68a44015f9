//! Adversarial suite (issue 7): a malicious node — this test program, a real libp2p node on
//! 127.0.0.1 — attacks honest `dustfs serve` processes while a user's mount holds data on
//! them. Every attack must be refused with the right typed error, the honest nodes must keep
//! serving, and the user's files must read back byte for byte. A second test searches
//! everything suppliers keep, log and publish for plaintext, file names and key material.
//!
//! Needs root and /dev/fuse (fails loudly without them).

#[path = "common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use dustfs_core::keys::MasterSecret;
use dustfs_core::root::RootRecord;
use dustfs_core::shard::ShardId;
use dustfs_net::host::{Node, NodeConfig, root_key};
use dustfs_net::protocol::{
    self, Envelope, MAX_SHARD, Op, Request, Response, WIRE_VERSION, WireError,
};
use dustfs_net::{Keypair, Multiaddr, PeerId};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A node of our own (no supplier role) joined to the testnet through all its nodes.
async fn join(net: &Testnet) -> Node {
    let node = Node::start(NodeConfig {
        keypair: Keypair::generate_ed25519(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        bootstrap: (1..=net.nodes)
            .map(|i| net.addr(i).parse::<Multiaddr>().expect("node address"))
            .collect(),
        supplier: None,
    })
    .await
    .expect("node starts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    node
}

fn peer_of_node(net: &Testnet, i: usize) -> PeerId {
    net.addr(i)
        .rsplit("/p2p/")
        .next()
        .and_then(|p| p.parse().ok())
        .expect("peer id in the address")
}

async fn ask(node: &Node, peer: PeerId, frame: Vec<u8>) -> Response {
    let bytes = node
        .request(peer, frame)
        .await
        .expect("the honest supplier answers");
    protocol::decode_response(&bytes.into_vec()).expect("a well-formed response")
}

fn enc(r: &Request) -> Vec<u8> {
    protocol::encode_request(r)
}

fn store_req(key: &ed25519_dalek::SigningKey, audience: [u8; 32], data: &[u8]) -> Request {
    Request::Store {
        env: Envelope::sign(
            key,
            audience,
            Op::Store {
                shard: ShardId::of(data),
                len: data.len() as u64,
            },
        ),
        data: data.to_vec(),
    }
}

#[test]
fn a_malicious_node_cannot_read_damage_or_delete_another_users_data() {
    require_root_and_fuse();
    let root = scratch("adversary");
    let net = Testnet::up(&root, 6);
    let (c, paper) = Customer::init(&root, &net);
    c.mount();
    let data = root.join("victim.bin");
    write_random(&data, 24 << 20, 4242);
    ok(Command::new("cp").arg(&data).arg(c.mnt.join("victim.bin")));
    std::fs::write(c.mnt.join("note.txt"), b"the victim's small file").expect("write");
    c.sync();
    let victim_keys = MasterSecret::from_paper_key(&paper)
        .expect("paper key")
        .derive();
    let victim = victim_keys.public().to_bytes();
    let victim_hex = hex::encode(victim);
    let victim_shards: Vec<std::path::PathBuf> = shard_files_in(&net.node_dir(1).join("shards"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&victim_hex))
        .collect();
    assert!(
        !victim_shards.is_empty(),
        "the victim has no shard on node 1"
    );
    let before: Vec<_> = (1..=6)
        .flat_map(|i| shard_files_in(&net.node_dir(i).join("shards")))
        .map(|p| (p.clone(), std::fs::read(&p).expect("shard")))
        .collect();

    let rt = runtime();
    rt.block_on(async {
        let atk = join(&net).await;
        let evil = ed25519_dalek::SigningKey::from_bytes(&[66; 32]);
        let others = ed25519_dalek::SigningKey::from_bytes(&[67; 32]);
        for i in 1..=6 {
            let peer = peer_of_node(&net, i);
            let aud = protocol::peer_key(&peer).expect("ed25519 peer id");
            let theirs: Vec<ShardId> = shard_files_in(&net.node_dir(i).join("shards"))
                .iter()
                .filter(|p| p.to_string_lossy().contains(&victim_hex))
                .filter_map(|p| p.file_name()?.to_str().and_then(|n| hex::decode(n).ok()))
                .filter_map(|b| <[u8; 32]>::try_from(b).ok().map(ShardId))
                .collect();
            let shard = *theirs.first().expect("the victim has shards on every node");

            // Malformed, unknown-version, truncated and oversized messages.
            assert!(matches!(
                ask(&atk, peer, vec![WIRE_VERSION, 0xde, 0xad, 0xbe, 0xef]).await,
                Response::Error(WireError::Malformed(_))
            ));
            assert_eq!(
                ask(&atk, peer, vec![0xee, 1, 2]).await,
                Response::Error(WireError::Version(0xee))
            );
            let whole = enc(&store_req(&evil, aud, &[5u8; 4096]));
            assert!(matches!(
                ask(&atk, peer, whole[..whole.len() / 2].to_vec()).await,
                Response::Error(WireError::Malformed(_))
            ));
            assert_eq!(
                ask(
                    &atk,
                    peer,
                    enc(&store_req(&evil, aud, &vec![1u8; MAX_SHARD + 1]))
                )
                .await,
                Response::Error(WireError::TooLarge)
            );
            // A frame over the limit is not even sent by the codec; the limit holds on both
            // ends (the reading side checks the length before allocating).
            assert!(
                atk.request(peer, vec![0u8; protocol::MAX_FRAME + 1])
                    .await
                    .is_err()
            );

            // Unsigned and forged requests against the victim's data.
            let Request::Store { mut env, data } = store_req(&evil, aud, b"overwrite") else {
                unreachable!()
            };
            env.signature.clear();
            assert_eq!(
                ask(&atk, peer, enc(&Request::Store { env, data })).await,
                Response::Error(WireError::BadSignature)
            );
            let mut forged_delete = Envelope::sign(&evil, aud, Op::Delete { shard });
            forged_delete.signed.customer = victim;
            assert_eq!(
                ask(&atk, peer, enc(&Request::Delete(forged_delete))).await,
                Response::Error(WireError::BadSignature)
            );
            let Request::Store { mut env, data } = store_req(&evil, aud, b"overwrite") else {
                unreachable!()
            };
            env.signed.customer = victim;
            assert_eq!(
                ask(&atk, peer, enc(&Request::Store { env, data })).await,
                Response::Error(WireError::BadSignature)
            );
            let mut forged_root_delete = Envelope::sign(&evil, aud, Op::DeleteRoot { seq: 1 });
            forged_root_delete.signed.customer = victim;
            assert_eq!(
                ask(&atk, peer, enc(&Request::DeleteRoot(forged_root_delete))).await,
                Response::Error(WireError::BadSignature)
            );
            let mut forged_lease = Envelope::sign(
                &evil,
                aud,
                Op::Lease {
                    device: [1; 32],
                    ttl_ms: 60_000,
                },
            );
            forged_lease.signed.customer = victim;
            assert_eq!(
                ask(&atk, peer, enc(&Request::Lease(forged_lease))).await,
                Response::Error(WireError::BadSignature)
            );
            // A root record for the victim that the victim did not sign.
            let fake_root = RootRecord {
                user: victim,
                seq: u64::MAX,
                time_ms: 1,
                manifest: vec![0; 64],
            }
            .sign(&MasterSecret::from_bytes(&[3; 32]).expect("secret").derive());
            assert_eq!(
                ask(
                    &atk,
                    peer,
                    enc(&Request::PutRoot {
                        customer: victim,
                        record: fake_root
                    })
                )
                .await,
                Response::Error(WireError::BadSignature)
            );

            // Deletes in the attacker's own name touch only the attacker's namespace.
            let own_delete = Envelope::sign(&evil, aud, Op::Delete { shard });
            assert_eq!(
                ask(&atk, peer, enc(&Request::Delete(own_delete))).await,
                Response::Deleted
            );
            // Requests signed for another supplier, replays, and stale ones.
            let elsewhere = Envelope::sign(&evil, [9; 32], Op::List);
            assert_eq!(
                ask(&atk, peer, enc(&Request::List(elsewhere))).await,
                Response::Error(WireError::WrongAudience)
            );
            let list = enc(&Request::List(Envelope::sign(&evil, aud, Op::List)));
            assert!(matches!(
                ask(&atk, peer, list.clone()).await,
                Response::List(_)
            ));
            assert_eq!(
                ask(&atk, peer, list).await,
                Response::Error(WireError::Replay)
            );
            let stale = Envelope::sign_with(
                &evil,
                aud,
                Op::List,
                protocol::now_ms() - 3_600_000,
                [7; 16],
            );
            assert_eq!(
                ask(&atk, peer, enc(&Request::List(stale))).await,
                Response::Error(WireError::Expired)
            );

            // Storage needs a contract; a flood stops at its quota.
            assert_eq!(
                ask(&atk, peer, enc(&store_req(&others, aud, b"no contract"))).await,
                Response::Error(WireError::NoContract)
            );
            let contract = Envelope::sign(
                &evil,
                aud,
                Op::Contract {
                    quota: 1 << 20,
                    expires_ms: protocol::now_ms() + 60_000,
                },
            );
            let Response::ContractGranted(grant) =
                ask(&atk, peer, enc(&Request::Contract(contract.clone()))).await
            else {
                panic!("node {i} refused a contract within its offer")
            };
            contract
                .verify_grant(&grant)
                .expect("grant signed by the supplier");
            // Bytes under the victim's shard id in its own namespace: refused, they do not
            // hash to it.
            let env = Envelope::sign(&evil, aud, Op::Store { shard, len: 1 });
            assert_eq!(
                ask(
                    &atk,
                    peer,
                    enc(&Request::Store {
                        env,
                        data: b"x".to_vec()
                    })
                )
                .await,
                Response::Error(WireError::HashMismatch)
            );
            let mut refused = None;
            for n in 0..8u8 {
                let r = ask(&atk, peer, enc(&store_req(&evil, aud, &vec![n; 300_000]))).await;
                if r != Response::Stored {
                    refused = Some((n, r));
                    break;
                }
            }
            assert_eq!(
                refused,
                Some((3, Response::Error(WireError::Quota))),
                "node {i}: the fourth 300 kB shard should pass a 1 MiB quota"
            );
        }

        // A request flood against one node: slowed down with Busy, the node stays up.
        let peer = peer_of_node(&net, 1);
        let usage = enc(&Request::Usage { customer: victim });
        let mut busy = 0;
        for _ in 0..40 {
            let tasks: Vec<_> = (0..50)
                .map(|_| {
                    let (atk, usage) = (atk.clone(), usage.clone());
                    tokio::spawn(async move { ask(&atk, peer, usage).await })
                })
                .collect();
            for t in tasks {
                if t.await.expect("request task") == Response::Error(WireError::Busy) {
                    busy += 1;
                }
            }
        }
        assert!(busy > 0, "2000 requests in a burst were never slowed down");

        // DHT records forged for the victim: garbage, a genuine record with a byte flipped,
        // and an unsigned record claiming a higher sequence number.
        let key = root_key(&victim);
        let genuine: Vec<Vec<u8>> = atk
            .get_records(key.clone())
            .await
            .into_iter()
            .filter(|v| RootRecord::verify(v, &victim).is_ok())
            .collect();
        assert!(
            !genuine.is_empty(),
            "the victim's root record is not in the DHT"
        );
        let mut flipped = genuine[0].clone();
        let at = flipped.len() - 10;
        flipped[at] ^= 1;
        for forged in [b"garbage".to_vec(), flipped] {
            let _ = atk.put_record(key.clone(), forged).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(atk);
        tokio::time::sleep(Duration::from_secs(2)).await;

        // With the attacker gone, what the honest nodes keep for the victim all verifies.
        let probe = join(&net).await;
        let found = probe.get_records(key).await;
        assert!(
            !found.is_empty(),
            "the victim's record vanished from the DHT"
        );
        for v in &found {
            assert!(
                RootRecord::verify(v, &victim).is_ok(),
                "an honest node keeps a forged root record for the victim"
            );
        }
    });

    // The honest nodes are all up, the victim's shards are untouched, and the files read
    // back byte for byte from the network.
    for i in 1..=6 {
        assert!(
            std::path::Path::new(&format!("/proc/{}", net.pid(i))).exists(),
            "node {i} died under attack"
        );
    }
    for (p, bytes) in &before {
        assert_eq!(
            std::fs::read(p).ok().as_ref(),
            Some(bytes),
            "{} changed",
            p.display()
        );
    }
    c.reads_back(&data, "victim.bin");
    assert_eq!(
        std::fs::read(c.mnt.join("note.txt")).expect("read"),
        b"the victim's small file"
    );
    // And the victim can still write, sync and publish.
    std::fs::write(c.mnt.join("after.txt"), b"written after the attack").expect("write");
    c.sync();
    c.umount();
    for i in 1..=6 {
        assert!(customer_dirs_in(&net.node_dir(i).join("shards")).contains(&victim_hex));
    }
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_supplier_file_log_line_or_dht_record_holds_plaintext_names_or_keys() {
    require_root_and_fuse();
    let root = scratch("secrets");
    // Suppliers log everything they do at debug level.
    let net = Testnet::up_logging(&root, 6, "debug,libp2p=debug");
    let (c, paper) = Customer::init(&root, &net);
    c.mount();
    let name = "Quarterly-Report-CONFIDENTIAL-8841";
    let dir = "Project-Nightingale-7730";
    let marker = b"PLAINTEXT-MARKER-the-quick-brown-fox-5521";
    std::fs::create_dir(c.mnt.join(dir)).expect("mkdir");
    // Random bytes (so nothing deduplicates away) with the marker every 64 KiB.
    let mut content = Vec::new();
    let mut rng = Prng::new(31);
    for _ in 0..64 {
        let mut piece = vec![0u8; 64 << 10];
        rng.fill(&mut piece);
        content.extend_from_slice(&piece);
        content.extend_from_slice(marker);
    }
    std::fs::write(c.mnt.join(dir).join(name), &content).expect("write");
    std::fs::write(c.mnt.join("small-secret-note-9932.txt"), marker).expect("write");
    std::os::unix::fs::symlink(name, c.mnt.join("link-target-name-6612")).expect("symlink");
    c.sync();

    let secret = MasterSecret::from_paper_key(&paper).expect("paper key");
    let keys = secret.derive();
    let user = keys.public().to_bytes();
    // Secrets, as raw bytes and as hex (lower and upper case).
    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        ("master secret".into(), secret.as_bytes().to_vec()),
        ("signing key".into(), keys.signing.to_bytes().to_vec()),
        ("seal key".into(), keys.seal.to_vec()),
        ("metadata key".into(), keys.meta.to_vec()),
        ("chunk id key".into(), keys.chunk_id.to_vec()),
    ];
    for (what, raw) in secrets.clone() {
        secrets.push((format!("{what} (hex)"), hex::encode(&raw).into_bytes()));
        secrets.push((
            format!("{what} (HEX)"),
            hex::encode_upper(&raw).into_bytes(),
        ));
    }
    secrets.push(("paper key".into(), paper.trim().as_bytes().to_vec()));
    // Eight consecutive words are as good as a leak.
    let words: Vec<&str> = paper.split_whitespace().collect();
    secrets.push((
        "paper key words".into(),
        words[8..16].join(" ").into_bytes(),
    ));
    let plaintext: Vec<(String, Vec<u8>)> = vec![
        ("file content".into(), marker.to_vec()),
        ("file name".into(), name.as_bytes().to_vec()),
        ("directory name".into(), dir.as_bytes().to_vec()),
        ("small file name".into(), b"small-secret-note-9932".to_vec()),
        ("symlink name".into(), b"link-target-name-6612".to_vec()),
    ];

    // Everything the suppliers keep or wrote: shards, root records, contracts, their own
    // database and configuration, and their logs.
    let mut files = Vec::new();
    for i in 1..=net.nodes {
        walk_files(&net.node_dir(i), &mut files);
    }
    let logs = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "log"))
        .count();
    assert_eq!(logs, net.nodes, "every supplier writes a log");
    let mut scanned = 0u64;
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_default();
        scanned += bytes.len() as u64;
        for (what, needle) in secrets.iter().chain(&plaintext) {
            assert!(!contains(&bytes, needle), "{what} found in {}", f.display());
        }
    }
    // 4 MiB of file data at 4+2 is 6 MiB of shards, besides metadata and logs.
    assert!(scanned > 6 << 20, "only {scanned} bytes scanned");

    // The customer's own logs never hold key material either.
    let mut own = Vec::new();
    walk_files(&c.home, &mut own);
    for f in own
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "log"))
    {
        let bytes = std::fs::read(f).unwrap_or_default();
        for (what, needle) in &secrets {
            assert!(
                !contains(&bytes, needle),
                "{what} in the customer's log {}",
                f.display()
            );
        }
    }

    // What the DHT holds for the user: genuine root records with nothing readable in them.
    let rt = runtime();
    let records = rt.block_on(async {
        let probe = join(&net).await;
        probe.get_records(root_key(&user)).await
    });
    assert!(!records.is_empty(), "no root record in the DHT");
    for r in &records {
        assert!(RootRecord::verify(r, &user).is_ok());
        for (what, needle) in secrets.iter().chain(&plaintext) {
            assert!(!contains(r, needle), "{what} found in a DHT record");
        }
    }
    c.umount();
}
