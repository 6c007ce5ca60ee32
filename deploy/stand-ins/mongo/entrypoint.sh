#!/bin/bash
# Takes mongod's arguments as compose.yaml gives them: --bind_ip_all / --bind_ip (first
# address) / --port are honoured; --replSet is not: SecantusDB is always a one-node replica set
# named "secantus" that advertises its bind address, so clients connect with
# directConnection=true (deploy/stand-ins/compose.stand-ins.yaml). Data in /data/db.
set -euo pipefail
host=0.0.0.0 port=27017
[ "${1:-}" = mongod ] && shift
while [ $# -gt 0 ]; do
  case $1 in
    --bind_ip_all) host=0.0.0.0 ;;
    --bind_ip) host=${2%%,*}; shift ;;
    --port) port=$2; shift ;;
    --replSet) echo "stand-in: --replSet $2 not honoured (the replica set is named secantus)" >&2; shift ;;
    *) echo "stand-in: mongod argument $1 ignored" >&2 ;;
  esac
  shift
done
exec secantusd-rs --host "$host" --port "$port" --storage-path /data/db --log-level WARNING
