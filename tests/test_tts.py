"""Speech (TTS) through HTTP and Socket.IO on tiny random-weight Chatterbox checkpoints."""
import json
import threading

import numpy as np
import pytest
import requests

from tests.conftest import API_KEY
from tests.tts_media import decode, speech_wav

H = {"Authorization": f"Bearer {API_KEY}"}
RATE = 24000


@pytest.fixture(scope="module")
def models_dir(smoke_models):
    import torch

    torch.set_num_threads(1)  # tiny models: thread fan-out costs more than it gives on 2 cores
    return smoke_models("tts")


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    from backend.server import Server
    from backend.settings import load_settings

    settings = load_settings(profile="smoke", data_dir=tmp_path_factory.mktemp("tts-data"), api_key=API_KEY,
                             device="cpu", port=0, job_wait_seconds=60, models_dir=models_dir)
    srv = Server(settings).start()
    yield srv
    srv.stop()


def post(server, path, body, **kw):
    return requests.post(f"{server.url}{path}", json=body, headers=H, timeout=120, **kw)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "flac"])
def test_tts_speaks_spanish_in_each_format(server, fmt):
    r = post(server, "/tts", {"text": "Hola, ¿cómo estás?", "output_format": fmt, "seed": 1})
    assert r.status_code == 200, r.text
    assert r.headers["X-TTS-Engine"] == "chatterbox-es-latam"  # Spanish: the Latin-American pack
    samples, rate = decode(r.content, fmt)
    assert rate == (48000 if fmt == "opus" else RATE)  # Opus decoders always output 48 kHz
    assert r.headers["X-Sample-Rate"] == str(RATE)
    assert samples.size > RATE // 4 and np.isfinite(samples).all()


@pytest.mark.parametrize("text", ["J", "Sí", "I"])
def test_very_short_text_is_spoken(server, text):
    # Chatterbox's alignment analyzer fails on texts of a few tokens (chatterbox#548): found by the fuzzer.
    for seed in range(3):
        r = post(server, "/v1/audio/speech", {"input": text, "response_format": "wav", "seed": seed})
        assert r.status_code == 200, r.text
        samples, rate = decode(r.content, "wav")
        assert rate == RATE and samples.size > 0 and np.isfinite(samples).all()


