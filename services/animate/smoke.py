"""A tiny random-weight LivePortrait in the published file layout, for CI and tests.

Writes `<models_dir>/liveportrait/liveportrait/base_models/*.pth` (plain state dicts, as
published) and `.../retargeting_models/stitching_retargeting_module.pth` (three nested state
dicts under `retarget_shoulder` / `retarget_mouth` / `retarget_eye`, keys prefixed `module.` as
the DDP-saved original), plus `enfoads_sizes.json` with the scaled-down sizes. The real loader
(`model.load_modules`, strict=True) reads it like the real download.
"""
from __future__ import annotations

import json
from pathlib import Path

from prefetch.manifest import smoke_builder

from .config import FILES, MODEL_KEY, RETARGET_GROUPS, SIZES_FILE, TINY


def write_checkpoint(folder: Path, sizes: dict, seed: int = 0) -> None:
    """Random modules at `sizes`, saved as the published files in `folder`."""
    import torch

    from .model import BUILDERS, build_modules

    torch.manual_seed(seed)
    mods = build_modules(sizes)
    with torch.no_grad():  # random BatchNorm statistics, so eval-mode outputs are not all alike
        for m in mods.values():
            for sub in m.modules():
                if isinstance(sub, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                    sub.running_mean.normal_(0, 0.1)
                    sub.running_var.uniform_(0.5, 1.5)
    for name in BUILDERS:
        path = folder / FILES[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(mods[name].state_dict(), path)
    nested = {group: {f"module.{k}": v for k, v in mods[part].state_dict().items()}
              for part, group in RETARGET_GROUPS.items()}
    path = folder / FILES["stitching_retargeting_module"]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(nested, path)
    (folder / SIZES_FILE).write_text(json.dumps(sizes, indent=1))


@smoke_builder("animate")
def build(models_dir: Path) -> None:
    write_checkpoint(Path(models_dir) / MODEL_KEY, TINY)
