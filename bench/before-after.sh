#!/usr/bin/env bash
# Server CPU per request of one route, two percore binaries (and optionally axum_pg)
# alternated round by round on the same seeded database: the A/B method for hot-path work
# on a shared, noisy machine. Each round starts the server pinned to CPU 1, warms up, and
# runs bench/cpu-per-request.sh (wrk on CPU 0, 256 connections).
#   bench/before-after.sh ROUTE BEFORE_BINARY [AFTER_BINARY]
#     ROUTE: db | fortunes | queries?queries=20 | updates?queries=20 | json | ...
#   env: ROUNDS (3), AXUM=1 adds axum_pg (built by ../shared/peers/compare into
#        /tmp/percore-peers-target) with DB_CONNS (2) connections, as percore has;
#        MAY=1 adds may_minihttp (plaintext and json only), built there too.
# Build BEFORE from the commit before a change with:
#   git worktree add /tmp/before COMMIT && cargo build --release --manifest-path /tmp/before/Cargo.toml
set -euo pipefail
cd "$(dirname "$0")/.."
route=$1 before=$2 after=${3:-./target/release/percore}
source bench/lib.sh
rounds=${ROUNDS:-3}
tmp=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
{
  printf '[server]\nlisten = "127.0.0.1:8080"\nshards = 1\ncpus = [1]\n'
  printf '[database]\nurl = "%s"\n[workers]\nthreads = 1\ncpus = [0]\n[bench]\nroutes = true\n[log]\nlevel = "warn"\n' \
    "$PERCORE_DATABASE_URL"
} >"$tmp/tuning.toml"

# measure LABEL COMMAND...: one round against a freshly started server
measure() {
  local label=$1; shift
  taskset -c 1 "$@" >"$tmp/$label.log" 2>&1 &
  local pid=$!
  for _ in $(seq 200); do curl -fs -o /dev/null "127.0.0.1:8080/$route" && break; sleep 0.05; done
  taskset -c 0 wrk -t1 -c256 -d3s "http://127.0.0.1:8080/$route" >/dev/null 2>&1
  bench/cpu-per-request.sh "$label" "$pid" "http://127.0.0.1:8080/$route"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

axum=/tmp/percore-peers-target/release/axum_pg
may=/tmp/percore-peers-target/release/may_hello
for round in $(seq "$rounds"); do
  echo "round $round: /$route"
  measure before "$before" --config "$tmp/tuning.toml"
  measure after "$after" --config "$tmp/tuning.toml"
  if [ "${AXUM:-0}" = 1 ] && [ -x "$axum" ]; then
    DB_URL=$PERCORE_DATABASE_URL DB_CONNS=${DB_CONNS:-2} measure axum_pg "$axum" 1 8080
  fi
  if [ "${MAY:-0}" = 1 ] && [ -x "$may" ]; then
    measure may_minihttp "$may" 1 8080
  fi
done
