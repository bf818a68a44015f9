//! The shard format: one of the k+m erasure-coded pieces of a block, as a supplier stores it.
//!
//! Byte layout (version 1, all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `DSHD` |
//! | 4 | 1 | format version (1) |
//! | 5 | 1 | k (data shards) |
//! | 6 | 1 | m (parity shards) |
//! | 7 | 1 | index of this shard (0..k+m; below k = data) |
//! | 8 | 4 | block length in bytes (before padding) |
//! | 12 | 4 | payload length |
//! | 16 | n | payload |
//!
//! A shard's id is the BLAKE3 hash of all its bytes, header included, so any change to a stored
//! shard is caught on fetch. Suppliers only ever see this: sealed chunk bytes and a header that
//! says nothing about the files inside.

use serde::{Deserialize, Serialize};

/// Magic bytes at the start of every shard.
pub const MAGIC: &[u8; 4] = b"DSHD";
/// Current shard format version.
pub const VERSION: u8 = 1;
/// Length of the shard header.
pub const HEADER_LEN: usize = 16;

/// A shard id: BLAKE3 of the shard's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId(pub [u8; 32]);

impl ShardId {
    /// Hashes shard bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Lower-case hex, used as a file name by suppliers.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShardId({})", &self.to_hex()[..16])
    }
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Errors when parsing shard bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardError {
    /// Fewer bytes than a header, or a payload length that does not match.
    #[error("shard is truncated or has a wrong length")]
    Length,
    /// Not a dustfs shard.
    #[error("not a dustfs shard (bad magic)")]
    Magic,
    /// Written by a newer dustfs.
    #[error("unsupported shard format version {0}")]
    Version(u8),
    /// The shard's hash is not the id it was fetched under.
    #[error("shard content does not match its id")]
    Hash,
}

/// The decoded header of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    /// Data shards of the block.
    pub k: u8,
    /// Parity shards of the block.
    pub m: u8,
    /// This shard's index.
    pub index: u8,
    /// Length of the block before padding.
    pub block_len: u32,
}

/// The header bytes of a shard whose payload is `payload_len` bytes long.
pub fn header(h: ShardHeader, payload_len: usize) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..4].copy_from_slice(MAGIC);
    out[4..8].copy_from_slice(&[VERSION, h.k, h.m, h.index]);
    out[8..12].copy_from_slice(&h.block_len.to_le_bytes());
    out[12..16].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out
}

/// Builds shard bytes from a header and payload.
pub fn build(h: ShardHeader, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.extend_from_slice(&header(h, payload.len()));
    v.extend_from_slice(payload);
    v
}

/// Parses shard bytes; when `expected` is given, also checks the hash.
pub fn parse<'a>(
    bytes: &'a [u8],
    expected: Option<&ShardId>,
) -> Result<(ShardHeader, &'a [u8]), ShardError> {
    if bytes.len() < HEADER_LEN {
        return Err(ShardError::Length);
    }
    if &bytes[0..4] != MAGIC {
        return Err(ShardError::Magic);
    }
    if bytes[4] != VERSION {
        return Err(ShardError::Version(bytes[4]));
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let payload_len = u32_at(12) as usize;
    if bytes.len() != HEADER_LEN + payload_len {
        return Err(ShardError::Length);
    }
    if let Some(id) = expected
        && ShardId::of(bytes) != *id
    {
        return Err(ShardError::Hash);
    }
    let h = ShardHeader {
        k: bytes[5],
        m: bytes[6],
        index: bytes[7],
        block_len: u32_at(8),
    };
    Ok((h, &bytes[HEADER_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(k in 1u8..16, m in 0u8..8, index in any::<u8>(), block_len in any::<u32>(),
                      payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let h = ShardHeader { k, m, index, block_len };
            let b = build(h, &payload);
            let id = ShardId::of(&b);
            let (h2, p2) = parse(&b, Some(&id)).unwrap();
            prop_assert_eq!(h2, h);
            prop_assert_eq!(p2, &payload[..]);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&bytes, None);
        }
    }

    #[test]
    fn a_fixture_of_version_1_still_decodes() {
        // Written by version 1; must decode forever.
        let fixture = hex::decode("44534844010402020400000003000000616263").unwrap();
        let (h, p) = parse(&fixture, None).unwrap();
        assert_eq!(
            h,
            ShardHeader {
                k: 4,
                m: 2,
                index: 2,
                block_len: 4
            }
        );
        assert_eq!(p, b"abc");
    }

    #[test]
    fn corruption_is_detected() {
        let b = build(
            ShardHeader {
                k: 4,
                m: 2,
                index: 0,
                block_len: 3,
            },
            b"abc",
        );
        let id = ShardId::of(&b);
        let mut bad = b.clone();
        bad[17] ^= 1;
        assert_eq!(parse(&bad, Some(&id)), Err(ShardError::Hash));
        assert_eq!(parse(&b[..10], None), Err(ShardError::Length));
    }
}
