//! Records of the namespace and the data path, as persisted in the local database.

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::erasure::Redundancy;
use crate::fsm::block::BlockState;
use crate::shard::ShardId;
use crate::store::SupplierId;

/// An inode number.
pub type Ino = u64;
/// The root directory's inode number.
pub const ROOT: Ino = 1;
/// Longest name in a directory, as on most Linux filesystems.
pub const NAME_MAX: usize = 255;

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
}

/// A timestamp: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Ts {
    /// Seconds since the epoch (may be negative).
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl Ts {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from(std::time::SystemTime::now())
    }
}

impl From<std::time::SystemTime> for Ts {
    fn from(t: std::time::SystemTime) -> Self {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Ts {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Ts {
                        secs: -(d.as_secs() as i64),
                        nanos: 0,
                    }
                } else {
                    Ts {
                        secs: -(d.as_secs() as i64) - 1,
                        nanos: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }
}

impl From<Ts> for std::time::SystemTime {
    fn from(t: Ts) -> Self {
        let base = std::time::UNIX_EPOCH;
        if t.secs >= 0 {
            base + std::time::Duration::new(t.secs as u64, t.nanos)
        } else {
            base - std::time::Duration::from_secs(t.secs.unsigned_abs())
                + std::time::Duration::from_nanos(t.nanos as u64)
        }
    }
}

/// An inode: a file, directory, symlink or special file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    /// Inode number.
    pub ino: Ino,
    /// What it is.
    pub kind: Kind,
    /// Permission bits (mode & 0o7777).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Length in bytes (for symlinks, of the target).
    pub size: u64,
    /// Last access.
    pub atime: Ts,
    /// Last content change.
    pub mtime: Ts,
    /// Last status change.
    pub ctime: Ts,
    /// Creation.
    pub crtime: Ts,
    /// Hard links (for directories: 2 + subdirectories).
    pub nlink: u32,
    /// Device number for device files.
    pub rdev: u32,
    /// Symlink target.
    pub target: Vec<u8>,
}

/// A directory entry's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dirent {
    /// The inode it names.
    pub ino: Ino,
    /// Its kind (saves a lookup in readdir).
    pub kind: Kind,
}

/// Where an extent's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Src {
    /// From a chunk, starting `off` bytes into its plaintext.
    Chunk {
        /// chunk id
        id: ChunkId,
        /// offset into the chunk's plaintext
        off: u64,
    },
    /// From a dirty write not yet chunked, `off` bytes into it.
    Dirty {
        /// where the write starts in the inode's dirty file
        pos: u64,
        /// offset into the write
        off: u64,
    },
}

impl Src {
    /// The same source moved `d` bytes further.
    pub fn advance(self, d: u64) -> Self {
        match self {
            Src::Chunk { id, off } => Src::Chunk { id, off: off + d },
            Src::Dirty { pos, off } => Src::Dirty { pos, off: off + d },
        }
    }
}

/// A run of a file's bytes. Gaps between extents are holes and read as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Length in bytes.
    pub len: u64,
    /// Where the bytes are.
    pub src: Src,
}

/// Where a sealed chunk lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLoc {
    /// Block number.
    pub block: u64,
    /// Offset of the sealed chunk in the block.
    pub off: u32,
    /// Length of the sealed chunk.
    pub len: u32,
}

/// One shard of a block and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRec {
    /// Content hash of the shard.
    pub id: ShardId,
    /// The supplier that acknowledged it, if any.
    pub supplier: Option<SupplierId>,
}

/// A sealed block: its shards and health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    /// k and m.
    pub redundancy: Redundancy,
    /// Block length before padding.
    pub len: u32,
    /// Health state.
    pub state: BlockState,
    /// k+m shards, by index.
    pub shards: Vec<ShardRec>,
}

