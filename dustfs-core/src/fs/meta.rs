//! The namespace to the network, and back: snapshots, root records and restore.
//!
//! A snapshot serializes the namespace column families (inodes, directory entries, extents,
//! xattrs, the chunk index and the block records) from a RocksDB snapshot, in key order, as a
//! stream of records. The stream is cut with the same content-defined chunker as file data,
//! sealed, packed into blocks and erasure-coded like any file: unchanged parts of the stream
//! produce the same chunks and deduplicate. Block records go into the stream without their
//! supplier assignments and health, which change with every repair; restore rebuilds those
//! from what suppliers actually list, so a restore after repairs finds moved shards.
//!
//! The manifest (where the stream's chunks are, and the records of the blocks holding them)
//! is sealed with the metadata key and carried in a signed [`RootRecord`] that every supplier
//! of the user keeps. Restore on a fresh machine: ask every supplier for root records and for
//! the list of shards it holds, take the newest valid root, open the manifest, fetch the stream
//! through the ordinary read path and write it back into the column families.

use std::collections::{BTreeSet, HashMap};

use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{BlockRecord, ChunkLoc, Engine, FsError, FsResult, Inode, Kind, lock};
use crate::chunk::{self, ChunkId};
use crate::db::{self, cf};
use crate::fsm::block::BlockState;
use crate::root::{self, RootRecord};
use crate::shard::ShardId;
use crate::store::SupplierId;

/// Column families in the metadata stream, with their tags.
const STREAM_CFS: [(u8, &str); 6] = [
    (1, cf::INODES),
    (2, cf::DIRENTS),
    (3, cf::EXTENTS),
    (4, cf::XATTRS),
    (5, cf::CHUNKS),
    (6, cf::BLOCKS),
];
/// The stream is cut into chunks whenever this much is buffered (bounded memory).
const STREAM_WINDOW: usize = 16 << 20;
const META_ROOT_SEQ: &[u8] = b"root_seq";
const META_ROOT_PREFIX: &[u8] = b"root/";

/// Where a snapshot's metadata stream is. Sealed inside the root record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The stream's chunks, in order, and where each lives.
    pub chunks: Vec<(ChunkId, ChunkLoc)>,
    /// Records (shard ids) of the blocks holding those chunks.
    pub blocks: Vec<(u64, BlockRecord)>,
    /// The next inode number at snapshot time.
    pub next_ino: u64,
    /// Regular files in the snapshot.
    pub files: u64,
    /// Bytes in those files.
    pub file_bytes: u64,
    /// Length of the metadata stream.
    pub stream_bytes: u64,
}

/// A snapshot whose metadata is packed into blocks but not yet published; publish it with
/// [`Engine::publish_snapshot`] once the upload queue is empty.
#[derive(Debug)]
pub struct PendingSnapshot {
    manifest: Manifest,
}

impl PendingSnapshot {
    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}

/// A published snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Sequence number (the snapshot's id).
    pub seq: u64,
    /// Publication time, ms since the Unix epoch.
    pub time_ms: u64,
    /// Regular files.
    pub files: u64,
    /// Bytes in files.
    pub file_bytes: u64,
    /// Metadata stream length.
    pub stream_bytes: u64,
    /// Suppliers that took the root record.
    pub suppliers: usize,
}

/// What a restore found.
#[derive(Debug, Clone)]
pub struct RestoreInfo {
    /// The snapshot restored.
    pub snapshot: SnapshotInfo,
    /// Suppliers asked, and how many answered.
    pub suppliers_asked: usize,
    /// Suppliers that answered.
    pub suppliers_answered: usize,
    /// Root records refused (bad signature, another user, malformed).
    pub roots_refused: usize,
    /// Blocks known, and how many have all their shards on reachable suppliers.
    pub blocks: u64,
    /// Blocks with every shard found.
    pub blocks_complete: u64,
}

