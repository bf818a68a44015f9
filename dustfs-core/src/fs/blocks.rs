//! Blocks: packing sealed chunks into the open block, sealing it into k+m shards, the upload
//! queue that places each shard of a block on a different supplier, the local block cache, and
//! fetching (and rebuilding) blocks from suppliers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use rocksdb::WriteBatch;
use tracing::{debug, error, info, warn};

use super::{
    BlockRecord, ChunkLoc, Engine, EngineStatus, FsError, FsResult, META_NEXT_BLOCK, ShardRec, Src,
    State, lock,
};
use crate::chunk::ChunkId;
use crate::db::{self, cf};
use crate::erasure;
use crate::fsm::block::{BlockEvent, BlockState, next};
use crate::pool::BufPool;
use crate::shard::{self, ShardId};
use crate::store::{StoreError, SupplierId};

/// Bytes of blocks one upload round works on at once (bounds threads and memory): 4 blocks
/// of 4 MiB, 2 of 8 MiB. Rounds of 4 blocks of 8 MiB (twice the bytes, half as many stores
/// as 1 MiB shards) cost more CPU: 512 MiB copy until durable, 3 alternated runs, 16.9-19.2
/// CPU s/GiB with 2 blocks per round against 18.1-20.2 with 4.
const ROUND_BYTES: usize = 16 << 20;
/// Upload rounds the daemon runs at once, each on its own thread and blocks.
pub const UPLOAD_ROUNDS: usize = 2;
/// How long a supplier that could not be reached is left alone.
const SUSPECT_FOR: Duration = Duration::from_secs(5);

/// Buffers of shards on their way to suppliers: data shards read from block files for upload
/// ([`Engine::own_shards`]), given back when a round is done with them, and the parity
/// computed when a block is sealed, given back when [`Staged`] lets it go. A new 2 MiB buffer for every shard sent was faulted in
/// page by page and unmapped again (`clear_page_erms`, `exc_page_fault`, `do_anonymous_page`,
/// `unmap_page_range` on the uploader threads: 1.6% of all CPU samples of a 512 MiB copy,
/// `scripts/profile.sh write`). At most as many as one round of data shards (16 MiB), none
/// over 4 MiB (with two rounds' worth, 32 MiB, kept full by the parity coming back, the
/// mount's peak RSS in a 4 GiB copy went from 237 to 254 MiB; with one, 212). Emptied when a round finds nothing
/// queued (a mount that went on to read had 244 instead of 202 MiB at its peak in
/// `scripts/bench.sh` while they stayed).
static SEND_BUFS: BufPool = BufPool::new(ROUND_BYTES / (2 << 20), 0, 4 << 20);

/// Gives a shard's buffer back (if nobody else holds it any more).
pub(super) fn give_back(bytes: Arc<Vec<u8>>) {
    if let Ok(b) = Arc::try_unwrap(bytes) {
        SEND_BUFS.put(b);
    }
}
/// A shard fetch still out this many times later than the first shard of its block came in
/// (and at least [`HEDGE_MIN`] after the start) gets a spare: a fetch of another shard, so
/// one slow supplier does not hold up a read that any k of the block's suppliers can serve.
const HEDGE_FACTOR: u32 = 3;
const HEDGE_MIN: Duration = Duration::from_millis(200);
/// While not one shard of a block has come in, spares wait this long: a network that is slow
/// everywhere is not helped by asking more of it.
const HEDGE_NONE_YET: Duration = Duration::from_secs(2);

/// The uploader's memory: suppliers to avoid for a while, per-block refusals, and the blocks
/// upload rounds are working on now (several rounds may run at once, each on its own blocks).
#[derive(Default)]
pub(super) struct Uploader {
    suspect: HashMap<SupplierId, Instant>,
    refused: HashMap<u64, HashSet<SupplierId>>,
    busy: HashSet<u64>,
}

/// The blocks one upload round claimed, with their records as they were then; they are free
/// for other rounds again when it ends, also when it ends early (an error, a panic).
struct Claimed<'a> {
    up: &'a std::sync::Mutex<Uploader>,
    records: HashMap<u64, BlockRecord>,
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        let mut up = lock(self.up);
        for no in self.records.keys() {
            up.busy.remove(no);
        }
    }
}

/// A queued shard an upload round sends, and where.
struct Pick {
    block: u64,
    index: usize,
    supplier: SupplierId,
    id: ShardId,
}

/// Sizes and recency of cached blocks; blocks not yet stored on suppliers are pinned.
#[derive(Default)]
pub(super) struct CacheIndex {
    tick: u64,
    /// block → (last use tick, bytes)
    blocks: HashMap<u64, (u64, u64)>,
    pinned: HashSet<u64>,
    /// Blocks sealed here and not read since: once on their suppliers, only the newest
    /// [`WRITTEN_KEEP`] bytes of them stay cached.
    written: HashSet<u64>,
    bytes: u64,
}

/// Bytes of blocks written here (and not read since) that stay in the block cache once their
/// shards are on suppliers; older ones leave it. A backup's data is rarely read back soon, and
/// what is read right away comes from the kernel's page cache (`FOPEN_KEEP_CACHE`). Keeping
/// every written block (up to `cache_mb`) cost a long copy a local copy of everything in the
/// page cache and, some 30 s later, on the local disk: on this kind of VM (free page reporting
/// gives memory the guest frees back to the host, and a page the host has to back again costs
/// a fault when first written) the page cache growth made up most of the time spent in
/// `copy_folio_from_iter_atomic`, 20-24% of all CPU samples of a 512 MiB copy (`perf record`,
/// issue 8 note). With the window, files of uploaded blocks go before their pages are ever
/// written back, and the next open blocks reuse those pages.
pub(super) const WRITTEN_KEEP: u64 = 64 << 20;

/// The block cache's directory, inside the database directory. Blocks are cached as plain
/// files, not in RocksDB: a profile of a 512 MiB copy and a cold read (`perf record`, see the
/// issue 8 note) showed RocksDB's WAL and memtable flushes of cached blocks (CRC32C and copies
/// of every byte, twice) as the largest cost after networking; a file costs one copy into the
/// page cache, a read of a chunk reads only that chunk (RocksDB read the whole 4 MiB blob),
/// and the index is rebuilt from file sizes instead of by reading every block. A partial file
/// cannot appear (temporary name, then rename).
///
/// A block waiting for upload is pinned in the cache: its file is the local copy the upload
/// queue works from (the queue holds only shard numbers and sizes; shards come from memory,
/// [`Staged`], or are encoded again from the block). It is the open block's file renamed, so
/// sealing a block writes no bytes; `fsync` and `sync` sync it before the WAL.
pub(super) const CACHE_DIR: &str = "blockcache";

/// The open block's directory, inside the database directory: `open/<block>` holds the
/// sealed chunks appended so far. It used to be a RocksDB column family (the same profile).
pub(super) const OPEN_DIR: &str = "open";

/// A block file the cache let go, kept in [`OPEN_DIR`] under this name for the next open
/// block to write over: its pages are still in the page cache, so a long copy, whose blocks
/// leave the cache as fast as new ones are sealed ([`WRITTEN_KEEP`]), keeps overwriting the
/// same pages instead of freeing 8 MiB and faulting in 8 MiB more per block. Bytes of the old
/// block past what the new one has written are cut when it is sealed, or at open after a crash
/// (as any bytes past the open block's recorded length are).
pub(super) const SPARE: &str = "spare";

/// Bytes of shards kept in memory for the uploader. Past this, the uploader computes a queued
/// block's parity again from its file (the upload queue itself may hold more,
/// `outbox_limit_bytes`).
const STAGED_LIMIT: u64 = 48 << 20;

/// Shards of recently sealed or repaired blocks, in memory until they are uploaded, and the
/// blocks whose files this process wrote.
///
/// A block sealed here keeps only its parity shards in memory: its data shards are slices of
/// the block, which is in its cache file (in the page cache), and the uploader reads each one
/// from there straight into the buffer it sends. The 48 MiB thus hold the parity of 12 blocks
/// of 8 MiB at 4+2 instead of all shards of 4. Profile of a 512 MiB copy before (issue 8
/// note): a writer ahead of the network by more than 4 blocks left most blocks to be read
/// back, encoded again and all their shards hashed again by the uploaders (10% of all CPU
/// samples, 2% of them BLAKE3), and the seal copied 8 MiB of data shards out of every block.
#[derive(Default)]
pub(super) struct Staged {
    pub(super) shards: HashMap<(u64, usize), Arc<Vec<u8>>>,
    pub(super) bytes: u64,
    /// Blocks sealed by this process, still queued: their cache files hold exactly the bytes
    /// whose shard ids were recorded (written by this process, read back through the page
    /// cache), so their shards are built from the file without being hashed again. A block
    /// whose files came from before a restart is checked against its record instead (a
    /// crash may have left a file that was never synced), and so is one a supplier refused.
    pub(super) own: HashSet<u64>,
}

