//! Self-repair: liveness checks drive one supplier state machine per supplier; a supplier that
//! stays silent past its grace period (or returns corrupt shards) loses its shards in every
//! block record, and the repair pass rebuilds those blocks from any k shards and queues the
//! missing shards for upload to other suppliers, most endangered blocks first.
//!
//! Crash safety: losing a shard and queueing its rebuilt copy are each one RocksDB batch with
//! the block record, and the upload queue is the durable repair queue: a crash at any point
//! leaves blocks degraded (repaired on the next pass) or repairing (uploads resume).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use rocksdb::WriteBatch;
use tracing::{info, warn};

use super::{BlockRecord, Engine, FsError, FsResult, lock};
use crate::db::{self, cf};
use crate::erasure;
use crate::fsm::block::{BlockEvent, BlockState, next};
use crate::fsm::supplier::{
    Supplier, SupplierAction, SupplierConfig, SupplierEvent, SupplierState,
};
use crate::store::{StoreError, SupplierId};

/// What `dustfs status` shows of repair.
#[derive(Debug, Clone)]
pub struct RepairStatus {
    /// Each known supplier's state name.
    pub supplier_states: BTreeMap<String, String>,
    /// Blocks by the number of shards stored on suppliers.
    pub blocks_by_live_shards: BTreeMap<usize, u64>,
    /// Shards rebuilt and queued for new suppliers since start.
    pub shards_requeued: u64,
    /// Audits passed since start.
    pub audits_passed: u64,
    /// Audits failed since start.
    pub audits_failed: u64,
    /// Bytes of blocks rebuilt since start.
    pub bytes_rebuilt: u64,
    /// Blocks waiting to be retried after a failed rebuild.
    pub backing_off: usize,
}

/// The engine's view of its suppliers.
#[derive(Default)]
pub(super) struct Suppliers {
    pub(super) machines: HashMap<SupplierId, Supplier>,
    pub(super) requeued_shards: u64,
    pub(super) audits_passed: u64,
    pub(super) audits_failed: u64,
    /// Bytes of blocks rebuilt by repair since start.
    pub(super) bytes_rebuilt: u64,
    /// Blocks whose rebuild failed: (failed attempts, not before this time in ms). Kept in
    /// memory only: the durable part of the queue is the block's `degraded` state, and after a
    /// restart an immediate retry is harmless.
    pub(super) backoff: HashMap<u64, (u32, u64)>,
    /// The bandwidth limiter: no repair fetch starts before this instant (it moves forward by
    /// each fetched block's length over the rate, across passes).
    pub(super) repair_not_before: Option<std::time::Instant>,
}

/// How much repair may do in one pass.
#[derive(Debug, Clone, Copy)]
pub struct RepairBudget {
    /// Blocks rebuilt at most.
    pub max_blocks: usize,
    /// Block bytes fetched per second at most (0: no limit). Repair also yields to user reads
    /// waiting on the network, so it runs at background priority.
    pub bytes_per_sec: u64,
}

impl RepairBudget {
    /// No bandwidth limit (tests).
    pub fn blocks(max_blocks: usize) -> Self {
        Self {
            max_blocks,
            bytes_per_sec: 0,
        }
    }
}

/// First retry delay of a block that could not be rebuilt; doubles per failure up to
/// [`BACKOFF_MAX_MS`].
const BACKOFF_BASE_MS: u64 = 2_000;
const BACKOFF_MAX_MS: u64 = 300_000;
/// How long repair waits at most for user reads to finish before taking its turn (so repair
/// can never be starved for good either).
const YIELD_MAX: std::time::Duration = std::time::Duration::from_secs(2);

