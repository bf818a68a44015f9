//! The engine's shard store over the network: signs requests with the user key, sends them to
//! suppliers through the node, and maps wire refusals to [`StoreError`]s. Its methods block
//! the calling (non-async) thread on the node's runtime.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dustfs_core::shard::ShardId;
use dustfs_core::store::{ShardStore, StoreError, SupplierId};
use ed25519_dalek::SigningKey;
use libp2p::PeerId;

use crate::host::{NetError, Node};
use crate::protocol::{self, Envelope, Op, Request, Response, WireError};

/// How long a supplier that could not be reached is skipped without trying.
const DEAD_FOR: Duration = Duration::from_secs(10);

/// How many times a request whose connection closed under it is sent in all. The first resend
/// can land on the same closing connection (the node learns the request failed before it
/// learns the connection is gone), so there is a short pause before each resend.
const SENDS: u32 = 4;

/// The pause before the first resend; it doubles with each one after (10, 20, 40 ms).
const RESEND_PAUSE: Duration = Duration::from_millis(10);

/// How long a contract asked for lasts; it is renewed when less than half is left.
const CONTRACT_TERM_MS: u64 = 30 * 24 * 3600 * 1000;

/// A [`ShardStore`] backed by a libp2p node.
pub struct NetStore {
    node: Node,
    key: SigningKey,
    rt: tokio::runtime::Handle,
    dead: Mutex<HashMap<PeerId, Instant>>,
    /// Contracts granted (and verified): supplier → (quota, expiry in Unix ms).
    contracts: Mutex<HashMap<PeerId, (u64, u64)>>,
    /// Requests sent again because their connection closed before the answer.
    resent: AtomicU64,
}

impl NetStore {
    /// Wraps a node; `key` is the user's signing key, `rt` the runtime the node runs on.
    pub fn new(node: Node, key: SigningKey, rt: tokio::runtime::Handle) -> Self {
        Self {
            node,
            key,
            rt,
            dead: Mutex::new(HashMap::new()),
            contracts: Mutex::new(HashMap::new()),
            resent: AtomicU64::new(0),
        }
    }

    /// Requests sent a second time because the connection they went out on closed before
    /// their answer came.
    pub fn resent(&self) -> u64 {
        self.resent.load(Ordering::Relaxed)
    }

    /// Signs `op` for `supplier` (its key is the audience).
    fn sign(&self, supplier: &SupplierId, op: Op) -> Result<Envelope, StoreError> {
        let audience = supplier
            .parse::<PeerId>()
            .ok()
            .and_then(|p| protocol::peer_key(&p))
            .ok_or_else(|| StoreError::Refused(format!("supplier id {supplier} has no key")))?;
        Ok(Envelope::sign(&self.key, audience, op))
    }

    /// Makes sure a live contract with `supplier` exists: asks for one with the quota the
    /// supplier offers (from `Usage`), checks the supplier's signature over the terms, and
    /// renews it when less than half its term is left. Returns the contracted quota.
    pub fn ensure_contract(&self, supplier: &SupplierId) -> Result<u64, StoreError> {
        let peer: PeerId = supplier
            .parse()
            .map_err(|_| StoreError::Refused(format!("bad supplier id {supplier}")))?;
        let now = protocol::now_ms();
        if let Some((quota, until)) = lock(&self.contracts).get(&peer).copied()
            && until > now + CONTRACT_TERM_MS / 2
        {
            return Ok(quota);
        }
        let offered = match self.call(supplier, || {
            Ok(Request::Usage {
                customer: self.customer(),
            })
        })? {
            Response::Usage { quota, .. } => quota,
            Response::Error(e) => return Err(refusal(e)),
            _ => return Err(StoreError::Refused("unexpected answer to usage".into())),
        };
        let expires_ms = now + CONTRACT_TERM_MS;
        let mut sent = None;
        let answer = self.call(supplier, || {
            let env = self.sign(
                supplier,
                Op::Contract {
                    quota: offered,
                    expires_ms,
                },
            )?;
            sent = Some(env.clone());
            Ok(Request::Contract(env))
        })?;
        let env = sent.ok_or_else(|| StoreError::Refused("no contract was sent".into()))?;
        match answer {
            Response::ContractGranted(grant) => {
                env.verify_grant(&grant).map_err(|_| {
                    StoreError::Refused(format!("{supplier} granted a contract it did not sign"))
                })?;
                lock(&self.contracts).insert(peer, (offered, expires_ms));
                Ok(offered)
            }
            Response::Error(e) => Err(refusal(e)),
            _ => Err(StoreError::Refused("unexpected answer to contract".into())),
        }
    }