impl Staged {
    pub(super) fn put(&mut self, no: u64, i: usize, bytes: Vec<u8>) {
        let len = bytes.len() as u64;
        if self.bytes + len > STAGED_LIMIT {
            SEND_BUFS.put(bytes);
            return;
        }
        if let Some(old) = self.shards.insert((no, i), Arc::new(bytes)) {
            self.bytes -= old.len() as u64;
            give_back(old);
        }
        self.bytes += len;
    }

    fn get(&self, no: u64, i: usize) -> Option<Arc<Vec<u8>>> {
        self.shards.get(&(no, i)).cloned()
    }

    fn remove(&mut self, no: u64, i: usize) {
        if let Some(old) = self.shards.remove(&(no, i)) {
            self.bytes -= old.len() as u64;
            give_back(old);
        }
    }

    /// Forgets every shard of block `no`, and that its file is this process's.
    fn remove_block(&mut self, no: u64) {
        let gone: Vec<(u64, usize)> = self
            .shards
            .keys()
            .filter(|&&(b, _)| b == no)
            .copied()
            .collect();
        for (b, i) in gone {
            self.remove(b, i);
        }
        self.own.remove(&no);
    }
}

/// An upload queue entry's value: the shard's size (databases written before [`Staged`]
/// hold the shard bytes themselves, which still work).
pub(super) fn queue_value(len: u64) -> Vec<u8> {
    len.to_be_bytes().to_vec()
}

/// The shard size an upload queue value stands for.
fn queued_len(v: &[u8]) -> u64 {
    match <[u8; 8]>::try_from(v) {
        Ok(b) => u64::from_be_bytes(b),
        Err(_) => v.len() as u64,
    }
}

/// At open: the open block's bytes, from its file, cut to what the chunk index refers to.
/// A block file renamed into the cache by a seal whose batch did not land (a crash between
/// the two) is moved back; databases written before the open block had its file keep its
/// segments in the OPEN column family, which are moved into the file.
pub(super) fn recover_open_block(
    rdb: &db::Rdb,
    open_dir: &std::path::Path,
    cache_dir: &std::path::Path,
    no: u64,
    len: u64,
) -> FsResult<Vec<u8>> {
    let path = open_dir.join(format!("{no:016x}"));
    let cached = cache_dir.join(format!("{no:016x}"));
    if !path.exists() && cached.exists() {
        std::fs::rename(&cached, &path)?;
    }
    // Files of other blocks are leftovers: older ones were sealed (their records say so).
    for e in std::fs::read_dir(open_dir)?.flatten() {
        if e.path() != path {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let open_cf = db::handle(rdb, cf::OPEN);
    let mut legacy = Vec::new();
    for item in rdb.iterator_cf(&open_cf, rocksdb::IteratorMode::Start) {
        let (k, v) = item?;
        if db::be_u64(&k, 0) == Some(no) {
            legacy.extend_from_slice(&v);
        }
    }
    if !legacy.is_empty() {
        std::fs::write(&path, &legacy)?;
        std::fs::File::open(&path)?.sync_all()?;
        let mut b = WriteBatch::default();
        b.put_cf(
            &db::handle(rdb, cf::META),
            super::META_OPEN_LEN,
            db::encode(&(legacy.len() as u64)),
        );
        b.delete_range_cf(&open_cf, db::key1(0), db::key1(u64::MAX));
        rdb.write(b)?;
        return Ok(legacy);
    }
    let mut buf = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    if (buf.len() as u64) < len {
        return Err(FsError::Corrupt(format!(
            "the open block {no} has {} bytes, the chunk index refers to {len}",
            buf.len()
        )));
    }
    if buf.len() as u64 > len {
        // Bytes appended by a write whose batch did not land: cut, so that the file sealing
        // renames into the cache holds exactly the block.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)?
            .set_len(len)?;
        buf.truncate(len as usize);
    }
    Ok(buf)
}

/// A sealed chunk's bytes: copied out of their block, or left in a block fetched ahead
/// (offset and length in it; [`erasure::BlockBytes::parts`] checks they lie within it).
pub(super) enum Sealed {
    Owned(Vec<u8>),
    InBlock(Arc<erasure::BlockBytes>, usize, usize),
}

/// How much of a fetched shard is checked before the block is rebuilt from it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Its BLAKE3 id: what the block is rebuilt from is what was stored. For blocks that go
    /// into the cache, repairs and compaction, which keep or copy the bytes as they are.
    Ids,
    /// Its header (magic, version, index, length) only, for blocks fetched ahead of a
    /// sequential reader, whose every chunk is authenticated by its seal when it is read
    /// (XChaCha20-Poly1305 under the user's key, the chunk id as associated data, then the id
    /// of its plaintext). Hashing each shard on arrival was 4.1% of a cold read's CPU samples
    /// (`CALLGRAPH=dwarf scripts/profile.sh read 512`), the same bytes the seals check again.
    Headers,
}

/// Blocks fetched ahead of one sequential reader: the window requested ahead of it, and the
/// most fetched at once. Eight, not four: a cold read leaves about 12% of the machine idle
/// waiting on suppliers with four (issue 8 note); with eight in flight it read faster in 4 of
/// 4 alternated pairs (`PERF=0 scripts/profile.sh read 512`), but while blocks stayed in
/// memory until pushed out by count that cost 60-90 MiB more of the mount's memory. Blocks the
/// reader has passed are now dropped at once ([`Ahead::until`]), so what is held is the window
/// ahead of the reader and no more.
const READAHEAD_BLOCKS: usize = 8;
/// Blocks fetched ahead held in memory at most (oldest dropped first): room for two sequential
/// readers' windows. Blocks of a reader that stopped half way go when its file is closed, or
/// when pushed out (a reader that seeks elsewhere, a file left open).
const READY_BLOCKS: usize = 2 * READAHEAD_BLOCKS;
/// Files whose read position is remembered for readahead.
const READAHEAD_FILES: usize = 256;

/// A block fetched (or being fetched) ahead of a reader, and how far into whose file it
/// reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ahead {
    /// The file whose reader it was fetched for.
    ino: u64,
    /// The end, in that file, of the last bytes it holds seen so far: once that reader reads
    /// from there on, it has passed the block, which is dropped.
    until: u64,
}

/// Readahead state: where recent reads of each file ended, how far ahead blocks were already
/// requested, and the blocks being fetched in the background.
pub(super) struct Readahead {
    /// ino → (end of the last read, offset up to which blocks were requested).
    files: lru::LruCache<u64, (u64, u64)>,
    in_flight: HashMap<u64, Ahead>,
    /// Blocks fetched ahead, in memory until their reader has passed them.
    ready: std::collections::VecDeque<(u64, Ahead, Arc<erasure::BlockBytes>)>,
}

impl Readahead {
    /// Notes that block `no` holds bytes of `ino` up to `until`, if it is fetched or being
    /// fetched ahead; returns whether it is.
    fn reaches(&mut self, no: u64, ino: u64, until: u64) -> bool {
        let ahead = self
            .in_flight
            .get_mut(&no)
            .or_else(|| self.ready.iter_mut().find(|r| r.0 == no).map(|r| &mut r.1));
        match ahead {
            Some(a) => {
                if a.ino == ino {
                    a.until = a.until.max(until);
                }
                true
            }
            None => false,
        }
    }

    /// Drops the blocks fetched ahead for `ino` that its reader, now at `pos`, has passed.
    fn passed(&mut self, ino: u64, pos: u64) {
        self.ready.retain(|(_, a, _)| a.ino != ino || a.until > pos);
    }

    /// Forgets a file no longer open: its blocks fetched ahead are dropped, and those still
    /// being fetched are not kept when they come ([`Engine::fetch_ahead`]).
    fn closed(&mut self, ino: u64) {
        self.files.pop(&ino);
        self.ready.retain(|(_, a, _)| a.ino != ino);
    }

    /// Bytes of blocks fetched ahead held in memory.
    fn held_bytes(&self) -> u64 {
        self.ready.iter().map(|(_, _, b)| b.len() as u64).sum()
    }
}

impl Default for Readahead {
    fn default() -> Self {
        Self {
            files: lru::LruCache::new(
                std::num::NonZeroUsize::new(READAHEAD_FILES).unwrap_or(std::num::NonZeroUsize::MIN),
            ),
            in_flight: HashMap::new(),
            ready: std::collections::VecDeque::new(),
        }
    }
}

