"""Face swap on a video: decode with PyAV, swap frame by frame, encode H.264 into MP4 with the
same frame timestamps (so the frame count and rate are kept) and the audio packets copied as they
are (re-encoded to AAC only when MP4 cannot carry the original codec)."""
from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from typing import Callable

from .. import media
from ..errors import InvalidInput, TooLarge, Unprocessable, UnsupportedMedia
from .models import INSWAPPER, PACK, FaceConfig
from .service import FaceService, analyze

log = logging.getLogger("enfoads.face")

# Audio codecs the MP4 muxer takes as they are.
MP4_AUDIO_COPY = {"aac", "mp3", "alac", "flac", "opus", "ac3", "eac3"}

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


def _add_audio(out, in_audio):
    """An output audio stream: a copy of the input's when MP4 takes its codec, else AAC."""
    name = in_audio.codec_context.name
    if name in MP4_AUDIO_COPY:
        return out.add_stream_from_template(in_audio), True
    rate = in_audio.codec_context.sample_rate or 48000
    # Raw PCM often has no channel layout ("1 channels"), which the AAC encoder refuses.
    layout = "mono" if in_audio.codec_context.channels == 1 else "stereo"
    stream = out.add_stream("aac", rate=rate, layout=layout)
    return stream, False


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
    import av

    cfg = service.cfg
    with av.open(str(target)) as inp, av.open(str(out_path), "w", format="mp4") as out:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        ain = inp.streams.audio[0] if inp.streams.audio else None
        width, height = vin.codec_context.width, vin.codec_context.height
        rate = vin.average_rate or vin.guessed_rate or Fraction(25)
        vout = out.add_stream("libx264", rate=rate)
        vout.width, vout.height = width, height
        # 4:2:0 needs even sizes; 4:4:4 keeps odd-sized videos at their size.
        vout.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        vout.codec_context.time_base = vin.time_base
        vout.options = {"crf": "18", "preset": "veryfast"}
        aout, copy_audio = _add_audio(out, ain) if ain is not None else (None, False)
        resampler = None
        if aout is not None and not copy_audio:
            resampler = av.AudioResampler(format=aout.codec_context.format.name,
                                          layout=aout.codec_context.layout.name, rate=aout.codec_context.sample_rate)

        total = vin.frames or max(1, round(info.duration * float(rate)))
        # The container's duration was checked, but a stream may hold more frames than it says.
        frame_cap = media.max_frames(cfg.video_max_seconds, rate)
        frames = with_faces = swaps = 0
        last_pts = None
        streams = [vin] + ([ain] if ain is not None else [])
        for packet in inp.demux(*streams):
            if packet.stream.index == vin.index:
                for frame in packet.decode():
                    late = frame.time is not None and frame.time > cfg.video_max_seconds + 1
                    if late or frames >= frame_cap:
                        raise TooLarge(f"the video runs past the {cfg.video_max_seconds:g} s limit",
                                       param="target", code="video_too_long")
                    img = frame.to_ndarray(format="bgr24")
                    # Held per frame (a resident acquire costs microseconds): a job paused for
                    # interactive work between frames holds no model in use.
                    with vram.acquire(PACK) as pack, vram.acquire(INSWAPPER) as swapper:
                        faces = analyze(pack, img)
                        chosen = [i for i in (range(len(faces)) if target_indices is None else target_indices)
                                  if 0 <= i < len(faces)]
                        if chosen:
                            with_faces += 1
                            swaps += len(chosen)
                            img = service.swap_faces(swapper, img, faces, chosen, src_face)
                            img = service.restore_swapped(img, faces, chosen, restore)
                    new = av.VideoFrame.from_ndarray(img, format="bgr24")
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
            "duration": round(info.duration, 3), "frames_with_faces": with_faces, "faces_swapped": swaps,
            "faces_restored": swaps if restore is not None else 0,
            "audio": None if ain is None else ("copied" if copy_audio else "aac")}
