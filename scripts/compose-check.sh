#!/usr/bin/env bash
# `make compose-check`: proves `docker compose up` end to end under a real Docker engine.
#
#   scripts/compose-check.sh                 run the check; fails if no Docker engine can be had
#   scripts/compose-check.sh --if-possible   the same, but skips with one line when no engine can
#                                            be started (what `make test` runs)
#
# Steps (each printed with its time): start dockerd if none answers (data under
# $SLUICE_CACHE_DIR/docker, stopped again at the end); build the service binaries on the host;
# build stand-ins for the images this machine cannot pull (deploy/stand-ins/); build the service
# images from deploy/Dockerfile with BINARIES=prebuilt; `docker compose up -d`; every service
# healthy; `docker compose restart aggregator` while the demo run is being stored; the demo's
# exact counts in /stats; the README quickstart as written; Prometheus targets and /metrics;
# `down` + `up` keeps the data; `down -v` leaves nothing behind. On a failure the logs of the
# failing containers are printed, and the stack is removed (SLUICE_CHECK_KEEP=1 keeps it).
#
# Settings (environment):
#   SLUICE_CHECK_PROFILE       debug (default) or release: which host build goes into the images
#   SLUICE_CHECK_CARGO_BUILD=no  take target/<profile>/sluice-* as they are (`make test`: its
#                              nextest run has just built them; a `cargo build --bin …` would
#                              rebuild dependencies with other features)
#   SLUICE_DEMO_EVENTS         events of the demo producer run (default 100000, as compose.yaml's
#                              own default: enough that the restart lands mid-run)
#   SLUICE_CHECK_HEALTHY_WITHIN  seconds for every service to become healthy (default 180)
#   SLUICE_CHECK_PROJECT       compose project name (default sluice-check)
#   SLUICE_CHECK_KEEP=1        leave the stack (and a dockerd this script started) running
#   SLUICE_COMPOSE_CHECK=skip  skip the check with one line (for `make test` on a busy machine)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cache_dir=${SLUICE_CACHE_DIR:-$HOME/.cache/sluice}
work=$cache_dir/compose-check
profile=${SLUICE_CHECK_PROFILE:-debug}
export SLUICE_DEMO_EVENTS=${SLUICE_DEMO_EVENTS:-100000}
healthy_within=${SLUICE_CHECK_HEALTHY_WITHIN:-180}
project=${SLUICE_CHECK_PROJECT:-sluice-check}
if_possible=; [ "${1:-}" = --if-possible ] && if_possible=1
mkdir -p "$work"

# --- output --------------------------------------------------------------------------------
t0=$SECONDS
step_name='' step_start=''
step() { step_name=$1; step_start=$SECONDS; }
ok() {
  printf 'compose-check %-52s ok %4ds  (at %ds)%s\n' "$step_name" $((SECONDS - step_start)) \
    $((SECONDS - t0)) "${1:+  $1}"
}
skip() { echo "compose-check: skipped: $*"; exit 0; }
# fail MESSAGE [SERVICE...]: prints the message, the logs of SERVICE (or of every container that
# is unhealthy or exited non-zero), and exits; the EXIT trap removes the stack.
fail() {
  local msg=$1; shift
  printf 'compose-check %-52s FAILED after %ds\n  %s\n' "$step_name" $((SECONDS - step_start)) "$msg"
  [ -n "${compose_ready:-}" ] && print_logs "$@"
  exit 1
}
print_logs() {
  local svcs=("$@") s id
  if [ ${#svcs[@]} -eq 0 ]; then
    for s in "${services[@]}"; do
      id=$(container "$s") || continue
      case $(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}} {{.State.ExitCode}}' "$id") in
        "running healthy 0" | "running  0" | "exited  0" | "exited healthy 0" | "exited unhealthy 0") ;;
        *) svcs+=("$s") ;;
      esac
    done
  fi
  for s in "${svcs[@]}"; do
    id=$(container "$s") || { echo "---- $s: no container"; continue; }
    echo "---- $s: $(docker inspect -f '{{.State.Status}} {{if .State.Health}}({{.State.Health.Status}}){{end}} exit {{.State.ExitCode}}' "$id"), last 60 log lines"
    docker logs --tail 60 "$id" 2>&1 | sed 's/^/  | /'
  done
}

