"""What one image request asks for, checked against the server's limits.

Static rules (types, the step set, seed range, formats) live in the web layer's pydantic models;
the limits that come from settings are checked here, so every entry point (own route, OpenAI
route, a notebook call) gets the same errors, each naming its field.
"""
from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field

from ..errors import InvalidInput

STEPS = (1, 2, 4, 8)
POSE_SOURCES = ("pose_image", "pose_reference")  # a skeleton image, or a photo DWPose reads it from
DEFAULT_CONTROL_SCALE = 0.8
MAX_CONTROL_SCALE = 2.0
FORMATS = ("png", "jpeg", "webp")
MAX_SEED = 2**32 - 1  # what most UIs (and the seed's frontend) show; keeps seeds easy to copy


@dataclass(frozen=True)
class ImageLimits:
    max_width: int = 1024
    max_height: int = 1024
    min_side: int = 64
    max_n: int = 4
    default_width: int = 1024
    default_height: int = 1024
    default_steps: int = 4
    max_pose_pixels: int = 40_000_000  # a pose_image larger than this is refused (413) before decoding

    def check_size(self, width: int, height: int, *, param_w: str = "width", param_h: str = "height") -> None:
        for value, param, limit in ((width, param_w, self.max_width), (height, param_h, self.max_height)):
            if value % 8:
                raise InvalidInput(f"{param} must be a multiple of 8 (got {value})", param=param,
                                   code="invalid_size")
            if not self.min_side <= value <= limit:
                raise InvalidInput(f"{param} must be between {self.min_side} and {limit} pixels (got {value})",
                                   param=param, code="invalid_size")


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    width: int
    height: int
    steps: int = 4
    seed: int = 0
    n: int = 1
    output_format: str = "png"
    negative_prompt: str = ""
    warnings: tuple[str, ...] = field(default=())
    pose_file: str = ""  # a stored upload or job output: the skeleton, or the photo to read it from
    pose_source: str = ""  # "" (no pose) or one of POSE_SOURCES: the field the file came in
    control_scale: float = DEFAULT_CONTROL_SCALE

    def seeds(self) -> list[int]:
        # One seed per image, so each image of a batch can be reproduced alone.
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.n)]

    def to_params(self) -> dict:
        data = asdict(self)
        data["warnings"] = list(self.warnings)
        return data

    @classmethod
    def from_params(cls, data: dict) -> "ImageRequest":
        return cls(**{**data, "warnings": tuple(data.get("warnings", ()))})


def build_request(limits: ImageLimits, *, prompt: str, width: int | None = None, height: int | None = None,
                  steps: int | None = None, seed: int | None = None, n: int = 1, output_format: str = "png",
                  negative_prompt: str | None = None, size_param: str | None = None,
                  pose_image: str | None = None, pose_reference: str | None = None,
                  control_scale: float | None = None) -> ImageRequest:
    """A checked request; a missing seed is drawn here so the response can return it."""
    prompt = (prompt or "").strip()
    if not prompt:
        raise InvalidInput("prompt must not be empty", param="prompt", code="empty_prompt")
    width = limits.default_width if width is None else int(width)
    height = limits.default_height if height is None else int(height)
    limits.check_size(width, height, param_w=size_param or "width", param_h=size_param or "height")
    steps = limits.default_steps if steps is None else int(steps)
    if steps not in STEPS:
        raise InvalidInput(f"steps must be one of {', '.join(map(str, STEPS))} (got {steps})", param="steps",
                           code="invalid_steps")
    if not 1 <= n <= limits.max_n:
        raise InvalidInput(f"n must be between 1 and {limits.max_n} (got {n})", param="n", code="invalid_n")
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    elif not 0 <= seed <= MAX_SEED:
        raise InvalidInput(f"seed must be between 0 and {MAX_SEED} (got {seed})", param="seed", code="invalid_seed")
    if output_format not in FORMATS:
        raise InvalidInput(f"output_format must be one of {', '.join(FORMATS)} (got {output_format!r})",
                           param="output_format", code="invalid_format")
    warnings: list[str] = []
    negative_prompt = (negative_prompt or "").strip()
    if negative_prompt:
        warnings.append("negative_prompt is ignored: SDXL-Lightning runs without classifier-free guidance "
                        "(guidance_scale=0)")
    if pose_image and pose_reference:
        raise InvalidInput("send either pose_image (a skeleton) or pose_reference (a photo), not both",
                           param="pose_reference", code="invalid_parameter")
    pose_source = "pose_image" if pose_image else "pose_reference" if pose_reference else ""
    if control_scale is None:
        control_scale = DEFAULT_CONTROL_SCALE
    elif not 0.0 <= float(control_scale) <= MAX_CONTROL_SCALE:
        raise InvalidInput(f"control_scale must be between 0 and {MAX_CONTROL_SCALE:g} (got {control_scale})",
                           param="control_scale", code="invalid_control_scale")
    elif not pose_source:
        warnings.append("control_scale is ignored without pose_image or pose_reference")
    return ImageRequest(prompt=prompt, width=width, height=height, steps=steps, seed=seed, n=n,
                        output_format=output_format, negative_prompt=negative_prompt, warnings=tuple(warnings),
                        pose_file=str(pose_image or pose_reference or ""), pose_source=pose_source,
                        control_scale=float(control_scale))
