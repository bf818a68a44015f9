//! Reclaiming space: a retention policy picks the snapshots to keep; every block that neither
//! the live namespace nor a kept snapshot references is deleted from its suppliers, and the
//! root records of dropped snapshots are forgotten.
//!
//! Crash safety: marking is one RocksDB batch that removes dead blocks from the chunk index and
//! the block records and files them (with their shard placements) under `trash/` in the meta
//! family; only then are delete requests sent. A trash entry goes away once every supplier
//! holding one of its shards has confirmed. A prune killed at any point leaves either nothing
//! marked (rerun starts over) or trash entries (the next prune sends their deletes first), and
//! never a block record pointing at deleted shards. Marking happens under the engine's state
//! lock, after a last scan of the live extents, so a write deduplicating against a chunk of a
//! block being marked cannot slip in between.
//!
//! Compaction ([`Engine::prune_compact`]): blocks whose referenced chunks fill less than a
//! threshold of them get those chunks copied into new blocks; the caller publishes a snapshot
//! naming the copies before [`Engine::prune_finish`] deletes the old blocks.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::meta::Manifest;
use super::{BlockRecord, ChunkLoc, Engine, Extent, FsError, FsResult, Src, lock};
use crate::chunk::ChunkId;
use crate::db::{self, cf};
use crate::fsm::block::BlockState;
use crate::root::{self, RootRecord};
use crate::store::{StoreError, SupplierId};

const TRASH_BLOCK: &[u8] = b"trash/block/";
const TRASH_ROOT: &[u8] = b"trash/root/";
const DROPPED: &[u8] = b"dropped/";
const DAY_MS: u64 = 86_400_000;

/// Which snapshots to keep. The newest is always kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// The newest N.
    pub keep_last: usize,
    /// The newest of each of the last N days that have snapshots.
    pub keep_daily: usize,
    /// The newest of each of the last N weeks that have snapshots.
    pub keep_weekly: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep_last: 10,
            keep_daily: 7,
            keep_weekly: 4,
        }
    }
}

impl Retention {
    /// The sequence numbers to keep of `snapshots` (seq, time in ms).
    pub fn keep(&self, snapshots: &[(u64, u64)]) -> BTreeSet<u64> {
        let mut s = snapshots.to_vec();
        s.sort_unstable_by(|a, b| b.cmp(a));
        let mut keep = BTreeSet::new();
        if let Some((newest, _)) = s.first() {
            keep.insert(*newest);
        }
        keep.extend(s.iter().take(self.keep_last).map(|(q, _)| *q));
        let mut bucket = |width: u64, n: usize| {
            let mut seen = BTreeSet::new();
            for (q, t) in &s {
                // Weeks start on Monday (1970-01-01 was a Thursday).
                let b = (t / DAY_MS + if width == 7 { 3 } else { 0 }) / width;
                if seen.len() >= n && !seen.contains(&b) {
                    break;
                }
                if seen.insert(b) {
                    keep.insert(*q);
                }
            }
        };
        bucket(1, self.keep_daily);
        bucket(7, self.keep_weekly);
        keep
    }
}

/// What a prune did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PruneReport {
    /// Snapshots kept.
    pub snapshots_kept: Vec<u64>,
    /// Snapshots dropped (their root records forgotten).
    pub snapshots_dropped: Vec<u64>,
    /// Blocks kept.
    pub blocks_kept: u64,
    /// Blocks deleted from every supplier.
    pub blocks_deleted: u64,
    /// Shards deleted.
    pub shards_deleted: u64,
    /// Shard bytes freed on suppliers.
    pub bytes_freed: u64,
    /// Blocks whose live chunks were copied out by compaction.
    pub blocks_compacted: u64,
    /// Bytes of live chunks copied by compaction.
    pub bytes_compacted: u64,
    /// Blocks marked but not yet deleted everywhere (a supplier was unreachable; the next
    /// prune retries).
    pub blocks_pending: u64,
}

