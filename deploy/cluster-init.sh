#!/bin/sh
# One-shot: join the six Valkey nodes of compose.yaml's "cluster" profile into 3 masters
# + 3 replicas, unless they already form a cluster (a restart), then wait until it is ok
# and every replica has synced.
set -eu
NODES="valkey-1 valkey-2 valkey-3 valkey-4 valkey-5 valkey-6"
for n in $NODES; do
  until valkey-cli -h "$n" ping >/dev/null 2>&1; do sleep 0.5; done
done
if ! valkey-cli -h valkey-1 cluster info | grep -q '^cluster_known_nodes:6'; then
  # valkey-cli wants addresses: resolve the service names.
  addrs=""
  for n in $NODES; do
    addrs="$addrs $(getent hosts "$n" | awk '{print $1}'):6379"
  done
  # shellcheck disable=SC2086
  valkey-cli --cluster create $addrs --cluster-replicas 1 --cluster-yes
fi
i=0
until valkey-cli -h valkey-1 cluster info | grep -q '^cluster_state:ok'; do
  i=$((i + 1))
  [ "$i" -lt 120 ] || { echo "cluster not ok after 60 s" >&2; exit 1; }
  sleep 0.5
done
# A replica takes over only once it has synced with its master: one that never finished
# its first sync (a master waits repl-diskless-sync-delay, 5 s, before sending it) counts
# its data as infinitely old and never fails over. Formed means every replica is synced.
i=0
until [ "$(for n in $NODES; do valkey-cli -h "$n" info replication; done |
          grep -c '^master_link_status:up')" -ge 3 ]; do
  i=$((i + 1))
  [ "$i" -lt 120 ] || { echo "replicas not synced after 60 s" >&2; exit 1; }
  sleep 0.5
done
echo "cluster ok"
