//! Reed-Solomon erasure coding of blocks into k data + m parity shards.
//!
//! The code is systematic: data shard i is the plain slice `[i*S, (i+1)*S)` of the block
//! (S = ceil(len / k), the last one zero-padded), so a read needs only the data shards that
//! cover its range, and any k of the k+m shards rebuild everything.

use reed_solomon_erasure::galois_8::ReedSolomon;
use serde::{Deserialize, Serialize};

use crate::shard::{self, HEADER_LEN, ShardError, ShardHeader, ShardId};

/// Redundancy of a block: k data shards, m parity shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redundancy {
    /// Data shards.
    pub k: u8,
    /// Parity shards.
    pub m: u8,
}

impl Default for Redundancy {
    fn default() -> Self {
        Self { k: 4, m: 2 }
    }
}

impl Redundancy {
    /// Total shards per block.
    pub fn total(&self) -> usize {
        self.k as usize + self.m as usize
    }
}

/// Errors of erasure coding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErasureError {
    /// k or m out of range (k ≥ 1, m ≥ 0, k + m ≤ 255).
    #[error("invalid redundancy {k}+{m}")]
    Params {
        /// data shards
        k: u8,
        /// parity shards
        m: u8,
    },
    /// Fewer than k valid shards are available.
    #[error("only {have} of the {need} shards needed to rebuild the block are available")]
    NotEnough {
        /// valid shards at hand
        have: usize,
        /// shards needed (k)
        need: usize,
    },
    /// A shard failed to parse or did not match its id.
    #[error("bad shard: {0}")]
    Shard(#[from] ShardError),
    /// The coder rejected the shards (inconsistent sizes).
    #[error("reed-solomon: {0:?}")]
    Codec(reed_solomon_erasure::Error),
}

fn codec(r: Redundancy) -> Result<ReedSolomon, ErasureError> {
    if r.k == 0 {
        return Err(ErasureError::Params { k: r.k, m: r.m });
    }
    ReedSolomon::new(r.k as usize, r.m.max(1) as usize)
        .map_err(|_| ErasureError::Params { k: r.k, m: r.m })
}

/// Encodes a block into k+m shards (full shard bytes with header) and their ids.
///
/// Each shard is built in place: a data shard is its header and one copy of its part of the
/// block; parity is computed straight into the parity shards' payloads (a profile of the
/// pipeline benchmark showed the earlier version copying every byte two and a half times).
pub fn encode(r: Redundancy, block: &[u8]) -> Result<Vec<(ShardId, Vec<u8>)>, ErasureError> {
    let k = r.k as usize;
    let rs = codec(r)?;
    let size = block.len().div_ceil(k).max(1);
    let head = |i: usize| {
        shard::header(
            ShardHeader {
                k: r.k,
                m: r.m,
                index: i as u8,
                block_len: block.len() as u32,
            },
            size,
        )
    };
    let mut shards: Vec<Vec<u8>> = (0..k)
        .map(|i| {
            let start = (i * size).min(block.len());
            let end = ((i + 1) * size).min(block.len());
            let mut s = Vec::with_capacity(HEADER_LEN + size);
            s.extend_from_slice(&head(i));
            s.extend_from_slice(&block[start..end]);
            s.resize(HEADER_LEN + size, 0);
            s
        })
        .collect();
    // reed-solomon-erasure needs at least one parity shard; with m = 0 we drop it afterwards.
    let mut parity: Vec<Vec<u8>> = (k..k + r.m.max(1) as usize)
        .map(|i| {
            let mut s = vec![0u8; HEADER_LEN + size];
            s[..HEADER_LEN].copy_from_slice(&head(i));
            s
        })
        .collect();
    {
        let data: Vec<&[u8]> = shards.iter().map(|s| &s[HEADER_LEN..]).collect();
        let mut out: Vec<&mut [u8]> = parity.iter_mut().map(|s| &mut s[HEADER_LEN..]).collect();
        rs.encode_sep(&data, &mut out)
            .map_err(ErasureError::Codec)?;
    }
    shards.extend(parity);
    shards.truncate(r.total());
    Ok(shards.into_iter().map(|s| (ShardId::of(&s), s)).collect())
}

/// Rebuilds a block from any k of its shards (payloads, by index; `None` = missing).
pub fn decode(
    r: Redundancy,
    block_len: usize,
    mut payloads: Vec<Option<Vec<u8>>>,
) -> Result<Vec<u8>, ErasureError> {
    let k = r.k as usize;
    payloads.resize(r.total(), None);
    let have = payloads.iter().filter(|p| p.is_some()).count();
    if have < k {
        return Err(ErasureError::NotEnough { have, need: k });
    }
    if payloads[..k].iter().any(Option::is_none) {
        if r.m == 0 {
            return Err(ErasureError::NotEnough { have, need: k });
        }
        let rs = codec(r)?;
        rs.reconstruct_data(&mut payloads)
            .map_err(ErasureError::Codec)?;
    }
    join(payloads[..k].iter().flatten().map(Vec::as_slice), block_len)
        .ok_or(ErasureError::NotEnough { have, need: k })
}

/// The block from its data shards' payloads, in order; `None` if they are too short.
fn join<'a>(data: impl Iterator<Item = &'a [u8]>, block_len: usize) -> Option<Vec<u8>> {
    let mut block = Vec::with_capacity(block_len);
    for p in data {
        block.extend_from_slice(p);
    }
    if block.len() < block_len {
        return None;
    }
    block.truncate(block_len);
    Some(block)
}

