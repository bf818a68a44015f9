# Sourced by the benchmark and profiling scripts: builds the release binary into $B and makes
# a scratch directory $W (/tmp/dustfs-NAME.XXXXXX) that is cleaned up on exit: the mount at
# $W/mnt unmounted, the testnet at $W/net stopped (by the PIDs it recorded), the directory
# removed. A script can define `extra_cleanup` for what else it mounted.
#   . scripts/workdir.sh NAME
# DUSTFS_BIN=/path/to/dustfs uses that binary instead (A/B runs of two builds); KEEP=1 keeps
# $W (the logs) after the run.
if [ -n "${DUSTFS_BIN:-}" ]; then
  B=$DUSTFS_BIN
else
  cargo build --release -p dustfs >/dev/null
  B=$PWD/target/release/dustfs
fi
W=$(mktemp -d "/tmp/dustfs-$1.XXXXXX")
cleanup() {
  if declare -F extra_cleanup >/dev/null; then extra_cleanup; fi
  local pid
  pid=$(cat "$W/home/mount.pid" 2>/dev/null || true)
  umount "$W/mnt" 2>/dev/null || true
  # The mount finishes its last requests to suppliers (lease release, final snapshot) after
  # the unmount: stopping the testnet first left it waiting out request timeouts for a minute.
  if [ -n "$pid" ]; then
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  "$B" testnet down --dir "$W/net" >/dev/null 2>&1 || true
  sleep 1
  if [ -n "${KEEP:-}" ]; then echo "kept $W (logs: $W/home/mount.log, $W/net/node-*/log)" >&2
  else rm -rf "$W"; fi
}
trap cleanup EXIT
# Busy CPU time of the whole machine so far, in clock ticks (user + nice + system + irq +
# softirq): differences of it give a workload's CPU cost (scripts/bench.sh, scripts/profile.sh).
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
