//! The engine's only window onto the network: a shard store that can place, fetch and delete
//! shards on named suppliers. `dustfs-net` implements it over libp2p; tests implement it in
//! memory. Calls block the calling thread (the engine runs them on its own worker threads).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::shard::ShardId;

/// A supplier's name (its libp2p peer id in text form).
pub type SupplierId = String;

/// Why a supplier did not do what was asked.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The supplier refused: over the quota it granted this customer.
    #[error("supplier is over quota")]
    Quota,
    /// The supplier does not have the shard.
    #[error("shard not found on supplier")]
    NotFound,
    /// The supplier refused the request (bad signature, malformed, ...).
    #[error("refused by supplier: {0}")]
    Refused(String),
    /// The supplier could not be reached or did not answer in time.
    #[error("supplier unreachable: {0}")]
    Unreachable(String),
}

/// A place to put shards.
pub trait ShardStore: Send + Sync {
    /// Suppliers currently known and believed reachable, best first.
    fn suppliers(&self) -> Vec<SupplierId>;
    /// Stores a shard on a supplier and returns once it is durable there (fsync'd). The bytes
    /// are shared so that a network store can send them without copying them into a message.
    fn store(
        &self,
        supplier: &SupplierId,
        id: &ShardId,
        bytes: &Arc<Vec<u8>>,
    ) -> Result<(), StoreError>;
    /// Fetches a whole shard from a supplier (the caller verifies it against `id`).
    fn fetch(&self, supplier: &SupplierId, id: &ShardId) -> Result<Vec<u8>, StoreError>;
    /// Deletes a shard from a supplier.
    fn delete(&self, supplier: &SupplierId, id: &ShardId) -> Result<(), StoreError>;
    /// Bytes this customer stores on a supplier, and the quota the supplier grants it.
    fn usage(&self, supplier: &SupplierId) -> Result<(u64, u64), StoreError>;
    /// Asks a supplier for a verified slice of a shard (see [`crate::audit`]).
    fn audit(
        &self,
        supplier: &SupplierId,
        id: &ShardId,
        start: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError>;
    /// Every shard id this customer has on a supplier (restore maps shards to suppliers so).
    fn list(&self, supplier: &SupplierId) -> Result<Vec<ShardId>, StoreError>;
    /// Hands a signed root record to a supplier (see [`crate::root`]); it keeps it.
    fn put_root(&self, supplier: &SupplierId, signed: &[u8]) -> Result<(), StoreError>;
    /// The signed root records a supplier keeps for this customer (unverified: the caller
    /// checks them).
    fn get_roots(&self, supplier: &SupplierId) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Asks a supplier to forget the root record `seq` (a pruned snapshot).
    fn delete_root(&self, supplier: &SupplierId, seq: u64) -> Result<(), StoreError>;
    /// Whether new shards should go to this supplier when there is a choice. `false` for a
    /// supplier the store reaches only at a cost (through a relay): it is given shards only
    /// when the preferred suppliers are too few for a block.
    fn preferred(&self, supplier: &SupplierId) -> bool {
        let _ = supplier;
        true
    }
}

/// An in-memory store for engine tests: named suppliers, each with a quota, that can be taken
/// offline or made to corrupt what they return.
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<MemInner>,
    /// Wakes fetches held by [`MemStore::set_stalled`].
    unstalled: std::sync::Condvar,
}

#[derive(Default)]
struct MemInner {
    shards: HashMap<SupplierId, HashMap<ShardId, Vec<u8>>>,
    quota: HashMap<SupplierId, usize>,
    offline: HashSet<SupplierId>,
    corrupt: HashSet<SupplierId>,
    roots: HashMap<SupplierId, Vec<Vec<u8>>>,
    relayed: HashSet<SupplierId>,
    stalled: HashSet<SupplierId>,
    panicking: HashSet<SupplierId>,
    /// Whether stores wait (see [`MemStore::hold_stores`]), and how many are waiting.
    hold_stores: bool,
    held_stores: usize,
}

