"""Portrait animation with LivePortrait: a photo driven by a video (`animate_video`), and a photo
with a new expression and head pose (`edit_expression`). LivePortrait and buffalo_l (faces) both
go through the VRAM offloader; each video frame acquires them anew, so a paused batch job holds
no model in use."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from prefetch.manifest import vram_estimate

from .. import media
from ..errors import InvalidInput, ModelUnavailable, TooLarge, Unprocessable, UnsupportedMedia
from ..face.models import PACK
from ..face.service import encode_bgr, read_image
from ..model_env import ModelEnv
from ..video_frames import map_video, write_video
from ..vram import Runtime
from . import pipeline, speech
from .config import MODEL_KEY
from .model import LivePortrait

log = logging.getLogger("enfoads.animate")

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class AnimateConfig:
    max_seconds: float = 60.0  # driving video and speech
    video_max_pixels: int = 1920 * 1088
    max_image_pixels: int = 40_000_000


class AnimateService:
    def __init__(self, env: ModelEnv, cfg: AnimateConfig):
        self.env = env
        self.cfg = cfg

    # --- models -------------------------------------------------------------------------
    def register(self) -> None:
        self.env.vram.register(MODEL_KEY, self._load, runtime=Runtime.TORCH, estimate_bytes=self._estimate(),
                               family="animate")

    def _estimate(self) -> int:
        if self.env.profile == "smoke":  # the tiny build: what its files weigh, plus working memory
            try:
                folder = self.env.locate(MODEL_KEY)
                return 4 * sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            except ModelUnavailable:
                pass
        return vram_estimate(MODEL_KEY, self.env.dtype)

    def _load(self, device: str) -> LivePortrait:
        return LivePortrait.load(self.env.locate(MODEL_KEY), device, self.env.dtype)

    def available(self) -> bool:
        return self.env.present(MODEL_KEY)

    def read(self, path: Path, param: str) -> np.ndarray:
        return read_image(path, max_pixels=self.cfg.max_image_pixels, param=param)

    def _source(self, image: np.ndarray, face_index: int | None, crop_scale: float) -> pipeline.Source:
        vram = self.env.vram
        with vram.acquire(PACK) as pack, vram.acquire(MODEL_KEY) as lp:
            return pipeline.prepare_source(lp, pack, image, face_index=face_index, crop_scale=crop_scale)

    # --- expression editing -------------------------------------------------------------
    def edit_expression(self, source: Path, out: Path, *, eye_open: float | None = None,
                        lip_open: float | None = None, pitch: float = 0.0, yaw: float = 0.0, roll: float = 0.0,
                        face_index: int | None = None, crop_scale: float = 2.3, paste_back: bool = True,
                        fmt: str = "png", quality: int = 92) -> dict:
        image = self.read(source, "source")
        src = self._source(image, face_index, crop_scale)
        with self.env.vram.acquire(MODEL_KEY) as lp:
            src = pipeline.on_device(src, lp.device)
            kp = pipeline.expression_keypoints(lp, src, eye_open=eye_open, lip_open=lip_open, pitch=pitch,
                                               yaw=yaw, roll=roll)
            rendered = pipeline.render(lp, src, kp)
        result = pipeline.compose(src, rendered, paste=paste_back)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(encode_bgr(result, fmt, quality))
        return {"file": out.name, "format": fmt, "width": int(result.shape[1]), "height": int(result.shape[0]),
                "face_box": src.crop.box(image.shape[1], image.shape[0]) if paste_back else None,
                "faces_found": src.faces_found, "face_index": src.face_index}

    # --- driving video ------------------------------------------------------------------
    def check_video(self, path: Path, param: str = "driving") -> media.MediaInfo:
        """Refuse before decoding: not media (415), no video or unknown duration (400), too long or
        large (413)."""
        try:
            info = media.probe(path)
        except (InvalidInput, UnsupportedMedia) as exc:
            raise type(exc)(exc.message.replace("the file", "the driving video"), param=param,
                            code=exc.code) from None
        if not info.has_video:
            raise InvalidInput("the driving file has no video stream", param=param, code="no_video")
        media.check_video_limits(info, max_seconds=self.cfg.max_seconds, max_pixels=self.cfg.video_max_pixels,
                                 param=param, what="the driving video")
        return info

    def animate_video(self, source: Path, driving: Path, out_path: Path, *, relative_motion: bool = True,
                      stitching: bool = True, paste_back: bool = True, crop_scale: float = 2.3,
                      face_index: int | None = None, progress: Progress | None = None) -> dict:
        info = self.check_video(driving)
        image = self.read(source, "source")
        src = self._source(image, face_index, crop_scale)
        vram = self.env.vram
        state = {"first": None, "last": None, "missing": 0}

        def step(frame: np.ndarray, index: int) -> np.ndarray:
            with vram.acquire(PACK) as pack, vram.acquire(MODEL_KEY) as lp:
                here = pipeline.on_device(src, lp.device)
                motion = pipeline.frame_motion(lp, pack, frame, crop_scale)
                if motion is None:  # no face in this frame: it keeps the previous motion
                    state["missing"] += 1
                    motion = state["last"]
                elif state["first"] is None:
                    state["first"] = motion
                state["last"] = motion
                if motion is None:  # no face seen yet: the source as it is
                    kp = here.kp
                else:
                    first, now = ({k: v.to(lp.device) for k, v in m.items()} for m in (state["first"], motion))
                    kp = pipeline.driven_keypoints(here, first, now, relative=relative_motion)
                rendered = pipeline.render(lp, here, kp, stitching=stitching)
            return pipeline.compose(src, rendered, paste=paste_back)

        size = (image.shape[1], image.shape[0]) if paste_back else (src.crop.size, src.crop.size)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            stats = map_video(driving, out_path, step, info, max_seconds=self.cfg.max_seconds, param="driving",
                              report=progress or (lambda f, m: None), out_size=size)
        except BaseException:
            out_path.unlink(missing_ok=True)
            raise
        if state["first"] is None:
            out_path.unlink(missing_ok=True)
            raise Unprocessable("no face found in any frame of the driving video", param="driving", code="no_face")
        return {"file": out_path.name, **stats, "frames_without_face": state["missing"],
                "faces_found": src.faces_found, "face_index": src.face_index,
                "face_box": src.crop.box(image.shape[1], image.shape[0]) if paste_back else None}

    # --- talking head -------------------------------------------------------------------
    def read_speech(self, path: Path, param: str = "audio") -> tuple[np.ndarray, int]:
        """A speech file as 16 kHz mono samples; 413 past the limit, 400/415 when not audio."""
        rate = 16000
        try:
            samples = media.decode_audio(path, rate, max_seconds=self.cfg.max_seconds)
        except (InvalidInput, UnsupportedMedia, TooLarge) as exc:
            raise type(exc)(exc.message.replace("the file", "the audio"), param=param, code=exc.code) from None
        self.check_speech(samples, rate, param)
        return samples, rate

    def check_audio(self, path: Path, param: str = "audio") -> None:
        """Before queueing: an audio stream (400), not over the limit by its container's word (413);
        the decoded length is checked again in the job."""
        try:
            info = media.probe(path)
        except (InvalidInput, UnsupportedMedia) as exc:
            raise type(exc)(exc.message.replace("the file", "the audio"), param=param, code=exc.code) from None
        if not info.has_audio:
            raise InvalidInput("the audio file has no audio stream", param=param, code="no_audio")
        if info.duration > self.cfg.max_seconds:
            raise TooLarge(f"the speech lasts {info.duration:.1f} s; the limit is {self.cfg.max_seconds:g} s",
                           param=param, code="too_long")

    def check_speech(self, samples: np.ndarray, rate: int, param: str) -> None:
        seconds = samples.size / rate
        if seconds > self.cfg.max_seconds:
            raise TooLarge(f"the speech lasts {seconds:.1f} s; the limit is {self.cfg.max_seconds:g} s",
                           param=param, code="too_long")
        if samples.size == 0:
            raise InvalidInput("the audio has no samples", param=param, code="empty_audio")

    def talking_head(self, source: Path, samples: np.ndarray, rate: int, out_path: Path, *,
                     face_index: int | None = None, crop_scale: float = 2.3, paste_back: bool = True,
                     seed: int = 0, progress: Progress | None = None, param: str = "audio") -> dict:
        self.check_speech(samples, rate, param)
        image = self.read(source, "source")
        src = self._source(image, face_index, crop_scale)
        fps = speech.FPS
        frames = max(1, round(samples.size / rate * fps))
        lips = speech.lip_curve(speech.envelope(samples, rate, frames, fps))
        eyes = speech.blink_curve(frames, fps, seed)
        report = progress or (lambda f, m: None)
        vram = self.env.vram

        def render_all():
            for i in range(frames):
                with vram.acquire(MODEL_KEY) as lp:
                    here = pipeline.on_device(src, lp.device)
                    kp = pipeline.speaking_keypoints(lp, here, lip_open=lips[i], eye_open=eyes[i],
                                                     pose=speech.idle_pose(i, fps))
                    rendered = pipeline.render(lp, here, kp)
                yield pipeline.compose(src, rendered, paste=paste_back)
                report(min((i + 1) / frames, 0.99), f"frame {i + 1}/{frames}")

        width, height = (image.shape[1], image.shape[0]) if paste_back else (src.crop.size, src.crop.size)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_video(render_all(), out_path, fps=fps, width=width, height=height, samples=samples,
                        sample_rate=rate)
        except BaseException:
            out_path.unlink(missing_ok=True)
            raise
        report(1.0, f"{frames} frames")
        return {"file": out_path.name, "frames": frames, "fps": fps, "width": width, "height": height,
                "duration": round(frames / fps, 3), "speech_seconds": round(samples.size / rate, 3),
                "blinks": int(np.sum((eyes[1:] < 0.5) & (eyes[:-1] >= 0.5))),
                "lip_open": [round(float(v), 3) for v in lips],
                "faces_found": src.faces_found, "face_index": src.face_index,
                "face_box": src.crop.box(image.shape[1], image.shape[0]) if paste_back else None}
