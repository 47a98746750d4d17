"""LivePortrait's inference steps as functions of the loaded networks (`LivePortrait`) and the
face pack (buffalo_l): the source's crop, features and keypoints; a driving frame's motion; the
driving keypoints (relative or absolute motion, stitching, eye/lip retargeting, head rotation);
rendering and paste-back. No I/O and no job logic here."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import Unprocessable
from ..face.service import analyze, pick_faces
from .crop import Crop, cut, face_crop, paste_back
from .model import LivePortrait, rotation, transform

# InsightFace's 106-point layout: the two eye contours and the mouth.
EYES_106 = (tuple(range(33, 43)), tuple(range(87, 97)))
MOUTH_106 = tuple(range(52, 72))
DEFAULT_EYE, DEFAULT_LIP = 0.35, 0.0
EYE_RANGE = (0.0, 0.5)  # eye_open 0..1 -> LivePortrait's eye-close ratio
LIP_RANGE = (0.0, 0.6)  # lip_open 0..1 -> its lip-open ratio
MAX_ANGLE = 30.0  # degrees of extra head rotation /animate/expression accepts


@dataclass
class Source:
    image: np.ndarray  # BGR, the full picture
    crop: Crop
    feature: torch.Tensor  # f_s, the appearance volume
    info: dict  # the motion extractor's output for the source crop
    kp: torch.Tensor  # x_s, its transformed keypoints
    eye: tuple[float, float]  # left, right eye openness (LivePortrait's ratio)
    lip: float
    faces_found: int
    face_index: int


def on_device(src: Source, device: str) -> Source:
    """`src` with its tensors where the networks are now (a paused job's model may come back on
    another GPU); itself when nothing moved."""
    if str(src.kp.device) == str(torch.device(device)):
        return src
    return replace(src, feature=src.feature.to(device), kp=src.kp.to(device),
                   info={k: v.to(device) for k, v in src.info.items()})


def _spread(points: np.ndarray) -> float | None:
    """Height / width of a contour: its extent across the line joining its two farthest points."""
    if points.shape[0] < 3 or not np.isfinite(points).all():
        return None
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    i, j = np.unravel_index(np.argmax(d), d.shape)
    width = d[i, j]
    if width < 1e-6:
        return None
    axis = (points[j] - points[i]) / width
    across = (points - points[i]) @ np.array([-axis[1], axis[0]])
    return float(across.max() - across.min()) / float(width)


def openness(face) -> tuple[tuple[float, float], float]:
    """Eye and lip openness from the 106 landmarks, on LivePortrait's scales (eyes ~0.3 open,
    lips 0 closed); the defaults where the landmarks are missing."""
    lmk = face.get("landmark_2d_106") if hasattr(face, "get") else None
    if lmk is None:
        return (DEFAULT_EYE, DEFAULT_EYE), DEFAULT_LIP
    lmk = np.asarray(lmk, float)
    eyes = []
    for idx in EYES_106:
        value = _spread(lmk[list(idx)])
        eyes.append(DEFAULT_EYE if value is None else float(np.clip(value, 0.0, 0.8)))
    mouth = _spread(lmk[list(MOUTH_106)])
    # The 106 layout has no inner-lip pair: the whole mouth's height/width is ~0.35 when closed.
    lip = DEFAULT_LIP if mouth is None else float(np.clip(mouth - 0.35, 0.0, 0.8))
    return (eyes[0], eyes[1]), lip


def _area(face) -> float:
    x1, y1, x2, y2 = (float(v) for v in face.bbox[:4])
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def choose_face(faces: list, face_index: int | None, *, what: str):
    """The face asked for by index (left to right), else the largest."""
    if face_index is not None:
        return pick_faces(faces, [face_index], what=what, param="face_index")[0]
    return max(range(len(faces)), key=lambda i: _area(faces[i]))


def to_tensor(crop_bgr: np.ndarray, size: int) -> torch.Tensor:
    """A BGR crop -> (1, 3, size, size) RGB in [0, 1], what the networks take."""
    import cv2

    if crop_bgr.shape[0] != size:
        crop_bgr = cv2.resize(crop_bgr, (size, size), interpolation=cv2.INTER_AREA)
    rgb = np.ascontiguousarray(crop_bgr[..., ::-1], dtype=np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


def keypoints(info: dict, d_pitch: float = 0.0, d_yaw: float = 0.0, d_roll: float = 0.0) -> torch.Tensor:
    rot = rotation(info["pitch"] + d_pitch, info["yaw"] + d_yaw, info["roll"] + d_roll)
    return transform(info["kp"], rot, info["exp"], info["scale"], info["t"])


def prepare_source(lp: LivePortrait, pack, image: np.ndarray, *, face_index: int | None = None,
                   crop_scale: float = 2.3, param: str = "source") -> Source:
    faces = analyze(pack, image, {"landmark_2d_106"})
    if not faces:
        raise Unprocessable("no face found in source image", param=param, code="no_face")
    index = choose_face(faces, face_index, what="source image")
    face = faces[index]
    crop = face_crop(face.bbox, face.kps, 2 * lp.input_size, crop_scale)
    x = to_tensor(cut(image, crop), lp.input_size)
    info = lp.motion(x)
    eye, lip = openness(face)
    return Source(image=image, crop=crop, feature=lp.appearance(x), info=info, kp=keypoints(info), eye=eye,
                  lip=lip, faces_found=len(faces), face_index=index)


def frame_motion(lp: LivePortrait, pack, frame: np.ndarray, crop_scale: float = 2.3) -> dict | None:
    """The motion of the largest face in a driving frame; None when the frame has no face."""
    faces = analyze(pack, frame)
    if not faces:
        return None
    face = faces[choose_face(faces, None, what="frame")]
    crop = face_crop(face.bbox, face.kps, lp.input_size, crop_scale)
    return lp.motion(to_tensor(cut(frame, crop), lp.input_size))


def driven_keypoints(src: Source, first: dict, current: dict, *, relative: bool = True) -> torch.Tensor:
    """The source's keypoints moved as the driving face moved: relative to the first driving frame
    (the source keeps its own pose and expression as the starting point), or absolute."""
    s, d0, d = src.info, first, current
    if relative:
        rot = (rotation(d["pitch"], d["yaw"], d["roll"]) @ rotation(d0["pitch"], d0["yaw"], d0["roll"]).transpose(1, 2)
               ) @ rotation(s["pitch"], s["yaw"], s["roll"])
        exp = s["exp"] + (d["exp"] - d0["exp"])
        scale = s["scale"] * (d["scale"] / d0["scale"])
        t = s["t"] + (d["t"] - d0["t"])
    else:
        rot = rotation(d["pitch"], d["yaw"], d["roll"])
        exp, scale, t = d["exp"], d["scale"], d["t"].clone()
    t = t.clone()
    t[:, 2] = 0  # depth translation is not used by the warping
    return transform(s["kp"], rot, exp, scale, t)


def retarget(lp: LivePortrait, src: Source, kp: torch.Tensor, *, eye_open: float | None = None,
             lip_open: float | None = None) -> torch.Tensor:
    """Add the eye/lip retargeting networks' offsets for the wanted openness (0..1)."""
    if eye_open is not None:
        target = EYE_RANGE[0] + float(eye_open) * (EYE_RANGE[1] - EYE_RANGE[0])
        kp = kp + lp.retarget_eye(src.kp, torch.tensor([[src.eye[0], src.eye[1], target]], device=kp.device))
    if lip_open is not None:
        target = LIP_RANGE[0] + float(lip_open) * (LIP_RANGE[1] - LIP_RANGE[0])
        kp = kp + lp.retarget_lip(src.kp, torch.tensor([[src.lip, target]], device=kp.device))
    return kp


