"""Job round trip through HTTP + queue vs calling the same 50 ms function directly; and the lanes.

Run by hand: `.venv/bin/python -m benchmarks.bench_jobs [--n 40] [--lanes]`. Goal: ratio <= 1.10.
`--lanes` (tiny smoke face + TTS models on this machine, real code paths): a short /tts request
alone vs sent while a long /face-swap/video job runs (goal <= 1.5 x alone + one frame step), and the
video job's own time with and without 10 interleaved /tts requests (goal: <= 5 % beyond their time).
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


def _job_seconds(jobs, job_id: str) -> float:
    job = jobs.get(job_id)
    return job.finished_at - job.started_at


def lanes(frames: int) -> None:
    from prefetch import manifest
    from tests import face_media as fm

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        manifest.discover_smoke_builders(families=("face", "tts"))
        for family in ("face", "tts"):
            manifest.SMOKE_BUILDERS[family](models)
        server = Server(load_settings(profile="smoke", data_dir=Path(tmp) / "data", models_dir=models, api_key="bench",
                                      device="cpu", port=0, face_det_size=256, job_wait_seconds=600))
        server.start()
        jobs = server.app.extensions["enfoads"].jobs
        h = {"Authorization": "Bearer bench"}
        target = fm.video(Path(tmp) / "t.mp4", frames=frames, fps=25).read_bytes()
        files = {"source": ("s.png", fm.png(faces=[(16, 16)])), "target": ("t.mp4", target)}

        def tts() -> tuple[float, str]:
            t = time.perf_counter()
            r = requests.post(f"{server.url}/tts", json={"text": "Hola.", "seed": 1}, headers=h, timeout=600)
            r.raise_for_status()
            return time.perf_counter() - t, r.headers["X-Job-Id"]

        def video_async() -> str:
            r = requests.post(f"{server.url}/face-swap/video", files=files, headers={**h, "Prefer": "respond-async"},
                              timeout=600)
            r.raise_for_status()
            job_id = r.json()["job_id"]
            while jobs.get(job_id).progress == 0:
                time.sleep(0.002)
            return job_id

        try:
            tts()  # warm-up: both families loaded
            requests.post(f"{server.url}/face-swap/video", files=files, headers=h, timeout=600).raise_for_status()
            alone = statistics.median(tts()[0] for _ in range(5))
            video = video_async()
            jobs.wait(video, 600)
            video_alone = _job_seconds(jobs, video)
            step = video_alone / frames
            video = video_async()
            behind, _ = tts()
            jobs.wait(video, 600)
            video = video_async()
            own = 0.0
            for _ in range(10):
                _, job_id = tts()
                own += _job_seconds(jobs, job_id)
            jobs.wait(video, 600)
            video_mixed = _job_seconds(jobs, video)
        finally:
            server.stop()
    print(f"/tts alone              median {alone * 1000:8.1f} ms")
    print(f"/tts behind a video job        {behind * 1000:8.1f} ms  (one frame step {step * 1000:.1f} ms)")
    print(f"ratio behind / (alone + step) {behind / (alone + step):.3f}  (goal <= 1.5)")
    print(f"video job alone {video_alone:.2f} s; with 10 /tts interleaved {video_mixed:.2f} s, "
          f"of which their own time {own:.2f} s")
    print(f"batch overhead beyond the interactive jobs' time {100 * (video_mixed - own - video_alone) / video_alone:+.1f} %"
          "  (goal <= 5 %)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--lanes", action="store_true", help="also measure the interactive lane (smoke models)")
    parser.add_argument("--frames", type=int, default=250, help="frames of the --lanes video job")
    args = parser.parse_args()
    if args.lanes:
        lanes(args.frames)
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
