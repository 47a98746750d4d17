"""Pose control for SDXL-Lightning: xinsir's OpenPose ControlNet, run by diffusers'
StableDiffusionXLControlNetPipeline assembled around the SDXL components already loaded (text
encoders, tokenizers, Lightning UNet, fp16-fix VAE, scheduler): SDXL is never loaded twice, and the
ControlNet is its own offloader entry (~2.5 GB in fp16), loaded only when a request has a pose.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger("enfoads.image")

CONTROLNET_KEY = "controlnet-openpose-sdxl"  # manifest key and offloader name


def load_controlnet(folder: Path, *, device: str, dtype):
    """The ControlNet on `device` in `dtype`; the fp32 file is read tensor by tensor (low CPU memory)."""
    from diffusers import ControlNetModel

    from .lightning import _dtype_kwarg

    t0 = time.perf_counter()
    model = ControlNetModel.from_pretrained(str(folder), low_cpu_mem_usage=True, **_dtype_kwarg(dtype))
    model.to(device).eval()
    log.info("loaded the OpenPose ControlNet (%s, %s) in %.1f s", device, dtype, time.perf_counter() - t0)
    return model


def control_pipeline(pipe, controlnet):
    """A StableDiffusionXLControlNetPipeline sharing every module of the loaded SDXL pipeline `pipe`
    (built per call: the Lightning scheduler in `pipe` changes with the step count)."""
    from diffusers import StableDiffusionXLControlNetPipeline

    control = StableDiffusionXLControlNetPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2, tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2, unet=pipe.unet, controlnet=controlnet, scheduler=pipe.scheduler,
        force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt,
        add_watermarker=getattr(pipe, "watermark", None) is not None)
    control.set_progress_bar_config(disable=True)
    return control
