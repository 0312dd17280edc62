# Sourced by the benchmark scripts: builds the release binaries and sets
# PERCORE_DATABASE_URL (the dev services under ./var/ unless it is set), seeded.
cargo build -q --release --locked --bin percore --bin percore-bench
mkdir -p bench/results
if [ -z "${PERCORE_DATABASE_URL:-}" ]; then
  # The dev services: `percore migrate` provisions them under ./var/ when missing.
  ./target/release/percore --config /dev/null migrate >/dev/null
  PERCORE_DATABASE_URL="postgres://postgres@127.0.0.1:$(awk '{print $1}' var/ports)/postgres"
fi
./target/release/percore-bench seed --database-url "$PERCORE_DATABASE_URL"