impl CacheIndex {
    /// Records a use of block `no` (a read, or a fetch into the cache): it is then cached as
    /// any block read is, whether it was written here or not.
    fn touch(&mut self, no: u64, len: u64) {
        self.written.remove(&no);
        self.tick += 1;
        if let Some(old) = self.blocks.insert(no, (self.tick, len)) {
            self.bytes -= old.1;
        }
        self.bytes += len;
    }

    pub(super) fn remove(&mut self, no: u64) {
        if let Some((_, len)) = self.blocks.remove(&no) {
            self.bytes -= len;
        }
        self.pinned.remove(&no);
        self.written.remove(&no);
    }

    /// Adds block `no`, just sealed here, pinned until its shards are on suppliers.
    fn add_written(&mut self, no: u64, len: u64) {
        self.touch(no, len);
        self.pinned.insert(no);
        self.written.insert(no);
    }

    /// Unpinned blocks to evict, least recently used first, to get under `limit` bytes in
    /// all and under `written_limit` bytes of blocks written here and not read since.
    fn victims(&self, limit: u64, written_limit: u64) -> Vec<u64> {
        let written: u64 = self
            .written
            .iter()
            .filter_map(|no| self.blocks.get(no).map(|(_, l)| l))
            .sum();
        let mut over = self.bytes.saturating_sub(limit);
        let mut over_written = written.saturating_sub(written_limit);
        if over == 0 && over_written == 0 {
            return Vec::new();
        }
        let mut v: Vec<(u64, u64, u64)> = self
            .blocks
            .iter()
            .filter(|(no, _)| !self.pinned.contains(no))
            .map(|(no, (t, l))| (*t, *no, *l))
            .collect();
        v.sort_unstable();
        let mut out = Vec::new();
        for (_, no, l) in v {
            if over == 0 && over_written == 0 {
                break;
            }
            let w = self.written.contains(&no);
            if over > 0 || (w && over_written > 0) {
                out.push(no);
                over = over.saturating_sub(l);
                if w {
                    over_written = over_written.saturating_sub(l);
                }
            }
        }
        out
    }
}

impl Engine {
    /// Appends a sealed chunk to the open block (sealing the open block first if it is full).
    pub(super) fn append_open(
        &self,
        st: &mut State,
        b: &mut WriteBatch,
        id: &ChunkId,
        sealed: &[u8],
    ) -> FsResult<()> {
        self.make_room_open(st, sealed.len())?;
        let off = st.open.buf.len();
        st.open.buf.extend_from_slice(sealed);
        self.persist_open(st, b, id, off)
    }

    /// Seals a chunk's plaintext straight into the open block (sealing the open block first if
    /// it is full): [`append_open`](Self::append_open) without the sealed chunk's own buffer.
    pub(super) fn seal_into_open(
        &self,
        st: &mut State,
        b: &mut WriteBatch,
        id: &ChunkId,
        plain: &[u8],
    ) -> FsResult<()> {
        self.make_room_open(st, plain.len() + crate::seal::SEAL_OVERHEAD)?;
        let off = st.open.buf.len();
        let n = plain.len() + crate::seal::SEAL_OVERHEAD;
        crate::seal::seal_into_slice(&self.keys.seal, id, plain, st.open.buf.room(n))?;
        st.open.buf.grow(n);
        self.persist_open(st, b, id, off)
    }

    /// Seals the open block if `len` more bytes would not fit in it.
    fn make_room_open(&self, st: &mut State, len: usize) -> FsResult<()> {
        if !st.open.buf.is_empty() && st.open.buf.len() + len > self.cfg.block_size {
            self.seal_open_locked(st)?;
        }
        Ok(())
    }

    /// Writes the chunk at `off..` of the open block's buffer to the block's file and adds to
    /// `b` what refers to it. The bytes go to the file before the batch that refers to them; if
    /// that fails, the buffer is cut back, so it never holds bytes its file does not.
    fn persist_open(
        &self,
        st: &mut State,
        b: &mut WriteBatch,
        id: &ChunkId,
        off: usize,
    ) -> FsResult<()> {
        if let Err(e) = self.write_open_file(st, off) {
            st.open.buf.truncate(off);
            return Err(e);
        }
        let end = st.open.buf.len();
        b.put_cf(
            &self.cf(cf::META),
            super::META_OPEN_LEN,
            db::encode(&(end as u64)),
        );
        let loc = ChunkLoc {
            block: st.open.no,
            off: off as u32,
            len: (end - off) as u32,
        };
        b.put_cf(&self.cf(cf::CHUNKS), id.0, db::encode(&loc));
        Ok(())
    }

    fn write_open_file(&self, st: &mut State, off: usize) -> FsResult<()> {
        if st.open.file.is_none() {
            let path = self.open_path(st.open.no);
            if !path.exists() {
                // Gone (NotFound) when there is no spare: a new file is created.
                let _ = std::fs::rename(self.open_dir.join(SPARE), &path);
            }
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            st.open.file = Some(f);
        }
        if let Some(f) = &st.open.file {
            use std::os::unix::fs::FileExt;
            f.write_all_at(&st.open.buf.bytes()[off..], off as u64)?;
        }
        Ok(())
    }