/// A prune under way: what the kept snapshots reference, and the report so far.
#[derive(Debug)]
pub struct PrunePlan {
    refs: HashSet<ChunkId>,
    report: PruneReport,
}

fn prefixed(prefix: &[u8], n: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&n.to_be_bytes());
    k
}

impl Engine {
    /// Every valid root record of this user: those suppliers keep and those kept locally.
    fn known_roots(&self) -> FsResult<BTreeMap<u64, RootRecord>> {
        let user = self.keys.public().to_bytes();
        let mut out = BTreeMap::new();
        let meta = self.cf(cf::META);
        for item in self.db.iterator_cf(
            &meta,
            rocksdb::IteratorMode::From(b"root/", rocksdb::Direction::Forward),
        ) {
            let (k, v) = item?;
            if !k.starts_with(b"root/") {
                break;
            }
            if let Ok(r) = RootRecord::verify(&v, &user) {
                out.insert(r.seq, r);
            }
        }
        for r in super::meta::roots_from_suppliers(&*self.store)
            .into_iter()
            .flatten()
        {
            if let Ok(r) = RootRecord::verify(&r, &user) {
                out.entry(r.seq).or_insert(r);
            }
        }
        // Snapshots dropped by an earlier prune stay dropped, even if a supplier that missed
        // the delete still serves their root record.
        let mut dropped = Vec::new();
        for seq in out.keys() {
            if self
                .db
                .get_pinned_cf(&meta, prefixed(DROPPED, *seq))?
                .is_some()
            {
                dropped.push(*seq);
            }
        }
        for seq in dropped {
            out.remove(&seq);
        }
        Ok(out)
    }

    /// Chunks a snapshot references: its file extents and its own metadata chunks.
    fn snapshot_chunks(&self, r: &RootRecord, into: &mut HashSet<ChunkId>) -> FsResult<()> {
        let plain = root::open_manifest(&self.keys, &r.manifest)
            .map_err(|e| FsError::Corrupt(e.to_string()))?;
        let m: Manifest = db::decode(cf::META, &plain)?;
        // Locations of its metadata chunks, in case this home never had them indexed.
        for (id, loc) in &m.chunks {
            into.insert(*id);
            if self.db.get_pinned_cf(&self.cf(cf::CHUNKS), id.0)?.is_none() {
                self.db
                    .put_cf(&self.cf(cf::CHUNKS), id.0, db::encode::<ChunkLoc>(loc))?;
            }
        }
        self.read_stream(
            &m,
            |_| {},
            |name, _, v| {
                if name == cf::EXTENTS
                    && let Src::Chunk { id, .. } = db::decode::<Extent>(cf::EXTENTS, v)?.src
                {
                    into.insert(id);
                }
                Ok(())
            },
        )
    }

    /// Prunes without compaction: [`prune_plan`](Self::prune_plan) then
    /// [`prune_finish`](Self::prune_finish). The mount runs the full sequence with compaction
    /// (see `dustfs prune`).
    pub fn prune(&self, policy: &Retention) -> FsResult<PruneReport> {
        let plan = self.prune_plan(policy)?;
        self.prune_finish(plan)
    }

    /// First step of a prune: finishes an interrupted earlier prune, then picks the snapshots
    /// `policy` keeps and collects every chunk they reference.
    pub fn prune_plan(&self, policy: &Retention) -> FsResult<PrunePlan> {
        let mut report = PruneReport::default();
        self.sweep(&mut report)?;
        let roots = self.known_roots()?;
        let all: Vec<(u64, u64)> = roots.values().map(|r| (r.seq, r.time_ms)).collect();
        let keep = policy.keep(&all);
        let mut refs = HashSet::new();
        for seq in &keep {
            if let Some(r) = roots.get(seq) {
                self.snapshot_chunks(r, &mut refs).map_err(|e| {
                    FsError::Unavailable(format!(
                        "snapshot {seq} could not be read, so nothing was pruned: {e}"
                    ))
                })?;
            }
        }
        report.snapshots_kept = keep.iter().copied().collect();
        report.snapshots_dropped = all
            .iter()
            .map(|(q, _)| *q)
            .filter(|q| !keep.contains(q))
            .collect();
        Ok(PrunePlan { refs, report })
    }

