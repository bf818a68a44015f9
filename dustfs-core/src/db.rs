//! The local database: RocksDB with one column family per kind of record.
//!
//! Every value is a version byte followed by a postcard encoding, so a later dustfs can read
//! what an earlier one wrote (see [`encode`] / [`decode`]). Keys are big-endian integers and raw
//! names so that RocksDB's ordering is the natural one (a directory's entries by name, a file's
//! extents by offset).

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BoundColumnFamily, ColumnFamilyDescriptor, DBWithThreadMode, MultiThreaded, Options,
};
use serde::{Serialize, de::DeserializeOwned};

/// The RocksDB handle type used throughout.
pub type Rdb = DBWithThreadMode<MultiThreaded>;

/// Current version of every persisted record format.
pub const RECORD_VERSION: u8 = 1;

/// Column families and what each holds.
pub mod cf {
    /// Inode number → inode record.
    pub const INODES: &str = "inodes";
    /// Parent inode number + name → directory entry.
    pub const DIRENTS: &str = "dirents";
    /// Inode number + file offset → extent.
    pub const EXTENTS: &str = "extents";
    /// Inode number + sequence → dirty bytes not yet chunked. Written by earlier versions
    /// only: dirty bytes now live in `db/dirty/<ino>` files and old values are moved there.
    pub const DIRTY: &str = "dirty";
    /// Inode number + name → extended attribute value.
    pub const XATTRS: &str = "xattrs";
    /// Chunk id → where the sealed chunk lives (the deduplication index).
    pub const CHUNKS: &str = "chunks";
    /// Block number → block record (redundancy, shards, suppliers, health).
    pub const BLOCKS: &str = "blocks";
    /// Block number + offset → sealed chunk bytes of the block still being filled. Written by
    /// earlier versions only: the open block now lives in `db/open/<block>`.
    pub const OPEN: &str = "open";
    /// Block number + shard index → the shard's size, waiting for upload (the upload queue;
    /// earlier versions stored the shard bytes, which are still uploaded as they are).
    pub const OUTBOX: &str = "outbox";
    /// Block number → block bytes. Unused: the block cache is `db/blockcache/<block>` files;
    /// what earlier versions cached here is dropped at open.
    pub const CACHE: &str = "cache";
    /// Named counters and settings.
    pub const META: &str = "meta";
    /// Families whose values are large byte strings.
    pub const BULK: &[&str] = &[DIRTY, OPEN, OUTBOX, CACHE];
    /// All of them, in creation order.
    pub const ALL: &[&str] = &[
        INODES, DIRENTS, EXTENTS, DIRTY, XATTRS, CHUNKS, BLOCKS, OPEN, OUTBOX, CACHE, META,
    ];
}

/// Errors of the local database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// RocksDB failed (IO error, corruption, lock held by another process).
    #[error("database: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A record could not be decoded.
    #[error("corrupt record in {cf}: {msg}")]
    Corrupt {
        /// column family
        cf: &'static str,
        /// what went wrong
        msg: String,
    },
    /// A record was written by a newer dustfs.
    #[error("record version {0} is newer than this dustfs understands")]
    Version(u8),
}

/// Opens (creating if needed) the database at `path`.
pub fn open(path: &Path) -> Result<Arc<Rdb>, DbError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    opts.set_max_total_wal_size(128 << 20);
    // Bounded memory: memtables are small (the defaults, 64 MiB per family, let a long copy
    // hold hundreds of MiB of dirty data and shards in memtables), their total has a budget,
    // and every family shares one 32 MiB block cache.
    opts.set_db_write_buffer_size(48 << 20);
    let cache = rocksdb::Cache::new_lru_cache(32 << 20)?;
    let cfs = cf::ALL.iter().map(|name| {
        let mut o = Options::default();
        let mut t = rocksdb::BlockBasedOptions::default();
        t.set_block_cache(&cache);
        o.set_block_based_table_factory(&t);
        o.set_write_buffer_size(if cf::BULK.contains(name) {
            8 << 20
        } else {
            4 << 20
        });
        o.set_max_write_buffer_number(2);
        if cf::BULK.contains(name) {
            // Large values (dirty writes, sealed chunks, shards, cached blocks) go to blob
            // files, so compaction does not rewrite megabytes of data again and again.
            o.set_enable_blob_files(true);
            o.set_min_blob_size(32 << 10);
            o.set_enable_blob_gc(true);
        }
        ColumnFamilyDescriptor::new(*name, o)
    });
    Ok(Arc::new(Rdb::open_cf_descriptors(&opts, path, cfs)?))
}

/// Gets a column family handle. All families are created at open, so absence is a bug.
pub fn handle<'a>(db: &'a Rdb, name: &'static str) -> Arc<BoundColumnFamily<'a>> {
    match db.cf_handle(name) {
        Some(h) => h,
        None => unreachable!("column family {name} is created at open"),
    }
}

/// Encodes a record: version byte + postcard.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    match postcard::to_extend(v, out) {
        Ok(o) => {
            out = o;
            out
        }
        // Serializing our own plain data structures into a Vec cannot fail.
        Err(e) => unreachable!("postcard encoding into a Vec failed: {e}"),
    }
}

/// Decodes a record written by [`encode`].
pub fn decode<T: DeserializeOwned>(cf: &'static str, bytes: &[u8]) -> Result<T, DbError> {
    match bytes.first() {
        Some(&RECORD_VERSION) => postcard::from_bytes(&bytes[1..]).map_err(|e| DbError::Corrupt {
            cf,
            msg: e.to_string(),
        }),
        Some(v) => Err(DbError::Version(*v)),
        None => Err(DbError::Corrupt {
            cf,
            msg: "empty record".into(),
        }),
    }
}

/// Big-endian key of one integer.
pub fn key1(a: u64) -> [u8; 8] {
    a.to_be_bytes()
}

/// Big-endian key of two integers.
pub fn key2(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

/// Reads a big-endian u64 at `at` of a key, if the key is long enough.
pub fn be_u64(key: &[u8], at: usize) -> Option<u64> {
    key.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
    struct R {
        a: u64,
        b: String,
    }

    #[test]
    fn records_round_trip_and_versions_are_checked() {
        let r = R {
            a: 7,
            b: "x".into(),
        };
        let e = encode(&r);
        assert_eq!(e[0], RECORD_VERSION);
        assert_eq!(decode::<R>("t", &e).unwrap(), r);
        let mut newer = e.clone();
        newer[0] = 99;
        assert!(matches!(
            decode::<R>("t", &newer),
            Err(DbError::Version(99))
        ));
        assert!(decode::<R>("t", &[]).is_err());
        assert!(decode::<R>("t", &[1, 0xff]).is_err());
    }

    #[test]
    fn keys_sort_numerically() {
        assert!(key2(1, 255) < key2(1, 256));
        assert!(key2(1, u64::MAX) < key2(2, 0));
        assert_eq!(be_u64(&key2(3, 4), 8), Some(4));
    }
}
