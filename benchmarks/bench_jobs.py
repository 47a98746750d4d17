"""Job round trip through HTTP + queue vs calling the same 50 ms function directly.

Run by hand: `.venv/bin/python -m benchmarks.bench_jobs [--n 40]`. Goal: ratio <= 1.10.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import requests
from flask import Blueprint
from pydantic import BaseModel

from backend.api import json_body, ok
from backend.job_http import run_job
from backend.server import Server
from backend.settings import load_settings


def work(params, ctx=None):
    time.sleep(0.05)
    return {"n": params["n"]}


class Body(BaseModel):
    n: int


bp = Blueprint("bench", __name__)


@bp.post("/bench")
def bench_route():
    body = json_body(Body)
    return run_job("bench", body.model_dump(), lambda job: ok(job.result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(load_settings(data_dir=Path(tmp), api_key="bench", device="cpu", port=0))
        server.app.extensions["enfoads"].jobs.register("bench", work)
        server.app.register_blueprint(bp)
        server.start()
        session = requests.Session()
        headers = {"Authorization": "Bearer bench"}
        try:
            session.post(f"{server.url}/bench", json={"n": 0}, headers=headers).raise_for_status()  # warm-up
            direct, http = [], []
            for i in range(args.n):  # interleaved, so drift hits both sides alike
                t = time.perf_counter()
                work({"n": i})
                direct.append(time.perf_counter() - t)
                t = time.perf_counter()
                session.post(f"{server.url}/bench", json={"n": i}, headers=headers).raise_for_status()
                http.append(time.perf_counter() - t)
        finally:
            server.stop()
    d, h = statistics.median(direct), statistics.median(http)
    print(f"direct call      median {d * 1000:7.2f} ms")
    print(f"HTTP + job queue median {h * 1000:7.2f} ms  (p90 {statistics.quantiles(http, n=10)[-1] * 1000:.2f} ms)")
    print(f"ratio {h / d:.3f}  (goal <= 1.10)")


if __name__ == "__main__":
    main()