fn stream_record(out: &mut Vec<u8>, tag: u8, k: &[u8], v: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(k.len() as u32).to_be_bytes());
    out.extend_from_slice(k);
    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
    out.extend_from_slice(v);
}

/// Parses complete records off the front of `buf`; returns how many bytes were consumed.
fn parse_records(
    buf: &[u8],
    mut f: impl FnMut(u8, &[u8], &[u8]) -> FsResult<()>,
) -> FsResult<usize> {
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        if rest.len() < 5 {
            return Ok(at);
        }
        let tag = rest[0];
        let kl = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest.len() < 5 + kl + 4 {
            return Ok(at);
        }
        let vo = 5 + kl;
        let vl = u32::from_be_bytes([rest[vo], rest[vo + 1], rest[vo + 2], rest[vo + 3]]) as usize;
        if vl > 64 << 20 || kl > 1 << 20 {
            return Err(FsError::Corrupt("metadata stream record too large".into()));
        }
        if rest.len() < vo + 4 + vl {
            return Ok(at);
        }
        f(tag, &rest[5..vo], &rest[vo + 4..vo + 4 + vl])?;
        at += vo + 4 + vl;
    }
}

/// Reads a metadata stream as a restore does and checks every complete record: its tag names
/// a column family of the stream and its value decodes as that family's record (xattr values
/// are raw bytes). Returns how many records it read. The fuzz target `metadata_stream` and the
/// round-trip tests use it; a restore reads a stream only after its chunks authenticated.
pub fn check_stream(buf: &[u8]) -> FsResult<usize> {
    let mut n = 0;
    parse_records(buf, |tag, _k, v| {
        let name = STREAM_CFS
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, name)| *name)
            .ok_or_else(|| FsError::Corrupt(format!("unknown stream tag {tag}")))?;
        match name {
            cf::INODES => drop(db::decode::<Inode>(name, v)?),
            cf::DIRENTS => drop(db::decode::<super::Dirent>(name, v)?),
            cf::EXTENTS => drop(db::decode::<super::Extent>(name, v)?),
            cf::CHUNKS => drop(db::decode::<ChunkLoc>(name, v)?),
            cf::BLOCKS => drop(db::decode::<BlockRecord>(name, v)?),
            _ => {}
        }
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

/// Encodes one record of a metadata stream (tag, key, value), as a snapshot writes it.
pub fn encode_stream_record(tag: u8, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    stream_record(&mut out, tag, key, value);
    out
}

impl Engine {
    /// Stores one chunk of the metadata stream (deduplicated like file data).
    fn store_meta_chunk(&self, data: &[u8]) -> FsResult<(ChunkId, ChunkLoc)> {
        let id = ChunkId::of(&self.keys.chunk_id, data);
        let mut st = lock(&self.state);
        if self.db.get_pinned_cf(&self.cf(cf::CHUNKS), id.0)?.is_none() {
            let mut b = WriteBatch::default();
            self.seal_into_open(&mut st, &mut b, &id, data)?;
            self.db.write(b)?;
        }
        drop(st);
        let loc = self
            .db
            .get_cf(&self.cf(cf::CHUNKS), id.0)?
            .ok_or_else(|| FsError::Corrupt(format!("{id:?} vanished from the chunk index")))?;
        Ok((id, db::decode(cf::CHUNKS, &loc)?))
    }

    /// Takes a snapshot of the namespace: commits every file, seals the open block, and packs
    /// the metadata stream into blocks (queued for upload). Writers may go on meanwhile; the
    /// snapshot is the state at the moment the open block was sealed.
    pub fn snapshot_metadata(&self) -> FsResult<PendingSnapshot> {
        let (snap, next_ino) = {
            let mut st = lock(&self.state);
            let inos: Vec<_> = st.dirty.keys().copied().collect();
            for ino in inos {
                self.commit_locked(&mut st, ino, true)?;
            }
            self.seal_open_locked(&mut st)?;
            (self.db.snapshot(), st.next_ino)
        };
        let mut m = Manifest {
            chunks: Vec::new(),
            blocks: Vec::new(),
            next_ino,
            files: 0,
            file_bytes: 0,
            stream_bytes: 0,
        };
        let mut buf = Vec::new();
        let flush = |buf: &mut Vec<u8>, last: bool, m: &mut Manifest| -> FsResult<()> {
            let cuts = chunk::cut(buf);
            let n = if last {
                cuts.len()
            } else {
                cuts.len().saturating_sub(1)
            };
            let mut end = 0;
            for &(o, l) in &cuts[..n] {
                m.chunks.push(self.store_meta_chunk(&buf[o..o + l])?);
                end = o + l;
            }
            buf.drain(..end);
            Ok(())
        };
        for (tag, name) in STREAM_CFS {
            let h = self.cf(name);
            for item in snap.iterator_cf(&h, rocksdb::IteratorMode::Start) {
                let (k, v) = item?;
                match name {
                    cf::BLOCKS => {
                        // Without suppliers and health: restore finds those afresh.
                        let mut rec: BlockRecord = db::decode(cf::BLOCKS, &v)?;
                        for s in &mut rec.shards {
                            s.supplier = None;
                        }
                        rec.state = BlockState::Healthy;
                        stream_record(&mut buf, tag, &k, &db::encode(&rec));
                    }
                    cf::INODES => {
                        let i: Inode = db::decode(cf::INODES, &v)?;
                        if i.kind == Kind::File {
                            m.files += 1;
                            m.file_bytes += i.size;
                        }
                        stream_record(&mut buf, tag, &k, &v);
                    }
                    _ => stream_record(&mut buf, tag, &k, &v),
                }
                m.stream_bytes += 9 + k.len() as u64 + v.len() as u64;
                if buf.len() >= STREAM_WINDOW {
                    flush(&mut buf, false, &mut m)?;
                }
            }
        }
        stream_record(&mut buf, 0, b"", b"");
        flush(&mut buf, true, &mut m)?;
        drop(snap);
        {
            let mut st = lock(&self.state);
            self.seal_open_locked(&mut st)?;
        }
        let nos: BTreeSet<u64> = m.chunks.iter().map(|(_, l)| l.block).collect();
        for no in nos {
            let mut rec = self
                .block_record(no)?
                .ok_or_else(|| FsError::Corrupt(format!("metadata block {no} has no record")))?;
            for s in &mut rec.shards {
                s.supplier = None;
            }
            rec.state = BlockState::Healthy;
            m.blocks.push((no, rec));
        }
        info!(
            chunks = m.chunks.len(),
            stream_bytes = m.stream_bytes,
            files = m.files,
            "metadata snapshot packed"
        );
        Ok(PendingSnapshot { manifest: m })
    }

    /// Signs a root record for `pending` and hands it to every supplier of this user (those
    /// holding our shards and those the network offers). Call once the upload queue is empty,
    /// so every block the snapshot names is on suppliers.
    pub fn publish_snapshot(&self, pending: PendingSnapshot) -> FsResult<SnapshotInfo> {
        let meta = self.cf(cf::META);
        let seq = match self.db.get_cf(&meta, META_ROOT_SEQ)? {
            Some(v) => db::decode::<u64>(cf::META, &v)? + 1,
            None => 1,
        };
        let m = pending.manifest;
        let rec = RootRecord {
            user: self.keys.public().to_bytes(),
            seq,
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            manifest: root::seal_manifest(&self.keys, &db::encode(&m))?,
        };
        let signed = rec.sign(&self.keys);
        if signed.len() > root::MAX_ROOT {
            return Err(FsError::Invalid);
        }
        let mut targets: BTreeSet<SupplierId> = self.store.suppliers().into_iter().collect();
        for (_, r) in self.all_blocks()? {
            targets.extend(r.shards.into_iter().filter_map(|s| s.supplier));
        }
        let ok = std::thread::scope(|sc| {
            let hs: Vec<_> = targets
                .iter()
                .map(|s| {
                    let signed = &signed;
                    sc.spawn(move || match self.store.put_root(s, signed) {
                        Ok(()) => true,
                        Err(e) => {
                            warn!(supplier = %s, error = %e, "supplier did not take the root record");
                            false
                        }
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(false))
                .filter(|&b| b)
                .count()
        });
        if ok == 0 {
            return Err(FsError::Unavailable(format!(
                "no supplier took the root record ({} asked)",
                targets.len()
            )));
        }
        let mut b = WriteBatch::default();
        b.put_cf(&meta, META_ROOT_SEQ, db::encode(&seq));
        let mut k = META_ROOT_PREFIX.to_vec();
        k.extend_from_slice(&seq.to_be_bytes());
        b.put_cf(&meta, k, &signed);
        self.db.write(b)?;
        let info = SnapshotInfo {
            seq,
            time_ms: rec.time_ms,
            files: m.files,
            file_bytes: m.file_bytes,
            stream_bytes: m.stream_bytes,
            suppliers: ok,
        };
        info!(seq, suppliers = ok, files = m.files, "snapshot published");
        Ok(info)
    }

    /// Reads a snapshot's metadata stream through the ordinary read path (shards verified,
    /// chunks authenticated) and hands each record to `f` with its column family's name;
    /// `progress` gets the stream bytes read so far.
    pub(super) fn read_stream(
        &self,
        m: &Manifest,
        mut progress: impl FnMut(u64),
        mut f: impl FnMut(&'static str, &[u8], &[u8]) -> FsResult<()>,
    ) -> FsResult<()> {
        let mut buf: Vec<u8> = Vec::new();
        let mut done = 0u64;
        let mut ended = false;
        for (id, _) in &m.chunks {
            let plain = self.chunk_plain(id)?;
            buf.extend_from_slice(&plain);
            let used = parse_records(&buf, |tag, k, v| {
                if ended {
                    return Err(FsError::Corrupt(
                        "records after the end of the stream".into(),
                    ));
                }
                match STREAM_CFS.iter().find(|(t, _)| *t == tag) {
                    Some((_, n)) => f(n, k, v),
                    None if tag == 0 => {
                        ended = true;
                        Ok(())
                    }
                    None => Err(FsError::Corrupt(format!("unknown stream record tag {tag}"))),
                }
            })?;
            buf.drain(..used);
            done += plain.len() as u64;
            progress(done);
        }
        if !ended || !buf.is_empty() {
            return Err(FsError::Corrupt("the metadata stream is truncated".into()));
        }
        Ok(())
    }

    /// Fetches every block into the local cache (`dustfs restore --all`), verifying each;
    /// `progress` gets (bytes done, bytes in all). Returns the bytes fetched; blocks that could
    /// not be fetched are counted and reported as one error at the end.
    pub fn prefetch_all(&self, mut progress: impl FnMut(u64, u64)) -> FsResult<u64> {
        let blocks = self.all_blocks()?;
        let total: u64 = blocks.iter().map(|(_, r)| r.len as u64).sum();
        let (mut done, mut failed) = (0u64, 0usize);
        for (no, r) in blocks {
            match self.block_slice(no, 0, 0) {
                Ok(_) => done += r.len as u64,
                Err(e) => {
                    warn!(block = no, error = %e, "block could not be fetched");
                    failed += 1;
                }
            }
            progress(done, total);
        }
        if failed > 0 {
            return Err(FsError::Unavailable(format!(
                "{failed} blocks could not be fetched"
            )));
        }
        Ok(done)
    }

    /// The user's public key (identity).
    pub fn user_id(&self) -> [u8; 32] {
        self.keys.public().to_bytes()
    }

    /// The signed root record `seq` as this home published or restored it.
    pub fn root_record(&self, seq: u64) -> FsResult<Option<Vec<u8>>> {
        let mut k = META_ROOT_PREFIX.to_vec();
        k.extend_from_slice(&seq.to_be_bytes());
        Ok(self.db.get_cf(&self.cf(cf::META), k)?)
    }

    /// Suppliers that hold at least one of our shards.
    pub fn holding_suppliers(&self) -> FsResult<BTreeSet<SupplierId>> {
        let mut out = BTreeSet::new();
        for (_, r) in self.all_blocks()? {
            out.extend(r.shards.into_iter().filter_map(|s| s.supplier));
        }
        Ok(out)
    }

    /// The newest snapshot published from this home, if any.
    pub fn last_snapshot_seq(&self) -> FsResult<Option<u64>> {
        match self.db.get_cf(&self.cf(cf::META), META_ROOT_SEQ)? {
            Some(v) => Ok(Some(db::decode(cf::META, &v)?)),
            None => Ok(None),
        }
    }

    /// Restores the namespace of the newest valid snapshot on the network into this (fresh)
    /// engine. `progress` gets (stream bytes restored, stream bytes in all). Reopen the engine
    /// afterwards: its in-memory counters are those of the empty database.
    pub fn restore_from_network(
        &self,
        want: Option<u64>,
        extra_roots: Vec<Vec<u8>>,
        mut progress: impl FnMut(u64, u64),
    ) -> FsResult<RestoreInfo> {
        let user = self.keys.public().to_bytes();
        // Nothing is written into this engine until it is reopened: move its open block out
        // of the way of the restored block numbers.
        {
            let mut st = lock(&self.state);
            if !st.open.buf.is_empty() {
                return Err(FsError::Invalid);
            }
            st.open.no = u64::MAX;
        }
        let suppliers = self.store.suppliers();
        type Answer = (SupplierId, Option<(Vec<Vec<u8>>, Vec<ShardId>)>);
        let answers: Vec<Answer> = std::thread::scope(|sc| {
            let hs: Vec<_> = suppliers
                .iter()
                .map(|s| {
                    sc.spawn(move || {
                        let roots = self.store.get_roots(s);
                        let list = self.store.list(s);
                        match (roots, list) {
                            (Ok(r), Ok(l)) => (s.clone(), Some((r, l))),
                            (r, l) => {
                                warn!(supplier = %s, roots = ?r.err(), list = ?l.err(), "supplier did not answer");
                                (s.clone(), None)
                            }
                        }
                    })
                })
                .collect();
            hs.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let answered = answers.iter().filter(|(_, a)| a.is_some()).count();
        let mut where_: HashMap<ShardId, Vec<SupplierId>> = HashMap::new();
        // Root records found elsewhere (the DHT) count the same: each is verified.
        let mut candidates = extra_roots;
        for (s, a) in answers {
            if let Some((roots, list)) = a {
                candidates.extend(roots);
                for id in list {
                    where_.entry(id).or_default().push(s.clone());
                }
            }
        }
        // An older snapshot's own chunk index may name blocks that compaction has since
        // emptied: chunk locations come from the newest snapshot (whose index covers every
        // chunk a kept snapshot references), the namespace from the one asked for.
        let newest_any = match want {
            Some(_) => root::newest(candidates.clone(), &user).0,
            None => None,
        };
        if let Some(seq) = want {
            candidates.retain(|c| RootRecord::peek_seq(c).is_some_and(|(s, _)| s == seq));
        }
        let (best, refused) = root::newest(candidates, &user);
        let Some((rec, signed)) = best else {
            return Err(FsError::NoSnapshot(format!(
                "no snapshot {}of this identity on the network ({} suppliers asked, {answered} answered{})",
                want.map(|s| format!("{s} ")).unwrap_or_default(),
                suppliers.len(),
                if refused > 0 {
                    format!(", {refused} forged or foreign root records refused")
                } else {
                    String::new()
                }
            )));
        };
        let plain = root::open_manifest(&self.keys, &rec.manifest)
            .map_err(|e| FsError::Corrupt(e.to_string()))?;
        let m: Manifest = db::decode(cf::META, &plain)?;
        // Where each shard is now, whatever the records said at snapshot time.
        let place = |rec: &mut BlockRecord| {
            let mut used = BTreeSet::new();
            for s in &mut rec.shards {
                s.supplier = where_
                    .get(&s.id)
                    .and_then(|v| v.iter().find(|x| !used.contains(*x)))
                    .cloned();
                if let Some(x) = &s.supplier {
                    used.insert(x.clone());
                }
            }
            let live = rec.stored();
            rec.state = if live == rec.shards.len() {
                BlockState::Healthy
            } else if live >= rec.redundancy.k as usize {
                BlockState::Degraded
            } else {
                BlockState::Lost
            };
        };
        let mut b = WriteBatch::default();
        let mut manifest_blocks = BTreeSet::new();
        for (no, r) in &m.blocks {
            let mut r = r.clone();
            place(&mut r);
            b.put_cf(&self.cf(cf::BLOCKS), db::key1(*no), db::encode(&r));
            manifest_blocks.insert(*no);
        }
        for (id, loc) in &m.chunks {
            b.put_cf(&self.cf(cf::CHUNKS), id.0, db::encode(loc));
        }
        self.db.write(b)?;
        // The stream, through the ordinary read path (shards verified, chunks authenticated).
        let (mut blocks, mut complete) = (0u64, 0u64);
        let mut max_block = 0u64;
        let mut b = WriteBatch::default();
        self.read_stream(
            &m,
            |done| progress(done, m.stream_bytes),
            |name, k, v| {
                if b.size_in_bytes() > 4 << 20 {
                    self.db.write(std::mem::take(&mut b))?;
                }
                if name == cf::BLOCKS {
                    let no = db::be_u64(k, 0)
                        .ok_or_else(|| FsError::Corrupt("bad block key in stream".into()))?;
                    max_block = max_block.max(no);
                    if manifest_blocks.contains(&no) {
                        return Ok(());
                    }
                    let mut r: BlockRecord = db::decode(cf::BLOCKS, v)?;
                    place(&mut r);
                    blocks += 1;
                    if r.state == BlockState::Healthy {
                        complete += 1;
                    }
                    b.put_cf(&self.cf(cf::BLOCKS), k, db::encode(&r));
                } else {
                    b.put_cf(&self.cf(name), k, v);
                }
                Ok(())
            },
        )?;
        self.db.write(b)?;
        if let Some((newest, _)) = newest_any.filter(|(n, _)| n.seq > rec.seq) {
            let plain = root::open_manifest(&self.keys, &newest.manifest)
                .map_err(|e| FsError::Corrupt(e.to_string()))?;
            let nm: Manifest = db::decode(cf::META, &plain)?;
            let mut b = WriteBatch::default();
            let mut its_blocks = BTreeSet::new();
            for (no, r) in &nm.blocks {
                let mut r = r.clone();
                place(&mut r);
                b.put_cf(&self.cf(cf::BLOCKS), db::key1(*no), db::encode(&r));
                its_blocks.insert(*no);
                max_block = max_block.max(*no);
            }
            for (id, loc) in &nm.chunks {
                b.put_cf(&self.cf(cf::CHUNKS), id.0, db::encode(loc));
            }
            self.db.write(b)?;
            let mut b = WriteBatch::default();
            self.read_stream(
                &nm,
                |_| {},
                |name, k, v| {
                    if b.size_in_bytes() > 4 << 20 {
                        self.db.write(std::mem::take(&mut b))?;
                    }
                    match name {
                        cf::CHUNKS => b.put_cf(&self.cf(cf::CHUNKS), k, v),
                        cf::BLOCKS => {
                            let no = db::be_u64(k, 0).ok_or_else(|| {
                                FsError::Corrupt("bad block key in stream".into())
                            })?;
                            max_block = max_block.max(no);
                            if !its_blocks.contains(&no) && !manifest_blocks.contains(&no) {
                                let mut r: BlockRecord = db::decode(cf::BLOCKS, v)?;
                                place(&mut r);
                                b.put_cf(&self.cf(cf::BLOCKS), k, db::encode(&r));
                            }
                        }
                        _ => {}
                    }
                    Ok(())
                },
            )?;
            self.db.write(b)?;
        }
        for (no, r) in &m.blocks {
            max_block = max_block.max(*no);
            blocks += 1;
            if r.shards.iter().all(|s| where_.contains_key(&s.id)) {
                complete += 1;
            }
        }
        let meta = self.cf(cf::META);
        let mut b = WriteBatch::default();
        b.put_cf(&meta, super::META_NEXT_INO, db::encode(&m.next_ino));
        b.put_cf(&meta, super::META_NEXT_BLOCK, db::encode(&(max_block + 1)));
        b.put_cf(&meta, META_ROOT_SEQ, db::encode(&rec.seq));
        let mut k = META_ROOT_PREFIX.to_vec();
        k.extend_from_slice(&rec.seq.to_be_bytes());
        b.put_cf(&meta, k, &signed);
        self.db.write(b)?;
        self.db.flush_wal(true)?;
        Ok(RestoreInfo {
            snapshot: SnapshotInfo {
                seq: rec.seq,
                time_ms: rec.time_ms,
                files: m.files,
                file_bytes: m.file_bytes,
                stream_bytes: m.stream_bytes,
                suppliers: answered,
            },
            suppliers_asked: suppliers.len(),
            suppliers_answered: answered,
            roots_refused: refused,
            blocks,
            blocks_complete: complete,
        })
    }
}

/// Every valid snapshot of this user that suppliers keep, oldest first, with the number of
/// suppliers holding each root record.
pub fn list_snapshots(
    store: &dyn crate::store::ShardStore,
    keys: &crate::keys::Keys,
) -> FsResult<Vec<SnapshotInfo>> {
    let user = keys.public().to_bytes();
    let answers = roots_from_suppliers(store);
    let mut by_seq: std::collections::BTreeMap<u64, SnapshotInfo> = Default::default();
    for roots in answers {
        let mut seen = BTreeSet::new();
        for r in roots {
            let Ok(rec) = RootRecord::verify(&r, &user) else {
                continue;
            };
            if !seen.insert(rec.seq) {
                continue;
            }
            if let Some(i) = by_seq.get_mut(&rec.seq) {
                i.suppliers += 1;
                continue;
            }
            let Ok(plain) = root::open_manifest(keys, &rec.manifest) else {
                continue;
            };
            let Ok(m) = db::decode::<Manifest>(cf::META, &plain) else {
                continue;
            };
            by_seq.insert(
                rec.seq,
                SnapshotInfo {
                    seq: rec.seq,
                    time_ms: rec.time_ms,
                    files: m.files,
                    file_bytes: m.file_bytes,
                    stream_bytes: m.stream_bytes,
                    suppliers: 1,
                },
            );
        }
    }
    Ok(by_seq.into_values().collect())
}

/// The (unverified) root records each reachable supplier keeps for this customer, asked in
/// parallel; one list per supplier that answered.
pub(super) fn roots_from_suppliers(store: &dyn crate::store::ShardStore) -> Vec<Vec<Vec<u8>>> {
    let suppliers = store.suppliers();
    std::thread::scope(|sc| {
        let hs: Vec<_> = suppliers
            .iter()
            .map(|s| sc.spawn(move || store.get_roots(s).unwrap_or_default()))
            .collect();
        hs.into_iter().filter_map(|h| h.join().ok()).collect()
    })
}
