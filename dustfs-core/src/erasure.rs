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
    mut shards: Vec<Option<Vec<u8>>>,
) -> Result<Vec<u8>, ErasureError> {
    let k = r.k as usize;
    shards.resize(r.total(), None);
    if shards[..k].iter().all(Option::is_some)
        && let Some(block) = join(
            shards[..k]
                .iter()
                .flatten()
                .map(|s| s.get(HEADER_LEN..).unwrap_or_default()),
            block_len,
        )
    {
        return Ok(block);
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
    decode(r, block_len, payloads)
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
                                          lost in proptest::sample::subsequence(vec![0usize, 1, 2, 3, 4, 5], 0..=2)) {
            let r = Redundancy::default();
            let shards = encode(r, &block).unwrap();
            prop_assert_eq!(shards.len(), 6);
            let mut p = payloads(&shards);
            for i in &lost { p[*i] = None; }
            prop_assert_eq!(decode(r, block.len(), p).unwrap(), block.clone());
            let mut whole: Vec<_> = shards.into_iter().map(|(_, b)| Some(b)).collect();
            for i in &lost { whole[*i] = None; }
            prop_assert_eq!(decode_shards(r, block.len(), whole).unwrap(), block);
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
