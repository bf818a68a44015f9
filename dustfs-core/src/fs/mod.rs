//! The filesystem core: a POSIX-like namespace and data path over the local database and a
//! [`ShardStore`]. It knows nothing of FUSE; the FUSE adapter in the `dustfs` program only
//! translates kernel requests into calls here and [`FsError`]s into errno values.
//!
//! Concurrency: one mutex (`State`) serialises changes to the namespace and to dirty data;
//! reads resolve their extents under it and fetch chunk data outside it. The uploader
//! (`blocks.rs`) works on block records and the upload queue under its own lock.

mod blocks;
mod data;
mod meta;
mod prune;
mod repair;
pub mod types;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::db::{self, DbError, Rdb, cf};
use crate::erasure::{ErasureError, Redundancy};
use crate::keys::Keys;
use crate::store::{ShardStore, SupplierId};
pub use blocks::UPLOAD_ROUNDS;
pub use meta::{
    Manifest, PendingSnapshot, RestoreInfo, SnapshotInfo, check_stream, encode_stream_record,
    list_snapshots,
};
pub use prune::{PrunePlan, PruneReport, Retention};
pub use repair::{RepairBudget, RepairStatus};
pub use types::*;

/// Tunables of the engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Data and parity shards per block.
    pub redundancy: Redundancy,
    /// Target size of a block (k × shard size).
    pub block_size: usize,
    /// Acknowledged shards that make a block durable (at least k+1, at most k+m).
    pub durable_shards: usize,
    /// Size bound of the local block cache, in bytes.
    pub cache_bytes: u64,
    /// Dirty bytes of one file after which it is chunked without waiting for close.
    pub commit_bytes: u64,
    /// Bytes waiting in the upload queue after which writers wait for uploads.
    pub outbox_limit_bytes: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let redundancy = Redundancy::default();
        Self {
            redundancy,
            block_size: 4 << 20,
            durable_shards: redundancy.total(),
            cache_bytes: 1 << 30,
            commit_bytes: 16 << 20,
            outbox_limit_bytes: 256 << 20,
        }
    }
}

/// Errors of filesystem operations. Each maps to one errno at the FUSE edge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// No such file or directory.
    #[error("no such file or directory")]
    NotFound,
    /// The name already exists.
    #[error("file exists")]
    Exists,
    /// Not a directory.
    #[error("not a directory")]
    NotDir,
    /// Is a directory.
    #[error("is a directory")]
    IsDir,
    /// Directory not empty.
    #[error("directory not empty")]
    NotEmpty,
    /// Invalid argument.
    #[error("invalid argument")]
    Invalid,
    /// Name longer than NAME_MAX.
    #[error("file name too long")]
    NameTooLong,
    /// No such extended attribute.
    #[error("no such attribute")]
    NoAttr,
    /// The data cannot be had right now (too few shards reachable).
    #[error("data unavailable: {0}")]
    Unavailable(String),
    /// Data failed verification and could not be rebuilt.
    #[error("data corrupt: {0}")]
    Corrupt(String),
    /// Restore found no snapshot of this identity on the network.
    #[error("{0}")]
    NoSnapshot(String),
    /// Local database failure.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Erasure coding failure.
    #[error(transparent)]
    Erasure(#[from] ErasureError),
    /// The local disk failed (the block cache directory).
    #[error("local disk: {0}")]
    Io(#[from] std::io::Error),
    /// Sealing or opening a chunk failed in the cipher library (not a bad chunk: those are
    /// [`FsError::Corrupt`]).
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
}

impl From<rocksdb::Error> for FsError {
    fn from(e: rocksdb::Error) -> Self {
        FsError::Db(DbError::Rocks(e))
    }
}

/// Result of filesystem operations.
pub type FsResult<T> = Result<T, FsError>;

/// Attribute changes requested by `setattr`.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<Ts>,
    /// New modification time.
    pub mtime: Option<Ts>,
}

/// A directory listing entry.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Inode number.
    pub ino: Ino,
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: Vec<u8>,
}

/// Filesystem-wide numbers for statfs.
#[derive(Debug, Clone, Copy)]
pub struct FsStats {
    /// Bytes of file data stored (logical).
    pub used_bytes: u64,
    /// Capacity reported to the kernel.
    pub total_bytes: u64,
    /// Inodes in use.
    pub inodes: u64,
}

/// What statfs last learnt of the suppliers: when, for how long it holds, and (used, granted)
/// bytes of file data.
type SpaceAnswer = (Instant, std::time::Duration, (u64, u64));

