"""Upscaling an image of any size in tiles, with bounded memory and no seams.

Each tile is run with `overlap` extra input pixels on every side (clamped at the image border) and
only its core is kept: where the overlap covers the network's receptive field, the output equals
an untiled run exactly; beyond it (Real-ESRGAN's field is wider than any practical overlap) the
influence of far pixels has faded, so the joins do not show. Tile edges and overlaps sit on the
model's size grid, so pixel-unshuffle models (x2plus) group pixels as an untiled run does.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

Progress = Callable[[int, int], None]  # (tiles done, tiles in all); raises to cancel

MIN_TILE = 64
MAX_TILE = 2048
# Bytes one input pixel costs while a Real-ESRGAN tile runs: ~4 feature maps of 64 channels at the
# output resolution (scale² pixels each) and the dense blocks' 192 channels at the input's.
FEATURES = 64


def bytes_per_pixel(scale: int, dtype_bytes: int) -> int:
    return (4 * FEATURES * scale * scale + 3 * 192) * dtype_bytes


def auto_tile(free_bytes: int, scale: int, dtype_bytes: int, *, share: float = 0.6, multiple: int = 4) -> int:
    """The tile side (input pixels) whose activations fit in `share` of the free device memory."""
    side = int(math.sqrt(max(free_bytes, 0) * share / bytes_per_pixel(scale, dtype_bytes)))
    side = max(MIN_TILE, min(MAX_TILE, side))
    return side - side % multiple


def plan(height: int, width: int, tile: int, multiple: int) -> list[tuple[int, int, int, int]]:
    """Core regions (y0, y1, x0, x1) covering the image, row by row; edges on the `multiple` grid."""
    tile = max(multiple, tile - tile % multiple)
    return [(y, min(y + tile, height), x, min(x + tile, width))
            for y in range(0, height, tile) for x in range(0, width, tile)]


def run_model(model, crop: np.ndarray) -> np.ndarray:
    """One tile through a spandrel descriptor: uint8 (h, w, 3) in, uint8 (h*scale, w*scale, 3) out, on the
    model's device and dtype."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).unsqueeze(0)
        x = x.to(device=model.device, dtype=model.dtype).div_(255)
        y = model(x)
        # spandrel's descriptor already clamps its output to [0, 1]
        pixels = y[0].float().mul_(255).round_().to(torch.uint8).permute(1, 2, 0)
        return pixels.cpu().numpy()


def upscale(run: Callable[[np.ndarray], np.ndarray], img: np.ndarray, *, scale: int, tile: int, overlap: int,
            multiple: int, progress: Progress | None = None) -> np.ndarray:
    """`run(uint8 crop (h, w, 3)) -> uint8 (h*scale, w*scale, 3)` over `img` (H, W, 3 uint8; channel order
    is kept), tile by tile; the result is exactly scale x the input size. Nothing is held between tiles:
    `run` may take the model for each tile (a batch job paused between tiles then holds no model)."""
    height, width = img.shape[:2]
    overlap = int(math.ceil(overlap / multiple) * multiple)
    out = np.empty((height * scale, width * scale, 3), np.uint8)
    cores = plan(height, width, tile, multiple)
    for i, (y0, y1, x0, x1) in enumerate(cores):
        py0, py1 = max(0, y0 - overlap), min(height, y1 + overlap)
        px0, px1 = max(0, x0 - overlap), min(width, x1 + overlap)
        res = run(img[py0:py1, px0:px1])
        out[y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
            res[(y0 - py0) * scale:(y1 - py0) * scale, (x0 - px0) * scale:(x1 - px0) * scale]
        if progress is not None:
            progress(i + 1, len(cores))
    return out
