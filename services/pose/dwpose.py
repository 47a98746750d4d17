"""DWPose's two-stage pipeline as arrays in, arrays out (no model loading here).

Stage 1, YOLOX-L finds people: the image is scaled to fit 640x640 (kept aspect, top-left, the rest
filled with 114), fed as raw 0..255 floats; each of the 8400 anchor rows (strides 8/16/32 in that
order) holds (cx, cy, log w, log h) offsets, objectness and 80 class probabilities. Boxes are decoded
against the anchor grid, scored objectness x class, kept above 0.1, merged by NMS at IoU 0.45, and
the "person" class above 0.3 is kept: DWPose's published detector settings.

Stage 2, RTMPose-style whole-body keypoints per person: the box is grown by 1.25, set to the
model's 3:4 aspect, warped to 288x384, normalised with ImageNet's mean/std (0..255 scale); the model
answers SimCC vectors (2 bins per pixel): argmax per axis is the position, the smaller of the two
maxima the score. Keypoints come back in the 133-point COCO-WholeBody order
(17 body, 6 feet, 68 face, 21 + 21 hands).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DET_SIZE = (640, 640)  # (height, width) of YOLOX's input
DET_STRIDES = (8, 16, 32)
DET_PAD_VALUE = 114
DET_SCORE_THR = 0.1
DET_NMS_THR = 0.45
PERSON_SCORE_THR = 0.3
PERSON_CLASS = 0
BOX_PADDING = 1.25
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
SIMCC_SPLIT_RATIO = 2.0
NUM_KEYPOINTS = 133


@dataclass(frozen=True)
class Person:
    box: np.ndarray  # (4,) x1, y1, x2, y2 in image pixels
    score: float  # the detector's person score
    keypoints: np.ndarray  # (133, 2) image pixels
    scores: np.ndarray  # (133,)


# --------------------------------------------------------------------------- detector

def detector_input(rgb: np.ndarray, size: tuple[int, int] = DET_SIZE) -> tuple[np.ndarray, float]:
    """(1, 3, H, W) float32 input and the scale applied to the image."""
    import cv2

    h, w = rgb.shape[:2]
    ratio = min(size[0] / h, size[1] / w)
    nh, nw = max(1, int(h * ratio)), max(1, int(w * ratio))
    canvas = np.full((size[0], size[1], 3), DET_PAD_VALUE, np.uint8)
    canvas[:nh, :nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32), ratio


def _anchor_grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    grids, strides = [], []
    for stride in DET_STRIDES:
        hs, ws = size[0] // stride, size[1] // stride
        xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((hs * ws, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)


def person_boxes(output: np.ndarray, ratio: float, size: tuple[int, int] = DET_SIZE) -> np.ndarray:
    """(N, 5) boxes x1, y1, x2, y2, score of the people in YOLOX's (1, anchors, 5 + classes) output."""
    import cv2

    pred = np.asarray(output, np.float32).reshape(-1, output.shape[-1])
    grid, stride = _anchor_grid(size)
    if pred.shape[0] != grid.shape[0]:
        raise ValueError(f"the detector gave {pred.shape[0]} anchors; a {size[1]}x{size[0]} YOLOX input has "
                         f"{grid.shape[0]}")
    centre = (pred[:, :2] + grid) * stride
    wh = np.exp(np.minimum(pred[:, 2:4], 20.0)) * stride  # clamp: exp of a wild logit must not overflow
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1) / ratio
    scores = pred[:, 4:5] * pred[:, 5:]
    best_class = scores.argmax(axis=1)
    best = scores[np.arange(len(scores)), best_class]
    # Class-aware NMS as DWPose runs it, then its person filter: only class 0 rows matter, so
    # running NMS on the rows whose best class is a person gives the same people.
    keep = np.flatnonzero((best > DET_SCORE_THR) & (best_class == PERSON_CLASS))
    if keep.size == 0:
        return np.zeros((0, 5), np.float32)
    xywh = np.concatenate([boxes[keep, :2], boxes[keep, 2:] - boxes[keep, :2]], axis=1)
    picked = cv2.dnn.NMSBoxes(xywh.tolist(), best[keep].tolist(), DET_SCORE_THR, DET_NMS_THR)
    picked = keep[np.asarray(picked, int).reshape(-1)]
    picked = picked[best[picked] > PERSON_SCORE_THR]
    return np.concatenate([boxes[picked], best[picked, None]], axis=1).astype(np.float32)


# --------------------------------------------------------------------------- keypoints

def box_to_centre_scale(box: np.ndarray, aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre and (w, h) of the padded box, widened or heightened to the model's aspect (w / h)."""
    x1, y1, x2, y2 = box[:4]
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2], np.float32)
    w, h = (x2 - x1) * BOX_PADDING, (y2 - y1) * BOX_PADDING
    if w > h * aspect:
        h = w / aspect
    else:
        w = h * aspect
    return centre, np.array([w, h], np.float32)


def _warp(centre: np.ndarray, scale: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """The affine map from the (centre, scale) box to an out_w x out_h crop."""
    import cv2

    src = np.array([centre, centre + [0, -scale[1] / 2], centre + [-scale[0] / 2, -scale[1] / 2]], np.float32)
    dst = np.array([[out_w / 2, out_h / 2], [out_w / 2, 0], [0, 0]], np.float32)
    return cv2.getAffineTransform(src, dst)


def pose_input(rgb: np.ndarray, box: np.ndarray, size_wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(1, 3, H, W) normalised crop of one person, with the crop's centre and scale."""
    import cv2

    w, h = size_wh
    centre, scale = box_to_centre_scale(box, w / h)
    crop = cv2.warpAffine(rgb, _warp(centre, scale, w, h), (w, h), flags=cv2.INTER_LINEAR)
    data = (crop.astype(np.float32) - MEAN) / STD
    return np.ascontiguousarray(data.transpose(2, 0, 1)[None]), centre, scale


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, size_wh: tuple[int, int], centre: np.ndarray,
                 scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) keypoints in image pixels and (K,) scores from one person's SimCC vectors."""
    sx = np.asarray(simcc_x, np.float32).reshape(-1, simcc_x.shape[-1])
    sy = np.asarray(simcc_y, np.float32).reshape(-1, simcc_y.shape[-1])
    locs = np.stack([sx.argmax(axis=1), sy.argmax(axis=1)], axis=1).astype(np.float32) / SIMCC_SPLIT_RATIO
    scores = np.minimum(sx.max(axis=1), sy.max(axis=1))
    keypoints = locs / np.asarray(size_wh, np.float32) * scale + centre - scale / 2
    keypoints[scores <= 0] = -1
    return keypoints, scores


# --------------------------------------------------------------------------- OpenPose body

# COCO-WholeBody's first 17 points to OpenPose's 18-point body (neck = mid-shoulders), the
# layout the OpenPose ControlNets were trained on.
COCO_TO_OPENPOSE = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
VISIBLE = 0.3  # DWPose draws a point above this score


def openpose_body(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(18, 2) OpenPose body points and (18,) scores; the neck is seen when both shoulders are."""
    pts = np.zeros((18, 2), np.float32)
    sc = np.zeros(18, np.float32)
    for i, src in enumerate(COCO_TO_OPENPOSE):
        if src is None:
            pts[i] = (keypoints[5] + keypoints[6]) / 2
            sc[i] = min(scores[5], scores[6]) if scores[5] > VISIBLE and scores[6] > VISIBLE else 0.0
        else:
            pts[i], sc[i] = keypoints[src], scores[src]
    return pts, sc
