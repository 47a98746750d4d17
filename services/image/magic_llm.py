"""The magic prompt's `llm` engine: a local language model writes the scene, the style preset frames it.

The model (the assistant's vision-language model, used as a text model) translates the idea to
English and adds concrete visual details, subject first; the preset's own words go around it, so
the style is always the one asked for; `prompt_tokens.fit` keeps the whole under CLIP's 77 tokens,
dropping quality terms before anything of the subject.
"""
from __future__ import annotations

import re
import threading
from typing import Callable, Protocol

from .magic_prompt import STYLES, MagicPrompt, detect_language
from .prompt_tokens import fit

LANGUAGE_NAMES = {"es": "Spanish", "en": "English"}
MAX_WORDS = 30

SYSTEM_PROMPT = (
    "You write prompts for the SDXL text-to-image model. The user gives a short idea for an image, in "
    "Spanish or English. Answer with ONE line in English and nothing else: first the main subject of the "
    "idea, translated faithfully (never replace it or add people or products that are not in the idea), "
    "then a few concrete visual details of the scene (setting, colors, light, mood), as short comma-separated "
    "phrases, at most {max_words} words. The image will be a {style}: do not write style, camera or quality "
    "words, they are added for you. No quotes, no explanations, no lists.\n"
    "Example. Idea: zapatillas rojas en la playa al atardecer. Answer: red sneakers on the sand of a beach at "
    "sunset, gentle waves, warm orange sky, long soft shadows"
)


class TextModel(Protocol):
    def complete(self, system: str, user_text: str, *, max_new_tokens: int, cancel: threading.Event) -> str: ...


class EmptyAnswer(Exception):
    """The model answered nothing usable."""


def style_label(style: str) -> str:
    return STYLES[style][0].removesuffix(" of")


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ufffd]")
_LABEL = re.compile(r"^\s*(?:\*\*)?(?:answer|prompt|english|english prompt|description)\s*[:\-]\s*", re.I)


def clean_answer(text: str, style: str) -> str:
    """The model's first non-empty line, without labels, quotes, markdown or an echoed style prefix."""
    line = next((ln for ln in text.splitlines() if ln.strip(" \t*-#`\"'")), "")
    line = _UNPRINTABLE.sub(" ", line)
    line = _LABEL.sub("", line)
    line = line.strip().strip("*`\"'“”‘’ ").rstrip(".").strip()
    before = STYLES[style][0]
    if line.lower().startswith(before.lower()):
        line = line[len(before):].strip(" ,")
    line = " ".join(line.split())
    words = line.split()
    if len(words) > 2 * MAX_WORDS:  # a rambling model: keep the start, where the subject is
        line = " ".join(words[:2 * MAX_WORDS])
    if not re.search(r"[A-Za-z]", line):
        raise EmptyAnswer(f"the model's answer had no usable text: {text[:80]!r}")
    return line


class LlmExpander:
    name = "llm"

    def __init__(self, model: TextModel, count: Callable[[str], tuple[int, str]], *, max_new_tokens: int = 96):
        self.model = model
        self.count = count  # text -> (CLIP tokens, what counted them)
        self.max_new_tokens = max_new_tokens

    def expand(self, idea: str, style: str, language: str | None, cancel: threading.Event) -> MagicPrompt:
        idea = " ".join(idea.split())
        language = language or detect_language(idea)
        system = SYSTEM_PROMPT.format(max_words=MAX_WORDS, style=style_label(style))
        user = f"Idea ({LANGUAGE_NAMES[language]}): {idea}"
        scene = clean_answer(self.model.complete(system, user, max_new_tokens=self.max_new_tokens, cancel=cancel),
                             style)
        before, after = STYLES[style]
        prompt = fit(f"{before} {scene}", after.split(", "), lambda t: self.count(t)[0])
        if not prompt.startswith(f"{before} {scene}"):  # the scene itself was cut: report what is left of it
            scene = prompt[len(before):].strip(" ,")
        tokens, source = self.count(prompt)
        return MagicPrompt(prompt=prompt, style=style, language=language, engine=self.name, subject=scene,
                           tokens=tokens, tokenizer=source)
