//! Pipeline throughput (chunk + id + seal + erasure-encode) next to its raw primitives, in
//! bytes per second on one core. Run: `cargo bench -p dustfs-core --bench pipeline`.
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
    // The same cipher as dustfs seals with (HChaCha20 + ring's ChaCha20-Poly1305, seal.rs).
    g.bench_function("xchacha20poly1305_seal_into", |b| {
        let mut out = Vec::with_capacity((1 << 20) + seal::SEAL_OVERHEAD);
        let id = ChunkId([3u8; 32]);
        b.iter(|| {
            d.chunks(1 << 20)
                .map(|c| {
                    out.clear();
                    seal::seal_into(&[2u8; 32], &id, c, &mut out);
                    out.len()
                })
                .sum::<usize>()
        })
    });
    g.bench_function("reed_solomon_4+2", |b| {
        b.iter(|| {
            d.chunks(BLOCK)
                .map(|blk| {
                    erasure::encode(Redundancy::default(), blk)
                        .map(|s| s.len())
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
            // As the engine does it: each chunk sealed straight into the open block.
            let mut block = Vec::with_capacity(BLOCK);
            let mut shards = 0;
            for (o, l) in chunk::cut(&d) {
                let p = &d[o..o + l];
                let id = ChunkId::of(&[1; 32], p);
                if block.len() + l + seal::SEAL_OVERHEAD > BLOCK && !block.is_empty() {
                    shards += erasure::encode(Redundancy::default(), &block)
                        .map(|s| s.len())
                        .unwrap_or(0);
                    block.clear();
                }
                seal::seal_into(&[2; 32], &id, p, &mut block);
            }
            shards
                + erasure::encode(Redundancy::default(), &block)
                    .map(|s| s.len())
                    .unwrap_or(0)
        })
    });
    g.finish();
}

criterion_group!(benches, primitives, pipeline);
criterion_main!(benches);
