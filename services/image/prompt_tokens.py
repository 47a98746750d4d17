"""CLIP's 77-token window: count a prompt as SDXL will read it, and trim a prompt to fit.

Counted with the SDXL tokenizer when its files are present; otherwise with a generous estimate
(start and end tokens, a token per three letters of a word, one per digit, two per other
character), which overcounts English prompts: a prompt trimmed by the estimate fits CLIP.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Callable

from ..errors import ModelUnavailable

log = logging.getLogger("enfoads.image")

CLIP_MAX_TOKENS = 77  # CLIP's context, start and end tokens included
_PIECES = re.compile(r"[A-Za-z]+|[0-9]|[^\sA-Za-z0-9]")


def estimate_tokens(text: str) -> int:
    n = 2  # <|startoftext|> and <|endoftext|>
    for piece in _PIECES.findall(text):
        if piece[0].isascii() and piece[0].isalpha():
            n += math.ceil(len(piece) / 3)
        else:
            n += 1 if piece.isascii() else 2
    return n


class ClipTokenCounter:
    """`count(text)`: CLIP tokens, start and end included; `source`: 'sdxl' or 'estimate'."""

    def __init__(self, tokenizer: Callable[[], object] | None = None):
        self._tokenizer = tokenizer  # returns a CLIPTokenizer, or raises ModelUnavailable

    def _loaded(self):
        if self._tokenizer is None:
            return None
        try:
            return self._tokenizer()
        except ModelUnavailable:
            return None
        except Exception as exc:  # unreadable tokenizer files: count with the estimate, say why once
            log.warning("magic prompt: the SDXL tokenizer could not be read (%s); counting with an estimate", exc)
            self._tokenizer = None
            return None

    def count(self, text: str) -> tuple[int, str]:
        tok = self._loaded()
        if tok is None:
            return estimate_tokens(text), "estimate"
        return len(tok(text, truncation=False, verbose=False).input_ids), "sdxl"


def fit(head: str, tail: list[str], count: Callable[[str], int], limit: int = CLIP_MAX_TOKENS) -> str:
    """`head, tail[0], tail[1], ...` cut to `limit` tokens: the tail's terms go first, from the end
    (the subject is in the head), then the head's last words."""
    parts = [head, *tail]
    while len(parts) > 1 and count(", ".join(parts)) > limit:
        parts.pop()
    text = ", ".join(parts)
    if count(text) <= limit:
        return text
    words = text.split()
    lo, hi = 0, len(words)  # the longest prefix of words that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(" ".join(words[:mid])) <= limit:
            lo = mid
        else:
            hi = mid - 1
    if lo:
        return " ".join(words[:lo]).rstrip(" ,")
    lo, hi = 0, len(text)  # one enormous word: the longest prefix of characters
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]
