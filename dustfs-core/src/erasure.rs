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

/// Payload bytes per shard of a block of `len` bytes: ceil(len / k), at least 1.
pub fn shard_size(r: Redundancy, len: usize) -> usize {
    len.div_ceil((r.k as usize).max(1)).max(1)
}

/// Shard `i`'s header, for a block of `len` bytes.
pub fn shard_header(r: Redundancy, len: usize, i: usize) -> [u8; HEADER_LEN] {
    shard::header(
        ShardHeader {
            k: r.k,
            m: r.m,
            index: i as u8,
            block_len: len as u32,
        },
        shard_size(r, len),
    )
}

/// The bytes of a block of `len` bytes that data shard `i` holds; the shard's payload is
/// these followed by zeros up to [`shard_size`] (past the block's end the range is empty).
pub fn data_range(r: Redundancy, len: usize, i: usize) -> std::ops::Range<usize> {
    let size = shard_size(r, len);
    (i * size).min(len)..((i + 1) * size).min(len)
}

/// Data shard `i` of a block, whole: its header, its part of the block, zero padding.
pub fn data_shard(r: Redundancy, block: &[u8], i: usize) -> Vec<u8> {
    let size = shard_size(r, block.len());
    let mut s = Vec::with_capacity(HEADER_LEN + size);
    s.extend_from_slice(&shard_header(r, block.len(), i));
    s.extend_from_slice(&block[data_range(r, block.len(), i)]);
    s.resize(HEADER_LEN + size, 0);
    s
}

/// The m parity shards, whole (header and payload), of a block of `len` bytes from its k data
/// shards' payloads ([`shard_size`] bytes each). Parity is computed straight into the parity
/// shards' payloads.
pub fn parity(r: Redundancy, len: usize, data: &[&[u8]]) -> Result<Vec<Vec<u8>>, ErasureError> {
    parity_in(r, len, data, |n| vec![0u8; n])
}

/// [`parity`] into buffers from `new_buf`, which returns a buffer of the length asked for;
/// its bytes may be anything (all of them are written), so a caller can reuse buffers.
pub fn parity_in(
    r: Redundancy,
    len: usize,
    data: &[&[u8]],
    new_buf: impl FnMut(usize) -> Vec<u8>,
) -> Result<Vec<Vec<u8>>, ErasureError> {
    let k = r.k as usize;
    let rs = codec(r)?;
    if r.m == 0 {
        return Ok(Vec::new());
    }
    let size = shard_size(r, len);
    if data.len() != k || data.iter().any(|d| d.len() != size) {
        return Err(ErasureError::Codec(
            reed_solomon_erasure::Error::IncorrectShardSize,
        ));
    }
    let mut parity = parity_buffers(r, len, new_buf);
    code_by_columns(&rs, data, &mut parity, |_, _| ())?;
    Ok(parity)
}

/// Codes the parity shards' payloads (whole shards, header first) from the data shards'
/// payloads, [`COLUMN`] bytes of every shard at a time, and hands each column's pieces, data
/// shards' then parity shards' (shard index, bytes), to `each` as soon as they are coded,
/// while they are still in the core's cache. A column ends where a shard's header and the
/// payload before it make a multiple of `COLUMN`, so a hash fed these pieces always gets whole
/// aligned BLAKE3 subtrees.
fn code_by_columns(
    rs: &ReedSolomon,
    data: &[&[u8]],
    parity: &mut [Vec<u8>],
    mut each: impl FnMut(usize, &[u8]),
) -> Result<(), ErasureError> {
    let size = data.first().map_or(0, |d| d.len());
    let mut start = 0;
    while start < size {
        let end = (((start + HEADER_LEN) / COLUMN + 1) * COLUMN - HEADER_LEN).min(size);
        let ins: Vec<&[u8]> = data.iter().map(|d| &d[start..end]).collect();
        let mut outs: Vec<&mut [u8]> = parity
            .iter_mut()
            .map(|s| &mut s[HEADER_LEN + start..HEADER_LEN + end])
            .collect();
        rs.encode_sep(&ins, &mut outs)
            .map_err(ErasureError::Codec)?;
        let pieces = ins.iter().copied().chain(outs.iter().map(|o| &o[..]));
        for (i, piece) in pieces.enumerate() {
            each(i, piece);
        }
        start = end;
    }
    Ok(())
}

