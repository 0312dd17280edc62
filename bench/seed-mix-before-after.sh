#!/usr/bin/env bash
# seed-mix, two percore binaries alternated round by round on the same seeded database:
#   1. one shard on CPU 1, cache on, wrk on CPU 0, 64 connections: CPU per request
#      (bench/cpu-per-request.sh);
#   2. the default tuning with 2 shards on both CPUs, wrk unpinned, 64 connections, closed
#      loop at saturation: req/s, wrk's timeouts and non-2xx answers, and from the server's
#      own histograms (deltas of /metrics over the run) login p99 and non-login p99, plus
#      the hashes shed with a fast 503 (percore_worker_shed_total).
#   bench/seed-mix-before-after.sh BEFORE_BINARY [AFTER_BINARY]
#   env: ROUNDS (3), DURATION (12s) of each closed-loop run.
# A histogram p99 is the upper bound of the bucket it falls in (…, 0.1, 0.25, 0.5, 1 s, …).
set -euo pipefail
cd "$(dirname "$0")/.."
before=$1 after=${2:-./target/release/percore}
source bench/lib.sh
rounds=${ROUNDS:-3} duration=${DURATION:-12s}
tokens=bench/results/seed-tokens.txt
tmp=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
{ server_tuning 1; printf '[cache]\nenabled = true\n'; seed_mix_tuning; } >"$tmp/one-shard.toml"
{ server_tuning 2; seed_mix_tuning; } >"$tmp/two-shards.toml"

# start BINARY CONFIG [taskset CPUs]: starts the server, waits until it is ready, warms up
start() {
  local binary=$1 config=$2 cpus=${3:-0-$(($(nproc) - 1))}
  taskset -c "$cpus" "$binary" --config "$config" >"$tmp/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -fs -o /dev/null 127.0.0.1:8080/readyz && break; sleep 0.1; done
  wrk -t1 -c64 -d3s -s bench/wrk/seed-mix.lua http://127.0.0.1:8080 -- "$tokens" >/dev/null 2>&1
}
stop() { kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; }

# saturated LABEL: the closed loop at saturation against the running server
saturated() {
  curl -fs 127.0.0.1:8080/metrics >"$tmp/m0"
  wrk -t2 -c64 -d"$duration" --timeout 10s -s bench/wrk/seed-mix.lua http://127.0.0.1:8080 -- "$tokens" >"$tmp/wrk" 2>&1
  curl -fs 127.0.0.1:8080/metrics >"$tmp/m1"
  python3 - "$1" "$tmp/wrk" "$tmp/m0" "$tmp/m1" <<'PY'
import re, sys
label, wrk_out, m0, m1 = sys.argv[1:]
text = open(wrk_out).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
timeouts = re.search(r"timeout (\d+)", text)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
def read(path):
    buckets, shed = {}, 0.0
    for line in open(path):
        m = re.match(r'percore_http_request_duration_seconds_bucket\{shard="\d+",route="(\w+)",le="([^"]+)"\} (\d+)', line)
        if m:
            key = (m.group(1), m.group(2))
            buckets[key] = buckets.get(key, 0) + int(m.group(3))
        elif line.startswith("percore_worker_shed_total"):
            shed += float(line.split()[-1])
    return buckets, shed
(b0, s0), (b1, s1) = read(m0), read(m1)
def p99(routes):
    by_le = {}
    for (route, le), n in b1.items():
        if route in routes:
            by_le[le] = by_le.get(le, 0) + n - b0.get((route, le), 0)
    order = sorted(by_le, key=lambda le: float("inf") if le == "+Inf" else float(le))
    total = by_le.get("+Inf", 0)
    if total == 0:
        return "-", 0
    bound = next(le for le in order if by_le[le] >= 0.99 * total)
    return ("> 10 s" if bound == "+Inf" else f"<= {float(bound) * 1000:g} ms"), total
mix = {"me", "users_by_ids", "my_events", "post_event", "put_prefs"}
login, logins = p99({"login"})
other, _ = p99(mix)
print(f"{label}: {rps:,.0f} req/s; wrk timeouts {timeouts.group(1) if timeouts else 0}, non-2xx "
      f"{non2xx.group(1) if non2xx else 0}; server p99: login {login} ({logins} logins), "
      f"non-login {other}; shed {s1 - s0:.0f}")
PY
}

for round in $(seq "$rounds"); do
  echo "round $round: seed-mix, 1 shard on CPU 1, cache on: CPU per request"
  for label in before after; do
    binary=$([ $label = before ] && echo "$before" || echo "$after")
    start "$binary" "$tmp/one-shard.toml" 1
    SCRIPT_ARGS=$tokens bench/cpu-per-request.sh "$label" "$pid" http://127.0.0.1:8080 -c64 -s bench/wrk/seed-mix.lua
    stop
  done
  echo "round $round: seed-mix, 2 shards on both CPUs, closed loop at saturation"
  for label in before after; do
    binary=$([ $label = before ] && echo "$before" || echo "$after")
    start "$binary" "$tmp/two-shards.toml"
    saturated "$label"
    stop
  done
done
