"""What the machine has: Python, torch, CUDA, GPU, packages, ONNX Runtime providers, disk.

Shared by GET /diagnostics and the notebook's diagnostics cell.
"""
from __future__ import annotations

import importlib.metadata as md
import platform
import shutil
import sys
from pathlib import Path
from typing import Callable

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
        gpus = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            gpus.append({"index": i, "name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                         "vram_total_gb": round(total / GB, 2), "vram_free_gb": round(free / GB, 2)})
        first = gpus[0]
        info.update(gpu_name=first["name"], compute_capability=first["compute_capability"],
                    vram_total_gb=first["vram_total_gb"], vram_free_gb=first["vram_free_gb"], gpus=gpus)
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


def _memory(vram, dev: dict, torch_memory) -> dict:
    """One device's figures: the card's own free/total on CUDA, else the offloader's bookkeeping."""
    device_mem = vram.device_memory(dev["name"]) if dev["name"].startswith("cuda") else None
    if device_mem is not None:
        free, total = device_mem
        used = total - free
    else:
        total, used = dev["budget_bytes"], dev["used_bytes"]
        free = total - used
    torch_mem = torch_memory(dev["name"]) if torch_memory is not None else None
    allocated, reserved = torch_mem if torch_mem is not None else (None, None)
    return {"total": total, "used": used, "free": free, "torch_allocated": allocated, "torch_reserved": reserved}


def _sum(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]


def vram_report(vram, torch_memory: Callable[[str], tuple[int, int] | None] | None = None) -> dict:
    """What /vram-monitor shows: totals over the offloader's devices at the top (the original frontend's
    fields), each device under `devices`. On CUDA the device's own free/total counts every allocator on
    the card: PyTorch's figures (`torch_memory(device)` -> (allocated, reserved)) miss CTranslate2 (whisper)
    and ONNX Runtime (face), which hold gigabytes on a T4. Without CUDA it is the offloader's bookkeeping
    against its configured budgets."""
    snap = vram.snapshot()
    per = [(dev, _memory(vram, dev, torch_memory)) for dev in snap["devices"]]
    total = sum(m["total"] for _, m in per)
    used = sum(m["used"] for _, m in per)
    free = sum(m["free"] for _, m in per)
    torch_allocated = _sum([m["torch_allocated"] for _, m in per])
    torch_reserved = _sum([m["torch_reserved"] for _, m in per])
    devices = [{
        "name": dev["name"],
        "total_gb": gb(m["total"]),
        "allocated_gb": gb(m["used"]),
        "free_gb": gb(m["free"]),
        "utilization_percent": round(100 * m["used"] / m["total"], 1) if m["total"] else 0.0,
        "torch_allocated_gb": gb(m["torch_allocated"]),
        "torch_reserved_gb": gb(m["torch_reserved"]),
        "offloader_used_gb": gb(dev["used_bytes"]),
        "offloader_budget_gb": gb(dev["budget_bytes"]),
        "swaps": dev["swaps"],
        "models_loaded": dev["models"],
    } for dev, m in per]
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
        "devices": devices,
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