    /// Keeps snapshot `seq` too (one published during this prune), with everything it
    /// references.
    pub fn prune_keep_also(&self, plan: &mut PrunePlan, seq: u64) -> FsResult<()> {
        let signed = self
            .root_record(seq)?
            .ok_or_else(|| FsError::Corrupt(format!("snapshot {seq} is not recorded locally")))?;
        let r = RootRecord::verify(&signed, &self.user_id())
            .map_err(|e| FsError::Corrupt(e.to_string()))?;
        self.snapshot_chunks(&r, &mut plan.refs)?;
        if !plan.report.snapshots_kept.contains(&seq) {
            plan.report.snapshots_kept.push(seq);
        }
        Ok(())
    }

    /// Compaction: the referenced chunks of blocks whose referenced bytes are under
    /// `threshold` (a fraction) of the block are copied into new blocks and the chunk index
    /// points at the copies, so the old blocks become unreferenced. Returns the bytes moved.
    ///
    /// Old snapshots keep naming the old locations in their own chunk index: before the old
    /// blocks go, the caller publishes a new snapshot (whose index has the new locations) and
    /// restores of older snapshots take chunk locations from the newest one.
    pub fn prune_compact(&self, plan: &mut PrunePlan, threshold: f64) -> FsResult<u64> {
        // Live chunks too: they are what the next snapshot references.
        for item in self
            .db
            .iterator_cf(&self.cf(cf::EXTENTS), rocksdb::IteratorMode::Start)
        {
            let (_, v) = item?;
            if let Src::Chunk { id, .. } = db::decode::<Extent>(cf::EXTENTS, &v)?.src {
                plan.refs.insert(id);
            }
        }
        let mut live: HashMap<u64, Vec<(ChunkId, ChunkLoc)>> = HashMap::new();
        for item in self
            .db
            .iterator_cf(&self.cf(cf::CHUNKS), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            let id = ChunkId(
                <[u8; 32]>::try_from(&*k)
                    .map_err(|_| FsError::Corrupt("bad chunk index key".into()))?,
            );
            if plan.refs.contains(&id) {
                let loc: ChunkLoc = db::decode(cf::CHUNKS, &v)?;
                live.entry(loc.block).or_default().push((id, loc));
            }
        }
        let mut moved = 0u64;
        for (no, rec) in self.all_blocks()? {
            let settled = matches!(rec.state, BlockState::Healthy | BlockState::Degraded);
            let Some(chunks) = live.get(&no) else {
                continue;
            };
            let used: u64 = chunks.iter().map(|(_, l)| l.len as u64).sum();
            if !settled || used as f64 >= threshold * rec.len as f64 {
                continue;
            }
            for (id, loc) in chunks {
                let sealed = self.block_slice(no, loc.off as usize, loc.len as usize)?;
                let mut st = lock(&self.state);
                // Still where we found it (a concurrent prune or write did not move it)?
                let now: Option<ChunkLoc> = self
                    .db
                    .get_cf(&self.cf(cf::CHUNKS), id.0)?
                    .map(|v| db::decode(cf::CHUNKS, &v))
                    .transpose()?;
                if now != Some(*loc) {
                    continue;
                }
                let mut b = WriteBatch::default();
                self.append_open(&mut st, &mut b, id, &sealed)?;
                self.db.write(b)?;
                moved += loc.len as u64;
            }
            plan.report.blocks_compacted += 1;
        }
        if moved > 0 {
            let mut st = lock(&self.state);
            self.seal_open_locked(&mut st)?;
        }
        plan.report.bytes_compacted = moved;
        info!(
            blocks = plan.report.blocks_compacted,
            bytes = moved,
            "prune: live chunks of sparse blocks copied"
        );
        Ok(moved)
    }

