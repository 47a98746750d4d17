"""LivePortrait's sizes and files: the published human model's (src/config/models.yaml of
KwaiVGI/LivePortrait) and the tiny CI build's, which keeps every key name and scales channels.

A model folder holds the published layout (`liveportrait/base_models/*.pth`,
`liveportrait/retargeting_models/stitching_retargeting_module.pth`); a tiny build adds
`enfoads_sizes.json` with its sizes. Without that file the real sizes apply.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

MODEL_KEY = "liveportrait"
SIZES_FILE = "enfoads_sizes.json"

BASE = "liveportrait/base_models"
FILES = {
    "appearance_feature_extractor": f"{BASE}/appearance_feature_extractor.pth",
    "motion_extractor": f"{BASE}/motion_extractor.pth",
    "warping_module": f"{BASE}/warping_module.pth",
    "spade_generator": f"{BASE}/spade_generator.pth",
    "stitching_retargeting_module": "liveportrait/retargeting_models/stitching_retargeting_module.pth",
}
# The retargeting file nests three state dicts (saved from DDP: keys start with `module.`).
RETARGET_GROUPS = {"stitching": "retarget_shoulder", "lip": "retarget_mouth", "eye": "retarget_eye"}

NUM_KP = 21

REAL: dict = {
    "input_size": 256,  # the crop the networks see; G renders twice that
    "appearance_feature_extractor": {"image_channel": 3, "block_expansion": 64, "num_down_blocks": 2,
                                     "max_features": 512, "reshape_channel": 32, "reshape_depth": 16,
                                     "num_resblocks": 6},
    "motion_extractor": {"num_kp": NUM_KP, "depths": [3, 3, 9, 3], "dims": [96, 192, 384, 768]},
    "warping_module": {"num_kp": NUM_KP, "block_expansion": 64, "max_features": 512, "num_down_blocks": 2,
                       "reshape_channel": 32, "estimate_occlusion_map": True,
                       "dense_motion_params": {"block_expansion": 32, "max_features": 1024, "num_blocks": 5,
                                               "reshape_depth": 16, "compress": 4}},
    "spade_generator": {"upscale": 2, "block_expansion": 64, "max_features": 512, "num_down_blocks": 2,
                        "out_channels": 64, "spade_hidden": 128},
    "stitching_retargeting_module": {
        "stitching": {"input_size": 2 * 3 * NUM_KP, "hidden_sizes": [128, 128, 64], "output_size": 3 * NUM_KP + 2},
        "lip": {"input_size": 3 * NUM_KP + 2, "hidden_sizes": [128, 128, 64], "output_size": 3 * NUM_KP},
        "eye": {"input_size": 3 * NUM_KP + 3, "hidden_sizes": [256, 256, 128, 128, 64], "output_size": 3 * NUM_KP},
    },
}

# Scaled-down channels, same keys: max_features = reshape_channel * reshape_depth must hold, and
# the warped volume (block_expansion * 2**num_down_blocks) must match G's input.
TINY: dict = {
    "input_size": 32,
    "appearance_feature_extractor": {"image_channel": 3, "block_expansion": 4, "num_down_blocks": 2,
                                     "max_features": 16, "reshape_channel": 4, "reshape_depth": 4,
                                     "num_resblocks": 1},
    "motion_extractor": {"num_kp": NUM_KP, "depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]},
    "warping_module": {"num_kp": NUM_KP, "block_expansion": 4, "max_features": 16, "num_down_blocks": 2,
                       "reshape_channel": 4, "estimate_occlusion_map": True,
                       "dense_motion_params": {"block_expansion": 4, "max_features": 8, "num_blocks": 2,
                                               "reshape_depth": 4, "compress": 1}},
    "spade_generator": {"upscale": 2, "block_expansion": 4, "max_features": 16, "num_down_blocks": 2,
                        "out_channels": 4, "spade_hidden": 4},
    "stitching_retargeting_module": {
        "stitching": {"input_size": 2 * 3 * NUM_KP, "hidden_sizes": [16, 16], "output_size": 3 * NUM_KP + 2},
        "lip": {"input_size": 3 * NUM_KP + 2, "hidden_sizes": [16, 16], "output_size": 3 * NUM_KP},
        "eye": {"input_size": 3 * NUM_KP + 3, "hidden_sizes": [16, 16], "output_size": 3 * NUM_KP},
    },
}


def sizes_for(folder: Path) -> dict:
    """The sizes of the model in `folder`: its `enfoads_sizes.json` (a tiny build), else the real ones."""
    path = Path(folder) / SIZES_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return copy.deepcopy(REAL)
