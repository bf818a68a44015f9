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
        /// dirty write sequence number
        seq: u64,
        /// offset into the dirty bytes
        off: u64,
    },
}

impl Src {
    /// The same source moved `d` bytes further.
    pub fn advance(self, d: u64) -> Self {
        match self {
            Src::Chunk { id, off } => Src::Chunk { id, off: off + d },
            Src::Dirty { seq, off } => Src::Dirty { seq, off: off + d },
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
