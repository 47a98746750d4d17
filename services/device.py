"""Device and dtype policy: the one place that decides where and in which precision models run.

A T4 (compute capability 7.5) reports bf16 support but only emulates it, slower than fp16, so
the choice follows the compute capability, not `torch.cuda.is_bf16_supported()`.
"""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=None)
def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(preference: str = "auto") -> str:
    if preference == "auto":
        return "cuda" if cuda_available() else "cpu"
    if preference.startswith("cuda") and not cuda_available():
        raise ValueError(f"device {preference!r} was asked for but no CUDA GPU is available")
    return preference


def cuda_device_count() -> int:
    if not cuda_available():
        return 0
    import torch

    return int(torch.cuda.device_count())


def offloader_devices(device: str, gpus: list[int] | None = None, simulated: int = 1) -> list[str]:
    """The devices the VRAM offloader manages, from the resolved `device`.

    - CUDA (`cuda`): the GPUs listed in `gpus` (None: every visible one); one GPU stays `cuda`.
    - a named GPU (`cuda:1`): that one only.
    - CPU: `simulated` devices (`cpu` for one, else `cpu:0`..), so multi-GPU bookkeeping runs anywhere.
    """
    if device == "cpu":
        return ["cpu"] if simulated <= 1 else [f"cpu:{i}" for i in range(simulated)]
    if device != "cuda":
        return [device]
    count = cuda_device_count()
    ids = list(range(count)) if gpus is None else list(dict.fromkeys(gpus))
    bad = [i for i in ids if not 0 <= i < count]
    if bad:
        raise ValueError(f"GPU(s) {', '.join(map(str, bad))} asked for in ENFOADS_GPUS, but this machine has "
                         f"{count} visible GPU(s) (0..{count - 1})")
    if not ids:
        raise ValueError("ENFOADS_GPUS lists no GPU")
    return ["cuda"] if ids == [0] and count == 1 else [f"cuda:{i}" for i in ids]


def compute_capability(device: str) -> tuple[int, int] | None:
    if not device.startswith("cuda") or not cuda_available():
        return None
    import torch

    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def dtype_name(device: str, preference: str = "auto") -> str:
    """'float16' on GPUs below compute capability 8 (T4), 'bfloat16' where native, 'float32' on CPU."""
    if preference != "auto":
        return preference
    cap = compute_capability(device)
    if cap is None:
        return "float32"
    return "bfloat16" if cap >= (8, 0) else "float16"


def torch_dtype(name: str):
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def ctranslate2_compute_type(device: str) -> str:
    """int8_float16 on GPUs (smallest footprint that keeps fp16 math), int8 on CPU."""
    return "int8_float16" if device.startswith("cuda") else "int8"
