"""Does ONNX Runtime's CUDA provider really start here? Asked once, on a tiny graph.

`get_available_providers()` lists what the build contains, not what works: when the CUDA/cuDNN
libraries of the build's CUDA major version are missing (torch on CUDA 13, onnxruntime-gpu built for
CUDA 12), a session silently falls back to the CPU and ONNX Runtime writes the reason to the
process's stderr, which a notebook shows nowhere near the face routes' 503. This module creates a
real session, reports the providers it got, and routes what ONNX Runtime wrote into our log.
"""
from __future__ import annotations

import functools
import logging
import os
import tempfile
from contextlib import contextmanager

log = logging.getLogger("enfoads.onnxruntime")

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
# onnxruntime-gpu 1.26 is the last build for CUDA 12; later ones are built for CUDA 13.
ORT_FOR_CUDA = {"12": "onnxruntime-gpu==1.26.*", "13": "onnxruntime-gpu>1.26"}
MAX_LOG_LINES = 20


def _tiny_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime we install
    return model.SerializeToString()


@contextmanager
def _captured_stderr():
    """What native code writes to file descriptor 2 meanwhile (ONNX Runtime's own log)."""
    lines: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines += [ln for ln in tmp.read().decode("utf-8", "replace").splitlines() if ln.strip()]


def torch_cuda_major() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    version = getattr(torch.version, "cuda", None)
    return version.split(".")[0] if version else None


def fix_for(cuda_major: str | None) -> str:
    if cuda_major in ORT_FOR_CUDA:
        return (f"this runtime's torch uses CUDA {cuda_major}: install `{ORT_FOR_CUDA[cuda_major]}` "
                f"(pip uninstall -y onnxruntime onnxruntime-gpu; pip install '{ORT_FOR_CUDA[cuda_major]}'), "
                "then restart the runtime")
    return "install an onnxruntime-gpu build for this runtime's CUDA version, then restart the runtime"


@functools.lru_cache(maxsize=1)
def cuda_check() -> dict:
    """{"built_with", "usable", "cuda_ok", "reason", "fix", "onnxruntime"}: the providers a real session got."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"built_with": [], "usable": [], "cuda_ok": False, "onnxruntime": None,
                "reason": f"onnxruntime does not import: {exc}", "fix": "run the setup cell (scripts/install.sh)"}
    built = list(ort.get_available_providers())
    out = {"built_with": built, "usable": [CPU], "cuda_ok": False, "onnxruntime": ort.__version__,
           "reason": None, "fix": None}
    if CUDA not in built:
        out["reason"] = "this onnxruntime build has no CUDA provider (face models run on the CPU)"
        return out
    got: list[str] = []
    with _captured_stderr() as native_log:
        try:
            got = list(ort.InferenceSession(_tiny_model(), providers=[CUDA, CPU]).get_providers())
        except Exception as exc:
            out["reason"] = f"a CUDA session could not be created: {type(exc).__name__}: {exc}"
    for line in native_log[:MAX_LOG_LINES]:
        log.warning("onnxruntime: %s", line)
    if CUDA in got:
        out.update(usable=got, cuda_ok=True)
        return out
    if out["reason"] is None:
        detail = next((ln for ln in native_log if ".so" in ln or "CUDA" in ln), native_log[0] if native_log else "")
        out["reason"] = ("the CUDA provider did not start (the session fell back to the CPU)"
                         + (f": {detail.strip()[:300]}" if detail else ""))
    out["fix"] = fix_for(torch_cuda_major())
    return out
