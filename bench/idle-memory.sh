#!/usr/bin/env bash
# Resident memory per idle keep-alive connection in a release build: the figure
# RELIABILITY.md quotes (a debug build's test bounds it far more loosely). One shard on
# the dev services; CONNECTIONS (default 10000) clients each send one request, read the
# answer and stay open; the server's VmRSS from /proc before and with them all open.
#   CONNECTIONS=10000 bench/idle-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${CONNECTIONS:-10000} port=${PORT:-8090}
source bench/dev-services.sh
ulimit -n $((connections + 4096))
config=$(mktemp --suffix=.toml)
printf '[server]\nlisten = "127.0.0.1:%s"\nshards = 1\nconnections_per_shard_max = %s\n[http]\nidle_timeout_ms = 600000\n[log]\nlevel = "warn"\n' \
  "$port" "$((connections + 100))" > "$config"
./target/release/percore --config "$config" & pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$config"' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
python3 - "$pid" "$connections" "$port" <<'PY'
import socket, sys, time
pid, count, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def served(s):
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: m\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
warm = socket.create_connection(("127.0.0.1", port)); served(warm)
time.sleep(0.5)
before = rss_kib()
held = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port)); served(s); held.append(s)
time.sleep(1)
during = rss_kib()
print(f"{count} idle connections: RSS {before} KiB -> {during} KiB, "
      f"{(during - before) * 1024 / count / 1024:.1f} KiB per connection")
PY
