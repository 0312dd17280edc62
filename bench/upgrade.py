#!/usr/bin/env python3
"""Replaces percore's binary under steady wrk load and reports the requests that failed.

  upgrade.py single  OLD NEW --seconds 30   one socket-activated instance: stop, swap, start
  upgrade.py rolling OLD NEW --seconds 30   two instances behind deploy/haproxy.cfg, one at a time

`single` holds the listening socket itself, as systemd's percore.socket does, and passes it
to each percore as descriptor 3 (LISTEN_FDS=1, LISTEN_PID): while one percore stops and the
next starts, the kernel queues new connections on the socket. `rolling` drains one
instance in HAProxy (runtime API: `set server percore/a state drain`), stops it, starts the
new binary, waits for /readyz, puts it back (`state ready`), then does the other.

Needs PERCORE_DATABASE_URL and PERCORE_REDIS_URL (bench/upgrade.sh sets them), wrk, and
haproxy for `rolling`. Prints one JSON line; exits 1 if any request failed.
"""
import argparse, json, os, re, signal, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every process started, killed on the way out whatever happens.
CHILDREN = []


def spawn(*args, **kwargs):
    process = subprocess.Popen(*args, **kwargs)
    CHILDREN.append(process)
    return process


def tuning(port, extra=""):
    return (f'[server]\nlisten = "127.0.0.1:{port}"\nshards = 2\n'
            f'[database]\nurl = "{os.environ["PERCORE_DATABASE_URL"]}"\n'
            f'[redis]\nurl = "{os.environ["PERCORE_REDIS_URL"]}"\n[bench]\nroutes = true\n[log]\nlevel = "warn"\n{extra}')


def ready(port, path="/readyz", limit_s=30):
    deadline = time.time() + limit_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.05)
    raise SystemExit(f"nothing ready on {port}{path} after {limit_s} s")


def stop(process, log):
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    if code != 0:
        raise SystemExit(f"percore exited {code} after SIGTERM: {open(log).read()[-2000:]}")


def wrk(port, seconds):
    return spawn(["wrk", "-t1", "-c64", f"-d{seconds}s", f"http://127.0.0.1:{port}/json"],
                            stdout=subprocess.PIPE, text=True)


def wrk_result(load):
    out, _ = load.communicate()
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors = {k: 0 for k in ("connect", "read", "write", "timeout")}
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors = dict(zip(errors, map(int, m.groups())))
    return requests, non_2xx, errors


def single(args, workdir):
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("127.0.0.1", args.port))
    held.listen(4096)
    held.set_inheritable(True)
    to_fd_3 = lambda: held.fileno() == 3 or os.dup2(held.fileno(), 3)
    config, log = os.path.join(workdir, "tuning.toml"), os.path.join(workdir, "percore.log")
    with open(config, "w") as f:
        f.write(tuning(args.port))

    def start(binary):
        # `exec` keeps the shell's pid: the one LISTEN_PID must name.
        return spawn(["sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"', binary, "--config", config],
                                preexec_fn=to_fd_3, close_fds=False,
                                stderr=open(log, "a"))

    running = start(args.old)
    ready(args.port)
    load = wrk(args.port, args.seconds)
    time.sleep(args.seconds / 3)
    began = time.time()
    stop(running, log)
    running = start(args.new)
    ready(args.port)
    swap_s = time.time() - began
    result = wrk_result(load)
    stop(running, log)
    return result, {"stop_swap_start_s": round(swap_s, 3)}


def haproxy_admin(sock_path, command):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        s.sendall(command.encode() + b"\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode()


def current_sessions(sock_path, server):
    stat = haproxy_admin(sock_path, "show stat").splitlines()
    header = stat[0].lstrip("# ").split(",")
    for line in stat[1:]:
        row = dict(zip(header, line.split(",")))
        if row.get("pxname") == "percore" and row.get("svname") == server:
            return int(row["scur"] or 0)
    raise SystemExit(f"haproxy has no server percore/{server}")


def rolling(args, workdir):
    ports = {"a": args.port + 1, "b": args.port + 2}
    admin = os.path.join(workdir, "admin.sock")
    shipped = open(os.path.join(ROOT, "deploy", "haproxy.cfg")).read()
    config = (shipped.replace("maxconn 100000", "maxconn 4000")
              .replace("bind :80", f"bind 127.0.0.1:{args.port}")
              .replace("/run/haproxy/admin.sock", admin)
              .replace("127.0.0.1:8081", f"127.0.0.1:{ports['a']}")
              .replace("127.0.0.1:8082", f"127.0.0.1:{ports['b']}"))
    with open(os.path.join(workdir, "haproxy.cfg"), "w") as f:
        f.write(config)
    proxy = spawn(["haproxy", "-db", "-f", os.path.join(workdir, "haproxy.cfg")],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, "haproxy.log"), "w"))

    def start(binary, name):
        path = os.path.join(workdir, f"{name}.toml")
        with open(path, "w") as f:
            f.write(tuning(ports[name]))
        return spawn([binary, "--config", path], stderr=open(os.path.join(workdir, f"{name}.log"), "a"))

    running = {name: start(args.old, name) for name in ports}
    for port in ports.values():
        ready(port)
    ready(args.port, "/healthz")
    time.sleep(3)  # both UP in haproxy (rise 2, inter 1s)
    load = wrk(args.port, args.seconds)
    time.sleep(args.seconds / 4)
    steps = {}
    for name in ports:
        began = time.time()
        haproxy_admin(admin, f"set server percore/{name} state drain")
        deadline = time.time() + 10
        while current_sessions(admin, name) > 0 and time.time() < deadline:
            time.sleep(0.05)
        stop(running[name], os.path.join(workdir, f"{name}.log"))
        running[name] = start(args.new, name)
        ready(ports[name])
        haproxy_admin(admin, f"set server percore/{name} state ready")
        time.sleep(2.5)  # health checks see it UP before the next one drains
        steps[name] = round(time.time() - began, 3)
    result = wrk_result(load)
    for name, process in running.items():
        stop(process, os.path.join(workdir, f"{name}.log"))
    proxy.terminate()
    proxy.wait()
    return result, {"seconds_per_instance": steps}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["single", "rolling"])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        try:
            (requests, non_2xx, errors), detail = (single if args.mode == "single" else rolling)(args, workdir)
        finally:
            for process in CHILDREN:
                if process.poll() is None:
                    process.kill()
    failed = non_2xx + sum(errors.values())
    print(json.dumps({"mode": args.mode, "requests": requests, "failed": failed, "non_2xx": non_2xx,
                      "socket_errors": errors, **detail}))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
