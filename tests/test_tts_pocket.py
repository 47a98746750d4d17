"""Kyutai Pocket TTS (pocket_tts' own loading and generation code) on a tiny random-weight Spanish
model, through HTTP, SSE and Socket.IO; the Kyutai client's contract (/kyutai/tts, /kyutai/health)."""
import base64
import io
import json
import threading
import wave

import numpy as np
import pytest
import requests

from tests.conftest import API_KEY
from tests.tts_media import decode, speech_wav

H = {"Authorization": f"Bearer {API_KEY}"}
POCKET = "kyutai-pocket-tts"
DSM = "kyutai-tts-1.6b-en_fr"
LOLA = "pocket-lola"
RATE = 24000
MAX_SECONDS = 3.0  # per chunk: the product's cap, for a random model that may never end
TWO_SENTENCES = "Esta es la primera frase del texto largo. Y esta es la segunda frase del mismo texto."
CONTRACT_KEYS = ["audioContent", "provider", "model", "language", "characters", "sample_rate", "format"]


@pytest.fixture(scope="module")
def server(smoke_models, tmp_path_factory):
    import torch

    from backend.server import Server
    from backend.settings import load_settings

    torch.set_num_threads(1)
    settings = load_settings(profile="smoke", data_dir=tmp_path_factory.mktemp("pocket-data"), api_key=API_KEY,
                             device="cpu", port=0, job_wait_seconds=120, models_dir=smoke_models("tts"),
                             tts_pocket_max_seconds=MAX_SECONDS)
    srv = Server(settings).start()
    yield srv
    srv.stop()


def post(server, body, path="/tts", headers=H):
    return requests.post(f"{server.url}{path}", json=body, headers=headers, timeout=180)


# --- the engine through the speech API ---------------------------------------------------------
@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "flac"])
def test_pocket_speaks_spanish_in_each_format(server, fmt):
    r = post(server, {"text": "Hola, ¿cómo estás?", "model": POCKET, "language": "es", "output_format": fmt,
                      "seed": 1})
    assert r.status_code == 200, r.text
    assert r.headers["X-TTS-Engine"] == POCKET and "X-TTS-Routed-From" not in r.headers
    samples, rate = decode(r.content)
    # opus decodes at 48 kHz whatever the source rate; the others keep Pocket TTS's 24 kHz
    assert rate == (48000 if fmt == "opus" else RATE) and r.headers["X-Sample-Rate"] == str(RATE)
    assert 0.1 * rate < samples.size <= (MAX_SECONDS + 0.1) * rate and np.isfinite(samples).all()


def test_raw_pcm_is_24khz_int16(server):
    r = post(server, {"input": "Hola.", "model": POCKET, "response_format": "pcm"}, "/v1/audio/speech")
    assert r.status_code == 200 and len(r.content) % 2 == 0
    seconds = len(r.content) / 2 / RATE
    assert 0.1 < seconds <= MAX_SECONDS + 0.1 and float(r.headers["X-Audio-Seconds"]) == pytest.approx(seconds, abs=0.01)


def test_spanish_asked_of_kyutai_dsm_is_spoken_by_pocket_tts(server):
    r = post(server, {"input": "Hola, ¿cómo estás?", "model": DSM, "language": "es", "response_format": "wav"},
             "/v1/audio/speech")
    assert r.status_code == 200, r.text
    assert r.headers["X-TTS-Engine"] == POCKET and r.headers["X-TTS-Routed-From"] == DSM
    assert decode(r.content)[1] == RATE


def test_long_text_is_spoken_chunk_by_chunk(server):
    text = " ".join([TWO_SENTENCES] * 3)
    r = post(server, {"text": text, "model": POCKET, "chunk_size": 50, "seed": 2})
    assert r.status_code == 200, r.text
    chunks = int(r.headers["X-TTS-Chunks"])
    assert chunks == 6
    samples, _ = decode(r.content)
    assert samples.size <= chunks * (MAX_SECONDS + 0.1) * RATE


def test_generation_length_is_capped_per_chunk(server):
    engine = server.app.extensions["enfoads.tts"].engines[POCKET]
    from dataclasses import replace

    original = engine.options
    engine.options = replace(original, max_seconds=0.2)
    try:
        r = post(server, {"text": "Hola, ¿cómo estás? Esto es una prueba bastante larga.", "model": POCKET,
                          "split_text": False})
    finally:
        engine.options = original
    assert r.status_code == 200, r.text
    samples, _ = decode(r.content)
    assert 0 < samples.size <= int(0.2 * RATE)


