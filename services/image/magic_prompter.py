"""Which engine writes a magic prompt: `rules`, `llm`, or `auto` (the LLM when its model is present).

The LLM runs in a thread of its own under a deadline. A timeout, a busy model or any failure of
it answers with the rules engine instead, with a warning in the result and a line in the log:
the magic prompt never fails because of the model. `llm` asked for by name with the model absent
answers with the rules too, its warning naming the prefetch command (a frontend's "AI" switch keeps
working on a server without the model; `engine` in the answer says who wrote it).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Callable

from ..errors import ModelUnavailable
from .magic_llm import LlmExpander, TextModel
from .magic_prompt import DEFAULT_STYLE, MagicPrompt, RulesExpander
from .prompt_tokens import ClipTokenCounter

log = logging.getLogger("enfoads.image")

ENGINES = ("auto", "rules", "llm")


class MagicPrompter:
    def __init__(self, text_model: Callable[[], TextModel], counter: ClipTokenCounter, *, default_engine: str = "auto",
                 timeout_s: float = 30.0, max_new_tokens: int = 96, max_running: int = 2):
        if default_engine not in ENGINES:
            raise ValueError(f"unknown magic prompt engine {default_engine!r}")
        self.text_model = text_model  # the model, or ModelUnavailable
        self.counter = counter
        self.default_engine = default_engine
        self.timeout_s = timeout_s
        self.max_new_tokens = max_new_tokens
        self.rules = RulesExpander()
        # Each timed-out call keeps its thread until the model stops: bound how many there can be.
        self._slots = threading.BoundedSemaphore(max_running)

    def _rules(self, idea: str, style: str, language: str | None, warnings: list[str]) -> MagicPrompt:
        result = self.rules.expand(idea, style, language)
        tokens, source = self.counter.count(result.prompt)
        return replace(result, tokens=tokens, tokenizer=source, warnings=warnings)

    def expand(self, idea: str, style: str = DEFAULT_STYLE, language: str | None = None,
               engine: str | None = None) -> MagicPrompt:
        engine = engine or self.default_engine
        if engine not in ENGINES:
            raise ValueError(f"unknown magic prompt engine {engine!r}")
        if engine == "rules":
            return self._rules(idea, style, language, [])
        try:
            model = self.text_model()
        except ModelUnavailable as exc:
            warnings = [] if engine == "auto" else [f"the llm engine is not available ({exc.message}); the rules "
                                                    "engine wrote this prompt"]
            return self._rules(idea, style, language, warnings)
        return self._llm(model, idea, style, language)

    def _fallback(self, idea: str, style: str, language: str | None, reason: str) -> MagicPrompt:
        log.warning("magic prompt: the llm engine %s; answered with the rules engine", reason)
        return self._rules(idea, style, language, [f"the llm engine {reason}; the rules engine wrote this prompt"])

    def _llm(self, model: TextModel, idea: str, style: str, language: str | None) -> MagicPrompt:
        if not self._slots.acquire(blocking=False):
            return self._fallback(idea, style, language, "is busy with other requests")
        expander = LlmExpander(model, self.counter.count, max_new_tokens=self.max_new_tokens)
        cancel = threading.Event()
        done = threading.Event()
        outcome: dict = {}

        def run():
            try:
                outcome["result"] = expander.expand(idea, style, language, cancel)
            except BaseException as exc:
                outcome["error"] = exc
            finally:
                self._slots.release()
                done.set()

        threading.Thread(target=run, name="magic-prompt-llm", daemon=True).start()
        if not done.wait(self.timeout_s):
            cancel.set()  # the model stops at its next token; a model still loading stays loaded for next time
            return self._fallback(idea, style, language, f"did not answer within {self.timeout_s:g} s")
        if "error" in outcome:
            exc = outcome["error"]
            return self._fallback(idea, style, language, f"failed ({type(exc).__name__}: {str(exc)[:200]})")
        return outcome["result"]
