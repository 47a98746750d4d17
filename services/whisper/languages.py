"""Whisper's language codes, in the order of its tokenizer (ids 50259...).

The order matters to the smoke model, whose tokenizer must put each language token at the id the
real checkpoints use; validation only needs the set. `yue` exists in the v3 models only.
"""
from __future__ import annotations

LANGUAGES: tuple[str, ...] = (
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it",
    "id", "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur",
    "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn",
    "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si",
    "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo",
    "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln", "ha",
    "ba", "jw", "su", "yue",
)
V2_LANGUAGES = LANGUAGES[:-1]  # the 99 of large-v2 and smaller models

# Names clients send instead of codes (OpenAI accepts ISO-639-1 codes; people type names too).
_ALIASES = {
    "spanish": "es", "español": "es", "espanol": "es", "english": "en", "inglés": "en", "ingles": "en",
    "portuguese": "pt", "português": "pt", "portugues": "pt", "french": "fr", "german": "de",
    "italian": "it", "catalan": "ca", "chinese": "zh", "japanese": "ja", "cantonese": "yue",
    "es-419": "es", "es-mx": "es", "es-ar": "es", "es-co": "es", "es-cl": "es", "es-es": "es",
    "pt-br": "pt", "pt-pt": "pt", "en-us": "en", "en-gb": "en", "zh-cn": "zh", "zh-tw": "zh",
}


def normalize_language(value: str | None) -> str | None:
    """A Whisper code for `value`, None for automatic detection; ValueError for anything else."""
    if value is None:
        return None
    code = value.strip().lower().replace("_", "-")
    if code in ("", "auto", "detect"):
        return None
    code = _ALIASES.get(code, code)
    if code not in LANGUAGES:
        raise ValueError(f"unknown language {value!r}; use 'auto' or one of: {', '.join(sorted(LANGUAGES))}")
    return code