impl MemStore {
    /// A store with `n` suppliers named `s1..sn`, each with `quota` bytes.
    pub fn with_suppliers(n: usize, quota: usize) -> Self {
        let s = Self::default();
        {
            let mut g = s.lock();
            for i in 1..=n {
                g.shards.insert(format!("s{i}"), HashMap::new());
                g.quota.insert(format!("s{i}"), quota);
            }
        }
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a supplier into one of the fault sets `of` picks, or takes it out.
    fn mark(&self, of: fn(&mut MemInner) -> &mut HashSet<SupplierId>, s: &str, on: bool) {
        let mut g = self.lock();
        if on {
            of(&mut g).insert(s.into());
        } else {
            of(&mut g).remove(s);
        }
    }

    /// Takes a supplier offline (or back).
    pub fn set_offline(&self, s: &str, off: bool) {
        self.mark(|g| &mut g.offline, s, off);
    }

    /// Makes a supplier's fetches wait until it is released (a supplier that is slow to
    /// answer), or releases it.
    pub fn set_stalled(&self, s: &str, on: bool) {
        self.mark(|g| &mut g.stalled, s, on);
        self.unstalled.notify_all();
    }

    /// Makes every store wait until released (shards on their way to slow suppliers), or
    /// releases them all.
    pub fn hold_stores(&self, on: bool) {
        self.lock().hold_stores = on;
        self.unstalled.notify_all();
    }

    /// How many stores are waiting in [`MemStore::hold_stores`] now.
    pub fn held_stores(&self) -> usize {
        self.lock().held_stores
    }

    /// Makes a supplier's fetches panic (a bug below the store's interface), or stops that.
    pub fn set_panicking(&self, s: &str, on: bool) {
        self.mark(|g| &mut g.panicking, s, on);
    }

    /// Marks a supplier as reachable only through a relay (not [`ShardStore::preferred`]).
    pub fn set_relayed(&self, s: &str) {
        self.lock().relayed.insert(s.into());
    }

    /// Changes a supplier's quota.
    pub fn set_quota(&self, s: &str, bytes: usize) {
        self.lock().quota.insert(s.into(), bytes);
    }

    /// Makes a supplier silently drop every shard it holds.
    pub fn drop_all(&self, s: &str) {
        if let Some(m) = self.lock().shards.get_mut(s) {
            m.clear();
        }
    }

    /// Makes a supplier flip a byte in everything it returns.
    pub fn set_corrupt(&self, s: &str) {
        self.lock().corrupt.insert(s.into());
    }

    /// Bytes stored on a supplier.
    pub fn used(&self, s: &str) -> usize {
        self.lock()
            .shards
            .get(s)
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// All stored bytes, concatenated (for plaintext checks).
    pub fn all_bytes(&self) -> Vec<u8> {
        self.lock()
            .shards
            .values()
            .flat_map(|m| m.values().flatten().copied())
            .collect()
    }
}

impl ShardStore for MemStore {
    fn suppliers(&self) -> Vec<SupplierId> {
        let g = self.lock();
        let mut v: Vec<_> = g
            .shards
            .keys()
            .filter(|s| !g.offline.contains(*s))
            .cloned()
            .collect();
        v.sort();
        v
    }

    fn store(
        &self,
        supplier: &SupplierId,
        id: &ShardId,
        bytes: &Arc<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        if g.hold_stores {
            g.held_stores += 1;
            while g.hold_stores {
                g = self.unstalled.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            g.held_stores -= 1;
        }
        if g.offline.contains(supplier) {
            return Err(StoreError::Unreachable(supplier.clone()));
        }
        // As a real supplier does (dustfs-net's `supplier.rs`): bytes that are not the shard
        // they are sent as are refused.
        if ShardId::of(bytes) != *id {
            return Err(StoreError::Refused(
                "shard content does not match its id".into(),
            ));
        }
        let quota = g.quota.get(supplier).copied().unwrap_or(0);
        let m = g.shards.entry(supplier.clone()).or_default();
        let used: usize = m.values().map(Vec::len).sum();
        if !m.contains_key(id) && used + bytes.len() > quota {
            return Err(StoreError::Quota);
        }
        m.insert(*id, bytes.as_ref().clone());
        Ok(())
    }

    fn fetch(&self, supplier: &SupplierId, id: &ShardId) -> Result<Vec<u8>, StoreError> {
        let mut g = self.lock();
        while g.stalled.contains(supplier) {
            g = self.unstalled.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        if g.panicking.contains(supplier) {
            drop(g);
            panic!("fetch from {supplier} panicked (MemStore::set_panicking)");
        }
        if g.offline.contains(supplier) {
            return Err(StoreError::Unreachable(supplier.clone()));
        }
        let mut b = g
            .shards
            .get(supplier)
            .and_then(|m| m.get(id))
            .cloned()
            .ok_or(StoreError::NotFound)?;
        if g.corrupt.contains(supplier)
            && let Some(x) = b.last_mut()
        {
            *x ^= 0x55;
        }
        Ok(b)
    }

    fn audit(
        &self,
        supplier: &SupplierId,
        id: &ShardId,
        start: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let bytes = self.fetch(supplier, id)?;
        Ok(crate::audit::prove(&bytes, start, len))
    }

    fn usage(&self, supplier: &SupplierId) -> Result<(u64, u64), StoreError> {
        let g = self.lock();
        if g.offline.contains(supplier) {
            return Err(StoreError::Unreachable(supplier.clone()));
        }
        let used = g
            .shards
            .get(supplier)
            .map(|m| m.values().map(Vec::len).sum::<usize>())
            .unwrap_or(0);
        Ok((
            used as u64,
            g.quota.get(supplier).copied().unwrap_or(0) as u64,
        ))
    }

    fn delete(&self, supplier: &SupplierId, id: &ShardId) -> Result<(), StoreError> {
        let mut g = self.lock();
        if g.offline.contains(supplier) {
            return Err(StoreError::Unreachable(supplier.clone()));
        }
        if let Some(m) = g.shards.get_mut(supplier) {
            m.remove(id);
        }
        Ok(())
    }

    fn list(&self, supplier: &SupplierId) -> Result<Vec<ShardId>, StoreError> {
        let g = self.lock();
        if g.offline.contains(supplier) {
            return Err(StoreError::Unreachable(supplier.clone()));
        }
        Ok(g.shards
            .get(supplier)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default())
    }

    fn put_root(&self, supplier: &SupplierId, signed: &[u8]) -> Result<(), StoreError> {
        let mut g = self.lock();
        if g.offline.contains(supplier) {
            return Err(StoreError::Unreachable(supplier.clone()));
        }
        g.roots
            .entry(supplier.clone())
            .or_default()
            .push(signed.to_vec());
        Ok(())
    }

    fn delete_root(&self, supplier: &SupplierId, seq: u64) -> Result<(), StoreError> {
        let mut g = self.lock();
        if g.offline.contains(supplier) {
            return Err(StoreError::Unreachable(supplier.clone()));
        }
        if let Some(v) = g.roots.get_mut(supplier) {
            v.retain(|r| crate::root::RootRecord::peek_seq(r).map(|x| x.0) != Some(seq));
        }
        Ok(())
    }

    fn preferred(&self, supplier: &SupplierId) -> bool {
        !self.lock().relayed.contains(supplier)
    }

    fn get_roots(&self, supplier: &SupplierId) -> Result<Vec<Vec<u8>>, StoreError> {
        let g = self.lock();
        if g.offline.contains(supplier) {
            return Err(StoreError::Unreachable(supplier.clone()));
        }
        Ok(g.roots.get(supplier).cloned().unwrap_or_default())
    }
}
