"""Chatterbox engines (Resemble AI): multilingual (23 languages, Spanish by default), English,
and English Turbo, loaded with the package's own `from_local` and run through the offloader."""
from __future__ import annotations

import contextvars
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInput, ModelUnavailable
from . import chatterbox_arch

log = logging.getLogger("enfoads.tts.chatterbox")

SAMPLE_RATE = 24000  # S3GEN_SR
MULTILINGUAL_LANGUAGES = ("ar", "da", "de", "el", "en", "es", "fi", "fr", "he", "hi", "it", "ja", "ko", "ms", "nl",
                          "no", "pl", "pt", "ru", "sv", "sw", "tr", "zh")
CANGJIE_REPO = "ResembleAI/chatterbox"


def _seed_cangjie_cache(folder: Path) -> None:
    """The multilingual tokenizer fetches Cangjie5_TC.json with hf_hub_download(cache_dir=folder)
    on every load; lay the copy that prefetch downloaded into that cache so no network is needed."""
    src = folder / "Cangjie5_TC.json"
    if not src.is_file():
        return
    repo_dir = folder / ("models--" + CANGJIE_REPO.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / "local"
    target = snapshot / "Cangjie5_TC.json"
    try:
        if not target.is_file():
            snapshot.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / "main").write_text("local")
    except OSError:  # a read-only model folder: the tokenizer falls back to a download
        log.warning("could not seed the Cangjie cache in %s", folder, exc_info=True)


PKUSEG_KEY = "spacy-pkuseg-ontonotes"
_pkuseg_patch_lock = threading.Lock()
_segmenter_dir: contextvars.ContextVar[Path | None] = contextvars.ContextVar("pkuseg_dir", default=None)


def _segmenter_from_models_dir() -> None:
    """Chatterbox's ChineseCangjieConverter builds `spacy_pkuseg.pkuseg()` when the multilingual
    tokenizer loads, and pkuseg downloads its default model into ~/.pkuseg (PKUSEG_HOME) on first
    use, outside the data dir and whatever HF_HUB_OFFLINE says. Here it is built from the folder
    prefetch placed under the models dir, given by path (pkuseg then loads it as is and never
    downloads), or not at all, with a warning: only Chinese text needs it."""
    from chatterbox.models.tokenizers import tokenizer as tok_mod

    with _pkuseg_patch_lock:
        conv = tok_mod.ChineseCangjieConverter
        if getattr(conv, "_enfoads_segmenter", False):
            return

        def init_segmenter(self):
            self.segmenter = None
            folder = _segmenter_dir.get()
            if folder is None:
                log.warning("Chinese word segmentation off: the %s model is not in the models dir (run "
                            "`python -m prefetch %s`); Chinese text is read unsegmented", PKUSEG_KEY, PKUSEG_KEY)
                return
            try:
                from spacy_pkuseg import pkuseg

                self.segmenter = pkuseg(model_name=str(folder))
            except Exception as exc:
                log.warning("Chinese word segmentation off: %s does not load (%s: %s); Chinese text is read "
                            "unsegmented", folder, type(exc).__name__, exc)

        conv._init_segmenter = init_segmenter
        conv._enfoads_segmenter = True


def load_chatterbox(kind: str, folder: Path, device: str, *, segmenter_dir: Path | None = None):
    """The package's model object for `kind` (multilingual | en | turbo) from a local folder;
    `segmenter_dir`: the multilingual tokenizer's Chinese word segmenter (None: none)."""
    folder = Path(folder)
    with chatterbox_arch.overrides(folder):
        if kind == "multilingual":
            from chatterbox.mtl_tts import ChatterboxMultilingualTTS

            _seed_cangjie_cache(folder)
            _segmenter_from_models_dir()
            token = _segmenter_dir.set(segmenter_dir)
            try:
                return ChatterboxMultilingualTTS.from_local(folder, device)
            finally:
                _segmenter_dir.reset(token)
        if kind == "en":
            from chatterbox.tts import ChatterboxTTS

            return ChatterboxTTS.from_local(folder, device)
        if kind == "turbo":
            try:
                from chatterbox.tts_turbo import ChatterboxTurboTTS
            except ImportError as exc:
                raise ModelUnavailable(f"this chatterbox-tts release has no Turbo model ({exc})",
                                       code="model_unavailable") from None
            return ChatterboxTurboTTS.from_local(folder, device)
    raise ValueError(f"unknown Chatterbox kind {kind!r}")


