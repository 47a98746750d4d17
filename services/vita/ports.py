"""What the assistant needs from the speech services, as two small protocols.

Both are synchronous and called from a session's response thread. The whisper and TTS services
plug in through the adapters below; tests plug in doubles.
"""
from __future__ import annotations

from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Transcriber(Protocol):
    def transcribe(self, audio: np.ndarray, language: str | None) -> tuple[str, str | None]:
        """16 kHz mono float32 -> (text, detected language code or None). `language=None`: detect."""


@runtime_checkable
class Speaker(Protocol):
    def synthesize(self, text: str, language: str, voice: str | None) -> Iterator[tuple[np.ndarray, int]]:
        """Text -> chunks of (mono float32 in [-1, 1], sample rate), first chunk as early as possible."""


def vram_names(component: Any) -> tuple[str, ...]:
    """The offloader names of the models a component uses (pinned while a session is open)."""
    return tuple(getattr(component, "vram_names", ()) or ())


class WhisperTranscriber:
    """Transcriber over the whisper service (services/whisper): its in-memory array entry point.

    The service's method takes a 16 kHz float32 array and a language (None = detect) and returns
    an object or dict with `text` and `language`.
    """

    def __init__(self, whisper_service: Any, method: str = "transcribe_array"):
        self.service = whisper_service
        self._call = getattr(whisper_service, method)
        self.vram_names = vram_names(whisper_service)

    def transcribe(self, audio: np.ndarray, language: str | None) -> tuple[str, str | None]:
        result = self._call(audio, language=language)
        if isinstance(result, dict):
            return str(result.get("text", "")).strip(), result.get("language")
        if isinstance(result, tuple):
            return str(result[0]).strip(), result[1]
        return str(getattr(result, "text", "")).strip(), getattr(result, "language", None)


class TtsSpeaker:
    """Speaker over the TTS service (services/tts): its streaming synthesis entry point, which
    yields (float32 audio, sample_rate) chunks for text / language / voice."""

    def __init__(self, tts_service: Any, method: str = "synthesize_stream"):
        self.service = tts_service
        self._call = getattr(tts_service, method)
        self.vram_names = vram_names(tts_service)

    def synthesize(self, text: str, language: str, voice: str | None) -> Iterator[tuple[np.ndarray, int]]:
        for audio, rate in self._call(text, language=language, voice=voice):
            yield np.asarray(audio, dtype=np.float32).reshape(-1), int(rate)
