#!/usr/bin/env bash
# Runs scripts/bench.sh alternately with two dustfs binaries, ROUNDS times each (A, B, A, B,
# ...: this machine's speed drifts, and alternating spreads the drift over both), and prints
# each build's medians: dustfs's MB/s or files/s and its ratios to bindfs and rclone per
# workload, the machine's CPU per GiB (or per file) in dustfs's workloads, the repair rate and
# the mount's peak RSS, and in how many rounds B's figure was the higher one (for CPU and RSS,
# lower is better). Issue 8 asks for medians of 3 runs.
# Usage: scripts/bench-ab.sh OLD_BINARY NEW_BINARY [ROUNDS (3)] [SIZE_MIB (512)] [SMALL_FILES (5000)]
#   (root; the binaries are copied first, so a rebuild meanwhile changes nothing)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,7p' "$0" >&2; exit 2; }
ROUNDS=${3:-3}
D=$(mktemp -d /tmp/dustfs-bench-ab.XXXXXX)
trap 'rm -rf "$D"' EXIT
cp "$1" "$D/A"; cp "$2" "$D/B"
for r in $(seq "$ROUNDS"); do
  for v in A B; do
    echo "== round $r of $ROUNDS: $v ($([ $v = A ] && echo "$1" || echo "$2"))" >&2
    DUSTFS_BIN="$D/$v" bash scripts/bench.sh "${4:-512}" "${5:-5000}" 2>&1 | tee "$D/$v.$r" | tail -9 >&2
  done
done
python3 - "$D" "$ROUNDS" "$1" "$2" <<'PY'
import re, statistics, sys
d, rounds, names = sys.argv[1], int(sys.argv[2]), {"A": sys.argv[3], "B": sys.argv[4]}
rows = {}  # (build, label) -> list of (dustfs, d/bindfs, d/rclone)
for v in "AB":
    for r in range(1, rounds + 1):
        for line in open(f"{d}/{v}.{r}"):
            m = re.match(r"^(.*\))\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)x\s+(\S+)$", line.rstrip())
            if m:
                rows.setdefault((v, m[1].strip()), []).append((m[5], m[6], m[7].rstrip("x")))
            m = re.search(r"rebuilt at ([\d.]+) MB/s", line)
            if m:
                rows.setdefault((v, "repair (MB/s)"), []).append((m[1], "-", "-"))
            m = re.search(r"write ([\d.]+) CPU s/GiB, cold read ([\d.]+) CPU s/GiB, rsync ([\d.]+) CPU ms/file", line)
            if m:
                for label, x in zip(("write: machine CPU s/GiB", "cold read: machine CPU s/GiB", "rsync: machine CPU ms/file"), m.groups()):
                    rows.setdefault((v, label), []).append((x, "-", "-"))
            m = re.search(r"mount process (\d+) MiB \(during the workloads\)", line)
            if m:
                rows.setdefault((v, "mount peak RSS (MiB)"), []).append((m[1], "-", "-"))
def med(xs):
    xs = [float(x) for x in xs if x not in ("-", "")]
    return f"{statistics.median(xs):.2f}" if xs else "-"
labels = list(dict.fromkeys(l for (_, l) in rows))
print(f"\nmedians of {rounds} runs each, alternated (A = {names['A']}, B = {names['B']})")
print(f"{'workload':40} {'A dustfs':>9} {'A /bindfs':>9} {'A /rclone':>9} {'B dustfs':>9} {'B /bindfs':>9} {'B /rclone':>9} {'B higher':>9}")
for l in labels:
    cells = []
    for v in "AB":
        vals = rows.get((v, l), [])
        cells += [med([x[i] for x in vals]) for i in range(3)]
    # Round by round (A and B ran one after the other): in how many was B's figure higher?
    pairs = [(float(a[0]), float(b[0])) for a, b in zip(rows.get(("A", l), []), rows.get(("B", l), []))]
    cells.append(f"{sum(b > a for a, b in pairs)} of {len(pairs)}")
    print(f"{l:40} " + " ".join(f"{c:>9}" for c in cells))
PY
