"""Portrait animation: frames per second of /animate through HTTP (upload, job queue, per-frame
progress, download) vs the same pipeline called in this process (`AnimateService.animate_video`,
same warm models), measured side by side in one run; then a talking head through HTTP.

Run by hand: `.venv/bin/python -m benchmarks.bench_animate [--frames 40] [--runs 3]`.
Uses the tiny smoke LivePortrait and face pack unless `--models-dir` points at real models
(<dir>/liveportrait/liveportrait/..., <dir>/buffalo_l/models/buffalo_l/*.onnx). Goal for the
HTTP / direct time ratio: <= 1.10. On a GPU with the real weights this prints 512x512 frames/s
and the time of a 10 s clip (goal on a T4: <= 20 s); figures from a GPU are not measured here.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import requests

from backend.server import Server
from backend.settings import load_settings
from tests import face_media as fm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=40, help="driving video frames (at 25 fps)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--models-dir", type=Path, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for the tiny model)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models_dir = args.models_dir
        if models_dir is None:
            from prefetch import manifest

            models_dir = tmp / "models"
            manifest.discover_smoke_builders(families=["face", "animate"])
            for family in ("face", "animate"):
                manifest.SMOKE_BUILDERS[family](models_dir)
        settings = load_settings(profile="smoke" if args.models_dir is None else "local", data_dir=tmp / "data",
                                 models_dir=models_dir, api_key="bench", port=0, job_wait_seconds=600,
                                 face_det_size=256 if args.models_dir is None else 640, animate_max_seconds=120)
        source = tmp / "source.png"
        source.write_bytes(fm.png(faces=[(112, 80)]))
        clip = fm.video(tmp / "drive.mp4", frames=args.frames, fps=25, height=256)
        server = Server(settings).start()
        try:
            service = server.app.extensions["enfoads.animate"]
            headers = {"Authorization": "Bearer bench"}

            def http() -> float:
                t = time.perf_counter()
                r = requests.post(f"{server.url}/animate", headers=headers, timeout=900,
                                  files={"source": source.open("rb"), "driving": clip.open("rb")})
                r.raise_for_status()
                requests.get(f"{server.url}{r.json()['url']}", headers=headers, timeout=60).raise_for_status()
                return time.perf_counter() - t

            def direct() -> float:
                t = time.perf_counter()
                service.animate_video(source, clip, tmp / "direct.mp4")
                return time.perf_counter() - t

            http(), direct()  # warm: models loaded, first-call allocations done
            times_http, times_direct = [], []
            for _ in range(args.runs):  # interleaved, so load on the machine hits both alike
                times_http.append(http())
                times_direct.append(direct())
            h, d = statistics.median(times_http), statistics.median(times_direct)
            device = server.app.extensions["enfoads"].model_env.device
            print(f"device {device}; models {'smoke (tiny)' if args.models_dir is None else args.models_dir}; "
                  f"{args.frames} frames, {args.runs} runs (median)")
            print(f"/animate via HTTP : {args.frames / h:7.1f} frames/s  ({h:.2f} s)")
            print(f"direct pipeline   : {args.frames / d:7.1f} frames/s  ({d:.2f} s)")
            print(f"HTTP / direct time: {h / d:.3f}  (goal <= 1.10)")
            if device.startswith("cuda"):
                print(f"a 10 s clip at 25 fps would take ~{250 / (args.frames / h):.1f} s (goal on a T4: <= 20 s)")
            else:
                print("GPU figures (512x512 frames/s, 10 s clip time on a T4): not measured here")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
