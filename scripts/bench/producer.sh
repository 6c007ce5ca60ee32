#!/usr/bin/env bash
# Producer benchmark (issue 6), all with publisher confirms into a quorum queue, batch 500:
#   1. MongoDB → RabbitMQ, DOCS small documents;
#   2. the same pipeline from the synthetic source, MESSAGES records (the sink path without the
#      MongoDB-protocol server, whose range scans dominate stage 1 here; see docs/benchmarks.md);
#   3. the ceiling: a raw lapin loop publishing MESSAGES messages of the same size, same window.
# Usage: scripts/bench/producer.sh [DOCS] [MESSAGES]   (defaults 100000 and 1000000)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
docs=${1:-100000}
messages=${2:-1000000}
batch=${BENCH_BATCH:-500}
target=${CARGO_TARGET_DIR:-$repo/target}
py=${SLUICE_CACHE_DIR:-$HOME/.cache/sluice}/venv/bin/python
db=sluice_bench_producer
exchange=bench.producer
queue=bench.producer.q

scripts/deps.sh >/dev/null
cargo build --release --locked -p sluice-producer --bins
cleanup() {
  for q in "$queue" "$queue.dead" "$queue.syn" "$queue.syn.dead"; do rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true; done
  "$py" -c "import pymongo; pymongo.MongoClient('mongodb://127.0.0.1:27017/?directConnection=true').drop_database('$db')"
}
trap cleanup EXIT
cleanup

echo "== machine: $(nproc) cores, $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2}'); RabbitMQ $(rabbitmqctl -q version 2>/dev/null)"
echo "== seeding $docs documents"
"$py" - "$docs" "$db" <<'PY'
import sys, time, pymongo
n, db = int(sys.argv[1]), sys.argv[2]
coll = pymongo.MongoClient("mongodb://127.0.0.1:27017/?directConnection=true")[db]["events"]
t = time.time()
for start in range(0, n, 50_000):
    coll.insert_many([{"_id": i, "topic": "orders", "n": i, "note": "small document"} for i in range(start, min(n, start + 50_000))])
print(f"   seeded in {time.time() - t:.1f}s")
PY

echo "== producer: MongoDB → RabbitMQ (quorum queue, confirms), batch $batch"
start=$(date +%s.%N)
RUST_LOG=info "$target/release/sluice-producer" run --source mongo --mongo-database "$db" --sink rabbitmq \
  --exchange "$exchange" --queue "$queue" --batch-size "$batch" --listen 127.0.0.1:0 --progress never \
  2>&1 | grep -E '"batch confirm latency"|"run finished"' | sed 's/^/   /'
end=$(date +%s.%N)
awk -v s="$start" -v e="$end" -v n="$docs" 'BEGIN {printf "   producer: %d documents in %.2fs: %.0f msg/s\n", n, e - s, n / (e - s)}'

rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true   # an empty broker for the next stages
echo "== producer: synthetic → RabbitMQ, $messages records, batch $batch"
start=$(date +%s.%N)
RUST_LOG=info TOTAL_EVENTS=$messages "$target/release/sluice-producer" run --source synthetic --sink rabbitmq \
  --exchange "$exchange" --queue "$queue.syn" --batch-size "$batch" --listen 127.0.0.1:0 --progress never \
  2>&1 | grep -E '"batch confirm latency"|"run finished"' | sed 's/^/   /'
end=$(date +%s.%N)
awk -v s="$start" -v e="$end" -v n="$messages" 'BEGIN {printf "   producer: %d records in %.2fs: %.0f msg/s\n", n, e - s, n / (e - s)}'
rabbitmqctl -q delete_queue "$queue.syn" >/dev/null 2>&1 || true

echo "== ceiling: raw lapin loop publishing like the producer (topic exchange, persistent, message id), $messages messages of 170 bytes (a synthetic record's size), batch $batch"
"$target/release/amqp-ceiling" --messages "$messages" --batch "$batch" --size 170 | sed 's/^/   /'
