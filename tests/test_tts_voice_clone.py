"""A cloned voice is really used: under the same seed it speaks differently from the built-in voice,
and the same voice twice gives the same audio (tiny random-weight Chatterbox; HTTP end to end)."""
import io
import wave

import numpy as np
import pytest
import requests

from tests.conftest import API_KEY
from tests.test_tts import decode, speech_wav

H = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(smoke_models, tmp_path_factory):
    import torch

    from backend.server import Server
    from backend.settings import load_settings

    torch.set_num_threads(1)
    settings = load_settings(profile="smoke", data_dir=tmp_path_factory.mktemp("tts-data"), api_key=API_KEY,
                             device="cpu", port=0, job_wait_seconds=60, models_dir=smoke_models("tts"))
    srv = Server(settings).start()
    yield srv
    srv.stop()


def speak(server, **body):
    r = requests.post(f"{server.url}/tts", json={"text": "Hola, soy yo.", "seed": 5, "output_format": "wav", **body},
                      headers=H, timeout=120)
    assert r.status_code == 200, r.text
    return decode(r.content, "wav")[0]


def clone(server, clip, name):
    r = requests.post(f"{server.url}/v1/audio/voices", files={"file": (f"{name}.wav", clip, "audio/wav")},
                      data={"name": name}, headers=H, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    n = min(a.size, b.size)
    return a.size != b.size or float(np.abs(a[:n] - b[:n]).max()) > 1e-3


def test_a_cloned_voice_changes_the_audio_and_is_repeatable(server):
    ana = clone(server, speech_wav(), "Ana")
    built_in = speak(server)
    cloned = speak(server, voice=ana)
    assert built_in.size > 0 and cloned.size > 0
    assert differ(cloned, built_in)
    assert np.array_equal(speak(server, voice=ana), cloned)
    assert np.array_equal(speak(server), built_in)
    # the same through the seed frontend's field names
    assert np.array_equal(speak(server, voice_mode="clone", reference_audio_filename=ana), cloned)


def tone_wav(freq: float, wobble: float, seconds=6.0, rate=22050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    wav = 0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * wobble * t))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((wav * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def test_two_cloned_voices_differ(server):
    low = clone(server, speech_wav(), "Grave")
    high = clone(server, tone_wav(520, 7), "Aguda")
    assert differ(speak(server, voice=low), speak(server, voice=high))
