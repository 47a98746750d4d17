"""Loading the restoration models with spandrel: Real-ESRGAN (x4plus, x2plus) and GFPGAN v1.4 from
their published .pth files, through a registry of the two architectures we serve.

spandrel's own GFPGAN loader fixes every size to GFPGAN's (512 style features, narrow 1): ours reads
them from the tensors, so the real file loads exactly as there and a scaled-down file with the same
key layout (the smoke build) loads too. ESRGAN sizes are read from the tensors by spandrel itself.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelUnavailable

log = logging.getLogger("enfoads.restore")

UPSCALERS = {4: "realesrgan-x4plus", 2: "realesrgan-x2plus"}
FILES = {"realesrgan-x4plus": "RealESRGAN_x4plus.pth", "realesrgan-x2plus": "RealESRGAN_x2plus.pth",
         "gfpgan-v1.4": "GFPGANv1.4.pth"}
GFPGAN = "gfpgan-v1.4"
FACE_SIZE = 512  # GFPGAN's aligned input and output


def _gfpgan_arch():
    from spandrel import ImageModelDescriptor, SizeRequirements
    from spandrel.architectures.GFPGAN import GFPGAN as GFPGANNet
    from spandrel.architectures.GFPGAN import GFPGANArch

    class SizedGFPGANArch(GFPGANArch):
        """GFPGANv1Clean with its sizes read from the state dict (spandrel's loader assumes v1.3/v1.4's)."""

        def load(self, state_dict):
            style = state_dict["stylegan_decoder.style_mlp.1.weight"].shape[0]
            narrow = state_dict["final_conv.weight"].shape[0] / 256  # channels["4"] = 512 * narrow / 2
            multiplier = round(state_dict["conv_body_first.weight"].shape[0] / (16 * narrow))
            log_size = 2 + sum(1 for k in state_dict if k.startswith("toRGB.") and k.endswith(".weight"))
            model = GFPGANNet(
                out_size=2 ** log_size, num_style_feat=style, channel_multiplier=multiplier, narrow=narrow,
                num_mlp=sum(1 for k in state_dict if k.startswith("stylegan_decoder.style_mlp.") and k.endswith(".weight")),
                different_w=state_dict["final_linear.weight"].shape[0] == (2 * log_size - 2) * style,
                sft_half=state_dict["condition_scale.0.2.weight"].shape[0] == state_dict["condition_scale.0.0.weight"].shape[0],
                input_is_latent=True)
            return ImageModelDescriptor(
                model, state_dict, architecture=self, purpose="FaceSR", tags=[], supports_half=False,
                supports_bfloat16=True, scale=1, input_channels=3, output_channels=3,
                size_requirements=SizeRequirements(minimum=2 ** log_size),
                # GFPGAN works in [-1, 1]; the descriptor's contract is [0, 1]
                call_fn=lambda net, image: (net(image * 2 - 1, return_rgb=False)[0] + 1) / 2)

    return SizedGFPGANArch()


_registry = None


def registry():
    """The architectures we load: ESRGAN (spandrel's) and GFPGAN (sized from the file)."""
    global _registry
    if _registry is None:
        from spandrel import ArchRegistry, ArchSupport
        from spandrel.architectures.ESRGAN import ESRGANArch

        reg = ArchRegistry()
        reg.add(ArchSupport.from_architecture(ESRGANArch()), ArchSupport.from_architecture(_gfpgan_arch()))
        _registry = reg
    return _registry


@dataclass
class Loaded:
    """A spandrel ImageModelDescriptor on its device, and what it is."""

    model: object
    key: str
    scale: int
    dtype: str
    multiple_of: int

    def to(self, device: str) -> "Loaded":
        self.model.to(device)
        return self


def load(path: Path, key: str, *, device: str, dtype: str) -> Loaded:
    """Load one .pth with spandrel (restricted unpickler: tensors and plain containers only)."""
    import torch
    from spandrel import ModelLoader, UnsupportedModelError

    try:
        desc = ModelLoader(registry=registry()).load_from_file(path)
    except UnsupportedModelError:
        raise ModelUnavailable(f"{path} is neither a Real-ESRGAN nor a GFPGAN checkpoint", code="model_unavailable") \
            from None
    want = "gfpgan" if key == GFPGAN else "esrgan"
    if desc.architecture.id.lower() != want:
        raise ModelUnavailable(f"{path} holds a {desc.architecture.name} model, not {want.upper()}",
                               code="model_unavailable")
    # GFPGAN has no fp16 (spandrel says so); Real-ESRGAN runs fp16 on a GPU (bf16 where native)
    if dtype == "float16" and desc.supports_half:
        desc.half()
    elif dtype == "bfloat16" and desc.supports_bfloat16:
        desc.bfloat16()
    else:
        dtype = "float32"
    desc.eval().to(torch.device(device))
    log.info("loaded %s (%s, x%d, %s) on %s", key, desc.architecture.name, desc.scale, dtype, device)
    return Loaded(model=desc, key=key, scale=desc.scale, dtype=dtype,
                  multiple_of=max(1, desc.size_requirements.multiple_of))


def tile_multiple(loaded: Loaded) -> int:
    """Tile edges on this grid keep pixel-unshuffle blocks where an untiled run has them."""
    return max(4, loaded.multiple_of * 4 // math.gcd(loaded.multiple_of, 4))
