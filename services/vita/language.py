"""Which language the assistant hears and answers in: one per session, switched only with confidence.

Whisper's language detection is unreliable on the short utterances of a conversation (a 2 s
Spanish sentence can come out as Thai at p 0.95), and a wrong language mistranscribes the whole
utterance. So a session keeps a language (the configured one at first) and transcribes in it;
Whisper's own detection (its language-token probabilities) may switch it only when
- the utterance lasts at least `min_seconds`,
- the most probable of the configured `languages` (those the assistant can speak) is another one,
- and Whisper gives that language at least `switch_p` among ALL its languages. The probability is
  not renormalised over the configured ones: mass Whisper puts on languages we do not consider is
  doubt, not evidence (that Thai-heard Spanish sentence gives English 0.77 once renormalised).
A switch sticks for the session until another confident one. Pure logic: no model here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping


@dataclass(frozen=True)
class Decision:
    language: str  # the session's language from now on: transcribe and answer in it
    probability: float | None  # Whisper's probability for `language`; None: detection did not run
    switched: bool


@dataclass(frozen=True)
class LanguagePolicy:
    default: str = "es"
    languages: tuple[str, ...] = ("es", "en", "pt")
    min_seconds: float = 2.0
    switch_p: float = 0.8

    def __post_init__(self):
        if not self.languages:
            raise ValueError("the assistant needs at least one language")
        if self.default not in self.languages:
            raise ValueError(f"the session language {self.default!r} must be one of {', '.join(self.languages)}")
        if not 0.0 < self.switch_p <= 1.0:
            raise ValueError("switch_p must be in (0, 1]")

    def should_detect(self, seconds: float) -> bool:
        """Detection only runs where it can switch: long enough, and more than one language to choose."""
        return len(self.languages) > 1 and seconds >= self.min_seconds

    def scores(self, probabilities: Mapping[str, float] | Iterable[tuple[str, float]]) -> dict[str, float]:
        """Whisper's probabilities (all languages) -> those of the configured languages only."""
        probs = dict(probabilities)
        return {lang: float(probs.get(lang, 0.0)) for lang in self.languages}

    def decide(self, current: str, probabilities: Mapping[str, float] | Iterable[tuple[str, float]] | None,
               seconds: float) -> Decision:
        """The language for an utterance of `seconds` heard in a session speaking `current`.

        `probabilities`: Whisper's language probabilities for the utterance (any iterable of
        (code, p) or a mapping), or None when detection did not run."""
        if probabilities is None or not self.should_detect(seconds):
            return Decision(current, None, False)
        scores = self.scores(probabilities)
        best = max(scores, key=scores.__getitem__)
        if best != current and scores[best] >= self.switch_p:
            return Decision(best, scores[best], True)
        return Decision(current, scores.get(current, 0.0), False)
