"""Finding, checking and loading the face models: the buffalo_l pack (InsightFace's FaceAnalysis)
and inswapper_128 (`model_zoo.get_model`), on the ONNX Runtime provider the config asks for.

ONNX Runtime silently falls back to CPU when the CUDA provider cannot start (a CUDA/cuDNN
mismatch, or the CPU build installed): every session's real providers are checked after
loading, and a missing CUDA provider is an error (503) unless CPU fallback is allowed, in which
case it is reported (log, /diagnostics, responses).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from prefetch.locate import prefetch_command
from prefetch.manifest import INSWAPPER_SHA256

from ..errors import ModelUnavailable

log = logging.getLogger("enfoads.face")

PACK = "buffalo_l"
INSWAPPER = "inswapper_128"
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"

# insightface 0.7.3 calls skimage's deprecated SimilarityTransform.estimate on every face.
warnings.filterwarnings("ignore", message=r"`estimate` is deprecated", category=FutureWarning)


@dataclass(frozen=True)
class FaceConfig:
    """What the face service needs from the settings (services never read settings themselves)."""

    models_dir: Path
    profile: str = "local"
    device: str = "cpu"
    det_size: int = 640
    det_thresh: float = 0.5
    execution_provider: str = "auto"  # auto | cuda | cpu
    allow_cpu_fallback: bool = False
    inswapper_path: Path | None = None
    inswapper_repo: str = "ezioruan/inswapper_128.onnx"
    inswapper_filename: str = "inswapper_128.onnx"
    inswapper_revision: str = "main"
    inswapper_sha256: str | None = None  # None: the published hash (none for smoke models); "": no check
    max_image_pixels: int = 40_000_000
    video_max_seconds: float = 120.0
    video_max_pixels: int = 1920 * 1088

    @property
    def wants_cuda(self) -> bool:
        if self.execution_provider == "auto":
            return self.device.startswith("cuda")
        return self.execution_provider == "cuda"

    @property
    def expected_inswapper_sha256(self) -> str | None:
        if self.inswapper_sha256 is not None:
            return self.inswapper_sha256.strip().lower() or None
        return None if self.profile == "smoke" else INSWAPPER_SHA256


# --------------------------------------------------------------------------- providers

def requested_providers(cfg: FaceConfig) -> list:
    if not cfg.wants_cuda:
        return [CPU]
    device_id = int(cfg.device.split(":", 1)[1]) if ":" in cfg.device else 0
    return [(CUDA, {"device_id": device_id}), CPU]


def _prepare_cuda() -> None:
    """onnxruntime-gpu >= 1.21 can load the CUDA/cuDNN libraries that torch's wheels ship, which
    is what makes its CUDA provider start on machines without a matching system cuDNN."""
    try:
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
    except Exception as exc:  # best effort: the provider check below reports the outcome
        log.warning("onnxruntime.preload_dlls failed: %s", exc)


def check_providers(what: str, sessions: dict, cfg: FaceConfig) -> dict:
    """The providers each session really got; raises when CUDA was asked for and did not start."""
    import onnxruntime as ort

    actual = {name: list(s.get_providers()) for name, s in sessions.items()}
    info = {"requested": [CUDA, CPU] if cfg.wants_cuda else [CPU], "providers": next(iter(actual.values()), []),
            "sessions": actual, "onnxruntime": ort.__version__, "warning": None}
    if cfg.wants_cuda and any(CUDA not in p for p in actual.values()):
        if CUDA not in ort.get_available_providers():
            why = (f"onnxruntime {ort.__version__} has no CUDA provider (available: "
                   f"{', '.join(ort.get_available_providers())}): install onnxruntime-gpu instead of onnxruntime")
        else:
            why = (f"the CUDA provider of onnxruntime {ort.__version__} failed to start, usually a CUDA/cuDNN "
                   "version mismatch; the server log has ONNX Runtime's error")
        if not cfg.allow_cpu_fallback:
            raise ModelUnavailable(
                f"{what}: {why}. Refusing to run on CPU silently; set ENFOADS_FACE_ALLOW_CPU_FALLBACK=1 to "
                "accept CPU, or ENFOADS_FACE_EXECUTION_PROVIDER=cpu", code="cuda_provider_failed")
        info["warning"] = f"running on CPU: {why}"
        log.warning("%s: %s", what, info["warning"])
    log.info("%s runs on %s", what, ", ".join(info["providers"]))
    return info


@contextlib.contextmanager
def _insightface_prints():
    """insightface prints a line per model loaded: send it to the log instead of stdout."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    for line in buf.getvalue().splitlines():
        log.debug("insightface: %s", line)


# --------------------------------------------------------------------------- buffalo_l

def pack_folder(root: Path) -> Path:
    """FaceAnalysis(name='buffalo_l', root=R) reads R/models/buffalo_l/*.onnx."""
    return Path(root) / "models" / PACK


