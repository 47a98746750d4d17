"""Kyutai DSM TTS (kyutai/tts-1.6b-en_fr) through moshi: English and French only.

Loaded with moshi's own `CheckpointInfo.from_hf_repo` (every file path given, so no hub call) and
`TTSModel.from_checkpoint_info`; synthesis follows moshi's `run_tts` script: the script becomes
word entries, the LM generates text + audio tokens under the DSM state machine, Mimi decodes the
frames, and the audio is cut at the step where the text ended (plus moshi's final padding).

Voices are the precomputed speaker embeddings of `kyutai/tts-voices`
(`<voice>.wav.<sig>@<epoch>.safetensors`); this model cannot clone from a reference clip (its
speaker encoder is not published), so cloned and predefined clip voices are refused here.
"""
from __future__ import annotations

import contextlib
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefetch import manifest

from ..device import torch_dtype
from ..errors import InvalidInput, ModelUnavailable, NotFound
from .voices import DEFAULT_VOICE, OPENAI_VOICES, check_id

log = logging.getLogger("enfoads.tts.kyutai")

MODEL_KEY = "kyutai-tts-1.6b-en_fr"
VOICES_KEY = "kyutai-tts-voices"
SAMPLE_RATE = 24000
LANGUAGES = ("en", "fr")
MIMI_CONFIG_FILE = "mimi_config.json"  # only beside checkpoints whose Mimi is not moshi's default size
VOICE_PREFIX = "kyutai-"
CFG_VALUES = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)  # the cfg conditioner's values (CFG-distilled model)


@dataclass(frozen=True)
class KyutaiOptions:
    default_voice: str = "expresso/ex03-ex01_happy_001_channel1_334s.wav"  # name inside kyutai-tts-voices
    max_seconds: float = 60.0  # per chunk: generation stops there even if the text is not finished
    cfg_coef: float = 2.0


@dataclass(frozen=True)
class KyutaiVoice:
    id: str
    name: str  # the voice's name in the voices repo, e.g. expresso/ex03-..._334s.wav
    path: Path

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "type": "kyutai", "created_at": None, "models": [MODEL_KEY]}


def voice_id_for(name: str) -> str:
    """A voice-repo name as an API voice id: kyutai-<folder>-<file stem>, a-z0-9_- only."""
    stem = re.sub(r"\.wav$", "", name.lower())
    slug = re.sub(r"[^a-z0-9_-]+", "-", stem).strip("-_")
    return (VOICE_PREFIX + slug)[:64].rstrip("-_")


def move_kyutai(tts, device: str):
    """Offloader hook: TTSModel is a dataclass holding two modules (LM and Mimi)."""
    tts.lm.to(device)
    tts.mimi.to(device)
    return tts


