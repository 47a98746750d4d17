"""The image service: SDXL-Lightning text-to-image through the VRAM offloader, with a cache.

One offloader entry ("sdxl-lightning") holds the whole pipeline; a request for another step
count swaps the UNet weights inside it. Job handlers receive `ctx` with `progress(fraction,
message)` (raises Cancelled when the owner cancelled) and `output_dir`.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from prefetch import manifest
from prefetch.locate import prefetch_command

from ..device import torch_dtype
from ..errors import ModelUnavailable
from ..media import encode_image
from ..model_env import ModelEnv
from ..vram import Runtime
from .cache import ImageCache
from .lightning import BASE_KEY, UNET_FILES, VAE_KEY, LightningPipeline, load_pipeline, unet_key
from .params import ImageLimits, ImageRequest, build_request
from .prompt_tokens import CLIP_MAX_TOKENS

log = logging.getLogger("enfoads.image")

MODEL_NAME = "sdxl-lightning"
JOB_KIND = "image.generate"
# PIL's default PNG level (6) takes ~300 ms for a 1024x1024 image on one CPU core, a tenth of a
# Lightning generation on the T4; level 3 takes ~90 ms for files ~10 % larger.
PNG_COMPRESS_LEVEL = 3


def model_id(steps: int) -> str:
    return f"{MODEL_NAME}-{steps}step"


class ImageService:
    def __init__(self, env: ModelEnv, limits: ImageLimits, cache: ImageCache):
        self.env = env
        self.limits = limits
        self.cache = cache
        self._load_steps = limits.default_steps  # which checkpoint the next cold load starts with
        self._tokenizer = None
        self._tokenizer_lock = threading.Lock()
        env.vram.register(MODEL_NAME, self._load, runtime=Runtime.TORCH, estimate_bytes=self._estimate(),
                          family="image")

    def _estimate(self) -> int:
        """The manifest's figure for SDXL; the smoke profile's tiny models get what their files weigh
        (fp16 on disk, fp32 on the CPU, plus working memory), not SDXL's gigabytes."""
        if self.env.profile == "smoke":
            try:
                folders = [self.env.locate(k) for k in (BASE_KEY, unet_key(self.limits.default_steps), VAE_KEY)]
                return 4 * sum(f.stat().st_size for folder in folders for f in folder.rglob("*") if f.is_file())
            except ModelUnavailable:
                pass
        return sum(manifest.vram_estimate(k, self.env.dtype) for k in (BASE_KEY, unet_key(4), VAE_KEY))

    # --- models on disk ---------------------------------------------------------------------
    def _unet_file(self, steps: int) -> Path:
        folder = self.env.locate(unet_key(steps))
        path = folder / UNET_FILES[steps]
        if not path.is_file():
            command = prefetch_command(manifest.get(unet_key(steps)), profile=self.env.profile,
                                       models_dir=self.env.models_dir)
            raise ModelUnavailable(f"model '{unet_key(steps)}' has no {UNET_FILES[steps]} in {folder}; run "
                                   f"`{command}`", code="model_unavailable")
        return path

    def check_available(self, steps: int) -> None:
        """ModelUnavailable (503, naming the prefetch command) unless every file `steps` needs is here."""
        self.env.locate(BASE_KEY)
        self.env.locate(VAE_KEY)
        self._unet_file(steps)

    def available(self, steps: int) -> bool:
        try:
            self.check_available(steps)
        except ModelUnavailable:
            return False
        return True

    def _load(self, device: str) -> LightningPipeline:
        steps = self._load_steps
        return load_pipeline(self.env.locate(BASE_KEY), self.env.locate(VAE_KEY), self._unet_file(steps), steps,
                             device=device, dtype=torch_dtype(self.env.dtype))

    # --- requests -------------------------------------------------------------------------------
    def request(self, **kwargs) -> ImageRequest:
        """A checked request (InvalidInput naming the field), with a drawn seed when none was given."""
        return build_request(self.limits, **kwargs)

    def tokenizer(self):
        with self._tokenizer_lock:
            if self._tokenizer is None:
                from transformers import CLIPTokenizer

                self._tokenizer = CLIPTokenizer.from_pretrained(str(self.env.locate(BASE_KEY) / "tokenizer"))
            return self._tokenizer

    def prompt_warnings(self, prompt: str) -> list[str]:
        ids = self.tokenizer()(prompt, truncation=False, verbose=False).input_ids
        if len(ids) <= CLIP_MAX_TOKENS:
            return []
        dropped = self.tokenizer().decode(ids[CLIP_MAX_TOKENS - 1:-1]).strip()
        return [f"prompt truncated: it is {len(ids)} CLIP tokens and SDXL reads the first {CLIP_MAX_TOKENS}; "
                f"ignored: {dropped[:200]!r}"]

    def _cache_key(self, req: ImageRequest, seed: int) -> str:
        weights = self._unet_file(req.steps).stat()
        return ImageCache.key({
            "v": 1,
            "models": [manifest.get(k).revision for k in (BASE_KEY, unet_key(req.steps), VAE_KEY)],
            # a rebuilt or replaced checkpoint at the same path must not serve old images
            "unet_file": [UNET_FILES[req.steps], weights.st_size, weights.st_mtime_ns],
            "profile": self.env.profile,
            "device": self.env.device.split(":")[0],
            "dtype": self.env.dtype,
            "prompt": req.prompt,
            "width": req.width,
            "height": req.height,
            "steps": req.steps,
            "seed": seed,
            "format": req.output_format,
        })

    def render(self, req: ImageRequest, seed: int, on_step=None):
        """One image through the offloader (OOM: evict idle models, retry once)."""
        def run(lp: LightningPipeline):
            lp.use_steps(req.steps, self._unet_file(req.steps))
            return lp.generate(req.prompt, width=req.width, height=req.height, seed=seed, on_step=on_step)

        self._load_steps = req.steps
        return self.env.vram.run(MODEL_NAME, run)

    def run_job(self, params: dict, ctx) -> dict:
        """Job handler: every image of the request, from the cache when it has it."""
        req = ImageRequest.from_params(params)
        self.check_available(req.steps)
        warnings = [*req.warnings, *self.prompt_warnings(req.prompt)]
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        per_image = req.steps + 1  # denoising steps, then the VAE decode
        total = req.n * per_image
        images = []
        for i, seed in enumerate(req.seeds()):
            label = f"image {i + 1}/{req.n}"
            key = self._cache_key(req, seed)
            data = self.cache.get(key, req.output_format)
            cached = data is not None
            if data is None:
                def on_step(step: int, i=i, label=label) -> None:
                    ctx.progress((i * per_image + step) / total, f"{label}: step {step}/{req.steps}")

                image = self.render(req, seed, on_step)
                data = encode_image(image, req.output_format, png_compress_level=PNG_COMPRESS_LEVEL)
                self.cache.put(key, req.output_format, data)
            name = f"image-{i + 1}.{req.output_format}"
            (ctx.output_dir / name).write_bytes(data)
            ctx.progress((i + 1) * per_image / total, f"{label} {'from the cache' if cached else 'done'}")
            images.append({"file": name, "seed": seed, "cached": cached, "bytes": len(data)})
        return {
            "model": model_id(req.steps),
            "prompt": req.prompt,
            "width": req.width,
            "height": req.height,
            "steps": req.steps,
            "guidance_scale": 0.0,
            "output_format": req.output_format,
            "images": images,
            "warnings": warnings,
        }
