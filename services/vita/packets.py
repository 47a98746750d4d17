"""The client's packets as VITA-1.5's web page sends them, validated.

`audio`: a JSON string `{"sample_rate": 16000, "audio": [uint8, ...]}` where the bytes are Int16
little-endian PCM, one AudioWorklet block (128 samples) per packet. `video_frame`: a JPEG data URL
(`data:image/jpeg;base64,...`), about two per second. A bad packet raises a ServiceError whose
message is sent back in an `error` event; the session goes on.
"""
from __future__ import annotations

import base64
import binascii

import numpy as np
import orjson

from services.errors import InvalidInput, TooLarge, UnsupportedMedia
from services.media import load_image

SAMPLE_RATE = 16000
# One second of audio per packet is far more than any client sends (VITA: 128 samples); the cap
# keeps a single JSON packet from carrying minutes of audio past the throttle.
MAX_PACKET_SAMPLES = SAMPLE_RATE
JPEG_MAGIC = b"\xff\xd8\xff"


def _malformed(message: str, param: str = "audio") -> InvalidInput:
    return InvalidInput(f"malformed audio packet: {message}", param=param, code="malformed_audio")


def parse_audio(data) -> np.ndarray:
    """A packet -> float32 samples in [-1, 1) at 16 kHz.

    ~125 packets a second per session reach this: orjson parses the packet, and `bytes()` turns
    the list into PCM in C, refusing anything but integers 0..255 (a list of Python ints through
    a validation model and numpy cost more than the VAD; bench_vita.py section 2)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
    elif not isinstance(data, str):
        raise InvalidInput("an audio packet must be a JSON string {\"sample_rate\", \"audio\"}",
                           param="audio", code="malformed_audio")
    try:
        packet = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise _malformed("the audio packet is not valid JSON") from None
    if not isinstance(packet, dict):
        raise _malformed("it must be a JSON object {\"sample_rate\", \"audio\"}")
    rate, audio = packet.get("sample_rate"), packet.get("audio")
    if type(rate) is not int:  # bool is an int subclass
        raise _malformed("sample_rate: an integer is required", "sample_rate")
    if not isinstance(audio, list):
        raise _malformed("audio: a list of bytes (integers 0..255) is required")
    if len(audio) > MAX_PACKET_SAMPLES * 2:
        raise _malformed(f"audio: at most {MAX_PACKET_SAMPLES * 2:,} bytes per packet; got {len(audio):,}")
    if rate != SAMPLE_RATE:
        raise InvalidInput(f"audio must be {SAMPLE_RATE} Hz mono Int16 PCM; got sample_rate={rate}",
                           param="sample_rate", code="wrong_sample_rate")
    if len(audio) % 2:
        raise InvalidInput(f"audio holds {len(audio)} bytes: Int16 PCM needs an even byte count",
                           param="audio", code="odd_byte_count")
    try:
        raw = bytes(audio)
    except (TypeError, ValueError):
        raise _malformed("audio: bytes must be integers 0..255") from None
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0


def parse_frame(data, *, max_bytes: int, max_pixels: int):
    """A JPEG data URL (or bare base64) -> an RGB PIL image."""
    if not isinstance(data, str):
        raise InvalidInput("a video frame must be a JPEG data URL string", param="video_frame",
                           code="malformed_frame")
    header, sep, payload = data.partition(",")
    if not sep:
        header, payload = "", data
    elif not header.startswith("data:"):
        raise InvalidInput("a video frame must be a data URL (data:image/jpeg;base64,...)", param="video_frame",
                           code="malformed_frame")
    if header and not header.startswith("data:image/jpeg"):
        kind = header[5:].split(";")[0] or "unknown"
        raise UnsupportedMedia(f"video frames must be JPEG; got {kind}", param="video_frame", code="not_jpeg")
    # base64 inflates by 4/3: refuse before decoding anything
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise TooLarge(f"the video frame is larger than {max_bytes:,} bytes", param="video_frame",
                       code="frame_too_large")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("the video frame is not valid base64", param="video_frame", code="malformed_frame") from None
    if len(raw) > max_bytes:
        raise TooLarge(f"the video frame is larger than {max_bytes:,} bytes", param="video_frame",
                       code="frame_too_large")
    if not raw.startswith(JPEG_MAGIC):
        raise UnsupportedMedia("video frames must be JPEG images", param="video_frame", code="not_jpeg")
    return load_image(raw, max_pixels=max_pixels, param="video_frame")
