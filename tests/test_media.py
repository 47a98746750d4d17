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


def write_video(path, *, frames=10, rate=5, width=32, height=24, audio=False):
    """A tiny MPEG-4 video (and a silent stereo 16 kHz AAC track if asked), built with PyAV."""
    import av

    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=16000, layout="stereo") if audio else None
        for i in range(frames):
            for packet in video.encode(av.VideoFrame.from_ndarray(np.full((height, width, 3), i * 20, np.uint8),
                                                                  format="rgb24")):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        if sound is not None:
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 2 * 16000 * frames // rate), np.float32), format="flt",
                                               layout="stereo")
            frame.sample_rate = 16000
            for packet in [*sound.encode(frame), *sound.encode(None)]:
                out.mux(packet)
    return path


def test_probe_reads_a_videos_size_rate_frames_and_duration(tmp_path):
    info = media.probe(write_video(tmp_path / "v.mp4"))
    assert info == media.MediaInfo(duration=2.0, has_audio=False, has_video=True, width=32, height=24, fps=5,
                                   frames=10, audio_rate=None, audio_channels=None)
    both = media.probe(write_video(tmp_path / "va.mkv", audio=True))
    assert both.has_audio and both.has_video and (both.audio_rate, both.audio_channels) == (16000, 2)
    assert (both.width, both.height, both.frames) == (32, 24, None)  # Matroska does not count frames
    assert both.duration == pytest.approx(2.0, abs=0.2)


def test_probe_reads_an_audio_files_rate_and_channels(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(media.encode_audio(tone(1.0, 22050), 22050, "wav"))
    info = media.probe(path)
    assert (info.audio_rate, info.audio_channels, info.width, info.height, info.fps, info.frames) == (
        22050, 1, None, None, None, None)
    assert info.duration == pytest.approx(1.0, abs=0.01)


def test_a_file_with_no_streams_is_unsupported(tmp_path):
    path = tmp_path / "meta.txt"
    path.write_text(";FFMETADATA1\ntitle=nada\n")  # a container FFmpeg opens that holds no stream
    with pytest.raises(UnsupportedMedia) as err:
        media.probe(path)
    assert (err.value.code, err.value.param) == ("no_streams", "file")
    assert err.value.message == "the file has neither an audio nor a video stream"


def test_unreadable_missing_and_empty_files_say_so(tmp_path):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"definitely not audio" * 50)
    with pytest.raises(UnsupportedMedia) as err:
        media.probe(junk)
    assert (err.value.code, err.value.param) == ("unsupported_media", "file")
    assert err.value.message == "the file is not audio or video that can be decoded"
    for path in (tmp_path / "missing.wav", tmp_path / "empty.wav"):
        if path.name == "empty.wav":
            path.write_bytes(b"")
        for call in (media.probe, media.decode_audio):
            with pytest.raises(InvalidInput) as err:
                call(path)
            assert (err.value.code, err.value.param, err.value.message) == ("empty_file", "file", "the file is empty")
    one_byte = tmp_path / "one.wav"
    one_byte.write_bytes(b"x")
    with pytest.raises(UnsupportedMedia):  # not empty: tried, and not media
        media.probe(one_byte)


def test_video_limits_refuse_unknown_long_and_large_videos():
    ok = media.MediaInfo(duration=10.0, has_audio=False, has_video=True, width=640, height=480)
    media.check_video_limits(ok, max_seconds=10, max_pixels=640 * 480)  # both limits inclusive
    media.check_video_limits(media.MediaInfo(duration=1.0, has_audio=True, has_video=False), max_seconds=10,
                             max_pixels=1)  # no size: no pixel check
    for duration in (0.0, -1.0):
        with pytest.raises(InvalidInput) as err:
            media.check_video_limits(media.MediaInfo(duration=duration, has_audio=False, has_video=True),
                                     max_seconds=10, max_pixels=100, param="source", what="the source video")
        assert (err.value.code, err.value.param) == ("unknown_duration", "source")
        assert err.value.message == ("the source video does not say how long it lasts (a raw stream without a "
                                     "container, or frames without timestamps); put it in an MP4, MKV or WebM "
                                     "container")
    with pytest.raises(TooLarge) as err:
        media.check_video_limits(ok, max_seconds=9.5, max_pixels=10**9)
    assert (err.value.code, err.value.param) == ("video_too_long", "file")
    assert err.value.message == "the video lasts 10.0 s; the limit is 9.5 s"
    with pytest.raises(TooLarge) as err:
        media.check_video_limits(ok, max_seconds=60, max_pixels=640 * 480 - 1, what="el video")
    assert (err.value.code, err.value.param) == ("video_too_large", "file")
    assert err.value.message == "el video is 640x480; the limit is 307,199 pixels per frame"


