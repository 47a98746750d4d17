"""Face restoration around GFPGAN: align a face by its 5 landmarks (buffalo_l's order: eyes, nose,
mouth corners) to GFPGAN's 512x512 template, restore it, blend with the original by `fidelity`,
and paste it back through a feathered mask. Only the aligned crop's footprint in the image is
touched."""
from __future__ import annotations

import numpy as np

from .models import FACE_SIZE

# Where GFPGAN's training faces (FFHQ alignment) have their eyes, nose tip and mouth corners in
# the 512x512 crop; the same 5 points, in the same order, as buffalo_l's detector gives.
TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.19360], [256.63416, 314.01935],
                         [201.26117, 371.41043], [313.08905, 371.15118]], np.float32)
BORDER = (135, 133, 132)  # the gray outside the image where a face nears the edge
_mask: np.ndarray | None = None


def feather_mask() -> np.ndarray:
    """1 inside the 512 crop, falling smoothly to 0 at its edges (float32, 512x512)."""
    global _mask
    if _mask is None:
        import cv2

        margin = FACE_SIZE // 16
        mask = np.zeros((FACE_SIZE, FACE_SIZE), np.float32)
        mask[margin:-margin, margin:-margin] = 1.0
        # 4 sigma from the ones to the crop's edge: the edge itself gets nothing (no visible frame)
        _mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=margin / 4)
    return _mask


def align(img: np.ndarray, landmarks) -> tuple[np.ndarray, np.ndarray]:
    """(the face warped to the 512 template, the 2x3 matrix image -> crop)."""
    import cv2

    # A similarity fit (no shear), robust to one misplaced landmark. It only fails on landmarks that
    # all coincide, where the plain least-squares fit fails too: a detector never gives those.
    matrix, _ = cv2.estimateAffinePartial2D(np.asarray(landmarks, np.float32), TEMPLATE_512, method=cv2.LMEDS)
    crop = cv2.warpAffine(img, matrix, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER)
    return crop, matrix


def footprint(matrix: np.ndarray, height: int, width: int) -> tuple[int, int, int, int] | None:
    """The image region (x0, y0, x1, y1) the 512 crop maps back onto, clipped to the image."""
    import cv2

    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [FACE_SIZE, 0, 1], [0, FACE_SIZE, 1], [FACE_SIZE, FACE_SIZE, 1]], np.float32)
    pts = corners @ inverse.T
    x0, y0 = np.floor(pts.min(axis=0)).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    return None if x1 <= x0 or y1 <= y0 else (x0, y0, x1, y1)


def paste(img: np.ndarray, face: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """`img` with the 512 `face` put back where `matrix` took it from, feathered at the edges."""
    import cv2

    box = footprint(matrix, *img.shape[:2])
    if box is None:
        return img
    x0, y0, x1, y1 = box
    inverse = cv2.invertAffineTransform(matrix)
    inverse[:, 2] -= (x0, y0)  # warp straight into the region, not the whole image
    size = (x1 - x0, y1 - y0)
    back = cv2.warpAffine(face, inverse, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(feather_mask(), inverse, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
    region = img[y0:y1, x0:x1].astype(np.float32)
    img[y0:y1, x0:x1] = np.clip(alpha * back + (1 - alpha) * region + 0.5, 0, 255).astype(np.uint8)
    return img


def run_model(model, crop_bgr: np.ndarray) -> np.ndarray:
    """One aligned 512x512 BGR face through a spandrel descriptor (RGB in [0, 1] on its device), BGR out."""
    import torch

    with torch.inference_mode():
        rgb = np.ascontiguousarray(crop_bgr[..., ::-1])
        x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).to(device=model.device, dtype=model.dtype).div_(255)
        y = model(x)[0].float().clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(y[..., ::-1])


def restore(run, img: np.ndarray, landmarks: list, *, fidelity: float, progress=None) -> np.ndarray:
    """Restore each face given by its 5 landmarks in `img` (BGR uint8, changed in place and returned).
    `run(aligned 512x512 BGR uint8) -> the same, restored`; fidelity 0 keeps GFPGAN's face, 1 the original."""
    for i, points in enumerate(landmarks):
        crop, matrix = align(img, points)
        if fidelity < 1.0:
            restored = run(crop)
            if fidelity > 0.0:
                restored = np.clip((1 - fidelity) * restored.astype(np.float32)
                                   + fidelity * crop.astype(np.float32) + 0.5, 0, 255).astype(np.uint8)
            img = paste(img, restored, matrix)
        if progress is not None:
            progress(i + 1, len(landmarks))
    return img