impl BlockRecord {
    /// Shards acknowledged by a supplier.
    pub fn stored(&self) -> usize {
        self.shards.iter().filter(|s| s.supplier.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::File),
            Just(Kind::Dir),
            Just(Kind::Symlink),
            Just(Kind::Fifo),
            Just(Kind::Socket),
            Just(Kind::CharDev),
            Just(Kind::BlockDev),
        ]
    }

    fn ts() -> impl Strategy<Value = Ts> {
        (any::<i64>(), 0u32..1_000_000_000).prop_map(|(secs, nanos)| Ts { secs, nanos })
    }

    prop_compose! {
        fn inode()(ino in any::<u64>(), kind in kind(), perm in 0u16..0o7777, uid in any::<u32>(),
                   gid in any::<u32>(), size in any::<u64>(), t in [ts(), ts(), ts(), ts()],
                   nlink in any::<u32>(), rdev in any::<u32>(),
                   target in proptest::collection::vec(any::<u8>(), 0..64)) -> Inode {
            Inode { ino, kind, perm, uid, gid, size, atime: t[0], mtime: t[1], ctime: t[2],
                    crtime: t[3], nlink, rdev, target }
        }
    }

    fn extent() -> impl Strategy<Value = Extent> {
        let src = prop_oneof![
            (any::<[u8; 32]>(), any::<u64>()).prop_map(|(id, off)| Src::Chunk {
                id: ChunkId(id),
                off
            }),
            (any::<u64>(), any::<u64>()).prop_map(|(pos, off)| Src::Dirty { pos, off }),
        ];
        (any::<u64>(), src).prop_map(|(len, src)| Extent { len, src })
    }

    fn block() -> impl Strategy<Value = BlockRecord> {
        (
            1u8..16,
            0u8..8,
            any::<u32>(),
            proptest::collection::vec(
                (any::<[u8; 32]>(), proptest::option::of("[a-zA-Z0-9]{1,52}")),
                0..24,
            ),
        )
            .prop_map(|(k, m, len, shards)| BlockRecord {
                redundancy: Redundancy { k, m },
                len,
                state: BlockState::Healthy,
                shards: shards
                    .into_iter()
                    .map(|(id, supplier)| ShardRec {
                        id: ShardId(id),
                        supplier,
                    })
                    .collect(),
            })
    }

    proptest! {
        #[test]
        fn metadata_records_round_trip(i in inode(), e in extent(), b in block(),
                                       k in kind(), ino in any::<u64>(),
                                       loc in (any::<u64>(), any::<u32>(), any::<u32>())) {
            prop_assert_eq!(db::decode::<Inode>("t", &db::encode(&i)).unwrap(), i.clone());
            prop_assert_eq!(db::decode::<Extent>("t", &db::encode(&e)).unwrap(), e);
            prop_assert_eq!(db::decode::<BlockRecord>("t", &db::encode(&b)).unwrap(), b.clone());
            let d = Dirent { ino, kind: k };
            prop_assert_eq!(db::decode::<Dirent>("t", &db::encode(&d)).unwrap(), d);
            let l = ChunkLoc { block: loc.0, off: loc.1, len: loc.2 };
            prop_assert_eq!(db::decode::<ChunkLoc>("t", &db::encode(&l)).unwrap(), l);
            // The same records as a metadata stream, as a snapshot writes it.
            let mut stream = Vec::new();
            stream.extend(crate::fs::encode_stream_record(1, &i.ino.to_be_bytes(), &db::encode(&i)));
            stream.extend(crate::fs::encode_stream_record(2, b"dirent", &db::encode(&d)));
            stream.extend(crate::fs::encode_stream_record(3, &[0; 16], &db::encode(&e)));
            stream.extend(crate::fs::encode_stream_record(4, b"user.x", b"raw value"));
            stream.extend(crate::fs::encode_stream_record(5, &[1; 32], &db::encode(&l)));
            stream.extend(crate::fs::encode_stream_record(6, &[0; 8], &db::encode(&b)));
            prop_assert_eq!(crate::fs::check_stream(&stream).unwrap(), 6);
            // A record cut short is left for later (streams arrive in pieces), not misread.
            prop_assert_eq!(crate::fs::check_stream(&stream[..stream.len() - 1]).unwrap(), 5);
        }

        #[test]
        fn garbage_records_are_refused_without_panicking(
            b in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let _ = db::decode::<Inode>("t", &b);
            let _ = db::decode::<Extent>("t", &b);
            let _ = db::decode::<BlockRecord>("t", &b);
            let _ = crate::fs::check_stream(&b);
        }
    }
}

/// The bytes of a read ([`super::Engine::read_shared`]): a range of one chunk's plaintext,
/// shared with the chunk cache, or bytes assembled for this read.
#[derive(Debug, Clone)]
pub enum ReadBytes {
    /// `range` of a chunk's plaintext (checked to lie within it when made).
    Shared(std::sync::Arc<Vec<u8>>, std::ops::Range<usize>),
    /// Bytes of their own.
    Owned(Vec<u8>),
}

impl ReadBytes {
    /// The bytes as a vector of their own (a copy only for a shared range).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Self::Shared(p, r) => p.get(r).map(<[u8]>::to_vec).unwrap_or_default(),
            Self::Owned(v) => v,
        }
    }
}

impl std::ops::Deref for ReadBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Shared(p, r) => p.get(r.clone()).unwrap_or_default(),
            Self::Owned(v) => v,
        }
    }
}
