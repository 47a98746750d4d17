"""Subtitles into a video with ffmpeg: burned into the picture (libass) or as a soft track.

ffmpeg is the static build the `imageio-ffmpeg` wheel ships (libass, fontconfig, libx264), so
nothing needs a system install. Fonts come from matplotlib's bundled DejaVu (a dependency we
have anyway) through `fontsdir`, so burning works on machines without system fonts.

The output is always mp4 with the original audio: copied when mp4 can carry its codec, else
re-encoded to AAC. Progress comes from ffmpeg's `-progress` stream; a cancelled job kills ffmpeg.
"""
from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from services import media
from services.errors import InvalidInput, Unprocessable

from .subtitles import Cue, to_ass, to_srt

log = logging.getLogger("enfoads.whisper")

MODES = ("burn", "soft")
MP4_AUDIO = {"aac", "mp3", "alac", "opus", "flac", "ac3", "eac3"}
MP4_VIDEO = {"h264", "hevc", "mpeg4", "av1", "vp9"}
FONT_NAME = "DejaVu Sans"

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class SubtitleStyle:
    font_size: int | None = None  # pixels of the picture; None: height / 18
    position: str = "bottom"  # bottom | middle | top
    max_line_chars: int = 42
    max_lines: int = 2


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def fonts_dir() -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return path if (path / "DejaVuSans.ttf").exists() else None


def _codecs(path: Path) -> tuple[str | None, str | None]:
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0].codec_context.name if c.streams.video else None
        a = c.streams.audio[0].codec_context.name if c.streams.audio else None
    return v, a


def _audio_args(codec: str | None) -> list[str]:
    if codec is None:
        return []
    return ["-c:a", "copy"] if codec in MP4_AUDIO else ["-c:a", "aac", "-b:a", "192k"]


def check_video(info: media.MediaInfo, *, max_seconds: float, max_pixels: int) -> None:
    """Refuse, before any work, a video that is not one (400), has no known duration (400: nothing
    would bound the encoding), or is longer or larger than the limits (413)."""
    if not info.has_video:
        raise InvalidInput("the file has no video stream; use /transcribe for audio", param="file",
                           code="no_video")
    media.check_video_limits(info, max_seconds=max_seconds, max_pixels=max_pixels)


def subtitle_video(src: Path, out: Path, cues: list[Cue], *, info: media.MediaInfo, mode: str = "burn",
                   style: SubtitleStyle = SubtitleStyle(), crf: int = 20, progress: Progress | None = None) -> Path:
    """Write `out` (mp4): `src` with `cues` burned in (`mode="burn"`) or as a mov_text track ("soft").
    `info` is the checked probe of `src`: the output stops at its duration, whatever the streams hold."""
    if not info.has_video or not info.duration:
        raise InvalidInput("the file has no video stream of known duration", param="file", code="no_video")
    if mode not in MODES:
        raise InvalidInput(f"unknown mode {mode!r}; use one of: {', '.join(MODES)}", param="mode")
    vcodec, acodec = _codecs(src)
    x264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p"]
    with tempfile.TemporaryDirectory(prefix="enfoads-subs-") as work:
        # ffmpeg reads filter arguments with its own escaping rules: keep every path in the
        # filter graph a plain relative name inside `work` (run there), never a user-influenced path.
        work_dir = Path(work)
        maps = ["-map", "0:v:0", "-map", "0:a:0?"]
        if mode == "burn":
            (work_dir / "subs.ass").write_text(
                to_ass(cues, width=info.width or 640, height=info.height or 360, font_size=style.font_size,
                       position=style.position, font_name=FONT_NAME), encoding="utf-8")
            vf = "subtitles=subs.ass"
            fonts = fonts_dir()
            if fonts is not None:
                os.symlink(fonts, work_dir / "fonts")
                vf += ":fontsdir=fonts"
            # x264 with 4:2:0 chroma needs even dimensions
            vf += ",scale=trunc(iw/2)*2:trunc(ih/2)*2"
            args = ["-i", str(src), *maps, "-vf", vf, *x264, *_audio_args(acodec)]
        else:
            (work_dir / "subs.srt").write_text(to_srt(cues), encoding="utf-8")
            video = ["-c:v", "copy"] if vcodec in MP4_VIDEO else x264
            args = ["-i", str(src), "-i", "subs.srt", *maps, "-map", "1:0", *video, *_audio_args(acodec),
                    "-c:s", "mov_text", "-metadata:s:s:0", "title=Subtitles"]
        _run_ffmpeg([*args, "-t", f"{info.duration:.3f}", "-movflags", "+faststart", str(Path(out).resolve())], cwd=work_dir,
                    duration=info.duration, progress=progress)
    return out


def _run_ffmpeg(args: list[str], *, cwd: Path, duration: float, progress: Progress | None) -> None:
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-nostats",
           "-progress", "pipe:1", *args]
    log.debug("ffmpeg %s", " ".join(cmd[1:]))
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace")
    err_tail: deque[str] = deque(maxlen=20)
    drain = threading.Thread(target=lambda: err_tail.extend(proc.stderr), daemon=True)
    drain.start()
    try:
        for line in proc.stdout:
            key, _, value = line.strip().partition("=")
            if key == "out_time_us" and progress is not None and duration > 0 and value.isdigit():
                done = min(int(value) / 1e6, duration)
                progress(done / duration, f"encoded {done:.1f} of {duration:.1f} s")
        rc = proc.wait()
    except BaseException:  # cancelled (or anything else): don't leave ffmpeg running
        proc.kill()
        proc.wait()
        raise
    finally:
        drain.join(timeout=5)
    if rc != 0:
        detail = " ".join(line.strip() for line in err_tail)[-500:]
        log.error("ffmpeg failed (%s): %s", rc, detail)
        raise Unprocessable(f"the video could not be encoded: {detail or f'ffmpeg exit code {rc}'}",
                            param="file", code="encode_failed")