def test_kyutai_voices_are_listed_and_used(server):
    data = requests.get(f"{server.url}/v1/audio/voices", headers=H, timeout=10).json()["data"]
    pocket = [v for v in data if v["type"] == "pocket"]
    assert [(v["id"], v["languages"]) for v in pocket] == [(LOLA, ["es"])]
    r = post(server, {"text": "Hola, soy Lola.", "model": POCKET, "voice": LOLA})
    assert r.status_code == 200 and decode(r.content)[1] == RATE
    r = post(server, {"text": "Hola.", "model": POCKET, "voice": "nadie"})
    assert r.status_code == 404 and LOLA in r.json()["error"]["message"]


def test_cloned_voice_speaks_with_pocket_tts(server):
    files = {"file": ("me.wav", speech_wav(), "audio/wav")}
    r = requests.post(f"{server.url}/v1/audio/voices", files=files, data={"name": "Ana"}, headers=H, timeout=60)
    assert r.status_code == 201, r.text
    voice = r.json()["id"]
    try:
        r = post(server, {"text": "Hola, soy Ana.", "model": POCKET, "voice": voice})
        assert r.status_code == 200, r.text
        assert r.headers["X-TTS-Engine"] == POCKET and decode(r.content)[1] == RATE
        r = post(server, {"text": "Hola otra vez.", "model": DSM, "language": "es", "voice": voice})
        assert r.status_code == 200 and r.headers["X-TTS-Engine"] == POCKET  # a clip follows the routing
    finally:
        requests.delete(f"{server.url}/v1/audio/voices/{voice}", headers=H, timeout=10)


def test_sse_stream_sends_one_delta_per_chunk(server):
    body = {"input": TWO_SENTENCES, "model": POCKET, "chunk_size": 50, "response_format": "pcm",
            "stream_format": "sse"}
    r = post(server, body, "/v1/audio/speech")
    assert r.status_code == 200 and r.headers["X-TTS-Engine"] == POCKET
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == ["speech.audio.delta", "speech.audio.delta", "speech.audio.done"]
    assert all(len(base64.b64decode(e["audio"])) > 0 for e in events[:2])


def test_http_chunked_stream_is_a_playable_wav(server):
    body = {"input": TWO_SENTENCES, "model": POCKET, "chunk_size": 50, "response_format": "wav",
            "stream_format": "audio"}
    with requests.post(f"{server.url}/v1/audio/speech", json=body, headers=H, stream=True, timeout=120) as r:
        assert r.status_code == 200 and r.headers.get("Transfer-Encoding") == "chunked"
        data = b"".join(r.iter_content(chunk_size=None))
    assert data[:4] == b"RIFF"
    pcm = np.frombuffer(data[44:], "<i2")
    assert 0.2 * RATE < pcm.size <= 2 * (MAX_SECONDS + 0.1) * RATE


def test_socketio_speak_streams_pocket_chunks(server):
    import socketio

    got, done = [], threading.Event()
    sio = socketio.Client()

    @sio.on("audio", namespace="/tts")
    def on_audio(data):
        got.append(data)

    @sio.on("done", namespace="/tts")
    def on_done(data):
        got.append(("done", data))
        done.set()

    @sio.on("error", namespace="/tts")
    def on_error(data):
        got.append(("error", data))
        done.set()

    sio.connect(server.url, namespaces=["/tts"], auth={"token": API_KEY}, transports=["polling"])
    try:
        sio.emit("speak", {"text": TWO_SENTENCES, "model": POCKET, "chunk_size": 50, "request_id": "p1"},
                 namespace="/tts")
        assert done.wait(120)
    finally:
        sio.disconnect()
    assert got[-1][0] == "done" and got[-1][1]["engine"] == POCKET, got[-1]
    audio = got[:-1]
    assert [a["index"] for a in audio] == [0, 1] and all(a["sample_rate"] == RATE for a in audio)
    assert all(0 < len(a["audio"]) <= 2 * (MAX_SECONDS + 0.1) * RATE for a in audio)


def test_the_offloader_accounts_for_pocket_tts(server):
    assert post(server, {"text": "Hola.", "model": POCKET}).status_code == 200
    vram = server.app.extensions["enfoads"].vram
    entry = {m["name"]: m for m in vram.snapshot()["models"]}[POCKET]
    assert entry["family"] == "tts" and entry["loads"] >= 1 and entry["bytes"] > 0
    vram.evict(POCKET)  # parked in host RAM like every torch model, and speaks again from there
    assert {m["name"]: m for m in vram.snapshot()["models"]}[POCKET]["state"] == "cpu"
    assert post(server, {"text": "Hola de nuevo.", "model": POCKET}).status_code == 200