    /// Last step of a prune: marks every block no kept snapshot or live file references, under
    /// the state lock, then deletes them from their suppliers and forgets dropped snapshots.
    pub fn prune_finish(&self, plan: PrunePlan) -> FsResult<PruneReport> {
        let PrunePlan {
            mut refs,
            mut report,
        } = plan;
        // Mark, under the state lock: no write can reference a chunk meanwhile.
        let dead: Vec<u64> = {
            let st = lock(&self.state);
            for item in self
                .db
                .iterator_cf(&self.cf(cf::EXTENTS), rocksdb::IteratorMode::Start)
            {
                let (_, v) = item?;
                if let Src::Chunk { id, .. } = db::decode::<Extent>(cf::EXTENTS, &v)?.src {
                    refs.insert(id);
                }
            }
            let mut live_blocks = BTreeSet::new();
            let mut unref: HashMap<u64, Vec<ChunkId>> = HashMap::new();
            for item in self
                .db
                .iterator_cf(&self.cf(cf::CHUNKS), rocksdb::IteratorMode::Start)
            {
                let (k, v) = item?;
                let loc: ChunkLoc = db::decode(cf::CHUNKS, &v)?;
                let id = ChunkId(
                    <[u8; 32]>::try_from(&*k)
                        .map_err(|_| FsError::Corrupt("bad chunk index key".into()))?,
                );
                if refs.contains(&id) {
                    live_blocks.insert(loc.block);
                } else {
                    unref.entry(loc.block).or_default().push(id);
                }
            }
            let mut b = WriteBatch::default();
            let mut dead = Vec::new();
            for (no, rec) in self.all_blocks()? {
                // Blocks still uploading or being repaired are left for a later prune.
                let settled = matches!(
                    rec.state,
                    BlockState::Healthy | BlockState::Degraded | BlockState::Lost
                );
                if live_blocks.contains(&no) || no == st.open.no || !settled {
                    report.blocks_kept += 1;
                    continue;
                }
                for id in unref.get(&no).into_iter().flatten() {
                    b.delete_cf(&self.cf(cf::CHUNKS), id.0);
                }
                b.delete_cf(&self.cf(cf::BLOCKS), db::key1(no));
                b.put_cf(
                    &self.cf(cf::META),
                    prefixed(TRASH_BLOCK, no),
                    db::encode(&rec),
                );
                dead.push(no);
            }
            for q in &report.snapshots_dropped {
                b.put_cf(&self.cf(cf::META), prefixed(TRASH_ROOT, *q), db::encode(q));
                b.put_cf(&self.cf(cf::META), prefixed(DROPPED, *q), db::encode(q));
                b.delete_cf(&self.cf(cf::META), prefixed(b"root/", *q));
            }
            self.db.write(b)?;
            drop(st);
            dead
        };
        for no in &dead {
            self.forget_cached_block(*no)?;
        }
        info!(
            dead = dead.len(),
            kept = report.blocks_kept,
            dropped = ?report.snapshots_dropped,
            "prune: blocks marked for deletion"
        );
        self.sweep(&mut report)?;
        Ok(report)
    }