def check_pack(root: Path) -> Path:
    folder = pack_folder(root)
    if not any(folder.glob("*.onnx")):
        raise ModelUnavailable(
            f"the buffalo_l face pack is not where it is expected: put its .onnx files (det_10g, w600k_r50, "
            f"genderage, 2d106det, 1k3d68: InsightFace's buffalo_l.zip) in {folder}", code="model_unavailable")
    return folder


@dataclass
class LoadedPack:
    app: object  # insightface.app.FaceAnalysis, prepared
    runtime: dict


def load_pack(root: Path, cfg: FaceConfig) -> LoadedPack:
    check_pack(root)  # without its folder, FaceAnalysis would try to download the zip
    if cfg.wants_cuda:
        _prepare_cuda()
    from insightface.app import FaceAnalysis

    with _insightface_prints():
        app = FaceAnalysis(name=PACK, root=str(root), providers=requested_providers(cfg))
        app.prepare(ctx_id=0 if cfg.wants_cuda else -1, det_size=(cfg.det_size, cfg.det_size),
                    det_thresh=cfg.det_thresh)
    runtime = check_providers("buffalo_l", {task: m.session for task, m in app.models.items()}, cfg)
    runtime["tasks"] = sorted(app.models)
    return LoadedPack(app=app, runtime=runtime)


# --------------------------------------------------------------------------- inswapper

_verified: dict[tuple, str] = {}  # (path, size, mtime) -> sha256, so a reload does not rehash 554 MB
_verified_lock = threading.Lock()


def _how_to_provide(cfg: FaceConfig) -> str:
    sha = cfg.expected_inswapper_sha256
    return (f"InsightFace no longer publishes inswapper_128.onnx: put the file at "
            f"{Path(cfg.models_dir) / INSWAPPER / cfg.inswapper_filename}, or set ENFOADS_FACE_INSWAPPER_PATH to it, "
            f"or run `{prefetch_command(INSWAPPER, profile=cfg.profile, models_dir=cfg.models_dir)}` (fetches it "
            f"from the mirror in the manifest into the Hugging Face "
            f"cache; ENFOADS_FACE_INSWAPPER_REPO / _FILENAME read another repo: `hf download {cfg.inswapper_repo} "
            f"{cfg.inswapper_filename}`)"
            + (f"; its sha256 must be {sha}" if sha else ""))


def find_inswapper(cfg: FaceConfig) -> Path:
    """The inswapper file: the configured path, else <models_dir>/inswapper_128/, else the hub cache."""
    if cfg.inswapper_path is not None:
        path = Path(cfg.inswapper_path).expanduser()
        if not path.is_file():
            raise ModelUnavailable(f"ENFOADS_FACE_INSWAPPER_PATH is {path}, which is not a file. "
                                   + _how_to_provide(cfg), code="model_unavailable")
        return path
    local = Path(cfg.models_dir) / INSWAPPER / cfg.inswapper_filename
    if local.is_file():
        return local
    if cfg.profile != "smoke" and cfg.inswapper_repo:
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(cfg.inswapper_repo, cfg.inswapper_filename,
                                        revision=cfg.inswapper_revision, local_files_only=True))
        except Exception:  # not in the cache
            pass
    raise ModelUnavailable("the face-swap model is not on this machine. " + _how_to_provide(cfg),
                           code="model_unavailable")


def verify_checksum(path: Path, expected: str | None, cfg: FaceConfig) -> None:
    if not expected:
        return
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _verified_lock:
        digest = _verified.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        with _verified_lock:
            _verified[key] = digest
    if digest != expected:
        raise ModelUnavailable(
            f"{path} has sha256 {digest}, expected {expected}: a different or damaged file. "
            + _how_to_provide(cfg) + " (ENFOADS_FACE_INSWAPPER_SHA256 sets another expected hash)",
            code="checksum_mismatch")


@dataclass
class LoadedSwapper:
    model: object  # insightface.model_zoo.inswapper.INSwapper
    runtime: dict


def load_swapper(cfg: FaceConfig) -> LoadedSwapper:
    path = find_inswapper(cfg)
    verify_checksum(path, cfg.expected_inswapper_sha256, cfg)
    if cfg.wants_cuda:
        _prepare_cuda()
    from insightface.model_zoo import get_model

    with _insightface_prints():
        model = get_model(str(path), providers=requested_providers(cfg))
    if model is None or type(model).__name__ != "INSwapper":
        raise ModelUnavailable(f"{path} is not an inswapper model (two inputs at 128x128 expected)",
                               code="model_unavailable")
    runtime = check_providers("inswapper_128", {"swap": model.session}, cfg)
    runtime["file"] = str(path)
    return LoadedSwapper(model=model, runtime=runtime)
