#!/usr/bin/env bash
# Dashboard WebSocket benchmark (issue 10 item 7), against the local servers of scripts/deps.sh:
# N clients (default 10,000), 5 % of them never reading, an update every 100 ms, first through
# the dashboard's broadcast (bounded queue per client, slow clients skip or are dropped), then in
# the same run through a naive broadcast that awaits every client. Prints a Markdown table of
# delivery latency to the reading clients, deliveries, and the process's RSS.
# Usage: scripts/bench/dashboard.sh [CLIENTS] [SECONDS]   (defaults 10000 and 20)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}
scripts/deps.sh >/dev/null
cargo build --release --locked -p sluice-dashboard --features bench --bin sluice-dashboard-ws-bench
# Two descriptors per client (its end and the server's) in one process.
ulimit -n "$(( ${1:-10000} * 2 + 4096 ))" 2>/dev/null || echo "cannot raise the open-file limit; the benchmark runs as many clients as fit" >&2
SLUICE_BENCH_CLIENTS=${1:-10000} SLUICE_BENCH_SECONDS=${2:-20} RUST_LOG=error \
  "$target/release/sluice-dashboard-ws-bench"
