"""Tiny random-weight TTS checkpoints in the real file layouts, for tests and the notebook's CI mode.

Chatterbox (multilingual and English): the published file sets, at the sizes of
`chatterbox_arch.TINY` (written as `enfoads_arch.json` beside them). A random T3 never emits its
stop token, so its weights are rigged: the transformer blocks add nothing (zeroed output
projections), each speech position then maps to one fixed speech token below 6561, and from
`RIGGED_TOKENS` on the stop token wins (or, where the multilingual alignment analyzer suppresses
it, a repeated token that makes the analyzer force the stop). Everything after T3 stays random.

Kyutai DSM TTS: see `kyutai_smoke`; Kyutai Pocket TTS: `pocket_smoke`.

spacy-pkuseg's Chinese segmenter (`spacy-pkuseg-ontonotes`): its two files (`features.msgpack`,
`weights.npz`) with a three-feature vocabulary and random weights: it loads and cuts text.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from prefetch.manifest import smoke_builder

from . import chatterbox_arch
from .kyutai_smoke import build_kyutai
from .pocket_smoke import build_pocket

log = logging.getLogger("enfoads.tts.smoke")

RIGGED_TOKENS = 20  # speech tokens a tiny T3 emits before it stops (0.8 s of audio at 25 tokens/s)
LANG_TOKENS = ["ar", "da", "de", "el", "en", "es", "fi", "fr", "he", "hi", "it", "ja", "ko", "ms", "nl", "no",
               "pl", "pt", "ru", "sv", "sw", "tr", "zh"]
CHATTERBOX_REVISION = "05e904af2b5c7f8e482687a9d7336c5c824467d9"


def _text_tokenizer(path: Path, *, languages: bool) -> None:
    """A character-level tokenizer with Chatterbox's special tokens ([STOP]=0, [START]=255)."""
    from tokenizers import Tokenizer, models

    vocab = {"[STOP]": 0, "[UNK]": 1, "[SPACE]": 2, "[PAD]": 3, "[SEP]": 4, "[CLS]": 5, "[MASK]": 6}
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?¡¿'\"-()áéíóúñü"
    chars += "".join(chr(c) for c in range(0x300, 0x370))  # combining marks (the tokenizer applies NFKD)
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    vocab["[START]"] = 255
    if languages:
        for i, lang in enumerate(LANG_TOKENS):
            vocab[f"[{lang}]"] = 300 + i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    from tokenizers import pre_tokenizers

    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    specials = [t for t in vocab if t.startswith("[") and t.endswith("]")]
    tok.add_special_tokens(specials)
    tok.save(str(path))


def _rig_t3(t3) -> None:
    """Make a random T3 speak RIGGED_TOKENS speech tokens and stop (see the module docstring)."""
    import torch

    hp = t3.hp
    with torch.no_grad():
        for layer in t3.tfmr.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        t3.speech_emb.weight.zero_()
        pos = t3.speech_pos_emb.emb.weight
        pos.zero_()
        end_dim = RIGGED_TOKENS
        for p in range(pos.shape[0]):
            pos[p, min(p, end_dim)] = 100.0
        head = t3.speech_head.weight
        head.zero_()
        for p in range(RIGGED_TOKENS):
            head[100 + 37 * p, p] = 100.0
        head[hp.stop_speech_token, end_dim] = 100.0
        head[4321, end_dim] = 50.0  # the fallback when the stop token is suppressed


def _noise_wav(path: Path, seconds: float = 6.0, rate: int = 24000) -> None:
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    wav = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(t.size)
    sf.write(str(path), wav.astype(np.float32), rate)


def _state(module) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def build_chatterbox(folder: Path, *, multilingual: bool) -> None:
    import torch
    from safetensors.torch import save_file

    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.modules.t3_config import T3Config
    from chatterbox.models.voice_encoder import VoiceEncoder

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with chatterbox_arch.applied(chatterbox_arch.TINY):
        ve = VoiceEncoder().eval()
        t3 = T3(T3Config.multilingual() if multilingual else T3Config.english_only()).eval()
        s3gen = S3Gen().eval()
    _rig_t3(t3)
    chatterbox_arch.write(folder, chatterbox_arch.TINY)
    if multilingual:
        torch.save(_state(ve), folder / "ve.pt")
        save_file(_state(t3), str(folder / "t3_mtl23ls_v2.safetensors"))
        torch.save(_state(s3gen), folder / "s3gen.pt")
        _text_tokenizer(folder / "grapheme_mtl_merged_expanded_v1.json", languages=True)
        (folder / "Cangjie5_TC.json").write_text(json.dumps(["日\ta", "月\tb", "中\tl"]), encoding="utf-8")
    else:
        save_file(_state(ve), str(folder / "ve.safetensors"))
        save_file(_state(t3), str(folder / "t3_cfg.safetensors"))
        save_file(_state(s3gen), str(folder / "s3gen.safetensors"))
        _text_tokenizer(folder / "tokenizer.json", languages=False)
    # The built-in voice (conds.pt), made the way Chatterbox makes any voice: from a clip.
    from .chatterbox_engine import load_chatterbox

    segmenter = folder.parent / "spacy-pkuseg-ontonotes"
    tts = load_chatterbox("multilingual" if multilingual else "en", folder, "cpu",
                          segmenter_dir=segmenter if segmenter.is_dir() else None)
    ref = folder / "_ref.wav"
    _noise_wav(ref)
    tts.prepare_conditionals(str(ref), exaggeration=0.5)
    ref.unlink()
    tts.conds.save(folder / "conds.pt")


def build_pkuseg(folder: Path) -> Path:
    import srsly

    folder.mkdir(parents=True, exist_ok=True)
    tags = ["B", "B_single", "I", "I_end", "I_first"]  # pkuseg's tag set
    features = {"c.中": 0, "c.文": 1, "c.日": 2}
    srsly.write_msgpack(folder / "features.msgpack", {"unigram": ["中", "文"], "bigram": ["中文"],
                                                      "feature_to_idx": features,
                                                      "tag_to_idx": {t: i for i, t in enumerate(tags)}})
    w = np.random.default_rng(0).standard_normal(len(tags) * (len(features) + len(tags)))
    np.savez(folder / "weights.npz", sizes=np.array([len(tags), len(features)]), w=w)
    return folder


@smoke_builder("tts")
def build(models_dir: Path) -> None:
    models_dir = Path(models_dir)
    build_pkuseg(models_dir / "spacy-pkuseg-ontonotes")
    build_chatterbox(models_dir / "chatterbox-multilingual", multilingual=True)
    build_chatterbox(models_dir / "chatterbox-en", multilingual=False)
    build_kyutai(models_dir)
    build_pocket(models_dir)
    log.info("built tiny TTS models in %s", models_dir)