    fn is_dead(&self, p: &PeerId) -> bool {
        let mut d = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        d.retain(|_, t| now.duration_since(*t) < DEAD_FOR);
        d.contains_key(p)
    }

    /// Sends the request `make` builds and decodes the answer. When the connection it went
    /// out on closes before the answer (the node closes spare connections; idle and moved ones
    /// close too), it is built again, with a fresh envelope, and sent again (up to [`SENDS`]
    /// times in all): every request
    /// is idempotent (a shard stored twice is kept once, a second delete finds nothing), and
    /// a fresh nonce keeps the supplier's replay check from refusing the second copy. A
    /// supplier that fails otherwise is passed over for [`DEAD_FOR`].
    fn call(
        &self,
        supplier: &SupplierId,
        mut make: impl FnMut() -> Result<Request, StoreError>,
    ) -> Result<Response, StoreError> {
        self.call_frame(supplier, || {
            make().map(|r| protocol::encode_request(&r).into())
        })
    }

    /// [`Self::call`] with a request already encoded by `make`.
    fn call_frame(
        &self,
        supplier: &SupplierId,
        mut make: impl FnMut() -> Result<protocol::Frame, StoreError>,
    ) -> Result<Response, StoreError> {
        let peer: PeerId = supplier
            .parse()
            .map_err(|_| StoreError::Refused(format!("bad supplier id {supplier}")))?;
        if self.is_dead(&peer) {
            return Err(StoreError::Unreachable(format!("{peer} failed recently")));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let frame = make()?;
            match self.rt.block_on(self.node.request(peer, frame)) {
                Ok(resp) => {
                    return protocol::decode_response_frame(resp)
                        .map_err(|e| StoreError::Refused(e.to_string()));
                }
                Err(e @ NetError::ConnectionClosed { .. }) if attempt < SENDS => {
                    tracing::debug!(%peer, error = %e, attempt, "sending again");
                    self.resent.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(RESEND_PAUSE * (1 << (attempt - 1)));
                }
                Err(e) => {
                    self.dead
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(peer, Instant::now());
                    return Err(StoreError::Unreachable(e.to_string()));
                }
            }
        }
    }

    fn customer(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Takes, renews or (with `ttl_ms` 0) releases this identity's writer lease on a supplier
    /// for `device`.
    pub fn lease(
        &self,
        supplier: &SupplierId,
        device: [u8; 32],
        ttl_ms: u64,
    ) -> Result<LeaseAnswer, StoreError> {
        match self.call(supplier, || {
            Ok(Request::Lease(
                self.sign(supplier, Op::Lease { device, ttl_ms })?,
            ))
        })? {
            Response::LeaseGranted => Ok(LeaseAnswer::Granted),
            Response::LeaseHeld {
                device,
                remaining_ms,
            } => Ok(LeaseAnswer::HeldBy {
                device,
                remaining_ms,
            }),
            Response::Error(e) => Err(refusal(e)),
            other => Err(unexpected(&other)),
        }
    }
}

/// A supplier's answer to a writer-lease request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAnswer {
    /// This device holds the lease now.
    Granted,
    /// Another device does.
    HeldBy {
        /// The holder.
        device: [u8; 32],
        /// Milliseconds until its lease expires unless renewed.
        remaining_ms: u64,
    },
}

fn refusal(e: WireError) -> StoreError {
    match e {
        WireError::Quota | WireError::Full => StoreError::Quota,
        WireError::NotFound => StoreError::NotFound,
        // Rate limited: like an unreachable supplier, try later or elsewhere.
        WireError::Busy => StoreError::Unreachable(WireError::Busy.to_string()),
        other => StoreError::Refused(other.to_string()),
    }
}

