//! Content-defined chunking and chunk ids.
//!
//! Files are cut with FastCDC (2020 variant) so that an insertion near the start of a large file
//! moves only the chunk boundaries next to it. A chunk's id is BLAKE3 keyed with the user's
//! chunk-id key: equal content gets equal ids (deduplication within one user), while a supplier
//! cannot test whether a shard holds a known public file.

use serde::{Deserialize, Serialize};

/// Smallest chunk FastCDC cuts (except a file's last chunk). FastCDC does not look for a cut
/// point in a chunk's first `MIN_CHUNK` bytes, so this sets how much of the data the gear hash
/// scans. 768 KiB since 2026-12-06 (512 KiB before, 256 KiB before that): over 256 MiB of
/// random data chunks average 1.46 MiB (median 1.32) instead of 1.35 (1.22), the scan covers
/// 48% of the bytes instead of 63%, and in `scripts/bench-pipeline.sh` the cut pass ran at
/// 5.0 GiB/s instead of 3.6 and the pipeline at 0.82-0.86 GiB/s instead of 0.73-0.84 (the cut
/// was a fifth of the pipeline's perf samples). The cost is chunks 7% larger on average: a
/// small edit rewrites that much more, a small read opens that much more. Chunks cut with an
/// older minimum stay readable (a chunk is found by its id, whatever cut it); only data
/// written again after the change is cut differently (and does not deduplicate against the
/// old cuts).
pub const MIN_CHUNK: u32 = 768 * 1024;
/// Average chunk size FastCDC aims for.
pub const AVG_CHUNK: u32 = 1024 * 1024;
/// Largest chunk; a run of data without a cut point is cut here.
pub const MAX_CHUNK: u32 = 4 * 1024 * 1024;

/// A chunk id: keyed BLAKE3 of the chunk's plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

impl std::fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkId({})", &hex::encode(self.0)[..16])
    }
}

impl ChunkId {
    /// Computes the id of `data` under the user's chunk-id key.
    pub fn of(key: &[u8; 32], data: &[u8]) -> Self {
        Self(*blake3::keyed_hash(key, data).as_bytes())
    }
}

/// Cuts `data` into content-defined pieces; returns (offset, length) pairs covering all of it.
pub fn cut(data: &[u8]) -> Vec<(usize, usize)> {
    cuts(data).collect()
}

/// [`cut`] one piece at a time: each cut point is found when the caller asks for the next
/// piece, so a caller that hashes and seals each piece before asking for the next finds its
/// bytes still in the core's cache from the scan that found its end (the engine's commits do:
/// the piece's first pass reads memory, its id and sealing passes read the cache).
pub fn cuts(data: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    (!data.is_empty())
        .then(|| fastcdc::v2020::FastCDC::new(data, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK))
        .into_iter()
        .flatten()
        .map(|c| (c.offset, c.length))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; n];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    #[test]
    fn chunks_cover_the_input_within_bounds() {
        let data = random(9 * 1024 * 1024 + 17, 1);
        let cuts = cut(&data);
        let mut pos = 0;
        for (i, (off, len)) in cuts.iter().enumerate() {
            assert_eq!(*off, pos);
            assert!(*len <= MAX_CHUNK as usize);
            if i + 1 < cuts.len() {
                assert!(*len >= MIN_CHUNK as usize);
            }
            pos += len;
        }
        assert_eq!(pos, data.len());
    }

    #[test]
    fn an_insertion_near_the_start_keeps_later_chunks() {
        let data = random(8 * 1024 * 1024, 2);
        let mut shifted = b"inserted bytes".to_vec();
        shifted.extend_from_slice(&data);
        let key = [9u8; 32];
        let ids = |d: &[u8]| -> Vec<ChunkId> {
            cut(d)
                .into_iter()
                .map(|(o, l)| ChunkId::of(&key, &d[o..o + l]))
                .collect()
        };
        let a = ids(&data);
        let b = ids(&shifted);
        let shared = a.iter().filter(|id| b.contains(id)).count();
        assert!(
            shared + 2 >= a.len(),
            "only {shared} of {} chunks survived",
            a.len()
        );
    }

    #[test]
    fn restarting_at_a_cut_point_gives_the_same_cuts() {
        // The engine commits a long write in pieces and restarts the chunker at the last cut;
        // that is only sound if the cuts after a cut point do not depend on earlier bytes.
        let data = random(12 * 1024 * 1024, 3);
        let all = cut(&data);
        let (restart, _) = all[2];
        let tail: Vec<(usize, usize)> = cut(&data[restart..])
            .into_iter()
            .map(|(o, l)| (o + restart, l))
            .collect();
        assert_eq!(&all[2..], &tail[..]);
    }

    #[test]
    fn chunk_ids_depend_on_the_key() {
        assert_ne!(ChunkId::of(&[1; 32], b"x"), ChunkId::of(&[2; 32], b"x"));
        assert_eq!(ChunkId::of(&[1; 32], b"x"), ChunkId::of(&[1; 32], b"x"));
    }
}
