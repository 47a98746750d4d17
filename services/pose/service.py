"""Pose estimation with DWPose: the people in a photo, their 133 whole-body keypoints, and the
OpenPose skeleton image a pose ControlNet reads. The models go through the VRAM offloader."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefetch.manifest import vram_estimate

from .. import media
from ..errors import Unprocessable
from ..model_env import ModelEnv
from ..vram import Runtime
from . import dwpose, models, skeleton
from .models import DWPOSE, LoadedDWPose, PoseConfig

log = logging.getLogger("enfoads.pose")
KEYPOINT_FORMAT = "coco_wholebody_133"


def read_rgb(path: Path, *, max_pixels: int, param: str) -> np.ndarray:
    """An image file as an RGB uint8 array, upright per its EXIF tag (phone photos)."""
    from PIL import ImageOps

    img = media.load_image(Path(path).read_bytes(), max_pixels=max_pixels, param=param)
    if img.getexif().get(0x0112, 1) != 1:
        img = ImageOps.exif_transpose(img)
    return np.asarray(img)


def estimate(model: LoadedDWPose, rgb: np.ndarray) -> list[dwpose.Person]:
    """Every person DWPose finds, left to right."""
    det = model.detector
    tensor, ratio = dwpose.detector_input(rgb)
    boxes = dwpose.person_boxes(det.run(None, {det.get_inputs()[0].name: tensor})[0], ratio)
    people = []
    pose = model.pose
    for box in boxes:
        crop, centre, scale = dwpose.pose_input(rgb, box, model.pose_size)
        simcc_x, simcc_y = pose.run(None, {pose.get_inputs()[0].name: crop})
        keypoints, scores = dwpose.decode_simcc(simcc_x, simcc_y, model.pose_size, centre, scale)
        people.append(dwpose.Person(box=box[:4], score=float(box[4]), keypoints=keypoints, scores=scores))
    people.sort(key=lambda p: (float(p.box[0]), float(p.box[1])))
    return people


def person_json(index: int, person: dwpose.Person) -> dict:
    return {
        "index": index,
        "box": [round(float(v), 2) for v in person.box],
        "score": round(person.score, 4),
        "keypoints": [[round(float(x), 2), round(float(y), 2), round(float(s), 4)]
                      for (x, y), s in zip(person.keypoints, person.scores)],
    }


@dataclass
class PoseResult:
    width: int
    height: int
    people: list[dwpose.Person]
    skeleton: np.ndarray  # (height, width, 3) RGB

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "count": len(self.people),
                "keypoint_format": KEYPOINT_FORMAT,
                "people": [person_json(i, p) for i, p in enumerate(self.people)]}


class PoseService:
    def __init__(self, env: ModelEnv, cfg: PoseConfig):
        self.env = env
        self.cfg = cfg
        self.runtime: dict = {"loaded": False}  # filled in place on load (/diagnostics shows it)

    def register(self) -> None:
        self.env.vram.register(DWPOSE, self._load, runtime=Runtime.ONNX, family="image",
                               estimate_bytes=vram_estimate(DWPOSE, "fp32"))

    def _load(self, device: str) -> LoadedDWPose:
        cfg = self.cfg if device == self.cfg.device else dataclasses.replace(self.cfg, device=device)
        loaded = models.load(self.env.locate(DWPOSE), cfg)
        self.runtime.clear()
        self.runtime.update(loaded=True, **loaded.runtime)
        return loaded

    def check_available(self) -> None:
        """ModelUnavailable (503, naming the prefetch command) unless DWPose is on this machine."""
        self.env.locate(DWPOSE)

    def available(self) -> bool:
        return self.env.present(DWPOSE)

    def warnings(self) -> list[str]:
        return [w] if (w := self.runtime.get("warning")) else []

    def read(self, path: Path, param: str) -> np.ndarray:
        return read_rgb(path, max_pixels=self.cfg.max_image_pixels, param=param)

    def estimate(self, rgb: np.ndarray, *, require_person: str | None = None) -> PoseResult:
        """People and skeleton of an RGB image; with `require_person` (a param name), no person is a 422."""
        self.check_available()
        people = self.env.vram.run(DWPOSE, lambda m: estimate(m, rgb))
        if require_person and not people:
            raise Unprocessable(f"no person found in {require_person}: DWPose needs a visible person to copy "
                                "the pose from (or send a skeleton as pose_image)", param=require_person,
                                code="no_person")
        h, w = rgb.shape[:2]
        return PoseResult(width=w, height=h, people=people, skeleton=skeleton.draw(people, w, h))
