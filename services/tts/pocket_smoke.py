"""A tiny random-weight Kyutai Pocket TTS in the published file layout (Spanish).

`kyutai-pocket-tts/languages/spanish/model.safetensors`: the whole TTSModel state dict (flow LM
with the speaker projection, Mimi with its encoder, so clips can be cloned), keyed as the
published weights are (the package loads it with `load_state_dict(strict=True)`), plus a
`config.yaml`: the package's spanish.yaml at tiny sizes (the published repo ships none; the engine
reads it in place of the package's config when present).
`kyutai-pocket-tts-voices/languages/spanish/`: a `tokenizer.json` (a unigram tokenizer trained here
with the `tokenizers` library, in the format of the published one) and one voice, `lola`, exported
with the package's own `export_model_state` as Kyutai's voice embeddings are.

A random flow LM rarely samples its end of speech: it stops at the package's length estimate or
at the engine's configured maximum (settings.tts_pocket_max_seconds), which the tests set low.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("enfoads.tts.smoke")

MODEL_KEY = "kyutai-pocket-tts"
VOICES_KEY = "kyutai-pocket-tts-voices"
LANGUAGE = "spanish"
VOICE = "lola"

_CORPUS = """Hola, ¿cómo estás? Bienvenidos a nuestra demostración.
El sistema convierte texto en voz en español latinoamericano.
Cada frase se genera por separado, así el primer audio llega antes.
También se puede clonar una voz con un clip corto. ¡Gracias por escuchar!
Mañana, niño, corazón, canción, árbol, camión, pingüino; uno, dos, tres.
Esta es la primera frase del texto largo. Y esta es la segunda frase del mismo texto.
Bonjour tout le monde... Hello there: one, two; three - four!
"""


def _tokenizer(path: Path) -> int:
    """A SentencePiece-style unigram tokenizer.json (metaspace pre-tokenizer, as the published one)."""
    from tokenizers import SentencePieceUnigramTokenizer

    tok = SentencePieceUnigramTokenizer()
    alphabet = sorted(set(_CORPUS.replace("\n", "")) | set(".!?,;:'-…"))
    tok.train_from_iterator([_CORPUS] * 4, vocab_size=200, special_tokens=["<unk>"], unk_token="<unk>",
                            initial_alphabet=alphabet, show_progress=False)
    tok.save(str(path))
    return tok.get_vocab_size()


def _config(n_bins: int) -> dict:
    """spanish.yaml's structure and fixed values (rates, ratios, replacements) at tiny widths."""
    import yaml
    from pocket_tts.utils.config import CONFIGS_DIR

    config = yaml.safe_load((CONFIGS_DIR / f"{LANGUAGE}.yaml").read_text(encoding="utf-8"))
    flow = config["flow_lm"]
    flow["flow"] = {"depth": 1, "dim": 16}
    flow["transformer"] = {"d_model": 32, "hidden_scale": 2, "max_period": 10000, "num_heads": 2, "num_layers": 1}
    flow["lookup_table"].update({"dim": 32, "n_bins": n_bins})
    mimi = config["mimi"]
    mimi.update({"inner_dim": 8, "outer_dim": 16})
    mimi["seanet"].update({"dimension": 16, "n_filters": 2})
    mimi["transformer"].update({"d_model": 16, "num_heads": 2, "num_layers": 1, "dim_feedforward": 32,
                                "input_dimension": 16, "output_dimensions": [16]})
    mimi["quantizer"] = {"dimension": 8, "output_dimension": 16}
    return config


def _voice_clip(seconds: float = 2.0, rate: int = 24000):
    import torch

    t = torch.arange(int(seconds * rate)) / rate
    return (0.3 * torch.sin(2 * torch.pi * 180 * t) * (1 + 0.5 * torch.sin(2 * torch.pi * 3 * t)))[None, :]


def build_pocket(models_dir: Path) -> None:
    import tempfile

    import torch
    import yaml
    from safetensors.torch import save_file

    from .pocket_engine import _import_pocket

    TTSModel = _import_pocket()
    from pocket_tts import export_model_state

    weights_dir = Path(models_dir) / MODEL_KEY / "languages" / LANGUAGE
    assets = Path(models_dir) / VOICES_KEY / "languages" / LANGUAGE
    weights_dir.mkdir(parents=True, exist_ok=True)
    (assets / "embeddings").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    n_bins = _tokenizer(assets / "tokenizer.json")
    config = _config(n_bins)
    (weights_dir / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")

    # The package builds an uninitialised model from a config without weights; save its random
    # state dict the way the package itself exports one (POCKET_TTS_SAVE_WEIGHTS).
    build = {**config, "weights_path": None, "weights_path_without_voice_cloning": None}
    build["flow_lm"] = {**config["flow_lm"], "lookup_table": {**config["flow_lm"]["lookup_table"],
                                                               "tokenizer_path": str(assets / "tokenizer.json")}}
    with tempfile.TemporaryDirectory(prefix="pocket-smoke-") as tmp:
        path = Path(tmp) / f"{LANGUAGE}.yaml"
        path.write_text(yaml.safe_dump(build, allow_unicode=True), encoding="utf-8")
        tts = TTSModel.load_model(config=str(path))
    with torch.no_grad():
        for name, param in tts.named_parameters():
            if name.endswith("speaker_proj_weight"):
                param.normal_(0, 0.1)
    save_file({k: v.contiguous() for k, v in tts.state_dict().items()}, str(weights_dir / "model.safetensors"))
    export_model_state(tts.get_state_for_audio_prompt(_voice_clip()), str(assets / "embeddings" / f"{VOICE}.safetensors"))
    log.info("built a tiny Pocket TTS (%s) in %s", LANGUAGE, weights_dir)
