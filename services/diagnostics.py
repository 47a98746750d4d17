"""What the machine has: Python, torch, CUDA, GPU, packages, ONNX Runtime providers, disk.

Shared by GET /diagnostics and the notebook's diagnostics cell.
"""
from __future__ import annotations

import importlib.metadata as md
import platform
import shutil
import sys
from pathlib import Path

PACKAGES = ("torch", "torchaudio", "numpy", "diffusers", "transformers", "accelerate", "safetensors",
            "huggingface-hub", "ctranslate2", "faster-whisper", "onnxruntime", "onnxruntime-gpu", "insightface",
            "chatterbox-tts", "moshi", "silero-vad", "av", "flask", "flask-socketio", "pyngrok")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def gpu_info() -> dict:
    try:
        import torch
    except ImportError:
        return {"torch": None, "cuda_available": False}
    info: dict = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
                  "cuda_version": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        info.update(gpu_name=props.name, compute_capability=f"{props.major}.{props.minor}",
                    vram_total_gb=round(total / 1024**3, 2), vram_free_gb=round(free / 1024**3, 2))
    return info


def onnxruntime_providers() -> dict:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"available": [], "error": f"onnxruntime does not import: {exc}"}
    return {"available": ort.get_available_providers(), "device": ort.get_device()}


def disk_free(path: Path) -> dict:
    path.mkdir(parents=True, exist_ok=True)
    usage = shutil.disk_usage(path)
    return {"path": str(path), "free_gb": round(usage.free / 1024**3, 2), "total_gb": round(usage.total / 1024**3, 2)}


def report(data_dir: Path, *, device: str, dtype: str) -> dict:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
        "dtype": dtype,
        "gpu": gpu_info(),
        "packages": package_versions(),
        "onnxruntime": onnxruntime_providers(),
        "disk": disk_free(data_dir),
    }
