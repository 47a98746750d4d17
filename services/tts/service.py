"""The speech service: text + voice + language -> audio, chunk by chunk, through the offloader.

No HTTP here. `stream()` yields each chunk's audio as soon as it is generated (the web layer
streams it; the realtime assistant calls `speak()` sentence by sentence); `synthesize()` joins the
same chunks with a short crossfade.
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from prefetch import manifest

from ..errors import InvalidInput, Unprocessable
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

POCKET = "kyutai-pocket-tts"
MAX_CHUNK = 500
# What the default engines offer (a service built with other engines answers for its own).
MODEL_IDS = (*(spec.model_id for spec in CHATTERBOX_MODELS), KYUTAI_MODEL, POCKET_MODEL)
LANGUAGES = tuple(sorted({lang for spec in CHATTERBOX_MODELS for lang in spec.languages}
                         | set(KYUTAI_LANGUAGES) | set(POCKET_LANGUAGES)))

# Who speaks a language, best first: the first one on this machine speaks when a request names no
# model (or an OpenAI alias), or names one that cannot speak the language. An engine that should
# be preferred for a language registers here; FAMILY_SPEAKERS is tried first for a request that
# named a model of that family (so a family's own engine keeps a request when it can), e.g.
# {"kyutai": {"es": ("kyutai-pocket-tts",)}}.
SPEAKERS: dict[str, tuple[str, ...]] = {
    "es": ("chatterbox-es-latam", "chatterbox-multilingual-v3", "chatterbox-multilingual"),
}
ANY_LANGUAGE: tuple[str, ...] = ("chatterbox-multilingual-v3", "chatterbox-multilingual")
FAMILY_SPEAKERS: dict[str, dict[str, tuple[str, ...]]] = {
    # Spanish (or another Pocket language) asked of Kyutai's DSM (en/fr): Kyutai stays Kyutai.
    "kyutai": {lang: (POCKET,) for lang in POCKET_LANGUAGES},
}
# Languages whose regional tags (es-MX, es-419, ...) are spoken: by the same models as the language.
REGIONAL = {"es"}
_LANGUAGE_TAG = re.compile(r"^([a-z]{2,3})(?:[-_]([a-z]{2}|[0-9]{3}))?$", re.IGNORECASE)
# OpenAI's model names: they mean this server's default TTS model.
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
_OPENAI_MODEL = re.compile(r"^gpt-4o.*-tts(-\d{4}-\d{2}-\d{2})?$")


def is_openai_alias(name: str | None) -> bool:
    return bool(name) and (name in OPENAI_MODELS or bool(_OPENAI_MODEL.match(name)))


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    model: str | None = None  # None (or an OpenAI alias): the server's default
    voice: str | None = None
    language: str | None = None  # None: the server's default; regional tags (es-MX) accepted
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
                 pocket: PocketOptions | None = None, default_model: str | None = None,
                 default_language: str = "es"):
        self.env = model_env
        self.max_chars = max_chars
        self.default_model_setting = default_model or None  # None: the best one present for the language
        self.default_language = default_language
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
        default = self.default_model()
        return [{"id": name, "languages": list(e.languages), "sample_rate": e.sample_rate,
                 "available": e.available(), "default": name == default} for name, e in self.engines.items()]

    # --- routing -------------------------------------------------------------------------------
    def speakers(self, language: str, family: str | None = None) -> list[str]:
        """Registered engines that speak `language`, best first."""
        order = [*FAMILY_SPEAKERS.get(family or "", {}).get(language, ()), *SPEAKERS.get(language, ()),
                 *ANY_LANGUAGE, *self.engines]
        seen: list[str] = []
        for name in order:
            if name in self.engines and name not in seen and language in self.engines[name].languages:
                seen.append(name)
        return seen

    def best_model(self, language: str, family: str | None = None) -> str | None:
        """The best speaker of `language` on this machine; if none is, the best one to download."""
        names = self.speakers(language, family)
        return next((n for n in names if self.engines[n].available()), names[0] if names else None)

    def default_model(self, language: str | None = None) -> str | None:
        """What a request without a model (or with an OpenAI alias) asks for."""
        return self.default_model_setting or self.best_model(self._language(language)[0])

    def model_aliases(self) -> dict[str, str | None]:
        default = self.default_model()
        return {alias: default for alias in OPENAI_MODELS}

    def _language(self, tag: str | None) -> tuple[str, str | None]:
        """(language, region) of a tag such as es, es-MX, es-419, es_mx; 400 naming the field."""
        tag = (tag or self.default_language or "").strip()
        supported = sorted({lang for e in self.engines.values() for lang in e.languages})
        m = _LANGUAGE_TAG.match(tag)
        if not m or m.group(1).lower() not in supported:
            raise InvalidInput(f"language: unsupported language {tag!r}; supported: {', '.join(supported)} "
                               f"(and Spanish regional tags such as es-MX, es-419)", param="language",
                               code="unsupported_language")
        language, region = m.group(1).lower(), m.group(2)
        if region and language not in REGIONAL:
            raise InvalidInput(f"language: regional variants of {language!r} are not supported ({tag!r}); "
                               f"send {language!r}", param="language", code="unsupported_region")
        return language, region.upper() if region else None

    # --- planning ------------------------------------------------------------------------------
    def plan(self, req: SpeechRequest, *, text_param: str = "input") -> Plan:
        """Check the request and choose who speaks it. `text_param` names the text's field in
        errors (the caller's own field name: `input` for OpenAI's body, `text` for /tts)."""
        text = (req.text or "").strip()
        if not text:
            raise InvalidInput(f"{text_param}: the text is empty", param=text_param, code="empty_text")
        if len(text) > self.max_chars:
            raise InvalidInput(f"{text_param}: the text has {len(text)} characters; the maximum is {self.max_chars}",
                               param=text_param, code="text_too_long")
        if not req.split_text and len(text) > MAX_CHUNK:
            raise InvalidInput(f"{text_param}: without split_text the text may have at most {MAX_CHUNK} characters "
                               f"(it has {len(text)}); turn split_text on", param=text_param, code="text_too_long")
        if not any(ch.isalnum() for ch in text):
            raise Unprocessable(f"{text_param}: the text has no letters or digits to speak", param=text_param,
                                code="no_audio")
        language, _region = self._language(req.language)
        asked = None if req.model is None or is_openai_alias(req.model) else req.model
        if asked is not None and asked not in self.engines:
            raise InvalidInput(f"model: unknown TTS model {req.model!r}; use one of {', '.join(self.engines)} "
                               f"(or {', '.join(OPENAI_MODELS)}: the server's default)", param="model",
                               code="unknown_model")
        asked = asked or self.default_model_setting
        routed_from = None
        if asked is None:
            name = self.best_model(language)
            if name is None:
                raise InvalidInput(f"language: no TTS model speaks {language!r}", param="language",
                                   code="unsupported_language")
            engine = self.engines[name]
        else:
            engine = self.engines[asked]
            if language not in engine.languages:
                # e.g. Spanish asked of an English-only model: the best speaker of Spanish here speaks it
                name = self.best_model(language, getattr(engine, "family", None))
                if name is None:
                    raise InvalidInput(f"language: {asked} does not speak {language!r} (it speaks "
                                       f"{', '.join(engine.languages)})", param="language",
                                       code="unsupported_language")
                routed_from, own, engine = asked, engine, self.engines[name]
                if hasattr(own, "voices") and req.voice in own.voices():
                    # a voice only the asked model has: the fallback speaks with its built-in voice
                    log.info("%s: voice %s is %s's own; %s speaks with its built-in voice", language, req.voice,
                             asked, engine.name)
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

    def speak(self, text: str, *, voice: str | None = None, language: str | None = None,
              model: str | None = None, **params) -> Iterator[tuple[np.ndarray, int]]:
        """For in-process callers (the realtime assistant): (float32 samples, sample rate) per chunk."""
        plan = self.plan(SpeechRequest(text=text, voice=voice, language=language, model=model, **params))
        for chunk in self.stream(plan):
            yield chunk.samples, chunk.sample_rate
