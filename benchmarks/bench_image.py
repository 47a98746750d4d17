"""Image service: HTTP + job queue + offloader vs a direct diffusers call, on the same pipeline; the
pose ControlNet's extra time per image, with and without `pose_image` side by side.

Run by hand from the repo root:
    .venv/bin/python -m benchmarks.bench_image [--n 20] [--size 64]     tiny random SDXL (goal: ratio <= 1.10)
    .venv/bin/python -m benchmarks.bench_image --sdxl [--n 5]           GPU only: SDXL's real sizes, 1024x1024
                                                                        (and with the OpenPose ControlNet)
    .venv/bin/python -m benchmarks.bench_image --upscale [--n 10] [--size 96] [--models-dir DIR]
        /upscale x4 through HTTP + job + offloader vs a direct spandrel call on the same model (goal <= 1.10);
        tiny Real-ESRGAN unless --models-dir holds realesrgan-x4plus/RealESRGAN_x4plus.pth; on a GPU also a
        1024x1024 x4 upscale at Real-ESRGAN's real size (the real file, else random weights of its shapes)
    .venv/bin/python -m benchmarks.bench_image --magic [--models-dir data/models]   magic prompt: llm vs rules

--magic times /magic-prompt through HTTP with engine=rules and engine=llm side by side (the tiny
smoke VLM + SDXL tokenizer, or with --models-dir the real Qwen2-VL-2B, on a GPU when there is one).

--sdxl loads the real models when prefetched (`python -m prefetch image`, colab/local profile), else
writes random weights with SDXL base 1.0's real shapes (same compute and memory), and reports load
time, peak host RAM, 4-step latency and peak VRAM at the device's dtype policy (fp16 on a T4),
against the seed's claim of 2-3 s per 1024x1024 image on a T4 (~6-7 GB VRAM).
"""
from __future__ import annotations

import argparse
import logging
import resource
import statistics
import tempfile
import time
from pathlib import Path

import requests

from backend.server import Server
from backend.settings import load_settings
from services.device import dtype_name, torch_dtype
from services.image.lightning import BASE_KEY, UNET_FILES, VAE_KEY, load_pipeline, unet_key

