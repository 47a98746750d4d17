"""Face swap on a video: decode with PyAV, swap frame by frame, encode H.264 into MP4 with the
same frame timestamps (so the frame count and rate are kept) and the audio packets copied as they
are (re-encoded to AAC only when MP4 cannot carry the original codec)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from .. import media
from ..errors import InvalidInput, Unprocessable, UnsupportedMedia
from ..video_frames import map_video
from .models import INSWAPPER, PACK, FaceConfig
from .service import FaceService, analyze

log = logging.getLogger("enfoads.face")

Progress = Callable[[float, str], None]


def check_video(path: Path, cfg: FaceConfig, param: str = "target") -> media.MediaInfo:
    """Refuse what cannot be processed before any frame is decoded: not media (415), no video
    stream or no known duration (400), longer or larger than the settings allow (413)."""
    try:
        info = media.probe(path)
    except (InvalidInput, UnsupportedMedia) as exc:
        raise type(exc)(exc.message.replace("the file", "the target video"), param=param, code=exc.code) from None
    if not info.has_video:
        raise InvalidInput("the target file has no video stream", param=param, code="no_video")
    media.check_video_limits(info, max_seconds=cfg.video_max_seconds, max_pixels=cfg.video_max_pixels,
                             param=param, what="the target video")
    return info


def swap_video(service: FaceService, source: Path, target: Path, out_path: Path, *, source_index: int = 0,
               target_indices: list[int] | None = None, progress: Progress | None = None,
               restore: float | None = None) -> dict:
    """`restore`: the GFPGAN fidelity for the swapped faces, None for none."""
    info = check_video(target, service.cfg)
    src = service.read(source, "source")
    vram = service.env.vram
    out_path.parent.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda fraction, message: None)
    with vram.acquire(PACK) as pack:
        src_face = service.source_face(pack, src, source_index)
    try:
        stats = _transcode(vram, service, src_face, target, out_path, info, target_indices, report, restore)
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    if stats["frames_with_faces"] == 0:
        out_path.unlink(missing_ok=True)
        raise Unprocessable("no face found in any frame of the target video", param="target", code="no_face")
    return {"file": out_path.name, **stats,
            "providers": service.providers(PACK, INSWAPPER), "warnings": service.warnings(PACK, INSWAPPER)}


def _transcode(vram, service, src_face, target, out_path, info, target_indices, report, restore) -> dict:
    counts = {"frames_with_faces": 0, "faces_swapped": 0, "faces_restored": 0}

    def swap(img, index):
        # Held per frame (a resident acquire costs microseconds): a job paused for interactive
        # work between frames holds no model in use.
        with vram.acquire(PACK) as pack, vram.acquire(INSWAPPER) as swapper:
            faces = analyze(pack, img)
            chosen = [i for i in (range(len(faces)) if target_indices is None else target_indices)
                      if 0 <= i < len(faces)]
            if chosen:
                counts["frames_with_faces"] += 1
                counts["faces_swapped"] += len(chosen)
                img = service.swap_faces(swapper, img, faces, chosen, src_face)
                if restore is not None:
                    img = service.restore_swapped(img, faces, chosen, restore)
                    counts["faces_restored"] += len(chosen)
        return img

    stats = map_video(target, out_path, swap, info, max_seconds=service.cfg.video_max_seconds, param="target",
                      report=report)
    audio = stats.pop("audio")
    return {**stats, **counts, "audio": audio}
