#!/usr/bin/env bash
# The soak benchmark (not in CI): a release percore on the dev services under seed-mix at
# SHARE (default 0.7) of its saturation for DURATION (default 30m), with a fault every
# FAULT_EVERY (default 5m), in turn: Postgres restarted in immediate mode (a crash, as far
# as percore can tell), Redis paused for 5 s. Samples RSS, open fds, p99 and errors every
# 10 s into bench/results/soak.json and renders bench/results/soak.html.
#   DURATION=30m FAULT_EVERY=5m SHARDS=1 bench/soak.sh
# Needs the dev services under ./var/ (pg_ctl and redis.pid are used for the faults).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${DURATION:-30m} fault_every=${FAULT_EVERY:-5m} share=${SHARE:-0.7} shards=${SHARDS:-1}
unset PERCORE_DATABASE_URL PERCORE_REDIS_URL
source bench/lib.sh
config=$(mktemp --suffix=.toml)
{ server_tuning "$shards"; seed_mix_tuning; } > "$config"
./target/release/percore --config "$config" 2>bench/results/soak-server.log & pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -fs http://127.0.0.1:8080/readyz >/dev/null && break; sleep 0.2; done
restart_postgres="$(dev_pg_ctl) restart -m immediate -w >/dev/null"
pause_redis="kill -STOP \$(cat $PWD/var/redis/redis.pid) && sleep 5 && kill -CONT \$(cat $PWD/var/redis/redis.pid)"
./target/release/percore-bench soak --server-pid "$pid" --duration "$duration" --share "$share" \
  --fault-every "$fault_every" --fault "postgres-restart=$restart_postgres" --fault "redis-pause=$pause_redis" \
  --out bench/results/soak.json
./target/release/percore-bench report bench/results/soak.json -o bench/results/soak.html
python3 - <<'PY'
import json
soak = json.load(open("bench/results/soak.json"))["soak"]
s = soak["samples"]
print(f"saturation {soak['saturation_per_s']:.0f}/s, ran at {soak['rate_per_s']:.0f}/s for {s[-1]['t_s']:.0f} s")
print(f"RSS MiB first/max/last: {s[0]['rss_mib']:.1f} / {max(x['rss_mib'] for x in s):.1f} / {s[-1]['rss_mib']:.1f}")
print(f"open fds first/max/last: {s[0]['open_fds']} / {max(x['open_fds'] for x in s)} / {s[-1]['open_fds']}")
p99 = sorted(x['p99_ms'] or 0 for x in s)
print(f"window p99 ms median/max: {p99[len(p99)//2]} / {p99[-1]}")
print(f"errors non-2xx / io: {sum(x['errors']['non_2xx'] for x in s)} / {sum(x['errors']['io'] for x in s)}")
for f in soak["faults"]:
    print(f"fault at {f['t_s']:.0f} s: {f['name']} ok={f['ok']} took {f['took_s']:.1f} s")
PY
