#!/usr/bin/env bash
# Replaces percore's binary under steady wrk load and reports failed requests (see
# bench/upgrade.py): MODE=single (socket-activated: stop, swap, start) or MODE=rolling (two
# instances behind deploy/haproxy.cfg, drained one at a time). OLD and NEW default to the
# release build; point OLD at the running version's binary to rehearse a real upgrade.
#   MODE=single SECONDS_UNDER_LOAD=30 bench/upgrade.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/dev-services.sh
old=${OLD:-./target/release/percore} new=${NEW:-./target/release/percore}
exec python3 bench/upgrade.py "${MODE:-single}" "$old" "$new" --seconds "${SECONDS_UNDER_LOAD:-30}"
