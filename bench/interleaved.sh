#!/usr/bin/env bash
# Alternates percore (one shard on CPU 1) and may_minihttp (CPU 1) round by round, wrk on
# CPU 0, so that the machine's slow spells hit both sides alike; prints each round's
# req/s and ratio. For A/B work on the hot path; ../shared/peers/compare is the bar.
#   ROUNDS=5 DURATION=4s bench/interleaved.sh [CONFIG]   (default bench/tuning-1shard.toml)
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-bench/tuning-1shard.toml}
rounds=${ROUNDS:-5} duration=${DURATION:-4s}
peers=${PEERS_TARGET:-/tmp/percore-peers-target}
source bench/dev-services.sh
cargo build -q --release --manifest-path ../shared/peers/Cargo.toml --target-dir "$peers"
lua=bench/wrk/plaintext.lua
rps() { taskset -c 0 wrk -t1 -c256 -d"$duration" "$@" | awk '/Requests\/sec/ {print int($2)}'; }
serve() { taskset -c 1 "$@" >/dev/null 2>&1 & pid=$!; sleep 1.2; }
printf '%-6s %12s %12s %6s %10s %10s %6s\n' round plaintext may ratio json may ratio
for round in $(seq "$rounds"); do
  serve ./target/release/percore --config "$config"
  p=$(rps -s "$lua" http://127.0.0.1:8080/plaintext -- 16); j=$(rps http://127.0.0.1:8080/json)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  serve "$peers/release/may_hello" 1 8081
  mp=$(rps -s "$lua" http://127.0.0.1:8081/plaintext -- 16); mj=$(rps http://127.0.0.1:8081/json)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  awk -v r="$round" -v p="$p" -v mp="$mp" -v j="$j" -v mj="$mj" \
    'BEGIN { printf "%-6s %12d %12d %6.2f %10d %10d %6.2f\n", r, p, mp, p/mp, j, mj, j/mj }'
done
