"""Face swap: one image through HTTP (+ job queue, decode, encode) vs the same work done with
direct insightface calls in this process; then video frames per second through HTTP; then the
cost of `restore` (GFPGAN on each swapped face) per image and per video frame, with and without it
side by side.

Run by hand: `.venv/bin/python -m benchmarks.bench_face [--n 20] [--size 640] [--frames 60]`.
Uses the tiny smoke pack unless `--models-dir` points at real models (<dir>/buffalo_l/models/
buffalo_l/*.onnx, <dir>/inswapper_128/inswapper_128.onnx, <dir>/gfpgan-v1.4/GFPGANv1.4.pth). Runs on CUDA when torch sees a GPU
and onnxruntime has the CUDA provider (else CPU); the device used is printed. Goal for the
per-image ratio: <= 1.10.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

from backend.server import Server
from backend.settings import load_settings
from tests import face_media as fm


def pick_device() -> str:
    try:
        import onnxruntime as ort
        import torch

        if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
            return "cuda"
    except ImportError:
        pass
    return "cpu"


def direct_swapper(models_dir: Path, det_size: int, device: str, modules=None):
    """What a script calling insightface itself would do (`modules`: FaceAnalysis' allowed_modules;
    None loads the whole pack, as most scripts do)."""
    import contextlib
    import io

    import cv2
    from insightface.app import FaceAnalysis
    from insightface.model_zoo import get_model

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    with contextlib.redirect_stdout(io.StringIO()):
        app = FaceAnalysis(name="buffalo_l", root=str(models_dir / "buffalo_l"), providers=providers,
                           allowed_modules=modules)
        app.prepare(ctx_id=0 if device == "cuda" else -1, det_size=(det_size, det_size))
        swapper = get_model(str(models_dir / "inswapper_128" / "inswapper_128.onnx"), providers=providers)

    def run(source: bytes, target: bytes) -> bytes:
        src = cv2.imdecode(np.frombuffer(source, np.uint8), cv2.IMREAD_COLOR)
        img = cv2.imdecode(np.frombuffer(target, np.uint8), cv2.IMREAD_COLOR)
        src_face = sorted(app.get(src), key=lambda f: f.bbox[0])[0]
        for face in app.get(img):
            img = swapper.get(img, face, src_face, paste_back=True)
        return cv2.imencode(".png", img)[1].tobytes()

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20, help="swaps per side")
    parser.add_argument("--size", type=int, default=640, help="image side and detector size (multiple of 32)")
    parser.add_argument("--frames", type=int, default=60, help="video frames (30 fps)")
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    device = pick_device()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models_dir = args.models_dir
        if models_dir is None:
            from services.face.smoke import build_pack

            models_dir = tmp / "models"
            from services.restore.smoke import build_face_restorer

            build_pack(models_dir)
            build_face_restorer(models_dir)
        settings = load_settings(profile="smoke" if args.models_dir is None else "local", data_dir=tmp / "data",
                                 models_dir=models_dir, api_key="bench", device=device, port=0,
                                 face_det_size=args.size, job_wait_seconds=600)
        # Two faces on the target, one on the source (white squares: what the smoke detector finds).
        source = fm.png(args.size, args.size, [(16, 16)])
        target = fm.png(args.size, args.size, [(16, 16), (16 + 32 * 8, 16 + 32 * 4)])
        # The service runs only the detector on the target and detector + recognition on the
        # source: the like-for-like direct script loads just those two models.
        run_direct = direct_swapper(models_dir, args.size, device, modules=["detection", "recognition"])
        run_full = direct_swapper(models_dir, args.size, device)
        server = Server(settings).start()
        session = requests.Session()
        headers = {"Authorization": "Bearer bench"}
        files = {"source": ("s.png", source), "target": ("t.png", target)}
        try:
            for _ in range(2):  # warm-up: model loads, ORT first-run allocations
                run_direct(source, target)
                run_full(source, target)
                session.post(f"{server.url}/face-swap", files=files, headers=headers).raise_for_status()
            direct, full, http = [], [], []
            for _ in range(args.n):  # interleaved, so drift hits all sides alike
                t = time.perf_counter()
                run_direct(source, target)
                direct.append(time.perf_counter() - t)
                t = time.perf_counter()
                run_full(source, target)
                full.append(time.perf_counter() - t)
                t = time.perf_counter()
                r = session.post(f"{server.url}/face-swap", files=files, headers=headers)
                http.append(time.perf_counter() - t)
                r.raise_for_status()
            providers = r.headers.get("X-Onnx-Providers")

            clip = fm.video(tmp / "clip.mp4", frames=args.frames, fps=30, width=args.size, height=args.size // 2,
                            faces_in=lambda i: [(16 + 32 * (i % 4), 16)])
            t = time.perf_counter()
            r = session.post(f"{server.url}/face-swap/video", headers=headers,
                             files={"source": ("s.png", source), "target": ("v.mp4", clip.read_bytes())})
            video_s = time.perf_counter() - t
            r.raise_for_status()
            frames = r.json()["frames"]

            # restore on vs off, interleaved; video: the same clip both ways
            plain, restored = [], []
            for restore, times in (("true", restored), ("false", plain)) * 2:  # warm-up pass for GFPGAN
                session.post(f"{server.url}/face-swap", files=files, data={"restore": restore},
                             headers=headers).raise_for_status()
            for _ in range(args.n):
                for restore, times in (("false", plain), ("true", restored)):
                    t = time.perf_counter()
                    session.post(f"{server.url}/face-swap", files=files, data={"restore": restore},
                                 headers=headers).raise_for_status()
                    times.append(time.perf_counter() - t)
            video_restore = {}
            for restore in ("false", "true"):
                t = time.perf_counter()
                session.post(f"{server.url}/face-swap/video", headers=headers, data={"restore": restore},
                             files={"source": ("s.png", source), "target": ("v.mp4", clip.read_bytes())}
                             ).raise_for_status()
                video_restore[restore] = time.perf_counter() - t
        finally:
            server.stop()
    d, f, h = statistics.median(direct), statistics.median(full), statistics.median(http)
    print(f"device {device}; models {'smoke (tiny)' if args.models_dir is None else args.models_dir}; "
          f"image {args.size}x{args.size}, 2 faces; providers {providers}")
    print(f"direct insightface, det+rec modules   median {d * 1000:8.2f} ms")
    print(f"direct insightface, whole pack        median {f * 1000:8.2f} ms")
    print(f"HTTP /face-swap (job queue, PNG out)  median {h * 1000:8.2f} ms  "
          f"(p90 {statistics.quantiles(http, n=10)[-1] * 1000:.2f} ms)")
    print(f"ratio HTTP / direct det+rec {h / d:.3f}  (goal <= 1.10); HTTP / direct whole pack {h / f:.3f}")
    print(f"video {args.size}x{args.size // 2}, {frames} frames via HTTP: {video_s:.2f} s = {frames / video_s:.1f} frames/s")
    p, r = statistics.median(plain), statistics.median(restored)
    print(f"/face-swap without restore median {p * 1000:8.2f} ms; with restore {r * 1000:8.2f} ms "
          f"(+{(r - p) * 1000:.2f} ms for 2 faces, x{r / p:.2f})")
    off, on = video_restore["false"], video_restore["true"]
    print(f"video, per frame (1 face): without restore {off / frames * 1000:.2f} ms, with restore "
          f"{on / frames * 1000:.2f} ms (+{(on - off) / frames * 1000:.2f} ms per frame)")


if __name__ == "__main__":
    main()
