"""Face analysis and face swap on images: detection, recognition, landmarks, gender/age with the
buffalo_l pack, and inswapper_128 with paste-back. Both models go through the VRAM offloader."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterable

import numpy as np

from prefetch.manifest import vram_estimate

from .. import media
from ..errors import InvalidInput, Unprocessable
from ..model_env import ModelEnv
from ..vram import Runtime
from . import models
from .models import INSWAPPER, PACK, FaceConfig

log = logging.getLogger("enfoads.face")

# A swap needs the source face's embedding; the target's faces need only the detector's keypoints.
SWAP_SOURCE_TASKS = frozenset({"recognition"})


def read_image(path: Path, *, max_pixels: int, param: str) -> np.ndarray:
    """An image file as a BGR uint8 array (insightface's convention), upright per its EXIF tag."""
    import cv2
    from PIL import ImageOps

    img = media.load_image(Path(path).read_bytes(), max_pixels=max_pixels, param=param)
    if img.getexif().get(0x0112, 1) != 1:  # phone photos: pixels stored sideways, an EXIF tag says so
        img = ImageOps.exif_transpose(img)
    return cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR)


# OpenCV encodes straight from insightface's BGR arrays, and its default PNG compression (level 1)
# is several times faster than Pillow's (6), for files ~10% larger.
def encode_bgr(img: np.ndarray, fmt: str, quality: int = 92) -> bytes:
    import cv2

    params = {"png": [], "jpeg": [cv2.IMWRITE_JPEG_QUALITY, int(quality)],
              "webp": [cv2.IMWRITE_WEBP_QUALITY, int(quality)]}
    if fmt not in params:
        raise InvalidInput(f"unsupported image format {fmt!r}; use one of {', '.join(params)}", param="output_format")
    ok, buf = cv2.imencode(f".{fmt}", img, params[fmt])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {img.shape} image as {fmt}")
    return buf.tobytes()


def analyze(pack, img: np.ndarray, tasks: Iterable[str] = ()) -> list:
    """FaceAnalysis.get, but running only the models in `tasks` after the detector, with the
    faces sorted left to right (then top to bottom) so that indexes are stable and explainable."""
    from insightface.app.common import Face

    app = pack.app
    bboxes, kpss = app.det_model.detect(img, max_num=0, metric="default")
    faces = [Face(bbox=bboxes[i, :4], kps=None if kpss is None else kpss[i], det_score=bboxes[i, 4])
             for i in range(bboxes.shape[0])]
    faces.sort(key=lambda f: (float(f.bbox[0]), float(f.bbox[1])))
    wanted = set(tasks)
    for face in faces:
        for task, model in app.models.items():
            if task != "detection" and task in wanted:
                model.get(img, face)
    return faces


def face_json(index: int, face, *, embedding: bool = False, landmarks: bool = False) -> dict:
    out = {
        "index": index,
        "box": [round(float(v), 2) for v in face.bbox],
        "score": round(float(face.det_score), 4),
        "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in face.kps],
        "age": int(face.age) if face.age is not None else None,
        "gender": None if face.gender is None else ("male" if int(face.gender) == 1 else "female"),
    }
    if landmarks:
        for key in ("landmark_2d_106", "landmark_3d_68"):
            if face.get(key) is not None:
                out[key] = np.round(np.asarray(face[key], float), 2).tolist()
        if face.get("pose") is not None:
            out["pose"] = dict(zip(("pitch", "yaw", "roll"), (round(float(v), 2) for v in face.pose)))
    if embedding and face.embedding is not None:
        out["embedding"] = [round(float(v), 6) for v in face.normed_embedding]
    return out


def pick_faces(faces: list, indices: list[int] | None, *, what: str, param: str) -> list[int]:
    """Indexes of `faces` to use; 400 naming how many faces there are when one is out of range."""
    if indices is None:
        return list(range(len(faces)))
    bad = [i for i in indices if i < 0 or i >= len(faces)]
    if bad:
        n = len(faces)
        raise InvalidInput(f"face index {bad[0]} is out of range: the {what} has {n} face{'s' if n != 1 else ''}"
                           f" (indices 0-{n - 1}, left to right)", param=param, code="face_index_out_of_range")
    return sorted(set(indices))