def test_max_frames_allows_one_more_for_rounding():
    from fractions import Fraction

    assert media.max_frames(10, Fraction(30000, 1001)) == 301  # 299.7 -> 300, + 1
    assert media.max_frames(2, Fraction(25)) == 51


def test_audio_comes_in_windows_of_the_asked_size(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(media.encode_audio(tone(1.1, 16000), 16000, "wav"))
    windows = list(media.iter_audio(path, 16000, window_samples=4000))
    assert [w.size for w in windows] == [4000, 4000, 4000, 4000, 1600]
    assert all(w.dtype == np.float32 for w in windows)
    whole = media.decode_audio(path, 16000)
    assert np.array_equal(np.concatenate(windows), whole) and whole.size == 17600
    assert float(np.abs(whole).max()) == pytest.approx(0.5, abs=0.01)  # the tone's own level, not rescaled
    resampled = media.decode_audio(path, 8000)
    assert resampled.size == pytest.approx(8800, abs=40)


def test_decoded_audio_is_mono_and_within_minus_one_to_one(tmp_path):
    import av

    path = tmp_path / "loud.wav"
    with av.open(str(path), "w") as out:  # stereo float WAV with samples beyond full scale
        stream = out.add_stream("pcm_f32le", rate=16000, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.tile(np.float32([1.5, 1.5, -1.5, -1.5]), 800).reshape(1, -1),
                                           format="flt", layout="stereo")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    audio = media.decode_audio(path, 16000)
    assert audio.shape == (1600,) and float(audio.max()) == 1.0 and float(audio.min()) == -1.0
    windows = list(media.iter_audio(path, 16000, window_samples=1000))
    assert [(float(w.min()), float(w.max())) for w in windows] == [(-1.0, 1.0), (-1.0, 1.0)]


def test_the_duration_limit_counts_decoded_samples(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(media.encode_audio(tone(2.0, 16000), 16000, "wav"))
    assert media.decode_audio(path, 16000, max_seconds=2.0).size == 32000  # exactly the limit: accepted
    for window in (1000, 100_000):  # refused while decoding, or at the end
        with pytest.raises(TooLarge) as err:
            list(media.iter_audio(path, 16000, window_samples=window, max_seconds=1.99))
        assert (err.value.code, err.value.param) == ("too_long", "file")
        assert err.value.message == "the audio is longer than the 1.99 s limit"


def test_a_video_without_sound_has_no_audio_to_decode(tmp_path):
    with pytest.raises(InvalidInput) as err:
        media.decode_audio(write_video(tmp_path / "v.mp4"))
    assert (err.value.code, err.value.param, err.value.message) == ("no_audio", "file", "the file has no audio stream")


def test_a_corrupt_audio_stream_is_a_bad_audio_error(tmp_path):
    good = media.encode_audio(tone(3.0, 24000), 24000, "flac")
    path = tmp_path / "cut.flac"
    path.write_bytes(good[:len(good) // 2])  # a FLAC cut off mid-frame
    with pytest.raises(InvalidInput) as err:
        media.decode_audio(path, 16000)
    assert (err.value.code, err.value.param) == ("bad_audio", "file")
    assert err.value.message.startswith("the audio could not be decoded: ")


def test_encode_audio_rates_clipping_and_unknown_formats():
    wav = media.encode_audio(tone(0.5, 22050), 22050, "wav")
    assert wav[24:28] == (22050).to_bytes(4, "little")  # WAV keeps the rate it was given
    from tests.tts_media import decode

    for rate, expected in ((22050, 48000), (44100, 48000), (24000, 24000), (16000, 16000), (12000, 12000),
                           (8000, 8000)):
        opus = media.encode_audio(tone(0.5, rate), rate, "opus")
        head = opus.index(b"OpusHead")  # its input sample rate: the rate the encoder was opened at
        assert int.from_bytes(opus[head + 12:head + 16], "little") == expected
        samples, got = decode(opus)
        assert samples.size / got == pytest.approx(0.5, abs=0.03)
    pcm = np.frombuffer(media.encode_audio(np.float32([[2.0, -2.0, 0.5]]), 16000, "pcm"), "<i2")
    assert pcm.tolist() == [32767, -32767, 16383]
    with pytest.raises(InvalidInput) as err:
        media.encode_audio(tone(), 24000, "aac")
    assert err.value.param == "response_format"
    assert err.value.message == "unsupported audio format 'aac'; use one of wav, mp3, opus, flac, pcm"
    assert [media.audio_mime(f) for f in ("wav", "mp3", "opus", "flac", "pcm")] == [
        "audio/wav", "audio/mpeg", "audio/ogg", "audio/flac", "audio/pcm"]


def test_image_limits_and_errors_name_the_field():
    buf = io.BytesIO()
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(buf, "PNG")
    data = buf.getvalue()
    img = media.load_image(data, max_pixels=1200)  # exactly the limit: accepted
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(TooLarge) as err:
        media.load_image(data, max_pixels=1199, param="source")
    assert (err.value.code, err.value.param) == ("image_too_large", "source")
    assert err.value.message == "the image is 40x30; the limit is 1,199 pixels"
    with pytest.raises(InvalidInput) as err:
        media.load_image(b"", max_pixels=10, param="target")
    assert (err.value.code, err.value.param, err.value.message) == ("empty_file", "target", "the image is empty")
    with pytest.raises(InvalidInput) as err:
        media.load_image(b"text" * 10, max_pixels=10, param="target")
    assert (err.value.code, err.value.param) == ("invalid_image", "target")
    assert err.value.message == "not a readable image: use PNG, JPEG or WebP"
    with pytest.raises(InvalidInput) as err:
        media.load_image(data[:60], max_pixels=10_000, param="target")
    assert (err.value.code, err.value.param) == ("invalid_image", "target")
    assert err.value.message.startswith("not a readable image: ") and "PNG, JPEG" not in err.value.message
    with pytest.raises(TooLarge) as err:
        media.load_image(_png_header_only(30000, 30000), max_pixels=40_000_000, param="source")
    assert err.value.param == "source"
    assert err.value.message == "the image has more pixels than the 40,000,000 pixel limit"


def test_encode_image_quality_and_compression_reach_the_file():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8))
    for fmt in ("jpeg", "webp"):
        assert len(media.encode_image(img, fmt, quality=20)) < len(media.encode_image(img, fmt))
    smooth = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (64, 1))).convert("RGB")
    assert len(media.encode_image(smooth, "png", png_compress_level=0)) > len(media.encode_image(smooth, "png"))
    assert len(media.encode_image(smooth, "png")) > len(media.encode_image(smooth, "png", png_compress_level=9)) - 1
    with pytest.raises(InvalidInput) as err:
        media.encode_image(img, "gif")
    assert err.value.param == "output_format"
    assert err.value.message == "unsupported image format 'gif'; use one of png, jpeg, webp"
    assert [media.image_mime(f) for f in ("png", "jpeg", "webp")] == ["image/png", "image/jpeg", "image/webp"]


