"""The image service: SDXL-Lightning text-to-image through the VRAM offloader, with a cache.

One offloader entry ("sdxl-lightning") holds the whole pipeline; a request for another step
count swaps the UNet weights inside it. Job handlers receive `ctx` with `progress(fraction,
message)` (raises Cancelled when the owner cancelled) and `output_dir`.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from prefetch import manifest
from prefetch.locate import prefetch_command

from ..device import torch_dtype
from ..errors import ModelUnavailable
from ..media import encode_image, load_image
from ..model_env import ModelEnv
from ..vram import Runtime
from .cache import ImageCache
from .controlnet import CONTROLNET_KEY, load_controlnet
from .lightning import BASE_KEY, UNET_FILES, VAE_KEY, LightningPipeline, load_pipeline, unet_key
from .params import ImageLimits, ImageRequest, build_request
from .prompt_tokens import CLIP_MAX_TOKENS

log = logging.getLogger("enfoads.image")

MODEL_NAME = "sdxl-lightning"
JOB_KIND = "image.generate"
# PIL's default PNG level (6) takes ~300 ms for a 1024x1024 image on one CPU core, a tenth of a
# Lightning generation on the T4; level 3 takes ~90 ms for files ~10 % larger.
PNG_COMPRESS_LEVEL = 3


POSE_GROUP = "sdxl-controlnet"  # with several GPUs, the ControlNet goes where the SDXL pipeline is
POSE_FILE = "pose.png"


def model_id(steps: int) -> str:
    return f"{MODEL_NAME}-{steps}step"


@dataclass(frozen=True)
class Control:
    """The skeleton a request's images follow, and what identifies it in the cache."""

    image: object  # PIL RGB image
    digest: str
    people: int | None  # people DWPose found (pose_reference), None for a given skeleton


