"""Pose: DWPose (YOLOX-L + whole-body keypoints on ONNX Runtime) and the OpenPose skeleton image that
conditions SDXL through the pose ControlNet (services/image/controlnet.py)."""
from .models import DWPOSE, PoseConfig
from .service import KEYPOINT_FORMAT, PoseResult, PoseService

__all__ = ["DWPOSE", "KEYPOINT_FORMAT", "PoseConfig", "PoseResult", "PoseService"]