impl Engine {
    pub(super) fn all_blocks(&self) -> FsResult<Vec<(u64, BlockRecord)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(&self.cf(cf::BLOCKS), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            if let Some(no) = db::be_u64(&k, 0) {
                out.push((no, db::decode(cf::BLOCKS, &v)?));
            }
        }
        Ok(out)
    }

    /// Whether new shards may go to this supplier (not suspect, offline or replaced).
    pub(super) fn placeable(&self, s: &SupplierId) -> bool {
        lock(&self.suppliers).machines.get(s).is_none_or(|m| {
            matches!(
                m.state(),
                SupplierState::Active | SupplierState::Contracted | SupplierState::Candidate
            )
        })
    }

    /// One round of liveness checks at `now_ms` (the caller's clock): every supplier that holds
    /// our shards or that the store offers is asked for its usage, in parallel. Suppliers that
    /// go offline lose their shards in every block. Returns those suppliers.
    pub fn liveness_round(&self, now_ms: u64, cfg: &SupplierConfig) -> FsResult<Vec<SupplierId>> {
        let mut targets: HashSet<SupplierId> = self.store.suppliers().into_iter().collect();
        for (_, rec) in self.all_blocks()? {
            targets.extend(rec.shards.into_iter().filter_map(|s| s.supplier));
        }
        {
            let sup = lock(&self.suppliers);
            targets.retain(|s| {
                !sup.machines.get(s).is_some_and(|m| {
                    matches!(m.state(), SupplierState::Offline | SupplierState::Replaced)
                })
            });
        }
        let answers: Vec<(SupplierId, bool)> = std::thread::scope(|sc| {
            let hs: Vec<_> = targets
                .iter()
                .map(|s| {
                    sc.spawn(move || {
                        let alive = !matches!(self.store.usage(s), Err(StoreError::Unreachable(_)));
                        (s.clone(), alive)
                    })
                })
                .collect();
            hs.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let mut gone = Vec::new();
        {
            let mut sup = lock(&self.suppliers);
            for (s, alive) in answers {
                // A supplier first seen here already holds shards or was just offered by the
                // DHT with a quota: it starts active.
                let m = sup.machines.entry(s.clone()).or_insert_with(|| {
                    let mut m = Supplier::default();
                    m.handle(now_ms, SupplierEvent::Contracted, cfg);
                    m.handle(now_ms, SupplierEvent::Stored, cfg);
                    m
                });
                let ev = if alive {
                    SupplierEvent::CheckOk
                } else {
                    SupplierEvent::CheckMissed
                };
                let a = m.handle(now_ms, ev, cfg);
                let b = m.handle(now_ms, SupplierEvent::Tick, cfg);
                if a == Some(SupplierAction::RepairBlocks)
                    || b == Some(SupplierAction::RepairBlocks)
                {
                    gone.push(s);
                }
            }
        }
        for s in &gone {
            let n = self.supplier_lost(s)?;
            warn!(supplier = %s, blocks = n, "supplier offline past its grace period; its blocks are degraded");
            let mut sup = lock(&self.suppliers);
            if let Some(m) = sup.machines.get_mut(s) {
                m.handle(now_ms, SupplierEvent::Replaced, cfg);
            }
        }
        Ok(gone)
    }

    /// Marks every shard held by `s` as lost. Returns the number of blocks affected.
    pub fn supplier_lost(&self, s: &SupplierId) -> FsResult<usize> {
        let _up = lock(&self.up);
        let mut n = 0;
        for (no, mut rec) in self.all_blocks()? {
            let lost: Vec<usize> = (0..rec.shards.len())
                .filter(|&i| rec.shards[i].supplier.as_ref() == Some(s))
                .collect();
            if lost.is_empty() {
                continue;
            }
            self.lose_shards(no, &mut rec, &lost)?;
            n += 1;
        }
        Ok(n)
    }

    /// Forgets where shards `lost` of block `no` were and moves the block to degraded (or lost).
    fn lose_shards(&self, no: u64, rec: &mut BlockRecord, lost: &[usize]) -> FsResult<()> {
        for &i in lost {
            rec.shards[i].supplier = None;
        }
        let ev = BlockEvent::ShardLost {
            live: rec.stored(),
            k: rec.redundancy.k as usize,
        };
        if let Some(t) = next(rec.state, ev) {
            rec.state = t;
        }
        self.db
            .put_cf(&self.cf(cf::BLOCKS), db::key1(no), db::encode(&*rec))?;
        Ok(())
    }

    /// A fetched shard failed verification: its supplier no longer holds it, so the block is
    /// degraded and will be repaired.
    ///
    /// Returning wrong bytes for a shard it acknowledged is the same proof of loss as a failed
    /// audit: the supplier is taken offline and all its shards are rebuilt elsewhere.
    pub(super) fn shard_corrupt(&self, no: u64, index: usize) -> FsResult<()> {
        let culprit = {
            let _up = lock(&self.up);
            let Some(mut rec) = self.block_record(no)? else {
                return Ok(());
            };
            let culprit = rec.shards.get(index).and_then(|s| s.supplier.clone());
            if culprit.is_some() {
                self.lose_shards(no, &mut rec, &[index])?;
            }
            culprit
        };
        let Some(s) = culprit else { return Ok(()) };
        let cfg = SupplierConfig::default();
        let offline = {
            let mut sup = lock(&self.suppliers);
            let m = sup.machines.entry(s.clone()).or_insert_with(|| {
                let mut m = Supplier::default();
                m.handle(0, SupplierEvent::Contracted, &cfg);
                m.handle(0, SupplierEvent::Stored, &cfg);
                m
            });
            m.handle(0, SupplierEvent::AuditFailed, &cfg) == Some(SupplierAction::RepairBlocks)
        };
        if offline {
            let n = self.supplier_lost(&s)?;
            warn!(supplier = %s, blocks = n, "supplier returned a corrupt shard; all its shards are rebuilt elsewhere");
            if let Some(m) = lock(&self.suppliers).machines.get_mut(&s) {
                m.handle(0, SupplierEvent::Replaced, &cfg);
            }
        }
        Ok(())
    }

    /// One round of audits: random shards of random blocks (chosen from `seed`, so the driver
    /// owns the randomness) are asked for a verified slice, until `budget_bytes` of slices have
    /// been requested. A wrong proof or a missing shard takes the supplier offline and its
    /// shards are rebuilt elsewhere. Returns (audits passed, audits failed).
    pub fn audit_round(&self, seed: u64, budget_bytes: u64) -> FsResult<(usize, usize)> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let blocks = self.all_blocks()?;
        if blocks.is_empty() {
            return Ok((0, 0));
        }
        let mut picks = Vec::new();
        let mut spent = 0;
        while spent < budget_bytes && picks.len() < 4096 {
            let (no, rec) = &blocks[rng.gen_range(0..blocks.len())];
            let i = rng.gen_range(0..rec.shards.len());
            let Some(s) = rec.shards[i].supplier.clone() else {
                spent += crate::audit::SLICE_LEN;
                continue;
            };
            let shard_len = crate::shard::HEADER_LEN as u64
                + (rec.len as u64).div_ceil(rec.redundancy.k as u64);
            let start = rng.gen_range(0..shard_len) / 1024 * 1024;
            picks.push((*no, i, s, rec.shards[i].id, start));
            spent += crate::audit::SLICE_LEN;
        }
        let results: Vec<(u64, usize, Option<bool>)> = std::thread::scope(|sc| {
            let hs: Vec<_> = picks
                .chunks(8)
                .map(|batch| {
                    sc.spawn(move || {
                        batch
                            .iter()
                            .map(|(no, i, s, id, start)| {
                                let verdict = match self.store.audit(
                                    s,
                                    id,
                                    *start,
                                    crate::audit::SLICE_LEN,
                                ) {
                                    Ok(proof) => Some(crate::audit::verify(
                                        id,
                                        *start,
                                        crate::audit::SLICE_LEN,
                                        &proof,
                                    )),
                                    // Claims to have stored it, but does not have it.
                                    Err(StoreError::NotFound) => Some(false),
                                    // Unreachable suppliers are the liveness checks' business.
                                    Err(_) => None,
                                };
                                (*no, *i, verdict)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter()
                .filter_map(|h| h.join().ok())
                .flatten()
                .collect()
        });
        let (mut passed, mut failed) = (0usize, 0usize);
        for (no, i, verdict) in results {
            match verdict {
                Some(true) => passed += 1,
                Some(false) => {
                    failed += 1;
                    warn!(block = no, shard = i, "audit failed");
                    self.shard_corrupt(no, i)?;
                }
                None => {}
            }
        }
        {
            let mut sup = lock(&self.suppliers);
            sup.audits_passed += passed as u64;
            sup.audits_failed += failed as u64;
        }
        Ok((passed, failed))
    }

    /// Waits (at most [`YIELD_MAX`]) while user reads are waiting on the network.
    fn yield_to_reads(&self) {
        let start = std::time::Instant::now();
        while self.foreground_fetches.load(Ordering::SeqCst) > 0 && start.elapsed() < YIELD_MAX {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// One repair pass at `now_ms` (the caller's clock): rebuilds degraded blocks, fewest live
    /// shards first, within `budget`, and queues their missing shards for upload. A block that
    /// cannot be rebuilt now is retried with exponential backoff. Returns the number of blocks
    /// queued.
    pub fn repair_round(&self, now_ms: u64, budget: RepairBudget) -> FsResult<usize> {
        let mut degraded: Vec<(usize, u64)> = {
            let sup = lock(&self.suppliers);
            self.all_blocks()?
                .into_iter()
                .filter(|(_, r)| r.state == BlockState::Degraded)
                .filter(|(no, _)| sup.backoff.get(no).is_none_or(|&(_, t)| t <= now_ms))
                .map(|(no, r)| (r.stored(), no))
                .collect()
        };
        degraded.sort_unstable();
        let mut queued = 0;
        for (_, no) in degraded.into_iter().take(budget.max_blocks) {
            if budget.bytes_per_sec > 0 {
                let not_before = lock(&self.suppliers).repair_not_before;
                if let Some(wait) =
                    not_before.and_then(|t| t.checked_duration_since(std::time::Instant::now()))
                {
                    std::thread::sleep(wait);
                }
            }
            self.yield_to_reads();
            // Rebuild outside the uploader's lock (it fetches from suppliers).
            let block = match self.fetch_block(no) {
                Ok(b) => b,
                Err(e) => {
                    let mut sup = lock(&self.suppliers);
                    let entry = sup.backoff.entry(no).or_insert((0, 0));
                    entry.0 += 1;
                    let delay = BACKOFF_BASE_MS
                        .saturating_mul(1 << entry.0.min(16))
                        .min(BACKOFF_MAX_MS);
                    entry.1 = now_ms + delay;
                    warn!(block = no, error = %e, attempts = entry.0, retry_in_ms = delay, "cannot rebuild the block now; will retry");
                    continue;
                }
            };
            {
                let mut sup = lock(&self.suppliers);
                sup.backoff.remove(&no);
                sup.bytes_rebuilt += block.len() as u64;
                if budget.bytes_per_sec > 0 {
                    let now = std::time::Instant::now();
                    let from = sup.repair_not_before.map_or(now, |t| t.max(now));
                    sup.repair_not_before = Some(
                        from + std::time::Duration::from_secs_f64(
                            block.len() as f64 / budget.bytes_per_sec as f64,
                        ),
                    );
                }
            }
            let _up = lock(&self.up);
            let Some(mut rec) = self.block_record(no)? else {
                continue;
            };
            if rec.state != BlockState::Degraded {
                continue;
            }
            let shards = erasure::encode(rec.redundancy, &block)?;
            let mut b = WriteBatch::default();
            let mut bytes = 0;
            let mut count = 0;
            let mut staged = lock(&self.staged);
            for (i, (id, data)) in shards.into_iter().enumerate() {
                let key = db::key2(no, i as u64);
                // A shard still waiting in the outbox is queued already.
                if rec.shards.get(i).is_some_and(|s| s.supplier.is_none())
                    && self.db.get_pinned_cf(&self.cf(cf::OUTBOX), key)?.is_none()
                {
                    if id != rec.shards[i].id {
                        return Err(FsError::Corrupt(format!(
                            "block {no}: rebuilt shard {i} differs from its record"
                        )));
                    }
                    let len = data.len() as u64;
                    b.put_cf(&self.cf(cf::OUTBOX), key, super::blocks::queue_value(len));
                    // Kept in memory for the uploader when there is room; otherwise it
                    // rebuilds the block again when it gets to the shard.
                    staged.put(no, i, data);
                    bytes += len;
                    count += 1;
                }
            }
            drop(staged);
            if let Some(t) = next(rec.state, BlockEvent::RepairStart) {
                rec.state = t;
            }
            b.put_cf(&self.cf(cf::BLOCKS), db::key1(no), db::encode(&rec));
            // Counted before the uploader can see (and uncount) the shards.
            self.queued_bytes.fetch_add(bytes, Ordering::SeqCst);
            if let Err(e) = self.db.write(b) {
                self.queued_bytes.fetch_sub(bytes, Ordering::SeqCst);
                return Err(e.into());
            }
            lock(&self.suppliers).requeued_shards += count;
            info!(
                block = no,
                shards = count,
                "block rebuilt; missing shards queued for new suppliers"
            );
            queued += 1;
        }
        if queued > 0 {
            self.notify();
        }
        Ok(queued)
    }

    /// Every block record (tests).
    #[cfg(test)]
    pub(super) fn all_blocks_for_test(&self) -> Vec<BlockRecord> {
        self.all_blocks()
            .map(|v| v.into_iter().map(|(_, r)| r).collect())
            .unwrap_or_default()
    }

    /// Suppliers by state name, blocks by live shards, and shards requeued by repair so far.
    pub fn repair_status(&self) -> FsResult<RepairStatus> {
        let (states, requeued, audits_passed, audits_failed, bytes_rebuilt, backing_off) = {
            let sup = lock(&self.suppliers);
            let states = sup
                .machines
                .iter()
                .map(|(s, m)| (s.clone(), m.state().name().to_string()))
                .collect();
            (
                states,
                sup.requeued_shards,
                sup.audits_passed,
                sup.audits_failed,
                sup.bytes_rebuilt,
                sup.backoff.len(),
            )
        };
        let mut by_live = BTreeMap::new();
        for (_, rec) in self.all_blocks()? {
            *by_live.entry(rec.stored()).or_default() += 1;
        }
        Ok(RepairStatus {
            supplier_states: states,
            blocks_by_live_shards: by_live,
            shards_requeued: requeued,
            audits_passed,
            audits_failed,
            bytes_rebuilt,
            backing_off,
        })
    }
}
