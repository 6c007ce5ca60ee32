#!/bin/bash
# Maps the apache/kafka image's listener settings onto tansu: the inter-broker listener
# (KAFKA_INTER_BROKER_LISTENER_NAME, default PLAINTEXT) is the broker, listening on its port in
# KAFKA_LISTENERS and advertising its address in KAFKA_ADVERTISED_LISTENERS; every other
# advertised listener (e.g. EXTERNAL) is a `tansu proxy` on its port that advertises its own
# address. CLUSTER_ID is passed on. Data is kept in memory (tansu's file-less storage), so
# topics do not survive a restart of this container; the other KAFKA_* settings are ignored.
set -euo pipefail
inter=${KAFKA_INTER_BROKER_LISTENER_NAME:-PLAINTEXT}
declare -A port=() adv=()
IFS=, read -ra items <<<"${KAFKA_LISTENERS:-PLAINTEXT://:9092}"
for l in "${items[@]}"; do port[${l%%://*}]=${l##*:}; done
IFS=, read -ra items <<<"${KAFKA_ADVERTISED_LISTENERS:-PLAINTEXT://localhost:9092}"
for a in "${items[@]}"; do adv[${a%%://*}]=${a#*://}; done
broker_port=${port[$inter]:?no $inter listener in KAFKA_LISTENERS}

trap 'kill $(jobs -p) 2>/dev/null; wait; exit 0' TERM INT
tansu broker --cluster-id "${CLUSTER_ID:-tansu_cluster}" \
  --listener-url "tcp://0.0.0.0:$broker_port" \
  --advertised-listener-url "tcp://${adv[$inter]:-localhost:$broker_port}" \
  --storage-engine memory://tansu/ &
for name in "${!adv[@]}"; do
  [ "$name" = "$inter" ] && continue
  tansu proxy --listener-url "tcp://0.0.0.0:${port[$name]:?no $name listener in KAFKA_LISTENERS}" \
    --advertised-listener-url "tcp://${adv[$name]}" --origin-url "tcp://127.0.0.1:$broker_port" &
done
wait -n
exit 1
