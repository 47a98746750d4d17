"""The assistant's brain: a small vision-language model (Qwen2-VL, plain transformers) answering
the transcribed utterance, looking at the latest camera frames, streaming its reply in sentences.

The model lives in the VRAM offloader (registered by `register`); generation holds it with
`acquire` for as long as the reply streams, and stops at once when the reply is cancelled.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from services.device import torch_dtype

from .sentences import SentenceSplitter

log = logging.getLogger("enfoads.vita")

LANGUAGE_NAMES = {"es": "español", "en": "inglés", "fr": "francés", "pt": "portugués", "it": "italiano",
                  "de": "alemán", "ca": "catalán"}

SYSTEM_PROMPT = (
    "Eres un asistente de voz en tiempo real que puede ver lo que muestra la cámara del usuario. "
    "Responde siempre en el idioma en que te habla el usuario (español si no está claro), con frases "
    "cortas y naturales para ser dichas en voz alta: sin listas, sin markdown, sin emojis. "
    "Si hay imágenes, son los fotogramas más recientes de la cámara."
)


@dataclass(frozen=True)
class Turn:
    user: str
    assistant: str


class _Cancelled:
    """A transformers StoppingCriteria that ends generation as soon as one of `events` is set."""

    def __init__(self, *events: threading.Event):
        self.events = events

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = any(e.is_set() for e in self.events)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def fit_pixels(image, max_pixels: int):
    """Downscale (keeping the aspect) so that the frame costs at most `max_pixels` worth of tokens."""
    w, h = image.size
    if w * h <= max_pixels:
        return image
    scale = (max_pixels / (w * h)) ** 0.5
    return image.resize((max(28, int(w * scale)), max(28, int(h * scale))))


class VlmBrain:
    def __init__(self, model_dir: Path, *, vram, name: str, device: str, dtype: str, estimate_bytes: int,
                 max_new_tokens: int = 160, frame_max_pixels: int = 448 * 448, system_prompt: str = SYSTEM_PROMPT):
        self.model_dir = Path(model_dir)
        self.vram = vram
        self.name = name
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.frame_max_pixels = frame_max_pixels
        self.system_prompt = system_prompt
        self._processor = None
        self._processor_lock = threading.Lock()
        from services.vram import Runtime

        vram.register(name, self._load, runtime=Runtime.TORCH, estimate_bytes=estimate_bytes, family="vita")

    @property
    def vram_names(self) -> tuple[str, ...]:
        return (self.name,)

    def _load(self, device: str):
        from transformers import Qwen2VLForConditionalGeneration

        log.info("loading %s from %s (%s)", self.name, self.model_dir, self.dtype)
        model = Qwen2VLForConditionalGeneration.from_pretrained(self.model_dir, dtype=torch_dtype(self.dtype))
        return model.to(device).eval()

    @property
    def processor(self):
        with self._processor_lock:
            if self._processor is None:
                from transformers import AutoProcessor

                self._processor = AutoProcessor.from_pretrained(self.model_dir)
            return self._processor

    def messages(self, history: Sequence[Turn], user_text: str, frames: Sequence, language: str | None) -> list:
        system = self.system_prompt
        if language and language in LANGUAGE_NAMES:
            system += f" El usuario habla {LANGUAGE_NAMES[language]}."
        msgs: list[dict] = [{"role": "system", "content": [{"type": "text", "text": system}]}]
        # Earlier turns go in as text only (as VITA does): their frames are stale and costly.
        for turn in history:
            msgs.append({"role": "user", "content": [{"type": "text", "text": turn.user}]})
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": turn.assistant}]})
        content = [{"type": "image"} for _ in frames] + [{"type": "text", "text": user_text}]
        msgs.append({"role": "user", "content": content})
        return msgs

    def stream_sentences(self, history: Sequence[Turn], user_text: str, frames: Sequence,
                         language: str | None, cancel: threading.Event) -> Iterator[str]:
        """The reply, one sentence at a time, as soon as each is written."""
        splitter = SentenceSplitter()
        for piece in self.stream_text(history, user_text, frames, language, cancel):
            yield from splitter.feed(piece)
        if not cancel.is_set():
            yield from splitter.flush()

    def stream_text(self, history: Sequence[Turn], user_text: str, frames: Sequence,
                    language: str | None, cancel: threading.Event) -> Iterator[str]:
        images = [fit_pixels(f, self.frame_max_pixels) for f in frames]
        yield from self._stream(self.messages(history, user_text, images, language), images, self.max_new_tokens,
                                cancel)

    def complete(self, system: str, user_text: str, *, max_new_tokens: int, cancel: threading.Event) -> str:
        """The model as a plain text model: one system prompt, one user message, no images (greedy)."""
        msgs = [{"role": "system", "content": [{"type": "text", "text": system}]},
                {"role": "user", "content": [{"type": "text", "text": user_text}]}]
        return "".join(self._stream(msgs, [], max_new_tokens, cancel))

    def _stream(self, messages: list, images: list, max_new_tokens: int, cancel: threading.Event) -> Iterator[str]:
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        processor = self.processor
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[prompt], images=images or None, return_tensors="pt")
        stop = threading.Event()  # cancelled by the client, or the consumer went away
        failure: list[BaseException] = []
        with self.vram.acquire(self.name) as model:
            inputs = inputs.to(model.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)

            def generate():
                try:
                    model.generate(**inputs, streamer=streamer, max_new_tokens=max_new_tokens, do_sample=False,
                                   stopping_criteria=StoppingCriteriaList([_Cancelled(stop, cancel)]))
                except BaseException as exc:  # reported in the consumer's thread
                    failure.append(exc)
                    streamer.end()

            worker = threading.Thread(target=generate, name="vlm-generate", daemon=True)
            worker.start()
            try:
                for piece in streamer:
                    if stop.is_set() or cancel.is_set():
                        break
                    if piece:
                        yield piece
            finally:
                stop.set()
                worker.join()
        if failure and not cancel.is_set():
            raise failure[0]
