# Sourced by the benchmark scripts: builds the release binaries, exports the service URLs
# (bench/dev-services.sh: the dev services under ./var/ for whichever is unset), migrated
# and seeded.
source bench/dev-services.sh
cargo build -q --release --locked --bin percore-bench
mkdir -p bench/results
./target/release/percore-bench seed --database-url "$PERCORE_DATABASE_URL"

# The [server] and [database] sections of a benchmark tuning file for $1 shards: on CPUs
# 1.. while that leaves CPU 0 to the load generator, otherwise on the first CPUs.
server_tuning() {
  local shards=$1 cpus=""
  if [ "$shards" -lt "$(nproc)" ]; then cpus=$(seq -s, 1 "$shards"); fi
  printf '[server]\nlisten = "127.0.0.1:8080"\nshards = %s\ncpus = [%s]\n[database]\nurl = "%s"\n' \
    "$shards" "$cpus" "$PERCORE_DATABASE_URL"
}

# The sections every seed-mix run adds: the mix logs in on purpose (0.1%) from one client
# IP, so neither login throttling nor the per-IP auth rate limit may shape it.
seed_mix_tuning() {
  printf '[identity]\nlogin_rate_per_minute = 1000000\nlogin_burst = 1000000\n'
  printf '[rate_limit.auth]\nrate = 1000000.0\nburst = 1000000\n[log]\nlevel = "warn"\n'
}

# For the fault scripts: pg_ctl on the dev Postgres's data directory, run as its owner
# (postgres refuses to run as root).
dev_pg_ctl() {
  local pg_ctl owner=""
  pg_ctl=$(ls /usr/lib/postgresql/*/bin/pg_ctl | tail -1)
  [ "$(id -u)" -eq 0 ] && owner="runuser -u $(stat -c %U var/pg) -- "
  echo "$owner$pg_ctl -D $PWD/var/pg"
}