/// A snapshot of the engine's work for `dustfs status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineStatus {
    /// Blocks per health state name.
    pub blocks: std::collections::BTreeMap<String, u64>,
    /// Shards waiting in the upload queue.
    pub queued_shards: u64,
    /// Bytes waiting in the upload queue.
    pub queued_bytes: u64,
    /// Dirty bytes not yet chunked.
    pub dirty_bytes: u64,
    /// Bytes in the block being filled.
    pub open_block_bytes: u64,
    /// Bytes in the local block cache.
    pub cache_bytes: u64,
    /// Bytes of blocks fetched ahead of sequential readers, held in memory until read.
    #[serde(default)]
    pub readahead_bytes: u64,
    /// Shards that failed verification on fetch since start.
    pub corrupt_shards: u64,
    /// Extra shard fetches started since start because a supplier was slow to answer.
    pub hedged_fetches: u64,
    /// Bytes of blocks fetched from suppliers for reads since start.
    pub fetched_bytes: u64,
    /// Suppliers the store offers.
    pub suppliers: Vec<SupplierId>,
    /// Memory held by the local database's memtables, per column family.
    pub db_memtables: std::collections::BTreeMap<String, u64>,
}

/// The block being filled: its bytes in memory and in its file under `db/open/`.
struct OpenBlock {
    no: u64,
    buf: OpenBuf,
    /// The block's file, opened on the first append.
    file: Option<std::fs::File>,
}

/// The open block's bytes, `buf[..len]`. The buffer keeps the length it once reached (bytes
/// past `len` are stale ciphertext of an earlier block), so a chunk is sealed over initialised
/// memory; appending to a vector would zero its room first (that memset was 5.8% of the
/// pipeline benchmark's samples, as much as the erasure coding itself).
#[derive(Default)]
struct OpenBuf {
    buf: Vec<u8>,
    len: usize,
}