fn unexpected(r: &Response) -> StoreError {
    StoreError::Refused(format!("unexpected answer {:?}", std::mem::discriminant(r)))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ShardStore for NetStore {
    fn preferred(&self, supplier: &SupplierId) -> bool {
        supplier
            .parse::<PeerId>()
            .is_ok_and(|p| !self.node.relayed_only(&p))
    }

    fn suppliers(&self) -> Vec<SupplierId> {
        self.node
            .suppliers()
            .into_iter()
            .filter(|p| !self.is_dead(p))
            .map(|p| p.to_string())
            .collect()
    }

    fn store(
        &self,
        supplier: &SupplierId,
        id: &ShardId,
        bytes: &Arc<Vec<u8>>,
    ) -> Result<(), StoreError> {
        // One retry: a supplier that lost or let our contract lapse says so, and we ask again.
        for attempt in 0..2 {
            self.ensure_contract(supplier)?;
            match self.call_frame(supplier, || {
                let env = self.sign(
                    supplier,
                    Op::Store {
                        shard: *id,
                        len: bytes.len() as u64,
                    },
                )?;
                Ok(protocol::store_frame(&env, bytes.clone()))
            })? {
                Response::Stored => return Ok(()),
                Response::Error(WireError::NoContract) if attempt == 0 => {
                    if let Ok(p) = supplier.parse::<PeerId>() {
                        lock(&self.contracts).remove(&p);
                    }
                }
                Response::Error(e) => return Err(refusal(e)),
                other => return Err(unexpected(&other)),
            }
        }
        Err(refusal(WireError::NoContract))
    }

    fn fetch(&self, supplier: &SupplierId, id: &ShardId) -> Result<Vec<u8>, StoreError> {
        match self.call(supplier, || {
            Ok(Request::Fetch {
                customer: self.customer(),
                shard: *id,
                range: None,
            })
        })? {
            Response::Shard(b) => Ok(b),
            Response::Error(e) => Err(refusal(e)),
            other => Err(unexpected(&other)),
        }
    }

    fn audit(
        &self,
        supplier: &SupplierId,
        id: &ShardId,
        start: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        match self.call(supplier, || {
            Ok(Request::Audit {
                customer: self.customer(),
                shard: *id,
                start,
                len,
            })
        })? {
            Response::Proof(b) => Ok(b),
            Response::Error(e) => Err(refusal(e)),
            other => Err(unexpected(&other)),
        }
    }

    fn usage(&self, supplier: &SupplierId) -> Result<(u64, u64), StoreError> {
        match self.call(supplier, || {
            Ok(Request::Usage {
                customer: self.customer(),
            })
        })? {
            Response::Usage { used, quota } => Ok((used, quota)),
            Response::Error(e) => Err(refusal(e)),
            other => Err(unexpected(&other)),
        }
    }

    fn list(&self, supplier: &SupplierId) -> Result<Vec<ShardId>, StoreError> {
        match self.call(supplier, || {
            Ok(Request::List(self.sign(supplier, Op::List)?))
        })? {
            Response::List(ids) => Ok(ids),
            Response::Error(e) => Err(refusal(e)),
            other => Err(unexpected(&other)),
        }
    }

    fn put_root(&self, supplier: &SupplierId, signed: &[u8]) -> Result<(), StoreError> {
        match self.call(supplier, || {
            Ok(Request::PutRoot {
                customer: self.customer(),
                record: signed.to_vec(),
            })
        })? {
            Response::RootKept => Ok(()),
            Response::Error(e) => Err(refusal(e)),
            other => Err(unexpected(&other)),
        }
    }

    fn delete_root(&self, supplier: &SupplierId, seq: u64) -> Result<(), StoreError> {
        match self.call(supplier, || {
            Ok(Request::DeleteRoot(
                self.sign(supplier, Op::DeleteRoot { seq })?,
            ))
        })? {
            Response::Deleted => Ok(()),
            Response::Error(e) => Err(refusal(e)),
            other => Err(unexpected(&other)),
        }
    }

    fn get_roots(&self, supplier: &SupplierId) -> Result<Vec<Vec<u8>>, StoreError> {
        match self.call(supplier, || {
            Ok(Request::GetRoots {
                customer: self.customer(),
            })
        })? {
            Response::Roots(v) => Ok(v.into_iter().map(serde_bytes::ByteBuf::into_vec).collect()),
            Response::Error(e) => Err(refusal(e)),
            other => Err(unexpected(&other)),
        }
    }

    fn delete(&self, supplier: &SupplierId, id: &ShardId) -> Result<(), StoreError> {
        match self.call(supplier, || {
            Ok(Request::Delete(
                self.sign(supplier, Op::Delete { shard: *id })?,
            ))
        })? {
            Response::Deleted => Ok(()),
            Response::Error(e) => Err(refusal(e)),
            other => Err(unexpected(&other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::host::NodeConfig;
    use crate::supplier::ShardDir;

    /// Two real nodes on 127.0.0.1: a supplier listening on `listen`, and the customer's store.
    fn pair(
        rt: &tokio::runtime::Runtime,
        dir: &std::path::Path,
        listen: &str,
    ) -> (Node, NetStore, SupplierId) {
        let (supplier, customer) = rt.block_on(async {
            let keypair = libp2p::identity::Keypair::generate_ed25519();
            let signer = protocol::signing_key_of(&keypair).unwrap();
            let shards = Arc::new(ShardDir::open(dir, 64 << 20, signer).unwrap());
            let s = Node::start(NodeConfig {
                keypair,
                listen: vec![listen.parse().unwrap()],
                bootstrap: vec![],
                supplier: Some(shards),
            })
            .await
            .unwrap();
            let addr = s.wait_listening(1, Duration::from_secs(5)).await[0].clone();
            let c = Node::start(NodeConfig {
                keypair: libp2p::identity::Keypair::generate_ed25519(),
                listen: vec![],
                bootstrap: vec![format!("{addr}/p2p/{}", s.peer_id).parse().unwrap()],
                supplier: None,
            })
            .await
            .unwrap();
            (s, c)
        });
        let store = NetStore::new(
            customer,
            SigningKey::from_bytes(&[9; 32]),
            rt.handle().clone(),
        );
        let id = supplier.peer_id.to_string();
        (supplier, store, id)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// The contract with the supplier, asked for until the nodes have found each other.
    fn contract(store: &NetStore, sup: &SupplierId) -> u64 {
        let mut tries = 0;
        loop {
            match store.ensure_contract(sup) {
                Ok(q) => return q,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 50, "no contract: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    #[test]
    fn a_contract_past_half_its_term_is_renewed_before_the_next_store() {
        let rt = runtime();
        let tmp = tempfile::tempdir().unwrap();
        let (supplier, store, sup) = pair(&rt, tmp.path(), "/ip4/127.0.0.1/tcp/0");
        let quota = contract(&store, &sup);
        let granted = lock(&store.contracts)[&supplier.peer_id].1;
        assert!(granted > protocol::now_ms() + CONTRACT_TERM_MS / 2);
        // Before half the term is gone, nothing is asked again.
        let data = Arc::new(vec![7u8; 1000]);
        store.store(&sup, &ShardId::of(&data), &data).unwrap();
        assert_eq!(lock(&store.contracts)[&supplier.peer_id].1, granted);
        // With less than half of it left, the next store renews it first, and the supplier
        // grants (and countersigns) the new term.
        let aged = protocol::now_ms() + CONTRACT_TERM_MS / 2 - 60_000;
        lock(&store.contracts).insert(supplier.peer_id, (quota, aged));
        let more = Arc::new(vec![8u8; 1000]);
        store.store(&sup, &ShardId::of(&more), &more).unwrap();
        let renewed = lock(&store.contracts)[&supplier.peer_id].1;
        assert!(
            renewed > protocol::now_ms() + CONTRACT_TERM_MS - 60_000,
            "not renewed: {renewed} vs {aged}"
        );
        assert_eq!(store.fetch(&sup, &ShardId::of(&more)).unwrap(), *more);
    }

    /// The supplier closes the connection while stores are on their way (as nodes close a QUIC
    /// connection beside a TCP one): over QUIC the customer's request stream then fails with an
    /// IO error ("connection lost") rather than as a closed connection. Every store must still
    /// succeed, sent again on a new connection, and the supplier must not be passed over.
    #[test]
    fn stores_cut_off_by_a_closing_connection_are_sent_again() {
        let rt = runtime();
        let tmp = tempfile::tempdir().unwrap();
        let (supplier, store, sup) = pair(&rt, tmp.path(), "/ip4/127.0.0.1/udp/0/quic-v1");
        contract(&store, &sup);
        let mut stored = Vec::new();
        for i in 0..15u64 {
            let data: Arc<Vec<u8>> =
                Arc::new((0..4u64 << 20).map(|j| (j * 31 + i) as u8).collect());
            let id = ShardId::of(&data);
            // Cut the connection 0-42 ms into the store: mostly while its bytes are moving.
            let (node, peer, rt2) = (supplier.clone(), store.node.peer_id, rt.handle().clone());
            let cutter = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(i * 3));
                rt2.block_on(node.disconnect(peer))
            });
            let r = store.store(&sup, &id, &data);
            cutter.join().unwrap().unwrap();
            r.unwrap_or_else(|e| panic!("store {i} failed: {e}"));
            stored.push((id, data));
        }
        assert!(
            store.resent() > 0,
            "no store was cut off: the test did not test anything"
        );
        for (id, data) in &stored {
            assert_eq!(&store.fetch(&sup, id).unwrap(), data.as_ref());
        }
    }
}
