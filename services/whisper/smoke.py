"""The smoke model: a tiny random-weight Whisper converted to CTranslate2, in the real on-disk
layout of the faster-whisper repos (model.bin, config.json, vocabulary.json, tokenizer.json,
preprocessor_config.json), under `<models_dir>/whisper-base` (the smoke profile's model).

Its tokenizer has Whisper's real id layout (the recipe in the team's TESTING.md): text ids
0..50256 with 50256 the empty string (CTranslate2 >= 4.7 decides "multilingual" from it), then
<|endoftext|> 50257, <|startoftranscript|> 50258, the 99 language tokens, the task and control
tokens 50358..50363 and the timestamps <|0.00|>..<|30.00|> 50364..51864. The text tokens are
pronounceable pseudo-words, so a random model's output still renders as visible subtitles.
"""
from __future__ import annotations

import itertools
import json
import logging
import shutil
import tempfile
from pathlib import Path

from prefetch.manifest import smoke_builder

from .languages import V2_LANGUAGES

log = logging.getLogger("enfoads.whisper")

SMOKE_KEY = "whisper-base"
N_TEXT = 50257  # ids 0..50256
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", *[f"<|{c}|>" for c in V2_LANGUAGES],
            "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
            "<|notimestamps|>"]
TIMESTAMPS = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
VOCAB_SIZE = N_TEXT + len(SPECIALS) + len(TIMESTAMPS)  # 51865, as in every non-v3 Whisper


def _pseudo_words():
    syllables = [c + v for c in "bcdfglmnprstv" for v in "aeiou"]
    for n in itertools.count(2):
        for combo in itertools.product(syllables, repeat=n):
            yield "Ġ" + "".join(combo)  # Ġ: a leading space in byte-level BPE


def build_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2's byte -> symbol table

    vocab = {sym: i for i, sym in enumerate(c for _, c in sorted(bytes_to_unicode().items()))}
    words = _pseudo_words()
    while len(vocab) < N_TEXT - 1:
        vocab.setdefault(next(words), len(vocab))
    vocab[""] = N_TEXT - 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TIMESTAMPS])
    assert tok.get_vocab_size() == VOCAB_SIZE and tok.token_to_id("<|0.00|>") == 50364
    return tok


def build(target: Path, *, d_model: int = 64, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    """Write the tiny CTranslate2 Whisper into `target` (replaced if present)."""
    import ctranslate2
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperTokenizerFast)

    ids = {t: N_TEXT + i for i, t in enumerate(SPECIALS)}
    eot, sot, no_ts = ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"]
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=VOCAB_SIZE, num_mel_bins=80, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model, max_source_positions=1500, max_target_positions=448,
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=[], begin_suppress_tokens=[220, eot])
    model = WhisperForConditionalGeneration(config).eval()
    # transformers 5: GenerationConfig.from_model_config would drop lang_to_id and alignment_heads
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot, max_length=448,
        no_timestamps_token_id=no_ts, is_multilingual=True, suppress_tokens=[], begin_suppress_tokens=[220, eot],
        lang_to_id={f"<|{c}|>": ids[f"<|{c}|>"] for c in V2_LANGUAGES},
        task_to_id={"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]},
        alignment_heads=[[layers - 1, h] for h in range(heads)])

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp) / "hf"
        model.save_pretrained(hf_dir)
        tok_file = Path(tmp) / "tokenizer.json"
        build_tokenizer().save(str(tok_file))
        WhisperTokenizerFast(tokenizer_file=str(tok_file), unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                             eos_token="<|endoftext|>", pad_token="<|endoftext|>").save_pretrained(hf_dir)
        WhisperFeatureExtractor(feature_size=80).save_pretrained(hf_dir)
        shutil.copy(tok_file, hf_dir / "tokenizer.json")
        if target.exists():
            shutil.rmtree(target)
        converter = ctranslate2.converters.TransformersConverter(
            str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"])
        converter.convert(str(target), quantization=None, force=True)
    json.loads((target / "config.json").read_text())  # a broken conversion fails here, not in a test
    log.info("built the smoke whisper model in %s", target)
    return target


@smoke_builder("whisper")
def build_smoke(models_dir: Path) -> None:
    build(Path(models_dir) / SMOKE_KEY)
