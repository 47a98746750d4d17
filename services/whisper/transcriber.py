"""Speech to text with faster-whisper (CTranslate2), through the VRAM offloader.

One `WhisperService` per backend. Each model size of the manifest is registered with the
offloader as a load/unload-only runtime; a transcription holds its model (`vram.run`) for as long
as faster-whisper's lazy segment generator runs, so the model cannot be evicted mid-file.

Two entry points: `transcribe_file` (any audio/video PyAV decodes: probed first so an over-long
file is refused before decoding) and `transcribe_array` (16 kHz mono float32, for in-process
callers such as the realtime assistant). Both return the same plain dict (JSON-ready), with
times clamped to the media duration and monotonic (see timeline.py).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from prefetch import manifest
from services import media
from services.device import ctranslate2_compute_type
from services.errors import InvalidInput, TooLarge
from services.vram import Runtime

from .languages import normalize_language
from .timeline import normalize
from .video import check_video

log = logging.getLogger("enfoads.whisper")

SAMPLE_RATE = 16000
SIZES = {"large-v3-turbo": "whisper-large-v3-turbo", "small": "whisper-small", "base": "whisper-base"}
OPENAI_MODEL = "whisper-1"  # what OpenAI clients send: our default model
TASKS = ("transcribe", "translate")
MAX_PROMPT_CHARS = 1000  # Whisper keeps at most 223 prompt tokens; longer text is cut anyway

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class TranscribeOptions:
    language: str | None = None  # a Whisper code; None: detect
    task: str = "transcribe"
    vad_filter: bool = True
    word_timestamps: bool = False
    initial_prompt: str | None = None
    temperature: float | None = None  # None: faster-whisper's fallback schedule 0.0..1.0
    beam_size: int = 5


class WhisperService:
    def __init__(self, model_env, *, default_model: str = "large-v3-turbo", compute_type: str = "auto",
                 default_language: str | None = "es", beam_size: int = 5, cpu_threads: int = 0,
                 max_seconds: float = 4 * 3600, video_max_pixels: int = 1920 * 1088):
        self.env = model_env
        self.default_key = SIZES[default_model]
        self.compute_type = ctranslate2_compute_type(model_env.device) if compute_type == "auto" else compute_type
        self.default_language = normalize_language(default_language)
        self.beam_size = beam_size
        self.cpu_threads = cpu_threads
        self.max_seconds = max_seconds
        self.video_max_pixels = video_max_pixels
        for key in SIZES.values():
            model_env.vram.register(self.vram_name(key), self._loader(key), runtime=Runtime.CTRANSLATE2,
                                    estimate_bytes=manifest.vram_estimate(key, self.compute_type),
                                    family="whisper", unload=_unload)

    # ------------------------------------------------------------------ models

    @staticmethod
    def vram_name(key: str) -> str:
        return f"whisper:{key}"

    def model_key(self, model: str | None) -> str:
        """The manifest key for a client's `model` value ('whisper-1', a size, or a key)."""
        if model in (None, "", OPENAI_MODEL):
            return self.default_key
        if model in SIZES:
            return SIZES[model]
        if model in SIZES.values():
            return model
        raise InvalidInput(f"unknown model {model!r}; use {OPENAI_MODEL} (the default, "
                           f"{self.default_key}) or one of: {', '.join([*SIZES, *SIZES.values()])}",
                           param="model", code="invalid_model")

    def _loader(self, key: str):
        def load(device: str):
            from faster_whisper import WhisperModel

            path = self.env.locate(key)
            kind, _, index = device.partition(":")
            t0 = time.perf_counter()
            model = WhisperModel(str(path), device=kind, device_index=int(index or 0),
                                 compute_type=self.compute_type, cpu_threads=self.cpu_threads,
                                 local_files_only=True)
            log.info("whisper %s ready on %s (%s) in %.1f s", key, device, self.compute_type,
                     time.perf_counter() - t0)
            return model

        return load

    # ------------------------------------------------------------------ options

    def options(self, *, language: str | None = "default", task: str = "transcribe", vad_filter: bool = True,
                word_timestamps: bool = False, initial_prompt: str | None = None,
                temperature: float | None = None, beam_size: int | None = None) -> TranscribeOptions:
        """Validated options; `language="default"` takes the configured default."""
        if language == "default":
            lang = self.default_language
        else:
            try:
                lang = normalize_language(language)
            except ValueError as exc:
                raise InvalidInput(str(exc), param="language", code="invalid_language") from None
        if task not in TASKS:
            raise InvalidInput(f"unknown task {task!r}; use one of: {', '.join(TASKS)}", param="task")
        if temperature is not None and not 0.0 <= temperature <= 1.0:
            raise InvalidInput("temperature must be between 0 and 1", param="temperature")
        prompt = (initial_prompt or "").strip() or None
        if prompt and len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidInput(f"the prompt is longer than {MAX_PROMPT_CHARS} characters", param="prompt")
        return TranscribeOptions(language=lang, task=task, vad_filter=bool(vad_filter),
                                 word_timestamps=bool(word_timestamps), initial_prompt=prompt,
                                 temperature=temperature, beam_size=beam_size or self.beam_size)

    # ------------------------------------------------------------------ transcription

    def check_duration(self, seconds: float) -> None:
        if seconds > self.max_seconds:
            raise TooLarge(f"the media lasts {seconds:.0f} s; the limit is {self.max_seconds:g} s", param="file",
                           code="too_long")

    def check_video(self, info: media.MediaInfo) -> None:
        check_video(info, max_seconds=self.max_seconds, max_pixels=self.video_max_pixels)

    def decode(self, path: Path) -> tuple[np.ndarray, media.MediaInfo]:
        """The file's audio at 16 kHz mono, refusing non-media (415), no audio / empty (400), too long (413)."""
        info = media.probe(path)
        if not info.has_audio:
            raise InvalidInput("the file has no audio stream", param="file", code="no_audio")
        self.check_duration(info.duration)
        audio = media.decode_audio(path, SAMPLE_RATE, max_seconds=self.max_seconds)
        if audio.size == 0:
            raise InvalidInput("the file's audio stream is empty", param="file", code="empty_audio")
        return audio, info

    def transcribe_file(self, path: Path, options: TranscribeOptions | None = None, *, model: str | None = None,
                        progress: Progress | None = None) -> dict:
        audio, info = self.decode(Path(path))
        # Decoders may hand back a few ms more than the container's duration (codec padding): a
        # subtitle must not outlast the media a player shows.
        duration = min(audio.size / SAMPLE_RATE, info.duration) if info.duration else None
        return self.transcribe_array(audio, options, model=model, progress=progress, duration=duration)

    def transcribe_array(self, audio: np.ndarray, options: TranscribeOptions | None = None, *,
                         model: str | None = None, progress: Progress | None = None,
                         duration: float | None = None) -> dict:
        """Transcribe 16 kHz mono float32 samples in [-1, 1]; times are clamped to `duration`
        (default: the samples' length)."""
        audio = np.ascontiguousarray(np.asarray(audio, dtype=np.float32).reshape(-1))
        if audio.size == 0:
            raise InvalidInput("no audio samples to transcribe", param="file", code="empty_audio")
        self.check_duration(audio.size / SAMPLE_RATE)
        options = options or self.options()
        key = self.model_key(model)
        duration = duration or audio.size / SAMPLE_RATE
        return self.env.vram.run(self.vram_name(key),
                                 lambda m: self._run(m, key, audio, duration, options, progress))

    def _run(self, model, key: str, audio: np.ndarray, duration: float, opts: TranscribeOptions,
             progress: Progress | None) -> dict:
        if opts.language and model.hf_tokenizer.token_to_id(f"<|{opts.language}|>") is None:
            raise InvalidInput(f"the model {key} does not know the language {opts.language!r}", param="language",
                               code="invalid_language")
        t0 = time.perf_counter()
        segments, info = model.transcribe(
            audio, language=opts.language, task=opts.task, beam_size=opts.beam_size,
            temperature=opts.temperature if opts.temperature is not None else [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            vad_filter=opts.vad_filter, word_timestamps=opts.word_timestamps, initial_prompt=opts.initial_prompt)
        raw: list[dict] = []
        for seg in segments:  # lazy: each step decodes one more window
            raw.append(_segment_dict(seg))
            if progress is not None:
                done = min(seg.end, duration)
                progress(done / duration if duration else 1.0, f"transcribed {done:.1f} of {duration:.1f} s")
        segs = normalize(raw, duration)
        words = [w for s in segs for w in (s.get("words") or [])]
        elapsed = time.perf_counter() - t0
        log.info("whisper %s: %.1f s of audio (%.1f s of speech) in %.1f s, language %s, %d segments", key,
                 duration, info.duration_after_vad, elapsed, info.language, len(segs))
        result = {
            "task": opts.task,
            "language": info.language,
            "language_probability": round(float(info.language_probability), 4),
            "duration": round(duration, 3),
            "speech_duration": round(float(info.duration_after_vad), 3),
            "model": key,
            "text": "".join(s["text"] for s in segs).strip(),
            "segments": segs,
        }
        if opts.word_timestamps:
            result["words"] = words
        return result


def _segment_dict(seg) -> dict:
    d = {
        "id": seg.id, "seek": seg.seek, "start": seg.start, "end": seg.end, "text": seg.text,
        "tokens": list(seg.tokens), "temperature": seg.temperature,
        "avg_logprob": round(float(seg.avg_logprob), 4),
        "compression_ratio": round(float(seg.compression_ratio), 4),
        "no_speech_prob": round(float(seg.no_speech_prob), 4),
    }
    if seg.words is not None:
        d["words"] = [{"word": w.word, "start": w.start, "end": w.end, "probability": round(float(w.probability), 4)}
                      for w in seg.words]
    return d


def _unload(model) -> None:
    # CTranslate2 frees device memory when the last reference goes; unloading now makes the
    # offloader's bookkeeping true even while some stray reference (a traceback) lingers.
    try:
        model.model.unload_model()
    except Exception:  # already unloaded, or an older CTranslate2 without it
        log.debug("whisper unload_model failed", exc_info=True)


def options_dict(options: TranscribeOptions) -> dict:
    """JSON-ready options for a job's params (the job rebuilds them with `TranscribeOptions(**d)`)."""
    return asdict(options)
