#!/usr/bin/env bash
# Stream analytics benchmark (issue 12), against the local servers of scripts/deps.sh:
#   1. throughput from a backlog of SALES sales (three line items on average): the service
#      (release binary, a child process) vs a raw rdkafka consume loop over the same backlog;
#   2. produce-to-visible latency p50/p99 at a steady 10,000 sales/s;
#   3. resident memory, also in a run with MEM_PRODUCTS products and MEM_CLIENTS clients in state.
# Usage: scripts/bench/analytics.sh [SALES] [MEM_PRODUCTS] [MEM_CLIENTS]
#        (defaults 1000000, 100000 and 1000000; MEM_CLIENTS=0 skips the memory run)
# Extra flags go to the binary through BENCH_ARGS, e.g. BENCH_ARGS="--seconds 30 --partitions 6".
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}
scripts/deps.sh >/dev/null
cargo build --release --locked -p sluice-analytics --bins
echo "== 0. MongoDB-protocol server, writes per second (scripts/bench/mongo_writes.py)"
"${SLUICE_CACHE_DIR:-$HOME/.cache/sluice}/venv/bin/python" scripts/bench/mongo_writes.py
echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg)"
# shellcheck disable=SC2086  # BENCH_ARGS holds several flags on purpose
"$target/release/sluice-analytics-bench" --sales "${1:-1000000}" \
  --memory-products "${2:-100000}" --memory-clients "${3:-1000000}" ${BENCH_ARGS:-}
