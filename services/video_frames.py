"""Frame-by-frame video processing shared by the families that edit videos (face swap, portrait
animation): decode with PyAV, hand each frame to a function, encode H.264 into MP4 with the same
frame timestamps (so the frame count and rate are kept) and the audio packets copied as they are
(re-encoded to AAC only when MP4 cannot carry the original codec). A stream holding more frames
than its duration says is cut at the limit (413)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from . import media
from .errors import TooLarge

# Audio codecs the MP4 muxer takes as they are.
MP4_AUDIO_COPY = {"aac", "mp3", "alac", "flac", "opus", "ac3", "eac3"}

Progress = Callable[[float, str], None]
FrameFn = Callable[[np.ndarray, int], np.ndarray]  # (BGR frame, index) -> BGR frame


def add_audio_stream(out, in_audio):
    """An output audio stream: a copy of the input's when MP4 takes its codec, else AAC."""
    name = in_audio.codec_context.name
    if name in MP4_AUDIO_COPY:
        return out.add_stream_from_template(in_audio), True
    rate = in_audio.codec_context.sample_rate or 48000
    # Raw PCM often has no channel layout ("1 channels"), which the AAC encoder refuses.
    layout = "mono" if in_audio.codec_context.channels == 1 else "stereo"
    return out.add_stream("aac", rate=rate, layout=layout), False


def add_video_stream(out, rate, width: int, height: int, time_base=None, crf: int = 18):
    vout = out.add_stream("libx264", rate=rate)
    vout.width, vout.height = width, height
    # 4:2:0 needs even sizes; 4:4:4 keeps odd-sized videos at their size.
    vout.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    if time_base is not None:
        vout.codec_context.time_base = time_base
    vout.options = {"crf": str(crf), "preset": "veryfast"}
    return vout


def map_video(src: Path, out_path: Path, fn: FrameFn, info: media.MediaInfo, *, max_seconds: float,
              param: str, report: Progress, out_size: tuple[int, int] | None = None) -> dict:
    """Write `fn(frame)` for every frame of `src` into `out_path` (MP4), audio copied.
    `out_size` (width, height): the size `fn` returns, when not the input's."""
    import av

    with av.open(str(src)) as inp, av.open(str(out_path), "w", format="mp4") as out:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        ain = inp.streams.audio[0] if inp.streams.audio else None
        width, height = out_size or (vin.codec_context.width, vin.codec_context.height)
        rate = vin.average_rate or vin.guessed_rate or Fraction(25)
        vout = add_video_stream(out, rate, width, height, time_base=vin.time_base)
        aout, copy_audio = add_audio_stream(out, ain) if ain is not None else (None, False)
        resampler = None
        if aout is not None and not copy_audio:
            resampler = av.AudioResampler(format=aout.codec_context.format.name,
                                          layout=aout.codec_context.layout.name, rate=aout.codec_context.sample_rate)

        total = vin.frames or max(1, round(info.duration * float(rate)))
        # The container's duration was checked, but a stream may hold more frames than it says.
        frame_cap = media.max_frames(max_seconds, rate)
        frames = 0
        last_pts = None
        streams = [vin] + ([ain] if ain is not None else [])
        for packet in inp.demux(*streams):
            if packet.stream.index == vin.index:
                for frame in packet.decode():
                    late = frame.time is not None and frame.time > max_seconds + 1
                    if late or frames >= frame_cap:
                        raise TooLarge(f"the video runs past the {max_seconds:g} s limit", param=param,
                                       code="video_too_long")
                    img = fn(frame.to_ndarray(format="bgr24"), frames)
                    new = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
                    pts = frame.pts if frame.pts is not None else (0 if last_pts is None else last_pts + 1)
                    if last_pts is not None and pts <= last_pts:
                        pts = last_pts + 1
                    new.pts, new.time_base, last_pts = pts, vin.time_base, pts
                    for p in vout.encode(new):
                        out.mux(p)
                    frames += 1
                    report(min(frames / total, 0.99), f"frame {frames}/{max(total, frames)}")
            elif aout is not None:
                if copy_audio:
                    if packet.dts is None:  # the demuxer's end-of-stream marker
                        continue
                    packet.stream = aout
                    out.mux(packet)
                else:
                    for frame in packet.decode():
                        frame.pts = None
                        for resampled in resampler.resample(frame):
                            for p in aout.encode(resampled):
                                out.mux(p)
        for p in vout.encode(None):
            out.mux(p)
        if aout is not None and not copy_audio:
            for resampled in resampler.resample(None):
                for p in aout.encode(resampled):
                    out.mux(p)
            for p in aout.encode(None):
                out.mux(p)
    report(1.0, f"{frames} frames")
    return {"frames": frames, "fps": round(float(rate), 3), "width": width, "height": height,
            "duration": round(info.duration, 3),
            "audio": None if ain is None else ("copied" if copy_audio else "aac")}


def write_video(frames, out_path: Path, *, fps: int, width: int, height: int, samples: np.ndarray | None = None,
                sample_rate: int = 16000) -> None:
    """BGR frames (an iterable) at `fps` into an H.264 MP4, with mono float `samples` as AAC."""
    import av

    with av.open(str(out_path), "w", format="mp4") as out:
        vout = add_video_stream(out, Fraction(fps), width, height)
        aout = out.add_stream("aac", rate=sample_rate, layout="mono") if samples is not None else None
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for p in vout.encode(frame):
                out.mux(p)
        for p in vout.encode(None):
            out.mux(p)
        if aout is not None:
            pcm = (np.clip(np.asarray(samples, np.float32).reshape(-1), -1, 1) * 32767).astype("<i2").reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate = sample_rate
            resampler = av.AudioResampler(format=aout.codec_context.format.name, layout="mono", rate=sample_rate)
            for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
                for p in aout.encode(chunk):
                    out.mux(p)
            for p in aout.encode(None):
                out.mux(p)
