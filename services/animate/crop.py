"""The face crop LivePortrait sees and the way back: a similarity transform (scale, the eye
line's rotation, shift) from the full image to a square crop around a detected face, and the
paste-back of a rendered crop through a feathered mask, which leaves every pixel outside the crop
untouched."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# LivePortrait's crop (crop_config.py): 2.3 face sizes, centre raised by 0.125 of the crop side.
DEFAULT_CROP_SCALE = 2.3
VY_RATIO = -0.125
FEATHER = 0.12  # the mask fades over this fraction of the crop side


@dataclass(frozen=True)
class Crop:
    matrix: np.ndarray  # 2x3, full image -> crop
    inverse: np.ndarray  # 2x3, crop -> full image
    size: int  # crop side in pixels

    def box(self, width: int, height: int) -> list[int]:
        """[x1, y1, x2, y2]: the part of the full image the crop covers (clipped to the image)."""
        corners = np.array([[0, 0, 1], [self.size, 0, 1], [0, self.size, 1], [self.size, self.size, 1]], float)
        pts = corners @ self.inverse.T
        x1, y1 = np.floor(pts.min(0)).astype(int)
        x2, y2 = np.ceil(pts.max(0)).astype(int)
        return [max(0, int(x1)), max(0, int(y1)), min(width, int(x2)), min(height, int(y2))]


def face_crop(bbox, kps, size: int, crop_scale: float = DEFAULT_CROP_SCALE) -> Crop:
    """The crop of side `size` around a face (detector box + 5 keypoints), upright on the eye line."""
    x1, y1, x2, y2 = (float(v) for v in bbox[:4])
    kps = np.asarray(kps, float).reshape(-1, 2)
    theta = math.atan2(kps[1, 1] - kps[0, 1], kps[1, 0] - kps[0, 0]) if len(kps) >= 2 else 0.0
    cos, sin = math.cos(theta), math.sin(theta)
    side = crop_scale * max(x2 - x1, y2 - y1, 1.0)
    # Raise the centre along the face's own "up" (the eye line's normal).
    shift = VY_RATIO * side
    cx = (x1 + x2) / 2 - sin * shift
    cy = (y1 + y2) / 2 + cos * shift
    s = size / side
    rot = np.array([[cos, sin], [-sin, cos]]) * s  # rotate by -theta, then scale
    matrix = np.hstack([rot, (np.array([size / 2, size / 2]) - rot @ np.array([cx, cy]))[:, None]])
    inverse = np.hstack([np.linalg.inv(rot), (-np.linalg.inv(rot) @ matrix[:, 2])[:, None]])
    return Crop(matrix=matrix, inverse=inverse, size=size)


def cut(image: np.ndarray, crop: Crop) -> np.ndarray:
    import cv2

    return cv2.warpAffine(image, crop.matrix, (crop.size, crop.size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def feather_mask(size: int) -> np.ndarray:
    """(size, size) float32: 1 inside, fading to exactly 0 at the crop's edges."""
    ramp = max(2, int(round(size * FEATHER)))
    edge = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)
    line = np.clip(edge / ramp, 0, 1)
    line = 0.5 - 0.5 * np.cos(np.pi * line)  # smooth start and end of the fade
    return np.outer(line, line)


def paste_back(image: np.ndarray, rendered: np.ndarray, crop: Crop) -> np.ndarray:
    """`rendered` (a crop, any square size) blended into `image` where the crop came from."""
    import cv2

    h, w = image.shape[:2]
    scale = crop.size / rendered.shape[0]
    inverse = crop.inverse.copy()
    inverse[:, :2] *= scale  # rendered pixels -> crop pixels -> image pixels
    back = cv2.warpAffine(rendered, inverse, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    mask = cv2.warpAffine(feather_mask(rendered.shape[0]), inverse, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
    out = image.astype(np.float32) * (1 - mask) + back.astype(np.float32) * mask
    result = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    result[mask[..., 0] <= 0] = image[mask[..., 0] <= 0]  # untouched outside the crop, bit for bit
    return result
