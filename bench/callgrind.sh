#!/usr/bin/env bash
# User-space instructions per request of one route, under callgrind: stable where req/s on
# a shared machine is not. Runs the server twice (wrk for 1 s, then 5 s, 32 connections),
# each stopped by SIGTERM so callgrind writes its totals, and divides the differences.
#   bench/callgrind.sh plaintext|json|db [CONFIG]    (needs valgrind and wrk)
# env: BINARY=path measures another percore build (the commit before a change, say);
#      SERVER="command args" measures any server listening on :8080 (a peer:
#      SERVER="/tmp/percore-peers-target/release/may_hello 1 8080");
#      BARE=1 pipelines wrk's bare request (method, path, Host), as ../shared/peers/compare
#      does, instead of bench/wrk/plaintext.lua's TechEmpower headers.
set -euo pipefail
cd "$(dirname "$0")/.."
route=$1 config=${2:-bench/tuning-1shard.toml}
binary=${BINARY:-./target/release/percore}
source bench/dev-services.sh
read -r -a server <<<"${SERVER:-$binary --config $config}"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/bare.lua" <<'LUA'
init = function(args)
  local r = {}
  for i = 1, tonumber(args[1]) or 16 do r[i] = wrk.format() end
  req = table.concat(r)
end
request = function() return req end
LUA
case $route in
  plaintext) script=bench/wrk/plaintext.lua; [ "${BARE:-0}" = 1 ] && script=$tmp/bare.lua
    args=(-s "$script" http://127.0.0.1:8080/plaintext -- 16) ;;
  *) args=("http://127.0.0.1:8080/$route") ;;
esac
# measure SECONDS: prints "requests instructions"
measure() {
  valgrind --tool=callgrind --callgrind-out-file="$tmp/out.$1" "${server[@]}" >"$tmp/log.$1" 2>&1 &
  local pid=$! requests
  for _ in $(seq 100); do curl -fs -o /dev/null -m 1 "http://127.0.0.1:8080/${route%%\?*}" && break; sleep 0.3; done
  requests=$(wrk -t1 -c32 -d"$1"s "${args[@]}" | awk '/requests in/ {print $1}')
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  echo "$requests $(grep -h '^summary:' "$tmp"/out.$1* | awk '{s += $2} END {print s}')"
}
read -r n1 i1 < <(measure 1)
read -r n2 i2 < <(measure 5)
echo "$route: $(( (i2 - i1) / (n2 - n1) )) instructions per request ($n1 and $n2 requests)"