/// The m parity shards' buffers for a block of `len` bytes, from `new_buf`, each with its
/// header written and its payload still to be computed.
fn parity_buffers(
    r: Redundancy,
    len: usize,
    mut new_buf: impl FnMut(usize) -> Vec<u8>,
) -> Vec<Vec<u8>> {
    let size = shard_size(r, len);
    (r.k as usize..r.total())
        .map(|i| {
            let mut s = new_buf(HEADER_LEN + size);
            s[..HEADER_LEN].copy_from_slice(&shard_header(r, len, i));
            s
        })
        .collect()
}

/// Bytes of each shard coded (and hashed, in [`encode_parity`]) at a time: the k + m pieces of
/// a column (384 KiB at 4+2) stay in a core's L2 cache between the erasure code and the hashes.
const COLUMN: usize = 64 * 1024;

/// A block's erasure code as the engine keeps it when it seals a block: the ids of all k+m
/// shards and the parity shards' bytes. The data shards' bytes are not made: they are plain
/// slices of the block ([`data_shard`]), which stays in its file until it is uploaded.
#[derive(Debug)]
pub struct Encoded {
    /// The ids of the k data shards, then of the m parity shards.
    pub ids: Vec<ShardId>,
    /// The m parity shards, whole.
    pub parity: Vec<Vec<u8>>,
}

/// Erasure-codes a block without copying it into data shards: each data shard is hashed
/// (header, its slice of the block, padding) where it lies, and only the last, short one is
/// copied to be padded. Profile of the pipeline benchmark before this (issue 8 note): the copy
/// of the data shards out of the block was 10% of the write side's samples.
///
/// The code and the hashes go column by column ([`COLUMN`] bytes of every shard at a time)
/// rather than shard by shard: coded whole, each data shard was read from memory once for its
/// hash and twice more by the code (once per parity shard), and each parity shard rewritten
/// four times before its own hash read it back. Pipeline benchmark, 5 alternated pairs of
/// both builds: this pass 1.52-1.69 -> 1.77-1.91 GiB/s, the whole write pipeline 581-626 ->
/// 593-654 MiB/s; columns of 16, 32 and 128 KiB were slower than 64 KiB (`docs/DESIGN.md`).
pub fn encode_parity(r: Redundancy, block: &[u8]) -> Result<Encoded, ErasureError> {
    encode_parity_in(r, block, |n| vec![0u8; n])
}

/// [`encode_parity`] with its parity shards in buffers from `new_buf` (see [`parity_in`]).
pub fn encode_parity_in(
    r: Redundancy,
    block: &[u8],
    new_buf: impl FnMut(usize) -> Vec<u8>,
) -> Result<Encoded, ErasureError> {
    let (k, len) = (r.k as usize, block.len());
    let size = shard_size(r, len);
    let payloads: Vec<std::borrow::Cow<'_, [u8]>> = (0..k)
        .map(|i| {
            let part = &block[data_range(r, len, i)];
            if part.len() == size {
                std::borrow::Cow::Borrowed(part)
            } else {
                let mut padded = Vec::with_capacity(size);
                padded.extend_from_slice(part);
                padded.resize(size, 0);
                std::borrow::Cow::Owned(padded)
            }
        })
        .collect();
    let rs = codec(r)?;
    let data: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
    let mut parity = parity_buffers(r, len, new_buf);
    let mut hashers: Vec<blake3::Hasher> = (0..r.total())
        .map(|i| {
            let mut h = blake3::Hasher::new();
            h.update(&shard_header(r, len, i));
            h
        })
        .collect();
    if r.m > 0 {
        code_by_columns(&rs, &data, &mut parity, |i, piece| {
            hashers[i].update(piece);
        })?;
    } else {
        for (h, d) in hashers.iter_mut().zip(&data) {
            h.update(d);
        }
    }
    let ids = hashers
        .iter()
        .map(|h| ShardId(*h.finalize().as_bytes()))
        .collect();
    Ok(Encoded { ids, parity })
}

