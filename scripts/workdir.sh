# Sourced by the benchmark and profiling scripts: builds the release binary into $B and makes
# a scratch directory $W (/tmp/dustfs-NAME.XXXXXX) that is cleaned up on exit: the mount at
# $W/mnt unmounted, the testnet at $W/net stopped (by the PIDs it recorded), the directory
# removed. A script can define `extra_cleanup` for what else it mounted.
#   . scripts/workdir.sh NAME
cargo build --release -p dustfs >/dev/null
B=$PWD/target/release/dustfs
W=$(mktemp -d "/tmp/dustfs-$1.XXXXXX")
cleanup() {
  if declare -F extra_cleanup >/dev/null; then extra_cleanup; fi
  umount "$W/mnt" 2>/dev/null || true
  "$B" testnet down --dir "$W/net" >/dev/null 2>&1 || true
  sleep 1
  rm -rf "$W"
}
trap cleanup EXIT
