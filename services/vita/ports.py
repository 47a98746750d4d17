"""What the assistant needs from the speech services, as two small protocols.

Both are synchronous and called from a session's response thread. The whisper and TTS services
plug in through the adapters below; tests plug in doubles.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Transcriber(Protocol):
    def transcribe(self, audio: np.ndarray, language: str | None) -> tuple[str, str | None]:
        """16 kHz mono float32 -> (text, detected language code or None). `language=None`: detect."""

    def language_probabilities(self, audio: np.ndarray) -> Iterable[tuple[str, float]]:
        """16 kHz mono float32 -> (language code, probability) for every language the model knows."""


@runtime_checkable
class Speaker(Protocol):
    def synthesize(self, text: str, language: str, voice: str | None) -> Iterator[tuple[np.ndarray, int]]:
        """Text -> chunks of (mono float32 in [-1, 1], sample rate), first chunk as early as possible."""


def vram_names(component: Any) -> tuple[str, ...]:
    """The offloader names of the models a component uses (pinned while a session is open)."""
    return tuple(getattr(component, "vram_names", ()) or ())


class WhisperTranscriber:
    """Transcriber over the whisper service (services/whisper): its in-memory array entry point."""

    def __init__(self, whisper_service: Any):
        self.service = whisper_service
        self.vram_names = (whisper_service.vram_name(whisper_service.default_key),)

    def transcribe(self, audio: np.ndarray, language: str | None) -> tuple[str, str | None]:
        # Silero VAD already cut the utterance, so whisper's own VAD would only cost time; one greedy
        # pass (no temperature fallback retries) keeps the reply latency predictable.
        options = self.service.options(language=language, vad_filter=False, temperature=0.0)
        result = self.service.transcribe_array(audio, options)
        return str(result.get("text", "")).strip(), result.get("language")

    def language_probabilities(self, audio: np.ndarray) -> list[tuple[str, float]]:
        return self.service.language_probabilities(audio)


class TtsSpeaker:
    """Speaker over the TTS service (services/tts): its in-process streaming entry point, which
    yields (float32 audio, sample_rate) chunks sentence by sentence."""

    def __init__(self, tts_service: Any, model: str, fallback_language: str = "es"):
        self.service = tts_service
        self.model = model
        self.fallback_language = fallback_language
        self.vram_names = (model,)

    def languages(self) -> set[str]:
        return {lang for engine in self.service.engines.values() if engine.available() for lang in engine.languages}

    def synthesize(self, text: str, language: str, voice: str | None) -> Iterator[tuple[np.ndarray, int]]:
        # Whisper may detect a language no TTS engine on this machine speaks (or mishear one):
        # answer in the assistant's own language rather than not at all.
        if (language or "").lower() not in self.languages():
            language = self.fallback_language
        for audio, rate in self.service.speak(text, voice=voice, language=language, model=self.model):
            yield np.asarray(audio, dtype=np.float32).reshape(-1), int(rate)
