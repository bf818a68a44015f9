#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ with libFuzzer, each for SECONDS (default 10), and prints the
# executions per target. Built with stable rustc flags for libFuzzer's coverage
# instrumentation, so neither nightly nor cargo-fuzz is needed (with cargo-fuzz:
# `cd fuzz && cargo fuzz run <target>`). Corpora grow in fuzz/corpus/<target> (not committed);
# a crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-10}
shift || true
all=(wire_request wire_response supplier_handle envelope shard_header metadata_stream root_record dht_record)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps the instrumentation off build scripts and proc macros.
triple=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --locked --bins --target "$triple"

status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    # Inputs that once crashed a target are committed under regressions/<target> and replayed
    # first, as seeds (libFuzzer writes new units only to the first directory, corpus/<target>).
    seeds=()
    [ -d "regressions/$t" ] && seeds=("regressions/$t")
    log=$(mktemp)
    if ./target/"$triple"/release/"$t" -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 "corpus/$t" "${seeds[@]}" >"$log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
        printf '%-16s ok     %s executions in %s s\n' "$t" "$runs" "$secs"
    else
        printf '%-16s CRASH  (input in fuzz/artifacts/%s/)\n' "$t" "$t"
        tail -40 "$log"
        status=1
    fi
    rm -f "$log"
done
exit $status
