#!/usr/bin/env bash
# The pipeline benchmark (criterion, dustfs-core/benches/pipeline.rs) and what its numbers
# mean for the "per core" target: the pipeline's throughput, its slowest primitive
# (XChaCha20-Poly1305), and the most any one-core pipeline built from these passes could do:
# every byte goes through FastCDC, keyed BLAKE3 (chunk id), XChaCha20-Poly1305 (as dustfs runs
# it: HChaCha20 + OpenSSL's ChaCha20-Poly1305, seal.rs; the chacha20poly1305 crate's own, which
# issue 8 names as the reference, is printed beside it) and the block's
# erasure encode as a block is sealed (parity, and BLAKE3 of every shard: the shard ids audits
# prove against; the data shards stay slices of the block, uploaded from its file),
# so on one core the times per byte add up: 1 / (1/cdc + 1/blake3 + 1/xchacha + 1/encode).
# The read side (verify shards, join or rebuild the block, open the chunks) is printed after.
# Usage: scripts/bench-pipeline.sh   (builds with optimisations; about three minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
# glibc returns freed multi-MiB buffers to the kernel (heap trim, mmap threshold), so a
# primitive run alone, which frees every block's shards before encoding the next,
# paid for fresh zeroed pages each time: reed_solomon_4+2 measured 0.36-0.41 GiB/s, most of it
# in page faults (perf), against 0.81-0.91 with these thresholds. The pipeline itself ran
# the same either way (0.27-0.32 GiB/s), and so did the mount (earlier mallopt trial, issue 8
# note): only the stand-alone primitive needs them to measure encoding rather than the kernel.
export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=268435456
cargo bench -p dustfs-core --bench pipeline >/dev/null 2>&1 || cargo bench -p dustfs-core --bench pipeline
python3 - <<'PY'
import json
def gib(name):
    d = json.load(open(f"target/criterion/{name}/new/estimates.json"))
    return (64 << 20) / (d["median"]["point_estimate"] / 1e9) / 2**30
p = {n: gib(f"primitives/{n}") for n in ["fastcdc", "blake3_keyed", "xchacha20poly1305_seal_into", "reed_solomon_4+2"]}
ref = gib("primitives/xchacha20poly1305")
pipe = gib("pipeline/chunk+id+seal+encode")
bound = 1 / sum(1 / v for v in p.values())
slowest = min(p, key=p.get)
for n, v in p.items():
    print(f"{n:28s} {v:6.2f} GiB/s")
print(f"{'xchacha20poly1305 (crate)':28s} {ref:6.2f} GiB/s   (chacha20poly1305 crate: issue 8's reference)")
print(f"{'pipeline':28s} {pipe:6.2f} GiB/s = {pipe / ref:.0%} of the chacha20poly1305 crate's XChaCha20-Poly1305, "
      f"{pipe / p[slowest]:.0%} of its slowest pass ({slowest})")
print(f"{'sum of its passes':28s} {bound:6.2f} GiB/s = {bound / ref:.0%} of the crate's XChaCha20-Poly1305 "
      f"(the pipeline reaches {pipe / bound:.0%} of it)")
# The read side: the same data back from its shards (verified against their ids, the block
# joined from the 4 data shards or rebuilt from 2 data + 2 parity, every chunk opened and its
# id checked), each shard copied once first as a fetch would hand it over.
r = {n: gib(f"read/{n}") for n in ["copy_4_shards", "reed_solomon_4+2_rebuild_2", "verify+join+open", "verify+rebuild_2+open"]}
print("read side:")
for n, v in r.items():
    print(f"  {n:26s} {v:6.2f} GiB/s" + (f" = {v / ref:.0%} of the crate's XChaCha20-Poly1305" if "open" in n else ""))
PY