class FaceService:
    def __init__(self, env: ModelEnv, cfg: FaceConfig):
        self.env = env
        self.cfg = cfg
        # Filled in place when a model loads (the web layer shows these dicts in /diagnostics).
        self.runtime: dict[str, dict] = {PACK: {"loaded": False}, INSWAPPER: {"loaded": False}}
        # services.restore.RestoreService, set when the restore family is installed: `restore` on swaps
        self.restorer = None

    # --- models -------------------------------------------------------------------------
    def register(self) -> None:
        vram = self.env.vram
        vram.register(PACK, self._load_pack, runtime=Runtime.ONNX, family="face",
                      estimate_bytes=vram_estimate(PACK, "fp32"))
        vram.register(INSWAPPER, self._load_swapper, runtime=Runtime.ONNX, family="face",
                      estimate_bytes=vram_estimate(INSWAPPER, "fp32"))

    def _note(self, key: str, runtime: dict) -> None:
        self.runtime[key].clear()
        self.runtime[key].update(loaded=True, **runtime)

    def _on(self, device: str) -> FaceConfig:
        """The config for the device the offloader chose (the CUDA provider's device_id follows it)."""
        return self.cfg if device == self.cfg.device else dataclasses.replace(self.cfg, device=device)

    def _load_pack(self, device: str):
        pack = models.load_pack(self.env.locate(PACK), self._on(device))
        self._note(PACK, pack.runtime)
        return pack

    def _load_swapper(self, device: str):
        swapper = models.load_swapper(self._on(device))
        self._note(INSWAPPER, swapper.runtime)
        return swapper

    def pack_available(self) -> bool:
        try:
            models.check_pack(self.env.locate(PACK))
        except Exception:
            return False
        return True

    def swapper_available(self) -> bool:
        try:
            models.find_inswapper(self.cfg)
        except Exception:
            return False
        return True

    def providers(self, *keys: str) -> dict:
        return {k: self.runtime[k].get("providers") for k in keys}

    def warnings(self, *keys: str) -> list[str]:
        return [w for k in keys if (w := self.runtime[k].get("warning"))]

    # --- work ---------------------------------------------------------------------------
    def read(self, path: Path, param: str) -> np.ndarray:
        return read_image(path, max_pixels=self.cfg.max_image_pixels, param=param)

    def detect(self, image: Path, *, embedding: bool = False, landmarks: bool = False) -> dict:
        img = self.read(image, "image")
        tasks = {"genderage"} | ({"recognition"} if embedding else set()) \
            | ({"landmark_2d_106", "landmark_3d_68"} if landmarks else set())
        faces = self.env.vram.run(PACK, lambda pack: analyze(pack, img, tasks))
        return {
            "width": img.shape[1], "height": img.shape[0], "count": len(faces),
            "faces": [face_json(i, f, embedding=embedding, landmarks=landmarks) for i, f in enumerate(faces)],
            "providers": self.providers(PACK), "warnings": self.warnings(PACK),
        }

    def source_face(self, pack, img: np.ndarray, index: int):
        faces = analyze(pack, img, SWAP_SOURCE_TASKS)
        if not faces:
            raise Unprocessable("no face found in source image", param="source", code="no_face")
        return faces[pick_faces(faces, [index], what="source image", param="source_index")[0]]

    def swap_faces(self, swapper, img: np.ndarray, faces: list, chosen: list[int], source) -> np.ndarray:
        for i in chosen:
            img = swapper.model.get(img, faces[i], source, paste_back=True)
        return img

    def restore_swapped(self, img: np.ndarray, faces: list, chosen: list[int], fidelity: float | None) -> np.ndarray:
        """The swapped faces restored (GFPGAN, at the target faces' landmarks); `fidelity` None: no restoring."""
        if fidelity is None or self.restorer is None or not chosen:
            return img
        return self.restorer.restore_landmarks(img, [faces[i].kps for i in chosen], fidelity=fidelity)

    def swap_image(self, source: Path, target: Path, out: Path, *, source_index: int = 0,
                   target_indices: list[int] | None = None, fmt: str = "png", quality: int = 92,
                   restore: float | None = None) -> dict:
        src = self.read(source, "source")
        tgt = self.read(target, "target")

        def find(pack):
            return self.source_face(pack, src, source_index), analyze(pack, tgt)

        src_face, faces = self.env.vram.run(PACK, find)
        if not faces:
            raise Unprocessable("no face found in target image", param="target", code="no_face")
        chosen = pick_faces(faces, target_indices, what="target image", param="target_indices")
        result = self.env.vram.run(INSWAPPER, lambda sw: self.swap_faces(sw, tgt, faces, chosen, src_face))
        result = self.restore_swapped(result, faces, chosen, restore)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(encode_bgr(result, fmt, quality))
        return {
            "file": out.name, "format": fmt, "width": result.shape[1], "height": result.shape[0],
            "faces_found": len(faces), "faces_swapped": chosen, "faces_restored": chosen if restore is not None else [],
            "providers": self.providers(PACK, INSWAPPER), "warnings": self.warnings(PACK, INSWAPPER),
        }
