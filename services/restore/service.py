"""Upscaling (Real-ESRGAN x2/x4, tiled) and face restoration (GFPGAN v1.4 on buffalo_l's landmarks),
every model through the VRAM offloader."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from prefetch.locate import prefetch_command
from prefetch.manifest import get as manifest_get
from prefetch.manifest import vram_estimate

from ..errors import ModelUnavailable, Unprocessable
from ..face.models import PACK
from ..face.service import FaceService, analyze, encode_bgr, pick_faces
from ..model_env import ModelEnv
from ..vram import Runtime
from . import faces as face_ops
from . import models, params, tiles
from .models import GFPGAN, UPSCALERS

Progress = Callable[[float, str], None]
SCALES = params.SCALES
DEFAULT_FIDELITY = 0.2  # a fifth of the original face kept: GFPGAN's detail without losing the likeness


@dataclass(frozen=True)
class RestoreConfig:
    tile: int = 0  # input pixels per tile side; 0: from the device's free memory
    tile_overlap: int = 32
    cpu_tile: int = 256  # the automatic tile on the CPU (host RAM is not measured)
    max_output_pixels: int = 50_000_000


class RestoreService:
    def __init__(self, env: ModelEnv, cfg: RestoreConfig, face: FaceService):
        self.env = env
        self.cfg = cfg
        self.face = face

    # --- models -------------------------------------------------------------------------
    def dtype(self, key: str) -> str:
        """The dtype policy's for Real-ESRGAN; fp32 for GFPGAN, which has no fp16 mode."""
        return "float32" if key == GFPGAN else self.env.dtype

    def register(self) -> None:
        for key in (*UPSCALERS.values(), GFPGAN):
            self.env.vram.register(key, self._loader(key), runtime=Runtime.TORCH, family=manifest_get(key).family,
                                   estimate_bytes=vram_estimate(key, self.dtype(key)))

    def _loader(self, key: str):
        def load(device: str) -> models.Loaded:
            self.check(key)
            return models.load(self.env.locate(key) / models.FILES[key], key, device=device, dtype=self.dtype(key))

        return load

    def check(self, key: str) -> None:
        """ModelUnavailable (503 naming the prefetch command) unless the model's file is here."""
        folder = self.env.locate(key)
        if not (folder / models.FILES[key]).is_file():
            command = prefetch_command(key, profile=self.env.profile, models_dir=self.env.models_dir)
            raise ModelUnavailable(f"model '{key}' has no {models.FILES[key]} in {folder}; run `{command}`",
                                   code="model_unavailable")

    def available(self, key: str) -> bool:
        try:
            self.check(key)
        except ModelUnavailable:
            return False
        return True

    # --- pieces -------------------------------------------------------------------------
    def read(self, path: Path, param: str = "image") -> np.ndarray:
        return self.face.read(path, param)

    def detect(self, img: np.ndarray) -> list:
        return self.env.vram.run(PACK, lambda pack: analyze(pack, img))

    def tile_for(self, loaded: models.Loaded) -> int:
        multiple = models.tile_multiple(loaded)
        if self.cfg.tile:
            return max(multiple, self.cfg.tile - self.cfg.tile % multiple)
        device = str(loaded.model.device)
        if device.startswith("cuda"):
            import torch

            free, _ = torch.cuda.mem_get_info(torch.device(device))
            return tiles.auto_tile(free, loaded.scale, 2 if loaded.dtype != "float32" else 4, multiple=multiple)
        return max(multiple, self.cfg.cpu_tile - self.cfg.cpu_tile % multiple)

    def upscale_array(self, key: str, img: np.ndarray, *,
                      progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """`img` (uint8, H x W x 3) through Real-ESRGAN `key` in tiles; the model is taken for each tile
        (a resident acquire costs microseconds), so between tiles a paused batch job holds none."""
        vram = self.env.vram
        loaded = vram.run(key, lambda m: m)  # loads it now: scale, grid and tile come from the model
        return tiles.upscale(lambda crop: vram.run(key, lambda m: tiles.run_model(m.model, crop)), img,
                             scale=loaded.scale, tile=vram.run(key, self.tile_for), overlap=self.cfg.tile_overlap,
                             multiple=models.tile_multiple(loaded), progress=progress)

    def restore_landmarks(self, img: np.ndarray, landmarks: list, *, fidelity: float,
                          progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Restore the faces at `landmarks` (5 points each) in a BGR image; GFPGAN is taken for each face."""
        if not landmarks:
            return img
        vram = self.env.vram
        return face_ops.restore(lambda crop: vram.run(GFPGAN, lambda m: face_ops.run_model(m.model, crop)), img,
                                landmarks, fidelity=fidelity, progress=progress)

    # --- requests -----------------------------------------------------------------------
    def check_upscale(self, scale: int, face_enhance: bool) -> None:
        self.check(UPSCALERS[params.check_scale(scale)])
        if face_enhance:
            self.check(GFPGAN)

    def upscale(self, image: Path, out: Path, *, scale: int = 4, face_enhance: bool = False,
                fidelity: float = DEFAULT_FIDELITY, fmt: str = "png", quality: int = 92,
                progress: Progress | None = None) -> dict:
        self.check_upscale(scale, face_enhance)
        fidelity = params.check_fidelity(fidelity)
        img = self.read(image)
        height, width = img.shape[:2]
        params.check_output_size(width, height, scale, self.cfg.max_output_pixels)
        report = progress or (lambda fraction, message: None)
        landmarks = []
        if face_enhance:
            faces = self.detect(img)
            landmarks = [np.asarray(f.kps, np.float32) * scale for f in faces]
        share = 0.9 if landmarks else 1.0

        def tile_done(done: int, total: int) -> None:
            report(share * done / total, f"tile {done}/{total}")

        big = self.upscale_array(UPSCALERS[scale], img, progress=tile_done)
        if landmarks:
            big = self.restore_landmarks(big, landmarks, fidelity=fidelity, progress=lambda done, total: report(
                share + (1 - share) * done / total, f"face {done}/{total}"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(encode_bgr(big, fmt, quality))
        return {"file": out.name, "format": fmt, "scale": scale, "width": big.shape[1], "height": big.shape[0],
                "input_width": width, "input_height": height, "model": UPSCALERS[scale],
                "faces_restored": len(landmarks)}

    def restore_faces(self, image: Path, out: Path, *, face_indices: list[int] | None = None,
                      fidelity: float = DEFAULT_FIDELITY, fmt: str = "png", quality: int = 92,
                      progress: Progress | None = None) -> dict:
        self.check(GFPGAN)
        fidelity = params.check_fidelity(fidelity)
        img = self.read(image)
        faces = self.detect(img)
        if not faces:
            raise Unprocessable("no face found in the image", param="image", code="no_face")
        chosen = pick_faces(faces, face_indices, what="image", param="face_indices")
        report = progress or (lambda fraction, message: None)
        img = self.restore_landmarks(img, [faces[i].kps for i in chosen], fidelity=fidelity,
                                     progress=lambda done, total: report(done / total, f"face {done}/{total}"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(encode_bgr(img, fmt, quality))
        return {"file": out.name, "format": fmt, "width": img.shape[1], "height": img.shape[0],
                "faces_found": len(faces), "faces_restored": chosen,
                "boxes": [[round(float(v), 2) for v in faces[i].bbox] for i in chosen], "fidelity": fidelity}
