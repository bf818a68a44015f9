#!/usr/bin/env bash
# The main job: builds dustfs and starts a local 6-node network with a mounted filesystem.
# Needs root (FUSE mount). Prints where the mount is and how to stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release -p dustfs
install -m 0755 target/release/dustfs /usr/local/bin/dustfs
ln -sf /usr/local/bin/dustfs /sbin/mount.dustfs
exec dustfs quickstart "$@"
