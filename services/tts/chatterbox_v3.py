"""Chatterbox Multilingual V3 and its single-language packs on chatterbox-tts 0.1.7.

0.1.7 loads only V2: its `from_local` reads `t3_mtl23ls_v2.safetensors` and `s3gen.pt` by name, and
its T3 always runs the alignment stream analyzer. Upstream added V3 later (resemble-ai/chatterbox
pull request #516); what differs, and what this module does on 0.1.7's own classes:
- the T3 checkpoint is a per-model file (V3: `t3_mtl23ls_v3.safetensors`; a language pack: its one
  `t3_*.safetensors`), and a pack brings its own S3Gen (`s3gen_v3.pt`) and tokenizer;
- V3 runs without the alignment stream analyzer (and so needs no attention maps);
- repetition_penalty 1.2 instead of 2.0 (the caller passes it: `V3_REPETITION_PENALTY`);
- the audio of the final speech token (emitted just before EOS, decoding to ~40 ms of noise) is
  dropped before the watermark.
Everything else (tokenizer, conditionals, CFG sampling, S3Gen, watermark) is 0.1.7's code.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Iterator

from ..errors import ModelUnavailable, Unprocessable

log = logging.getLogger("enfoads.tts.chatterbox")

V2_REPETITION_PENALTY = 2.0  # 0.1.7's default, kept for V2
V3_REPETITION_PENALTY = 1.2
# S3Gen buffers that are computed when the module is built; S3Gen files saved by newer code
# (the packs' s3gen_v3.pt) do not carry them.
COMPUTED_S3GEN_BUFFERS = {"tokenizer._mel_filters", "tokenizer.window"}


def find_t3(folder: Path, name: str | None) -> Path:
    """The T3 checkpoint: `name` when the model fixes it, else the folder's one `t3_*.safetensors`."""
    folder = Path(folder)
    if name:
        path = folder / name
        if not path.is_file():
            raise ModelUnavailable(f"{folder} has no {name}", code="model_unavailable")
        return path
    found = sorted(p.name for p in folder.glob("t3_*.safetensors"))
    if len(found) != 1:
        what = ", ".join(found) if found else "none"
        raise ModelUnavailable(f"{folder} must hold exactly one T3 checkpoint (t3_*.safetensors); found {what}",
                               code="model_unavailable")
    return folder / found[0]


def _first(name: str, *folders: Path | None) -> Path:
    for folder in folders:
        if folder is not None and (Path(folder) / name).is_file():
            return Path(folder) / name
    where = " or ".join(str(f) for f in folders if f is not None)
    raise ModelUnavailable(f"{name} is missing (looked in {where})", code="model_unavailable")


def _load_s3gen(s3gen, path: Path, map_location) -> None:
    """Strict except for the buffers S3Gen computes itself (see COMPUTED_S3GEN_BUFFERS): a wrong or
    missing weight would otherwise stay random without a word."""
    import torch

    state = torch.load(path, map_location=map_location, weights_only=True)
    result = s3gen.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - COMPUTED_S3GEN_BUFFERS
    if missing or result.unexpected_keys:
        raise ModelUnavailable(f"{path.name} does not fit this S3Gen: missing {sorted(missing)[:5]}, "
                               f"unexpected {sorted(result.unexpected_keys)[:5]}", code="model_unavailable")


