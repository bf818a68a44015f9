//! Two real libp2p nodes on 127.0.0.1 (TCP and QUIC): a customer sends well-formed, malformed,
//! unsigned, forged and oversized requests to a supplier; every bad one is refused with a
//! typed error and the supplier keeps serving.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use dustfs_core::shard::ShardId;
use dustfs_net::host::{Node, NodeConfig};
use dustfs_net::protocol::{self, Envelope, MAX_SHARD, Op, Request, Response, WireError};
use dustfs_net::supplier::ShardDir;
use dustfs_net::{Keypair, Multiaddr};
use ed25519_dalek::SigningKey;

async fn pair(transport: &str) -> (Node, Node, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let keypair = Keypair::generate_ed25519();
    let signer = protocol::signing_key_of(&keypair).unwrap();
    let dir = Arc::new(ShardDir::open(tmp.path(), 64 << 20, signer).unwrap());
    let listen: Multiaddr = match transport {
        "tcp" => "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        _ => "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
    };
    let supplier = Node::start(NodeConfig {
        keypair,
        listen: vec![listen],
        bootstrap: vec![],
        supplier: Some(dir),
    })
    .await
    .unwrap();
    let addr = supplier.wait_listening(1, Duration::from_secs(5)).await[0].clone();
    let full: Multiaddr = format!("{addr}/p2p/{}", supplier.peer_id).parse().unwrap();
    let customer = Node::start(NodeConfig {
        keypair: Keypair::generate_ed25519(),
        listen: vec![],
        bootstrap: vec![full],
        supplier: None,
    })
    .await
    .unwrap();
    (supplier, customer, tmp)
}

async fn ask(c: &Node, s: &Node, frame: Vec<u8>) -> Response {
    let resp = c
        .request(s.peer_id, frame)
        .await
        .expect("the supplier answers");
    protocol::decode_response(&resp.into_vec()).expect("a well-formed response")
}

fn store(key: &SigningKey, to: &Node, data: &[u8]) -> Request {
    let env = Envelope::sign(
        key,
        audience(to),
        Op::Store {
            shard: ShardId::of(data),
            len: data.len() as u64,
        },
    );
    Request::Store {
        env,
        data: data.to_vec(),
    }
}

fn audience(n: &Node) -> [u8; 32] {
    protocol::peer_key(&n.peer_id).unwrap()
}

