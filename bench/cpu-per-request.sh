#!/usr/bin/env bash
# CPU time per request of the server, of wrk, and of every postgres process, measured from
# /proc over the same 6 s of a wrk run: on a shared machine where req/s wanders between
# runs, CPU per request is the steadier figure, and the sum says what the box can serve.
#   bench/cpu-per-request.sh LABEL SERVER_PID URL [WRK ARGS...]
# e.g. bench/cpu-per-request.sh percore "$(pgrep -f 'percore --config')" http://127.0.0.1:8080/db
# wrk runs on CPU 0 with 256 connections (as ../shared/peers/compare does); start the
# server pinned to CPU 1.
set -euo pipefail
label=$1 server=$2 url=$3; shift 3
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
user_ticks() { awk '{print $14}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# The shard threads alone (percore's are named percore-shard-N): without the worker pool's
# hashing, which a mix with logins in it would otherwise fold into every request.
shard_ticks() {
  local sum=0 task
  for task in /proc/"$1"/task/*; do
    case $(cat "$task/comm" 2>/dev/null) in
      percore-shard-*) sum=$((sum + $(awk '{print $14 + $15}' "$task/stat" 2>/dev/null || echo 0))) ;;
    esac
  done
  echo "$sum"
}
postgres_ticks() {
  local sum=0 pid
  for pid in $(pgrep -x postgres); do sum=$((sum + $(ticks "$pid"))); done
  echo "$sum"
}
out=$(mktemp); trap 'rm -f "$out"' EXIT
# SCRIPT_ARGS: what follows `--` for a wrk script (bench/wrk/seed-mix.lua's tokens file).
taskset -c 0 wrk -t1 -c256 -d10s "$@" "$url" ${SCRIPT_ARGS:+-- $SCRIPT_ARGS} >"$out" 2>&1 &
wrk_pid=$!
sleep 2 # past the connection ramp-up
s0=$(ticks "$server") u0=$(user_ticks "$server") h0=$(shard_ticks "$server") w0=$(ticks "$wrk_pid") p0=$(postgres_ticks) t0=$(date +%s.%N)
sleep 6
s1=$(ticks "$server") u1=$(user_ticks "$server") h1=$(shard_ticks "$server") w1=$(ticks "$wrk_pid") p1=$(postgres_ticks) t1=$(date +%s.%N)
wait "$wrk_pid"
python3 - "$label" "$(awk '/Requests\/sec/ {print $2}' "$out")" $((s1 - s0)) $((w1 - w0)) $((p1 - p0)) "$t0" "$t1" "$(getconf CLK_TCK)" $((u1 - u0)) $((h1 - h0)) <<'PY'
import sys
label, rps = sys.argv[1], float(sys.argv[2])
server, wrk, postgres = map(int, sys.argv[3:6])
seconds = float(sys.argv[7]) - float(sys.argv[6])
hz = int(sys.argv[8])
user, shards = int(sys.argv[9]), int(sys.argv[10])
requests = rps * seconds
us = lambda t: t / hz * 1e6 / requests
print(f"{label}: {rps:,.0f} req/s; CPU per request: server {us(server):.1f} us "
      f"(user {us(user):.1f}{f', shard threads {us(shards):.1f}' if shards else ''}), "
      f"wrk {us(wrk):.1f} us, postgres {us(postgres):.1f} us; "
      f"cores busy {(server + wrk + postgres) / hz / seconds:.2f}")
PY
