"""Cut a token stream into sentences, so speech can start after the first one is written."""
from __future__ import annotations

import re

# An end mark followed by whitespace (so "3.5" and "www.x.es" do not cut), or a line break.
_END = re.compile(r"(?<=[.!?…;:])[\"'»)\]]*\s+|\n+")
# Spanish abbreviations that end in a period without ending the sentence.
_ABBREVIATIONS = {"sr.", "sra.", "srta.", "dr.", "dra.", "ud.", "uds.", "etc.", "pág.", "p.", "ej.", "núm.",
                  "av.", "ee.", "uu.", "mr.", "mrs.", "vs."}


class SentenceSplitter:
    """`feed(text)` returns the sentences completed so far; `flush()` returns the rest.

    Very long runs without an end mark are cut at the last comma or space before `max_chars`, so
    the voice never waits for a whole paragraph.
    """

    def __init__(self, max_chars: int = 220, min_chars: int = 2):
        self.max_chars = max_chars
        self.min_chars = min_chars
        self._buf = ""

    def feed(self, text: str) -> list[str]:
        self._buf += text
        out: list[str] = []
        start = 0
        for m in _END.finditer(self._buf):
            candidate = self._buf[start:m.start()].strip()
            last_word = candidate.rsplit(None, 1)[-1].lower() if candidate else ""
            if len(candidate) < self.min_chars or last_word in _ABBREVIATIONS:
                continue
            out.append(candidate)
            start = m.end()
        self._buf = self._buf[start:]
        while len(self._buf) > self.max_chars:
            head = self._buf[:self.max_chars]
            cut = max(head.rfind(", "), head.rfind(" "))
            cut = cut + 1 if cut > 0 else self.max_chars
            piece = self._buf[:cut].strip()
            if piece:
                out.append(piece)
            self._buf = self._buf[cut:]
        return out

    def flush(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        return [rest] if rest else []