/// Encodes a block into k+m shards (full shard bytes with header) and their ids.
pub fn encode(r: Redundancy, block: &[u8]) -> Result<Vec<(ShardId, Vec<u8>)>, ErasureError> {
    let e = encode_parity(r, block)?;
    let shards = (0..r.k as usize)
        .map(|i| data_shard(r, block, i))
        .chain(e.parity);
    Ok(e.ids.into_iter().zip(shards).collect())
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

/// Rebuilds a block from any k of its whole shards (header and payload, already verified; by
/// index, `None` = missing), in one buffer: [`decode_parts`], joined.
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
        Some(self.parts(off, len)?.concat())
    }

    /// Bytes `[off, off + len)` of the block where they lie, in order: one piece per shard
    /// they span (`None` past the block's end). An empty range is one empty piece.
    pub fn parts(&self, off: usize, len: usize) -> Option<Vec<&[u8]>> {
        let end = off.checked_add(len)?;
        if end > self.len() {
            return None;
        }
        match self {
            Self::Whole(b) => Some(vec![b.get(off..end)?]),
            Self::Shards { shards, size, .. } => {
                let mut out = vec![&[][..]; usize::from(len == 0)];
                let mut at = off;
                while at < end {
                    let (i, within) = (at / size, at % size);
                    let n = (size - within).min(end - at);
                    let from = HEADER_LEN + within;
                    out.push(shards.get(i)?.get(from..from + n)?);
                    at += n;
                }
                Some(out)
            }
        }
    }

    /// The block in one buffer.
    pub fn into_vec(mut self) -> Vec<u8> {
        match &mut self {
            Self::Whole(b) => std::mem::take(b),
            Self::Shards { shards, len, .. } => join(
                shards
                    .iter()
                    .map(|s| s.get(HEADER_LEN..).unwrap_or_default()),
                *len,
            )
            .unwrap_or_default(),
        }
    }
}

/// A block's fetched shards go back to [`pool::FETCHED`](crate::pool::FETCHED) for the
/// next fetch.
impl Drop for BlockBytes {
    fn drop(&mut self) {
        if let Self::Shards { shards, .. } = self {
            for s in shards.drain(..) {
                crate::pool::FETCHED.put(s);
            }
        }
    }
}

