#!/usr/bin/env bash
# Profiles one dustfs workload system-wide with perf (every process: the mount, the suppliers,
# the kernel) and prints where the CPU time went, by process and by function.
# Usage: scripts/profile.sh write|read|rsync [SIZE (512)]   (root; builds release; needs perf)
#   write: copy SIZE MiB of random data in and `dustfs sync` (durable on suppliers)
#   rsync: `rsync -a` of SIZE files of 10 KiB (as scripts/bench.sh makes them) and `dustfs sync`;
#          the CPU figures are then per GiB of those files
#   read:  cold sequential read of it after `dustfs cache drop` and dropping the page cache
#          (profiled), then a warm one (timed only)
# The raw profile stays in /tmp/dustfs-profile.data for `perf report -i`. PERF=0 only times it.
# CALLGRAPH=dwarf,16384 unwinds through Rust code built without frame pointers (larger profile).
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-write}
SIZE_MIB=${2:-512}
command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 1; }
. scripts/workdir.sh profile
mkdir -p "$W/mnt"
if [ "$WHAT" = rsync ]; then
  python3 scripts/small-files.py "$W/small" "$SIZE_MIB"
  NFILES=$SIZE_MIB
  SIZE_MIB=$(python3 -c "print($NFILES * 10240 / 2**20)")
else
  head -c $((SIZE_MIB << 20)) /dev/urandom > "$W/big"
fi
"$B" testnet up --dir "$W/net" --nodes 6 >/dev/null
"$B" --home "$W/home" init --bootstrap "$W/net/bootstrap" --listen /ip4/127.0.0.1/tcp/0 \
  --listen /ip4/127.0.0.1/udp/0/quic-v1 >/dev/null
"$B" --home "$W/home" mount "$W/mnt" >/dev/null
for _ in $(seq 50); do
  n=$("$B" --home "$W/home" status --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["suppliers"]))')
  [ "$n" -ge 6 ] && break; sleep 0.2
done
# Busy CPU time of the whole machine (user + nice + system + irq + softirq, in clock ticks):
# on this CPU-bound testbed, CPU seconds per GiB compares two builds more steadily than MiB/s.
# Steal (time the hypervisor gave this VM's CPUs to others) and iowait are printed too: a run
# with much of either was slowed by the host or its disk, not by dustfs's CPU work.
steal() { awk '/^cpu / {print $9}' /proc/stat; }
iowait() { awk '/^cpu / {print $6}' /proc/stat; }
# CPU seconds (user + system) a process has used so far: the mount's and the suppliers' shares
# apart, since a change to one side should show there first.
cpu_of() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# The mount's main thread alone: it serves FUSE (reads decrypt and check chunks there).
fuse_cpu() { local p; p=$(cat "$W/home/mount.pid"); cpu_of "$p/task/$p"; }
sup_cpu() { local i; for i in 1 2 3 4 5 6; do cpu_of "$(cat "$W/net/node-$i/pid")"; done | awk '{s += $1} END {print s}'; }
run() {
  local t0 t1 c0 c1 m0 m1 u0 u1 f0 f1
  m0=$(cpu_of "$(cat "$W/home/mount.pid")"); u0=$(sup_cpu); f0=$(fuse_cpu)
  c0=$(busy); s0=$(steal); w0=$(iowait)
  t0=$(date +%s.%N)
  if [ "${PERF:-1}" = 0 ]; then bash -c "$1"; else
    perf record -q -a --call-graph "${CALLGRAPH:-fp}" -e cpu-clock -F 499 -o /tmp/dustfs-profile.data -- bash -c "$1" 2>/dev/null
  fi
  t1=$(date +%s.%N)
  c1=$(busy); s1=$(steal); w1=$(iowait)
  m1=$(cpu_of "$(cat "$W/home/mount.pid")"); u1=$(sup_cpu); f1=$(fuse_cpu)
  python3 -c "print(f'$WHAT: {$SIZE_MIB / ($t1 - $t0):.1f} MiB/s, {($c1 - $c0) / $(getconf CLK_TCK) * 1024 / $SIZE_MIB:.2f} CPU s/GiB, {($s1 - $s0) / $(getconf CLK_TCK):.1f} s stolen, {($w1 - $w0) / $(getconf CLK_TCK):.1f} s waiting on disk' + ('' if '${PERF:-1}' == '0' else ' under perf'))"
  if [ -n "${NFILES:-}" ]; then python3 -c "print(f'{$NFILES / ($t1 - $t0):.0f} files/s')"; fi
  python3 -c "print(f'CPU s/GiB by process: mount {($m1 - $m0) * 1024 / $SIZE_MIB:.2f} (its FUSE thread {($f1 - $f0) * 1024 / $SIZE_MIB:.2f}), suppliers {($u1 - $u0) * 1024 / $SIZE_MIB:.2f}')"
}
rss() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$1/status" 2>/dev/null || echo "?"; }
case $WHAT in
  write) run "cp '$W/big' '$W/mnt/big' && echo \"cp done after \$(( \$(date +%s%N) / 1000000 - $(date +%s%3N) )) ms\" && '$B' --home '$W/home' sync >/dev/null" ;;
  rsync)
    run "rsync -a '$W/small/' '$W/mnt/small/' && '$B' --home '$W/home' sync >/dev/null"
    ;;
  read)
    cp "$W/big" "$W/mnt/big" && "$B" --home "$W/home" sync >/dev/null
    "$B" --home "$W/home" cache drop >/dev/null; sync; echo 3 > /proc/sys/vm/drop_caches
    # The mount's peak RSS in the read alone (the copy before it peaks higher): writing 5 to
    # clear_refs resets VmHWM to the current RSS.
    copy_peak=$(rss "$(cat "$W/home/mount.pid")")
    echo 5 > "/proc/$(cat "$W/home/mount.pid")/clear_refs"
    run "cat '$W/mnt/big' > /dev/null"
    echo "mount peak RSS: $copy_peak MiB while the file was copied in, $(rss "$(cat "$W/home/mount.pid")") MiB in the cold read"
    t0=$(date +%s.%N); cat "$W/mnt/big" > /dev/null; t1=$(date +%s.%N)
    python3 -c "print(f'warm read right after: {$SIZE_MIB / ($t1 - $t0):.1f} MiB/s')"
    "$B" --home "$W/home" status --json | python3 -c 'import json,sys; print("spare (hedged) shard fetches:", json.load(sys.stdin)["hedged_fetches"])' ;;
  *) echo "usage: $0 write|read|rsync [SIZE]" >&2; exit 2 ;;
esac
# (for read, VmHWM was reset before the cold read: peaks since then)
echo "peak RSS$([ "$WHAT" = read ] && echo ' since the cold read began'): mount $(rss "$(cat "$W/home/mount.pid")") MiB, suppliers$(for i in 1 2 3 4 5 6; do printf ' %s' "$(rss "$(cat "$W/net/node-$i/pid")")"; done) MiB"
[ "${PERF:-1}" = 0 ] && exit 0
echo "--- CPU samples by process (mount: pid $(cat "$W/home/mount.pid"); suppliers:$(for i in 1 2 3 4 5 6; do printf ' %s' "$(cat "$W/net/node-$i/pid")"; done))"
perf report -i /tmp/dustfs-profile.data --no-children --sort pid --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15
echo "--- by function (self time)"
perf report -i /tmp/dustfs-profile.data --no-children --sort comm,sym --stdio -g none 2>/dev/null \
  | grep -v '^#' | grep -v '^$' | head -45