impl OpenBuf {
    fn from_vec(buf: Vec<u8>) -> Self {
        Self {
            len: buf.len(),
            buf,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties the block, keeping the memory (the next block fills the same pages).
    fn clear(&mut self) {
        self.len = 0;
    }

    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The `n` bytes after the block's end, to be written and then added with [`Self::grow`].
    fn room(&mut self, n: usize) -> &mut [u8] {
        let end = self.len + n;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        &mut self.buf[self.len..end]
    }

    /// Adds the `n` bytes written into [`Self::room`] to the block.
    fn grow(&mut self, n: usize) {
        self.len = (self.len + n).min(self.buf.len());
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.room(bytes.len()).copy_from_slice(bytes);
        self.grow(bytes.len());
    }
}

/// A file's dirty file (`db/dirty/<ino>`): its writes not yet chunked, appended in order.
struct DirtyFile {
    file: std::fs::File,
    /// Where the next write is appended.
    end: u64,
}

struct State {
    next_ino: u64,
    open: OpenBlock,
    /// Dirty bytes per inode since its last commit.
    dirty: HashMap<Ino, u64>,
    /// Open handles per inode (unlinked inodes live until the last release).
    open_files: HashMap<Ino, u32>,
    /// Inodes unlinked while open.
    orphans: HashSet<Ino>,
    /// Extent maps of recently used files, the authoritative copy of what RocksDB holds.
    /// Reading extents through RocksDB iterators crawls over the tombstones that rewriting a
    /// file leaves in the memtable (a database doing small transactions makes thousands), so
    /// every change goes to both and reads come from here.
    extents: lru::LruCache<Ino, std::collections::BTreeMap<u64, Extent>>,
    /// Dirty files of inodes with dirty data, open.
    dirty_files: HashMap<Ino, DirtyFile>,
    /// The buffer commits read dirty runs into, kept from one commit to the next (up to
    /// `COMMIT_BUF_KEEP` bytes): a long write commits every 16 MiB, and a fresh buffer each
    /// time was 16 MiB of new pages to fault in and zero.
    commit_buf: Vec<u8>,
}

/// Files whose extent maps stay in memory.
const EXTENT_CACHE_FILES: usize = 4096;

/// The filesystem engine.
pub struct Engine {
    db: Arc<Rdb>,
    /// The block cache: one plain file per block (see `blocks.rs`).
    cache_dir: std::path::PathBuf,
    /// Dirty files, one per inode with writes not yet chunked (see `data.rs`).
    dirty_dir: std::path::PathBuf,
    /// The open block's file (see `blocks.rs`).
    open_dir: std::path::PathBuf,
    /// Shards of recently sealed blocks kept in memory for the uploader (see `blocks.rs`).
    staged: Mutex<blocks::Staged>,
    /// Sealed blocks whose files were not synced to disk yet (fsync and sync do it).
    unsynced: Mutex<HashSet<u64>>,
    keys: Keys,
    cfg: EngineConfig,
    store: Arc<dyn ShardStore>,
    state: Mutex<State>,
    chunk_cache: Mutex<lru::LruCache<ChunkId, Arc<Vec<u8>>>>,
    up: Mutex<blocks::Uploader>,
    suppliers: Mutex<repair::Suppliers>,
    cache: Mutex<blocks::CacheIndex>,
    queued_bytes: AtomicU64,
    /// User reads waiting on a block fetch (repair yields to them).
    foreground_fetches: std::sync::atomic::AtomicUsize,
    corrupt_shards: AtomicU64,
    hedged_fetches: AtomicU64,
    fetched_bytes: AtomicU64,
    /// Supplier space (used, granted) as file-data bytes, and when it was asked.
    space: Mutex<Option<SpaceAnswer>>,
    /// Signalled when uploads progress or new blocks are queued.
    progress: (Mutex<u64>, Condvar),
    /// Sequential readers and the blocks fetched ahead of them; signalled when a fetch ends.
    readahead: (Mutex<blocks::Readahead>, Condvar),
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

const META_NEXT_INO: &[u8] = b"next_ino";
const META_NEXT_BLOCK: &[u8] = b"next_block";
/// How many bytes of the open block's file the chunk index refers to (a crash can leave more).
const META_OPEN_LEN: &[u8] = b"open_len";

impl Engine {
    /// Opens (or creates) the engine's database in `dir`.
    pub fn open(
        dir: &Path,
        keys: Keys,
        cfg: EngineConfig,
        store: Arc<dyn ShardStore>,
    ) -> FsResult<Arc<Self>> {
        // Before anything is read or written: the cipher works and is the one blocks use.
        crate::seal::self_test()?;
        let db = db::open(dir)?;
        let meta = db::handle(&db, cf::META);
        let counter = |k: &[u8], default: u64| -> FsResult<u64> {
            Ok(match db.get_cf(&meta, k)? {
                Some(v) => db::decode::<u64>(cf::META, &v)?,
                None => default,
            })
        };
        let next_ino = counter(META_NEXT_INO, ROOT + 1)?;
        let next_block = counter(META_NEXT_BLOCK, 1)?;
        let open_len = counter(META_OPEN_LEN, 0)?;
        drop(meta);
        let cache_dir = dir.join(blocks::CACHE_DIR);
        let dirty_dir = dir.join(data::DIRTY_DIR);
        let open_dir = dir.join(blocks::OPEN_DIR);
        for d in [&cache_dir, &dirty_dir, &open_dir] {
            std::fs::create_dir_all(d)?;
        }
        let buf = blocks::recover_open_block(&db, &open_dir, &cache_dir, next_block, open_len)?;
        let engine = Arc::new(Self {
            cache_dir,
            dirty_dir,
            open_dir,
            staged: Mutex::new(blocks::Staged::default()),
            unsynced: Mutex::new(HashSet::new()),
            keys,
            store,
            state: Mutex::new(State {
                next_ino,
                open: OpenBlock {
                    no: next_block,
                    buf: OpenBuf::from_vec(buf),
                    file: None,
                },
                dirty: HashMap::new(),
                open_files: HashMap::new(),
                orphans: HashSet::new(),
                extents: lru::LruCache::new(
                    std::num::NonZeroUsize::new(EXTENT_CACHE_FILES)
                        .unwrap_or(std::num::NonZeroUsize::MIN),
                ),
                dirty_files: HashMap::new(),
                commit_buf: Vec::new(),
            }),
            chunk_cache: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::MIN.saturating_add(15),
            )),
            up: Mutex::new(blocks::Uploader::default()),
            suppliers: Mutex::new(repair::Suppliers::default()),
            cache: Mutex::new(blocks::CacheIndex::default()),
            queued_bytes: AtomicU64::new(0),
            foreground_fetches: std::sync::atomic::AtomicUsize::new(0),
            corrupt_shards: AtomicU64::new(0),
            hedged_fetches: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            space: Mutex::new(None),
            progress: (Mutex::new(0), Condvar::new()),
            readahead: (Mutex::new(blocks::Readahead::default()), Condvar::new()),
            started: Instant::now(),
            cfg,
            db,
        });
        engine.init_root()?;
        engine.recover()?;
        Ok(engine)
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    fn cf(&self, name: &'static str) -> Arc<rocksdb::BoundColumnFamily<'_>> {
        db::handle(&self.db, name)
    }

    fn init_root(&self) -> FsResult<()> {
        if self.get_inode(ROOT).is_ok() {
            return Ok(());
        }
        let now = Ts::now();
        let root = Inode {
            ino: ROOT,
            kind: Kind::Dir,
            perm: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            nlink: 2,
            rdev: 0,
            target: Vec::new(),
        };
        let mut b = WriteBatch::default();
        self.put_inode(&mut b, &root);
        self.db.write(b)?;
        Ok(())
    }

    /// After a restart: count dirty bytes per inode, drop orphans (unlinked while open) and
    /// account the upload queue.
    fn recover(&self) -> FsResult<()> {
        let mut st = lock(&self.state);
        self.migrate_dirty_cf(&mut st)?;
        self.recover_dirty(&mut st)?;
        let inodes = self.cf(cf::INODES);
        let mut orphans = Vec::new();
        for item in self.db.iterator_cf(&inodes, rocksdb::IteratorMode::Start) {
            let (_, v) = item?;
            let ino: Inode = db::decode(cf::INODES, &v)?;
            if ino.nlink == 0 {
                orphans.push(ino.ino);
            }
        }
        drop(inodes);
        for ino in orphans {
            self.destroy_inode(&mut st, ino)?;
        }
        drop(st);
        self.recount_queue()?;
        self.rebuild_cache_index()?;
        Ok(())
    }

    // ----- inode helpers -----

    /// Reads an inode.
    pub fn get_inode(&self, ino: Ino) -> FsResult<Inode> {
        match self.db.get_cf(&self.cf(cf::INODES), db::key1(ino))? {
            Some(v) => Ok(db::decode(cf::INODES, &v)?),
            None => Err(FsError::NotFound),
        }
    }

    fn put_inode(&self, b: &mut WriteBatch, i: &Inode) {
        b.put_cf(&self.cf(cf::INODES), db::key1(i.ino), db::encode(i));
    }

    fn dirent_key(parent: Ino, name: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(8 + name.len());
        k.extend_from_slice(&parent.to_be_bytes());
        k.extend_from_slice(name);
        k
    }

    fn get_dirent(&self, parent: Ino, name: &[u8]) -> FsResult<Option<Dirent>> {
        match self
            .db
            .get_cf(&self.cf(cf::DIRENTS), Self::dirent_key(parent, name))?
        {
            Some(v) => Ok(Some(db::decode(cf::DIRENTS, &v)?)),
            None => Ok(None),
        }
    }

    fn check_name(name: &[u8]) -> FsResult<()> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(FsError::Invalid);
        }
        Ok(())
    }

    fn dir_inode(&self, ino: Ino) -> FsResult<Inode> {
        let i = self.get_inode(ino)?;
        if i.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(i)
    }

    fn dir_is_empty(&self, ino: Ino) -> FsResult<bool> {
        let prefix = ino.to_be_bytes();
        let mut it = self.db.raw_iterator_cf(&self.cf(cf::DIRENTS));
        it.seek(prefix);
        Ok(!(it.valid() && it.key().is_some_and(|k| k.starts_with(&prefix))))
    }

    // ----- namespace operations -----

    /// Looks a name up in a directory.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> FsResult<Inode> {
        self.dir_inode(parent)?;
        let name = name.as_bytes();
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        match self.get_dirent(parent, name)? {
            Some(d) => self.get_inode(d.ino),
            None => Err(FsError::NotFound),
        }
    }