def test_the_limit_also_counts_the_samples_the_resampler_held_back(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(media.encode_audio(tone(1.0, 22050), 22050, "wav"))
    # 22.05 kHz -> 16 kHz: 15984 samples come while decoding, the last 16 when the resampler is flushed
    assert media.decode_audio(path, 16000, max_seconds=1.0).size == 16000
    with pytest.raises(TooLarge) as err:
        media.decode_audio(path, 16000, max_seconds=0.9994)  # 15990 samples
    assert (err.value.code, err.value.param) == ("too_long", "file")
    assert err.value.message == "the audio is longer than the 0.9994 s limit"


def test_an_audio_stream_without_samples_decodes_to_nothing(tmp_path):
    import wave

    path = tmp_path / "empty.wav"
    with wave.open(str(path), "wb") as w:  # a header and no sample
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    assert list(media.iter_audio(path, window_samples=100)) == []
    audio = media.decode_audio(path)
    assert audio.shape == (0,) and audio.dtype == np.float32


def test_the_defaults_are_16khz_audio_and_the_image_field(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(media.encode_audio(tone(1.0, 16000), 16000, "wav"))
    assert media.decode_audio(path).size == 16000
    assert [w.size for w in media.iter_audio(path, window_samples=10000)] == [10000, 6000]
    with pytest.raises(InvalidInput) as err:
        media.load_image(b"", max_pixels=10)
    assert err.value.param == "image"
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8))
    assert media.encode_image(img, "jpeg") == media.encode_image(img, "jpeg", quality=92)
    assert media.encode_image(img, "webp") == media.encode_image(img, "webp", quality=92)
    assert media.encode_image(img, "png") == media.encode_image(img, "png", png_compress_level=6)


def test_a_raw_video_stream_has_no_duration_and_is_refused(tmp_path):
    import av

    path = tmp_path / "raw.h264"
    with av.open(str(path), "w", format="h264") as out:  # an H.264 elementary stream: no container times
        stream = out.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for i in range(10):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((24, 32, 3), i * 20, np.uint8),
                                                                   format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    info = media.probe(path)
    assert info.has_video and not info.has_audio and info.duration == 0.0 and (info.width, info.height) == (32, 24)
    with pytest.raises(InvalidInput) as err:
        media.check_video_limits(info, max_seconds=60, max_pixels=10**6)
    assert err.value.code == "unknown_duration"
