#!/usr/bin/env bash
# Dashboard WebSocket benchmark (issue 10 item 7), against the local servers of scripts/deps.sh:
# N clients (default 10,000), 5 % of them never reading, an update every 100 ms, first through
# the dashboard's broadcast (bounded queue per client, slow clients skip or are dropped), then in
# the same run through a naive broadcast that awaits every client. Prints a Markdown table of
# delivery latency to the reading clients, deliveries, and the server process's RSS and CPU time.
# The clients run in a process of their own (see src/bin/ws_bench.rs).
# Usage: scripts/bench/dashboard.sh [CLIENTS] [SECONDS]   (defaults 10000 and 20)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}
scripts/deps.sh >/dev/null
cargo build --release --locked -p sluice-dashboard --features bench --bin sluice-dashboard-ws-bench
# The server and the clients are separate processes (the binary starts both), each needing one
# descriptor per client plus a few hundred: raise the soft limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$(( ${1:-10000} + 1000 ))" ]; then
  echo "open-file limit $(ulimit -n): each process runs as many clients as fit" >&2
fi
SLUICE_BENCH_CLIENTS=${1:-10000} SLUICE_BENCH_SECONDS=${2:-20} RUST_LOG=error \
  "$target/release/sluice-dashboard-ws-bench"
