#!/usr/bin/env bash
# The jobs benchmark (issue 5): enqueue throughput (202s per second, wrk closed loop on
# POST /v1/jobs), the workers' drain rate, then commit-to-done latency of e-mail and
# webhook jobs at a steady rate. A real SMTP server (aiosmtpd, discarding) receives the
# e-mail; percore-bench itself receives the webhooks.
#   DURATION=10s CONNECTIONS=32 RATE=200 SHARDS=1 bench/jobs.sh
# Writes bench/results/jobs-<N>shard.json. Uses PERCORE_DATABASE_URL, else the dev services.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${DURATION:-10s} connections=${CONNECTIONS:-32} rate=${RATE:-200} shards=${SHARDS:-1}
source bench/lib.sh
aiosmtpd=var/aiosmtpd-1.4.6
if [ ! -f "$aiosmtpd/.installed" ]; then
  rm -rf "$aiosmtpd" && python3 -m venv "$aiosmtpd"
  "$aiosmtpd/bin/pip" install --quiet --disable-pip-version-check aiosmtpd==1.4.6 && touch "$aiosmtpd/.installed"
fi
smtp_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$aiosmtpd/bin/python" -m aiosmtpd -n -l "127.0.0.1:$smtp_port" -c aiosmtpd.handlers.Sink & smtp=$!
config=$(mktemp --suffix=.toml)
server_tuning "$shards" > "$config"
cat >> "$config" <<TOML
# The driver enqueues from one session: no per-client limit in the benchmark.
[rate_limit.jobs]
rate = 1000000.0
burst = 1000000
[jobs]
poll_interval_ms = 200
[jobs.queues.email]
kinds = ["email"]
threads = 16
max_depth = 1000000
[jobs.queues.webhook]
kinds = ["webhook"]
threads = 4
max_depth = 1000000
[jobs.queues.reports]
kinds = ["pdf", "export"]
threads = 1
max_depth = 1000
[email]
smtp_url = "smtp://127.0.0.1:$smtp_port"
[webhooks]
# The receiver is percore-bench, on loopback.
allow_private = true
[log]
level = "warn"
TOML
./target/release/percore --config "$config" & pid=$!
trap 'kill $pid $smtp 2>/dev/null; rm -f "$config"' EXIT
for _ in $(seq 50); do curl -fs http://127.0.0.1:8080/readyz >/dev/null && break; sleep 0.2; done
out="bench/results/jobs-${shards}shard.json"
./target/release/percore-bench run jobs --duration "$duration" --connections "$connections" --rate "$rate" \
  --database-url "$PERCORE_DATABASE_URL" --tuning "$config" --out "$out"
python3 - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
w, j = r["wrk"], r["jobs"]
print(f'{sys.argv[1]}: enqueue {w.get("requests_per_s")} 202/s (p99 {w.get("latency_us_p99", 0)/1000:.2f} ms, '
      f'errors {w.get("errors", [])}); workers drained {j["enqueued_jobs_done"]} e-mails at {j["processed_per_s"]:.0f}/s')
for kind in ("email", "webhook"):
    l, s = j[kind]["latency"], j[kind]["send"]
    print(f'  {kind} at {s["offered_per_s"]:.0f}/s: {l["done"]}/{l["jobs"]} done, commit-to-done p50 {l["e2e_ms_p50"]:.1f} ms, '
          f'p90 {l["e2e_ms_p90"]:.1f} ms, p99 {l["e2e_ms_p99"]:.1f} ms, max {l["e2e_ms_max"]:.1f} ms')
PY
