"""Magic prompt's llm engine through real HTTP: the tiny smoke Qwen2-VL writes the scene, the SDXL
tokenizer counts it; auto/rules/llm choice, 503 without the model, fallback to rules on failure."""
from __future__ import annotations

import logging
import threading

import pytest
import requests

from prefetch.manifest import VLM_KEY
from services.image.magic_prompt import STYLES
from tests.conftest import API_KEY

H = {"Authorization": f"Bearer {API_KEY}"}
IDEA = "zapatillas rojas en la playa al atardecer"


@pytest.fixture(scope="module")
def models(smoke_models):
    return smoke_models("image", "vita")


@pytest.fixture
def vlm_only(models, tmp_path):
    """A models dir with the VLM and no SDXL (so no SDXL tokenizer either)."""
    root = tmp_path / "models"
    root.mkdir()
    (root / VLM_KEY).symlink_to(models / VLM_KEY, target_is_directory=True)
    return root


def llm_settings(make_settings, models_dir, **overrides):
    # 16 new tokens: the tiny random model writes noise anyway, and runs ~60 ms a token on 2 shared cores
    return make_settings(models_dir=models_dir, image_magic_prompt_max_new_tokens=16, **overrides)


def magic(server, body):
    return requests.post(f"{server.url}/magic-prompt", json=body, headers=H, timeout=60)


def clip_tokens(models, text):
    from transformers import CLIPTokenizer

    return len(CLIPTokenizer.from_pretrained(str(models / "sdxl-base" / "tokenizer"))(text).input_ids)


def test_auto_picks_the_llm_and_the_prompt_fits_clip(live_server, make_settings, models):
    server = live_server(llm_settings(make_settings, models))
    r = magic(server, {"idea": IDEA, "style": "product"})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["engine"] == "llm" and data["warnings"] == [] and data["language"] == "es"
    assert data["prompt"].startswith(STYLES["product"][0] + " ") and data["subject"]
    assert data["tokenizer"] == "sdxl" and data["tokens"] == clip_tokens(models, data["prompt"]) <= 77
    # the assistant's model, registered once with the offloader: no second copy, nothing downloaded
    vram = requests.get(f"{server.url}/vram-monitor", headers=H, timeout=10).json()
    names = [m["name"] for m in vram["models"]]
    assert names.count(VLM_KEY) == 1
    # greedy decoding: the same idea gives the same prompt
    assert magic(server, {"idea": IDEA, "style": "product"}).json()["prompt"] == data["prompt"]


def test_rules_by_name_or_by_setting_with_the_model_present(live_server, make_settings, models):
    server = live_server(llm_settings(make_settings, models))
    data = magic(server, {"idea": IDEA, "engine": "rules"}).json()
    assert data["engine"] == "rules" and data["subject"] == "red sneakers in the beach at sunset"
    assert data["tokens"] == clip_tokens(models, data["prompt"])
    server = live_server(llm_settings(make_settings, models, image_magic_prompt_engine="rules"))
    assert magic(server, {"idea": IDEA}).json()["engine"] == "rules"
    assert magic(server, {"idea": IDEA, "engine": "llm"}).json()["engine"] == "llm"


def test_without_the_sdxl_tokenizer_an_estimate_keeps_the_llm_prompt_short(live_server, make_settings, vlm_only):
    from services.image.prompt_tokens import estimate_tokens

    server = live_server(llm_settings(make_settings, vlm_only))
    data = magic(server, {"idea": "a lighthouse by the sea", "style": "cinematic"}).json()
    assert data["engine"] == "llm" and data["tokenizer"] == "estimate"
    assert data["tokens"] == estimate_tokens(data["prompt"]) <= 77


def test_without_the_model_auto_is_rules_and_llm_falls_back_naming_the_prefetch(live_server, make_settings, tmp_path):
    server = live_server(make_settings(models_dir=tmp_path / "empty"))
    data = magic(server, {"idea": IDEA}).json()
    assert data["engine"] == "rules" and data["warnings"] == [] and data["tokenizer"] == "estimate"
    r = magic(server, {"idea": IDEA, "engine": "llm"})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["engine"] == "rules" and data["subject"] == "red sneakers in the beach at sunset"
    (warning,) = data["warnings"]
    assert "not available" in warning and VLM_KEY in warning and "python -m prefetch" in warning
    assert str(tmp_path / "empty") in warning  # where the running server looks