    /// Lists a directory from entry index `offset` (0 = start; "." and ".." come first).
    pub fn readdir(&self, ino: Ino, offset: usize, max: usize) -> FsResult<Vec<DirEntry>> {
        let dir = self.dir_inode(ino)?;
        let mut out = Vec::new();
        let parent = if ino == ROOT {
            ROOT
        } else {
            self.parent_of(ino)?.unwrap_or(ROOT)
        };
        let dots = [(dir.ino, b".".to_vec()), (parent, b"..".to_vec())];
        for (i, (n, name)) in dots.into_iter().enumerate() {
            if i >= offset && out.len() < max {
                out.push(DirEntry {
                    ino: n,
                    kind: Kind::Dir,
                    name,
                });
            }
        }
        let prefix = ino.to_be_bytes();
        let dirents = self.cf(cf::DIRENTS);
        let mut it = self.db.raw_iterator_cf(&dirents);
        it.seek(prefix);
        let mut idx = 2;
        while it.valid() && out.len() < max {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !k.starts_with(&prefix) {
                break;
            }
            if idx >= offset {
                let d: Dirent = db::decode(cf::DIRENTS, v)?;
                out.push(DirEntry {
                    ino: d.ino,
                    kind: d.kind,
                    name: k[8..].to_vec(),
                });
            }
            idx += 1;
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The parent of a directory, found through the reverse key kept in META.
    fn parent_of(&self, dir: Ino) -> FsResult<Option<Ino>> {
        let mut k = b"parent/".to_vec();
        k.extend_from_slice(&dir.to_be_bytes());
        match self.db.get_cf(&self.cf(cf::META), k)? {
            Some(v) => Ok(Some(db::decode(cf::META, &v)?)),
            None => Ok(None),
        }
    }

    fn set_parent(&self, b: &mut WriteBatch, dir: Ino, parent: Option<Ino>) {
        let mut k = b"parent/".to_vec();
        k.extend_from_slice(&dir.to_be_bytes());
        match parent {
            Some(p) => b.put_cf(&self.cf(cf::META), k, db::encode(&p)),
            None => b.delete_cf(&self.cf(cf::META), k),
        }
    }

    /// Creates a file, directory, symlink or special file.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        perm: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        target: Option<&Path>,
    ) -> FsResult<Inode> {
        let name = name.as_bytes();
        Self::check_name(name)?;
        let mut st = lock(&self.state);
        let mut pdir = self.dir_inode(parent)?;
        if self.get_dirent(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let ino = st.next_ino;
        st.next_ino += 1;
        let now = Ts::now();
        let target = target
            .map(|t| t.as_os_str().as_bytes().to_vec())
            .unwrap_or_default();
        let inode = Inode {
            ino,
            kind,
            perm: (perm & 0o7777) as u16,
            uid,
            gid,
            size: if kind == Kind::Symlink {
                target.len() as u64
            } else {
                0
            },
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            rdev,
            target,
        };
        let mut b = WriteBatch::default();
        b.put_cf(&self.cf(cf::META), META_NEXT_INO, db::encode(&st.next_ino));
        self.put_inode(&mut b, &inode);
        b.put_cf(
            &self.cf(cf::DIRENTS),
            Self::dirent_key(parent, name),
            db::encode(&Dirent { ino, kind }),
        );
        if kind == Kind::Dir {
            pdir.nlink += 1;
            self.set_parent(&mut b, ino, Some(parent));
        }
        pdir.mtime = now;
        pdir.ctime = now;
        self.put_inode(&mut b, &pdir);
        self.db.write(b)?;
        Ok(inode)
    }

    /// Adds a hard link to a non-directory.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &OsStr) -> FsResult<Inode> {
        let name = newname.as_bytes();
        Self::check_name(name)?;
        let _st = lock(&self.state);
        let mut inode = self.get_inode(ino)?;
        if inode.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let mut pdir = self.dir_inode(newparent)?;
        if self.get_dirent(newparent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let now = Ts::now();
        inode.nlink += 1;
        inode.ctime = now;
        pdir.mtime = now;
        pdir.ctime = now;
        let mut b = WriteBatch::default();
        b.put_cf(
            &self.cf(cf::DIRENTS),
            Self::dirent_key(newparent, name),
            db::encode(&Dirent {
                ino,
                kind: inode.kind,
            }),
        );
        self.put_inode(&mut b, &inode);
        self.put_inode(&mut b, &pdir);
        self.db.write(b)?;
        Ok(inode)
    }

    /// Removes a non-directory name.
    pub fn unlink(&self, parent: Ino, name: &OsStr) -> FsResult<()> {
        let name = name.as_bytes();
        let mut st = lock(&self.state);
        let mut pdir = self.dir_inode(parent)?;
        let d = self.get_dirent(parent, name)?.ok_or(FsError::NotFound)?;
        if d.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let now = Ts::now();
        let mut b = WriteBatch::default();
        b.delete_cf(&self.cf(cf::DIRENTS), Self::dirent_key(parent, name));
        pdir.mtime = now;
        pdir.ctime = now;
        self.put_inode(&mut b, &pdir);
        let gone = self.drop_link(&mut st, &mut b, d.ino, now)?;
        self.db.write(b)?;
        if gone {
            self.destroy_inode(&mut st, d.ino)?;
        }
        Ok(())
    }

    /// Decrements an inode's link count in `b`; true when the inode should be destroyed now.
    fn drop_link(&self, st: &mut State, b: &mut WriteBatch, ino: Ino, now: Ts) -> FsResult<bool> {
        let mut inode = self.get_inode(ino)?;
        inode.nlink = inode
            .nlink
            .saturating_sub(if inode.kind == Kind::Dir { 2 } else { 1 });
        inode.ctime = now;
        self.put_inode(b, &inode);
        if inode.nlink == 0 {
            if st.open_files.get(&ino).copied().unwrap_or(0) > 0 {
                st.orphans.insert(ino);
                return Ok(false);
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Deletes an inode with its extents, dirty data and xattrs.
    fn destroy_inode(&self, st: &mut State, ino: Ino) -> FsResult<()> {
        st.extents.pop(&ino);
        st.dirty.remove(&ino);
        let mut b = WriteBatch::default();
        b.delete_cf(&self.cf(cf::INODES), db::key1(ino));
        b.delete_range_cf(
            &self.cf(cf::EXTENTS),
            db::key2(ino, 0),
            db::key2(ino + 1, 0),
        );
        b.delete_range_cf(
            &self.cf(cf::XATTRS),
            ino.to_be_bytes(),
            (ino + 1).to_be_bytes(),
        );
        self.set_parent(&mut b, ino, None);
        self.db.write(b)?;
        // After the batch: until then extents may still refer to the dirty file.
        self.remove_dirty_file(st, ino)?;
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: Ino, name: &OsStr) -> FsResult<()> {
        let name = name.as_bytes();
        if name == b"." {
            return Err(FsError::Invalid);
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        let mut st = lock(&self.state);
        let mut pdir = self.dir_inode(parent)?;
        let d = self.get_dirent(parent, name)?.ok_or(FsError::NotFound)?;
        if d.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if !self.dir_is_empty(d.ino)? {
            return Err(FsError::NotEmpty);
        }
        let now = Ts::now();
        let mut b = WriteBatch::default();
        b.delete_cf(&self.cf(cf::DIRENTS), Self::dirent_key(parent, name));
        pdir.nlink = pdir.nlink.saturating_sub(1);
        pdir.mtime = now;
        pdir.ctime = now;
        self.put_inode(&mut b, &pdir);
        let gone = self.drop_link(&mut st, &mut b, d.ino, now)?;
        self.db.write(b)?;
        if gone {
            self.destroy_inode(&mut st, d.ino)?;
        }
        Ok(())
    }

    /// Renames, replacing an existing target (POSIX rename). `noreplace` refuses an existing
    /// target; `exchange` swaps the two names.
    pub fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        noreplace: bool,
        exchange: bool,
    ) -> FsResult<()> {
        let (name, newname) = (name.as_bytes(), newname.as_bytes());
        Self::check_name(newname)?;
        let mut st = lock(&self.state);
        let src = self.get_dirent(parent, name)?.ok_or(FsError::NotFound)?;
        self.dir_inode(newparent)?;
        let dst = self.get_dirent(newparent, newname)?;
        if parent == newparent && name == newname {
            return Ok(());
        }
        // A directory may not move into itself or its own subtree.
        for d in [Some(src), if exchange { dst } else { None }]
            .into_iter()
            .flatten()
        {
            if d.kind == Kind::Dir
                && self.is_ancestor(d.ino, if d == src { newparent } else { parent })?
            {
                return Err(FsError::Invalid);
            }
        }
        let now = Ts::now();
        let mut b = WriteBatch::default();
        // Link-count changes of the two parent directories (".." entries that move).
        let (mut dp, mut dnp) = (0i64, 0i64);
        let moved = parent != newparent;
        let mut destroy = None;
        if exchange {
            let dst = dst.ok_or(FsError::NotFound)?;
            b.put_cf(
                &self.cf(cf::DIRENTS),
                Self::dirent_key(parent, name),
                db::encode(&dst),
            );
            b.put_cf(
                &self.cf(cf::DIRENTS),
                Self::dirent_key(newparent, newname),
                db::encode(&src),
            );
            if moved && src.kind == Kind::Dir {
                self.set_parent(&mut b, src.ino, Some(newparent));
                dp -= 1;
                dnp += 1;
            }
            if moved && dst.kind == Kind::Dir {
                self.set_parent(&mut b, dst.ino, Some(parent));
                dp += 1;
                dnp -= 1;
            }
            self.touch_ctime(&mut b, dst.ino, now)?;
        } else {
            if let Some(dst) = dst {
                if noreplace {
                    return Err(FsError::Exists);
                }
                if dst.ino == src.ino {
                    // Two names of one inode: POSIX says do nothing.
                    return Ok(());
                }
                match (src.kind == Kind::Dir, dst.kind == Kind::Dir) {
                    (true, false) => return Err(FsError::NotDir),
                    (false, true) => return Err(FsError::IsDir),
                    (true, true) if !self.dir_is_empty(dst.ino)? => return Err(FsError::NotEmpty),
                    _ => {}
                }
                if dst.kind == Kind::Dir {
                    dnp -= 1;
                }
                if self.drop_link(&mut st, &mut b, dst.ino, now)? {
                    destroy = Some(dst.ino);
                }
            }
            b.delete_cf(&self.cf(cf::DIRENTS), Self::dirent_key(parent, name));
            b.put_cf(
                &self.cf(cf::DIRENTS),
                Self::dirent_key(newparent, newname),
                db::encode(&src),
            );
            if moved && src.kind == Kind::Dir {
                self.set_parent(&mut b, src.ino, Some(newparent));
                dp -= 1;
                dnp += 1;
            }
        }
        self.touch_ctime(&mut b, src.ino, now)?;
        let parents: &[(Ino, i64)] = if moved {
            &[(parent, dp), (newparent, dnp)]
        } else {
            &[(parent, dp + dnp)]
        };
        for &(p, delta) in parents {
            let mut i = self.get_inode(p)?;
            i.nlink = (i.nlink as i64 + delta).max(0) as u32;
            i.mtime = now;
            i.ctime = now;
            self.put_inode(&mut b, &i);
        }
        self.db.write(b)?;
        if let Some(ino) = destroy {
            self.destroy_inode(&mut st, ino)?;
        }
        Ok(())
    }

    /// Whether `dir` is `node` or one of its ancestors.
    fn is_ancestor(&self, dir: Ino, mut node: Ino) -> FsResult<bool> {
        for _ in 0..4096 {
            if node == dir {
                return Ok(true);
            }
            if node == ROOT {
                return Ok(false);
            }
            match self.parent_of(node)? {
                Some(p) => node = p,
                None => return Ok(false),
            }
        }
        Ok(false)
    }

    fn touch_ctime(&self, b: &mut WriteBatch, ino: Ino, now: Ts) -> FsResult<()> {
        let mut i = self.get_inode(ino)?;
        i.ctime = now;
        self.put_inode(b, &i);
        Ok(())
    }

    /// Reads a symlink's target.
    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let i = self.get_inode(ino)?;
        if i.kind != Kind::Symlink {
            return Err(FsError::Invalid);
        }
        Ok(i.target)
    }

    /// Changes attributes; a size change truncates or extends the file.
    pub fn setattr(&self, ino: Ino, a: SetAttr) -> FsResult<Inode> {
        let mut st = lock(&self.state);
        let mut i = self.get_inode(ino)?;
        let now = Ts::now();
        let mut b = WriteBatch::default();
        if let Some(m) = a.mode {
            i.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = a.uid {
            i.uid = u;
        }
        if let Some(g) = a.gid {
            i.gid = g;
        }
        if let Some(size) = a.size {
            if i.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            if i.kind != Kind::File {
                return Err(FsError::Invalid);
            }
            if size < i.size {
                self.replace_range(&mut st, &mut b, ino, size, u64::MAX - size, None)?;
            }
            if size != i.size {
                i.size = size;
                i.mtime = now;
            }
        }
        if let Some(t) = a.atime {
            i.atime = t;
        }
        if let Some(t) = a.mtime {
            i.mtime = t;
        }
        i.ctime = now;
        self.put_inode(&mut b, &i);
        self.write_extents(&mut st, ino, b)?;
        Ok(i)
    }

    /// Marks a file open (unlinked files live until the last close).
    pub fn opened(&self, ino: Ino) -> FsResult<Inode> {
        let mut st = lock(&self.state);
        let i = self.get_inode(ino)?;
        *st.open_files.entry(ino).or_default() += 1;
        Ok(i)
    }

    /// Closes a handle: commits the file's dirty data and destroys it if it was unlinked.
    pub fn released(&self, ino: Ino) -> FsResult<()> {
        let mut st = lock(&self.state);
        let left = match st.open_files.get_mut(&ino) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            st.open_files.remove(&ino);
            self.read_ahead_closed(ino);
            if st.orphans.remove(&ino) {
                return self.destroy_inode(&mut st, ino);
            }
            self.commit_locked(&mut st, ino, true)?;
        }
        Ok(())
    }

    // ----- extended attributes -----

    fn xattr_key(ino: Ino, name: &[u8]) -> Vec<u8> {
        Self::dirent_key(ino, name)
    }

    /// Sets an extended attribute (`create`: must not exist; `replace`: must exist).
    pub fn setxattr(
        &self,
        ino: Ino,
        name: &OsStr,
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> FsResult<()> {
        let _st = lock(&self.state);
        let mut i = self.get_inode(ino)?;
        let k = Self::xattr_key(ino, name.as_bytes());
        let exists = self.db.get_cf(&self.cf(cf::XATTRS), &k)?.is_some();
        if create && exists {
            return Err(FsError::Exists);
        }
        if replace && !exists {
            return Err(FsError::NoAttr);
        }
        let mut b = WriteBatch::default();
        b.put_cf(&self.cf(cf::XATTRS), k, value);
        i.ctime = Ts::now();
        self.put_inode(&mut b, &i);
        self.db.write(b)?;
        Ok(())
    }

    /// Reads an extended attribute.
    pub fn getxattr(&self, ino: Ino, name: &OsStr) -> FsResult<Vec<u8>> {
        self.get_inode(ino)?;
        self.db
            .get_cf(&self.cf(cf::XATTRS), Self::xattr_key(ino, name.as_bytes()))?
            .ok_or(FsError::NoAttr)
    }

    /// Lists extended attribute names.
    pub fn listxattr(&self, ino: Ino) -> FsResult<Vec<Vec<u8>>> {
        self.get_inode(ino)?;
        let prefix = ino.to_be_bytes();
        let mut out = Vec::new();
        let x = self.cf(cf::XATTRS);
        let mut it = self.db.raw_iterator_cf(&x);
        it.seek(prefix);
        while it.valid() {
            let Some(k) = it.key() else { break };
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(k[8..].to_vec());
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Removes an extended attribute.
    pub fn removexattr(&self, ino: Ino, name: &OsStr) -> FsResult<()> {
        let _st = lock(&self.state);
        let mut i = self.get_inode(ino)?;
        let k = Self::xattr_key(ino, name.as_bytes());
        if self.db.get_cf(&self.cf(cf::XATTRS), &k)?.is_none() {
            return Err(FsError::NoAttr);
        }
        let mut b = WriteBatch::default();
        b.delete_cf(&self.cf(cf::XATTRS), k);
        i.ctime = Ts::now();
        self.put_inode(&mut b, &i);
        self.db.write(b)?;
        Ok(())
    }

    /// Numbers for statfs: the space the suppliers granted, as room for file data (each
    /// block puts one shard on each of k+m suppliers, so k/(k+m) of the granted bytes hold
    /// data). Asked of the suppliers at most every 30 s when all of them answered (every
    /// second otherwise); cached in between.
    pub fn stats(&self) -> FsResult<FsStats> {
        let inodes = self
            .db
            .property_int_value_cf(&self.cf(cf::INODES), "rocksdb.estimate-num-keys")?
            .unwrap_or(0);
        let mut cached = lock(&self.space);
        let fresh = cached
            .as_ref()
            .is_some_and(|(at, ttl, _)| at.elapsed() < *ttl);
        if !fresh {
            let suppliers = self.store.suppliers();
            let answers: Vec<(u64, u64)> = std::thread::scope(|s| {
                let hs: Vec<_> = suppliers
                    .iter()
                    .map(|sup| s.spawn(move || self.store.usage(sup)))
                    .collect();
                hs.into_iter()
                    .filter_map(|h| h.join().ok())
                    .filter_map(Result::ok)
                    .collect()
            });
            let (used, granted) = answers
                .iter()
                .fold((0u64, 0u64), |(u, g), (au, ag)| (u + au, g + ag));
            let r = self.cfg.redundancy;
            let scale = |b: u64| b / r.total() as u64 * r.k as u64;
            // A partial answer (suppliers still being discovered right after a mount, or some
            // not answering) is asked again soon rather than shown for the full 30 s.
            let ttl = if !answers.is_empty() && answers.len() == suppliers.len() {
                std::time::Duration::from_secs(30)
            } else {
                std::time::Duration::from_secs(1)
            };
            *cached = Some((Instant::now(), ttl, (scale(used), scale(granted))));
        }
        let (used_bytes, total_bytes) = cached.as_ref().map(|(_, _, v)| *v).unwrap_or((0, 0));
        Ok(FsStats {
            used_bytes,
            total_bytes,
            inodes,
        })
    }

    /// How long the engine has run.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests;
