"""Architecture overrides for Chatterbox checkpoints that are not the published size.

Chatterbox hard-codes its module sizes in constructors (T3's Llama config, the Perceiver, the
S3 tokenizer's default config, CAMPPlus, the conformer encoder, the flow decoder, HiFT), so a
checkpoint of another size cannot be loaded by `from_local` as is. A checkpoint folder may carry
`enfoads_arch.json` naming smaller sizes; while `overrides(folder)` is active the constructors
build those sizes, and `from_local` then loads the folder through its own, unchanged code.

Published checkpoints have no such file: for them `overrides` changes nothing. The smoke builder
writes the file next to the tiny random-weight models the tests use.
"""
from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import Iterator

ARCH_FILE = "enfoads_arch.json"

# Sizes for tiny test checkpoints: T3 keeps 16 heads and >= 14 layers because the multilingual
# alignment analyzer hooks layers 9, 12, 13 and heads up to 15.
TINY = {
    "llama": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 14, "num_attention_heads": 16,
              "num_key_value_heads": 16, "head_dim": 4},
    "gpt2": {"n_embd": 64, "hidden_size": 64, "n_head": 4, "n_layer": 2},
    "perceiver": {"pre_attention_query_size": 64, "embedding_dim": 64},
    "s3_tokenizer": {"n_audio_state": 64, "n_audio_head": 1, "n_audio_layer": 1},  # rotary: 64 dims per head,
    "campplus": {"growth_rate": 8, "bn_size": 2, "init_channels": 32},
    "conformer": {"attention_heads": 2, "linear_units": 64, "num_blocks": 1},
    "cfm_decoder": {"channels": [32], "attention_head_dim": 8, "n_blocks": 1, "num_mid_blocks": 1, "num_heads": 2},
    "hift": {"base_channels": 16},
    "f0_predictor": {"cond_channels": 32},
}


def read(folder: Path) -> dict | None:
    path = Path(folder) / ARCH_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write(folder: Path, arch: dict) -> None:
    (Path(folder) / ARCH_FILE).write_text(json.dumps(arch, indent=1))


def _with_kwargs(cls, extra: dict):
    @functools.wraps(cls, updated=())
    def build(*args, **kwargs):
        return cls(*args, **{**kwargs, **extra})

    return build


@contextlib.contextmanager
def _patched(obj, name: str, value) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def _dict_updated(d: dict, values: dict) -> Iterator[None]:
    old = dict(d)
    d.update(values)
    try:
        yield
    finally:
        d.clear()
        d.update(old)


@contextlib.contextmanager
def _fields_set(obj, values: dict) -> Iterator[None]:
    old = {k: getattr(obj, k) for k in values}
    for k, v in values.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(obj, k, v)


@contextlib.contextmanager
def applied(arch: dict | None) -> Iterator[None]:
    """Constructors build the sizes in `arch` while active (nothing changes for None)."""
    if not arch:
        yield
        return
    from chatterbox.models.s3gen import s3gen as s3gen_mod
    from chatterbox.models.t3 import llama_configs
    from chatterbox.models.t3.modules import cond_enc
    from s3tokenizer import model_v2

    tok_config = model_v2.S3TokenizerV2.__init__.__defaults__[0]  # the shared default ModelConfig
    with contextlib.ExitStack() as stack:
        if "llama" in arch:
            stack.enter_context(_dict_updated(llama_configs.LLAMA_CONFIGS["Llama_520M"], arch["llama"]))
        if "gpt2" in arch:
            stack.enter_context(_dict_updated(llama_configs.LLAMA_CONFIGS["GPT2_medium"], arch["gpt2"]))
        if "perceiver" in arch:
            stack.enter_context(_patched(cond_enc, "Perceiver", _with_kwargs(cond_enc.Perceiver, arch["perceiver"])))
        if "s3_tokenizer" in arch:
            stack.enter_context(_fields_set(tok_config, arch["s3_tokenizer"]))
        for key, name in (("campplus", "CAMPPlus"), ("conformer", "UpsampleConformerEncoder"),
                          ("cfm_decoder", "ConditionalDecoder"), ("hift", "HiFTGenerator"),
                          ("f0_predictor", "ConvRNNF0Predictor")):
            if key in arch:
                stack.enter_context(_patched(s3gen_mod, name, _with_kwargs(getattr(s3gen_mod, name), arch[key])))
        yield


@contextlib.contextmanager
def overrides(folder: Path) -> Iterator[None]:
    with applied(read(folder)):
        yield
