#!/bin/bash
# As the official image: flags alone mean redis-server; it runs as the redis user; without a
# config file it listens on every address with protected mode off (other containers connect).
set -euo pipefail
if [ "${1:0:1}" = - ] || [ "${1%.conf}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  chown -R redis:redis .
  exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi
if [ "$1" = redis-server ] && [ "${2%.conf}" = "${2:-}" ]; then
  case " $* " in *" --protected-mode "*) ;; *) set -- "$@" --protected-mode no ;; esac
fi
exec "$@"
