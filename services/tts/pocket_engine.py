"""Kyutai Pocket TTS (the `pocket-tts` package): 100M parameters, CPU-first, speaks Spanish.

One model per language (`languages/<name>/model.safetensors` of kyutai/pocket-tts, the weights
with the voice-cloning encoder) with its tokenizer and Kyutai's precomputed voices
(`languages/<name>/{tokenizer.json,embeddings/<voice>.safetensors}` of
kyutai/pocket-tts-without-voice-cloning). The package's own YAML config for the language is
read, its hub paths replaced by our local files, and the model built with the package's public
`TTSModel.load_model(config=...)`: nothing is downloaded at run time. A `config.yaml` beside the
weights replaces the package's config (a custom or tiny model of another size).

It runs on its own device (CPU by default: on a T4 it speaks while the GPU holds the other
models) and still goes through the offloader: loaded on first use, counted in the offloader's
budget when it shares the offloader's device (none of the GPU's when it runs on the CPU beside
it), and unloaded with the rest when idle.

Voices: Kyutai's own (`pocket-<name>`, per language: `lola` speaks Spanish) and every clip voice
of the voice store (cloned and predefined): Pocket TTS clones from a clip.
"""
from __future__ import annotations

import logging
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefetch import locate

from ..errors import InvalidInput, ModelUnavailable, NotFound
from .voices import DEFAULT_VOICE, check_id

log = logging.getLogger("enfoads.tts.pocket")

MODEL_KEY = "kyutai-pocket-tts"
VOICES_KEY = "kyutai-pocket-tts-voices"
SAMPLE_RATE = 24000
# ISO 639-1 -> the package's language name (its config/<name>.yaml and the repos' folders).
LANGUAGE_NAMES = {"es": "spanish", "fr": "french", "de": "german", "it": "italian", "pt": "portuguese",
                  "nl": "dutch"}
LANGUAGES = tuple(LANGUAGE_NAMES)
VOICE_PREFIX = "pocket-"
LOCAL_CONFIG = "config.yaml"
PRELOADED = "es"
VOICE_STATES_KEPT = 8  # encoded voice prompts (a clip costs a Mimi encode; an embedding, a file read)


@dataclass(frozen=True)
class PocketOptions:
    device: str = "cpu"
    max_seconds: float = 60.0  # per chunk: generation stops there even if the text is not finished
    default_voice: str | None = None  # a pocket voice name (e.g. "lola"); None: the language's own


@dataclass(frozen=True)
class PocketVoice:
    """A voice as this engine takes it: Kyutai's embedding (per language) or a reference clip."""

    id: str
    name: str
    kind: str  # pocket | clip | builtin
    clip: Path | None = None
    languages: tuple[str, ...] = ()

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "type": "pocket", "created_at": None, "models": [MODEL_KEY],
                "languages": list(self.languages)}


def prefetch_command(profile: str, models_dir: Path | None = None) -> str:
    return locate.prefetch_command(MODEL_KEY, VOICES_KEY, profile=profile, models_dir=models_dir)


def _base(language: str) -> str:
    return (language or "").lower().split("-")[0]


def _import_pocket():
    """pocket_tts sets torch's thread count to 1 when imported: keep the process's setting."""
    import torch

    threads = torch.get_num_threads()
    import pocket_tts  # noqa: F401

    torch.set_num_threads(threads)
    from pocket_tts import TTSModel

    return TTSModel


class PocketModels:
    """What the offloader holds: one loaded TTSModel per language, built on first use."""

    def __init__(self, engine: "PocketEngine", device: str):
        self.engine = engine
        self.device = device
        self.by_language: dict[str, object] = {}
        self.voice_states: OrderedDict[tuple, dict] = OrderedDict()
        self._lock = threading.Lock()

    def model(self, language: str):
        with self._lock:
            tts = self.by_language.get(language)
            if tts is None:
                tts = self.engine.load_language(language, self.device)
                self.by_language[language] = tts
            return tts