def load_multilingual(folder: Path, device: str, *, t3_file: str | None, s3gen_file: str,
                      shared: Path | None = None, seed_cangjie=None):
    """A `ChatterboxMultilingualTTS` from a V3 checkpoint folder (files missing there, e.g. a pack's
    voice encoder and built-in voice, come from `shared`)."""
    import torch
    from safetensors.torch import load_file

    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.modules.t3_config import T3Config
    from chatterbox.models.tokenizers import MTLTokenizer
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.mtl_tts import ChatterboxMultilingualTTS, Conditionals

    folder = Path(folder)
    map_location = torch.device("cpu") if device in ("cpu", "mps") else None
    t3_path = find_t3(folder, t3_file)
    ve_path = _first("ve.pt", folder, shared)
    s3gen_path = _first(s3gen_file, folder)
    tokenizer_path = _first("grapheme_mtl_merged_expanded_v1.json", folder)
    if seed_cangjie is not None:
        seed_cangjie(tokenizer_path.parent, _first("Cangjie5_TC.json", folder, shared))
    log.info("V3 checkpoint: %s + %s (%s)", t3_path.name, s3gen_path.name, folder)

    ve = VoiceEncoder()
    ve.load_state_dict(torch.load(ve_path, map_location=map_location, weights_only=True))
    ve.to(device).eval()
    t3 = T3(T3Config.multilingual())
    state = load_file(str(t3_path))
    if "model" in state:  # training checkpoints nest the weights
        state = state["model"][0]
    t3.load_state_dict(state)
    t3.to(device).eval()
    s3gen = S3Gen()
    _load_s3gen(s3gen, s3gen_path, map_location)
    s3gen.to(device).eval()
    tokenizer = MTLTokenizer(str(tokenizer_path))
    conds = None
    for where in (folder, shared):
        if where is not None and (Path(where) / "conds.pt").is_file():
            conds = Conditionals.load(Path(where) / "conds.pt", map_location=map_location).to(device)
            break
    tts = ChatterboxMultilingualTTS(t3, s3gen, ve, tokenizer, device, conds=conds)
    use_v3_inference(tts)
    return tts


@functools.lru_cache(maxsize=1)
def _no_analyzer_config():
    from chatterbox.models.t3.modules.t3_config import T3Config

    class NoAnalyzerConfig(T3Config):
        """0.1.7's T3.inference builds the alignment stream analyzer when (and only where) it reads
        `hp.is_multilingual`: V3 runs without it."""

        @property
        def is_multilingual(self):
            return False

    return NoAnalyzerConfig


def _analyzer_free_hp(hp):
    import copy

    hp = copy.copy(hp)
    hp.__class__ = _no_analyzer_config()
    return hp


@contextlib.contextmanager
def analyzer_off(t3) -> Iterator[None]:
    """For one V2 call: 0.1.7's analyzer fails on texts of five tokens or fewer ("I" -> `max():
    Expected reduction dim 1 to have non-zero size`, alignment_stream_analyzer.py: the columns
    before the last five are none) and does nothing useful for them (it suppresses early stops only
    for longer texts)."""
    hp = t3.hp
    t3.hp = _analyzer_free_hp(hp)
    try:
        yield
    finally:
        t3.hp = hp


ANALYZER_MIN_TOKENS = 6  # the analyzer's own threshold (`S > 5`), SOT and EOT included


def analyzer_can_follow(tts, text: str, language: str) -> bool:
    from chatterbox.mtl_tts import punc_norm

    n = tts.tokenizer.text_to_tokens(punc_norm(text), language_id=language).shape[-1] + 2
    return n >= ANALYZER_MIN_TOKENS


def without_analyzer(t3) -> None:
    """T3 (this instance only) samples without the alignment stream analyzer and, with nothing
    reading attention maps, stops asking the transformer for them (its fast attention path)."""
    t3.hp = _analyzer_free_hp(t3.hp)
    tfmr = t3.tfmr
    forward = tfmr.forward

    def no_attention_maps(*args, **kwargs):
        kwargs["output_attentions"] = False
        return forward(*args, **kwargs)

    tfmr.forward = no_attention_maps


def samples_per_token() -> int:
    from chatterbox.models.s3gen import S3GEN_SR
    from chatterbox.models.s3tokenizer import S3_TOKEN_RATE

    return S3GEN_SR // S3_TOKEN_RATE


def refuse_empty_speech(s3gen, *, drop_final_token: bool) -> None:
    """Wrap this S3Gen's `inference` (what `generate` calls between T3 and the watermark): no speech
    token at all is a clear `no_audio` error instead of a tensor error deep in the vocoder; with
    `drop_final_token` the audio of the last token is cut (V3)."""
    inner = s3gen.inference
    per_token = samples_per_token()

    def inference(*args, **kwargs):
        tokens = kwargs["speech_tokens"] if "speech_tokens" in kwargs else args[0]
        n = int(tokens.shape[-1])
        if n == 0:
            raise Unprocessable("the model produced no speech for this text; write a few words",
                                code="no_audio")
        wav, sources = inner(*args, **kwargs)
        if drop_final_token:
            wav = wav[..., : max(1, n - 1) * per_token]
        return wav, sources

    s3gen.inference = inference


def use_v3_inference(tts) -> None:
    without_analyzer(tts.t3)
    refuse_empty_speech(tts.s3gen, drop_final_token=True)
