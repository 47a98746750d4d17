"""The whisper job kinds: what runs on the job worker for a request (no HTTP here).

A handler gets JSON params and a job context (`progress(fraction, message)` which also raises
when the client cancelled, and `output_dir`, whose files the web layer serves). The uploaded
file is deleted when the job ends, whatever the outcome.
"""
from __future__ import annotations

from pathlib import Path

from services import media

from .formats import write_all
from .subtitles import cues_from_segments
from .transcriber import TranscribeOptions, WhisperService
from .video import SubtitleStyle, subtitle_video

TRANSCRIBE = "whisper.transcribe"
SUBTITLE_VIDEO = "whisper.subtitle_video"
VIDEO_FILE = "subtitled.mp4"
TRANSCRIBE_SHARE = 0.8  # of a subtitle-video job's progress bar; encoding gets the rest


def transcribe_job(service: WhisperService, params: dict, ctx) -> dict:
    path = Path(params["path"])
    result = service.transcribe_file(path, TranscribeOptions(**params["options"]), model=params.get("model"),
                                     progress=ctx.progress)
    result["files"] = write_all(result, ctx.output_dir, **params.get("lines", {}))
    return result


def subtitle_video_job(service: WhisperService, params: dict, ctx) -> dict:
    path = Path(params["path"])
    style = SubtitleStyle(**params.get("style", {}))
    lines = {"max_line_chars": style.max_line_chars, "max_lines": style.max_lines}
    info = media.probe(path)  # again: a job resumed after a restart was checked by another process
    service.check_video(info)
    result = service.transcribe_file(
        path, TranscribeOptions(**params["options"]), model=params.get("model"),
        progress=lambda f, m: ctx.progress(f * TRANSCRIBE_SHARE, m))
    result["files"] = write_all(result, ctx.output_dir, **lines)
    cues = cues_from_segments(result["segments"], **lines)
    subtitle_video(path, ctx.output_dir / VIDEO_FILE, cues, info=info, mode=params.get("mode", "burn"),
                   style=style, crf=params.get("crf", 20),
                   progress=lambda f, m: ctx.progress(TRANSCRIBE_SHARE + f * (1 - TRANSCRIBE_SHARE), m))
    result["files"]["video"] = VIDEO_FILE
    result["mode"] = params.get("mode", "burn")
    result["cues"] = len(cues)
    return result
