//! Pipeline throughput next to its raw primitives, in bytes per second on one core: the write
//! side (chunk + id + seal + erasure-encode) and the read side (verify shards, join or rebuild
//! the block, open its chunks). Run: `cargo bench -p dustfs-core --bench pipeline`.
//! `xchacha20poly1305` is the `chacha20poly1305` crate (the reference issue 8 measures
//! against); `xchacha20poly1305_seal_into` the same cipher as dustfs runs it (`seal.rs`).
#![allow(missing_docs, clippy::unwrap_used)]

use chacha20poly1305::aead::{Aead, KeyInit};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dustfs_core::chunk::{self, ChunkId};
use dustfs_core::erasure::{self, Redundancy};
use dustfs_core::seal;
use rand::{RngCore, SeedableRng};

const LEN: usize = 64 << 20;
/// The engine's block at its default redundancy (4 data shards of 2 MiB: dustfs/src/daemon.rs).
const BLOCK: usize = 8 << 20;

fn data() -> Vec<u8> {
    let mut v = vec![0u8; LEN];
    rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut v);
    v
}

fn primitives(c: &mut Criterion) {
    let d = data();
    let mut g = c.benchmark_group("primitives");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(10);
    g.bench_function("memcpy", |b| b.iter(|| d.clone()));
    g.bench_function("blake3_keyed", |b| {
        b.iter(|| blake3::keyed_hash(&[1; 32], &d))
    });
    g.bench_function("fastcdc", |b| b.iter(|| chunk::cut(&d)));
    g.bench_function("xchacha20poly1305", |b| {
        let cipher = chacha20poly1305::XChaCha20Poly1305::new((&[2u8; 32]).into());
        let nonce = chacha20poly1305::XNonce::from_slice(&[3u8; 24]);
        b.iter(|| {
            d.chunks(1 << 20)
                .map(|c| cipher.encrypt(nonce, c).map(|v| v.len()).unwrap_or(0))
                .sum::<usize>()
        })
    });
    // The same cipher as dustfs seals with (HChaCha20 + OpenSSL's ChaCha20-Poly1305, seal.rs).
    g.bench_function("xchacha20poly1305_seal_into", |b| {
        let mut out = Vec::with_capacity((1 << 20) + seal::SEAL_OVERHEAD);
        let id = ChunkId([3u8; 32]);
        b.iter(|| {
            d.chunks(1 << 20)
                .map(|c| {
                    out.clear();
                    seal::seal_into(&[2u8; 32], &id, c, &mut out).unwrap();
                    out.len()
                })
                .sum::<usize>()
        })
    });
    // The erasure code as a block is sealed: all shard ids, the parity's bytes.
    g.bench_function("reed_solomon_4+2", |b| {
        b.iter(|| {
            d.chunks(BLOCK)
                .map(|blk| {
                    erasure::encode_parity(Redundancy::default(), blk)
                        .map(|e| e.ids.len())
                        .unwrap_or(0)
                })
                .sum::<usize>()
        })
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let d = data();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(10);
    g.bench_function("chunk+id+seal+encode", |b| {
        b.iter(|| {
            // As the engine does it: each chunk found, hashed and sealed straight into the
            // open block (a buffer that keeps its length: `len` bytes are the block) before
            // the next is cut; a full block is erasure-coded into its shard ids and parity
            // (its data shards are slices of the block, read from its file when uploaded).
            let mut block = vec![0u8; BLOCK];
            let mut len = 0;
            let mut shards = 0;
            for (o, l) in chunk::cuts(&d) {
                let p = &d[o..o + l];
                let id = ChunkId::of(&[1; 32], p);
                if len + l + seal::SEAL_OVERHEAD > BLOCK && len > 0 {
                    shards += erasure::encode_parity(Redundancy::default(), &block[..len])
                        .map(|e| e.ids.len())
                        .unwrap_or(0);
                    len = 0;
                }
                let n = l + seal::SEAL_OVERHEAD;
                if block.len() < len + n {
                    block.resize(len + n, 0);
                }
                seal::seal_into_slice(&[2; 32], &id, p, &mut block[len..len + n]).unwrap();
                len += n;
            }
            shards
                + erasure::encode_parity(Redundancy::default(), &block[..len])
                    .map(|e| e.ids.len())
                    .unwrap_or(0)
        })
    });
    g.finish();
}

/// A block's length and its shards (id, bytes).
type Block = (usize, Vec<(dustfs_core::shard::ShardId, Vec<u8>)>);

/// What the write pipeline produced: each block's shards and length, and where each chunk went.
struct Written {
    blocks: Vec<Block>,
    /// (block, offset in it, sealed length, id)
    chunks: Vec<(usize, usize, usize, ChunkId)>,
}

fn write_all(d: &[u8]) -> Written {
    let mut w = Written {
        blocks: Vec::new(),
        chunks: Vec::new(),
    };
    let mut block = Vec::with_capacity(BLOCK);
    let flush = |block: &mut Vec<u8>, w: &mut Written| {
        let shards = erasure::encode(Redundancy::default(), block).unwrap();
        w.blocks.push((block.len(), shards));
        block.clear();
    };
    for (o, l) in chunk::cut(d) {
        let p = &d[o..o + l];
        let id = ChunkId::of(&[1; 32], p);
        if block.len() + l + seal::SEAL_OVERHEAD > BLOCK && !block.is_empty() {
            flush(&mut block, &mut w);
        }
        w.chunks
            .push((w.blocks.len(), block.len(), l + seal::SEAL_OVERHEAD, id));
        seal::seal_into(&[2; 32], &id, p, &mut block).unwrap();
    }
    flush(&mut block, &mut w);
    w
}

/// Reads every chunk back as the engine does: shards verified against their ids, the block
/// joined from the shards in `use_shards` (rebuilt when a data shard is not among them), each
/// chunk opened (decrypted, its id checked). Returns the plaintext bytes read.
fn read_all(w: &Written, use_shards: &[usize]) -> usize {
    let r = Redundancy::default();
    let mut got = 0;
    let mut next = 0;
    for (no, (len, shards)) in w.blocks.iter().enumerate() {
        let mut have: Vec<Option<Vec<u8>>> = vec![None; shards.len()];
        for &i in use_shards {
            let (id, bytes) = &shards[i];
            dustfs_core::shard::parse(bytes, Some(id)).unwrap();
            // The engine owns the shards a fetch returns; the copy stands for the network.
            have[i] = Some(bytes.clone());
        }
        let block = erasure::decode_parts(r, *len, have).unwrap();
        while let Some(&(b, off, l, id)) = w.chunks.get(next) {
            if b != no {
                break;
            }
            let sealed = block.slice(off, l).unwrap();
            got += seal::open_owned(&[2; 32], &[1; 32], &id, sealed)
                .unwrap()
                .len();
            next += 1;
        }
    }
    got
}

fn read_pipeline(c: &mut Criterion) {
    let d = data();
    let w = write_all(&d);
    assert_eq!(read_all(&w, &[0, 1, 2, 3]), d.len());
    assert_eq!(read_all(&w, &[0, 1, 4, 5]), d.len());
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(10);
    // The copies of the shards `read_all` takes (standing for the fetch), alone.
    g.bench_function("copy_4_shards", |b| {
        b.iter(|| {
            w.blocks
                .iter()
                .map(|(_, s)| {
                    s[..4]
                        .iter()
                        .map(|(_, b)| std::hint::black_box(b.clone()).len())
                        .sum::<usize>()
                })
                .sum::<usize>()
        })
    });
    g.bench_function("reed_solomon_4+2_rebuild_2", |b| {
        b.iter(|| {
            w.blocks
                .iter()
                .map(|(len, s)| {
                    let have = (0..s.len())
                        .map(|i| (i != 2 && i != 3).then(|| s[i].1.clone()))
                        .collect();
                    erasure::decode_parts(Redundancy::default(), *len, have)
                        .map(|b| b.len())
                        .unwrap_or(0)
                })
                .sum::<usize>()
        })
    });
    g.bench_function("verify+join+open", |b| {
        b.iter(|| read_all(&w, &[0, 1, 2, 3]))
    });
    g.bench_function("verify+rebuild_2+open", |b| {
        b.iter(|| read_all(&w, &[0, 1, 4, 5]))
    });
    g.finish();
}

criterion_group!(benches, primitives, pipeline, read_pipeline);
criterion_main!(benches);
