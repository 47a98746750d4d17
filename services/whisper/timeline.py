"""Segment and word times a subtitle player can trust.

Whisper's timestamps come from predicted tokens: they can run past the end of the audio (the last
30-s window is padded), overlap the previous segment, or end before they start. Everything that
leaves the service goes through `normalize`: times clamped to [0, duration], non-decreasing,
segments not overlapping, words inside their segment. A segment that starts at or after the end
of the audio is text the model invented past it, and is dropped.
"""
from __future__ import annotations

import math


def _ms(x: float) -> float:
    return round(float(x), 3)


def normalize(segments: list[dict], duration: float) -> list[dict]:
    """Segments (dicts with start, end, text and optional words) with clamped, monotonic times."""
    duration = math.floor(max(0.0, float(duration)) * 1000) / 1000  # rounding must not pass the end
    out: list[dict] = []
    cursor = 0.0
    for seg in segments:
        if float(seg["start"]) >= duration:
            break
        start = min(max(float(seg["start"]), cursor), duration)
        end = min(max(float(seg["end"]), start), duration)
        fixed = dict(seg, start=_ms(start), end=_ms(end))
        if seg.get("words") is not None:
            fixed["words"] = _normalize_words(seg["words"], start, end)
        out.append(fixed)
        cursor = end
    for i, seg in enumerate(out):
        seg["id"] = i
    return out


def _normalize_words(words: list[dict], start: float, end: float) -> list[dict]:
    fixed = []
    cursor = start
    for w in words:
        w_start = min(max(float(w["start"]), cursor), end)
        w_end = min(max(float(w["end"]), w_start), end)
        fixed.append(dict(w, start=_ms(w_start), end=_ms(w_end)))
        cursor = w_end
    return fixed
