#!/usr/bin/env bash
# `make run` / `make stop`: the sluice services as local processes, for machines without Docker.
#   scripts/run.sh start SERVICE...   build in release mode, start each in the background
#   scripts/run.sh stop               SIGTERM every service started here, wait for it to exit
# Logs and pid files: .deps/run/<service>.{log,pid}. The dependency servers come from deps.sh.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${SLUICE_DEPS_DIR:-$repo/.deps}/run
mkdir -p "$dir"
cmd=${1:-}; shift || true

case "$cmd" in
start)
  if [ $# -eq 0 ]; then
    echo "no services yet: the dependency servers are up (scripts/deps.sh); services join as they are built"
    exit 0
  fi
  packages=(); for s in "$@"; do packages+=(-p "sluice-$s"); done
  cargo build --release --locked "${packages[@]}"
  target=${CARGO_TARGET_DIR:-$repo/target}
  for s in "$@"; do
    if [ -f "$dir/$s.pid" ] && kill -0 "$(cat "$dir/$s.pid")" 2>/dev/null; then
      echo "$s already running (pid $(cat "$dir/$s.pid"))"; continue
    fi
    setsid nohup "$target/release/sluice-$s" >>"$dir/$s.log" 2>&1 </dev/null &
    echo $! >"$dir/$s.pid"
    echo "$s started (pid $!, log $dir/$s.log)"
  done
  ;;
stop)
  shopt -s nullglob
  for pidfile in "$dir"/*.pid; do
    s=$(basename "$pidfile" .pid); pid=$(cat "$pidfile")
    if kill -TERM "$pid" 2>/dev/null; then
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      echo "$s stopped"
    fi
    rm -f "$pidfile"
  done
  ;;
*) echo "usage: $0 start SERVICE... | stop" >&2; exit 2 ;;
esac
