"""Chatterbox Multilingual V3 and the Latin-American Spanish pack: the V3 inference path on tiny
checkpoints in the published layouts (same weights as the tiny V2, so only the path differs), who
speaks Spanish, and what a user sees when a model is missing or broken."""
import json
import os
import shutil
import threading

import pytest
import requests

from tests.conftest import API_KEY

H = {"Authorization": f"Bearer {API_KEY}"}
RATE = 24000
PER_TOKEN = 960  # 24 kHz / 25 speech tokens per second
V3_MODELS = ("chatterbox-es-latam", "chatterbox-multilingual-v3")
V2 = "chatterbox-multilingual"


@pytest.fixture(scope="module")
def models_dir(smoke_models):
    import torch

    torch.set_num_threads(1)
    return smoke_models("tts")


def start_server(models_dir, data_dir, **overrides):
    from backend.server import Server
    from backend.settings import load_settings

    values = dict(profile="smoke", data_dir=data_dir, api_key=API_KEY, device="cpu", port=0, job_wait_seconds=60,
                  models_dir=models_dir)
    values.update(overrides)
    return Server(load_settings(**values)).start()


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    srv = start_server(models_dir, tmp_path_factory.mktemp("tts-v3-data"))
    yield srv
    srv.stop()


def post(server, body, path="/v1/audio/speech"):
    return requests.post(f"{server.url}{path}", json=body, headers=H, timeout=120)


def loaded(server, name):
    """The engine's real model object, as the offloader holds it."""
    svc = server.app.extensions["enfoads.tts"]
    return svc.env.vram.run(name, lambda model: model)


