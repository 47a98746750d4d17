"""The speech service: text + voice + language -> audio, chunk by chunk, through the offloader.

No HTTP here. `stream()` yields each chunk's audio as soon as it is generated (the web layer
streams it; the realtime assistant calls `speak()` sentence by sentence); `synthesize()` joins the
same chunks with a short crossfade.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from prefetch import manifest

from ..errors import InvalidInput
from . import audio, text as text_mod
from .chatterbox_engine import CHATTERBOX_MODELS, ChatterboxEngine
from .kyutai_engine import LANGUAGES as KYUTAI_LANGUAGES
from .kyutai_engine import MODEL_KEY as KYUTAI_MODEL
from .kyutai_engine import KyutaiEngine, KyutaiOptions
from .pocket_engine import LANGUAGES as POCKET_LANGUAGES
from .pocket_engine import MODEL_KEY as POCKET_MODEL
from .pocket_engine import PocketEngine, PocketOptions
from .voices import VoiceStore

log = logging.getLogger("enfoads.tts")

DEFAULT_MODEL = "chatterbox-multilingual"
MULTILINGUAL = "chatterbox-multilingual"
POCKET = "kyutai-pocket-tts"
MAX_CHUNK = 500
# What the default engines offer (a service built with other engines answers for its own).
MODEL_IDS = (*(spec.model_id for spec in CHATTERBOX_MODELS), KYUTAI_MODEL, POCKET_MODEL)
LANGUAGES = tuple(sorted({lang for spec in CHATTERBOX_MODELS for lang in spec.languages}
                         | set(KYUTAI_LANGUAGES) | set(POCKET_LANGUAGES)))


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    model: str = DEFAULT_MODEL
    voice: str | None = None
    language: str = "es"
    temperature: float = 0.8
    exaggeration: float = 0.5
    cfg_weight: float = 0.5
    speed_factor: float = 1.0
    seed: int | None = None
    split_text: bool = True
    chunk_size: int = 120


@dataclass(frozen=True)
class Plan:
    """What will run: the engine that speaks (maybe not the one asked for) and the chunks."""

    request: SpeechRequest
    engine: object
    chunks: list[str]
    routed_from: str | None = None

    @property
    def sample_rate(self) -> int:
        return self.engine.sample_rate


@dataclass(frozen=True)
class Chunk:
    index: int
    total: int
    text: str
    samples: np.ndarray
    sample_rate: int


Progress = Callable[[float, str], None]


class TtsService:
    def __init__(self, model_env, *, voices_dir: Path, max_chars: int = 5000, clip_min_s: float = 5.0,
                 clip_max_s: float = 30.0, engines: dict | None = None, kyutai: KyutaiOptions | None = None,
                 pocket: PocketOptions | None = None):
        self.env = model_env
        self.max_chars = max_chars
        self.voices = VoiceStore(voices_dir, min_seconds=clip_min_s, max_seconds=clip_max_s)
        if engines is None:
            engines = {spec.model_id: ChatterboxEngine(spec, model_env) for spec in CHATTERBOX_MODELS}
            kyutai_engine = KyutaiEngine(model_env, kyutai)
            engines[kyutai_engine.name] = kyutai_engine
            pocket_engine = PocketEngine(model_env, pocket)
            engines[pocket_engine.name] = pocket_engine
        self.engines: dict = engines
        self._lock = threading.Lock()

    def register_models(self) -> None:
        for engine in self.engines.values():
            # Chatterbox stays fp32 on every GPU (see ChatterboxEngine._load).
            dtype = "float32" if getattr(engine, "family", "") == "chatterbox" else self.env.dtype
            engine.register(self.env.vram, manifest.vram_estimate(engine.name, dtype))

    def list_voices(self) -> list[dict]:
        """Clip voices (built-in, predefined, cloned: every Chatterbox model) and each engine's own."""
        found = [v.public() for v in self.voices.list()]
        for engine in self.engines.values():
            if hasattr(engine, "voices"):
                found += [v.public() for v in engine.voices().values()]
        return found

    def _voice(self, engine, voice_id: str | None):
        """The request's voice as the engine takes it (engines with their own voices resolve them)."""
        if hasattr(engine, "resolve_voice"):
            return engine.resolve_voice(voice_id, self.voices)
        return self.voices.get(voice_id)

    def models(self) -> list[dict]:
        return [{"id": name, "languages": list(e.languages), "sample_rate": e.sample_rate,
                 "available": e.available()} for name, e in self.engines.items()]

    # --- planning ------------------------------------------------------------------------------
    def plan(self, req: SpeechRequest) -> Plan:
        text = (req.text or "").strip()
        if not text:
            raise InvalidInput("input: the text is empty", param="input", code="empty_text")
        if len(text) > self.max_chars:
            raise InvalidInput(f"input: the text has {len(text)} characters; the maximum is {self.max_chars}",
                               param="input", code="text_too_long")
        if not req.split_text and len(text) > MAX_CHUNK:
            raise InvalidInput(f"input: without split_text the text may have at most {MAX_CHUNK} characters "
                               f"(it has {len(text)}); turn split_text on", param="input", code="text_too_long")
        engine = self.engines.get(req.model)
        if engine is None:
            raise InvalidInput(f"model: unknown TTS model {req.model!r}; use one of {', '.join(self.engines)}",
                               param="model", code="unknown_model")
        language = (req.language or "").lower()
        all_languages = sorted({lang for e in self.engines.values() for lang in e.languages})
        if language not in all_languages:
            raise InvalidInput(f"language: unsupported language {req.language!r}; supported: "
                               f"{', '.join(all_languages)}", param="language", code="unsupported_language")
        routed_from = None
        if language not in engine.languages:
            # e.g. Spanish asked of an English/French-only model: the multilingual model speaks it;
            # asked of Kyutai's DSM, Kyutai's Pocket TTS does (Kyutai stays Kyutai).
            pocket = self.engines.get(POCKET)
            kyutai_asked = getattr(engine, "family", "") == "kyutai"
            fallback = pocket if kyutai_asked and pocket is not None and language in pocket.languages \
                else self.engines.get(MULTILINGUAL)
            if fallback is None or language not in fallback.languages:
                raise InvalidInput(f"language: {req.model} does not speak {language!r} "
                                   f"(it speaks {', '.join(engine.languages)})", param="language",
                                   code="unsupported_language")
            routed_from, engine = req.model, fallback
            own = self.engines[req.model]
            if hasattr(own, "voices") and req.voice in own.voices():
                # a voice only the asked model has: the fallback speaks with its built-in voice
                log.info("%s: voice %s is %s's own; %s speaks with its built-in voice", language, req.voice,
                         req.model, engine.name)
                req = replace(req, voice=None)
        if not engine.available():
            for key in getattr(engine, "model_keys", (engine.name,)):
                self.env.locate(key)  # raises ModelUnavailable with the prefetch command
        self._voice(engine, req.voice)  # unknown voice -> 404 now, not after loading a model
        chunks = text_mod.chunk_text(text, language, req.chunk_size) if req.split_text else [text]
        req = replace(req, language=language, text=text)
        return Plan(req, engine, chunks, routed_from)

    # --- synthesis -----------------------------------------------------------------------------
    def stream(self, plan: Plan, progress: Progress | None = None) -> Iterator[Chunk]:
        """Generate chunk by chunk; each is yielded as soon as it exists."""
        req, engine = plan.request, plan.engine
        voice = self._voice(engine, req.voice)
        total = len(plan.chunks)
        if progress:
            progress(0.0, f"{engine.name}: {total} chunk(s)")
        for i, chunk_text in enumerate(plan.chunks):
            samples = self._generate(engine, req, voice, chunk_text, i)
            samples = audio.change_speed(samples, req.speed_factor)
            if progress:
                progress((i + 1) / total, f"chunk {i + 1}/{total}")
            yield Chunk(i, total, chunk_text, samples, engine.sample_rate)

    def _generate(self, engine, req: SpeechRequest, voice, chunk_text: str, index: int) -> np.ndarray:
        import torch

        def run(model):
            if req.seed is not None:
                torch.manual_seed(req.seed + index)
            return engine.generate(model, chunk_text, language=req.language, voice=voice,
                                   temperature=req.temperature, exaggeration=req.exaggeration,
                                   cfg_weight=req.cfg_weight)

        with self._lock:  # one synthesis at a time: engines keep per-voice state on the model
            return self.env.vram.run(engine.name, run)  # VramError reports as 503

    def synthesize(self, plan: Plan, progress: Progress | None = None) -> np.ndarray:
        pieces = [c.samples for c in self.stream(plan, progress)]
        return audio.crossfade_join(pieces, plan.sample_rate)

    def speak(self, text: str, *, voice: str | None = None, language: str = "es",
              model: str = DEFAULT_MODEL, **params) -> Iterator[tuple[np.ndarray, int]]:
        """For in-process callers (the realtime assistant): (float32 samples, sample rate) per chunk."""
        plan = self.plan(SpeechRequest(text=text, voice=voice, language=language, model=model, **params))
        for chunk in self.stream(plan):
            yield chunk.samples, chunk.sample_rate
