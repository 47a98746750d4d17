"""Long text -> chunks at sentence boundaries, with pysbd's rules for the text's language."""
from __future__ import annotations

import functools
import re

_SPACES = re.compile(r"\s+")


@functools.lru_cache(maxsize=32)
def _segmenter(language: str):
    import pysbd
    from pysbd.languages import LANGUAGE_CODES

    # pysbd knows 23 languages; others (pt, sv, ...) split well enough with the English rules.
    return pysbd.Segmenter(language=language if language in LANGUAGE_CODES else "en", clean=False)


def sentences(text: str, language: str) -> list[str]:
    text = _SPACES.sub(" ", text).strip()
    if not text:
        return []
    return [s.strip() for s in _segmenter(language).segment(text) if s.strip()]


def _split_long(sentence: str, limit: int) -> list[str]:
    """A sentence longer than the chunk size is cut at the last space before the limit."""
    parts, rest = [], sentence
    while len(rest) > limit:
        cut = rest.rfind(" ", 0, limit + 1)
        cut = cut if cut > 0 else limit
        parts.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        parts.append(rest)
    return parts


def chunk_text(text: str, language: str, chunk_size: int) -> list[str]:
    """Whole sentences packed into chunks of about `chunk_size` characters (never split mid-sentence
    unless one sentence alone is longer than that)."""
    chunks: list[str] = []
    current = ""
    for sentence in sentences(text, language):
        for piece in _split_long(sentence, chunk_size):
            if current and len(current) + 1 + len(piece) > chunk_size:
                chunks.append(current)
                current = piece
            else:
                current = f"{current} {piece}".strip()
    if current:
        chunks.append(current)
    return chunks
