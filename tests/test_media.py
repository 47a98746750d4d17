"""Shared media helpers: what every family decodes and encodes."""
import io

import numpy as np
import pytest
from PIL import Image

from services import media
from services.errors import InvalidInput, TooLarge, UnsupportedMedia


def tone(seconds=0.5, rate=24000):
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    return 0.5 * np.sin(2 * np.pi * 440 * t)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "flac"])
def test_encoded_audio_decodes_back_with_its_duration(tmp_path, fmt):
    path = tmp_path / f"a.{fmt}"
    path.write_bytes(media.encode_audio(tone(), 24000, fmt))
    info = media.probe(path)
    assert info.has_audio and not info.has_video
    assert info.duration == pytest.approx(0.5, abs=0.05)
    audio = media.decode_audio(path, 16000)
    assert audio.dtype == np.float32 and audio.size == pytest.approx(8000, abs=800)
    assert 0.4 < float(np.abs(audio).max()) <= 1.0


def test_pcm_is_raw_int16():
    raw = media.encode_audio(tone(0.1), 24000, "pcm")
    assert len(raw) == 2 * 2400


def test_not_media_is_unsupported_and_empty_is_invalid(tmp_path):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"definitely not audio" * 50)
    with pytest.raises(UnsupportedMedia):
        media.probe(junk)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(InvalidInput):
        media.probe(empty)


def test_audio_over_the_duration_limit_is_too_large(tmp_path):
    path = tmp_path / "long.wav"
    path.write_bytes(media.encode_audio(tone(3.0), 16000, "wav"))
    with pytest.raises(TooLarge):
        media.decode_audio(path, 16000, max_seconds=1.0)


def test_images_decode_and_bad_ones_are_refused():
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "white").save(buf, "PNG")
    img = media.load_image(buf.getvalue(), max_pixels=10_000)
    assert img.size == (40, 30) and img.mode == "RGB"
    with pytest.raises(TooLarge):
        media.load_image(buf.getvalue(), max_pixels=100)
    with pytest.raises(InvalidInput):
        media.load_image(b"GIF89a-truncated", max_pixels=10_000)
    with pytest.raises(InvalidInput):
        media.load_image(buf.getvalue()[:60], max_pixels=10_000)
    for fmt in ("png", "jpeg", "webp"):
        assert Image.open(io.BytesIO(media.encode_image(img, fmt))).format.lower() == fmt


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` (what a decompression bomb sends)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_a_huge_image_header_is_too_large_not_invalid():
    # 900 Mpx: past Pillow's own bomb guard, which fires before our size check could
    with pytest.raises(TooLarge) as err:
        media.load_image(_png_header_only(30000, 30000), max_pixels=40_000_000)
    assert err.value.code == "image_too_large" and "40,000,000" in err.value.message


def test_an_unreadable_image_message_names_no_python_object():
    with pytest.raises(InvalidInput) as err:
        media.load_image(b"this is text, not an image" * 10, max_pixels=10_000)
    assert err.value.code == "invalid_image"
    assert "BytesIO" not in err.value.message and "0x" not in err.value.message