def test_models_list_pocket_tts(server):
    data = requests.get(f"{server.url}/v1/audio/models", headers=H, timeout=10).json()["data"]
    pocket = {m["id"]: m for m in data}[POCKET]
    assert pocket["available"] and "es" in pocket["languages"] and pocket["sample_rate"] == RATE


# --- the Kyutai client's contract ---------------------------------------------------------------
def test_kyutai_tts_answers_the_contract(server):
    text = "Hola, ¿cómo estás? Bienvenidos."
    r = post(server, {"text": text, "language": "es"}, "/kyutai/tts")
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == CONTRACT_KEYS
    assert body["provider"] == "Kyutai Pocket TTS" and body["model"] == POCKET and body["language"] == "es"
    assert body["characters"] == len(text) and body["sample_rate"] == RATE and body["format"] == "wav"
    wav = base64.b64decode(body["audioContent"])
    with wave.open(io.BytesIO(wav)) as w:
        assert (w.getframerate(), w.getnchannels()) == (RATE, 1)
        assert 0.1 * RATE < w.getnframes() <= (MAX_SECONDS + 0.1) * RATE
    assert r.headers["X-Cache"] == "miss"


def test_kyutai_tts_repeats_come_from_the_cache(server):
    body = {"text": "Una frase para la caché.", "language": "es", "voice": LOLA}
    def newest_job():
        return requests.get(f"{server.url}/jobs?limit=1", headers=H, timeout=10).json()["data"][0]["id"]

    first = post(server, body, "/kyutai/tts")
    job = newest_job()
    again = post(server, body, "/kyutai/tts")
    assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("miss", "hit")
    assert again.json() == first.json()
    assert newest_job() == job  # no speech job ran for the repeat
    other = post(server, {**body, "voice": None}, "/kyutai/tts")  # another voice is another answer
    assert other.headers["X-Cache"] == "miss"


def test_kyutai_tts_regional_spanish_and_dsm_model(server):
    r = post(server, {"text": "Hola desde México.", "language": "es-MX", "model": DSM}, "/kyutai/tts")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["language"] == "es-MX" and body["model"] == POCKET and body["provider"] == "Kyutai Pocket TTS"
    assert r.headers["X-TTS-Routed-From"] == DSM


@pytest.mark.parametrize("body,status,says", [
    ({"text": ""}, 400, "empty"),
    ({"text": "   "}, 400, "empty"),
    ({"text": "a" * 3001}, 400, "3000"),
    ({"language": "es"}, 400, "text"),
    ({"text": "Hola", "language": "xx"}, 400, "language"),
    ({"text": "Hola", "voice": "nadie"}, 404, LOLA),
    ({"text": "Hola", "model": "chatterbox-en"}, 400, "model"),
])
def test_kyutai_tts_errors_ask_for_the_fallback(server, body, status, says):
    r = post(server, body, "/kyutai/tts")
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "fallback", "status", "message"} and r.json()["fallback"] is True
    assert r.json()["status"] == "error" and r.json()["message"] == r.json()["error"]
    assert says in r.json()["error"]


def test_kyutai_tts_text_at_the_limit_is_spoken_whole(server):
    text = ("Hola. " * 500)[:3000]
    r = post(server, {"text": text}, "/kyutai/tts")
    assert r.status_code == 200, r.text
    assert r.json()["characters"] == 3000


