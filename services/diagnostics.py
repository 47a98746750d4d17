"""What the machine has: Python, torch, CUDA, GPU, packages, ONNX Runtime providers, disk.

Shared by GET /diagnostics and the notebook's diagnostics cell.
"""
from __future__ import annotations

import importlib.metadata as md
import platform
import shutil
import sys
from pathlib import Path

GB = 1024**3

PACKAGES = ("torch", "torchaudio", "numpy", "diffusers", "transformers", "accelerate", "safetensors",
            "huggingface-hub", "ctranslate2", "faster-whisper", "onnxruntime", "onnxruntime-gpu", "insightface",
            "chatterbox-tts", "moshi", "silero-vad", "av", "flask", "flask-socketio", "pyngrok")


# Installed as alternatives (DESIGN.md): one of each pair is absent by design.
ALTERNATIVES = {"onnxruntime": "onnxruntime-gpu", "onnxruntime-gpu": "onnxruntime"}


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


def torch_cuda_memory(device: str) -> tuple[int, int] | None:
    """PyTorch's own (allocated, reserved) bytes on `device`; None where CUDA is not in use."""
    try:
        import torch
    except ImportError:
        return None
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return int(torch.cuda.memory_allocated(device)), int(torch.cuda.memory_reserved(device))


def gb(n: int | None) -> float | None:
    return None if n is None else round(n / GB, 3)


def vram_report(vram, torch_memory: tuple[int, int] | None = None) -> dict:
    """What /vram-monitor shows. On CUDA the device's own free/total counts every allocator on the card:
    PyTorch's figures miss CTranslate2 (whisper) and ONNX Runtime (face), which hold gigabytes on a T4.
    Without CUDA it is the offloader's bookkeeping against its configured budget."""
    snap = vram.snapshot()
    device_mem = vram.device_memory() if vram.is_cuda else None
    if device_mem is not None:
        free, total = device_mem
        used = total - free
    else:
        total, used = snap["budget_bytes"], snap["used_bytes"]
        free = total - used
    torch_allocated, torch_reserved = torch_memory if torch_memory is not None else (None, None)
    return {
        # the original frontend's health light: a CUDA device is there or not
        "status": "online" if vram.is_cuda else "offline",
        "device": snap["device"],
        "total_gb": gb(total),
        "allocated_gb": gb(used),
        "reserved_gb": gb(torch_reserved if torch_reserved is not None else used),
        "free_gb": gb(free),
        "utilization_percent": round(100 * used / total, 1) if total else 0.0,
        "torch_allocated_gb": gb(torch_allocated),
        "torch_reserved_gb": gb(torch_reserved),
        "models_loaded": [m["name"] for m in snap["models"] if m["state"] == "gpu"],
        "models": [{"name": m["name"], "family": m["family"], "state": m["state"], "gb": gb(m["bytes"]),
                    "measured": m["measured"]} for m in snap["models"]],
        "offloader": snap,
    }


def onnxruntime_providers() -> dict:
    """What ONNX Runtime can really use here (a session was created), beside what its build lists."""
    from .ort_check import cuda_check

    check = cuda_check()
    return {"available": check["usable"], "built_with": check["built_with"], "cuda_ok": check["cuda_ok"],
            "reason": check["reason"], "fix": check["fix"], "version": check["onnxruntime"]}


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
