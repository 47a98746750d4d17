"""The vision-language model the assistant and the magic prompt share: one offloader entry per model.

Registered on first use, so whichever family asks first (VITA at start-up, the magic prompt on its
first `llm` request) builds it, and a model prefetched while the server runs is picked up.
"""
from __future__ import annotations

import threading

from prefetch.manifest import vram_estimate

_lock = threading.Lock()


def shared_vlm(backend, key: str):
    """The `VlmBrain` of manifest model `key`; ModelUnavailable (naming the prefetch command) when absent."""
    from services.vita.brain import VlmBrain

    with _lock:
        brain = backend.vlms.get(key)
        if brain is None:
            s = backend.settings
            env = backend.model_env
            model_dir = env.locate(key)
            brain = VlmBrain(model_dir, vram=env.vram, name=key, device=env.device, dtype=env.dtype,
                             estimate_bytes=vram_estimate(key, env.dtype), max_new_tokens=s.vita_max_new_tokens,
                             frame_max_pixels=s.vita_frame_max_pixels)
            backend.vlms[key] = brain
        return brain
