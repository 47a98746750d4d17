"""Synthetic pictures and videos for the face tests: a "face" is a white 96x96 square, what the
smoke detector (services/face/smoke.py) finds when its centre is on the detector's 32-pixel grid:
top-left corners at 16 + 32k (with the detector at 256 and pictures no wider than that)."""
from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np

SIZE = 96


def canvas(width: int = 256, height: int = 256, faces=(), background=(40, 80, 120)) -> np.ndarray:
    """RGB uint8 picture with a white square at each (x, y) top-left corner in `faces`."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:] = background
    # A texture so that a swapped pixel cannot match by chance.
    img[::2, ::2] = (90, 30, 60)
    for x, y in faces:
        img[y:y + SIZE, x:x + SIZE] = 255
    return img


def encode(img: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def png(width=256, height=256, faces=()) -> bytes:
    return encode(canvas(width, height, faces))


def decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares a huge image (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


def video(path: Path, *, frames: int = 12, fps: int = 12, width: int = 256, height: int = 160,
          audio: bool = True, faces_in=lambda i: [(16 + 32 * (i % 3), 16)], audio_rate: int = 16000,
          audio_codec: str = "aac") -> Path:
    """H.264 video (MP4, or as the suffix says) with a tone when `audio`, one white-square face per
    frame by default."""
    import av

    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        a = out.add_stream(audio_codec, rate=audio_rate, layout="mono") if audio else None
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(canvas(width, height, faces_in(i)), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for p in v.encode(frame):
                out.mux(p)
        for p in v.encode(None):
            out.mux(p)
        if a is not None:
            t = np.arange(int(audio_rate * frames / fps)) / audio_rate
            pcm = (np.sin(2 * np.pi * 440 * t) * 0.3 * 32767).astype("<i2").reshape(1, -1)
            af = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            af.sample_rate = audio_rate
            resampler = av.AudioResampler(format=a.codec_context.format.name, layout="mono", rate=audio_rate)
            for chunk in [*resampler.resample(af), *resampler.resample(None)]:
                for p in a.encode(chunk):
                    out.mux(p)
            for p in a.encode(None):
                out.mux(p)
    return path


def wav(path: Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    import soundfile as sf

    sf.write(str(path), np.zeros(int(seconds * rate), np.float32), rate)
    return path
