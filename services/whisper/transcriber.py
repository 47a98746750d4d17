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
from typing import Callable, Iterator

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
HOP_LENGTH = 160  # samples per mel frame: the unit of a segment's `seek`
CUT_SEARCH_S = 30.0  # a window ends at a pause found in its last this-many seconds (a quarter of short windows)
MIN_PAUSE_S = 0.2

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
                 max_seconds: float = 4 * 3600, video_max_pixels: int = 1920 * 1088, window_seconds: float = 300):
        self.env = model_env
        self.default_key = SIZES[default_model]
        self.compute_type = ctranslate2_compute_type(model_env.device) if compute_type == "auto" else compute_type
        self.default_language = normalize_language(default_language)
        self.beam_size = beam_size
        self.cpu_threads = cpu_threads
        self.max_seconds = max_seconds
        self.video_max_pixels = video_max_pixels
        self.window_samples = int(window_seconds * SAMPLE_RATE)
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

    def transcribe_file(self, path: Path, options: TranscribeOptions | None = None, *, model: str | None = None,
                        progress: Progress | None = None) -> dict:
        """Transcribe any audio/video file, refusing non-media (415), no audio / empty (400), too long
        (413). The audio is decoded window by window into the model: memory stays at about one window
        however long the file is, and a cancelled job stops within a window."""
        path = Path(path)
        info = media.probe(path)
        if not info.has_audio:
            raise InvalidInput("the file has no audio stream", param="file", code="no_audio")
        self.check_duration(info.duration)
        options = options or self.options()
        key = self.model_key(model)
        windows = media.iter_audio(path, SAMPLE_RATE, window_samples=self.window_samples,
                                   max_seconds=self.max_seconds)
        # Decoders may hand back a few ms more than the container's duration (codec padding): a
        # subtitle must not outlast the media a player shows.
        return self.env.vram.run(self.vram_name(key), lambda m: self._run(m, key, windows, options, progress,
                                                                          expected=info.duration or None))

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
        step = self.window_samples
        windows = (audio[i:i + step] for i in range(0, audio.size, step))
        return self.env.vram.run(self.vram_name(key), lambda m: self._run(m, key, windows, options, progress,
                                                                          expected=duration))

    def language_probabilities(self, audio: np.ndarray, *, model: str | None = None) -> list[tuple[str, float]]:
        """Whisper's probability for each language it knows (most probable first) that `audio`
        (16 kHz mono float32) is spoken in it: faster-whisper's own detection on the first 30 s."""
        audio = np.ascontiguousarray(np.asarray(audio, dtype=np.float32).reshape(-1))
        if audio.size == 0:
            raise InvalidInput("no audio samples to detect a language in", param="file", code="empty_audio")
        key = self.model_key(model)

        def detect(m):
            if not m.model.is_multilingual:
                return [("en", 1.0)]
            _, _, probs = m.detect_language(audio=audio)
            return [(lang, float(p)) for lang, p in probs]

        return self.env.vram.run(self.vram_name(key), detect)

    def _run(self, model, key: str, windows: Iterator[np.ndarray], opts: TranscribeOptions,
             progress: Progress | None, *, expected: float | None) -> dict:
        """Transcribe consecutive windows of one recording as one timeline. Each window is cut at the
        longest pause near its end (Silero VAD), the rest carried into the next one, so that no word is
        split; segment times are shifted by where the window starts."""
        if opts.language and model.hf_tokenizer.token_to_id(f"<|{opts.language}|>") is None:
            raise InvalidInput(f"the model {key} does not know the language {opts.language!r}", param="language",
                               code="invalid_language")
        t0 = time.perf_counter()
        language = opts.language
        raw: list[dict] = []
        speech = 0.0
        offset = 0  # samples before the current piece
        carry = np.zeros(0, np.float32)
        detected = None
        search_s = min(CUT_SEARCH_S, self.window_samples / SAMPLE_RATE / 4)
        ahead = next(windows, None)
        while ahead is not None:
            buf = np.concatenate([carry, ahead]) if carry.size else ahead
            ahead = next(windows, None)
            cut = buf.size if ahead is None else _pause_near_end(buf, search_s)
            piece, carry = buf[:cut], buf[cut:]
            segments, info = model.transcribe(
                piece, language=language, task=opts.task, beam_size=opts.beam_size,
                temperature=opts.temperature if opts.temperature is not None else [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
                vad_filter=opts.vad_filter, word_timestamps=opts.word_timestamps,
                initial_prompt=opts.initial_prompt)
            start_s, piece_s = offset / SAMPLE_RATE, piece.size / SAMPLE_RATE
            found = [_segment_dict(seg) for seg in _reporting(segments, start_s, piece_s, expected, progress)]
            raw.extend(_shift(seg, start_s, offset) for seg in normalize(found, piece_s))
            speech += float(info.duration_after_vad)
            if detected is None and (info.duration_after_vad > 0 or ahead is None):
                # The first window with speech decides the language for the rest of the file.
                detected = info
                language = language or info.language
            offset += cut
            if progress is not None:  # also where a cancelled job stops, between windows
                _report(progress, offset / SAMPLE_RATE, expected)
        if offset == 0:
            raise InvalidInput("the file's audio stream is empty", param="file", code="empty_audio")
        duration = offset / SAMPLE_RATE
        duration = min(duration, expected) if expected else duration
        segs = normalize(raw, duration)
        words = [w for s in segs for w in (s.get("words") or [])]
        elapsed = time.perf_counter() - t0
        log.info("whisper %s: %.1f s of audio (%.1f s of speech) in %.1f s, language %s, %d segments", key,
                 duration, speech, elapsed, detected.language, len(segs))
        result = {
            "task": opts.task,
            "language": detected.language,
            "language_probability": round(float(detected.language_probability), 4),
            "duration": round(duration, 3),
            "speech_duration": round(speech, 3),
            "model": key,
            "text": "".join(s["text"] for s in segs).strip(),
            "segments": segs,
        }
        if opts.word_timestamps:
            result["words"] = words
        return result


def _report(progress: Progress, done: float, expected: float | None) -> None:
    if expected:
        done = min(done, expected)
        progress(done / expected, f"transcribed {done:.1f} of {expected:.1f} s")
    else:  # a stream that does not say how long it is
        progress(0.0, f"transcribed {done:.1f} s")


def _reporting(segments, start_s: float, piece_s: float, expected: float | None, progress: Progress | None):
    for seg in segments:  # lazy: each step runs the model on one more 30-s stretch
        if progress is not None:  # a segment's end may run past its window: progress never goes back
            _report(progress, start_s + min(seg.end, piece_s), expected)
        yield seg


def _shift(seg: dict, seconds: float, samples: int) -> dict:
    out = dict(seg, start=seg["start"] + seconds, end=seg["end"] + seconds,
               seek=seg["seek"] + samples // HOP_LENGTH)
    if seg.get("words") is not None:
        out["words"] = [dict(w, start=w["start"] + seconds, end=w["end"] + seconds) for w in seg["words"]]
    return out


def _pause_near_end(audio: np.ndarray, search_s: float) -> int:
    """Where to end a window: the middle of the longest pause in its last `search_s` seconds (by
    Silero VAD), or its end when that stretch is all speech or all silence."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    begin = max(0, audio.size - int(search_s * SAMPLE_RATE))
    tail = audio[begin:]
    spans = get_speech_timestamps(tail, VadOptions(min_silence_duration_ms=100, speech_pad_ms=0))
    if not spans:
        return audio.size
    edges = [0] + [x for span in spans for x in (span["start"], span["end"])] + [tail.size]
    gaps = [(edges[i + 1] - edges[i], edges[i], edges[i + 1]) for i in range(0, len(edges), 2)]
    width, lo, hi = max(gaps)
    if width < MIN_PAUSE_S * SAMPLE_RATE:
        return audio.size
    return begin + (lo + hi) // 2


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