def move_chatterbox(tts, device: str):
    """Offloader hook: Chatterbox's TTS objects are not modules; move their parts."""
    for part in ("t3", "s3gen", "ve"):
        getattr(tts, part).to(device)
    if tts.conds is not None:
        tts.conds = tts.conds.to(device)
    tts.device = device
    return tts


@dataclass(frozen=True)
class ChatterboxSpec:
    model_id: str  # manifest key and public model id
    kind: str  # multilingual | en | turbo
    languages: tuple[str, ...]
    description: str


CHATTERBOX_MODELS = (
    ChatterboxSpec("chatterbox-multilingual", "multilingual", MULTILINGUAL_LANGUAGES,
                   "Chatterbox multilingual (23 languages, voice cloning)"),
    ChatterboxSpec("chatterbox-en", "en", ("en",), "Chatterbox English (voice cloning)"),
    ChatterboxSpec("chatterbox-turbo", "turbo", ("en",), "Chatterbox Turbo English (faster)"),
)


# chatterbox#548: the multilingual model's alignment analyzer raises IndexError once generation is
# complete when the text has 5 tokens or fewer with its start/stop tokens ("Sí", "OK", one emoji).
MIN_TEXT_TOKENS = 4


def _long_enough(tts, text: str, language: str) -> str:
    """`text` as the model reads it, with trailing full stops (silence) added until it has enough tokens."""
    from chatterbox.mtl_tts import punc_norm

    text = punc_norm(text)
    for _ in range(MIN_TEXT_TOKENS):
        if tts.tokenizer.text_to_tokens(text, language_id=language).shape[-1] >= MIN_TEXT_TOKENS:
            break
        text += " ."
    return text


class ChatterboxEngine:
    """One Chatterbox checkpoint. Voices are reference clips turned into conditionals once."""

    sample_rate = SAMPLE_RATE
    family = "chatterbox"

    def __init__(self, spec: ChatterboxSpec, model_env):
        self.spec = spec
        self.name = spec.model_id
        self.languages = spec.languages
        self.env = model_env
        self._conds: dict[tuple, Any] = {}  # voice key -> Conditionals (on CPU)
        self._lock = threading.Lock()

    # --- offloader -----------------------------------------------------------------------
    def register(self, vram, estimate_bytes: int) -> None:
        vram.register(self.name, self._load, runtime="torch", estimate_bytes=estimate_bytes, family="tts",
                      to_device=move_chatterbox)

    def _load(self, device: str):
        folder = self.env.locate(self.name)
        log.info("loading %s from %s on %s", self.name, folder, device)
        segmenter = None
        if self.spec.kind == "multilingual" and self.env.present(PKUSEG_KEY):
            segmenter = self.env.locate(PKUSEG_KEY)
        tts = load_chatterbox(self.spec.kind, folder, device, segmenter_dir=segmenter)
        # Chatterbox runs fp32 everywhere: on a T4 bf16 is emulated (slower) and its fp16 path is
        # not what upstream tests; the model stays fp32 whatever the global dtype policy says.
        self._builtin = tts.conds
        return tts

    def available(self) -> bool:
        return self.env.present(self.name)

    # --- synthesis -------------------------------------------------------------------------
    def _conditionals(self, tts, voice, exaggeration: float):
        if voice is None or voice.path is None:
            if getattr(self, "_builtin", None) is None:
                raise InvalidInput(f"{self.name} has no built-in voice; pass a cloned voice", param="voice")
            return self._builtin
        key = (voice.id, voice.path.stat().st_mtime_ns)
        conds = self._conds.get(key)
        if conds is None:
            tts.prepare_conditionals(str(voice.path), exaggeration=exaggeration)
            conds = tts.conds
            self._conds[key] = conds
        return conds

    def generate(self, tts, text: str, *, language: str, voice, temperature: float, exaggeration: float,
                 cfg_weight: float) -> np.ndarray:
        import torch

        with self._lock:
            tts.conds = self._conditionals(tts, voice, exaggeration).to(tts.device)
            kwargs = dict(exaggeration=exaggeration, cfg_weight=cfg_weight, temperature=temperature)
            if self.spec.kind == "multilingual":
                wav = tts.generate(_long_enough(tts, text, language), language_id=language, **kwargs)
            elif self.spec.kind == "turbo":
                wav = tts.generate(text, temperature=temperature)
            else:
                wav = tts.generate(text, **kwargs)
        if isinstance(wav, torch.Tensor):
            wav = wav.detach().float().cpu().numpy()
        return np.asarray(wav, dtype=np.float32).reshape(-1)
