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
    let dir = Arc::new(ShardDir::open(tmp.path(), 64 << 20).unwrap());
    let listen: Multiaddr = match transport {
        "tcp" => "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        _ => "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
    };
    let supplier = Node::start(NodeConfig {
        keypair: Keypair::generate_ed25519(),
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
    protocol::decode_response(&resp).expect("a well-formed response")
}

fn store(key: &SigningKey, data: &[u8]) -> Request {
    let env = Envelope::sign(
        key,
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

async fn scenario(transport: &str) {
    let (s, c, _tmp) = pair(transport).await;
    let key = SigningKey::from_bytes(&[9; 32]);
    let data = vec![42u8; 300_000];

    // Malformed bytes, an unknown version, an unsigned and a forged store: all refused.
    assert!(matches!(
        ask(&c, &s, vec![1, 0xff, 0xff, 0xff]).await,
        Response::Error(WireError::Malformed(_))
    ));
    assert_eq!(
        ask(&c, &s, vec![77, 0]).await,
        Response::Error(WireError::Version(77))
    );
    let Request::Store { mut env, data: d } = store(&key, &data) else {
        unreachable!()
    };
    env.signature = vec![0; 64];
    let unsigned = protocol::encode_request(&Request::Store { env, data: d });
    assert_eq!(
        ask(&c, &s, unsigned).await,
        Response::Error(WireError::BadSignature)
    );
    let Request::Store { mut env, data: d } = store(&key, &data) else {
        unreachable!()
    };
    env.signed.customer = SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes();
    let forged = protocol::encode_request(&Request::Store { env, data: d });
    assert_eq!(
        ask(&c, &s, forged).await,
        Response::Error(WireError::BadSignature)
    );
    // An oversized shard.
    let huge = store(&key, &vec![1u8; MAX_SHARD + 1]);
    assert_eq!(
        ask(&c, &s, protocol::encode_request(&huge)).await,
        Response::Error(WireError::TooLarge)
    );

    // The supplier still serves honest requests.
    let good = protocol::encode_request(&store(&key, &data));
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
async fn a_record_put_in_the_dht_by_one_node_is_found_by_another() {
    let (s, c, _tmp) = pair("tcp").await;
    // Let the customer's bootstrap connection and routing settle.
    let key = dustfs_net::host::root_key(&[7u8; 32]);
    let mut stored = false;
    for _ in 0..50 {
        if c.put_record(key.clone(), b"root record v1".to_vec())
            .await
            .is_ok()
        {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stored, "the record was never stored on a peer");
    let found = s.get_records(key.clone()).await;
    assert!(found.iter().any(|v| v == b"root record v1"), "{found:?}");
    assert!(
        c.get_records(dustfs_net::host::root_key(&[8u8; 32]))
            .await
            .is_empty()
    );
}
