"""System routes: health, VRAM monitor, diagnostics, model list, the OpenAPI document."""
from __future__ import annotations

import time

from flask import Blueprint, current_app

from services import diagnostics

from .. import __version__
from ..api import build_openapi, doc, ok
from ..auth import public
from ..context import backend
from ..tunnel import current_tunnel

bp = Blueprint("system", __name__)


@bp.get("/health")
@public
@doc(summary="Liveness: status, version, device, uptime (no key needed)", tags=["system"])
def health():
    b = backend()
    return ok({"status": "ok", "version": __version__, "device": b.settings.resolved_device,
               "public_url": current_tunnel()[0],
               "profile": b.settings.profile, "uptime_s": round(time.time() - b.started_at, 1),
               "queue_length": b.jobs.queue_length()})


@bp.get("/vram-monitor")
@doc(summary="GPU memory and what the offloader holds", tags=["system"])
def vram_monitor():
    return ok(diagnostics.vram_report(backend().vram, diagnostics.torch_cuda_memory))


@bp.get("/diagnostics")
@doc(summary="Python, torch, CUDA, GPU, packages, ONNX Runtime providers, disk, models present", tags=["system"])
def diagnostics_route():
    s = backend().settings
    data = diagnostics.report(s.data_dir, device=s.resolved_device, dtype=s.dtype_name)
    data["vram_devices"] = diagnostics.vram_report(backend().vram, diagnostics.torch_cuda_memory)["devices"]
    data["models"] = backend().models
    return ok(data)


@bp.get("/v1/models")
@doc(summary="Models this server offers (OpenAI format)", tags=["system"])
def list_models():
    created = int(backend().started_at)
    return ok({"object": "list", "data": [
        {"id": m["id"], "object": "model", "created": created, "owned_by": "enfoads",
         "family": m.get("family"), "available": m.get("available", True)} for m in backend().models]})


@bp.get("/openapi.json")
@doc(summary="This document", tags=["system"])
def openapi():
    return ok(build_openapi(current_app, title="EnfoadsIA backend", version=__version__))
