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

from ..errors import InvalidInput, ModelUnavailable, Unprocessable
from . import chatterbox_arch, chatterbox_v3

log = logging.getLogger("enfoads.tts.chatterbox")

SAMPLE_RATE = 24000  # S3GEN_SR
MULTILINGUAL_LANGUAGES = ("ar", "da", "de", "el", "en", "es", "fi", "fr", "he", "hi", "it", "ja", "ko", "ms", "nl",
                          "no", "pl", "pt", "ru", "sv", "sw", "tr", "zh")
CANGJIE_REPO = "ResembleAI/chatterbox"


def _seed_cangjie_cache(folder: Path, source: Path | None = None) -> None:
    """The multilingual tokenizer fetches Cangjie5_TC.json with hf_hub_download(cache_dir=<the
    tokenizer's folder>) on every load; lay the copy that prefetch downloaded (`source`, default the
    folder's own) into that cache so no network is needed."""
    src = source or folder / "Cangjie5_TC.json"
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


def load_chatterbox(kind: str, folder: Path, device: str, *, spec: "ChatterboxSpec | None" = None,
                    shared: Path | None = None, segmenter_dir: Path | None = None):
    """The package's model object for `kind` (multilingual | en | turbo) from a local folder; a V3
    spec loads through `chatterbox_v3` (its T3 and S3Gen files, `shared` for what a pack lacks);
    `segmenter_dir`: the multilingual tokenizer's Chinese word segmenter (None: none)."""
    folder = Path(folder)
    with chatterbox_arch.overrides(folder):
        if kind == "multilingual" and spec is not None and spec.v3:
            _segmenter_from_models_dir()
            token = _segmenter_dir.set(segmenter_dir)
            try:
                return chatterbox_v3.load_multilingual(folder, device, t3_file=spec.t3_file,
                                                       s3gen_file=spec.s3gen_file, shared=shared,
                                                       seed_cangjie=_seed_cangjie_cache)
            finally:
                _segmenter_dir.reset(token)
        if kind == "multilingual":
            from chatterbox.mtl_tts import ChatterboxMultilingualTTS

            _seed_cangjie_cache(folder)
            _segmenter_from_models_dir()
            token = _segmenter_dir.set(segmenter_dir)
            try:
                tts = ChatterboxMultilingualTTS.from_local(folder, device)
            finally:
                _segmenter_dir.reset(token)
            chatterbox_v3.refuse_empty_speech(tts.s3gen, drop_final_token=False)
            return tts
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
    v3: bool = False  # the V3 inference path (chatterbox_v3)
    t3_file: str | None = None  # V3: the T3 checkpoint's name; None = the folder's one t3_*.safetensors
    s3gen_file: str = "s3gen.pt"
    shared: str | None = None  # manifest key of the files a language pack takes from the base repo


CHATTERBOX_MODELS = (
    ChatterboxSpec("chatterbox-es-latam", "multilingual", ("es",),
                   "Chatterbox Multilingual V3, Latin-American Spanish fine-tune (es-MX / LatAm, voice cloning)",
                   v3=True, t3_file=None, s3gen_file="s3gen_v3.pt", shared="chatterbox-v3-shared"),
    ChatterboxSpec("chatterbox-multilingual-v3", "multilingual", MULTILINGUAL_LANGUAGES,
                   "Chatterbox Multilingual V3 (23 languages, voice cloning)", v3=True,
                   t3_file="t3_mtl23ls_v3.safetensors"),
    ChatterboxSpec("chatterbox-multilingual", "multilingual", MULTILINGUAL_LANGUAGES,
                   "Chatterbox Multilingual V2 (23 languages, voice cloning)"),
    ChatterboxSpec("chatterbox-en", "en", ("en",), "Chatterbox English (voice cloning)"),
    ChatterboxSpec("chatterbox-turbo", "turbo", ("en",), "Chatterbox Turbo English (faster)"),
)


class ChatterboxEngine:
    """One Chatterbox checkpoint. Voices are reference clips turned into conditionals once."""

    sample_rate = SAMPLE_RATE
    family = "chatterbox"

    def __init__(self, spec: ChatterboxSpec, model_env):
        self.spec = spec
        self.name = spec.model_id
        self.languages = spec.languages
        self.model_keys = (spec.model_id,) + ((spec.shared,) if spec.shared else ())
        self.env = model_env
        self._conds: dict[tuple, Any] = {}  # voice key -> Conditionals (on CPU)
        self._lock = threading.Lock()

    # --- offloader -----------------------------------------------------------------------
    def register(self, vram, estimate_bytes: int) -> None:
        vram.register(self.name, self._load, runtime="torch", estimate_bytes=estimate_bytes, family="tts",
                      to_device=move_chatterbox)

    def _load(self, device: str):
        folder = self.env.locate(self.name)
        shared = self.env.locate(self.spec.shared) if self.spec.shared else None
        log.info("loading %s from %s on %s", self.name, folder, device)
        segmenter = None
        if self.spec.kind == "multilingual" and self.env.present(PKUSEG_KEY):
            segmenter = self.env.locate(PKUSEG_KEY)
        tts = load_chatterbox(self.spec.kind, folder, device, spec=self.spec, shared=shared, segmenter_dir=segmenter)
        # Chatterbox runs fp32 everywhere: on a T4 bf16 is emulated (slower) and its fp16 path is
        # not what upstream tests; the model stays fp32 whatever the global dtype policy says.
        self._builtin = tts.conds
        return tts

    def available(self) -> bool:
        return all(self.env.present(key) for key in self.model_keys)

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
            if self.spec.kind == "multilingual" and self.spec.v3:
                wav = tts.generate(text, language_id=language, repetition_penalty=chatterbox_v3.V3_REPETITION_PENALTY,
                                   **kwargs)
            elif self.spec.kind == "multilingual":
                kwargs["repetition_penalty"] = chatterbox_v3.V2_REPETITION_PENALTY
                if chatterbox_v3.analyzer_can_follow(tts, text, language):
                    wav = tts.generate(text, language_id=language, **kwargs)
                else:
                    with chatterbox_v3.analyzer_off(tts.t3):
                        wav = tts.generate(text, language_id=language, **kwargs)
            elif self.spec.kind == "turbo":
                wav = tts.generate(text, temperature=temperature)
            else:
                wav = tts.generate(text, **kwargs)
        if isinstance(wav, torch.Tensor):
            wav = wav.detach().float().cpu().numpy()
        wav = np.asarray(wav, dtype=np.float32).reshape(-1)
        if wav.size == 0 or not np.isfinite(wav).all():
            raise Unprocessable(f"{self.name} produced no audio for this text; write a few words", code="no_audio")
        return wav