log = logging.getLogger("bench_image")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def http_vs_direct(models: Path, n: int, size: int, steps: int, profile: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # cache off: every request must really run the pipeline
        settings = load_settings(profile=profile, data_dir=Path(tmp), models_dir=models, api_key="bench", port=0,
                                 image_cache_mb=0, image_default_steps=steps)
        server = Server(settings).start()
        backend = server.app.extensions["enfoads"]
        session = requests.Session()
        headers = {"Authorization": "Bearer bench"}
        body = {"prompt": "a red sneaker on a beach at sunset", "width": size, "height": size, "steps": steps}

        def direct_job(params, ctx):
            # The plain diffusers call on the very same pipeline object, timed inside the job worker
            # thread: torch's CPU thread pool belongs to the calling thread, so timing it from
            # another thread would compare thread pools, not the service's overhead.
            import torch

            with backend.vram.acquire("sdxl-lightning") as lp:
                t = time.perf_counter()
                lp.pipe(prompt=body["prompt"], width=size, height=size, num_inference_steps=steps,
                        guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(params["seed"])).images[0]
                _sync()
                return {"seconds": time.perf_counter() - t}

        backend.jobs.register("bench.direct", direct_job)

        def via_http(seed: int) -> float:
            t = time.perf_counter()
            session.post(f"{server.url}/generate-image", json={**body, "seed": seed}, headers=headers,
                         timeout=600).raise_for_status()
            return time.perf_counter() - t

        def via_diffusers(seed: int) -> float:
            job = backend.jobs.submit("bench.direct", {"seed": seed}, owner="bench")
            return backend.jobs.wait(job.id, 600).result["seconds"]

        try:
            via_http(0)  # warm-up: loads the service's pipeline
            via_diffusers(0)
            http, dif = [], []
            for i in range(1, n + 1):  # interleaved, so drift hits both sides alike
                dif.append(via_diffusers(i))
                http.append(via_http(i))
            device, dtype = settings.resolved_device, settings.dtype_name
        finally:
            server.stop()
    d, h = statistics.median(dif), statistics.median(http)
    print(f"{size}x{size}, {steps} steps, {device}, {dtype}, n={n}")
    print(f"direct diffusers call  median {d * 1000:8.1f} ms")
    p90 = statistics.quantiles(http, n=10)[-1]
    print(f"HTTP + job + offloader median {h * 1000:8.1f} ms  (p90 {p90 * 1000:.1f} ms)")
    print(f"ratio {h / d:.3f}  (goal <= 1.10); ratio of the fastest runs {min(http) / min(dif):.3f} "
          "(less sensitive to other load on the machine)")


def _person_photo(side: int = 320) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    from services.pose.smoke import person_rect

    img = np.zeros((side, side, 3), np.uint8)
    x1, y1, x2, y2 = person_rect(side)
    img[y1:y2, x1:x2] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def pose_overhead(models: Path, n: int, size: int, steps: int) -> None:
    """Per image, interleaved: the plain pipeline vs the same prompt and seed following a skeleton
    (direct calls on the service's pipeline, and through HTTP with the cache off), and /pose alone."""
    import base64
    import io
    from contextlib import nullcontext

    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(profile="smoke", data_dir=Path(tmp), models_dir=models, api_key="bench", port=0,
                                 image_cache_mb=0, image_default_steps=steps)
        server = Server(settings).start()
        backend = server.app.extensions["enfoads"]
        session = requests.Session()
        session.headers["Authorization"] = "Bearer bench"
        body = {"prompt": "a dancer on a stage", "width": size, "height": size, "steps": steps}
        try:
            t = time.perf_counter()
            posed = session.post(f"{server.url}/pose", files={"image": ("p.png", _person_photo())}, timeout=600)
            posed.raise_for_status()
            first_pose = time.perf_counter() - t
            skeleton = posed.json()["skeleton"]
            pose_times = []
            for _ in range(n):
                t = time.perf_counter()
                session.post(f"{server.url}/pose", files={"image": ("p.png", _person_photo())},
                             data={"response_format": "url"}, timeout=600).raise_for_status()
                pose_times.append(time.perf_counter() - t)

            def direct_job(params, ctx):
                # timed inside the job worker thread (torch's CPU pool belongs to it, see http_vs_direct)
                with backend.vram.acquire("sdxl-lightning") as lp, \
                        (backend.vram.acquire("controlnet-openpose-sdxl") if params["pose"] else nullcontext()) as cn:
                    control = (cn, control_image, 0.8) if params["pose"] else None
                    t = time.perf_counter()
                    lp.generate(body["prompt"], width=size, height=size, seed=params["seed"], control=control)
                    _sync()
                    return {"seconds": time.perf_counter() - t}

            control_image = Image.open(io.BytesIO(base64.b64decode(skeleton["b64_json"]))).convert("RGB")
            backend.jobs.register("bench.pose", direct_job)

            def direct(seed: int, pose: bool) -> float:
                job = backend.jobs.submit("bench.pose", {"seed": seed, "pose": pose}, owner="bench")
                return backend.jobs.wait(job.id, 600).result["seconds"]

            def http(seed: int, pose: bool) -> float:
                extra = {"pose_image_asset": skeleton["asset"]} if pose else {}
                t = time.perf_counter()
                session.post(f"{server.url}/generate-image", json={**body, "seed": seed, **extra},
                             timeout=600).raise_for_status()
                return time.perf_counter() - t

            for pose in (False, True):  # warm-up: loads SDXL, then the ControlNet
                direct(0, pose)
                http(0, pose)
            runs: dict[tuple[str, bool], list[float]] = {(w, p): [] for w in ("direct", "http") for p in (False, True)}
            for i in range(1, n + 1):  # interleaved, so drift hits every side alike
                for pose in (False, True):
                    runs[("direct", pose)].append(direct(i, pose))
                    runs[("http", pose)].append(http(i, pose))
            device, dtype = settings.resolved_device, settings.dtype_name
        finally:
            server.stop()
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"pose control: {size}x{size}, {steps} steps, {device}, {dtype}, tiny random models, n={n}")
    for where in ("direct", "http"):
        plain, posed_s = med[(where, False)], med[(where, True)]
        print(f"{where:>6}: without pose {plain * 1000:8.1f} ms | with pose_image {posed_s * 1000:8.1f} ms | "
              f"ControlNet extra {(posed_s - plain) * 1000:+8.1f} ms per image ({posed_s / plain:.2f}x)")
    print(f"POST /pose (DWPose on ONNX Runtime, 320x320 photo): first {first_pose * 1000:.0f} ms (loads the models), "
          f"then median {statistics.median(pose_times) * 1000:.1f} ms")
    print("GPU (T4, SDXL + ControlNet at real sizes, 1024x1024, 4 steps): not measured here; "
          "run `python -m benchmarks.bench_image --sdxl` on the GPU")


