#!/usr/bin/env bash
# Installs the system packages dustfs needs to build and test on Debian 12 (run as root).
# Idempotent: a second run only checks.
set -euo pipefail
pkgs=(librocksdb-dev libclang-dev clang g++ pkg-config libssl-dev fuse3 rsync bindfs sqlite3 git iptables iproute2 libacl1-dev util-linux-extra)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "dustfs: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "dustfs: the Rust toolchain (cargo) is required: https://rustup.rs" >&2; exit 1; }
# The kernel side of FUSE: /dev/fuse must exist.
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] || { echo "dustfs: /dev/fuse is missing (load the fuse kernel module)" >&2; exit 1; }
# The POSIX conformance suite the posix tests run (built once, ~2 minutes).
if ! command -v pjdfstest >/dev/null && [ ! -x "$HOME/.cargo/bin/pjdfstest" ]; then
  cargo install --locked --quiet pjdfstest@0.2.2
fi