# --- Docker engine -------------------------------------------------------------------------
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
apt_install() {
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >"$work/apt.log" 2>&1 \
    || { as_root apt-get update -qq >>"$work/apt.log" 2>&1 \
      && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >>"$work/apt.log" 2>&1; }
}
engine_up() { docker info >/dev/null 2>&1; }
started_dockerd=
stop_dockerd() {
  [ -n "$started_dockerd" ] || return 0
  local pid; pid=$(cat "$work/dockerd.pid" 2>/dev/null) || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  echo "compose-check: dockerd (pid $pid) did not stop within 30 s; left running" >&2
}

compose_ready=
cleanup() {
  local rc=$?
  if [ -n "$compose_ready" ] && [ -z "${SLUICE_CHECK_KEEP:-}" ]; then
    docker rm -f "$project-scrape-producer" >/dev/null 2>&1 || true
    "${compose[@]}" down -v --remove-orphans --timeout 20 >"$work/cleanup.log" 2>&1 || true
  fi
  if [ -z "${SLUICE_CHECK_KEEP:-}" ]; then stop_dockerd; fi
  rm -rf "$work/context"
  exit "$rc"
}

# One check at a time per machine (they would share the engine, ports and project name).
exec 9>"$work/lock"
flock -w 1200 9 || { echo "compose-check: another run holds $work/lock" >&2; exit 1; }

step "Docker engine"
case ${SLUICE_COMPOSE_CHECK:-} in skip | 0 | no) skip "SLUICE_COMPOSE_CHECK=${SLUICE_COMPOSE_CHECK}" ;; esac
unavailable() {
  if [ -n "$if_possible" ]; then skip "no Docker engine can be started here ($*)"; fi
  fail "no Docker engine: $*"
}
trap cleanup EXIT
engine_note="already running"
if ! engine_up; then
  if [ "$(id -u)" != 0 ] && ! sudo -n true 2>/dev/null; then unavailable "none running, and starting one needs root"; fi
  if ! command -v dockerd >/dev/null; then
    apt_install docker.io || unavailable "apt-get install docker.io failed (see $work/apt.log)"
  fi
  [ -S /var/run/docker.sock ] && ! engine_up && as_root rm -f /var/run/docker.sock
  : >"$work/dockerd.log"
  as_root setsid dockerd --data-root "$cache_dir/docker" --pidfile "$work/dockerd.pid" \
    >>"$work/dockerd.log" 2>&1 </dev/null &
  started_dockerd=1
  for _ in $(seq 150); do engine_up && break; sleep 0.2; done
  if ! engine_up; then
    tail -5 "$work/dockerd.log" >&2
    stop_dockerd
    unavailable "dockerd did not answer within 30 s (log: $work/dockerd.log)"
  fi
  engine_note="started dockerd, data in $cache_dir/docker"
fi
# Compose v2 (`docker compose`) where installed, else the docker-compose 1.29 that Debian ships.
if docker compose version >/dev/null 2>&1; then compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null || apt_install docker-compose; then compose_cmd=(docker-compose)
else fail "neither docker compose nor docker-compose is available"; fi
# A builder with BuildKit, which builds only the stages a target needs (the legacy builder would
# run the Rust toolchain stage, whose base image cannot be pulled here): buildx where installed,
# else a docker CLI older than 23 (Debian's 20.10) with DOCKER_BUILDKIT=1.
bk_build=
if docker buildx version >/dev/null 2>&1; then bk_build="docker buildx build --load"
else
  for cli in docker /usr/bin/docker; do
    v=$("$cli" version -f '{{.Client.Version}}' 2>/dev/null) || continue
    if [ "${v%%.*}" -lt 23 ] 2>/dev/null; then bk_build="env DOCKER_BUILDKIT=1 $cli build"; break; fi
  done
fi
[ -n "$bk_build" ] || fail "no BuildKit builder: install docker-buildx, or Debian's docker.io CLI"
export SLUICE_DOCKER_BUILD="$bk_build -q" SLUICE_STANDIN_LOG_DIR=$work
ok "$engine_note; ${compose_cmd[*]}"

