"""Talking head through real HTTP on the tiny LivePortrait: the video lasts as long as the speech
(an espeak-ng sentence, or text spoken by our TTS in-process), carries it as audio, and its mouth
signal follows the speech's loudness; bad speech inputs answer 400/413/422."""
import numpy as np
import pytest
import requests

from services import media
from tests import face_media as fm
from tests import whisper_media as wm
from tests.conftest import API_KEY

H = {"Authorization": f"Bearer {API_KEY}"}
SOURCE = fm.png(faces=[(112, 80)])


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Many tiny ops: one torch thread is several times faster on a shared 2-core runner."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return wm.espeak("Hola, te presento el producto nuevo.",
                     tmp_path_factory.mktemp("speech") / "hola.wav", voice="es-419")


@pytest.fixture
def server(live_server, make_settings, smoke_models):
    models = smoke_models("face", "animate", "tts")
    return live_server(make_settings(models_dir=models, face_det_size=256, animate_max_seconds=10,
                                     job_wait_seconds=120))


def post(server, source=SOURCE, files=None, **data):
    return requests.post(f"{server.url}/talking-head", files={"source": ("s.png", source), **(files or {})},
                         data=data, headers=H, timeout=180)


def _frames(path):
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_talking_head_lasts_as_long_as_the_speech_and_the_mouth_follows_it(server, speech, tmp_path):
    r = post(server, files={"audio": ("hola.wav", speech.read_bytes())})
    assert r.status_code == 200, r.text
    body = r.json()
    samples = media.decode_audio(speech, 16000)
    seconds = samples.size / 16000
    assert body["fps"] == 25 and body["frames"] == round(seconds * 25)
    assert body["duration"] == pytest.approx(seconds, abs=1 / 25)
    out = tmp_path / "th.mp4"
    out.write_bytes(requests.get(f"{server.url}{body['url']}", headers=H, timeout=30).content)
    info = media.probe(out)
    assert info.has_audio and info.duration == pytest.approx(seconds, abs=0.1)
    frames = _frames(out)
    assert len(frames) == body["frames"] and frames[0].shape == (256, 256, 3)
    x1, y1, x2, y2 = body["face_box"]
    inside = np.stack([f[y1 + 30:y2 - 30, x1 + 30:x2 - 30].astype(int) for f in frames])
    assert inside.std(axis=0).mean() > 0.1  # the face moves over time (a still picture: ~0)
    # the mouth signal against the speech's loudness, computed here independently (RMS per 40 ms)
    hop = 16000 // 25
    n = body["frames"]
    padded = np.pad(samples, (0, max(0, n * hop - samples.size)))[:n * hop]
    loudness = np.sqrt((padded.reshape(n, hop) ** 2).mean(axis=1))
    lips = np.array(body["lip_open"])
    assert lips.shape == (n,) and lips.min() >= 0 and lips.max() <= 1
    assert np.corrcoef(lips, loudness)[0, 1] > 0.7
    assert lips[loudness < loudness.max() * 0.02].mean() < 0.1  # silence: the mouth shut


def test_a_longer_speech_makes_a_longer_video_with_blinks(server, tmp_path):
    long = wm.espeak("Uno, dos, tres, cuatro, cinco, seis, siete, ocho.", tmp_path / "long.wav", voice="es-419")
    r = post(server, files={"audio": ("long.wav", long.read_bytes())}, paste_back="false", seed=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["duration"] > 2.6 and body["blinks"] >= 1  # the first blink comes within 2.5 s
    assert body["width"] == body["height"] == 64 and body["face_box"] is None


def test_text_spoken_by_our_tts(server, tmp_path):
    r = post(server, text="Hola, buenos días.", language="es")
    assert r.status_code == 200, r.text
    body = r.json()
    out = tmp_path / "tts.mp4"
    out.write_bytes(requests.get(f"{server.url}{body['url']}", headers=H, timeout=30).content)
    info = media.probe(out)
    assert info.has_audio and body["frames"] >= 1
    assert info.duration == pytest.approx(body["speech_seconds"], abs=0.1)


def test_bad_speech_inputs(live_server, make_settings, smoke_models, server, speech, tmp_path):
    r = post(server)
    assert r.status_code == 400 and r.json()["error"]["param"] == "audio"
    r = post(server, files={"audio": ("hola.wav", speech.read_bytes())}, text="Hola")
    assert r.status_code == 400 and r.json()["error"]["param"] == "text"
    r = post(server, text="Hola", language="xx")
    assert r.status_code == 400 and r.json()["error"]["param"] == "language"
    r = post(server, files={"audio": ("x.wav", b"\x00junk" * 50)})
    assert r.status_code == 415 and r.json()["error"]["param"] == "audio"
    r = post(server, fm.png(), files={"audio": ("hola.wav", speech.read_bytes())})
    assert r.status_code == 422 and r.json()["error"]["message"] == "no face found in source image"
    short = live_server(make_settings(models_dir=smoke_models("face", "animate", "tts"), face_det_size=256,
                                      animate_max_seconds=1))
    r = post(short, files={"audio": ("hola.wav", speech.read_bytes())})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_long"
    assert r.json()["error"]["param"] == "audio"
