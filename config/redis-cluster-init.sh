#!/bin/sh
# The compose `cluster` profile's one-shot init (docker-compose.yml, redis-cluster-init): forms a cluster
# of the nodes given as host:port, one replica per master (6 nodes: 3 masters + 3 replicas), then waits
# until every node reports cluster_state:ok. A cluster whose slots are all assigned is left as it is.
set -eu
[ $# -ge 6 ] || { echo "usage: $0 host:port ... (at least 6 nodes)" >&2; exit 2; }

info() { redis-cli -h "${1%:*}" -p "${1##*:}" cluster info; }

if info "$1" | grep -q '^cluster_slots_assigned:16384'; then
    echo "cluster already formed"
else
    addrs=""
    for node in "$@"; do
        # CLUSTER MEET takes IP addresses: resolve here rather than count on redis-cli doing it
        ip=$(getent hosts "${node%:*}" | awk '{ print $1; exit }')
        addrs="$addrs ${ip:-${node%:*}}:${node##*:}"
    done
    # shellcheck disable=SC2086  # one word per node
    redis-cli --cluster create $addrs --cluster-replicas 1 --cluster-yes
fi

for node in "$@"; do
    tries=0
    until info "$node" | grep -q '^cluster_state:ok'; do
        tries=$((tries + 1))
        [ "$tries" -le 60 ] || { echo "$node: no cluster_state:ok after 60 s" >&2; exit 1; }
        sleep 1
    done
done
echo "cluster ok on $# nodes"