def test_pcm_is_raw_16bit_at_the_engine_rate(server):
    r = post(server, "/tts", {"text": "Hola.", "output_format": "pcm"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/pcm"
    assert r.headers["X-Sample-Rate"] == str(RATE)
    assert len(r.content) % 2 == 0 and len(r.content) > RATE // 2


def test_long_text_is_split_into_sentence_chunks_and_joined(server):
    text = "Primera frase del texto. Segunda frase, algo más larga que la primera. Tercera y última frase."
    one = post(server, "/tts", {"text": "Primera frase del texto.", "output_format": "wav"})
    r = post(server, "/tts", {"text": text, "chunk_size": 50, "output_format": "wav"})
    assert r.status_code == 200
    assert r.headers["X-TTS-Chunks"] == "3"
    single, _ = decode(one.content, "wav")
    joined, _ = decode(r.content, "wav")
    assert joined.size > 2.5 * single.size  # three chunks, crossfaded


def test_speed_factor_shortens_the_audio(server):
    normal = decode(post(server, "/tts", {"text": "Hola a todos.", "seed": 3}).content, "wav")[0]
    fast = decode(post(server, "/tts", {"text": "Hola a todos.", "seed": 3, "speed_factor": 2.0}).content, "wav")[0]
    assert fast.size < 0.6 * normal.size


def test_clone_list_use_delete_voice(server):
    files = {"file": ("me.wav", speech_wav(), "audio/wav")}
    r = requests.post(f"{server.url}/v1/audio/voices", files=files, data={"name": "Ana"}, headers=H, timeout=60)
    assert r.status_code == 201, r.text
    voice = r.json()
    assert voice["type"] == "cloned" and voice["name"] == "Ana"
    listed = requests.get(f"{server.url}/v1/voices", headers=H, timeout=10).json()["data"]
    assert voice["id"] in [v["id"] for v in listed]
    r = post(server, "/tts", {"text": "Hola, soy Ana.", "voice": voice["id"]})
    assert r.status_code == 200 and decode(r.content, "wav")[1] == RATE
    r = post(server, "/tts", {"text": "Hola.", "voice_mode": "clone", "reference_audio_filename": voice["id"]})
    assert r.status_code == 200
    assert requests.delete(f"{server.url}/v1/audio/voices/{voice['id']}", headers=H, timeout=10).status_code == 200
    r = post(server, "/tts", {"text": "Hola.", "voice": voice["id"]})
    assert r.status_code == 404 and "default" in r.json()["error"]["message"]


def test_parallel_clones_of_one_id_make_one_voice_and_the_rest_409(server):
    from concurrent.futures import ThreadPoolExecutor

    clip = speech_wav()

    def clone(i):
        return requests.post(f"{server.url}/v1/audio/voices", files={"file": ("me.wav", clip, "audio/wav")},
                             data={"id": "race", "name": f"try-{i}"}, headers=H, timeout=120)

    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(clone, range(12)))
    try:
        assert sorted(r.status_code for r in replies) == [201] + [409] * 11, [r.text for r in replies]
        winner = next(r.json() for r in replies if r.status_code == 201)
        refused = next(r.json()["error"] for r in replies if r.status_code == 409)
        assert refused["code"] == "voice_exists" and refused["param"] == "id"
        # a later clone with the same id does not replace the voice either
        assert clone(99).status_code == 409
        listed = {v["id"]: v for v in requests.get(f"{server.url}/v1/voices", headers=H, timeout=10).json()["data"]}
        assert listed["race"]["name"] == winner["name"]
        cloned_dir = server.settings.data_dir / "voices" / "cloned"
        assert sorted(p.name for p in cloned_dir.iterdir()) == ["race.json", "race.wav"]  # no temp files left
    finally:
        requests.delete(f"{server.url}/v1/audio/voices/race", headers=H, timeout=10)
    assert clone(100).status_code == 201  # deleted: the id is free again
    requests.delete(f"{server.url}/v1/audio/voices/race", headers=H, timeout=10)


@pytest.mark.parametrize("voice_id", ["evil\n", "evil\r\n", "Evil", "a/b", "..", "-x", "x" * 65])
def test_a_voice_id_must_match_the_pattern_whole(server, voice_id):
    r = requests.post(f"{server.url}/v1/audio/voices", files={"file": ("me.wav", speech_wav(), "audio/wav")},
                      data={"id": voice_id}, headers=H, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_voice_id", r.text
    assert not list((server.settings.data_dir / "voices" / "cloned").glob("evil*"))


@pytest.mark.parametrize("clip,reason", [
    (b"this is not audio at all" * 10, "not usable audio"),
    (speech_wav(seconds=2.0), "at least 5"),
    (speech_wav(seconds=31.5), "at most 30"),
    (speech_wav(amplitude=0.0), "silent"),
])
def test_bad_reference_clips_are_refused_with_the_reason(server, clip, reason):
    r = requests.post(f"{server.url}/v1/audio/voices", files={"file": ("x.wav", clip)}, headers=H, timeout=60)
    assert r.status_code == 400, r.text
    assert reason in r.json()["error"]["message"] and r.json()["error"]["param"] == "file"


@pytest.mark.parametrize("body,param,status", [
    ({"text": "   "}, "text", 400),
    ({"text": ""}, "text", 400),
    ({"text": "x" * 5001}, "text", 400),
    ({"text": "y " * 300, "split_text": False}, "text", 400),
    ({"text": "... !!"}, "text", 422),  # nothing to speak: no_audio, not a 500
    ({"text": "Hi", "language": "en-US"}, "language", 400),  # regional variants: Spanish only
    ({"text": "Hola", "language": "es-"}, "language", 400),
    ({"text": "Hola", "seed": -1}, "seed", 400),
    ({"text": "Hola", "voice": "nadie"}, "voice", 404),
    ({"text": "Hola", "voice": "../etc/passwd"}, "voice", 400),
    ({"text": "Hola", "output_format": "aac"}, "output_format", 400),
    ({"text": "Hola", "language": "xx"}, "language", 400),
    ({"text": "Hola", "temperature": 2}, "temperature", 400),
    ({"text": "Hola", "temperature": 1e-300}, "temperature", 400),
    ({"text": "Hola", "exaggeration": 0.1}, "exaggeration", 400),
    ({"text": "Hola", "cfg_weight": 1.5}, "cfg_weight", 400),
    ({"text": "Hola", "speed_factor": 5}, "speed_factor", 400),
    ({"text": "Hola", "chunk_size": 20}, "chunk_size", 400),
    ({"text": "Hola", "model": "nope"}, "model", 400),
    ({"text": "Hola", "model": "tts-2"}, "model", 400),
])
def test_bad_input_is_refused_naming_the_field(server, body, param, status):
    r = post(server, "/tts", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"]
    if status == 404:
        assert "default" in err["message"]  # lists the voices there are


def test_voice_id_with_path_characters_cannot_be_deleted_or_created(server):
    r = requests.delete(f"{server.url}/v1/audio/voices/..%2F..%2Fx", headers=H, timeout=10)
    assert r.status_code in (400, 404)
    files = {"file": ("me.wav", speech_wav(), "audio/wav")}
    r = requests.post(f"{server.url}/v1/audio/voices", files=files, data={"id": "../x"}, headers=H, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "id"


def test_openai_sdk_speaks_with_openai_model_and_voice_names(server):
    import openai  # a test dependency (requirements/dev.txt): missing, it must fail, not skip
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY)
    resp = client.audio.speech.create(model="tts-1", voice="nova", input="Hola")  # the SDK's own example, as is
    samples, rate = decode(resp.read(), "mp3")  # OpenAI's default format
    assert rate == RATE and samples.size > RATE // 4
    raw = client.audio.speech.with_raw_response.create(model="gpt-4o-mini-tts", voice="marin", input="Hola.",
                                                       response_format="wav", instructions="Habla con alegría")
    assert raw.headers["X-TTS-Engine"] == "chatterbox-es-latam"  # the server's default for Spanish
    assert "instructions ignored" in raw.headers["X-TTS-Warning"]
    assert decode(raw.content, "wav")[1] == RATE


def test_models_and_openai_aliases_are_listed(server):
    data = requests.get(f"{server.url}/v1/audio/models", headers=H, timeout=10).json()["data"]
    by_id = {m["id"]: m for m in data}
    assert by_id["chatterbox-multilingual"]["available"] and "es" in by_id["chatterbox-multilingual"]["languages"]
    assert by_id["chatterbox-es-latam"]["languages"] == ["es"] and by_id["chatterbox-es-latam"]["default"]
    assert not by_id["chatterbox-multilingual-v3"]["default"] and not by_id["chatterbox-turbo"]["available"]
    assert {by_id[a]["alias_of"] for a in ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")} == {"chatterbox-es-latam"}
    models = {m["id"]: m for m in requests.get(f"{server.url}/v1/models", headers=H, timeout=10).json()["data"]}
    assert "chatterbox-en" in models and models["tts-1"]["alias_of"] == "chatterbox-es-latam"


def test_english_model_speaks_and_routes_spanish_to_the_latin_american_model(server):
    r = post(server, "/tts", {"text": "Hello there.", "model": "chatterbox-en", "language": "en"})
    assert r.status_code == 200 and r.headers["X-TTS-Engine"] == "chatterbox-en"
    r = post(server, "/tts", {"text": "Hola.", "model": "chatterbox-en", "language": "es-MX"})
    assert r.status_code == 200
    assert r.headers["X-TTS-Engine"] == "chatterbox-es-latam"
    assert r.headers["X-TTS-Routed-From"] == "chatterbox-en"


def test_missing_model_answers_503_with_the_prefetch_command(server):
    r = post(server, "/tts", {"text": "Hi.", "model": "chatterbox-turbo", "language": "en"})
    assert r.status_code == 503 and "prefetch" in r.json()["error"]["message"]


class SlowedEngine:
    """Wraps the real engine; holds the second chunk until the test says the first bytes arrived."""

    def __init__(self, real):
        self.real = real
        self.first_bytes_seen = threading.Event()
        self.order = []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def generate(self, model, text, **kw):
        if self.order:
            self.order.append("waiting for client")
            assert self.first_bytes_seen.wait(60)
        self.order.append(f"generate {text[:10]}")
        return self.real.generate(model, text, **kw)


@pytest.fixture
def slowed(server):
    svc = server.app.extensions["enfoads.tts"]
    real = svc.engines["chatterbox-es-latam"]  # who speaks Spanish by default
    engine = SlowedEngine(real)
    svc.engines["chatterbox-es-latam"] = engine
    yield engine
    engine.first_bytes_seen.set()
    svc.engines["chatterbox-es-latam"] = real


TWO_SENTENCES = "Esta es la primera frase del texto largo. Y esta es la segunda frase del mismo texto."


def test_http_stream_sends_first_chunk_before_the_last_is_generated(server, slowed):
    r = requests.post(f"{server.url}/v1/audio/speech", headers=H, stream=True, timeout=120,
                      json={"input": TWO_SENTENCES, "chunk_size": 50, "response_format": "pcm", "stream_format": "audio"})
    assert r.status_code == 200
    it = r.iter_content(chunk_size=None)
    first = next(it)
    assert first and slowed.order == ["generate Esta es la", "waiting for client"]
    slowed.first_bytes_seen.set()
    rest = b"".join(it)
    assert len(first) + len(rest) > len(first)
    assert slowed.order[-1].startswith("generate Y esta")


def test_streamed_audio_equals_the_whole_response(server):
    body = {"input": TWO_SENTENCES, "chunk_size": 50, "response_format": "pcm", "seed": 7, "split_text": True}
    whole = post(server, "/v1/audio/speech", body).content
    streamed = post(server, "/v1/audio/speech", {**body, "stream_format": "audio"}).content
    # the whole response crossfades the joins (30 ms each), the stream sends chunks as they are
    assert abs(len(streamed) - len(whole)) == 2 * int(0.03 * RATE)


def test_stream_works_when_the_worker_starts_the_job_before_the_request_looks(server, monkeypatch):
    from backend.routes import tts as tts_routes

    real_submit = tts_routes.submit
    jobs = server.app.extensions["enfoads"].jobs

    def slow_to_look(kind, params, **kw):
        job = real_submit(kind, params, **kw)
        # the worst case, made certain: the worker runs the whole job before the route reads its queue
        assert jobs.wait(job.id, 60).status == "succeeded"
        return job

    monkeypatch.setattr(tts_routes, "submit", slow_to_look)
    body = {"input": "Hola.", "response_format": "pcm", "stream_format": "audio"}
    r = requests.post(f"{server.url}/v1/audio/speech", json=body, headers=H, timeout=30)
    assert r.status_code == 200 and len(r.content) > 0


def test_sse_stream_sends_openai_events(server):
    body = {"input": TWO_SENTENCES, "chunk_size": 50, "response_format": "wav", "stream_format": "sse"}
    r = post(server, "/v1/audio/speech", body)
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == ["speech.audio.delta", "speech.audio.delta", "speech.audio.done"]


def test_socketio_speak_streams_chunks(server, slowed):
    import socketio

    got, done = [], threading.Event()
    sio = socketio.Client()

    @sio.on("audio", namespace="/tts")
    def on_audio(data):
        got.append(data)
        slowed.first_bytes_seen.set()

    @sio.on("done", namespace="/tts")
    def on_done(data):
        got.append(("done", data))
        done.set()

    sio.connect(server.url, namespaces=["/tts"], auth={"token": API_KEY}, transports=["polling"])
    try:
        sio.emit("speak", {"text": TWO_SENTENCES, "chunk_size": 50, "request_id": "r1"}, namespace="/tts")
        assert done.wait(120)
    finally:
        sio.disconnect()
    assert [g["index"] for g in got[:2]] == [0, 1] and got[0]["sample_rate"] == RATE
    assert slowed.order[:2] == ["generate Esta es la", "waiting for client"]
    assert slowed.order[2].startswith("generate Y esta")
    assert got[2][1]["engine"] == "chatterbox-es-latam"


def test_socketio_client_that_leaves_cancels_its_stream_job(server, slowed, wait_for):
    import socketio

    first = threading.Event()
    sio = socketio.Client()
    sio.on("audio", lambda data: first.set(), namespace="/tts")
    sio.connect(server.url, namespaces=["/tts"], auth={"token": API_KEY}, transports=["polling"])
    sio.emit("speak", {"text": TWO_SENTENCES, "chunk_size": 50}, namespace="/tts")
    assert first.wait(120)  # the job now holds its second chunk until the test lets it go
    jobs = requests.get(f"{server.url}/jobs", headers=H, timeout=10).json()["data"]
    job_id = next(j["id"] for j in jobs if j["kind"] == "tts.stream" and j["status"] == "running")
    sio.disconnect()
    manager = server.app.extensions["enfoads"].jobs
    wait_for(lambda: job_id in manager._cancel_requested, timeout=30)
    slowed.first_bytes_seen.set()
    job = wait_for(lambda: (j := manager.get(job_id)).status in ("succeeded", "failed", "cancelled") and j,
                   timeout=60)
    assert job.status == "cancelled"


def test_service_speaks_sentence_by_sentence_without_http(server):
    svc = server.app.extensions["enfoads.tts"]
    pieces = list(svc.speak(TWO_SENTENCES, language="es", chunk_size=50))
    assert len(pieces) == 2 and all(rate == RATE and s.dtype == np.float32 for s, rate in pieces)


@pytest.mark.parametrize("with_segmenter", [True, False])
def test_the_chinese_segmenter_comes_from_the_models_dir_and_never_downloads(models_dir, monkeypatch, caplog,
                                                                           with_segmenter):
    import spacy_pkuseg

    from services.tts.chatterbox_engine import PKUSEG_KEY, load_chatterbox

    downloads = []
    monkeypatch.setattr(spacy_pkuseg, "download_model", lambda *a, **k: downloads.append(a) or 1 / 0)
    segmenter_dir = models_dir / PKUSEG_KEY if with_segmenter else None
    tts = load_chatterbox("multilingual", models_dir / "chatterbox-multilingual", "cpu", segmenter_dir=segmenter_dir)
    segmenter = tts.tokenizer.cangjie_converter.segmenter
    assert downloads == []
    if with_segmenter:
        words = segmenter.cut("中文分词很好")
        assert "".join(words) == "中文分词很好" and len(words) > 1
    else:
        assert segmenter is None
        assert f"python -m prefetch {PKUSEG_KEY}" in caplog.text
    # Chinese text still becomes tokens either way
    assert tts.tokenizer.text_to_tokens("中文", language_id="zh").numel() > 0
