"""A transcript (the service's dict) in the response formats clients ask for, and on disk."""
from __future__ import annotations

import json
from pathlib import Path

from services.errors import InvalidInput

from .subtitles import DEFAULT_MAX_LINE_CHARS, DEFAULT_MAX_LINES, cues_from_segments, to_srt, to_vtt

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
MIME = {"json": "application/json", "verbose_json": "application/json", "text": "text/plain; charset=utf-8",
        "srt": "application/x-subrip; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}
FILES = {"json": "transcript.json", "text": "transcript.txt", "srt": "transcript.srt", "vtt": "transcript.vtt"}


def check_format(fmt: str) -> str:
    if fmt not in RESPONSE_FORMATS:
        raise InvalidInput(f"unsupported response_format {fmt!r}; use one of: {', '.join(RESPONSE_FORMATS)}",
                           param="response_format", code="invalid_response_format")
    return fmt


def render(result: dict, fmt: str, *, max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
           max_lines: int = DEFAULT_MAX_LINES) -> str | dict:
    """The body for `fmt`: a dict for the JSON formats, text for the others."""
    check_format(fmt)
    if fmt == "json":
        return {"text": result["text"]}
    if fmt == "verbose_json":  # OpenAI's shape, plus language_probability, speech_duration, model
        return dict(result)
    if fmt == "text":
        return result["text"] + "\n" if result["text"] else ""
    cues = cues_from_segments(result["segments"], max_line_chars=max_line_chars, max_lines=max_lines)
    return to_srt(cues) if fmt == "srt" else to_vtt(cues)


def write_all(result: dict, folder: Path, **line_options) -> dict[str, str]:
    """Write the transcript in every file format into `folder`; returns {format: file name}."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for fmt, name in FILES.items():
        body = render(result, "verbose_json" if fmt == "json" else fmt, **line_options)
        text = json.dumps(body, ensure_ascii=False, indent=1) if isinstance(body, dict) else body
        (folder / name).write_text(text, encoding="utf-8")
        names[fmt] = name
    return names
