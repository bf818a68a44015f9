//! The libp2p host: QUIC and TCP transports, Kademlia for discovery, identify, and the shard
//! protocol over request-response. One tokio task owns the swarm; everything else talks to it
//! through a bounded command channel and gets answers by oneshot.
//!
//! Suppliers announce themselves as providers of [`SUPPLIER_KEY`] in the DHT; customers find
//! them with `get_providers`. The addresses identify learns are fed into Kademlia, so a peer
//! found in the DHT can be dialled by id alone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, GetProvidersOk, QueryResult, RecordKey};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, autonat, dcutr, identify, noise, relay, tcp};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::protocol::{FrameCodec, PROTOCOL};
use crate::supplier::ShardDir;
use dustfs_core::fsm::node::NodeEvent;

/// The DHT key under which every supplier announces itself.
pub const SUPPLIER_KEY: &[u8] = b"/dustfs/suppliers/v1";
/// Kademlia protocol name (a private DHT, not the public IPFS one).
pub const KAD_PROTOCOL: &str = "/dustfs/kad/1.0.0";
/// Commands waiting for the swarm task, at most.
const COMMAND_QUEUE: usize = 256;
/// How long a request may take end to end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The transport could not be set up or a listen address failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The peer could not be reached or the request failed on the way.
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The connection the request went out on closed before the answer came; the peer may
    /// or may not have acted on it. Other connections to the peer may be fine: this node
    /// closes spare ones, and idle or moved connections close too.
    #[error("request to {peer}: the connection closed before the answer came")]
    ConnectionClosed {
        /// The peer.
        peer: PeerId,
    },
    /// The node has stopped.
    #[error("the network node has stopped")]
    Stopped,
    /// A DHT record could not be stored.
    #[error("DHT: {0}")]
    Dht(String),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
    rr: request_response::Behaviour<FrameCodec>,
    /// Reachability probes: are we reachable from outside, or behind a NAT?
    autonat: autonat::Behaviour,
    /// Every node relays for private peers (useful only when it is itself public).
    relay: relay::Behaviour,
    /// Reservations on relays when this node is private, and relayed connections.
    relay_client: relay::client::Behaviour,
    /// Hole punching: upgrades a relayed connection to a direct one.
    dcutr: dcutr::Behaviour,
}

/// Relay limits. libp2p's defaults (2 minutes, 128 KiB per circuit) are made for signalling
/// only; dustfs moves shards through a relay when no direct path exists (symmetric NATs), so
/// circuits may carry up to 1 GiB and last an hour, and a relay serves at most 64 circuits
/// (8 per peer) and 128 reservations. Each node counts the dustfs bytes it exchanges through
/// relays, per peer (`dustfs status`: `relayed_bytes`).
fn relay_config() -> relay::Config {
    relay::Config {
        max_reservations: 128,
        max_reservations_per_peer: 4,
        max_circuits: 64,
        max_circuits_per_peer: 8,
        max_circuit_duration: Duration::from_secs(3600),
        max_circuit_bytes: 1 << 30,
        ..relay::Config::default()
    }
}

/// How a connected peer is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerPath {
    /// At least one direct connection (dialled, accepted or hole-punched).
    Direct,
    /// Only through a relay.
    Relayed,
}

/// What a node is configured with.
pub struct NodeConfig {
    /// The node's network identity.
    pub keypair: Keypair,
    /// Addresses to listen on (TCP and QUIC multiaddrs).
    pub listen: Vec<Multiaddr>,
    /// Peers to join the network through (with `/p2p/<id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// The supplier role: the shard store this node serves, if any.
    pub supplier: Option<Arc<ShardDir>>,
}

enum Command {
    Request {
        peer: PeerId,
        frame: crate::protocol::Frame,
        reply: oneshot::Sender<Result<crate::protocol::Frame, NetError>>,
    },
    PutRecord {
        key: Vec<u8>,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    GetRecords {
        key: Vec<u8>,
        reply: oneshot::Sender<Vec<Vec<u8>>>,
    },
    LocalRecord {
        key: Vec<u8>,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    Disconnect {
        peer: PeerId,
    },
}

/// What the swarm task shares with the handles.
#[derive(Default)]
struct Shared {
    listen: Vec<Multiaddr>,
    connected: HashSet<PeerId>,
    suppliers: HashSet<PeerId>,
    known: HashSet<PeerId>,
    /// The connectivity state machine, fed with what the swarm observes.
    connectivity: dustfs_core::fsm::node::Node,
    /// Open connections per peer: (direct, relayed).
    paths: HashMap<PeerId, (usize, usize)>,
    /// Connected peers with which a hole punch succeeded, and how long after the first
    /// connection.
    punched: HashMap<PeerId, Duration>,
    /// When each connected peer was first connected.
    first_seen: HashMap<PeerId, std::time::Instant>,
    /// dustfs bytes (request and response frames, both ways) exchanged with each connected
    /// peer while it was reachable only through a relay.
    relayed_bytes: HashMap<PeerId, u64>,
    /// The same, over every peer since the node started.
    relayed_bytes_total: u64,
    /// The transports of the open connections to each peer, e.g. `tcp` or `quic+relayed`.
    transports: HashMap<PeerId, String>,
}

impl Shared {
    fn path(&self, p: &PeerId) -> Option<PeerPath> {
        match self.paths.get(p) {
            Some((d, _)) if *d > 0 => Some(PeerPath::Direct),
            Some((_, r)) if *r > 0 => Some(PeerPath::Relayed),
            _ => None,
        }
    }

    /// Counts a frame exchanged with `p` if `p` is reachable only through a relay.
    fn account(&mut self, p: &PeerId, frame_len: usize) {
        if self.path(p) == Some(PeerPath::Relayed) {
            *self.relayed_bytes.entry(*p).or_default() += frame_len as u64;
            self.relayed_bytes_total += frame_len as u64;
        }
    }
}

fn is_tcp(a: &Multiaddr) -> bool {
    a.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_)))
}