# --- what compose.yaml defines ---------------------------------------------------------------
# One line per service: name, image, Dockerfile target ("-" for an image used as it is),
# binary that target copies ("-" if none), restart policy.
describe() {
  "${compose_cmd[@]}" -f compose.yaml config | python3 -c '
import re, sys, yaml
cfg = yaml.safe_load(sys.stdin)
dockerfile = open("deploy/Dockerfile").read()
for name, svc in cfg["services"].items():
    build = svc.get("build") or {}
    target = build.get("target", "-") if build else "-"
    binary = "-"
    if target != "-":
        m = re.search(r"^FROM\s+\S+\s+AS\s+" + re.escape(target) + r"\s*$(.*?)(?=^FROM\s|\Z)", dockerfile, re.M | re.S | re.I)
        b = m and re.search(r"COPY\s+--from=builder\s+/out/(\S+)", m.group(1))
        binary = b.group(1) if b else "-"
    print(name, svc.get("image", "-"), target, binary, svc.get("restart", "no"))
'
}
step "compose.yaml services"
mapfile -t described < <(describe) || fail "docker compose config failed"
[ ${#described[@]} -gt 0 ] || fail "docker compose config listed no services"
# Binary targets of the workspace, so a service whose crate does not exist yet is skipped.
workspace_bins=$(cargo metadata --no-deps --format-version 1 --locked 2>/dev/null | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    for t in p["targets"]:
        if "bin" in t["kind"]: print(t["name"])
') || fail "cargo metadata failed"
services=() built=() bins=() skipped=() stock_images=()
for line in "${described[@]}"; do
  read -r name image target binary restart <<<"$line"
  if [ "$target" = - ]; then services+=("$name"); stock_images+=("$image"); continue; fi
  if [ "$binary" = - ]; then fail "service $name: Dockerfile target $target copies no /out/sluice-* binary"; fi
  if ! grep -qx "$binary" <<<"$workspace_bins"; then
    echo "compose-check: skipping service $name: the workspace has no binary $binary yet"
    skipped+=("$name"); continue
  fi
  services+=("$name"); built+=("$name $image $target $binary $restart"); bins+=("$binary")
done
ok "${#services[@]} to start: ${services[*]}"

# --- binaries --------------------------------------------------------------------------------
step "cargo build, $profile profile (${#bins[@]} binaries)"
target_dir=${CARGO_TARGET_DIR:-$repo/target}
cargo_args=(build --locked); bin_dir=$target_dir/debug
if [ "$profile" = release ]; then cargo_args+=(--release); bin_dir=$target_dir/release; fi
for b in "${bins[@]}"; do cargo_args+=(--bin "$b"); done
if [ "${SLUICE_CHECK_CARGO_BUILD:-yes}" = no ]; then
  for b in "${bins[@]}"; do [ -x "$bin_dir/$b" ] || fail "$bin_dir/$b is missing (SLUICE_CHECK_CARGO_BUILD=no)"; done
else
  cargo "${cargo_args[@]}" >"$work/cargo.log" 2>&1 || { tail -30 "$work/cargo.log"; fail "cargo build failed (log: $work/cargo.log)"; }
fi
rm -rf "$work/context"; mkdir -p "$work/context"
for b in "${bins[@]}"; do cp "$bin_dir/$b" "$work/context/$b"; done
ok "$(du -sh "$work/context" | cut -f1) of binaries"

# --- images ----------------------------------------------------------------------------------
step "stand-ins for images that cannot be pulled"
runtime_base=$(sed -n 's/^FROM[[:space:]]\+\([^[:space:]]\+\)[[:space:]]\+AS[[:space:]]\+runtime[[:space:]]*$/\1/Ip' deploy/Dockerfile)
missing=()
for image in "$runtime_base" "${stock_images[@]}"; do
  docker image inspect "$image" >/dev/null 2>&1 || missing+=("$image")
done
if [ ${#missing[@]} -gt 0 ] && [ -z "$(command -v debootstrap)" ] && ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
  apt_install debootstrap || fail "apt-get install debootstrap failed (see $work/apt.log)"
fi
if [ ${#missing[@]} -gt 0 ]; then
  deploy/stand-ins/build.sh "${missing[@]}" | sed 's/^/  /' || fail "building the stand-ins failed"
fi
# The override is for stand-ins only: with the official images compose.yaml runs as it is.
overrides=()
for image in "${stock_images[@]}"; do
  if [ -n "$(docker image inspect -f '{{index .Config.Labels "sluice.stand-in"}}' "$image")" ]; then
    overrides=(-f deploy/stand-ins/compose.stand-ins.yaml); break
  fi
done
ok "built ${#missing[@]}; override: ${overrides[*]:-none}"

step "service images (deploy/Dockerfile, BINARIES=prebuilt)"
read -ra bk <<<"$bk_build"
for entry in "${built[@]}"; do
  read -r name image target binary restart <<<"$entry"
  "${bk[@]}" -f deploy/Dockerfile --build-arg BINARIES=prebuilt --target "$target" -t "$image" \
    "$work/context" >"$work/build-$name.log" 2>&1 \
    || { tail -30 "$work/build-$name.log"; fail "docker build --target $target failed"; }
done
ok "$(for e in "${built[@]}"; do read -r _ i _ <<<"$e"; printf '%s ' "$i"; done)"

compose=("${compose_cmd[@]}" -p "$project" -f compose.yaml "${overrides[@]}")
# Leftovers of a killed run go first: their ports would look taken.
"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true

# --- ports -----------------------------------------------------------------------------------
# compose.yaml's host ports are ${SLUICE_PORT_<NAME>:-default}: keep each default that is free on
# 127.0.0.1, choose a free one for the others (e.g. the servers of scripts/deps.sh).
port_free() { python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
moved=()
while read -r var default; do
  [ -n "${!var:-}" ] && continue
  if port_free "$default"; then export "$var=$default"; else
    p=$(free_port); export "$var=$p"; moved+=("$var=$p")
  fi
done < <(grep -o '\${SLUICE_PORT_[A-Z_]*:-[0-9]*}' compose.yaml | sed 's/\${\(.*\):-\(.*\)}/\1 \2/' | sort -u)
agg=http://127.0.0.1:${SLUICE_PORT_AGGREGATOR:-8080}
prom=http://127.0.0.1:${SLUICE_PORT_PROMETHEUS:-9090}
rabbit_ui=http://127.0.0.1:${SLUICE_PORT_RABBITMQ_UI:-15672}

container() {
  local id
  id=$(docker ps -aq --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=$1" --filter "label=com.docker.compose.oneoff=False" | awk 'NR == 1')
  [ -n "$id" ] && echo "$id"
}
state() { docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}}' "$1" 2>/dev/null; }
restart_policy() { local e; for e in "${built[@]}"; do read -r n _ _ _ r <<<"$e"; [ "$n" = "$1" ] && { echo "$r"; return; }; done; echo always; }

# wait_healthy: every long-running service healthy (or running, without a health check); a
# run-to-completion service (restart "no") running or exited 0.
wait_healthy() {
  local deadline=$((SECONDS + healthy_within)) s id st pending
  while :; do
    pending=()
    for s in "${services[@]}"; do
      id=$(container "$s") || { pending+=("$s:missing"); continue; }
      st=$(state "$id")
      case "$(restart_policy "$s") $st" in
        "no exited "*" 0") ;;
        *"exited "*) fail "$s exited ($st)" "$s" ;;
        *" running healthy "* | *" running none "*) ;;
        *) pending+=("$s:${st% *}") ;;
      esac
    done
    [ ${#pending[@]} -eq 0 ] && return 0
    ((SECONDS < deadline)) || fail "not healthy within ${healthy_within} s: ${pending[*]}" "${pending[@]%%:*}"
    sleep 1
  done
}

# http GET URL: the body, failing the step on a non-2xx answer.
http() { curl -fsS --max-time 10 "$@"; }
stats() { http "$agg/stats"; }
json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }

# --- the demo run's expected counts ---------------------------------------------------------
# Recomputes the producer's synthetic "events" scenario (services/producer/src/source/synthetic.rs
# with fastrand 2's wyrand): record i repeats original(i); the distinct originals are what the
# aggregator must store once each. Independent of the code under test.
expected_unique() {
  python3 - "$@" <<'PY'
import sys
seed, total, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
M = (1 << 64) - 1
def gen(st):
    s = (st[0] + 0x2D358DCCAA6C78A5) & M
    st[0] = s
    t = s * (s ^ 0x8BB84B93962EACC9)
    return (t & M) ^ (t >> 64)
def f64(st):
    while True:
        x = float(gen(st) >> 1) * (1.0 / (1 << 63))
        if x < 1.0:
            return x
def below(st, n):
    m = gen(st) * n
    if m & M < n:
        t = ((-n) & M) % n
        while m & M < t:
            m = gen(st) * n
    return m >> 64
def original(i):
    while True:
        st = [seed ^ ((i * 0x9E3779B97F4A7C15) & M)]
        if i == 0 or f64(st) >= rate:
            return i
        i = below(st, i)
print(len({original(i) for i in range(total)}))
PY
}
demo=$("${compose_cmd[@]}" -f compose.yaml config | python3 -c '
import sys, yaml
p = yaml.safe_load(sys.stdin)["services"].get("producer") or {}
e = p.get("environment") or {}
print(" ".join(p.get("command") or []), "|", e.get("TOTAL_EVENTS", 10000), e.get("DUPLICATE_RATE", 0), e.get("SLUICE_PRODUCER_SEED", 42), e.get("SLUICE_PRODUCER_SCENARIO", "events"))')
read -r demo_total demo_rate demo_seed demo_scenario <<<"${demo#*| }"
if [ "${demo%% |*}" != "run --source synthetic --sink rabbitmq" ] || [ "$demo_scenario" != events ]; then
  fail "the demo producer is no longer a synthetic events run to RabbitMQ ($demo): update this check"
fi
demo_unique=$(expected_unique "$demo_seed" "$demo_total" "$demo_rate")
demo_dups=$((demo_total - demo_unique))

# --- up --------------------------------------------------------------------------------------
step "docker compose up -d"
volumes_before=$(docker volume ls -q | sort)
compose_ready=1
"${compose[@]}" up -d "${services[@]}" >"$work/up.log" 2>&1 || { cat "$work/up.log"; fail "docker compose up failed"; }
ok "${moved[*]:+ports moved: ${moved[*]}}"

# --- restart during the demo, exact counts ---------------------------------------------------
# The restart comes as soon as the aggregator has stored the first demo events, so it lands in
# the middle of the run unless the whole demo is stored within one poll (0.2 s): the AMQP
# ingress writes ready messages in rounds, and 10,000 events were.
step "restart aggregator while the demo is stored"
received=0
deadline=$((SECONDS + healthy_within))
until received=$(stats 2>/dev/null | json 'd["received"]' 2>/dev/null) && ((received >= 1)); do
  ((SECONDS < deadline)) || fail "the aggregator stored no demo event within ${healthy_within} s" aggregator producer
  sleep 0.2
done
((received < demo_total)) || fail "the demo ($demo_total events) was stored before the restart: raise SLUICE_DEMO_EVENTS"
"${compose[@]}" restart aggregator >"$work/restart.log" 2>&1 || { cat "$work/restart.log"; fail "docker compose restart aggregator failed"; }
ok "restarted at $received of $demo_total stored"

step "every service healthy (limit ${healthy_within} s)"
wait_healthy
ok


step "demo run complete, /stats exact"
deadline=$((SECONDS + 60 + demo_total / 100))
# producer_done: waits for the producer container to exit 0; sets $id.
producer_done() {
  local st
  while :; do
    id=$(container producer) || fail "no producer container"
    st=$(state "$id")
    case $st in
      "exited "*" 0") return 0 ;;
      exited*) fail "the producer exited ($st)" producer ;;
    esac
    ((SECONDS < deadline)) || fail "the producer did not finish ($st)" producer
    sleep 1
  done
}
producer_done
# (grep reads the log from a variable: in a pipeline, grep -q ending first makes docker logs die
# of SIGPIPE, which pipefail reports as a failure)
grep -q "\"run finished\",\"read\":$demo_total,\"sent\":$demo_total,\"dead_lettered\":0,\"complete\":true" <<<"$(docker logs "$id" 2>&1)" \
  || fail "the producer's log has no \"run finished\" with sent $demo_total, none dead-lettered" producer
want="$demo_total $demo_unique $demo_dups"
until got=$(stats | json '"%d %d %d" % (d["received"], d["unique_processed"], d["duplicate_dropped"])') && [ "$got" = "$want" ]; do
  ((SECONDS < deadline)) || fail "/stats received/unique/duplicates: $got, expected $want" aggregator
  [ "${got%% *}" -gt "$demo_total" ] 2>/dev/null && fail "/stats counted more than the demo sent: $got, expected $want" aggregator
  sleep 1
done
sleep 3
got=$(stats | json '"%d %d %d" % (d["received"], d["unique_processed"], d["duplicate_dropped"])')
[ "$got" = "$want" ] || fail "/stats changed after the demo: $got, expected $want" aggregator
ok "received $demo_total, unique $demo_unique, duplicates $demo_dups"

# --- README quickstart -----------------------------------------------------------------------
step "README quickstart as written"
# The curl lines of the README's Quickstart block, continuation lines joined; the aggregator's
# port replaced only if this run had to move it.
mapfile -t quick < <(sed -n '/^## Quickstart (Docker)/,/^```$/p' README.md | sed -n '/^```sh/,/^```$/p' \
  | sed -e ':a' -e '/\\$/N; s/\\\n[[:space:]]*/ /; ta' | grep '^curl ' \
  | sed "s#localhost:8080#localhost:${SLUICE_PORT_AGGREGATOR:-8080}#g")
[ ${#quick[@]} -ge 4 ] || fail "found ${#quick[@]} curl lines in the README quickstart, expected 4"
for i in "${!quick[@]}"; do
  out=$(bash -c "curl() { command curl -fsS --max-time 10 \"\$@\"; }; ${quick[$i]}" 2>&1) \
    || fail "README line failed: ${quick[$i]}: $out" aggregator
  echo "$out" >"$work/quickstart-$i.json"
done
grep -q '"status"' "$work/quickstart-0.json" || fail "/health answered: $(cat "$work/quickstart-0.json")" aggregator
want="$((demo_total + 1)) $((demo_unique + 1)) $demo_dups"
deadline=$((SECONDS + 30))
until got=$(stats | json '"%d %d %d" % (d["received"], d["unique_processed"], d["duplicate_dropped"])') && [ "$got" = "$want" ]; do
  ((SECONDS < deadline)) || fail "after the quickstart publish /stats says $got, expected $want" aggregator
  sleep 0.5
done
events=$(http "$agg/events?topic=user.login&limit=10")
grep -q '"e-1"' <<<"$events" || fail "/events?topic=user.login has no e-1: $events" aggregator
ok "${#quick[@]} commands; the published event is stored and listed"

# --- the dashboard's API ---------------------------------------------------------------------
if grep -qx dashboard < <(printf '%s\n' "${built[@]%% *}"); then
  step "dashboard API: login, /api/system, /api/results"
  read -r admin_user admin_pass < <("${compose_cmd[@]}" -f compose.yaml config | python3 -c '
import sys, yaml
e = yaml.safe_load(sys.stdin)["services"]["dashboard"].get("environment") or {}
print(e.get("SLUICE_DASHBOARD_ADMIN_USER", ""), e.get("SLUICE_DASHBOARD_ADMIN_PASSWORD", ""))')
  [ -n "$admin_pass" ] || fail "compose.yaml gives the dashboard no SLUICE_DASHBOARD_ADMIN_PASSWORD"
  dash=http://127.0.0.1:${SLUICE_PORT_DASHBOARD:-8083}
  jar=$work/dashboard.cookies; rm -f "$jar"
  login=$(http -c "$jar" -H 'content-type: application/json' \
    -d "{\"name\": \"$admin_user\", \"password\": \"$admin_pass\"}" "$dash/api/login") \
    || fail "POST /api/login as $admin_user failed" dashboard
  [ "$(json 'd["role"]' <<<"$login")" = admin ] || fail "login answered $login" dashboard
  got=$(http -b "$jar" "$dash/api/system" | json '"%d %d %d" % (d["aggregator"]["received"], d["aggregator"]["unique_processed"], d["aggregator"]["duplicate_dropped"])') \
    || fail "GET /api/system failed" dashboard
  [ "$got" = "$want" ] || fail "/api/system shows the aggregator at $got, /stats at $want" dashboard
  http -b "$jar" "$dash/api/results/winners" | json 'd["collection"]' >/dev/null \
    || fail "GET /api/results/winners failed (MongoDB)" dashboard mongo
  ok "the aggregator's counts as in /stats; results readable"
fi

# --- retail events → Kafka → analytics → MongoDB → the dashboard ----------------------------
if grep -qx analytics < <(printf '%s\n' "${built[@]%% *}") && [ -n "${jar:-}" ]; then
  step "retail -> Kafka -> analytics -> MongoDB -> dashboard"
  retail_total=500
  "${compose[@]}" run --rm --no-deps producer run --source synthetic --scenario retail --sink kafka \
    --total-events "$retail_total" --checkpoint-file /tmp/retail-checkpoint.json >"$work/retail.log" 2>&1 \
    || { tail -20 "$work/retail.log"; fail "the retail producer run failed" kafka; }
  grep -q "\"run finished\",\"read\":$retail_total,\"sent\":$retail_total,\"dead_lettered\":0" "$work/retail.log" \
    || { tail -20 "$work/retail.log"; fail "the retail run did not send all $retail_total records" kafka; }
  # The generator's fixed mix (synthetic.rs): record i is a sale when i % 10 < 6, an inventory
  # update when i % 10 < 9, else a client; the analytics service must apply each exactly once.
  want_retail=$(python3 -c 'import sys; n=int(sys.argv[1]); r=[i % 10 for i in range(n)]; print(sum(x < 6 for x in r), sum(6 <= x < 9 for x in r), sum(x == 9 for x in r))' "$retail_total")
  analytics_counts() {
    http "http://127.0.0.1:${SLUICE_PORT_ANALYTICS:-8082}/metrics" | python3 -c '
import re, sys
n = {}
for line in sys.stdin:
    m = re.match(r"analytics_messages_total\{(.*)\} (\S+)", line)
    if m:
        labels = dict(re.findall(r"(\w+)=\"([^\"]*)\"", m.group(1)))
        key = labels["topic"] if labels["outcome"] != "dead_lettered" else "dead"
        n[key] = n.get(key, 0) + int(float(m.group(2)))
print(n.get("topic-raw-sales", 0), n.get("topic-inventory-updates", 0), n.get("topic-clients", 0), n.get("dead", 0))'
  }
  deadline=$((SECONDS + 90))
  until got=$(analytics_counts) && [ "$got" = "$want_retail 0" ]; do
    ((SECONDS < deadline)) || fail "analytics applied (sales inventory clients dead-lettered) $got, expected $want_retail 0" analytics
    sleep 1
  done
  until rows=$(http -b "$jar" "$dash/api/results/winners" | json 'len(d["rows"])') && [ "$rows" -ge 1 ]; do
    ((SECONDS < deadline)) || fail "the dashboard shows no product winners" analytics dashboard mongo
    sleep 1
  done
  ok "$retail_total records applied as $want_retail (sales inventory clients); $rows winners"
fi

# --- Prometheus ------------------------------------------------------------------------------
# promql QUERY: the number of series in the answer.
promql() { http "$prom/api/v1/query" --data-urlencode "query=$1" | json 'len(d["data"]["result"])'; }
step "Prometheus: sluice targets up, /metrics scraped"
jobs=$(http "$prom/api/v1/targets" | json '" ".join(sorted({t["labels"]["job"] for t in d["data"]["activeTargets"]}))')
deadline=$((SECONDS + 60))
for entry in "${built[@]}"; do
  read -r name image target binary restart <<<"$entry"
  grep -qw "$name" <<<"$jobs" || fail "deploy/prometheus/prometheus.yml has no job $name (jobs: $jobs)"
  q="up{job=\"$name\"} == 1"
  if [ "$name" = producer ]; then
    # The demo run is over within seconds, before a scrape (every 15 s) could see it: an idle
    # run of the same service, under its network name, that tails an empty input and so keeps
    # serving /metrics until it is stopped once Prometheus has scraped it.
    "${compose[@]}" run -d --no-deps --use-aliases --name "$project-scrape-producer" producer \
      run --source jsonl --input /dev/null --watch --sink redis --stream-key sluice-check:scrape \
      --checkpoint-file /tmp/scrape-checkpoint.json >"$work/scrape-run.log" 2>&1 \
      || { cat "$work/scrape-run.log"; fail "docker compose run producer (idle, for a scrape) failed"; }
  elif [ "$restart" = no ]; then
    fail "service $name runs to completion: teach this check how to get it scraped"
  fi
  # sluice_build_info: every service's registry has it (sluice-core), so it proves a scrape.
  until [ "$(promql "$q")" -ge 1 ] && [ "$(promql "sluice_build_info{job=\"$name\"}")" -ge 1 ]; do
    ((SECONDS < deadline)) || fail "Prometheus: no '$q' or no sluice_build_info scraped" "$name" prometheus
    sleep 2
  done
  if [ "$name" = producer ]; then
    docker rm -f "$project-scrape-producer" >/dev/null
  else  # its /metrics straight from the host too, linted
    port_var=SLUICE_PORT_${name^^}
    [ -n "${!port_var:-}" ] || continue
    http "http://127.0.0.1:${!port_var}/metrics" | promtool check metrics >"$work/lint-$name.log" 2>&1 \
      || fail "promtool check metrics on $name's /metrics: $(cat "$work/lint-$name.log")"
  fi
done
down_jobs=$(http "$prom/api/v1/targets" | json '" ".join(sorted(t["labels"]["job"] for t in d["data"]["activeTargets"] if t["health"] != "up"))')
ok "${down_jobs:+targets not up: $down_jobs}"

# --- down, up: the data stays ----------------------------------------------------------------
step "docker compose down, up: data kept"
"${compose[@]}" down >"$work/down.log" 2>&1 || { cat "$work/down.log"; fail "docker compose down failed"; }
"${compose[@]}" up -d "${services[@]}" >"$work/up2.log" 2>&1 || { cat "$work/up2.log"; fail "docker compose up failed"; }
wait_healthy
deadline=$((SECONDS + 60))
producer_done
grep -q 'the checkpoint says this run is complete; nothing to do' <<<"$(docker logs "$id" 2>&1)" \
  || fail "the producer's second run sent events: its checkpoint was not kept" producer
got=$(stats | json '"%d %d %d" % (d["received"], d["unique_processed"], d["duplicate_dropped"])')
[ "$got" = "$want" ] || fail "/stats after down + up: $got, expected $want (postgres-data)" aggregator postgres
grep -q '"e-1"' <<<"$(http "$agg/events?topic=user.login&limit=10")" || fail "e-1 gone after down + up" aggregator
http -u sluice:sluice "$rabbit_ui/api/queues/%2f/sluice.events" >/dev/null \
  || fail "RabbitMQ lost the queue sluice.events (rabbitmq-data)" rabbitmq
[ "$(promql 'max_over_time(up{job="producer"}[1h]) == 1')" -ge 1 ] \
  || fail "Prometheus lost the samples of the first up (prometheus-data)" prometheus
ok "counts, event, queue, checkpoint and samples kept"

# --- down -v: nothing left -------------------------------------------------------------------
step "docker compose down -v leaves nothing"
"${compose[@]}" down -v --remove-orphans >"$work/down.log" 2>&1 || { cat "$work/down.log"; fail "docker compose down -v failed"; }
compose_ready=
left=$(docker ps -aq --filter "label=com.docker.compose.project=$project")
left+=$(docker network ls -q --filter "label=com.docker.compose.project=$project")
left+=$(docker volume ls -q --filter "label=com.docker.compose.project=$project")
left+=$(comm -13 <(echo "$volumes_before") <(docker volume ls -q | sort))
[ -z "$left" ] || fail "left behind: $left"
ok

printf 'compose-check passed in %d s (profile %s, demo %s events%s)\n' $((SECONDS - t0)) "$profile" \
  "$demo_total" "${skipped[*]:+, skipped: ${skipped[*]}}"
