"""A tiny random-weight Kyutai DSM TTS checkpoint in the published file layout.

`kyutai-tts-1.6b-en_fr/`: config.json (the published keys, at tiny sizes; same file names and
model id 1e68beda@240), the LM weights, Mimi weights, a SentencePiece text tokenizer, and
`mimi_config.json` (Mimi's sizes: the published checkpoint uses moshi's built-in Mimi config and
ships none). `kyutai-tts-voices/`: one voice embedding, `<voice>.wav.1e68beda@240.safetensors`
holding `speaker_wavs` [1, C, T] like the published voices.

A random LM never samples the end of the text: generation stops at the engine's configured
maximum length (settings.tts_kyutai_max_seconds), which is what the tests rely on.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("enfoads.tts.smoke")

MODEL_KEY = "kyutai-tts-1.6b-en_fr"
VOICES_KEY = "kyutai-tts-voices"
SIG, EPOCH = "1e68beda", 240
LM_FILE = f"dsm_tts_{SIG}@{EPOCH}.safetensors"
MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
SPM_FILE = "tokenizer_spm_8k_en_fr_audio.model"
MIMI_CONFIG_FILE = "mimi_config.json"
DEFAULT_VOICE = "expresso/ex03-ex01_happy_001_channel1_334s.wav"

N_Q, CARD, DIM, SPEAKER_DIM = 4, 64, 32, 16

_CORPUS = """Hello there, how are you today?
The quick brown fox jumps over the lazy dog.
This is a short test of speech synthesis in English.
Bonjour, comment allez-vous aujourd'hui ?
Le renard brun saute par-dessus le chien paresseux.
Ceci est un court essai de synthèse vocale en français.
Élève, été, à côté, où, être, garçon, cœur, naïve.
Welcome to the demonstration; we speak English and French.
Nous parlons anglais et français, merci beaucoup !
"""


def _text_tokenizer(path: Path, work: Path) -> int:
    """A small SentencePiece model trained here (ids 0-3 reserved as in the published one)."""
    import sentencepiece as spm

    corpus = work / "_spm_corpus.txt"
    corpus.write_text(_CORPUS * 4, encoding="utf-8")
    prefix = work / "_spm"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=120, model_type="unigram",
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=3, hard_vocab_limit=False,
        minloglevel=2)
    (prefix.with_suffix(".model")).replace(path)
    prefix.with_suffix(".vocab").unlink(missing_ok=True)
    corpus.unlink()
    return spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()


def _mimi_config() -> dict:
    seanet = {"channels": 1, "dimension": 16, "causal": True, "n_filters": 4, "n_residual_layers": 1,
              "activation": "ELU", "compress": 2, "dilation_base": 2, "disable_norm_outer_blocks": 0,
              "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 3, "norm": "none",
              "pad_mode": "constant", "ratios": [8, 6, 5, 4], "true_skip": True}  # hop 960: 12.5 Hz frames
    return {
        "sample_rate": 24000, "channels": 1, "frame_rate": 12.5, "seanet": seanet,
        "quantizer": {"dimension": 8, "n_q": N_Q, "bins": CARD, "input_dimension": 16, "output_dimension": 16},
        "transformer": {"d_model": 16, "num_heads": 2, "num_layers": 1, "causal": True, "layer_scale": 0.01,
                        "context": 250, "conv_layout": True, "max_period": 10000, "gating": "none",
                        "norm": "layer_norm", "positional_embedding": "rope", "dim_feedforward": 32,
                        "input_dimension": 16, "output_dimensions": [16]},
    }


def _config(text_card: int) -> dict:
    """The published config.json's keys (tts-1.6b-en_fr), at tiny sizes."""
    return {
        "moshi_name": LM_FILE, "mimi_name": MIMI_FILE, "tokenizer_name": SPM_FILE,
        "card": CARD, "n_q": N_Q, "dep_q": N_Q, "delays": [0, 0] + [2] * (N_Q - 1),
        "dim": DIM, "text_card": text_card, "existing_text_padding_id": 3, "num_heads": 2, "num_layers": 1,
        "hidden_scale": 2, "causal": True, "layer_scale": None, "context": 100, "max_period": 10000,
        "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope",
        "depformer_dim": 16, "depformer_num_heads": 2, "depformer_num_layers": 1,
        "depformer_dim_feedforward": 32, "depformer_multi_linear": True, "depformer_pos_emb": "none",
        "depformer_weights_per_step": True, "depformer_low_rank_embeddings": 8,
        "depformer_weights_per_step_schedule": [0, 1, 2, 2],
        "demux_second_stream": True, "text_card_out": None, "cross_attention": True,
        "conditioners": {
            "speaker_wavs": {"type": "tensor", "tensor": {"dim": SPEAKER_DIM}},
            "cfg": {"type": "lut", "lut": {"n_bins": 7, "dim": 16, "tokenizer": "noop",
                                           "possible_values": ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]}},
            "control": {"type": "lut", "lut": {"dim": DIM, "n_bins": 1, "tokenizer": "noop",
                                               "possible_values": ["ok"]}},
        },
        "fuser": {"cross_attention_pos_emb": True, "cross_attention_pos_emb_scale": 1, "sum": ["control", "cfg"],
                  "prepend": [], "cross": ["speaker_wavs"]},
        "tts_config": {"audio_delay": 0.16, "second_stream_ahead": 2},
        "model_id": {"sig": SIG, "epoch": EPOCH},
        "model_type": "tts",
        "lm_gen_config": {"temp": 0.6, "text_temp": 0.6},
    }


def build_kyutai(models_dir: Path) -> None:
    import torch
    from moshi.models import loaders
    from safetensors.torch import save_file

    folder = Path(models_dir) / MODEL_KEY
    voices = Path(models_dir) / VOICES_KEY
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    text_card = _text_tokenizer(folder / SPM_FILE, folder)
    config = _config(text_card)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    mimi_config = _mimi_config()
    (folder / MIMI_CONFIG_FILE).write_text(json.dumps(mimi_config, indent=1))

    mimi = loaders.get_mimi(None, mimi_config, device="cpu", num_codebooks=N_Q)
    save_file({k: v.contiguous() for k, v in mimi.state_dict().items()}, str(folder / MIMI_FILE))
    lm_kwargs = {k: v for k, v in config.items() if k not in (
        "moshi_name", "mimi_name", "tokenizer_name", "tts_config", "model_id", "model_type", "lm_gen_config")}
    lm = loaders.get_moshi_lm(None, lm_kwargs=json.loads(json.dumps(lm_kwargs)), device="cpu", dtype=torch.float32)
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(folder / LM_FILE))

    voice = voices / f"{DEFAULT_VOICE}.{SIG}@{EPOCH}.safetensors"
    voice.parent.mkdir(parents=True, exist_ok=True)
    save_file({"speaker_wavs": torch.randn(1, SPEAKER_DIM, 10)}, str(voice), metadata={"sig": SIG, "epoch": str(EPOCH)})
    log.info("built a tiny Kyutai TTS checkpoint in %s", folder)