fn is_circuit(a: &Multiaddr) -> bool {
    a.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
}

/// A failed request as this crate's error. A request whose stream broke because its
/// connection went away is [`NetError::ConnectionClosed`] (which callers send again) whether
/// request-response saw the connection close or only its stream fail: a QUIC connection that
/// `Task::prune_connections` closes beside a TCP one fails the requests still on it with
/// "IO error on outbound stream: connection lost" (quinn's `NotConnected`). Caught in 2 of 60
/// runs of `scripts/profile.sh write`: the store failed, its supplier was passed over for
/// 10 s, and with only k+m suppliers every block waited that long (39 MB/s instead of 150).
fn outbound_failure(peer: PeerId, error: request_response::OutboundFailure) -> NetError {
    use std::io::ErrorKind::{
        BrokenPipe, ConnectionAborted, ConnectionReset, NotConnected, UnexpectedEof,
    };
    match error {
        request_response::OutboundFailure::ConnectionClosed => NetError::ConnectionClosed { peer },
        request_response::OutboundFailure::Io(e)
            if matches!(
                e.kind(),
                NotConnected | ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            ) =>
        {
            debug!(%peer, error = %e, "request stream broke with its connection");
            NetError::ConnectionClosed { peer }
        }
        e => NetError::Request {
            peer,
            reason: e.to_string(),
        },
    }
}

/// The addresses of a peer worth dialling. When this node speaks TCP and the peer has TCP
/// addresses of a kind (direct, or through a relay), its other addresses of that kind are
/// left out: bulk transfers over libp2p's TCP (Noise + yamux; TLS since, see `tls.rs`) measured 20-35% faster than over
/// its QUIC on this machine (issue 8 note: 512 MiB write 141-157 vs 116-124 MB/s, cold read
/// 245-250 vs 176-182 MB/s; quinn's 1452-byte packets each cost a UDP syscall, an
/// encryption and an ack, where loopback TCP moves 64 KiB segments). QUIC stays for peers
/// that only speak QUIC, and for hole punching, which DCUtR does with the observed addresses
/// of both transports on its own.
fn dialable(addrs: Vec<Multiaddr>, local_tcp: bool) -> Vec<Multiaddr> {
    if !local_tcp {
        return addrs;
    }
    let tcp_direct = addrs.iter().any(|a| is_tcp(a) && !is_circuit(a));
    let tcp_relayed = addrs.iter().any(|a| is_tcp(a) && is_circuit(a));
    addrs
        .into_iter()
        .filter(|a| {
            let has_tcp = if is_circuit(a) {
                tcp_relayed
            } else {
                tcp_direct
            };
            is_tcp(a) || !has_tcp
        })
        .collect()
}

/// How a connection reaches its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Link {
    Tcp,
    /// QUIC (or any other direct transport).
    Quic,
    Relayed,
}

impl Link {
    fn name(self) -> &'static str {
        match self {
            Link::Tcp => "tcp",
            Link::Quic => "quic",
            Link::Relayed => "relayed",
        }
    }
}

/// A live connection to a peer, as far as choosing between connections goes.
struct Conn {
    id: libp2p::swarm::ConnectionId,
    link: Link,
    /// This node dialled it.
    dialer: bool,
    /// Identify has run on it: the address the peer sees this node at over its transport is
    /// known (hole punching and reachability need one per transport).
    identified: bool,
}

