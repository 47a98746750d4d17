"""Tiny random-weight Real-ESRGAN and GFPGAN checkpoints in the real on-disk format.

Built with spandrel's own architecture classes at small sizes, saved as the published files are:
a `.pth` holding `{"params_ema": state_dict}` with the real key names (Real-ESRGAN's new-arch
names: conv_first, body.N.rdbM.convK, conv_body, conv_up1/2, conv_hr, conv_last; GFPGANv1Clean's
names), so the real loading path (spandrel's detection, unwrapping, size inference) runs. The image
family's smoke build writes the upscalers, the face family's GFPGAN.
"""
from __future__ import annotations

import re
from pathlib import Path

from .models import FILES, GFPGAN, UPSCALERS

FEATURES = 8  # real: 64
BLOCKS = 1  # real: 23
STYLE = 32  # real: 512
NARROW = 1 / 16  # real: 1


def new_arch_names(state: dict) -> dict:
    """spandrel's ESRGAN module keys (old arch: model.N...) -> the names Real-ESRGAN's files use."""
    last = max(int(k.split(".")[1]) for k in state if k.startswith("model."))
    fixed = {"model.0.": "conv_first.", "model.3.": "conv_up1.", "model.6.": "conv_up2.",
             f"model.{last - 2}.": "conv_hr.", f"model.{last}.": "conv_last."}
    out = {}
    for key, value in state.items():
        m = re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$", key)
        if m:
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
            continue
        m = re.match(r"model\.1\.sub\.(\d+)\.(weight|bias)$", key)
        if m:
            out[f"conv_body.{m[2]}"] = value
            continue
        prefix = next(p for p in fixed if key.startswith(p))
        out[fixed[prefix] + key[len(prefix):]] = value
    return out


def _save(path: Path, state: dict) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": {k: v.detach().clone().contiguous() for k, v in state.items()}}, path)


def build_upscaler(path: Path, scale: int, seed: int) -> None:
    """Real-ESRGAN's RRDBNet: x4 as is; x2 is the same network behind a 2x pixel-unshuffle (12 inputs)."""
    import torch
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    net = ESRGAN(in_nc=3 if scale == 4 else 12, out_nc=3, num_filters=FEATURES, num_blocks=BLOCKS, scale=4,
                 shuffle_factor=None if scale == 4 else 2)
    _save(path, new_arch_names(net.state_dict()))


def build_gfpgan(path: Path, seed: int = 11) -> None:
    import torch
    from spandrel.architectures.GFPGAN import GFPGAN as GFPGANNet

    torch.manual_seed(seed)
    net = GFPGANNet(out_size=512, num_style_feat=STYLE, channel_multiplier=2, narrow=NARROW, sft_half=True,
                    different_w=True, input_is_latent=True, num_mlp=8)
    _save(path, net.state_dict())


def build_upscalers(models_dir: Path) -> None:
    for scale, key in UPSCALERS.items():
        build_upscaler(Path(models_dir) / key / FILES[key], scale, seed=20 + scale)


def build_face_restorer(models_dir: Path) -> None:
    build_gfpgan(Path(models_dir) / GFPGAN / FILES[GFPGAN])
