"""SDXL-Lightning with diffusers, loaded the way its model card does, with Colab's RAM in mind.

The UNet is built from SDXL base's unet/config.json and filled from ByteDance's Lightning
checkpoint for the chosen step count; the text encoders, tokenizers and scheduler config come
from SDXL base (fp16 variant files), the VAE from madebyollin/sdxl-vae-fp16-fix (SDXL's own VAE
overflows in fp16 and decodes to black). The scheduler is Euler with "trailing" timestep
spacing, and guidance is off (guidance_scale=0), as the distilled checkpoints expect.

Host RAM: the model card builds the UNet on the CPU in fp32 (~10 GB) before moving it, which is
most of Colab's ~12 GB. Here the UNet is built on the meta device and each tensor is read from
the safetensors file straight onto the target device and dtype, so the peak is one tensor.
Switching step counts swaps only the UNet weights the same way; text encoders and VAE stay.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ModelUnavailable

log = logging.getLogger("enfoads.image")

BASE_KEY = "sdxl-base"
VAE_KEY = "sdxl-vae-fp16-fix"
UNET_FILES = {
    1: "sdxl_lightning_1step_unet_x0.safetensors",
    2: "sdxl_lightning_2step_unet.safetensors",
    4: "sdxl_lightning_4step_unet.safetensors",
    8: "sdxl_lightning_8step_unet.safetensors",
}


def unet_key(steps: int) -> str:
    return f"sdxl-lightning-unet-{steps}step"


def scheduler_for(steps: int, base_config):
    """Euler with trailing timesteps; the 1-step checkpoint predicts x0 ("sample") instead of noise."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(base_config, timestep_spacing="trailing",
                                              prediction_type="sample" if steps == 1 else "epsilon")


def load_unet_weights(unet, path: Path, device: str, dtype) -> None:
    """Fill `unet` (on the meta device, or already loaded) from a Lightning safetensors file,
    one tensor at a time. Key sets must match exactly: a wrong file fails here, loudly."""
    from accelerate.utils import set_module_tensor_to_device
    from safetensors import safe_open

    import torch

    target = torch.device(device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    expected = set(unet.state_dict().keys())
    # Read straight onto the target device: a GPU load never holds the UNet in host RAM.
    with safe_open(str(path), framework="pt", device=str(target)) as fh:
        keys = set(fh.keys())
        if keys != expected:
            missing, extra = sorted(expected - keys), sorted(keys - expected)
            raise ModelUnavailable(
                f"{path.name} is not an SDXL UNet checkpoint matching sdxl-base's unet/config.json: "
                f"{len(missing)} tensor(s) missing (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]})",
                code="model_mismatch")
        for name in sorted(keys):
            set_module_tensor_to_device(unet, name, target, value=fh.get_tensor(name), dtype=dtype,
                                        clear_cache=False)


def build_unet(base_dir: Path, weights: Path, device: str, dtype):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    config = UNet2DConditionModel.load_config(str(base_dir / "unet"))
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    load_unet_weights(unet, weights, device, dtype)
    # Buffers that are not in the checkpoint were created on the CPU: bring them along.
    return unet.to(device).eval()


@dataclass
class LightningPipeline:
    """The loaded pipeline and which Lightning checkpoint its UNet holds (what the offloader moves)."""

    pipe: object  # diffusers.StableDiffusionXLPipeline
    steps: int

    @property
    def components(self) -> dict:
        return self.pipe.components

    @property
    def device(self):
        return self.pipe.unet.device

    def to(self, device: str) -> "LightningPipeline":
        self.pipe.to(device)
        return self

    def use_steps(self, steps: int, weights: Path) -> None:
        if steps == self.steps:
            return
        t0 = time.perf_counter()
        load_unet_weights(self.pipe.unet, weights, str(self.device), self.pipe.unet.dtype)
        self.pipe.scheduler = scheduler_for(steps, self.pipe.scheduler.config)
        self.steps = steps
        log.info("switched the UNet to the %d-step Lightning checkpoint in %.1f s", steps, time.perf_counter() - t0)

    def generate(self, prompt: str, *, width: int, height: int, seed: int,
                 on_step: Callable[[int], None] | None = None, control=None):
        """One PIL image. The generator lives on the CPU so a seed gives the same image on any GPU.
        `control`: (ControlNet, skeleton image, scale) to follow a pose."""
        import torch

        def step_end(pipe, index, timestep, tensors):
            if on_step is not None:
                on_step(index + 1)  # may raise Cancelled: diffusers lets it propagate
            return tensors

        pipe, extra = self.pipe, {}
        if control is not None:
            from .controlnet import control_pipeline

            controlnet, image, scale = control
            pipe = control_pipeline(self.pipe, controlnet)
            extra = {"image": image, "controlnet_conditioning_scale": float(scale)}
        out = pipe(prompt=prompt, width=width, height=height, num_inference_steps=self.steps,
                   guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(seed),
                   callback_on_step_end=step_end, output_type="pil", **extra)
        return out.images[0]


def _dtype_kwarg(dtype) -> dict:
    """diffusers renamed `torch_dtype` to `dtype` (the old name warns); older releases only know
    the old one and would ignore the new one, silently loading fp32."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (present since the rename)
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def load_pipeline(base_dir: Path, vae_dir: Path, unet_weights: Path, steps: int, *, device: str,
                  dtype) -> LightningPipeline:
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    t0 = time.perf_counter()
    unet = build_unet(base_dir, unet_weights, device, dtype)
    # force_upcast=False: the fp16-fix VAE decodes in fp16 without overflowing, and upcasting
    # it to fp32 on every call would cost memory and time on the T4.
    vae = AutoencoderKL.from_pretrained(str(vae_dir), force_upcast=False, **_dtype_kwarg(dtype))
    # Real SDXL repos ship `.fp16.safetensors` variants; prefetch downloads only those.
    variant = "fp16" if any((base_dir / "text_encoder").glob("*.fp16.safetensors")) else None
    pipe = StableDiffusionXLPipeline.from_pretrained(str(base_dir), unet=unet, vae=vae, variant=variant,
                                                     low_cpu_mem_usage=True, **_dtype_kwarg(dtype))
    pipe.scheduler = scheduler_for(steps, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    log.info("loaded SDXL-Lightning (%d-step UNet, %s, %s) in %.1f s", steps, device, dtype,
             time.perf_counter() - t0)
    return LightningPipeline(pipe=pipe, steps=steps)