    /// Closes the open block: erasure-codes it and queues its shards for upload, in one batch.
    /// Waits while the upload queue is over its limit (writers slow down, they do not fail).
    pub(super) fn seal_open_locked(&self, st: &mut State) -> FsResult<()> {
        if st.open.buf.is_empty() {
            return Ok(());
        }
        let no = st.open.no;
        let r = self.cfg.redundancy;
        // Ids of all shards and the parity's bytes; the data shards stay in the block's file.
        // Parity into buffers the uploads gave back (a new 2 MiB buffer per parity shard was
        // faulted in page by page inside the Reed-Solomon loop: `exc_page_fault`,
        // `clear_page_erms` under `mul_slice`, 1.2% of all CPU samples of a 256 MiB copy,
        // `CALLGRAPH=dwarf scripts/profile.sh write`); they go back once uploaded.
        let coded = erasure::encode_parity_in(r, st.open.buf.bytes(), |n| SEND_BUFS.take(n))?;
        let shard_len = (shard::HEADER_LEN + erasure::shard_size(r, st.open.buf.len())) as u64;
        let state = next(BlockState::Open, BlockEvent::Seal).unwrap_or(BlockState::Sealed);
        let rec = BlockRecord {
            redundancy: r,
            len: st.open.buf.len() as u32,
            state,
            shards: coded
                .ids
                .iter()
                .map(|id| ShardRec {
                    id: *id,
                    supplier: None,
                })
                .collect(),
        };
        // The block's file becomes its cache file (pinned: the upload queue works from it)
        // before the batch that seals it; a crash in between is undone at open. A file that
        // was a spare is cut to this block's length first.
        if let Some(f) = st.open.file.take() {
            f.set_len(st.open.buf.len() as u64)?;
        }
        if !self.open_path(no).exists() {
            std::fs::write(self.open_path(no), st.open.buf.bytes())?;
        }
        std::fs::rename(self.open_path(no), self.cache_path(no))?;
        let mut b = WriteBatch::default();
        let outbox = self.cf(cf::OUTBOX);
        let mut queued = 0;
        for i in 0..rec.shards.len() {
            b.put_cf(&outbox, db::key2(no, i as u64), queue_value(shard_len));
            queued += shard_len;
        }
        b.put_cf(&self.cf(cf::BLOCKS), db::key1(no), db::encode(&rec));
        b.put_cf(&self.cf(cf::META), META_NEXT_BLOCK, db::encode(&(no + 1)));
        b.put_cf(&self.cf(cf::META), super::META_OPEN_LEN, db::encode(&0u64));
        // Counted, pinned and staged before the shards become visible to the uploader thread:
        // it may upload them (and uncount, unpin and unstage them) before this thread goes on.
        self.queued_bytes.fetch_add(queued, Ordering::SeqCst);
        {
            lock(&self.cache).add_written(no, st.open.buf.len() as u64);
        }
        {
            let mut staged = lock(&self.staged);
            staged.own.insert(no);
            for (j, bytes) in coded.parity.into_iter().enumerate() {
                staged.put(no, r.k as usize + j, bytes);
            }
        }
        if let Err(e) = self.db.write(b) {
            self.queued_bytes.fetch_sub(queued, Ordering::SeqCst);
            lock(&self.cache).pinned.remove(&no);
            lock(&self.staged).remove_block(no);
            // Back where it was: the block is still the open one.
            let _ = std::fs::rename(self.cache_path(no), self.open_path(no));
            lock(&self.cache).remove(no);
            return Err(e.into());
        }
        lock(&self.unsynced).insert(no);
        if let Err(e) = self.evict() {
            warn!(error = %e, "block cache eviction failed");
        }
        debug!(block = no, bytes = st.open.buf.len(), "block sealed");
        st.open.no = no + 1;
        // Emptied, not freed: the next block fills the same memory (its pages stay mapped).
        st.open.buf.clear();
        self.notify();
        // Backpressure: bounded upload queue.
        let (m, cv) = &self.progress;
        let mut g = lock(m);
        while self.queued_bytes.load(Ordering::SeqCst) > self.cfg.outbox_limit_bytes {
            g = cv
                .wait_timeout(g, Duration::from_millis(200))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        Ok(())
    }

    pub(super) fn notify(&self) {
        let (m, cv) = &self.progress;
        *lock(m) += 1;
        cv.notify_all();
    }

    /// Waits until something changes in the upload queue, at most `d`.
    pub fn wait_progress(&self, d: Duration) {
        let (m, cv) = &self.progress;
        let g = lock(m);
        let _ = cv.wait_timeout(g, d);
    }

    /// Syncs the files of the open block and of sealed blocks not synced yet (`fsync` and
    /// `sync` call this before syncing the WAL that refers to them).
    pub(super) fn sync_block_files(&self, st: &mut State) -> FsResult<()> {
        if let Some(f) = &st.open.file {
            f.sync_data()?;
        }
        let nos: Vec<u64> = lock(&self.unsynced).drain().collect();
        for no in nos {
            match std::fs::File::open(self.cache_path(no)).and_then(|f| f.sync_data()) {
                Ok(()) => {}
                // Uploaded and evicted meanwhile: nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    lock(&self.unsynced).insert(no);
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    fn open_path(&self, no: u64) -> std::path::PathBuf {
        self.open_dir.join(format!("{no:016x}"))
    }

    pub(super) fn recount_queue(&self) -> FsResult<()> {
        let mut total = 0;
        for item in self
            .db
            .iterator_cf(&self.cf(cf::OUTBOX), rocksdb::IteratorMode::Start)
        {
            total += queued_len(&item?.1);
        }
        self.queued_bytes.store(total, Ordering::SeqCst);
        Ok(())
    }

    pub(super) fn rebuild_cache_index(&self) -> FsResult<()> {
        // Blocks cached in RocksDB by earlier versions: dropped (it is only a cache).
        let cache_cf = self.cf(cf::CACHE);
        if self
            .db
            .iterator_cf(&cache_cf, rocksdb::IteratorMode::Start)
            .next()
            .is_some()
        {
            self.db
                .delete_range_cf(&cache_cf, db::key1(0), db::key1(u64::MAX))?;
            self.db
                .compact_range_cf(&cache_cf, None::<&[u8]>, None::<&[u8]>);
        }
        for e in std::fs::read_dir(&self.cache_dir)?.flatten() {
            let name = e.file_name();
            let Some(no) = name
                .to_str()
                .filter(|n| n.len() == 16)
                .and_then(|n| u64::from_str_radix(n, 16).ok())
            else {
                // Leftovers of a write cut short by a crash.
                let _ = std::fs::remove_file(e.path());
                continue;
            };
            let len = e.metadata()?.len();
            // Files of blocks on their suppliers are a cache; so is what is left of a lost one.
            let stored = self
                .block_record(no)?
                .is_some_and(|r| r.state.is_stored() || r.state == BlockState::Lost);
            let mut c = lock(&self.cache);
            c.touch(no, len);
            if !stored {
                c.pinned.insert(no);
            }
        }
        Ok(())
    }

    pub(super) fn cache_path(&self, no: u64) -> std::path::PathBuf {
        self.cache_dir.join(format!("{no:016x}"))
    }

    /// Keeps a block in the cache. Best effort: a block that cannot be cached (a full disk)
    /// is fetched again when it is read.
    fn cache_put(&self, no: u64, block: &[u8]) {
        let path = self.cache_path(no);
        let tmp = path.with_extension("tmp");
        match std::fs::write(&tmp, block).and_then(|()| std::fs::rename(&tmp, &path)) {
            Ok(()) => {
                lock(&self.cache).touch(no, block.len() as u64);
                if let Err(e) = self.evict() {
                    warn!(error = %e, "block cache eviction failed");
                }
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                warn!(block = no, error = %e, "cannot cache block");
            }
        }
    }

    /// Bytes `[off, off + len)` of a cached block, or `None` when it is not cached (or its
    /// cache file cannot be read, which forgets it).
    fn cache_read(&self, no: u64, off: usize, len: usize) -> FsResult<Option<Vec<u8>>> {
        use std::os::unix::fs::FileExt;
        if !lock(&self.cache).blocks.contains_key(&no) {
            return Ok(None);
        }
        let mut buf = vec![0u8; len];
        match std::fs::File::open(self.cache_path(no))
            .and_then(|f| f.read_exact_at(&mut buf, off as u64))
        {
            Ok(()) => {
                let mut c = lock(&self.cache);
                if let Some((_, bytes)) = c.blocks.get(&no).copied() {
                    c.touch(no, bytes);
                }
                Ok(Some(buf))
            }
            Err(e) => {
                // Evicted meanwhile (NotFound), or a bad disk: either way, fetch it again.
                if e.kind() == std::io::ErrorKind::NotFound {
                    debug!(block = no, "cached block evicted while being read");
                } else {
                    warn!(block = no, error = %e, "cached block unreadable; fetching it again");
                }
                lock(&self.cache).remove(no);
                let _ = std::fs::remove_file(self.cache_path(no));
                Ok(None)
            }
        }
    }

    pub(super) fn block_record(&self, no: u64) -> FsResult<Option<BlockRecord>> {
        match self.db.get_cf(&self.cf(cf::BLOCKS), db::key1(no))? {
            Some(v) => Ok(Some(db::decode(cf::BLOCKS, &v)?)),
            None => Ok(None),
        }
    }

    /// Bytes `[off, off+len)` of block `no`: from the open block, the cache, or suppliers
    /// (every shard checked). Never from a block fetched ahead, whose shards were not checked
    /// (see [`Check`]): what this returns may be copied elsewhere as it is (compaction).
    pub(super) fn block_slice(&self, no: u64, off: usize, len: usize) -> FsResult<Vec<u8>> {
        {
            let st = lock(&self.state);
            if st.open.no == no {
                return st
                    .open
                    .buf
                    .bytes()
                    .get(off..off + len)
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| {
                        FsError::Corrupt(format!("chunk past the end of open block {no}"))
                    });
            }
        }
        if let Some(v) = self.cache_read(no, off, len)? {
            return Ok(v);
        }
        let block = self.fetch_into_cache(no)?;
        block
            .get(off..off + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| FsError::Corrupt(format!("chunk past the end of block {no}")))
    }

    /// The sealed bytes `[off, off+len)` of block `no` for a reader that authenticates them
    /// (it decrypts them): left where they are in a block fetched ahead, whose shards were
    /// taken as they came; otherwise as [`block_slice`](Self::block_slice) finds them.
    pub(super) fn block_sealed(&self, no: u64, off: usize, len: usize) -> FsResult<Sealed> {
        let ready = |ra: &Readahead| {
            ra.ready
                .iter()
                .find(|(n, _, _)| *n == no)
                .map(|(_, _, b)| Sealed::InBlock(b.clone(), off, len))
        };
        if let Some(s) = ready(&lock(&self.readahead.0)) {
            return Ok(s);
        }
        if !lock(&self.cache).blocks.contains_key(&no) {
            // Being fetched ahead: wait for that fetch rather than fetching the block twice.
            let mut ra = lock(&self.readahead.0);
            while ra.in_flight.contains_key(&no) {
                ra = self.readahead.1.wait(ra).unwrap_or_else(|p| p.into_inner());
            }
            if let Some(s) = ready(&ra) {
                return Ok(s);
            }
        }
        self.block_slice(no, off, len).map(Sealed::Owned)
    }

    /// Fetches a block from suppliers for a reader and keeps it in the block cache.
    fn fetch_into_cache(&self, no: u64) -> FsResult<Vec<u8>> {
        let block = self.fetch_for_reader(no, Check::Ids)?.into_vec();
        self.cache_put(no, &block);
        Ok(block)
    }

    /// Fetches a block from suppliers for a reader.
    fn fetch_for_reader(&self, no: u64, check: Check) -> FsResult<erasure::BlockBytes> {
        // Counted while it waits on the network, so background repair yields to it.
        self.foreground_fetches.fetch_add(1, Ordering::SeqCst);
        let r = self.fetch_block_parts(no, check);
        self.foreground_fetches.fetch_sub(1, Ordering::SeqCst);
        let block = r?;
        self.fetched_bytes
            .fetch_add(block.len() as u64, Ordering::Relaxed);
        Ok(block)
    }

    /// Fetches a block ahead of a sequential reader, into memory only. A file read from
    /// start to end does not go through the block cache: a restore of 100 GiB would write
    /// 100 GiB into a cache of 1 GiB, each block evicting an older one, for nothing (the
    /// kernel keeps the pages of a file just read, see `FOPEN_KEEP_CACHE` in the FUSE
    /// adapter). Writing each block to its cache file was 13.5% of the machine's CPU in a
    /// cold 256 MiB read (`scripts/profile.sh read` with `CALLGRAPH=dwarf`, issue 8 note),
    /// and the reader read it back from that file. The first block of a read, small files
    /// and random reads are fetched by the reader itself and cached as before. The block
    /// stays in its data shards: the reader decrypts each chunk out of them, instead of the
    /// block being copied into one buffer first (5% of the machine's CPU in a cold read:
    /// the copy, and page faults on a fresh 4 MiB buffer per block). Its shards are not
    /// checked against their ids ([`Check::Headers`]): every chunk read from it is
    /// authenticated when it is decrypted, and one that fails has its block fetched again
    /// with every shard checked (`chunk_plain`).
    ///
    /// Runs on a thread of its own; the block leaves `in_flight` when its fetch ends, either
    /// way, and readers waiting for it are woken.
    fn fetch_ahead(&self, no: u64) {
        let fetched = self.fetch_for_reader(no, Check::Headers);
        let mut ra = lock(&self.readahead.0);
        let ahead = ra.in_flight.remove(&no);
        match (fetched, ahead) {
            (Err(e), _) => debug!(block = no, error = %e, "readahead fetch failed"),
            // Kept unless its file was closed meanwhile (or pushed out of the files
            // remembered). `reaches` keeps a block out of `in_flight` while it is ready, so
            // it is never in `ready` twice.
            (Ok(block), Some(ahead)) if ra.files.contains(&ahead.ino) => {
                if ra.ready.len() >= READY_BLOCKS {
                    ra.ready.pop_front();
                }
                ra.ready.push_back((no, ahead, Arc::new(block)));
            }
            (Ok(_), _) => {}
        }
        drop(ra);
        self.readahead.1.notify_all();
    }

    /// Readahead, called after each read of `[off, off + len)` of `ino`: while a file is read
    /// sequentially, the blocks holding its next few MiB are fetched in the background (at
    /// most [`READAHEAD_BLOCKS`] at once), so the network round trips of the next blocks
    /// overlap with the reader's work on this one instead of following it.
    pub fn read_ahead(self: &Arc<Self>, ino: u64, off: u64, len: u64) {
        let window = READAHEAD_BLOCKS as u64 * self.cfg.block_size as u64;
        let end = off + len;
        {
            let mut ra = lock(&self.readahead.0);
            let (last_end, requested) = ra.files.get(&ino).copied().unwrap_or((0, 0));
            let sequential = off == last_end;
            if sequential {
                ra.passed(ino, off);
            }
            let requested = if sequential { requested } else { 0 };
            ra.files.put(ino, (end, requested.max(end)));
            // Look ahead again once the reader is half way through what was requested.
            if !sequential || end + window / 2 < requested {
                return;
            }
            ra.files.put(ino, (end, end + window));
        }
        let blocks = match self.blocks_in(ino, end, end + window) {
            Ok(b) => b,
            Err(e) => {
                debug!(ino, error = %e, "readahead skipped");
                return;
            }
        };
        for (no, until) in blocks {
            {
                let mut ra = lock(&self.readahead.0);
                if ra.reaches(no, ino, until) {
                    continue;
                }
                if ra.in_flight.len() >= READAHEAD_BLOCKS {
                    break;
                }
                ra.in_flight.insert(no, Ahead { ino, until });
            }
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("dustfs-readahead".into())
                .spawn(move || me.fetch_ahead(no));
            if spawned.is_err() {
                lock(&self.readahead.0).in_flight.remove(&no);
            }
        }
    }

    /// Readahead's part of the last close of `ino`: a reader that stopped half way leaves no
    /// blocks fetched ahead in memory, and the file's next reader starts afresh.
    pub(super) fn read_ahead_closed(&self, ino: u64) {
        lock(&self.readahead.0).closed(ino);
    }

    /// Blocks, not cached and not open, that hold the chunks of `[from, to)` of `ino`, in
    /// file order, each with the end of the last of those bytes it holds.
    fn blocks_in(&self, ino: u64, from: u64, to: u64) -> FsResult<Vec<(u64, u64)>> {
        let (ids, open_no) = {
            let mut st = lock(&self.state);
            let ids: Vec<(ChunkId, u64)> = self
                .extents_in(&mut st, ino, from, to)?
                .into_iter()
                .filter_map(|(off, e)| match e.src {
                    Src::Chunk { id, .. } => Some((id, off + e.len)),
                    Src::Dirty { .. } => None,
                })
                .collect();
            (ids, st.open.no)
        };
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (id, end) in ids {
            let Some(v) = self.db.get_cf(&self.cf(cf::CHUNKS), id.0)? else {
                continue;
            };
            let loc: ChunkLoc = db::decode(cf::CHUNKS, &v)?;
            if let Some(seen) = out.iter_mut().find(|(no, _)| *no == loc.block) {
                seen.1 = seen.1.max(end);
            } else if loc.block != open_no && !lock(&self.cache).blocks.contains_key(&loc.block) {
                out.push((loc.block, end));
            }
        }
        Ok(out)
    }

    /// Drops least recently used blocks (only those stored on suppliers) until the cache is
    /// within its configured size and blocks written here within [`WRITTEN_KEEP`].
    fn evict(&self) -> FsResult<()> {
        let victims = lock(&self.cache).victims(self.cfg.cache_bytes, WRITTEN_KEEP);
        for v in victims {
            self.forget_cached_block(v)?;
        }
        Ok(())
    }

    pub(super) fn forget_cached_block(&self, no: u64) -> FsResult<()> {
        // A block waiting for upload stays cached, so reads of fresh data stay local.
        if lock(&self.cache).pinned.contains(&no) {
            return Ok(());
        }
        self.discard_cached_block(no)
    }

    /// Drops a block from the cache, for a cached copy that turned out bad. A block waiting
    /// for upload keeps its file: it is the only copy (what fails to authenticate in it is
    /// reported; the rest of it can still be uploaded and read).
    pub(super) fn discard_cached_block(&self, no: u64) -> FsResult<()> {
        lock(&self.readahead.0).ready.retain(|(n, _, _)| *n != no);
        let mut c = lock(&self.cache);
        if c.pinned.contains(&no) {
            return Ok(());
        }
        c.remove(no);
        drop(c);
        // The first file to go becomes the spare the next open block writes over; the others
        // are removed.
        let spare = self.open_dir.join(SPARE);
        let gone = if spare.exists() {
            std::fs::remove_file(self.cache_path(no))
        } else {
            std::fs::rename(self.cache_path(no), spare)
        };
        match gone {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Fetches a block from its suppliers: the k data shards first, then parity shards for
    /// whatever is missing, fails verification or is slow to come, and rebuilds it.
    pub(super) fn fetch_block(&self, no: u64) -> FsResult<Vec<u8>> {
        Ok(self.fetch_block_parts(no, Check::Ids)?.into_vec())
    }

    /// [`Self::fetch_block`], the block left in its data shards when they all came.
    fn fetch_block_parts(&self, no: u64, check: Check) -> FsResult<erasure::BlockBytes> {
        let rec = self
            .block_record(no)?
            .ok_or_else(|| FsError::Corrupt(format!("block {no} has no record")))?;
        let r = rec.redundancy;
        let k = r.k as usize;
        // Verified shards, whole: their payloads are not copied out (`erasure::decode_parts`).
        let mut payloads: Vec<Option<Vec<u8>>> = vec![None; rec.shards.len()];
        let mut tried = vec![false; rec.shards.len()];
        // Shards still in the local upload queue count too.
        for (i, p) in payloads.iter_mut().enumerate() {
            if let Some(b) = self.local_shard(no, i)?
                && shard::parse(&b, Some(&rec.shards[i].id)).is_ok()
            {
                *p = Some(b.to_vec());
                tried[i] = true;
            }
        }
        // Data shards first (no decoding needed); parity shards for whatever fails or is
        // refused, and as spares for fetches that are slow to answer (hedging). Fetches run on
        // their own threads, so a read returns as soon as k shards verified, without waiting
        // for a straggler (whose answer is then dropped).
        let (tx, rx) = mpsc::channel::<(usize, Result<Vec<u8>, StoreError>)>();
        let launch = |i: usize, tried: &mut Vec<bool>| -> bool {
            tried[i] = true;
            let Some(sup) = rec.shards[i].supplier.clone() else {
                return false;
            };
            let (store, id, tx) = (self.store.clone(), rec.shards[i].id, tx.clone());
            std::thread::Builder::new()
                .name("dustfs-fetch".into())
                .spawn(move || {
                    // Every fetch reports, even one that panics: the loop below counts the
                    // fetches still out and would otherwise wait for this one for ever.
                    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        store.fetch(&sup, &id)
                    }))
                    .unwrap_or_else(|_| {
                        Err(StoreError::Unreachable(format!("{sup}: fetch panicked")))
                    });
                    let _ = tx.send((i, res));
                })
                .is_ok()
        };
        // Next shards worth asking for: data shards before parity ones.
        let untried = |tried: &Vec<bool>| -> Vec<usize> {
            (0..rec.shards.len())
                .filter(|&i| !tried[i] && rec.shards[i].supplier.is_some())
                .collect()
        };
        let n = rec.shards.len();
        // When each fetch under way went out, and those found slow (no longer counted towards
        // the shards missing).
        let mut out: Vec<Option<Instant>> = vec![None; n];
        let mut slow = vec![false; n];
        // Starts fetches, data shards first, until as many are under way (slow ones not
        // counted) as shards are still missing; returns how many it started.
        let top_up =
            |have: usize, tried: &mut Vec<bool>, out: &mut Vec<Option<Instant>>, slow: &[bool]| {
                let fresh = (0..n).filter(|&i| out[i].is_some() && !slow[i]).count();
                let mut started = 0;
                for i in untried(tried) {
                    if fresh + started >= k - have {
                        break;
                    }
                    if launch(i, tried) {
                        out[i] = Some(Instant::now());
                        started += 1;
                    }
                }
                started
            };
        let start = Instant::now();
        let mut first_in: Option<Duration> = None;
        loop {
            let have = payloads.iter().filter(|p| p.is_some()).count();
            if have >= k {
                break;
            }
            top_up(have, &mut tried, &mut out, &slow);
            if out.iter().all(Option::is_none) {
                return Err(FsError::Unavailable(format!(
                    "block {no}: only {have} of the {k} shards needed could be fetched"
                )));
            }
            // A fetch is slow once it has been out this long; the next to become slow is the
            // oldest one still counted. Every fetch gets this chance, spares and the fetches
            // that replace failed ones too: before, spares went out once per block, and a
            // block whose spare (or a fetch sent after a failure) went to a supplier that had
            // just died waited for that dial to time out (3 s for QUIC; 2 of 6 suppliers
            // killed, a 256 MiB cold read stalled 2.3 s on it).
            let patience = match first_in {
                Some(t) => (t * HEDGE_FACTOR).max(HEDGE_MIN),
                None => HEDGE_NONE_YET,
            };
            let due = (0..n)
                .filter(|&i| !slow[i])
                .filter_map(|i| out[i])
                .min()
                .map(|t| t + patience);
            let got = match due {
                Some(due) => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
                // Every fetch out is slow and no shard is left to ask: wait for any of them.
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let (i, res) = match got {
                Ok(got) => got,
                Err(RecvTimeoutError::Timeout) => {
                    // Slow answers: the fetches out for that long no longer count towards
                    // the shards missing, so each gets a spare (and a spare that fails is
                    // replaced in turn, while the slow ones may still answer).
                    let now = Instant::now();
                    for j in 0..n {
                        if out[j].is_some_and(|t| t + patience <= now) {
                            slow[j] = true;
                        }
                    }
                    let spares = top_up(have, &mut tried, &mut out, &slow);
                    if spares > 0 {
                        self.hedged_fetches
                            .fetch_add(spares as u64, Ordering::Relaxed);
                        debug!(
                            block = no,
                            spares, "slow shard fetches; asking other suppliers too"
                        );
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(FsError::Unavailable(format!(
                        "block {no}: shard fetches vanished"
                    )));
                }
            };
            out[i] = None;
            first_in.get_or_insert(start.elapsed());
            let bytes = match res {
                Ok(b) => b,
                Err(e) => {
                    warn!(block = no, shard = i, supplier = ?rec.shards[i].supplier, error = %e, "shard fetch failed; using others");
                    continue;
                }
            };
            if payloads[i].is_some() {
                continue;
            }
            let id = (check == Check::Ids).then_some(&rec.shards[i].id);
            match shard::parse(&bytes, id).map(|(h, _)| h) {
                Ok(h) if h.index as usize == i => payloads[i] = Some(bytes),
                Ok(_) => warn!(
                    block = no,
                    shard = i,
                    "shard has the wrong index; using others"
                ),
                Err(e) => {
                    // The supplier returned bytes that are not the shard it acknowledged:
                    // it no longer holds that shard, so the block is repaired elsewhere.
                    self.corrupt_shards.fetch_add(1, Ordering::Relaxed);
                    self.shard_corrupt(no, i)?;
                    warn!(block = no, shard = i, supplier = ?rec.shards[i].supplier, error = %e, "corrupt shard; rebuilding from others");
                }
            }
        }
        Ok(erasure::decode_parts(r, rec.len as usize, payloads)?)
    }

    /// A queued shard's bytes if they are at hand: staged in memory, or (databases written
    /// before) in the queue entry itself.
    fn local_shard(&self, no: u64, i: usize) -> FsResult<Option<Arc<Vec<u8>>>> {
        if let Some(b) = lock(&self.staged).get(no, i) {
            return Ok(Some(b));
        }
        match self
            .db
            .get_pinned_cf(&self.cf(cf::OUTBOX), db::key2(no, i as u64))?
        {
            Some(v) if v.len() != 8 => Ok(Some(Arc::new(v.to_vec()))),
            _ => Ok(None),
        }
    }

    /// The bytes of queued shards `wanted` of block `no`: at hand, or all encoded again at
    /// once from the block (its pinned file, or rebuilt from suppliers for a repair queued
    /// before a restart), so a block is read and encoded at most once per upload round.
    pub(super) fn queued_shards(
        &self,
        no: u64,
        wanted: &[usize],
        rec: &BlockRecord,
    ) -> FsResult<HashMap<usize, Arc<Vec<u8>>>> {
        let mut out = HashMap::new();
        for &i in wanted {
            if let Some(b) = self.local_shard(no, i)? {
                out.insert(i, b);
            }
        }
        if out.len() == wanted.len() {
            return Ok(out);
        }
        if lock(&self.staged).own.contains(&no) {
            match self.own_shards(no, wanted, rec, &mut out) {
                Ok(()) => return Ok(out),
                Err(e) => {
                    warn!(block = no, error = %e, "cannot build shards from the block's file; checking it against its record");
                    lock(&self.staged).own.remove(&no);
                }
            }
        }
        let matches = |shards: &[(ShardId, Vec<u8>)]| {
            shards.len() == rec.shards.len()
                && shards
                    .iter()
                    .zip(&rec.shards)
                    .all(|((id, _), sr)| *id == sr.id)
        };
        let (local, unreadable) = match std::fs::read(self.cache_path(no)) {
            Ok(b) if b.len() == rec.len as usize => {
                (Some(erasure::encode(rec.redundancy, &b)?), None)
            }
            Ok(_) => (None, None),
            // Gone is as good as damaged; any other error may pass (retried later).
            Err(e) => (
                None,
                (e.kind() != std::io::ErrorKind::NotFound).then_some(e),
            ),
        };
        // A local file that does not encode to the recorded shards (a crash after the block
        // reached its suppliers, before its cache file reached the disk: such a file is not
        // synced) is replaced by the block as its suppliers hold it.
        let shards = match local {
            Some(sh) if matches(&sh) => sh,
            _ if rec.stored() >= rec.redundancy.k as usize => {
                erasure::encode(rec.redundancy, &self.fetch_block(no)?)?
            }
            _ => {
                // Fewer than k shards out and a local copy that cannot be read now: try again
                // later; one that is damaged or gone (a power cut before it was synced and
                // before enough of it was uploaded): nothing can ever give the rest back.
                if let Some(e) = unreadable {
                    return Err(e.into());
                }
                self.lose_queued_block(no)?;
                return Ok(HashMap::new());
            }
        };
        if !matches(&shards) {
            return Err(FsError::Corrupt(format!(
                "block {no}: shards encoded again differ from its record"
            )));
        }
        for (j, (_, bytes)) in shards.into_iter().enumerate() {
            if wanted.contains(&j) {
                out.entry(j).or_insert_with(|| Arc::new(bytes));
            }
        }
        Ok(out)
    }

    /// The `wanted` shards of block `no` not already in `out`, built from the block's file as
    /// this process wrote it ([`Staged::own`]): each data shard read from the file straight
    /// into the buffer that is sent (one copy, from the page cache), parity computed again
    /// from them only when it is wanted and was not kept. Nothing is hashed: the ids were
    /// recorded from these bytes when the block was sealed, and the supplier checks them.
    fn own_shards(
        &self,
        no: u64,
        wanted: &[usize],
        rec: &BlockRecord,
        out: &mut HashMap<usize, Arc<Vec<u8>>>,
    ) -> FsResult<()> {
        use std::io::{Read, Seek, SeekFrom};
        let (r, len) = (rec.redundancy, rec.len as usize);
        let k = r.k as usize;
        let missing: Vec<usize> = wanted
            .iter()
            .copied()
            .filter(|i| !out.contains_key(i))
            .collect();
        let need_parity = missing.iter().any(|&i| i >= k);
        let mut f = std::fs::File::open(self.cache_path(no))?;
        let on_disk = f.metadata()?.len();
        if on_disk != len as u64 {
            return Err(FsError::Corrupt(format!(
                "block {no}: its file holds {on_disk} bytes, its record {len}"
            )));
        }
        let size = erasure::shard_size(r, len);
        let mut data: Vec<Option<Vec<u8>>> = vec![None; k];
        for (i, slot) in data.iter_mut().enumerate() {
            if !need_parity && !missing.contains(&i) {
                continue;
            }
            let part = erasure::data_range(r, len, i);
            let mut s = SEND_BUFS.take_empty(shard::HEADER_LEN + size);
            s.extend_from_slice(&erasure::shard_header(r, len, i));
            f.seek(SeekFrom::Start(part.start as u64))?;
            (&mut f).take(part.len() as u64).read_to_end(&mut s)?;
            if s.len() != shard::HEADER_LEN + part.len() {
                return Err(FsError::Corrupt(format!(
                    "block {no}: its file ended early"
                )));
            }
            s.resize(shard::HEADER_LEN + size, 0);
            *slot = Some(s);
        }
        if need_parity {
            let payloads: Vec<&[u8]> = data
                .iter()
                .flatten()
                .map(|s| &s[shard::HEADER_LEN..])
                .collect();
            for (j, p) in erasure::parity(r, len, &payloads)?.into_iter().enumerate() {
                if missing.contains(&(k + j)) {
                    out.insert(k + j, Arc::new(p));
                }
            }
        }
        for (i, s) in data.into_iter().enumerate() {
            if let Some(s) = s
                && missing.contains(&i)
            {
                out.insert(i, Arc::new(s));
            }
        }
        Ok(())
    }

    /// Marks queued block `no` lost, if fewer than k of its shards are on suppliers, and takes
    /// its shards out of the upload queue: uploading them was the only thing left to do with
    /// them, and `sync` would wait for them for ever. Files with data in it then read with an
    /// error (their chunks fail to open), not with other bytes.
    fn lose_queued_block(&self, no: u64) -> FsResult<()> {
        let _up = lock(&self.up);
        let Some(mut rec) = self.block_record(no)? else {
            return Ok(());
        };
        let (live, k) = (rec.stored(), rec.redundancy.k as usize);
        let Some(state) = next(rec.state, BlockEvent::ShardLost { live, k }) else {
            return Ok(());
        };
        rec.state = state;
        let mut b = WriteBatch::default();
        let freed = self.unqueue_block(no, &mut b)?;
        b.put_cf(&self.cf(cf::BLOCKS), db::key1(no), db::encode(&rec));
        self.db.write(b)?;
        self.release_queued(freed);
        lock(&self.unsynced).remove(&no);
        lock(&self.cache).pinned.remove(&no);
        error!(
            block = no,
            stored = live,
            "block lost: its local copy is damaged and only {live} of its shards reached suppliers ({k} needed); files with data in it will read with errors"
        );
        Ok(())
    }

    /// Takes every queued shard of block `no` out of the upload queue (in `b`) and out of
    /// memory. Returns the bytes they stood for: give them back with
    /// [`Self::release_queued`] once `b` is written.
    fn unqueue_block(&self, no: u64, b: &mut WriteBatch) -> FsResult<u64> {
        let outbox = self.cf(cf::OUTBOX);
        let mut freed = 0;
        let mut it = self.db.raw_iterator_cf(&outbox);
        it.seek(db::key2(no, 0));
        while let (Some(key), Some(v)) = (it.key(), it.value()) {
            if db::be_u64(key, 0) != Some(no) {
                break;
            }
            freed += queued_len(v);
            it.next();
        }
        it.status()?;
        b.delete_range_cf(&outbox, db::key2(no, 0), db::key2(no + 1, 0));
        lock(&self.staged).remove_block(no);
        Ok(freed)
    }

    /// Uncounts `freed` bytes that left the upload queue.
    fn release_queued(&self, freed: u64) {
        // Never below zero: a count that drifted (databases from before it was kept) must
        // not wrap around and hold every writer back.
        let _ = self
            .queued_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                Some(q.saturating_sub(freed))
            });
    }

    /// Blocks one upload round works on: [`ROUND_BYTES`] of them, at least one.
    pub(super) fn blocks_per_round(&self) -> usize {
        (ROUND_BYTES / self.cfg.block_size.max(1)).max(1)
    }

    /// One round of uploads: places queued shards of up to a few blocks on suppliers, in
    /// parallel. Returns the number of shards stored.
    ///
    /// Rounds may run on several threads at once (the daemon runs [`UPLOAD_ROUNDS`]): each
    /// claims the first queued blocks no other round is working on, and holds the uploader's
    /// lock only to choose suppliers and to record what was stored, not while shards are read,
    /// encoded or sent. One round waits for the slowest of its stores before it records them;
    /// a second round keeps the network and the suppliers busy meanwhile (512 MiB copy until
    /// durable, 3 runs each, alternated: 119-134 MiB/s with one round at a time, 136-140 with
    /// two).
    pub fn upload_round(&self) -> FsResult<usize> {
        let (claimed, picks) = self.claim_round()?;
        // Bytes only for shards that have somewhere to go this round: a block nobody can take
        // now is not read and encoded again for nothing.
        let mut jobs: Vec<(&Pick, Arc<Vec<u8>>)> = Vec::new();
        for (no, rec) in &claimed.records {
            let mine: Vec<&Pick> = picks.iter().filter(|p| p.block == *no).collect();
            let wanted: Vec<usize> = mine.iter().map(|p| p.index).collect();
            match self.queued_shards(*no, &wanted, rec) {
                Ok(mut bytes_of) => {
                    for p in mine {
                        if let Some(bytes) = bytes_of.remove(&p.index) {
                            jobs.push((p, bytes));
                        }
                    }
                }
                Err(e) => {
                    warn!(block = no, error = %e, "cannot read the queued shards of a block; will retry");
                }
            }
        }
        if jobs.is_empty() {
            // Nothing (left) to send: the buffers kept for sending go back to the allocator
            // rather than sit in the mount's memory while it only reads.
            if claimed.records.is_empty() {
                SEND_BUFS.clear();
            }
            return Ok(0);
        }
        let results: Vec<(&Pick, Result<(), StoreError>)> = std::thread::scope(|s| {
            let hs: Vec<_> = jobs
                .iter()
                .map(|(p, bytes)| {
                    s.spawn(move || (*p, self.store.store(&p.supplier, &p.id, bytes)))
                })
                .collect();
            hs.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (_, bytes) in jobs {
            give_back(bytes);
        }
        let stored = self.record_round(&claimed, results)?;
        drop(claimed);
        self.notify();
        Ok(stored)
    }

    /// The shards queued for upload, by block, of the first [`Self::blocks_per_round`] blocks not
    /// in `busy`.
    fn queued_blocks(&self, busy: &HashSet<u64>) -> FsResult<BTreeMap<u64, Vec<usize>>> {
        let mut queued: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        let outbox = self.cf(cf::OUTBOX);
        let mut it = self.db.raw_iterator_cf(&outbox);
        it.seek_to_first();
        while let Some(k) = it.key() {
            if let (Some(no), Some(i)) = (db::be_u64(k, 0), db::be_u64(k, 8))
                && !busy.contains(&no)
            {
                if !queued.contains_key(&no) && queued.len() >= self.blocks_per_round() {
                    break;
                }
                queued.entry(no).or_default().push(i as usize);
            }
            it.next();
        }
        it.status()?;
        Ok(queued)
    }

    /// Claims the next queued blocks no other round works on, and chooses a supplier for
    /// each of their shards that has one to go to (under the uploader's lock).
    fn claim_round(&self) -> FsResult<(Claimed<'_>, Vec<Pick>)> {
        let mut claimed = Claimed {
            up: &self.up,
            records: HashMap::new(),
        };
        let mut picks = Vec::new();
        let mut up = lock(&self.up);
        let queued = self.queued_blocks(&up.busy)?;
        if queued.is_empty() {
            return Ok((claimed, picks));
        }
        let now = Instant::now();
        up.suspect.retain(|_, until| *until > now);
        let suppliers: Vec<SupplierId> = self
            .store
            .suppliers()
            .into_iter()
            .filter(|s| !up.suspect.contains_key(s) && self.placeable(s))
            .collect();
        let tiers: [Vec<SupplierId>; 2] = {
            let (first, second) = suppliers.into_iter().partition(|s| self.store.preferred(s));
            [first, second]
        };
        for (no, shards) in queued {
            let Some(rec) = self.block_record(no)? else {
                warn!(
                    block = no,
                    "queued shards without a block record; dropping them"
                );
                let mut b = WriteBatch::default();
                let freed = self.unqueue_block(no, &mut b)?;
                self.db.write(b)?;
                self.release_queued(freed);
                continue;
            };
            let mut used: HashSet<SupplierId> = rec
                .shards
                .iter()
                .filter_map(|s| s.supplier.clone())
                .collect();
            let refused = up.refused.get(&no).cloned().unwrap_or_default();
            // Rotate each tier of the supplier list by block so load spreads when there are
            // more suppliers than shards; the second tier (reached only through a relay) gets
            // a shard only when the first has no supplier left for it.
            let before = picks.len();
            for i in shards {
                let pick = tiers.iter().find_map(|tier| {
                    let n = tier.len().max(1);
                    (0..tier.len())
                        .map(|j| &tier[(j + no as usize + i) % n])
                        .find(|s| !used.contains(*s) && !refused.contains(*s))
                });
                if let (Some(s), Some(sr)) = (pick, rec.shards.get(i)) {
                    used.insert(s.clone());
                    picks.push(Pick {
                        block: no,
                        index: i,
                        supplier: s.clone(),
                        id: sr.id,
                    });
                }
            }
            if picks.len() > before {
                up.busy.insert(no);
                claimed.records.insert(no, rec);
            }
        }
        Ok((claimed, picks))
    }

    /// Records what a round stored, against the block records as they are now (repair or
    /// compaction may have changed them while the shards were on their way), under the
    /// uploader's lock. Returns the number of shards stored.
    fn record_round(
        &self,
        claimed: &Claimed<'_>,
        results: Vec<(&Pick, Result<(), StoreError>)>,
    ) -> FsResult<usize> {
        let mut up = lock(&self.up);
        let now = Instant::now();
        let mut records: HashMap<u64, BlockRecord> = HashMap::new();
        for &no in claimed.records.keys() {
            if let Some(rec) = self.block_record(no)? {
                records.insert(no, rec);
            }
        }
        let mut stored = 0;
        let mut b = WriteBatch::default();
        let mut freed = 0u64;
        for (p, res) in results {
            let Some(rec) = records.get_mut(&p.block) else {
                continue;
            };
            match res {
                Ok(()) => {
                    // A supplier declared lost while the shard was on its way has had its
                    // shards marked lost already: this one stays queued and goes elsewhere.
                    if !self.placeable(&p.supplier) {
                        continue;
                    }
                    let Some(sr) = rec.shards.get_mut(p.index).filter(|sr| sr.id == p.id) else {
                        continue;
                    };
                    sr.supplier = Some(p.supplier.clone());
                    let key = db::key2(p.block, p.index as u64);
                    if let Some(v) = self.db.get_pinned_cf(&self.cf(cf::OUTBOX), key)? {
                        freed += queued_len(&v);
                    }
                    b.delete_cf(&self.cf(cf::OUTBOX), key);
                    lock(&self.staged).remove(p.block, p.index);
                    stored += 1;
                }
                Err(StoreError::Unreachable(e)) => {
                    info!(supplier = %p.supplier, error = %e, "supplier unreachable; trying others");
                    up.suspect.insert(p.supplier.clone(), now + SUSPECT_FOR);
                }
                Err(e) => {
                    // Shards built from this process's file are not hashed before they go
                    // out, so a refusal (a supplier's hash check among its reasons) may be
                    // the bytes' fault, not the supplier's: the next round checks the block
                    // against its record first, and only a refusal after that counts against
                    // the supplier.
                    if lock(&self.staged).own.remove(&p.block) {
                        info!(supplier = %p.supplier, block = p.block, error = %e, "supplier refused a shard; checking the block's file");
                        continue;
                    }
                    info!(supplier = %p.supplier, block = p.block, error = %e, "supplier refused a shard; choosing another");
                    up.refused
                        .entry(p.block)
                        .or_default()
                        .insert(p.supplier.clone());
                }
            }
        }
        let total = self.cfg.redundancy.total();
        let needed = self
            .cfg
            .durable_shards
            .clamp(self.cfg.redundancy.k as usize + 1, total);
        let mut unpin = Vec::new();
        for (no, rec) in records.iter_mut() {
            let ev = BlockEvent::Stored {
                live: rec.stored(),
                needed,
                total,
            };
            if let Some(s) = next(rec.state, ev) {
                rec.state = s;
            }
            b.put_cf(&self.cf(cf::BLOCKS), db::key1(*no), db::encode(&*rec));
            if rec.stored() == rec.shards.len() {
                up.refused.remove(no);
                unpin.push(*no);
            }
        }
        self.db.write(b)?;
        self.release_queued(freed);
        {
            // A block on its suppliers needs no local durability: its file is only a cache
            // now, so `fsync`/`sync` need not write it to the local disk.
            let mut unsynced = lock(&self.unsynced);
            for no in &unpin {
                unsynced.remove(no);
            }
            drop(unsynced);
            let mut staged = lock(&self.staged);
            for no in &unpin {
                staged.remove_block(*no);
            }
            drop(staged);
            let mut c = lock(&self.cache);
            for no in unpin {
                c.pinned.remove(&no);
            }
        }
        // Blocks just stored on suppliers may now leave the cache.
        self.evict()?;
        Ok(stored)
    }

    /// Whether anything is still waiting: dirty data, an open block or queued shards.
    pub fn pending(&self) -> FsResult<(u64, u64)> {
        let mut it = self.db.raw_iterator_cf(&self.cf(cf::OUTBOX));
        it.seek_to_first();
        let mut shards = 0;
        while it.valid() {
            shards += 1;
            it.next();
        }
        Ok((shards, self.queued_bytes.load(Ordering::SeqCst)))
    }

    /// A snapshot of the engine's state.
    pub fn status(&self) -> FsResult<EngineStatus> {
        let mut blocks: BTreeMap<String, u64> = BlockState::ALL
            .iter()
            .map(|s| (s.name().to_string(), 0))
            .collect();
        for item in self
            .db
            .iterator_cf(&self.cf(cf::BLOCKS), rocksdb::IteratorMode::Start)
        {
            let (_, v) = item?;
            let rec: BlockRecord = db::decode(cf::BLOCKS, &v)?;
            *blocks.entry(rec.state.name().to_string()).or_default() += 1;
        }
        // Writers may hold the state lock while they wait for uploads (backpressure); status
        // must still answer then, so it does not wait for the lock.
        let (dirty, open_bytes) = match self.state.try_lock() {
            Ok(st) => (st.dirty.values().sum(), st.open.buf.len() as u64),
            Err(_) => (0, 0),
        };
        if open_bytes > 0 {
            *blocks.entry("open".into()).or_default() += 1;
        }
        let (queued_shards, queued_bytes) = self.pending()?;
        let cache_bytes = lock(&self.cache).bytes;
        let readahead_bytes = lock(&self.readahead.0).held_bytes();
        let suppliers = self.store.suppliers();
        let mut db_memtables = BTreeMap::new();
        for name in cf::ALL {
            let v = self
                .db
                .property_int_value_cf(&self.cf(name), "rocksdb.size-all-mem-tables")?
                .unwrap_or(0);
            db_memtables.insert(name.to_string(), v);
        }
        Ok(EngineStatus {
            blocks,
            queued_shards,
            queued_bytes,
            dirty_bytes: dirty,
            open_block_bytes: open_bytes,
            cache_bytes,
            readahead_bytes,
            corrupt_shards: self.corrupt_shards.load(Ordering::Relaxed),
            hedged_fetches: self.hedged_fetches.load(Ordering::Relaxed),
            fetched_bytes: self.fetched_bytes.load(Ordering::Relaxed),
            suppliers,
            db_memtables,
        })
    }

    /// Forgets every cached block that is stored on suppliers; returns the bytes dropped.
    pub fn cache_drop(&self) -> FsResult<u64> {
        let (nos, before) = {
            let c = lock(&self.cache);
            (
                c.blocks
                    .keys()
                    .filter(|n| !c.pinned.contains(n))
                    .copied()
                    .collect::<Vec<_>>(),
                c.bytes,
            )
        };
        for no in nos {
            self.forget_cached_block(no)?;
        }
        lock(&self.chunk_cache).clear();
        lock(&self.readahead.0).ready.clear();
        let after = lock(&self.cache).bytes;
        Ok(before.saturating_sub(after))
    }
}
