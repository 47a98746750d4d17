"""Subtitle cues from transcript segments, written as SRT, WebVTT or ASS by pysubs2.

A segment becomes one or more cues of at most `max_lines` lines of at most `max_line_chars`
characters (42 x 2 is the common broadcast guideline). Lines are balanced (a cue of two lines
splits near the middle, not greedily), and when a segment needs several cues its time is shared
in proportion to their length in characters, so long segments don't sit on screen as a wall.
"""
from __future__ import annotations

import itertools
import textwrap
from dataclasses import dataclass

import pysubs2

DEFAULT_MAX_LINE_CHARS = 42
DEFAULT_MAX_LINES = 2


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _balanced(words: list[str], n_lines: int, max_chars: int) -> list[str] | None:
    """Split `words` into `n_lines` lines, each within `max_chars`, minimising the longest line."""
    if n_lines <= 1 or len(words) < n_lines:
        line = " ".join(words)
        return [line] if len(line) <= max_chars else None
    best: tuple[int, list[str]] | None = None
    for cuts in itertools.combinations(range(1, len(words)), n_lines - 1):
        bounds = (0, *cuts, len(words))
        lines = [" ".join(words[a:b]) for a, b in zip(bounds, bounds[1:])]
        longest = max(len(line) for line in lines)
        if longest <= max_chars and (best is None or longest < best[0]):
            best = (longest, lines)
    return best[1] if best else None


def break_lines(text: str, max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
                max_lines: int = DEFAULT_MAX_LINES) -> list[list[str]]:
    """The cues' lines for one segment's text: a list of cues, each a list of lines."""
    text = " ".join(text.split())
    if not text:
        return []
    lines = textwrap.wrap(text, max_line_chars, break_long_words=True, break_on_hyphens=False)
    cues = []
    for i in range(0, len(lines), max_lines):
        group = lines[i:i + max_lines]
        balanced = _balanced(" ".join(group).split(), len(group), max_line_chars)
        cues.append(balanced or group)
    return cues


def cues_from_segments(segments: list[dict], *, max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
                       max_lines: int = DEFAULT_MAX_LINES) -> list[Cue]:
    cues: list[Cue] = []
    for seg in segments:
        groups = break_lines(seg.get("text", ""), max_line_chars, max_lines)
        if not groups:
            continue
        start, end = float(seg["start"]), float(seg["end"])
        weights = [sum(len(line) for line in g) for g in groups]
        total = sum(weights)
        t = start
        for i, (g, w) in enumerate(zip(groups, weights)):
            t_end = end if i == len(groups) - 1 else t + (end - start) * w / total
            if round(t_end, 3) > round(t, 3):  # libass stops rendering a file that has empty events
                cues.append(Cue(round(t, 3), round(t_end, 3), tuple(g)))
            t = t_end
    return cues


def to_ssafile(cues: list[Cue]) -> pysubs2.SSAFile:
    subs = pysubs2.SSAFile()
    for cue in cues:
        subs.append(pysubs2.SSAEvent(start=int(round(cue.start * 1000)), end=int(round(cue.end * 1000)),
                                     text=r"\N".join(_escape_ass(line) for line in cue.lines)))
    return subs


def _escape_ass(line: str) -> str:
    # Braces open ASS override blocks and a backslash starts a tag: neither may come from speech.
    return line.replace("\\", "\u29f5").replace("{", "(").replace("}", ")")


def to_srt(cues: list[Cue]) -> str:
    return to_ssafile(cues).to_string("srt")


def to_vtt(cues: list[Cue]) -> str:
    return to_ssafile(cues).to_string("vtt")


POSITIONS = {"bottom": 2, "middle": 5, "top": 8}  # ASS numpad alignment, centred


def to_ass(cues: list[Cue], *, width: int, height: int, font_size: int | None = None,
           position: str = "bottom", font_name: str = "DejaVu Sans") -> str:
    """An ASS script in the video's own pixel space, so `font_size` is in pixels of the picture."""
    subs = to_ssafile(cues)
    subs.info["PlayResX"] = str(width)
    subs.info["PlayResY"] = str(height)
    subs.info["WrapStyle"] = "2"  # our line breaks only: libass must not re-wrap
    subs.info["ScaledBorderAndShadow"] = "yes"
    size = font_size or default_font_size(height)
    subs.styles["Default"] = pysubs2.SSAStyle(
        fontname=font_name, fontsize=size, primarycolor=pysubs2.Color(255, 255, 255),
        outlinecolor=pysubs2.Color(0, 0, 0), backcolor=pysubs2.Color(0, 0, 0, 128),
        bold=False, outline=max(1.0, size / 14), shadow=max(0.5, size / 28),
        alignment=pysubs2.Alignment(POSITIONS[position]), marginv=max(4, height // 20),
        marginl=max(4, width // 20), marginr=max(4, width // 20))
    return subs.to_string("ass")


def default_font_size(height: int) -> int:
    return max(12, round(height / 18))
