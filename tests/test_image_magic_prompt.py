"""Magic prompt (rules, no GPU) through HTTP, and the image cache's disk bound."""
from __future__ import annotations

import pytest
import requests

from tests.conftest import API_KEY

H = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def server(live_server):
    return live_server()


def magic(server, body):
    return requests.post(f"{server.url}/magic-prompt", json=body, headers=H, timeout=10)


def test_spanish_idea_becomes_a_detailed_english_prompt(server):
    r = magic(server, {"idea": "Zapatillas rojas en la playa al atardecer", "style": "product"})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["language"] == "es" and data["style"] == "product" and data["engine"] == "rules"
    assert data["subject"] == "red sneakers in the beach at sunset"
    assert data["prompt"].startswith("commercial product photography of red sneakers")
    assert "studio lighting" in data["prompt"] and data["untranslated"] == []


@pytest.mark.parametrize("idea,subject", [
    ("una taza de café con fondo blanco", "coffee mug with white background"),
    ("mujer joven sonriente bebiendo jugo de naranja", "young smiling woman drinking orange juice"),
    ("Promoción de Navidad, tienda de ropa elegante", "christmas promotion, elegant clothing store"),
])
def test_spanish_word_order_and_compounds(server, idea, subject):
    assert magic(server, {"idea": idea}).json()["subject"] == subject


def test_english_idea_is_kept_and_styles_differ(server):
    photo = magic(server, {"idea": "a red sneaker on a beach"}).json()
    assert photo["language"] == "en" and photo["style"] == "photo"
    assert photo["prompt"].startswith("professional photograph of a red sneaker on a beach,")
    cinematic = magic(server, {"prompt": "a red sneaker on a beach", "style": "cinematic"}).json()
    assert cinematic["prompt"].startswith("cinematic film still of a red sneaker on a beach,")


def test_same_idea_gives_the_same_prompt_and_unknown_words_are_reported(server):
    body = {"idea": "botella de kombucha artesanal", "style": "photo"}
    first, second = magic(server, body).json(), magic(server, body).json()
    assert first == second
    assert first["untranslated"] == ["kombucha", "artesanal"]
    assert "bottle" in first["prompt"] and "kombucha" in first["prompt"]


def test_language_can_be_forced(server):
    data = magic(server, {"idea": "pizza", "language": "es"}).json()
    assert data["language"] == "es" and data["subject"] == "pizza"


@pytest.mark.parametrize("body,param", [
    ({"idea": ""}, "idea"),
    ({"idea": "   "}, "idea"),
    ({}, "idea"),
    ({"idea": "x" * 501}, "idea"),
    ({"idea": "a cat", "style": "baroque"}, "style"),
    ({"idea": "a cat", "language": "fr"}, "language"),
    ({"idea": "a cat", "temperature": 1}, "temperature"),
])
def test_magic_prompt_bad_input(server, body, param):
    r = magic(server, body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_styles_are_listed(server):
    data = requests.get(f"{server.url}/magic-prompt/styles", headers=H, timeout=10).json()
    ids = [s["id"] for s in data["data"]]
    assert data["default"] == "photo" and {"photo", "product", "cinematic", "illustration"} <= set(ids)


def test_image_cache_stays_within_its_disk_budget(tmp_path):
    import os

    from services.image.cache import ImageCache

    cache = ImageCache(tmp_path / "cache", max_bytes=2500)
    keys = [ImageCache.key({"seed": i}) for i in range(4)]
    for i, key in enumerate(keys[:2]):
        cache.put(key, "png", bytes([i]) * 1000)
        os.utime(tmp_path / "cache" / f"{key}.png", (1000 + i, 1000 + i))
    assert cache.get(keys[0], "png") == bytes([0]) * 1000  # a hit makes it the most recent
    cache.put(keys[2], "png", b"\x02" * 1000)
    assert cache.get(keys[1], "png") is None  # the least recently used went
    assert cache.get(keys[0], "png") is not None and cache.get(keys[2], "png") is not None
    assert cache.size_bytes() <= 2500
    cache.put(keys[3], "png", b"\x03" * 5000)  # larger than the whole budget: not kept
    assert cache.get(keys[3], "png") is None
    assert ImageCache(tmp_path / "off", max_bytes=0).get(keys[0], "png") is None
