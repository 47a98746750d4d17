"""Media for the whisper tests: real Spanish speech from espeak-ng, silence, videos, frame reading."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

SPEECH_ES = ("Hola, buenos días. Esta es una prueba de transcripción en español "
             "para los subtítulos del video.")


def espeak(text: str, path: Path, voice: str = "es") -> Path:
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.fail("espeak-ng is needed for real speech: `scripts/install.sh --dev` (or apt-get install espeak-ng)")
    subprocess.run([exe, "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    return path


def ffmpeg(*args: str) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args],
                   check=True, capture_output=True)


def silence_wav(path: Path, seconds: float = 3.0) -> Path:
    from services.media import encode_audio

    path.write_bytes(encode_audio(np.zeros(int(16000 * seconds), np.float32), 16000, "wav"))
    return path


def video_with_audio(audio: Path, path: Path, size: str = "320x240", pix_fmt: str = "yuv420p") -> Path:
    """A gray h264 video as long as `audio`, with `audio` as AAC."""
    ffmpeg("-f", "lavfi", "-i", f"color=c=0x808080:s={size}:r=25", "-i", str(audio), "-shortest",
           "-c:v", "libx264", "-pix_fmt", pix_fmt, "-c:a", "aac", "-b:a", "128k", str(path))
    return path


def silent_video(path: Path, seconds: float = 2.0) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"color=c=gray:s=160x120:r=25:d={seconds}", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(path))
    return path


def convert(src: Path, path: Path, *codec: str) -> Path:
    ffmpeg("-i", str(src), *codec, str(path))
    return path


def frame_at(path: Path, t: float) -> np.ndarray:
    """The RGB frame shown at time `t` (seconds)."""
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        last = None
        for frame in c.decode(stream):
            if frame.time is not None and frame.time > t + 1e-6:
                break
            last = frame
        assert last is not None
        return last.to_ndarray(format="rgb24").astype(np.int16)


def streams(path: Path) -> dict:
    import av

    with av.open(str(path)) as c:
        return {"video": [s.codec_context.name for s in c.streams.video],
                "audio": [s.codec_context.name for s in c.streams.audio],
                "subtitle": [s.codec_context.name for s in c.streams.subtitles],
                "duration": c.duration / 1e6 if c.duration else 0.0}
