//! dustfs-net: the peer-to-peer layer of dustfs.
//!
//! [`host`] runs the libp2p node (QUIC + TCP, Kademlia, identify, the shard protocol);
//! [`protocol`] defines the messages, their size limits and the signed envelope;
//! [`supplier`] is the supplier's shard store on disk; [`store`] implements the engine's
//! [`dustfs_core::store::ShardStore`] over the network; [`tls`] secures TCP connections and
//! [`mux`] multiplexes streams on them.

pub mod host;
pub mod mux;
pub mod protocol;
pub mod store;
pub mod supplier;
pub mod tls;

pub use libp2p::{Multiaddr, PeerId, identity::Keypair};
