"""Distributed mode: throughput with 1 vs 2 workers, and the per-job cost of going through Redis.

Run by hand: `.venv/bin/python -m benchmarks.bench_cluster [--jobs 40] [--seconds 0.5]` (needs
Debian's redis-server; starts its own on a free loopback port).
- Throughput: `--jobs` jobs that sleep `--seconds` each (standing for GPU time: on a 2-core machine
  real inference would measure the CPUs, not the distribution) sent at once, timed until the last
  ends, with one worker and then two. Goal: two workers >= 1.8 x one.
- Overhead: the same jobs with no sleep, one at a time, inline (the request waits for its result),
  in single-process mode and through Redis + one worker; printed side by side.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import requests

from backend.server import Server
from backend.settings import load_settings
from tests import cluster_jobs
from tests.cluster_procs import RedisProcess, WorkerProcess, free_port, wait_until

KEY, WORKER_KEY = "bench", "enfw-bench"
H = {"Authorization": f"Bearer {KEY}"}


def front(tmp: Path, redis_url: str | None, port: int = 0) -> Server:
    server = Server(load_settings(profile="smoke", device="cpu", data_dir=tmp / "front", api_key=KEY, port=port,
                                  worker_key=WORKER_KEY, redis_url=redis_url, queue_max=1000, job_wait_seconds=60))
    cluster_jobs.install(server.app)
    return server.start()


def run(url: str, params: dict, *, wait: bool) -> requests.Response:
    headers = H if wait else {**H, "Prefer": "respond-async"}
    r = requests.post(f"{url}/test/cluster-run", json={"kind": "test.sleep", "params": params}, headers=headers,
                      timeout=120)
    r.raise_for_status()
    return r


def throughput(url: str, server: Server, jobs: int, seconds: float) -> float:
    start = time.perf_counter()
    ids = [run(url, {"seconds": seconds}, wait=False).json()["job_id"] for _ in range(jobs)]
    store = server.app.extensions["enfoads"].jobs.store
    wait_until(lambda: all(store.get(i).status == "succeeded" for i in ids), 600, "the jobs to finish", 0.05)
    return time.perf_counter() - start


def inline_latency(url: str, n: int) -> float:
    run(url, {"seconds": 0}, wait=True)  # warm-up
    times = []
    for _ in range(n):
        t = time.perf_counter()
        run(url, {"seconds": 0}, wait=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        single = front(tmp / "single", None)
        single_ms = inline_latency(single.url, args.jobs) * 1000
        single.stop()

        redis_server = RedisProcess().start()
        port = free_port()
        server = front(tmp / "cluster", redis_server.url, port)
        url = f"http://127.0.0.1:{port}"
        env = {"ENFOADS_CLUSTER_MAINTENANCE_SHARE": "1"}
        workers = []
        try:
            workers.append(WorkerProcess("b1", redis_url=redis_server.url, front_url=url, key=WORKER_KEY,
                                         families="test", data_dir=tmp / "b1", env=env).wait_ready())
            cluster_ms = inline_latency(url, args.jobs) * 1000
            one = throughput(url, server, args.jobs, args.seconds)
            workers.append(WorkerProcess("b2", redis_url=redis_server.url, front_url=url, key=WORKER_KEY,
                                         families="test", data_dir=tmp / "b2", env=env).wait_ready())
            two = throughput(url, server, args.jobs, args.seconds)
        finally:
            for w in workers:
                w.stop()
            server.stop()
            redis_server.stop()
    ideal = args.jobs * args.seconds
    print(f"throughput, {args.jobs} jobs of {args.seconds:.2f} s (ideal {ideal:.1f} s with one worker)")
    print(f"  1 worker : {one:6.2f} s   {args.jobs / one:5.2f} jobs/s")
    print(f"  2 workers: {two:6.2f} s   {args.jobs / two:5.2f} jobs/s")
    print(f"  speed-up : {one / two:.2f} x   (goal >= 1.8)")
    print(f"per-job round trip, inline, median of {args.jobs} (an empty job)")
    print(f"  single process     : {single_ms:7.1f} ms")
    print(f"  Redis + one worker : {cluster_ms:7.1f} ms   ({cluster_ms / single_ms:.1f} x, "
          f"+{cluster_ms - single_ms:.1f} ms a job)")


if __name__ == "__main__":
    main()
