"""Voices: predefined ones (reference clips in a folder) and clones uploaded by users.

Both live under <data>/voices/: `predefined/<id>.<ext>` (shipped or placed by the operator) and
`cloned/<id>.wav` (made here: decoded, resampled, loudness-normalised). An id is a short slug; no
id can name a path. OpenAI's voice names map to predefined voices so stock clients work.
"""
from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


from ..errors import Conflict, InvalidInput, NotFound, TooLarge
from ..media import decode_audio, encode_audio
from .audio import normalize_loudness

# Used with fullmatch only: `$` would also accept a trailing newline ("evil\n").
VOICE_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
CLIP_RATE = 24000
AUDIO_SUFFIXES = {".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a"}
DEFAULT_VOICE = "default"
# OpenAI voice name -> predefined voice id (the model's own built-in voice unless a clip exists).
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")


@dataclass(frozen=True)
class Voice:
    id: str
    kind: str  # builtin | predefined | cloned
    path: Path | None  # reference clip; None = the model's built-in voice
    name: str = ""
    created_at: float | None = None

    def public(self) -> dict:
        return {"id": self.id, "name": self.name or self.id, "type": self.kind, "created_at": self.created_at}


def check_id(voice_id: str, param: str = "voice") -> str:
    if not isinstance(voice_id, str) or not VOICE_ID.fullmatch(voice_id):
        raise InvalidInput(f"{param}: a voice id is 1-64 characters of a-z, 0-9, '-' and '_' "
                           f"(got {voice_id!r})", param=param, code="invalid_voice_id")
    return voice_id


class VoiceStore:
    def __init__(self, root: Path, *, min_seconds: float = 5.0, max_seconds: float = 30.0):
        self.root = Path(root)
        self.predefined_dir = self.root / "predefined"
        self.cloned_dir = self.root / "cloned"
        self.min_seconds = min_seconds
        self.max_seconds = max_seconds
        # Taking an id (exists? then move the clip in) must be one step: parallel clones of the
        # same id would otherwise both pass the check and the last one would win silently.
        self._claim = threading.Lock()
        self.predefined_dir.mkdir(parents=True, exist_ok=True)
        self.cloned_dir.mkdir(parents=True, exist_ok=True)

    # --- listing -----------------------------------------------------------------------------
    def _predefined(self) -> dict[str, Voice]:
        found = {DEFAULT_VOICE: Voice(DEFAULT_VOICE, "builtin", None, "the model's built-in voice")}
        for path in sorted(self.predefined_dir.iterdir()):
            if path.suffix.lower() in AUDIO_SUFFIXES and VOICE_ID.fullmatch(path.stem.lower()):
                found[path.stem.lower()] = Voice(path.stem.lower(), "predefined", path)
        return found

    def _cloned(self) -> dict[str, Voice]:
        found = {}
        for path in sorted(self.cloned_dir.glob("*.wav")):
            meta = self._meta(path)
            found[path.stem] = Voice(path.stem, "cloned", path, meta.get("name", ""), meta.get("created_at"))
        return found

    @staticmethod
    def _meta(clip: Path) -> dict:
        try:
            return json.loads(clip.with_suffix(".json").read_text())
        except (OSError, ValueError):
            return {}

    def list(self) -> list[Voice]:
        return [*self._predefined().values(), *self._cloned().values()]

    def get(self, voice_id: str | None) -> Voice:
        voice_id = DEFAULT_VOICE if voice_id in (None, "") else voice_id
        check_id(voice_id)
        voices = {**self._predefined(), **self._cloned()}
        if voice_id in voices:
            return voices[voice_id]
        if voice_id in OPENAI_VOICES:  # no clip placed under that name: the built-in voice
            return Voice(voice_id, "builtin", None, f"OpenAI name '{voice_id}' (built-in voice)")
        raise NotFound(f"unknown voice {voice_id!r}; available: {', '.join(sorted(voices))}", param="voice",
                       code="voice_not_found")

    # --- cloning -------------------------------------------------------------------------------
    def clone(self, upload: Path, *, name: str = "", voice_id: str | None = None) -> Voice:
        """A reference clip from any decodable audio: 5-30 s, not silent; stored as 24 kHz WAV."""
        if voice_id is not None:
            check_id(voice_id, "id")
            if voice_id in self._predefined() or voice_id in OPENAI_VOICES:
                raise Conflict(f"id: {voice_id!r} is a predefined voice", param="id", code="voice_exists")
        try:
            samples = decode_audio(upload, CLIP_RATE, max_seconds=self.max_seconds + 0.5)
        except TooLarge:
            raise InvalidInput(f"file: the reference clip must last at most {self.max_seconds:g} s", param="file",
                               code="audio_too_long") from None
        except Exception as exc:
            message = getattr(exc, "message", str(exc))
            raise InvalidInput(f"file: the reference clip is not usable audio ({message})", param="file",
                               code=getattr(exc, "code", None) or "invalid_audio") from None
        seconds = samples.size / CLIP_RATE
        if seconds < self.min_seconds:
            raise InvalidInput(f"file: the reference clip is {seconds:.1f} s; it must last at least "
                               f"{self.min_seconds:g} s", param="file", code="audio_too_short")
        if seconds > self.max_seconds:
            raise InvalidInput(f"file: the reference clip is {seconds:.1f} s; it must last at most "
                               f"{self.max_seconds:g} s", param="file", code="audio_too_long")
        samples = normalize_loudness(samples, CLIP_RATE)
        voice_id = voice_id or f"voice-{uuid.uuid4().hex[:12]}"
        clip = self.cloned_dir / f"{voice_id}.wav"
        # A name of its own per request: parallel clones never touch each other's files.
        tmp = self.cloned_dir / f".{voice_id}.{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(encode_audio(samples, CLIP_RATE, "wav"))
        meta = {"name": name or voice_id, "created_at": time.time(), "seconds": round(seconds, 2)}
        try:
            with self._claim:
                if clip.exists():
                    raise Conflict(f"id: a cloned voice {voice_id!r} exists already; delete it first "
                                   f"(DELETE /v1/audio/voices/{voice_id}) or choose another id",
                                   param="id", code="voice_exists")
                clip.with_suffix(".json").write_text(json.dumps(meta))
                tmp.replace(clip)
        finally:
            tmp.unlink(missing_ok=True)
        return Voice(voice_id, "cloned", clip, meta["name"], meta["created_at"])

    def delete(self, voice_id: str) -> None:
        check_id(voice_id)
        clip = self.cloned_dir / f"{voice_id}.wav"
        if not clip.is_file():
            if voice_id in self._predefined():
                raise InvalidInput(f"voice {voice_id!r} is predefined and cannot be deleted", param="voice_id",
                                   code="voice_predefined")
            raise NotFound(f"no cloned voice {voice_id!r}", param="voice_id", code="voice_not_found")
        clip.unlink()
        clip.with_suffix(".json").unlink(missing_ok=True)