def render(lp: LivePortrait, src: Source, kp: torch.Tensor, *, stitching: bool = True) -> np.ndarray:
    """The source animated to keypoints `kp`: a BGR uint8 crop (twice the network input side)."""
    if stitching:
        kp = lp.stitch(src.kp, kp)
    out = lp.render(src.feature, src.kp, kp)[0]
    rgb = (out.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(rgb[..., ::-1])


def compose(src: Source, rendered: np.ndarray, *, paste: bool = True) -> np.ndarray:
    return paste_back(src.image, rendered, src.crop) if paste else rendered


def expression_keypoints(lp: LivePortrait, src: Source, *, eye_open=None, lip_open=None, pitch=0.0, yaw=0.0,
                         roll=0.0) -> torch.Tensor:
    kp = keypoints(src.info, pitch, yaw, roll)
    return retarget(lp, src, kp, eye_open=eye_open, lip_open=lip_open)


def speaking_keypoints(lp: LivePortrait, src: Source, *, lip_open: float, eye_open: float,
                       pose: dict[str, float]) -> torch.Tensor:
    """A talking-head frame: the source's keypoints turned by the idle `pose` (degrees), its eyes at
    `eye_open` (0..1) of their own openness, its mouth at `lip_open` (0..1)."""
    kp = keypoints(src.info, pose.get("pitch", 0.0), pose.get("yaw", 0.0), pose.get("roll", 0.0))
    eyes = torch.tensor([[src.eye[0], src.eye[1], float(np.mean(src.eye)) * float(eye_open)]], device=kp.device)
    lips = torch.tensor([[src.lip, LIP_RANGE[1] * float(lip_open)]], device=kp.device)
    return kp + lp.retarget_eye(src.kp, eyes) + lp.retarget_lip(src.kp, lips)
