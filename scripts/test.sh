#!/usr/bin/env bash
# The whole test suite, as a newcomer and CI run it: installs system packages, builds, and runs
# every test (unit, property, multi-node libp2p, and end-to-end suites on real FUSE mounts).
# Needs root (the end-to-end suites mount filesystems).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --workspace --all-targets
# Two test threads: each end-to-end test runs a 6-node testnet plus a mount on this machine.
cargo test --workspace -- --test-threads=2
# Every fuzz target (decoders of untrusted bytes) for a short smoke run; longer runs:
# scripts/fuzz.sh 600.
bash scripts/fuzz.sh 15