fn is_loopback(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_loopback(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// Prefix of the DHT keys of root records.
const ROOT_KEY_PREFIX: &[u8] = b"/dustfs/root/";

/// The DHT key under which a user's root records are published.
pub fn root_key(user: &[u8; 32]) -> Vec<u8> {
    [ROOT_KEY_PREFIX, user].concat()
}

/// Whether this node keeps a DHT record another peer put: only a dustfs root record that
/// verifies for the user its key names, no larger than [`MAX_DHT_VALUE`], and not older than
/// the one already kept (so nobody can replace a user's record with garbage, a forgery or a
/// replayed old one). `kept` is the value stored under the same key, if any.
pub fn admit_record(key: &[u8], value: &[u8], kept: Option<&[u8]>) -> Result<(), &'static str> {
    let user: [u8; 32] = key
        .strip_prefix(ROOT_KEY_PREFIX)
        .and_then(|u| u.try_into().ok())
        .ok_or("not a dustfs root record key")?;
    if value.len() > MAX_DHT_VALUE {
        return Err("record too large");
    }
    let rec = dustfs_core::root::RootRecord::verify(value, &user)
        .map_err(|_| "root record does not verify for the user of its key")?;
    if let Some((seq, _)) = kept.and_then(dustfs_core::root::RootRecord::peek_seq)
        && seq > rec.seq
    {
        return Err("older than the record kept");
    }
    Ok(())
}

/// Requests a peer may have in flight on this node at once; more are answered `Busy`.
const MAX_IN_FLIGHT_PER_PEER: usize = 32;
/// Requests per second a peer may send on average, and in a burst.
const REQUESTS_PER_SEC: f64 = 400.0;
const REQUEST_BURST: f64 = 800.0;

/// A peer's request budget: a token bucket and the requests it has in flight.
struct PeerBudget {
    tokens: f64,
    last: Instant,
    in_flight: usize,
}

impl PeerBudget {
    fn new(now: Instant) -> Self {
        Self {
            tokens: REQUEST_BURST,
            last: now,
            in_flight: 0,
        }
    }

    /// Takes one request if the peer is within its rate and in-flight limits.
    fn admit(&mut self, now: Instant) -> bool {
        self.tokens = (self.tokens
            + now.duration_since(self.last).as_secs_f64() * REQUESTS_PER_SEC)
            .min(REQUEST_BURST);
        self.last = now;
        if self.tokens < 1.0 || self.in_flight >= MAX_IN_FLIGHT_PER_PEER {
            return false;
        }
        self.tokens -= 1.0;
        self.in_flight += 1;
        true
    }
}

/// Largest value published in the DHT (libp2p's memory store keeps at most 65 KiB per
/// record); larger root records live on suppliers only.
pub const MAX_DHT_VALUE: usize = 60 << 10;

/// A handle to a running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    /// This node's peer id.
    pub peer_id: PeerId,
    cmd: mpsc::Sender<Command>,
    shared: Arc<Mutex<Shared>>,
}