/// [`decode_shards`] without joining the data shards into one buffer: when the k data shards
/// are all there, the common case, the block is those shards; otherwise the missing ones (and
/// any of the wrong length) are rebuilt into shard buffers of their own, column by column,
/// from the first k shards there, and the block is again its k data shards. Before, a rebuild
/// moved every shard down over its header, ran the code over whole 2 MiB shards and joined
/// the payloads into one buffer: three passes over the block more. Pipeline benchmark,
/// rebuilding 2 of the 4 data shards from the 2 parity shards, 2 alternated runs of both
/// builds: the rebuild 3.22/4.07 -> 6.22/7.18 GiB/s, the whole read side (verify, rebuild,
/// open every chunk) 666/670 -> 760/726 MiB/s.
pub fn decode_parts(
    r: Redundancy,
    block_len: usize,
    mut shards: Vec<Option<Vec<u8>>>,
) -> Result<BlockBytes, ErasureError> {
    let k = r.k as usize;
    let size = shard_size(r, block_len);
    shards.resize(r.total(), None);
    for s in shards.iter_mut() {
        if s.as_ref().is_some_and(|s| s.len() != HEADER_LEN + size) {
            *s = None;
        }
    }
    if shards[..k].iter().all(Option::is_some) {
        return Ok(BlockBytes::Shards {
            shards: shards.into_iter().take(k).flatten().collect(),
            size,
            len: block_len,
        });
    }
    let there: Vec<bool> = shards.iter().map(Option::is_some).collect();
    let have = there.iter().filter(|&&t| t).count();
    if have < k || r.m == 0 {
        return Err(ErasureError::NotEnough { have, need: k });
    }
    let rs = codec(r)?;
    // A missing data shard gets a buffer to be rebuilt into (its header bytes are never
    // read); a missing parity shard is not rebuilt and needs none.
    let mut bufs: Vec<Vec<u8>> = shards
        .into_iter()
        .enumerate()
        .map(|(i, s)| match s {
            Some(s) => s,
            None if i < k => crate::pool::FETCHED.take(HEADER_LEN + size),
            None => Vec::new(),
        })
        .collect();
    let mut start = 0;
    while start < size {
        let end = (start + COLUMN).min(size);
        let mut cols: Vec<(&mut [u8], bool)> = bufs
            .iter_mut()
            .zip(&there)
            .map(|(b, &t)| {
                (
                    b.get_mut(HEADER_LEN + start..HEADER_LEN + end)
                        .unwrap_or_default(),
                    t,
                )
            })
            .collect();
        rs.reconstruct_data(&mut cols)
            .map_err(ErasureError::Codec)?;
        start = end;
    }
    let parity = bufs.split_off(k);
    for p in parity {
        crate::pool::FETCHED.put(p);
    }
    Ok(BlockBytes::Shards {
        shards: bufs,
        size,
        len: block_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_k_shards_rebuild_the_block(block in proptest::collection::vec(any::<u8>(), 0..5000),
                                          lost in proptest::sample::subsequence(vec![0usize, 1, 2, 3, 4, 5], 0..=2),
                                          off in 0usize..5000, len in 0usize..5000) {
            let r = Redundancy::default();
            let shards = encode(r, &block).unwrap();
            prop_assert_eq!(shards.len(), 6);
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

    proptest! {
        /// What the engine keeps when it seals a block (ids, parity) and what it builds at
        /// upload (data shards from the block, parity again from them) are the same bytes
        /// and ids as the whole encode, for any redundancy and length.
        #[test]
        fn parity_and_data_shards_built_apart_match_the_whole_encode(
            block in proptest::collection::vec(any::<u8>(), 0..3000),
            k in 1u8..6, m in 0u8..4,
        ) {
            let r = Redundancy { k, m };
            let whole = encode(r, &block).unwrap();
            prop_assert_eq!(whole.len(), r.total());
            for (id, bytes) in &whole {
                prop_assert_eq!(*id, ShardId::of(bytes));
            }
            let e = encode_parity(r, &block).unwrap();
            let ids: Vec<ShardId> = whole.iter().map(|(id, _)| *id).collect();
            prop_assert_eq!(&e.ids, &ids);
            let data: Vec<Vec<u8>> = (0..k as usize).map(|i| data_shard(r, &block, i)).collect();
            let payloads: Vec<&[u8]> = data.iter().map(|d| &d[HEADER_LEN..]).collect();
            let again = parity(r, block.len(), &payloads).unwrap();
            let k = k as usize;
            for (i, d) in data.iter().enumerate() {
                prop_assert_eq!(d, &whole[i].1);
            }
            prop_assert_eq!(again.len(), m as usize);
            prop_assert_eq!(e.parity.len(), m as usize);
            for (j, (a, p)) in again.iter().zip(&e.parity).enumerate() {
                prop_assert_eq!(a, &whole[k + j].1);
                prop_assert_eq!(p, &whole[k + j].1);
            }
        }
    }

    #[test]
    fn parity_into_reused_buffers_is_the_same_as_into_new_ones() {
        let r = Redundancy { k: 4, m: 2 };
        for len in [1usize, 4096, 100_003, 8 << 20] {
            let block: Vec<u8> = (0..len).map(|i| (i * 13 + i / 777) as u8).collect();
            let fresh = encode_parity(r, &block).unwrap();
            // Buffers full of other bytes, longer and shorter than asked.
            let mut dirty = vec![vec![0xAA; 3 << 20], vec![0x55; 10]];
            let reused = encode_parity_in(r, &block, |n| {
                let mut b = dirty.pop().unwrap_or_default();
                b.resize(n, 0xEE);
                b
            })
            .unwrap();
            assert_eq!(fresh.ids, reused.ids, "{len} bytes");
            assert!(fresh.parity == reused.parity, "{len} bytes");
        }
    }

    /// Blocks whose shards span several columns (and end inside one, or on a column's end)
    /// get the ids and parity of the shards hashed and coded whole.
    #[test]
    fn column_by_column_encoding_is_the_whole_shards_code() {
        for r in [
            Redundancy { k: 4, m: 2 },
            Redundancy { k: 3, m: 3 },
            Redundancy { k: 2, m: 0 },
        ] {
            let k = r.k as usize;
            let col = COLUMN - HEADER_LEN;
            for len in [
                1,
                k * col,
                k * col + 1,
                k * (col + COLUMN),
                k * 3 * COLUMN + 5,
                8 << 20,
            ] {
                let block: Vec<u8> = (0..len).map(|i| (i * 7 + i / 1001) as u8).collect();
                let e = encode_parity(r, &block).unwrap();
                let data: Vec<Vec<u8>> = (0..k).map(|i| data_shard(r, &block, i)).collect();
                let payloads: Vec<&[u8]> = data.iter().map(|d| &d[HEADER_LEN..]).collect();
                // The reference: the parity of the whole shards in one call of the codec.
                let mut whole: Vec<Vec<u8>> = (k..r.total())
                    .map(|i| {
                        let mut s = shard_header(r, len, i).to_vec();
                        s.resize(HEADER_LEN + shard_size(r, len), 0);
                        s
                    })
                    .collect();
                if r.m > 0 {
                    let mut outs: Vec<&mut [u8]> =
                        whole.iter_mut().map(|s| &mut s[HEADER_LEN..]).collect();
                    codec(r).unwrap().encode_sep(&payloads, &mut outs).unwrap();
                }
                assert!(e.parity == whole, "{r:?}, {len} bytes");
                assert!(
                    parity(r, len, &payloads).unwrap() == whole,
                    "{r:?}, {len} bytes"
                );
                let ids: Vec<ShardId> = data.iter().chain(&whole).map(|s| ShardId::of(s)).collect();
                assert_eq!(e.ids, ids, "{r:?}, {len} bytes");
            }
        }
    }

    /// Blocks of several columns come back whole whichever shards are lost (up to m), and
    /// a shard of the wrong length counts as lost.
    #[test]
    fn any_k_shards_of_a_long_block_rebuild_it_column_by_column() {
        let r = Redundancy { k: 4, m: 2 };
        for len in [4 * 3 * COLUMN + 5, 8 << 20] {
            let block: Vec<u8> = (0..len).map(|i| (i * 11 + i / 999) as u8).collect();
            let shards = encode(r, &block).unwrap();
            for a in 0..6 {
                for b in a..6 {
                    let mut have: Vec<_> = shards.iter().map(|(_, s)| Some(s.clone())).collect();
                    have[a] = None;
                    if b > a {
                        have[b] = None;
                    }
                    let got = decode_parts(r, len, have).unwrap();
                    assert!(got.into_vec() == block, "{len} bytes without {a} and {b}");
                }
            }
            let mut have: Vec<_> = shards.iter().map(|(_, s)| Some(s.clone())).collect();
            have[1].as_mut().unwrap().pop();
            assert!(decode_parts(r, len, have.clone()).unwrap().into_vec() == block);
            have[4] = None;
            have[5] = None;
            assert!(matches!(
                decode_parts(r, len, have),
                Err(ErasureError::NotEnough { have: 3, need: 4 })
            ));
        }
    }

    #[test]
    fn parity_of_shards_of_the_wrong_size_is_refused() {
        let r = Redundancy::default();
        let short = [0u8; 3];
        assert!(parity(r, 16, &[&short[..]; 4]).is_err());
        assert!(parity(r, 16, &[&[0u8; 4][..]; 3]).is_err());
        assert_eq!(parity(r, 16, &[&[0u8; 4][..]; 4]).unwrap().len(), 2);
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
        let mut p: Vec<_> = encode(r, b"hello world")
            .unwrap()
            .into_iter()
            .map(|(_, s)| Some(s))
            .collect();
        p[0] = None;
        p[2] = None;
        p[5] = None;
        assert!(matches!(
            decode_shards(r, 11, p),
            Err(ErasureError::NotEnough { have: 3, need: 4 })
        ));
    }
}
