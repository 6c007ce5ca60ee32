#!/usr/bin/env bash
# Sends what schemathesis generates from the aggregator's own OpenAPI document to a live
# aggregator (its own database and stream), then checks what a generated request must never
# cause: a 5xx, an answer the document does not describe (status, content type, headers, body
# schema), an invalid request accepted, and a 202 for events that were then dead-lettered
# instead of stored. One check is left out: positive_data_acceptance, because the document
# cannot say in JSON Schema that no string or key anywhere inside `payload` may hold U+0000
# (the description says it); such a payload is refused with a 422, as it must be.
#
#   scripts/schemathesis.sh [AGGREGATOR_BINARY]     (default: the debug build in cargo's target dir)
#
# Reproducible: the seed and the number of examples are fixed (override with ST_SEED,
# ST_MAX_EXAMPLES). Needs the servers of scripts/deps.sh and the venv it fills.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target_dir=$(cd "$repo" && cargo metadata --format-version 1 --no-deps --locked \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin=${1:-$target_dir/debug/sluice-aggregator}
venv=${SLUICE_CACHE_DIR:-$HOME/.cache/sluice}/venv
server=${SLUICE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432}
redis_url=${SLUICE_TEST_REDIS_URL:-redis://127.0.0.1:6379}
seed=${ST_SEED:-20261201}
examples=${ST_MAX_EXAMPLES:-200}

[ -x "$bin" ] || { echo "no aggregator binary at $bin (cargo build -p sluice-aggregator)" >&2; exit 1; }
[ -x "$venv/bin/schemathesis" ] || { echo "no schemathesis in $venv (run scripts/deps.sh)" >&2; exit 1; }

name=sluice_st_$$_$RANDOM
stream="$name:events"
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  redis-cli -u "$redis_url" DEL "$stream" "$stream:dead" >/dev/null 2>&1 || true
  psql -q "$server/postgres" -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

psql -q "$server/postgres" -c "CREATE DATABASE \"$name\"" >/dev/null
DATABASE_URL="$server/$name" REDIS_URL="$redis_url" PORT=0 SLUICE_AGGREGATOR_HOST=127.0.0.1 \
  SLUICE_AGGREGATOR_STREAM_KEY="$stream" SLUICE_AGGREGATOR_CONSUMER_NAME="$name" RUST_LOG=info \
  "$bin" >"$work/aggregator.log" 2>&1 &
pid=$!
# The port it bound is in its `listening` log line.
for _ in $(seq 1 100); do
  addr=$(grep -o '"addr":"[0-9.:]*"' "$work/aggregator.log" | head -1 | cut -d'"' -f4 || true)
  [ -n "$addr" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/aggregator.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "aggregator did not start" >&2; cat "$work/aggregator.log" >&2; exit 1; }
base="http://$addr"

cd "$work"   # schemathesis writes its working files to the current directory
echo "schemathesis against $base (seed $seed, $examples examples per operation)"
"$venv/bin/schemathesis" run "$base/openapi.json" \
  --checks all --exclude-checks positive_data_acceptance --phases examples,coverage,fuzzing \
  --max-examples "$examples" --seed "$seed" --generation-database none \
  --workers 2 --request-timeout 10 --no-color \
  || { echo "schemathesis found problems (aggregator log: below)" >&2; tail -50 "$work/aggregator.log" >&2; exit 1; }

# Every 202 must end up stored: wait until the stream is drained, then nothing may be dead.
for _ in $(seq 1 300); do
  [ "$(redis-cli -u "$redis_url" XLEN "$stream")" = 0 ] && break
  sleep 0.1
done
left=$(redis-cli -u "$redis_url" XLEN "$stream")
dead=$(redis-cli -u "$redis_url" XLEN "$stream:dead")
stats=$(curl -sf "$base/stats")
echo "after the run: stream $left, dead-lettered $dead; /stats $(echo "$stats" | head -c 200)"
if [ "$left" != 0 ] || [ "$dead" != 0 ]; then
  echo "FAILED: accepted events were not all stored (stream $left, dead $dead)" >&2
  redis-cli -u "$redis_url" XRANGE "$stream:dead" - + COUNT 3 >&2
  exit 1
fi
echo "schemathesis: ok"
