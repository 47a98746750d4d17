"""Kyutai DSM TTS (moshi) through HTTP on a tiny random-weight checkpoint; Spanish routed to Pocket TTS."""
import time

import numpy as np
import pytest
import requests

from tests.conftest import API_KEY
from tests.tts_media import decode

H = {"Authorization": f"Bearer {API_KEY}"}
KYUTAI = "kyutai-tts-1.6b-en_fr"
VOICE = "kyutai-expresso-ex03-ex01_happy_001_channel1_334s"
RATE = 24000
MAX_SECONDS = 4.0  # a random LM may never finish the text: the product's cap ends it


@pytest.fixture(scope="module")
def server(smoke_models, tmp_path_factory):
    import torch

    from backend.server import Server
    from backend.settings import load_settings

    torch.set_num_threads(1)
    settings = load_settings(profile="smoke", data_dir=tmp_path_factory.mktemp("kyutai-data"), api_key=API_KEY,
                             device="cpu", port=0, job_wait_seconds=120, models_dir=smoke_models("tts"),
                             tts_kyutai_max_seconds=MAX_SECONDS)
    srv = Server(settings).start()
    yield srv
    srv.stop()


def post(server, body, path="/tts"):
    return requests.post(f"{server.url}{path}", json=body, headers=H, timeout=180)


@pytest.mark.parametrize("language,text", [("en", "Hello there, how are you?"),
                                           ("fr", "Bonjour, comment allez-vous ?")])
def test_kyutai_speaks_english_and_french_itself(server, language, text):
    r = post(server, {"text": text, "model": KYUTAI, "language": language, "seed": 1, "output_format": "wav"})
    assert r.status_code == 200, r.text
    assert r.headers["X-TTS-Engine"] == KYUTAI and "X-TTS-Routed-From" not in r.headers
    samples, rate = decode(r.content)
    assert rate == RATE and r.headers["X-Sample-Rate"] == str(RATE)
    assert 0 < samples.size <= (MAX_SECONDS + 1) * RATE and np.isfinite(samples).all()


def test_spanish_asked_of_kyutai_is_spoken_by_pocket_tts(server):
    body = {"input": "Hola, ¿cómo estás?", "model": KYUTAI, "language": "es", "voice": VOICE,
            "response_format": "wav"}
    r = post(server, body, "/v1/audio/speech")
    assert r.status_code == 200, r.text
    assert r.headers["X-TTS-Engine"] == "kyutai-pocket-tts"  # Kyutai stays Kyutai
    assert r.headers["X-TTS-Routed-From"] == KYUTAI
    assert decode(r.content)[1] == 24000
    # the job's JSON says the same
    r = requests.post(f"{server.url}/tts?async=true", json={"text": "Hola.", "model": KYUTAI, "language": "es"},
                      headers=H, timeout=30)
    assert r.status_code == 202, r.text
    location = r.json()["location"]
    for _ in range(1200):
        job = requests.get(f"{server.url}{location}", headers=H, timeout=10).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert job["status"] == "succeeded", job
    assert job["result"]["engine"] == "kyutai-pocket-tts" and job["result"]["routed_from"] == KYUTAI


def test_kyutai_voices_are_listed_and_clip_voices_refused(server):
    data = requests.get(f"{server.url}/v1/audio/voices", headers=H, timeout=10).json()["data"]
    kyutai = [v for v in data if v["type"] == "kyutai"]
    assert [v["id"] for v in kyutai] == [VOICE] and kyutai[0]["name"].startswith("expresso/")
    r = post(server, {"text": "Hello.", "model": KYUTAI, "language": "en", "voice": "nobody"})
    assert r.status_code == 404 and VOICE in r.json()["error"]["message"]
    clips = server.app.extensions["enfoads.tts"].voices.predefined_dir
    (clips / "ana.wav").write_bytes(b"RIFF")  # listed by name; never decoded here
    r = post(server, {"text": "Hello.", "model": KYUTAI, "language": "en", "voice": "ana"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "voice" and VOICE in r.json()["error"]["message"]


def test_missing_kyutai_files_answer_503_naming_the_prefetch_command(live_server, make_settings, tmp_path):
    empty = tmp_path / "no-models"
    empty.mkdir()
    srv = live_server(make_settings(models_dir=empty))
    r = requests.post(f"{srv.url}/tts", json={"text": "Hello.", "model": KYUTAI, "language": "en"}, headers=H,
                      timeout=30)
    assert r.status_code == 503, r.text
    message = r.json()["error"]["message"]
    assert "python -m prefetch" in message and KYUTAI in message


def test_kyutai_streams_chunk_by_chunk(server):
    body = {"input": "Bonjour tout le monde, voici la première phrase. Et voici la deuxième phrase du texte.",
            "model": KYUTAI, "language": "fr", "chunk_size": 50, "response_format": "pcm", "stream_format": "sse"}
    r = post(server, body, "/v1/audio/speech")
    assert r.status_code == 200 and r.headers["X-TTS-Engine"] == KYUTAI
    events = [line for line in r.text.splitlines() if line.startswith("data: ")]
    assert [e.count("speech.audio.delta") for e in events] == [1, 1, 0] and "speech.audio.done" in events[-1]
