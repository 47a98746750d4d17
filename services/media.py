"""Media in and out, shared by every family: probing and decoding audio/video with PyAV,
encoding audio, decoding images safely. Errors are ServiceErrors a user can act on."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import InvalidInput, TooLarge, UnsupportedMedia

AUDIO_FORMATS = {  # name -> (container, codec, mime type)
    "wav": ("wav", "pcm_s16le", "audio/wav"),
    "mp3": ("mp3", "libmp3lame", "audio/mpeg"),
    "opus": ("ogg", "libopus", "audio/ogg"),
    "flac": ("flac", "flac", "audio/flac"),
    "pcm": (None, None, "audio/pcm"),  # raw 16-bit little-endian mono, no header
}
IMAGE_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}


@dataclass(frozen=True)
class MediaInfo:
    duration: float  # seconds (0.0 when the container does not say)
    has_audio: bool
    has_video: bool
    width: int | None = None
    height: int | None = None
    fps: Fraction | None = None
    frames: int | None = None
    audio_rate: int | None = None
    audio_channels: int | None = None


def _open(path: Path):
    import av

    if not Path(path).exists() or Path(path).stat().st_size == 0:
        raise InvalidInput("the file is empty", param="file", code="empty_file")
    try:
        return av.open(str(path))
    except av.error.FFmpegError:
        raise UnsupportedMedia("the file is not audio or video that can be decoded", param="file",
                               code="unsupported_media") from None


def probe(path: Path) -> MediaInfo:
    with _open(path) as container:
        audio = container.streams.audio[0] if container.streams.audio else None
        video = container.streams.video[0] if container.streams.video else None
        if audio is None and video is None:
            raise UnsupportedMedia("the file has neither an audio nor a video stream", param="file",
                                   code="no_streams")
        duration = container.duration / 1_000_000 if container.duration else 0.0
        if not duration:
            for stream in (audio, video):
                if stream is not None and stream.duration and stream.time_base:
                    duration = max(duration, float(stream.duration * stream.time_base))
        return MediaInfo(
            duration=float(duration),
            has_audio=audio is not None,
            has_video=video is not None,
            width=video.codec_context.width if video else None,
            height=video.codec_context.height if video else None,
            fps=video.average_rate if video else None,
            frames=video.frames or None if video else None,
            audio_rate=audio.codec_context.sample_rate if audio else None,
            audio_channels=audio.codec_context.channels if audio else None,
        )


def check_video_limits(info: MediaInfo, *, max_seconds: float, max_pixels: int, param: str = "file",
                       what: str = "the video") -> None:
    """Refuse a video that cannot be bounded before decoding: no known duration (a raw stream with
    no container: its frames carry no times, 400), longer or larger than the limits (413)."""
    if not info.duration or info.duration <= 0:
        raise InvalidInput(f"{what} does not say how long it lasts (a raw stream without a container, or "
                           "frames without timestamps); put it in an MP4, MKV or WebM container",
                           param=param, code="unknown_duration")
    if info.duration > max_seconds:
        raise TooLarge(f"{what} lasts {info.duration:.1f} s; the limit is {max_seconds:g} s", param=param,
                       code="video_too_long")
    if info.width and info.height and info.width * info.height > max_pixels:
        raise TooLarge(f"{what} is {info.width}x{info.height}; the limit is {max_pixels:,} pixels per frame",
                       param=param, code="video_too_large")


def max_frames(max_seconds: float, fps: Fraction) -> int:
    """The most frames `max_seconds` of video may hold at `fps` (one more for rounding)."""
    return math.ceil(max_seconds * float(fps)) + 1


def iter_audio(path: Path, sample_rate: int = 16000, *, window_samples: int,
               max_seconds: float | None = None) -> Iterator[np.ndarray]:
    """The first audio stream as mono float32 in [-1, 1] at `sample_rate`, in windows of
    `window_samples` (the last one shorter). Memory stays at about one window whatever the file's
    length; `max_seconds` counts the decoded samples (a container's duration can lie or be missing).
    Decoding pauses at each window until the caller asks for the next (a cancelled job stops there)."""
    import av

    limit = int(max_seconds * sample_rate) if max_seconds else None
    with _open(path) as container:
        if not container.streams.audio:
            raise InvalidInput("the file has no audio stream", param="file", code="no_audio")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        pending: list[np.ndarray] = []
        buffered = total = 0
        try:
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    pending.append(chunk)
                    buffered += chunk.size
                    total += chunk.size
                if limit is not None and total > limit:
                    raise TooLarge(f"the audio is longer than the {max_seconds:g} s limit", param="file",
                                   code="too_long")
                while buffered >= window_samples:
                    joined = np.concatenate(pending)
                    pending, buffered = [joined[window_samples:]], joined.size - window_samples
                    yield np.clip(joined[:window_samples], -1.0, 1.0)
            for out in resampler.resample(None):
                pending.append(out.to_ndarray().reshape(-1))
                total += pending[-1].size
        except av.error.FFmpegError as exc:
            raise InvalidInput(f"the audio could not be decoded: {exc}", param="file", code="bad_audio") from None
    if limit is not None and total > limit:
        raise TooLarge(f"the audio is longer than the {max_seconds:g} s limit", param="file", code="too_long")
    rest = np.concatenate(pending) if pending else np.zeros(0, np.float32)
    if rest.size:
        yield np.clip(rest, -1.0, 1.0)


def decode_audio(path: Path, sample_rate: int = 16000, *, max_seconds: float | None = None) -> np.ndarray:
    """The first audio stream as one mono float32 array in [-1, 1] at `sample_rate` (for short
    clips: long media go through `iter_audio`)."""
    window = int((max_seconds or 600) * sample_rate) + 1
    chunks = list(iter_audio(path, sample_rate, window_samples=window, max_seconds=max_seconds))
    return np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Mono float samples in [-1, 1] -> bytes in `fmt` (wav, mp3, opus, flac or raw pcm)."""
    import av

    if fmt not in AUDIO_FORMATS:
        raise InvalidInput(f"unsupported audio format {fmt!r}; use one of {', '.join(AUDIO_FORMATS)}",
                           param="response_format")
    pcm = (np.clip(np.asarray(samples, np.float32).reshape(-1), -1, 1) * 32767).astype("<i2")
    if fmt == "pcm":
        return pcm.tobytes()
    container_name, codec, _ = AUDIO_FORMATS[fmt]
    rate = 48000 if fmt == "opus" and sample_rate not in (8000, 12000, 16000, 24000, 48000) else sample_rate
    buf = io.BytesIO()
    with av.open(buf, "w", format=container_name) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = sample_rate
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(resampled):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def audio_mime(fmt: str) -> str:
    return AUDIO_FORMATS[fmt][2]


def load_image(data: bytes, *, max_pixels: int, param: str = "image"):
    """Decode image bytes to RGB, refusing non-images (400) and oversized ones before decoding (413)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidInput("the image is empty", param=param, code="empty_file")
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size  # read from the header: no pixels decoded yet
        if width * height > max_pixels:
            raise TooLarge(f"the image is {width}x{height}; the limit is {max_pixels:,} pixels", param=param,
                           code="image_too_large")
        img.load()
    except Image.DecompressionBombError:  # Pillow refuses huge headers itself, before we see the size
        raise TooLarge(f"the image has more pixels than the {max_pixels:,} pixel limit", param=param,
                       code="image_too_large") from None
    except UnidentifiedImageError:  # its message names our in-memory buffer, not the user's file
        raise InvalidInput("not a readable image: use PNG, JPEG or WebP", param=param,
                           code="invalid_image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"not a readable image: {exc}", param=param, code="invalid_image") from None
    return img.convert("RGB")


def encode_image(img, fmt: str, *, quality: int = 92, png_compress_level: int = 6) -> bytes:
    if fmt not in IMAGE_FORMATS:
        raise InvalidInput(f"unsupported image format {fmt!r}; use one of {', '.join(IMAGE_FORMATS)}",
                           param="output_format")
    buf = io.BytesIO()
    pil_format = IMAGE_FORMATS[fmt][0]
    options = {"quality": quality} if pil_format in ("JPEG", "WEBP") else {"compress_level": png_compress_level}
    img.save(buf, format=pil_format, **options)
    return buf.getvalue()


def image_mime(fmt: str) -> str:
    return IMAGE_FORMATS[fmt][1]