class KyutaiEngine:
    name = MODEL_KEY
    languages = LANGUAGES
    sample_rate = SAMPLE_RATE
    family = "kyutai"
    model_keys = (MODEL_KEY, VOICES_KEY)

    def __init__(self, model_env, options: KyutaiOptions | None = None):
        self.env = model_env
        self.options = options or KyutaiOptions()
        if self.options.cfg_coef not in CFG_VALUES:
            raise ValueError(f"Kyutai cfg_coef must be one of {CFG_VALUES}")
        self._lock = threading.Lock()

    # --- files and voices --------------------------------------------------------------------
    def available(self) -> bool:
        return all(self.env.present(key) for key in self.model_keys)

    def _voice_suffix(self) -> str:
        import json

        model_id = json.loads((self.env.locate(MODEL_KEY) / "config.json").read_text())["model_id"]
        return f".{model_id['sig']}@{model_id['epoch']}.safetensors"

    def voices(self) -> dict[str, KyutaiVoice]:
        """The voice embeddings on this machine for this checkpoint, by API id ({} if none)."""
        if not self.available():
            return {}
        root, suffix = self.env.locate(VOICES_KEY), self._voice_suffix()
        found: dict[str, KyutaiVoice] = {}
        for path in sorted(root.rglob(f"*{suffix}")):
            name = path.relative_to(root).as_posix()[: -len(suffix)]
            found.setdefault(voice_id_for(name), KyutaiVoice(voice_id_for(name), name, path))
        return found

    def resolve_voice(self, voice_id: str | None, store) -> KyutaiVoice:
        """The embedding for a request's voice: none/default/an OpenAI name -> the configured
        default voice; a kyutai-* id -> that voice; clip voices (cloned/predefined) -> 400."""
        voices = self.voices()
        if voice_id in (None, "", DEFAULT_VOICE) or voice_id in OPENAI_VOICES:
            wanted = voice_id_for(self.options.default_voice)
            if wanted not in voices:
                raise ModelUnavailable(f"the default Kyutai voice {self.options.default_voice!r} is not in "
                                       f"{VOICES_KEY}; set ENFOADS_TTS_KYUTAI_VOICE to one of: "
                                       f"{', '.join(v.name for v in voices.values()) or 'none'}",
                                       code="voice_unavailable")
            return voices[wanted]
        check_id(voice_id)
        if voice_id in voices:
            return voices[voice_id]
        if any(v.id == voice_id for v in store.list()):
            raise InvalidInput(f"voice: {MODEL_KEY} cannot speak with reference-clip voices such as {voice_id!r} "
                               f"(it uses precomputed voices: {', '.join(sorted(voices)) or 'none'}); "
                               f"use a chatterbox model for cloned voices", param="voice", code="voice_unsupported")
        raise NotFound(f"unknown voice {voice_id!r} for {MODEL_KEY}; available: {', '.join(sorted(voices))}",
                       param="voice", code="voice_not_found")

    # --- offloader -------------------------------------------------------------------------------
    def register(self, vram, estimate_bytes: int) -> None:
        vram.register(self.name, self._load, runtime="torch", estimate_bytes=estimate_bytes, family="tts",
                      to_device=move_kyutai)

    def _load(self, device: str):
        import json

        import torch
        from moshi.models.loaders import CheckpointInfo
        from moshi.models.tts import TTSModel

        folder = self.env.locate(MODEL_KEY)
        config_path = folder / "config.json"
        config = json.loads(config_path.read_text())
        for key in ("mimi_config_name", "lora_name"):
            if config.get(key):  # moshi would fetch these from the hub by name
                raise ModelUnavailable(f"{config_path} names {key}; this server loads local files only",
                                       code="model_unavailable")
        mimi_config = folder / MIMI_CONFIG_FILE
        info = CheckpointInfo.from_hf_repo(
            manifest.get(MODEL_KEY).repo_id,
            moshi_weights=folder / config["moshi_name"], mimi_weights=folder / config["mimi_name"],
            tokenizer=folder / config["tokenizer_name"], config_path=config_path,
            mimi_config_path=mimi_config if mimi_config.is_file() else None)
        # moshi defaults to bf16; the policy says fp16 on a T4 (bf16 is emulated there), fp32 on CPU.
        dtype = torch_dtype(self.env.dtype) if device.startswith("cuda") else torch.float32
        log.info("loading %s from %s on %s (%s)", self.name, folder, device, dtype)
        tts = TTSModel.from_checkpoint_info(info, n_q=info.lm_config["n_q"], device=device, dtype=dtype)
        if not tts.multi_speaker:
            raise ModelUnavailable(f"{folder} is not a speaker-conditioned DSM TTS checkpoint",
                                   code="model_unavailable")
        return tts

    # --- synthesis -------------------------------------------------------------------------------
    def generate(self, tts, text: str, *, language: str, voice: KyutaiVoice, temperature: float,
                 exaggeration: float, cfg_weight: float) -> np.ndarray:
        """One chunk of text -> float32 mono at 24 kHz. exaggeration/cfg_weight are Chatterbox's
        and do not apply; the CFG strength is the engine's setting."""
        import torch

        entries = tts.prepare_script([text], padding_between=1)
        if tts.valid_cfg_conditionings:  # CFG-distilled: the strength is a condition, not a second pass
            attributes = tts.make_condition_attributes([voice.path], cfg_coef=self.options.cfg_coef)
            cfg_coef = 1.0
        else:
            attributes = tts.make_condition_attributes([voice.path])
            cfg_coef = self.options.cfg_coef
        frame_rate = tts.mimi.frame_rate
        with self._lock, self._compile_policy(tts), torch.no_grad():
            tts.temp, tts.cfg_coef = float(temperature), cfg_coef
            tts.max_gen_length = max(1, int(self.options.max_seconds * frame_rate))
            result = tts.generate([entries], [attributes])
            with tts.mimi.streaming(1):
                pcm = [tts.mimi.decode(frame[:, 1:]) for frame in result.frames[tts.delay_steps:]]
        wav = torch.cat(pcm, dim=-1)[0, 0].clamp(-1, 1) if pcm else torch.zeros(0)
        end = result.end_steps[0]
        if end is None:
            log.warning("%s: text not finished after %.0f s (tts_kyutai_max_seconds); audio cut there",
                        self.name, self.options.max_seconds)
        else:
            wav = wav[: int(self.sample_rate * (end + tts.final_padding) / frame_rate)]
        return wav.detach().float().cpu().numpy().astype(np.float32, copy=False)

    @staticmethod
    def _compile_policy(tts):
        """moshi torch.compiles its hot functions; on CPU compiling costs far more than a request
        gains (and needs a C++ toolchain), so it only compiles on a GPU."""
        if tts.lm.device.type == "cuda":
            return contextlib.nullcontext()
        from moshi.utils.compile import no_compile

        return no_compile()
