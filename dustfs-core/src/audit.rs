//! Proofs of possession without keeping copies: a shard's id is its BLAKE3 hash, and BLAKE3 is
//! a Merkle tree, so a supplier proves it still holds a shard by returning a slice of it with
//! the subtree hashes that connect the slice to the root (bao's verified slices). The customer
//! checks the slice against the shard id alone.

use std::io::{Cursor, Read};

use crate::shard::ShardId;

/// Length of an audited slice (a multiple of BLAKE3's 1 KiB chunk, so no bytes are wasted).
pub const SLICE_LEN: u64 = 16 * 1024;

/// Supplier side: the verified slice `[start, start+len)` of `shard`.
pub fn prove(shard: &[u8], start: u64, len: u64) -> Vec<u8> {
    let (outboard, _) = bao::encode::outboard(shard);
    let mut ex = bao::encode::SliceExtractor::new_outboard(
        Cursor::new(shard),
        Cursor::new(&outboard),
        start,
        len,
    );
    let mut out = Vec::new();
    // Reading from in-memory cursors of a consistent encoding cannot fail.
    let _ = ex.read_to_end(&mut out);
    out
}

/// Customer side: whether `proof` is the slice `[start, start+len)` of the shard with this id.
pub fn verify(id: &ShardId, start: u64, len: u64, proof: &[u8]) -> bool {
    let hash = blake3::Hash::from_bytes(id.0);
    let mut dec = bao::decode::SliceDecoder::new(proof, &hash, start, len);
    let mut out = Vec::new();
    dec.read_to_end(&mut out).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn honest_proofs_verify_and_altered_shards_do_not(len in 1usize..200_000, at in any::<u64>(), flip in any::<usize>()) {
            let shard: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let id = ShardId::of(&shard);
            let start = (at % len as u64) / 1024 * 1024;
            let proof = prove(&shard, start, SLICE_LEN);
            prop_assert!(verify(&id, start, SLICE_LEN, &proof));
            // A supplier whose copy changed inside the audited slice cannot pass.
            let mut bad = shard.clone();
            let end = (start + SLICE_LEN).min(len as u64);
            let i = start as usize + flip % (end - start).max(1) as usize;
            bad[i] ^= 1;
            let proof = prove(&bad, start, SLICE_LEN);
            prop_assert!(!verify(&id, start, SLICE_LEN, &proof));
            // Nor can it answer with a slice of another place.
            prop_assert!(!verify(&id, start, SLICE_LEN, b"garbage"));
        }
    }
}