class PocketEngine:
    name = MODEL_KEY
    languages = LANGUAGES
    sample_rate = SAMPLE_RATE
    family = "pocket"
    model_keys = (MODEL_KEY, VOICES_KEY)

    def __init__(self, model_env, options: PocketOptions | None = None):
        self.env = model_env
        self.options = options or PocketOptions()
        self._lock = threading.Lock()
        self._beside = False  # runs on the CPU while the offloader holds a GPU (set at register)

    # --- files -------------------------------------------------------------------------------
    def available(self) -> bool:
        return all(self.env.present(key) for key in self.model_keys)

    def _files(self, language: str) -> tuple[Path, Path, Path]:
        """(weights, tokenizer, embeddings dir) of one language; ModelUnavailable if absent."""
        name = LANGUAGE_NAMES[language]
        weights = self.env.locate(MODEL_KEY) / "languages" / name / "model.safetensors"
        assets = self.env.locate(VOICES_KEY) / "languages" / name
        tokenizer = assets / "tokenizer.json"
        for path in (weights, tokenizer):
            if not path.is_file():
                raise ModelUnavailable(f"{path} is missing: Pocket TTS has no {name} model on this machine; run "
                                       f"`{prefetch_command(self.env.profile, self.env.models_dir)}`", code="model_unavailable")
        return weights, tokenizer, assets / "embeddings"

    def voices(self) -> dict[str, PocketVoice]:
        """Kyutai's precomputed voices on this machine, by API id ({} if none)."""
        if not self.available():
            return {}
        root = self.env.locate(VOICES_KEY) / "languages"
        found: dict[str, list[str]] = {}
        for code, name in LANGUAGE_NAMES.items():
            for path in sorted((root / name / "embeddings").glob("*.safetensors")):
                found.setdefault(path.stem, []).append(code)
        return {VOICE_PREFIX + stem: PocketVoice(VOICE_PREFIX + stem, stem, "pocket", None, tuple(codes))
                for stem, codes in sorted(found.items())}

    def resolve_voice(self, voice_id: str | None, store) -> PocketVoice:
        """none/default/an OpenAI name without a clip -> the language's own voice; pocket-<name> ->
        Kyutai's voice; any clip voice of the store (cloned, predefined) -> cloned from its clip."""
        if voice_id in (None, "", DEFAULT_VOICE):
            return PocketVoice(DEFAULT_VOICE, "the language's default voice", "builtin")
        check_id(voice_id)
        own = self.voices()
        if voice_id in own:
            return own[voice_id]
        try:
            clip = store.get(voice_id)
        except NotFound:
            raise NotFound(f"unknown voice {voice_id!r} for {MODEL_KEY}; available: "
                           f"{', '.join(sorted(own) + sorted(v.id for v in store.list()))}", param="voice",
                           code="voice_not_found") from None
        if clip.path is None:  # an OpenAI name with no clip placed under it
            return PocketVoice(voice_id, "the language's default voice", "builtin")
        return PocketVoice(clip.id, clip.name, "clip", clip.path)

    # --- offloader -----------------------------------------------------------------------------
    def register(self, vram, estimate_bytes: int) -> None:
        # On the CPU beside a GPU offloader it takes none of the GPU's memory.
        self._beside = self.device_for(vram.device) != str(vram.device)
        vram.register(self.name, self._load, runtime="torch", estimate_bytes=0 if self._beside else estimate_bytes,
                      family="tts", to_device=self._place)

    def _load(self, device: str) -> PocketModels:
        self.env.locate(MODEL_KEY), self.env.locate(VOICES_KEY)  # 503 naming the prefetch command
        models = PocketModels(self, self.device_for(device))
        models.model(PRELOADED)  # Spanish now (load time measured here); the others on first use
        return models

    def device_for(self, offloader_device: str) -> str:
        """Where this engine runs beside an offloader on `offloader_device` (cuda only where there is one)."""
        offloader_device = str(offloader_device)
        if self.options.device == "cuda" and offloader_device.startswith("cuda"):
            return offloader_device
        return "cpu"

    def _place(self, models: PocketModels, device: str) -> PocketModels:
        """Offloader hook: parking in host RAM moves a GPU-resident Pocket TTS to the CPU; one
        configured for the CPU never moves. Beside a GPU, being parked (idle, or evicted) frees
        its languages instead: it holds no GPU memory to give back, and host RAM is what it uses."""
        if device == "cpu" and self._beside:
            if models.by_language:
                log.info("%s idle: freeing its %s model(s) from host RAM", self.name, ", ".join(models.by_language))
            models.by_language.clear()
            models.voice_states.clear()
            return models
        target = self.device_for(device)
        if target != models.device:
            for tts in models.by_language.values():
                tts.to(target)
            models.voice_states.clear()  # they hold tensors of the old device
            models.device = target
        return models

    def load_language(self, language: str, device: str):
        import yaml

        TTSModel = _import_pocket()
        from pocket_tts.utils.config import CONFIGS_DIR

        weights, tokenizer, _ = self._files(language)
        name = LANGUAGE_NAMES[language]
        own_config = weights.parent / LOCAL_CONFIG
        source = own_config if own_config.is_file() else CONFIGS_DIR / f"{name}.yaml"
        config = yaml.safe_load(source.read_text(encoding="utf-8"))
        # Local files only: the package's config names hub files (hf://...@rev) it would download.
        config["weights_path"] = str(weights)
        config["weights_path_without_voice_cloning"] = None
        config["flow_lm"]["lookup_table"]["tokenizer_path"] = str(tokenizer)
        for section in ("flow_lm", "mimi"):
            config[section].pop("weights_path", None)
        log.info("loading %s (%s) from %s on %s", self.name, name, weights.parent, device)
        with tempfile.TemporaryDirectory(prefix="pocket-config-") as tmp:
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
            tts = TTSModel.load_model(config=str(path))
        return tts.to(device).eval()

    # --- synthesis -------------------------------------------------------------------------------
    def _voice_state(self, models: PocketModels, tts, language: str, voice: PocketVoice) -> dict:
        if voice.kind == "clip":
            source, key = voice.clip, (language, "clip", str(voice.clip), voice.clip.stat().st_mtime_ns)
        else:
            name = voice.name if voice.kind == "pocket" else self._default_voice_name(language)
            _, _, embeddings = self._files(language)
            source = embeddings / f"{name}.safetensors"
            if not source.is_file():
                have = sorted(p.stem for p in embeddings.glob("*.safetensors"))
                raise InvalidInput(f"voice: Pocket TTS has no {LANGUAGE_NAMES[language]} voice {name!r} "
                                   f"(it has: {', '.join(VOICE_PREFIX + h for h in have) or 'none'}; cloned voices "
                                   f"speak every language)", param="voice", code="voice_unsupported")
            key = (language, "pocket", name)
        state = models.voice_states.get(key)
        if state is None:
            state = tts.get_state_for_audio_prompt(Path(source))
            models.voice_states[key] = state
            while len(models.voice_states) > VOICE_STATES_KEPT:
                models.voice_states.popitem(last=False)
        models.voice_states.move_to_end(key)
        return state

    def _default_voice_name(self, language: str) -> str:
        if self.options.default_voice:
            return self.options.default_voice
        from pocket_tts.default_parameters import get_default_voice_for_language

        return get_default_voice_for_language(LANGUAGE_NAMES[language])

    def generate(self, models: PocketModels, text: str, *, language: str, voice: PocketVoice, temperature: float,
                 exaggeration: float, cfg_weight: float) -> np.ndarray:
        """One chunk of text -> float32 mono at 24 kHz. Pocket TTS samples at its own recommended
        temperature (0.3); Chatterbox's temperature/exaggeration/cfg_weight do not apply."""
        import torch

        language = _base(language)
        if language not in LANGUAGE_NAMES:
            raise InvalidInput(f"language: Pocket TTS does not speak {language!r} (it speaks {', '.join(LANGUAGES)})",
                               param="language", code="unsupported_language")
        voice = voice or PocketVoice(DEFAULT_VOICE, "default", "builtin")
        tts = models.model(language)
        limit = int(self.options.max_seconds * self.sample_rate)
        pieces, total = [], 0
        stop = threading.Event()
        with self._lock:
            state = self._voice_state(models, tts, language, voice)
            # The package's own streaming generation; the stop event caps a chunk's length
            # (a model that never samples its end-of-speech would otherwise run to its estimate).
            for piece in tts.generate_audio_stream(state, text, copy_state=True, stop=stop):
                pieces.append(piece.detach().float().cpu())
                total += piece.shape[-1]
                if total >= limit:
                    stop.set()
        if total >= limit:
            log.warning("%s: text not finished after %.0f s (tts_pocket_max_seconds); audio cut there",
                        self.name, self.options.max_seconds)
        wav = torch.cat(pieces)[:limit] if pieces else torch.zeros(0)
        return wav.clamp(-1, 1).numpy().astype(np.float32, copy=False)