async fn scenario(transport: &str) {
    let (s, c, _tmp) = pair(transport).await;
    let key = SigningKey::from_bytes(&[9; 32]);
    let data = vec![42u8; 300_000];

    // Malformed bytes, an unknown version, an unsigned and a forged store: all refused.
    assert!(matches!(
        ask(&c, &s, vec![protocol::WIRE_VERSION, 0xff, 0xff, 0xff]).await,
        Response::Error(WireError::Malformed(_))
    ));
    assert_eq!(
        ask(&c, &s, vec![77, 0]).await,
        Response::Error(WireError::Version(77))
    );
    let Request::Store { mut env, data: d } = store(&key, &s, &data) else {
        unreachable!()
    };
    env.signature = vec![0; 64];
    let unsigned = protocol::encode_request(&Request::Store { env, data: d });
    assert_eq!(
        ask(&c, &s, unsigned).await,
        Response::Error(WireError::BadSignature)
    );
    let Request::Store { mut env, data: d } = store(&key, &s, &data) else {
        unreachable!()
    };
    env.signed.customer = SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes();
    let forged = protocol::encode_request(&Request::Store { env, data: d });
    assert_eq!(
        ask(&c, &s, forged).await,
        Response::Error(WireError::BadSignature)
    );
    // An oversized shard.
    let huge = store(&key, &s, &vec![1u8; MAX_SHARD + 1]);
    assert_eq!(
        ask(&c, &s, protocol::encode_request(&huge)).await,
        Response::Error(WireError::TooLarge)
    );

    // Without a contract nothing is stored; the customer asks for one and checks the grant.
    assert_eq!(
        ask(&c, &s, protocol::encode_request(&store(&key, &s, &data))).await,
        Response::Error(WireError::NoContract)
    );
    let env = Envelope::sign(
        &key,
        audience(&s),
        Op::Contract {
            quota: 64 << 20,
            expires_ms: protocol::now_ms() + 60_000,
        },
    );
    let Response::ContractGranted(grant) = ask(
        &c,
        &s,
        protocol::encode_request(&Request::Contract(env.clone())),
    )
    .await
    else {
        panic!("contract refused")
    };
    env.verify_grant(&grant).unwrap();

    // The supplier still serves honest requests.
    let good = protocol::encode_request(&store(&key, &s, &data));
    assert_eq!(ask(&c, &s, good.clone()).await, Response::Stored);
    assert_eq!(ask(&c, &s, good).await, Response::Error(WireError::Replay));
    let fetch = Request::Fetch {
        customer: key.verifying_key().to_bytes(),
        shard: ShardId::of(&data),
        range: None,
    };
    assert_eq!(
        ask(&c, &s, protocol::encode_request(&fetch)).await,
        Response::Shard(data)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_over_tcp_and_the_supplier_keeps_serving() {
    scenario("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_over_quic_and_the_supplier_keeps_serving() {
    scenario("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_genuine_root_records_put_by_others_are_kept_in_the_dht() {
    use dustfs_core::keys::MasterSecret;
    use dustfs_core::root::RootRecord;
    let (s, c, _tmp) = pair("tcp").await;
    let keys = MasterSecret::from_bytes(&[7; 32]).unwrap().derive();
    let user = keys.signing.verifying_key().to_bytes();
    let key = dustfs_net::host::root_key(&user);
    let record = |seq: u64| {
        RootRecord {
            user,
            seq,
            time_ms: 1,
            manifest: vec![seq as u8; 100],
        }
        .sign(&keys)
    };
    let put = |value: Vec<u8>| {
        let (c, key) = (c.clone(), key.clone());
        async move {
            for _ in 0..50 {
                if c.put_record(key.clone(), value.clone()).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            panic!("the record was never sent to a peer");
        }
    };
    // What the other node keeps, once it holds `want` (puts are acknowledged before the
    // receiving node has filed them), or after 3 s.
    let kept = |want: Option<Vec<u8>>| {
        let (s, key) = (s.clone(), key.clone());
        async move {
            for _ in 0..30 {
                let v = s.local_record(key.clone()).await;
                if v == want {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            s.local_record(key).await
        }
    };
    // A genuine record is kept by the other node, and found through the DHT.
    put(record(5)).await;
    assert_eq!(kept(Some(record(5))).await, Some(record(5)));
    assert!(s.get_records(key.clone()).await.contains(&record(5)));
    // Garbage, a forged signature and an older (replayed) record do not replace it.
    put(b"root record v1".to_vec()).await;
    let mut forged = record(9);
    let at = forged.len() - 3;
    forged[at] ^= 1;
    put(forged).await;
    put(record(4)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(kept(None).await, Some(record(5)));
    // A newer genuine one does.
    put(record(6)).await;
    assert_eq!(kept(Some(record(6))).await, Some(record(6)));
    // Records under keys that are not dustfs root keys are not kept at all.
    let other = b"/someone/else".to_vec();
    for _ in 0..50 {
        if c.put_record(other.clone(), b"x".to_vec()).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.local_record(other).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_slowed_down_and_others_are_still_served() {
    let (s, c, _tmp) = pair("tcp").await;
    let usage = protocol::encode_request(&Request::Usage { customer: [1; 32] });
    // Far more requests than the per-peer rate allows (400/s, bursts of 800), 50 at a time.
    let mut answers = Vec::new();
    for _ in 0..40 {
        answers
            .extend(futures::future::join_all((0..50).map(|_| ask(&c, &s, usage.clone()))).await);
    }
    let busy = answers
        .iter()
        .filter(|a| **a == Response::Error(WireError::Busy))
        .count();
    let served = answers
        .iter()
        .filter(|a| matches!(a, Response::Usage { .. }))
        .count();
    assert!(busy > 0, "no request was refused as busy");
    assert!(served >= 800, "only {served} requests were served");
    assert_eq!(busy + served, answers.len());
    // Another peer is served meanwhile, and the flooder again once it slows down.
    let other = Node::start(NodeConfig {
        keypair: Keypair::generate_ed25519(),
        listen: vec![],
        bootstrap: vec![
            format!("{}/p2p/{}", s.listen_addrs()[0], s.peer_id)
                .parse()
                .unwrap(),
        ],
        supplier: None,
    })
    .await
    .unwrap();
    assert!(matches!(
        ask(&other, &s, usage.clone()).await,
        Response::Usage { .. }
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(ask(&c, &s, usage).await, Response::Usage { .. }));
}

/// A connection that closes while a store is under way (a spare connection closed, an idle or
/// moved one) costs the customer one resend, not an error: the store lands once, and the
/// supplier is not passed over afterwards.
#[test]
fn a_store_whose_connection_closes_midway_is_sent_again_and_lands() {
    use dustfs_core::store::ShardStore;
    use dustfs_net::store::NetStore;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (s, c, tmp) = rt.block_on(pair("tcp"));
    let key = SigningKey::from_bytes(&[9; 32]);
    let store = Arc::new(NetStore::new(c.clone(), key.clone(), rt.handle().clone()));
    let supplier = s.peer_id.to_string();
    // Connected, with a contract: what follows is the store alone.
    let mut tries = 0;
    while store.ensure_contract(&supplier).is_err() {
        tries += 1;
        assert!(tries < 50, "no contract");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut closed_midway = 0;
    for (n, delay_ms) in [1u64, 3, 10, 30, 1, 3, 10, 30].into_iter().enumerate() {
        let data = std::sync::Arc::new(vec![n as u8; 4 << 20]);
        let id = ShardId::of(&data);
        let resent = store.resent();
        let h = {
            let (store, supplier) = (store.clone(), supplier.clone());
            std::thread::spawn(move || store.store(&supplier, &id, &data))
        };
        std::thread::sleep(Duration::from_millis(delay_ms));
        rt.block_on(c.disconnect(s.peer_id)).unwrap();
        h.join()
            .unwrap()
            .expect("the store lands despite the closed connection");
        closed_midway += store.resent() - resent;
        // The supplier holds it and is still served to the next request at once.
        assert_eq!(store.fetch(&supplier, &id).unwrap().len(), 4 << 20);
    }
    assert!(
        closed_midway > 0,
        "no disconnect hit a store under way; the test proves nothing"
    );
    drop(tmp);
}
