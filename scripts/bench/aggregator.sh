#!/usr/bin/env bash
# Aggregator benchmarks (issue 5), against the local servers of scripts/deps.sh:
#   1. throughput: 1,000,000 events, 30 % duplicates, batches of 100..1000 from 10 clients, until
#      /stats shows all consumed; and in the same run the ceiling: the same rows through a plain
#      loop of batched INSERT … unnest … ON CONFLICT DO NOTHING;
#   2. the seed's load test: 10 clients, batches of 100 with 30 % duplicates, 0.1 s pause, 60 s;
#   3. publish-to-visible latency at a steady 10,000 events/s;
#   4. RSS idle and after the load.
# Usage: scripts/bench/aggregator.sh [EVENTS] [SEED_SECONDS]   (defaults 1000000 and 60)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
events=${1:-1000000}
seed_secs=${2:-60}
port=${BENCH_PORT:-18080}
pg=${BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}
target=${CARGO_TARGET_DIR:-$repo/target}

scripts/deps.sh >/dev/null
cargo build --release --locked -p sluice-aggregator --bins
fresh_db() { psql "$pg/postgres" -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"; }
fresh_db sluice_bench_agg
fresh_db sluice_bench_ceiling
for f in migrations/*.sql; do psql "$pg/sluice_bench_ceiling" -q -f "$f"; done
stream="bench:events:$(date +%s)"

start_aggregator() {
  DATABASE_URL="$pg/sluice_bench_agg" REDIS_URL=redis://127.0.0.1:6379 PORT=$port \
    SLUICE_AGGREGATOR_HOST=127.0.0.1 SLUICE_AGGREGATOR_STREAM_KEY="$stream" \
    SLUICE_AGGREGATOR_CONSUMER_NAME=bench RUST_LOG=warn \
    "$target/release/sluice-aggregator" >/tmp/sluice-bench-aggregator.log 2>&1 &
  agg=$!
  for _ in $(seq 100); do curl -sf "localhost:$port/health" >/dev/null && return; sleep 0.1; done
  echo "aggregator did not start; see /tmp/sluice-bench-aggregator.log" >&2; exit 1
}
rss() { awk '/VmRSS/ {printf "%.1f MB", $2/1024}' "/proc/$agg/status"; }
trap 'kill -TERM ${agg:-0} 2>/dev/null || true; redis-cli del "$stream" >/dev/null' EXIT

start_aggregator
sleep 2
echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2}')"
echo "== idle RSS after start: $(rss)"
loadgen="$target/release/sluice-loadgen"

echo "== 1. throughput: $events events, 30% duplicates, batches 100..1000, 10 clients"
"$loadgen" http --url "http://127.0.0.1:$port" --events "$events" --duplicate-rate 0.3 \
  --batch-size 100..1000 --clients 10 --wait-consumed
echo "   RSS after the load: $(rss)"
echo "== 1b. ceiling: the same rows, batched INSERT … unnest … ON CONFLICT DO NOTHING, 10 clients"
"$loadgen" ceiling --database-url "$pg/sluice_bench_ceiling" --events "$events" --duplicate-rate 0.3 \
  --batch-size 100..1000 --clients 10

echo "== 2. seed load test: 10 clients x 100 events (30% dup), 0.1 s pause, ${seed_secs} s"
"$loadgen" http --url "http://127.0.0.1:$port" --duration-secs "$seed_secs" --pause-ms 100 \
  --batch-size 100 --clients 10 --seed 7 --wait-consumed

echo "== 3. publish-to-visible at a steady 10,000 events/s (10 clients x 100-event batches), 30 s"
"$loadgen" http --url "http://127.0.0.1:$port" --duration-secs 30 --rate 10000 \
  --batch-size 100 --clients 10 --seed 9 --probe --wait-consumed
sleep 5
echo "== idle RSS after all loads: $(rss)"
