#!/usr/bin/env bash
# seed-mix with one streaming replica versus none (issue 8). Makes a streaming replica of
# the dev Postgres under var/pg-replica/ (pg_basebackup -R; kept running between runs; stop
# it with `pg_ctl -D var/pg-replica/data stop`), then alternates the two set-ups ROUNDS
# times on the same seeded data, so that the machine's slow spells hit both alike. Each run
# is a release percore (SHARDS shards on CPUs 1..) under wrk on CPU 0: req/s, p99, and the
# share of SQL reads the replica served (from /metrics). Writes
# bench/results/seed-mix-replica.json.
#   ROUNDS=2 DURATION=20s CONNECTIONS=64 SHARDS=1 bench/replica.sh
# The replica shares the machine's cores with the primary, percore and wrk: on a small box
# it moves reads between processes that compete for the same CPUs; it adds none.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${DURATION:-20s} connections=${CONNECTIONS:-64} rounds=${ROUNDS:-2} shards=${SHARDS:-1}
source bench/lib.sh
pg_bin=/usr/lib/postgresql/15/bin
primary_port=$(awk '{print $1}' var/ports)
replica_port=${REPLICA_PORT:-$((primary_port + 1))}
replica_url="postgres://postgres@127.0.0.1:$replica_port/postgres"
# As whoever owns the dev cluster (Postgres refuses to run as root).
owner=$(stat -c %U var/pg)
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u "$owner" -- "$@"; else "$@"; fi; }

if ! "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$replica_port"; then
  rm -rf var/pg-replica
  mkdir -p var/pg-replica
  [ "$(id -u)" = 0 ] && chown "$owner" var/pg-replica
  as_owner "$pg_bin/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres \
    -D var/pg-replica/data -R -X stream -c fast
  as_owner "$pg_bin/pg_ctl" -D var/pg-replica/data -l var/pg-replica/pg.log -w -t 60 start -o \
    "-p $replica_port -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c shared_preload_libraries=pg_stat_statements"
fi

metric() { curl -fs http://127.0.0.1:8080/metrics | awk -v name="$1" -v filter="$2" \
  'index($0, name) == 1 && index($0, filter) { sum += $NF } END { printf "%d\n", sum }'; }

runs=()
for round in $(seq "$rounds"); do
  for setup in none replica; do
    out="bench/results/seed-mix-replica-$setup-$round.json"
    config=$(mktemp --suffix=.toml)
    {
      server_tuning "$shards"
      [ "$setup" = replica ] && printf 'replicas = ["%s"]\n' "$replica_url"
      seed_mix_tuning
    } > "$config"
    ./target/release/percore --config "$config" & pid=$!
    trap 'kill "$pid" 2>/dev/null || true' EXIT
    for _ in $(seq 50); do curl -fs http://127.0.0.1:8080/readyz >/dev/null && break; sleep 0.2; done
    if [ "$setup" = replica ]; then
      for _ in $(seq 50); do [ "$(metric percore_db_replica_usable '')" -ge 1 ] && break; sleep 0.2; done
    fi
    ./target/release/percore-bench run seed-mix --duration 5s --connections "$connections" >/dev/null
    reads_before=$(metric percore_db_statements_total 'kind="read"')
    replica_before=$(metric percore_db_replica_reads_total '')
    ./target/release/percore-bench run seed-mix --duration "$duration" --connections "$connections" --out "$out"
    reads=$(( $(metric percore_db_statements_total 'kind="read"') - reads_before ))
    replica_reads=$(( $(metric percore_db_replica_reads_total '') - replica_before ))
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -f "$config"
    runs+=("$setup $round $out $reads $replica_reads")
  done
done

python3 - "${runs[@]}" <<'PY'
import json, statistics, sys
runs = []
for arg in sys.argv[1:]:
    setup, rnd, path, reads, replica_reads = arg.split()
    w = json.load(open(path))["wrk"]
    runs.append({"setup": setup, "round": int(rnd), "requests_per_s": w.get("requests_per_s"),
                 "p99_ms": w.get("latency_us_p99", 0) / 1000, "sql_reads": int(reads),
                 "replica_reads": int(replica_reads),
                 "replica_share_of_reads": int(replica_reads) / int(reads) if int(reads) else 0.0,
                 "errors": w.get("errors", [])})
for r in runs:
    print(f'round {r["round"]} {r["setup"]:7}: {r["requests_per_s"]:>8} req/s, p99 {r["p99_ms"]:.2f} ms, '
          f'{r["replica_reads"]} of {r["sql_reads"]} SQL reads on the replica ({r["replica_share_of_reads"]:.1%}), '
          f'errors {r["errors"]}')
by = lambda s: [r for r in runs if r["setup"] == s]
ratio = statistics.median(a["requests_per_s"] / b["requests_per_s"] for a, b in zip(by("replica"), by("none")))
print(f"median req/s ratio, replica / none, same round: {ratio:.2f}")
json.dump({"runs": runs, "median_rps_ratio_replica_over_none": ratio},
          open("bench/results/seed-mix-replica.json", "w"), indent=2)
PY
