#!/usr/bin/env bash
# User-space instructions per request of one route, under callgrind: stable where req/s on
# a shared machine is not. Runs the server twice (wrk for 1 s, then 5 s, 32 connections),
# each stopped by SIGTERM so callgrind writes its totals, and divides the differences.
#   bench/callgrind.sh plaintext|json|db [CONFIG]    (needs valgrind and wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
route=$1 config=${2:-bench/tuning-1shard.toml}
cargo build -q --release --locked --bin percore
case $route in
  plaintext) args=(-s bench/wrk/plaintext.lua http://127.0.0.1:8080/plaintext -- 16) ;;
  *) args=("http://127.0.0.1:8080/$route") ;;
esac
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# measure SECONDS: prints "requests instructions"
measure() {
  valgrind --tool=callgrind --callgrind-out-file="$tmp/out.$1" ./target/release/percore --config "$config" \
    >"$tmp/log.$1" 2>&1 &
  local pid=$! requests
  for _ in $(seq 100); do curl -fs -o /dev/null -m 1 http://127.0.0.1:8080/healthz && break; sleep 0.3; done
  requests=$(wrk -t1 -c32 -d"$1"s "${args[@]}" | awk '/requests in/ {print $1}')
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  echo "$requests $(grep -h '^summary:' "$tmp"/out.$1* | awk '{s += $2} END {print s}')"
}
read -r n1 i1 < <(measure 1)
read -r n2 i2 < <(measure 5)
echo "$route: $(( (i2 - i1) / (n2 - n1) )) instructions per request ($n1 and $n2 requests)"
