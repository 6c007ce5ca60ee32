#!/bin/bash
# The official image's settings (console log, guest not limited to loopback, management on
# 15672) plus the default user from the environment, then the server as the rabbitmq user.
set -euo pipefail
if [ "$1" = rabbitmq-server ] && [ "$(id -u)" = 0 ]; then
  {
    echo 'loopback_users.guest = false'
    echo 'listeners.tcp.default = 5672'
    echo 'management.tcp.port = 15672'
    echo 'log.console = true'
    echo 'log.console.level = info'
    echo 'log.file = false'
    if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then echo "default_user = $RABBITMQ_DEFAULT_USER"; fi
    if [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then echo "default_pass = $RABBITMQ_DEFAULT_PASS"; fi
  } >/etc/rabbitmq/rabbitmq.conf
  chown rabbitmq:rabbitmq /etc/rabbitmq/rabbitmq.conf
  mkdir -p /var/lib/rabbitmq /var/log/rabbitmq
  chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq
  export HOME=/var/lib/rabbitmq
  exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$@"
fi
exec "$@"
