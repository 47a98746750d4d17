"""Unauthenticated Socket.IO flood: threads and memory of a server process, without and with the
transport caps, side by side in one run.

Each server is a real `python -m backend` child process (smoke profile, its own temp data dir) on
a loopback port; the flood is N `GET /socket.io/?EIO=4&transport=polling` with no key, as in the
report of issue #13 (9,000 there). "unguarded" sets the caps out of reach and the auth deadline to
an hour: the behaviour before them. Threads and RSS are read from /proc/<pid>/status before the
flood, right after it, and once the auth deadline has passed.

Run by hand: `.venv/bin/python -m benchmarks.bench_socket_flood [--n 2000]`. Bounded: N requests
per server, then both processes are stopped.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return {"threads": int(fields["Threads"]), "rss_mb": int(fields["VmRSS"].split()[0]) / 1024}


def start(env_extra: dict, data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ENFOADS_PROFILE": "smoke", "ENFOADS_DEVICE": "cpu",
           "ENFOADS_API_KEY": KEY, "ENFOADS_PORT": str(port), "ENFOADS_DATA_DIR": str(data_dir),
           "ENFOADS_LOG_LEVEL": "WARNING", **env_extra}
    proc = subprocess.Popen([sys.executable, "-m", "backend"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return proc, url
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


def flood(url: str, n: int) -> dict:
    codes: dict[int, int] = {}
    with requests.Session() as http:
        for _ in range(n):
            code = http.get(f"{url}/socket.io/?EIO=4&transport=polling", timeout=10).status_code
            codes[code] = codes.get(code, 0) + 1
    return codes


def measure(name: str, env_extra: dict, n: int, settle_s: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start(env_extra, Path(tmp))
        try:
            time.sleep(1.0)
            before = proc_status(proc.pid)
            t0 = time.perf_counter()
            codes = flood(url, n)
            seconds = time.perf_counter() - t0
            after = proc_status(proc.pid)
            time.sleep(settle_s)
            settled = proc_status(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {"name": name, "codes": codes, "seconds": seconds, "before": before, "after": after, "settled": settled}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000, help="handshakes per server")
    parser.add_argument("--auth-timeout", type=float, default=3.0, help="the guarded server's deadline (s)")
    args = parser.parse_args()
    settle = args.auth_timeout + 2.0
    runs = [
        measure("unguarded", {"ENFOADS_SOCKET_MAX_CONNECTIONS": "1000000", "ENFOADS_SOCKET_MAX_PER_CLIENT": "1000000",
                              "ENFOADS_SOCKET_AUTH_TIMEOUT_S": "3600"}, args.n, settle),
        measure("guarded", {"ENFOADS_SOCKET_AUTH_TIMEOUT_S": str(args.auth_timeout)}, args.n, settle),
    ]
    print(f"{args.n} unauthenticated polling handshakes per server; 'settled' = {settle:g} s later")
    print(f"{'server':<10} {'answers':<22} {'threads before/after/settled':<30} {'RSS MB before/after/settled':<30}")
    for r in runs:
        answers = ", ".join(f"{n}x{code}" for code, n in sorted(r["codes"].items()))
        threads = f"{r['before']['threads']}/{r['after']['threads']}/{r['settled']['threads']}"
        rss = f"{r['before']['rss_mb']:.0f}/{r['after']['rss_mb']:.0f}/{r['settled']['rss_mb']:.0f}"
        print(f"{r['name']:<10} {answers:<22} {threads:<30} {rss:<30}")
    u, g = runs
    grow = lambda r, k: r["after"][k] - r["before"][k]  # noqa: E731
    print(f"thread growth guarded/unguarded: {grow(g, 'threads')}/{grow(u, 'threads')} = "
          f"{grow(g, 'threads') / max(grow(u, 'threads'), 1):.3f}")
    print(f"RSS growth guarded/unguarded: {grow(g, 'rss_mb'):.1f}/{grow(u, 'rss_mb'):.1f} MB = "
          f"{grow(g, 'rss_mb') / max(grow(u, 'rss_mb'), 0.1):.3f}")


if __name__ == "__main__":
    main()
