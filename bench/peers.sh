#!/usr/bin/env bash
# percore (one shard on CPU 1) against may_minihttp and axum, side by side, with
# ../shared/peers/compare (wrk on CPU 0). Prints the table `compare` prints.
#   bench/peers.sh                # plaintext (pipelined 16) and json
#   RUNS=5 DURATION=10s bench/peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/dev-services.sh
exec ../shared/peers/compare --tests "${TESTS:-plaintext,json}" -- ./target/release/percore --config bench/tuning-1shard.toml
