"""Building LivePortrait from its checkpoint files (strict key check) and running its parts:
appearance volume, keypoint info, keypoint transformation, stitching, eye/lip retargeting,
warp + decode. One `LivePortrait` object is what the VRAM offloader holds and moves.

Precision: the weights stay fp32 and the convolutions run under autocast in the policy's dtype
(fp16 on a T4), as the authors run it; keypoint maths and the MLPs stay fp32.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelUnavailable
from . import arch
from .config import FILES, RETARGET_GROUPS, sizes_for

BUILDERS = {
    "appearance_feature_extractor": arch.AppearanceExtractor,
    "motion_extractor": arch.MotionExtractor,
    "warping_module": arch.WarpingModule,
    "spade_generator": arch.SpadeGenerator,
}


def build_modules(sizes: dict) -> dict[str, nn.Module]:
    """Random-weight modules at `sizes` (the real or the tiny config), in eval mode."""
    mods: dict[str, nn.Module] = {name: cls(**sizes[name]) for name, cls in BUILDERS.items()}
    retarget = sizes["stitching_retargeting_module"]
    for part in RETARGET_GROUPS:
        mods[part] = arch.RetargetMLP(**retarget[part])
    for m in mods.values():
        m.eval()
    return mods


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ModelUnavailable(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc}); "
                               "download it again", code="model_unavailable") from None


def _load_strict(module: nn.Module, state: dict, what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelUnavailable(f"{what} does not match LivePortrait's layout: {first} "
                               f"({str(exc)[len(first):].strip()[:400]})", code="checkpoint_mismatch") from None


def load_modules(folder: Path) -> dict[str, nn.Module]:
    """The networks of the model in `folder`, every checkpoint loaded with strict=True."""
    folder = Path(folder)
    missing = [rel for rel in FILES.values() if not (folder / rel).is_file()]
    if missing:
        raise ModelUnavailable(f"LivePortrait files missing in {folder}: {', '.join(missing)}",
                               code="model_unavailable")
    mods = build_modules(sizes_for(folder))
    for name in BUILDERS:
        _load_strict(mods[name], _torch_load(folder / FILES[name]), FILES[name])
    nested = _torch_load(folder / FILES["stitching_retargeting_module"])
    for part, group in RETARGET_GROUPS.items():
        if not isinstance(nested, dict) or group not in nested:
            raise ModelUnavailable(f"{FILES['stitching_retargeting_module']} has no '{group}' state dict",
                                   code="checkpoint_mismatch")
        state = {k.removeprefix("module."): v for k, v in nested[group].items()}
        _load_strict(mods[part], state, f"{FILES['stitching_retargeting_module']}[{group}]")
    return mods


# --------------------------------------------------------------------------- keypoint maths


def bins_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """66 pose bins of 3 degrees -> the expected angle in degrees (the authors' -97.5 offset)."""
    idx = torch.arange(logits.shape[1], dtype=torch.float32, device=logits.device)
    return (torch.softmax(logits.float(), dim=1) * idx).sum(1) * 3 - 97.5


def rotation(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(bs,) angles in degrees -> (bs, 3, 3), the transpose of Rz @ Ry @ Rx (keypoints are rows: x @ R)."""
    x, y, z = (a.float().reshape(-1) * (math.pi / 180) for a in (pitch, yaw, roll))
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rx = torch.stack([one, zero, zero, zero, x.cos(), -x.sin(), zero, x.sin(), x.cos()], 1).view(-1, 3, 3)
    ry = torch.stack([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], 1).view(-1, 3, 3)
    rz = torch.stack([z.cos(), -z.sin(), zero, z.sin(), z.cos(), zero, zero, zero, one], 1).view(-1, 3, 3)
    return (rz @ ry @ rx).transpose(1, 2)


def transform(kp: torch.Tensor, rot: torch.Tensor, exp: torch.Tensor, scale: torch.Tensor,
              t: torch.Tensor) -> torch.Tensor:
    """Eq. 2 of the paper: x = s * (x_c R + delta) + t, with t applied to x and y only."""
    out = (kp @ rot + exp) * scale.view(-1, 1, 1)
    out[..., :2] = out[..., :2] + t[:, None, :2]
    return out


class LivePortrait:
    """The five networks on one device, with the operations the pipeline needs."""

    def __init__(self, modules: dict[str, nn.Module], sizes: dict, device: str = "cpu", dtype: str = "float32"):
        self.m = modules
        self.sizes = sizes
        self.input_size = int(sizes["input_size"])
        self.device = device
        self.dtype = dtype

    @classmethod
    def load(cls, folder: Path, device: str = "cpu", dtype: str = "float32") -> "LivePortrait":
        return cls(load_modules(folder), sizes_for(folder), "cpu", dtype).to(device)

    def to(self, device: str) -> "LivePortrait":
        for m in self.m.values():
            m.to(device)
        self.device = str(device)
        return self

    def parameters(self):  # the offloader measures what a model weighs from these
        for m in self.m.values():
            yield from m.parameters()

    def buffers(self):
        for m in self.m.values():
            yield from m.buffers()

    def _autocast(self):
        if self.device.startswith("cuda") and self.dtype in ("float16", "bfloat16"):
            return torch.autocast("cuda", dtype=getattr(torch, self.dtype))
        return contextlib.nullcontext()

    # --- networks -----------------------------------------------------------------------
    @torch.no_grad()
    def appearance(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 3, S, S) in [0, 1] -> the 3D feature volume f_s."""
        with self._autocast():
            return self.m["appearance_feature_extractor"](image.to(self.device)).float()

    @torch.no_grad()
    def motion(self, image: torch.Tensor) -> dict:
        """(bs, 3, S, S) in [0, 1] -> canonical kp (bs, K, 3), pitch/yaw/roll in degrees (bs,),
        translation (bs, 3), expression (bs, K, 3), scale (bs, 1)."""
        with self._autocast():
            raw = self.m["motion_extractor"](image.to(self.device))
        raw = {k: v.float() for k, v in raw.items()}
        bs = raw["kp"].shape[0]
        return {"kp": raw["kp"].view(bs, -1, 3), "exp": raw["exp"].view(bs, -1, 3), "t": raw["t"],
                "scale": raw["scale"], "pitch": bins_to_degrees(raw["pitch"]),
                "yaw": bins_to_degrees(raw["yaw"]), "roll": bins_to_degrees(raw["roll"])}

    @torch.no_grad()
    def stitch(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """Nudge the driving keypoints so that the crop's border stays where the source's is."""
        bs, k = kp_source.shape[:2]
        delta = self.m["stitching"](torch.cat([kp_source.reshape(bs, -1), kp_driving.reshape(bs, -1)], 1))
        out = kp_driving + delta[:, :3 * k].view(bs, k, 3)
        out[..., :2] = out[..., :2] + delta[:, 3 * k:3 * k + 2].view(bs, 1, 2)
        return out

    @torch.no_grad()
    def retarget_eye(self, kp_source: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
        """ratios (bs, 3): source left/right eye openness, wanted openness -> keypoint offsets."""
        bs = kp_source.shape[0]
        return self.m["eye"](torch.cat([kp_source.reshape(bs, -1), ratios.float()], 1)).view(bs, -1, 3)

    @torch.no_grad()
    def retarget_lip(self, kp_source: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
        """ratios (bs, 2): source lip openness, wanted openness -> keypoint offsets."""
        bs = kp_source.shape[0]
        return self.m["lip"](torch.cat([kp_source.reshape(bs, -1), ratios.float()], 1)).view(bs, -1, 3)

    @torch.no_grad()
    def render(self, feature: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """Warp f_s from the source keypoints to the driving ones and decode: (bs, 3, 2S, 2S) in [0, 1]."""
        with self._autocast():
            warped = self.m["warping_module"](feature, kp_driving, kp_source)
            return self.m["spade_generator"](warped).float()