/// [`decode`] from whole shards (header and payload, already verified): when the k data
/// shards are all there, the block is put together from their payloads where they lie, with
/// no copy of each payload first (the common case of a read: one copy fewer of every byte).
pub fn decode_shards(
    r: Redundancy,
    block_len: usize,
    shards: Vec<Option<Vec<u8>>>,
) -> Result<Vec<u8>, ErasureError> {
    Ok(decode_parts(r, block_len, shards)?.into_vec())
}

/// A decoded block: its k data shards where they lie (when all of them came, the common
/// case, nothing is copied: a reader takes its chunks straight out of the shards), or one
/// buffer after a rebuild.
#[derive(Debug)]
pub enum BlockBytes {
    /// Whole data shards (header, then `size` payload bytes each); the block is their
    /// payloads one after the other, cut at `len`.
    Shards {
        /// The k data shards, in order.
        shards: Vec<Vec<u8>>,
        /// Payload bytes per shard.
        size: usize,
        /// The block's length.
        len: usize,
    },
    /// The block in one buffer.
    Whole(Vec<u8>),
}

impl BlockBytes {
    /// The block's length.
    pub fn len(&self) -> usize {
        match self {
            Self::Shards { len, .. } => *len,
            Self::Whole(b) => b.len(),
        }
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes `[off, off + len)` of the block (`None` past its end).
    pub fn slice(&self, off: usize, len: usize) -> Option<Vec<u8>> {
        let end = off.checked_add(len)?;
        if end > self.len() {
            return None;
        }
        match self {
            Self::Whole(b) => b.get(off..end).map(<[u8]>::to_vec),
            Self::Shards { shards, size, .. } => {
                let mut out = Vec::with_capacity(len);
                let mut at = off;
                while at < end {
                    let (i, within) = (at / size, at % size);
                    let n = (size - within).min(end - at);
                    let from = HEADER_LEN + within;
                    out.extend_from_slice(shards.get(i)?.get(from..from + n)?);
                    at += n;
                }
                Some(out)
            }
        }
    }

    /// The block in one buffer.
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Self::Whole(b) => b,
            Self::Shards { shards, len, .. } => join(
                shards
                    .iter()
                    .map(|s| s.get(HEADER_LEN..).unwrap_or_default()),
                len,
            )
            .unwrap_or_default(),
        }
    }
}

/// [`decode_shards`] without joining the data shards into one buffer.
pub fn decode_parts(
    r: Redundancy,
    block_len: usize,
    mut shards: Vec<Option<Vec<u8>>>,
) -> Result<BlockBytes, ErasureError> {
    let k = r.k as usize;
    let size = block_len.div_ceil(k).max(1);
    shards.resize(r.total(), None);
    if shards[..k]
        .iter()
        .all(|s| s.as_ref().is_some_and(|s| s.len() == HEADER_LEN + size))
    {
        return Ok(BlockBytes::Shards {
            shards: shards.into_iter().take(k).flatten().collect(),
            size,
            len: block_len,
        });
    }
    let payloads = shards
        .into_iter()
        .map(|s| {
            s.map(|mut b| {
                b.drain(..HEADER_LEN.min(b.len()));
                b
            })
        })
        .collect();
    decode(r, block_len, payloads).map(BlockBytes::Whole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn payloads(shards: &[(ShardId, Vec<u8>)]) -> Vec<Option<Vec<u8>>> {
        shards
            .iter()
            .map(|(id, b)| Some(shard::parse(b, Some(id)).unwrap().1.to_vec()))
            .collect()
    }

    proptest! {
        #[test]
        fn any_k_shards_rebuild_the_block(block in proptest::collection::vec(any::<u8>(), 0..5000),
                                          lost in proptest::sample::subsequence(vec![0usize, 1, 2, 3, 4, 5], 0..=2),
                                          off in 0usize..5000, len in 0usize..5000) {
            let r = Redundancy::default();
            let shards = encode(r, &block).unwrap();
            prop_assert_eq!(shards.len(), 6);
            let mut p = payloads(&shards);
            for i in &lost { p[*i] = None; }
            prop_assert_eq!(decode(r, block.len(), p).unwrap(), block.clone());
            let mut whole: Vec<_> = shards.into_iter().map(|(_, b)| Some(b)).collect();
            for i in &lost { whole[*i] = None; }
            prop_assert_eq!(decode_shards(r, block.len(), whole.clone()).unwrap(), block.clone());
            // Any slice taken from the parts is that slice of the block; past its end, none.
            let parts = decode_parts(r, block.len(), whole).unwrap();
            prop_assert_eq!(parts.len(), block.len());
            let (a, b) = (off.min(block.len()), len.min(block.len() - off.min(block.len())));
            prop_assert_eq!(parts.slice(a, b), Some(block[a..a + b].to_vec()));
            prop_assert_eq!(parts.slice(a, block.len() - a + 1), None);
        }
    }

    #[test]
    fn data_shards_are_plain_slices() {
        let block: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let shards = encode(Redundancy::default(), &block).unwrap();
        let (_, p0) = shard::parse(&shards[0].1, None).unwrap();
        assert_eq!(p0, &block[..250]);
    }

    #[test]
    fn three_lost_of_four_plus_two_is_an_error() {
        let r = Redundancy::default();
        let mut p = payloads(&encode(r, b"hello world").unwrap());
        p[0] = None;
        p[2] = None;
        p[5] = None;
        assert!(matches!(
            decode(r, 11, p),
            Err(ErasureError::NotEnough { have: 3, need: 4 })
        ));
    }
}
