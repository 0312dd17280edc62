# Sourced by the benchmark scripts: exports PERCORE_DATABASE_URL and PERCORE_REDIS_URL,
# for whichever is unset, from the dev services under ./var/ (percore-dev starts them if
# needed), and migrates. The percore binary never provisions a service itself.
cargo build -q --release --locked --bin percore --bin percore-dev
mkdir -p var
if [ -z "${PERCORE_DATABASE_URL:-}" ] || [ -z "${PERCORE_REDIS_URL:-}" ]; then
  dev_services=$(./target/release/percore-dev env)
  export PERCORE_DATABASE_URL="${PERCORE_DATABASE_URL:-$(sed -n "s/^export PERCORE_DATABASE_URL='\(.*\)'$/\1/p" <<<"$dev_services")}"
  export PERCORE_REDIS_URL="${PERCORE_REDIS_URL:-$(sed -n "s/^export PERCORE_REDIS_URL='\(.*\)'$/\1/p" <<<"$dev_services")}"
fi
./target/release/percore --config /dev/null migrate >/dev/null