class ImageService:
    def __init__(self, env: ModelEnv, limits: ImageLimits, cache: ImageCache, pose=None):
        self.env = env
        self.limits = limits
        self.cache = cache
        self.pose = pose  # services.pose.PoseService: reads pose_reference photos (None: no pose support)
        self._load_steps = limits.default_steps  # which checkpoint the next cold load starts with
        self._tokenizer = None
        self._tokenizer_lock = threading.Lock()
        env.vram.register(MODEL_NAME, self._load, runtime=Runtime.TORCH, estimate_bytes=self._estimate(),
                          family="image")
        env.vram.register(CONTROLNET_KEY, self._load_controlnet, runtime=Runtime.TORCH,
                          estimate_bytes=self._estimate(CONTROLNET_KEY), family="image")

    def _estimate(self, *keys: str) -> int:
        """The manifest's figure for SDXL (or `keys`); the smoke profile's tiny models get what their
        files weigh (fp16 on disk, fp32 on the CPU, plus working memory), not SDXL's gigabytes."""
        if self.env.profile == "smoke":
            try:
                folders = [self.env.locate(k) for k in keys or (BASE_KEY, unet_key(self.limits.default_steps),
                                                                VAE_KEY)]
                return 4 * sum(f.stat().st_size for folder in folders for f in folder.rglob("*") if f.is_file())
            except ModelUnavailable:
                pass
        return sum(manifest.vram_estimate(k, self.env.dtype) for k in keys or (BASE_KEY, unet_key(4), VAE_KEY))

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

    def check_available(self, steps: int, pose_source: str = "") -> None:
        """ModelUnavailable (503, naming the prefetch command) unless every file the request needs is here."""
        self.env.locate(BASE_KEY)
        self.env.locate(VAE_KEY)
        self._unet_file(steps)
        if pose_source:
            self.env.locate(CONTROLNET_KEY)
        if pose_source == "pose_reference":
            if self.pose is None:
                raise ModelUnavailable("pose_reference needs the pose service, which this server did not start",
                                       code="model_unavailable")
            self.pose.check_available()

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

    def _load_controlnet(self, device: str):
        return load_controlnet(self.env.locate(CONTROLNET_KEY), device=device, dtype=torch_dtype(self.env.dtype))

    def controlnet_available(self) -> bool:
        return self.env.present(CONTROLNET_KEY)

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

    def _cache_key(self, req: ImageRequest, seed: int, control: Control | None = None) -> str:
        weights = self._unet_file(req.steps).stat()
        weights_file = self.env.locate(CONTROLNET_KEY) / "diffusion_pytorch_model.safetensors" if control else None
        pose = {} if control is None else {  # absent without a pose: earlier cache entries stay valid
            "pose": control.digest, "control_scale": req.control_scale,
            "controlnet": [manifest.get(CONTROLNET_KEY).revision, *self._file_identity(weights_file)]}
        return ImageCache.key({
            **pose,
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

    @staticmethod
    def _file_identity(path: Path) -> list:
        stat = path.stat() if path.is_file() else None
        return [path.name, stat.st_size if stat else None, stat.st_mtime_ns if stat else None]

    def control(self, req: ImageRequest, ctx) -> Control | None:
        """The skeleton to follow: the given pose_image, or the one DWPose draws from pose_reference
        (422 when it finds nobody). Written to the job's folder as pose.png."""
        if not req.pose_source:
            return None
        from PIL import Image

        path = Path(req.pose_file)
        people = None
        if req.pose_source == "pose_reference":
            ctx.progress(0.0, "reading the pose from pose_reference")
            result = self.pose.estimate(self.pose.read(path, "pose_reference"), require_person="pose_reference")
            image, people = Image.fromarray(result.skeleton), len(result.people)
        else:
            image = load_image(path.read_bytes(), max_pixels=self.limits.max_pose_pixels, param="pose_image")
        data = encode_image(image, "png", png_compress_level=PNG_COMPRESS_LEVEL)
        (ctx.output_dir / POSE_FILE).write_bytes(data)
        digest = hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()
        return Control(image=image, digest=digest, people=people)

    def render(self, req: ImageRequest, seed: int, on_step=None, control: Control | None = None):
        """One image through the offloader (OOM: evict idle models, retry once)."""
        def run(lp: LightningPipeline):
            lp.use_steps(req.steps, self._unet_file(req.steps))
            if control is None:
                return lp.generate(req.prompt, width=req.width, height=req.height, seed=seed, on_step=on_step)
            with self.env.vram.acquire(CONTROLNET_KEY) as controlnet:
                return lp.generate(req.prompt, width=req.width, height=req.height, seed=seed, on_step=on_step,
                                   control=(controlnet, control.image, req.control_scale))

        self._load_steps = req.steps
        if control is None:
            return self.env.vram.run(MODEL_NAME, run)
        vram = self.env.vram
        vram.pin(MODEL_NAME, POSE_GROUP)
        vram.pin(CONTROLNET_KEY, POSE_GROUP)
        try:
            return vram.run(MODEL_NAME, run)
        finally:
            vram.unpin(CONTROLNET_KEY, POSE_GROUP)
            vram.unpin(MODEL_NAME, POSE_GROUP)

    def run_job(self, params: dict, ctx) -> dict:
        """Job handler: every image of the request, from the cache when it has it."""
        req = ImageRequest.from_params(params)
        self.check_available(req.steps, req.pose_source)
        warnings = [*req.warnings, *self.prompt_warnings(req.prompt)]
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        control = self.control(req, ctx)
        per_image = req.steps + 1  # denoising steps, then the VAE decode
        total = req.n * per_image
        images = []
        for i, seed in enumerate(req.seeds()):
            label = f"image {i + 1}/{req.n}"
            key = self._cache_key(req, seed, control)
            data = self.cache.get(key, req.output_format)
            cached = data is not None
            if data is None:
                def on_step(step: int, i=i, label=label) -> None:
                    ctx.progress((i * per_image + step) / total, f"{label}: step {step}/{req.steps}")

                image = self.render(req, seed, on_step, control)
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
            "pose": None if control is None else {
                "source": req.pose_source, "file": POSE_FILE, "people": control.people,
                "control_scale": req.control_scale, "controlnet": CONTROLNET_KEY},
            "warnings": warnings,
        }
