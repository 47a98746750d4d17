"""The checks on an upscale or restore request, with the messages a user sees."""
from __future__ import annotations

from ..errors import InvalidInput, TooLarge

SCALES = (2, 4)
# Upscales whose output passes this many pixels (2048x2048) run in the batch lane.
BATCH_OUTPUT_PIXELS = 2048 * 2048


def check_scale(scale) -> int:
    if isinstance(scale, bool) or scale not in SCALES:
        raise InvalidInput(f"scale must be 2 or 4, not {scale!r}", param="scale", code="invalid_scale")
    return int(scale)


def check_fidelity(fidelity, param: str = "fidelity") -> float:
    try:
        value = float(fidelity)
    except (TypeError, ValueError):
        value = -1.0  # not a number: refused below
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise InvalidInput(f"{param} must be between 0 (the restored face) and 1 (the original), not {fidelity!r}",
                           param=param, code="invalid_fidelity")
    return value


def check_output_size(width: int, height: int, scale: int, max_output_pixels: int) -> tuple[int, int]:
    """(output width, output height), or 413 when they pass the output limit."""
    out_w, out_h = width * scale, height * scale
    if out_w * out_h > max_output_pixels:
        raise TooLarge(f"x{scale} of a {width}x{height} image is {out_w}x{out_h}, more than the "
                       f"{max_output_pixels:,} output pixels allowed", param="image", code="output_too_large")
    return out_w, out_h


def is_batch(input_pixels: int, scale: int) -> bool:
    return input_pixels * scale * scale > BATCH_OUTPUT_PIXELS