/// A snapshot of the node's view of the network.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NetStatus {
    /// This node's peer id.
    pub peer_id: String,
    /// Addresses it listens on.
    pub listen: Vec<String>,
    /// Peers with an open connection.
    pub connected: usize,
    /// Peers known in the DHT routing table.
    pub known: usize,
    /// Suppliers found in the DHT.
    pub suppliers: Vec<String>,
    /// The connectivity machine's state (`dustfs fsm node`).
    pub connectivity: &'static str,
    /// How each connected peer is reached.
    pub peer_paths: std::collections::BTreeMap<String, PeerPath>,
    /// Peers reached directly after a hole punch, with the time it took from the first
    /// (relayed) connection, in ms.
    pub hole_punched_ms: std::collections::BTreeMap<String, u64>,
    /// dustfs bytes exchanged through a relay with each connected peer.
    pub relayed_bytes: std::collections::BTreeMap<String, u64>,
    /// dustfs bytes exchanged through relays since the node started.
    pub relayed_bytes_total: u64,
    /// The transports of the open connections to each connected peer (`tcp`, `quic`,
    /// `relayed`, joined by `+` when there are several).
    pub peer_transports: std::collections::BTreeMap<String, String>,
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    /// Starts a node on the current tokio runtime.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NetError> {
        let peer_id = cfg.keypair.public().to_peer_id();
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(cfg.keypair)
            .with_tokio()
            // TLS with AES-GCM first (see `tls.rs` for why), Noise for peers without it.
            .with_tcp(
                tcp::Config::default().nodelay(true),
                (crate::tls::Config::new, noise::Config::new),
                crate::mux::Config::new,
            )
            .map_err(|e| NetError::Transport(e.to_string()))?
            .with_quic_config(|mut c| {
                c.handshake_timeout = Duration::from_secs(3);
                c
            })
            .with_relay_client(noise::Config::new, crate::mux::Config::new)
            .map_err(|e| NetError::Transport(e.to_string()))?
            .with_behaviour(|key, relay_client| {
                let mut kcfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
                kcfg.set_query_timeout(Duration::from_secs(20));
                // Records other peers put are checked before they are kept (admit_record).
                kcfg.set_record_filtering(kad::StoreInserts::FilterBoth);
                let mut kad = kad::Behaviour::with_config(
                    peer_id,
                    kad::store::MemoryStore::new(peer_id),
                    kcfg,
                );
                // Loopback and private networks never confirm an external address, so the
                // automatic mode would leave every node a DHT client; each node serves.
                kad.set_mode(Some(kad::Mode::Server));
                Behaviour {
                    kad,
                    // Peers hear of new listen addresses (relay circuits) at once.
                    // No address cache: which addresses of a peer are dialled is decided
                    // where identify's answers reach Kademlia (`dialable`).
                    identify: identify::Behaviour::new(
                        identify::Config::new("/dustfs/id/1".into(), key.public())
                            .with_push_listen_addr_updates(true)
                            .with_cache_size(0),
                    ),
                    rr: request_response::Behaviour::with_codec(
                        FrameCodec,
                        [(StreamProtocol::new(PROTOCOL), ProtocolSupport::Full)],
                        request_response::Config::default()
                            .with_request_timeout(REQUEST_TIMEOUT)
                            .with_max_concurrent_streams(64),
                    ),
                    autonat: autonat::Behaviour::new(
                        peer_id,
                        autonat::Config {
                            // Quick first verdicts; private test networks are not global.
                            boot_delay: Duration::from_secs(1),
                            retry_interval: Duration::from_secs(5),
                            refresh_interval: Duration::from_secs(60),
                            throttle_server_period: Duration::from_secs(1),
                            confidence_max: 1,
                            only_global_ips: false,
                            ..autonat::Config::default()
                        },
                    ),
                    relay: relay::Behaviour::new(peer_id, relay_config()),
                    relay_client,
                    dcutr: dcutr::Behaviour::new(peer_id),
                }
            })
            .map_err(|e| NetError::Transport(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        for a in &cfg.listen {
            swarm
                .listen_on(a.clone())
                .map_err(|e| NetError::Transport(format!("{a}: {e}")))?;
        }
        let mut to_dial = Vec::new();
        for a in &cfg.bootstrap {
            match a.iter().last() {
                Some(libp2p::multiaddr::Protocol::P2p(p)) if p != peer_id => {
                    swarm.behaviour_mut().kad.add_address(&p, a.clone());
                    to_dial.push(a.clone());
                }
                Some(libp2p::multiaddr::Protocol::P2p(_)) => {}
                _ => warn!(addr = %a, "bootstrap address without /p2p/<peer id>; ignored"),
            }
        }
        let wants_tcp = cfg.listen.iter().any(is_tcp);
        let tcp_loopback_only = cfg.listen.iter().filter(|a| is_tcp(a)).all(is_loopback);
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = Task {
            swarm,
            to_dial,
            wants_tcp,
            tcp_loopback_only,
            relays: cfg.bootstrap.clone(),
            reserved: false,
            supplier: cfg.supplier,
            pending: HashMap::new(),
            puts: HashMap::new(),
            gets: HashMap::new(),
            shared: shared.clone(),
            inbound: mpsc::channel(64),
            discovered: false,
            budgets: HashMap::new(),
            conns: HashMap::new(),
            upgrading: HashSet::new(),
        };
        tokio::spawn(task.run(rx));
        Ok(Node {
            peer_id,
            cmd: tx,
            shared,
        })
    }

    /// Sends a request frame to a peer and waits for the response frame.
    pub async fn request(
        &self,
        peer: PeerId,
        frame: impl Into<crate::protocol::Frame>,
    ) -> Result<crate::protocol::Frame, NetError> {
        let frame = frame.into();
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Request { peer, frame, reply })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Stores a record in the DHT (on the closest peers to `key`, at least one). Records are
    /// not trusted by readers: they verify what they get (root records are signed).
    pub async fn put_record(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), NetError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::PutRecord { key, value, reply })
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Every value the DHT returns for `key` (possibly none, possibly forged: verify them).
    pub async fn get_records(&self, key: Vec<u8>) -> Vec<Vec<u8>> {
        let (reply, rx) = oneshot::channel();
        if self
            .cmd
            .send(Command::GetRecords { key, reply })
            .await
            .is_err()
        {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The value this node itself keeps under `key` in the DHT (tests check that forged
    /// records are not kept).
    pub async fn local_record(&self, key: Vec<u8>) -> Option<Vec<u8>> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::LocalRecord { key, reply })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    /// Closes every connection to `peer` (requests under way on them fail with
    /// [`NetError::ConnectionClosed`]); the next request dials it again.
    pub async fn disconnect(&self, peer: PeerId) -> Result<(), NetError> {
        self.cmd
            .send(Command::Disconnect { peer })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Suppliers found in the DHT (not this node).
    ///
    /// Best first: peers reached only through a relay come last, so bulk data goes to them
    /// only when there is no better choice.
    pub fn suppliers(&self) -> Vec<PeerId> {
        let s = lock(&self.shared);
        let mut v: Vec<PeerId> = s
            .suppliers
            .iter()
            .copied()
            .filter(|p| *p != self.peer_id)
            .collect();
        v.sort_by_key(|p| (s.path(p) == Some(PeerPath::Relayed), *p));
        v
    }

    /// Whether `p` is connected only through a relay (bulk data avoids such peers when others
    /// will do).
    pub fn relayed_only(&self, p: &PeerId) -> bool {
        lock(&self.shared).path(p) == Some(PeerPath::Relayed)
    }

    /// Listen addresses, once the transports are up.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.shared).listen.clone()
    }

    /// Waits until the node listens on at least `n` addresses (or `timeout` passes).
    pub async fn wait_listening(&self, n: usize, timeout: Duration) -> Vec<Multiaddr> {
        let start = Instant::now();
        loop {
            let l = self.listen_addrs();
            if l.len() >= n || start.elapsed() > timeout {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A snapshot of the node's view.
    pub fn status(&self) -> NetStatus {
        let suppliers = self.suppliers().iter().map(|p| p.to_string()).collect();
        let s = lock(&self.shared);
        NetStatus {
            peer_id: self.peer_id.to_string(),
            listen: s.listen.iter().map(|a| a.to_string()).collect(),
            connected: s.connected.len(),
            known: s.known.len(),
            suppliers,
            connectivity: s.connectivity.state().name(),
            peer_paths: s
                .paths
                .keys()
                .filter_map(|p| s.path(p).map(|x| (p.to_string(), x)))
                .collect(),
            hole_punched_ms: s
                .punched
                .iter()
                .map(|(p, d)| (p.to_string(), d.as_millis() as u64))
                .collect(),
            relayed_bytes: s
                .relayed_bytes
                .iter()
                .map(|(p, n)| (p.to_string(), *n))
                .collect(),
            relayed_bytes_total: s.relayed_bytes_total,
            peer_transports: s
                .transports
                .iter()
                .map(|(p, t)| (p.to_string(), t.clone()))
                .collect(),
        }
    }
}

/// A DHT lookup under way: the values found so far and who waits for them.
type PendingGet = (Vec<Vec<u8>>, oneshot::Sender<Vec<Vec<u8>>>);

/// A response frame, the peer and the channel it answers.
type Answer = (
    PeerId,
    ResponseChannel<crate::protocol::Frame>,
    crate::protocol::Frame,
);

struct Task {
    swarm: libp2p::Swarm<Behaviour>,
    /// Bootstrap peers, dialled once the TCP listener is up: TCP dials reuse the listening
    /// port only after that, and the first connections are the ones that tell this node its
    /// public address. Dialled from a random port, a NATed node learns a mapping that no hole
    /// punch can use (found in the NAT suite: TCP punches failed, QUIC ones did not).
    to_dial: Vec<Multiaddr>,
    wants_tcp: bool,
    /// Every TCP listen address is loopback (a local testnet): a loopback listener will do.
    tcp_loopback_only: bool,
    /// Where to ask for relay reservations when this node turns out to be private: the
    /// bootstrap peers.
    relays: Vec<Multiaddr>,
    reserved: bool,
    supplier: Option<Arc<ShardDir>>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<crate::protocol::Frame, NetError>>>,
    puts: HashMap<kad::QueryId, oneshot::Sender<Result<(), NetError>>>,
    gets: HashMap<kad::QueryId, PendingGet>,
    shared: Arc<Mutex<Shared>>,
    /// Answers computed off the event loop, on their way back to the swarm.
    inbound: (mpsc::Sender<Answer>, mpsc::Receiver<Answer>),
    discovered: bool,
    /// Request budgets of connected peers.
    budgets: HashMap<PeerId, PeerBudget>,
    /// Live connections per peer.
    conns: HashMap<PeerId, Vec<Conn>>,
    /// Peers reached over QUIC to which a TCP connection is being dialled.
    upgrading: HashSet<PeerId>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut discover = tokio::time::interval(Duration::from_secs(2));
        let mut provide = tokio::time::interval(Duration::from_secs(30));
        let mut bootstrap = tokio::time::interval(Duration::from_secs(60));
        // If no TCP listener comes up, dial the bootstrap peers anyway.
        let fallback = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(fallback);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Request { peer, frame, reply }) => {
                        lock(&self.shared).account(&peer, frame.len());
                        let id = self.swarm.behaviour_mut().rr.send_request(&peer, frame);
                        self.pending.insert(id, reply);
                    }
                    Some(Command::PutRecord { key, value, reply }) => {
                        let rec = kad::Record::new(RecordKey::new(&key), value);
                        match self.swarm.behaviour_mut().kad.put_record(rec, kad::Quorum::One) {
                            Ok(id) => {
                                self.puts.insert(id, reply);
                            }
                            Err(e) => {
                                let _ = reply.send(Err(NetError::Dht(e.to_string())));
                            }
                        }
                    }
                    Some(Command::Disconnect { peer }) => {
                        let _ = self.swarm.disconnect_peer_id(peer);
                    }
                    Some(Command::LocalRecord { key, reply }) => {
                        let v = self
                            .swarm
                            .behaviour_mut()
                            .kad
                            .store_mut()
                            .get(&RecordKey::new(&key))
                            .map(|r| r.value.clone());
                        let _ = reply.send(v);
                    }
                    Some(Command::GetRecords { key, reply }) => {
                        let id = self.swarm.behaviour_mut().kad.get_record(RecordKey::new(&key));
                        self.gets.insert(id, (Vec::new(), reply));
                    }
                    None => break,
                },
                Some((peer, channel, frame)) = self.inbound.1.recv() => {
                    lock(&self.shared).account(&peer, frame.len());
                    if let Some(b) = self.budgets.get_mut(&peer) {
                        b.in_flight = b.in_flight.saturating_sub(1);
                    }
                    if self.swarm.behaviour_mut().rr.send_response(channel, frame).is_err() {
                        debug!("response channel closed before the answer was ready");
                    }
                }
                ev = self.swarm.select_next_some() => self.on_event(ev),
                _ = discover.tick() => {
                    ticks += 1;
                    // Quickly at first, then every 20 s once suppliers are known.
                    if !self.discovered || ticks.is_multiple_of(10) {
                        self.swarm.behaviour_mut().kad.get_providers(RecordKey::new(&SUPPLIER_KEY));
                    }
                }
                _ = provide.tick() => {
                    if self.supplier.is_some() {
                        if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(RecordKey::new(&SUPPLIER_KEY)) {
                            warn!(error = %e, "cannot announce as supplier");
                        }
                        lock(&self.shared).suppliers.insert(*self.swarm.local_peer_id());
                    }
                }
                () = &mut fallback, if !self.to_dial.is_empty() => self.dial_bootstrap(),
                _ = bootstrap.tick() => {
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
            }
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                // The listener whose port outbound TCP connections will reuse.
                let tcp = is_tcp(&address) && (self.tcp_loopback_only || !is_loopback(&address));
                {
                    let mut s = lock(&self.shared);
                    s.listen.push(address);
                    s.connectivity.handle(NodeEvent::Listening);
                }
                if tcp || !self.wants_tcp {
                    self.dial_bootstrap();
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                let relayed = endpoint.is_relayed();
                let link = if relayed {
                    Link::Relayed
                } else if is_tcp(endpoint.get_remote_address()) {
                    Link::Tcp
                } else {
                    Link::Quic
                };
                if link == Link::Tcp {
                    self.upgrading.remove(&peer_id);
                }
                self.conns.entry(peer_id).or_default().push(Conn {
                    id: connection_id,
                    link,
                    dialer: endpoint.is_dialer(),
                    identified: false,
                });
                self.publish_transports(peer_id);
                self.prune_connections(peer_id);
                let mut s = lock(&self.shared);
                s.connected.insert(peer_id);
                s.first_seen
                    .entry(peer_id)
                    .or_insert_with(std::time::Instant::now);
                let e = s.paths.entry(peer_id).or_default();
                if relayed {
                    e.1 += 1;
                } else {
                    e.0 += 1;
                }
                let before = s.connectivity.state();
                let now = s.connectivity.handle(NodeEvent::PeerConnected);
                if now != before {
                    info!(from = before.name(), to = now.name(), "connectivity");
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                endpoint,
                num_established,
                connection_id,
                ..
            } => {
                if let Some(c) = self.conns.get_mut(&peer_id) {
                    c.retain(|c| c.id != connection_id);
                    if c.is_empty() {
                        self.conns.remove(&peer_id);
                    }
                }
                self.publish_transports(peer_id);
                let mut s = lock(&self.shared);
                if let Some(e) = s.paths.get_mut(&peer_id) {
                    if endpoint.is_relayed() {
                        e.1 = e.1.saturating_sub(1);
                    } else {
                        e.0 = e.0.saturating_sub(1);
                    }
                }
                if num_established > 0 {
                    return;
                }
                // Per-peer records live only as long as the peer is connected, so a
                // long-running node does not keep one for every peer it ever met.
                s.paths.remove(&peer_id);
                s.first_seen.remove(&peer_id);
                s.punched.remove(&peer_id);
                s.relayed_bytes.remove(&peer_id);
                self.budgets.remove(&peer_id);
                s.connected.remove(&peer_id);
                if s.connected.is_empty() {
                    let now = s.connectivity.handle(NodeEvent::AllPeersLost);
                    warn!(to = now.name(), "connectivity: no peer connected");
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                connection_id,
            })) => {
                let mut upgrade = false;
                if let Some(conns) = self.conns.get_mut(&peer_id) {
                    let has_tcp = conns.iter().any(|c| c.link == Link::Tcp);
                    if let Some(c) = conns.iter_mut().find(|c| c.id == connection_id) {
                        c.identified = true;
                        upgrade = c.link == Link::Quic && c.dialer && !has_tcp;
                    }
                }
                if upgrade {
                    self.upgrade_to_tcp(peer_id, &info.listen_addrs);
                }
                self.prune_connections(peer_id);
                let kad = &mut self.swarm.behaviour_mut().kad;
                for a in dialable(info.listen_addrs, self.wants_tcp) {
                    kad.add_address(&peer_id, a);
                }
                lock(&self.shared).known.insert(peer_id);
                if self.supplier.is_some() {
                    // Announce as soon as there is someone to announce to.
                    let _ = kad.start_providing(RecordKey::new(&SUPPLIER_KEY));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result:
                    QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders { providers, .. })),
                ..
            })) => {
                let mut s = lock(&self.shared);
                let before = s.suppliers.len();
                s.suppliers.extend(providers);
                if s.suppliers.len() != before {
                    debug!(suppliers = s.suppliers.len(), "suppliers discovered");
                }
                self.discovered = s.suppliers.len() > 1;
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::PutRecord(r),
                ..
            })) => {
                if let Some(reply) = self.puts.remove(&id) {
                    let _ = reply.send(r.map(|_| ()).map_err(|e| NetError::Dht(e.to_string())));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetRecord(r),
                step,
                ..
            })) => {
                if let Some((found, _)) = self.gets.get_mut(&id)
                    && let Ok(kad::GetRecordOk::FoundRecord(p)) = &r
                    && found.len() < 64
                {
                    found.push(p.record.value.clone());
                }
                let finished = step.last || !matches!(r, Ok(kad::GetRecordOk::FoundRecord(_)));
                if finished && let Some((found, reply)) = self.gets.remove(&id) {
                    let _ = reply.send(found);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(r),
                        ..
                    },
            })) => {
                let store = self.swarm.behaviour_mut().kad.store_mut();
                let kept = store.get(&r.key).map(|k| k.value.clone());
                match admit_record(r.key.as_ref(), &r.value, kept.as_deref()) {
                    Ok(()) => {
                        if let Err(e) = store.put(r) {
                            warn!(peer = %source, error = %e, "DHT record not kept");
                        }
                    }
                    Err(why) => warn!(peer = %source, why, "DHT record refused"),
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest {
                request: kad::InboundRequest::AddProvider { record: Some(p) },
                // Only supplier announcements are provided in dustfs's DHT.
            })) if p.key.as_ref() == SUPPLIER_KEY => {
                let store = self.swarm.behaviour_mut().kad.store_mut();
                if let Err(e) = store.add_provider(p) {
                    debug!(error = %e, "provider record not kept");
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer, ..
            })) => {
                lock(&self.shared).known.insert(peer);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => {
                let ev = match new {
                    autonat::NatStatus::Public(_) => NodeEvent::ReachablePublic,
                    autonat::NatStatus::Private => NodeEvent::ReachablePrivate,
                    autonat::NatStatus::Unknown => return,
                };
                let state = lock(&self.shared).connectivity.handle(ev);
                info!(?new, state = state.name(), "reachability");
                if ev == NodeEvent::ReachablePrivate {
                    self.reserve_relays();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => {
                info!(relay = %relay_peer_id, "relay reservation accepted: reachable through it");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(_) => {
                    let mut s = lock(&self.shared);
                    let took = s
                        .first_seen
                        .get(&remote_peer_id)
                        .map(|t| t.elapsed())
                        .unwrap_or_default();
                    s.punched.insert(remote_peer_id, took);
                    s.connectivity.handle(NodeEvent::HolePunched);
                    info!(peer = %remote_peer_id, ?took, "hole punched: direct connection");
                }
                Err(e) => {
                    warn!(peer = %remote_peer_id, error = %e, "hole punch failed; staying relayed");
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Rr(ev)) => self.on_rr(ev),
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(p), ..
            } => {
                self.upgrading.remove(&p);
            }
            _ => {}
        }
    }

    /// Closes the direct QUIC connections to a peer that also has a direct TCP one, once
    /// identify has run on them (so this node has learnt its address as seen over QUIC). The
    /// request-response behaviour spreads requests over all connections to a peer in turn, so
    /// a spare QUIC connection (bootstrap dials go out over both transports, and hole
    /// punching may succeed over both) would carry half of the bulk traffic at QUIC's cost
    /// (see [`dialable`]). Connections to the relays this node listens through stay: they
    /// carry its reservations.
    fn prune_connections(&mut self, peer: PeerId) {
        if !self.wants_tcp || (self.reserved && self.relay_peers().any(|p| p == peer)) {
            return;
        }
        let Some(conns) = self.conns.get(&peer) else {
            return;
        };
        if !conns.iter().any(|c| c.link == Link::Tcp) {
            return;
        }
        let spare: Vec<_> = conns
            .iter()
            .filter(|c| c.link == Link::Quic && c.identified)
            .map(|c| c.id)
            .collect();
        for id in spare {
            debug!(%peer, "closing a QUIC connection beside a TCP one");
            self.swarm.close_connection(id);
        }
    }

    /// A QUIC connection this node dialled (a bootstrap dial, or a dial whose QUIC attempt
    /// won the race) to a peer that listens on TCP too: dial it over TCP as well;
    /// [`Self::prune_connections`] closes the QUIC one once TCP is up. Only the dialling side
    /// does this, so the two ends do not open two connections.
    fn upgrade_to_tcp(&mut self, peer: PeerId, listen: &[Multiaddr]) {
        if !self.wants_tcp || self.upgrading.contains(&peer) {
            return;
        }
        let tcp: Vec<Multiaddr> = listen
            .iter()
            .filter(|a| is_tcp(a) && !is_circuit(a))
            .cloned()
            .collect();
        if tcp.is_empty() {
            return;
        }
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(tcp)
            .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.upgrading.insert(peer);
            }
            Err(e) => debug!(%peer, error = %e, "cannot dial over TCP beside QUIC"),
        }
    }

    fn publish_transports(&self, peer: PeerId) {
        let mut links: Vec<Link> = self
            .conns
            .get(&peer)
            .map(|c| c.iter().map(|c| c.link).collect())
            .unwrap_or_default();
        links.sort();
        links.dedup();
        let mut s = lock(&self.shared);
        if links.is_empty() {
            s.transports.remove(&peer);
        } else {
            let names: Vec<_> = links.iter().map(|l| l.name()).collect();
            s.transports.insert(peer, names.join("+"));
        }
    }

    fn relay_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.relays.iter().filter_map(|a| match a.iter().last() {
            Some(libp2p::multiaddr::Protocol::P2p(p)) => Some(p),
            _ => None,
        })
    }

    fn dial_bootstrap(&mut self) {
        for a in std::mem::take(&mut self.to_dial) {
            if let Err(e) = self.swarm.dial(a.clone()) {
                warn!(addr = %a, error = %e, "cannot dial bootstrap peer");
            }
        }
    }

    /// Behind a NAT: listen through the bootstrap peers as relays, so others can reach this
    /// node (relayed at first, then directly if a hole punch succeeds).
    fn reserve_relays(&mut self) {
        if self.reserved {
            return;
        }
        self.reserved = true;
        for a in self.relays.clone() {
            let circuit = a.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit) {
                Ok(_) => info!(relay = %a, "asking for a relay reservation"),
                Err(e) => warn!(relay = %a, error = %e, "cannot listen through relay"),
            }
        }
    }

    fn on_rr(
        &mut self,
        ev: request_response::Event<crate::protocol::Frame, crate::protocol::Frame>,
    ) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                message:
                    Message::Request {
                        request, channel, ..
                    },
                peer,
                ..
            } => {
                let Some(dir) = self.supplier.clone() else {
                    let frame = crate::protocol::encode_response(
                        &crate::protocol::Response::Error(crate::protocol::WireError::Internal(
                            "this node is not a supplier".into(),
                        )),
                    );
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .rr
                        .send_response(channel, frame.into());
                    return;
                };
                lock(&self.shared).account(&peer, request.len());
                let now = Instant::now();
                if !self
                    .budgets
                    .entry(peer)
                    .or_insert_with(|| PeerBudget::new(now))
                    .admit(now)
                {
                    debug!(%peer, "request refused: over the per-peer limits");
                    let frame = crate::protocol::encode_response(
                        &crate::protocol::Response::Error(crate::protocol::WireError::Busy),
                    );
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .rr
                        .send_response(channel, frame.into());
                    return;
                }
                let tx = self.inbound.0.clone();
                tokio::spawn(async move {
                    // Disk IO with fsync: off the async threads.
                    let resp = match tokio::task::spawn_blocking(move || {
                        request.handle_received(|frame| dir.handle(frame))
                    })
                    .await
                    {
                        Ok(resp) => resp,
                        Err(e) => {
                            warn!(%peer, error = %e, "request handler failed");
                            crate::protocol::encode_response(&crate::protocol::Response::Error(
                                crate::protocol::WireError::Internal("handler failed".into()),
                            ))
                            .into()
                        }
                    };
                    // Always answered, so the peer's in-flight count goes down again.
                    let _ = tx.send((peer, channel, resp)).await;
                });
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                peer,
                ..
            } => {
                lock(&self.shared).account(&peer, response.len());
                if let Some(r) = self.pending.remove(&request_id) {
                    let _ = r.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                if let Some(r) = self.pending.remove(&request_id) {
                    let _ = r.send(Err(outbound_failure(peer, error)));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "inbound request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<Multiaddr> {
        list.iter().map(|a| a.parse().expect("multiaddr")).collect()
    }

    const RELAY: &str = "/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit";

    #[test]
    fn tcp_addresses_are_dialled_instead_of_quic_ones_of_the_same_kind() {
        let tcp = "/ip4/10.0.0.1/tcp/4001";
        let quic = "/ip4/10.0.0.1/udp/4001/quic-v1";
        let relay_tcp = format!("/ip4/10.0.0.9/tcp/4001{RELAY}");
        let relay_quic = format!("/ip4/10.0.0.9/udp/4001/quic-v1{RELAY}");
        let all = addrs(&[tcp, quic, &relay_tcp, &relay_quic]);
        assert_eq!(dialable(all.clone(), true), addrs(&[tcp, &relay_tcp]));
        // A node that does not speak TCP keeps everything.
        assert_eq!(dialable(all, false).len(), 4);
        // A peer that speaks only QUIC directly keeps its QUIC address.
        assert_eq!(
            dialable(addrs(&[quic, &relay_tcp, &relay_quic]), true),
            addrs(&[quic, &relay_tcp])
        );
        assert_eq!(
            dialable(addrs(&[quic, &relay_quic]), true),
            addrs(&[quic, &relay_quic])
        );
    }
}
