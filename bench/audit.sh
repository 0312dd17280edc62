#!/usr/bin/env bash
# The write audit at length (not in CI; `cargo test --test audit` is its short form): a
# release percore on the dev services under ./var/, CLIENTS (default 16) writing for
# DURATION (default 5m), and a fault every FAULT_EVERY (default 30s), in turn:
#   - Postgres stopped in immediate mode and started again after 1 s (the dev server runs
#     with fsync on);
#   - percore killed with SIGKILL and started again;
#   - Redis frozen with SIGSTOP for 3 s (past every Redis timeout);
#   - shard 0's Postgres connections cut (pg_terminate_backend).
# Then every acknowledged write is looked up in Postgres. Writes bench/results/audit.json
# and exits 1 if one was lost.
#   DURATION=5m FAULT_EVERY=30s bench/audit.sh
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${DURATION:-5m} fault_every=${FAULT_EVERY:-30s} shards=${SHARDS:-2} clients=${CLIENTS:-16}
unset PERCORE_DATABASE_URL PERCORE_REDIS_URL
source bench/lib.sh
config=$(mktemp --suffix=.toml)
{
  server_tuning "$shards"
  seed_mix_tuning
  # One client address for all: no per-client limit may shape the writes.
  printf '[rate_limit.write]\nrate = 1000000.0\nburst = 1000000\n[rate_limit.jobs]\nrate = 1000000.0\nburst = 1000000\n'
  # Queues set here replace the defaults: all three, with room for the audit's e-mails.
  printf '[jobs.queues.email]\nkinds = ["email"]\nthreads = 4\nmax_depth = 1000000\n'
  printf '[jobs.queues.webhook]\nkinds = ["webhook"]\nthreads = 4\nmax_depth = 100000\n[jobs.queues.reports]\nkinds = ["pdf", "export"]\nthreads = 1\nmax_depth = 1000\n'
} > "$config"
pidfile=$(mktemp) starter=$(mktemp)
# Starts percore in the background and waits for it; the SIGKILL fault runs it again.
cat > "$starter" <<SH
#!/usr/bin/env bash
./target/release/percore --config "$config" 2>>bench/results/audit-server.log & echo \$! > "$pidfile"
for _ in \$(seq 100); do curl -fs http://127.0.0.1:8080/healthz >/dev/null && exit 0; sleep 0.1; done
echo "percore did not start" >&2; exit 1
SH
chmod +x "$starter"
: > bench/results/audit-server.log
"$starter"
trap 'kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile" "$config" "$starter"' EXIT
# percore-dev starts the dev Postgres again, with its own options.
postgres_crash="$(dev_pg_ctl) stop -m immediate -w >/dev/null; sleep 1; \
./target/release/percore-dev env >/dev/null"
percore_kill="kill -KILL \$(cat $pidfile); while kill -0 \$(cat $pidfile) 2>/dev/null; do sleep 0.05; done; $starter"
redis_freeze="kill -STOP \$(cat $PWD/var/redis/redis.pid) && sleep 3 && kill -CONT \$(cat $PWD/var/redis/redis.pid)"
cut_shard_0="psql '$PERCORE_DATABASE_URL' -qAtc \"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE 'percore-shard-0%'\" >/dev/null"
./target/release/percore-bench audit --database-url "$PERCORE_DATABASE_URL" --clients "$clients" \
  --duration "$duration" --fault-every "$fault_every" \
  --fault "postgres-immediate-stop=$postgres_crash" --fault "percore-sigkill=$percore_kill" \
  --fault "redis-sigstop-3s=$redis_freeze" --fault "shard-0-connections-cut=$cut_shard_0" \
  --out bench/results/audit.json && status=0 || status=$?
python3 - <<'PY'
import json
a = json.load(open("bench/results/audit.json"))["audit"]
print(f"acknowledged {a['acknowledged_total']} {a['acknowledged']}")
print(f"lost {a['lost_total']}  unanswered {a['unanswered_total']} {a['unanswered']}  not sent {a['not_sent']}  refused {a['refused_by_status']}")
for f in a["faults"]:
    r = f["recovery_s"]
    print(f"fault at {f['t_s']:.0f} s: {f['name']} ok={f['ok']} took {f['took_s']:.1f} s, writes back after {'never' if r is None else f'{r:.2f} s'}")
PY
exit "$status"