    /// Sends the deletes of everything in the trash; entries go once fully done.
    fn sweep(&self, report: &mut PruneReport) -> FsResult<()> {
        let meta = self.cf(cf::META);
        let mut blocks = Vec::new();
        let mut roots = Vec::new();
        for item in self.db.iterator_cf(
            &meta,
            rocksdb::IteratorMode::From(b"trash/", rocksdb::Direction::Forward),
        ) {
            let (k, v) = item?;
            if k.starts_with(TRASH_BLOCK) {
                blocks.push((k.to_vec(), db::decode::<BlockRecord>(cf::META, &v)?));
            } else if k.starts_with(TRASH_ROOT) {
                roots.push((k.to_vec(), db::decode::<u64>(cf::META, &v)?));
            } else {
                break;
            }
        }
        for (k, rec) in blocks {
            let shard_len = crate::shard::HEADER_LEN as u64
                + (rec.len as u64).div_ceil(rec.redundancy.k.max(1) as u64);
            let results: Vec<Result<(), StoreError>> = std::thread::scope(|sc| {
                let hs: Vec<_> = rec
                    .shards
                    .iter()
                    .filter_map(|s| s.supplier.as_ref().map(|sup| (sup, s.id)))
                    .map(|(sup, id)| sc.spawn(move || self.store.delete(sup, &id)))
                    .collect();
                hs.into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(StoreError::Unreachable("panicked".into())))
                    })
                    .collect()
            });
            let mut all_done = true;
            for r in results {
                match r {
                    Ok(()) | Err(StoreError::NotFound) => {
                        report.shards_deleted += 1;
                        report.bytes_freed += shard_len;
                    }
                    Err(e) => {
                        warn!(error = %e, "shard delete failed; retried by the next prune");
                        all_done = false;
                    }
                }
            }
            if all_done {
                self.db.delete_cf(&meta, &k)?;
                report.blocks_deleted += 1;
            } else {
                report.blocks_pending += 1;
            }
        }
        if !roots.is_empty() {
            let mut targets: BTreeSet<SupplierId> = self.store.suppliers().into_iter().collect();
            targets.extend(self.holding_suppliers()?);
            for (k, seq) in roots {
                // Kept until every supplier of ours has forgotten it (a supplier gone for good
                // is replaced by repair and leaves this set).
                let failed = targets
                    .iter()
                    .filter(|s| self.store.delete_root(s, seq).is_err())
                    .count();
                if failed == 0 {
                    self.db.delete_cf(&meta, &k)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retention_keeps_the_newest_the_last_n_and_one_per_day_and_week() {
        let h = 3_600_000;
        // Four snapshots a day for 30 days.
        let snaps: Vec<(u64, u64)> = (0..120).map(|i| (i + 1, i * 6 * h)).collect();
        let r = Retention {
            keep_last: 3,
            keep_daily: 2,
            keep_weekly: 2,
        };
        let keep = r.keep(&snaps);
        // 118..=120 (last 3, which include the newest day's newest), the newest of the
        // day before (116), the newest of the previous week.
        assert!(keep.contains(&120) && keep.contains(&119) && keep.contains(&118));
        assert!(keep.contains(&116));
        assert!(keep.len() <= 3 + 2 + 2);
        let none = Retention {
            keep_last: 0,
            keep_daily: 0,
            keep_weekly: 0,
        };
        assert_eq!(none.keep(&snaps), BTreeSet::from([120]));
        assert!(none.keep(&[]).is_empty());
    }

    proptest! {
        #[test]
        fn retention_always_keeps_the_newest_and_never_more_than_asked(
            times in proptest::collection::vec(0u64..(90 * DAY_MS), 0..200),
            last in 0usize..10, daily in 0usize..10, weekly in 0usize..10,
        ) {
            let mut times = times;
            times.sort_unstable();
            let snaps: Vec<(u64, u64)> =
                times.iter().enumerate().map(|(i, t)| (i as u64 + 1, *t)).collect();
            let r = Retention { keep_last: last, keep_daily: daily, keep_weekly: weekly };
            let keep = r.keep(&snaps);
            if let Some((newest, _)) = snaps.last() {
                prop_assert!(keep.contains(newest));
            }
            prop_assert!(keep.len() <= (last + daily + weekly).max(1));
            prop_assert!(keep.iter().all(|q| snaps.iter().any(|(s, _)| s == q)));
        }
    }
}
