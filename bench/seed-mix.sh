#!/usr/bin/env bash
# The seed-mix benchmark (issue 3) for 1 and 2 shards, one after the other in one run:
# seeds 100k users / 1M events / 10k sessions once (COPY; kept between runs), then for each
# shard count starts a release percore on CPUs from 1 up (from 0 when there are no more
# cores than shards), drives it with wrk on CPU 0 and
# writes bench/results/seed-mix-<N>shard.json (req/s, latency percentiles, statements per
# request from /metrics deltas), then measures latency in an open loop at 50% and 80% of
# the wrk rate (PACED seconds each, the driver's built-in generator; login apart).
# CACHE="off on" runs each shard count with [cache] enabled = false, then true (default: on),
# writing bench/results/seed-mix-<N>shard-cache-<state>.json.
#   DURATION=20s CONNECTIONS=64 SHARDS="1 2" CACHE="off on" bench/seed-mix.sh
# Uses PERCORE_DATABASE_URL / PERCORE_REDIS_URL, else the dev services under ./var/.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${DURATION:-20s} paced=${PACED:-15s} connections=${CONNECTIONS:-64} shard_counts=${SHARDS:-"1 2"} cache_states=${CACHE:-on}
source bench/lib.sh
for shards in $shard_counts; do
for cache in $cache_states; do
  enabled=$([ "$cache" = on ] && echo true || echo false)
  out="bench/results/seed-mix-${shards}shard-cache-${cache}.json"
  config=$(mktemp --suffix=.toml)
  { server_tuning "$shards"; printf '[cache]\nenabled = %s\n' "$enabled"; seed_mix_tuning; } > "$config"
  ./target/release/percore --config "$config" & pid=$!
  # A failed run must not leave the server holding the port.
  trap 'kill "$pid" 2>/dev/null || true' EXIT
  for _ in $(seq 50); do curl -fs http://127.0.0.1:8080/readyz >/dev/null && break; sleep 0.2; done
  # Warm-up, then the measured run.
  ./target/release/percore-bench run seed-mix --duration 5s --connections "$connections" >/dev/null
  ./target/release/percore-bench run seed-mix --duration "$duration" --connections "$connections" \
    --database-url "$PERCORE_DATABASE_URL" --tuning "$config" --paced "$paced" \
    --out "$out"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$config"
  python3 - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
w, s = r["wrk"], r["server"]
ms = lambda p: w.get(f"latency_us_p{p}", 0) / 1000
print(f'{sys.argv[1]}: {w.get("requests_per_s")} req/s, p50 {ms(50):.2f} ms, p95 {ms(95):.2f} ms, '
      f'p99 {ms(99):.2f} ms, {s["statements_per_request"]:.3f} statements/request, '
      f'L1 hit ratio {s["cache"]["l1_hit_ratio"]:.3f}, L2 hit ratio {s["cache"]["l2_hit_ratio"]:.3f}, errors {w.get("errors", [])}')
for run in r["paced_open_loop"].get("runs", []):
    o, l = run["latency_ms"]["other"], run["latency_ms"]["login"]
    print(f'  open loop at {run["share_of_saturation"]:.0%}: {run["achieved_per_s"]:.0f} of {run["offered_per_s"]:.0f}/s, '
          f'non-login p50 {o.get("p50", 0):.2f} p99 {o.get("p99", 0):.2f} p99.9 {o.get("p99.9", 0):.2f} ms; '
          f'login p99 {l.get("p99", 0):.0f} ms ({l["count"]}); errors {run["errors"]}')
PY
done
done