MAGIC_IDEAS = ["zapatillas rojas en la playa al atardecer", "una taza de café con fondo blanco",
               "mujer joven sonriente bebiendo jugo de naranja", "a lighthouse by the sea in a storm",
               "promoción de navidad, tienda de ropa elegante", "perro corriendo en el parque"]


def magic_prompt_engines(models: Path, n: int, profile: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(profile=profile, data_dir=Path(tmp), models_dir=models, api_key="bench", port=0,
                                 image_magic_prompt_timeout_s=600)
        server = Server(settings).start()
        session = requests.Session()
        headers = {"Authorization": "Bearer bench"}

        def call(engine: str, idea: str) -> tuple[float, dict]:
            t = time.perf_counter()
            r = session.post(f"{server.url}/magic-prompt", json={"idea": idea, "style": "product", "engine": engine},
                             headers=headers, timeout=600)
            r.raise_for_status()
            return time.perf_counter() - t, r.json()

        try:
            t = time.perf_counter()
            _, first = call("llm", MAGIC_IDEAS[0])  # the model's load
            load_s = time.perf_counter() - t
            if first["engine"] != "llm":
                print(f"magic prompt: the llm engine did not answer: {first['warnings']}")
                return
            times: dict[str, list[float]] = {"rules": [], "llm": []}
            samples = []
            for i in range(n):  # interleaved, so drift hits both sides alike
                idea = MAGIC_IDEAS[i % len(MAGIC_IDEAS)]
                for engine in ("rules", "llm"):
                    seconds, data = call(engine, idea)
                    assert data["engine"] == engine, data
                    times[engine].append(seconds)
                    if i < len(MAGIC_IDEAS):
                        samples.append((engine, data["tokens"], data["tokenizer"], data["prompt"]))
            device = settings.resolved_device
        finally:
            server.stop()
    r, m = statistics.median(times["rules"]), statistics.median(times["llm"])
    print(f"magic prompt through HTTP, {device}, {profile} models, n={n} per engine (first llm call with its "
          f"load: {load_s:.2f} s)")
    print(f"rules median {r * 1000:8.1f} ms  (max {max(times['rules']) * 1000:.1f} ms)")
    print(f"llm   median {m * 1000:8.1f} ms  (max {max(times['llm']) * 1000:.1f} ms)  = {m / r:.0f}x rules")
    for engine, tokens, tokenizer, prompt in samples:
        print(f"  {engine:5} {tokens:3} tokens ({tokenizer}): {prompt[:150]!r}")


def sdxl_on_gpu(n: int) -> None:
    import torch

    from prefetch.locate import locate
    from services.errors import ModelUnavailable
    from services.image.smoke import SDXL, write_models

    if not torch.cuda.is_available():
        print("--sdxl needs a CUDA GPU; skipped")
        return
    dtype_n = dtype_name("cuda")
    dtype = torch_dtype(dtype_n)
    tmp = None
    try:
        models = {k: locate(k, Path("data/models"), "colab") for k in (BASE_KEY, VAE_KEY, unet_key(4))}
        source = "real SDXL-Lightning weights"
    except ModelUnavailable:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
        t = time.perf_counter()
        write_models(root, SDXL, steps=(4,), device="cuda")
        torch.cuda.empty_cache()
        models = {k: root / k for k in (BASE_KEY, VAE_KEY, unet_key(4))}
        source = f"random weights, SDXL base 1.0 shapes (written in {time.perf_counter() - t:.0f} s)"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    lp = load_pipeline(models[BASE_KEY], models[VAE_KEY], models[unet_key(4)] / UNET_FILES[4], 4, device="cuda",
                       dtype=dtype)
    _sync()
    load_s = time.perf_counter() - t
    weights_gb = torch.cuda.memory_allocated() / 2**30
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    lp.generate("warm-up", width=1024, height=1024, seed=0)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(n):
        _sync()
        t = time.perf_counter()
        lp.generate("a red sneaker on a beach at sunset, product photo", width=1024, height=1024, seed=i + 1)
        _sync()
        times.append(time.perf_counter() - t)
    peak_gb = torch.cuda.max_memory_allocated() / 2**30
    control_line = _controlnet_on_gpu(lp, models, dtype, n, times)
    print(f"SDXL-Lightning 4-step 1024x1024 on {torch.cuda.get_device_name()} ({dtype_n}), {source}")
    print(f"load {load_s:.1f} s; peak host RSS {rss_after:.1f} GB (was {rss_before:.1f} GB before loading)")
    print(f"weights on GPU {weights_gb:.2f} GB; peak VRAM while generating {peak_gb:.2f} GB (seed's claim: ~6-7 GB)")
    print(f"latency median {statistics.median(times):.2f} s, min {min(times):.2f} s over {n} images "
          f"(seed's claim: 2-3 s on a T4)")
    print(control_line)
    if tmp is not None:
        tmp.cleanup()


def upscale_http_vs_direct(models: Path, n: int, size: int, profile: str) -> None:
    """/upscale x4 through HTTP vs the plain spandrel call `descriptor(tensor)` on the very same model object
    (one tile: the image fits the automatic tile, so both sides do the same arithmetic)."""
    import numpy as np

    from tests import face_media as fm

    img = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
    png = fm.encode(img)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(profile=profile, data_dir=Path(tmp), models_dir=models, api_key="bench", port=0,
                                 job_wait_seconds=600)
        server = Server(settings).start()
        backend = server.app.extensions["enfoads"]
        session = requests.Session()
        headers = {"Authorization": "Bearer bench"}

        def direct_job(params, ctx):
            # timed in the job worker thread, as the service's own call runs (torch's CPU pool is per thread)
            import torch

            from services.face.service import encode_bgr

            with backend.vram.acquire("realesrgan-x4plus") as loaded:
                desc = loaded.model
                t = time.perf_counter()
                x = torch.from_numpy(img).permute(2, 0, 1)[None].to(desc.device, desc.dtype) / 255
                y = desc(x)
                out = (y[0].float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
                encode_bgr(out, "png")  # the service writes a PNG too
                _sync()
                return {"seconds": time.perf_counter() - t}

        backend.jobs.register("bench.upscale_direct", direct_job)

        def via_http() -> float:
            t = time.perf_counter()
            session.post(f"{server.url}/upscale", files={"image": ("a.png", png)}, data={"scale": "4"},
                         headers=headers, timeout=600).raise_for_status()
            return time.perf_counter() - t

        def via_spandrel() -> float:
            job = backend.jobs.submit("bench.upscale_direct", {}, owner="bench")
            return backend.jobs.wait(job.id, 600).result["seconds"]

        try:
            via_http()  # warm-up: loads the model
            via_spandrel()
            http, direct = [], []
            for _ in range(n):  # interleaved, so drift hits both sides alike
                direct.append(via_spandrel())
                http.append(via_http())
            device, dtype = settings.resolved_device, settings.dtype_name
        finally:
            server.stop()
    d, h = statistics.median(direct), statistics.median(http)
    print(f"upscale x4 of {size}x{size} -> {4 * size}x{4 * size}, {device}, {dtype}, n={n}, models {models}")
    print(f"direct spandrel call + PNG   median {d * 1000:8.1f} ms")
    print(f"HTTP /upscale (job, tiles)   median {h * 1000:8.1f} ms  (p90 {statistics.quantiles(http, n=10)[-1] * 1000:.1f} ms)")
    print(f"ratio {h / d:.3f}  (goal <= 1.10); ratio of the fastest runs {min(http) / min(direct):.3f}")


def upscale_on_gpu(models: Path | None, n: int) -> None:
    """1024x1024 x4 with Real-ESRGAN's real size on the GPU, tiled as the service does."""
    import numpy as np
    import torch

    from services.restore import models as restore_models
    from services.restore import tiles

    if not torch.cuda.is_available():
        print("1024x1024 x4 on a GPU: not measured here (no CUDA GPU)")
        return
    dtype_n = dtype_name("cuda")
    path = None if models is None else models / "realesrgan-x4plus" / "RealESRGAN_x4plus.pth"
    with tempfile.TemporaryDirectory() as tmp:
        if path is None or not path.is_file():
            from spandrel.architectures.ESRGAN import ESRGAN

            from services.restore.smoke import _save, new_arch_names

            path = Path(tmp) / "RealESRGAN_x4plus.pth"
            _save(path, new_arch_names(ESRGAN(num_filters=64, num_blocks=23, scale=4).state_dict()))
            source = "random weights, RealESRGAN_x4plus shapes"
        else:
            source = str(path)
        loaded = restore_models.load(path, "realesrgan-x4plus", device="cuda", dtype=dtype_n)
    img = (np.random.default_rng(0).random((1024, 1024, 3)) * 255).astype(np.uint8)
    free, _ = torch.cuda.mem_get_info()
    tile = tiles.auto_tile(free, 4, 2 if dtype_n != "float32" else 4)
    desc = loaded.model

    def once() -> float:
        _sync()
        t = time.perf_counter()
        tiles.upscale(lambda crop: tiles.run_model(desc, crop), img, scale=4, tile=tile, overlap=32, multiple=4)
        _sync()
        return time.perf_counter() - t

    once()
    torch.cuda.reset_peak_memory_stats()
    times = [once() for _ in range(n)]
    print(f"1024x1024 x4 on {torch.cuda.get_device_name()} ({dtype_n}, {source}): tile {tile}, median "
          f"{statistics.median(times):.2f} s, peak VRAM {torch.cuda.max_memory_allocated() / 2**30:.2f} GB")


def _controlnet_on_gpu(lp, models: dict, dtype, n: int, plain_times: list[float]) -> str:
    """The OpenPose ControlNet (real weights when prefetched, else random at its real size) beside the
    loaded SDXL: extra time per 1024x1024 4-step image and the peak VRAM of both together."""
    import numpy as np
    import torch
    from PIL import Image

    from prefetch.locate import locate
    from services.errors import ModelUnavailable
    from services.image.controlnet import CONTROLNET_KEY, load_controlnet
    from services.image.smoke import SDXL, write_controlnet

    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = locate(CONTROLNET_KEY, Path("data/models"), "colab")
            what = "real weights"
        except ModelUnavailable:
            write_controlnet(Path(tmp), SDXL, device="cuda")
            torch.cuda.empty_cache()
            folder, what = Path(tmp) / CONTROLNET_KEY, "random weights at its real size"
        controlnet = load_controlnet(folder, device="cuda", dtype=dtype)
    skeleton = Image.fromarray(np.zeros((1024, 1024, 3), np.uint8))
    lp.generate("warm-up", width=1024, height=1024, seed=0, control=(controlnet, skeleton, 0.8))
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(n):
        _sync()
        t = time.perf_counter()
        lp.generate("a dancer on a stage", width=1024, height=1024, seed=i + 1, control=(controlnet, skeleton, 0.8))
        _sync()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30
    plain, posed = statistics.median(plain_times), statistics.median(times)
    return (f"with the OpenPose ControlNet ({what}): median {posed:.2f} s per image vs {plain:.2f} s without "
            f"(+{posed - plain:.2f} s, {posed / plain:.2f}x); peak VRAM SDXL + ControlNet {peak:.2f} GB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, choices=sorted(UNET_FILES))
    parser.add_argument("--sdxl", action="store_true", help="GPU: SDXL's real sizes at 1024x1024")
    parser.add_argument("--upscale", action="store_true", help="/upscale vs a direct spandrel call")
    parser.add_argument("--magic", action="store_true", help="magic prompt: engine llm vs rules through HTTP")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="--upscale / --magic with real models (else tiny ones)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.upscale:
        size = 96 if args.size == 64 else args.size
        if args.models_dir is not None:
            upscale_http_vs_direct(args.models_dir, args.n, size, profile="local")
        else:
            from services.restore.smoke import build_upscalers

            with tempfile.TemporaryDirectory() as tmp:
                build_upscalers(Path(tmp))
                upscale_http_vs_direct(Path(tmp), args.n, size, profile="smoke")
        upscale_on_gpu(args.models_dir, min(args.n, 5))
        return
    if args.sdxl:
        sdxl_on_gpu(min(args.n, 10))
        return
    from prefetch import manifest

    if args.magic:
        if args.models_dir:
            magic_prompt_engines(args.models_dir, args.n, profile="local")
            return
        with tempfile.TemporaryDirectory() as tmp:
            manifest.discover_smoke_builders(families=("vita", "image"))
            manifest.SMOKE_BUILDERS["vita"](Path(tmp))
            manifest.SMOKE_BUILDERS["image"](Path(tmp))
            magic_prompt_engines(Path(tmp), args.n, profile="smoke")
        return

    with tempfile.TemporaryDirectory() as tmp:
        manifest.discover_smoke_builders(families=["image"])
        manifest.SMOKE_BUILDERS["image"](Path(tmp))  # SDXL-Lightning, the ControlNet and DWPose, tiny
        http_vs_direct(Path(tmp), args.n, args.size, args.steps, profile="smoke")
        print()
        pose_overhead(Path(tmp), args.n, args.size, args.steps)


if __name__ == "__main__":
    main()