class Recorder:
    """Counts the speech tokens each T3 call of one model instance hands on (invalid ones dropped)."""

    def __init__(self, t3):
        self.t3, self.inner, self.tokens = t3, t3.inference, []

    def __call__(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        valid = out[0][out[0] < 6561]  # what generate keeps (drop_invalid_tokens)
        self.tokens.append(int(valid.numel()))
        return out


@pytest.fixture
def penalties(monkeypatch):
    """The repetition penalty T3's sampling loop really applies (its logits processor)."""
    from chatterbox.models.t3 import t3 as t3_module

    seen = []
    real = t3_module.RepetitionPenaltyLogitsProcessor

    class Recording(real):
        def __init__(self, penalty, *args, **kwargs):
            seen.append(penalty)
            super().__init__(penalty, *args, **kwargs)

    monkeypatch.setattr(t3_module, "RepetitionPenaltyLogitsProcessor", Recording)
    return seen


@pytest.mark.parametrize("model,analyzer,penalty,dropped", [
    ("chatterbox-es-latam", False, 1.2, 1),
    ("chatterbox-multilingual-v3", False, 1.2, 1),
    (V2, True, 2.0, 0),
])
def test_v3_path_against_v2(server, penalties, monkeypatch, model, analyzer, penalty, dropped):
    """V3 and the pack: no alignment analyzer, repetition penalty 1.2, the last token's audio cut;
    V2 as before: analyzer, 2.0, every token's audio."""
    tts = loaded(server, model)
    recorder = Recorder(tts.t3)
    monkeypatch.setattr(tts.t3, "inference", recorder)
    r = post(server, {"input": "Hola, ¿qué tal estás hoy?", "model": model, "response_format": "pcm", "seed": 2})
    assert r.status_code == 200, r.text
    assert r.headers["X-TTS-Engine"] == model and "X-TTS-Routed-From" not in r.headers
    assert (tts.t3.patched_model.alignment_stream_analyzer is not None) is analyzer
    assert penalties == [pytest.approx(penalty)]
    [tokens] = recorder.tokens
    assert len(r.content) // 2 == (tokens - dropped) * PER_TOKEN


def test_a_one_letter_text_is_spoken_by_v2_and_v3(server):
    """`{"input": "I"}` used to be a 500 (V2's analyzer: `max(): Expected reduction dim 1 to have
    non-zero size`); it is speech now, on V2 too."""
    for model in (V2, *V3_MODELS):
        r = post(server, {"input": "I", "model": model, "response_format": "wav"})
        assert r.status_code == 200, (model, r.text)
        assert float(r.headers["X-Audio-Seconds"]) > 0.2


def test_no_speech_tokens_is_a_422_no_audio_not_a_500(server, monkeypatch):
    import torch

    tts = loaded(server, "chatterbox-multilingual-v3")
    # a T3 that stops at once (EOS first): nothing to vocode
    monkeypatch.setattr(tts.t3, "inference", lambda **kw: torch.tensor([[6562]]))
    r = post(server, {"input": "Hola.", "model": "chatterbox-multilingual-v3"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "no_audio" and "no speech" in err["message"]


@pytest.mark.parametrize("tag", ["es", "ES", "es-MX", "es-419", "es-AR", "es-CO", "es-CL", "es-PE", "es-US", "es_mx"])
def test_every_spanish_tag_is_spoken_by_the_latin_american_model(server, tag):
    r = post(server, {"input": "Hola.", "language": tag, "response_format": "pcm"})
    assert r.status_code == 200, r.text
    assert r.headers["X-TTS-Engine"] == "chatterbox-es-latam" and "X-TTS-Routed-From" not in r.headers


def test_other_languages_go_to_v3_and_a_spanish_only_model_routes_them(server):
    r = post(server, {"input": "Bonjour.", "language": "fr", "response_format": "pcm"})
    assert r.status_code == 200 and r.headers["X-TTS-Engine"] == "chatterbox-multilingual-v3"
    r = post(server, {"input": "Bonjour.", "language": "fr", "model": "chatterbox-es-latam", "response_format": "pcm"})
    assert r.status_code == 200, r.text
    assert r.headers["X-TTS-Engine"] == "chatterbox-multilingual-v3"
    assert r.headers["X-TTS-Routed-From"] == "chatterbox-es-latam"
    # the job's record says the same
    job = requests.get(f"{server.url}/jobs/{r.headers['X-Job-Id']}", headers=H, timeout=10).json()
    assert job["result"]["engine"] == "chatterbox-multilingual-v3"
    assert job["result"]["routed_from"] == "chatterbox-es-latam"


def subset(models_dir, tmp_path, keep):
    """A models folder holding only some of the built models (links, no copies)."""
    root = tmp_path / "models"
    root.mkdir()
    for name in keep:
        os.symlink(models_dir / name, root / name)
    return root


@pytest.mark.parametrize("present,speaker", [
    (["chatterbox-multilingual-v3", V2], "chatterbox-multilingual-v3"),
    ([V2], V2),
    (["chatterbox-es-latam", V2], V2),  # the pack without the shared V3 files cannot speak
])
def test_spanish_goes_to_the_best_model_on_the_machine(models_dir, tmp_path, present, speaker):
    srv = start_server(subset(models_dir, tmp_path, present), tmp_path / "data")
    try:
        r = post(srv, {"input": "Hola.", "model": "tts-1", "response_format": "pcm"})
        assert r.status_code == 200, r.text
        assert r.headers["X-TTS-Engine"] == speaker
        listed = {m["id"]: m for m in requests.get(f"{srv.url}/v1/audio/models", headers=H, timeout=10).json()["data"]}
        assert listed["tts-1"]["alias_of"] == speaker and listed[speaker]["default"]
    finally:
        srv.stop()


def test_a_pack_folder_without_exactly_one_t3_is_a_503_saying_what_it_found(models_dir, tmp_path):
    root = subset(models_dir, tmp_path, ["chatterbox-v3-shared", V2])
    pack = root / "chatterbox-es-latam"
    shutil.copytree(models_dir / "chatterbox-es-latam", pack)
    shutil.copyfile(pack / "t3_es_mx_latam.safetensors", pack / "t3_es_es.safetensors")
    srv = start_server(root, tmp_path / "data")
    try:
        r = post(srv, {"input": "Hola.", "model": "chatterbox-es-latam"})
        assert r.status_code == 503, r.text
        message = r.json()["error"]["message"]
        assert "exactly one" in message and "t3_es_es.safetensors, t3_es_mx_latam.safetensors" in message
    finally:
        srv.stop()


def test_a_missing_model_names_the_command_for_that_model(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty hub cache
    srv = start_server(tmp_path / "no-models", tmp_path / "data", profile="local")
    try:
        r = post(srv, {"input": "Hola.", "model": "tts-1"})
        assert r.status_code == 503, r.text
        # exactly that model, into the folder this server reads (not ./data/models, not the family)
        models_dir = (tmp_path / "no-models").resolve()
        assert f"`python -m prefetch chatterbox-es-latam --models-dir {models_dir}`" in r.json()["error"]["message"]
        r = post(srv, {"input": "Bonjour.", "language": "fr", "model": "chatterbox-multilingual-v3"})
        assert (f"`python -m prefetch chatterbox-multilingual-v3 --models-dir {models_dir}`"
                in r.json()["error"]["message"])
    finally:
        srv.stop()


def test_openai_voice_names_use_a_placed_clip_else_the_builtin_voice(server):
    from tests.test_tts import speech_wav

    engine = server.app.extensions["enfoads.tts"].engines["chatterbox-es-latam"]
    r = post(server, {"input": "Hola.", "voice": "cedar", "response_format": "pcm"})
    assert r.status_code == 200 and not any(key[0] == "cedar" for key in engine._conds)
    clip = server.app.extensions["enfoads"].settings.data_dir / "voices" / "predefined" / "shimmer.wav"
    clip.write_bytes(speech_wav())
    r = post(server, {"input": "Hola.", "voice": "shimmer", "response_format": "pcm"})
    assert r.status_code == 200 and any(key[0] == "shimmer" for key in engine._conds)


def test_sse_and_socketio_speak_spanish_with_the_new_models(server):
    import socketio

    body = {"input": "Esta es la primera frase del texto largo. Y esta es la segunda frase del mismo texto.",
            "chunk_size": 50, "response_format": "pcm",
            "stream_format": "sse", "model": "chatterbox-multilingual-v3", "language": "es-419",
            "instructions": "susurra"}
    r = post(server, body)
    assert r.status_code == 200 and r.headers["X-TTS-Engine"] == "chatterbox-multilingual-v3"
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == ["speech.audio.delta", "speech.audio.delta", "speech.audio.done"]
    assert "instructions ignored" in events[-1]["warnings"][0]

    got, done = [], threading.Event()
    sio = socketio.Client()
    sio.on("audio", lambda data: got.append(data), namespace="/tts")
    sio.on("done", lambda data: (got.append(data), done.set()), namespace="/tts")
    sio.on("error", lambda data: (got.append(data), done.set()), namespace="/tts")
    sio.connect(server.url, namespaces=["/tts"], auth={"token": API_KEY}, transports=["polling"])
    try:
        sio.emit("speak", {"text": "Hola desde Lima.", "language": "es-PE", "request_id": "p"}, namespace="/tts")
        assert done.wait(120)
        sio.emit("speak", {"text": "", "request_id": "e"}, namespace="/tts")
        done.clear()
        assert done.wait(30)
    finally:
        sio.disconnect()
    from services.tts.smoke import RIGGED_TOKENS

    # the tiny T3 says RIGGED_TOKENS speech tokens; V3 cuts the last one's audio
    assert got[0]["sample_rate"] == RATE and len(got[0]["audio"]) == (RIGGED_TOKENS - 1) * PER_TOKEN * 2
    assert got[1]["engine"] == "chatterbox-es-latam"
    assert got[2]["status"] == 400 and got[2]["param"] == "text"


def test_with_only_the_spanish_pack_the_assistant_answers_in_spanish(models_dir, tmp_path):
    """The notebook's TTS/VITA tick fetches only the es-latam pack: a language nothing on the machine
    speaks is a 503 over HTTP, and the assistant answers in its own language instead."""
    from services.vita.ports import TtsSpeaker

    srv = start_server(subset(models_dir, tmp_path, ["chatterbox-es-latam", "chatterbox-v3-shared"]), tmp_path / "d")
    try:
        svc = srv.app.extensions["enfoads.tts"]
        assert svc.default_model("es") == "chatterbox-es-latam"
        r = post(srv, {"input": "Bonjour.", "language": "fr"})
        assert r.status_code == 503 and "chatterbox-multilingual-v3" in r.json()["error"]["message"]
        speaker = TtsSpeaker(svc, svc.default_model("es"), "es")
        assert speaker.languages() == {"es"}
        chunks = list(speaker.synthesize("Hello there.", "en", None))
        assert chunks and all(rate == RATE and audio.size for audio, rate in chunks)
    finally:
        srv.stop()
