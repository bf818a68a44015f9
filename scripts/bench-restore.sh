#!/usr/bin/env bash
# Restore from the paper key, measured: metadata size per 10,000 files, time to restore the
# namespace, and `restore --all` throughput next to a cold read of the same data in this run.
# Usage: scripts/bench-restore.sh [FILES (10000)] [BIG_MIB (256)]   (root; builds release)
set -euo pipefail
cd "$(dirname "$0")/.."
NFILES=${1:-10000}
BIG=${2:-256}
. scripts/workdir.sh bench-restore
now() { date +%s.%N; }
mkdir -p "$W/mnt"
"$B" testnet up --dir "$W/net" --nodes 6 >/dev/null
PAPER=$("$B" --home "$W/home" init --bootstrap "$W/net/bootstrap" --listen /ip4/127.0.0.1/tcp/0 | tail -1)
"$B" --home "$W/home" mount "$W/mnt" >/dev/null
for _ in $(seq 50); do
  n=$("$B" --home "$W/home" status --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["suppliers"]))')
  [ "$n" -ge 6 ] && break; sleep 0.2
done
python3 - "$W/mnt" "$NFILES" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    sub = os.path.join(d, "small", f"d{i // 1000:02d}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"file-{i:06d}.txt"), "wb") as f:
        f.write(os.urandom(1024))
PY
META_SMALL=$("$B" --home "$W/home" sync | sed -n 's/.*(\([0-9]*\) files, \([0-9]*\) bytes of metadata).*/\1 \2/p')
head -c $((BIG << 20)) /dev/urandom > "$W/mnt/big.bin"
"$B" --home "$W/home" sync >/dev/null
"$B" --home "$W/home" cache drop >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now); cat "$W/mnt/big.bin" > /dev/null; t1=$(now)
COLD=$(python3 -c "print(f'{$BIG/($t1-$t0):.1f}')")
umount "$W/mnt"
sleep 2
rm -rf "$W/home"
t0=$(now)
OUT=$(echo "$PAPER" | "$B" --home "$W/home2" restore --bootstrap "$W/net/bootstrap" --listen /ip4/127.0.0.1/tcp/0 --all 2>/dev/null)
t1=$(now)
echo "$OUT"
echo
echo "metadata: ${META_SMALL#* } bytes for ${META_SMALL% *} files ($(python3 -c "f,b='${META_SMALL}'.split(); print(round(int(b)*10000/int(f)))") bytes per 10,000 files)"
echo "restore --all total: $(python3 -c "print(f'{$t1-$t0:.1f}')") s (includes finding suppliers)"
echo "cold read of big.bin through the mount in this run: ${COLD} MB/s"
