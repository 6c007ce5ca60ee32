#!/usr/bin/env bash
# `make run` / `make stop`: the sluice services as local processes, for machines without Docker.
#   scripts/run.sh start SERVICE...   build in release mode (in this repository, whatever the
#                                     current directory), start each in the background and wait
#                                     until its /ready answers 200
#   scripts/run.sh stop               SIGTERM every service started here and wait for it to exit;
#                                     SIGKILL (said so) one that outlives the deadline
# Logs and pid files: $SLUICE_DEPS_DIR/run/<service>.{log,pid} (default .deps/run/); the pid file
# holds the pid and its start time from /proc, so a reused pid is never signalled. The dependency
# servers come from deps.sh.
# Settings (environment): SLUICE_RUN_READY_WITHIN (seconds, default 60), SLUICE_RUN_STOP_WITHIN
# (seconds, default 40: the aggregator finishes or returns the batches in flight first).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${SLUICE_DEPS_DIR:-$repo/.deps}/run
ready_within=${SLUICE_RUN_READY_WITHIN:-60}
stop_within=${SLUICE_RUN_STOP_WITHIN:-40}
mkdir -p "$dir"
cmd=${1:-}; shift || true

# proc_start PID: the process's start time (clock ticks since boot); fails when it has exited.
proc_start() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  # shellcheck disable=SC2086  # split the fields on purpose
  set -- $stat
  [ "$1" != Z ] || return 1   # a zombie has exited already
  echo "${20}"
}

# running SERVICE: true (and prints the pid) when the process in its pid file still lives.
running() {
  local pid started now
  [ -f "$dir/$1.pid" ] || return 1
  { read -r pid; read -r started || true; } <"$dir/$1.pid"
  now=$(proc_start "$pid") || return 1
  [ -z "$started" ] || [ "$now" = "$started" ] || return 1
  echo "$pid"
}

# http_status ADDR PATH: the HTTP status code of GET PATH, without curl.
http_status() {
  local host=${1%:*} port=${1##*:} line
  host=${host#[}; host=${host%]}
  case $host in 0.0.0.0) host=127.0.0.1 ;; ::) host=::1 ;; esac
  exec 3<>"/dev/tcp/$host/$port" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$1" >&3
  read -r -t 5 line <&3 || { exec 3<&-; return 1; }
  exec 3<&-
  line=${line#* }; echo "${line%% *}"
}

# show_log FILE OFFSET: what the service printed since it was started.
show_log() { echo "---- last 40 lines of $1"; tail -c "+$(($2 + 1))" "$1" | tail -n 40 | sed 's/^/  | /'; }

# wait_ready SERVICE PID LOG OFFSET: waits for the `listening` log line, then for /ready = 200.
wait_ready() {
  local s=$1 pid=$2 log=$3 offset=$4 addr='' status=
  local deadline=$((SECONDS + ready_within))
  while ((SECONDS < deadline)); do
    if [ -z "$(proc_start "$pid" || true)" ]; then
      echo "$s FAILED: exited during startup (log $log)"; show_log "$log" "$offset"
      rm -f "$dir/$s.pid"; return 1
    fi
    if [ -z "$addr" ]; then
      addr=$(tail -c "+$((offset + 1))" "$log" | grep -m1 '"message":"listening"' \
        | sed -n 's/.*"addr":"\([^"]*\)".*/\1/p' || true)
    fi
    if [ -n "$addr" ]; then
      status=$(http_status "$addr" /ready 2>/dev/null || true)
      if [ "$status" = 200 ]; then
        echo "$s ready at http://$addr (pid $pid, log $log)"; return 0
      fi
    fi
    sleep 0.25
  done
  echo "$s FAILED: not ready within ${ready_within}s (${addr:+GET http://$addr/ready answered ${status:-nothing}; }still running as pid $pid, \`make stop\` stops it)"
  show_log "$log" "$offset"
  return 1
}

case "$cmd" in
start)
  if [ $# -eq 0 ]; then
    echo "no services yet: the dependency servers are up (scripts/deps.sh); services join as they are built"
    exit 0
  fi
  packages=(); for s in "$@"; do packages+=(-p "sluice-$s"); done
  # In the repository, whatever the caller's directory; the target directory as cargo sees it.
  (cd "$repo" && cargo build --release --locked "${packages[@]}")
  target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  failed=0
  for s in "$@"; do
    if pid=$(running "$s"); then
      echo "$s already running (pid $pid)"; continue
    fi
    log=$dir/$s.log
    touch "$log"; offset=$(stat -c %s "$log")
    # JSON logs whatever the user's setting: the `listening` line is read from them.
    SLUICE_LOG_FORMAT=json setsid nohup "$target/release/sluice-$s" >>"$log" 2>&1 </dev/null &
    pid=$!
    printf '%s\n%s\n' "$pid" "$(proc_start "$pid" || true)" >"$dir/$s.pid"
    wait_ready "$s" "$pid" "$log" "$offset" || failed=1
  done
  exit "$failed"
  ;;
stop)
  shopt -s nullglob
  for pidfile in "$dir"/*.pid; do
    s=$(basename "$pidfile" .pid)
    if ! pid=$(running "$s"); then
      echo "$s was not running"; rm -f "$pidfile"; continue
    fi
    started=$(proc_start "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + stop_within))
    while [ "$(proc_start "$pid" || true)" = "$started" ] && ((SECONDS < deadline)); do sleep 0.1; done
    if [ "$(proc_start "$pid" || true)" = "$started" ]; then
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 50); do [ "$(proc_start "$pid" || true)" = "$started" ] || break; sleep 0.1; done
      echo "$s did not exit within ${stop_within}s of SIGTERM: killed (SIGKILL; log $dir/$s.log)"
    else
      echo "$s stopped"
    fi
    rm -f "$pidfile"
  done
  ;;
*) echo "usage: $0 start SERVICE... | stop" >&2; exit 2 ;;
esac
