"""Loading DWPose's two ONNX graphs on the ONNX Runtime provider the face models use (same settings,
same check that the CUDA provider really started)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelUnavailable
from ..face.models import _prepare_cuda, check_providers, requested_providers

log = logging.getLogger("enfoads.pose")

DWPOSE = "dwpose"
DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"


@dataclass(frozen=True)
class PoseConfig:
    """What the pose service needs from the settings; provider fields mirror the face models'."""

    device: str = "cpu"
    execution_provider: str = "auto"  # auto | cuda | cpu
    allow_cpu_fallback: bool = False
    max_image_pixels: int = 40_000_000

    @property
    def wants_cuda(self) -> bool:
        if self.execution_provider == "auto":
            return self.device.startswith("cuda")
        return self.execution_provider == "cuda"


@dataclass
class LoadedDWPose:
    detector: object  # onnxruntime.InferenceSession
    pose: object
    pose_size: tuple[int, int]  # (width, height) of the keypoint model's input
    runtime: dict


def _static_shape(session, what: str, path: Path) -> list[int]:
    shape = session.get_inputs()[0].shape
    if len(shape) != 4 or not all(isinstance(v, int) for v in shape[2:]):
        raise ModelUnavailable(f"{path.name} is not DWPose's {what}: input shape {shape}, expected [1, 3, H, W]",
                               code="model_mismatch")
    return shape


def load(folder: Path, cfg: PoseConfig) -> LoadedDWPose:
    import onnxruntime as ort

    paths = {name: Path(folder) / name for name in (DETECTOR_FILE, POSE_FILE)}
    missing = [name for name, p in paths.items() if not p.is_file()]
    if missing:
        raise ModelUnavailable(f"DWPose is incomplete in {folder}: {', '.join(missing)} missing",
                               code="model_unavailable")
    if cfg.wants_cuda:
        _prepare_cuda()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # ONNX Runtime's per-node warnings are noise in our log
    sessions = {name: ort.InferenceSession(str(p), options, providers=requested_providers(cfg))
                for name, p in paths.items()}
    det, pose = sessions[DETECTOR_FILE], sessions[POSE_FILE]
    det_shape = _static_shape(det, "YOLOX detector", paths[DETECTOR_FILE])
    if det_shape[2:] != [640, 640]:
        raise ModelUnavailable(f"{DETECTOR_FILE}: input {det_shape}, DWPose's YOLOX-L takes 640x640",
                               code="model_mismatch")
    pose_shape = _static_shape(pose, "keypoint model", paths[POSE_FILE])
    if len(pose.get_outputs()) != 2:
        raise ModelUnavailable(f"{POSE_FILE}: {len(pose.get_outputs())} outputs, expected simcc_x and simcc_y",
                               code="model_mismatch")
    runtime = check_providers("dwpose", {"detector": det, "pose": pose}, cfg)
    runtime["files"] = {name: str(p) for name, p in paths.items()}
    return LoadedDWPose(detector=det, pose=pose, pose_size=(pose_shape[3], pose_shape[2]), runtime=runtime)