def test_a_bad_engine_is_400(live_server, make_settings, tmp_path):
    server = live_server(make_settings(models_dir=tmp_path / "empty"))
    r = magic(server, {"idea": IDEA, "engine": "gpt-4"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "engine"


# --- faults injected into the model (test-only fakes standing in for the VLM) ---------------------


class Failing:
    def __init__(self, answer=None):
        self.answer = answer

    def complete(self, system, user_text, *, max_new_tokens, cancel):
        if self.answer is None:
            raise RuntimeError("CUDA error: device-side assert triggered")
        return self.answer


class NeverAnswers:
    """Blocks until the prompter gives up on it (its cancel event), then returns."""

    def __init__(self):
        self.cancelled = threading.Event()

    def complete(self, system, user_text, *, max_new_tokens, cancel):
        cancel.wait(60)
        self.cancelled.set()
        return "too late"


def with_model(fake, **attrs):
    def setup(app):
        prompter = app.extensions["enfoads.magic_prompt"]
        prompter.text_model = lambda: fake
        for name, value in attrs.items():
            setattr(prompter, name, value)
    return setup


@pytest.mark.parametrize("fake,reason", [(Failing(), "failed (RuntimeError: CUDA error"),
                                         (Failing(" \n``` \n"), "failed (EmptyAnswer")])
def test_a_failing_model_falls_back_to_rules_with_a_warning(live_server, make_settings, models, caplog, fake, reason):
    server = live_server(llm_settings(make_settings, models), setup=with_model(fake))
    with caplog.at_level(logging.WARNING, logger="enfoads.image"):
        for engine in ("auto", "llm"):
            r = magic(server, {"idea": IDEA, "engine": engine})
            assert r.status_code == 200, r.text
            data = r.json()
            assert data["engine"] == "rules" and data["subject"] == "red sneakers in the beach at sunset"
            assert len(data["warnings"]) == 1 and reason in data["warnings"][0]
    assert sum(reason in rec.getMessage() for rec in caplog.records) == 2


def test_a_model_past_its_deadline_is_cancelled_and_rules_answer(live_server, make_settings, models, wait_for):
    fake = NeverAnswers()
    server = live_server(llm_settings(make_settings, models), setup=with_model(fake, timeout_s=0.2))
    data = magic(server, {"idea": IDEA}).json()
    assert data["engine"] == "rules" and "did not answer within 0.2 s" in data["warnings"][0]
    wait_for(fake.cancelled.is_set)  # the generation was told to stop, not left running


def test_the_idea_goes_to_the_model_with_the_style(live_server, make_settings, models):
    seen = {}

    class Recording:
        def complete(self, system, user_text, *, max_new_tokens, cancel):
            seen.update(system=system, user=user_text)
            return 'Answer: "red sneakers on a sunny beach, gentle waves"'

    server = live_server(llm_settings(make_settings, models), setup=with_model(Recording()))
    data = magic(server, {"idea": IDEA, "style": "anime"}).json()
    assert "anime artwork" in seen["system"] and seen["user"] == f"Idea (Spanish): {IDEA}"
    assert data["engine"] == "llm" and data["subject"] == "red sneakers on a sunny beach, gentle waves"
    assert data["prompt"].startswith("anime artwork of red sneakers on a sunny beach, gentle waves")


# --- the 77-token fit --------------------------------------------------------------------------------


def words(text):
    return len(text.replace(",", " ").split())


def test_fit_drops_quality_terms_from_the_end_before_the_subject():
    from services.image.prompt_tokens import fit

    head, tail = "photo of a red sneaker", ["studio light", "sharp focus", "8k"]
    assert fit(head, tail, words, limit=12) == "photo of a red sneaker, studio light, sharp focus, 8k"
    assert fit(head, tail, words, limit=9) == "photo of a red sneaker, studio light, sharp focus"
    assert fit(head, tail, words, limit=5) == "photo of a red sneaker"
    assert fit(head, tail, words, limit=3) == "photo of a"
    assert fit("x" * 50, [], len, limit=7) == "x" * 7


def test_clean_answer():
    from services.image.magic_llm import EmptyAnswer, clean_answer

    assert clean_answer("\n**Prompt:** \"a cat on a sofa.\"\nSure, here it is", "photo") == "a cat on a sofa"
    assert clean_answer("professional photograph of a cat,  sleeping", "photo") == "a cat, sleeping"
    with pytest.raises(EmptyAnswer):
        clean_answer("\n\x07 ... \n", "photo")
