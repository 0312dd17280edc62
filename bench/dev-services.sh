# Sourced by the benchmark scripts: exports PERCORE_DATABASE_URL and PERCORE_REDIS_URL,
# for whichever is unset, from the dev services under ./var/ (percore-dev starts them if
# needed), and migrates. The percore binary never provisions a service itself.
cargo build -q --release --locked --bin percore --bin percore-dev
mkdir -p var
if [ -z "${PERCORE_DATABASE_URL:-}" ] || [ -z "${PERCORE_REDIS_URL:-}" ]; then
  # Exports only the services the environment does not name already.
  eval "$(./target/release/percore-dev env)"
fi
./target/release/percore --config /dev/null migrate >/dev/null
