//! dustfs-core: the storage engine of dustfs.
//!
//! Everything between a file's bytes and the shards a supplier keeps, without sockets or FUSE:
//! keys derived from one master secret ([`keys`]), content-defined chunking and keyed chunk
//! ids ([`chunk`]), sealing ([`seal`]), erasure coding ([`erasure`]) into the shard format
//! ([`shard`]), the state machines ([`fsm`]), the local database ([`db`]), bounded buffer pools ([`pool`])
//! and the filesystem core ([`fs`]) that ties them together. The network is reached only through the
//! [`store::ShardStore`] trait.

pub mod audit;
pub mod chunk;
pub mod db;
pub mod erasure;
pub mod fs;
pub mod fsm;
pub mod keys;
pub mod pool;
pub mod root;
pub mod seal;
pub mod shard;
pub mod sim;
pub mod store;
