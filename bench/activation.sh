#!/usr/bin/env bash
# Socket activation against percore's own SO_REUSEPORT listeners, alternated round by
# round: two shards, wrk on /json with keep-alive (256 connections) and with a new
# connection per request (64 connections, `Connection: close`), req/s and how the
# connections spread over the shards. Activated rounds run under systemd-socket-activate,
# which passes one listening socket as systemd's percore.socket does.
#   ROUNDS=3 bench/activation.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
rounds=${ROUNDS:-3}
tmp=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
printf '[server]\nlisten = "127.0.0.1:8080"\nshards = 2\n[database]\nurl = "%s"\n[redis]\nurl = "%s"\n[log]\nlevel = "warn"\n' \
  "$PERCORE_DATABASE_URL" "$PERCORE_REDIS_URL" >"$tmp/tuning.toml"

# round LABEL COMMAND...: both workloads against a freshly started server
round() {
  local label=$1; shift
  "$@" >"$tmp/$label.log" 2>&1 &
  local pid=$!
  for _ in $(seq 200); do curl -fs -o /dev/null 127.0.0.1:8080/json && break; sleep 0.05; done
  wrk -t1 -c256 -d2s http://127.0.0.1:8080/json >/dev/null 2>&1
  local kept closed spread
  kept=$(wrk -t1 -c256 -d5s http://127.0.0.1:8080/json | awk '/Requests\/sec/ {print $2}')
  closed=$(wrk -t1 -c64 -d5s -H 'Connection: close' http://127.0.0.1:8080/json | awk '/Requests\/sec/ {print $2}')
  spread=$(curl -fs 127.0.0.1:8080/metrics | awk '/^percore_connections_accepted_total/ {printf "%s ", $2}')
  printf '%-10s keep-alive %9s req/s   connection per request %8s req/s   accepted per shard: %s\n' \
    "$label" "$kept" "$closed" "$spread"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

for r in $(seq "$rounds"); do
  round reuseport ./target/release/percore --config "$tmp/tuning.toml"
  round activated systemd-socket-activate -l 127.0.0.1:8080 ./target/release/percore --config "$tmp/tuning.toml"
done