def test_kyutai_tts_needs_the_key_and_health_does_not(server):
    r = post(server, {"text": "Hola"}, "/kyutai/tts", headers={})
    assert r.status_code == 401 and r.json()["fallback"] is True and "API key" in r.json()["error"]
    r = requests.get(f"{server.url}/kyutai/health", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok", "model": POCKET, "device": "cpu"}


def test_kyutai_routes_are_in_the_openapi_document(server):
    spec = requests.get(f"{server.url}/openapi.json", headers=H, timeout=10).json()
    post_op = spec["paths"]["/kyutai/tts"]["post"]
    schema = json.dumps(post_op["requestBody"])
    assert "KyutaiTtsBody" in schema and post_op["security"]
    assert spec["paths"]["/kyutai/health"]["get"].get("security") is None


def test_missing_pocket_model_answers_503_and_health_says_so(live_server, make_settings, tmp_path):
    empty = tmp_path / "no-models"
    empty.mkdir()
    srv = live_server(make_settings(models_dir=empty))
    r = requests.post(f"{srv.url}/kyutai/tts", json={"text": "Hola."}, headers=H, timeout=30)
    assert r.status_code == 503 and r.json()["fallback"] is True
    assert "python -m prefetch" in r.json()["error"] and POCKET in r.json()["error"]
    r = requests.get(f"{srv.url}/kyutai/health", timeout=10)
    assert r.status_code == 503 and r.json()["status"] == "unavailable" and r.json()["fallback"] is True


def test_real_weights_load_from_local_files_only(tmp_path, monkeypatch):
    """The published layout (no config.yaml beside the weights): the package's spanish.yaml is used
    with every hub path replaced by the local files, so nothing can be downloaded at run time."""
    from pocket_tts import TTSModel
    from pocket_tts.utils.config import load_config

    from services.model_env import ModelEnv
    from services.tts.pocket_engine import PocketEngine
    from services.vram import VramOffloader

    weights = tmp_path / "models" / "kyutai-pocket-tts" / "languages" / "spanish" / "model.safetensors"
    tokenizer = tmp_path / "models" / "kyutai-pocket-tts-voices" / "languages" / "spanish" / "tokenizer.json"
    for path in (weights, tokenizer):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    seen = {}

    def load_model(config=None, **kw):
        import torch

        seen["text"] = open(config, encoding="utf-8").read()
        seen["config"] = load_config(config)  # the package's own schema accepts it
        return torch.nn.Linear(1, 1)  # stands for the model: only the config is checked here

    monkeypatch.setattr(TTSModel, "load_model", staticmethod(load_model))
    vram = VramOffloader(device="cpu", budget_bytes=2**30)
    env = ModelEnv(models_dir=tmp_path / "models", profile="local", device="cpu", dtype="float32", vram=vram,
                   data_dir=tmp_path)
    PocketEngine(env).load_language("es", "cpu")
    config = seen["config"]
    assert "hf://" not in seen["text"]
    assert config.weights_path == str(weights) and config.weights_path_without_voice_cloning is None
    assert config.flow_lm.lookup_table.tokenizer_path == str(tokenizer)
    assert config.flow_lm.transformer.num_layers == 6 and config.flow_lm.lookup_table.n_bins == 4000  # spanish.yaml


class FakeOffloader:
    def __init__(self, device):
        self.device = device
        self.registered = {}

    def register(self, name, loader, **kw):
        self.registered[name] = kw


@pytest.mark.parametrize("offloader_device,estimate,freed", [("cuda:0", 0, True), ("cpu", 600, False)])
def test_pocket_beside_a_gpu_takes_no_vram_and_frees_its_ram_when_parked(offloader_device, estimate, freed):
    from services.tts.pocket_engine import PocketEngine, PocketModels, PocketOptions

    engine = PocketEngine(model_env=None, options=PocketOptions(device="cpu"))
    vram = FakeOffloader(offloader_device)
    engine.register(vram, 600)
    hook = vram.registered[POCKET]["to_device"]
    assert vram.registered[POCKET]["estimate_bytes"] == estimate
    models = PocketModels(engine, "cpu")
    models.by_language["es"] = object()
    models.voice_states[("es", "pocket", "lola")] = {}
    hook(models, "cpu")  # the offloader parks it (idle, or to make room)
    assert (not models.by_language and not models.voice_states) == freed
    assert hook(models, offloader_device) is models and models.device == "cpu"  # back in use: still the CPU


def test_kyutai_answer_cache_stays_within_its_byte_budget():
    from backend.routes.kyutai import AnswerCache

    cache = AnswerCache(max_bytes=100)
    for i in range(5):
        cache.put(("t", i), {"audioContent": "x" * 40}, {})
    assert [k for k in [("t", i) for i in range(5)] if cache.get(k)] == [("t", 3), ("t", 4)]  # oldest out
    cache.get(("t", 3))  # used: now the newest
    cache.put(("t", 5), {"audioContent": "y" * 40}, {})
    assert cache.get(("t", 3)) and cache.get(("t", 5)) and not cache.get(("t", 4))
    cache.put(("big",), {"audioContent": "z" * 101}, {})  # larger than the whole budget: not kept
    assert cache.get(("big",)) is None and cache.get(("t", 5))
